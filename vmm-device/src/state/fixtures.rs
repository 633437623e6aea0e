//! Builders shared by the extent table's unit tests.

use super::*;

pub(super) const MB2: u64 = wire::VIRTIO_MEM_EXTENT_ALIGN;

pub(super) fn spec(tag: u128, src: u64, off: u64, len: u64) -> ExtentSpec {
    let source = SourceRef {
        id: SourceId(src),
        offset: off,
    };
    ExtentSpec {
        class: SourceClass::File,
        ..ExtentSpec::new(Uuid::from_u128(tag), len, source)
    }
}

pub(super) fn table() -> ExtentTable {
    ExtentTable::new(1 << 32, 64 * MB2, 100, 20_000)
}

pub(super) fn close(t: &mut ExtentTable) {
    while t.peek_event().is_some() {
        t.commit_event();
    }
}

//! One extent as the driver holds it, decoded from its wire record.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use tagmem_wire::{is_null_tag, ExtentRecord, VIRTIO_MEM_EXTENT_F_READONLY, VIRTIO_MEM_EXTENT_F_SHARABLE};

pub use tagmem_wire::Perf;

/// A poisoned byte range inside one extent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoisonRange {
    /// Offset from the extent's start.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
}

/// One extent, offered or accepted, decoded from its wire record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Device-assigned id.
    pub id: u64,
    /// Tag (all zero: untagged).
    pub tag: [u8; 16],
    /// Guest-physical address.
    pub gpa: u64,
    /// Length in bytes.
    pub len: u64,
    /// `VIRTIO_MEM_EXTENT_F_*` flags.
    pub flags: u32,
    /// Sequence number within its tag group.
    pub seq: u16,
    /// NUMA node / proximity domain.
    pub node: u16,
    /// `SOURCE_*` class.
    pub source: u8,
    /// Performance metadata.
    pub perf: Perf,
    /// Poisoned ranges reported so far.
    pub poison: Vec<PoisonRange>,
}

impl Extent {
    /// Decodes a wire record (no validation; see [`crate::offer::screen`]).
    pub fn from_record(r: &ExtentRecord) -> Self {
        Extent {
            id: r.extent_id.get(),
            tag: r.tag,
            gpa: r.addr.get(),
            len: r.length.get(),
            flags: r.flags.get(),
            seq: r.seq.get(),
            node: r.node_id.get(),
            source: r.source,
            perf: Perf::from_record(r),
            poison: Vec::new(),
        }
    }

    /// True if the extent carries a non-nil tag.
    pub fn is_tagged(&self) -> bool {
        !is_null_tag(&self.tag)
    }

    /// True if the capacity may be shared with other hosts or guests.
    pub fn is_sharable(&self) -> bool {
        self.flags & VIRTIO_MEM_EXTENT_F_SHARABLE != 0
    }

    /// True if the guest may only read the capacity.
    pub fn is_readonly(&self) -> bool {
        self.flags & VIRTIO_MEM_EXTENT_F_READONLY != 0
    }

    /// True if `[gpa, gpa + len)` intersects the extent.
    pub fn overlaps(&self, gpa: u64, len: u64) -> bool {
        gpa < self.gpa.saturating_add(self.len) && self.gpa < gpa.saturating_add(len)
    }
}

/// Formats a 16-byte tag as a lowercase 8-4-4-4-12 UUID string.
pub fn format_uuid(u: &[u8; 16]) -> String {
    let h = |r: core::ops::Range<usize>| u[r].iter().map(|b| format!("{b:02x}")).collect::<String>();
    format!("{}-{}-{}-{}-{}", h(0..4), h(4..6), h(6..8), h(8..10), h(10..16))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tagmem_wire::{Le64, VIRTIO_MEM_EXTENT_ALIGN};

    #[test]
    fn uuid_format() {
        let mut u = [0u8; 16];
        for (i, b) in u.iter_mut().enumerate() {
            *b = u8::try_from(i).unwrap() * 0x11;
        }
        assert_eq!(format_uuid(&u), "00112233-4455-6677-8899-aabbccddeeff");
    }

    #[test]
    fn overlap_and_flags() {
        let r = ExtentRecord {
            extent_id: Le64::new(1),
            addr: Le64::new(VIRTIO_MEM_EXTENT_ALIGN),
            length: Le64::new(VIRTIO_MEM_EXTENT_ALIGN),
            flags: tagmem_wire::Le32::new(VIRTIO_MEM_EXTENT_F_READONLY),
            ..Default::default()
        };
        let e = Extent::from_record(&r);
        assert!(e.overlaps(VIRTIO_MEM_EXTENT_ALIGN, 1));
        assert!(e.overlaps(0, VIRTIO_MEM_EXTENT_ALIGN + 1));
        assert!(!e.overlaps(0, VIRTIO_MEM_EXTENT_ALIGN));
        assert!(!e.overlaps(2 * VIRTIO_MEM_EXTENT_ALIGN, u64::MAX));
        assert!(e.is_readonly() && !e.is_sharable() && !e.is_tagged());
    }
}

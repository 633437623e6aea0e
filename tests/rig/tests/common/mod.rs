//! Shared helpers of the KVM integration tests.
#![allow(dead_code)]

use std::os::unix::fs::FileExt;
use tagmem_device::{Mapping, SourceId, SourceRef};
use tagmem_rig::TestGuest;
use tagmem_test_support::kvm_or_skip;
use tagmem_vmm::{Backing, SharedMapper, VmConfig};

/// One MiB.
pub const MIB: u64 = 1 << 20;
/// One GiB.
pub const GIB: u64 = 1 << 30;
/// One TiB.
pub const TIB: u64 = 1 << 40;

/// Boots the test guest, or prints why the test is skipped and returns `None` (a failure where
/// `TAGMEM_REQUIRE_KVM=1`).
pub fn boot_or_skip(config: VmConfig) -> Option<TestGuest> {
    if !kvm_or_skip() {
        return None;
    }
    Some(TestGuest::boot(config).expect("boot test guest"))
}

/// Registers a fresh sparse memfd of `size` bytes as backing `id`.
pub fn add_memfd(g: &TestGuest, id: u64, size: u64) {
    let b = Backing::memfd(&format!("test-{id}"), size).expect("memfd");
    g.vm.mapper()
        .lock()
        .register_backing(SourceId(id), b)
        .expect("register");
}

/// Writes `bytes` into backing `id` of `mapper` at `offset` from the host.
fn backing_write(mapper: &SharedMapper, id: u64, offset: u64, bytes: &[u8]) {
    mapper
        .lock()
        .backing(SourceId(id))
        .expect("backing")
        .file_handle()
        .write_all_at(bytes, offset)
        .expect("write");
}

/// Reads `len` bytes of backing `id` of `mapper` at `offset` from the host.
fn backing_read(mapper: &SharedMapper, id: u64, offset: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    mapper
        .lock()
        .backing(SourceId(id))
        .expect("backing")
        .file_handle()
        .read_exact_at(&mut v, offset)
        .expect("read");
    v
}

/// Writes `bytes` into backing `id` at `offset` from the host.
pub fn host_write(g: &TestGuest, id: u64, offset: u64, bytes: &[u8]) {
    backing_write(&g.vm.mapper(), id, offset, bytes);
}

/// Reads `len` bytes of backing `id` at `offset` from the host.
pub fn host_read(g: &TestGuest, id: u64, offset: u64, len: usize) -> Vec<u8> {
    backing_read(&g.vm.mapper(), id, offset, len)
}

/// A mapping of backing `id`.
pub fn mapping(gpa: u64, len: u64, id: u64, offset: u64, readonly: bool) -> Mapping {
    Mapping {
        gpa,
        len,
        source: SourceRef {
            id: SourceId(id),
            offset,
        },
        readonly,
    }
}

/// A recognisable byte pattern.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            u8::try_from(i % 256)
                .expect("below 256")
                .wrapping_mul(31)
                .wrapping_add(seed)
        })
        .collect()
}

/// `v` as a host index.
pub fn us(v: u64) -> usize {
    usize::try_from(v).expect("fits usize")
}

use std::sync::Arc;
use tagmem_device::{ExtentSpec, SourceClass};
use tagmem_rig::TestGuestVm;
use tagmem_vmm::{BackingLifetime, Vmm, VmmConfig};
use uuid::Uuid;

/// A clock the test advances by hand, so offers expire without waiting.
pub use tagmem_device::test_utils::ManualClock;

/// The runtime's default configuration with a manual clock.
pub fn manual_config() -> (VmmConfig, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::default());
    let config = VmmConfig {
        clock: clock.clone(),
        ..VmmConfig::default()
    };
    (config, clock)
}

/// Boots the runtime with the test guest and waits for its driver, or prints why the test is
/// skipped and returns `None`.
pub fn vmm_or_skip(config: VmmConfig) -> Option<TestGuestVm> {
    if !kvm_or_skip() {
        return None;
    }
    let vmm = TestGuestVm::new(config).expect("start the VMM");
    vmm.wait_ready().expect("guest driver activates the device");
    Some(vmm)
}

/// Registers a fresh memfd of `size` bytes as backing `id`, filled from offset 0 with `fill`.
pub fn vmm_memfd(vmm: &Vmm, id: u64, size: u64, fill: &[u8], lifetime: BackingLifetime) {
    let b = Backing::memfd(&format!("e2e-{id}"), size).expect("memfd");
    b.file_handle().write_all_at(fill, 0).expect("fill memfd");
    vmm.register_backing(SourceId(id), b, lifetime)
        .expect("register backing");
}

/// Writes `bytes` into backing `id` at `offset` from the host.
pub fn vmm_host_write(vmm: &Vmm, id: u64, offset: u64, bytes: &[u8]) {
    backing_write(&vmm.mapper(), id, offset, bytes);
}

/// Reads `len` bytes of backing `id` at `offset` from the host.
pub fn vmm_host_read(vmm: &Vmm, id: u64, offset: u64, len: usize) -> Vec<u8> {
    backing_read(&vmm.mapper(), id, offset, len)
}

/// An extent of `length` bytes of backing `id` at offset 0, at a fixed guest address.
pub fn spec(tag: Uuid, id: u64, gpa: u64, length: u64) -> ExtentSpec {
    let source = SourceRef {
        id: SourceId(id),
        offset: 0,
    };
    ExtentSpec {
        gpa: Some(gpa),
        class: SourceClass::File,
        ..ExtentSpec::new(tag, length, source)
    }
}

/// A recognisable pattern with no 0xff byte, so it cannot be mistaken for what unbacked guest
/// memory reads as.
pub fn leak_pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| u8::try_from((i * 31 + usize::from(seed)) % 251).expect("below 251"))
        .collect()
}

/// Lines of `/proc/self/maps`: host mappings of this process.
pub fn count_maps() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .expect("maps")
        .lines()
        .count()
}

/// Entries of `/proc/self/fd`: open descriptors of this process.
pub fn count_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").expect("fd dir").count()
}

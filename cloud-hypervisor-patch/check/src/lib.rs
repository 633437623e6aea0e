//! Checks the Cloud Hypervisor patch series without Cloud Hypervisor: `build.rs` extracts the
//! adapter's files (`virtio-devices/src/tagged_mem.rs`, `tagged_mem_sources.rs`) and the VMM's
//! mapper (`vmm/src/tagged_memory.rs`) from the patch text and this crate compiles them, as
//! modules of the same names, against stub definitions of the few `virtio-devices`,
//! `vm-migration`, `epoll_helper`, `seccomp_filters` and `memory_manager` items they use
//! (`src/ch/`). A device or host-model API change that breaks the adapter breaks this build.
//! `tests/patch_files.rs` checks the series' format and files, `tests/adapter_api.rs` the core
//! API the adapter uses, and the unit tests (`src/adapter_tests.rs`) the compiled adapter.

pub mod ch;

// The crate root plays `virtio_devices`' root: the adapter names these as `crate::...` and
// `super::...`.
pub use ch::device::{VirtioInterrupt, VirtioInterruptType};
pub use ch::epoll_helper::{EPOLL_HELPER_EVENT_LAST, EpollHelper, EpollHelperError, EpollHelperHandler};
pub use ch::virtio::{ActivateError, ActivateResult, VirtioCommon, VirtioDevice, VirtioDeviceType};
pub use ch::{device, memory_manager, seccomp_filters};

/// CH's guest memory (`virtio_devices::GuestMemoryMmap`).
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<vm_memory::bitmap::AtomicBitmap>;
/// CH's host mapping type (`virtio_devices::MmapRegion`).
pub type MmapRegion = vm_memory::MmapRegion<vm_memory::bitmap::AtomicBitmap>;
/// CH's guest memory region (`vmm::GuestRegionMmap`).
pub type GuestRegionMmap = vm_memory::GuestRegionMmap<vm_memory::bitmap::AtomicBitmap>;

/// `virtio-devices/src/tagged_mem.rs` as the series adds it.
#[allow(missing_docs, clippy::cast_possible_truncation)]
pub mod tagged_mem {
    use crate::ch::{anyhow, epoll, event_monitor, seccompiler, vm_migration};
    include!(concat!(env!("OUT_DIR"), "/tagged_mem.rs"));
}

/// `vmm/src/tagged_memory.rs` as the series adds it: the crate root plays `vmm`'s as well
/// (`crate::memory_manager`, `crate::GuestRegionMmap`), and `virtio_devices` is this crate.
#[allow(
    missing_docs,
    clippy::undocumented_unsafe_blocks,
    clippy::cast_possible_truncation
)]
pub mod tagged_memory {
    use crate as virtio_devices;
    include!(concat!(env!("OUT_DIR"), "/tagged_memory.rs"));
}

/// `virtio-devices/src/tagged_mem_sources.rs` as the series adds it.
#[allow(missing_docs, clippy::cast_possible_truncation)]
pub mod tagged_mem_sources {
    include!(concat!(env!("OUT_DIR"), "/tagged_mem_sources.rs"));
}

#[cfg(test)]
mod adapter_tests;

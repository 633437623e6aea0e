//! `virtio_devices::seccomp_filters::Thread`: the worker kinds with a filter.

/// A device worker thread kind (CH has one per device; the series adds `VirtioTaggedMem`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Thread {
    /// virtio-mem.
    VirtioMem,
    /// virtio-mem with tagged extents.
    VirtioTaggedMem,
}

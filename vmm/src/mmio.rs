//! virtio-mmio transport (in progress).

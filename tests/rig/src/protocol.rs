//! The test-control protocol: register offsets, command codes and policy values, shared with the
//! guest's sources (`tests/guest/src/protocol.rs`, included here), so both sides read one
//! definition.

include!(concat!(env!("CARGO_MANIFEST_DIR"), "/../guest/src/protocol.rs"));

#[cfg(test)]
mod tests {
    use super::*;
    use tagmem_vmm::layout;

    #[test]
    fn guest_register_offsets_match_virtio_bindings() {
        use virtio_bindings::virtio_mmio as v;
        let pairs = [
            (mmio_reg::MAGIC_VALUE, v::VIRTIO_MMIO_MAGIC_VALUE),
            (mmio_reg::VERSION, v::VIRTIO_MMIO_VERSION),
            (mmio_reg::DEVICE_ID, v::VIRTIO_MMIO_DEVICE_ID),
            (mmio_reg::DEVICE_FEATURES, v::VIRTIO_MMIO_DEVICE_FEATURES),
            (mmio_reg::DEVICE_FEATURES_SEL, v::VIRTIO_MMIO_DEVICE_FEATURES_SEL),
            (mmio_reg::DRIVER_FEATURES, v::VIRTIO_MMIO_DRIVER_FEATURES),
            (mmio_reg::DRIVER_FEATURES_SEL, v::VIRTIO_MMIO_DRIVER_FEATURES_SEL),
            (mmio_reg::QUEUE_SEL, v::VIRTIO_MMIO_QUEUE_SEL),
            (mmio_reg::QUEUE_NUM_MAX, v::VIRTIO_MMIO_QUEUE_NUM_MAX),
            (mmio_reg::QUEUE_NUM, v::VIRTIO_MMIO_QUEUE_NUM),
            (mmio_reg::QUEUE_READY, v::VIRTIO_MMIO_QUEUE_READY),
            (mmio_reg::QUEUE_NOTIFY, v::VIRTIO_MMIO_QUEUE_NOTIFY),
            (mmio_reg::INTERRUPT_STATUS, v::VIRTIO_MMIO_INTERRUPT_STATUS),
            (mmio_reg::INTERRUPT_ACK, v::VIRTIO_MMIO_INTERRUPT_ACK),
            (mmio_reg::STATUS, v::VIRTIO_MMIO_STATUS),
            (mmio_reg::QUEUE_DESC_LOW, v::VIRTIO_MMIO_QUEUE_DESC_LOW),
            (mmio_reg::QUEUE_AVAIL_LOW, v::VIRTIO_MMIO_QUEUE_AVAIL_LOW),
            (mmio_reg::QUEUE_USED_LOW, v::VIRTIO_MMIO_QUEUE_USED_LOW),
            (mmio_reg::CONFIG_GENERATION, v::VIRTIO_MMIO_CONFIG_GENERATION),
            (mmio_reg::CONFIG, v::VIRTIO_MMIO_CONFIG),
        ];
        for (guest, bindings) in pairs {
            assert_eq!(guest, u64::from(bindings));
        }
        assert_eq!(Some(VIRTIO_MEM_MMIO_BASE), layout::virtio_mmio_addr(0));
    }
}

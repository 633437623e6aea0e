//! What a virtio transport (MMIO, PCI, or a VMM's own device model) needs from a device.

use virtio_queue::Queue;

/// Transport-facing side of a virtio device.
pub trait VirtioDevice {
    /// Guest memory handle the device reads queues through.
    type Memory;
    /// Error returned by activation.
    type Error: std::error::Error;

    /// Virtio device ID.
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits the device offers.
    fn device_features(&self) -> u64;
    /// Records the feature bits the driver accepted (only offered bits stick).
    fn set_driver_features(&mut self, features: u64);
    /// Feature bits currently negotiated.
    fn driver_features(&self) -> u64;
    /// Whether the features the driver accepted (after `set_driver_features`) let the device
    /// work. The transport must not set FEATURES_OK when this is false (VIRTIO §3.1.1: the
    /// device refuses the feature set), as QEMU's `validate_features` hook does.
    fn features_ok(&self) -> bool;
    /// Reads device configuration space; bytes past its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device configuration space (virtio-mem's is read-only: ignored).
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts the device with guest memory and the queues the driver set up.
    fn activate(&mut self, mem: Self::Memory, queues: Vec<Queue>) -> Result<(), Self::Error>;
    /// Resets the device (status 0): forgets queues, negotiated features and undelivered
    /// events. Memory state stays as it is (VIRTIO §5.15.5).
    fn reset(&mut self);
    /// The driver notified queue `index`.
    fn queue_notify(&mut self, index: u16);
    /// Generation of the configuration space; changes whenever its contents change.
    fn config_generation(&self) -> u32;
}

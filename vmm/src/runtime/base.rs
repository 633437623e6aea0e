//! The base virtio-mem region of a running [`Vmm`]: what it is, and resizing it (the
//! `vm.resize` of the control API).

use super::{TaggedDevice, Vmm, VmmError};
use crate::hotplug::BaseMemory;

/// The device's current `requested_size`, read from its configuration space as the driver sees it.
fn requested_size(d: &TaggedDevice) -> u64 {
    let mut b = [0u8; 8];
    let off = std::mem::offset_of!(tagmem_wire::VirtioMemConfig, requested_size);
    tagmem_device::VirtioDevice::read_config(d, off as u64, &mut b);
    u64::from_le_bytes(b)
}

impl Vmm {
    /// The base virtio-mem region: sizes, what is requested and what the guest plugged.
    pub fn base_memory(&self) -> BaseMemory {
        self.shared.device(|d| {
            let c = d.config();
            BaseMemory {
                boot_size: self.config.vm.boot_ram_size,
                region_addr: c.region_addr,
                // 0 when the device's region is only the never-plugged block a tagged-only
                // device carries: nothing to resize.
                hotplug_size: if self.config.hotplug_size == 0 {
                    0
                } else {
                    c.region_size
                },
                block_size: c.block_size,
                requested_size: requested_size(d),
                plugged_size: d.plugged_size(),
            }
        })
    }

    /// Asks the guest to have `requested` bytes of the base region plugged (a config-change
    /// interrupt tells its driver).
    pub fn set_requested_size(&self, requested: u64) -> Result<(), VmmError> {
        if self.config.hotplug_size == 0 {
            return Err(VmmError::Resize(
                "the VM has no hotplug memory (start it with --memory hotplug_size=...)".into(),
            ));
        }
        self.shared
            .device(|d| d.set_requested_size(requested))
            .map_err(|e| VmmError::Resize(e.to_string()))?;
        self.shared.ring();
        Ok(())
    }

    /// Resizes the guest's RAM to `desired_ram` bytes in total (boot RAM plus plugged base
    /// region), as Cloud Hypervisor's `vm.resize` counts it.
    pub fn resize_ram(&self, desired_ram: u64) -> Result<(), VmmError> {
        let requested = self
            .base_memory()
            .requested_for(desired_ram)
            .map_err(VmmError::Resize)?;
        self.set_requested_size(requested)
    }
}

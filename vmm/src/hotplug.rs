//! The base virtio-mem region: RAM the guest's own `virtio_mem` driver plugs and unplugs in
//! device blocks as the host moves `requested_size` (`--memory hotplug_size=`, as Cloud
//! Hypervisor's `hotplug_method=virtio-mem`).
//!
//! The region starts at [`layout::HOTPLUG_BASE`], is a whole number of Linux memory blocks
//! ([`layout::HOTPLUG_ALIGN`]) and is backed by one sparse memfd: unplugged blocks cost nothing,
//! and a block the guest plugs is mapped into a memslot by the device through the mapper. The
//! tagged window moves up to start past it.

use crate::layout;
use tagmem_device::{DeviceConfig, SourceId, SourceRef, TaggedWindow};

/// The backing id the base region's memfd is registered under.
pub const BASE_REGION_SOURCE: SourceId = SourceId(u64::MAX);
/// Alignment of the tagged window placed after the base region.
const WINDOW_ALIGN: u64 = layout::GIB;

/// Errors laying out the base region.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HotplugError {
    /// The size is not a multiple of a memory block.
    #[error("hotplug_size {0:#x} must be a multiple of {align} MiB", align = layout::HOTPLUG_ALIGN >> 20)]
    Unaligned(u64),
    /// The region leaves no room for the tagged window.
    #[error("hotplug_size {size:#x} leaves no room for the tagged window below {limit:#x}")]
    TooLarge {
        /// The size asked for.
        size: u64,
        /// Top of the guest-physical space the VMM uses.
        limit: u64,
    },
    /// The requested size is above the region.
    #[error("requested size {requested:#x} exceeds hotplug_size {size:#x}")]
    Requested {
        /// Requested.
        requested: u64,
        /// Region size.
        size: u64,
    },
}

/// Gives `device` a base region of `size` bytes with `requested` bytes requested (0: leaves the
/// device's own region, e.g. the never-plugged block of a tagged-only device), and moves its
/// tagged window (if any) to start after the region.
pub fn plan(device: &mut DeviceConfig, size: u64, requested: u64) -> Result<(), HotplugError> {
    if size == 0 {
        return Ok(());
    }
    if size % layout::HOTPLUG_ALIGN != 0 {
        return Err(HotplugError::Unaligned(size));
    }
    if requested > size {
        return Err(HotplugError::Requested { requested, size });
    }
    let end = layout::HOTPLUG_BASE
        .checked_add(size)
        .ok_or(HotplugError::TooLarge {
            size,
            limit: u64::MAX,
        })?;
    if let Some(w) = device.tagged {
        let limit = w.addr.saturating_add(w.size);
        let start = end
            .div_ceil(WINDOW_ALIGN)
            .saturating_mul(WINDOW_ALIGN)
            .max(w.addr);
        if start >= limit {
            return Err(HotplugError::TooLarge { size, limit });
        }
        device.tagged = Some(TaggedWindow {
            addr: start,
            size: limit - start,
        });
    }
    device.region_addr = layout::HOTPLUG_BASE;
    device.region_size = size;
    device.region_source = Some(SourceRef {
        id: BASE_REGION_SOURCE,
        offset: 0,
    });
    device.requested_size = requested;
    Ok(())
}

/// The state of the base region as the control API reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BaseMemory {
    /// Boot RAM (not hot-pluggable).
    pub boot_size: u64,
    /// Guest-physical start of the base region.
    pub region_addr: u64,
    /// Size of the base region (`hotplug_size`).
    pub hotplug_size: u64,
    /// Device block size.
    pub block_size: u64,
    /// What the host asks the guest to have plugged.
    pub requested_size: u64,
    /// What the guest has plugged.
    pub plugged_size: u64,
}

impl BaseMemory {
    /// The requested size for a total RAM of `desired_ram` (boot RAM plus plugged), as Cloud
    /// Hypervisor's `vm.resize` counts it.
    pub fn requested_for(&self, desired_ram: u64) -> Result<u64, String> {
        let max = self.boot_size + self.hotplug_size;
        if self.hotplug_size == 0 {
            return Err("the VM has no hotplug memory (start it with --memory hotplug_size=...)".into());
        }
        if desired_ram < self.boot_size || desired_ram > max {
            return Err(format!(
                "{desired_ram:#x} is outside [{:#x}, {max:#x}] (boot RAM up to boot RAM + hotplug_size)",
                self.boot_size
            ));
        }
        let requested = desired_ram - self.boot_size;
        if requested % self.block_size != 0 {
            return Err(format!(
                "{desired_ram:#x} minus boot RAM is not a multiple of the block size {:#x}",
                self.block_size
            ));
        }
        Ok(requested)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_window() -> DeviceConfig {
        DeviceConfig {
            tagged: Some(TaggedWindow {
                addr: layout::TAGGED_WINDOW_BASE,
                size: 4 * layout::TIB - layout::TAGGED_WINDOW_BASE,
            }),
            ..DeviceConfig::default()
        }
    }

    #[test]
    fn region_goes_first_and_the_window_follows() {
        let mut d = with_window();
        plan(&mut d, 1536 * layout::MIB, 256 * layout::MIB).unwrap();
        d.validate().unwrap();
        assert_eq!(d.region_addr, layout::HOTPLUG_BASE);
        assert_eq!(d.region_size, 1536 * layout::MIB);
        assert_eq!(d.requested_size, 256 * layout::MIB);
        let w = d.tagged.unwrap();
        assert_eq!(w.addr, 6 * layout::GIB);
        assert_eq!(w.addr + w.size, 4 * layout::TIB);
    }

    #[test]
    fn zero_size_changes_nothing_and_bad_sizes_are_named() {
        let mut d = with_window();
        plan(&mut d, 0, 0).unwrap();
        assert_eq!(d, with_window());
        assert_eq!(
            plan(&mut d, 64 * layout::MIB, 0),
            Err(HotplugError::Unaligned(64 * layout::MIB))
        );
        assert!(matches!(
            plan(&mut d, 128 * layout::MIB, 256 * layout::MIB),
            Err(HotplugError::Requested { .. })
        ));
        assert!(matches!(
            plan(&mut d, 4 * layout::TIB, 0),
            Err(HotplugError::TooLarge { .. })
        ));
    }

    #[test]
    fn desired_ram_counts_boot_ram() {
        let m = BaseMemory {
            boot_size: 512 * layout::MIB,
            region_addr: layout::HOTPLUG_BASE,
            hotplug_size: layout::GIB,
            block_size: 2 * layout::MIB,
            requested_size: 0,
            plugged_size: 0,
        };
        assert_eq!(m.requested_for(512 * layout::MIB), Ok(0));
        assert_eq!(m.requested_for(768 * layout::MIB), Ok(256 * layout::MIB));
        assert!(m.requested_for(256 * layout::MIB).is_err());
        assert!(m.requested_for(1536 * layout::MIB + 1).is_err());
        assert!(m
            .requested_for(513 * layout::MIB)
            .unwrap_err()
            .contains("block size"));
        let none = BaseMemory { hotplug_size: 0, ..m };
        assert!(none
            .requested_for(512 * layout::MIB)
            .unwrap_err()
            .contains("hotplug_size"));
    }
}

//! The device's construction-time configuration and its validation: every field checked, the
//! error naming the first bad one.

use crate::error::DeviceError;
use crate::mapper::SourceRef;
use serde::{Deserialize, Serialize};
use tagmem_wire as wire;

/// The guest-physical window tagged extents are placed in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaggedWindow {
    /// Start, 2 MiB aligned.
    pub addr: u64,
    /// Size, a non-zero multiple of 2 MiB.
    pub size: u64,
}

/// Construction-time configuration of the device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// Base virtio-mem block size: a power of two, at least 4 KiB.
    pub block_size: u64,
    /// ACPI proximity domain of the base region; `None` leaves ACPI_PXM unoffered.
    pub node_id: Option<u16>,
    /// Start of the base (block-plugged) region, block aligned.
    pub region_addr: u64,
    /// Size of the base region: at least one block, a multiple of the block size. A device that
    /// only carries tagged capacity still has one ([`MINIMAL_BASE_REGION_SIZE`], requested size 0:
    /// nothing is plugged), because Linux's virtio_mem fails its probe on an empty region.
    pub region_size: u64,
    /// Host backing of the base region; block `i` lives at `offset + i * block_size`.
    pub region_source: Option<SourceRef>,
    /// Initial requested size of the base region.
    pub requested_size: u64,
    /// The tagged window; `None` leaves the tagged feature unoffered.
    pub tagged: Option<TaggedWindow>,
    /// Most extents pending at once.
    pub max_pending: u32,
    /// Offer timeout in milliseconds.
    pub offer_timeout_ms: u32,
    /// Maximum size of each virtqueue, a power of two up to 32768.
    pub queue_size: u16,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            block_size: wire::VIRTIO_MEM_EXTENT_ALIGN,
            node_id: None,
            region_addr: 0,
            region_size: 0,
            region_source: None,
            requested_size: 0,
            tagged: None,
            max_pending: wire::VIRTIO_MEM_DEFAULT_MAX_PENDING,
            offer_timeout_ms: wire::VIRTIO_MEM_DEFAULT_OFFER_TIMEOUT_MS,
            queue_size: 256,
        }
    }
}

/// Size of the base region a VMM gives a device that only carries tagged capacity: one Linux
/// memory block on x86-64 (128 MiB), block aligned, backed by a sparse file and never plugged
/// (requested size 0).
pub const MINIMAL_BASE_REGION_SIZE: u64 = 128 << 20;

fn invalid(field: &'static str, reason: impl Into<String>) -> DeviceError {
    DeviceError::InvalidConfig {
        field,
        reason: reason.into(),
    }
}

impl DeviceConfig {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), DeviceError> {
        let bs = self.block_size;
        if !bs.is_power_of_two() || bs < 4096 {
            return Err(invalid(
                "block_size",
                format!("{bs:#x} is not a power of two >= 4 KiB"),
            ));
        }
        if self.region_addr % bs != 0 {
            return Err(invalid(
                "region_addr",
                format!("{:#x} is not block aligned", self.region_addr),
            ));
        }
        if self.region_size == 0 {
            // Linux's virtio_mem probe fails on request_mem_region(addr, 0) (T-BASE-8).
            return Err(invalid(
                "region_size",
                "must be at least one block (a device with only tagged capacity gets a small, \
                 never plugged base region)",
            ));
        }
        if self.region_size % bs != 0 {
            return Err(invalid("region_size", "not a multiple of block_size"));
        }
        let region_end = self
            .region_addr
            .checked_add(self.region_size)
            .ok_or_else(|| invalid("region_size", "region end overflows"))?;
        if self.region_size / bs > crate::blocks::MAX_BLOCKS {
            return Err(invalid(
                "region_size",
                format!(
                    "{} blocks; at most {} (2^24) are supported",
                    self.region_size / bs,
                    crate::blocks::MAX_BLOCKS
                ),
            ));
        }
        if self.requested_size > self.region_size || self.requested_size % bs != 0 {
            return Err(invalid(
                "requested_size",
                "must be a block multiple no larger than region_size",
            ));
        }
        match self.region_source {
            None => return Err(invalid("region_source", "the base region needs a backing")),
            Some(s) if s.offset % bs != 0 || s.offset.checked_add(self.region_size).is_none() => {
                return Err(invalid(
                    "region_source",
                    "offset must be block aligned and not overflow",
                ))
            }
            _ => {}
        }
        if let Some(w) = self.tagged {
            let a = wire::VIRTIO_MEM_EXTENT_ALIGN;
            if w.addr % a != 0 || w.size % a != 0 || w.size == 0 {
                return Err(invalid(
                    "tagged",
                    "window start and size must be non-zero multiples of 2 MiB",
                ));
            }
            let end = w
                .addr
                .checked_add(w.size)
                .ok_or_else(|| invalid("tagged", "window end overflows"))?;
            if w.addr < region_end && self.region_addr < end {
                return Err(invalid("tagged", "window overlaps the base region"));
            }
        }
        if self.max_pending == 0 || self.max_pending > 4096 {
            return Err(invalid("max_pending", "must be 1..=4096"));
        }
        if self.offer_timeout_ms == 0 {
            return Err(invalid("offer_timeout_ms", "must be non-zero"));
        }
        if !self.queue_size.is_power_of_two() || self.queue_size > 32768 {
            return Err(invalid("queue_size", "must be a power of two up to 32768"));
        }
        Ok(())
    }

    /// Features the device offers for this configuration. `VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE`
    /// is always offered (and required, [`VirtioDevice::features_ok`]): unplugged memory is not
    /// mapped, so the driver must not touch it (T-FEAT-2).
    pub fn features(&self) -> u64 {
        let mut f = 1u64 << wire::VIRTIO_F_VERSION_1 | 1 << wire::VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE;
        if self.node_id.is_some() {
            f |= 1 << wire::VIRTIO_MEM_F_ACPI_PXM;
        }
        if self.tagged.is_some() {
            f |= 1 << wire::VIRTIO_MEM_F_TAGGED_EXTENTS;
        }
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> DeviceConfig {
        DeviceConfig {
            region_addr: 1 << 30,
            region_size: MINIMAL_BASE_REGION_SIZE,
            region_source: Some(SourceRef {
                id: crate::SourceId(1),
                offset: 0,
            }),
            tagged: Some(TaggedWindow {
                addr: 4 << 30,
                size: 1 << 30,
            }),
            ..Default::default()
        }
    }

    type Breaker = fn(&mut DeviceConfig);

    fn field_of(cfg: &DeviceConfig) -> &'static str {
        match cfg.validate() {
            Err(DeviceError::InvalidConfig { field, .. }) => field,
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn each_bad_field_is_named() {
        good().validate().unwrap();
        let cases: [(&str, Breaker); 10] = [
            ("block_size", |c| c.block_size = 3 << 20),
            ("region_addr", |c| c.region_addr += 4096),
            ("region_size", |c| c.region_size = 0),
            ("region_size", |c| c.region_addr = u64::MAX - (2 << 20) + 1),
            ("requested_size", |c| {
                c.requested_size = c.region_size + c.block_size
            }),
            ("region_source", |c| c.region_source = None),
            ("tagged", |c| {
                c.tagged = Some(TaggedWindow {
                    addr: 1 << 30,
                    size: 2 << 20,
                })
            }),
            ("max_pending", |c| c.max_pending = 0),
            ("offer_timeout_ms", |c| c.offer_timeout_ms = 0),
            ("queue_size", |c| c.queue_size = 300),
        ];
        for (field, break_it) in cases {
            let mut c = good();
            break_it(&mut c);
            assert_eq!(field_of(&c), field);
        }
    }

    #[test]
    fn features_follow_the_configuration() {
        let mut c = good();
        let f = c.features();
        assert_ne!(f & (1 << wire::VIRTIO_MEM_F_TAGGED_EXTENTS), 0);
        assert_ne!(f & (1 << wire::VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE), 0);
        assert_eq!(f & (1 << wire::VIRTIO_MEM_F_ACPI_PXM), 0);
        c.node_id = Some(3);
        c.tagged = None;
        let f = c.features();
        assert_ne!(f & (1 << wire::VIRTIO_MEM_F_ACPI_PXM), 0);
        assert_eq!(f & (1 << wire::VIRTIO_MEM_F_TAGGED_EXTENTS), 0);
    }
}

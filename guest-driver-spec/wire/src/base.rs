//! Base virtio-mem (VIRTIO 1.2 §5.15), field for field as `<linux/virtio_mem.h>` has it.

use crate::{Le16, Le64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Virtio device ID of virtio-mem (§5.15.1).
pub const VIRTIO_ID_MEM: u32 = 24;

/// Feature: the `node_id` config field is valid (§5.15.3).
pub const VIRTIO_MEM_F_ACPI_PXM: u32 = 0;
/// Feature: the driver must not access unplugged memory (§5.15.3).
pub const VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE: u32 = 1;
/// Feature: plugged memory survives suspend-to-RAM (§5.15.3).
pub const VIRTIO_MEM_F_PERSISTENT_SUSPEND: u32 = 2;
/// Generic feature: the device complies with VIRTIO 1.x (§6).
pub const VIRTIO_F_VERSION_1: u32 = 32;

/// Index of the guest-request virtqueue (§5.15.2).
pub const VIRTIO_MEM_GUESTQ: u16 = 0;

/// Request: plug memory blocks.
pub const VIRTIO_MEM_REQ_PLUG: u16 = 0;
/// Request: unplug memory blocks.
pub const VIRTIO_MEM_REQ_UNPLUG: u16 = 1;
/// Request: unplug all memory blocks.
pub const VIRTIO_MEM_REQ_UNPLUG_ALL: u16 = 2;
/// Request: query the plugged state of memory blocks.
pub const VIRTIO_MEM_REQ_STATE: u16 = 3;

/// Response: the request succeeded.
pub const VIRTIO_MEM_RESP_ACK: u16 = 0;
/// Response: the request was denied (e.g. it would exceed `requested_size`).
pub const VIRTIO_MEM_RESP_NACK: u16 = 1;
/// Response: the request cannot be processed right now.
pub const VIRTIO_MEM_RESP_BUSY: u16 = 2;
/// Response: the request was invalid.
pub const VIRTIO_MEM_RESP_ERROR: u16 = 3;

/// State response: every requested block is plugged.
pub const VIRTIO_MEM_STATE_PLUGGED: u16 = 0;
/// State response: every requested block is unplugged.
pub const VIRTIO_MEM_STATE_UNPLUGGED: u16 = 1;
/// State response: some requested blocks are plugged, some are not.
pub const VIRTIO_MEM_STATE_MIXED: u16 = 2;

/// Device configuration layout, 56 bytes (`struct virtio_mem_config`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct VirtioMemConfig {
    /// Size and alignment of a memory block, a power of two.
    pub block_size: Le64,
    /// ACPI proximity domain of the region (valid with `VIRTIO_MEM_F_ACPI_PXM`).
    pub node_id: Le16,
    /// Reserved.
    pub padding: [u8; 6],
    /// Start guest-physical address of the device-managed region.
    pub addr: Le64,
    /// Size of the device-managed region.
    pub region_size: Le64,
    /// Part of the region the driver may currently plug.
    pub usable_region_size: Le64,
    /// Amount of memory currently plugged.
    pub plugged_size: Le64,
    /// Amount of memory the device asks the driver to plug.
    pub requested_size: Le64,
}

/// Guest request, 24 bytes (`struct virtio_mem_req`); PLUG, UNPLUG and STATE share one body.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct VirtioMemReq {
    /// One of the `VIRTIO_MEM_REQ_*` values.
    pub req_type: Le16,
    /// Reserved.
    pub padding: [Le16; 3],
    /// First guest-physical address of the block range.
    pub addr: Le64,
    /// Number of blocks in the range.
    pub nb_blocks: Le16,
    /// Reserved.
    pub padding_1: [Le16; 3],
}

/// Device response, 10 bytes (`struct virtio_mem_resp`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct VirtioMemResp {
    /// One of the `VIRTIO_MEM_RESP_*` values.
    pub resp_type: Le16,
    /// Reserved.
    pub padding: [Le16; 3],
    /// For STATE requests: one of the `VIRTIO_MEM_STATE_*` values.
    pub state: Le16,
}

/// Size of [`VirtioMemConfig`] on the wire.
pub const VIRTIO_MEM_CONFIG_SIZE: usize = core::mem::size_of::<VirtioMemConfig>();
/// Size of [`VirtioMemReq`] on the wire.
pub const VIRTIO_MEM_REQ_SIZE: usize = core::mem::size_of::<VirtioMemReq>();
/// Size of [`VirtioMemResp`] on the wire.
pub const VIRTIO_MEM_RESP_SIZE: usize = core::mem::size_of::<VirtioMemResp>();

const _: () = assert!(VIRTIO_MEM_CONFIG_SIZE == 56);
const _: () = assert!(VIRTIO_MEM_REQ_SIZE == 24);
const _: () = assert!(VIRTIO_MEM_RESP_SIZE == 10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips_little_endian() {
        let cfg = VirtioMemConfig {
            block_size: Le64::new(0x20_0000),
            node_id: Le16::new(3),
            ..Default::default()
        };
        let bytes = cfg.as_bytes();
        assert_eq!(&bytes[0..8], &0x20_0000u64.to_le_bytes());
        assert_eq!(&bytes[8..10], &3u16.to_le_bytes());
        assert_eq!(VirtioMemConfig::read_from_bytes(bytes).unwrap(), cfg);
    }
}

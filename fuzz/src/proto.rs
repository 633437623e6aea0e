//! The wire names the targets use, in one place.

pub use tagmem_wire::{
    Event, EventMsg, ExtentRecord, FromBytes, IntoBytes, Request, TaggedConfig, TaggedReq, TaggedResp,
    VirtioMemConfig, VirtioMemReq, VirtioMemResp,
};

/// Guest-request queue index.
pub const GUESTQ: u16 = tagmem_wire::VIRTIO_MEM_GUESTQ;
/// Event queue index.
pub const EVENTQ: u16 = tagmem_wire::VIRTIO_MEM_EVENTQ;
/// Extent alignment (2 MiB).
pub const EXTENT_ALIGN: u64 = tagmem_wire::VIRTIO_MEM_EXTENT_ALIGN;
/// Size of an event buffer's contents.
pub const EVENT_SIZE: usize = tagmem_wire::VIRTIO_MEM_EVENT_SIZE;
/// Size of a tagged request header.
pub const TAGGED_REQ_SIZE: usize = tagmem_wire::VIRTIO_MEM_TAGGED_REQ_SIZE;
/// Size of a tagged response.
pub const TAGGED_RESP_SIZE: usize = tagmem_wire::VIRTIO_MEM_TAGGED_RESP_SIZE;
/// Size of a base response.
pub const BASE_RESP_SIZE: usize = tagmem_wire::VIRTIO_MEM_RESP_SIZE;
/// Size of an extent record.
pub const EXTENT_RECORD_SIZE: usize = tagmem_wire::VIRTIO_MEM_EXTENT_RECORD_SIZE;

/// Base request types.
pub const REQ_PLUG: u16 = tagmem_wire::VIRTIO_MEM_REQ_PLUG;
/// UNPLUG.
pub const REQ_UNPLUG: u16 = tagmem_wire::VIRTIO_MEM_REQ_UNPLUG;
/// UNPLUG_ALL.
pub const REQ_UNPLUG_ALL: u16 = tagmem_wire::VIRTIO_MEM_REQ_UNPLUG_ALL;
/// STATE.
pub const REQ_STATE: u16 = tagmem_wire::VIRTIO_MEM_REQ_STATE;
/// ACCEPT.
pub const REQ_ACCEPT: u16 = tagmem_wire::VIRTIO_MEM_REQ_ACCEPT;
/// RELEASE.
pub const REQ_RELEASE: u16 = tagmem_wire::VIRTIO_MEM_REQ_RELEASE;
/// RELEASE_BUSY.
pub const REQ_RELEASE_BUSY: u16 = tagmem_wire::VIRTIO_MEM_REQ_RELEASE_BUSY;
/// LIST.
pub const REQ_LIST: u16 = tagmem_wire::VIRTIO_MEM_REQ_LIST;
/// Most records one LIST may ask for.
pub const LIST_MAX: u32 = tagmem_wire::VIRTIO_MEM_LIST_MAX;

/// Feature bit of tagged extents.
pub const F_TAGGED: u32 = tagmem_wire::VIRTIO_MEM_F_TAGGED_EXTENTS;
/// Feature bit the device always offers and requires.
pub const F_UNPLUGGED_INACCESSIBLE: u32 = tagmem_wire::VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE;

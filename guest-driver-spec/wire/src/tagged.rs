//! The tagged-extent extension (SPEC.md §T). **A proposal**: feature bit 3 is not allocated by
//! the VIRTIO specification.

use crate::{Le16, Le32, Le64, VirtioMemConfig};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Proposed feature bit: the device offers host-named, tagged extents (SPEC.md T.1).
pub const VIRTIO_MEM_F_TAGGED_EXTENTS: u32 = 3;

/// Index of the event virtqueue, present only when the tagged feature is negotiated (T.3).
pub const VIRTIO_MEM_EVENTQ: u16 = 1;

/// Alignment of every extent's guest-physical address and length: 2 MiB (T.4).
pub const VIRTIO_MEM_EXTENT_ALIGN: u64 = 2 << 20;
/// Default limit on extents offered but not yet accepted or rejected (T.5).
pub const VIRTIO_MEM_DEFAULT_MAX_PENDING: u32 = 100;
/// Default time after which an unclosed or unanswered chain is abandoned (T.5).
pub const VIRTIO_MEM_DEFAULT_OFFER_TIMEOUT_MS: u32 = 20_000;

/// Request: accept the tag groups and untagged extents of a closed offer chain that the driver
/// takes (the tagged request types continue the base numbering, T.6.3).
pub const VIRTIO_MEM_REQ_ACCEPT: u16 = 4;
/// Request: release an accepted tag group (or one untagged extent).
pub const VIRTIO_MEM_REQ_RELEASE: u16 = 5;
/// Request: the driver cannot honour a release request yet (the capacity is busy).
pub const VIRTIO_MEM_REQ_RELEASE_BUSY: u16 = 6;
/// Request: list accepted extents from an id on, one page at a time (T.6.3).
pub const VIRTIO_MEM_REQ_LIST: u16 = 7;

/// Most extent records one LIST request may ask for.
pub const VIRTIO_MEM_LIST_MAX: u32 = 64;

/// True for the request types the tagged extension adds (their response is a [`TaggedResp`]).
pub fn is_tagged_request(req_type: u16) -> bool {
    matches!(
        req_type,
        VIRTIO_MEM_REQ_ACCEPT | VIRTIO_MEM_REQ_RELEASE | VIRTIO_MEM_REQ_RELEASE_BUSY | VIRTIO_MEM_REQ_LIST
    )
}

/// Event: one extent of an offer chain.
pub const VIRTIO_MEM_EVT_OFFER: u16 = 1;
/// Event: the device asks the driver to release a tag group.
pub const VIRTIO_MEM_EVT_RELEASE_REQUEST: u16 = 2;
/// Event: an accepted extent's metadata changed.
pub const VIRTIO_MEM_EVT_METADATA: u16 = 3;
/// Event: a range of an accepted extent is poisoned.
pub const VIRTIO_MEM_EVT_POISON: u16 = 4;
/// Event: an offer chain was abandoned (timeout); its extents are gone.
pub const VIRTIO_MEM_EVT_CHAIN_ABANDONED: u16 = 5;

/// Event flag: more events of the same offer chain follow.
pub const VIRTIO_MEM_EVT_F_MORE: u16 = 1 << 0;

/// Extent flag: the capacity may be shared with other hosts or guests.
pub const VIRTIO_MEM_EXTENT_F_SHARABLE: u32 = 1 << 0;
/// Extent flag: the guest may read but not write the capacity.
pub const VIRTIO_MEM_EXTENT_F_READONLY: u32 = 1 << 1;
/// Every extent flag this revision defines.
pub const VIRTIO_MEM_EXTENT_F_ALL: u32 = VIRTIO_MEM_EXTENT_F_SHARABLE | VIRTIO_MEM_EXTENT_F_READONLY;

/// Source class: not reported.
pub const VIRTIO_MEM_SOURCE_UNSPECIFIED: u8 = 0;
/// Source class: CXL Dynamic Capacity.
pub const VIRTIO_MEM_SOURCE_CXL_DC: u8 = 1;
/// Source class: soft-reserved memory such as HBM (EFI_MEMORY_SP, `dax_hmem`).
pub const VIRTIO_MEM_SOURCE_SOFT_RESERVED: u8 = 2;
/// Source class: persistent memory.
pub const VIRTIO_MEM_SOURCE_PMEM: u8 = 3;
/// Source class: a host file (regular, hugetlbfs or memfd).
pub const VIRTIO_MEM_SOURCE_FILE: u8 = 4;
/// Largest defined source class.
pub const VIRTIO_MEM_SOURCE_MAX: u8 = VIRTIO_MEM_SOURCE_FILE;

/// Reason: none (ACK).
pub const VIRTIO_MEM_REASON_NONE: u16 = 0;
/// Reason: the request names a chain that is unknown, already answered or abandoned.
pub const VIRTIO_MEM_REASON_UNKNOWN_CHAIN: u16 = 1;
/// Reason: the request names an extent id that is not part of the chain or group.
pub const VIRTIO_MEM_REASON_UNKNOWN_EXTENT: u16 = 2;
/// Reason: the same extent id appears twice in one ACCEPT.
pub const VIRTIO_MEM_REASON_DUPLICATE_ID: u16 = 3;
/// Reason: an ACCEPT takes part of a tag group (tag groups are all-or-nothing).
pub const VIRTIO_MEM_REASON_PARTIAL_GROUP: u16 = 4;
/// Reason: the request, its id list or its response room has the wrong length, or a count is
/// out of range.
pub const VIRTIO_MEM_REASON_BAD_LENGTH: u16 = 5;
/// Reason: the request needs the tagged feature, which was not negotiated.
pub const VIRTIO_MEM_REASON_NOT_NEGOTIATED: u16 = 6;
/// Reason: the chain has not closed yet (the More flag was still set on its last event).
pub const VIRTIO_MEM_REASON_CHAIN_OPEN: u16 = 7;
/// Reason: the host could not map (ACCEPT: the whole chain is dropped) or unmap (RELEASE) the
/// capacity.
pub const VIRTIO_MEM_REASON_MAP_FAILED: u16 = 8;
/// Reason: the tag in a RELEASE does not match the extent's tag.
pub const VIRTIO_MEM_REASON_TAG_MISMATCH: u16 = 9;
/// Reason: the group is not in a state where the request applies.
pub const VIRTIO_MEM_REASON_WRONG_STATE: u16 = 10;

/// The `VIRTIO_MEM_REASON_*` codes under short names, for `reason::BAD_LENGTH`-style use.
pub mod reason {
    pub use super::VIRTIO_MEM_REASON_BAD_LENGTH as BAD_LENGTH;
    pub use super::VIRTIO_MEM_REASON_CHAIN_OPEN as CHAIN_OPEN;
    pub use super::VIRTIO_MEM_REASON_DUPLICATE_ID as DUPLICATE_ID;
    pub use super::VIRTIO_MEM_REASON_MAP_FAILED as MAP_FAILED;
    pub use super::VIRTIO_MEM_REASON_NONE as NONE;
    pub use super::VIRTIO_MEM_REASON_NOT_NEGOTIATED as NOT_NEGOTIATED;
    pub use super::VIRTIO_MEM_REASON_PARTIAL_GROUP as PARTIAL_GROUP;
    pub use super::VIRTIO_MEM_REASON_TAG_MISMATCH as TAG_MISMATCH;
    pub use super::VIRTIO_MEM_REASON_UNKNOWN_CHAIN as UNKNOWN_CHAIN;
    pub use super::VIRTIO_MEM_REASON_UNKNOWN_EXTENT as UNKNOWN_EXTENT;
    pub use super::VIRTIO_MEM_REASON_WRONG_STATE as WRONG_STATE;
}

/// Configuration fields appended after the 56 base bytes when the tagged feature is offered.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct TaggedConfig {
    /// The base virtio-mem configuration, unchanged.
    pub base: VirtioMemConfig,
    /// Start guest-physical address of the window extents are placed in (2 MiB aligned).
    pub tagged_addr: Le64,
    /// Size of that window.
    pub tagged_size: Le64,
    /// Most extents the device keeps offered but unanswered.
    pub max_pending: Le32,
    /// Milliseconds after an offer's first event before an unanswered chain is abandoned.
    pub offer_timeout_ms: Le32,
    /// Number of extents currently accepted (mapped).
    pub accepted_extents: Le32,
    /// Reserved, reads as zero.
    pub reserved: Le32,
}

/// One extent as the device describes it to the driver (80 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ExtentRecord {
    /// 16-byte tag (UUID in RFC 4122 byte order); all zero means untagged.
    pub tag: [u8; 16],
    /// Device-assigned id, unique for the life of the device.
    pub extent_id: Le64,
    /// Guest-physical address, 2 MiB aligned.
    pub addr: Le64,
    /// Length in bytes, a non-zero multiple of 2 MiB.
    pub length: Le64,
    /// `VIRTIO_MEM_EXTENT_F_*` flags.
    pub flags: Le32,
    /// Proximity domain / NUMA node the capacity belongs to.
    pub node_id: Le16,
    /// `SOURCE_*` class of the host capacity.
    pub source: u8,
    /// Reserved, zero.
    pub reserved0: u8,
    /// Read latency in nanoseconds (0: not reported), as HMAT sysfs `read_latency`.
    pub read_latency_ns: Le32,
    /// Write latency in nanoseconds (0: not reported).
    pub write_latency_ns: Le32,
    /// Read bandwidth in MB/s (0: not reported), as HMAT sysfs `read_bandwidth`.
    pub read_bandwidth_mbps: Le32,
    /// Write bandwidth in MB/s (0: not reported).
    pub write_bandwidth_mbps: Le32,
    /// Sequence number within a sharable tag group (0..n-1); zero otherwise.
    pub seq: Le16,
    /// Reserved, zero.
    pub reserved1: [u8; 14],
}

/// Driver request header for tagged requests (40 bytes); ACCEPT is followed by `count` `le64` ids.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct TaggedReq {
    /// One of the `VIRTIO_MEM_REQ_*` values.
    pub req_type: Le16,
    /// Reserved.
    pub padding: [Le16; 3],
    /// ACCEPT: the chain id; RELEASE / RELEASE_BUSY: an extent id of the group; LIST: the first
    /// extent id to list (0: from the start).
    pub id: Le64,
    /// RELEASE / RELEASE_BUSY: the group's tag (all zero for an untagged extent).
    pub tag: [u8; 16],
    /// ACCEPT: number of extent ids that follow; LIST: most records wanted
    /// (1..=[`VIRTIO_MEM_LIST_MAX`]); otherwise zero.
    pub count: Le32,
    /// Reserved.
    pub reserved: Le32,
}

/// Device response to a tagged request (16 bytes); a LIST response is followed by `value`
/// extent records.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct TaggedResp {
    /// `VIRTIO_MEM_RESP_ACK`, `_BUSY` or `_ERROR`.
    pub resp_type: Le16,
    /// Reserved.
    pub padding: [Le16; 3],
    /// One of the [`reason`] values.
    pub reason: Le16,
    /// Reserved.
    pub padding_1: Le16,
    /// ACCEPT: number of extents accepted; RELEASE: number of extents released; LIST: number of
    /// [`ExtentRecord`]s that follow the response.
    pub value: Le32,
}

/// Event the device writes into a driver-supplied eventq buffer (128 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct EventMsg {
    /// One of the `VIRTIO_MEM_EVT_*` values.
    pub event_type: Le16,
    /// `VIRTIO_MEM_EVT_F_*` flags.
    pub flags: Le16,
    /// Reserved.
    pub reserved: Le32,
    /// The offer chain this event belongs to (OFFER, CHAIN_ABANDONED); otherwise zero.
    pub chain_id: Le64,
    /// The extent concerned (OFFER, METADATA, POISON, RELEASE_REQUEST).
    pub record: ExtentRecord,
    /// POISON: offset of the poisoned range within the extent.
    pub arg0: Le64,
    /// POISON: length of the poisoned range.
    pub arg1: Le64,
    /// Reserved.
    pub reserved1: [Le64; 2],
}

/// Size of [`TaggedConfig`] on the wire.
pub const VIRTIO_MEM_TAGGED_CONFIG_SIZE: usize = core::mem::size_of::<TaggedConfig>();
/// Size of [`ExtentRecord`] on the wire.
pub const VIRTIO_MEM_EXTENT_RECORD_SIZE: usize = core::mem::size_of::<ExtentRecord>();
/// Size of [`TaggedReq`] on the wire.
pub const VIRTIO_MEM_TAGGED_REQ_SIZE: usize = core::mem::size_of::<TaggedReq>();
/// Size of [`TaggedResp`] on the wire.
pub const VIRTIO_MEM_TAGGED_RESP_SIZE: usize = core::mem::size_of::<TaggedResp>();
/// Size of [`EventMsg`] on the wire; eventq buffers must be at least this long.
pub const VIRTIO_MEM_EVENT_SIZE: usize = core::mem::size_of::<EventMsg>();

const _: () = assert!(VIRTIO_MEM_TAGGED_CONFIG_SIZE == 88);
const _: () = assert!(VIRTIO_MEM_EXTENT_RECORD_SIZE == 80);
const _: () = assert!(VIRTIO_MEM_TAGGED_REQ_SIZE == 40);
const _: () = assert!(VIRTIO_MEM_TAGGED_RESP_SIZE == 16);
const _: () = assert!(VIRTIO_MEM_EVENT_SIZE == 128);

/// True if `tag` is the all-zero (untagged) tag.
pub fn is_null_tag(tag: &[u8; 16]) -> bool {
    tag.iter().all(|b| *b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;

    #[test]
    fn tagged_config_starts_after_base() {
        assert_eq!(offset_of!(TaggedConfig, tagged_addr), 56);
        assert_eq!(offset_of!(TaggedConfig, tagged_size), 64);
        assert_eq!(offset_of!(TaggedConfig, max_pending), 72);
        assert_eq!(offset_of!(TaggedConfig, offer_timeout_ms), 76);
        assert_eq!(offset_of!(TaggedConfig, accepted_extents), 80);
    }

    #[test]
    fn record_offsets_match_spec_table() {
        assert_eq!(offset_of!(ExtentRecord, extent_id), 16);
        assert_eq!(offset_of!(ExtentRecord, addr), 24);
        assert_eq!(offset_of!(ExtentRecord, length), 32);
        assert_eq!(offset_of!(ExtentRecord, flags), 40);
        assert_eq!(offset_of!(ExtentRecord, node_id), 44);
        assert_eq!(offset_of!(ExtentRecord, source), 46);
        assert_eq!(offset_of!(ExtentRecord, read_latency_ns), 48);
        assert_eq!(offset_of!(ExtentRecord, write_latency_ns), 52);
        assert_eq!(offset_of!(ExtentRecord, read_bandwidth_mbps), 56);
        assert_eq!(offset_of!(ExtentRecord, write_bandwidth_mbps), 60);
        assert_eq!(offset_of!(ExtentRecord, seq), 64);
        assert_eq!(offset_of!(EventMsg, chain_id), 8);
        assert_eq!(offset_of!(EventMsg, record), 16);
        assert_eq!(offset_of!(EventMsg, arg0), 96);
        assert_eq!(offset_of!(EventMsg, arg1), 104);
        assert_eq!(offset_of!(TaggedReq, id), 8);
        assert_eq!(offset_of!(TaggedReq, tag), 16);
        assert_eq!(offset_of!(TaggedReq, count), 32);
        assert_eq!(offset_of!(TaggedResp, reason), 8);
        assert_eq!(offset_of!(TaggedResp, value), 12);
    }

    #[test]
    fn null_tag() {
        assert!(is_null_tag(&[0; 16]));
        let mut t = [0; 16];
        t[15] = 1;
        assert!(!is_null_tag(&t));
    }
}

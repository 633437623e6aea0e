//! The host side of the device: typed commands a VMM issues (offer, release, metadata, poison)
//! and what it reads back (the extent table, host events).

use crate::mapper::SourceRef;
use serde::{Deserialize, Serialize};
use tagmem_wire as wire;
use uuid::Uuid;

/// Sharing and access flags of an extent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtentFlags {
    /// Capacity shared with other hosts or guests: tagged, all-or-nothing, never onlined as RAM.
    pub sharable: bool,
    /// The guest may read but not write it.
    pub readonly: bool,
}

impl ExtentFlags {
    /// The `VIRTIO_MEM_EXTENT_F_*` wire bits.
    pub fn bits(self) -> u32 {
        (if self.sharable {
            wire::VIRTIO_MEM_EXTENT_F_SHARABLE
        } else {
            0
        }) | (if self.readonly {
            wire::VIRTIO_MEM_EXTENT_F_READONLY
        } else {
            0
        })
    }

    /// Decodes wire bits, ignoring unknown ones.
    pub fn from_bits(bits: u32) -> Self {
        ExtentFlags {
            sharable: bits & wire::VIRTIO_MEM_EXTENT_F_SHARABLE != 0,
            readonly: bits & wire::VIRTIO_MEM_EXTENT_F_READONLY != 0,
        }
    }
}

pub use tagmem_wire::{Perf, SourceClass};

/// One extent the host wants to offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtentSpec {
    /// The tag; `Uuid::nil()` for untagged capacity.
    pub tag: Uuid,
    /// Length in bytes: a non-zero multiple of 2 MiB.
    pub length: u64,
    /// Where the bytes live on the host; the offset must be 2 MiB aligned.
    pub source: SourceRef,
    /// Guest-physical address to place it at; `None` lets the device choose in its window.
    pub gpa: Option<u64>,
    /// Sharable / read-only.
    pub flags: ExtentFlags,
    /// Performance metadata.
    pub perf: Perf,
    /// NUMA node / proximity domain.
    pub node: u16,
    /// Sequence number within a sharable tag group (0..n-1); ignored (zero) for other extents.
    pub seq: u16,
    /// Class of the host capacity.
    pub class: SourceClass,
}

impl ExtentSpec {
    /// `length` bytes of `source` carrying `tag`; the rest defaults: the device chooses the guest
    /// address, no flags, no performance data, node 0, sequence 0, class unspecified.
    pub fn new(tag: Uuid, length: u64, source: SourceRef) -> Self {
        ExtentSpec {
            tag,
            length,
            source,
            gpa: None,
            flags: ExtentFlags::default(),
            perf: Perf::default(),
            node: 0,
            seq: 0,
            class: SourceClass::Unspecified,
        }
    }
}

/// What a successful offer returns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferReceipt {
    /// The chain's id.
    pub chain_id: u64,
    /// Each offered extent's id and guest-physical address, in offer order.
    pub extents: Vec<(u64, u64)>,
}

/// Which capacity a release, metadata update or lookup concerns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Every extent carrying this (non-nil) tag.
    Tag(Uuid),
    /// One extent (for tagged capacity: its whole tag group, where a group is meant).
    Extent(u64),
}

/// Life-cycle state of one extent, as the host sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExtentState {
    /// Offered; the chain has not been answered yet.
    Pending,
    /// Accepted and mapped into the guest.
    Accepted,
    /// Accepted; the host asked for release and waits for the driver.
    ReleaseRequested,
    /// Accepted; the driver reported the group busy, release is deferred.
    ReleaseDeferred,
}

/// One row of the extent table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtentInfo {
    /// Device-assigned id.
    pub id: u64,
    /// Chain the extent was offered in.
    pub chain_id: u64,
    /// Tag (`nil` for untagged).
    pub tag: Uuid,
    /// Guest-physical address.
    pub gpa: u64,
    /// Length in bytes.
    pub length: u64,
    /// Host backing.
    pub source: SourceRef,
    /// Flags.
    pub flags: ExtentFlags,
    /// Performance metadata.
    pub perf: Perf,
    /// NUMA node.
    pub node: u16,
    /// Sequence number in a sharable group.
    pub seq: u16,
    /// Source class.
    pub class: SourceClass,
    /// Life-cycle state.
    pub state: ExtentState,
    /// Poisoned ranges reported so far, as (offset, length) within the extent.
    pub poison: Vec<(u64, u64)>,
}

/// Something the host should know happened, drained with `take_host_events`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostEvent {
    /// The driver answered a chain: these extents were accepted and mapped, the rest dropped.
    ChainAnswered {
        /// The chain.
        chain_id: u64,
        /// Accepted extent ids.
        accepted: Vec<u64>,
        /// Rejected extent ids (their backing may be reused).
        rejected: Vec<u64>,
    },
    /// A chain was abandoned (timeout, reset or mapping failure); none of it is mapped.
    ChainDropped {
        /// The chain.
        chain_id: u64,
        /// Its extent ids.
        extents: Vec<u64>,
        /// Why.
        reason: String,
    },
    /// Extents were released and unmapped; the guest can no longer reach them.
    Released {
        /// The released extents with their backing, so the host can close or reuse it.
        extents: Vec<(u64, SourceRef)>,
    },
    /// The driver deferred a release request (the capacity is busy in the guest).
    ReleaseDeferred {
        /// Extent ids of the group.
        extents: Vec<u64>,
    },
    /// The driver reset the device. Nothing was unmapped: plugged blocks and accepted extents
    /// stay, and so do pending chains, which are offered again when the driver next activates
    /// the device with tagged extents (unless they time out first).
    DeviceReset {
        /// Chains pending at the reset.
        pending_chains: Vec<u64>,
    },
}

/// Errors of host-side commands; each names what is wrong.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// An offer must carry at least one extent.
    #[error("offer is empty")]
    EmptyOffer,
    /// Extent length is zero or not a multiple of 2 MiB.
    #[error("extent {index}: length {length:#x} is not a non-zero multiple of 2 MiB")]
    MisalignedLength {
        /// Position in the offer.
        index: usize,
        /// The length given.
        length: u64,
    },
    /// The backing range `offset + length` ends past 2^64.
    #[error("extent {index}: backing range {offset:#x}+{length:#x} ends past 2^64")]
    RangeOverflow {
        /// Position in the offer.
        index: usize,
        /// The backing offset given.
        offset: u64,
        /// The length given.
        length: u64,
    },
    /// Backing offset or guest address not 2 MiB aligned.
    #[error("extent {index}: {field} {value:#x} is not 2 MiB aligned")]
    Misaligned {
        /// Position in the offer.
        index: usize,
        /// Which field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// The extent would overlap another one in the guest or on the same backing.
    #[error("extent {index}: {what} {start:#x}+{length:#x} overlaps extent {other}")]
    Overlap {
        /// Position in the offer.
        index: usize,
        /// "guest range" or "backing range".
        what: &'static str,
        /// Start of the offending range.
        start: u64,
        /// Its length.
        length: u64,
        /// Id of the extent it overlaps (or offer index for a clash within the offer).
        other: u64,
    },
    /// The tag is already in use by another chain on this device.
    #[error("tag {0} is already present on this device")]
    DuplicateTag(Uuid),
    /// Sharable capacity must carry a tag.
    #[error("extent {0}: sharable capacity needs a tag")]
    SharableUntagged(usize),
    /// A tag group mixes sharable and non-sharable extents.
    #[error("tag {0}: extents disagree on the sharable flag")]
    MixedSharing(Uuid),
    /// Sequence numbers of a sharable group are not exactly 0..n-1.
    #[error("tag {tag}: sequence numbers must be exactly 0..{n}, got {got:?}")]
    BadSequence {
        /// The group.
        tag: Uuid,
        /// Group size.
        n: usize,
        /// The numbers given, sorted.
        got: Vec<u16>,
    },
    /// The guest-physical window has no room for the extent.
    #[error("extent {index}: no room for {length:#x} bytes in the tagged window")]
    WindowFull {
        /// Position in the offer.
        index: usize,
        /// The length asked for.
        length: u64,
    },
    /// A fixed guest address falls outside the tagged window.
    #[error("extent {index}: guest range {gpa:#x}+{length:#x} is outside the tagged window")]
    OutsideWindow {
        /// Position in the offer.
        index: usize,
        /// Address given.
        gpa: u64,
        /// Length.
        length: u64,
    },
    /// Too many extents would be pending at once.
    #[error("{pending} extents already pending, {offered} more would exceed the limit of {max}")]
    TooManyPending {
        /// Currently pending.
        pending: usize,
        /// In this offer.
        offered: usize,
        /// The limit.
        max: usize,
    },
    /// The driver has not negotiated the tagged feature or the device is not active.
    #[error("the driver has not enabled tagged extents (device not active or feature not negotiated)")]
    NotReady,
    /// No extent or tag group matches.
    #[error("no such extent or tag: {0}")]
    NotFound(String),
    /// The capacity is not in a state where the command applies.
    #[error("{what} is {state:?}; {command} needs it accepted")]
    WrongState {
        /// Extent id as text.
        what: String,
        /// Its state.
        state: ExtentState,
        /// The command.
        command: &'static str,
    },
    /// The driver is not draining events; the outbox is full.
    #[error("{0} events are waiting for the driver; refusing to queue more")]
    EventBacklog(usize),
    /// A requested size is not a multiple of the block size or exceeds the region.
    #[error("requested size {size:#x} is invalid: {reason}")]
    BadRequestedSize {
        /// The size given.
        size: u64,
        /// Why it is invalid.
        reason: &'static str,
    },
    /// A poison range lies outside its extent.
    #[error("poison range {offset:#x}+{length:#x} is outside extent {id} ({extent_len:#x} bytes)")]
    PoisonOutOfRange {
        /// Extent.
        id: u64,
        /// Offset given.
        offset: u64,
        /// Length given.
        length: u64,
        /// The extent's length.
        extent_len: u64,
    },
}

//! What the driver reports: its errors, the device's typed answers and the events it logs.

use crate::dax::format_uuid;
use crate::offer::RejectReason;
use crate::virtqueue::QueueError;
use alloc::string::String;
use alloc::vec::Vec;
use tagmem_wire::*;

/// A failed driver operation, or a device misbehaviour the driver noticed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriverError {
    /// `init` has not completed.
    NotInitialized,
    /// The operation needs the tagged feature, which was not negotiated.
    NotNegotiated,
    /// The device does not offer VIRTIO_F_VERSION_1.
    MissingVersion1,
    /// The device did not keep FEATURES_OK set.
    FeaturesRejected,
    /// The device did not read back status 0 after a reset.
    ResetTimeout,
    /// The device did not keep DRIVER_OK set, or asked to be reset right away.
    ActivationFailed,
    /// The configuration generation kept changing while it was read.
    ConfigUnstable,
    /// The device reports queue size 0 for this queue.
    QueueUnavailable(u16),
    /// The DMA region is too small for the rings and buffers.
    OutOfDmaMemory,
    /// A virtqueue error (including hostile used-ring contents).
    Queue(QueueError),
    /// The device did not answer within the spin limit; it still owns the request.
    Timeout,
    /// An earlier request timed out and the device has not returned it yet; nothing was sent.
    Stuck,
    /// The device reported a response length outside what the request allows.
    ResponseLength {
        /// Bytes the response needs.
        need: u32,
        /// Bytes the device reported.
        got: u32,
    },
    /// A response type this revision does not define.
    UnknownResponse(u16),
    /// A STATE response with an undefined state value.
    UnknownState(u16),
    /// More extent ids than the request buffer holds.
    TooManyIds(usize),
    /// The device refused a tagged request.
    Refused(TaggedResponse),
    /// No accepted device matches the target.
    UnknownTarget,
    /// A claim found no unclaimed capacity with the tag (DCD's `uuid` write fails `ENOENT`).
    NothingToClaim,
    /// An event whose used length is not the event size.
    EventLength(u32),
    /// An event that does not parse.
    BadEvent(WireError),
    /// An event names an extent the driver has not accepted.
    UnknownExtent(u64),
    /// An event's tag differs from the accepted extent's.
    TagMismatch(u64),
    /// A METADATA event moves or resizes an accepted extent.
    ExtentMoved(u64),
    /// A POISON event outside its extent, or empty.
    PoisonOutOfRange {
        /// The extent.
        extent_id: u64,
        /// Offset the device reported.
        offset: u64,
        /// Length the device reported.
        length: u64,
    },
    /// An OFFER event for a chain whose closing event already arrived.
    OfferAfterClose(u64),
    /// A chain carried more extents than the driver holds pending; it is rejected whole.
    ChainOverflow {
        /// The chain.
        chain_id: u64,
        /// Extents the driver could not hold.
        dropped: u32,
    },
    /// An ACK's count differs from what the driver sent or holds.
    CountMismatch {
        /// Count the driver expected.
        expected: u32,
        /// Count the device reported.
        got: u32,
    },
    /// A LIST page is out of order, repeats an id, or goes on past what the device said it holds.
    BadList {
        /// The first id the page was asked from.
        from: u64,
    },
    /// A record the device listed as accepted fails the driver's checks; it is not exposed.
    BadListedRecord {
        /// The extent.
        extent_id: u64,
        /// The check it failed.
        reason: RejectReason,
    },
}

impl From<QueueError> for DriverError {
    fn from(e: QueueError) -> Self {
        DriverError::Queue(e)
    }
}

impl core::fmt::Display for DriverError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        use DriverError::*;
        match self {
            NotInitialized => write!(f, "driver not initialized"),
            NotNegotiated => write!(f, "tagged extents not negotiated"),
            MissingVersion1 => write!(f, "device does not offer VIRTIO_F_VERSION_1"),
            FeaturesRejected => write!(f, "device rejected the feature set"),
            ResetTimeout => write!(f, "device did not complete reset"),
            ActivationFailed => write!(f, "device refused DRIVER_OK"),
            ConfigUnstable => write!(f, "configuration kept changing while read"),
            QueueUnavailable(q) => write!(f, "queue {q} unavailable"),
            OutOfDmaMemory => write!(f, "DMA region too small"),
            Queue(e) => write!(f, "virtqueue: {e}"),
            Timeout => write!(f, "device did not answer"),
            Stuck => write!(f, "an earlier request is still outstanding"),
            ResponseLength { need, got } => write!(f, "response length {got}, need {need}"),
            UnknownResponse(t) => write!(f, "unknown response type {t}"),
            UnknownState(s) => write!(f, "unknown block state {s}"),
            TooManyIds(n) => write!(f, "{n} extent ids do not fit one request"),
            Refused(r) => write!(
                f,
                "device answered {:?} reason {} value {}",
                r.resp, r.reason, r.value
            ),
            UnknownTarget => write!(f, "no such device"),
            NothingToClaim => write!(f, "no unclaimed capacity carries this tag"),
            EventLength(n) => write!(f, "event of {n} bytes"),
            BadEvent(e) => write!(f, "bad event: {e}"),
            UnknownExtent(id) => write!(f, "unknown extent {id}"),
            TagMismatch(id) => write!(f, "tag mismatch on extent {id}"),
            ExtentMoved(id) => write!(f, "metadata moves extent {id}"),
            PoisonOutOfRange {
                extent_id,
                offset,
                length,
            } => write!(f, "poison {offset:#x}+{length:#x} outside extent {extent_id}"),
            OfferAfterClose(c) => write!(f, "offer for closed chain {c}"),
            ChainOverflow { chain_id, dropped } => write!(f, "chain {chain_id} overflowed by {dropped}"),
            CountMismatch { expected, got } => write!(f, "count {got}, expected {expected}"),
            BadList { from } => write!(f, "bad LIST page from extent id {from}"),
            BadListedRecord { extent_id, reason } => {
                write!(f, "listed extent {extent_id} refused: {reason}")
            }
        }
    }
}

/// A device response type (VIRTIO_MEM_RESP_*).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemResponse {
    /// The request succeeded.
    Ack,
    /// The request was denied.
    Nack,
    /// The device cannot process the request right now.
    Busy,
    /// The request was invalid.
    Error,
}

impl MemResponse {
    /// Decodes a wire response type.
    pub fn from_wire(v: u16) -> Result<Self, DriverError> {
        match v {
            VIRTIO_MEM_RESP_ACK => Ok(MemResponse::Ack),
            VIRTIO_MEM_RESP_NACK => Ok(MemResponse::Nack),
            VIRTIO_MEM_RESP_BUSY => Ok(MemResponse::Busy),
            VIRTIO_MEM_RESP_ERROR => Ok(MemResponse::Error),
            other => Err(DriverError::UnknownResponse(other)),
        }
    }
}

/// Plugged state of a block range (VIRTIO_MEM_STATE_*).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockState {
    /// Every block is plugged.
    Plugged,
    /// Every block is unplugged.
    Unplugged,
    /// Some blocks are plugged.
    Mixed,
}

/// Answer to a STATE request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateResponse {
    /// The response type.
    pub resp: MemResponse,
    /// The state (only with an ACK).
    pub state: Option<BlockState>,
}

/// Answer to a tagged request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaggedResponse {
    /// The response type.
    pub resp: MemResponse,
    /// One of the `tagmem_wire::reason` values.
    pub reason: u16,
    /// ACCEPT: extents accepted; RELEASE: extents released.
    pub value: u32,
}

impl TaggedResponse {
    /// Decodes a tagged response's status.
    pub fn from_wire(r: Response) -> Result<Self, DriverError> {
        Ok(TaggedResponse {
            resp: MemResponse::from_wire(r.status)?,
            reason: r.reason,
            value: r.payload,
        })
    }
}

/// Which accepted capacity an operation is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The device carrying this (non-nil) tag.
    Tag([u8; 16]),
    /// The device holding this extent (the only way to name an untagged device).
    Extent(u64),
}

impl From<[u8; 16]> for Target {
    fn from(t: [u8; 16]) -> Self {
        Target::Tag(t)
    }
}

impl From<u64> for Target {
    fn from(id: u64) -> Self {
        Target::Extent(id)
    }
}

/// Something that happened, for the application's log (drained with [`TagMemDriver::drain_log`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DriverEvent {
    /// An offered extent was left out of the ACCEPT.
    Rejected {
        /// The chain.
        chain_id: u64,
        /// The extent.
        extent_id: u64,
        /// Why.
        reason: RejectReason,
    },
    /// The device acknowledged the ACCEPT for a chain (`accepted` may be empty).
    Answered {
        /// The chain.
        chain_id: u64,
        /// Extent ids now accepted.
        accepted: Vec<u64>,
    },
    /// The ACCEPT for a chain failed; nothing of it was accepted. With [`DriverError::Stuck`] it
    /// was not sent yet and is retried by a later [`TagMemDriver::poll`].
    AcceptFailed {
        /// The chain.
        chain_id: u64,
        /// What went wrong.
        error: DriverError,
    },
    /// A dax device appeared.
    DeviceCreated {
        /// Its name.
        name: String,
        /// Its uuid.
        uuid: [u8; 16],
    },
    /// After (re)initialisation the driver listed what the device holds accepted for it
    /// ([T-LIST-2]); its devices were created again from those extents.
    Relearned {
        /// Extent ids listed and exposed again.
        extents: Vec<u64>,
    },
    /// A dax device was forgotten without a release: the driver reset the device (the host keeps
    /// the capacity; the next `init` lists it again).
    DeviceRemoved {
        /// Its name.
        name: String,
        /// Its uuid.
        uuid: [u8; 16],
    },
    /// The device abandoned a chain (timeout).
    ChainAbandoned {
        /// The chain.
        chain_id: u64,
        /// Extents of it the driver had collected and dropped.
        dropped: usize,
    },
    /// The host asked for a device back.
    ReleaseRequested {
        /// The device.
        name: String,
        /// The extent the request named.
        extent_id: u64,
    },
    /// The driver answered RELEASE_BUSY; it releases once the device is no longer busy.
    ReleaseDeferred {
        /// The device.
        name: String,
        /// The extent the answer named.
        extent_id: u64,
    },
    /// A device was released; the guest can no longer reach its memory.
    Released {
        /// Its name.
        name: String,
        /// Its uuid.
        uuid: [u8; 16],
        /// Its extents.
        extent_ids: Vec<u64>,
    },
    /// A release (or RELEASE_BUSY) failed; the device is kept.
    ReleaseFailed {
        /// The device.
        name: String,
        /// What went wrong.
        error: DriverError,
    },
    /// An extent's metadata changed.
    MetadataUpdated {
        /// The device.
        name: String,
        /// The extent.
        extent_id: u64,
    },
    /// A range of an extent is poisoned.
    Poisoned {
        /// The device.
        name: String,
        /// The extent.
        extent_id: u64,
        /// Offset within the extent.
        offset: u64,
        /// Length.
        length: u64,
    },
    /// The device sent something malformed or inconsistent; it was ignored.
    Protocol(DriverError),
}

impl core::fmt::Display for DriverEvent {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        use DriverEvent::*;
        match self {
            Rejected {
                chain_id,
                extent_id,
                reason,
            } => write!(f, "chain {chain_id}: rejected extent {extent_id}: {reason}"),
            Answered { chain_id, accepted } => write!(f, "chain {chain_id}: accepted {accepted:?}"),
            AcceptFailed { chain_id, error } => write!(f, "chain {chain_id}: accept failed: {error}"),
            DeviceCreated { name, uuid } => write!(f, "{name}: created, uuid {}", format_uuid(uuid)),
            DeviceRemoved { name, uuid } => write!(f, "{name}: removed, uuid {}", format_uuid(uuid)),
            Relearned { extents } => write!(f, "listed {} accepted extents: {extents:?}", extents.len()),
            ChainAbandoned { chain_id, dropped } => {
                write!(f, "chain {chain_id}: abandoned ({dropped} extents dropped)")
            }
            ReleaseRequested { name, extent_id } => {
                write!(f, "{name}: release requested (extent {extent_id})")
            }
            ReleaseDeferred { name, extent_id } => {
                write!(f, "{name}: busy, release deferred (extent {extent_id})")
            }
            Released {
                name,
                uuid,
                extent_ids,
            } => write!(f, "{name}: released {extent_ids:?}, uuid {}", format_uuid(uuid)),
            ReleaseFailed { name, error } => write!(f, "{name}: release failed: {error}"),
            MetadataUpdated { name, extent_id } => {
                write!(f, "{name}: metadata of extent {extent_id} updated")
            }
            Poisoned {
                name,
                extent_id,
                offset,
                length,
            } => write!(
                f,
                "{name}: extent {extent_id} poisoned at {offset:#x}+{length:#x}"
            ),
            Protocol(e) => write!(f, "device protocol error: {e}"),
        }
    }
}

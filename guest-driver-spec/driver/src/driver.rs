//! The driver proper: negotiation, base virtio-mem requests, and the tagged-extent life cycle.
//!
//! Everything is polled and synchronous. A request is published on guestq, the device is
//! notified, and the driver spins on the used ring (calling [`Transport::wait`]) until the
//! response arrives or the spin limit is reached. Events are taken from eventq only when the
//! application calls [`TagMemDriver::poll`]. A host-side test can therefore run device and driver
//! in one thread: the transport's `notify` runs the device.

use crate::dax::{format_uuid, ClaimError, ClaimMode, DaxDevice, DaxRegistry, Extent, PoisonRange, Slot};
use crate::offer::{enforce, screen, AcceptAll, OfferPolicy, RejectReason, Window};
use crate::transport::{status, DmaAllocator, DmaMemory, Transport};
use crate::virtqueue::{Buf, QueueError, QueueLayout, VirtQueue};
use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use tagmem_wire::*;

mod relearn;

/// Descriptors requested for guestq (a request uses at most three).
pub const GUESTQ_SIZE: u16 = 16;
/// Most descriptors requested for eventq; each holds one posted event buffer. The driver asks for
/// `max_pending` + 8 rounded up to a power of two (SPEC.md [T-Q-7]), at most this many.
pub const EVENTQ_SIZE: u16 = 128;
/// Most extent ids the driver keeps pending (and sends in one ACCEPT), whatever the device says.
pub const MAX_PENDING_CAP: u32 = 1024;
/// Default number of [`Transport::wait`] calls before a request is declared timed out.
pub const DEFAULT_SPIN_LIMIT: u64 = 50_000_000;
/// Most events [`TagMemDriver::poll`] handles in one call.
pub const MAX_EVENTS_PER_POLL: usize = 1024;
/// Most entries kept in the driver event log; older ones are dropped first.
pub const LOG_CAPACITY: usize = 4096;
/// Size of the driver's response buffer (the largest fixed response, a tagged one).
const RESP_BUF_LEN: u32 = 16;
/// Records the driver asks for per LIST request.
pub const LIST_PAGE: u32 = VIRTIO_MEM_LIST_MAX;
/// Size of the LIST response buffer: the response and a full page of records.
const LIST_BUF_LEN: u32 = TAGGED_RESP_LEN + RECORD_LEN * LIST_PAGE;
const RECORD_LEN: u32 = 80;
const _: () = assert!(RECORD_LEN as usize == VIRTIO_MEM_EXTENT_RECORD_SIZE);
/// Wire sizes as descriptor lengths.
const BASE_REQ_LEN: u32 = 24;
const BASE_RESP_LEN: u32 = 10;
const TAGGED_REQ_LEN: u32 = 40;
const TAGGED_RESP_LEN: u32 = 16;
const EVENT_LEN: u32 = 128;
const _: () = assert!(BASE_REQ_LEN as usize == VIRTIO_MEM_REQ_SIZE);
const _: () = assert!(BASE_RESP_LEN as usize == VIRTIO_MEM_RESP_SIZE);
const _: () = assert!(TAGGED_REQ_LEN as usize == VIRTIO_MEM_TAGGED_REQ_SIZE);
const _: () =
    assert!(TAGGED_RESP_LEN == RESP_BUF_LEN && TAGGED_RESP_LEN as usize == VIRTIO_MEM_TAGGED_RESP_SIZE);
const _: () = assert!(EVENT_LEN as usize == VIRTIO_MEM_EVENT_SIZE);
/// Times a configuration read is retried while the generation counter moves.
const CONFIG_RETRIES: usize = 16;

fn bit(n: u32) -> u64 {
    1u64 << n
}

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

/// An offer chain being collected or answered.
#[derive(Clone, Debug, Default)]
struct Chain {
    records: Vec<ExtentRecord>,
    overflow: u32,
    closed: bool,
    /// Extents to accept, once decided (the decision is made once per chain).
    decision: Option<Vec<Extent>>,
}

/// The reference driver: one virtio-mem device with the tagged-extent extension.
pub struct TagMemDriver<T: Transport, D: DmaMemory> {
    transport: T,
    dma: D,
    alloc: DmaAllocator,
    spin_limit: u64,
    policy: Box<dyn OfferPolicy>,
    initialized: bool,
    features: u64,
    config: VirtioMemConfig,
    tagged_config: Option<TaggedConfig>,
    pending_limit: usize,
    /// Some device answered RELEASE_BUSY and waits to be released: only then does a poll scan the
    /// devices for ones no longer busy (a poll stays O(1) in the number of devices otherwise).
    any_deferred: bool,
    guestq: Option<VirtQueue>,
    eventq: Option<VirtQueue>,
    /// Event buffer posted under each eventq head.
    event_bufs: Vec<Option<u64>>,
    req_buf: u64,
    resp_buf: u64,
    /// Response buffer of LIST requests.
    list_buf: u64,
    /// Head of a guestq request that timed out and the device still holds.
    stale: Option<u16>,
    chains: BTreeMap<u64, Chain>,
    registry: DaxRegistry,
    busy_tags: BTreeSet<[u8; 16]>,
    log: VecDeque<DriverEvent>,
    log_dropped: u64,
}

impl<T: Transport, D: DmaMemory> TagMemDriver<T, D> {
    /// A driver for the device behind `transport`, carving its rings and buffers from the guest
    /// memory `[dma_base, dma_base + dma_len)` reached through `dma` (64 KiB always suffice).
    ///
    /// The offer policy defaults to [`AcceptAll`]. Nothing touches the device before
    /// [`TagMemDriver::init`].
    pub fn new(transport: T, dma: D, dma_base: u64, dma_len: u64) -> Self {
        TagMemDriver {
            transport,
            dma,
            alloc: DmaAllocator::new(dma_base, dma_len),
            spin_limit: DEFAULT_SPIN_LIMIT,
            policy: Box::new(AcceptAll),
            initialized: false,
            features: 0,
            config: VirtioMemConfig::default(),
            tagged_config: None,
            pending_limit: 0,
            any_deferred: false,
            guestq: None,
            eventq: None,
            event_bufs: Vec::new(),
            req_buf: 0,
            resp_buf: 0,
            list_buf: 0,
            stale: None,
            chains: BTreeMap::new(),
            registry: DaxRegistry::new(),
            busy_tags: BTreeSet::new(),
            log: VecDeque::new(),
            log_dropped: 0,
        }
    }

    /// Replaces the policy deciding which offered extents to accept.
    pub fn set_policy(&mut self, policy: impl OfferPolicy + 'static) {
        self.policy = Box::new(policy);
    }

    /// Sets how many [`Transport::wait`] calls a request may take before it times out (min 1).
    pub fn set_spin_limit(&mut self, spins: u64) {
        self.spin_limit = spins.max(1);
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// The transport, mutably (a host test reaches its device through it).
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// The DMA memory accessor.
    pub fn dma(&self) -> &D {
        &self.dma
    }

    /// Resets and initializes the device (VIRTIO 1.2 §3.1.1), then reads its configuration.
    ///
    /// Accepts VERSION_1, TAGGED_EXTENTS, ACPI_PXM and UNPLUGGED_INACCESSIBLE when offered (the
    /// driver never touches unplugged memory). Any earlier driver state is forgotten; with tagged
    /// extents the driver then lists what the device holds accepted (a reset keeps it) and
    /// exposes it again before it handles any event ([T-LIST-2]).
    pub fn init(&mut self) -> Result<(), DriverError> {
        self.forget_state();
        self.alloc.reset();
        self.transport.set_status(0);
        let mut spins = 0;
        while self.transport.status() != 0 {
            spins += 1;
            if spins >= self.spin_limit {
                return Err(DriverError::ResetTimeout);
            }
            self.transport.wait();
        }
        let mut st = status::ACKNOWLEDGE;
        self.transport.set_status(st);
        st |= status::DRIVER;
        self.transport.set_status(st);

        let offered = self.transport.device_features();
        if offered & bit(VIRTIO_F_VERSION_1) == 0 {
            return Err(self.fail(DriverError::MissingVersion1));
        }
        let wanted = bit(VIRTIO_F_VERSION_1)
            | bit(VIRTIO_MEM_F_TAGGED_EXTENTS)
            | bit(VIRTIO_MEM_F_ACPI_PXM)
            | bit(VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE);
        let accepted = offered & wanted;
        self.transport.set_driver_features(accepted);
        st |= status::FEATURES_OK;
        self.transport.set_status(st);
        if self.transport.status() & status::FEATURES_OK == 0 {
            return Err(self.fail(DriverError::FeaturesRejected));
        }
        self.features = accepted;

        if let Err(e) = self.setup() {
            return Err(self.fail(e));
        }
        st |= status::DRIVER_OK;
        self.transport.set_status(st);
        let now = self.transport.status();
        if now & status::DRIVER_OK == 0 || now & status::DEVICE_NEEDS_RESET != 0 {
            return Err(self.fail(DriverError::ActivationFailed));
        }
        self.initialized = true;
        if self.tagged() {
            // [T-LIST-2]: learn what the device holds accepted for this driver (a reset keeps
            // it) before any event is processed.
            if let Err(e) = self.relearn() {
                return Err(self.fail(e));
            }
        }
        if self.eventq.is_some() {
            self.transport.notify(VIRTIO_MEM_EVENTQ);
        }
        Ok(())
    }

    fn fail(&mut self, e: DriverError) -> DriverError {
        let st = self.transport.status();
        self.transport.set_status(st | status::FAILED);
        self.forget_state();
        e
    }

    /// Reads the configuration, sets up the queues and posts the event buffers.
    fn setup(&mut self) -> Result<(), DriverError> {
        self.refresh_config()?;
        let pending = self
            .tagged_config
            .map_or(0, |c| c.max_pending.get())
            .min(MAX_PENDING_CAP);
        self.pending_limit = usize::try_from(pending).unwrap_or(0);

        let ids_bytes = 8 * u64::from(pending.max(1));
        self.req_buf = self
            .alloc
            .alloc(u64::from(TAGGED_REQ_LEN) + ids_bytes, 16)
            .ok_or(DriverError::OutOfDmaMemory)?;
        self.resp_buf = self
            .alloc
            .alloc(u64::from(RESP_BUF_LEN), 16)
            .ok_or(DriverError::OutOfDmaMemory)?;
        if self.tagged() {
            self.list_buf = self
                .alloc
                .alloc(u64::from(LIST_BUF_LEN), 16)
                .ok_or(DriverError::OutOfDmaMemory)?;
        }
        self.guestq = Some(self.setup_queue(VIRTIO_MEM_GUESTQ, GUESTQ_SIZE)?);
        if self.tagged() {
            // Room for a whole chain of `max_pending` offers plus a few other events.
            let want = u16::try_from((pending + 8).next_power_of_two()).unwrap_or(EVENTQ_SIZE);
            let mut q = self.setup_queue(VIRTIO_MEM_EVENTQ, want.min(EVENTQ_SIZE))?;
            self.event_bufs = vec![None; usize::from(q.size())];
            for _ in 0..q.size() {
                let buf = self
                    .alloc
                    .alloc(u64::from(EVENT_LEN), 16)
                    .ok_or(DriverError::OutOfDmaMemory)?;
                let head = q.add(&self.dma, &[], &[event_buf(buf)])?;
                self.event_bufs[usize::from(head)] = Some(buf);
            }
            self.eventq = Some(q);
        }
        Ok(())
    }

    fn setup_queue(&mut self, index: u16, want: u16) -> Result<VirtQueue, DriverError> {
        let max = self.transport.queue_max_size(index);
        let size = max.min(want);
        if size == 0 {
            return Err(DriverError::QueueUnavailable(index));
        }
        // Largest power of two not above `size`.
        let size = 1u16 << (15 - size.leading_zeros());
        let layout = QueueLayout::alloc(&mut self.alloc, size).ok_or(DriverError::OutOfDmaMemory)?;
        let q = VirtQueue::new(&self.dma, layout)?;
        q.set_no_interrupt(&self.dma, true);
        self.transport
            .setup_queue(index, size, layout.desc, layout.avail, layout.used);
        self.transport.set_queue_ready(index);
        Ok(q)
    }

    /// Re-reads the configuration space (e.g. after `requested_size` changed).
    pub fn refresh_config(&mut self) -> Result<(), DriverError> {
        let len = if self.tagged() {
            VIRTIO_MEM_TAGGED_CONFIG_SIZE
        } else {
            VIRTIO_MEM_CONFIG_SIZE
        };
        let mut buf = [0u8; VIRTIO_MEM_TAGGED_CONFIG_SIZE];
        for _ in 0..CONFIG_RETRIES {
            let before = self.transport.config_generation();
            self.transport.read_config(0, &mut buf[..len]);
            if self.transport.config_generation() == before {
                let cfg = TaggedConfig::read_from_bytes(&buf[..]).unwrap_or_default();
                self.config = cfg.base;
                self.tagged_config = self.tagged().then_some(cfg);
                return Ok(());
            }
        }
        Err(DriverError::ConfigUnstable)
    }

    /// Re-reads only what a configuration change can move (`plugged_size`,
    /// `usable_region_size`, `requested_size`), each field under its own generation check, as
    /// Linux's `virtio_mem_refresh_config` does on a config-change interrupt: a dozen register
    /// reads instead of the whole configuration space.
    pub fn refresh_sizes(&mut self) -> Result<(), DriverError> {
        let plugged = self.read_config_le64(core::mem::offset_of!(VirtioMemConfig, plugged_size))?;
        let usable = self.read_config_le64(core::mem::offset_of!(VirtioMemConfig, usable_region_size))?;
        let requested = self.read_config_le64(core::mem::offset_of!(VirtioMemConfig, requested_size))?;
        for c in core::iter::once(&mut self.config).chain(self.tagged_config.as_mut().map(|t| &mut t.base)) {
            c.plugged_size = Le64::new(plugged);
            c.usable_region_size = Le64::new(usable);
            c.requested_size = Le64::new(requested);
        }
        Ok(())
    }

    /// One little-endian 64-bit configuration field, read between two equal generations.
    fn read_config_le64(&mut self, offset: usize) -> Result<u64, DriverError> {
        for _ in 0..CONFIG_RETRIES {
            let before = self.transport.config_generation();
            let mut b = [0u8; 8];
            self.transport.read_config(offset, &mut b);
            if self.transport.config_generation() == before {
                return Ok(u64::from_le_bytes(b));
            }
        }
        Err(DriverError::ConfigUnstable)
    }

    /// Forgets queues, chains and devices (the device side was or is about to be reset).
    fn forget_state(&mut self) {
        self.initialized = false;
        self.features = 0;
        self.tagged_config = None;
        self.guestq = None;
        self.eventq = None;
        self.event_bufs.clear();
        self.stale = None;
        self.chains.clear();
        self.any_deferred = false;
        for d in self.registry.clear().into_iter().filter(DaxDevice::is_claimed) {
            self.push_log(DriverEvent::DeviceRemoved {
                name: d.name,
                uuid: d.uuid,
            });
        }
    }

    /// Resets the device (status 0). The device keeps plugged blocks and accepted extents
    /// ([T-RESET-1]); the driver forgets its devices (logging [`DriverEvent::DeviceRemoved`]) and
    /// lists them again at the next [`TagMemDriver::init`].
    pub fn reset(&mut self) {
        self.transport.set_status(0);
        self.forget_state();
    }

    /// Negotiated feature bits.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// True if the tagged-extent feature was negotiated.
    pub fn tagged(&self) -> bool {
        self.features & bit(VIRTIO_MEM_F_TAGGED_EXTENTS) != 0
    }

    /// The base configuration as last read.
    pub fn config(&self) -> &VirtioMemConfig {
        &self.config
    }

    /// The tagged configuration as last read (only with the tagged feature).
    pub fn tagged_config(&self) -> Option<&TaggedConfig> {
        self.tagged_config.as_ref()
    }

    // ---- guestq requests ----------------------------------------------------------------------

    /// Publishes one request (readable `readable`, writable `resp`) and spins for the answer;
    /// returns the used length, checked to lie in `need..=resp.len`.
    fn submit(&mut self, readable: &[Buf], resp: Buf, need: u32) -> Result<u32, DriverError> {
        let q = self.guestq.as_mut().ok_or(DriverError::NotInitialized)?;
        if let Some(stale) = self.stale {
            match q.pop_used(&self.dma)? {
                Some(u) if u.head == stale => self.stale = None,
                // Only the stale chain is in flight, so `pop_used` cannot return another head.
                Some(_) => {}
                None => return Err(DriverError::Stuck),
            }
        }
        self.dma.zero(resp.addr, resp.len as usize);
        let head = q.add(&self.dma, readable, &[resp])?;
        self.transport.notify(VIRTIO_MEM_GUESTQ);
        let mut spins = 0u64;
        let len = loop {
            match q.pop_used(&self.dma) {
                Ok(Some(u)) if u.head == head => break u.len,
                Ok(_) => {}
                Err(QueueError::BadUsedId(id)) => {
                    let e = DriverError::Queue(QueueError::BadUsedId(id));
                    push_bounded(&mut self.log, &mut self.log_dropped, DriverEvent::Protocol(e));
                }
                Err(e) => {
                    self.stale = Some(head);
                    return Err(e.into());
                }
            }
            spins += 1;
            if spins >= self.spin_limit {
                self.stale = Some(head);
                return Err(DriverError::Timeout);
            }
            self.transport.wait();
        };
        if len < need || len > resp.len {
            return Err(DriverError::ResponseLength { need, got: len });
        }
        Ok(len)
    }

    /// The response buffer of base and tagged requests other than LIST.
    fn resp(&self) -> Buf {
        Buf {
            addr: self.resp_buf,
            len: RESP_BUF_LEN,
        }
    }

    fn base_request(&mut self, req: VirtioMemReq) -> Result<VirtioMemResp, DriverError> {
        if !self.initialized {
            return Err(DriverError::NotInitialized);
        }
        self.dma.write(self.req_buf, req.as_bytes());
        let req = Buf {
            addr: self.req_buf,
            len: BASE_REQ_LEN,
        };
        self.submit(&[req], self.resp(), BASE_RESP_LEN)?;
        let mut b = [0u8; VIRTIO_MEM_RESP_SIZE];
        self.dma.read(self.resp_buf, &mut b);
        Ok(VirtioMemResp::read_from_bytes(&b[..]).unwrap_or_default())
    }

    /// Sends a tagged request: the 40-byte header in one readable descriptor, the `le64` ids (if
    /// any) in a second, and a 16-byte writable response buffer.
    fn tagged_request(&mut self, hdr: TaggedReq, ids: &[u64]) -> Result<TaggedResponse, DriverError> {
        if !self.initialized {
            return Err(DriverError::NotInitialized);
        }
        if !self.tagged() {
            return Err(DriverError::NotNegotiated);
        }
        if ids.len() > self.pending_limit.max(1) {
            return Err(DriverError::TooManyIds(ids.len()));
        }
        self.dma.write(self.req_buf, hdr.as_bytes());
        let ids_addr = self.req_buf + u64::from(TAGGED_REQ_LEN);
        for (i, id) in ids.iter().enumerate() {
            self.dma.write(ids_addr + 8 * i as u64, &id.to_le_bytes());
        }
        let mut bufs = vec![Buf {
            addr: self.req_buf,
            len: TAGGED_REQ_LEN,
        }];
        if !ids.is_empty() {
            let len = u32::try_from(8 * ids.len()).map_err(|_| DriverError::TooManyIds(ids.len()))?;
            bufs.push(Buf { addr: ids_addr, len });
        }
        self.submit(&bufs, self.resp(), TAGGED_RESP_LEN)?;
        let mut b = [0u8; VIRTIO_MEM_TAGGED_RESP_SIZE];
        self.dma.read(self.resp_buf, &mut b);
        let r = TaggedResp::read_from_bytes(&b[..]).unwrap_or_default();
        Ok(TaggedResponse {
            resp: MemResponse::from_wire(r.resp_type.get())?,
            reason: r.reason.get(),
            value: r.value.get(),
        })
    }

    /// PLUG `nb_blocks` blocks at `addr`.
    pub fn plug(&mut self, addr: u64, nb_blocks: u16) -> Result<MemResponse, DriverError> {
        let r = self.base_request(VirtioMemReq::new(VIRTIO_MEM_REQ_PLUG, addr, nb_blocks))?;
        MemResponse::from_wire(r.resp_type.get())
    }

    /// UNPLUG `nb_blocks` blocks at `addr`.
    pub fn unplug(&mut self, addr: u64, nb_blocks: u16) -> Result<MemResponse, DriverError> {
        let r = self.base_request(VirtioMemReq::new(VIRTIO_MEM_REQ_UNPLUG, addr, nb_blocks))?;
        MemResponse::from_wire(r.resp_type.get())
    }

    /// UNPLUG_ALL.
    pub fn unplug_all(&mut self) -> Result<MemResponse, DriverError> {
        let r = self.base_request(VirtioMemReq::new(VIRTIO_MEM_REQ_UNPLUG_ALL, 0, 0))?;
        MemResponse::from_wire(r.resp_type.get())
    }

    /// STATE of `nb_blocks` blocks at `addr`.
    pub fn state(&mut self, addr: u64, nb_blocks: u16) -> Result<StateResponse, DriverError> {
        let r = self.base_request(VirtioMemReq::new(VIRTIO_MEM_REQ_STATE, addr, nb_blocks))?;
        let resp = MemResponse::from_wire(r.resp_type.get())?;
        let state = match (resp, r.state.get()) {
            (MemResponse::Ack, VIRTIO_MEM_STATE_PLUGGED) => Some(BlockState::Plugged),
            (MemResponse::Ack, VIRTIO_MEM_STATE_UNPLUGGED) => Some(BlockState::Unplugged),
            (MemResponse::Ack, VIRTIO_MEM_STATE_MIXED) => Some(BlockState::Mixed),
            (MemResponse::Ack, other) => return Err(DriverError::UnknownState(other)),
            _ => None,
        };
        Ok(StateResponse { resp, state })
    }

    // ---- events -------------------------------------------------------------------------------

    /// Drains eventq and handles each event (answering offers and release requests on guestq);
    /// then releases deferred devices that are no longer busy and retries unsent answers.
    ///
    /// Returns the number of event buffers consumed (at most [`MAX_EVENTS_PER_POLL`]). Bad events
    /// are logged as [`DriverEvent::Protocol`]; only a broken eventq is an error.
    pub fn poll(&mut self) -> Result<usize, DriverError> {
        let mut handled = 0;
        let mut reposted = false;
        let r = self.drain_eventq(&mut handled, &mut reposted);
        // One notification for every buffer given back in this poll (a whole chain's), not one
        // per event: the device finds them in the avail ring either way.
        if reposted {
            self.transport.notify(VIRTIO_MEM_EVENTQ);
        }
        r?;
        self.retry_deferred();
        Ok(handled)
    }

    /// The event loop of [`TagMemDriver::poll`]: takes used event buffers, gives each back to
    /// the device (`reposted` set once one was) and handles its event.
    fn drain_eventq(&mut self, handled: &mut usize, reposted: &mut bool) -> Result<(), DriverError> {
        while *handled < MAX_EVENTS_PER_POLL {
            let Some(q) = self.eventq.as_mut() else { break };
            let used = match q.pop_used(&self.dma) {
                Ok(Some(u)) => u,
                Ok(None) => break,
                Err(QueueError::BadUsedId(id)) => {
                    self.push_log(DriverEvent::Protocol(QueueError::BadUsedId(id).into()));
                    *handled += 1;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            *handled += 1;
            let Some(buf) = self
                .event_bufs
                .get_mut(usize::from(used.head))
                .and_then(Option::take)
            else {
                continue;
            };
            let mut bytes = [0u8; VIRTIO_MEM_EVENT_SIZE];
            self.dma.read(buf, &mut bytes);
            let head = q.add(&self.dma, &[], &[event_buf(buf)])?;
            self.event_bufs[usize::from(head)] = Some(buf);
            *reposted = true;
            if usize::try_from(used.len).ok() != Some(VIRTIO_MEM_EVENT_SIZE) {
                self.push_log(DriverEvent::Protocol(DriverError::EventLength(used.len)));
                continue;
            }
            match Event::try_from(&bytes[..]) {
                Ok(e) => self.handle_event(e),
                Err(w) => self.push_log(DriverEvent::Protocol(DriverError::BadEvent(w))),
            }
        }
        Ok(())
    }

    fn handle_event(&mut self, e: Event) {
        match e {
            Event::Offer {
                chain_id,
                more,
                record,
            } => self.on_offer(chain_id, more, record),
            Event::ChainAbandoned { chain_id } => {
                let dropped = self.chains.remove(&chain_id).map_or(0, |c| c.records.len());
                self.push_log(DriverEvent::ChainAbandoned { chain_id, dropped });
            }
            Event::ReleaseRequest { record } => self.on_release_request(&record),
            Event::Metadata { record } => self.on_metadata(&record),
            Event::Poison {
                record,
                offset,
                length,
            } => self.on_poison(&record, offset, length),
        }
    }

    fn on_offer(&mut self, chain_id: u64, more: bool, record: ExtentRecord) {
        let collected: usize = self.chains.values().map(|c| c.records.len()).sum();
        let limit = self.pending_limit;
        let chain = self.chains.entry(chain_id).or_default();
        if chain.closed {
            self.push_log(DriverEvent::Protocol(DriverError::OfferAfterClose(chain_id)));
            return;
        }
        if collected >= limit {
            chain.overflow = chain.overflow.saturating_add(1);
        } else {
            chain.records.push(record);
        }
        if !more {
            chain.closed = true;
            self.answer_chain(chain_id);
        }
    }

    /// Decides (once) and sends the single ACCEPT for a closed chain.
    fn answer_chain(&mut self, chain_id: u64) {
        let Some(mut chain) = self.chains.remove(&chain_id) else {
            return;
        };
        if chain.decision.is_none() {
            let mut rejected: Vec<(u64, RejectReason)> = Vec::new();
            let accept = if chain.overflow > 0 {
                self.push_log(DriverEvent::Protocol(DriverError::ChainOverflow {
                    chain_id,
                    dropped: chain.overflow,
                }));
                rejected.extend(
                    chain
                        .records
                        .iter()
                        .map(|r| (r.extent_id.get(), RejectReason::ChainOverflow)),
                );
                Vec::new()
            } else {
                let window = self.tagged_config.map_or(Window::default(), |c| Window {
                    addr: c.tagged_addr.get(),
                    size: c.tagged_size.get(),
                });
                let s = screen(&chain.records, window, &self.registry);
                rejected = s.rejected;
                let chosen = if s.candidates.is_empty() {
                    Vec::new()
                } else {
                    self.policy.choose(chain_id, &s.candidates)
                };
                let (accept, dropped) = enforce(&s.candidates, &chosen);
                rejected.extend(dropped);
                accept
            };
            for (extent_id, reason) in rejected {
                self.push_log(DriverEvent::Rejected {
                    chain_id,
                    extent_id,
                    reason,
                });
            }
            chain.decision = Some(accept);
        }
        let accept = chain.decision.clone().unwrap_or_default();
        let ids: Vec<u64> = accept.iter().map(|e| e.id).collect();
        let count = u32::try_from(ids.len()).unwrap_or(u32::MAX);
        let hdr = TaggedReq::new(VIRTIO_MEM_REQ_ACCEPT, chain_id, [0; 16], count);
        match self.tagged_request(hdr, &ids) {
            Ok(r) if r.resp == MemResponse::Ack => {
                if r.value != count {
                    self.push_log(DriverEvent::Protocol(DriverError::CountMismatch {
                        expected: count,
                        got: r.value,
                    }));
                }
                self.create_devices(accept);
                self.push_log(DriverEvent::Answered {
                    chain_id,
                    accepted: ids,
                });
            }
            Ok(r) => self.push_log(DriverEvent::AcceptFailed {
                chain_id,
                error: DriverError::Refused(r),
            }),
            Err(DriverError::Stuck) => {
                // Never sent: keep the decision and send it on a later poll.
                self.chains.insert(chain_id, chain);
                self.push_log(DriverEvent::AcceptFailed {
                    chain_id,
                    error: DriverError::Stuck,
                });
            }
            Err(error) => self.push_log(DriverEvent::AcceptFailed { chain_id, error }),
        }
    }

    /// Hands freshly accepted extents to the region: unclaimed until claimed by tag, or (with
    /// [`ClaimMode::OnAccept`]) one device per tag and per untagged extent at once.
    fn create_devices(&mut self, accepted: Vec<Extent>) {
        for i in self.registry.add_accepted(accepted, &self.busy_tags) {
            let d = &self.registry.devices()[i];
            let (name, uuid) = (d.name.clone(), d.uuid);
            self.push_log(DriverEvent::DeviceCreated { name, uuid });
        }
    }

    /// The accepted group (claimed or not) an event's record names, if the record's tag matches.
    fn device_for_record(&mut self, r: &ExtentRecord) -> Option<Slot> {
        let id = r.extent_id.get();
        let Some(slot) = self.registry.group_of(id) else {
            self.push_log(DriverEvent::Protocol(DriverError::UnknownExtent(id)));
            return None;
        };
        if self.registry.group(slot).map(|g| g.uuid) != Some(r.tag) {
            self.push_log(DriverEvent::Protocol(DriverError::TagMismatch(id)));
            return None;
        }
        Some(slot)
    }

    /// The group and the extent a METADATA or POISON record names (checked as in
    /// [`Self::device_for_record`]).
    fn extent_for_record(&mut self, r: &ExtentRecord) -> Option<(&mut DaxDevice, usize)> {
        let slot = self.device_for_record(r)?;
        let id = r.extent_id.get();
        let dev = self.registry.group_mut(slot)?;
        let e = dev.extents.iter().position(|e| e.id == id)?;
        Some((dev, e))
    }

    fn on_release_request(&mut self, r: &ExtentRecord) {
        let Some(slot) = self.device_for_record(r) else {
            return;
        };
        let extent_id = r.extent_id.get();
        let Some(dev) = self.registry.group_mut(slot) else {
            return;
        };
        dev.release_requested = true;
        // Unclaimed capacity is never busy: nothing can use it, so it goes back at once.
        let (name, uuid, busy) = (dev.label(), dev.uuid, dev.busy);
        self.push_log(DriverEvent::ReleaseRequested {
            name: name.clone(),
            extent_id,
        });
        let Slot::Device(i) = slot else {
            let _ = self.release_slot(slot);
            return;
        };
        if !busy {
            let _ = self.release_slot(slot);
            return;
        }
        match self.tagged_request(
            TaggedReq::new(VIRTIO_MEM_REQ_RELEASE_BUSY, extent_id, uuid, 0),
            &[],
        ) {
            Ok(resp) if resp.resp == MemResponse::Ack => {
                if let Some(dev) = self.registry.get_mut(i) {
                    dev.deferred = true;
                    self.any_deferred = true;
                }
                self.push_log(DriverEvent::ReleaseDeferred { name, extent_id });
            }
            Ok(resp) => self.push_log(DriverEvent::ReleaseFailed {
                name,
                error: DriverError::Refused(resp),
            }),
            Err(error) => self.push_log(DriverEvent::ReleaseFailed { name, error }),
        }
    }

    fn on_metadata(&mut self, r: &ExtentRecord) {
        let id = r.extent_id.get();
        let Some((dev, e)) = self.extent_for_record(r) else {
            return;
        };
        let ext = &mut dev.extents[e];
        if ext.gpa != r.addr.get() || ext.len != r.length.get() {
            self.push_log(DriverEvent::Protocol(DriverError::ExtentMoved(id)));
            return;
        }
        let fresh = Extent::from_record(r);
        ext.perf = fresh.perf;
        ext.node = fresh.node;
        ext.source = fresh.source;
        dev.refresh();
        let name = dev.label();
        self.push_log(DriverEvent::MetadataUpdated { name, extent_id: id });
    }

    fn on_poison(&mut self, r: &ExtentRecord, offset: u64, length: u64) {
        let id = r.extent_id.get();
        let Some((dev, e)) = self.extent_for_record(r) else {
            return;
        };
        let ext = &mut dev.extents[e];
        if length == 0 || offset.checked_add(length).is_none_or(|end| end > ext.len) {
            self.push_log(DriverEvent::Protocol(DriverError::PoisonOutOfRange {
                extent_id: id,
                offset,
                length,
            }));
            return;
        }
        ext.poison.push(PoisonRange { offset, length });
        let name = dev.label();
        self.push_log(DriverEvent::Poisoned {
            name,
            extent_id: id,
            offset,
            length,
        });
    }

    /// Releases deferred devices no longer busy, and sends answers that could not be sent before.
    fn retry_deferred(&mut self) {
        if self.stale.is_some() && self.guestq_stuck() {
            return;
        }
        let unsent: Vec<u64> = self
            .chains
            .iter()
            .filter(|(_, c)| c.closed && c.decision.is_some())
            .map(|(id, _)| *id)
            .collect();
        for id in unsent {
            self.answer_chain(id);
        }
        if !self.any_deferred {
            return;
        }
        while let Some(i) = self.registry.devices().iter().position(|d| d.deferred && !d.busy) {
            if let Some(d) = self.registry.get_mut(i) {
                d.deferred = false;
            }
            let _ = self.release_slot(Slot::Device(i));
        }
        self.any_deferred = self.registry.devices().iter().any(|d| d.deferred);
    }

    /// True while a timed-out request is still held by the device (reclaims it if it came back).
    fn guestq_stuck(&mut self) -> bool {
        let (Some(q), Some(stale)) = (self.guestq.as_mut(), self.stale) else {
            return false;
        };
        match q.pop_used(&self.dma) {
            Ok(Some(u)) if u.head == stale => {
                self.stale = None;
                false
            }
            _ => true,
        }
    }

    // ---- release and lookup -------------------------------------------------------------------

    fn resolve(&self, target: Target) -> Option<Slot> {
        match target {
            Target::Tag(t) => self.registry.group_of_tag(&t),
            Target::Extent(id) => self.registry.group_of(id),
        }
    }

    /// Releases the capacity `target` names (a whole tag group, or one untagged extent), claimed
    /// or not.
    ///
    /// Returns the number of extents the device released. After `Ok` the guest must not touch
    /// the memory any more (it is gone from [`TagMemDriver::devices`] and
    /// [`TagMemDriver::unclaimed`]).
    pub fn release(&mut self, target: impl Into<Target>) -> Result<u32, DriverError> {
        let slot = self.resolve(target.into()).ok_or(DriverError::UnknownTarget)?;
        self.release_slot(slot)
    }

    fn release_slot(&mut self, slot: Slot) -> Result<u32, DriverError> {
        let Some(dev) = self.registry.group(slot) else {
            return Err(DriverError::UnknownTarget);
        };
        let (name, uuid) = (dev.label(), dev.uuid);
        let lead = dev.lead_extent_id().unwrap_or(0);
        let n = u32::try_from(dev.extents.len()).unwrap_or(u32::MAX);
        match self.tagged_request(TaggedReq::new(VIRTIO_MEM_REQ_RELEASE, lead, uuid, 0), &[]) {
            Ok(r) if r.resp == MemResponse::Ack => {
                if r.value != n {
                    self.push_log(DriverEvent::Protocol(DriverError::CountMismatch {
                        expected: n,
                        got: r.value,
                    }));
                }
                let extent_ids = self
                    .registry
                    .remove_group(slot)
                    .map(|d| d.extents.iter().map(|e| e.id).collect())
                    .unwrap_or_default();
                self.busy_tags.remove(&uuid);
                self.push_log(DriverEvent::Released {
                    name,
                    uuid,
                    extent_ids,
                });
                Ok(r.value)
            }
            Ok(r) => {
                let error = DriverError::Refused(r);
                self.push_log(DriverEvent::ReleaseFailed { name, error });
                Err(error)
            }
            Err(error) => {
                self.push_log(DriverEvent::ReleaseFailed { name, error });
                Err(error)
            }
        }
    }

    /// Marks the device `target` names busy or idle. While busy, host release requests are
    /// answered RELEASE_BUSY; once idle again, the next [`TagMemDriver::poll`] releases a device
    /// whose release was deferred. A tag may be marked before its device exists. Returns false if
    /// `target` names nothing (the nil tag, or an extent that is not accepted).
    pub fn set_busy(&mut self, target: impl Into<Target>, busy: bool) -> bool {
        let target = target.into();
        // Only a claimed device can be in use; a tag still unclaimed is marked for its claim.
        let i = match self.resolve(target) {
            Some(Slot::Device(i)) => Some(i),
            _ => None,
        };
        let tag = match (target, i) {
            (Target::Tag(t), _) if !is_null_tag(&t) => t,
            (Target::Extent(_), Some(i)) => self.registry.devices()[i].uuid,
            _ => return false,
        };
        if !is_null_tag(&tag) {
            if busy {
                self.busy_tags.insert(tag);
            } else {
                self.busy_tags.remove(&tag);
            }
        }
        if let Some(d) = i.and_then(|i| self.registry.get_mut(i)) {
            d.busy = busy;
        }
        true
    }

    /// Every accepted extent, claimed or not.
    pub fn accepted(&self) -> impl Iterator<Item = &Extent> + '_ {
        self.registry.extents()
    }

    /// Every dax device (claimed capacity), in claim order.
    pub fn devices(&self) -> &[DaxDevice] {
        self.registry.devices()
    }

    /// Accepted capacity no device has claimed yet, one group per tag and per untagged extent,
    /// in acceptance order (SPEC.md T.8: what the region lists).
    pub fn unclaimed(&self) -> &[DaxDevice] {
        self.registry.unclaimed()
    }

    /// The region's seed, the size-0 device the next claim fills (`dax0.N`).
    pub fn seed(&self) -> String {
        self.registry.seed()
    }

    /// How accepted capacity becomes devices ([`ClaimMode::OnRequest`] unless set).
    pub fn claim_mode(&self) -> ClaimMode {
        self.registry.mode()
    }

    /// Sets how capacity accepted from now on becomes devices: claimed by tag on request (the
    /// default, as CXL DCD) or a device per group as soon as it is accepted.
    pub fn set_claim_mode(&mut self, mode: ClaimMode) {
        self.registry.set_mode(mode);
    }

    /// Claims capacity into the seed, as writing `tag` to a DCD seed's `uuid` does
    /// (`daxctl create-device -r region0 --uuid <tag>`): every unclaimed extent carrying a
    /// non-nil `tag`, in sequence order, or for the nil tag one untagged extent. The device is
    /// busy if the tag was marked busy before. Fails with [`DriverError::NothingToClaim`] if no
    /// unclaimed capacity matches (capacity the host asked back included); the seed then stays.
    pub fn claim(&mut self, tag: &[u8; 16]) -> Result<&DaxDevice, DriverError> {
        let busy = self.busy_tags.contains(tag);
        let i = self.registry.claim(tag, busy).map_err(|e| match e {
            ClaimError::NoMatch => DriverError::NothingToClaim,
        })?;
        let d = &self.registry.devices()[i];
        let (name, uuid) = (d.name.clone(), d.uuid);
        self.push_log(DriverEvent::DeviceCreated { name, uuid });
        Ok(&self.registry.devices()[i])
    }

    /// The device carrying `tag`; the nil tag matches nothing.
    pub fn lookup(&self, tag: &[u8; 16]) -> Option<&DaxDevice> {
        self.registry.lookup(tag)
    }

    /// The unclaimed group carrying `tag`; the nil tag matches nothing.
    pub fn lookup_unclaimed(&self, tag: &[u8; 16]) -> Option<&DaxDevice> {
        self.registry.lookup_unclaimed(tag)
    }

    /// The device named `name` (e.g. `dax0.1`).
    pub fn device(&self, name: &str) -> Option<&DaxDevice> {
        self.registry.by_name(name)
    }

    /// Offer chains collected but not answered yet.
    pub fn pending_chains(&self) -> usize {
        self.chains.len()
    }

    /// Takes every logged event, oldest first.
    pub fn drain_log(&mut self) -> Vec<DriverEvent> {
        self.log.drain(..).collect()
    }

    /// Log entries dropped because the log was full.
    pub fn log_dropped(&self) -> u64 {
        self.log_dropped
    }

    fn push_log(&mut self, e: DriverEvent) {
        push_bounded(&mut self.log, &mut self.log_dropped, e);
    }
}

fn push_bounded(log: &mut VecDeque<DriverEvent>, dropped: &mut u64, e: DriverEvent) {
    if log.len() >= LOG_CAPACITY {
        log.pop_front();
        *dropped += 1;
    }
    log.push_back(e);
}

fn event_buf(addr: u64) -> Buf {
    Buf { addr, len: EVENT_LEN }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::VecMemory;
    use crate::virtqueue::device_side::{Desc, DeviceQueue};
    use alloc::rc::Rc;
    use alloc::string::ToString;
    use alloc::vec::Vec;

    const MEM_BASE: u64 = 0x10_0000;
    const MEM_LEN: usize = 0x10_0000;
    const WIN: u64 = 0x1_0000_0000;
    const ALL_FEATURES: u64 = (1 << VIRTIO_F_VERSION_1)
        | (1 << VIRTIO_MEM_F_TAGGED_EXTENTS)
        | (1 << VIRTIO_MEM_F_ACPI_PXM)
        | (1 << VIRTIO_MEM_F_PERSISTENT_SUSPEND);

    type Responder = Box<dyn FnMut(&Request, &[u64]) -> Option<Vec<u8>>>;

    /// An in-process device: answers guestq through `responder`, writes queued events to eventq.
    struct FakeDevice {
        mem: Rc<VecMemory>,
        features: u64,
        driver_features: u64,
        status: u8,
        refuse_features_ok: bool,
        config: Vec<u8>,
        max_sizes: [u16; 2],
        queues: [Option<DeviceQueue>; 2],
        /// Requests seen: the parsed request, ids, and the chain's descriptors.
        requests: Vec<(Request, Vec<u64>, Vec<Desc>)>,
        /// Chains the responder declined to answer (still owned by the device).
        held: Vec<(u16, u32)>,
        responder: Responder,
        /// Events waiting for an eventq buffer: bytes and the used length to report.
        events: VecDeque<(Vec<u8>, u32)>,
        /// Notifications received, per queue.
        notifies: [u32; 2],
    }

    fn ack_all() -> Responder {
        Box::new(|req, ids| {
            Some(match *req {
                Request::State { .. } => VirtioMemResp::new(VIRTIO_MEM_RESP_ACK, VIRTIO_MEM_STATE_MIXED)
                    .as_bytes()
                    .to_vec(),
                Request::Plug { .. } | Request::Unplug { .. } | Request::UnplugAll => {
                    VirtioMemResp::new(VIRTIO_MEM_RESP_ACK, 0).as_bytes().to_vec()
                }
                Request::Accept { .. } => {
                    let n = u32::try_from(ids.len()).unwrap();
                    TaggedResp::new(VIRTIO_MEM_RESP_ACK, 0, n).as_bytes().to_vec()
                }
                Request::Release { .. } | Request::ReleaseBusy { .. } | Request::List { .. } => {
                    TaggedResp::new(VIRTIO_MEM_RESP_ACK, 0, 0).as_bytes().to_vec()
                }
            })
        })
    }

    impl FakeDevice {
        fn new(mem: Rc<VecMemory>, features: u64) -> Self {
            let cfg = TaggedConfig {
                base: VirtioMemConfig {
                    block_size: Le64::new(VIRTIO_MEM_EXTENT_ALIGN),
                    node_id: Le16::new(1),
                    addr: Le64::new(0x8000_0000),
                    region_size: Le64::new(0x4000_0000),
                    usable_region_size: Le64::new(0x4000_0000),
                    requested_size: Le64::new(0x1000_0000),
                    ..Default::default()
                },
                tagged_addr: Le64::new(WIN),
                tagged_size: Le64::new(64 * VIRTIO_MEM_EXTENT_ALIGN),
                max_pending: Le32::new(VIRTIO_MEM_DEFAULT_MAX_PENDING),
                offer_timeout_ms: Le32::new(VIRTIO_MEM_DEFAULT_OFFER_TIMEOUT_MS),
                ..Default::default()
            };
            let mut config = cfg.as_bytes().to_vec();
            if features & bit(VIRTIO_MEM_F_TAGGED_EXTENTS) == 0 {
                config.truncate(VIRTIO_MEM_CONFIG_SIZE);
            }
            FakeDevice {
                mem,
                features,
                driver_features: 0,
                status: 0,
                refuse_features_ok: false,
                config,
                max_sizes: [64, 64],
                queues: [None, None],
                requests: Vec::new(),
                held: Vec::new(),
                responder: ack_all(),
                events: VecDeque::new(),
                notifies: [0; 2],
            }
        }

        fn push_event(&mut self, e: &Event) {
            self.push_raw(EventMsg::from(e).as_bytes().to_vec(), EVENT_LEN);
        }

        fn push_raw(&mut self, bytes: Vec<u8>, used_len: u32) {
            self.events.push_back((bytes, used_len));
            self.flush_events();
        }

        fn flush_events(&mut self) {
            let Some(q) = self.queues[1].as_mut() else { return };
            while !self.events.is_empty() {
                let Some((head, descs)) = q.pop_avail(&*self.mem) else {
                    return;
                };
                let (bytes, len) = self.events.pop_front().unwrap();
                self.mem.write(descs[0].addr, &bytes);
                q.push_used(&*self.mem, u32::from(head), len);
            }
        }

        /// Returns a chain held back earlier.
        fn complete_held(&mut self) {
            for (head, len) in core::mem::take(&mut self.held) {
                self.queues[0]
                    .as_mut()
                    .unwrap()
                    .push_used(&*self.mem, u32::from(head), len);
            }
        }

        fn last_request(&self) -> (Request, Vec<u64>) {
            let (r, ids, _) = self.requests.last().unwrap();
            (*r, ids.clone())
        }

        fn tagged_requests(&self) -> Vec<(Request, Vec<u64>)> {
            self.requests
                .iter()
                .filter(|(r, _, _)| r.is_tagged())
                .map(|(r, ids, _)| (*r, ids.clone()))
                .collect()
        }
    }

    impl Transport for FakeDevice {
        fn device_features(&mut self) -> u64 {
            self.features
        }
        fn set_driver_features(&mut self, features: u64) {
            self.driver_features = features & self.features;
        }
        fn status(&mut self) -> u8 {
            self.status
        }
        fn set_status(&mut self, status: u8) {
            if status == 0 {
                self.queues = [None, None];
                self.events.clear();
            }
            self.status = status;
            if self.refuse_features_ok {
                self.status &= !status::FEATURES_OK;
            }
        }
        fn read_config(&mut self, offset: usize, buf: &mut [u8]) {
            for (i, b) in buf.iter_mut().enumerate() {
                *b = self.config.get(offset + i).copied().unwrap_or(0);
            }
        }
        fn queue_max_size(&mut self, queue: u16) -> u16 {
            self.max_sizes.get(usize::from(queue)).copied().unwrap_or(0)
        }
        fn setup_queue(&mut self, queue: u16, size: u16, desc: u64, avail: u64, used: u64) {
            let layout = QueueLayout {
                size,
                desc,
                avail,
                used,
            };
            self.queues[usize::from(queue)] = Some(DeviceQueue::new(layout));
        }
        fn set_queue_ready(&mut self, _queue: u16) {}
        fn notify(&mut self, queue: u16) {
            if let Some(n) = self.notifies.get_mut(usize::from(queue)) {
                *n += 1;
            }
            if queue == VIRTIO_MEM_GUESTQ {
                while let Some((head, descs)) = self.queues[0].as_mut().unwrap().pop_avail(&*self.mem) {
                    let mut bytes = Vec::new();
                    for d in descs.iter().filter(|d| !d.writable) {
                        let mut b = vec![0u8; usize::try_from(d.len).unwrap()];
                        self.mem.read(d.addr, &mut b);
                        bytes.extend(b);
                    }
                    let (req, n) = Request::parse(&bytes).unwrap();
                    let ids: Vec<u64> = bytes[n..]
                        .chunks_exact(8)
                        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
                        .collect();
                    self.requests.push((req, ids.clone(), descs.clone()));
                    let w = descs.iter().find(|d| d.writable).unwrap();
                    match (self.responder)(&req, &ids) {
                        Some(resp) => {
                            self.mem.write(w.addr, &resp);
                            let len = u32::try_from(resp.len()).unwrap();
                            self.queues[0]
                                .as_mut()
                                .unwrap()
                                .push_used(&*self.mem, u32::from(head), len);
                        }
                        None => self.held.push((head, 16)),
                    }
                }
            }
            self.flush_events();
        }
    }

    type Drv = TagMemDriver<FakeDevice, Rc<VecMemory>>;

    fn driver_with(features: u64) -> Drv {
        let mem = Rc::new(VecMemory::new(MEM_BASE, MEM_LEN));
        let dev = FakeDevice::new(mem.clone(), features);
        let mut d = TagMemDriver::new(dev, mem, MEM_BASE, 64 * 1024);
        assert_eq!(d.claim_mode(), ClaimMode::OnRequest, "DCD semantics by default");
        // These tests are about the protocol: every accepted group becomes a device at once.
        // Claiming by tag (the default) is tested in `dax` and with the real device.
        d.set_claim_mode(ClaimMode::OnAccept);
        d.set_spin_limit(50);
        d
    }

    /// An initialised driver; the LIST walk of `init` and its log entry are cleared.
    fn ready() -> Drv {
        let mut d = driver_with(ALL_FEATURES);
        d.init().unwrap();
        d.transport_mut().requests.clear();
        d.drain_log();
        d
    }

    fn rec(id: u64, slot: u64, tag: u8, flags: u32, seq: u16) -> ExtentRecord {
        let mut r = ExtentRecord {
            tag: [tag; 16],
            extent_id: Le64::new(id),
            addr: Le64::new(WIN + slot * VIRTIO_MEM_EXTENT_ALIGN),
            length: Le64::new(VIRTIO_MEM_EXTENT_ALIGN),
            ..Default::default()
        };
        r.flags.set(flags);
        r.seq.set(seq);
        r.read_latency_ns.set(200);
        r.source = VIRTIO_MEM_SOURCE_CXL_DC;
        r
    }

    /// Sends a whole chain, MORE on all but the last.
    fn offer(d: &mut Drv, chain_id: u64, recs: &[ExtentRecord]) {
        offer_part(d, chain_id, recs, true);
    }

    /// Sends part of a chain, MORE on every event but (if `close`) the last.
    fn offer_part(d: &mut Drv, chain_id: u64, recs: &[ExtentRecord], close: bool) {
        for (i, r) in recs.iter().enumerate() {
            let more = !close || i + 1 < recs.len();
            d.transport_mut().push_event(&Event::Offer {
                chain_id,
                more,
                record: *r,
            });
        }
    }

    fn accepts(d: &Drv) -> Vec<(u64, Vec<u64>)> {
        d.transport()
            .tagged_requests()
            .into_iter()
            .filter_map(|(r, ids)| match r {
                Request::Accept { chain_id, .. } => Some((chain_id, ids)),
                _ => None,
            })
            .collect()
    }

    fn protocol_errors(log: &[DriverEvent]) -> Vec<DriverError> {
        log.iter()
            .filter_map(|e| match e {
                DriverEvent::Protocol(p) => Some(*p),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn init_negotiates_and_fills_eventq() {
        let mut d = ready();
        let want =
            (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_MEM_F_TAGGED_EXTENTS) | (1 << VIRTIO_MEM_F_ACPI_PXM);
        assert_eq!(d.features(), want);
        assert_eq!(d.transport().driver_features, want);
        let st = d.transport_mut().status();
        assert_eq!(
            st,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK
        );
        assert!(d.tagged());
        assert_eq!(d.config().block_size.get(), VIRTIO_MEM_EXTENT_ALIGN);
        assert_eq!(d.tagged_config().unwrap().tagged_addr.get(), WIN);
        // max_pending + 8 rounded up to a power of two (within the device's queue size) 128-byte
        // device-writable buffers are posted on eventq.
        let pending = d.tagged_config().unwrap().max_pending.get();
        let want = u16::try_from((pending + 8).next_power_of_two()).unwrap();
        let q = d.transport().queues[1].as_ref().unwrap().layout;
        assert!(q.size >= 16);
        assert!(q.size <= want);
        assert_eq!(d.dma().read_le16(q.avail + 2), q.size);
        assert_eq!(
            d.dma().read_le16(q.avail),
            crate::virtqueue::VIRTQ_AVAIL_F_NO_INTERRUPT
        );
        let mut dq = DeviceQueue::new(q);
        let (_, descs) = dq.pop_avail(&**d.dma()).unwrap();
        assert_eq!(
            descs,
            [Desc {
                addr: descs[0].addr,
                len: 128,
                writable: true
            }]
        );
        assert_eq!(d.poll(), Ok(0));
    }

    /// A chain is one eventq notification (all its buffers given back at once) and one ACCEPT,
    /// however many extents it has.
    #[test]
    fn a_chain_costs_one_eventq_notification_and_one_accept() {
        let mut d = ready();
        let recs: Vec<ExtentRecord> = (0..5u16)
            .map(|i| rec(u64::from(i) + 1, u64::from(i), 0, 0, 0))
            .collect();
        offer(&mut d, 1, &recs);
        let before = d.transport().notifies;
        d.poll().unwrap();
        let after = d.transport().notifies;
        assert_eq!(after[1] - before[1], 1, "eventq notifications for a chain of 5");
        assert_eq!(after[0] - before[0], 1, "guestq notifications (the one ACCEPT)");
        assert_eq!(accepts(&d), vec![(1, vec![1, 2, 3, 4, 5])]);
    }

    #[test]
    fn refresh_sizes_reads_the_three_fields_a_change_moves() {
        let mut d = ready();
        let off = core::mem::offset_of!(VirtioMemConfig, requested_size);
        d.transport_mut().config[off..off + 8].copy_from_slice(&(64u64 << 20).to_le_bytes());
        let off = core::mem::offset_of!(VirtioMemConfig, plugged_size);
        d.transport_mut().config[off..off + 8].copy_from_slice(&(2u64 << 20).to_le_bytes());
        d.refresh_sizes().unwrap();
        assert_eq!(d.config().requested_size.get(), 64 << 20);
        assert_eq!(d.config().plugged_size.get(), 2 << 20);
        assert_eq!(d.tagged_config().unwrap().base.requested_size.get(), 64 << 20);
        assert_eq!(d.config().block_size.get(), VIRTIO_MEM_EXTENT_ALIGN);
    }

    #[test]
    fn init_without_tagged_feature_is_plain_virtio_mem() {
        let mut d = driver_with(1 << VIRTIO_F_VERSION_1);
        d.init().unwrap();
        assert!(!d.tagged());
        assert!(d.tagged_config().is_none());
        assert!(d.transport().queues[1].is_none());
        assert_eq!(d.poll(), Ok(0));
        assert_eq!(d.release([1; 16]), Err(DriverError::UnknownTarget));
        assert_eq!(d.plug(0x8000_0000, 1), Ok(MemResponse::Ack));
    }

    #[test]
    fn init_failures() {
        let mut d = driver_with(1 << VIRTIO_MEM_F_TAGGED_EXTENTS);
        assert_eq!(d.init(), Err(DriverError::MissingVersion1));
        assert_ne!(d.transport_mut().status() & status::FAILED, 0);

        let mut d = driver_with(ALL_FEATURES);
        d.transport_mut().refuse_features_ok = true;
        assert_eq!(d.init(), Err(DriverError::FeaturesRejected));
        assert_ne!(d.transport_mut().status() & status::FAILED, 0);
        assert_eq!(d.plug(0, 1), Err(DriverError::NotInitialized));

        let mut d = driver_with(ALL_FEATURES);
        d.transport_mut().max_sizes = [16, 0];
        assert_eq!(d.init(), Err(DriverError::QueueUnavailable(VIRTIO_MEM_EVENTQ)));

        let mem = Rc::new(VecMemory::new(MEM_BASE, MEM_LEN));
        let mut d = TagMemDriver::new(FakeDevice::new(mem.clone(), ALL_FEATURES), mem, MEM_BASE, 4096);
        assert_eq!(d.init(), Err(DriverError::OutOfDmaMemory));
    }

    #[test]
    fn sixty_four_kib_of_dma_always_suffice() {
        let mem = Rc::new(VecMemory::new(MEM_BASE, MEM_LEN));
        let mut dev = FakeDevice::new(mem.clone(), ALL_FEATURES);
        dev.config[72..76].copy_from_slice(&u32::MAX.to_le_bytes());
        dev.max_sizes = [u16::MAX, u16::MAX];
        let mut d = TagMemDriver::new(dev, mem, MEM_BASE + 8, 64 * 1024);
        d.init().unwrap();
        offer(&mut d, 1, &[rec(1, 0, 0, 0, 0)]);
        d.poll().unwrap();
        assert_eq!(d.accepted().count(), 1);
    }

    #[test]
    fn odd_queue_sizes_round_down_to_a_power_of_two() {
        let mut d = driver_with(ALL_FEATURES);
        d.transport_mut().max_sizes = [3, 12];
        d.init().unwrap();
        assert_eq!(d.transport().queues[0].as_ref().unwrap().layout.size, 2);
        assert_eq!(d.transport().queues[1].as_ref().unwrap().layout.size, 8);
        assert_eq!(d.plug(0x8000_0000, 1), Ok(MemResponse::Ack));
    }

    #[test]
    fn base_requests_and_typed_responses() {
        let mut d = ready();
        assert_eq!(d.plug(0x8000_0000, 4), Ok(MemResponse::Ack));
        let (req, _, descs) = d.transport().requests[0].clone();
        assert_eq!(
            req,
            Request::Plug {
                addr: 0x8000_0000,
                nb_blocks: 4
            }
        );
        assert_eq!((descs[0].len, descs[0].writable), (24, false));
        assert_eq!((descs[1].len, descs[1].writable), (16, true));
        assert_eq!(d.unplug(0x8000_0000, 4), Ok(MemResponse::Ack));
        assert_eq!(d.unplug_all(), Ok(MemResponse::Ack));
        assert_eq!(
            d.state(0x8000_0000, 2),
            Ok(StateResponse {
                resp: MemResponse::Ack,
                state: Some(BlockState::Mixed)
            })
        );
        d.transport_mut().responder =
            Box::new(|_, _| Some(VirtioMemResp::new(VIRTIO_MEM_RESP_NACK, 9).as_bytes().to_vec()));
        assert_eq!(d.plug(0x8000_0000, 1), Ok(MemResponse::Nack));
        assert_eq!(
            d.state(0, 1),
            Ok(StateResponse {
                resp: MemResponse::Nack,
                state: None
            })
        );
    }

    #[test]
    fn hostile_base_responses() {
        let mut d = ready();
        d.transport_mut().responder = Box::new(|_, _| Some(VirtioMemResp::new(7, 0).as_bytes().to_vec()));
        assert_eq!(d.plug(0, 1), Err(DriverError::UnknownResponse(7)));
        d.transport_mut().responder = Box::new(|_, _| Some(VirtioMemResp::new(0, 5).as_bytes().to_vec()));
        assert_eq!(d.state(0, 1), Err(DriverError::UnknownState(5)));
        d.transport_mut().responder = Box::new(|_, _| Some(vec![0; 4]));
        assert_eq!(
            d.plug(0, 1),
            Err(DriverError::ResponseLength { need: 10, got: 4 })
        );
        d.transport_mut().responder = Box::new(|_, _| Some(vec![0; 64]));
        assert_eq!(
            d.plug(0, 1),
            Err(DriverError::ResponseLength { need: 10, got: 64 })
        );
        // The driver keeps working afterwards.
        d.transport_mut().responder = ack_all();
        assert_eq!(d.plug(0, 1), Ok(MemResponse::Ack));
    }

    #[test]
    fn timeout_then_stuck_until_the_device_returns_the_request() {
        let mut d = ready();
        d.transport_mut().responder = Box::new(|_, _| None);
        assert_eq!(d.plug(0, 1), Err(DriverError::Timeout));
        d.transport_mut().responder = ack_all();
        assert_eq!(d.plug(0, 1), Err(DriverError::Stuck));
        assert_eq!(d.transport().requests.len(), 1, "nothing is sent while stuck");
        d.transport_mut().complete_held();
        assert_eq!(d.plug(0, 1), Ok(MemResponse::Ack));
    }

    #[test]
    fn nothing_surfaces_before_the_chain_closes() {
        let mut d = ready();
        let recs = [rec(1, 0, 0xa, 0, 0), rec(2, 1, 0xa, 0, 1), rec(3, 2, 0, 0, 0)];
        offer_part(&mut d, 1, &recs[..2], false);
        assert_eq!(d.poll(), Ok(2));
        assert!(d.devices().is_empty());
        assert!(accepts(&d).is_empty());
        assert_eq!(d.pending_chains(), 1);
        offer(&mut d, 1, &recs[2..]);
        assert_eq!(d.poll(), Ok(1));
        assert_eq!(accepts(&d), [(1, vec![1, 2, 3])]);
        assert_eq!(d.pending_chains(), 0);
        // ACCEPT: 40-byte header and the ids in readable descriptors, 16 writable bytes.
        let descs = &d.transport().requests.last().unwrap().2;
        let shape: Vec<_> = descs.iter().map(|x| (x.len, x.writable)).collect();
        assert_eq!(shape, [(40, false), (24, false), (16, true)]);
        assert_eq!(
            d.transport().last_request().0,
            Request::Accept {
                chain_id: 1,
                count: 3
            }
        );
        let log = d.drain_log();
        assert!(log.contains(&DriverEvent::Answered {
            chain_id: 1,
            accepted: vec![1, 2, 3]
        }));
        let names: Vec<_> = d.devices().iter().map(|x| (x.name.as_str(), x.uuid)).collect();
        assert_eq!(names, [("dax0.0", [0xa; 16]), ("dax0.1", [0; 16])]);
        // Event buffers were re-posted: the eventq never runs dry.
        for i in 0..40u64 {
            offer(&mut d, 10 + i, &[rec(100 + i, 10, 0, 0, 0)]);
            d.poll().unwrap();
            d.release(100 + i).unwrap();
        }
        assert_eq!(accepts(&d).len(), 41);
    }

    #[test]
    fn lookup_semantics() {
        let mut d = ready();
        let recs = [
            rec(1, 0, 0, 0, 0),
            rec(2, 1, 7, VIRTIO_MEM_EXTENT_F_SHARABLE, 2),
            rec(3, 2, 7, VIRTIO_MEM_EXTENT_F_SHARABLE, 0),
            rec(4, 3, 0, 0, 0),
            rec(5, 4, 7, VIRTIO_MEM_EXTENT_F_SHARABLE, 1),
        ];
        offer(&mut d, 1, &recs);
        d.poll().unwrap();
        assert_eq!(d.devices().len(), 3);
        let t = d.lookup(&[7; 16]).unwrap();
        assert_eq!(t.name, "dax0.1");
        assert_eq!(t.extents.iter().map(|e| e.id).collect::<Vec<_>>(), [3, 5, 2]);
        assert_eq!(
            t.extents.iter().map(|e| e.gpa).collect::<Vec<_>>(),
            [
                WIN + 2 * VIRTIO_MEM_EXTENT_ALIGN,
                WIN + 4 * VIRTIO_MEM_EXTENT_ALIGN,
                WIN + VIRTIO_MEM_EXTENT_ALIGN
            ]
        );
        assert_eq!(t.size, 3 * VIRTIO_MEM_EXTENT_ALIGN);
        assert_eq!(t.flags, VIRTIO_MEM_EXTENT_F_SHARABLE);
        assert_eq!(
            (t.perf.read_latency_ns, t.source),
            (200, VIRTIO_MEM_SOURCE_CXL_DC)
        );
        assert!(d.lookup(&[0; 16]).is_none(), "the nil tag matches nothing");
        assert!(d.lookup(&[8; 16]).is_none());
        let untagged: Vec<_> = d.devices().iter().filter(|x| x.uuid == [0; 16]).collect();
        assert_eq!(untagged.len(), 2);
        assert_eq!(untagged[0].extents[0].id, 1);
        assert_eq!(untagged[1].extents[0].id, 4);
        assert_eq!(d.accepted().count(), 5);
        assert_eq!(d.device("dax0.2").unwrap().extents[0].id, 4);
        // Names are never reused.
        d.release(1).unwrap();
        offer(&mut d, 2, &[rec(6, 0, 0, 0, 0)]);
        d.poll().unwrap();
        assert_eq!(d.lookup_untagged_names(), ["dax0.2", "dax0.3"]);
    }

    impl Drv {
        fn lookup_untagged_names(&self) -> Vec<String> {
            self.devices()
                .iter()
                .filter(|x| !x.is_tagged())
                .map(|x| x.name.clone())
                .collect()
        }
    }

    #[test]
    fn policy_takes_every_tag_group_all_or_nothing() {
        let mut d = ready();
        d.set_policy(|_c: u64, o: &[Extent]| o.iter().map(|e| e.id).filter(|i| i % 2 == 1).collect());
        let recs = [
            rec(1, 0, 1, VIRTIO_MEM_EXTENT_F_SHARABLE, 0),
            rec(2, 1, 1, VIRTIO_MEM_EXTENT_F_SHARABLE, 1),
            rec(3, 2, 2, 0, 0),
            rec(4, 3, 2, 0, 1),
            rec(5, 4, 0, 0, 0),
        ];
        offer(&mut d, 3, &recs);
        d.poll().unwrap();
        // [T-ACCEPT-2] (item B8): groups 1 (sharable) and 2 (not) chosen in part -> both dropped.
        assert_eq!(accepts(&d), [(3, vec![5])]);
        assert!(d.lookup(&[1; 16]).is_none());
        assert!(d.lookup(&[2; 16]).is_none());
        let rejected: Vec<_> = d
            .drain_log()
            .into_iter()
            .filter_map(|e| match e {
                DriverEvent::Rejected {
                    extent_id, reason, ..
                } => Some((extent_id, reason)),
                _ => None,
            })
            .collect();
        assert_eq!(
            rejected,
            [
                (1, RejectReason::PartialGroup),
                (2, RejectReason::Policy),
                (3, RejectReason::PartialGroup),
                (4, RejectReason::Policy)
            ]
        );
        // RejectAll answers with count 0: the chain is still answered exactly once.
        d.set_policy(crate::offer::RejectAll);
        offer(&mut d, 4, &[rec(9, 9, 0, 0, 0)]);
        d.poll().unwrap();
        assert_eq!(accepts(&d)[1], (4, vec![]));
    }

    #[test]
    fn hostile_offers_are_left_out() {
        let mut d = ready();
        let mut misaligned = rec(2, 1, 0, 0, 0);
        misaligned.addr.set(WIN + 4096);
        let outside = rec(3, 200, 0, 0, 0);
        let bad_flags = rec(4, 3, 0, 0x80, 0);
        offer(
            &mut d,
            1,
            &[
                rec(1, 0, 0, 0, 0),
                misaligned,
                outside,
                bad_flags,
                rec(5, 0, 0, 0, 0),
            ],
        );
        d.poll().unwrap();
        // Extent 5 overlaps extent 1 in the same chain: both go.
        assert_eq!(accepts(&d), [(1, vec![])]);
        offer(&mut d, 2, &[rec(6, 0, 9, 0, 0)]);
        d.poll().unwrap();
        // A second chain re-using a tag, an accepted id, or accepted memory is refused.
        offer(
            &mut d,
            3,
            &[rec(7, 1, 9, 0, 0), rec(6, 2, 0, 0, 0), rec(8, 0, 0, 0, 0)],
        );
        d.poll().unwrap();
        assert_eq!(accepts(&d)[2], (3, vec![]));
        assert_eq!(d.devices().len(), 1);
    }

    #[test]
    fn chain_abandoned_drops_the_collecting_chain() {
        let mut d = ready();
        offer_part(&mut d, 5, &[rec(1, 0, 0, 0, 0), rec(2, 1, 0, 0, 0)], false);
        d.transport_mut()
            .push_event(&Event::ChainAbandoned { chain_id: 5 });
        d.poll().unwrap();
        assert_eq!(d.pending_chains(), 0);
        assert!(accepts(&d).is_empty());
        assert!(d.drain_log().contains(&DriverEvent::ChainAbandoned {
            chain_id: 5,
            dropped: 2
        }));
    }

    #[test]
    fn accept_errors_and_count_mismatch() {
        let mut d = ready();
        d.transport_mut().responder = Box::new(|_, _| {
            Some(
                TaggedResp::new(VIRTIO_MEM_RESP_ERROR, reason::MAP_FAILED, 0)
                    .as_bytes()
                    .to_vec(),
            )
        });
        offer(&mut d, 1, &[rec(1, 0, 0, 0, 0)]);
        d.poll().unwrap();
        assert!(d.devices().is_empty());
        let log = d.drain_log();
        assert!(log.iter().any(|e| matches!(
            e,
            DriverEvent::AcceptFailed {
                chain_id: 1,
                error: DriverError::Refused(TaggedResponse {
                    resp: MemResponse::Error,
                    reason: reason::MAP_FAILED,
                    ..
                })
            }
        )));
        d.transport_mut().responder =
            Box::new(|_, _| Some(TaggedResp::new(VIRTIO_MEM_RESP_ACK, 0, 7).as_bytes().to_vec()));
        offer(&mut d, 2, &[rec(2, 0, 0, 0, 0)]);
        d.poll().unwrap();
        assert_eq!(d.devices().len(), 1);
        assert_eq!(
            protocol_errors(&d.drain_log()),
            [DriverError::CountMismatch { expected: 1, got: 7 }]
        );
        // A base-sized answer to a tagged request is too short.
        d.transport_mut().responder =
            Box::new(|_, _| Some(VirtioMemResp::new(VIRTIO_MEM_RESP_ACK, 0).as_bytes().to_vec()));
        offer(&mut d, 3, &[rec(3, 1, 0, 0, 0)]);
        d.poll().unwrap();
        assert_eq!(d.devices().len(), 1);
        assert!(d.drain_log().contains(&DriverEvent::AcceptFailed {
            chain_id: 3,
            error: DriverError::ResponseLength { need: 16, got: 10 }
        }));
    }

    #[test]
    fn unsent_answer_is_retried_once_the_queue_frees() {
        let mut d = ready();
        d.transport_mut().responder = Box::new(|_, _| None);
        assert_eq!(d.plug(0, 1), Err(DriverError::Timeout));
        d.transport_mut().responder = ack_all();
        offer(&mut d, 1, &[rec(1, 0, 0, 0, 0)]);
        d.poll().unwrap();
        assert_eq!(d.pending_chains(), 1);
        assert!(accepts(&d).is_empty());
        d.transport_mut().complete_held();
        d.poll().unwrap();
        assert_eq!(accepts(&d), [(1, vec![1])]);
        assert_eq!(d.devices().len(), 1);
    }

    #[test]
    fn release_request_when_idle_releases() {
        let mut d = ready();
        offer(&mut d, 1, &[rec(1, 0, 4, 0, 0), rec(2, 1, 4, 0, 1)]);
        d.poll().unwrap();
        d.transport_mut().responder =
            Box::new(|_, _| Some(TaggedResp::new(VIRTIO_MEM_RESP_ACK, 0, 2).as_bytes().to_vec()));
        d.drain_log();
        d.transport_mut().push_event(&Event::ReleaseRequest {
            record: rec(1, 0, 4, 0, 0),
        });
        d.poll().unwrap();
        assert_eq!(
            d.transport().last_request().0,
            Request::Release {
                extent_id: 1,
                tag: [4; 16]
            }
        );
        assert!(d.devices().is_empty());
        assert_eq!(
            d.drain_log(),
            [
                DriverEvent::ReleaseRequested {
                    name: "dax0.0".to_string(),
                    extent_id: 1
                },
                DriverEvent::Released {
                    name: "dax0.0".to_string(),
                    uuid: [4; 16],
                    extent_ids: vec![1, 2]
                }
            ]
        );
    }

    #[test]
    fn release_request_while_busy_is_deferred_until_idle() {
        let mut d = ready();
        assert!(d.set_busy([4; 16], true), "a tag can be marked before it arrives");
        assert!(!d.set_busy([0; 16], true));
        assert!(!d.set_busy(99u64, true));
        offer(&mut d, 1, &[rec(1, 0, 4, 0, 0), rec(2, 1, 0, 0, 0)]);
        d.poll().unwrap();
        assert!(d.lookup(&[4; 16]).unwrap().busy);
        assert!(d.set_busy(2u64, true));
        d.transport_mut().responder = Box::new(|req, _| {
            let n = if matches!(req, Request::Release { .. }) {
                1
            } else {
                0
            };
            Some(TaggedResp::new(VIRTIO_MEM_RESP_ACK, 0, n).as_bytes().to_vec())
        });
        d.transport_mut().push_event(&Event::ReleaseRequest {
            record: rec(1, 0, 4, 0, 0),
        });
        d.transport_mut().push_event(&Event::ReleaseRequest {
            record: rec(2, 1, 0, 0, 0),
        });
        d.poll().unwrap();
        let reqs = d.transport().tagged_requests();
        assert_eq!(
            reqs[1..],
            [
                (
                    Request::ReleaseBusy {
                        extent_id: 1,
                        tag: [4; 16]
                    },
                    vec![]
                ),
                (
                    Request::ReleaseBusy {
                        extent_id: 2,
                        tag: [0; 16]
                    },
                    vec![]
                )
            ]
        );
        assert_eq!(d.devices().len(), 2);
        assert!(d.devices().iter().all(|x| x.release_requested));
        // Still busy: polling changes nothing.
        d.poll().unwrap();
        assert_eq!(d.transport().tagged_requests().len(), 3);
        // Let go of the tagged one: the next poll releases it.
        assert!(d.set_busy(1u64, false));
        d.poll().unwrap();
        assert_eq!(
            d.transport().last_request().0,
            Request::Release {
                extent_id: 1,
                tag: [4; 16]
            }
        );
        assert!(d.lookup(&[4; 16]).is_none());
        assert_eq!(d.devices().len(), 1);
        d.set_busy(2u64, false);
        d.poll().unwrap();
        assert!(d.devices().is_empty());
        assert_eq!(d.transport().tagged_requests().len(), 5);
    }

    #[test]
    fn driver_initiated_release() {
        let mut d = ready();
        offer(
            &mut d,
            1,
            &[rec(1, 0, 4, 0, 1), rec(2, 1, 4, 0, 0), rec(3, 2, 0, 0, 0)],
        );
        d.poll().unwrap();
        assert_eq!(d.release([9; 16]), Err(DriverError::UnknownTarget));
        assert_eq!(d.release([0; 16]), Err(DriverError::UnknownTarget));
        d.transport_mut().responder = Box::new(|_, _| {
            Some(
                TaggedResp::new(VIRTIO_MEM_RESP_ERROR, reason::TAG_MISMATCH, 0)
                    .as_bytes()
                    .to_vec(),
            )
        });
        let refused = TaggedResponse {
            resp: MemResponse::Error,
            reason: reason::TAG_MISMATCH,
            value: 0,
        };
        assert_eq!(d.release(2u64), Err(DriverError::Refused(refused)));
        assert_eq!(d.devices().len(), 2, "a refused release keeps the device");
        d.transport_mut().responder =
            Box::new(|_, _| Some(TaggedResp::new(VIRTIO_MEM_RESP_ACK, 0, 2).as_bytes().to_vec()));
        // By extent id: the group's lowest id and its tag go on the wire.
        assert_eq!(d.release(2u64), Ok(2));
        assert_eq!(
            d.transport().last_request().0,
            Request::Release {
                extent_id: 1,
                tag: [4; 16]
            }
        );
        d.transport_mut().responder =
            Box::new(|_, _| Some(TaggedResp::new(VIRTIO_MEM_RESP_ACK, 0, 1).as_bytes().to_vec()));
        assert_eq!(d.release(3u64), Ok(1));
        assert!(d.devices().is_empty());
    }

    #[test]
    fn metadata_and_poison() {
        let mut d = ready();
        offer(&mut d, 1, &[rec(1, 0, 4, 0, 0), rec(2, 1, 4, 0, 1)]);
        d.poll().unwrap();
        d.drain_log();
        let mut upd = rec(1, 0, 4, 0, 0);
        upd.read_latency_ns.set(90);
        upd.write_bandwidth_mbps.set(30_000);
        upd.node_id.set(3);
        d.transport_mut().push_event(&Event::Metadata { record: upd });
        d.transport_mut().push_event(&Event::Poison {
            record: rec(2, 1, 4, 0, 1),
            offset: 0x1000,
            length: 0x1000,
        });
        d.poll().unwrap();
        let dev = d.lookup(&[4; 16]).unwrap();
        assert_eq!(dev.perf.read_latency_ns, 90);
        assert_eq!(dev.perf.write_bandwidth_mbps, 30_000);
        assert_eq!(dev.node, 3);
        assert_eq!(
            dev.extents[1].poison,
            [PoisonRange {
                offset: 0x1000,
                length: 0x1000
            }]
        );
        assert_eq!(
            dev.poison().collect::<Vec<_>>(),
            [(WIN + VIRTIO_MEM_EXTENT_ALIGN + 0x1000, 0x1000)]
        );
        assert_eq!(d.drain_log().len(), 2);
    }

    #[test]
    fn hostile_events_are_reported_and_ignored() {
        let mut d = ready();
        offer(&mut d, 1, &[rec(1, 0, 4, 0, 0)]);
        d.poll().unwrap();
        d.drain_log();
        let t = d.transport_mut();
        t.push_raw(vec![0xff; 128], 128); // unknown type
        t.push_raw(vec![0; 128], 64); // short used length
        t.push_raw(vec![0; 128], 0); // nothing written
        t.push_event(&Event::Metadata {
            record: rec(9, 0, 4, 0, 0),
        });
        t.push_event(&Event::Metadata {
            record: rec(1, 0, 5, 0, 0),
        });
        t.push_event(&Event::Metadata {
            record: rec(1, 3, 4, 0, 0),
        });
        t.push_event(&Event::Poison {
            record: rec(1, 0, 4, 0, 0),
            offset: VIRTIO_MEM_EXTENT_ALIGN - 4096,
            length: 8192,
        });
        t.push_event(&Event::Poison {
            record: rec(1, 0, 4, 0, 0),
            offset: u64::MAX,
            length: 2,
        });
        t.push_event(&Event::ReleaseRequest {
            record: rec(7, 0, 0, 0, 0),
        });
        assert_eq!(d.poll(), Ok(9));
        use DriverError::*;
        assert_eq!(
            protocol_errors(&d.drain_log()),
            [
                BadEvent(WireError::UnknownType(0xffff)),
                EventLength(64),
                EventLength(0),
                UnknownExtent(9),
                TagMismatch(1),
                ExtentMoved(1),
                PoisonOutOfRange {
                    extent_id: 1,
                    offset: VIRTIO_MEM_EXTENT_ALIGN - 4096,
                    length: 8192
                },
                PoisonOutOfRange {
                    extent_id: 1,
                    offset: u64::MAX,
                    length: 2
                },
                UnknownExtent(7),
            ]
        );
        let dev = d.lookup(&[4; 16]).unwrap();
        assert!(dev.extents[0].poison.is_empty());
        assert_eq!(dev.perf.read_latency_ns, 200);
        assert_eq!(d.transport().tagged_requests().len(), 1, "no request was sent");
    }

    #[test]
    fn overflowing_chain_is_rejected_whole() {
        let mut d = ready();
        // The device claims max_pending 2, then offers three extents in one chain.
        d.transport_mut().config[72..76].copy_from_slice(&2u32.to_le_bytes());
        d.init().unwrap();
        let recs = [rec(1, 0, 0, 0, 0), rec(2, 1, 0, 0, 0), rec(3, 2, 0, 0, 0)];
        offer(&mut d, 7, &recs);
        d.poll().unwrap();
        assert_eq!(accepts(&d), [(7, vec![])]);
        let log = d.drain_log();
        let overflow = DriverError::ChainOverflow {
            chain_id: 7,
            dropped: 1,
        };
        assert_eq!(protocol_errors(&log), [overflow]);
        let rejected = log
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    DriverEvent::Rejected {
                        reason: RejectReason::ChainOverflow,
                        ..
                    }
                )
            })
            .count();
        assert_eq!(rejected, 2);
    }

    #[test]
    fn offer_for_a_closed_unanswered_chain_is_ignored() {
        let mut d = ready();
        // Wedge guestq so the closed chain cannot be answered yet.
        d.transport_mut().responder = Box::new(|_, _| None);
        assert_eq!(d.plug(0, 1), Err(DriverError::Timeout));
        d.transport_mut().responder = ack_all();
        offer(&mut d, 1, &[rec(1, 0, 0, 0, 0)]);
        offer(&mut d, 1, &[rec(2, 1, 0, 0, 0)]);
        d.poll().unwrap();
        assert!(protocol_errors(&d.drain_log()).contains(&DriverError::OfferAfterClose(1)));
        d.transport_mut().complete_held();
        d.poll().unwrap();
        assert_eq!(accepts(&d), [(1, vec![1])]);
        // After the answer the chain id is free again; a new chain under it is screened afresh.
        offer(&mut d, 1, &[rec(1, 5, 0, 0, 0)]);
        d.poll().unwrap();
        assert_eq!(accepts(&d)[1], (1, vec![]), "extent 1 is already accepted");
    }

    #[test]
    fn hostile_used_ring_on_eventq() {
        let mut d = ready();
        let layout = d.transport().queues[1].as_ref().unwrap().layout;
        // A used element naming a head that does not exist.
        let mem = d.dma().clone();
        mem.write(layout.used + 4, &99u32.to_le_bytes());
        mem.write(layout.used + 8, &128u32.to_le_bytes());
        mem.write_le16(layout.used + 2, 1);
        assert_eq!(d.poll(), Ok(1));
        assert_eq!(
            protocol_errors(&d.drain_log()),
            [DriverError::Queue(QueueError::BadUsedId(99))]
        );
        mem.write_le16(layout.used + 2, 500);
        assert!(matches!(
            d.poll(),
            Err(DriverError::Queue(QueueError::BadUsedIndex { .. }))
        ));
    }

    #[test]
    fn reset_forgets_everything_and_init_starts_over() {
        let mut d = ready();
        offer(&mut d, 1, &[rec(1, 0, 4, 0, 0)]);
        d.poll().unwrap();
        d.drain_log();
        d.reset();
        assert!(d.devices().is_empty());
        assert_eq!(
            d.drain_log(),
            [DriverEvent::DeviceRemoved {
                name: "dax0.0".to_string(),
                uuid: [4; 16]
            }]
        );
        assert_eq!(d.plug(0, 1), Err(DriverError::NotInitialized));
        d.init().unwrap();
        offer(&mut d, 2, &[rec(2, 0, 4, 0, 0)]);
        d.poll().unwrap();
        assert_eq!(d.lookup(&[4; 16]).unwrap().name, "dax0.1");
    }

    /// Answers LIST from `records` (ascending ids), the rest as [`ack_all`] does.
    fn lister(records: Vec<ExtentRecord>) -> Responder {
        let mut base = ack_all();
        Box::new(move |req, ids| match *req {
            Request::List { first_id, count } => {
                let page: Vec<&ExtentRecord> = records
                    .iter()
                    .filter(|r| r.extent_id.get() >= first_id)
                    .take(count as usize)
                    .collect();
                let n = u32::try_from(page.len()).unwrap();
                let mut out = TaggedResp::new(VIRTIO_MEM_RESP_ACK, 0, n).as_bytes().to_vec();
                for r in page {
                    out.extend_from_slice(r.as_bytes());
                }
                Some(out)
            }
            _ => base(req, ids),
        })
    }

    /// A driver whose device holds `records` accepted (window of 128 slots).
    fn holding(records: Vec<ExtentRecord>) -> Drv {
        let mut d = driver_with(ALL_FEATURES);
        let dev = d.transport_mut();
        dev.config[64..72].copy_from_slice(&(128 * VIRTIO_MEM_EXTENT_ALIGN).to_le_bytes());
        let n = u32::try_from(records.len()).unwrap();
        dev.config[80..84].copy_from_slice(&n.to_le_bytes());
        dev.responder = lister(records);
        d
    }

    fn lists(d: &Drv) -> Vec<u64> {
        d.transport()
            .tagged_requests()
            .into_iter()
            .filter_map(|(r, _)| match r {
                Request::List { first_id, count } => {
                    assert_eq!(count, LIST_PAGE);
                    Some(first_id)
                }
                _ => None,
            })
            .collect()
    }

    /// [T-LIST-2] (item A2): init walks LIST page by page before it handles any event and
    /// exposes every listed extent as the accepted chain would have; after a reset it does so
    /// again.
    #[test]
    fn init_relearns_accepted_extents_through_list() {
        let mut records: Vec<ExtentRecord> = (1..=68).map(|i| rec(i, i, 0, 0, 0)).collect();
        records.push(rec(69, 80, 7, VIRTIO_MEM_EXTENT_F_SHARABLE, 1));
        records.push(rec(70, 81, 7, VIRTIO_MEM_EXTENT_F_SHARABLE, 0));
        records.push(rec(75, 90, 8, 0, 0));
        let mut d = holding(records);
        d.init().unwrap();
        assert_eq!(lists(&d), [0, 65], "pages from id 0, then from the last id + 1");
        assert_eq!(d.devices().len(), 68 + 2);
        let g = d.lookup(&[7; 16]).unwrap();
        assert_eq!(
            g.extents.iter().map(|e| e.id).collect::<Vec<_>>(),
            [70, 69],
            "seq order"
        );
        assert_eq!(d.lookup(&[8; 16]).unwrap().size, VIRTIO_MEM_EXTENT_ALIGN);
        let log = d.drain_log();
        assert!(matches!(log.last(), Some(DriverEvent::Relearned { extents }) if extents.len() == 71));
        // The device keeps the capacity across a reset; the driver forgets and lists it again.
        d.reset();
        assert!(d.devices().is_empty());
        d.init().unwrap();
        assert_eq!(d.devices().len(), 70);
        assert_eq!(lists(&d), [0, 65, 0, 65]);
        // And the capacity is usable as before: a release names the listed group.
        assert_eq!(d.release([7; 16]), Ok(0));
        assert!(d.lookup(&[7; 16]).is_none());
    }

    /// [T-SEC-7]: a listed record that fails the driver's checks is not exposed (and takes its
    /// tag group with it); a LIST out of order, or one that never ends, fails init.
    #[test]
    fn hostile_lists_are_refused() {
        let mut outside = rec(2, 0, 3, 0, 0);
        outside.addr.set(0);
        let mut d = holding(vec![rec(1, 1, 3, 0, 0), outside, rec(3, 2, 0, 0, 0)]);
        d.init().unwrap();
        assert_eq!(d.devices().len(), 1, "only the untagged extent 3");
        assert!(
            protocol_errors(&d.drain_log()).contains(&DriverError::BadListedRecord {
                extent_id: 2,
                reason: RejectReason::OutsideWindow
            })
        );

        let mut d = holding(Vec::new());
        d.transport_mut().responder = Box::new(|req, _| match *req {
            Request::List { .. } => {
                let mut out = TaggedResp::new(VIRTIO_MEM_RESP_ACK, 0, 2).as_bytes().to_vec();
                out.extend_from_slice(rec(5, 1, 0, 0, 0).as_bytes());
                out.extend_from_slice(rec(4, 2, 0, 0, 0).as_bytes());
                Some(out)
            }
            _ => None,
        });
        assert_eq!(d.init(), Err(DriverError::BadList { from: 0 }));
        assert_ne!(d.transport_mut().status() & status::FAILED, 0);

        // A device that lists full pages forever is cut off.
        let mut d = holding(Vec::new());
        let mut next = 1u64;
        d.transport_mut().responder = Box::new(move |req, _| match *req {
            Request::List { count, .. } => {
                let mut out = TaggedResp::new(VIRTIO_MEM_RESP_ACK, 0, count).as_bytes().to_vec();
                for _ in 0..count {
                    out.extend_from_slice(rec(next, 1, 0, 0, 0).as_bytes());
                    next += 1;
                }
                Some(out)
            }
            _ => None,
        });
        assert!(matches!(d.init(), Err(DriverError::BadList { .. })));
        assert!(
            lists(&d).len() <= 2,
            "accepted_extents 0: at most two pages asked"
        );

        // A LIST refused by the device fails init.
        let mut d = holding(Vec::new());
        d.transport_mut().responder = Box::new(|req, _| match *req {
            Request::List { .. } => Some(
                TaggedResp::new(VIRTIO_MEM_RESP_ERROR, VIRTIO_MEM_REASON_BAD_LENGTH, 0)
                    .as_bytes()
                    .to_vec(),
            ),
            _ => None,
        });
        assert!(matches!(d.init(), Err(DriverError::Refused(_))));
    }

    #[test]
    fn log_is_bounded_and_printable() {
        let mut d = ready();
        for _ in 0..LOG_CAPACITY + 3 {
            d.push_log(DriverEvent::Protocol(DriverError::UnknownExtent(1)));
        }
        assert_eq!(d.log_dropped(), 3);
        assert_eq!(d.drain_log().len(), LOG_CAPACITY);
        let e = DriverEvent::DeviceCreated {
            name: "dax0.0".to_string(),
            uuid: [0xab; 16],
        };
        assert_eq!(
            e.to_string(),
            "dax0.0: created, uuid abababab-abab-abab-abab-abababababab"
        );
    }
}

//! The driver proper: negotiation, base virtio-mem requests, and the tagged-extent life cycle.
//!
//! Everything is polled and synchronous. A request is published on guestq, the device is
//! notified, and the driver spins on the used ring (calling [`Transport::wait`]) until the
//! response arrives or the spin limit is reached. Events are taken from eventq only when the
//! application calls [`TagMemDriver::poll`]. A host-side test can therefore run device and driver
//! in one thread: the transport's `notify` runs the device.
//!
//! This file holds the driver's state and accessors; its phases are in `driver/`: `init`
//! (reset, negotiation, queues, configuration), `requests` (guestq and the base requests),
//! `events` (eventq: offers answered per chain, metadata, poison), `release` (release requests,
//! deferred and driver-initiated releases), `relearn` (the LIST walk), and `types` (errors,
//! typed answers, log events).

use crate::dax::{ClaimError, ClaimMode, DaxDevice, DaxRegistry, Extent, PoisonRange, Slot};
use crate::offer::{enforce, screen, AcceptAll, OfferPolicy, RejectReason, Window};
use crate::transport::{status, DmaAllocator, DmaMemory, Transport};
use crate::virtqueue::{Buf, QueueError, QueueLayout, VirtQueue};
use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use tagmem_wire::*;

mod events;
#[cfg(test)]
mod fake_device;
mod init;
mod relearn;
mod release;
mod requests;
mod types;

pub use types::*;

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
    use crate::driver::fake_device::*;

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

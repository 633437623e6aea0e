//! The device: features, config space, queues, and the glue between the guest protocol, the
//! extent state machine and the host control API.

use crate::blocks::Blocks;
use crate::clock::Clock;
use crate::control::*;
use crate::error::DeviceError;
use crate::mapper::{Mapping, MemoryMapper, Notifier, SourceRef};
use crate::metrics::DeviceMetrics;
use crate::request::{indirect_tables_fit, parse_chain, write_response, ChainError, ParsedChain};
use crate::state::ExtentTable;
use crate::virtio::VirtioDevice;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tagmem_wire::{
    self as wire, reason, EventMsg, IntoBytes, Le16, Le32, Le64, Request, Response, TaggedConfig,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestAddressSpace, GuestMemory};

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

/// The tagged-capacity virtio-mem device.
pub struct TaggedMemDevice<M: GuestAddressSpace> {
    pub(crate) cfg: DeviceConfig,
    pub(crate) acked_features: u64,
    pub(crate) queue_sizes: Vec<u16>,
    /// The driver reset the device since its last activation with tagged extents.
    pub(crate) replay_pending: bool,
    pub(crate) mem: Option<M>,
    pub(crate) queues: Vec<Queue>,
    pub(crate) blocks: Blocks,
    pub(crate) table: ExtentTable,
    host_events: Vec<HostEvent>,
    pub(crate) config_generation: u32,
    mapper: Box<dyn MemoryMapper>,
    notifier: Arc<dyn Notifier>,
    pub(crate) clock: Arc<dyn Clock>,
    metrics: Arc<DeviceMetrics>,
}

impl<M: GuestAddressSpace> std::fmt::Debug for TaggedMemDevice<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaggedMemDevice")
            .field("cfg", &self.cfg)
            .field("acked_features", &self.acked_features)
            .field("active", &self.mem.is_some())
            .field("extents", &self.table.len())
            .finish()
    }
}

fn empty_table(cfg: &DeviceConfig) -> ExtentTable {
    let (addr, size) = cfg.tagged.map_or((0, 0), |w| (w.addr, w.size));
    ExtentTable::new(
        addr,
        size,
        cfg.max_pending as usize,
        u64::from(cfg.offer_timeout_ms),
    )
}

fn empty_blocks(cfg: &DeviceConfig) -> Blocks {
    Blocks::new(
        cfg.region_addr,
        cfg.region_size,
        cfg.block_size,
        cfg.requested_size,
    )
}

impl<M: GuestAddressSpace> TaggedMemDevice<M> {
    /// Creates the device; the configuration is validated first.
    pub fn new(
        cfg: DeviceConfig,
        mapper: Box<dyn MemoryMapper>,
        notifier: Arc<dyn Notifier>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, DeviceError> {
        cfg.validate()?;
        let nq = if cfg.tagged.is_some() { 2 } else { 1 };
        Ok(TaggedMemDevice {
            queue_sizes: vec![cfg.queue_size; nq],
            blocks: empty_blocks(&cfg),
            table: empty_table(&cfg),
            cfg,
            acked_features: 0,
            replay_pending: false,
            mem: None,
            queues: Vec::new(),
            host_events: Vec::new(),
            config_generation: 0,
            mapper,
            notifier,
            clock,
            metrics: Arc::new(DeviceMetrics::default()),
        })
    }

    /// The configuration the device was built with.
    pub fn config(&self) -> &DeviceConfig {
        &self.cfg
    }

    /// Counters of what the device did, shareable with a metrics endpoint.
    pub fn metrics(&self) -> Arc<DeviceMetrics> {
        self.metrics.clone()
    }

    /// True once the driver activated the device.
    pub fn is_active(&self) -> bool {
        self.mem.is_some()
    }

    /// True when the driver negotiated tagged extents.
    pub fn tagged_negotiated(&self) -> bool {
        self.acked_features & (1 << wire::VIRTIO_MEM_F_TAGGED_EXTENTS) != 0
    }

    /// Whether the features the driver accepted are enough to run: it must accept
    /// `VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE`, as QEMU's `virtio_mem_validate_features` requires.
    pub(crate) fn features_acceptable(&self) -> bool {
        self.acked_features & (1 << wire::VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE) != 0
    }

    fn bump_config(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
    }

    // ---------------------------------------------------------------- host control API

    /// Offers a chain of extents to the driver ([T-OFFER-*]).
    pub fn offer(&mut self, chain: &[ExtentSpec]) -> Result<OfferReceipt, ControlError> {
        if !self.is_active() || !self.tagged_negotiated() {
            return Err(ControlError::NotReady);
        }
        let receipt = self.table.offer(chain, self.clock.now_ms())?;
        self.metrics.chains_offered.inc();
        self.metrics.extents_offered.add(chain.len() as u64);
        self.deliver_events();
        Ok(receipt)
    }

    /// Asks the driver to release a tag group or an untagged extent ([T-REL-*]).
    pub fn request_release(&mut self, target: Target) -> Result<Vec<u64>, ControlError> {
        let group = self.table.request_release(target)?;
        self.deliver_events();
        Ok(group)
    }

    /// Updates performance metadata of accepted capacity and tells the driver ([T-META-*]).
    pub fn update_metadata(&mut self, target: Target, perf: Perf) -> Result<Vec<u64>, ControlError> {
        let ids = self.table.update_metadata(target, perf)?;
        self.deliver_events();
        Ok(ids)
    }

    /// Reports poison in an accepted extent to the driver ([T-POISON-*]).
    pub fn inject_poison(&mut self, extent_id: u64, offset: u64, length: u64) -> Result<(), ControlError> {
        self.table.poison(extent_id, offset, length)?;
        self.deliver_events();
        Ok(())
    }

    /// Changes the base region's requested size and raises a config-change interrupt.
    pub fn set_requested_size(&mut self, size: u64) -> Result<(), ControlError> {
        if size % self.cfg.block_size != 0 {
            return Err(ControlError::BadRequestedSize {
                size,
                reason: "not a multiple of the block size",
            });
        }
        if size > self.cfg.region_size {
            return Err(ControlError::BadRequestedSize {
                size,
                reason: "larger than the region",
            });
        }
        self.blocks.requested_size = size;
        self.bump_config();
        self.metrics.config_interrupts.inc();
        self.notifier.signal_config_change();
        Ok(())
    }

    /// The extent table: pending and accepted extents, by id.
    pub fn extents(&self) -> Vec<ExtentInfo> {
        self.table.infos()
    }

    /// True while a pending or accepted extent is backed by `source` (O(log n)); a VMM closes a
    /// per-extent backing once this turns false.
    pub fn source_in_use(&self, source: crate::mapper::SourceId) -> bool {
        self.table.uses_source(source)
    }

    /// Drains the host's source events: each backing whose last extent (pending or accepted) left
    /// the table since the last call, because it was released, rejected or abandoned. A VMM
    /// closes a per-extent backing on it instead of tracking which extent uses which source.
    /// Drain it as often as [`TaggedMemDevice::take_host_events`].
    pub fn take_unused_sources(&mut self) -> Vec<crate::mapper::SourceId> {
        self.table.take_unused_sources()
    }

    /// Bytes of the base region currently plugged.
    pub fn plugged_size(&self) -> u64 {
        self.blocks.plugged_size()
    }

    /// Drains what happened since the last call.
    pub fn take_host_events(&mut self) -> Vec<HostEvent> {
        std::mem::take(&mut self.host_events)
    }

    /// Abandons chains whose offer timed out ([T-TIMEOUT-*]); call it periodically.
    pub fn poll_timers(&mut self) {
        self.expire_chains();
        self.deliver_events();
    }

    /// Drops the chains whose offer timed out, queueing CHAIN_ABANDONED for each.
    fn expire_chains(&mut self) {
        let now = self.clock.now_ms();
        for chain_id in self.table.expired(now) {
            let extents = self.table.drop_chain(chain_id, true);
            self.metrics.chains_abandoned.inc();
            self.host_events.push(HostEvent::ChainDropped {
                chain_id,
                extents,
                reason: "offer timed out".into(),
            });
        }
    }

    // ---------------------------------------------------------------- guest side

    fn process_guestq(&mut self) {
        let Some(mem) = self.mem.clone() else { return };
        let m = mem.memory();
        let cap = wire::VIRTIO_MEM_TAGGED_REQ_SIZE + 8 * self.cfg.max_pending as usize;
        let mut used = false;
        loop {
            let Some(q) = self.queues.get_mut(usize::from(wire::VIRTIO_MEM_GUESTQ)) else {
                return;
            };
            let Some(chain) = q.pop_descriptor_chain(&*m) else {
                break;
            };
            let head = chain.head_index();
            let (table, size) = (GuestAddress(q.desc_table()), q.size());
            self.metrics.requests.inc();
            let parsed = if indirect_tables_fit(&*m, table, size, head) {
                parse_chain(&*m, chain, cap, size)
            } else {
                Err(ChainError::TooLong { max: size })
            };
            let len = match parsed {
                Ok(parsed) => self.handle_request(&*m, &parsed),
                Err(_) => {
                    self.metrics.bad_chains.inc();
                    0
                }
            };
            if self.queues[0].add_used(&*m, head, len).is_err() {
                self.metrics.bad_chains.inc();
            }
            used = true;
        }
        if used && self.queues[0].needs_notification(&*m).unwrap_or(true) {
            self.metrics.guestq_interrupts.inc();
            self.notifier.signal_used_queue(wire::VIRTIO_MEM_GUESTQ);
        }
    }

    /// Handles one request; returns the used length (0 when no response could be written). The
    /// request is decoded once; its kind decides the response's wire form and the room it needs.
    fn handle_request<G: GuestMemory>(&mut self, mem: &G, p: &ParsedChain) -> u32 {
        let parsed = Request::parse(&p.readable);
        let room = match &parsed {
            Ok((req, _)) => req.response_size(),
            Err(e) => e.response_size(),
        };
        if p.writable_len < room as u64 {
            // [T-Q-3]: no room for the response: no action.
            self.metrics.bad_chains.inc();
            return 0;
        }
        let resp: Vec<u8> = match parsed {
            Ok((Request::List { first_id, count }, _)) if self.tagged_negotiated() => {
                self.list(first_id, count, p)
            }
            Ok((req, _)) if req.is_tagged() => {
                let r = self.handle_tagged(req, p);
                if !r.is_ack() {
                    self.metrics.tagged_errors.inc();
                }
                r.to_tagged().as_bytes().to_vec()
            }
            Ok((req, _)) => {
                let r = self.handle_base(req);
                if !r.is_ack() {
                    self.metrics.base_errors.inc();
                }
                r.to_base().as_bytes().to_vec()
            }
            Err(e) if e.response_size() == wire::VIRTIO_MEM_TAGGED_RESP_SIZE => {
                self.metrics.tagged_errors.inc();
                Response::error(reason::BAD_LENGTH)
                    .to_tagged()
                    .as_bytes()
                    .to_vec()
            }
            Err(_) => {
                self.metrics.base_errors.inc();
                Response::error(reason::NONE).to_base().as_bytes().to_vec()
            }
        };
        write_response(mem, p, &resp).unwrap_or(0)
    }

    fn base_mapping(&self, first_block: usize, count: usize) -> Option<Mapping> {
        let src = self.cfg.region_source?;
        let off = first_block as u64 * self.cfg.block_size;
        Some(Mapping {
            gpa: self.blocks.block_addr(first_block),
            len: count as u64 * self.cfg.block_size,
            source: SourceRef {
                id: src.id,
                offset: src.offset + off,
            },
            readonly: false,
        })
    }

    /// Base virtio-mem request; the payload of an ACK to STATE is the state. A mapper failure
    /// answers BUSY with the state unchanged ([T-BASE-3], [T-BASE-4]): Linux retries BUSY later,
    /// while ERROR marks the device broken for good.
    fn handle_base(&mut self, req: Request) -> Response {
        const ACK: Response = Response::ack(0);
        const BUSY: Response = Response::status(wire::VIRTIO_MEM_RESP_BUSY);
        const ERR: Response = Response::error(reason::NONE);
        match req {
            Request::Plug { addr, nb_blocks } => {
                let Some(r) = self.blocks.check(addr, nb_blocks) else {
                    return ERR;
                };
                if let Err(t) = self.blocks.plan_plug(r) {
                    return Response::status(t);
                }
                let Some(m) = self.base_mapping(r.first, r.count) else {
                    return ERR;
                };
                if self.map_counted(&m).is_err() {
                    self.metrics.map_failures.inc();
                    return BUSY;
                }
                self.blocks.set(r, true);
                self.bump_config();
                ACK
            }
            Request::Unplug { addr, nb_blocks } => {
                let Some(r) = self.blocks.check(addr, nb_blocks) else {
                    return ERR;
                };
                if let Err(t) = self.blocks.plan_unplug(r) {
                    return Response::status(t);
                }
                let Some(m) = self.base_mapping(r.first, r.count) else {
                    return ERR;
                };
                if self.unmap_counted(&m).is_err() {
                    self.metrics.map_failures.inc();
                    return BUSY;
                }
                self.blocks.set(r, false);
                self.bump_config();
                ACK
            }
            // UNPLUG_ALL answers only ACK or BUSY: a run that could not be unmapped stays plugged.
            Request::UnplugAll => {
                if self.unplug_all() {
                    ACK
                } else {
                    BUSY
                }
            }
            Request::State { addr, nb_blocks } => match self.blocks.check(addr, nb_blocks) {
                Some(r) => Response::ack(u32::from(self.blocks.state(r))),
                None => ERR,
            },
            _ => ERR,
        }
    }

    /// Unplugs every plugged run; false if a run could not be unmapped (it stays plugged).
    fn unplug_all(&mut self) -> bool {
        let mut ok = true;
        for r in self.blocks.plugged_runs() {
            let Some(m) = self.base_mapping(r.first, r.count) else {
                continue;
            };
            if self.unmap_counted(&m).is_ok() {
                self.blocks.set(r, false);
            } else {
                self.metrics.map_failures.inc();
                ok = false;
            }
        }
        self.bump_config();
        ok
    }

    /// Tagged request other than LIST.
    fn handle_tagged(&mut self, req: Request, p: &ParsedChain) -> Response {
        if !self.tagged_negotiated() {
            return Response::error(reason::NOT_NEGOTIATED);
        }
        match req {
            Request::Accept { chain_id, count } => {
                let n = count as usize;
                let expect = wire::VIRTIO_MEM_TAGGED_REQ_SIZE as u64 + 8 * u64::from(count);
                if n > self.cfg.max_pending as usize || p.readable_len != expect {
                    return Response::error(reason::BAD_LENGTH);
                }
                let ids: Vec<u64> = p.readable[wire::VIRTIO_MEM_TAGGED_REQ_SIZE..]
                    .chunks_exact(8)
                    .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
                    .collect();
                if ids.len() != n {
                    return Response::error(reason::BAD_LENGTH);
                }
                self.accept(chain_id, &ids)
            }
            Request::Release { extent_id, tag } => {
                let group = match self.table.plan_release(extent_id, &tag) {
                    Ok(g) => g,
                    Err(r) => return Response::error(r),
                };
                match self.release_group(&group) {
                    Ok(n) => Response::ack(n),
                    Err(()) => Response::error(reason::MAP_FAILED),
                }
            }
            Request::ReleaseBusy { extent_id, tag } => match self.table.defer_release(extent_id, &tag) {
                Ok(group) => {
                    self.host_events
                        .push(HostEvent::ReleaseDeferred { extents: group });
                    Response::ack(0)
                }
                Err(r) => Response::error(r),
            },
            _ => Response::error(reason::WRONG_STATE),
        }
    }

    /// LIST ([T-LIST-1]): the response and up to `count` records of accepted extents from
    /// `first_id` on, or a BAD_LENGTH response.
    fn list(&mut self, first_id: u64, count: u32, p: &ParsedChain) -> Vec<u8> {
        let room = wire::VIRTIO_MEM_TAGGED_RESP_SIZE as u64
            + wire::VIRTIO_MEM_EXTENT_RECORD_SIZE as u64 * u64::from(count);
        if count == 0 || count > wire::VIRTIO_MEM_LIST_MAX || p.writable_len < room {
            self.metrics.tagged_errors.inc();
            return Response::error(reason::BAD_LENGTH)
                .to_tagged()
                .as_bytes()
                .to_vec();
        }
        let records = self.table.list(first_id, count as usize);
        let n = u32::try_from(records.len()).unwrap_or(u32::MAX);
        let mut out = Response::ack(n).to_tagged().as_bytes().to_vec();
        for r in &records {
            out.extend_from_slice(r.as_bytes());
        }
        out
    }

    fn accept(&mut self, chain_id: u64, ids: &[u64]) -> Response {
        let plan = match self.table.plan_accept(chain_id, ids) {
            Ok(p) => p,
            Err(r) => return Response::error(r),
        };
        // One mapper call for the whole chain: the mapper merges neighbours before it creates
        // memslots, and on error leaves nothing of the chain mapped ([T-ACCEPT-5]).
        let maps: Vec<Mapping> = plan.accepted.iter().map(|(_, m)| *m).collect();
        if let Err(e) = self.map_batch_counted(&maps) {
            self.metrics.map_failures.inc();
            let extents = self.table.drop_chain(chain_id, false);
            self.host_events.push(HostEvent::ChainDropped {
                chain_id,
                extents,
                reason: format!("mapping failed: {e}"),
            });
            return Response::error(reason::MAP_FAILED);
        }
        self.table.commit_accept(&plan);
        let accepted: Vec<u64> = plan.accepted.iter().map(|(id, _)| *id).collect();
        self.metrics.extents_accepted.add(accepted.len() as u64);
        self.metrics.extents_rejected.add(plan.rejected.len() as u64);
        let n = u32::try_from(accepted.len()).unwrap_or(u32::MAX);
        self.host_events.push(HostEvent::ChainAnswered {
            chain_id,
            accepted,
            rejected: plan.rejected,
        });
        self.bump_config();
        Response::ack(n)
    }

    /// Unmaps and forgets a group; on an unmap failure restores what it unmapped and keeps it.
    fn release_group(&mut self, group: &[u64]) -> Result<u32, ()> {
        let maps: Vec<Mapping> = group.iter().filter_map(|id| self.table.mapping(*id)).collect();
        // One mapper call for the whole group; on error it stays mapped and accepted.
        if self.unmap_batch_counted(&maps).is_err() {
            self.metrics.map_failures.inc();
            return Err(());
        }
        let removed = self.table.commit_release(group);
        self.metrics.extents_released.add(removed.len() as u64);
        let n = u32::try_from(removed.len()).unwrap_or(u32::MAX);
        self.host_events.push(HostEvent::Released {
            extents: removed.iter().map(|e| (e.id, e.source)).collect(),
        });
        self.bump_config();
        Ok(n)
    }

    /// Writes queued events into eventq buffers while both exist ([T-Q-5]).
    fn deliver_events(&mut self) {
        if !self.tagged_negotiated() {
            return;
        }
        let Some(mem) = self.mem.clone() else { return };
        let m = mem.memory();
        let mut used = false;
        while let Some(ev) = self.table.peek_event() {
            let msg = EventMsg::from(ev);
            let Some(q) = self.queues.get_mut(usize::from(wire::VIRTIO_MEM_EVENTQ)) else {
                return;
            };
            let Some(chain) = q.pop_descriptor_chain(&*m) else {
                break;
            };
            let head = chain.head_index();
            let fits = indirect_tables_fit(&*m, GuestAddress(q.desc_table()), q.size(), head);
            // [T-Q-5]: any device-readable descriptor, even an empty one, disqualifies the buffer.
            let len = match parse_chain(&*m, chain, 0, q.size()) {
                Ok(p) if fits && p.readable_descs == 0 => {
                    write_response(&*m, &p, msg.as_bytes()).unwrap_or(0)
                }
                _ => 0,
            };
            if len > 0 {
                self.table.commit_event();
                self.metrics.events_delivered.inc();
            } else {
                self.metrics.bad_event_buffers.inc();
            }
            if self.queues[1].add_used(&*m, head, len).is_err() {
                self.metrics.bad_event_buffers.inc();
            }
            used = true;
        }
        if used && self.queues[1].needs_notification(&*m).unwrap_or(true) {
            self.metrics.eventq_interrupts.inc();
            self.notifier.signal_used_queue(wire::VIRTIO_MEM_EVENTQ);
        }
    }

    fn tagged_config(&self) -> TaggedConfig {
        let mut c = TaggedConfig::default();
        c.base.block_size = Le64::new(self.cfg.block_size);
        c.base.node_id = Le16::new(self.cfg.node_id.unwrap_or(0));
        c.base.addr = Le64::new(self.cfg.region_addr);
        c.base.region_size = Le64::new(self.cfg.region_size);
        c.base.usable_region_size = Le64::new(self.cfg.region_size);
        c.base.plugged_size = Le64::new(self.blocks.plugged_size());
        c.base.requested_size = Le64::new(self.blocks.requested_size);
        if let Some(w) = self.cfg.tagged {
            c.tagged_addr = Le64::new(w.addr);
            c.tagged_size = Le64::new(w.size);
            c.max_pending = Le32::new(self.cfg.max_pending);
            c.offer_timeout_ms = Le32::new(self.cfg.offer_timeout_ms);
            c.accepted_extents = Le32::new(u32::try_from(self.table.accepted_count()).unwrap_or(u32::MAX));
        }
        c
    }

    fn map_counted(&mut self, m: &Mapping) -> Result<(), crate::mapper::MapperError> {
        self.metrics.map_calls.inc();
        self.mapper.map(m)
    }

    fn unmap_counted(&mut self, m: &Mapping) -> Result<(), crate::mapper::MapperError> {
        self.metrics.unmap_calls.inc();
        self.mapper.unmap(m)
    }

    fn map_batch_counted(&mut self, maps: &[Mapping]) -> Result<(), crate::mapper::MapperError> {
        self.metrics.map_calls.inc();
        self.mapper.map_batch(maps)
    }

    fn unmap_batch_counted(&mut self, maps: &[Mapping]) -> Result<(), crate::mapper::MapperError> {
        self.metrics.unmap_calls.inc();
        self.mapper.unmap_batch(maps)
    }

    /// Maps every range or none of them.
    pub(crate) fn map_all(&mut self, maps: &[Mapping]) -> Result<(), DeviceError> {
        self.map_batch_counted(maps).map_err(DeviceError::RestoreMap)
    }

    /// Takes the queues the driver set up, checked against guest memory; no replay, no events
    /// (restore uses it to resume a live device).
    pub(crate) fn activate_queues(&mut self, mem: M, queues: Vec<Queue>) -> Result<(), DeviceError> {
        if self.is_active() {
            return Err(DeviceError::AlreadyActive);
        }
        let need = if self.tagged_negotiated() { 2 } else { 1 };
        if queues.len() < need {
            return Err(DeviceError::QueueCount {
                need,
                got: queues.len(),
            });
        }
        {
            let m = mem.memory();
            for (i, q) in queues.iter().take(need).enumerate() {
                if !q.is_valid(&*m) {
                    return Err(DeviceError::QueueInvalid(u16::try_from(i).unwrap_or(u16::MAX)));
                }
            }
        }
        self.queues = queues;
        self.mem = Some(mem);
        Ok(())
    }
}

impl<M: GuestAddressSpace> VirtioDevice for TaggedMemDevice<M> {
    type Memory = M;
    type Error = DeviceError;

    fn device_type(&self) -> u32 {
        wire::VIRTIO_ID_MEM
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn device_features(&self) -> u64 {
        self.cfg.features()
    }

    fn set_driver_features(&mut self, features: u64) {
        if self.is_active() {
            return;
        }
        self.acked_features = features & self.cfg.features();
    }

    fn features_ok(&self) -> bool {
        self.features_acceptable()
    }

    fn driver_features(&self) -> u64 {
        self.acked_features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let cfg = self.tagged_config();
        let bytes = cfg.as_bytes();
        let len = if self.cfg.tagged.is_some() {
            wire::VIRTIO_MEM_TAGGED_CONFIG_SIZE
        } else {
            wire::VIRTIO_MEM_CONFIG_SIZE
        };
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        if start >= len {
            return;
        }
        let n = data.len().min(len - start);
        data[..n].copy_from_slice(&bytes[start..start + n]);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // virtio-mem's configuration is read-only for the driver (§5.15.4).
    }

    fn activate(&mut self, mem: M, queues: Vec<Queue>) -> Result<(), DeviceError> {
        if !self.features_acceptable() {
            return Err(DeviceError::FeatureRequired {
                bit: wire::VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE,
                name: "VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE",
            });
        }
        self.activate_queues(mem, queues)?;
        if self.replay_pending && self.tagged_negotiated() {
            // [T-RESET-1]: a driver back after a reset hears of pending chains, release requests
            // and poison again; what it holds accepted it learns with LIST.
            self.table.replay(self.clock.now_ms());
            self.replay_pending = false;
        }
        self.deliver_events();
        Ok(())
    }

    /// Device reset (status 0): forgets the queues, the negotiated features and the undelivered
    /// events, and nothing else ([T-RESET-1], VIRTIO §5.15.5). Plugged blocks stay plugged and
    /// mapped, accepted extents stay accepted and mapped, pending chains stay pending (they are
    /// offered again at the next activation with tagged extents), poison records stay.
    fn reset(&mut self) {
        self.table.forget_events();
        self.replay_pending = true;
        self.queues.clear();
        self.mem = None;
        self.acked_features = 0;
        self.host_events.push(HostEvent::DeviceReset {
            pending_chains: self.table.chains().map(|(id, _)| id).collect(),
        });
        self.bump_config();
    }

    fn queue_notify(&mut self, index: u16) {
        if !self.is_active() {
            return;
        }
        self.expire_chains();
        match index {
            wire::VIRTIO_MEM_GUESTQ => {
                self.metrics.guestq_notifies.inc();
                self.process_guestq()
            }
            wire::VIRTIO_MEM_EVENTQ => self.metrics.eventq_notifies.inc(),
            _ => return,
        }
        self.deliver_events();
    }

    fn config_generation(&self) -> u32 {
        self.config_generation
    }
}

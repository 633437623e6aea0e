//! The device: features, config space, queues, and the glue between the guest protocol, the
//! extent state machine and the host control API.

use crate::blocks::Blocks;
use crate::control::*;
use crate::error::DeviceError;
use crate::mapper::{Clock, Mapping, MemoryMapper, Notifier, SourceRef};
use crate::metrics::DeviceMetrics;
use crate::request::{parse_chain, write_response, ParsedChain};
use crate::state::{mapping_of, ExtentTable};
use crate::virtio::VirtioDevice;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tagmem_wire::{self as wire, reason, EventMsg, IntoBytes, Le16, Le32, Le64, Request, TaggedConfig};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemory};

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
    /// Size of the base region, a multiple of the block size (zero: tagged capacity only).
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
            block_size: wire::EXTENT_ALIGN,
            node_id: None,
            region_addr: 0,
            region_size: 0,
            region_source: None,
            requested_size: 0,
            tagged: None,
            max_pending: wire::DEFAULT_MAX_PENDING,
            offer_timeout_ms: wire::DEFAULT_OFFER_TIMEOUT_MS,
            queue_size: 256,
        }
    }
}

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
        if self.region_size % bs != 0 {
            return Err(invalid("region_size", "not a multiple of block_size"));
        }
        let region_end = self
            .region_addr
            .checked_add(self.region_size)
            .ok_or_else(|| invalid("region_size", "region end overflows"))?;
        if self.region_size / bs > u64::from(u32::MAX) {
            return Err(invalid("region_size", "more than 2^32 blocks"));
        }
        if self.requested_size > self.region_size || self.requested_size % bs != 0 {
            return Err(invalid(
                "requested_size",
                "must be a block multiple no larger than region_size",
            ));
        }
        if self.region_size > 0 {
            match self.region_source {
                None => return Err(invalid("region_source", "a non-empty region needs a backing")),
                Some(s) if s.offset % bs != 0 || s.offset.checked_add(self.region_size).is_none() => {
                    return Err(invalid(
                        "region_source",
                        "offset must be block aligned and not overflow",
                    ))
                }
                _ => {}
            }
        }
        if let Some(w) = self.tagged {
            let a = wire::EXTENT_ALIGN;
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
            if self.region_size > 0 && w.addr < region_end && self.region_addr < end {
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

    /// Features the device offers for this configuration.
    pub fn features(&self) -> u64 {
        let mut f = 1u64 << wire::VIRTIO_F_VERSION_1;
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
    queue_sizes: Vec<u16>,
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
            .field("extents", &self.table.extents.len())
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
        let cap = wire::TAGGED_REQ_SIZE + 8 * self.cfg.max_pending as usize;
        let mut used = false;
        loop {
            let Some(q) = self.queues.get_mut(usize::from(wire::GUESTQ)) else {
                return;
            };
            let Some(chain) = q.pop_descriptor_chain(&*m) else {
                break;
            };
            let head = chain.head_index();
            self.metrics.requests.inc();
            let len = match parse_chain(&*m, chain, cap) {
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
            self.notifier.signal_used_queue(wire::GUESTQ);
        }
    }

    /// Handles one request; returns the used length (0 when no response could be written).
    fn handle_request<G: GuestMemory>(&mut self, mem: &G, p: &ParsedChain) -> u32 {
        let tagged_type = p
            .readable
            .get(0..2)
            .is_some_and(|b| wire::is_tagged_request(u16::from_le_bytes([b[0], b[1]])));
        let room = if tagged_type {
            wire::TAGGED_RESP_SIZE
        } else {
            wire::VIRTIO_MEM_RESP_SIZE
        };
        if p.writable_len < room as u64 {
            // [T-Q-3]: no room for the response: no action.
            self.metrics.bad_chains.inc();
            return 0;
        }
        let resp: Vec<u8> = match Request::parse(&p.readable) {
            Ok((req, _)) if req.is_tagged() => {
                let (t, r, v) = self.handle_tagged(req, p);
                if t != wire::VIRTIO_MEM_RESP_ACK {
                    self.metrics.tagged_errors.inc();
                }
                wire::TaggedResp::new(t, r, v).as_bytes().to_vec()
            }
            Ok((req, _)) => {
                let (t, s) = self.handle_base(req);
                if t != wire::VIRTIO_MEM_RESP_ACK {
                    self.metrics.base_errors.inc();
                }
                wire::VirtioMemResp::new(t, s).as_bytes().to_vec()
            }
            Err(_) if tagged_type => {
                self.metrics.tagged_errors.inc();
                wire::TaggedResp::new(wire::VIRTIO_MEM_RESP_ERROR, reason::BAD_LENGTH, 0)
                    .as_bytes()
                    .to_vec()
            }
            Err(_) => {
                self.metrics.base_errors.inc();
                wire::VirtioMemResp::new(wire::VIRTIO_MEM_RESP_ERROR, 0)
                    .as_bytes()
                    .to_vec()
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

    /// Base virtio-mem request; returns (response type, state).
    fn handle_base(&mut self, req: Request) -> (u16, u16) {
        const ACK: u16 = wire::VIRTIO_MEM_RESP_ACK;
        const ERR: u16 = wire::VIRTIO_MEM_RESP_ERROR;
        match req {
            Request::Plug { addr, nb_blocks } => {
                let Some(r) = self.blocks.check(addr, nb_blocks) else {
                    return (ERR, 0);
                };
                if let Err(t) = self.blocks.plan_plug(r) {
                    return (t, 0);
                }
                let Some(m) = self.base_mapping(r.first, r.count) else {
                    return (ERR, 0);
                };
                if self.mapper.map(&m).is_err() {
                    self.metrics.map_failures.inc();
                    return (ERR, 0);
                }
                self.blocks.set(r, true);
                self.bump_config();
                (ACK, 0)
            }
            Request::Unplug { addr, nb_blocks } => {
                let Some(r) = self.blocks.check(addr, nb_blocks) else {
                    return (ERR, 0);
                };
                if let Err(t) = self.blocks.plan_unplug(r) {
                    return (t, 0);
                }
                let Some(m) = self.base_mapping(r.first, r.count) else {
                    return (ERR, 0);
                };
                if self.mapper.unmap(&m).is_err() {
                    self.metrics.map_failures.inc();
                    return (ERR, 0);
                }
                self.blocks.set(r, false);
                self.bump_config();
                (ACK, 0)
            }
            Request::UnplugAll => {
                if self.unplug_all() {
                    (ACK, 0)
                } else {
                    (ERR, 0)
                }
            }
            Request::State { addr, nb_blocks } => match self.blocks.check(addr, nb_blocks) {
                Some(r) => (ACK, self.blocks.state(r)),
                None => (ERR, 0),
            },
            _ => (ERR, 0),
        }
    }

    /// Unplugs every plugged run; false if a run could not be unmapped (it stays plugged).
    fn unplug_all(&mut self) -> bool {
        let mut ok = true;
        for r in self.blocks.plugged_runs() {
            let Some(m) = self.base_mapping(r.first, r.count) else {
                continue;
            };
            if self.mapper.unmap(&m).is_ok() {
                self.blocks.set(r, false);
            } else {
                self.metrics.map_failures.inc();
                ok = false;
            }
        }
        self.bump_config();
        ok
    }

    /// Tagged request; returns (response type, reason, value).
    fn handle_tagged(&mut self, req: Request, p: &ParsedChain) -> (u16, u16, u32) {
        const ACK: u16 = wire::VIRTIO_MEM_RESP_ACK;
        const ERR: u16 = wire::VIRTIO_MEM_RESP_ERROR;
        if !self.tagged_negotiated() {
            return (ERR, reason::NOT_NEGOTIATED, 0);
        }
        match req {
            Request::Accept { chain_id, count } => {
                let n = count as usize;
                let expect = wire::TAGGED_REQ_SIZE as u64 + 8 * u64::from(count);
                if n > self.cfg.max_pending as usize || p.readable_len != expect {
                    return (ERR, reason::BAD_LENGTH, 0);
                }
                let ids: Vec<u64> = p.readable[wire::TAGGED_REQ_SIZE..]
                    .chunks_exact(8)
                    .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
                    .collect();
                if ids.len() != n {
                    return (ERR, reason::BAD_LENGTH, 0);
                }
                self.accept(chain_id, &ids)
            }
            Request::Release { extent_id, tag } => {
                let group = match self.table.plan_release(extent_id, &tag) {
                    Ok(g) => g,
                    Err(r) => return (ERR, r, 0),
                };
                match self.release_group(&group) {
                    Ok(n) => (ACK, reason::NONE, n),
                    Err(()) => (ERR, reason::MAP_FAILED, 0),
                }
            }
            Request::ReleaseBusy { extent_id, tag } => match self.table.defer_release(extent_id, &tag) {
                Ok(group) => {
                    self.host_events
                        .push(HostEvent::ReleaseDeferred { extents: group });
                    (ACK, reason::NONE, 0)
                }
                Err(r) => (ERR, r, 0),
            },
            _ => (ERR, reason::WRONG_STATE, 0),
        }
    }

    fn accept(&mut self, chain_id: u64, ids: &[u64]) -> (u16, u16, u32) {
        let plan = match self.table.plan_accept(chain_id, ids) {
            Ok(p) => p,
            Err(r) => return (wire::VIRTIO_MEM_RESP_ERROR, r, 0),
        };
        for (i, (_, m)) in plan.accepted.iter().enumerate() {
            if let Err(e) = self.mapper.map(m) {
                self.metrics.map_failures.inc();
                for (_, done) in &plan.accepted[..i] {
                    // Best effort: the chain is dropped whole, so nothing of it may stay mapped.
                    let _ = self.mapper.unmap(done);
                }
                let extents = self.table.drop_chain(chain_id, false);
                self.host_events.push(HostEvent::ChainDropped {
                    chain_id,
                    extents,
                    reason: format!("mapping failed: {e}"),
                });
                return (wire::VIRTIO_MEM_RESP_ERROR, reason::MAP_FAILED, 0);
            }
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
        (wire::VIRTIO_MEM_RESP_ACK, reason::NONE, n)
    }

    /// Unmaps and forgets a group; on an unmap failure restores what it unmapped and keeps it.
    fn release_group(&mut self, group: &[u64]) -> Result<u32, ()> {
        let maps: Vec<Mapping> = group
            .iter()
            .filter_map(|id| self.table.extents.get(id))
            .map(mapping_of)
            .collect();
        for (i, m) in maps.iter().enumerate() {
            if self.mapper.unmap(m).is_err() {
                self.metrics.map_failures.inc();
                for done in &maps[..i] {
                    let _ = self.mapper.map(done);
                }
                return Err(());
            }
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
            let Some(q) = self.queues.get_mut(usize::from(wire::EVENTQ)) else {
                return;
            };
            let Some(chain) = q.pop_descriptor_chain(&*m) else {
                break;
            };
            let head = chain.head_index();
            let len = match parse_chain(&*m, chain, 0) {
                Ok(p) if p.readable_len == 0 => write_response(&*m, &p, msg.as_bytes()).unwrap_or(0),
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
            self.notifier.signal_used_queue(wire::EVENTQ);
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

    /// Maps every range or none of them.
    pub(crate) fn map_all(&mut self, maps: &[Mapping]) -> Result<(), DeviceError> {
        for (i, m) in maps.iter().enumerate() {
            if let Err(e) = self.mapper.map(m) {
                for done in &maps[..i] {
                    let _ = self.mapper.unmap(done);
                }
                return Err(DeviceError::RestoreMap(e));
            }
        }
        Ok(())
    }

    /// Unmaps everything and forgets all extents, reporting them to the host.
    fn release_everything(&mut self) {
        for chain_id in self.table.chains.keys().copied().collect::<Vec<_>>() {
            let extents = self.table.drop_chain(chain_id, false);
            self.host_events.push(HostEvent::ChainDropped {
                chain_id,
                extents,
                reason: "device reset".into(),
            });
        }
        let accepted = self.table.accepted_mappings();
        let mut released = Vec::new();
        for (id, m) in &accepted {
            if self.mapper.unmap(m).is_err() {
                self.metrics.map_failures.inc();
            }
            released.push((*id, m.source));
        }
        if !released.is_empty() {
            self.host_events.push(HostEvent::Released { extents: released });
        }
        self.unplug_all();
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

    fn driver_features(&self) -> u64 {
        self.acked_features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let cfg = self.tagged_config();
        let bytes = cfg.as_bytes();
        let len = if self.cfg.tagged.is_some() {
            wire::TAGGED_CONFIG_SIZE
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

    fn reset(&mut self) {
        self.release_everything();
        let requested = self.blocks.requested_size;
        self.blocks = empty_blocks(&self.cfg);
        self.blocks.requested_size = requested;
        // Ids stay unique for the life of the device, across resets.
        let (chain, extent) = (self.table.next_chain_id, self.table.next_extent_id);
        self.table = empty_table(&self.cfg);
        self.table.next_chain_id = chain;
        self.table.next_extent_id = extent;
        self.queues.clear();
        self.mem = None;
        self.acked_features = 0;
        self.bump_config();
    }

    fn queue_notify(&mut self, index: u16) {
        if !self.is_active() {
            return;
        }
        self.expire_chains();
        match index {
            wire::GUESTQ => self.process_guestq(),
            wire::EVENTQ => {}
            _ => return,
        }
        self.deliver_events();
    }

    fn config_generation(&self) -> u32 {
        self.config_generation
    }
}

//! Device state as plain serde data. A snapshot is untrusted input: restore re-runs the
//! construction-time validation, rebuilds every index from scratch, re-validates the queues and
//! only then re-creates the mappings.

use crate::blocks::Blocks;
use crate::clock::Clock;
use crate::control::{ExtentInfo, ExtentState};
use crate::device::{DeviceConfig, TaggedMemDevice};
use crate::error::DeviceError;
use crate::mapper::{Mapping, MemoryMapper, Notifier};
use crate::state::{record_of, Chain, Invalid};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::Arc;
use tagmem_wire::{Event, EventMsg, IntoBytes};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestAddressSpace};

/// One virtqueue's registers and positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    /// Maximum size the device offered.
    pub max_size: u16,
    /// Size the driver chose.
    pub size: u16,
    /// Driver marked it ready.
    pub ready: bool,
    /// Descriptor table address.
    pub desc_table: u64,
    /// Available ring address.
    pub avail_ring: u64,
    /// Used ring address.
    pub used_ring: u64,
    /// Next available index the device will read.
    pub next_avail: u16,
    /// Next used index the device will write.
    pub next_used: u16,
    /// VIRTIO_F_EVENT_IDX negotiated.
    pub event_idx: bool,
}

impl From<&Queue> for QueueSnapshot {
    fn from(q: &Queue) -> Self {
        QueueSnapshot {
            max_size: q.max_size(),
            size: q.size(),
            ready: q.ready(),
            desc_table: q.desc_table(),
            avail_ring: q.avail_ring(),
            used_ring: q.used_ring(),
            next_avail: q.next_avail(),
            next_used: q.next_used(),
            event_idx: q.event_idx_enabled(),
        }
    }
}

impl TryFrom<&QueueSnapshot> for Queue {
    type Error = DeviceError;

    fn try_from(s: &QueueSnapshot) -> Result<Queue, DeviceError> {
        let bad = |what: &str| {
            bad(
                format!("queues[].{what}"),
                "refused by the queue's own validation",
            )
        };
        let mut q = Queue::new(s.max_size).map_err(|_| bad("max_size"))?;
        q.try_set_size(s.size).map_err(|_| bad("size"))?;
        q.try_set_desc_table_address(GuestAddress(s.desc_table))
            .map_err(|_| bad("descriptor table"))?;
        q.try_set_avail_ring_address(GuestAddress(s.avail_ring))
            .map_err(|_| bad("available ring"))?;
        q.try_set_used_ring_address(GuestAddress(s.used_ring))
            .map_err(|_| bad("used ring"))?;
        q.set_next_avail(s.next_avail);
        q.set_next_used(s.next_used);
        q.set_event_idx(s.event_idx);
        q.set_ready(s.ready);
        Ok(q)
    }
}

/// A pending offer chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainState {
    /// Chain id.
    pub id: u64,
    /// Extent ids in offer order.
    pub ids: Vec<u64>,
    /// Milliseconds left before the chain is abandoned.
    pub remaining_ms: u64,
    /// The closing event reached the driver.
    pub closed: bool,
}

/// Everything needed to rebuild the device in another process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceState {
    /// Construction-time configuration.
    pub config: DeviceConfig,
    /// Negotiated features.
    pub acked_features: u64,
    /// Queues, present when the device was active.
    pub queues: Option<Vec<QueueSnapshot>>,
    /// Plugged base blocks as (first block, count) runs.
    pub plugged: Vec<(u64, u64)>,
    /// Base region's requested size.
    pub requested_size: u64,
    /// Every extent, pending or accepted.
    pub extents: Vec<ExtentInfo>,
    /// Pending chains.
    pub chains: Vec<ChainState>,
    /// Undelivered events, each the 128 wire bytes.
    pub outbox: Vec<Vec<u8>>,
    /// Next chain id.
    pub next_chain_id: u64,
    /// Next extent id.
    pub next_extent_id: u64,
    /// Config generation.
    pub config_generation: u32,
    /// The driver reset the device since it last activated it with tagged extents: the next such
    /// activation queues the events that re-offer pending chains and re-announce release requests
    /// and poison (SPEC.md [T-RESET-1]).
    #[serde(default)]
    pub replay_pending: bool,
}

fn bad(field: impl Into<String>, reason: impl Into<String>) -> DeviceError {
    DeviceError::InvalidSnapshot {
        field: field.into(),
        reason: reason.into(),
    }
}

impl From<Invalid> for DeviceError {
    fn from(e: Invalid) -> Self {
        bad(e.field, e.reason)
    }
}

impl<M: GuestAddressSpace> TaggedMemDevice<M> {
    /// Captures the device state.
    pub fn snapshot(&self) -> DeviceState {
        let now = self.clock.now_ms();
        DeviceState {
            config: self.cfg.clone(),
            acked_features: self.acked_features,
            queues: self
                .mem
                .as_ref()
                .map(|_| self.queues.iter().map(QueueSnapshot::from).collect()),
            plugged: self
                .blocks
                .plugged_runs()
                .iter()
                .map(|r| (r.first as u64, r.count as u64))
                .collect(),
            requested_size: self.blocks.requested_size,
            extents: self.table.infos(),
            chains: self
                .table
                .chains()
                .map(|(id, c)| ChainState {
                    id,
                    ids: c.ids.clone(),
                    remaining_ms: c.deadline_ms.saturating_sub(now),
                    closed: c.closed,
                })
                .collect(),
            outbox: self
                .table
                .outbox()
                .map(|e| EventMsg::from(e).as_bytes().to_vec())
                .collect(),
            next_chain_id: self.table.next_ids().0,
            next_extent_id: self.table.next_ids().1,
            config_generation: self.config_generation,
            replay_pending: self.replay_pending,
        }
    }

    /// Rebuilds a device from an untrusted snapshot; `mem` is required when it was active.
    /// Every plugged block and accepted extent is mapped again through `mapper`. Every field is
    /// checked first; a bad one is refused as [`DeviceError::InvalidSnapshot`] naming it.
    pub fn restore(
        state: &DeviceState,
        mapper: Box<dyn MemoryMapper>,
        notifier: Arc<dyn Notifier>,
        clock: Arc<dyn Clock>,
        mem: Option<M>,
    ) -> Result<Self, DeviceError> {
        let mut dev = TaggedMemDevice::new(state.config.clone(), mapper, notifier, clock)?;
        if state.acked_features & !state.config.features() != 0 {
            return Err(bad("acked_features", "holds bits the device does not offer"));
        }
        dev.acked_features = state.acked_features;
        if state.requested_size > state.config.region_size
            || state.requested_size % state.config.block_size != 0
        {
            return Err(bad(
                "requested_size",
                "not a block multiple no larger than region_size",
            ));
        }
        let mut blocks = Blocks::new(
            state.config.region_addr,
            state.config.region_size,
            state.config.block_size,
            state.requested_size,
        );
        for (i, &(first, count)) in state.plugged.iter().enumerate() {
            let field = format!("plugged[{i}]");
            let end = first
                .checked_add(count)
                .ok_or_else(|| bad(&field, "run overflows"))?;
            if count == 0 || end > blocks.len() as u64 {
                return Err(bad(&field, "run is empty or outside the region"));
            }
            let r = crate::blocks::BlockRange {
                first: usize::try_from(first).map_err(|_| bad(&field, "run outside the region"))?,
                count: usize::try_from(count).map_err(|_| bad(&field, "run outside the region"))?,
            };
            if blocks.any_plugged(r) {
                return Err(bad(&field, "overlaps an earlier run"));
            }
            blocks.set(r, true);
        }
        dev.blocks = blocks;

        // Extent table: ids, chains and extents must agree; indexes are rebuilt, not trusted.
        let timeout = u64::from(state.config.offer_timeout_ms);
        let t = &mut dev.table;
        t.set_next_ids(state.next_chain_id, state.next_extent_id);
        for e in &state.extents {
            if !t.insert_info(e) {
                return Err(bad(format!("extents[id {}]", e.id), "the id appears twice"));
            }
        }
        let now = dev.clock.now_ms();
        for (i, c) in state.chains.iter().enumerate() {
            if c.remaining_ms > timeout {
                return Err(bad(
                    format!("chains[{i}].remaining_ms"),
                    format!("{} exceeds the offer timeout of {timeout} ms", c.remaining_ms),
                ));
            }
            let chain = Chain {
                ids: c.ids.clone(),
                deadline_ms: now.saturating_add(c.remaining_ms),
                closed: c.closed,
            };
            if !t.insert_chain(c.id, chain) {
                return Err(bad(
                    format!("chains[{i}].id"),
                    format!("chain {} appears twice", c.id),
                ));
            }
        }
        t.reindex()?;
        check_outbox(t, state)?;
        let extents_live = !t.is_empty();
        let tagged = state.acked_features & (1 << tagmem_wire::VIRTIO_MEM_F_TAGGED_EXTENTS) != 0;
        let active = state.queues.is_some();

        // Extents exist only on a device that activated with tagged extents: the feature is
        // still negotiated, or the driver reset the device since (and a replay is pending). A
        // device active with tagged extents has replayed already.
        if extents_live && !tagged && !state.replay_pending {
            return Err(bad(
                "acked_features",
                "extents exist, but tagged extents are not negotiated and no reset is pending",
            ));
        }
        if state.replay_pending && active && tagged {
            return Err(bad(
                "replay_pending",
                "set on a device that is active with tagged extents (activation replays)",
            ));
        }
        dev.replay_pending = state.replay_pending;

        // Queues: rebuilt through the validating setters, then checked against guest memory.
        match (&state.queues, mem) {
            (Some(qs), Some(mem)) => {
                let maxes = dev.queue_sizes.clone();
                if qs.len() != maxes.len() {
                    return Err(bad(
                        "queues",
                        format!("{} queues, the device has {}", qs.len(), maxes.len()),
                    ));
                }
                for (i, (q, max)) in qs.iter().zip(&maxes).enumerate() {
                    if q.max_size != *max {
                        return Err(bad(
                            format!("queues[{i}].max_size"),
                            format!("{} differs from the device's {max}", q.max_size),
                        ));
                    }
                }
                if !dev.features_acceptable() {
                    return Err(bad(
                        "acked_features",
                        "an active device needs VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE",
                    ));
                }
                let queues = qs.iter().map(Queue::try_from).collect::<Result<Vec<_>, _>>()?;
                dev.activate_queues(mem, queues)?;
            }
            (Some(_), None) => return Err(bad("queues", "the device was active; guest memory is needed")),
            (None, _) => {}
        }
        dev.config_generation = state.config_generation;

        // Mappings last: nothing is mapped unless the whole snapshot was acceptable.
        let mut wanted: Vec<Mapping> = Vec::new();
        for r in dev.blocks.plugged_runs() {
            if let Some(src) = dev.cfg.region_source {
                wanted.push(Mapping {
                    gpa: dev.blocks.block_addr(r.first),
                    len: r.count as u64 * dev.cfg.block_size,
                    source: crate::mapper::SourceRef {
                        id: src.id,
                        offset: src.offset + r.first as u64 * dev.cfg.block_size,
                    },
                    readonly: false,
                });
            }
        }
        wanted.extend(dev.table.accepted_mappings());
        dev.map_all(&wanted)?;
        Ok(dev)
    }
}

/// Checks the queued events against the restored table: an OFFER repeats its extent's record
/// exactly, in chain order, and only for an open chain; other events name accepted extents; none
/// appears more often than the device could have queued it.
fn check_outbox(t: &mut crate::state::ExtentTable, state: &DeviceState) -> Result<(), DeviceError> {
    let poison_ranges: usize = state.extents.iter().map(|e| e.poison.len()).sum();
    // Host commands stop at OUTBOX_LIMIT; a replay after a reset may add one release request per
    // group and one event per poison range; offers and abandonments are counted exactly below.
    let other_limit = crate::state::OUTBOX_LIMIT + state.extents.len() + poison_ranges;
    let mut others = 0usize;
    let mut offered: HashSet<u64> = HashSet::new();
    let mut abandoned: HashSet<u64> = HashSet::new();
    for (i, raw) in state.outbox.iter().enumerate() {
        let field = format!("outbox[{i}]");
        let ev = Event::try_from(raw.as_slice()).map_err(|e| bad(&field, e.to_string()))?;
        match ev {
            Event::Offer {
                chain_id,
                more,
                record,
            } => {
                let id = record.extent_id.get();
                let chain = t.chain(chain_id).ok_or_else(|| {
                    bad(
                        &field,
                        format!("OFFER for chain {chain_id}, which is not pending"),
                    )
                })?;
                let pos =
                    chain.ids.iter().position(|x| *x == id).ok_or_else(|| {
                        bad(&field, format!("OFFER of extent {id}, not in chain {chain_id}"))
                    })?;
                if chain.closed {
                    return Err(bad(
                        &field,
                        format!("OFFER for chain {chain_id}, which is closed"),
                    ));
                }
                if more != (pos + 1 < chain.ids.len()) {
                    return Err(bad(&field, "the MORE flag disagrees with the chain"));
                }
                if t.extent(id).is_none_or(|e| record != record_of(id, e)) {
                    return Err(bad(
                        &field,
                        format!("OFFER record of extent {id} disagrees with the table"),
                    ));
                }
                if !offered.insert(id) {
                    return Err(bad(&field, format!("extent {id} is offered twice")));
                }
            }
            Event::ChainAbandoned { chain_id } => {
                if chain_id == 0 || chain_id >= state.next_chain_id || t.chain(chain_id).is_some() {
                    return Err(bad(
                        &field,
                        format!("CHAIN_ABANDONED for chain {chain_id}, which never ended"),
                    ));
                }
                if !abandoned.insert(chain_id) {
                    return Err(bad(&field, format!("chain {chain_id} is abandoned twice")));
                }
            }
            Event::ReleaseRequest { record } | Event::Metadata { record } | Event::Poison { record, .. } => {
                let id = record.extent_id.get();
                let e = t
                    .extent(id)
                    .filter(|e| e.state != ExtentState::Pending)
                    .ok_or_else(|| bad(&field, format!("names extent {id}, which is not accepted")))?;
                let now = record_of(id, e);
                let same_extent = record.tag == now.tag
                    && record.addr == now.addr
                    && record.length == now.length
                    && record.flags == now.flags
                    && record.seq == now.seq;
                if !same_extent {
                    return Err(bad(
                        &field,
                        format!("the record of extent {id} disagrees with the table"),
                    ));
                }
                if let Event::Poison { offset, length, .. } = ev {
                    let inside = length > 0 && offset.checked_add(length).is_some_and(|end| end <= e.length);
                    if !inside {
                        return Err(bad(&field, "POISON range outside its extent"));
                    }
                }
                others += 1;
                if others > other_limit {
                    return Err(bad("outbox", "more queued events than the device can queue"));
                }
            }
        }
        t.push_event(ev);
    }
    Ok(())
}

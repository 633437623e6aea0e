//! Device state as plain serde data. A snapshot is untrusted input: restore re-runs the
//! construction-time validation, rebuilds every index from scratch, re-validates the queues and
//! only then re-creates the mappings.

use crate::blocks::Blocks;
use crate::control::{ExtentInfo, ExtentState};
use crate::device::{DeviceConfig, TaggedMemDevice};
use crate::error::DeviceError;
use crate::mapper::{Clock, Mapping, MemoryMapper, Notifier};
use crate::state::{mapping_of, Chain};
use serde::{Deserialize, Serialize};
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
        let bad = |what: &str| DeviceError::InvalidSnapshot(format!("queue {what}"));
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
}

fn bad(msg: impl Into<String>) -> DeviceError {
    DeviceError::InvalidSnapshot(msg.into())
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
                .chains
                .iter()
                .map(|(id, c)| ChainState {
                    id: *id,
                    ids: c.ids.clone(),
                    remaining_ms: c.deadline_ms.saturating_sub(now),
                    closed: c.closed,
                })
                .collect(),
            outbox: self
                .table
                .outbox
                .iter()
                .map(|e| EventMsg::from(e).as_bytes().to_vec())
                .collect(),
            next_chain_id: self.table.next_chain_id,
            next_extent_id: self.table.next_extent_id,
            config_generation: self.config_generation,
        }
    }

    /// Rebuilds a device from an untrusted snapshot; `mem` is required when it was active.
    /// Every plugged block and accepted extent is mapped again through `mapper`.
    pub fn restore(
        state: &DeviceState,
        mapper: Box<dyn MemoryMapper>,
        notifier: Arc<dyn Notifier>,
        clock: Arc<dyn Clock>,
        mem: Option<M>,
    ) -> Result<Self, DeviceError> {
        let mut dev = TaggedMemDevice::new(state.config.clone(), mapper, notifier, clock)?;
        if state.acked_features & !state.config.features() != 0 {
            return Err(bad("acked features the device does not offer"));
        }
        dev.acked_features = state.acked_features;
        if state.requested_size > state.config.region_size
            || state.requested_size % state.config.block_size != 0
        {
            return Err(bad("requested_size"));
        }
        let mut blocks = Blocks::new(
            state.config.region_addr,
            state.config.region_size,
            state.config.block_size,
            state.requested_size,
        );
        for &(first, count) in &state.plugged {
            let end = first
                .checked_add(count)
                .ok_or_else(|| bad("plugged run overflows"))?;
            if count == 0 || end > blocks.len() as u64 {
                return Err(bad("plugged run outside the region"));
            }
            let r = crate::blocks::BlockRange {
                first: usize::try_from(first).map_err(|_| bad("plugged run"))?,
                count: usize::try_from(count).map_err(|_| bad("plugged run"))?,
            };
            if (r.first..r.first + r.count).any(|i| blocks.is_plugged(i)) {
                return Err(bad("plugged runs overlap"));
            }
            blocks.set(r, true);
        }
        dev.blocks = blocks;

        // Extent table: ids, chains and extents must agree; indexes are rebuilt, not trusted.
        let t = &mut dev.table;
        t.next_chain_id = state.next_chain_id;
        t.next_extent_id = state.next_extent_id;
        for e in &state.extents {
            if !t.insert_info(e) {
                return Err(bad(format!("extent id {} appears twice", e.id)));
            }
        }
        let now = dev.clock.now_ms();
        for c in &state.chains {
            let chain = Chain {
                ids: c.ids.clone(),
                deadline_ms: now.saturating_add(c.remaining_ms),
                closed: c.closed,
            };
            if c.ids
                .iter()
                .any(|id| t.extents.get(id).is_none_or(|e| e.chain_id != c.id))
            {
                return Err(bad(format!("chain {} names extents of another chain", c.id)));
            }
            if t.chains.insert(c.id, chain).is_some() {
                return Err(bad(format!("chain {} appears twice", c.id)));
            }
        }
        t.reindex().map_err(bad)?;
        if state.outbox.len() > crate::state::OUTBOX_LIMIT {
            return Err(bad("too many queued events"));
        }
        for raw in &state.outbox {
            let ev = Event::try_from(raw.as_slice()).map_err(|e| bad(format!("queued event: {e}")))?;
            let known = match ev {
                Event::Offer { chain_id, record, .. } => t
                    .chains
                    .get(&chain_id)
                    .is_some_and(|c| c.ids.contains(&record.extent_id.get())),
                Event::ChainAbandoned { .. } => true,
                Event::ReleaseRequest { record }
                | Event::Metadata { record }
                | Event::Poison { record, .. } => t
                    .extents
                    .get(&record.extent_id.get())
                    .is_some_and(|e| e.state != ExtentState::Pending),
            };
            if !known {
                return Err(bad("queued event names unknown capacity"));
            }
            t.outbox.push_back(ev);
        }

        // Queues: rebuilt through the validating setters, then checked against guest memory.
        match (&state.queues, mem) {
            (Some(qs), Some(mem)) => {
                let queues = qs.iter().map(Queue::try_from).collect::<Result<Vec<_>, _>>()?;
                use crate::virtio::VirtioDevice;
                dev.activate(mem, queues)?;
            }
            (Some(_), None) => return Err(bad("the device was active; guest memory is needed")),
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
        wanted.extend(
            dev.table
                .extents
                .values()
                .filter(|e| e.state != ExtentState::Pending)
                .map(mapping_of),
        );
        dev.map_all(&wanted)?;
        Ok(dev)
    }
}

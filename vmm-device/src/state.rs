//! The extent state machine: chains, extents, tag groups, the guest-physical window and the
//! event outbox. Pure: no I/O, no mapping. Operations that need a side effect are split into a
//! `plan_*` step that validates and a `commit_*` step the device calls only after the side effect
//! (mapping, unmapping) succeeded.
//!
//! This file holds the table and its indexes; `window` the free list of the guest-physical
//! window; `offer`, `accept` and `release` the life-cycle steps; `outbox` the event queue and the
//! commands that only add events; `invariants` the checks of an untrusted table (restore);
//! `replay` what a reset forgets, what the next activation replays, and the LIST query.

use crate::control::*;
use crate::mapper::{Mapping, SourceId, SourceRef};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use tagmem_wire::{self as wire, reason, Event, ExtentRecord, Le16, Le32, Le64};
use uuid::Uuid;

mod accept;
#[cfg(test)]
mod fixtures;
mod invariants;
mod offer;
mod outbox;
mod release;
mod replay;
mod window;

pub(crate) use window::Window;

pub(crate) use invariants::Invalid;

/// Most events the outbox holds before host commands that add events are refused.
pub const OUTBOX_LIMIT: usize = 4096;

/// A chain of offered extents awaiting the driver's single answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Chain {
    /// Extent ids in offer order.
    pub ids: Vec<u64>,
    /// Clock time (ms) after which the chain is abandoned.
    pub deadline_ms: u64,
    /// The closing (More = 0) event reached the driver.
    pub closed: bool,
}

/// Extents the driver chose from a chain, validated but not yet committed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct AcceptPlan {
    /// The chain.
    pub chain_id: u64,
    /// Accepted ids with the mapping each needs.
    pub accepted: Vec<(u64, Mapping)>,
    /// Ids left out.
    pub rejected: Vec<u64>,
}

/// One extent as the table keeps it: [`ExtentInfo`] without the id (the map key) and the poison
/// list (a side table, since few extents have one). Kept small: it is most of the per-extent
/// memory the device holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Extent {
    pub chain_id: u64,
    pub tag: Uuid,
    pub gpa: u64,
    pub length: u64,
    pub source: SourceRef,
    pub perf: Perf,
    pub node: u16,
    pub seq: u16,
    pub flags: ExtentFlags,
    pub class: SourceClass,
    pub state: ExtentState,
}

impl Extent {
    /// The table entry of a public extent row.
    pub fn from_info(e: &ExtentInfo) -> Self {
        Extent {
            chain_id: e.chain_id,
            tag: e.tag,
            gpa: e.gpa,
            length: e.length,
            source: e.source,
            perf: e.perf,
            node: e.node,
            seq: e.seq,
            flags: e.flags,
            class: e.class,
            state: e.state,
        }
    }
}

/// The extent table and everything that hangs off it.
#[derive(Debug)]
pub(crate) struct ExtentTable {
    /// Live extents by id. A hash map: a B-tree's half-full nodes would double the footprint.
    extents: HashMap<u64, Extent>,
    /// Poisoned ranges of the extents that have any.
    poison: HashMap<u64, Vec<(u64, u64)>>,
    /// Pending chains by id.
    chains: BTreeMap<u64, Chain>,
    /// Events not yet delivered, oldest first.
    outbox: VecDeque<Event>,
    next_chain_id: u64,
    next_extent_id: u64,
    window: Window,
    window_addr: u64,
    window_size: u64,
    /// Live extents per non-nil tag.
    tags: HashMap<Uuid, Vec<u64>>,
    /// Backing ranges in use: (source, offset) -> extent id (the length is the extent's).
    backing: BTreeMap<(SourceId, u64), u64>,
    /// Sources whose last extent left the table since the host last asked.
    unused_sources: Vec<SourceId>,
    max_pending: usize,
    timeout_ms: u64,
}

/// Builds the wire record of extent `id`.
pub(crate) fn record_of(id: u64, e: &Extent) -> ExtentRecord {
    ExtentRecord {
        tag: *e.tag.as_bytes(),
        extent_id: Le64::new(id),
        addr: Le64::new(e.gpa),
        length: Le64::new(e.length),
        flags: Le32::new(e.flags.bits()),
        node_id: Le16::new(e.node),
        source: e.class.to_wire(),
        read_latency_ns: Le32::new(e.perf.read_latency_ns),
        write_latency_ns: Le32::new(e.perf.write_latency_ns),
        read_bandwidth_mbps: Le32::new(e.perf.read_bandwidth_mbps),
        write_bandwidth_mbps: Le32::new(e.perf.write_bandwidth_mbps),
        seq: Le16::new(e.seq),
        ..Default::default()
    }
}

/// The mapping that makes extent `e` visible to the guest.
pub(crate) fn mapping_of(e: &Extent) -> Mapping {
    Mapping {
        gpa: e.gpa,
        len: e.length,
        source: e.source,
        readonly: e.flags.readonly,
    }
}

fn is_aligned(v: u64) -> bool {
    v % wire::VIRTIO_MEM_EXTENT_ALIGN == 0
}

impl ExtentTable {
    /// An empty table over the window `[addr, addr + size)`.
    pub fn new(addr: u64, size: u64, max_pending: usize, timeout_ms: u64) -> Self {
        ExtentTable {
            extents: HashMap::new(),
            poison: HashMap::new(),
            chains: BTreeMap::new(),
            outbox: VecDeque::new(),
            next_chain_id: 1,
            next_extent_id: 1,
            window: Window::new(addr, size),
            window_addr: addr,
            window_size: size,
            tags: HashMap::new(),
            backing: BTreeMap::new(),
            unused_sources: Vec::new(),
            max_pending,
            timeout_ms,
        }
    }

    /// Number of extents offered and not yet answered.
    pub fn pending(&self) -> usize {
        self.chains.values().map(|c| c.ids.len()).sum()
    }

    /// Number of live extents (pending or accepted).
    pub fn len(&self) -> usize {
        self.extents.len()
    }

    /// True when no extent is live.
    pub fn is_empty(&self) -> bool {
        self.extents.is_empty()
    }

    /// Live extent `id`.
    pub fn extent(&self, id: u64) -> Option<&Extent> {
        self.extents.get(&id)
    }

    /// The mapping that makes live extent `id` visible to the guest.
    pub fn mapping(&self, id: u64) -> Option<Mapping> {
        self.extents.get(&id).map(mapping_of)
    }

    /// The mappings of every accepted extent (any post-accept state), in no particular order.
    pub fn accepted_mappings(&self) -> Vec<Mapping> {
        self.extents
            .values()
            .filter(|e| e.state != ExtentState::Pending)
            .map(mapping_of)
            .collect()
    }

    /// Pending chains, by id.
    pub fn chains(&self) -> impl Iterator<Item = (u64, &Chain)> + '_ {
        self.chains.iter().map(|(id, c)| (*id, c))
    }

    /// Pending chain `id`.
    pub fn chain(&self, id: u64) -> Option<&Chain> {
        self.chains.get(&id)
    }

    /// Adds a pending chain (restore); false if the id is taken. [`ExtentTable::reindex`] checks
    /// it against the extents.
    pub fn insert_chain(&mut self, id: u64, chain: Chain) -> bool {
        match self.chains.entry(id) {
            std::collections::btree_map::Entry::Occupied(_) => false,
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(chain);
                true
            }
        }
    }

    /// Undelivered events, oldest first.
    pub fn outbox(&self) -> impl Iterator<Item = &Event> + '_ {
        self.outbox.iter()
    }

    /// Queues `event` as it stands (restore, after the caller checked it).
    pub fn push_event(&mut self, event: Event) {
        self.outbox.push_back(event);
    }

    /// The next chain id and the next extent id (ids are never reused).
    pub fn next_ids(&self) -> (u64, u64) {
        (self.next_chain_id, self.next_extent_id)
    }

    /// Sets the next chain and extent ids (restore; [`ExtentTable::reindex`] checks them).
    pub fn set_next_ids(&mut self, chain: u64, extent: u64) {
        self.next_chain_id = chain;
        self.next_extent_id = extent;
    }

    /// Number of accepted (mapped) extents.
    pub fn accepted_count(&self) -> usize {
        // Every live extent is pending (in a chain) or accepted: O(pending), not O(extents).
        self.extents.len().saturating_sub(self.pending())
    }

    fn index(&mut self, id: u64, e: &Extent) {
        if !e.tag.is_nil() {
            self.tags.entry(e.tag).or_default().push(id);
        }
        self.backing.insert((e.source.id, e.source.offset), id);
    }

    /// True while a live extent (pending or accepted) uses backing `id`.
    pub fn uses_source(&self, id: SourceId) -> bool {
        self.backing.range((id, 0)..=(id, u64::MAX)).next().is_some()
    }

    /// Drains the sources whose last extent left the table, in the order they became unused.
    pub fn take_unused_sources(&mut self) -> Vec<SourceId> {
        std::mem::take(&mut self.unused_sources)
    }

    /// The public row of extent `id`.
    pub fn info(&self, id: u64) -> Option<ExtentInfo> {
        let e = self.extents.get(&id)?;
        Some(ExtentInfo {
            id,
            chain_id: e.chain_id,
            tag: e.tag,
            gpa: e.gpa,
            length: e.length,
            source: e.source,
            flags: e.flags,
            perf: e.perf,
            node: e.node,
            seq: e.seq,
            class: e.class,
            state: e.state,
            poison: self.poison.get(&id).cloned().unwrap_or_default(),
        })
    }

    /// Every extent's public row, by id.
    pub fn infos(&self) -> Vec<ExtentInfo> {
        let mut ids: Vec<u64> = self.extents.keys().copied().collect();
        ids.sort_unstable();
        ids.into_iter().filter_map(|id| self.info(id)).collect()
    }

    /// Inserts a row (restore); indexes are rebuilt by [`ExtentTable::reindex`].
    pub fn insert_info(&mut self, e: &ExtentInfo) -> bool {
        if !e.poison.is_empty() {
            self.poison.insert(e.id, e.poison.clone());
        }
        self.extents.insert(e.id, Extent::from_info(e)).is_none()
    }

    /// Removes an extent from every index and returns its row; its guest range goes back to the
    /// window.
    fn remove(&mut self, id: u64) -> Option<ExtentInfo> {
        let info = self.info(id)?;
        let e = self.extents.remove(&id)?;
        self.poison.remove(&id);
        if !e.tag.is_nil() {
            if let Some(v) = self.tags.get_mut(&e.tag) {
                v.retain(|x| *x != id);
                if v.is_empty() {
                    self.tags.remove(&e.tag);
                }
            }
        }
        self.backing.remove(&(e.source.id, e.source.offset));
        if !self.uses_source(e.source.id) {
            self.unused_sources.push(e.source.id);
        }
        self.window.free(e.gpa, e.length);
        Some(info)
    }

    /// Ids of the accepted group extent `id` belongs to, lowest first.
    pub fn group_of(&self, id: u64) -> Vec<u64> {
        let Some(e) = self.extents.get(&id) else {
            return Vec::new();
        };
        if e.tag.is_nil() {
            return vec![id];
        }
        let mut v: Vec<u64> = self.tags.get(&e.tag).cloned().unwrap_or_default();
        v.retain(|x| self.extents[x].state != ExtentState::Pending);
        v.sort_unstable();
        v
    }

    /// Resolves a host target to accepted groups (each lowest id first).
    pub fn resolve(&self, target: Target) -> Result<Vec<u64>, ControlError> {
        let ids: Vec<u64> = match target {
            Target::Tag(t) => self
                .tags
                .get(&t)
                .cloned()
                .ok_or_else(|| ControlError::NotFound(format!("tag {t}")))?,
            Target::Extent(id) => match self.extents.get(&id) {
                None => return Err(ControlError::NotFound(format!("extent {id}"))),
                Some(e) if e.state == ExtentState::Pending => vec![id],
                Some(_) => self.group_of(id),
            },
        };
        if let Some(p) = ids
            .iter()
            .find(|id| self.extents[*id].state == ExtentState::Pending)
        {
            return Err(ControlError::WrongState {
                what: format!("extent {p}"),
                state: ExtentState::Pending,
                command: "this command",
            });
        }
        let mut ids = ids;
        ids.sort_unstable();
        Ok(ids)
    }
}

//! The extent state machine: chains, extents, tag groups, the guest-physical window and the
//! event outbox. Pure: no I/O, no mapping. Operations that need a side effect are split into a
//! `plan_*` step that validates and a `commit_*` step the device calls only after the side effect
//! (mapping, unmapping) succeeded.
//!
//! Checking an untrusted table (restore) is in `invariants`; what a reset forgets and what the
//! next activation replays, and the LIST query, in `replay`.

use crate::control::*;
use crate::mapper::{Mapping, SourceId, SourceRef};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use tagmem_wire::{self as wire, reason, Event, ExtentRecord, Le16, Le32, Le64};
use uuid::Uuid;

mod invariants;
mod replay;

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

/// Free ranges of the guest-physical window, keyed by start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Window {
    free: BTreeMap<u64, u64>,
}

impl Window {
    /// A window with `[addr, addr + size)` free.
    pub fn new(addr: u64, size: u64) -> Self {
        let mut free = BTreeMap::new();
        if size > 0 {
            free.insert(addr, size);
        }
        Window { free }
    }

    /// First-fit allocation of `len` bytes.
    pub fn alloc(&mut self, len: u64) -> Option<u64> {
        let (&start, &flen) = self.free.iter().find(|(_, &l)| l >= len)?;
        self.free.remove(&start);
        if flen > len {
            self.free.insert(start + len, flen - len);
        }
        Some(start)
    }

    /// Takes exactly `[gpa, gpa + len)` if it is wholly free.
    pub fn take(&mut self, gpa: u64, len: u64) -> bool {
        let Some(end) = gpa.checked_add(len) else {
            return false;
        };
        // Few tree operations: the hole's head shrinks in place, only its tail is inserted.
        let Some((&start, flen)) = self.free.range_mut(..=gpa).next_back() else {
            return false;
        };
        let fend = start + *flen;
        if fend < end {
            return false;
        }
        if gpa > start {
            *flen = gpa - start;
        } else {
            self.free.remove(&start);
        }
        if fend > end {
            self.free.insert(end, fend - end);
        }
        true
    }

    /// Returns `[gpa, gpa + len)` to the free list, merging neighbours.
    pub fn free(&mut self, gpa: u64, len: u64) {
        let mut end = gpa + len;
        if let Some(nl) = self.free.remove(&end) {
            end += nl;
        }
        // A hole ending at `gpa` grows in place.
        if let Some((&ps, pl)) = self.free.range_mut(..gpa).next_back() {
            if ps + *pl == gpa {
                *pl = end - ps;
                return;
            }
        }
        self.free.insert(gpa, end - gpa);
    }

    /// Total free bytes.
    #[cfg(test)]
    pub fn free_bytes(&self) -> u64 {
        self.free.values().sum()
    }
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
    pub extents: HashMap<u64, Extent>,
    /// Poisoned ranges of the extents that have any.
    pub poison: HashMap<u64, Vec<(u64, u64)>>,
    pub chains: BTreeMap<u64, Chain>,
    pub outbox: VecDeque<Event>,
    pub next_chain_id: u64,
    pub next_extent_id: u64,
    pub window: Window,
    window_addr: u64,
    window_size: u64,
    /// Live extents per non-nil tag.
    tags: HashMap<Uuid, Vec<u64>>,
    /// Backing ranges in use: (source, offset) -> extent id (the length is the extent's).
    backing: BTreeMap<(SourceId, u64), u64>,
    /// Sources whose last extent left the table since the host last asked.
    unused_sources: Vec<SourceId>,
    pub max_pending: usize,
    pub timeout_ms: u64,
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

    /// Number of accepted (mapped) extents.
    pub fn accepted_count(&self) -> usize {
        // Every live extent is pending (in a chain) or accepted: O(pending), not O(extents).
        self.extents.len().saturating_sub(self.pending())
    }

    fn backing_overlap(&self, source: SourceId, offset: u64, len: u64) -> Option<u64> {
        let end = offset.checked_add(len)?;
        // The nearest range starting at or before `offset`, then every range starting inside.
        if let Some((&(s, o), &id)) = self.backing.range(..=(source, offset)).next_back() {
            let l = self.extents.get(&id).map_or(0, |e| e.length);
            if s == source && o + l > offset {
                return Some(id);
            }
        }
        self.backing
            .range((source, offset)..(source, end))
            .next()
            .map(|(_, &id)| id)
    }

    /// Validates `specs` against the table; returns nothing on success.
    fn validate_offer(&self, specs: &[ExtentSpec]) -> Result<(), ControlError> {
        if specs.is_empty() {
            return Err(ControlError::EmptyOffer);
        }
        // [T-Q-6]: one OFFER event per extent; the outbox bound applies to offers too.
        self.check_outbox(specs.len())?;
        let pending = self.pending();
        if pending + specs.len() > self.max_pending {
            return Err(ControlError::TooManyPending {
                pending,
                offered: specs.len(),
                max: self.max_pending,
            });
        }
        let mut groups: BTreeMap<Uuid, Vec<(usize, &ExtentSpec)>> = BTreeMap::new();
        for (i, s) in specs.iter().enumerate() {
            if s.length == 0 || !is_aligned(s.length) {
                return Err(ControlError::MisalignedLength {
                    index: i,
                    length: s.length,
                });
            }
            if !is_aligned(s.source.offset) {
                return Err(ControlError::Misaligned {
                    index: i,
                    field: "backing offset",
                    value: s.source.offset,
                });
            }
            if s.source.offset.checked_add(s.length).is_none() {
                return Err(ControlError::RangeOverflow {
                    index: i,
                    offset: s.source.offset,
                    length: s.length,
                });
            }
            if let Some(gpa) = s.gpa {
                if !is_aligned(gpa) {
                    return Err(ControlError::Misaligned {
                        index: i,
                        field: "guest address",
                        value: gpa,
                    });
                }
                let inside = gpa >= self.window_addr
                    && gpa
                        .checked_add(s.length)
                        .is_some_and(|end| end <= self.window_addr + self.window_size);
                if !inside {
                    return Err(ControlError::OutsideWindow {
                        index: i,
                        gpa,
                        length: s.length,
                    });
                }
            }
            if s.flags.sharable && s.tag.is_nil() {
                return Err(ControlError::SharableUntagged(i));
            }
            if let Some(other) = self.backing_overlap(s.source.id, s.source.offset, s.length) {
                return Err(ControlError::Overlap {
                    index: i,
                    what: "backing range",
                    start: s.source.offset,
                    length: s.length,
                    other,
                });
            }
            for (j, t) in specs[..i].iter().enumerate() {
                let clash = t.source.id == s.source.id
                    && t.source.offset < s.source.offset + s.length
                    && s.source.offset < t.source.offset + t.length;
                if clash {
                    return Err(ControlError::Overlap {
                        index: i,
                        what: "backing range",
                        start: s.source.offset,
                        length: s.length,
                        other: j as u64,
                    });
                }
                if let (Some(a), Some(b)) = (s.gpa, t.gpa) {
                    if a < b + t.length && b < a + s.length {
                        return Err(ControlError::Overlap {
                            index: i,
                            what: "guest range",
                            start: a,
                            length: s.length,
                            other: j as u64,
                        });
                    }
                }
            }
            if !s.tag.is_nil() {
                if self.tags.contains_key(&s.tag) {
                    return Err(ControlError::DuplicateTag(s.tag));
                }
                groups.entry(s.tag).or_default().push((i, s));
            }
        }
        for (tag, members) in groups {
            let sharable = members[0].1.flags.sharable;
            if members.iter().any(|(_, s)| s.flags.sharable != sharable) {
                return Err(ControlError::MixedSharing(tag));
            }
            if sharable {
                let mut seqs: Vec<u16> = members.iter().map(|(_, s)| s.seq).collect();
                seqs.sort_unstable();
                let exact = seqs.iter().enumerate().all(|(k, &q)| usize::from(q) == k);
                if !exact {
                    return Err(ControlError::BadSequence {
                        tag,
                        n: members.len(),
                        got: seqs,
                    });
                }
            }
        }
        Ok(())
    }

    /// Offers a chain: validates, places every extent, queues OFFER events.
    pub fn offer(&mut self, specs: &[ExtentSpec], now_ms: u64) -> Result<OfferReceipt, ControlError> {
        self.validate_offer(specs)?;
        // Place fixed addresses first so first-fit does not take them.
        let mut placed: Vec<Option<u64>> = vec![None; specs.len()];
        let undo = |w: &mut Window, placed: &[Option<u64>]| {
            for (s, p) in specs.iter().zip(placed) {
                if let Some(g) = p {
                    w.free(*g, s.length);
                }
            }
        };
        for (i, s) in specs.iter().enumerate() {
            if let Some(gpa) = s.gpa {
                if !self.window.take(gpa, s.length) {
                    let other = self
                        .extents
                        .iter()
                        .find(|(_, e)| e.gpa < gpa + s.length && gpa < e.gpa + e.length);
                    undo(&mut self.window, &placed);
                    return Err(ControlError::Overlap {
                        index: i,
                        what: "guest range",
                        start: gpa,
                        length: s.length,
                        other: other.map_or(0, |(id, _)| *id),
                    });
                }
                placed[i] = Some(gpa);
            }
        }
        for (i, s) in specs.iter().enumerate() {
            if s.gpa.is_none() {
                match self.window.alloc(s.length) {
                    Some(g) => placed[i] = Some(g),
                    None => {
                        undo(&mut self.window, &placed);
                        return Err(ControlError::WindowFull {
                            index: i,
                            length: s.length,
                        });
                    }
                }
            }
        }
        let chain_id = self.next_chain_id;
        self.next_chain_id += 1;
        let mut ids = Vec::with_capacity(specs.len());
        let mut receipt = Vec::with_capacity(specs.len());
        for (i, (s, gpa)) in specs.iter().zip(placed).enumerate() {
            let id = self.next_extent_id;
            self.next_extent_id += 1;
            let gpa = gpa.unwrap_or_default();
            let info = Extent {
                chain_id,
                tag: s.tag,
                gpa,
                length: s.length,
                source: s.source,
                flags: s.flags,
                perf: s.perf,
                node: s.node,
                // [T-EXT-7]: `seq` is zero outside a sharable group.
                seq: if s.flags.sharable { s.seq } else { 0 },
                class: s.class,
                state: ExtentState::Pending,
            };
            self.outbox.push_back(Event::Offer {
                chain_id,
                more: i + 1 < specs.len(),
                record: record_of(id, &info),
            });
            self.index(id, &info);
            self.extents.insert(id, info);
            ids.push(id);
            receipt.push((id, gpa));
        }
        self.chains.insert(
            chain_id,
            Chain {
                ids,
                deadline_ms: now_ms.saturating_add(self.timeout_ms),
                closed: false,
            },
        );
        Ok(OfferReceipt {
            chain_id,
            extents: receipt,
        })
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

    /// The next event to deliver, if any.
    pub fn peek_event(&self) -> Option<&Event> {
        self.outbox.front()
    }

    /// Marks the front event delivered.
    pub fn commit_event(&mut self) {
        if let Some(Event::Offer {
            chain_id,
            more: false,
            ..
        }) = self.outbox.pop_front()
        {
            if let Some(c) = self.chains.get_mut(&chain_id) {
                c.closed = true;
            }
        }
    }

    /// Validates an ACCEPT; errors are wire reason codes.
    pub fn plan_accept(&self, chain_id: u64, ids: &[u64]) -> Result<AcceptPlan, u16> {
        let chain = self.chains.get(&chain_id).ok_or(reason::UNKNOWN_CHAIN)?;
        if !chain.closed {
            return Err(reason::CHAIN_OPEN);
        }
        // Sets, so an ACCEPT of `max_pending` ids costs O(k), not O(k^2).
        let in_chain: HashSet<u64> = chain.ids.iter().copied().collect();
        let mut chosen: HashSet<u64> = HashSet::with_capacity(ids.len());
        for &id in ids {
            if !in_chain.contains(&id) {
                return Err(reason::UNKNOWN_EXTENT);
            }
            if !chosen.insert(id) {
                return Err(reason::DUPLICATE_ID);
            }
        }
        // [T-ACCEPT-2]: every tag group is all-or-nothing, as DCD adds a tag group whole.
        let taken: HashSet<Uuid> = chosen
            .iter()
            .map(|id| self.extents[id].tag)
            .filter(|t| !t.is_nil())
            .collect();
        let partial = chain.ids.iter().any(|id| {
            let tag = self.extents[id].tag;
            !tag.is_nil() && !chosen.contains(id) && taken.contains(&tag)
        });
        if partial {
            return Err(reason::PARTIAL_GROUP);
        }
        let accepted = chain
            .ids
            .iter()
            .filter(|id| chosen.contains(id))
            .map(|id| (*id, mapping_of(&self.extents[id])))
            .collect();
        let rejected = chain
            .ids
            .iter()
            .filter(|id| !chosen.contains(id))
            .copied()
            .collect();
        Ok(AcceptPlan {
            chain_id,
            accepted,
            rejected,
        })
    }

    /// Applies a validated ACCEPT whose mappings all succeeded.
    pub fn commit_accept(&mut self, plan: &AcceptPlan) {
        self.chains.remove(&plan.chain_id);
        for (id, _) in &plan.accepted {
            if let Some(e) = self.extents.get_mut(id) {
                e.state = ExtentState::Accepted;
            }
        }
        for id in &plan.rejected {
            self.remove(*id);
        }
        self.purge_events(&plan.rejected);
    }

    /// Drops undelivered events that name extents which no longer exist ([T-META-1]: nothing is
    /// said about capacity after its release).
    fn purge_events(&mut self, gone: &[u64]) {
        if gone.is_empty() {
            return;
        }
        let gone: HashSet<u64> = gone.iter().copied().collect();
        self.outbox.retain(|e| match e {
            Event::Offer { record, .. }
            | Event::ReleaseRequest { record }
            | Event::Metadata { record }
            | Event::Poison { record, .. } => !gone.contains(&record.extent_id.get()),
            Event::ChainAbandoned { .. } => true,
        });
    }

    /// Drops a pending chain: frees its extents and its undelivered offers. Returns its ids.
    pub fn drop_chain(&mut self, chain_id: u64, tell_driver: bool) -> Vec<u64> {
        let Some(chain) = self.chains.remove(&chain_id) else {
            return Vec::new();
        };
        self.outbox
            .retain(|e| !matches!(e, Event::Offer { chain_id: c, .. } if *c == chain_id));
        for id in &chain.ids {
            self.remove(*id);
        }
        if tell_driver {
            self.outbox.push_back(Event::ChainAbandoned { chain_id });
        }
        chain.ids
    }

    /// Chains whose deadline has passed.
    pub fn expired(&self, now_ms: u64) -> Vec<u64> {
        self.chains
            .iter()
            .filter(|(_, c)| now_ms >= c.deadline_ms)
            .map(|(id, _)| *id)
            .collect()
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

    /// Validates a driver RELEASE / RELEASE_BUSY; returns the group.
    pub fn plan_release(&self, extent_id: u64, tag: &[u8; 16]) -> Result<Vec<u64>, u16> {
        let e = self.extents.get(&extent_id).ok_or(reason::UNKNOWN_EXTENT)?;
        if e.state == ExtentState::Pending {
            return Err(reason::UNKNOWN_EXTENT);
        }
        if e.tag.as_bytes() != tag {
            return Err(reason::TAG_MISMATCH);
        }
        Ok(self.group_of(extent_id))
    }

    /// Removes a released group and the events still queued about it; returns the removed
    /// extents.
    pub fn commit_release(&mut self, group: &[u64]) -> Vec<ExtentInfo> {
        let removed: Vec<ExtentInfo> = group.iter().filter_map(|id| self.remove(*id)).collect();
        let ids: Vec<u64> = removed.iter().map(|e| e.id).collect();
        self.purge_events(&ids);
        removed
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

    fn check_outbox(&self, adding: usize) -> Result<(), ControlError> {
        if self.outbox.len() + adding > OUTBOX_LIMIT {
            return Err(ControlError::EventBacklog(self.outbox.len()));
        }
        Ok(())
    }

    /// Host asks for a group's release; queues RELEASE_REQUEST.
    pub fn request_release(&mut self, target: Target) -> Result<Vec<u64>, ControlError> {
        let group = self.resolve(target)?;
        self.check_outbox(1)?;
        let first = group[0];
        for id in &group {
            if let Some(e) = self.extents.get_mut(id) {
                if e.state == ExtentState::Accepted {
                    e.state = ExtentState::ReleaseRequested;
                }
            }
        }
        self.outbox.push_back(Event::ReleaseRequest {
            record: record_of(first, &self.extents[&first]),
        });
        Ok(group)
    }

    /// Driver says a requested group is busy; defers it.
    pub fn defer_release(&mut self, extent_id: u64, tag: &[u8; 16]) -> Result<Vec<u64>, u16> {
        let group = self.plan_release(extent_id, tag)?;
        let asked = group.iter().all(|id| {
            matches!(
                self.extents[id].state,
                ExtentState::ReleaseRequested | ExtentState::ReleaseDeferred
            )
        });
        if !asked {
            return Err(reason::WRONG_STATE);
        }
        for id in &group {
            if let Some(e) = self.extents.get_mut(id) {
                e.state = ExtentState::ReleaseDeferred;
            }
        }
        Ok(group)
    }

    /// Updates performance metadata; queues one METADATA event per extent.
    pub fn update_metadata(&mut self, target: Target, perf: Perf) -> Result<Vec<u64>, ControlError> {
        let ids = self.resolve(target)?;
        self.check_outbox(ids.len())?;
        for id in &ids {
            if let Some(e) = self.extents.get_mut(id) {
                e.perf = perf;
                let record = record_of(*id, e);
                self.outbox.push_back(Event::Metadata { record });
            }
        }
        Ok(ids)
    }

    /// Records poison in an accepted extent; queues a POISON event.
    pub fn poison(&mut self, id: u64, offset: u64, length: u64) -> Result<(), ControlError> {
        let ids = self.resolve(Target::Extent(id))?;
        debug_assert!(!ids.is_empty());
        self.check_outbox(1)?;
        let e = self
            .extents
            .get_mut(&id)
            .ok_or_else(|| ControlError::NotFound(format!("extent {id}")))?;
        let inside = length > 0 && offset.checked_add(length).is_some_and(|end| end <= e.length);
        if !inside {
            return Err(ControlError::PoisonOutOfRange {
                id,
                offset,
                length,
                extent_len: e.length,
            });
        }
        let record = record_of(id, e);
        self.poison.entry(id).or_default().push((offset, length));
        self.outbox.push_back(Event::Poison {
            record,
            offset,
            length,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapper::SourceRef;

    const MB2: u64 = wire::VIRTIO_MEM_EXTENT_ALIGN;

    fn spec(tag: u128, src: u64, off: u64, len: u64) -> ExtentSpec {
        let source = SourceRef {
            id: SourceId(src),
            offset: off,
        };
        ExtentSpec {
            class: SourceClass::File,
            ..ExtentSpec::new(Uuid::from_u128(tag), len, source)
        }
    }

    fn table() -> ExtentTable {
        ExtentTable::new(1 << 32, 64 * MB2, 100, 20_000)
    }

    fn close(t: &mut ExtentTable) {
        while t.peek_event().is_some() {
            t.commit_event();
        }
    }

    #[test]
    fn window_alloc_take_free_merge() {
        let mut w = Window::new(0, 8 * MB2);
        assert_eq!(w.alloc(2 * MB2), Some(0));
        assert!(w.take(4 * MB2, MB2));
        assert!(!w.take(4 * MB2, MB2));
        assert_eq!(w.alloc(2 * MB2), Some(2 * MB2));
        assert_eq!(w.alloc(2 * MB2), Some(5 * MB2));
        w.free(0, 2 * MB2);
        w.free(2 * MB2, 2 * MB2);
        w.free(4 * MB2, MB2);
        w.free(5 * MB2, 2 * MB2);
        assert_eq!(w.free_bytes(), 8 * MB2);
        assert_eq!(w.free.len(), 1);
    }

    #[test]
    fn offer_assigns_ids_and_addresses_in_order() {
        let mut t = table();
        let r = t
            .offer(&[spec(1, 1, 0, MB2), spec(1, 1, MB2, 2 * MB2)], 0)
            .unwrap();
        assert_eq!(r.chain_id, 1);
        assert_eq!(r.extents, vec![(1, 1 << 32), (2, (1 << 32) + MB2)]);
        let evs: Vec<_> = t.outbox.iter().collect();
        assert!(matches!(evs[0], Event::Offer { more: true, .. }));
        assert!(matches!(evs[1], Event::Offer { more: false, .. }));
        t.check_invariants().unwrap();
    }

    #[test]
    fn offer_rejects_bad_specs_by_name() {
        let mut t = table();
        assert_eq!(t.offer(&[], 0), Err(ControlError::EmptyOffer));
        assert!(matches!(
            t.offer(&[spec(0, 1, 0, 4096)], 0),
            Err(ControlError::MisalignedLength { .. })
        ));
        assert!(matches!(
            t.offer(&[spec(0, 1, 4096, MB2)], 0),
            Err(ControlError::Misaligned {
                field: "backing offset",
                ..
            })
        ));
        assert!(matches!(
            t.offer(&[spec(0, 1, 0, 2 * MB2), spec(0, 1, MB2, MB2)], 0),
            Err(ControlError::Overlap {
                what: "backing range",
                ..
            })
        ));
        let mut s = spec(0, 1, 0, MB2);
        s.flags.sharable = true;
        assert_eq!(t.offer(&[s], 0), Err(ControlError::SharableUntagged(0)));
        let mut a = spec(5, 1, 0, MB2);
        a.flags.sharable = true;
        let mut b = spec(5, 1, MB2, MB2);
        b.flags.sharable = true;
        b.seq = 2;
        assert!(matches!(
            t.offer(&[a, b], 0),
            Err(ControlError::BadSequence { n: 2, .. })
        ));
        t.offer(&[spec(7, 1, 0, MB2)], 0).unwrap();
        assert_eq!(
            t.offer(&[spec(7, 2, 0, MB2)], 0),
            Err(ControlError::DuplicateTag(Uuid::from_u128(7)))
        );
        assert!(matches!(
            t.offer(&[spec(8, 1, 0, MB2)], 0),
            Err(ControlError::Overlap { other: 1, .. })
        ));
        assert!(matches!(
            t.offer(&[spec(9, 3, 0, 128 * MB2)], 0),
            Err(ControlError::WindowFull { .. })
        ));
        let mut f = spec(9, 3, 0, MB2);
        f.gpa = Some(1 << 32);
        assert!(matches!(
            t.offer(&[f], 0),
            Err(ControlError::Overlap {
                what: "guest range",
                other: 1,
                ..
            })
        ));
        f.gpa = Some(0);
        assert!(matches!(
            t.offer(&[f], 0),
            Err(ControlError::OutsideWindow { .. })
        ));
        // A failed offer leaves the table as it was.
        assert_eq!(t.extents.len(), 1);
        t.check_invariants().unwrap();
    }

    #[test]
    fn pending_limit() {
        let mut t = ExtentTable::new(0, 1024 * MB2, 3, 10);
        t.offer(&[spec(0, 1, 0, MB2), spec(0, 1, MB2, MB2)], 0).unwrap();
        assert!(matches!(
            t.offer(&[spec(0, 1, 2 * MB2, MB2), spec(0, 1, 3 * MB2, MB2)], 0),
            Err(ControlError::TooManyPending {
                pending: 2,
                offered: 2,
                max: 3
            })
        ));
    }

    #[test]
    fn accept_rules() {
        let mut t = table();
        let mut a = spec(5, 1, 0, MB2);
        a.flags.sharable = true;
        let mut b = spec(5, 1, MB2, MB2);
        b.flags.sharable = true;
        b.seq = 1;
        let r = t.offer(&[a, b, spec(0, 1, 2 * MB2, MB2)], 0).unwrap();
        assert_eq!(t.plan_accept(r.chain_id, &[1]), Err(reason::CHAIN_OPEN));
        close(&mut t);
        assert_eq!(t.plan_accept(99, &[1]), Err(reason::UNKNOWN_CHAIN));
        assert_eq!(t.plan_accept(1, &[42]), Err(reason::UNKNOWN_EXTENT));
        assert_eq!(t.plan_accept(1, &[3, 3]), Err(reason::DUPLICATE_ID));
        assert_eq!(t.plan_accept(1, &[1, 3]), Err(reason::PARTIAL_GROUP));
        let plan = t.plan_accept(1, &[2, 1]).unwrap();
        assert_eq!(plan.rejected, vec![3]);
        t.commit_accept(&plan);
        assert_eq!(t.accepted_count(), 2);
        assert!(!t.extents.contains_key(&3));
        assert_eq!(t.plan_accept(1, &[1, 2]), Err(reason::UNKNOWN_CHAIN));
        t.check_invariants().unwrap();
    }

    #[test]
    fn expiry_drops_chain_and_undelivered_offers() {
        let mut t = table();
        t.offer(&[spec(0, 1, 0, MB2), spec(0, 1, MB2, MB2)], 100).unwrap();
        t.commit_event();
        assert!(t.expired(20_099).is_empty());
        assert_eq!(t.expired(20_100), vec![1]);
        assert_eq!(t.drop_chain(1, true), vec![1, 2]);
        assert_eq!(t.outbox.len(), 1);
        assert!(matches!(
            t.peek_event(),
            Some(Event::ChainAbandoned { chain_id: 1 })
        ));
        assert!(t.extents.is_empty());
        assert_eq!(t.window.free_bytes(), 64 * MB2);
    }

    #[test]
    fn release_and_defer() {
        let mut t = table();
        t.offer(&[spec(5, 1, 0, MB2), spec(5, 1, MB2, MB2)], 0).unwrap();
        close(&mut t);
        let p = t.plan_accept(1, &[1, 2]).unwrap();
        t.commit_accept(&p);
        let tag = *Uuid::from_u128(5).as_bytes();
        assert_eq!(t.plan_release(1, &[0; 16]), Err(reason::TAG_MISMATCH));
        assert_eq!(t.defer_release(2, &tag), Err(reason::WRONG_STATE));
        assert_eq!(
            t.request_release(Target::Tag(Uuid::from_u128(5))).unwrap(),
            vec![1, 2]
        );
        assert_eq!(t.defer_release(2, &tag).unwrap(), vec![1, 2]);
        assert_eq!(t.extents[&1].state, ExtentState::ReleaseDeferred);
        let g = t.plan_release(2, &tag).unwrap();
        assert_eq!(t.commit_release(&g).len(), 2);
        assert!(t.extents.is_empty());
        assert_eq!(t.plan_release(1, &tag), Err(reason::UNKNOWN_EXTENT));
    }

    #[test]
    fn metadata_and_poison_need_accepted_extents() {
        let mut t = table();
        t.offer(&[spec(0, 1, 0, MB2)], 0).unwrap();
        assert!(matches!(
            t.update_metadata(Target::Extent(1), Perf::default()),
            Err(ControlError::WrongState { .. })
        ));
        close(&mut t);
        let p = t.plan_accept(1, &[1]).unwrap();
        t.commit_accept(&p);
        let perf = Perf {
            read_latency_ns: 300,
            ..Default::default()
        };
        t.update_metadata(Target::Extent(1), perf).unwrap();
        assert!(
            matches!(t.peek_event(), Some(Event::Metadata { record }) if record.read_latency_ns.get() == 300)
        );
        assert!(matches!(
            t.poison(1, MB2, 1),
            Err(ControlError::PoisonOutOfRange { .. })
        ));
        assert!(matches!(
            t.poison(1, 0, 0),
            Err(ControlError::PoisonOutOfRange { .. })
        ));
        t.poison(1, 4096, 4096).unwrap();
        assert_eq!(t.info(1).unwrap().poison, vec![(4096, 4096)]);
        assert!(matches!(
            t.update_metadata(Target::Tag(Uuid::from_u128(3)), perf),
            Err(ControlError::NotFound(_))
        ));
    }
}

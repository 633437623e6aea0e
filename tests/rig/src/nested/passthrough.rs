//! The L1 VMM's part of the nested pass-through (see [`crate::nested`]).

use super::capacity::{capacity_of, driver_groups};
use super::types::{
    CascadeStep, Forwarded, NestedError, NestedOffer, PassedExtent, Placement, ViewError,
    DEFAULT_L2_SOURCE_BASE,
};
use crate::guest::TestGuestVm;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;
use tagmem_device::{ExtentFlags, ExtentSpec, HostEvent, Perf, SourceClass, SourceId, SourceRef, Target};
use tagmem_lookup::{lookup, DaxDevice, DriverDevice};
use tagmem_vmm::{Backing, BackingLifetime};
use uuid::Uuid;

/// What L1's driver had reported for one passed extent when L2 last heard of it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    /// L2 extent id.
    l2_id: u64,
    /// Performance as last passed on.
    perf: Perf,
    /// Poisoned ranges passed on so far.
    poison: usize,
}

/// A tag L2 holds.
#[derive(Clone, Debug)]
struct Held {
    /// L2 extent ids L2 accepted.
    l2_extents: Vec<u64>,
    /// Per accepted L1 extent id: what L2 has been told.
    seen: BTreeMap<u64, Seen>,
    /// L2 backings registered for it.
    sources: Vec<SourceId>,
    /// Release requested from L2, not completed yet.
    releasing: bool,
    /// L2 extent ids L2 has released so far.
    released: BTreeSet<u64>,
}

/// The L1 VMM's nested pass-through: see the module documentation.
pub struct NestedPassthrough<'a> {
    l1: &'a TestGuestVm,
    l2: &'a TestGuestVm,
    placement: Placement,
    next_source: u64,
    held: BTreeMap<Uuid, Held>,
    /// L2 host events taken but not consumed yet.
    l2_events: Vec<HostEvent>,
}

impl<'a> NestedPassthrough<'a> {
    /// The pass-through from VM `l1` (whose guest receives capacity from L0) to VM `l2`, placing
    /// extents with [`Placement::PreserveAddresses`] and registering L2 backings from
    /// [`DEFAULT_L2_SOURCE_BASE`] on.
    pub fn new(l1: &'a TestGuestVm, l2: &'a TestGuestVm) -> Self {
        NestedPassthrough {
            l1,
            l2,
            placement: Placement::default(),
            next_source: DEFAULT_L2_SOURCE_BASE,
            held: BTreeMap::new(),
            l2_events: Vec::new(),
        }
    }

    /// Sets where L2 extents go.
    pub fn with_placement(mut self, placement: Placement) -> Self {
        self.placement = placement;
        self
    }

    /// Registers L2 backings from `SourceId(base)` on.
    pub fn with_source_base(mut self, base: u64) -> Self {
        self.next_source = base;
        self
    }

    /// The tags L2 holds through this component.
    pub fn passed_tags(&self) -> Vec<Uuid> {
        self.held.keys().copied().collect()
    }

    /// Resolves `tag` in the L1 guest's view; returns its dax device and the driver's records in
    /// device order.
    fn resolve_l1(&self, tag: Uuid) -> Result<(DaxDevice, DriverDevice, bool), NestedError> {
        let view_err = |source: ViewError| NestedError::View {
            tag,
            level: "L1",
            source,
        };
        let details = self.l1.guest_extents().map_err(|e| view_err(e.into()))?;
        let (records, _) = driver_groups(&details);
        let capacity = capacity_of(&details).map_err(view_err)?;
        let mut found = lookup(&capacity, &tag).map_err(|e| view_err(e.into()))?;
        let dev = match (found.devices.len(), found.unclaimed.first()) {
            (0, Some(u)) => {
                return Err(NestedError::Unclaimed {
                    tag,
                    region: u.region.clone(),
                    claim: u.claim_command(),
                })
            }
            (0, None) => return Err(NestedError::TagNotPresent(tag)),
            (1, _) => found.devices.remove(0),
            (count, _) => return Err(NestedError::TagAmbiguous { tag, count }),
        };
        let record = records
            .into_iter()
            .find(|r| r.name == dev.chardev)
            .ok_or(NestedError::TagNotPresent(tag))?;
        let release_requested = details.iter().any(|e| e.uuid == tag && e.release_requested);
        Ok((dev, record, release_requested))
    }

    fn l1_set_busy(&self, tag: Uuid, busy: bool) -> Result<(), NestedError> {
        match self.l1.guest_set_busy(Target::Tag(tag), busy) {
            Ok(true) => Ok(()),
            Ok(false) => Err(NestedError::BusyRefused(tag)),
            Err(source) => Err(NestedError::Guest {
                tag,
                level: "L1",
                source,
            }),
        }
    }

    /// Offers L2 the capacity the L1 guest accepted with `tag` (T-NEST-1/2); returns what L2 got.
    ///
    /// A tag the L1 guest does not hold is [`NestedError::TagNotPresent`], with nothing offered
    /// and nothing changed in either VM. On any later failure the busy mark and the L2 backings
    /// are undone.
    pub fn offer_tag(&mut self, tag: Uuid) -> Result<NestedOffer, NestedError> {
        if self.held.contains_key(&tag) {
            return Err(NestedError::AlreadyPassed(tag));
        }
        // Look first, so an absent tag leaves no busy mark behind.
        let (_, _, requested) = self.resolve_l1(tag)?;
        if requested {
            return Err(NestedError::ReleaseRequested(tag));
        }
        self.l1_set_busy(tag, true)?;
        let mut sources = Vec::new();
        let result = self.offer_busy(tag, &mut sources);
        if result.is_err() {
            for id in sources {
                // Registered but never offered: not closed by the runtime on its own.
                let _ = self.l2.unregister_backing(id);
            }
            let _ = self.l1_set_busy(tag, false);
        }
        result
    }

    /// [`NestedPassthrough::offer_tag`] once the group is busy in L1; records the L2 backings it
    /// registers in `sources` until they are offered.
    fn offer_busy(&mut self, tag: Uuid, sources: &mut Vec<SourceId>) -> Result<NestedOffer, NestedError> {
        // Look again with the busy mark set: a release request that came in between found the
        // group idle and took it, or is pending now.
        let (dev, record, requested) = self.resolve_l1(tag)?;
        if requested {
            return Err(NestedError::ReleaseRequested(tag));
        }
        let ordered = record.ordered_extents();
        let window = self.l2.config().device.tagged;
        let l0_mapper = self.l1.mapper();
        let mut l2_source_of: BTreeMap<SourceId, SourceId> = BTreeMap::new();
        let mut chain = Vec::with_capacity(ordered.len());
        for (mapping, e) in dev.mappings.iter().zip(&ordered) {
            // The lookup's mapping i is the record's extent i (T-LOOKUP-3).
            debug_assert_eq!((mapping.start, mapping.size), (e.start, e.length));
            let unbacked = || NestedError::Unbacked {
                tag,
                extent: e.id,
                gpa: e.start,
                len: e.length,
            };
            let end = e.start.checked_add(e.length).ok_or_else(unbacked)?;
            let slot = l0_mapper
                .lock()
                .slots()
                .into_iter()
                .find(|s| s.gpa <= e.start && s.gpa.checked_add(s.len).is_some_and(|s_end| end <= s_end))
                .ok_or_else(unbacked)?;
            let l0_offset = slot.offset + (e.start - slot.gpa);
            let l2_source = match l2_source_of.get(&slot.source) {
                Some(id) => *id,
                None => {
                    let id = SourceId(self.next_source);
                    let backing = self.duplicate_l0_backing(tag, slot.source)?;
                    self.l2
                        .register_backing(id, backing, BackingLifetime::PerExtent)
                        .map_err(|e| NestedError::Backing {
                            tag,
                            l0_source: slot.source,
                            reason: e.to_string(),
                        })?;
                    self.next_source += 1;
                    sources.push(id);
                    l2_source_of.insert(slot.source, id);
                    id
                }
            };
            let fits = window.is_some_and(|w| {
                e.start >= w.addr && w.addr.checked_add(w.size).is_some_and(|w_end| end <= w_end)
            });
            let gpa = (self.placement == Placement::PreserveAddresses && fits).then_some(e.start);
            let perf = e.perf.map_or(Perf::default(), |p| Perf {
                read_latency_ns: p.read_latency_ns,
                write_latency_ns: p.write_latency_ns,
                read_bandwidth_mbps: p.read_bandwidth_mbps,
                write_bandwidth_mbps: p.write_bandwidth_mbps,
            });
            chain.push(ExtentSpec {
                tag,
                length: e.length,
                source: SourceRef {
                    id: l2_source,
                    offset: l0_offset,
                },
                gpa,
                flags: ExtentFlags::from_bits(e.flags),
                perf,
                node: e.node,
                seq: e.seq,
                class: SourceClass::decode(e.source),
            });
        }
        let receipt = self
            .l2
            .offer(&chain)
            .map_err(|source| NestedError::Control { tag, source })?;
        // Offered: the runtime closes per-extent backings once no extent uses them.
        sources.clear();
        let chain_id = receipt.chain_id;
        let answer = self.wait_l2(tag, "answer the offer", |ev| match ev {
            HostEvent::ChainAnswered { chain_id: c, .. } | HostEvent::ChainDropped { chain_id: c, .. } => {
                *c == chain_id
            }
            _ => false,
        })?;
        let accepted = match answer {
            HostEvent::ChainAnswered {
                accepted, rejected, ..
            } if accepted.is_empty() => {
                return Err(NestedError::L2Refused {
                    tag,
                    chain_id,
                    reason: format!("rejected extents {rejected:?}"),
                })
            }
            HostEvent::ChainAnswered { accepted, .. } => accepted,
            HostEvent::ChainDropped { reason, .. } => {
                return Err(NestedError::L2Refused {
                    tag,
                    chain_id,
                    reason,
                })
            }
            _ => Vec::new(),
        };
        let extents = ordered
            .iter()
            .zip(&receipt.extents)
            .map(|(e, &(l2_id, l2_gpa))| PassedExtent {
                l1_id: e.id,
                l1_gpa: e.start,
                l2_id,
                l2_gpa,
                len: e.length,
                accepted: accepted.contains(&l2_id),
            })
            .collect();
        let seen = ordered
            .iter()
            .zip(&chain)
            .zip(&receipt.extents)
            .filter(|(_, &(l2_id, _))| accepted.contains(&l2_id))
            .map(|((e, spec), &(l2_id, _))| {
                (
                    e.id,
                    Seen {
                        l2_id,
                        perf: spec.perf,
                        poison: e.poison.len(),
                    },
                )
            })
            .collect();
        self.held.insert(
            tag,
            Held {
                seen,
                l2_extents: accepted,
                sources: l2_source_of.into_values().collect(),
                releasing: false,
                released: BTreeSet::new(),
            },
        );
        Ok(NestedOffer {
            tag,
            chain_id,
            extents,
        })
    }

    /// A second descriptor for L0's backing `id` (same open file, same pages), for L2's mapper.
    fn duplicate_l0_backing(&self, tag: Uuid, id: SourceId) -> Result<Backing, NestedError> {
        let mapper = self.l1.mapper();
        let mapper = mapper.lock();
        let fail = |reason: String| NestedError::Backing {
            tag,
            l0_source: id,
            reason,
        };
        let b = mapper
            .backing(id)
            .ok_or_else(|| fail("not registered with L0's mapper".to_owned()))?;
        let file = b
            .file_handle()
            .try_clone()
            .map_err(|e| fail(format!("duplicating its descriptor: {e}")))?;
        Ok(Backing::from_file(file, b.size(), b.kind(), b.writable()))
    }

    /// Waits for the first L2 host event `pick` selects, keeping the others for later.
    fn wait_l2(
        &mut self,
        tag: Uuid,
        what: &'static str,
        mut pick: impl FnMut(&HostEvent) -> bool,
    ) -> Result<HostEvent, NestedError> {
        let timeout = self.l2.command_timeout();
        let deadline = Instant::now() + timeout;
        loop {
            self.l2_events.extend(self.l2.take_host_events());
            if let Some(i) = self.l2_events.iter().position(&mut pick) {
                return Ok(self.l2_events.remove(i));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(NestedError::L2Timeout { tag, what, timeout });
            }
            let more = self.l2.wait_host_events(deadline - now);
            self.l2_events.extend(more);
        }
    }

    /// Passes METADATA and POISON that L1's driver received for capacity L2 holds on to L2
    /// (T-NEST-4): new performance values become an `update_metadata` of the L2 extent, each new
    /// poisoned range an `inject_poison` at the same offset (extents map one to one). Returns what
    /// was forwarded, in order.
    pub fn forward_updates(&mut self) -> Result<Vec<Forwarded>, NestedError> {
        let Some(first) = self.held.keys().next().copied() else {
            return Ok(Vec::new());
        };
        let l1_err = |source| NestedError::Guest {
            tag: first,
            level: "L1",
            source,
        };
        self.l1.guest_poll().map_err(l1_err)?;
        let details = self.l1.guest_extents().map_err(l1_err)?;
        let l2 = self.l2;
        let mut out = Vec::new();
        for (tag, held) in &mut self.held {
            let tag = *tag;
            // Metadata applies to a whole group (as L0 sends it); one update per group and pass.
            let mut updated: BTreeSet<u64> = BTreeSet::new();
            for (l1_id, seen) in &mut held.seen {
                let Some(d) = details.iter().find(|e| e.id == *l1_id) else {
                    continue;
                };
                let perf = Perf {
                    read_latency_ns: d.read_latency_ns,
                    write_latency_ns: d.write_latency_ns,
                    read_bandwidth_mbps: d.read_bandwidth_mbps,
                    write_bandwidth_mbps: d.write_bandwidth_mbps,
                };
                if perf != seen.perf && !updated.contains(&seen.l2_id) {
                    let ids = l2
                        .update_metadata(Target::Extent(seen.l2_id), perf)
                        .map_err(|source| NestedError::Control { tag, source })?;
                    updated.extend(ids);
                    out.push(Forwarded::Metadata {
                        tag,
                        l2_extent: seen.l2_id,
                        perf,
                    });
                }
                seen.perf = perf;
                for &(offset, length) in d.poison.iter().skip(seen.poison) {
                    l2.inject_poison(seen.l2_id, offset, length)
                        .map_err(|source| NestedError::Control { tag, source })?;
                    seen.poison += 1;
                    out.push(Forwarded::Poison {
                        tag,
                        l2_extent: seen.l2_id,
                        offset,
                        length,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Handles release requests L0 sent the L1 guest for tags L2 holds (T-NEST-3), reporting each
    /// step to `observe` as it happens; returns the tags released to L0.
    ///
    /// For each such tag: request release from L2, wait until L2 released it (its `Released`
    /// event: L1's device has unmapped it from L2), check L2 maps none of it, then have the L1
    /// guest's driver release the group to L0. If L2's driver defers (the group is busy in L2),
    /// the tag stays busy in L1 and a later call finishes the cascade once L2 let go.
    pub fn cascade_releases(
        &mut self,
        mut observe: impl FnMut(&CascadeStep),
    ) -> Result<Vec<Uuid>, NestedError> {
        let Some(first) = self.held.keys().next().copied() else {
            return Ok(Vec::new());
        };
        let l1_err = |tag: Uuid| {
            move |source| NestedError::Guest {
                tag,
                level: "L1",
                source,
            }
        };
        // Let the L1 guest's driver take what L0 sent (it answers RELEASE_BUSY for busy groups).
        self.l1.guest_poll().map_err(l1_err(first))?;
        let details = self.l1.guest_extents().map_err(l1_err(first))?;
        let requested: Vec<Uuid> = self
            .held
            .iter()
            .filter(|(tag, h)| h.releasing || details.iter().any(|e| e.uuid == **tag && e.release_requested))
            .map(|(tag, _)| *tag)
            .collect();
        let mut done = Vec::new();
        for tag in requested {
            if self.cascade_one(tag, &mut observe)? {
                done.push(tag);
            }
        }
        Ok(done)
    }

    /// Releases `tag` from L2 and then to L0; false if L2 deferred.
    fn cascade_one(
        &mut self,
        tag: Uuid,
        observe: &mut impl FnMut(&CascadeStep),
    ) -> Result<bool, NestedError> {
        let held = self.held.get(&tag).cloned().ok_or(NestedError::NotPassed(tag))?;
        let ids = held.l2_extents.clone();
        let mine = |extents: &[(u64, SourceRef)]| extents.iter().any(|(id, _)| ids.contains(id));
        let mut released = held.released.clone();
        if held.releasing {
            // Asked before and L2 deferred: go on only once L2 has let go.
            self.l2_events.extend(self.l2.take_host_events());
            self.l2_events.retain(|ev| match ev {
                HostEvent::Released { extents } if mine(extents) => {
                    released.extend(extents.iter().map(|(id, _)| *id));
                    false
                }
                _ => true,
            });
        } else {
            observe(&CascadeStep::RequestSeen { tag });
            let requested = self
                .l2
                .request_release(Target::Tag(tag))
                .map_err(|source| NestedError::Control { tag, source })?;
            observe(&CascadeStep::L2ReleaseRequested {
                tag,
                extents: requested,
            });
            if let Some(h) = self.held.get_mut(&tag) {
                h.releasing = true;
            }
            while !ids.iter().all(|id| released.contains(id)) {
                let ev = self.wait_l2(tag, "release", |ev| match ev {
                    HostEvent::Released { extents } => mine(extents),
                    HostEvent::ReleaseDeferred { extents } => extents.iter().any(|id| ids.contains(id)),
                    _ => false,
                })?;
                match ev {
                    HostEvent::Released { extents } => released.extend(extents.iter().map(|(id, _)| *id)),
                    _ => {
                        observe(&CascadeStep::L2Deferred { tag });
                        break;
                    }
                }
            }
        }
        if !ids.iter().all(|id| released.contains(id)) {
            if let Some(h) = self.held.get_mut(&tag) {
                h.released = released;
            }
            return Ok(false);
        }
        // L2's device unmaps before it reports `Released`; check nothing of the group is left.
        let still_held = self.l2.extents().iter().any(|e| ids.contains(&e.id));
        let mapped = self.l2.slots().iter().any(|s| held.sources.contains(&s.source));
        if still_held || mapped {
            return Err(NestedError::StillMapped { tag, extents: ids });
        }
        observe(&CascadeStep::L2Released {
            tag,
            extents: ids.clone(),
        });
        let count = self
            .l1
            .guest_release(Target::Tag(tag))
            .map_err(|source| NestedError::Guest {
                tag,
                level: "L1",
                source,
            })?;
        self.held.remove(&tag);
        observe(&CascadeStep::L1Released { tag, count });
        Ok(true)
    }
}

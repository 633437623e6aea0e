//! What a device reset forgets, what the next activation with tagged extents queues again
//! (SPEC.md [T-RESET-1]), and the LIST query a driver re-learns accepted extents with
//! ([T-LIST-1]).

use super::{record_of, ExtentTable};
use crate::control::ExtentState;
use std::collections::BTreeSet;
use tagmem_wire::{Event, ExtentRecord};

impl ExtentTable {
    /// At a device reset: forgets the undelivered events; pending chains count as open again
    /// until [`ExtentTable::replay`] delivers their offers anew.
    pub fn forget_events(&mut self) {
        self.outbox.clear();
        for c in self.chains.values_mut() {
            c.closed = false;
        }
    }

    /// After a reset, when the driver activates the device with tagged extents ([T-RESET-1]):
    /// queues the OFFER events of every pending chain again (same ids, deadline restarted), then
    /// one RELEASE_REQUEST per group whose release is requested or deferred (requested again),
    /// then one POISON event per recorded poison range. What the driver holds accepted it learns
    /// with LIST.
    pub fn replay(&mut self, now_ms: u64) {
        self.outbox.clear();
        let deadline = now_ms.saturating_add(self.timeout_ms);
        for (&chain_id, chain) in self.chains.iter_mut() {
            chain.closed = false;
            chain.deadline_ms = deadline;
            for (i, id) in chain.ids.iter().enumerate() {
                if let Some(e) = self.extents.get(id) {
                    self.outbox.push_back(Event::Offer {
                        chain_id,
                        more: i + 1 < chain.ids.len(),
                        record: record_of(*id, e),
                    });
                }
            }
        }
        let mut asked: Vec<u64> = self
            .extents
            .iter()
            .filter(|(_, e)| {
                matches!(
                    e.state,
                    ExtentState::ReleaseRequested | ExtentState::ReleaseDeferred
                )
            })
            .map(|(id, _)| *id)
            .collect();
        asked.sort_unstable();
        let mut announced: BTreeSet<u64> = BTreeSet::new();
        for id in asked {
            let group = self.group_of(id);
            let Some(&lead) = group.first() else { continue };
            if !announced.insert(lead) {
                continue;
            }
            for g in &group {
                if let Some(e) = self.extents.get_mut(g) {
                    e.state = ExtentState::ReleaseRequested;
                }
            }
            self.outbox.push_back(Event::ReleaseRequest {
                record: record_of(lead, &self.extents[&lead]),
            });
        }
        let mut poisoned: Vec<u64> = self.poison.keys().copied().collect();
        poisoned.sort_unstable();
        for id in poisoned {
            let Some(e) = self.extents.get(&id) else { continue };
            let record = record_of(id, e);
            for &(offset, length) in &self.poison[&id] {
                self.outbox.push_back(Event::Poison {
                    record,
                    offset,
                    length,
                });
            }
        }
    }

    /// Records of accepted extents (any state after the ACCEPT) with an id of at least `first`,
    /// ascending, at most `count` ([T-LIST-1]).
    pub fn list(&self, first: u64, count: usize) -> Vec<ExtentRecord> {
        let mut ids: Vec<u64> = self
            .extents
            .iter()
            .filter(|(id, e)| **id >= first && e.state != ExtentState::Pending)
            .map(|(id, _)| *id)
            .collect();
        if ids.len() > count {
            // The `count` smallest ids, without sorting them all: O(extents) per page.
            ids.select_nth_unstable(count);
            ids.truncate(count);
        }
        ids.sort_unstable();
        ids.iter().map(|id| record_of(*id, &self.extents[id])).collect()
    }
}

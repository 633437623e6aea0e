//! The slot side of the mapper: the worst-case slot reservation, slot numbers (reused, freed,
//! fresh), and replacing runs by others as one transaction that rolls back on a KVM failure.

use super::*;

/// Slots a run of `units` units may come to need when whole units are unmapped from it.
pub(super) fn worst_case_slots(units: usize) -> usize {
    units.div_ceil(2)
}

impl KvmMemslotMapper {
    /// One counted `KVM_SET_USER_MEMORY_REGION`; `len` is the size of the slot created or
    /// deleted.
    ///
    /// # Safety
    /// As [`SlotRegistrar::set_region`].
    pub(super) unsafe fn set_region(
        &mut self,
        r: kvm_userspace_memory_region,
        len: u64,
    ) -> Result<(), kvm_ioctls::Error> {
        // SAFETY: the caller's contract is the registrar's.
        let res = unsafe { self.registrar.set_region(r) };
        self.stats.region_call(r.memory_size > 0, len, res.is_ok());
        res
    }

    /// Replaces the runs keyed `old` by runs `new` with their units (which cover no other run's
    /// range).
    ///
    /// Order: the slot reservation is checked (nothing changes if it fails), then the old slots
    /// are deleted and the new ones created back to back. A KVM failure rolls back to the old
    /// slots. No host mapping changes: every slot points into its backing's mapping.
    pub(super) fn replace(&mut self, old: &[u64], new: &[(RunSpec, Vec<u64>)]) -> Result<(), MemslotError> {
        let freed: usize = old
            .iter()
            .map(|k| worst_case_slots(self.runs[k].units.len()))
            .sum();
        let taken: usize = new.iter().map(|(_, u)| worst_case_slots(u.len())).sum();
        let needed = self.reserved_slots - freed + taken;
        if needed > self.slot_limit() {
            return Err(MemslotError::SlotLimit {
                needed,
                limit: self.slot_limit(),
            });
        }
        let hosts = new
            .iter()
            .map(|(spec, _)| self.host_of(spec))
            .collect::<Result<Vec<u64>, _>>()?;
        // Slot numbers: the replaced runs' first, then the top of the free list, then fresh
        // ones. The limit check above guarantees fresh numbers stay inside `slot_ids`.
        let reused: Vec<u32> = old.iter().map(|k| self.runs[k].slot).collect();
        let wanted = new.len().saturating_sub(reused.len());
        let from_free = wanted.min(self.free_slots.len());
        let limit = MemslotError::SlotLimit {
            needed,
            limit: self.slot_limit(),
        };
        let fresh = u32::try_from(wanted - from_free).map_err(|_| limit)?;
        let free_top = &self.free_slots[self.free_slots.len() - from_free..];
        let fresh_ids = (0..fresh).map(|i| self.next_slot + i);
        let new_ids: Vec<u32> = reused
            .iter()
            .copied()
            .chain(free_top.iter().rev().copied())
            .chain(fresh_ids)
            .take(new.len())
            .collect();

        let old_regions: Vec<(kvm_userspace_memory_region, u64)> = old
            .iter()
            .map(|k| {
                let r = &self.runs[k];
                (region(&r.spec, r.slot, r.host), r.spec.len)
            })
            .collect();
        for (i, (r, len)) in old_regions.iter().enumerate() {
            // SAFETY: a deletion (memory_size 0) makes KVM drop its reference; no host memory is
            // handed to KVM.
            if let Err(source) = unsafe { self.set_region(delete_region(r.slot), *len) } {
                let rollback = self.restore(&old_regions[..i]);
                return Err(MemslotError::Kvm {
                    slot: r.slot,
                    gpa: r.guest_phys_addr,
                    len: 0,
                    rollback,
                    source,
                });
            }
        }
        for (i, (((spec, _), &host), &slot)) in new.iter().zip(&hosts).zip(&new_ids).enumerate() {
            let reg = region(spec, slot, host);
            // SAFETY: `host` points at `spec.offset` inside the whole-backing mapping, and
            // `validate` checked `spec.offset + spec.len` against the backing's size; the
            // mapping lives until the backing is unregistered, which cannot happen while a run
            // uses it. The guest range overlaps no live slot: the replaced slots were deleted
            // above and `new` covers no other run's range.
            if let Err(source) = unsafe { self.set_region(reg, spec.len) } {
                let mut rollback = String::new();
                for (s, (done, _)) in new_ids[..i].iter().zip(new) {
                    // SAFETY: deletion only; see above.
                    if let Err(e) = unsafe { self.set_region(delete_region(*s), done.len) } {
                        rollback.push_str(&format!("; deleting new slot {s} failed: {e}"));
                    }
                }
                rollback.push_str(&self.restore(&old_regions));
                return Err(MemslotError::Kvm {
                    slot,
                    gpa: spec.gpa,
                    len: spec.len,
                    rollback,
                    source,
                });
            }
        }

        // Commit.
        for k in old {
            if let Some(r) = self.runs.remove(k) {
                if let Some(b) = self.backings.get_mut(&r.spec.source) {
                    b.runs -= 1;
                }
            }
        }
        self.free_slots.truncate(self.free_slots.len() - from_free);
        self.next_slot += fresh;
        self.free_slots.extend(reused.iter().skip(new.len()));
        for (((spec, units), host), slot) in new.iter().zip(hosts).zip(new_ids) {
            if let Some(b) = self.backings.get_mut(&spec.source) {
                b.runs += 1;
            }
            self.runs.insert(
                spec.gpa,
                Run {
                    slot,
                    spec: *spec,
                    units: units.clone(),
                    host,
                },
            );
        }
        self.reserved_slots = needed;
        Ok(())
    }

    /// Re-creates deleted slots after a failed replacement; returns a description of failures.
    /// A slot that cannot be restored is forgotten so the bookkeeping matches KVM.
    pub(super) fn restore(&mut self, regions: &[(kvm_userspace_memory_region, u64)]) -> String {
        let mut failures = String::new();
        for (r, len) in regions {
            // SAFETY: `r` was built from a live Run, which still points into its backing's host
            // mapping (the replacement did not commit), so the memory stays mapped.
            if let Err(e) = unsafe { self.set_region(*r, *len) } {
                failures.push_str(&format!("; restoring slot {} failed ({e}): range lost", r.slot));
                if let Some(lost) = self.runs.remove(&r.guest_phys_addr) {
                    self.reserved_slots -= worst_case_slots(lost.units.len());
                    if let Some(b) = self.backings.get_mut(&lost.spec.source) {
                        b.runs -= 1;
                    }
                }
                self.free_slots.push(r.slot);
            }
        }
        failures
    }
}

fn region(spec: &RunSpec, slot: u32, host: u64) -> kvm_userspace_memory_region {
    kvm_userspace_memory_region {
        slot,
        flags: if spec.readonly { KVM_MEM_READONLY } else { 0 },
        guest_phys_addr: spec.gpa,
        memory_size: spec.len,
        userspace_addr: host,
    }
}

fn delete_region(slot: u32) -> kvm_userspace_memory_region {
    kvm_userspace_memory_region {
        slot,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: 0,
        userspace_addr: 0,
    }
}

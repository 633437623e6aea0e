//! [`KvmMemslotMapper`]: the device's [`MemoryMapper`] over KVM user memory regions.
//!
//! Mapped guest ranges are kept as *runs*: maximal stretches that are contiguous in guest-physical
//! space, come from one backing at contiguous offsets and share the read-only flag. Each run is one
//! KVM memslot over its own host `mmap` of exactly its backing range (`MAP_SHARED`, so every
//! mapping of a backing sees the same pages). Mapping next to a compatible run merges with it;
//! unmapping part of a run splits it. KVM cannot resize a slot, so both replace slots: the new host
//! mappings are made first, then the old slots are deleted and the new ones created back to back,
//! and only then are the old host mappings released. A vCPU that touches a moved range in that
//! instant exits to the VMM, which serves the access from the host mapping under the mapper's lock
//! (see [`KvmMemslotMapper::host_access`]), so the guest never sees the gap.
//!
//! Unmapping what one `map` mapped (an extent) must never fail for lack of slots, or capacity
//! the device wants gone would stay reachable. Each run remembers the *units* it was merged from
//! (the ranges of the `map` calls, as later unmaps trimmed them); removing whole units from a run
//! of `u` units leaves at most `ceil(u / 2)` runs. The mapper counts every run at that worst case
//! and refuses a `map` that would take the count past the slot limit, so an unmap of whole units
//! always finds its slots. Only an unmap that cuts a unit in two (a base-region UNPLUG of part of
//! a PLUG) can still be refused, and the device answers it BUSY.

use crate::backing::{Backing, PAGE_SIZE};
use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_READONLY};
use std::collections::BTreeMap;
use std::io;
use std::ops::Range;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, MutexGuard};
use tagmem_device::{MapperError, Mapping, MemoryMapper, SourceId};

/// Errors of the memslot mapper.
#[derive(Debug, thiserror::Error)]
pub enum MemslotError {
    /// Zero length, or the range wraps around the address space.
    #[error("empty or wrapping range {gpa:#x}+{len:#x}")]
    BadRange {
        /// Guest-physical start.
        gpa: u64,
        /// Length.
        len: u64,
    },
    /// Address, length or offset not aligned to what the backing needs.
    #[error("range {gpa:#x}+{len:#x} at offset {offset:#x} is not aligned to {align:#x}")]
    Unaligned {
        /// Guest-physical start.
        gpa: u64,
        /// Length.
        len: u64,
        /// Backing offset.
        offset: u64,
        /// Required alignment.
        align: u64,
    },
    /// The backing is not registered.
    #[error("backing {0:?} is not registered")]
    UnknownBacking(SourceId),
    /// A backing with this id is registered already.
    #[error("backing {0:?} is registered already")]
    DuplicateBacking(SourceId),
    /// The backing is still mapped and cannot be unregistered.
    #[error("backing {0:?} is still mapped")]
    BackingInUse(SourceId),
    /// The range runs past the end of the backing.
    #[error("offset {offset:#x}+{len:#x} runs past the end of backing {id:?} ({size:#x} bytes)")]
    PastBackingEnd {
        /// The backing.
        id: SourceId,
        /// Backing offset.
        offset: u64,
        /// Length.
        len: u64,
        /// Backing size.
        size: u64,
    },
    /// A writable mapping of a backing opened read-only.
    #[error("backing {0:?} was opened read-only; it can only be mapped read-only")]
    BackingReadOnly(SourceId),
    /// The range overlaps memory the mapper does not manage (boot RAM, device windows).
    #[error("range {gpa:#x}+{len:#x} overlaps reserved guest memory {reserved:#x?}")]
    Reserved {
        /// Guest-physical start.
        gpa: u64,
        /// Length.
        len: u64,
        /// The reserved range hit.
        reserved: Range<u64>,
    },
    /// The range overlaps an existing mapping.
    #[error("range {gpa:#x}+{len:#x} overlaps an existing mapping")]
    Overlap {
        /// Guest-physical start.
        gpa: u64,
        /// Length.
        len: u64,
    },
    /// `unmap` of a range that is not wholly mapped.
    #[error("range {gpa:#x}+{len:#x} is not wholly mapped")]
    NotMapped {
        /// Guest-physical start.
        gpa: u64,
        /// Length.
        len: u64,
    },
    /// The operation would need more memslots than KVM (or the configured cap) allows.
    #[error("memslot limit reached: needs {needed} slots, at most {limit} available to the mapper")]
    SlotLimit {
        /// Slots the mapper would reserve afterwards: what its runs need if later unmaps split
        /// them as far as whole units allow.
        needed: usize,
        /// Slots it may use.
        limit: usize,
    },
    /// The host `mmap` of the backing range failed.
    #[error("mmap of backing {id:?} offset {offset:#x}+{len:#x} failed")]
    Mmap {
        /// The backing.
        id: SourceId,
        /// Backing offset.
        offset: u64,
        /// Length.
        len: u64,
        /// OS error.
        #[source]
        source: io::Error,
    },
    /// A value does not fit the host's `usize`.
    #[error("{0:#x} does not fit in the host address space")]
    TooLarge(u64),
    /// KVM refused a memslot change.
    #[error("KVM_SET_USER_MEMORY_REGION slot {slot} ({gpa:#x}+{len:#x}) failed{rollback}")]
    Kvm {
        /// Slot number.
        slot: u32,
        /// Guest-physical start.
        gpa: u64,
        /// Length (0 for a deletion).
        len: u64,
        /// Outcome of undoing the partial change, when it also failed.
        rollback: String,
        /// KVM's error.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// Where the mapper's slot changes go: KVM in the VMM, a recorder in unit tests.
pub trait SlotRegistrar: Send {
    /// Creates (size > 0) or deletes (size 0) memslot `region.slot`.
    ///
    /// # Safety
    /// For a creation, `region.userspace_addr` must point to a host mapping of at least
    /// `region.memory_size` bytes that stays mapped until the slot is deleted.
    unsafe fn set_region(&self, region: kvm_userspace_memory_region) -> Result<(), kvm_ioctls::Error>;
}

/// A host `mmap` of a backing range; unmapped on drop.
#[derive(Debug)]
struct HostMapping {
    addr: NonNull<libc::c_void>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value alone; moving the owner to
// another thread does not create aliasing the owner did not already have.
unsafe impl Send for HostMapping {}

impl HostMapping {
    fn new(
        backing: &Backing,
        id: SourceId,
        offset: u64,
        len: u64,
        writable: bool,
    ) -> Result<Self, MemslotError> {
        let ulen = usize::try_from(len).map_err(|_| MemslotError::TooLarge(len))?;
        let off = libc::off_t::try_from(offset).map_err(|_| MemslotError::TooLarge(offset))?;
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh mapping (null hint, no MAP_FIXED) cannot replace existing memory; the fd
        // is open for the backing's lifetime (the mapper keeps it registered while mapped) and the
        // range was bounds- and alignment-checked against the backing by `validate`.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ulen,
                prot,
                libc::MAP_SHARED | libc::MAP_NORESERVE,
                backing.raw_fd(),
                off,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(MemslotError::Mmap {
                id,
                offset,
                len,
                source: io::Error::last_os_error(),
            });
        }
        let addr = NonNull::new(addr).ok_or(MemslotError::Mmap {
            id,
            offset,
            len,
            source: io::Error::other("mmap returned null"),
        })?;
        Ok(HostMapping { addr, len: ulen })
    }

    fn host_addr(&self) -> u64 {
        self.addr.as_ptr() as u64
    }
}

impl Drop for HostMapping {
    fn drop(&mut self) {
        // SAFETY: `addr`/`len` describe a mapping this value created and alone owns; KVM no longer
        // refers to it because a run's HostMapping is dropped only after its slot was deleted
        // (or was never created).
        let _ = unsafe { libc::munmap(self.addr.as_ptr(), self.len) };
    }
}

/// A run to be created: guest range, backing range and flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RunSpec {
    gpa: u64,
    len: u64,
    source: SourceId,
    offset: u64,
    readonly: bool,
}

impl RunSpec {
    fn end(&self) -> u64 {
        // Never overflows: every run was built from a range whose end `validate` checked.
        self.gpa + self.len
    }

    /// Whether `next` continues this run in guest and backing space with the same flags.
    fn continues_into(&self, next: &RunSpec) -> bool {
        self.end() == next.gpa
            && self.source == next.source
            && self.readonly == next.readonly
            && self.offset.checked_add(self.len) == Some(next.offset)
    }
}

/// A live run: one KVM memslot and the host mapping it points to.
#[derive(Debug)]
struct Run {
    slot: u32,
    spec: RunSpec,
    /// Lengths of the units (ranges of `map` calls) the run was merged from, in guest order;
    /// they sum to `spec.len`.
    units: Vec<u64>,
    host: HostMapping,
}

/// Slots a run of `units` units may come to need when whole units are unmapped from it.
fn worst_case_slots(units: usize) -> usize {
    units.div_ceil(2)
}

impl Run {
    /// Its units before guest address `at`, the last one cut at `at`.
    fn units_before(&self, at: u64) -> Vec<u64> {
        let mut out = Vec::new();
        let mut pos = self.spec.gpa;
        for &u in &self.units {
            if pos >= at {
                break;
            }
            out.push(u.min(at - pos));
            pos += u;
        }
        out
    }

    /// Its units after guest address `at`, the first one cut at `at`.
    fn units_after(&self, at: u64) -> Vec<u64> {
        let mut out = Vec::new();
        let mut pos = self.spec.gpa;
        for &u in &self.units {
            let end = pos + u;
            if end > at {
                out.push(end - pos.max(at));
            }
            pos = end;
        }
        out
    }
}

/// Public view of one memslot the mapper holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotInfo {
    /// KVM slot number.
    pub slot: u32,
    /// Guest-physical start.
    pub gpa: u64,
    /// Length in bytes.
    pub len: u64,
    /// Backing.
    pub source: SourceId,
    /// Offset in the backing.
    pub offset: u64,
    /// Mapped read-only.
    pub readonly: bool,
}

/// What [`KvmMemslotMapper::host_access`] did with a guest access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostAccess {
    /// The address is mapped; the access was carried out on the host mapping.
    Done,
    /// A write to a read-only mapping: dropped, as the guest must not change the backing.
    ReadOnlyWriteDropped,
    /// Not mapped by this mapper.
    Unmapped,
}

/// [`MemoryMapper`] over KVM user memory regions. See the module documentation.
pub struct KvmMemslotMapper {
    registrar: Box<dyn SlotRegistrar>,
    backings: BTreeMap<SourceId, Backing>,
    runs: BTreeMap<u64, Run>,
    /// Sum of [`worst_case_slots`] over the runs: what the mapper keeps available.
    reserved_slots: usize,
    free_slots: Vec<u32>,
    next_slot: u32,
    slot_ids: Range<u32>,
    reserved: Vec<Range<u64>>,
}

impl std::fmt::Debug for KvmMemslotMapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvmMemslotMapper")
            .field("backings", &self.backings.len())
            .field("slots", &self.slots())
            .field("slot_ids", &self.slot_ids)
            .finish()
    }
}

impl KvmMemslotMapper {
    /// A mapper handing out KVM slot numbers from `slot_ids` (the VMM keeps the others, e.g. slot
    /// 0 for boot RAM) and refusing guest ranges that overlap `reserved`.
    pub fn new(registrar: Box<dyn SlotRegistrar>, slot_ids: Range<u32>, reserved: Vec<Range<u64>>) -> Self {
        KvmMemslotMapper {
            registrar,
            backings: BTreeMap::new(),
            runs: BTreeMap::new(),
            reserved_slots: 0,
            free_slots: Vec::new(),
            next_slot: slot_ids.start,
            slot_ids,
            reserved,
        }
    }

    /// Registers a backing under `id`.
    pub fn register_backing(&mut self, id: SourceId, backing: Backing) -> Result<(), MemslotError> {
        if self.backings.contains_key(&id) {
            return Err(MemslotError::DuplicateBacking(id));
        }
        self.backings.insert(id, backing);
        Ok(())
    }

    /// Unregisters a backing no mapping uses any more and hands it back.
    pub fn unregister_backing(&mut self, id: SourceId) -> Result<Backing, MemslotError> {
        if self.runs.values().any(|r| r.spec.source == id) {
            return Err(MemslotError::BackingInUse(id));
        }
        self.backings.remove(&id).ok_or(MemslotError::UnknownBacking(id))
    }

    /// The registered backing `id`.
    pub fn backing(&self, id: SourceId) -> Option<&Backing> {
        self.backings.get(&id)
    }

    /// Number of memslots in use.
    pub fn slot_count(&self) -> usize {
        self.runs.len()
    }

    /// Most memslots the mapper may use at once.
    pub fn slot_limit(&self) -> usize {
        self.slot_ids.len()
    }

    /// Memslots the mapper keeps available for its runs: their count if every later unmap of
    /// whole units split them as far as it can (at least [`KvmMemslotMapper::slot_count`]).
    pub fn reserved_slots(&self) -> usize {
        self.reserved_slots
    }

    /// The memslots in guest-address order.
    pub fn slots(&self) -> Vec<SlotInfo> {
        self.runs
            .values()
            .map(|r| SlotInfo {
                slot: r.slot,
                gpa: r.spec.gpa,
                len: r.spec.len,
                source: r.spec.source,
                offset: r.spec.offset,
                readonly: r.spec.readonly,
            })
            .collect()
    }

    /// Maps `m` (see [`MemoryMapper::map`]), merging with compatible neighbours.
    pub fn map_range(&mut self, m: &Mapping) -> Result<(), MemslotError> {
        let end = self.validate(m)?;
        if self
            .runs
            .range(..end)
            .next_back()
            .is_some_and(|(_, r)| r.spec.end() > m.gpa)
        {
            return Err(MemslotError::Overlap {
                gpa: m.gpa,
                len: m.len,
            });
        }
        let new = RunSpec {
            gpa: m.gpa,
            len: m.len,
            source: m.source.id,
            offset: m.source.offset,
            readonly: m.readonly,
        };
        let left = self
            .runs
            .range(..m.gpa)
            .next_back()
            .filter(|(_, r)| r.spec.continues_into(&new))
            .map(|(k, _)| *k);
        let right = self
            .runs
            .get(&end)
            .filter(|r| new.continues_into(&r.spec))
            .map(|r| r.spec.gpa);
        let mut merged = new;
        if let Some(l) = left.and_then(|k| self.runs.get(&k)) {
            merged.gpa = l.spec.gpa;
            merged.offset = l.spec.offset;
        }
        let merged_end = right
            .and_then(|k| self.runs.get(&k))
            .map_or(end, |r| r.spec.end());
        merged.len = merged_end - merged.gpa;
        let mut units: Vec<u64> = left.map(|k| self.runs[&k].units.clone()).unwrap_or_default();
        units.push(m.len);
        if let Some(k) = right {
            units.extend_from_slice(&self.runs[&k].units);
        }
        let old: Vec<u64> = left.into_iter().chain(right).collect();
        self.replace(&old, &[(merged, units)])
    }

    /// Unmaps `m` (see [`MemoryMapper::unmap`]), splitting runs it covers partly.
    pub fn unmap_range(&mut self, m: &Mapping) -> Result<(), MemslotError> {
        let end = m.end().filter(|_| m.len > 0).ok_or(MemslotError::BadRange {
            gpa: m.gpa,
            len: m.len,
        })?;
        let not_mapped = MemslotError::NotMapped {
            gpa: m.gpa,
            len: m.len,
        };
        // Runs overlapping [gpa, end): the one starting at or before gpa, then those inside.
        let first = self.runs.range(..=m.gpa).next_back().map(|(k, _)| *k);
        let old: Vec<u64> = first
            .into_iter()
            .chain(self.runs.range(m.gpa..end).map(|(k, _)| *k))
            .filter(|k| self.runs[k].spec.end() > m.gpa)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut cursor = m.gpa;
        for k in &old {
            let r = &self.runs[k].spec;
            if r.gpa > cursor {
                return Err(not_mapped);
            }
            cursor = r.end();
        }
        if old.is_empty() || cursor < end {
            return Err(not_mapped);
        }
        let mut keep = Vec::new();
        let head_run = &self.runs[&old[0]];
        let head = &head_run.spec;
        if head.gpa < m.gpa {
            keep.push((
                RunSpec {
                    len: m.gpa - head.gpa,
                    ..*head
                },
                head_run.units_before(m.gpa),
            ));
        }
        let tail_run = &self.runs[&old[old.len() - 1]];
        let tail = &tail_run.spec;
        if tail.end() > end {
            let cut = end - tail.gpa;
            keep.push((
                RunSpec {
                    gpa: end,
                    len: tail.len - cut,
                    offset: tail.offset + cut,
                    ..*tail
                },
                tail_run.units_after(end),
            ));
        }
        self.replace(&old, &keep)
    }

    /// Carries out a guest access to `gpa` on the host mapping, for a vCPU exit that raced with a
    /// slot replacement (or a write to a read-only slot). `data` is filled on reads.
    pub fn host_access(&self, gpa: u64, data: &mut [u8], write: bool) -> HostAccess {
        let mut result = HostAccess::Done;
        for (i, byte) in data.iter_mut().enumerate() {
            let Some(addr) = u64::try_from(i).ok().and_then(|i| gpa.checked_add(i)) else {
                return HostAccess::Unmapped;
            };
            let Some((_, run)) = self
                .runs
                .range(..=addr)
                .next_back()
                .filter(|(_, r)| r.spec.end() > addr)
            else {
                return HostAccess::Unmapped;
            };
            if write && run.spec.readonly {
                result = HostAccess::ReadOnlyWriteDropped;
                continue;
            }
            let Ok(off) = usize::try_from(addr - run.spec.gpa) else {
                return HostAccess::Unmapped;
            };
            // SAFETY: addr lies in [run.gpa, run.end) (checked by the filter above), so `off` is
            // below the mapping's length; the mapping stays alive while `self` is borrowed.
            let p = unsafe { run.host.addr.as_ptr().cast::<u8>().add(off) };
            if write {
                // SAFETY: `p` is inside a live writable mapping (the run is not read-only).
                unsafe { p.write_volatile(*byte) };
            } else {
                // SAFETY: `p` is inside a live readable mapping.
                *byte = unsafe { p.read_volatile() };
            }
        }
        result
    }

    /// Checks a new mapping against alignment, its backing and reserved memory; returns its end.
    fn validate(&self, m: &Mapping) -> Result<u64, MemslotError> {
        let end = m.end().filter(|_| m.len > 0).ok_or(MemslotError::BadRange {
            gpa: m.gpa,
            len: m.len,
        })?;
        let id = m.source.id;
        let backing = self.backings.get(&id).ok_or(MemslotError::UnknownBacking(id))?;
        let align = backing.alignment().max(PAGE_SIZE);
        if m.gpa % align != 0 || m.len % align != 0 || m.source.offset % align != 0 {
            return Err(MemslotError::Unaligned {
                gpa: m.gpa,
                len: m.len,
                offset: m.source.offset,
                align,
            });
        }
        let past_end = MemslotError::PastBackingEnd {
            id,
            offset: m.source.offset,
            len: m.len,
            size: backing.size(),
        };
        if m.source
            .offset
            .checked_add(m.len)
            .is_none_or(|e| e > backing.size())
        {
            return Err(past_end);
        }
        if !m.readonly && !backing.writable() {
            return Err(MemslotError::BackingReadOnly(id));
        }
        if let Some(r) = self.reserved.iter().find(|r| r.start < end && m.gpa < r.end) {
            return Err(MemslotError::Reserved {
                gpa: m.gpa,
                len: m.len,
                reserved: r.clone(),
            });
        }
        Ok(end)
    }

    /// Replaces the runs keyed `old` by runs `new` with their units (which cover no other run's
    /// range).
    ///
    /// Order: the slot reservation is checked, host mappings for `new` are made (nothing changes
    /// if either fails), then the old slots are deleted and the new ones created back to back,
    /// then the old host mappings are released. A KVM failure rolls back to the old slots.
    fn replace(&mut self, old: &[u64], new: &[(RunSpec, Vec<u64>)]) -> Result<(), MemslotError> {
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
        let mut hosts = Vec::with_capacity(new.len());
        for (spec, _) in new {
            let backing = self
                .backings
                .get(&spec.source)
                .ok_or(MemslotError::UnknownBacking(spec.source))?;
            hosts.push(HostMapping::new(
                backing,
                spec.source,
                spec.offset,
                spec.len,
                !spec.readonly,
            )?);
        }
        // Slot numbers: the replaced runs' first, then the free list, then fresh ones. The limit
        // check above guarantees fresh numbers stay inside `slot_ids`.
        let mut ids: Vec<u32> = old.iter().map(|k| self.runs[k].slot).collect();
        ids.reverse();
        let mut taken_free = 0;
        let mut taken_fresh = 0;
        let mut new_ids = Vec::with_capacity(new.len());
        for _ in new {
            let id = if let Some(id) = ids.pop() {
                id
            } else if let Some(&id) = self.free_slots.iter().rev().nth(taken_free) {
                taken_free += 1;
                id
            } else {
                taken_fresh += 1;
                self.next_slot + (taken_fresh - 1)
            };
            new_ids.push(id);
        }

        let old_regions: Vec<_> = old
            .iter()
            .map(|k| region(&self.runs[k].spec, self.runs[k].slot, &self.runs[k].host))
            .collect();
        for (i, r) in old_regions.iter().enumerate() {
            // SAFETY: a deletion (memory_size 0) makes KVM drop its reference; no host memory is
            // handed to KVM.
            if let Err(source) = unsafe { self.registrar.set_region(delete_region(r.slot)) } {
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
        for (i, (((spec, _), host), &slot)) in new.iter().zip(&hosts).zip(&new_ids).enumerate() {
            let reg = region(spec, slot, host);
            // SAFETY: `host` maps exactly `spec.len` bytes (HostMapping::new) and is kept in the
            // new Run until that slot is deleted; its guest range overlaps no live slot because
            // the replaced slots were deleted above and `new` covers no other run's range.
            if let Err(source) = unsafe { self.registrar.set_region(reg) } {
                let mut rollback = String::new();
                for s in &new_ids[..i] {
                    // SAFETY: deletion only; see above.
                    if let Err(e) = unsafe { self.registrar.set_region(delete_region(*s)) } {
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

        // Commit: KVM now refers only to the new mappings, so dropping the old runs munmaps them.
        for k in old {
            self.runs.remove(k);
        }
        let used_free: Vec<u32> = self.free_slots.iter().rev().take(taken_free).copied().collect();
        self.free_slots.retain(|s| !used_free.contains(s));
        self.next_slot += taken_fresh;
        self.free_slots.extend(ids);
        for (((spec, units), host), slot) in new.iter().zip(hosts).zip(new_ids) {
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
    fn restore(&mut self, regions: &[kvm_userspace_memory_region]) -> String {
        let mut failures = String::new();
        for r in regions {
            // SAFETY: `r` was built from a live Run whose host mapping is still owned by
            // `self.runs` (the replacement did not commit), so the memory stays mapped.
            if let Err(e) = unsafe { self.registrar.set_region(*r) } {
                failures.push_str(&format!("; restoring slot {} failed ({e}): range lost", r.slot));
                if let Some(lost) = self.runs.remove(&r.guest_phys_addr) {
                    self.reserved_slots -= worst_case_slots(lost.units.len());
                }
                self.free_slots.push(r.slot);
            }
        }
        failures
    }
}

fn region(spec: &RunSpec, slot: u32, host: &HostMapping) -> kvm_userspace_memory_region {
    kvm_userspace_memory_region {
        slot,
        flags: if spec.readonly { KVM_MEM_READONLY } else { 0 },
        guest_phys_addr: spec.gpa,
        memory_size: spec.len,
        userspace_addr: host.host_addr(),
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

impl MemoryMapper for KvmMemslotMapper {
    fn map(&mut self, m: &Mapping) -> Result<(), MapperError> {
        self.map_range(m).map_err(|e| MapperError {
            gpa: m.gpa,
            len: m.len,
            reason: e.to_string(),
        })
    }

    fn unmap(&mut self, m: &Mapping) -> Result<(), MapperError> {
        self.unmap_range(m).map_err(|e| MapperError {
            gpa: m.gpa,
            len: m.len,
            reason: e.to_string(),
        })
    }
}

/// A [`KvmMemslotMapper`] shared between the device (which maps and unmaps) and the vCPU loop
/// (which serves racing accesses) and the VMM's control side (which registers backings).
#[derive(Clone, Debug)]
pub struct SharedMapper(Arc<Mutex<KvmMemslotMapper>>);

impl SharedMapper {
    /// Wraps a mapper.
    pub fn new(mapper: KvmMemslotMapper) -> Self {
        SharedMapper(Arc::new(Mutex::new(mapper)))
    }

    /// Locks the mapper. A panic while it was held leaves it usable: its state is only committed
    /// after each change succeeded.
    pub fn lock(&self) -> MutexGuard<'_, KvmMemslotMapper> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl MemoryMapper for SharedMapper {
    fn map(&mut self, m: &Mapping) -> Result<(), MapperError> {
        self.lock().map(m)
    }

    fn unmap(&mut self, m: &Mapping) -> Result<(), MapperError> {
        self.lock().unmap(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tagmem_device::SourceRef;

    /// Records slots like KVM would, rejecting overlaps; can fail the n-th creation.
    #[derive(Clone, Default)]
    struct FakeKvm {
        slots: Arc<Mutex<BTreeMap<u32, kvm_userspace_memory_region>>>,
        fail_create_at: Arc<AtomicUsize>,
        creates: Arc<AtomicUsize>,
    }

    impl SlotRegistrar for FakeKvm {
        unsafe fn set_region(&self, r: kvm_userspace_memory_region) -> Result<(), kvm_ioctls::Error> {
            let mut slots = self.slots.lock().unwrap();
            if r.memory_size == 0 {
                slots
                    .remove(&r.slot)
                    .ok_or(kvm_ioctls::Error::new(libc::EINVAL))?;
                return Ok(());
            }
            let n = self.creates.fetch_add(1, Ordering::SeqCst) + 1;
            if n == self.fail_create_at.load(Ordering::SeqCst) {
                return Err(kvm_ioctls::Error::new(libc::ENOMEM));
            }
            let end = r.guest_phys_addr + r.memory_size;
            let overlap = slots
                .values()
                .any(|s| s.guest_phys_addr < end && r.guest_phys_addr < s.guest_phys_addr + s.memory_size);
            if overlap || slots.contains_key(&r.slot) {
                return Err(kvm_ioctls::Error::new(libc::EEXIST));
            }
            slots.insert(r.slot, r);
            Ok(())
        }
    }

    const MIB: u64 = 1 << 20;
    const SRC: SourceId = SourceId(7);

    fn mapper(limit: u32) -> (KvmMemslotMapper, FakeKvm) {
        let kvm = FakeKvm::default();
        let mut m = KvmMemslotMapper::new(
            Box::new(kvm.clone()),
            1..1 + limit,
            vec![0..64 * MIB, 0xd000_0000..0xe000_0000],
        );
        m.register_backing(SRC, Backing::memfd("t", 64 * MIB).unwrap())
            .unwrap();
        (m, kvm)
    }

    fn mp(gpa: u64, len: u64, offset: u64) -> Mapping {
        Mapping {
            gpa,
            len,
            source: SourceRef { id: SRC, offset },
            readonly: false,
        }
    }

    fn check_consistent(m: &KvmMemslotMapper, kvm: &FakeKvm) {
        let slots = kvm.slots.lock().unwrap();
        assert_eq!(slots.len(), m.slot_count());
        for s in m.slots() {
            let r = slots[&s.slot];
            assert_eq!((r.guest_phys_addr, r.memory_size), (s.gpa, s.len));
        }
        let specs: Vec<_> = m.runs.values().map(|r| r.spec).collect();
        for w in specs.windows(2) {
            assert!(!w[0].continues_into(&w[1]), "uncoalesced neighbours {w:?}");
        }
    }

    #[test]
    fn adjacent_maps_coalesce_and_middle_unmap_splits() {
        let (mut m, kvm) = mapper(8);
        let base = 1 << 32;
        m.map_range(&mp(base, 2 * MIB, 0)).unwrap();
        m.map_range(&mp(base + 4 * MIB, 2 * MIB, 4 * MIB)).unwrap();
        assert_eq!(m.slot_count(), 2);
        m.map_range(&mp(base + 2 * MIB, 2 * MIB, 2 * MIB)).unwrap();
        assert_eq!(m.slot_count(), 1);
        assert_eq!(m.slots()[0].len, 6 * MIB);
        check_consistent(&m, &kvm);
        m.unmap_range(&mp(base + 2 * MIB, 2 * MIB, 2 * MIB)).unwrap();
        let s = m.slots();
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].gpa, s[0].len, s[0].offset), (base, 2 * MIB, 0));
        assert_eq!(
            (s[1].gpa, s[1].len, s[1].offset),
            (base + 4 * MIB, 2 * MIB, 4 * MIB)
        );
        check_consistent(&m, &kvm);
    }

    #[test]
    fn incompatible_neighbours_do_not_coalesce() {
        let (mut m, kvm) = mapper(8);
        let base = 1 << 32;
        m.map_range(&mp(base, MIB, 0)).unwrap();
        // Backing offset not contiguous.
        m.map_range(&mp(base + MIB, MIB, 8 * MIB)).unwrap();
        // Read-only flag differs.
        m.map_range(&Mapping {
            readonly: true,
            ..mp(base + 2 * MIB, MIB, 9 * MIB)
        })
        .unwrap();
        assert_eq!(m.slot_count(), 3);
        check_consistent(&m, &kvm);
    }

    #[test]
    fn unmap_spanning_runs_and_partial_edges() {
        let (mut m, kvm) = mapper(8);
        let base = 1 << 32;
        m.map_range(&mp(base, 4 * MIB, 0)).unwrap();
        m.map_range(&mp(base + 4 * MIB, 4 * MIB, 16 * MIB)).unwrap();
        m.unmap_range(&mp(base + MIB, 6 * MIB, 0)).unwrap();
        let s = m.slots();
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].gpa, s[0].len), (base, MIB));
        assert_eq!((s[1].gpa, s[1].len, s[1].offset), (base + 7 * MIB, MIB, 19 * MIB));
        check_consistent(&m, &kvm);
        assert!(matches!(
            m.unmap_range(&mp(base, 2 * MIB, 0)),
            Err(MemslotError::NotMapped { .. })
        ));
        m.unmap_range(&mp(base, MIB, 0)).unwrap();
        m.unmap_range(&mp(base + 7 * MIB, MIB, 0)).unwrap();
        assert_eq!(m.slot_count(), 0);
        check_consistent(&m, &kvm);
    }

    #[test]
    fn validation_errors() {
        let (mut m, _) = mapper(8);
        let base = 1 << 32;
        assert!(matches!(
            m.map_range(&mp(base, 0, 0)),
            Err(MemslotError::BadRange { .. })
        ));
        assert!(matches!(
            m.map_range(&mp(u64::MAX - 4095, 8192, 0)),
            Err(MemslotError::BadRange { .. })
        ));
        assert!(matches!(
            m.map_range(&mp(base + 1, 4096, 0)),
            Err(MemslotError::Unaligned { .. })
        ));
        assert!(matches!(
            m.map_range(&mp(base, 4096, 64 * MIB)),
            Err(MemslotError::PastBackingEnd { .. })
        ));
        assert!(matches!(
            m.map_range(&mp(MIB, 4096, 0)),
            Err(MemslotError::Reserved { .. })
        ));
        let unknown = Mapping {
            source: SourceRef {
                id: SourceId(99),
                offset: 0,
            },
            ..mp(base, 4096, 0)
        };
        assert!(matches!(
            m.map_range(&unknown),
            Err(MemslotError::UnknownBacking(_))
        ));
        m.map_range(&mp(base, 2 * MIB, 0)).unwrap();
        assert!(matches!(
            m.map_range(&mp(base + MIB, 2 * MIB, 0)),
            Err(MemslotError::Overlap { .. })
        ));
        assert!(matches!(
            m.unregister_backing(SRC),
            Err(MemslotError::BackingInUse(_))
        ));
    }

    #[test]
    fn slot_limit_and_reuse() {
        let (mut m, kvm) = mapper(3);
        let base = 1 << 32;
        for i in 0..3 {
            m.map_range(&mp(base + i * 4 * MIB, MIB, i * 4 * MIB)).unwrap();
        }
        let err = m.map_range(&mp(base + 12 * MIB, MIB, 12 * MIB)).unwrap_err();
        assert!(
            matches!(err, MemslotError::SlotLimit { needed: 4, limit: 3 }),
            "{err}"
        );
        // Splitting also needs a slot: refused at the limit, nothing changed.
        assert!(matches!(
            m.unmap_range(&mp(base + 4096, 4096, 0)),
            Err(MemslotError::SlotLimit { .. })
        ));
        assert_eq!(m.slot_count(), 3);
        // A merge frees slots, and freed numbers are reused.
        m.unmap_range(&mp(base, MIB, 0)).unwrap();
        m.map_range(&mp(base + 20 * MIB, MIB, 20 * MIB)).unwrap();
        let ids: Vec<u32> = m.slots().iter().map(|s| s.slot).collect();
        assert!(ids.iter().all(|&s| (1..4).contains(&s)), "{ids:?}");
        check_consistent(&m, &kvm);
    }

    /// Item C14: an extent in the middle of a coalesced run is unmapped even at the slot limit.
    /// The mapper reserves the slots such a split needs, so it refuses the `map` that would have
    /// used them instead.
    #[test]
    fn unmap_of_a_coalesced_middle_extent_at_the_slot_limit_succeeds() {
        let (mut m, kvm) = mapper(3);
        let base = 1 << 32;
        // Three extents merge into one slot; a fourth sits apart.
        for i in 0..3 {
            m.map_range(&mp(base + i * 2 * MIB, 2 * MIB, i * 2 * MIB))
                .unwrap();
        }
        m.map_range(&mp(base + 16 * MIB, 2 * MIB, 16 * MIB)).unwrap();
        assert_eq!((m.slot_count(), m.reserved_slots()), (2, 3));
        // Map separate extents until the mapper refuses.
        let mut mapped = 0;
        while m
            .map_range(&mp(
                base + (20 + 4 * mapped) * MIB,
                2 * MIB,
                (20 + 4 * mapped) * MIB,
            ))
            .is_ok()
        {
            mapped += 1;
            assert!(mapped < 8, "the mapper never refused");
        }
        // Now release the middle extent of the coalesced run: the split needs one more slot.
        m.unmap_range(&mp(base + 2 * MIB, 2 * MIB, 2 * MIB)).unwrap();
        let middle = base + 2 * MIB;
        assert!(
            !m.slots()
                .iter()
                .any(|x| x.gpa <= middle && middle < x.gpa + x.len),
            "the guest can no longer reach the released extent"
        );
        assert!(m.slot_count() <= m.slot_limit());
        check_consistent(&m, &kvm);
        // And the rest of the extents come out one by one, whatever the order.
        m.unmap_range(&mp(base, 2 * MIB, 0)).unwrap();
        m.unmap_range(&mp(base + 4 * MIB, 2 * MIB, 4 * MIB)).unwrap();
        m.unmap_range(&mp(base + 16 * MIB, 2 * MIB, 16 * MIB)).unwrap();
        assert_eq!(m.reserved_slots(), m.slot_count());
        check_consistent(&m, &kvm);
    }

    /// The reservation follows merges and splits: whole-unit unmaps never need more than it.
    #[test]
    fn reservation_covers_every_whole_unit_unmap_order() {
        let (mut m, kvm) = mapper(4);
        let base = 1 << 32;
        for i in 0..7 {
            m.map_range(&mp(base + i * MIB, MIB, i * MIB)).unwrap();
        }
        assert_eq!((m.slot_count(), m.reserved_slots()), (1, 4));
        assert!(matches!(
            m.map_range(&mp(base + 32 * MIB, MIB, 32 * MIB)),
            Err(MemslotError::SlotLimit { needed: 5, limit: 4 })
        ));
        // Alternate units out: the worst case, four runs of one unit.
        for i in [1, 3, 5] {
            m.unmap_range(&mp(base + i * MIB, MIB, i * MIB)).unwrap();
        }
        assert_eq!((m.slot_count(), m.reserved_slots()), (4, 4));
        check_consistent(&m, &kvm);
        // A unit cut in two needs a slot the reservation does not hold: refused, nothing changed.
        assert!(matches!(
            m.unmap_range(&mp(base + 4096, 4096, 4096)),
            Err(MemslotError::SlotLimit { .. })
        ));
        assert_eq!(m.slot_count(), 4);
    }

    #[test]
    fn failed_create_rolls_back() {
        let (mut m, kvm) = mapper(8);
        let base = 1 << 32;
        m.map_range(&mp(base, MIB, 0)).unwrap();
        let before = m.slots();
        // The merge deletes the old slot, then creation fails: the old slot must come back.
        kvm.fail_create_at
            .store(kvm.creates.load(Ordering::SeqCst) + 1, Ordering::SeqCst);
        let err = m.map_range(&mp(base + MIB, MIB, MIB)).unwrap_err();
        assert!(matches!(err, MemslotError::Kvm { .. }), "{err}");
        assert_eq!(m.slots(), before);
        check_consistent(&m, &kvm);
    }

    #[test]
    fn host_access_reads_writes_and_drops_readonly_writes() {
        let (mut m, _) = mapper(8);
        let base = 1 << 32;
        m.map_range(&mp(base, MIB, 0)).unwrap();
        m.map_range(&Mapping {
            readonly: true,
            ..mp(base + MIB, MIB, 2 * MIB)
        })
        .unwrap();
        let mut w = *b"abcdefgh";
        assert_eq!(m.host_access(base + 8, &mut w, true), HostAccess::Done);
        let mut r = [0u8; 8];
        assert_eq!(m.host_access(base + 8, &mut r, false), HostAccess::Done);
        assert_eq!(&r, b"abcdefgh");
        assert_eq!(
            m.host_access(base + MIB, &mut w, true),
            HostAccess::ReadOnlyWriteDropped
        );
        assert_eq!(m.host_access(base + 4 * MIB, &mut r, false), HostAccess::Unmapped);
        use std::os::unix::fs::FileExt;
        let mut back = [0u8; 8];
        m.backing(SRC)
            .unwrap()
            .file_handle()
            .read_exact_at(&mut back, 8)
            .unwrap();
        assert_eq!(&back, b"abcdefgh");
    }
}

//! [`KvmMemslotMapper`]: the device's [`MemoryMapper`] over KVM user memory regions.
//!
//! Every registered backing is mapped into the host once, whole (`MAP_SHARED`), when it is
//! registered, as QEMU maps a memory backend; memslots point into that mapping, so mapping and
//! unmapping guest ranges never calls `mmap` or `munmap`. Mapped guest ranges are kept as
//! *runs*, each one KVM memslot. A batch of maps (the accepted extents of one chain) is merged
//! before any slot is created: neighbours that continue one another in guest and backing space
//! with the same flags become one run. Runs mapped earlier are never grown: KVM cannot resize a
//! slot, and deleting and re-creating an ever larger one per extent is what made hot-add cost
//! grow with what was already mapped. Unmapping part of a run splits it: the old slot is deleted
//! and the pieces it keeps are created back to back. A vCPU that touches such a piece in that
//! instant exits to the VMM, which serves the access from the host mapping under the mapper's
//! lock (see [`KvmMemslotMapper::host_access`]), so the guest never sees the gap.
//!
//! Unmapping what one map mapped (an extent) must never fail for lack of slots, or capacity
//! the device wants gone would stay reachable. Each run remembers the *units* it was merged from
//! (the mapped ranges, as later unmaps trimmed them); removing whole units from a run of `u`
//! units leaves at most `ceil(u / 2)` runs. The mapper counts every run at that worst case and
//! refuses a map that would take the count past the slot limit, so an unmap of whole units
//! always finds its slots. Only an unmap that cuts a unit in two (a base-region UNPLUG of part of
//! a PLUG) can still be refused, and the device answers it BUSY.

mod batch;
mod error;
mod host;
mod slots;
mod stats;

pub use error::MemslotError;
pub use stats::MapperStats;

use crate::backing::{Backing, PAGE_SIZE};
use host::HostMapping;
use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_READONLY};
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};
use tagmem_device::{MapperError, Mapping, MemoryMapper, SourceId};

/// Where the mapper's slot changes go: KVM in the VMM, a recorder in unit tests.
pub trait SlotRegistrar: Send {
    /// Creates (size > 0) or deletes (size 0) memslot `region.slot`.
    ///
    /// # Safety
    /// For a creation, `region.userspace_addr` must point to a host mapping of at least
    /// `region.memory_size` bytes that stays mapped until the slot is deleted.
    unsafe fn set_region(&self, region: kvm_userspace_memory_region) -> Result<(), kvm_ioctls::Error>;
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

    fn of(m: &Mapping) -> RunSpec {
        RunSpec {
            gpa: m.gpa,
            len: m.len,
            source: m.source.id,
            offset: m.source.offset,
            readonly: m.readonly,
        }
    }
}

/// A live run: one KVM memslot over part of its backing's host mapping.
#[derive(Debug)]
struct Run {
    slot: u32,
    spec: RunSpec,
    /// Lengths of the units (the ranges of the maps) the run was made of, in guest order; they
    /// sum to `spec.len`.
    units: Vec<u64>,
    /// Host address of the run's first byte, inside its backing's [`HostMapping`].
    host: u64,
}

/// A registered backing, its host mapping and how many runs use it.
#[derive(Debug)]
struct Registered {
    // Declared first: unmapped before the backing's descriptor is closed.
    host: Vec<HostMapping>,
    /// Mapped into the host range by range as memslots need it, not whole at registration.
    on_use: bool,
    backing: Backing,
    runs: usize,
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
    // Declared before `backings`: runs (which point into backings' host mappings) go first.
    runs: BTreeMap<u64, Run>,
    backings: BTreeMap<SourceId, Registered>,
    /// Sum of [`worst_case_slots`] over the runs: what the mapper keeps available.
    reserved_slots: usize,
    free_slots: Vec<u32>,
    next_slot: u32,
    slot_ids: Range<u32>,
    reserved: Vec<Range<u64>>,
    stats: MapperStats,
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
            runs: BTreeMap::new(),
            backings: BTreeMap::new(),
            reserved_slots: 0,
            free_slots: Vec::new(),
            next_slot: slot_ids.start,
            slot_ids,
            reserved,
            stats: MapperStats::default(),
        }
    }

    /// Registers a backing under `id` and maps it whole into the host's address space (once:
    /// every memslot over it points into that mapping).
    pub fn register_backing(&mut self, id: SourceId, backing: Backing) -> Result<(), MemslotError> {
        self.register(id, backing, false)
    }

    /// Registers a backing under `id` that is mapped into the host only over the ranges
    /// memslots use, when they first use them: a per-extent backing, whose one extent may be a
    /// small range of a large device or file.
    pub fn register_backing_on_use(&mut self, id: SourceId, backing: Backing) -> Result<(), MemslotError> {
        self.register(id, backing, true)
    }

    fn register(&mut self, id: SourceId, backing: Backing, on_use: bool) -> Result<(), MemslotError> {
        if self.backings.contains_key(&id) {
            return Err(MemslotError::DuplicateBacking(id));
        }
        let host = if on_use || backing.size() == 0 {
            Vec::new()
        } else {
            self.stats.mmaps += 1;
            vec![HostMapping::whole(&backing, id)?]
        };
        self.backings.insert(
            id,
            Registered {
                host,
                on_use,
                backing,
                runs: 0,
            },
        );
        Ok(())
    }

    /// Bytes of backing `id` mapped into the host's address space.
    pub fn host_mapped(&self, id: SourceId) -> Option<u64> {
        self.backings
            .get(&id)
            .map(|r| r.host.iter().map(HostMapping::len).sum())
    }

    /// Unregisters a backing no mapping uses any more, unmaps it from the host and hands it
    /// back.
    pub fn unregister_backing(&mut self, id: SourceId) -> Result<Backing, MemslotError> {
        let r = self.backings.get(&id).ok_or(MemslotError::UnknownBacking(id))?;
        if r.runs > 0 {
            return Err(MemslotError::BackingInUse(id));
        }
        let r = self
            .backings
            .remove(&id)
            .ok_or(MemslotError::UnknownBacking(id))?;
        self.stats.munmaps += r.host.len() as u64;
        Ok(r.backing)
    }

    /// The registered backing `id`.
    pub fn backing(&self, id: SourceId) -> Option<&Backing> {
        self.backings.get(&id).map(|r| &r.backing)
    }

    /// What the mapper asked of KVM and of the host kernel so far.
    pub fn stats(&self) -> MapperStats {
        self.stats
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

    /// Maps `m` (see [`MemoryMapper::map`]) as one memslot of its own.
    pub fn map_range(&mut self, m: &Mapping) -> Result<(), MemslotError> {
        self.map_ranges(std::slice::from_ref(m))
    }

    /// Maps every range of `maps` or none (see [`MemoryMapper::map_batch`]): neighbours within
    /// the batch are merged first, and each merged run becomes one new memslot. Runs mapped
    /// earlier are left alone, even when adjacent: growing one would mean deleting and
    /// re-creating its slot.
    pub fn map_ranges(&mut self, maps: &[Mapping]) -> Result<(), MemslotError> {
        let mut specs = Vec::with_capacity(maps.len());
        for m in maps {
            let end = self.validate(m)?;
            let overlap = MemslotError::Overlap {
                gpa: m.gpa,
                len: m.len,
            };
            if self
                .runs
                .range(..end)
                .next_back()
                .is_some_and(|(_, r)| r.spec.end() > m.gpa)
            {
                return Err(overlap);
            }
            specs.push(RunSpec::of(m));
        }
        specs.sort_unstable_by_key(|s| s.gpa);
        if let Some(w) = specs.windows(2).find(|w| w[0].end() > w[1].gpa) {
            return Err(MemslotError::Overlap {
                gpa: w[1].gpa,
                len: w[1].len,
            });
        }
        let new = batch::merge(&specs);
        self.replace(&[], &new)
    }

    /// Unmaps `m` (see [`MemoryMapper::unmap`]), splitting runs it covers partly.
    pub fn unmap_range(&mut self, m: &Mapping) -> Result<(), MemslotError> {
        self.unmap_ranges(std::slice::from_ref(m))
    }

    /// Unmaps every range of `maps` or none (see [`MemoryMapper::unmap_batch`]): each run the
    /// batch touches is deleted once, and only the pieces it keeps are created again (none when
    /// the batch takes whole runs).
    pub fn unmap_ranges(&mut self, maps: &[Mapping]) -> Result<(), MemslotError> {
        let mut ranges = Vec::with_capacity(maps.len());
        for m in maps {
            let end = m.end().filter(|_| m.len > 0).ok_or(MemslotError::BadRange {
                gpa: m.gpa,
                len: m.len,
            })?;
            ranges.push((m.gpa, end));
        }
        let first = maps.first().map_or((0, 0), |m| (m.gpa, m.len));
        let not_mapped = |(gpa, len)| MemslotError::NotMapped { gpa, len };
        let cuts = batch::union(ranges).ok_or(not_mapped(first))?;
        // Runs overlapping each cut, which must cover it without a gap.
        let mut old: Vec<u64> = Vec::new();
        for &(a, b) in &cuts {
            let first = self.runs.range(..=a).next_back().map(|(k, _)| *k);
            let mut cursor = a;
            let keys = first
                .into_iter()
                .chain(self.runs.range(a.saturating_add(1)..b).map(|(k, _)| *k));
            for k in keys {
                let r = &self.runs[&k].spec;
                if r.end() <= a {
                    continue;
                }
                if r.gpa > cursor {
                    return Err(not_mapped((a, b - a)));
                }
                cursor = r.end();
                if old.last() != Some(&k) {
                    old.push(k);
                }
            }
            if cursor < b {
                return Err(not_mapped((a, b - a)));
            }
        }
        old.sort_unstable();
        old.dedup();
        let keep: Vec<(RunSpec, Vec<u64>)> = old
            .iter()
            .flat_map(|k| {
                let r = &self.runs[k];
                batch::keep(&r.spec, &r.units, &cuts)
            })
            .collect();
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
            let p = (run.host + (addr - run.spec.gpa)) as *mut u8;
            if write {
                // SAFETY: addr lies in [run.gpa, run.end) (checked by the filter above), so `p`
                // lies in the run's part of its backing's host mapping, which stays mapped while
                // the run exists (a backing with runs cannot be unregistered) and `self` is
                // borrowed; the run is not read-only, so its backing was mapped writable.
                unsafe { p.write_volatile(*byte) };
            } else {
                // SAFETY: as above, for a read of a live readable mapping.
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
        let backing = self
            .backings
            .get(&id)
            .map(|r| &r.backing)
            .ok_or(MemslotError::UnknownBacking(id))?;
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

    /// Host address of backing range `spec`, inside a host mapping of its backing; a backing
    /// mapped on use gets a mapping of exactly that range if none covers it yet.
    fn host_of(&mut self, spec: &RunSpec) -> Result<u64, MemslotError> {
        let r = self
            .backings
            .get_mut(&spec.source)
            .ok_or(MemslotError::UnknownBacking(spec.source))?;
        if let Some(h) = r.host.iter().find(|h| h.covers(spec.offset, spec.len)) {
            return Ok(h.addr_of(spec.offset));
        }
        if !r.on_use {
            return Err(MemslotError::UnknownBacking(spec.source));
        }
        let h = HostMapping::range(&r.backing, spec.source, spec.offset, spec.len)?;
        self.stats.mmaps += 1;
        let addr = h.addr_of(spec.offset);
        r.host.push(h);
        Ok(addr)
    }
}

fn mapper_error(m: Option<&Mapping>, e: MemslotError) -> MapperError {
    MapperError::new(m.map_or(0, |m| m.gpa), m.map_or(0, |m| m.len), e)
}

impl MemoryMapper for KvmMemslotMapper {
    fn map(&mut self, m: &Mapping) -> Result<(), MapperError> {
        self.map_range(m).map_err(|e| mapper_error(Some(m), e))
    }

    fn unmap(&mut self, m: &Mapping) -> Result<(), MapperError> {
        self.unmap_range(m).map_err(|e| mapper_error(Some(m), e))
    }

    fn map_batch(&mut self, maps: &[Mapping]) -> Result<(), MapperError> {
        self.map_ranges(maps).map_err(|e| mapper_error(maps.first(), e))
    }

    fn unmap_batch(&mut self, maps: &[Mapping]) -> Result<(), MapperError> {
        self.unmap_ranges(maps).map_err(|e| mapper_error(maps.first(), e))
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

    fn map_batch(&mut self, maps: &[Mapping]) -> Result<(), MapperError> {
        self.lock().map_batch(maps)
    }

    fn unmap_batch(&mut self, maps: &[Mapping]) -> Result<(), MapperError> {
        self.lock().unmap_batch(maps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;
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
        let mut uses: BTreeMap<SourceId, usize> = BTreeMap::new();
        for r in m.runs.values() {
            *uses.entry(r.spec.source).or_default() += 1;
        }
        for (id, b) in &m.backings {
            assert_eq!(b.runs, uses.get(id).copied().unwrap_or(0), "run count of {id:?}");
        }
    }

    #[test]
    fn adjacent_maps_of_one_batch_coalesce_and_middle_unmap_splits() {
        let (mut m, kvm) = mapper(8);
        let base = 1 << 32;
        // In any order, one batch: one slot, one creation, no host mapping made.
        let before = m.stats();
        m.map_ranges(&[
            mp(base + 4 * MIB, 2 * MIB, 4 * MIB),
            mp(base, 2 * MIB, 0),
            mp(base + 2 * MIB, 2 * MIB, 2 * MIB),
        ])
        .unwrap();
        let d = m.stats().since(&before);
        assert_eq!((d.slots_created, d.slots_deleted, d.mmaps), (1, 0, 0));
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
        let three: Vec<Mapping> = (0..3)
            .map(|i| mp(base + i * 2 * MIB, 2 * MIB, i * 2 * MIB))
            .collect();
        m.map_ranges(&three).unwrap();
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
        let seven: Vec<Mapping> = (0..7).map(|i| mp(base + i * MIB, MIB, i * MIB)).collect();
        m.map_ranges(&seven).unwrap();
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
        m.map_ranges(&[mp(base, MIB, 0), mp(base + MIB, MIB, MIB)])
            .unwrap();
        let before = m.slots();
        // The split deletes the old slot, then creating the kept piece fails: the old slot must
        // come back whole.
        kvm.fail_create_at
            .store(kvm.creates.load(Ordering::SeqCst) + 1, Ordering::SeqCst);
        let err = m.unmap_range(&mp(base + MIB, MIB, MIB)).unwrap_err();
        assert!(matches!(err, MemslotError::Kvm { .. }), "{err}");
        assert_eq!(m.slots(), before);
        check_consistent(&m, &kvm);
        // A batch whose second run fails leaves nothing of the batch mapped.
        kvm.fail_create_at
            .store(kvm.creates.load(Ordering::SeqCst) + 2, Ordering::SeqCst);
        let err = m
            .map_ranges(&[
                mp(base + 8 * MIB, MIB, 8 * MIB),
                mp(base + 16 * MIB, MIB, 16 * MIB),
            ])
            .unwrap_err();
        assert!(matches!(err, MemslotError::Kvm { .. }), "{err}");
        assert_eq!(m.slots(), before);
        check_consistent(&m, &kvm);
    }

    /// A run mapped earlier is never grown: an adjacent map is a slot of its own, and no slot
    /// is deleted to make it.
    #[test]
    fn adjacent_map_never_recreates_an_existing_slot() {
        let (mut m, kvm) = mapper(8);
        let base = 1 << 32;
        m.map_range(&mp(base, 2 * MIB, 0)).unwrap();
        let before = m.stats();
        m.map_range(&mp(base + 2 * MIB, 2 * MIB, 2 * MIB)).unwrap();
        let d = m.stats().since(&before);
        assert_eq!((d.slots_created, d.slots_deleted, d.set_region_calls), (1, 0, 1));
        assert_eq!(m.slot_count(), 2);
        check_consistent(&m, &kvm);
        // Releasing both in one batch deletes each slot once and creates none.
        let before = m.stats();
        m.unmap_ranges(&[mp(base + 2 * MIB, 2 * MIB, 2 * MIB), mp(base, 2 * MIB, 0)])
            .unwrap();
        let d = m.stats().since(&before);
        assert_eq!((d.slots_created, d.slots_deleted), (0, 2));
        assert_eq!(d.bytes_deleted, 4 * MIB);
        check_consistent(&m, &kvm);
        // Unmapping twice in one batch, or what is not mapped, is refused.
        assert!(matches!(
            m.unmap_ranges(&[mp(base, 2 * MIB, 0)]),
            Err(MemslotError::NotMapped { .. })
        ));
    }

    /// The backing is mapped into the host once, at registration, and unmapped at
    /// unregistration; mapping and unmapping guest ranges makes no host mapping.
    #[test]
    fn backings_are_mapped_once_whole() {
        let (mut m, _kvm) = mapper(8);
        assert_eq!((m.stats().mmaps, m.stats().munmaps), (1, 0));
        let base = 1 << 32;
        for i in 0..4 {
            m.map_range(&mp(base + i * 4 * MIB, 2 * MIB, i * 2 * MIB))
                .unwrap();
        }
        m.unmap_range(&mp(base, 2 * MIB, 0)).unwrap();
        assert_eq!((m.stats().mmaps, m.stats().munmaps), (1, 0));
        assert!(matches!(
            m.unregister_backing(SRC),
            Err(MemslotError::BackingInUse(_))
        ));
        for i in 1..4 {
            m.unmap_range(&mp(base + i * 4 * MIB, 2 * MIB, i * 2 * MIB))
                .unwrap();
        }
        m.unregister_backing(SRC).unwrap();
        assert_eq!((m.stats().mmaps, m.stats().munmaps), (1, 1));
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
        let mut back = [0u8; 8];
        m.backing(SRC)
            .unwrap()
            .file_handle()
            .read_exact_at(&mut back, 8)
            .unwrap();
        assert_eq!(&back, b"abcdefgh");
    }

    #[test]
    fn a_backing_mapped_on_use_reserves_only_its_extents_range_in_the_host() {
        const GIB: u64 = 1 << 30;
        let (mut m, kvm) = mapper(8);
        // A large sparse backing of which one extent uses 2 MiB, 32 GiB in.
        let big = SourceId(9);
        let backing = Backing::memfd("t-big", 64 * GIB).unwrap();
        backing
            .file_handle()
            .write_all_at(b"far-in", 32 * GIB + 16)
            .unwrap();
        let before = m.stats();
        m.register_backing_on_use(big, backing).unwrap();
        assert_eq!(
            m.host_mapped(big),
            Some(0),
            "nothing mapped before a memslot needs it"
        );
        let gpa = 1 << 36;
        let extent = Mapping {
            gpa,
            len: 2 * MIB,
            source: SourceRef {
                id: big,
                offset: 32 * GIB,
            },
            readonly: false,
        };
        m.map_range(&extent).unwrap();
        assert_eq!(m.host_mapped(big), Some(2 * MIB), "not the whole 64 GiB");
        assert_eq!(m.stats().since(&before).mmaps, 1);
        let mut r = [0u8; 6];
        assert_eq!(m.host_access(gpa + 16, &mut r, false), HostAccess::Done);
        assert_eq!(&r, b"far-in", "the mapping starts at the extent's offset");
        check_consistent(&m, &kvm);
        // Unmapped and mapped again: the range's mapping is reused, and closed with the backing.
        m.unmap_range(&extent).unwrap();
        m.map_range(&extent).unwrap();
        assert_eq!(m.stats().since(&before).mmaps, 1);
        m.unmap_range(&extent).unwrap();
        m.unregister_backing(big).unwrap();
        assert_eq!(m.stats().since(&before).munmaps, 1);
        // A backing registered whole is mapped whole, at once.
        let whole = m.host_mapped(SRC);
        assert_eq!(whole, Some(64 * MIB));
    }
}

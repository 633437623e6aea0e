//! Counts of what a memslot mapper asked of KVM and of the host kernel, so a benchmark can report
//! memslot and host-mapping work per operation independently of how fast this host runs it.

use serde::Serialize;

/// What a [`super::KvmMemslotMapper`] did since it was made. Plain counters, bumped next to the
/// system call they count (under the mapper's lock), so keeping them costs nothing measurable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MapperStats {
    /// `KVM_SET_USER_MEMORY_REGION` calls, successful or not (rollbacks included).
    pub set_region_calls: u64,
    /// Memslots created.
    pub slots_created: u64,
    /// Memslots deleted.
    pub slots_deleted: u64,
    /// Bytes of guest memory covered by the memslots created.
    pub bytes_created: u64,
    /// Bytes of guest memory covered by the memslots deleted.
    pub bytes_deleted: u64,
    /// Host `mmap` calls.
    pub mmaps: u64,
    /// Host `munmap` calls.
    pub munmaps: u64,
}

impl MapperStats {
    /// What changed from `earlier` to `self`.
    pub fn since(&self, earlier: &MapperStats) -> MapperStats {
        MapperStats {
            set_region_calls: self.set_region_calls.saturating_sub(earlier.set_region_calls),
            slots_created: self.slots_created.saturating_sub(earlier.slots_created),
            slots_deleted: self.slots_deleted.saturating_sub(earlier.slots_deleted),
            bytes_created: self.bytes_created.saturating_sub(earlier.bytes_created),
            bytes_deleted: self.bytes_deleted.saturating_sub(earlier.bytes_deleted),
            mmaps: self.mmaps.saturating_sub(earlier.mmaps),
            munmaps: self.munmaps.saturating_sub(earlier.munmaps),
        }
    }

    /// Counts one `KVM_SET_USER_MEMORY_REGION` call of `len` bytes (a deletion: the slot's size)
    /// that did (`ok`) or did not succeed.
    pub(crate) fn region_call(&mut self, create: bool, len: u64, ok: bool) {
        self.set_region_calls += 1;
        match (ok, create) {
            (false, _) => {}
            (true, true) => {
                self.slots_created += 1;
                self.bytes_created += len;
            }
            (true, false) => {
                self.slots_deleted += 1;
                self.bytes_deleted += len;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_and_bytes_are_counted_and_differenced() {
        let mut s = MapperStats::default();
        s.region_call(true, 4096, true);
        let before = s;
        s.region_call(true, 8192, true);
        s.region_call(false, 4096, true);
        s.region_call(true, 4096, false);
        let d = s.since(&before);
        assert_eq!(d.set_region_calls, 3);
        assert_eq!((d.slots_created, d.bytes_created), (1, 8192));
        assert_eq!((d.slots_deleted, d.bytes_deleted), (1, 4096));
    }
}

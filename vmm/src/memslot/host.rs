//! The host side of a backing: shared mappings of it (vm-memory [`MmapRegion`]s), released when
//! the backing is unregistered. A persistent backing is mapped whole when it is registered (as
//! QEMU maps a memory backend once), so mapping and unmapping guest ranges over it never calls
//! `mmap` or `munmap`; a per-extent backing is mapped only over the range its extent uses, when
//! a memslot first needs it, so that many extents cut from one large device or file do not each
//! reserve the whole of it in the host's address space.

use super::MemslotError;
use crate::backing::Backing;
use tagmem_device::SourceId;
use vm_memory::{FileOffset, MmapRegion};

/// A host mapping of backing range `[start, start + len)` (`MAP_SHARED | MAP_NORESERVE`);
/// unmapped on drop.
#[derive(Debug)]
pub(super) struct HostMapping {
    region: MmapRegion<()>,
    start: u64,
    len: u64,
}

impl HostMapping {
    /// Maps all `backing.size()` bytes of `backing`, writable if the backing is.
    pub(super) fn whole(backing: &Backing, id: SourceId) -> Result<Self, MemslotError> {
        Self::range(backing, id, 0, backing.size())
    }

    /// Maps `len` bytes of `backing` from `start` (a multiple of the backing's alignment, which
    /// the caller checked, as it checked that the range lies inside the backing).
    pub(super) fn range(backing: &Backing, id: SourceId, start: u64, len: u64) -> Result<Self, MemslotError> {
        let ulen = usize::try_from(len).map_err(|_| MemslotError::TooLarge(len))?;
        let prot = if backing.writable() {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        let file = backing
            .file_handle()
            .try_clone()
            .map_err(|source| MemslotError::CloneFd { id, source })?;
        let region = MmapRegion::build(
            Some(FileOffset::new(file, start)),
            ulen,
            prot,
            libc::MAP_SHARED | libc::MAP_NORESERVE,
        )
        .map_err(|source| MemslotError::Mmap {
            id,
            offset: start,
            len,
            source,
        })?;
        Ok(HostMapping { region, start, len })
    }

    /// Whether backing range `[offset, offset + len)` lies inside this mapping.
    pub(super) fn covers(&self, offset: u64, len: u64) -> bool {
        offset >= self.start && offset - self.start <= self.len && len <= self.len - (offset - self.start)
    }

    /// Bytes mapped.
    pub(super) fn len(&self) -> u64 {
        self.len
    }

    /// Host address of backing offset `offset` (inside the mapping: see [`Self::covers`]).
    pub(super) fn addr_of(&self, offset: u64) -> u64 {
        self.region.as_ptr() as u64 + (offset - self.start)
    }
}

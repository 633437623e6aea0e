//! The host side of a backing: one shared mapping of the whole backing (a vm-memory
//! [`MmapRegion`]), made when the backing is registered (as QEMU maps a memory backend once) and
//! released when it is unregistered. Every memslot over the backing points into it, so mapping
//! and unmapping guest ranges never calls `mmap` or `munmap`.

use super::MemslotError;
use crate::backing::Backing;
use tagmem_device::SourceId;
use vm_memory::{FileOffset, MmapRegion};

/// A host mapping of a whole backing (`MAP_SHARED | MAP_NORESERVE`); unmapped on drop.
#[derive(Debug)]
pub(super) struct HostMapping {
    region: MmapRegion<()>,
}

impl HostMapping {
    /// Maps all `backing.size()` bytes of `backing`, writable if the backing is.
    pub(super) fn whole(backing: &Backing, id: SourceId) -> Result<Self, MemslotError> {
        let len = backing.size();
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
            Some(FileOffset::new(file, 0)),
            ulen,
            prot,
            libc::MAP_SHARED | libc::MAP_NORESERVE,
        )
        .map_err(|source| MemslotError::Mmap {
            id,
            offset: 0,
            len,
            source,
        })?;
        Ok(HostMapping { region })
    }

    /// Host address of backing offset `offset` (which the caller checked against the size).
    pub(super) fn addr_of(&self, offset: u64) -> u64 {
        self.region.as_ptr() as u64 + offset
    }
}

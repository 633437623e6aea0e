//! The host side of a backing: one shared `mmap` of the whole backing, made when the backing is
//! registered (as QEMU maps a memory backend once) and released when it is unregistered. Every
//! memslot over the backing points into it, so mapping and unmapping guest ranges never calls
//! `mmap` or `munmap`.

use super::MemslotError;
use crate::backing::Backing;
use std::io;
use std::ptr::NonNull;
use tagmem_device::SourceId;

/// A host `mmap` of a whole backing; unmapped on drop.
#[derive(Debug)]
pub(super) struct HostMapping {
    addr: NonNull<libc::c_void>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value alone; moving the owner to
// another thread does not create aliasing the owner did not already have.
unsafe impl Send for HostMapping {}

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
        let failed = |source| MemslotError::Mmap {
            id,
            offset: 0,
            len,
            source,
        };
        // SAFETY: a fresh mapping (null hint, no MAP_FIXED) cannot replace existing memory; the
        // descriptor is open for the backing's lifetime, and the registration that owns this
        // mapping also owns the backing.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ulen,
                prot,
                libc::MAP_SHARED | libc::MAP_NORESERVE,
                backing.raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(failed(io::Error::last_os_error()));
        }
        let addr = NonNull::new(addr).ok_or_else(|| failed(io::Error::other("mmap returned null")))?;
        Ok(HostMapping { addr, len: ulen })
    }

    /// Host address of backing offset `offset` (which the caller checked against the size).
    pub(super) fn addr_of(&self, offset: u64) -> u64 {
        self.addr.as_ptr() as u64 + offset
    }
}

impl Drop for HostMapping {
    fn drop(&mut self) {
        // SAFETY: `addr`/`len` describe a mapping this value created and alone owns; KVM no
        // longer refers to it because a backing is unregistered (dropping this) only once no
        // memslot uses it.
        let _ = unsafe { libc::munmap(self.addr.as_ptr(), self.len) };
    }
}

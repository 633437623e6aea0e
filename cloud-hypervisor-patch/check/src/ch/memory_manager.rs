//! `vmm::memory_manager::MemoryManager`: the guest memory and the memory slots the mapper uses
//! (here: slots are counted, nothing reaches a hypervisor).

use vm_memory::GuestMemoryAtomic;

use crate::GuestMemoryMmap;

/// A memory-slot failure.
#[derive(Debug)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// The VM's memory manager.
pub struct MemoryManager {
    guest_memory: GuestMemoryAtomic<GuestMemoryMmap>,
    next_slot: u32,
    /// Slots in use: (slot, guest address, size).
    pub slots: Vec<(u32, u64, usize)>,
}

impl MemoryManager {
    /// A manager over `guest_memory`.
    pub fn new(guest_memory: GuestMemoryAtomic<GuestMemoryMmap>) -> Self {
        MemoryManager {
            guest_memory,
            next_slot: 0,
            slots: Vec::new(),
        }
    }

    /// The guest memory every in-process device uses.
    pub fn guest_memory(&self) -> GuestMemoryAtomic<GuestMemoryMmap> {
        self.guest_memory.clone()
    }

    /// Creates a memory slot for `memory_size` bytes at `userspace_addr`.
    ///
    /// # Safety
    ///
    /// As in CH: the host range must stay mapped while the slot exists.
    pub unsafe fn create_userspace_mapping(
        &mut self,
        guest_phys_addr: u64,
        memory_size: usize,
        _userspace_addr: *mut u8,
        _mergeable: bool,
        _readonly: bool,
        _log_dirty: bool,
    ) -> Result<u32, Error> {
        let slot = self.next_slot;
        self.next_slot += 1;
        self.slots.push((slot, guest_phys_addr, memory_size));
        Ok(slot)
    }

    /// Removes memory slot `slot`.
    ///
    /// # Safety
    ///
    /// As in CH: the parameters are those the slot was created with.
    pub unsafe fn remove_userspace_mapping(
        &mut self,
        guest_phys_addr: u64,
        memory_size: usize,
        _userspace_addr: *mut u8,
        _mergeable: bool,
        slot: u32,
    ) -> Result<(), Error> {
        let before = self.slots.len();
        self.slots.retain(|s| *s != (slot, guest_phys_addr, memory_size));
        if self.slots.len() == before {
            return Err(Error(format!("no slot {slot} at {guest_phys_addr:#x}")));
        }
        Ok(())
    }
}

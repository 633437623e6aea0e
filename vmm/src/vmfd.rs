//! The VM file descriptor and the boot RAM its slot 0 points into, shared by the VM, its vCPUs
//! and the memslot mapper.
//!
//! Kept apart from [`crate::vm`] so that vCPUs depend on it without depending on the VM that
//! creates them.

use crate::memslot::SlotRegistrar;
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use std::sync::Arc;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

/// Guest memory the VMM and its devices use: boot RAM.
pub type BootMemory = GuestMemoryAtomic<GuestMemoryMmap>;

/// The VM file descriptor together with the boot RAM its slot 0 points into. Holders of the
/// descriptor (the mapper, vCPUs) hold this, so boot RAM is unmapped only after KVM let go of it:
/// fields drop in order, the descriptor first.
#[derive(Debug)]
pub(crate) struct VmShared {
    pub(crate) fd: VmFd,
    pub(crate) boot: BootMemory,
}

impl SlotRegistrar for Arc<VmShared> {
    unsafe fn set_region(&self, region: kvm_userspace_memory_region) -> Result<(), kvm_ioctls::Error> {
        // SAFETY: the caller upholds this method's contract, which is that of
        // `set_user_memory_region` (host memory valid while the slot exists); slots never overlap
        // because the mapper rejects overlaps and reserves boot RAM.
        unsafe { self.fd.set_user_memory_region(region) }
    }
}

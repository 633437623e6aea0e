//! A KVM VM with boot RAM, identity page tables, an MMIO bus and the memslot mapper.

use crate::bus::{BusDevice, BusError, Console, MmioBus};
use crate::layout::{self, IdentityTables, LayoutError};
use crate::memslot::{KvmMemslotMapper, SharedMapper, SlotRegistrar};
use crate::vcpu::{BootState, Vcpu, VcpuError, VcpuWiring};
use kvm_bindings::{kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VmFd};
use std::sync::{Arc, Mutex};
use vm_memory::{
    Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryError,
    GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress,
};

/// Guest memory the VMM and its devices use: boot RAM.
pub type BootMemory = GuestMemoryAtomic<GuestMemoryMmap>;

/// The memslot boot RAM occupies; the mapper uses the ones above it.
const BOOT_RAM_SLOT: u32 = 0;

/// Errors creating or setting up a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A KVM ioctl failed.
    #[error("KVM {op} failed")]
    Kvm {
        /// What was attempted.
        op: &'static str,
        /// KVM's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Boot RAM could not be allocated.
    #[error("allocating {size:#x} bytes of boot RAM failed")]
    BootRam {
        /// Requested size.
        size: u64,
        /// Cause.
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
    /// Boot RAM size not a multiple of 2 MiB, or reaching into the MMIO window.
    #[error("boot RAM size {0:#x} must be a non-zero multiple of 2 MiB below {mmio:#x}", mmio = layout::MMIO_BASE)]
    BootRamSize(u64),
    /// Memory layout problem.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// Attaching a device failed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// An image does not fit in boot RAM at its load address.
    #[error("image of {len:#x} bytes at {addr:#x} does not fit in boot RAM")]
    ImageRange {
        /// Load address.
        addr: u64,
        /// Length.
        len: usize,
    },
    /// Writing to guest memory failed.
    #[error("writing guest memory failed")]
    GuestMemory(#[source] GuestMemoryError),
}

/// Configuration of a [`Vm`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmConfig {
    /// Bytes of boot RAM at GPA 0 (memslot 0); holds page tables, stack and the guest image.
    pub boot_ram_size: u64,
    /// Top of the guest's identity map (2 MiB pages); tagged extents must lie below it.
    pub identity_limit: u64,
    /// Cap on the memslots the mapper may use, below what KVM allows (for tests of the limit).
    pub max_mapper_slots: Option<u32>,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            boot_ram_size: layout::DEFAULT_BOOT_RAM,
            identity_limit: layout::DEFAULT_IDENTITY_LIMIT,
            max_mapper_slots: None,
        }
    }
}

/// The VM file descriptor together with the boot RAM its slot 0 points into. Holders of the
/// descriptor (the mapper, vCPUs) hold this, so boot RAM is unmapped only after KVM let go of it:
/// fields drop in order, the descriptor first.
#[derive(Debug)]
pub(crate) struct VmShared {
    pub(crate) fd: VmFd,
    boot: BootMemory,
}

impl SlotRegistrar for Arc<VmShared> {
    unsafe fn set_region(&self, region: kvm_userspace_memory_region) -> Result<(), kvm_ioctls::Error> {
        // SAFETY: the caller upholds this method's contract, which is that of
        // `set_user_memory_region` (host memory valid while the slot exists); slots never overlap
        // because the mapper rejects overlaps and reserves boot RAM.
        unsafe { self.fd.set_user_memory_region(region) }
    }
}

/// A KVM virtual machine prepared for a 64-bit guest.
#[derive(Debug)]
pub struct Vm {
    kvm: Kvm,
    shared: Arc<VmShared>,
    config: VmConfig,
    cr3: u64,
    mapper: SharedMapper,
    bus: Arc<MmioBus>,
    console: Arc<Console>,
    cpuid: CpuId,
    next_vcpu: u64,
}

/// Why KVM cannot be used here, or `None` if `/dev/kvm` opens.
pub fn kvm_unavailable() -> Option<String> {
    Kvm::new().err().map(|e| format!("opening /dev/kvm: {e}"))
}

impl Vm {
    /// Creates the VM: boot RAM in slot 0, GDT and identity page tables written, empty bus.
    pub fn new(config: VmConfig) -> Result<Self, VmError> {
        let kvm_err = |op| move |source| VmError::Kvm { op, source };
        let ram = config.boot_ram_size;
        if ram == 0 || ram % (2 * layout::MIB) != 0 || ram > layout::MMIO_BASE {
            return Err(VmError::BootRamSize(ram));
        }
        let tables = IdentityTables::for_limit(config.identity_limit)?;
        let kvm = Kvm::new().map_err(kvm_err("open /dev/kvm"))?;
        let fd = kvm.create_vm().map_err(kvm_err("create VM"))?;
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("get supported CPUID"))?;
        let ram_usize = usize::try_from(ram).map_err(|_| VmError::BootRamSize(ram))?;
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), ram_usize)])
            .map_err(|source| VmError::BootRam { size: ram, source })?;
        let host = mem
            .iter()
            .next()
            .and_then(|r| r.get_host_address(MemoryRegionAddress(0)).ok())
            .ok_or(VmError::BootRamSize(ram))?;
        let region = kvm_userspace_memory_region {
            slot: BOOT_RAM_SLOT,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: ram,
            userspace_addr: host as u64,
        };
        // SAFETY: `host` is the start of the `ram`-byte mapping owned by `mem`, which moves into
        // VmShared next to the VM descriptor and is dropped only after it (field order), so the
        // memory outlives the slot. Slot 0 is the first and only slot at this point.
        unsafe { fd.set_user_memory_region(region) }.map_err(kvm_err("register boot RAM"))?;
        let cr3 = tables.write(&mem, ram)?;
        for (i, d) in layout::GDT.iter().enumerate() {
            let addr = layout::GDT_ADDR + 8 * u64::try_from(i).unwrap_or(u64::MAX);
            mem.write_obj(*d, GuestAddress(addr))
                .map_err(VmError::GuestMemory)?;
        }

        let shared = Arc::new(VmShared {
            fd,
            boot: GuestMemoryAtomic::new(mem),
        });
        let nr_slots = u32::try_from(kvm.get_nr_memslots()).unwrap_or(u32::MAX);
        let mut slot_end = nr_slots;
        if let Some(cap) = config.max_mapper_slots {
            slot_end = slot_end.min(cap.saturating_add(BOOT_RAM_SLOT + 1));
        }
        let reserved = vec![0..ram, layout::MMIO_BASE..layout::MMIO_END];
        let mapper = KvmMemslotMapper::new(Box::new(shared.clone()), BOOT_RAM_SLOT + 1..slot_end, reserved);
        Ok(Vm {
            kvm,
            shared,
            config,
            cr3,
            mapper: SharedMapper::new(mapper),
            bus: Arc::new(MmioBus::default()),
            console: Arc::new(Console::default()),
            cpuid,
            next_vcpu: 0,
        })
    }

    /// The configuration the VM was created with.
    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// Boot RAM, as devices take it for their queues.
    pub fn memory(&self) -> BootMemory {
        self.shared.boot.clone()
    }

    /// The memslot mapper: register backings here, hand a clone to the device.
    pub fn mapper(&self) -> SharedMapper {
        self.mapper.clone()
    }

    /// The MMIO bus.
    pub fn bus(&self) -> &Arc<MmioBus> {
        &self.bus
    }

    /// The guest's console output.
    pub fn console(&self) -> &Arc<Console> {
        &self.console
    }

    /// Number of memslots KVM allows this VM.
    pub fn kvm_memslots(&self) -> usize {
        self.kvm.get_nr_memslots()
    }

    /// Attaches an MMIO device (e.g. an [`crate::mmio::MmioTransport`]) at `[base, base + len)`.
    pub fn attach_mmio(&self, base: u64, len: u64, device: Arc<Mutex<dyn BusDevice>>) -> Result<(), VmError> {
        Ok(self.bus.insert(base, len, device)?)
    }

    /// Copies a flat image into boot RAM at `addr`.
    pub fn load_image(&self, addr: u64, image: &[u8]) -> Result<(), VmError> {
        let range = VmError::ImageRange {
            addr,
            len: image.len(),
        };
        let len = u64::try_from(image.len()).map_err(|_| VmError::ImageRange {
            addr,
            len: image.len(),
        })?;
        if addr
            .checked_add(len)
            .is_none_or(|e| e > self.config.boot_ram_size)
        {
            return Err(range);
        }
        self.shared
            .boot
            .memory()
            .write_slice(image, GuestAddress(addr))
            .map_err(VmError::GuestMemory)
    }

    /// Creates a vCPU in 64-bit long mode about to run at `entry` with stack pointer `stack_top`.
    pub fn create_vcpu(&mut self, entry: u64, stack_top: u64) -> Result<Vcpu, VcpuError> {
        let id = self.next_vcpu;
        let fd = self.shared.fd.create_vcpu(id).map_err(|source| VcpuError::Kvm {
            op: "create vCPU",
            source,
        })?;
        self.next_vcpu += 1;
        let wiring = VcpuWiring {
            vm: self.shared.clone(),
            bus: self.bus.clone(),
            console: self.console.clone(),
            mapper: self.mapper.clone(),
        };
        Vcpu::new(
            fd,
            wiring,
            &self.cpuid,
            BootState {
                entry,
                stack_top,
                cr3: self.cr3,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_checked_before_kvm() {
        let bad = |c| matches!(Vm::new(c), Err(VmError::BootRamSize(_)));
        assert!(bad(VmConfig {
            boot_ram_size: 0,
            ..Default::default()
        }));
        assert!(bad(VmConfig {
            boot_ram_size: 3 * layout::MIB,
            ..Default::default()
        }));
        assert!(bad(VmConfig {
            boot_ram_size: 4 * layout::GIB,
            ..Default::default()
        }));
        assert!(matches!(
            Vm::new(VmConfig {
                identity_limit: 0,
                ..Default::default()
            }),
            Err(VmError::Layout(LayoutError::IdentityLimit(0)))
        ));
    }
}

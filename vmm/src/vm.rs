//! A KVM VM with boot RAM, an MMIO bus, a port-I/O bus and the memslot mapper.
//!
//! [`Vm::create`] makes a bare VM: boot RAM in slot 0 and nothing written into it, for a loader
//! (e.g. [`crate::boot::linux`]) to fill. [`Vm::new`] prepares it for a flat 64-bit image
//! ([`crate::boot::FlatImage`]): GDT, identity page tables, and a transmit-only COM1 console.

use crate::bus::{BusDevice, BusError, Console, DebugConsole, MmioBus};
use crate::layout::{self, IdentityTables, LayoutError};
use crate::memslot::{KvmMemslotMapper, SharedMapper};
use crate::vcpu::{Vcpu, VcpuBoot, VcpuError, VcpuWiring};
pub use crate::vmfd::BootMemory;
use crate::vmfd::VmShared;
use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{IoEventAddress, Kvm, NoDatamatch};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use vm_memory::{
    Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryError,
    GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress,
};
use vmm_sys_util::eventfd::EventFd;

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

/// Guest-physical address of the identity-mapped TSS KVM needs on Intel hosts with an in-kernel
/// irqchip (three pages just below 4 GiB, clear of RAM and the MMIO window).
const KVM_TSS_ADDR: usize = 0xfffb_d000;

/// A KVM virtual machine.
#[derive(Debug)]
pub struct Vm {
    kvm: Kvm,
    shared: Arc<VmShared>,
    config: VmConfig,
    /// Page tables a flat image runs on ([`Vm::new`]), if written.
    cr3: Option<u64>,
    mapper: SharedMapper,
    bus: Arc<MmioBus>,
    pio: Arc<MmioBus>,
    console: Arc<Console>,
    cpuid: CpuId,
    next_vcpu: u64,
    irqchip: bool,
    reset: Arc<AtomicBool>,
}

/// Why KVM cannot be used here, or `None` if `/dev/kvm` opens.
pub fn kvm_unavailable() -> Option<String> {
    Kvm::new().err().map(|e| format!("opening /dev/kvm: {e}"))
}

impl Vm {
    /// Creates a VM for a flat 64-bit image: boot RAM in slot 0 with the GDT and identity page
    /// tables up to `identity_limit` written, and a transmit-only console on COM1.
    pub fn new(config: VmConfig) -> Result<Self, VmError> {
        let tables = IdentityTables::for_limit(config.identity_limit)?;
        let mut vm = Self::create(config)?;
        let ram = vm.config.boot_ram_size;
        let mem = vm.shared.boot.memory();
        vm.cr3 = Some(tables.write(&*mem, ram)?);
        vm.write_gdt()?;
        let console = Arc::new(Mutex::new(DebugConsole::new(vm.console.clone())));
        vm.attach_pio(layout::COM1_PORT, layout::UART_PORTS, console)?;
        Ok(vm)
    }

    /// Creates a bare VM: boot RAM in slot 0 (zeroed, nothing written), empty buses, no irqchip.
    pub fn create(config: VmConfig) -> Result<Self, VmError> {
        let kvm_err = |op| move |source| VmError::Kvm { op, source };
        let ram = config.boot_ram_size;
        if ram == 0 || ram % (2 * layout::MIB) != 0 || ram > layout::MMIO_BASE {
            return Err(VmError::BootRamSize(ram));
        }
        IdentityTables::for_limit(config.identity_limit)?;
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
            cr3: None,
            mapper: SharedMapper::new(mapper),
            bus: Arc::new(MmioBus::default()),
            pio: Arc::new(MmioBus::default()),
            console: Arc::new(Console::default()),
            cpuid,
            next_vcpu: 0,
            irqchip: false,
            reset: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Writes [`layout::GDT`] at [`layout::GDT_ADDR`] (the descriptors every vCPU starts with).
    pub fn write_gdt(&self) -> Result<(), VmError> {
        let mem = self.shared.boot.memory();
        for (i, d) in layout::GDT.iter().enumerate() {
            let addr = layout::GDT_ADDR + 8 * u64::try_from(i).unwrap_or(u64::MAX);
            mem.write_obj(*d, GuestAddress(addr))
                .map_err(VmError::GuestMemory)?;
        }
        Ok(())
    }

    /// Creates the in-kernel interrupt controllers (PIC, IO-APIC, local APICs) and the PIT, as
    /// a guest with its own interrupt handling (Linux) needs; call before creating vCPUs. Device
    /// interrupts are then delivered through [`Vm::register_irqfd`], and `hlt` no longer exits.
    pub fn create_irqchip(&mut self) -> Result<(), VmError> {
        let kvm_err = |op| move |source| VmError::Kvm { op, source };
        self.shared
            .fd
            .set_tss_address(KVM_TSS_ADDR)
            .map_err(kvm_err("set TSS address"))?;
        self.shared
            .fd
            .create_irq_chip()
            .map_err(kvm_err("create irqchip"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        self.shared.fd.create_pit2(pit).map_err(kvm_err("create PIT"))?;
        self.irqchip = true;
        Ok(())
    }

    /// Whether [`Vm::create_irqchip`] ran.
    pub fn has_irqchip(&self) -> bool {
        self.irqchip
    }

    /// Makes every write to `event` raise interrupt line `gsi` of the in-kernel irqchip.
    pub fn register_irqfd(&self, event: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.shared
            .fd
            .register_irqfd(event, gsi)
            .map_err(|source| VmError::Kvm {
                op: "register irqfd",
                source,
            })
    }

    /// Makes guest writes to MMIO address `addr` (4-byte writes of `datamatch`, or any write
    /// without it) signal `event` inside KVM, without an exit.
    pub fn register_ioevent(
        &self,
        event: &EventFd,
        addr: u64,
        datamatch: Option<u32>,
    ) -> Result<(), VmError> {
        let addr = IoEventAddress::Mmio(addr);
        match datamatch {
            Some(v) => self.shared.fd.register_ioevent(event, &addr, v),
            None => self.shared.fd.register_ioevent(event, &addr, NoDatamatch),
        }
        .map_err(|source| VmError::Kvm {
            op: "register ioeventfd",
            source,
        })
    }

    /// Set once the guest asked for a reset or power-off (e.g. through the i8042 controller);
    /// vCPUs end their run when they see it.
    pub fn reset_request(&self) -> &Arc<AtomicBool> {
        &self.reset
    }

    /// CPUID entries KVM supports on this host, which vCPUs start from.
    pub fn supported_cpuid(&self) -> &CpuId {
        &self.cpuid
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

    /// Attaches a port-I/O device (e.g. a serial port) at ports `[base, base + len)`.
    pub fn attach_pio(&self, base: u16, len: u16, device: Arc<Mutex<dyn BusDevice>>) -> Result<(), VmError> {
        Ok(self.pio.insert(u64::from(base), u64::from(len), device)?)
    }

    /// The port-I/O bus.
    pub fn pio_bus(&self) -> &Arc<MmioBus> {
        &self.pio
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

    /// Creates a vCPU in 64-bit long mode about to run at `entry` with stack pointer
    /// `stack_top`, on the identity page tables [`Vm::new`] wrote.
    pub fn create_vcpu(&mut self, entry: u64, stack_top: u64) -> Result<Vcpu, VcpuError> {
        let cr3 = self.cr3.ok_or(VcpuError::NoPageTables)?;
        self.create_vcpu_with(VcpuBoot {
            entry,
            stack_top,
            cr3,
            boot_params: 0,
        })
    }

    /// Creates the next vCPU with the boot registers a loader chose; its CPUID is the host's
    /// supported set with this vCPU's APIC ID (see [`crate::boot::cpuid`]).
    pub fn create_vcpu_with(&mut self, boot: VcpuBoot) -> Result<Vcpu, VcpuError> {
        let id = self.next_vcpu;
        let fd = self.shared.fd.create_vcpu(id).map_err(|source| VcpuError::Kvm {
            op: "create vCPU",
            source,
        })?;
        self.next_vcpu += 1;
        let wiring = VcpuWiring {
            vm: self.shared.clone(),
            bus: self.bus.clone(),
            pio: self.pio.clone(),
            mapper: self.mapper.clone(),
            reset: self.reset.clone(),
            irqchip: self.irqchip,
        };
        let apic_id = u8::try_from(id).unwrap_or(u8::MAX);
        let cpuid = crate::boot::cpuid::for_vcpu(&self.cpuid, apic_id, 1);
        Vcpu::new(fd, wiring, &cpuid, boot)
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

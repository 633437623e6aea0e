//! Snapshot of a running [`Vmm`] and restore into a fresh VM in the same process.
//!
//! A [`VmSnapshot`] of a flat-image guest holds boot RAM, the vCPU's registers (taken while it is
//! parked at a `hlt` exit, so no exit is half-completed), the virtio-mmio transport's registers,
//! the device's [`DeviceState`], the console so far, and the backings table. Devices the caller
//! added ([`Vmm::with_devices`]) keep their own state: the caller captures it beside the snapshot
//! and attaches them again with [`Vmm::restore_with_devices`].
//!
//! Backings travel as **open descriptors**: the snapshot keeps a duplicate of each backing's
//! descriptor (`dup`), and restore wraps a further duplicate. A memfd has no path to reopen it
//! by, and sharing the descriptor also keeps the bytes the guest wrote without copying them; the
//! price is that the snapshot is only good inside this process. Extent memory is therefore not
//! copied: after restore the new VM maps the same pages.
//!
//! Restore treats the snapshot as untrusted where it can: the device re-runs its own validation
//! ([`tagmem_device::TaggedMemDevice::restore`]), the transport state is checked against the
//! device ([`crate::mmio::MmioTransport::restore_transport_state`]), and boot RAM must match the
//! VM's size.

use crate::backing::{Backing, BackingKind};
use crate::layout;
use crate::memslot::SharedMapper;
use crate::mmio::{MmioInterrupt, MmioTransport, MmioTransportState};
use crate::runtime::{BackingLifetime, ExtraDevice, Parts, Vmm, VmmConfig, VmmError};
use crate::vcpu::VcpuState;
use crate::vm::{Vm, VmConfig};
use std::collections::BTreeMap;
use std::fs::File;
use std::sync::Arc;
use tagmem_device::{DeviceState, GuestClock, SourceId, TaggedMemDevice};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace};

/// One registered backing: how to reach its bytes again.
#[derive(Debug)]
pub struct BackingRecord {
    /// The id the device's extents name.
    pub id: SourceId,
    /// Kind (memfd, file, devdax).
    pub kind: BackingKind,
    /// Size in bytes.
    pub size: u64,
    /// Whether writable mappings are allowed.
    pub writable: bool,
    /// How long the runtime keeps it.
    pub lifetime: BackingLifetime,
    /// A duplicate of the backing's open descriptor.
    pub file: File,
}

/// A snapshot of a [`Vmm`]; see the module documentation.
#[derive(Debug)]
pub struct VmSnapshot {
    /// The VM's configuration.
    pub vm: VmConfig,
    /// Boot RAM, byte for byte.
    pub boot_ram: Vec<u8>,
    /// The vCPU's registers at a `hlt` exit.
    pub vcpu: VcpuState,
    /// The transport's registers.
    pub transport: MmioTransportState,
    /// The device.
    pub device: DeviceState,
    /// Registered backings.
    pub backings: Vec<BackingRecord>,
    /// Console output so far.
    pub console: String,
}

fn dup(file: &File) -> Result<File, VmmError> {
    file.try_clone().map_err(|source| VmmError::Os {
        what: "duplicating a backing descriptor",
        source,
    })
}

fn reject(msg: impl Into<String>) -> VmmError {
    VmmError::Snapshot(msg.into())
}

impl Vmm {
    /// Parks the guest at its next `hlt` and captures the VM; the guest runs on afterwards. A
    /// guest on the in-kernel irqchip cannot be parked ([`VmmError::NotParkable`]).
    pub fn snapshot(&self) -> Result<VmSnapshot, VmmError> {
        let vm_config = self.vm().config().clone();
        let ram_len = usize::try_from(vm_config.boot_ram_size)
            .map_err(|_| reject("boot RAM does not fit the host address space"))?;
        let shared = self.shared().clone();
        let mem = self.vm().memory();
        self.while_parked(|vcpu| -> Result<VmSnapshot, VmmError> {
            let vcpu_state = vcpu.save_state()?;
            let mut boot_ram = vec![0u8; ram_len];
            mem.memory()
                .read_slice(&mut boot_ram, GuestAddress(0))
                .map_err(|e| reject(format!("reading boot RAM: {e}")))?;
            // Device and transport under one lock: no timer or host command interleaves.
            let (transport, device) = {
                let t = shared.transport.lock().unwrap_or_else(|e| e.into_inner());
                (t.transport_state(), t.device().snapshot())
            };
            let entries = shared.backings.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let mut backings = Vec::new();
            {
                let mapper = shared.mapper.lock();
                for (id, lifetime) in entries {
                    let b = mapper
                        .backing(id)
                        .ok_or_else(|| reject(format!("backing {id:?} is not registered")))?;
                    backings.push(BackingRecord {
                        id,
                        kind: b.kind(),
                        size: b.size(),
                        writable: b.writable(),
                        lifetime,
                        file: dup(b.file_handle())?,
                    });
                }
            }
            Ok(VmSnapshot {
                vm: vm_config.clone(),
                boot_ram,
                vcpu: vcpu_state,
                transport,
                device,
                backings,
                console: shared.console.contents(),
            })
        })?
    }

    /// Builds a fresh VM from `snapshot` (its VM configuration wins over `config.vm`; the
    /// device configuration comes from the snapshot too) and lets the guest continue.
    pub fn restore(config: VmmConfig, snapshot: &VmSnapshot) -> Result<Vmm, VmmError> {
        Self::restore_with_devices(config, snapshot, Vec::new())
    }

    /// Like [`Vmm::restore`], with further devices on the VM's buses (as [`Vmm::with_devices`]
    /// attaches them), holding the state their owner kept beside the snapshot.
    pub fn restore_with_devices(
        config: VmmConfig,
        snapshot: &VmSnapshot,
        devices: Vec<ExtraDevice>,
    ) -> Result<Vmm, VmmError> {
        if u64::try_from(snapshot.boot_ram.len()).ok() != Some(snapshot.vm.boot_ram_size) {
            return Err(reject("boot RAM size differs from the VM configuration"));
        }
        let mut vm = Vm::new(snapshot.vm.clone())?;
        vm.load_image(0, &snapshot.boot_ram)?;
        let mapper: SharedMapper = vm.mapper();
        let mut entries = BTreeMap::new();
        {
            let mut m = mapper.lock();
            for r in &snapshot.backings {
                let backing = Backing::from_file(dup(&r.file)?, r.size, r.kind, r.writable);
                r.lifetime.register(&mut m, r.id, backing)?;
                entries.insert(r.id, r.lifetime);
            }
        }
        let irq = Arc::new(MmioInterrupt::new(None));
        let clock = Arc::new(GuestClock::new(config.clock.clone()));
        let device = TaggedMemDevice::restore(
            &snapshot.device,
            Box::new(mapper),
            irq.clone(),
            clock.clone(),
            Some(vm.memory()),
        )?;
        // A per-extent backing no extent uses (one registered for an offer not yet made, or
        // whose last extent went just before the snapshot) would otherwise stay open for the
        // VM's life: the device reports a source unused only when its last extent leaves.
        entries.retain(|id, lifetime| {
            *lifetime != BackingLifetime::PerExtent
                || device.source_in_use(*id)
                || vm.mapper().lock().unregister_backing(*id).is_err()
        });
        let mut transport = MmioTransport::with_interrupt(device, vm.memory(), &irq);
        transport.restore_transport_state(&snapshot.transport)?;
        // Created where the guest stopped; restoring its registers sets everything else.
        let mut vcpu = vm.create_vcpu(snapshot.vcpu.regs.rip, layout::BOOT_STACK_TOP)?;
        vcpu.restore_state(&snapshot.vcpu)?;
        vm.console().push(snapshot.console.as_bytes());
        for d in devices {
            d.attach(&vm)?;
        }
        let config = VmmConfig {
            vm: snapshot.vm.clone(),
            device: snapshot.device.config.clone(),
            ..config
        };
        Vmm::assemble(
            config,
            Parts {
                vm,
                clock,
                vcpu,
                transport,
                backings: entries,
                linux: None,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::BootMemory;
    use tagmem_device::{MapperError, Mapping, MemoryMapper, MonotonicClock, NoopNotifier};

    struct NoMapper;
    impl MemoryMapper for NoMapper {
        fn map(&mut self, _m: &Mapping) -> Result<(), MapperError> {
            Ok(())
        }
        fn unmap(&mut self, _m: &Mapping) -> Result<(), MapperError> {
            Ok(())
        }
    }

    #[test]
    fn restore_rejects_boot_ram_of_the_wrong_size_before_touching_kvm() {
        let device = TaggedMemDevice::<BootMemory>::new(
            VmmConfig::default().device,
            Box::new(NoMapper),
            Arc::new(NoopNotifier),
            Arc::new(MonotonicClock::default()),
        )
        .unwrap();
        let snap = VmSnapshot {
            vm: VmConfig::default(),
            boot_ram: vec![0; 4096],
            vcpu: VcpuState::default(),
            transport: MmioTransportState::default(),
            device: device.snapshot(),
            backings: Vec::new(),
            console: String::new(),
        };
        let err = Vmm::restore(VmmConfig::default(), &snap).unwrap_err();
        assert!(matches!(err, VmmError::Snapshot(_)), "{err}");
    }
}

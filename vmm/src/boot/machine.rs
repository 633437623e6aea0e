//! Assembles the machine a Linux guest boots on: a bare [`Vm`] with the in-kernel irqchip and
//! PIT, the serial console and i8042 on the port-I/O bus, the tagged virtio-mem device behind a
//! virtio-mmio transport whose interrupt is an irqfd and whose queue notifications are
//! ioeventfds, the kernel loaded with those devices on its command line, and the boot vCPU.

use super::linux::{self, LinuxBoot, LinuxBootError, VirtioMmioSlot};
use crate::layout;
use crate::legacy::{IrqTrigger, ResetTrigger, Serial, SerialOutput, I8042};
use crate::mmio::{MmioInterrupt, MmioTransport};
use crate::vcpu::{Vcpu, VcpuError};
use crate::vm::{BootMemory, Vm, VmConfig, VmError};
use std::sync::{Arc, Mutex};
use tagmem_device::{Clock, DeviceConfig, DeviceError, TaggedMemDevice};
use virtio_bindings::virtio_mmio::VIRTIO_MMIO_QUEUE_NOTIFY;
use vm_memory::GuestAddressSpace;
use vmm_sys_util::eventfd::EventFd;

/// Errors assembling the machine.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// VM setup failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// vCPU setup failed.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// The device refused its configuration.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The kernel could not be loaded.
    #[error(transparent)]
    Boot(#[from] LinuxBootError),
    /// An eventfd could not be made.
    #[error("creating an eventfd failed")]
    EventFd(#[source] std::io::Error),
}

/// A queue-notification eventfd and the queue it stands for.
#[derive(Debug)]
pub struct QueueEvent {
    /// Signalled by KVM when the guest writes the queue's index to QueueNotify.
    pub event: EventFd,
    /// The queue.
    pub queue: u16,
}

/// What [`build`] made.
pub struct LinuxMachine<D: tagmem_device::VirtioDevice> {
    /// The VM, with its buses populated.
    pub vm: Vm,
    /// The boot vCPU, about to run the kernel's entry.
    pub vcpu: Vcpu,
    /// The tagged device's transport (not yet on the bus: the caller attaches it at `slot`).
    pub transport: MmioTransport<D>,
    /// Where the transport goes and its interrupt line.
    pub slot: VirtioMmioSlot,
    /// The serial console.
    pub serial: Arc<Mutex<Serial>>,
    /// Queue notifications to serve.
    pub queue_events: Vec<QueueEvent>,
}

fn eventfd() -> Result<EventFd, MachineError> {
    EventFd::new(libc::EFD_NONBLOCK).map_err(MachineError::EventFd)
}

/// Builds the machine for `boot` with the tagged device configured by `device`.
pub fn build(
    vm_config: VmConfig,
    boot: &LinuxBoot,
    device: DeviceConfig,
    mapper: impl FnOnce(&Vm) -> Box<dyn tagmem_device::MemoryMapper>,
    clock: Arc<dyn Clock>,
    serial_out: SerialOutput,
) -> Result<LinuxMachine<TaggedMemDevice<BootMemory>>, MachineError> {
    let mut vm = Vm::create(vm_config)?;
    vm.create_irqchip()?;
    vm.write_gdt()?;

    let serial_irq = eventfd()?;
    vm.register_irqfd(&serial_irq, layout::COM1_IRQ)?;
    let serial = Arc::new(Mutex::new(Serial::new(
        IrqTrigger::new(serial_irq),
        vm.console().clone(),
        serial_out,
    )));
    vm.attach_pio(layout::COM1_PORT, layout::UART_PORTS, serial.clone())?;
    let i8042 = I8042::new(ResetTrigger(vm.reset_request().clone()));
    vm.attach_pio(
        layout::I8042_PORT,
        layout::I8042_PORTS,
        Arc::new(Mutex::new(i8042)),
    )?;

    let slot = VirtioMmioSlot {
        addr: layout::virtio_mmio_addr(0).ok_or(VmError::Layout(layout::LayoutError::IdentityLimit(0)))?,
        size: layout::VIRTIO_MMIO_SIZE,
        irq: layout::VIRTIO_IRQ_BASE,
    };
    let irq = eventfd()?;
    vm.register_irqfd(&irq, slot.irq)?;
    let notifier = Arc::new(MmioInterrupt::new(Some(irq)));
    let dev = TaggedMemDevice::new(device, mapper(&vm), notifier.clone(), clock)?;
    let queues = tagmem_device::VirtioDevice::queue_max_sizes(&dev).len();
    let transport = MmioTransport::with_interrupt(dev, vm.memory(), &notifier);
    let mut queue_events = Vec::with_capacity(queues);
    for q in 0..u16::try_from(queues).unwrap_or(u16::MAX) {
        let event = eventfd()?;
        vm.register_ioevent(
            &event,
            slot.addr + u64::from(VIRTIO_MMIO_QUEUE_NOTIFY),
            Some(u32::from(q)),
        )?;
        queue_events.push(QueueEvent { event, queue: q });
    }

    let ram = vm.config().boot_ram_size;
    let regs = linux::load(&*vm.memory().memory(), ram, boot, &[slot])?;
    let vcpu = vm.create_vcpu_with(regs)?;
    Ok(LinuxMachine {
        vm,
        vcpu,
        transport,
        slot,
        serial,
        queue_events,
    })
}

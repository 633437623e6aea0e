//! What a flat image's machine is built from: a [`Vm`] with identity page tables and the COM1
//! console ([`Vm::new`]), the image copied to its load address, the tagged device behind its
//! transport with an interrupt-status register (no irqchip), and one vCPU at the image's entry.

use super::{Parts, VmmConfig, VmmError};
use crate::boot::FlatImage;
use crate::layout;
use crate::mmio::{MmioInterrupt, MmioTransport};
use crate::vm::Vm;
use std::collections::BTreeMap;
use std::sync::Arc;
use tagmem_device::{GuestClock, TaggedMemDevice};

/// Builds the machine that runs `image`.
pub(super) fn parts(config: &VmmConfig, image: &FlatImage) -> Result<Parts, VmmError> {
    let mut vm = Vm::new(config.vm.clone())?;
    vm.load_image(image.load_addr(), image.bytes())?;
    let irq = Arc::new(MmioInterrupt::new(None));
    let clock = Arc::new(GuestClock::new(config.clock.clone()));
    let device = TaggedMemDevice::new(
        config.device.clone(),
        Box::new(vm.mapper()),
        irq.clone(),
        clock.clone(),
    )?;
    let transport = MmioTransport::with_interrupt(device, vm.memory(), &irq);
    let vcpu = vm.create_vcpu(image.entry(), layout::BOOT_STACK_TOP)?;
    Ok(Parts {
        vm,
        clock,
        vcpu,
        transport,
        backings: BTreeMap::new(),
        linux: None,
    })
}

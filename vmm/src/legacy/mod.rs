//! PC legacy devices a Linux guest expects on its port-I/O bus: a 16550 serial console and the
//! i8042 controller whose reset line reboots the machine. Both wrap `vm-superio`.

mod i8042;
mod serial;

pub use i8042::I8042;
pub use serial::{Serial, SerialInput, SerialOutput};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use vmm_sys_util::eventfd::EventFd;

/// An interrupt line raised by writing an eventfd (registered as an irqfd), or nothing for a
/// device without one (unit tests).
#[derive(Debug)]
pub struct IrqTrigger(Option<EventFd>);

impl IrqTrigger {
    /// Raises interrupts by writing `event`.
    pub fn new(event: EventFd) -> Self {
        IrqTrigger(Some(event))
    }

    /// A trigger wired to nothing.
    pub fn none() -> Self {
        IrqTrigger(None)
    }
}

impl vm_superio::Trigger for IrqTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> Result<(), Self::E> {
        match &self.0 {
            Some(e) => e.write(1),
            None => Ok(()),
        }
    }
}

/// Sets a flag the vCPU checks after each port write: the guest asked for a reset.
#[derive(Debug, Clone)]
pub struct ResetTrigger(pub Arc<AtomicBool>);

impl vm_superio::Trigger for ResetTrigger {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.store(true, Ordering::SeqCst);
        Ok(())
    }
}

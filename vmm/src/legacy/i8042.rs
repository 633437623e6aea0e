//! The i8042 keyboard controller, reduced to what a VM needs: the CPU-reset command (0xfe on
//! port 0x64) that Linux's `reboot=k` uses.

use super::ResetTrigger;
use crate::bus::BusDevice;

/// The i8042 controller on the port-I/O bus at 0x60..=0x64.
#[derive(Debug)]
pub struct I8042(vm_superio::I8042Device<ResetTrigger>);

impl I8042 {
    /// A controller that fires `reset` when the guest resets the CPU through it.
    pub fn new(reset: ResetTrigger) -> Self {
        I8042(vm_superio::I8042Device::new(reset))
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = u8::try_from(offset).map_or(0xff, |o| self.0.read(o));
        data.fill(v);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Ok(offset) = u8::try_from(offset) else { return };
        for &b in data {
            // The trigger cannot fail.
            let _ = self.0.write(offset, b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[test]
    fn reset_command_fires_the_trigger() {
        let flag = Arc::new(AtomicBool::new(false));
        let mut d = I8042::new(ResetTrigger(flag.clone()));
        d.write(0, &[0xfe]);
        d.write(4, &[0xaa]);
        assert!(
            !flag.load(Ordering::SeqCst),
            "only 0xfe on the command port resets"
        );
        d.write(4, &[0xfe]);
        assert!(flag.load(Ordering::SeqCst));
    }
}

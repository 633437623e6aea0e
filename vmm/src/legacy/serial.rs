//! A 16550 UART (`vm-superio`) as the guest's serial console: output goes to stdout, a file or
//! nowhere, and is also collected in a [`Console`] the host can read; input comes from the host
//! ([`SerialInput`]) through the receive FIFO.
//!
//! Host input is buffered without bound and fed into the 16-byte FIFO as the guest drains it: on
//! every access the guest makes, the FIFO is topped up from the buffer (raising the
//! received-data interrupt again), so no byte is dropped however fast the host writes.

use super::IrqTrigger;
use crate::bus::{BusDevice, Console};
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};
use vm_superio::serial::NoEvents;

/// Where serial output goes besides the [`Console`].
#[derive(Debug)]
pub enum SerialOutput {
    /// The VMM's standard output.
    Stdout,
    /// A file (created or truncated).
    File(File),
    /// Only the [`Console`].
    Null,
}

/// The UART's transmit side: the console buffer plus the configured sink.
#[derive(Debug)]
pub struct SerialWriter {
    console: Arc<Console>,
    sink: SerialOutput,
}

impl Write for SerialWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.console.push(buf);
        match &mut self.sink {
            SerialOutput::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(buf)?;
                // Prompts end without a newline: flush every write.
                out.flush()?;
            }
            SerialOutput::File(f) => f.write_all(buf)?,
            SerialOutput::Null => {}
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.sink {
            SerialOutput::Stdout => io::stdout().flush(),
            SerialOutput::File(f) => f.flush(),
            SerialOutput::Null => Ok(()),
        }
    }
}

/// A 16550 serial port on the port-I/O bus (8 ports).
#[derive(Debug)]
pub struct Serial {
    uart: vm_superio::Serial<IrqTrigger, NoEvents, SerialWriter>,
    pending: VecDeque<u8>,
}

impl Serial {
    /// A UART raising `irq`, writing to `console` and `sink`.
    pub fn new(irq: IrqTrigger, console: Arc<Console>, sink: SerialOutput) -> Self {
        Serial {
            uart: vm_superio::Serial::new(irq, SerialWriter { console, sink }),
            pending: VecDeque::new(),
        }
    }

    /// Queues host input for the guest.
    pub fn push_input(&mut self, bytes: &[u8]) {
        self.pending.extend(bytes);
        self.fill_fifo();
    }

    /// Host input not yet in the receive FIFO.
    pub fn pending_input(&self) -> usize {
        self.pending.len()
    }

    fn fill_fifo(&mut self) {
        let room = self.uart.fifo_capacity().min(self.pending.len());
        if room == 0 {
            return;
        }
        let chunk: Vec<u8> = self.pending.iter().take(room).copied().collect();
        // An error means the interrupt eventfd could not be written (its counter is saturated,
        // so an interrupt is pending anyway) or the FIFO is full (nothing was taken).
        let taken = match self.uart.enqueue_raw_bytes(&chunk) {
            Ok(n) => n,
            Err(vm_superio::serial::Error::Trigger(_)) => chunk.len(),
            Err(_) => 0,
        };
        self.pending.drain(..taken);
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = u8::try_from(offset).map_or(0xff, |o| self.uart.read(o));
        data.fill(v);
        self.fill_fifo();
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Ok(offset) = u8::try_from(offset) else { return };
        for &b in data {
            // Errors are failed interrupt or sink writes; the guest's byte is consumed either way.
            let _ = self.uart.write(offset, b);
        }
        self.fill_fifo();
    }
}

/// The host's handle for typing into the guest's serial console.
#[derive(Clone, Debug)]
pub struct SerialInput(Arc<Mutex<Serial>>);

impl SerialInput {
    /// A handle on `serial`.
    pub fn new(serial: Arc<Mutex<Serial>>) -> Self {
        SerialInput(serial)
    }

    /// Queues `bytes` for the guest to read.
    pub fn push(&self, bytes: &[u8]) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push_input(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RBR: u64 = 0;
    const IER: u64 = 1;
    const LSR: u64 = 5;
    const LSR_DATA_READY: u8 = 1;

    fn read(s: &mut Serial, off: u64) -> u8 {
        let mut b = [0u8];
        s.read(off, &mut b);
        b[0]
    }

    #[test]
    fn output_reaches_the_console() {
        let console = Arc::new(Console::default());
        let mut s = Serial::new(IrqTrigger::none(), console.clone(), SerialOutput::Null);
        s.write(0, b"Linux version 6.12\n");
        assert_eq!(console.lines(), vec!["Linux version 6.12"]);
    }

    #[test]
    fn input_longer_than_the_fifo_arrives_whole_and_in_order() {
        let console = Arc::new(Console::default());
        let mut s = Serial::new(IrqTrigger::none(), console, SerialOutput::Null);
        s.write(IER, &[1]);
        let input: Vec<u8> = (0..100u8).collect();
        s.push_input(&input);
        assert!(s.pending_input() > 0, "the FIFO holds fewer than 100 bytes");
        let mut got = Vec::new();
        while read(&mut s, LSR) & LSR_DATA_READY != 0 {
            got.push(read(&mut s, RBR));
        }
        assert_eq!(got, input);
        assert_eq!(s.pending_input(), 0);
    }

    #[test]
    fn host_input_raises_the_interrupt() {
        let event = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let console = Arc::new(Console::default());
        let serial = Arc::new(Mutex::new(Serial::new(
            IrqTrigger::new(event.try_clone().unwrap()),
            console,
            SerialOutput::Null,
        )));
        serial.lock().unwrap().write(IER, &[1]);
        assert!(event.read().is_err(), "no interrupt before input");
        SerialInput::new(serial.clone()).push(b"a");
        assert!(event.read().unwrap() >= 1);
        assert_eq!(read(&mut serial.lock().unwrap(), RBR), b'a');
    }
}

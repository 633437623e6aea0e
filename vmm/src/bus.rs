//! Buses of address windows dispatched to devices (one for MMIO, one for port I/O), the console
//! buffer guest output is collected in, and the transmit-only console flat images write to.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

/// A device that answers MMIO accesses inside its window.
pub trait BusDevice: Send {
    /// Reads `data.len()` bytes at `offset` from the window base.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Writes `data` at `offset` from the window base.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors attaching devices to the bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The window is empty or wraps.
    #[error("empty or wrapping MMIO window {base:#x}+{len:#x}")]
    BadWindow {
        /// Base address.
        base: u64,
        /// Length.
        len: u64,
    },
    /// The window overlaps another device's.
    #[error("MMIO window {base:#x}+{len:#x} overlaps the device at {other:#x}")]
    Overlap {
        /// Base address.
        base: u64,
        /// Length.
        len: u64,
        /// Base of the device already there.
        other: u64,
    },
}

/// A shared device handle on the bus.
pub type SharedBusDevice = Arc<Mutex<dyn BusDevice>>;

struct Window {
    len: u64,
    device: SharedBusDevice,
}

/// Address windows mapped to devices: guest-physical addresses on the MMIO bus, ports on the
/// port-I/O bus.
#[derive(Default)]
pub struct MmioBus {
    windows: RwLock<BTreeMap<u64, Window>>,
}

impl std::fmt::Debug for MmioBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let w = self.windows.read().unwrap_or_else(|e| e.into_inner());
        f.debug_list()
            .entries(w.iter().map(|(b, w)| (*b, w.len)))
            .finish()
    }
}

impl MmioBus {
    /// Attaches `device` at `[base, base + len)`.
    pub fn insert(&self, base: u64, len: u64, device: SharedBusDevice) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::BadWindow { base, len })?;
        let mut windows = self.windows.write().unwrap_or_else(|e| e.into_inner());
        if let Some((&other, w)) = windows.range(..end).next_back() {
            if other + w.len > base {
                return Err(BusError::Overlap { base, len, other });
            }
        }
        windows.insert(base, Window { len, device });
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(u64, SharedBusDevice)> {
        let windows = self.windows.read().unwrap_or_else(|e| e.into_inner());
        let (&base, w) = windows.range(..=addr).next_back()?;
        (addr - base < w.len).then(|| (addr - base, w.device.clone()))
    }

    /// Dispatches a read; `false` if no device claims `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        let Some((offset, dev)) = self.find(addr) else {
            return false;
        };
        dev.lock().unwrap_or_else(|e| e.into_inner()).read(offset, data);
        true
    }

    /// Dispatches a write; `false` if no device claims `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        let Some((offset, dev)) = self.find(addr) else {
            return false;
        };
        dev.lock().unwrap_or_else(|e| e.into_inner()).write(offset, data);
        true
    }
}

/// Console bytes the guest wrote to the console port.
#[derive(Debug, Default)]
pub struct Console {
    out: Mutex<ConsoleBuf>,
    lines_added: Condvar,
}

#[derive(Debug, Default)]
struct ConsoleBuf {
    bytes: Vec<u8>,
    /// Offset just past each `\n` in `bytes`.
    line_ends: Vec<usize>,
}

impl Console {
    fn buf(&self) -> std::sync::MutexGuard<'_, ConsoleBuf> {
        self.out.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends guest output.
    pub fn push(&self, bytes: &[u8]) {
        let mut b = self.buf();
        let base = b.bytes.len();
        b.bytes.extend_from_slice(bytes);
        let before = b.line_ends.len();
        for (i, &c) in bytes.iter().enumerate() {
            if c == b'\n' {
                b.line_ends.push(base + i + 1);
            }
        }
        if b.line_ends.len() != before {
            self.lines_added.notify_all();
        }
    }

    /// Waits up to `timeout` for a complete line, from the `first`-th on, that `want` accepts;
    /// returns its index and text, or `None` on timeout.
    pub fn wait_line(
        &self,
        first: usize,
        timeout: Duration,
        mut want: impl FnMut(&str) -> bool,
    ) -> Option<(usize, String)> {
        let deadline = Instant::now() + timeout;
        let mut next = first;
        let mut b = self.buf();
        loop {
            while next < b.line_ends.len() {
                let start = if next == 0 { 0 } else { b.line_ends[next - 1] };
                let line = String::from_utf8_lossy(&b.bytes[start..b.line_ends[next]]);
                let line = line.trim_end_matches(['\r', '\n']).to_string();
                if want(&line) {
                    return Some((next, line));
                }
                next += 1;
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            b = self
                .lines_added
                .wait_timeout(b, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Everything written so far, lossily decoded.
    pub fn contents(&self) -> String {
        String::from_utf8_lossy(&self.buf().bytes).into_owned()
    }

    /// Complete lines written so far (a trailing partial line stays out).
    pub fn lines(&self) -> Vec<String> {
        self.lines_from(0)
    }

    /// Number of complete lines written so far.
    pub fn line_count(&self) -> usize {
        self.buf().line_ends.len()
    }

    /// Complete lines from the `first`-th on (0-based).
    pub fn lines_from(&self, first: usize) -> Vec<String> {
        let b = self.buf();
        let Some(&end) = b.line_ends.last() else {
            return Vec::new();
        };
        if first >= b.line_ends.len() {
            return Vec::new();
        }
        let start = match first.checked_sub(1) {
            Some(prev) => b.line_ends[prev],
            None => 0,
        };
        String::from_utf8_lossy(&b.bytes[start..end])
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// Line-status register offset of a 16550 UART.
const UART_LSR: u64 = 5;
/// Line status: transmit holding register and transmitter empty.
const LSR_TX_EMPTY: u8 = 0x60;

/// A transmit-only UART for flat images: bytes written to its data register go to a
/// [`Console`], its line status always reads "transmitter empty", other registers read as
/// all-ones. (Linux guests get a full 16550, [`crate::legacy::Serial`].)
#[derive(Debug)]
pub struct DebugConsole {
    console: Arc<Console>,
}

impl DebugConsole {
    /// A console writing into `console`.
    pub fn new(console: Arc<Console>) -> Self {
        DebugConsole { console }
    }
}

impl BusDevice for DebugConsole {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(if offset == UART_LSR { LSR_TX_EMPTY } else { 0xff });
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 {
            self.console.push(data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(u8::try_from(offset & 0xff).unwrap());
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatch_and_overlap() {
        let bus = MmioBus::default();
        let dev = Arc::new(Mutex::new(Echo(Vec::new())));
        bus.insert(0x1000, 0x100, dev.clone()).unwrap();
        assert!(matches!(
            bus.insert(0x10ff, 1, dev.clone()),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(0xf00, 0x101, dev.clone()),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(u64::MAX, 2, dev.clone()),
            Err(BusError::BadWindow { .. })
        ));
        bus.insert(0x1100, 0x100, dev.clone()).unwrap();
        let mut b = [0u8; 2];
        assert!(bus.read(0x1010, &mut b));
        assert_eq!(b, [0x10, 0x10]);
        assert!(!bus.read(0x1200, &mut b));
        assert!(bus.write(0x1104, &[1]));
        assert_eq!(dev.lock().unwrap().0, vec![(4, vec![1])]);
    }

    #[test]
    fn debug_console_collects_data_register_writes() {
        let c = Arc::new(Console::default());
        let mut d = DebugConsole::new(c.clone());
        d.write(0, b"hi\n");
        d.write(1, b"x");
        let mut lsr = [0u8];
        d.read(UART_LSR, &mut lsr);
        assert_eq!(lsr, [LSR_TX_EMPTY]);
        assert_eq!(c.lines(), vec!["hi"]);
    }

    #[test]
    fn console_lines() {
        let c = Console::default();
        c.push(b"a\nb");
        assert_eq!(c.lines(), vec!["a"]);
        c.push(b"c\n");
        assert_eq!(c.lines(), vec!["a", "bc"]);
        assert_eq!(c.line_count(), 2);
        assert_eq!(c.lines_from(1), vec!["bc"]);
        assert!(c.lines_from(2).is_empty());
    }

    #[test]
    fn wait_line_sees_lines_pushed_by_another_thread() {
        let c = Arc::new(Console::default());
        c.push(b"one\r\n");
        assert_eq!(
            c.wait_line(0, Duration::ZERO, |l| l == "one"),
            Some((0, "one".into()))
        );
        assert_eq!(c.wait_line(1, Duration::ZERO, |l| l == "one"), None);
        let writer = {
            let c = c.clone();
            std::thread::spawn(move || c.push(b"two\nthree\n"))
        };
        let got = c.wait_line(1, Duration::from_secs(600), |l| l.starts_with("th"));
        writer.join().unwrap();
        assert_eq!(got, Some((2, "three".into())));
    }
}

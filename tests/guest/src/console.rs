//! Console output to the VMM's console port. Each `print!` formats into a line buffer and sends
//! it with one `rep outsb`, which reaches the VMM as one exit instead of one per byte.

use crate::protocol::CONSOLE_PORT;
use core::fmt;

/// Bytes buffered before a flush.
const LINE: usize = 256;

/// A `core::fmt` writer that buffers and flushes to the console port.
pub struct Console {
    buf: [u8; LINE],
    len: usize,
}

impl Console {
    /// An empty buffer.
    pub const fn new() -> Self {
        Console { buf: [0; LINE], len: 0 }
    }

    /// Sends the buffered bytes.
    pub fn flush(&mut self) {
        if self.len == 0 {
            return;
        }
        // SAFETY: `rep outsb` reads `len` bytes from `buf` (which holds at least that many) and
        // writes them to the console port, which only traps to the VMM; DF is clear (ABI).
        unsafe {
            core::arch::asm!("rep outsb", in("dx") CONSOLE_PORT, inout("rsi") self.buf.as_ptr() => _,
                inout("rcx") self.len => _, options(nostack, preserves_flags, readonly))
        };
        self.len = 0;
    }
}

impl fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len == LINE {
                self.flush();
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
        Ok(())
    }
}

/// Prints to the console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {{
        let mut c = $crate::console::Console::new();
        let _ = core::fmt::Write::write_fmt(&mut c, format_args!($($arg)*));
        c.flush();
    }};
}

/// Prints a line to the console.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => {{
        let mut c = $crate::console::Console::new();
        let _ = core::fmt::Write::write_fmt(&mut c, format_args!($($arg)*));
        let _ = core::fmt::Write::write_str(&mut c, "\n");
        c.flush();
    }};
}

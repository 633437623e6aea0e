//! Console output: one `out` per byte to the VMM's console port.

use crate::protocol::CONSOLE_PORT;
use core::fmt;

/// Writer for `core::fmt` over the console port.
pub struct Console;

impl fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            // SAFETY: port I/O to the console port only traps to the VMM; no memory is touched.
            unsafe {
                core::arch::asm!("out dx, al", in("dx") CONSOLE_PORT, in("al") b,
                    options(nomem, nostack, preserves_flags))
            };
        }
        Ok(())
    }
}

/// Prints to the console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {{
        let _ = core::fmt::Write::write_fmt(&mut $crate::console::Console, format_args!($($arg)*));
    }};
}

/// Prints a line to the console.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => {{ $crate::print!($($arg)*); $crate::print!("\n"); }};
}

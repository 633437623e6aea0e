//! Bare-metal test guest for the tagmem reference VMM.
//!
//! Runs in 64-bit long mode as set up by the VMM (identity-mapped 2 MiB pages, flat segments, no
//! interrupts). It prints to the console port, then executes commands the VMM queues in the
//! test-control MMIO device and reports each result as one parseable console line.
#![no_std]
#![no_main]

extern crate alloc;
// Linked now so the guest keeps building against the reference driver.
use tagmem_driver as _;

mod console;
mod heap;
mod idt;
mod mem;
#[allow(dead_code)]
mod protocol;

use alloc::vec::Vec;
use core::ptr;
use protocol::*;

core::arch::global_asm!(
    ".section .text._start, \"ax\", @progbits",
    ".global _start",
    "_start:",
    // The VMM sets RSP; make it ABI-aligned before the first call.
    "    and rsp, -16",
    "    call {main}",
    "2:  hlt",
    "    jmp 2b",
    main = sym guest_main,
);

fn control_read(reg: u64) -> u64 {
    // SAFETY: CONTROL_BASE is identity mapped by the VMM's page tables and backed by no memslot,
    // so the access traps to the VMM's test-control device; it has no effect on guest memory.
    unsafe { ptr::read_volatile((CONTROL_BASE + reg) as *const u64) }
}

fn hlt() {
    // SAFETY: `hlt` only stops the vCPU until the VMM resumes it; it touches no memory.
    unsafe { core::arch::asm!("hlt", options(nomem, nostack, preserves_flags)) };
}

/// Byte sum and the first up-to-8 bytes of a range, as the `READ` line reports them.
#[derive(Default)]
struct Digest {
    sum: u64,
    first: [u8; 8],
    nfirst: usize,
}

impl Digest {
    fn add(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.sum = self.sum.wrapping_add(u64::from(b));
            if self.nfirst < self.first.len() {
                self.first[self.nfirst] = b;
                self.nfirst += 1;
            }
        }
    }
}

/// Reads `len` bytes at `gpa` with volatile loads, 8 bytes at a time where aligned, so an unbacked
/// range costs one VMM exit per 8 bytes.
fn read_range(gpa: u64, len: u64) -> Digest {
    let mut d = Digest::default();
    let mut off = 0u64;
    while off < len {
        let addr = gpa.wrapping_add(off);
        if addr % 8 == 0 && len - off >= 8 {
            // SAFETY: the VMM's page tables identity-map the range the test asked for; a GPA with
            // no memslot traps to the VMM, one outside the tables faults into the IDT handler,
            // which reports it. Nothing in this program lives there.
            let v = unsafe { ptr::read_volatile(addr as *const u64) };
            d.add(&v.to_le_bytes());
            off += 8;
        } else {
            // SAFETY: as above, for one byte.
            let v = unsafe { ptr::read_volatile(addr as *const u8) };
            d.add(&[v]);
            off += 1;
        }
    }
    d
}

/// Fills `len` bytes at `gpa` with `byte` using volatile stores.
fn write_range(gpa: u64, len: u64, byte: u8) {
    for off in 0..len {
        // SAFETY: the test asked for this range outside the guest's own image, stack and heap
        // (it lies in memory the VMM mapped for the test, or in none); see `read_range`.
        unsafe { ptr::write_volatile(gpa.wrapping_add(off) as *mut u8, byte) };
    }
}

extern "C" fn guest_main() -> ! {
    idt::install();
    println!("HELLO tagmem test guest");
    let magic = control_read(REG_MAGIC);
    if magic != CONTROL_MAGIC {
        println!("FAULT control magic={:#x}", magic);
    }
    loop {
        let cmd = control_read(REG_COMMAND);
        let (a0, a1, a2) = (control_read(REG_ARG0), control_read(REG_ARG1), control_read(REG_ARG2));
        match cmd {
            CMD_IDLE => hlt(),
            CMD_READ => {
                let d = read_range(a0, a1);
                print!("READ gpa={:#x} len={} sum={:#x} first=", a0, a1, d.sum);
                for b in &d.first[..d.nfirst] {
                    print!("{:02x}", b);
                }
                println!();
            }
            CMD_WRITE => {
                // Truncation intended: the byte value travels in the low 8 bits of arg2.
                let byte = (a2 & 0xff) as u8;
                write_range(a0, a1, byte);
                println!("WROTE gpa={:#x} len={} byte={:#04x}", a0, a1, byte);
            }
            CMD_ALLOC => {
                let Ok(n) = usize::try_from(a0) else {
                    println!("FAULT alloc len={} too large", a0);
                    continue;
                };
                let mut v: Vec<u8> = Vec::new();
                if v.try_reserve_exact(n).is_err() {
                    println!("ALLOC len={} failed", n);
                    continue;
                }
                v.extend((0..n).map(|i| (i % 251) as u8));
                let sum = v.iter().fold(0u64, |s, &b| s.wrapping_add(u64::from(b)));
                drop(v);
                println!("ALLOC len={} sum={:#x}", n, sum);
            }
            CMD_STOP => {
                println!("STOP");
                loop {
                    hlt();
                }
            }
            other => println!("FAULT unknown command={:#x}", other),
        }
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    println!("FAULT panic: {}", info);
    loop {
        hlt();
    }
}

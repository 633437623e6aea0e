//! An IDT for the 32 CPU exceptions: each reports `FAULT vector=.. rip=.. cr2=..` on the console
//! and halts, so a bad access shows up as a line instead of a triple fault.

use core::arch::{asm, global_asm};

macro_rules! stubs {
    ($($n:literal),*) => {
        global_asm!(
            ".section .text.exc_stubs, \"ax\", @progbits",
            ".global exc_stub_table",
            ".p2align 4",
            $(
                concat!(".p2align 4"),
                concat!("exc_stub_", stringify!($n), ":"),
                concat!("    push ", stringify!($n)),
                "    jmp exc_common",
            )*
            "exc_common:",
            "    mov rdi, [rsp]",
            "    lea rsi, [rsp + 8]",
            "    and rsp, -16",
            "    call {handler}",
            "3:  hlt",
            "    jmp 3b",
            ".section .rodata.exc_stub_table, \"a\", @progbits",
            ".p2align 3",
            "exc_stub_table:",
            $( concat!("    .quad exc_stub_", stringify!($n)), )*
            handler = sym exception,
        );
    };
}

stubs!(
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25,
    26, 27, 28, 29, 30, 31
);

extern "C" {
    static exc_stub_table: [u64; 32];
}

#[repr(C, packed)]
struct IdtPointer {
    limit: u16,
    base: u64,
}

static mut IDT: [[u64; 2]; 32] = [[0; 2]; 32];

/// Vectors for which the CPU pushes an error code before RIP.
fn has_error_code(vector: u64) -> bool {
    matches!(vector, 8 | 10..=14 | 17 | 21 | 29 | 30)
}

extern "C" fn exception(vector: u64, frame: *const u64) -> ! {
    let cr2: u64;
    // SAFETY: reading CR2 has no side effects; the guest runs at CPL 0.
    unsafe { asm!("mov {}, cr2", out(reg) cr2, options(nomem, nostack, preserves_flags)) };
    let rip_slot = if has_error_code(vector) { 1 } else { 0 };
    // SAFETY: `frame` points at the interrupt frame the CPU pushed (after our vector push), which
    // holds RIP at index 0, or at 1 when an error code precedes it.
    let rip = unsafe { frame.add(rip_slot).read() };
    crate::println!("FAULT vector={} rip={:#x} cr2={:#x}", vector, rip, cr2);
    loop {
        // SAFETY: halting touches no memory.
        unsafe { asm!("hlt", options(nomem, nostack, preserves_flags)) };
    }
}

/// Fills and loads the IDT. The code segment selector is the VMM's 64-bit code segment (0x8).
pub fn install() {
    // SAFETY: single vCPU, interrupts off, called once before anything can fault: nothing else
    // accesses IDT concurrently. The stub table is a 32-entry array defined in `global_asm!`.
    unsafe {
        let idt = &mut *core::ptr::addr_of_mut!(IDT);
        for (i, entry) in idt.iter_mut().enumerate() {
            let h = exc_stub_table[i];
            let low = (h & 0xffff) | (0x8 << 16) | (0x8e00 << 32) | ((h >> 16) & 0xffff) << 48;
            *entry = [low, h >> 32];
        }
        let ptr = IdtPointer { limit: (core::mem::size_of_val(idt) - 1) as u16, base: idt.as_ptr() as u64 };
        asm!("lidt [{}]", in(reg) &ptr, options(readonly, nostack, preserves_flags));
    }
}

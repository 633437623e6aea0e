// A minimal static ELF64 image for x86-64, for tests of the kernel loader: one `PT_LOAD`
// segment holding `code` at physical (and virtual) address `paddr`, entered at its start.

// The ELF bytes.
pub fn build(paddr: u64, code: &[u8]) -> Vec<u8> {
    const EHDR: u16 = 0x40;
    const PHDR: u16 = 0x38;
    let (ehdr, phdr) = (usize::from(EHDR), usize::from(PHDR));
    let mut e = vec![0u8; ehdr + phdr];
    e[..4].copy_from_slice(b"\x7fELF");
    e[4] = 2; // ELFCLASS64
    e[5] = 1; // little-endian
    e[6] = 1; // EV_CURRENT
    e[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    e[20..24].copy_from_slice(&1u32.to_le_bytes());
    e[24..32].copy_from_slice(&paddr.to_le_bytes()); // e_entry
    e[32..40].copy_from_slice(&u64::from(EHDR).to_le_bytes()); // e_phoff
    e[52..54].copy_from_slice(&EHDR.to_le_bytes()); // e_ehsize
    e[54..56].copy_from_slice(&PHDR.to_le_bytes()); // e_phentsize
    e[56..58].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
    let len = code.len() as u64;
    let ph = &mut e[ehdr..];
    ph[0..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    ph[4..8].copy_from_slice(&5u32.to_le_bytes()); // R + X
    ph[8..16].copy_from_slice(&u64::from(EHDR + PHDR).to_le_bytes()); // p_offset
    ph[16..24].copy_from_slice(&paddr.to_le_bytes()); // p_vaddr
    ph[24..32].copy_from_slice(&paddr.to_le_bytes()); // p_paddr
    ph[32..40].copy_from_slice(&len.to_le_bytes()); // p_filesz
    ph[40..48].copy_from_slice(&len.to_le_bytes()); // p_memsz
    ph[48..56].copy_from_slice(&0x1000u64.to_le_bytes()); // p_align
    e.extend_from_slice(code);
    e
}

// 64-bit code that prints the kernel command line (boot_params.hdr.cmd_line_ptr, from RSI)
// and a newline on COM1, then resets the machine through the i8042 (0xfe to port 0x64).
pub const PRINT_CMDLINE_AND_RESET: &[u8] = &[
    0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
    0x8b, 0xb6, 0x28, 0x02, 0x00, 0x00, // mov esi, [rsi + 0x228]
    0x8a, 0x06, // l: mov al, [rsi]
    0x84, 0xc0, // test al, al
    0x74, 0x06, // jz done
    0xee, // out dx, al
    0x48, 0xff, 0xc6, // inc rsi
    0xeb, 0xf4, // jmp l
    0xb0, 0x0a, 0xee, // done: mov al, '\n'; out dx, al
    0xb0, 0xfe, 0xe6, 0x64, // mov al, 0xfe; out 0x64, al
    0xf4, // hlt
    0xeb, 0xfd, // jmp hlt
];

// Like PRINT_CMDLINE_AND_RESET, but halts (interrupts off) instead of resetting: the VM
// stays up until the VMM stops it.
pub const PRINT_CMDLINE_AND_HALT: &[u8] = &[
    0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
    0x8b, 0xb6, 0x28, 0x02, 0x00, 0x00, // mov esi, [rsi + 0x228]
    0x8a, 0x06, // l: mov al, [rsi]
    0x84, 0xc0, // test al, al
    0x74, 0x06, // jz done
    0xee, // out dx, al
    0x48, 0xff, 0xc6, // inc rsi
    0xeb, 0xf4, // jmp l
    0xb0, 0x0a, 0xee, // done: mov al, '\n'; out dx, al
    0xf4, // hlt
    0xeb, 0xfd, // jmp hlt
];

// Loads an empty IDT (limit 0) and raises #UD: the #UD cannot be delivered (#GP), nor can the
// #GP (#DF), nor the #DF: a triple fault, which KVM reports as a shutdown of the VM.
pub const TRIPLE_FAULT: &[u8] = &[
    0x0f, 0x01, 0x1d, 0x02, 0x00, 0x00, 0x00, // lidt [rip + 2] (the 10 zero bytes after ud2)
    0x0f, 0x0b, // ud2
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // IDTR: limit 0, base 0
];

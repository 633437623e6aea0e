//! The Intel MultiProcessor table (MP specification 1.4) that tells a guest without ACPI where
//! its processors, IO-APIC and interrupt pins are. Linux finds the floating pointer by scanning
//! the last KiB of base memory, where it is written ([`layout::EBDA_START`]).
//!
//! Layout: the 16-byte floating pointer, then the configuration table: header, one processor
//! entry per vCPU, the ISA bus, the IO-APIC, one I/O interrupt entry per IO-APIC pin (ISA IRQ
//! `n` to pin `n`, edge-triggered and active high as the ISA bus defines), and the two local
//! interrupt entries (LINT0 ExtINT, LINT1 NMI). Every structure is little-endian and packed; the
//! bytes are assembled here, so no `unsafe` layout casts are needed.

use crate::layout;
use vm_memory::{Bytes, GuestAddress, GuestMemory};

/// Physical address of the local APICs.
pub const APIC_DEFAULT_PHYS_BASE: u32 = 0xfee0_0000;
/// Physical address of the IO-APIC.
pub const IO_APIC_DEFAULT_PHYS_BASE: u32 = 0xfec0_0000;
/// Pins of the IO-APIC (IRQs 0..=23).
pub const IO_APIC_PINS: u8 = 24;
/// Most vCPUs the table can describe within the 1 KiB EBDA.
pub const MAX_CPUS: u8 = 32;

const MPF_SIZE: usize = 16;
const HEADER_SIZE: usize = 44;
const CPU_ENTRY_SIZE: usize = 20;
const SHORT_ENTRY_SIZE: usize = 8;
const SPEC_REV: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IO_APIC_VERSION: u8 = 0x11;
const ENTRY_CPU: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_INTSRC: u8 = 3;
const ENTRY_LINTSRC: u8 = 4;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
const IRQ_INT: u8 = 0;
const IRQ_NMI: u8 = 1;
const IRQ_EXTINT: u8 = 3;
/// Polarity and trigger "conform to the bus" (for ISA: active high, edge).
const IRQ_FLAGS_DEFAULT: u16 = 0;
const ISA_BUS_ID: u8 = 0;
/// CPU signature (family 6) and feature flags (FPU, APIC) of each processor entry.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);

/// Errors building the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MpTableError {
    /// No vCPUs, or more than fit.
    #[error("an MP table describes 1..={MAX_CPUS} vCPUs, not {0}")]
    CpuCount(u8),
    /// Writing guest memory failed.
    #[error("writing the MP table to guest memory failed")]
    Write(#[source] vm_memory::GuestMemoryError),
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b)).wrapping_neg()
}

/// The table's bytes for `cpus` vCPUs when written at `addr`.
pub fn build(cpus: u8, addr: u64) -> Result<Vec<u8>, MpTableError> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(MpTableError::CpuCount(cpus));
    }
    let ioapic_id = cpus;
    let mut t = Vec::with_capacity(HEADER_SIZE + 512);
    // Header; length and checksum are patched below.
    t.extend_from_slice(b"PCMP");
    t.extend_from_slice(&[0, 0]); // length
    t.push(SPEC_REV);
    t.push(0); // checksum
    t.extend_from_slice(b"TAGMEM  "); // OEM id
    t.extend_from_slice(b"000000000000"); // product id
    t.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    t.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    t.extend_from_slice(&0u16.to_le_bytes()); // entry count, patched
    t.extend_from_slice(&APIC_DEFAULT_PHYS_BASE.to_le_bytes());
    t.extend_from_slice(&0u32.to_le_bytes()); // extended table length + checksum, reserved
    debug_assert_eq!(t.len(), HEADER_SIZE);
    let mut count: u16 = 0;
    for cpu in 0..cpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTPROCESSOR } else { 0 };
        t.extend_from_slice(&[ENTRY_CPU, cpu, APIC_VERSION, flags]);
        t.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        t.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        t.extend_from_slice(&[0; 8]);
        count += 1;
    }
    t.extend_from_slice(&[ENTRY_BUS, ISA_BUS_ID]);
    t.extend_from_slice(b"ISA   ");
    t.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IO_APIC_VERSION, 1]);
    t.extend_from_slice(&IO_APIC_DEFAULT_PHYS_BASE.to_le_bytes());
    count += 2;
    for pin in 0..IO_APIC_PINS {
        t.extend_from_slice(&[ENTRY_INTSRC, IRQ_INT]);
        t.extend_from_slice(&IRQ_FLAGS_DEFAULT.to_le_bytes());
        t.extend_from_slice(&[ISA_BUS_ID, pin, ioapic_id, pin]);
        count += 1;
    }
    for (kind, lint) in [(IRQ_EXTINT, 0u8), (IRQ_NMI, 1)] {
        t.extend_from_slice(&[ENTRY_LINTSRC, kind]);
        t.extend_from_slice(&IRQ_FLAGS_DEFAULT.to_le_bytes());
        // Source bus 0, IRQ 0, every local APIC (0xff), this LINT pin.
        t.extend_from_slice(&[ISA_BUS_ID, 0, 0xff, lint]);
        count += 1;
    }
    let len = u16::try_from(t.len()).unwrap_or(u16::MAX);
    t[4..6].copy_from_slice(&len.to_le_bytes());
    t[34..36].copy_from_slice(&count.to_le_bytes());
    t[7] = checksum(&t);

    let table_addr = u32::try_from(addr + MPF_SIZE as u64).unwrap_or(0);
    let mut mpf = Vec::with_capacity(MPF_SIZE);
    mpf.extend_from_slice(b"_MP_");
    mpf.extend_from_slice(&table_addr.to_le_bytes());
    mpf.push(1); // length in 16-byte units
    mpf.push(SPEC_REV);
    mpf.push(0); // checksum
    mpf.extend_from_slice(&[0; 5]); // feature bytes: 0 = a configuration table is present
    mpf[10] = checksum(&mpf);
    mpf.extend_from_slice(&t);
    Ok(mpf)
}

/// Size of the table for `cpus` vCPUs.
pub fn size(cpus: u8) -> usize {
    MPF_SIZE
        + HEADER_SIZE
        + CPU_ENTRY_SIZE * usize::from(cpus)
        + SHORT_ENTRY_SIZE * (2 + usize::from(IO_APIC_PINS) + 2)
}

/// Writes the table for `cpus` vCPUs at [`layout::EBDA_START`].
pub fn write<M: GuestMemory>(mem: &M, cpus: u8) -> Result<(), MpTableError> {
    let bytes = build(cpus, layout::EBDA_START)?;
    mem.write_slice(&bytes, GuestAddress(layout::EBDA_START))
        .map_err(MpTableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |s, x| s.wrapping_add(*x))
    }

    #[test]
    fn checksums_lengths_and_pointer() {
        for cpus in [1, 2, MAX_CPUS] {
            let b = build(cpus, layout::EBDA_START).unwrap();
            assert_eq!(b.len(), size(cpus));
            assert!(b.len() <= 1024, "fits in the EBDA");
            assert_eq!(&b[0..4], b"_MP_");
            assert_eq!(sum(&b[..16]), 0, "floating pointer checksum");
            let ptr = u32::from_le_bytes(b[4..8].try_into().unwrap());
            assert_eq!(u64::from(ptr), layout::EBDA_START + 16);
            let t = &b[16..];
            assert_eq!(&t[0..4], b"PCMP");
            let len = usize::from(u16::from_le_bytes([t[4], t[5]]));
            assert_eq!(len, t.len());
            assert_eq!(sum(t), 0, "configuration table checksum");
            let count = u16::from_le_bytes([t[34], t[35]]);
            assert_eq!(usize::from(count), usize::from(cpus) + 2 + 24 + 2);
        }
    }

    #[test]
    fn entries_name_the_boot_cpu_ioapic_and_every_pin() {
        let b = build(2, layout::EBDA_START).unwrap();
        let t = &b[16 + HEADER_SIZE..];
        assert_eq!(
            &t[0..4],
            &[ENTRY_CPU, 0, APIC_VERSION, CPU_ENABLED | CPU_BOOTPROCESSOR]
        );
        assert_eq!(&t[20..24], &[ENTRY_CPU, 1, APIC_VERSION, CPU_ENABLED]);
        let rest = &t[40..];
        assert_eq!(&rest[0..8], b"\x01\x00ISA   ");
        assert_eq!(&rest[8..12], &[ENTRY_IOAPIC, 2, IO_APIC_VERSION, 1]);
        assert_eq!(
            u32::from_le_bytes(rest[12..16].try_into().unwrap()),
            IO_APIC_DEFAULT_PHYS_BASE
        );
        for pin in 0..24u8 {
            let e = &rest[16 + 8 * usize::from(pin)..][..8];
            assert_eq!(e, &[ENTRY_INTSRC, IRQ_INT, 0, 0, 0, pin, 2, pin]);
        }
    }

    #[test]
    fn cpu_count_is_checked() {
        assert!(build(0, 0).is_err());
        assert!(build(MAX_CPUS + 1, 0).is_err());
    }
}

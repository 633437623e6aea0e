//! Guest-physical memory layout of the reference VMM and the identity page tables it builds.
//!
//! A flat image ([`crate::boot::FlatImage`]):
//!
//! ```text
//! 0x0000_0500  GDT (null, 64-bit code 0x08, data 0x10, TSS 0x18)
//! 0x0000_8000  bottom of the boot stack, which grows down from BOOT_STACK_TOP
//! 0x0020_0000  lowest load address of the image (it must end below the page tables)
//! 0x0100_0000  page tables: PML4, PDPTs, then one PD per GiB identity-mapped (2 MiB pages)
//! ...          rest of boot RAM (memslot 0)
//! 0xd000_0000  MMIO window: room for the caller's devices at its base, virtio-mmio devices
//!              from VIRTIO_MMIO_BASE on
//! 4 GiB ...    free for the device's tagged extents, up to the identity-map limit
//! ```
//!
//! A Linux kernel (x86 64-bit boot protocol, as Firecracker and vmm-reference lay it out):
//!
//! ```text
//! 0x0000_0500  GDT, as above
//! 0x0000_7000  zero page (struct boot_params)
//! 0x0000_8ff0  initial stack pointer
//! 0x0000_9000  page tables: PML4, PDPT, four PDs identity-mapping 4 GiB (2 MiB pages)
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  MP table, in the EBDA (e820 RAM stops here and resumes at 1 MiB)
//! 0x0100_0000  kernel (vmlinux at its physical load address; a bzImage at code32_start)
//! ...          initramfs at the top of boot RAM
//! 0xd000_0000  MMIO window: virtio-mmio devices, announced on the command line
//! 4 GiB ...    the base virtio-mem region (hotplug_size), then the tagged window
//! ```

use vm_memory::{Bytes, GuestAddress, GuestMemory};

/// One KiB.
pub const KIB: u64 = 1 << 10;
/// One MiB.
pub const MIB: u64 = 1 << 20;
/// One GiB.
pub const GIB: u64 = 1 << 30;
/// One TiB.
pub const TIB: u64 = 1 << 40;

/// Guest-physical address of the GDT.
pub const GDT_ADDR: u64 = 0x500;
/// Initial stack pointer for the boot vCPU.
pub const BOOT_STACK_TOP: u64 = 0x20_0000;
/// Lowest address the boot stack may reach.
pub const BOOT_STACK_BOTTOM: u64 = 0x8000;
/// Guest-physical address of the PML4; the other tables follow it.
pub const PAGE_TABLES_ADDR: u64 = 0x100_0000;
/// Default size of boot RAM.
pub const DEFAULT_BOOT_RAM: u64 = 64 * MIB;
/// Default top of the identity map: enough for a multi-TiB window above 4 GiB.
pub const DEFAULT_IDENTITY_LIMIT: u64 = 4 * TIB;
/// Largest identity map: the lower canonical half, where virtual equals physical.
pub const MAX_IDENTITY_LIMIT: u64 = 128 * TIB;
/// Base of the MMIO window (devices without memory behind them).
pub const MMIO_BASE: u64 = 0xd000_0000;
/// End of the MMIO window.
pub const MMIO_END: u64 = 0xe000_0000;
/// Size of one virtio-mmio device window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// First virtio-mmio device window (the test-control device sits at [`MMIO_BASE`]).
pub const VIRTIO_MMIO_BASE: u64 = MMIO_BASE + 0x10_0000;

/// First port of COM1 (the serial console; a flat image writes its console there too).
pub const COM1_PORT: u16 = 0x3f8;
/// Ports a 16550 UART decodes.
pub const UART_PORTS: u16 = 8;
/// Interrupt line of COM1.
pub const COM1_IRQ: u32 = 4;
/// First port of the i8042 keyboard controller (0x60; its command port is 0x64).
pub const I8042_PORT: u16 = 0x60;
/// Ports from [`I8042_PORT`] the controller decodes (0x60..=0x64).
pub const I8042_PORTS: u16 = 5;
/// Interrupt line of the first virtio-mmio device; device `i` uses `VIRTIO_IRQ_BASE + i`.
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// Highest IO-APIC input (the IO-APIC has 24 pins).
pub const MAX_IRQ: u32 = 23;

/// Linux boot: the zero page (`struct boot_params`).
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Linux boot: initial stack pointer.
pub const LINUX_STACK_TOP: u64 = 0x8ff0;
/// Linux boot: page tables (PML4, PDPT, PDs).
pub const LINUX_PAGE_TABLES_ADDR: u64 = 0x9000;
/// Linux boot: how much the boot page tables identity-map.
pub const LINUX_IDENTITY_LIMIT: u64 = 4 * GIB;
/// Linux boot: the kernel command line.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// Linux boot: most command-line bytes, with the terminating NUL (x86 `COMMAND_LINE_SIZE`).
pub const CMDLINE_MAX: usize = 2048;
/// Start of the EBDA, where the MP table goes; e820 RAM below 1 MiB ends here.
pub const EBDA_START: u64 = 0x9_fc00;
/// Start of high memory (1 MiB).
pub const HIMEM_START: u64 = MIB;
/// Where the base virtio-mem region starts (128 MiB aligned, above the MMIO window).
pub const HOTPLUG_BASE: u64 = 4 * GIB;
/// Alignment and granularity of the base virtio-mem region: one Linux memory block.
pub const HOTPLUG_ALIGN: u64 = 128 * MIB;

/// Start of the tagged-extent window the runtime gives the device (it ends at the identity-map
/// limit).
pub const TAGGED_WINDOW_BASE: u64 = 4 * GIB;

/// Start of the device's base virtio-mem region: one 128 MiB memory block between the MMIO window
/// and 4 GiB, which Linux's virtio_mem needs to probe (it is never plugged unless asked for).
pub const BASE_REGION_ADDR: u64 = MMIO_END;

/// Guest-physical address of the `index`-th virtio-mmio device window.
pub fn virtio_mmio_addr(index: u32) -> Option<u64> {
    let addr = u64::from(index)
        .checked_mul(VIRTIO_MMIO_SIZE)?
        .checked_add(VIRTIO_MMIO_BASE)?;
    (addr.checked_add(VIRTIO_MMIO_SIZE)? <= MMIO_END).then_some(addr)
}

const PAGE: u64 = 4096;
const PTE_PRESENT: u64 = 1 << 0;
const PTE_WRITABLE: u64 = 1 << 1;
const PTE_HUGE: u64 = 1 << 7;
const ENTRIES: u64 = 512;
const PD_SPAN: u64 = GIB;
const HUGE_PAGE: u64 = 2 * MIB;

/// Errors laying out boot memory.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// Identity-map limit zero or above [`MAX_IDENTITY_LIMIT`].
    #[error("identity-map limit {0:#x} must be in (0, {MAX_IDENTITY_LIMIT:#x}]")]
    IdentityLimit(u64),
    /// Boot RAM cannot hold the page tables.
    #[error(
        "boot RAM of {ram:#x} bytes cannot hold {tables:#x} bytes of page tables at {PAGE_TABLES_ADDR:#x}"
    )]
    RamTooSmall {
        /// Boot RAM size.
        ram: u64,
        /// Page-table bytes needed.
        tables: u64,
    },
    /// Writing the tables into guest memory failed.
    #[error("writing page tables to guest memory failed")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// Shape of the identity page tables covering `[0, limit)` with 2 MiB pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdentityTables {
    /// Number of page directories (one per GiB).
    pub pds: u64,
    /// Number of PDPTs (one per 512 GiB).
    pub pdpts: u64,
}

impl IdentityTables {
    /// Tables for `[0, limit)`, `limit` rounded up to whole GiB.
    pub fn for_limit(limit: u64) -> Result<Self, LayoutError> {
        if limit == 0 || limit > MAX_IDENTITY_LIMIT {
            return Err(LayoutError::IdentityLimit(limit));
        }
        let pds = limit.div_ceil(PD_SPAN);
        Ok(IdentityTables {
            pds,
            pdpts: pds.div_ceil(ENTRIES),
        })
    }

    /// Bytes the tables take: PML4, PDPTs, PDs.
    pub fn size(&self) -> u64 {
        // Cannot overflow: pds <= 128 Ki for the largest limit.
        (1 + self.pdpts + self.pds) * PAGE
    }

    /// Top of the identity-mapped range.
    pub fn limit(&self) -> u64 {
        self.pds * PD_SPAN
    }

    /// Writes the tables at [`PAGE_TABLES_ADDR`]; returns the PML4 address for CR3.
    pub fn write<M: GuestMemory>(&self, mem: &M, ram_size: u64) -> Result<u64, LayoutError> {
        self.write_at(mem, PAGE_TABLES_ADDR, ram_size)
    }

    /// Writes the tables at `base` (4 KiB aligned); returns the PML4 address for CR3.
    pub fn write_at<M: GuestMemory>(&self, mem: &M, base: u64, ram_size: u64) -> Result<u64, LayoutError> {
        let end = base.checked_add(self.size());
        if base % PAGE != 0 || end.is_none_or(|e| e > ram_size) {
            return Err(LayoutError::RamTooSmall {
                ram: ram_size,
                tables: self.size(),
            });
        }
        let pml4 = base;
        let pdpt_base = pml4 + PAGE;
        let pd_base = pdpt_base + self.pdpts * PAGE;
        let mut table = Vec::with_capacity(usize::try_from(self.size()).unwrap_or(0));
        let mut push = |v: u64| table.extend_from_slice(&v.to_le_bytes());
        for i in 0..ENTRIES {
            push(if i < self.pdpts {
                (pdpt_base + i * PAGE) | PTE_PRESENT | PTE_WRITABLE
            } else {
                0
            });
        }
        for i in 0..self.pdpts * ENTRIES {
            push(if i < self.pds {
                (pd_base + i * PAGE) | PTE_PRESENT | PTE_WRITABLE
            } else {
                0
            });
        }
        for i in 0..self.pds * ENTRIES {
            push((i * HUGE_PAGE) | PTE_PRESENT | PTE_WRITABLE | PTE_HUGE);
        }
        mem.write_slice(&table, GuestAddress(pml4))
            .map_err(LayoutError::Write)?;
        Ok(pml4)
    }
}

/// The GDT the boot vCPU uses: null, 64-bit code, data, and a TSS descriptor slot.
pub const GDT: [u64; 4] = [
    0,
    // Code: base 0, limit 0xfffff, G, L, P, DPL 0, S, type execute/read (accessed).
    0x00af_9b00_0000_ffff,
    // Data: base 0, limit 0xfffff, G, D/B, P, DPL 0, S, type read/write (accessed).
    0x00cf_9300_0000_ffff,
    // TSS (busy), base 0, limit 0x67: only there so TR holds a valid selector.
    0x0000_8b00_0000_0067,
];

/// Selector of the 64-bit code segment.
pub const CODE_SELECTOR: u16 = 0x08;
/// Selector of the data segment.
pub const DATA_SELECTOR: u16 = 0x10;
/// Selector of the TSS.
pub const TSS_SELECTOR: u16 = 0x18;

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn table_sizes() {
        let t = IdentityTables::for_limit(2 * TIB).unwrap();
        assert_eq!((t.pds, t.pdpts), (2048, 4));
        assert_eq!(t.size(), (1 + 4 + 2048) * 4096);
        assert_eq!(IdentityTables::for_limit(GIB + 1).unwrap().limit(), 2 * GIB);
        assert!(IdentityTables::for_limit(0).is_err());
        assert!(IdentityTables::for_limit(MAX_IDENTITY_LIMIT + 1).is_err());
    }

    #[test]
    fn tables_map_identity() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        let t = IdentityTables::for_limit(TIB + 3 * GIB).unwrap();
        let cr3 = t.write(&mem, 64 * MIB).unwrap();
        // Walk the tables for a few addresses.
        for va in [0u64, 0xd000_0000, TIB, TIB + 2 * GIB + 6 * MIB] {
            let e4: u64 = mem.read_obj(GuestAddress(cr3 + ((va >> 39) & 511) * 8)).unwrap();
            let e3: u64 = mem
                .read_obj(GuestAddress((e4 & !0xfff) + ((va >> 30) & 511) * 8))
                .unwrap();
            let e2: u64 = mem
                .read_obj(GuestAddress((e3 & !0xfff) + ((va >> 21) & 511) * 8))
                .unwrap();
            assert_eq!(e2 & !0xfff, va & !(HUGE_PAGE - 1));
            assert_eq!(e2 & 0x83, 0x83);
        }
        let small = IdentityTables::for_limit(64 * TIB).unwrap();
        assert!(matches!(
            small.write(&mem, 64 * MIB),
            Err(LayoutError::RamTooSmall { .. })
        ));
    }

    #[test]
    fn virtio_windows() {
        assert_eq!(virtio_mmio_addr(0), Some(VIRTIO_MMIO_BASE));
        assert_eq!(virtio_mmio_addr(1), Some(VIRTIO_MMIO_BASE + VIRTIO_MMIO_SIZE));
        assert_eq!(virtio_mmio_addr(u32::MAX), None);
    }
}

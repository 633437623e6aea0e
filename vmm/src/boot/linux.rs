//! Loads a Linux kernel (ELF `vmlinux` or `bzImage`) and its initramfs into boot RAM and writes
//! what the x86 64-bit boot protocol asks for: the zero page with the e820 map, the command line
//! (with the virtio-mmio devices named on it), identity page tables, the GDT and the MP table.
//! The vCPU then starts at the kernel's 64-bit entry with RSI pointing at the zero page.
//!
//! Loading and boot parameters use `linux-loader`, as Firecracker, Cloud Hypervisor and
//! vmm-reference do; see [`crate::layout`] for where each piece goes.

use super::mptable::{self, MpTableError};
use crate::layout::{self, IdentityTables, LayoutError};
use crate::vcpu::VcpuBoot;
use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::boot_params;
use linux_loader::loader::{self, load_cmdline, BzImage, Elf, KernelLoader, KernelLoaderResult};
use std::fs::File;
use std::path::{Path, PathBuf};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryBackend};

/// `boot_flag` of the setup header.
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// `header` of the setup header: "HdrS".
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
/// `type_of_loader`: not a registered boot loader.
const KERNEL_LOADER_OTHER: u8 = 0xff;
/// `kernel_alignment` for a relocatable kernel.
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;
/// Offset of the 64-bit entry (`startup_64`) in a bzImage's protected-mode kernel.
const BZIMAGE_64BIT_ENTRY: u64 = 0x200;
/// e820 type of usable RAM.
const E820_RAM: u32 = 1;
/// Alignment of the initramfs.
const INITRD_ALIGN: u64 = 4096;

/// The command line used when none is given: the serial console, reboot through the i8042 (the
/// VMM exits), and only the one UART the VMM has probed (probing absent ones is slow where the
/// guest runs in an instruction emulator).
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 8250.nr_uarts=1";

/// What to boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinuxBoot {
    /// The kernel: an ELF `vmlinux` or a `bzImage`.
    pub kernel: PathBuf,
    /// An initramfs (cpio archive, compressed or not).
    pub initramfs: Option<PathBuf>,
    /// The kernel command line; the VMM appends its `virtio_mmio.device=` entries.
    pub cmdline: String,
    /// vCPUs the MP table describes.
    pub cpus: u8,
}

impl LinuxBoot {
    /// Boots `kernel` with the default command line and no initramfs.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        LinuxBoot {
            kernel: kernel.into(),
            initramfs: None,
            cmdline: DEFAULT_CMDLINE.to_string(),
            cpus: 1,
        }
    }
}

/// A virtio-mmio device as the kernel command line announces it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioMmioSlot {
    /// Base of its register window.
    pub addr: u64,
    /// Size of the window.
    pub size: u64,
    /// Its interrupt line.
    pub irq: u32,
}

/// Errors loading a kernel.
#[derive(Debug, thiserror::Error)]
pub enum LinuxBootError {
    /// The kernel or initramfs cannot be opened or read.
    #[error("{}: {source}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel is neither a loadable ELF nor a bzImage.
    #[error("{}: not a loadable kernel: {reason}", path.display())]
    Kernel {
        /// The file.
        path: PathBuf,
        /// linux-loader's complaint.
        reason: String,
    },
    /// The initramfs does not fit between the kernel and the end of boot RAM.
    #[error("{}: an initramfs of {size:#x} bytes does not fit in boot RAM above the kernel (end {kernel_end:#x}, RAM {ram:#x}); give more --memory", path.display())]
    InitramfsTooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// End of the kernel image.
        kernel_end: u64,
        /// Boot RAM size.
        ram: u64,
    },
    /// The command line is too long or has a bad character.
    #[error("kernel command line: {0}")]
    Cmdline(String),
    /// Writing the zero page failed.
    #[error("writing the boot parameters: {0}")]
    BootParams(String),
    /// Page tables do not fit.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// The MP table could not be written.
    #[error(transparent)]
    MpTable(#[from] MpTableError),
    /// Writing guest memory failed.
    #[error("writing guest memory failed")]
    GuestMemory(#[source] vm_memory::GuestMemoryError),
}

fn open(path: &Path) -> Result<File, LinuxBootError> {
    File::open(path).map_err(|source| LinuxBootError::Open {
        path: path.to_path_buf(),
        source,
    })
}

/// Builds the full command line: `base`, then one `virtio_mmio.device=` per device.
pub fn cmdline(base: &str, devices: &[VirtioMmioSlot]) -> Result<Cmdline, LinuxBootError> {
    let err = |e: linux_loader::cmdline::Error| LinuxBootError::Cmdline(e.to_string());
    let mut c = Cmdline::new(layout::CMDLINE_MAX).map_err(err)?;
    if !base.trim().is_empty() {
        c.insert_str(base.trim()).map_err(err)?;
    }
    for d in devices {
        c.add_virtio_mmio_device(d.size, GuestAddress(d.addr), d.irq, None)
            .map_err(err)?;
    }
    Ok(c)
}

/// Loads the kernel image; returns the loader's result and the 64-bit entry point.
fn load_kernel<M: GuestMemoryBackend>(
    mem: &M,
    path: &Path,
) -> Result<(KernelLoaderResult, u64), LinuxBootError> {
    let bad = |e: loader::Error| LinuxBootError::Kernel {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut f = open(path)?;
    let himem = Some(GuestAddress(layout::HIMEM_START));
    match Elf::load(mem, None, &mut f, himem) {
        Ok(r) => {
            let entry = r.kernel_load.raw_value();
            Ok((r, entry))
        }
        Err(loader::Error::Elf(loader::elf::Error::InvalidElfMagicNumber)) => {
            let r = BzImage::load(mem, None, &mut f, himem).map_err(bad)?;
            let entry = r.kernel_load.raw_value() + BZIMAGE_64BIT_ENTRY;
            Ok((r, entry))
        }
        Err(e) => Err(bad(e)),
    }
}

/// Loads the initramfs at the top of boot RAM; returns (address, size).
fn load_initramfs<M: GuestMemoryBackend>(
    mem: &M,
    path: &Path,
    kernel_end: u64,
    ram: u64,
) -> Result<(u64, u64), LinuxBootError> {
    let mut f = open(path)?;
    let size = f
        .metadata()
        .map_err(|source| LinuxBootError::Open {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    let too_large = || LinuxBootError::InitramfsTooLarge {
        path: path.to_path_buf(),
        size,
        kernel_end,
        ram,
    };
    let addr = ram.checked_sub(size).ok_or_else(too_large)? / INITRD_ALIGN * INITRD_ALIGN;
    if addr < kernel_end || size == 0 {
        return Err(too_large());
    }
    let len = usize::try_from(size).map_err(|_| too_large())?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut f, len)
        .map_err(LinuxBootError::GuestMemory)?;
    Ok((addr, size))
}

fn add_e820(params: &mut boot_params, addr: u64, size: u64) -> Result<(), LinuxBootError> {
    let i = usize::from(params.e820_entries);
    let entry = params
        .e820_table
        .get_mut(i)
        .ok_or_else(|| LinuxBootError::BootParams("e820 table full".into()))?;
    entry.addr = addr;
    entry.size = size;
    entry.r#type = E820_RAM;
    params.e820_entries += 1;
    Ok(())
}

/// The zero page for a kernel loaded as `kernel` with the command line at
/// [`layout::CMDLINE_ADDR`] and an optional initramfs, for `ram` bytes of boot RAM.
pub fn boot_params_for(
    kernel: &KernelLoaderResult,
    cmdline_len: usize,
    initramfs: Option<(u64, u64)>,
    ram: u64,
) -> Result<boot_params, LinuxBootError> {
    let mut params = boot_params::default();
    match kernel.setup_header {
        Some(hdr) => params.hdr = hdr,
        None => {
            params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
            params.hdr.header = KERNEL_HDR_MAGIC;
            params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
        }
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.cmd_line_ptr =
        u32::try_from(layout::CMDLINE_ADDR).map_err(|_| LinuxBootError::Cmdline("address".into()))?;
    params.hdr.cmdline_size =
        u32::try_from(cmdline_len).map_err(|_| LinuxBootError::Cmdline("too long".into()))?;
    if let Some((addr, size)) = initramfs {
        let bad = |_| LinuxBootError::BootParams("initramfs above 4 GiB".into());
        params.hdr.ramdisk_image = u32::try_from(addr).map_err(bad)?;
        params.hdr.ramdisk_size = u32::try_from(size).map_err(bad)?;
    }
    add_e820(&mut params, 0, layout::EBDA_START)?;
    add_e820(&mut params, layout::HIMEM_START, ram - layout::HIMEM_START)?;
    Ok(params)
}

/// Loads everything for `boot` into `mem` (boot RAM of `ram` bytes) with `devices` on the
/// command line; returns the boot vCPU's registers.
pub fn load<M: GuestMemoryBackend + GuestMemory>(
    mem: &M,
    ram: u64,
    boot: &LinuxBoot,
    devices: &[VirtioMmioSlot],
) -> Result<VcpuBoot, LinuxBootError> {
    let (kernel, entry) = load_kernel(mem, &boot.kernel)?;
    let initramfs = boot
        .initramfs
        .as_deref()
        .map(|p| load_initramfs(mem, p, kernel.kernel_end, ram))
        .transpose()?;
    let cmdline = cmdline(&boot.cmdline, devices)?;
    load_cmdline(mem, GuestAddress(layout::CMDLINE_ADDR), &cmdline)
        .map_err(|e| LinuxBootError::Cmdline(e.to_string()))?;
    let len = cmdline
        .as_cstring()
        .map_err(|e| LinuxBootError::Cmdline(e.to_string()))?
        .as_bytes_with_nul()
        .len();
    let params = boot_params_for(&kernel, len, initramfs, ram)?;
    LinuxBootConfigurator::write_bootparams::<M>(
        &BootParams::new::<boot_params>(&params, GuestAddress(layout::ZERO_PAGE_ADDR)),
        mem,
    )
    .map_err(|e| LinuxBootError::BootParams(e.to_string()))?;
    let cr3 = IdentityTables::for_limit(layout::LINUX_IDENTITY_LIMIT)?.write_at(
        mem,
        layout::LINUX_PAGE_TABLES_ADDR,
        ram,
    )?;
    mptable::write(mem, boot.cpus)?;
    Ok(VcpuBoot {
        entry,
        stack_top: layout::LINUX_STACK_TOP,
        cr3,
        boot_params: layout::ZERO_PAGE_ADDR,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use vm_memory::GuestMemoryMmap;

    const RAM: u64 = 64 << 20;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), usize::try_from(RAM).unwrap())]).unwrap()
    }

    #[allow(dead_code)]
    mod mini_elf {
        include!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/linux/mini_elf.rs"));
    }

    fn elf(paddr: u64, code: &[u8]) -> Vec<u8> {
        mini_elf::build(paddr, code)
    }

    fn file(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    #[test]
    fn elf_kernel_initramfs_cmdline_and_zero_page() {
        let m = mem();
        let kernel = file(&elf(0x100_0000, &[0xf4; 64]));
        let initrd = file(&[0x5a; 10_000]);
        let boot = LinuxBoot {
            kernel: kernel.path().into(),
            initramfs: Some(initrd.path().into()),
            cmdline: "console=ttyS0 quiet".into(),
            cpus: 1,
        };
        let dev = VirtioMmioSlot {
            addr: 0xd010_0000,
            size: 0x1000,
            irq: 5,
        };
        let regs = load(&m, RAM, &boot, &[dev]).unwrap();
        assert_eq!(regs.entry, 0x100_0000);
        assert_eq!(regs.boot_params, layout::ZERO_PAGE_ADDR);
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x100_0000)).unwrap(), 0xf4);

        let params: boot_params = m.read_obj(GuestAddress(layout::ZERO_PAGE_ADDR)).unwrap();
        let hdr = params.hdr;
        assert_eq!({ hdr.boot_flag }, KERNEL_BOOT_FLAG_MAGIC);
        assert_eq!({ hdr.type_of_loader }, KERNEL_LOADER_OTHER);
        let (rd, rd_size) = ({ hdr.ramdisk_image }, { hdr.ramdisk_size });
        assert_eq!(rd_size, 10_000);
        assert_eq!(u64::from(rd) % INITRD_ALIGN, 0);
        assert!(u64::from(rd) + 10_000 <= RAM);
        assert_eq!(m.read_obj::<u8>(GuestAddress(u64::from(rd))).unwrap(), 0x5a);

        let size = hdr.cmdline_size;
        let ptr = hdr.cmd_line_ptr;
        let mut line = vec![0u8; usize::try_from(size).unwrap()];
        m.read_slice(&mut line, GuestAddress(u64::from(ptr))).unwrap();
        assert_eq!(
            std::str::from_utf8(&line).unwrap(),
            "console=ttyS0 quiet virtio_mmio.device=4K@0xd0100000:5\0"
        );

        let n = usize::from(params.e820_entries);
        let e820: Vec<(u64, u64, u32)> = params.e820_table[..n]
            .iter()
            .map(|e| ({ e.addr }, { e.size }, { e.r#type }))
            .collect();
        assert_eq!(
            e820,
            vec![
                (0, layout::EBDA_START, E820_RAM),
                (layout::HIMEM_START, RAM - layout::HIMEM_START, E820_RAM)
            ]
        );
        // The MP table sits in the EBDA, outside the RAM the e820 map hands out.
        let sig: [u8; 4] = m.read_obj(GuestAddress(layout::EBDA_START)).unwrap();
        assert_eq!(&sig, b"_MP_");
    }

    #[test]
    fn bzimage_entry_is_startup_64() {
        // A bzImage: setup header at 0x1f1 with "HdrS", protocol 2.15, loaded high; one setup
        // sector, then the protected-mode kernel.
        let mut img = vec![0u8; 2 * 512 + 4096];
        img[0x1f1] = 1; // setup_sects
        img[0x1fe..0x200].copy_from_slice(&KERNEL_BOOT_FLAG_MAGIC.to_le_bytes());
        img[0x202..0x206].copy_from_slice(&KERNEL_HDR_MAGIC.to_le_bytes());
        img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        img[0x211] = 1; // loadflags: LOADED_HIGH
        img[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
        img[1024] = 0xab;
        let kernel = file(&img);
        let m = mem();
        let regs = load(&m, RAM, &LinuxBoot::new(kernel.path()), &[]).unwrap();
        assert_eq!(regs.entry, 0x10_0000 + BZIMAGE_64BIT_ENTRY);
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x10_0000)).unwrap(), 0xab);
        let params: boot_params = m.read_obj(GuestAddress(layout::ZERO_PAGE_ADDR)).unwrap();
        assert_eq!({ params.hdr.header }, KERNEL_HDR_MAGIC);
        assert_eq!({ params.hdr.version }, 0x020f);
    }

    #[test]
    fn bad_inputs_name_the_file() {
        let m = mem();
        let junk = file(b"not a kernel at all, just text");
        let e = load(&m, RAM, &LinuxBoot::new(junk.path()), &[]).unwrap_err();
        assert!(matches!(e, LinuxBootError::Kernel { .. }), "{e}");
        assert!(e.to_string().contains(&junk.path().display().to_string()));

        let missing = LinuxBoot::new("/nonexistent/vmlinux");
        let e = load(&m, RAM, &missing, &[]).unwrap_err();
        assert!(e.to_string().starts_with("/nonexistent/vmlinux: "), "{e}");

        let kernel = file(&elf(0x100_0000, &[0x90; 16]));
        let big = file(&vec![0u8; usize::try_from(RAM).unwrap()]);
        let boot = LinuxBoot {
            initramfs: Some(big.path().into()),
            ..LinuxBoot::new(kernel.path())
        };
        let e = load(&m, RAM, &boot, &[]).unwrap_err();
        assert!(matches!(e, LinuxBootError::InitramfsTooLarge { .. }), "{e}");
    }

    #[test]
    fn overlong_cmdline_is_refused() {
        let long = "x".repeat(layout::CMDLINE_MAX);
        assert!(matches!(cmdline(&long, &[]), Err(LinuxBootError::Cmdline(_))));
    }
}

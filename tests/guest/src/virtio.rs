//! The reference driver's environment on bare metal: [`MmioTransport`] over the virtio-mmio
//! (version 2) registers of the tagged virtio-mem device, and [`DmaWindow`], the driver's DMA
//! region in boot RAM reached through raw pointers (virtual equals physical here).

use crate::protocol::{mmio_reg, VIRTIO_MEM_MMIO_BASE};
use core::cell::UnsafeCell;
use core::ptr;
use tagmem_driver::{DmaMemory, Transport};

/// "virt", the MagicValue of a virtio-mmio device.
const MMIO_MAGIC: u32 = u32::from_le_bytes(*b"virt");
/// The transport version the driver speaks.
const MMIO_VERSION: u32 = 2;

/// Bytes of DMA memory given to the driver (the driver needs at most 32 KiB).
pub const DMA_SIZE: usize = 64 << 10;

#[repr(C, align(4096))]
struct DmaRegion(UnsafeCell<[u8; DMA_SIZE]>);

// SAFETY: only the driver (through `DmaWindow`) and the device touch the region; the guest has
// one vCPU, and the device side follows the virtqueue protocol's ownership rules.
unsafe impl Sync for DmaRegion {}

/// The driver's rings and buffers: in the guest image's zero-initialised data, so in boot RAM.
static DMA_REGION: DmaRegion = DmaRegion(UnsafeCell::new([0; DMA_SIZE]));

/// Reads a 32-bit virtio-mmio register.
fn read32(reg: u64) -> u32 {
    // SAFETY: the register lies in the device's 4 KiB virtio-mmio window (`reg` is one of the
    // `mmio_reg` offsets, all below 0x100, or a config offset the driver bounds), which the
    // VMM's page tables identity-map and no memslot backs: the load traps to the VMM's transport
    // and touches no guest memory. The address is 4-byte aligned as the transport requires.
    unsafe { ptr::read_volatile((VIRTIO_MEM_MMIO_BASE + reg) as *const u32) }
}

/// Writes a 32-bit virtio-mmio register.
fn write32(reg: u64, v: u32) {
    // SAFETY: as in `read32`: a trapping store into the device's register window.
    unsafe { ptr::write_volatile((VIRTIO_MEM_MMIO_BASE + reg) as *mut u32, v) };
}

/// Reads one byte of the device's configuration space.
fn read8(reg: u64) -> u8 {
    // SAFETY: as in `read32`, for one byte of the configuration space (offsets from 0x100).
    unsafe { ptr::read_volatile((VIRTIO_MEM_MMIO_BASE + reg) as *const u8) }
}

/// The virtio-mmio transport of the tagged virtio-mem device.
pub struct MmioTransport(());

impl MmioTransport {
    /// The transport, if a version-2 virtio-mmio device answers at its window.
    pub fn probe() -> Option<Self> {
        (read32(mmio_reg::MAGIC_VALUE) == MMIO_MAGIC && read32(mmio_reg::VERSION) == MMIO_VERSION)
            .then_some(MmioTransport(()))
    }

    /// The device id register.
    pub fn device_id(&self) -> u32 {
        read32(mmio_reg::DEVICE_ID)
    }

    fn select_queue(&mut self, queue: u16) {
        write32(mmio_reg::QUEUE_SEL, u32::from(queue));
    }
}

fn split(v: u64) -> (u32, u32) {
    // Truncation intended: the two halves of a 64-bit value.
    ((v & 0xffff_ffff) as u32, (v >> 32) as u32)
}

impl Transport for MmioTransport {
    fn device_features(&mut self) -> u64 {
        write32(mmio_reg::DEVICE_FEATURES_SEL, 0);
        let lo = read32(mmio_reg::DEVICE_FEATURES);
        write32(mmio_reg::DEVICE_FEATURES_SEL, 1);
        let hi = read32(mmio_reg::DEVICE_FEATURES);
        u64::from(lo) | (u64::from(hi) << 32)
    }

    fn set_driver_features(&mut self, features: u64) {
        let (lo, hi) = split(features);
        write32(mmio_reg::DRIVER_FEATURES_SEL, 0);
        write32(mmio_reg::DRIVER_FEATURES, lo);
        write32(mmio_reg::DRIVER_FEATURES_SEL, 1);
        write32(mmio_reg::DRIVER_FEATURES, hi);
    }

    fn status(&mut self) -> u8 {
        // Truncation intended: the status byte lives in the low 8 bits of the register.
        (read32(mmio_reg::STATUS) & 0xff) as u8
    }

    fn set_status(&mut self, status: u8) {
        write32(mmio_reg::STATUS, u32::from(status));
    }

    fn config_generation(&mut self) -> u32 {
        read32(mmio_reg::CONFIG_GENERATION)
    }

    fn read_config(&mut self, offset: usize, buf: &mut [u8]) {
        let base = mmio_reg::CONFIG + offset as u64;
        let mut i = 0;
        while i < buf.len() {
            let at = base + i as u64;
            if at % 4 == 0 && buf.len() - i >= 4 {
                buf[i..i + 4].copy_from_slice(&read32(at).to_le_bytes());
                i += 4;
            } else {
                buf[i] = read8(at);
                i += 1;
            }
        }
    }

    fn queue_max_size(&mut self, queue: u16) -> u16 {
        self.select_queue(queue);
        u16::try_from(read32(mmio_reg::QUEUE_NUM_MAX)).unwrap_or(u16::MAX)
    }

    fn setup_queue(&mut self, queue: u16, size: u16, desc: u64, avail: u64, used: u64) {
        self.select_queue(queue);
        write32(mmio_reg::QUEUE_NUM, u32::from(size));
        for (reg, addr) in [
            (mmio_reg::QUEUE_DESC_LOW, desc),
            (mmio_reg::QUEUE_AVAIL_LOW, avail),
            (mmio_reg::QUEUE_USED_LOW, used),
        ] {
            let (lo, hi) = split(addr);
            write32(reg, lo);
            write32(reg + 4, hi);
        }
    }

    fn set_queue_ready(&mut self, queue: u16) {
        self.select_queue(queue);
        write32(mmio_reg::QUEUE_READY, 1);
    }

    fn notify(&mut self, queue: u16) {
        write32(mmio_reg::QUEUE_NOTIFY, u32::from(queue));
    }
}

/// The driver's view of [`DMA_REGION`].
pub struct DmaWindow {
    base: u64,
}

impl DmaWindow {
    /// The window over the static DMA region.
    pub fn new() -> Self {
        DmaWindow { base: DMA_REGION.0.get() as u64 }
    }

    /// Guest-physical start of the region (identity mapping: its address).
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Length of the region.
    pub fn len(&self) -> u64 {
        DMA_SIZE as u64
    }

    /// Checks that `[gpa, gpa + len)` lies inside the region; panics (reported as a FAULT line)
    /// otherwise, as the driver only ever uses the region it was given.
    fn check(&self, gpa: u64, len: usize) -> *mut u8 {
        let off = gpa.checked_sub(self.base).expect("DMA access below the region");
        let end = off.checked_add(len as u64).expect("DMA access wraps");
        assert!(end <= DMA_SIZE as u64, "DMA access past the region");
        // Cannot truncate: off < DMA_SIZE.
        DMA_REGION.0.get().cast::<u8>().wrapping_add(off as usize)
    }
}

impl DmaMemory for DmaWindow {
    fn read(&self, gpa: u64, buf: &mut [u8]) {
        let p = self.check(gpa, buf.len());
        for (i, b) in buf.iter_mut().enumerate() {
            // SAFETY: `check` established that `[gpa, gpa + buf.len())` lies inside DMA_REGION,
            // so `p + i` is in bounds for every `i < buf.len()`. Volatile: the device writes the
            // region from another thread of the host.
            *b = unsafe { ptr::read_volatile(p.add(i)) };
        }
    }

    fn write(&self, gpa: u64, data: &[u8]) {
        let p = self.check(gpa, data.len());
        for (i, b) in data.iter().enumerate() {
            // SAFETY: as in `read`: in bounds by `check`; the region belongs to the driver and
            // the device, never to Rust references.
            unsafe { ptr::write_volatile(p.add(i), *b) };
        }
    }
}

//! What the driver needs from its environment: a virtio transport and access to guest memory.
//!
//! The driver never touches hardware itself. A bare-metal guest implements [`Transport`] over
//! virtio-mmio or virtio-pci registers and [`DmaMemory`] over raw pointers into identity-mapped
//! memory; a host-side test implements both in-process (the transport's `notify` can run the
//! device synchronously).

use alloc::rc::Rc;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;

/// Device status bits (VIRTIO 1.2 §2.1).
pub mod status {
    /// The guest has noticed the device.
    pub const ACKNOWLEDGE: u8 = 1;
    /// The guest knows how to drive the device.
    pub const DRIVER: u8 = 2;
    /// The driver is set up and ready to drive the device.
    pub const DRIVER_OK: u8 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u8 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u8 = 64;
    /// The driver gave up on the device.
    pub const FAILED: u8 = 128;
}

/// The virtio transport (MMIO, PCI, or an in-process device) the driver talks through.
pub trait Transport {
    /// Feature bits the device offers (all 64 of them).
    fn device_features(&mut self) -> u64;
    /// Writes the feature bits the driver accepts.
    fn set_driver_features(&mut self, features: u64);
    /// Reads the device status byte.
    fn status(&mut self) -> u8;
    /// Writes the device status byte (0 resets the device).
    fn set_status(&mut self, status: u8);
    /// Reads the configuration generation counter (constant 0 if the transport has none).
    fn config_generation(&mut self) -> u32 {
        0
    }
    /// Reads `buf.len()` bytes of device configuration space starting at byte `offset`.
    fn read_config(&mut self, offset: usize, buf: &mut [u8]);
    /// Largest size the device supports for queue `queue` (0: the queue does not exist).
    fn queue_max_size(&mut self, queue: u16) -> u16;
    /// Tells the device the size and ring addresses (guest-physical) of queue `queue`.
    fn setup_queue(&mut self, queue: u16, size: u16, desc: u64, avail: u64, used: u64);
    /// Marks queue `queue` ready for use.
    fn set_queue_ready(&mut self, queue: u16);
    /// Notifies the device that queue `queue` has new available buffers.
    fn notify(&mut self, queue: u16);
    /// Called on every iteration while the driver spins waiting for the device.
    fn wait(&mut self) {
        core::hint::spin_loop();
    }
}

/// How the driver reads and writes guest-physical memory it shares with the device.
///
/// The driver only ever accesses the DMA region it was given; no address it uses comes from the
/// device.
pub trait DmaMemory {
    /// Reads `buf.len()` bytes at guest-physical address `gpa`.
    fn read(&self, gpa: u64, buf: &mut [u8]);
    /// Writes `data` at guest-physical address `gpa`.
    fn write(&self, gpa: u64, data: &[u8]);
    /// Orders the accesses before it against the accesses after it, as seen by the device.
    fn fence(&self) {
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
    }

    /// Reads a little-endian `u16`.
    fn read_le16(&self, gpa: u64) -> u16 {
        let mut b = [0; 2];
        self.read(gpa, &mut b);
        u16::from_le_bytes(b)
    }
    /// Reads a little-endian `u32`.
    fn read_le32(&self, gpa: u64) -> u32 {
        let mut b = [0; 4];
        self.read(gpa, &mut b);
        u32::from_le_bytes(b)
    }
    /// Writes a little-endian `u16`.
    fn write_le16(&self, gpa: u64, v: u16) {
        self.write(gpa, &v.to_le_bytes());
    }
    /// Writes `len` zero bytes at `gpa`.
    fn zero(&self, gpa: u64, len: usize) {
        let zeros = [0u8; 64];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(zeros.len());
            self.write(gpa + done as u64, &zeros[..n]);
            done += n;
        }
    }
}

impl<M: DmaMemory + ?Sized> DmaMemory for &M {
    fn read(&self, gpa: u64, buf: &mut [u8]) {
        (**self).read(gpa, buf)
    }
    fn write(&self, gpa: u64, data: &[u8]) {
        (**self).write(gpa, data)
    }
    fn fence(&self) {
        (**self).fence()
    }
}

impl<M: DmaMemory + ?Sized> DmaMemory for Rc<M> {
    fn read(&self, gpa: u64, buf: &mut [u8]) {
        (**self).read(gpa, buf)
    }
    fn write(&self, gpa: u64, data: &[u8]) {
        (**self).write(gpa, data)
    }
    fn fence(&self) {
        (**self).fence()
    }
}

impl<M: DmaMemory + ?Sized> DmaMemory for Arc<M> {
    fn read(&self, gpa: u64, buf: &mut [u8]) {
        (**self).read(gpa, buf)
    }
    fn write(&self, gpa: u64, data: &[u8]) {
        (**self).write(gpa, data)
    }
    fn fence(&self) {
        (**self).fence()
    }
}

/// Host-side guest memory for tests: `len` bytes starting at guest-physical `base`.
///
/// Single-threaded (interior mutability through a `RefCell`). Accesses outside
/// `[base, base + len)` panic: they are bugs in the test or the driver, never device input.
#[derive(Debug)]
pub struct VecMemory {
    base: u64,
    bytes: RefCell<Vec<u8>>,
}

impl VecMemory {
    /// Creates `len` zeroed bytes of memory at guest-physical `base`.
    pub fn new(base: u64, len: usize) -> Self {
        VecMemory {
            base,
            bytes: RefCell::new(vec![0; len]),
        }
    }

    /// First guest-physical address.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.bytes.borrow().len()
    }

    /// True if the memory has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn range(&self, gpa: u64, len: usize) -> core::ops::Range<usize> {
        let start = gpa
            .checked_sub(self.base)
            .and_then(|o| usize::try_from(o).ok())
            .expect("VecMemory: address below base");
        let end = start.checked_add(len).expect("VecMemory: range overflows");
        assert!(end <= self.len(), "VecMemory: access past the end");
        start..end
    }
}

impl DmaMemory for VecMemory {
    fn read(&self, gpa: u64, buf: &mut [u8]) {
        let r = self.range(gpa, buf.len());
        buf.copy_from_slice(&self.bytes.borrow()[r]);
    }
    fn write(&self, gpa: u64, data: &[u8]) {
        let r = self.range(gpa, data.len());
        self.bytes.borrow_mut()[r].copy_from_slice(data);
    }
}

/// Bump allocator over the driver's DMA region `[base, base + len)`; nothing is ever freed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaAllocator {
    base: u64,
    len: u64,
    next: u64,
}

impl DmaAllocator {
    /// An allocator handing out `[base, base + len)`.
    pub fn new(base: u64, len: u64) -> Self {
        DmaAllocator {
            base,
            len,
            next: base,
        }
    }

    /// Allocates `size` bytes aligned to `align` (a power of two); `None` when the region is full.
    pub fn alloc(&mut self, size: u64, align: u64) -> Option<u64> {
        if !align.is_power_of_two() {
            return None;
        }
        let start = self.next.checked_add(align - 1)? & !(align - 1);
        let end = start.checked_add(size)?;
        if end > self.base.checked_add(self.len)? {
            return None;
        }
        self.next = end;
        Some(start)
    }

    /// Bytes handed out so far, alignment padding included.
    pub fn used(&self) -> u64 {
        self.next - self.base
    }

    /// Forgets every allocation.
    pub fn reset(&mut self) {
        self.next = self.base;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocator_aligns_and_runs_out() {
        let mut a = DmaAllocator::new(0x1008, 0x2000);
        assert_eq!(a.alloc(10, 16), Some(0x1010));
        assert_eq!(a.alloc(16, 4096), Some(0x2000));
        assert_eq!(a.alloc(0x1000, 16), None);
        assert_eq!(a.alloc(0xff8, 8), Some(0x2010));
        assert_eq!(a.alloc(1, 3), None);
        assert_eq!(a.used(), 0x2000);
        a.reset();
        assert_eq!(a.alloc(1, 1), Some(0x1008));
        let mut b = DmaAllocator::new(u64::MAX - 8, 8);
        assert_eq!(b.alloc(16, 16), None);
    }

    #[test]
    fn vec_memory_round_trips() {
        let m = VecMemory::new(0x1000, 256);
        m.write(0x1010, &[1, 2, 3]);
        m.write_le16(0x1020, 0xbeef);
        assert_eq!(m.read_le16(0x1020), 0xbeef);
        assert_eq!(m.read_le32(0x1010), 0x0003_0201);
        m.zero(0x1000, 200);
        assert_eq!(m.read_le32(0x1010), 0);
        let r: &VecMemory = &m;
        r.write(0x10ff, &[9]);
        let rc = Rc::new(VecMemory::new(0, 4));
        rc.write(0, &[7; 4]);
        assert_eq!(rc.read_le32(0), 0x0707_0707);
    }

    #[test]
    #[should_panic(expected = "past the end")]
    fn vec_memory_rejects_out_of_range() {
        VecMemory::new(0, 4).write(2, &[0; 4]);
    }
}

//! Driver side of a VIRTIO 1.x split virtqueue (VIRTIO 1.2 §2.7), over [`DmaMemory`].
//!
//! Layout: descriptor table (16 bytes per entry, 16-byte aligned), available ring
//! (`flags`, `idx`, `ring[size]`, `used_event`; 2-byte aligned) and used ring (`flags`, `idx`,
//! `ring[size]` of `{le32 id, le32 len}`, `avail_event`; 4-byte aligned). No event-index
//! feature: the driver always notifies and never reads `avail_event`.
//!
//! The free-descriptor list lives in driver-private memory (the `next` links the device sees are
//! only written, never read back), so a device that scribbles on the descriptor table cannot
//! corrupt the driver's bookkeeping. Every used element is checked before it is trusted.

use crate::transport::{DmaAllocator, DmaMemory};
use alloc::vec;
use alloc::vec::Vec;
use core::num::Wrapping;

/// Descriptor flag: the chain continues in `next`.
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the buffer is device-writable.
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
/// Available-ring flag: the driver does not want used-buffer notifications (it polls).
pub const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = 1;

/// Largest queue size a split virtqueue may have (§2.7).
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// One buffer of a descriptor chain: guest-physical address and length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buf {
    /// Guest-physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
}

/// A chain the device has finished with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsedElem {
    /// Head descriptor of the chain (the token [`VirtQueue::add`] returned).
    pub head: u16,
    /// Bytes the device reports having written into the chain's writable buffers.
    pub len: u32,
}

/// What can go wrong on a virtqueue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueError {
    /// The queue size is zero, not a power of two or above 32768.
    BadSize(u16),
    /// A chain with no buffers.
    EmptyChain,
    /// Not enough free descriptors for the chain.
    Full,
    /// The device returned a head that is out of range or not in flight.
    BadUsedId(u32),
    /// The device's used index ran ahead of what it can have consumed.
    BadUsedIndex {
        /// The used index read from the ring.
        used_idx: u16,
        /// The last used index the driver processed.
        last_used: u16,
    },
}

impl core::fmt::Display for QueueError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            QueueError::BadSize(s) => write!(f, "invalid queue size {s}"),
            QueueError::EmptyChain => write!(f, "descriptor chain without buffers"),
            QueueError::Full => write!(f, "not enough free descriptors"),
            QueueError::BadUsedId(id) => write!(f, "device returned unknown head {id}"),
            QueueError::BadUsedIndex { used_idx, last_used } => {
                write!(f, "device used index {used_idx} is too far ahead of {last_used}")
            }
        }
    }
}

/// Guest-physical placement of one split virtqueue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLayout {
    /// Number of descriptors (a power of two).
    pub size: u16,
    /// Descriptor table address.
    pub desc: u64,
    /// Available ring address.
    pub avail: u64,
    /// Used ring address.
    pub used: u64,
}

impl QueueLayout {
    /// Bytes of the descriptor table of a queue of `size`.
    pub fn desc_bytes(size: u16) -> u64 {
        16 * u64::from(size)
    }

    /// Bytes of the available ring of a queue of `size`.
    pub fn avail_bytes(size: u16) -> u64 {
        6 + 2 * u64::from(size)
    }

    /// Bytes of the used ring of a queue of `size`.
    pub fn used_bytes(size: u16) -> u64 {
        6 + 8 * u64::from(size)
    }

    /// Carves a queue of `size` from `alloc`: page-aligned descriptor table, 16-byte-aligned rings.
    pub fn alloc(alloc: &mut DmaAllocator, size: u16) -> Option<Self> {
        let desc = alloc.alloc(Self::desc_bytes(size), 4096)?;
        let avail = alloc.alloc(Self::avail_bytes(size), 16)?;
        let used = alloc.alloc(Self::used_bytes(size), 16)?;
        Some(QueueLayout {
            size,
            desc,
            avail,
            used,
        })
    }
}

/// Driver side of one split virtqueue.
#[derive(Clone, Debug)]
pub struct VirtQueue {
    layout: QueueLayout,
    /// Driver-private free-list / chain links, one per descriptor.
    next: Vec<u16>,
    /// Descriptors in the chain headed here; 0 when the head is not in flight.
    chain_len: Vec<u16>,
    free_head: u16,
    num_free: u16,
    avail_idx: Wrapping<u16>,
    last_used: Wrapping<u16>,
}

impl VirtQueue {
    /// Takes over the rings at `layout`, zeroing them; the queue starts empty.
    pub fn new<M: DmaMemory + ?Sized>(mem: &M, layout: QueueLayout) -> Result<Self, QueueError> {
        let size = layout.size;
        if size == 0 || !size.is_power_of_two() || size > MAX_QUEUE_SIZE {
            return Err(QueueError::BadSize(size));
        }
        for (addr, bytes) in [
            (layout.desc, QueueLayout::desc_bytes(size)),
            (layout.avail, QueueLayout::avail_bytes(size)),
            (layout.used, QueueLayout::used_bytes(size)),
        ] {
            // At most 16 * 32768 bytes: always fits in usize.
            mem.zero(addr, usize::try_from(bytes).unwrap_or(usize::MAX));
        }
        mem.fence();
        Ok(VirtQueue {
            layout,
            next: (1..=size).collect(),
            chain_len: vec![0; usize::from(size)],
            free_head: 0,
            num_free: size,
            avail_idx: Wrapping(0),
            last_used: Wrapping(0),
        })
    }

    /// Where the queue lives.
    pub fn layout(&self) -> QueueLayout {
        self.layout
    }

    /// Number of descriptors.
    pub fn size(&self) -> u16 {
        self.layout.size
    }

    /// Free descriptors.
    pub fn num_free(&self) -> u16 {
        self.num_free
    }

    /// True if the chain headed by `head` was added and not yet returned by the device.
    pub fn in_flight(&self, head: u16) -> bool {
        self.chain_len.get(usize::from(head)).is_some_and(|n| *n != 0)
    }

    /// Asks the device not to raise used-buffer notifications (the driver polls), or to raise them.
    pub fn set_no_interrupt<M: DmaMemory + ?Sized>(&self, mem: &M, no_interrupt: bool) {
        let flags = if no_interrupt {
            VIRTQ_AVAIL_F_NO_INTERRUPT
        } else {
            0
        };
        mem.write_le16(self.layout.avail, flags);
        mem.fence();
    }

    /// Adds a chain of device-readable then device-writable buffers and publishes it.
    ///
    /// Returns the head descriptor index, the token [`VirtQueue::pop_used`] reports back. The
    /// caller notifies the device.
    pub fn add<M: DmaMemory + ?Sized>(
        &mut self,
        mem: &M,
        readable: &[Buf],
        writable: &[Buf],
    ) -> Result<u16, QueueError> {
        let total = readable.len() + writable.len();
        if total == 0 {
            return Err(QueueError::EmptyChain);
        }
        if total > usize::from(self.num_free) {
            return Err(QueueError::Full);
        }
        let head = self.free_head;
        let mut cur = head;
        let bufs = readable
            .iter()
            .map(|b| (b, 0))
            .chain(writable.iter().map(|b| (b, VIRTQ_DESC_F_WRITE)));
        for (i, (buf, write_flag)) in bufs.enumerate() {
            let last = i + 1 == total;
            let next = self.next[usize::from(cur)];
            let mut d = [0u8; 16];
            d[0..8].copy_from_slice(&buf.addr.to_le_bytes());
            d[8..12].copy_from_slice(&buf.len.to_le_bytes());
            let flags = write_flag | if last { 0 } else { VIRTQ_DESC_F_NEXT };
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..16].copy_from_slice(&(if last { 0 } else { next }).to_le_bytes());
            mem.write(self.layout.desc + 16 * u64::from(cur), &d);
            if !last {
                cur = next;
            } else {
                self.free_head = next;
            }
        }
        // `total` <= num_free <= size <= 32768.
        let n = u16::try_from(total).map_err(|_| QueueError::Full)?;
        self.num_free -= n;
        self.chain_len[usize::from(head)] = n;

        let slot = self.avail_idx.0 & (self.layout.size - 1);
        mem.write_le16(self.layout.avail + 4 + 2 * u64::from(slot), head);
        // The ring entry (and the descriptors) must be visible before the index that publishes them.
        mem.fence();
        self.avail_idx += 1;
        mem.write_le16(self.layout.avail + 2, self.avail_idx.0);
        // The index must be visible before the caller notifies the device.
        mem.fence();
        Ok(head)
    }

    /// Takes the next chain the device has returned, if any, and frees its descriptors.
    ///
    /// A used element naming a head that is not in flight is consumed and reported as
    /// [`QueueError::BadUsedId`]; a used index that ran more than a full ring ahead is reported as
    /// [`QueueError::BadUsedIndex`] and nothing is consumed.
    pub fn pop_used<M: DmaMemory + ?Sized>(&mut self, mem: &M) -> Result<Option<UsedElem>, QueueError> {
        let used_idx = Wrapping(mem.read_le16(self.layout.used + 2));
        // Read the ring entries only after the index that published them.
        mem.fence();
        if used_idx == self.last_used {
            return Ok(None);
        }
        if (used_idx - self.last_used).0 > self.layout.size {
            return Err(QueueError::BadUsedIndex {
                used_idx: used_idx.0,
                last_used: self.last_used.0,
            });
        }
        let slot = self.last_used.0 & (self.layout.size - 1);
        let elem = self.layout.used + 4 + 8 * u64::from(slot);
        let id = mem.read_le32(elem);
        let len = mem.read_le32(elem + 4);
        self.last_used += 1;
        let head = match u16::try_from(id) {
            Ok(h) if self.in_flight(h) => h,
            _ => return Err(QueueError::BadUsedId(id)),
        };
        self.free_chain(head);
        Ok(Some(UsedElem { head, len }))
    }

    fn free_chain(&mut self, head: u16) {
        let n = core::mem::take(&mut self.chain_len[usize::from(head)]);
        let mut last = head;
        for _ in 1..n {
            last = self.next[usize::from(last)];
        }
        self.next[usize::from(last)] = self.free_head;
        self.free_head = head;
        self.num_free += n;
    }
}

/// Device side of a split virtqueue, for tests that play the device.
#[cfg(test)]
pub(crate) mod device_side {
    use super::*;

    /// One descriptor as the device reads it.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Desc {
        pub addr: u64,
        pub len: u32,
        pub writable: bool,
    }

    /// The device's view of a queue.
    #[derive(Debug)]
    pub struct DeviceQueue {
        pub layout: QueueLayout,
        pub last_avail: Wrapping<u16>,
        pub used_idx: Wrapping<u16>,
    }

    impl DeviceQueue {
        pub fn new(layout: QueueLayout) -> Self {
            DeviceQueue {
                layout,
                last_avail: Wrapping(0),
                used_idx: Wrapping(0),
            }
        }

        /// Takes the next available chain: head and descriptors.
        pub fn pop_avail<M: DmaMemory + ?Sized>(&mut self, mem: &M) -> Option<(u16, Vec<Desc>)> {
            let avail_idx = Wrapping(mem.read_le16(self.layout.avail + 2));
            if avail_idx == self.last_avail {
                return None;
            }
            let slot = self.last_avail.0 & (self.layout.size - 1);
            let head = mem.read_le16(self.layout.avail + 4 + 2 * u64::from(slot));
            self.last_avail += 1;
            let mut descs = Vec::new();
            let mut cur = head;
            loop {
                let mut d = [0u8; 16];
                mem.read(self.layout.desc + 16 * u64::from(cur), &mut d);
                let flags = u16::from_le_bytes([d[12], d[13]]);
                descs.push(Desc {
                    addr: u64::from_le_bytes(d[0..8].try_into().unwrap()),
                    len: u32::from_le_bytes(d[8..12].try_into().unwrap()),
                    writable: flags & VIRTQ_DESC_F_WRITE != 0,
                });
                if flags & VIRTQ_DESC_F_NEXT == 0 || descs.len() > usize::from(self.layout.size) {
                    break;
                }
                cur = u16::from_le_bytes([d[14], d[15]]);
            }
            Some((head, descs))
        }

        /// Returns a chain to the driver.
        pub fn push_used<M: DmaMemory + ?Sized>(&mut self, mem: &M, head: u32, len: u32) {
            let slot = self.used_idx.0 & (self.layout.size - 1);
            let elem = self.layout.used + 4 + 8 * u64::from(slot);
            mem.write(elem, &head.to_le_bytes());
            mem.write(elem + 4, &len.to_le_bytes());
            mem.fence();
            self.used_idx += 1;
            mem.write_le16(self.layout.used + 2, self.used_idx.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::device_side::*;
    use super::*;
    use crate::transport::VecMemory;

    fn setup(size: u16) -> (VecMemory, VirtQueue, DeviceQueue) {
        let mem = VecMemory::new(0x10_0000, 0x10000);
        let mut a = DmaAllocator::new(0x10_0000, 0x10000);
        let layout = QueueLayout::alloc(&mut a, size).unwrap();
        let q = VirtQueue::new(&mem, layout).unwrap();
        (mem, q, DeviceQueue::new(layout))
    }

    #[test]
    fn layout_sizes_and_alignment() {
        let mut a = DmaAllocator::new(0x1000, 0x4000);
        let l = QueueLayout::alloc(&mut a, 16).unwrap();
        assert_eq!(l.desc % 4096, 0);
        assert_eq!(l.avail, l.desc + 256);
        assert_eq!(l.used % 16, 0);
        assert!(l.used >= l.avail + 38);
        assert_eq!(QueueLayout::used_bytes(16), 134);
    }

    #[test]
    fn rejects_bad_sizes() {
        let mem = VecMemory::new(0, 0x10000);
        for size in [0, 3, 12] {
            let l = QueueLayout {
                size,
                desc: 0,
                avail: 0x1000,
                used: 0x2000,
            };
            assert_eq!(VirtQueue::new(&mem, l).unwrap_err(), QueueError::BadSize(size));
        }
    }

    #[test]
    fn chain_layout_seen_by_device() {
        let (mem, mut q, mut dq) = setup(8);
        let r = [
            Buf {
                addr: 0x1000,
                len: 40,
            },
            Buf {
                addr: 0x2000,
                len: 16,
            },
        ];
        let w = [Buf {
            addr: 0x3000,
            len: 16,
        }];
        let head = q.add(&mem, &r, &w).unwrap();
        assert_eq!(q.num_free(), 5);
        assert!(q.in_flight(head));
        let (h, descs) = dq.pop_avail(&mem).unwrap();
        assert_eq!(h, head);
        assert_eq!(
            descs,
            [
                Desc {
                    addr: 0x1000,
                    len: 40,
                    writable: false
                },
                Desc {
                    addr: 0x2000,
                    len: 16,
                    writable: false
                },
                Desc {
                    addr: 0x3000,
                    len: 16,
                    writable: true
                },
            ]
        );
        assert!(dq.pop_avail(&mem).is_none());
        assert_eq!(q.pop_used(&mem), Ok(None));
        dq.push_used(&mem, u32::from(h), 16);
        assert_eq!(q.pop_used(&mem), Ok(Some(UsedElem { head, len: 16 })));
        assert_eq!(q.num_free(), 8);
        assert!(!q.in_flight(head));
        assert_eq!(q.pop_used(&mem), Ok(None));
    }

    #[test]
    fn full_and_empty_chains() {
        let (mem, mut q, _) = setup(4);
        let b = Buf { addr: 0x1000, len: 1 };
        assert_eq!(q.add(&mem, &[], &[]), Err(QueueError::EmptyChain));
        assert_eq!(q.add(&mem, &[b; 5], &[]), Err(QueueError::Full));
        q.add(&mem, &[b; 3], &[]).unwrap();
        assert_eq!(q.add(&mem, &[b], &[b]), Err(QueueError::Full));
        q.add(&mem, &[], &[b]).unwrap();
        assert_eq!(q.num_free(), 0);
    }

    #[test]
    fn wraps_indices_and_recycles_descriptors_out_of_order() {
        let (mem, mut q, mut dq) = setup(4);
        // 70000 round trips wrap both 16-bit indices; two chains in flight, completed in reverse.
        for i in 0u32..70_000 {
            let a = q
                .add(
                    &mem,
                    &[Buf {
                        addr: u64::from(i),
                        len: 8,
                    }],
                    &[],
                )
                .unwrap();
            let b = q
                .add(&mem, &[Buf { addr: 1, len: 1 }], &[Buf { addr: 2, len: 2 }])
                .unwrap();
            let (ha, da) = dq.pop_avail(&mem).unwrap();
            let (hb, db) = dq.pop_avail(&mem).unwrap();
            assert_eq!((ha, hb), (a, b));
            assert_eq!(da[0].addr, u64::from(i));
            assert_eq!(db.len(), 2);
            dq.push_used(&mem, u32::from(hb), 2);
            dq.push_used(&mem, u32::from(ha), 0);
            assert_eq!(q.pop_used(&mem).unwrap().unwrap().head, b);
            assert_eq!(q.pop_used(&mem).unwrap().unwrap().head, a);
            assert_eq!(q.num_free(), 4);
        }
        assert_eq!(u32::from(mem.read_le16(q.layout().avail + 2)), 140_000 % 65536);
    }

    #[test]
    fn hostile_used_ring() {
        let (mem, mut q, mut dq) = setup(4);
        let b = Buf { addr: 0x1000, len: 1 };
        let head = q.add(&mem, &[b], &[]).unwrap();
        dq.pop_avail(&mem).unwrap();
        // Out-of-range id, then a head that is not in flight, then the real one.
        dq.push_used(&mem, 99, 0);
        dq.push_used(&mem, u32::from(head) + 1, 0);
        dq.push_used(&mem, u32::from(head), 0);
        assert_eq!(q.pop_used(&mem), Err(QueueError::BadUsedId(99)));
        assert_eq!(q.pop_used(&mem), Err(QueueError::BadUsedId(u32::from(head) + 1)));
        assert_eq!(q.pop_used(&mem).unwrap().unwrap().head, head);
        // Returning the same head twice.
        dq.push_used(&mem, u32::from(head), 0);
        assert_eq!(q.pop_used(&mem), Err(QueueError::BadUsedId(u32::from(head))));
        assert_eq!(q.num_free(), 4);
        // A used index far ahead of anything the device could have consumed.
        mem.write_le16(q.layout().used + 2, 1000);
        assert!(matches!(
            q.pop_used(&mem),
            Err(QueueError::BadUsedIndex { used_idx: 1000, .. })
        ));
    }

    #[test]
    fn no_interrupt_flag() {
        let (mem, q, _) = setup(4);
        q.set_no_interrupt(&mem, true);
        assert_eq!(mem.read_le16(q.layout().avail), VIRTQ_AVAIL_F_NO_INTERRUPT);
        q.set_no_interrupt(&mem, false);
        assert_eq!(mem.read_le16(q.layout().avail), 0);
    }
}

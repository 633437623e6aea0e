//! Base virtio-mem block state (VIRTIO §5.15.6): which blocks of the region are plugged, and the
//! ACK/NACK/ERROR rules for PLUG, UNPLUG, UNPLUG_ALL and STATE. Pure: the device maps and unmaps.

use tagmem_wire as wire;

/// A block range validated against the region: first block index and count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BlockRange {
    /// Index of the first block.
    pub first: usize,
    /// Number of blocks.
    pub count: usize,
}

/// Plugged state of every block of the region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Blocks {
    pub block_size: u64,
    pub addr: u64,
    pub region_size: u64,
    pub requested_size: u64,
    plugged: Vec<bool>,
    plugged_blocks: usize,
}

impl Blocks {
    /// A region of `region_size / block_size` unplugged blocks.
    pub fn new(addr: u64, region_size: u64, block_size: u64, requested_size: u64) -> Self {
        let n = usize::try_from(region_size / block_size).unwrap_or(0);
        Blocks {
            block_size,
            addr,
            region_size,
            requested_size,
            plugged: vec![false; n],
            plugged_blocks: 0,
        }
    }

    /// Bytes plugged.
    pub fn plugged_size(&self) -> u64 {
        self.plugged_blocks as u64 * self.block_size
    }

    /// Number of blocks in the region.
    pub fn len(&self) -> usize {
        self.plugged.len()
    }

    /// Whether block `i` is plugged.
    pub fn is_plugged(&self, i: usize) -> bool {
        self.plugged.get(i).copied().unwrap_or(false)
    }

    /// Validates a guest-supplied range (§5.15.6.1: aligned, non-empty, inside the usable region).
    pub fn check(&self, addr: u64, nb_blocks: u16) -> Option<BlockRange> {
        if nb_blocks == 0 || self.block_size == 0 || addr % self.block_size != 0 {
            return None;
        }
        let off = addr.checked_sub(self.addr)?;
        let size = u64::from(nb_blocks).checked_mul(self.block_size)?;
        let end = off.checked_add(size)?;
        if end > self.region_size {
            return None;
        }
        let first = usize::try_from(off / self.block_size).ok()?;
        let count = usize::from(nb_blocks);
        Some(BlockRange { first, count })
    }

    /// Guest address of block `i`.
    pub fn block_addr(&self, i: usize) -> u64 {
        self.addr + i as u64 * self.block_size
    }

    /// PLUG: `Ok` if the range may be plugged, else the response type to send.
    pub fn plan_plug(&self, r: BlockRange) -> Result<(), u16> {
        if self.plugged[r.first..r.first + r.count].iter().any(|p| *p) {
            return Err(wire::VIRTIO_MEM_RESP_ERROR);
        }
        let after = (self.plugged_blocks + r.count) as u64 * self.block_size;
        if after > self.requested_size {
            return Err(wire::VIRTIO_MEM_RESP_NACK);
        }
        Ok(())
    }

    /// UNPLUG: `Ok` if every block of the range is plugged.
    pub fn plan_unplug(&self, r: BlockRange) -> Result<(), u16> {
        if self.plugged[r.first..r.first + r.count].iter().all(|p| *p) {
            Ok(())
        } else {
            Err(wire::VIRTIO_MEM_RESP_ERROR)
        }
    }

    /// Marks a range plugged or unplugged.
    pub fn set(&mut self, r: BlockRange, plugged: bool) {
        for p in &mut self.plugged[r.first..r.first + r.count] {
            if *p != plugged {
                *p = plugged;
                if plugged {
                    self.plugged_blocks += 1;
                } else {
                    self.plugged_blocks -= 1;
                }
            }
        }
    }

    /// STATE of a validated range.
    pub fn state(&self, r: BlockRange) -> u16 {
        let s = &self.plugged[r.first..r.first + r.count];
        if s.iter().all(|p| *p) {
            wire::VIRTIO_MEM_STATE_PLUGGED
        } else if s.iter().any(|p| *p) {
            wire::VIRTIO_MEM_STATE_MIXED
        } else {
            wire::VIRTIO_MEM_STATE_UNPLUGGED
        }
    }

    /// Maximal runs of plugged blocks.
    pub fn plugged_runs(&self) -> Vec<BlockRange> {
        let mut runs = Vec::new();
        let mut i = 0;
        while i < self.plugged.len() {
            if self.plugged[i] {
                let first = i;
                while i < self.plugged.len() && self.plugged[i] {
                    i += 1;
                }
                runs.push(BlockRange {
                    first,
                    count: i - first,
                });
            } else {
                i += 1;
            }
        }
        runs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BS: u64 = 2 << 20;

    #[test]
    fn range_checks() {
        let b = Blocks::new(1 << 30, 8 * BS, BS, 4 * BS);
        assert_eq!(b.check(1 << 30, 8), Some(BlockRange { first: 0, count: 8 }));
        assert_eq!(b.check(1 << 30, 0), None);
        assert_eq!(b.check((1 << 30) + 4096, 1), None);
        assert_eq!(b.check((1 << 30) - BS, 1), None);
        assert_eq!(b.check((1 << 30) + 7 * BS, 2), None);
        assert_eq!(b.check(u64::MAX - BS + 1, u16::MAX), None);
    }

    #[test]
    fn plug_unplug_state() {
        let mut b = Blocks::new(0, 8 * BS, BS, 3 * BS);
        let r = b.check(0, 2).unwrap();
        assert_eq!(b.plan_plug(r), Ok(()));
        b.set(r, true);
        assert_eq!(
            b.plan_plug(b.check(BS, 1).unwrap()),
            Err(wire::VIRTIO_MEM_RESP_ERROR)
        );
        assert_eq!(
            b.plan_plug(b.check(2 * BS, 2).unwrap()),
            Err(wire::VIRTIO_MEM_RESP_NACK)
        );
        assert_eq!(b.state(b.check(0, 4).unwrap()), wire::VIRTIO_MEM_STATE_MIXED);
        assert_eq!(b.state(r), wire::VIRTIO_MEM_STATE_PLUGGED);
        assert_eq!(
            b.plan_unplug(b.check(BS, 2).unwrap()),
            Err(wire::VIRTIO_MEM_RESP_ERROR)
        );
        assert_eq!(b.plugged_size(), 2 * BS);
        assert_eq!(b.plugged_runs(), vec![r]);
    }
}

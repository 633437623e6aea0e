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

/// Most blocks a base region may have: a 2 MiB bitmap (32 TiB of 2 MiB blocks). Every whole-region
/// operation walks the bitmap a word at a time, so its cost is bounded by this too.
pub const MAX_BLOCKS: u64 = 1 << 24;

const WORD_BITS: usize = u64::BITS as usize;

/// Plugged state of every block of the region: one bit per block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Blocks {
    pub block_size: u64,
    pub addr: u64,
    pub region_size: u64,
    pub requested_size: u64,
    /// Bit `i % 64` of word `i / 64` is block `i`; bits past the last block stay clear.
    plugged: Vec<u64>,
    blocks: usize,
    plugged_blocks: usize,
}

/// The bits of word `w` that fall in `[first, end)`.
fn word_mask(w: usize, first: usize, end: usize) -> u64 {
    let lo = (w * WORD_BITS).max(first) - w * WORD_BITS;
    let hi = ((w + 1) * WORD_BITS).min(end) - w * WORD_BITS;
    let upper = if hi == WORD_BITS {
        u64::MAX
    } else {
        (1u64 << hi) - 1
    };
    upper & !((1u64 << lo) - 1)
}

impl Blocks {
    /// A region of `region_size / block_size` unplugged blocks (at most [`MAX_BLOCKS`]; the
    /// configuration is validated before a region is built).
    pub fn new(addr: u64, region_size: u64, block_size: u64, requested_size: u64) -> Self {
        let n = usize::try_from((region_size / block_size.max(1)).min(MAX_BLOCKS)).unwrap_or(0);
        Blocks {
            block_size,
            addr,
            region_size,
            requested_size,
            plugged: vec![0; n.div_ceil(WORD_BITS)],
            blocks: n,
            plugged_blocks: 0,
        }
    }

    /// Bytes plugged.
    pub fn plugged_size(&self) -> u64 {
        self.plugged_blocks as u64 * self.block_size
    }

    /// Number of blocks in the region.
    pub fn len(&self) -> usize {
        self.blocks
    }

    /// Number of plugged blocks in `r` (which lies inside the region), a word at a time.
    fn plugged_in(&self, r: BlockRange) -> usize {
        let end = r.first + r.count;
        if r.count == 0 {
            return 0;
        }
        (r.first / WORD_BITS..=(end - 1) / WORD_BITS)
            .map(|w| (self.plugged[w] & word_mask(w, r.first, end)).count_ones() as usize)
            .sum()
    }

    /// Whether any block of `r` is plugged (`r` lies inside the region).
    pub fn any_plugged(&self, r: BlockRange) -> bool {
        self.plugged_in(r) > 0
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
        (first.checked_add(count)? <= self.blocks).then_some(BlockRange { first, count })
    }

    /// Guest address of block `i`.
    pub fn block_addr(&self, i: usize) -> u64 {
        self.addr + i as u64 * self.block_size
    }

    /// PLUG: `Ok` if the range may be plugged, else the response type to send.
    pub fn plan_plug(&self, r: BlockRange) -> Result<(), u16> {
        if self.any_plugged(r) {
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
        if self.plugged_in(r) == r.count {
            Ok(())
        } else {
            Err(wire::VIRTIO_MEM_RESP_ERROR)
        }
    }

    /// Marks a range (inside the region) plugged or unplugged.
    pub fn set(&mut self, r: BlockRange, plugged: bool) {
        let end = r.first + r.count;
        if r.count == 0 {
            return;
        }
        for w in r.first / WORD_BITS..=(end - 1) / WORD_BITS {
            let mask = word_mask(w, r.first, end);
            let before = (self.plugged[w] & mask).count_ones() as usize;
            if plugged {
                self.plugged[w] |= mask;
                self.plugged_blocks += mask.count_ones() as usize - before;
            } else {
                self.plugged[w] &= !mask;
                self.plugged_blocks -= before;
            }
        }
    }

    /// STATE of a validated range.
    pub fn state(&self, r: BlockRange) -> u16 {
        match self.plugged_in(r) {
            0 => wire::VIRTIO_MEM_STATE_UNPLUGGED,
            n if n == r.count => wire::VIRTIO_MEM_STATE_PLUGGED,
            _ => wire::VIRTIO_MEM_STATE_MIXED,
        }
    }

    /// Maximal runs of plugged blocks, found a word at a time (empty and full words are skipped
    /// whole), so the cost follows the number of words and runs, not of blocks.
    pub fn plugged_runs(&self) -> Vec<BlockRange> {
        let mut runs = Vec::new();
        let mut start: Option<usize> = None;
        for (w, &word) in self.plugged.iter().enumerate() {
            let base = w * WORD_BITS;
            match (start, word) {
                (None, 0) | (Some(_), u64::MAX) => continue,
                _ => {}
            }
            let mut bit = 0;
            while bit < WORD_BITS {
                let rest = word >> bit;
                match start {
                    None => {
                        if rest == 0 {
                            break;
                        }
                        bit += rest.trailing_zeros() as usize;
                        start = Some(base + bit);
                    }
                    Some(first) => {
                        let ones = (!rest).trailing_zeros() as usize;
                        if bit + ones >= WORD_BITS {
                            break;
                        }
                        bit += ones;
                        runs.push(BlockRange {
                            first,
                            count: base + bit - first,
                        });
                        start = None;
                    }
                }
            }
        }
        if let Some(first) = start {
            runs.push(BlockRange {
                first,
                count: self.blocks - first,
            });
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

    /// The runs a plain per-block walk finds: the reference the word-wise code is checked against.
    fn runs_by_block(b: &Blocks) -> Vec<BlockRange> {
        let mut runs = Vec::new();
        let mut i = 0;
        while i < b.len() {
            let one = BlockRange { first: i, count: 1 };
            if b.any_plugged(one) {
                let first = i;
                while i < b.len() && b.any_plugged(BlockRange { first: i, count: 1 }) {
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

    #[test]
    fn runs_and_counts_across_word_boundaries() {
        let mut b = Blocks::new(0, 300 * BS, BS, 300 * BS);
        let ranges = [(0, 1), (3, 61), (64, 64), (129, 1), (190, 70), (299, 1)];
        for (first, count) in ranges {
            b.set(BlockRange { first, count }, true);
        }
        // (3, 61) and (64, 64) touch: one run 3..128.
        let expect = vec![
            BlockRange { first: 0, count: 1 },
            BlockRange { first: 3, count: 125 },
            BlockRange { first: 129, count: 1 },
            BlockRange {
                first: 190,
                count: 70,
            },
            BlockRange { first: 299, count: 1 },
        ];
        assert_eq!(b.plugged_runs(), expect);
        assert_eq!(runs_by_block(&b), expect);
        assert_eq!(b.plugged_size(), (1 + 125 + 1 + 70 + 1) * BS);
        b.set(
            BlockRange {
                first: 100,
                count: 100,
            },
            false,
        );
        assert_eq!(b.plugged_size(), (1 + 97 + 60 + 1) * BS);
        assert_eq!(b.plugged_runs(), runs_by_block(&b));
        let r = BlockRange { first: 60, count: 10 };
        assert_eq!(b.state(r), wire::VIRTIO_MEM_STATE_PLUGGED);
        b.set(BlockRange { first: 65, count: 1 }, false);
        assert_eq!(b.state(r), wire::VIRTIO_MEM_STATE_MIXED);
        assert_eq!(b.plan_unplug(r), Err(wire::VIRTIO_MEM_RESP_ERROR));
    }

    #[test]
    fn a_region_of_max_blocks_costs_a_bitmap_of_bits() {
        // Fuzz finding: a region of 2^32 - 1 blocks of 4 KiB allocated a 4 GiB `Vec<bool>` and
        // every snapshot or UNPLUG_ALL walked each block. The largest region allowed now keeps a
        // 2 MiB bitmap and its runs are found without visiting each block.
        let mut b = Blocks::new(0, MAX_BLOCKS * 4096, 4096, 0);
        assert_eq!(b.plugged.len() * 8, 2 << 20);
        let last = BlockRange {
            first: b.len() - 3,
            count: 3,
        };
        b.set(BlockRange { first: 5, count: 1 }, true);
        b.set(last, true);
        assert_eq!(b.plugged_runs(), vec![BlockRange { first: 5, count: 1 }, last]);
        assert_eq!(b.check(0, 1), Some(BlockRange { first: 0, count: 1 }));
    }
}

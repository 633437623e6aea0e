//! Deciding what to accept from a closed offer chain.
//!
//! Three steps, in order:
//! 1. [`screen`]: the driver checks every record itself instead of trusting the device
//!    (alignment, window, flags, ids, overlaps, tag uniqueness, sharable group shape). Records that
//!    fail are rejected by leaving them out of the ACCEPT.
//! 2. An [`OfferPolicy`] picks, from the records that passed, the extent ids to accept.
//! 3. [`enforce`]: tag groups are all-or-nothing (SPEC.md [T-ACCEPT-2], as CXL DCD adds a tag
//!    group whole); a partially chosen group is dropped whole.

use crate::dax::{DaxRegistry, Extent};
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;
use tagmem_wire::{is_null_tag, ExtentRecord, VIRTIO_MEM_EXTENT_ALIGN, VIRTIO_MEM_EXTENT_F_ALL};

/// Why the driver left an offered extent out of its ACCEPT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectReason {
    /// Extent id 0 (the device numbers extents from 1).
    InvalidId,
    /// Address or length not a multiple of 2 MiB, or zero length.
    Misaligned,
    /// The extent does not lie inside the tagged window.
    OutsideWindow,
    /// Flags this revision does not define.
    UnknownFlags,
    /// Sharable capacity without a tag.
    SharableUntagged,
    /// The id appears twice in the chain or is already accepted.
    DuplicateId,
    /// The extent overlaps an accepted extent or another extent of the chain.
    Overlap,
    /// A device with this tag already exists (a tag's extents all come in one chain).
    DuplicateTag,
    /// The tag group mixes sharable and non-sharable extents.
    MixedGroup,
    /// The sharable group's sequence numbers are not exactly 0..n-1.
    BadSequence,
    /// Another extent of this tag group was rejected, so the whole group is.
    IncompleteGroup,
    /// The chain carried more extents than the driver can hold pending.
    ChainOverflow,
    /// The policy did not choose the extent.
    Policy,
    /// The policy chose only part of this tag group.
    PartialGroup,
}

impl core::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let s = match self {
            RejectReason::InvalidId => "invalid extent id",
            RejectReason::Misaligned => "misaligned address or length",
            RejectReason::OutsideWindow => "outside the tagged window",
            RejectReason::UnknownFlags => "unknown flags",
            RejectReason::SharableUntagged => "sharable without a tag",
            RejectReason::DuplicateId => "duplicate extent id",
            RejectReason::Overlap => "overlaps other capacity",
            RejectReason::DuplicateTag => "tag already present",
            RejectReason::MixedGroup => "tag group mixes sharable and non-sharable",
            RejectReason::BadSequence => "sharable group sequence is not 0..n-1",
            RejectReason::IncompleteGroup => "part of a rejected tag group",
            RejectReason::ChainOverflow => "chain too long",
            RejectReason::Policy => "not chosen by policy",
            RejectReason::PartialGroup => "tag group chosen only in part",
        };
        f.write_str(s)
    }
}

/// The guest-physical window extents must lie in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Window {
    /// First address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
}

impl Window {
    /// True if `[gpa, gpa + len)` lies inside the window.
    pub fn contains(&self, gpa: u64, len: u64) -> bool {
        match (gpa.checked_add(len), self.addr.checked_add(self.size)) {
            (Some(end), Some(wend)) => gpa >= self.addr && end <= wend,
            _ => false,
        }
    }
}

/// Outcome of [`screen`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Screened {
    /// Records that passed, in chain order: what the policy chooses from.
    pub candidates: Vec<Extent>,
    /// Records that failed, in chain order, with the first reason found.
    pub rejected: Vec<(u64, RejectReason)>,
}

/// Checks every record of a closed chain against the window and the capacity already accepted
/// (claimed into devices or not).
pub fn screen(records: &[ExtentRecord], window: Window, accepted: &DaxRegistry) -> Screened {
    let exts: Vec<Extent> = records.iter().map(Extent::from_record).collect();
    let mut why: Vec<Option<RejectReason>> = exts.iter().map(|e| check_one(e, window, accepted)).collect();

    // Ids twice in the chain: every copy goes.
    let mut id_count: BTreeMap<u64, usize> = BTreeMap::new();
    for e in &exts {
        *id_count.entry(e.id).or_default() += 1;
    }
    for (e, w) in exts.iter().zip(why.iter_mut()) {
        if w.is_none() && id_count.get(&e.id).is_some_and(|n| *n > 1) {
            *w = Some(RejectReason::DuplicateId);
        }
    }
    // Overlaps inside the chain: both sides go (only between ranges that are themselves sane).
    let sane = |r: &Option<RejectReason>| {
        !matches!(
            r,
            Some(RejectReason::Misaligned | RejectReason::OutsideWindow | RejectReason::InvalidId)
        )
    };
    // Sorted by start, an extent overlaps an earlier one exactly when it starts below the
    // largest end seen so far; the holder of that end overlaps it too. This marks every extent
    // that overlaps any other in O(k log k).
    let mut order: Vec<usize> = (0..exts.len()).filter(|i| sane(&why[*i])).collect();
    order.sort_by_key(|i| exts[*i].gpa);
    let mut overlapping = Vec::new();
    let mut reach: Option<(u64, usize)> = None;
    for &i in &order {
        let (start, end) = (exts[i].gpa, exts[i].gpa.saturating_add(exts[i].len));
        match reach {
            Some((max_end, holder)) if start < max_end => {
                overlapping.push(i);
                overlapping.push(holder);
                if end > max_end {
                    reach = Some((end, i));
                }
            }
            _ => reach = Some((end, i)),
        }
    }
    for i in overlapping {
        why[i].get_or_insert(RejectReason::Overlap);
    }
    // Tag groups, over every record of the chain carrying the tag.
    let mut groups: BTreeMap<[u8; 16], Vec<usize>> = BTreeMap::new();
    for (i, e) in exts.iter().enumerate() {
        if e.is_tagged() {
            groups.entry(e.tag).or_default().push(i);
        }
    }
    for members in groups.values() {
        let sharable = members.iter().filter(|i| exts[**i].is_sharable()).count();
        // Every tag group is all-or-nothing: one bad member takes the group with it.
        let group_fault = if sharable != 0 && sharable != members.len() {
            Some(RejectReason::MixedGroup)
        } else if members.iter().any(|i| why[*i].is_some()) {
            Some(RejectReason::IncompleteGroup)
        } else if sharable == 0 {
            None
        } else {
            let mut seqs: Vec<usize> = members.iter().map(|i| usize::from(exts[*i].seq)).collect();
            seqs.sort_unstable();
            (!seqs.iter().enumerate().all(|(k, s)| k == *s)).then_some(RejectReason::BadSequence)
        };
        if let Some(fault) = group_fault {
            for i in members {
                why[*i].get_or_insert(fault);
            }
        }
    }

    let mut out = Screened::default();
    for (e, w) in exts.into_iter().zip(why) {
        match w {
            None => out.candidates.push(e),
            Some(r) => out.rejected.push((e.id, r)),
        }
    }
    out
}

fn check_one(e: &Extent, window: Window, accepted: &DaxRegistry) -> Option<RejectReason> {
    if e.id == 0 {
        return Some(RejectReason::InvalidId);
    }
    if e.len == 0 || e.len % VIRTIO_MEM_EXTENT_ALIGN != 0 || e.gpa % VIRTIO_MEM_EXTENT_ALIGN != 0 {
        return Some(RejectReason::Misaligned);
    }
    if !window.contains(e.gpa, e.len) {
        return Some(RejectReason::OutsideWindow);
    }
    if e.flags & !VIRTIO_MEM_EXTENT_F_ALL != 0 {
        return Some(RejectReason::UnknownFlags);
    }
    if e.is_sharable() && is_null_tag(&e.tag) {
        return Some(RejectReason::SharableUntagged);
    }
    if accepted.holds_extent(e.id) {
        return Some(RejectReason::DuplicateId);
    }
    if accepted.holds_tag(&e.tag) {
        return Some(RejectReason::DuplicateTag);
    }
    if accepted.overlaps(e.gpa, e.len) {
        return Some(RejectReason::Overlap);
    }
    None
}

/// Decides, per closed chain, which of the screened extents to accept.
pub trait OfferPolicy {
    /// Returns the ids to accept among `offers` (ids not in `offers` are ignored).
    fn choose(&mut self, chain_id: u64, offers: &[Extent]) -> Vec<u64>;
}

impl<F: FnMut(u64, &[Extent]) -> Vec<u64>> OfferPolicy for F {
    fn choose(&mut self, chain_id: u64, offers: &[Extent]) -> Vec<u64> {
        self(chain_id, offers)
    }
}

/// Policy accepting everything that passed screening.
#[derive(Clone, Copy, Debug, Default)]
pub struct AcceptAll;

impl OfferPolicy for AcceptAll {
    fn choose(&mut self, _chain_id: u64, offers: &[Extent]) -> Vec<u64> {
        offers.iter().map(|e| e.id).collect()
    }
}

/// Policy rejecting every offer.
#[derive(Clone, Copy, Debug, Default)]
pub struct RejectAll;

impl OfferPolicy for RejectAll {
    fn choose(&mut self, _chain_id: u64, _offers: &[Extent]) -> Vec<u64> {
        Vec::new()
    }
}

/// Applies a policy's choice: returns the extents to accept (chain order, no duplicates) and the
/// candidates left out with their reason. A tag group chosen in part is dropped whole.
pub fn enforce(candidates: &[Extent], chosen: &[u64]) -> (Vec<Extent>, Vec<(u64, RejectReason)>) {
    // O(k log k) in the chain's length: a driver runs this for every chain, and a chain may hold
    // `max_pending` extents.
    let chosen: BTreeSet<u64> = chosen.iter().copied().collect();
    let picked = |e: &Extent| chosen.contains(&e.id);
    // Per tag group: (members, members picked).
    let mut groups: BTreeMap<[u8; 16], (usize, usize)> = BTreeMap::new();
    for e in candidates.iter().filter(|e| e.is_tagged()) {
        let g = groups.entry(e.tag).or_default();
        g.0 += 1;
        g.1 += usize::from(picked(e));
    }
    let partial = |e: &Extent| groups.get(&e.tag).is_some_and(|(n, k)| *k != 0 && k != n);
    let mut accept = Vec::new();
    let mut rejected = Vec::new();
    for e in candidates {
        if !picked(e) {
            rejected.push((e.id, RejectReason::Policy));
        } else if e.is_tagged() && partial(e) {
            rejected.push((e.id, RejectReason::PartialGroup));
        } else {
            accept.push(e.clone());
        }
    }
    (accept, rejected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use tagmem_wire::{Le64, VIRTIO_MEM_EXTENT_F_SHARABLE};

    const W: Window = Window {
        addr: 0x1_0000_0000,
        size: 64 * VIRTIO_MEM_EXTENT_ALIGN,
    };

    fn rec(id: u64, slot: u64, tag: u8, flags: u32, seq: u16) -> ExtentRecord {
        let mut r = ExtentRecord {
            tag: [tag; 16],
            extent_id: Le64::new(id),
            addr: Le64::new(W.addr + slot * VIRTIO_MEM_EXTENT_ALIGN),
            length: Le64::new(VIRTIO_MEM_EXTENT_ALIGN),
            ..Default::default()
        };
        r.flags.set(flags);
        r.seq.set(seq);
        r
    }

    fn ids(s: &Screened) -> Vec<u64> {
        s.candidates.iter().map(|e| e.id).collect()
    }

    #[test]
    fn well_formed_chain_passes() {
        let recs = [
            rec(1, 0, 0, 0, 0),
            rec(2, 1, 5, VIRTIO_MEM_EXTENT_F_SHARABLE, 1),
            rec(3, 2, 5, VIRTIO_MEM_EXTENT_F_SHARABLE, 0),
            rec(4, 3, 6, 0, 0),
        ];
        let s = screen(&recs, W, &DaxRegistry::new());
        assert_eq!(ids(&s), [1, 2, 3, 4]);
        assert!(s.rejected.is_empty());
    }

    #[test]
    fn per_record_checks() {
        let mut misaligned = rec(2, 1, 0, 0, 0);
        misaligned.addr.set(W.addr + 4096);
        let mut short = rec(3, 2, 0, 0, 0);
        short.length.set(4096);
        let mut zero = rec(4, 3, 0, 0, 0);
        zero.length.set(0);
        let outside = rec(5, 64, 0, 0, 0);
        let mut wrap = rec(6, 0, 0, 0, 0);
        wrap.addr.set(u64::MAX - VIRTIO_MEM_EXTENT_ALIGN + 1);
        let recs = [
            rec(0, 5, 0, 0, 0),
            misaligned,
            short,
            zero,
            outside,
            wrap,
            rec(7, 6, 0, 1 << 7, 0),
            rec(8, 7, 0, VIRTIO_MEM_EXTENT_F_SHARABLE, 0),
            rec(9, 8, 0, 0, 0),
        ];
        let s = screen(&recs, W, &DaxRegistry::new());
        assert_eq!(ids(&s), [9]);
        use RejectReason::*;
        assert_eq!(
            s.rejected,
            [
                (0, InvalidId),
                (2, Misaligned),
                (3, Misaligned),
                (4, Misaligned),
                (5, OutsideWindow),
                (6, OutsideWindow),
                (7, UnknownFlags),
                (8, SharableUntagged)
            ]
        );
    }

    #[test]
    fn duplicates_and_overlaps_within_chain() {
        let mut big = rec(3, 4, 0, 0, 0);
        big.length.set(3 * VIRTIO_MEM_EXTENT_ALIGN); // slots 4..7, overlaps id 4 at slot 6
        let recs = [
            rec(1, 0, 0, 0, 0),
            rec(1, 1, 0, 0, 0),
            big,
            rec(4, 6, 0, 0, 0),
            rec(5, 9, 0, 0, 0),
        ];
        let s = screen(&recs, W, &DaxRegistry::new());
        assert_eq!(ids(&s), [5]);
        use RejectReason::*;
        assert_eq!(
            s.rejected,
            [(1, DuplicateId), (1, DuplicateId), (3, Overlap), (4, Overlap)]
        );
    }

    #[test]
    fn overlap_marks_every_party_and_spares_neighbours() {
        // A long extent covering two later ones, listed out of address order, next to an
        // extent that only touches the long one's end.
        let mut long = rec(1, 0, 0, 0, 0);
        long.length.set(4 * VIRTIO_MEM_EXTENT_ALIGN); // slots 0..4
        let recs = [
            rec(3, 3, 0, 0, 0),
            rec(4, 4, 0, 0, 0),
            long,
            rec(2, 1, 0, 0, 0),
            rec(5, 8, 0, 0, 0),
        ];
        let s = screen(&recs, W, &DaxRegistry::new());
        assert_eq!(ids(&s), [4, 5], "touching is not overlapping");
        let mut rejected: Vec<u64> = s.rejected.iter().map(|r| r.0).collect();
        rejected.sort_unstable();
        assert_eq!(rejected, [1, 2, 3]);
    }

    #[test]
    fn registry_indexes_follow_removal() {
        let mut reg = DaxRegistry::new();
        reg.create([5; 16], vec![Extent::from_record(&rec(10, 0, 5, 0, 0))], false);
        let i = reg.create([0; 16], vec![Extent::from_record(&rec(11, 1, 0, 0, 0))], false);
        reg.create([6; 16], vec![Extent::from_record(&rec(12, 2, 6, 0, 0))], false);
        assert!(reg.overlaps(W.addr + VIRTIO_MEM_EXTENT_ALIGN, 1));
        reg.remove(i);
        assert!(!reg.overlaps(W.addr + VIRTIO_MEM_EXTENT_ALIGN, VIRTIO_MEM_EXTENT_ALIGN));
        assert_eq!(reg.device_of(11), None);
        assert_eq!(reg.device_of(12), Some(1));
        assert_eq!(reg.position_of_tag(&[6; 16]), Some(1));
        assert_eq!(reg.lookup(&[5; 16]).map(|d| d.name.as_str()), Some("dax0.0"));
        reg.clear();
        assert_eq!((reg.device_of(10), reg.lookup(&[5; 16])), (None, None));
        assert!(!reg.overlaps(W.addr, 64 * VIRTIO_MEM_EXTENT_ALIGN));
    }

    #[test]
    fn conflicts_with_accepted_capacity() {
        let mut reg = DaxRegistry::new();
        reg.create([5; 16], vec![Extent::from_record(&rec(10, 0, 5, 0, 0))], false);
        let recs = [
            rec(10, 20, 0, 0, 0),
            rec(11, 0, 0, 0, 0),
            rec(12, 1, 5, 0, 0),
            rec(13, 2, 6, 0, 0),
        ];
        let s = screen(&recs, W, &reg);
        assert_eq!(ids(&s), [13]);
        use RejectReason::*;
        assert_eq!(s.rejected, [(10, DuplicateId), (11, Overlap), (12, DuplicateTag)]);
    }

    #[test]
    fn tag_group_shape() {
        let sh = VIRTIO_MEM_EXTENT_F_SHARABLE;
        // Group 1: seqs 0,2 -> bad. Group 2: mixed. Group 3: one member misaligned -> whole group.
        // Group 4: non-sharable, one bad member -> whole group too ([T-ACCEPT-2], item B8).
        let mut bad = rec(31, 6, 3, sh, 1);
        bad.addr.set(W.addr + 1);
        let mut bad4 = rec(41, 8, 4, 0, 0);
        bad4.length.set(0);
        let recs = [
            rec(11, 0, 1, sh, 0),
            rec(12, 1, 1, sh, 2),
            rec(21, 2, 2, sh, 0),
            rec(22, 3, 2, 0, 1),
            rec(30, 5, 3, sh, 0),
            bad,
            bad4,
            rec(42, 9, 4, 0, 1),
        ];
        let s = screen(&recs, W, &DaxRegistry::new());
        assert!(ids(&s).is_empty());
        use RejectReason::*;
        assert_eq!(
            s.rejected,
            [
                (11, BadSequence),
                (12, BadSequence),
                (21, MixedGroup),
                (22, MixedGroup),
                (30, IncompleteGroup),
                (31, Misaligned),
                (41, Misaligned),
                (42, IncompleteGroup)
            ]
        );
    }

    #[test]
    fn enforce_drops_every_partially_chosen_tag_group() {
        let sh = VIRTIO_MEM_EXTENT_F_SHARABLE;
        let recs = [
            rec(1, 0, 1, sh, 0),
            rec(2, 1, 1, sh, 1),
            rec(3, 2, 2, 0, 0),
            rec(4, 3, 2, 0, 1),
            rec(5, 4, 0, 0, 0),
        ];
        let s = screen(&recs, W, &DaxRegistry::new());
        let (acc, rej) = enforce(&s.candidates, &[1, 3, 5, 5, 99]);
        assert_eq!(acc.iter().map(|e| e.id).collect::<Vec<_>>(), [5]);
        use RejectReason::*;
        assert_eq!(
            rej,
            [(1, PartialGroup), (2, Policy), (3, PartialGroup), (4, Policy)],
            "sharable or not, a tag group is taken whole or not at all"
        );
        let (acc, rej) = enforce(&s.candidates, &[2, 1]);
        assert_eq!(acc.iter().map(|e| e.id).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(rej.len(), 3);
    }

    #[test]
    fn policies() {
        let s = screen(&[rec(1, 0, 0, 0, 0), rec(2, 1, 0, 0, 0)], W, &DaxRegistry::new());
        assert_eq!(AcceptAll.choose(1, &s.candidates), [1, 2]);
        assert!(RejectAll.choose(1, &s.candidates).is_empty());
        let mut only_even = |_c: u64, o: &[Extent]| o.iter().map(|e| e.id).filter(|i| i % 2 == 0).collect();
        assert_eq!(OfferPolicy::choose(&mut only_even, 1, &s.candidates), [2]);
        assert!(W.contains(W.addr, W.size) && !W.contains(W.addr, W.size + 1) && !W.contains(0, 1));
    }
}

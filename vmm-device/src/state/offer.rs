//! Offering a chain: every spec checked against the table and the window, then placed, numbered
//! and queued as OFFER events ([T-OFFER-*]).

use super::*;

impl ExtentTable {
    pub(super) fn backing_overlap(&self, source: SourceId, offset: u64, len: u64) -> Option<u64> {
        let end = offset.checked_add(len)?;
        // The nearest range starting at or before `offset`, then every range starting inside.
        if let Some((&(s, o), &id)) = self.backing.range(..=(source, offset)).next_back() {
            let l = self.extents.get(&id).map_or(0, |e| e.length);
            if s == source && o + l > offset {
                return Some(id);
            }
        }
        self.backing
            .range((source, offset)..(source, end))
            .next()
            .map(|(_, &id)| id)
    }

    /// Validates `specs` against the table; returns nothing on success.
    pub(super) fn validate_offer(&self, specs: &[ExtentSpec]) -> Result<(), ControlError> {
        if specs.is_empty() {
            return Err(ControlError::EmptyOffer);
        }
        // [T-Q-6]: one OFFER event per extent; the outbox bound applies to offers too.
        self.check_outbox(specs.len())?;
        let pending = self.pending();
        if pending + specs.len() > self.max_pending {
            return Err(ControlError::TooManyPending {
                pending,
                offered: specs.len(),
                max: self.max_pending,
            });
        }
        let mut groups: BTreeMap<Uuid, Vec<(usize, &ExtentSpec)>> = BTreeMap::new();
        for (i, s) in specs.iter().enumerate() {
            if s.length == 0 || !is_aligned(s.length) {
                return Err(ControlError::MisalignedLength {
                    index: i,
                    length: s.length,
                });
            }
            if !is_aligned(s.source.offset) {
                return Err(ControlError::Misaligned {
                    index: i,
                    field: "backing offset",
                    value: s.source.offset,
                });
            }
            if s.source.offset.checked_add(s.length).is_none() {
                return Err(ControlError::RangeOverflow {
                    index: i,
                    offset: s.source.offset,
                    length: s.length,
                });
            }
            if let Some(gpa) = s.gpa {
                if !is_aligned(gpa) {
                    return Err(ControlError::Misaligned {
                        index: i,
                        field: "guest address",
                        value: gpa,
                    });
                }
                let inside = gpa >= self.window_addr
                    && gpa
                        .checked_add(s.length)
                        .is_some_and(|end| end <= self.window_addr + self.window_size);
                if !inside {
                    return Err(ControlError::OutsideWindow {
                        index: i,
                        gpa,
                        length: s.length,
                    });
                }
            }
            if s.flags.sharable && s.tag.is_nil() {
                return Err(ControlError::SharableUntagged(i));
            }
            if let Some(other) = self.backing_overlap(s.source.id, s.source.offset, s.length) {
                return Err(ControlError::Overlap {
                    index: i,
                    what: "backing range",
                    start: s.source.offset,
                    length: s.length,
                    other,
                });
            }
            for (j, t) in specs[..i].iter().enumerate() {
                let clash = t.source.id == s.source.id
                    && t.source.offset < s.source.offset + s.length
                    && s.source.offset < t.source.offset + t.length;
                if clash {
                    return Err(ControlError::Overlap {
                        index: i,
                        what: "backing range",
                        start: s.source.offset,
                        length: s.length,
                        other: j as u64,
                    });
                }
                if let (Some(a), Some(b)) = (s.gpa, t.gpa) {
                    if a < b + t.length && b < a + s.length {
                        return Err(ControlError::Overlap {
                            index: i,
                            what: "guest range",
                            start: a,
                            length: s.length,
                            other: j as u64,
                        });
                    }
                }
            }
            if !s.tag.is_nil() {
                if self.tags.contains_key(&s.tag) {
                    return Err(ControlError::DuplicateTag(s.tag));
                }
                groups.entry(s.tag).or_default().push((i, s));
            }
        }
        for (tag, members) in groups {
            let sharable = members[0].1.flags.sharable;
            if members.iter().any(|(_, s)| s.flags.sharable != sharable) {
                return Err(ControlError::MixedSharing(tag));
            }
            if sharable {
                let mut seqs: Vec<u16> = members.iter().map(|(_, s)| s.seq).collect();
                seqs.sort_unstable();
                let exact = seqs.iter().enumerate().all(|(k, &q)| usize::from(q) == k);
                if !exact {
                    return Err(ControlError::BadSequence {
                        tag,
                        n: members.len(),
                        got: seqs,
                    });
                }
            }
        }
        Ok(())
    }

    /// Offers a chain: validates, places every extent, queues OFFER events.
    pub fn offer(&mut self, specs: &[ExtentSpec], now_ms: u64) -> Result<OfferReceipt, ControlError> {
        self.validate_offer(specs)?;
        // Place fixed addresses first so first-fit does not take them.
        let mut placed: Vec<Option<u64>> = vec![None; specs.len()];
        let undo = |w: &mut Window, placed: &[Option<u64>]| {
            for (s, p) in specs.iter().zip(placed) {
                if let Some(g) = p {
                    w.free(*g, s.length);
                }
            }
        };
        for (i, s) in specs.iter().enumerate() {
            if let Some(gpa) = s.gpa {
                if !self.window.take(gpa, s.length) {
                    let other = self
                        .extents
                        .iter()
                        .find(|(_, e)| e.gpa < gpa + s.length && gpa < e.gpa + e.length);
                    undo(&mut self.window, &placed);
                    return Err(ControlError::Overlap {
                        index: i,
                        what: "guest range",
                        start: gpa,
                        length: s.length,
                        other: other.map_or(0, |(id, _)| *id),
                    });
                }
                placed[i] = Some(gpa);
            }
        }
        for (i, s) in specs.iter().enumerate() {
            if s.gpa.is_none() {
                match self.window.alloc(s.length) {
                    Some(g) => placed[i] = Some(g),
                    None => {
                        undo(&mut self.window, &placed);
                        return Err(ControlError::WindowFull {
                            index: i,
                            length: s.length,
                        });
                    }
                }
            }
        }
        let chain_id = self.next_chain_id;
        self.next_chain_id += 1;
        let mut ids = Vec::with_capacity(specs.len());
        let mut receipt = Vec::with_capacity(specs.len());
        for (i, (s, gpa)) in specs.iter().zip(placed).enumerate() {
            let id = self.next_extent_id;
            self.next_extent_id += 1;
            let gpa = gpa.unwrap_or_default();
            let info = Extent {
                chain_id,
                tag: s.tag,
                gpa,
                length: s.length,
                source: s.source,
                flags: s.flags,
                perf: s.perf,
                node: s.node,
                // [T-EXT-7]: `seq` is zero outside a sharable group.
                seq: if s.flags.sharable { s.seq } else { 0 },
                class: s.class,
                state: ExtentState::Pending,
            };
            self.outbox.push_back(Event::Offer {
                chain_id,
                more: i + 1 < specs.len(),
                record: record_of(id, &info),
            });
            self.index(id, &info);
            self.extents.insert(id, info);
            ids.push(id);
            receipt.push((id, gpa));
        }
        self.chains.insert(
            chain_id,
            Chain {
                ids,
                deadline_ms: now_ms.saturating_add(self.timeout_ms),
                closed: false,
            },
        );
        Ok(OfferReceipt {
            chain_id,
            extents: receipt,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::fixtures::*;

    #[test]
    fn offer_assigns_ids_and_addresses_in_order() {
        let mut t = table();
        let r = t
            .offer(&[spec(1, 1, 0, MB2), spec(1, 1, MB2, 2 * MB2)], 0)
            .unwrap();
        assert_eq!(r.chain_id, 1);
        assert_eq!(r.extents, vec![(1, 1 << 32), (2, (1 << 32) + MB2)]);
        let evs: Vec<_> = t.outbox.iter().collect();
        assert!(matches!(evs[0], Event::Offer { more: true, .. }));
        assert!(matches!(evs[1], Event::Offer { more: false, .. }));
        t.check_invariants().unwrap();
    }

    #[test]
    fn offer_rejects_bad_specs_by_name() {
        let mut t = table();
        assert_eq!(t.offer(&[], 0), Err(ControlError::EmptyOffer));
        assert!(matches!(
            t.offer(&[spec(0, 1, 0, 4096)], 0),
            Err(ControlError::MisalignedLength { .. })
        ));
        assert!(matches!(
            t.offer(&[spec(0, 1, 4096, MB2)], 0),
            Err(ControlError::Misaligned {
                field: "backing offset",
                ..
            })
        ));
        assert!(matches!(
            t.offer(&[spec(0, 1, 0, 2 * MB2), spec(0, 1, MB2, MB2)], 0),
            Err(ControlError::Overlap {
                what: "backing range",
                ..
            })
        ));
        let mut s = spec(0, 1, 0, MB2);
        s.flags.sharable = true;
        assert_eq!(t.offer(&[s], 0), Err(ControlError::SharableUntagged(0)));
        let mut a = spec(5, 1, 0, MB2);
        a.flags.sharable = true;
        let mut b = spec(5, 1, MB2, MB2);
        b.flags.sharable = true;
        b.seq = 2;
        assert!(matches!(
            t.offer(&[a, b], 0),
            Err(ControlError::BadSequence { n: 2, .. })
        ));
        t.offer(&[spec(7, 1, 0, MB2)], 0).unwrap();
        assert_eq!(
            t.offer(&[spec(7, 2, 0, MB2)], 0),
            Err(ControlError::DuplicateTag(Uuid::from_u128(7)))
        );
        assert!(matches!(
            t.offer(&[spec(8, 1, 0, MB2)], 0),
            Err(ControlError::Overlap { other: 1, .. })
        ));
        assert!(matches!(
            t.offer(&[spec(9, 3, 0, 128 * MB2)], 0),
            Err(ControlError::WindowFull { .. })
        ));
        let mut f = spec(9, 3, 0, MB2);
        f.gpa = Some(1 << 32);
        assert!(matches!(
            t.offer(&[f], 0),
            Err(ControlError::Overlap {
                what: "guest range",
                other: 1,
                ..
            })
        ));
        f.gpa = Some(0);
        assert!(matches!(
            t.offer(&[f], 0),
            Err(ControlError::OutsideWindow { .. })
        ));
        // A failed offer leaves the table as it was.
        assert_eq!(t.extents.len(), 1);
        t.check_invariants().unwrap();
    }

    #[test]
    fn pending_limit() {
        let mut t = ExtentTable::new(0, 1024 * MB2, 3, 10);
        t.offer(&[spec(0, 1, 0, MB2), spec(0, 1, MB2, MB2)], 0).unwrap();
        assert!(matches!(
            t.offer(&[spec(0, 1, 2 * MB2, MB2), spec(0, 1, 3 * MB2, MB2)], 0),
            Err(ControlError::TooManyPending {
                pending: 2,
                offered: 2,
                max: 3
            })
        ));
    }

    #[test]
    fn a_backing_range_that_overflows_is_named_as_such() {
        let mut t = table();
        let top = u64::MAX - MB2 + 1;
        assert_eq!(
            t.offer(&[spec(0, 1, top, 2 * MB2)], 0),
            Err(ControlError::RangeOverflow {
                index: 0,
                offset: top,
                length: 2 * MB2,
            })
        );
    }
}

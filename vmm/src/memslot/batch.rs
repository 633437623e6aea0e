//! Planning a batch of maps or unmaps before any memslot changes: which runs a batch of
//! accepted extents forms (neighbours merged first, so a chain of back-to-back extents becomes
//! one memslot), and which pieces of existing runs an unmap keeps.

use super::RunSpec;

/// Merges `specs` (sorted by guest address, not overlapping) into runs: maximal stretches that
/// continue one another in guest and backing space with the same flags. Each run comes with its
/// units, the lengths of the specs it was made of.
pub(super) fn merge(specs: &[RunSpec]) -> Vec<(RunSpec, Vec<u64>)> {
    let mut out: Vec<(RunSpec, Vec<u64>)> = Vec::new();
    for s in specs {
        match out.last_mut() {
            Some((run, units)) if run.continues_into(s) => {
                run.len += s.len;
                units.push(s.len);
            }
            _ => out.push((*s, vec![s.len])),
        }
    }
    out
}

/// Guest ranges `[start, end)` sorted and with touching ranges joined; `None` if two overlap.
pub(super) fn union(mut ranges: Vec<(u64, u64)>) -> Option<Vec<(u64, u64)>> {
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (a, b) in ranges {
        match out.last_mut() {
            Some(last) if a < last.1 => return None,
            Some(last) if a == last.1 => last.1 = b,
            _ => out.push((a, b)),
        }
    }
    Some(out)
}

/// The units of a run (lengths in guest order from `start`) that lie in `[a, b)`, cut at both
/// ends.
fn units_in(start: u64, units: &[u64], a: u64, b: u64) -> Vec<u64> {
    let mut out = Vec::new();
    let mut pos = start;
    for &u in units {
        let (lo, hi) = (pos.max(a), (pos + u).min(b));
        if lo < hi {
            out.push(hi - lo);
        }
        pos += u;
    }
    out
}

/// The pieces of run `spec` (with `units`) that stay mapped when the sorted, disjoint `cuts`
/// are unmapped, each with its units.
pub(super) fn keep(spec: &RunSpec, units: &[u64], cuts: &[(u64, u64)]) -> Vec<(RunSpec, Vec<u64>)> {
    let mut out = Vec::new();
    let mut pos = spec.gpa;
    let end = spec.end();
    let mut piece = |a: u64, b: u64| {
        if a < b {
            let s = RunSpec {
                gpa: a,
                len: b - a,
                offset: spec.offset + (a - spec.gpa),
                ..*spec
            };
            out.push((s, units_in(spec.gpa, units, a, b)));
        }
    };
    for &(a, b) in cuts {
        if b <= pos || a >= end {
            continue;
        }
        piece(pos, a.max(pos));
        pos = b.min(end);
    }
    piece(pos, end);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tagmem_device::SourceId;

    fn s(gpa: u64, len: u64, offset: u64) -> RunSpec {
        RunSpec {
            gpa,
            len,
            source: SourceId(1),
            offset,
            readonly: false,
        }
    }

    #[test]
    fn merge_joins_only_what_continues() {
        let runs = merge(&[s(0, 2, 10), s(2, 2, 12), s(4, 2, 20), s(8, 2, 22)]);
        assert_eq!(runs.len(), 3);
        assert_eq!(
            (runs[0].0.gpa, runs[0].0.len, runs[0].1.clone()),
            (0, 4, vec![2, 2])
        );
        assert_eq!(runs[1].1, vec![2]);
        let mut ro = s(10, 2, 24);
        ro.readonly = true;
        assert_eq!(merge(&[s(8, 2, 22), ro]).len(), 2);
    }

    #[test]
    fn union_joins_touching_and_refuses_overlap() {
        assert_eq!(union(vec![(4, 6), (0, 2), (2, 4)]), Some(vec![(0, 6)]));
        assert_eq!(union(vec![(0, 4), (8, 9)]), Some(vec![(0, 4), (8, 9)]));
        assert_eq!(union(vec![(0, 4), (3, 5)]), None);
    }

    #[test]
    fn keep_cuts_pieces_and_their_units() {
        let run = s(0, 8, 100);
        let units = [2, 2, 2, 2];
        let k = keep(&run, &units, &[(2, 4), (5, 6)]);
        assert_eq!(k.len(), 3);
        assert_eq!((k[0].0.gpa, k[0].0.len, k[0].0.offset), (0, 2, 100));
        assert_eq!((k[1].0.gpa, k[1].0.len, k[1].1.clone()), (4, 1, vec![1]));
        assert_eq!(
            (k[2].0.gpa, k[2].0.len, k[2].0.offset, k[2].1.clone()),
            (6, 2, 106, vec![2])
        );
        assert!(keep(&run, &units, &[(0, 8)]).is_empty());
    }
}

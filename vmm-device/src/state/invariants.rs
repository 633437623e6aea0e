//! The invariants of an extent table, checked when a snapshot (untrusted) is restored and by
//! tests; a failure names the field at fault.

use super::{is_aligned, Extent, ExtentTable, Window};
use crate::control::{ExtentInfo, ExtentState};
use crate::mapper::SourceId;
use std::collections::{BTreeMap, HashMap};
use uuid::Uuid;

impl ExtentTable {
    /// Checks the table's invariants; used by restore (whose input is untrusted: every sum is
    /// checked before it is used) and by tests. The error names the field at fault.
    pub fn check_invariants(&self) -> Result<(), Invalid> {
        let window_end = self.window_addr.saturating_add(self.window_size);
        // Which chain lists each pending extent; a chain naming an extent twice is refused.
        let mut in_chain: HashMap<u64, u64> = HashMap::new();
        for (&cid, c) in &self.chains {
            let field = |f: &str| format!("chains[id {cid}].{f}");
            if cid == 0 || cid >= self.next_chain_id {
                return Err(Invalid::new(
                    field("id"),
                    format!("not in 1..next_chain_id ({})", self.next_chain_id),
                ));
            }
            if c.ids.is_empty() {
                return Err(Invalid::new(field("ids"), "a chain has at least one extent"));
            }
            for id in &c.ids {
                if let Some(other) = in_chain.insert(*id, cid) {
                    return Err(Invalid::new(
                        field("ids"),
                        format!("extent {id} is listed twice (also by chain {other})"),
                    ));
                }
                match self.extents.get(id) {
                    None => return Err(Invalid::new(field("ids"), format!("names unknown extent {id}"))),
                    Some(e) if e.chain_id != cid => {
                        return Err(Invalid::new(
                            field("ids"),
                            format!("names extent {id} of chain {}", e.chain_id),
                        ))
                    }
                    Some(e) if e.state != ExtentState::Pending => {
                        return Err(Invalid::new(
                            field("ids"),
                            format!("names extent {id}, which is {:?}", e.state),
                        ))
                    }
                    Some(_) => {}
                }
            }
        }
        if in_chain.len() > self.max_pending {
            return Err(Invalid::new(
                "chains",
                format!("{} extents pending, at most {}", in_chain.len(), self.max_pending),
            ));
        }
        let all = self.infos();
        for e in &all {
            let field = |f: &str| format!("extents[id {}].{f}", e.id);
            if e.id == 0 || e.id >= self.next_extent_id {
                return Err(Invalid::new(
                    field("id"),
                    format!("not in 1..next_extent_id ({})", self.next_extent_id),
                ));
            }
            if e.chain_id == 0 || e.chain_id >= self.next_chain_id {
                return Err(Invalid::new(
                    field("chain_id"),
                    format!(
                        "{} is not in 1..next_chain_id ({})",
                        e.chain_id, self.next_chain_id
                    ),
                ));
            }
            if e.length == 0 || !is_aligned(e.length) {
                return Err(Invalid::new(field("length"), "not a non-zero multiple of 2 MiB"));
            }
            if !is_aligned(e.gpa) {
                return Err(Invalid::new(field("gpa"), "not 2 MiB aligned"));
            }
            let inside =
                e.gpa >= self.window_addr && e.gpa.checked_add(e.length).is_some_and(|end| end <= window_end);
            if !inside {
                return Err(Invalid::new(field("gpa"), "the extent leaves the tagged window"));
            }
            if !is_aligned(e.source.offset) {
                return Err(Invalid::new(field("source.offset"), "not 2 MiB aligned"));
            }
            if e.source.offset.checked_add(e.length).is_none() {
                return Err(Invalid::new(
                    field("source.offset"),
                    "the backing range overflows",
                ));
            }
            if e.poison
                .iter()
                .any(|&(o, l)| l == 0 || o.checked_add(l).is_none_or(|end| end > e.length))
            {
                return Err(Invalid::new(
                    field("poison"),
                    "a range is empty or outside the extent",
                ));
            }
            if e.flags.sharable && e.tag.is_nil() {
                return Err(Invalid::new(field("flags"), "sharable capacity needs a tag"));
            }
            if !e.flags.sharable && e.seq != 0 {
                return Err(Invalid::new(field("seq"), "non-zero outside a sharable group"));
            }
            let pending = e.state == ExtentState::Pending;
            if pending != in_chain.contains_key(&e.id) {
                return Err(Invalid::new(
                    field("state"),
                    format!(
                        "{:?}, but {} a pending chain",
                        e.state,
                        if pending { "not in" } else { "in" }
                    ),
                ));
            }
        }
        // Ranges: every end was checked above, so these sums cannot overflow.
        let mut by_gpa: Vec<(u64, u64, u64)> = all.iter().map(|e| (e.gpa, e.length, e.id)).collect();
        by_gpa.sort_unstable();
        for w in by_gpa.windows(2) {
            if w[0].0 + w[0].1 > w[1].0 {
                return Err(Invalid::new(
                    format!("extents[id {}].gpa", w[1].2),
                    format!("overlaps extent {} in the guest", w[0].2),
                ));
            }
        }
        let mut by_src: Vec<(SourceId, u64, u64, u64)> = all
            .iter()
            .map(|e| (e.source.id, e.source.offset, e.length, e.id))
            .collect();
        by_src.sort_unstable();
        for w in by_src.windows(2) {
            if w[0].0 == w[1].0 && w[0].1 + w[0].2 > w[1].1 {
                return Err(Invalid::new(
                    format!("extents[id {}].source", w[1].3),
                    format!("shares backing with extent {}", w[0].3),
                ));
            }
        }
        // Tag groups: one chain, one sharing mode, and sharable sequence numbers exactly 0..n-1.
        let mut groups: BTreeMap<Uuid, Vec<&ExtentInfo>> = BTreeMap::new();
        for e in all.iter().filter(|e| !e.tag.is_nil()) {
            groups.entry(e.tag).or_default().push(e);
        }
        for (tag, members) in groups {
            let first = members[0];
            if let Some(e) = members.iter().find(|e| e.chain_id != first.chain_id) {
                return Err(Invalid::new(
                    format!("extents[id {}].chain_id", e.id),
                    format!("tag {tag} spans chains {} and {}", first.chain_id, e.chain_id),
                ));
            }
            if let Some(e) = members.iter().find(|e| e.flags.sharable != first.flags.sharable) {
                return Err(Invalid::new(
                    format!("extents[id {}].flags", e.id),
                    format!("tag {tag} mixes sharable and non-sharable extents"),
                ));
            }
            if first.flags.sharable {
                let mut seqs: Vec<u16> = members.iter().map(|e| e.seq).collect();
                seqs.sort_unstable();
                if !seqs.iter().enumerate().all(|(k, &q)| usize::from(q) == k) {
                    return Err(Invalid::new(
                        format!("extents[id {}].seq", first.id),
                        format!(
                            "sharable tag {tag} has {} extents, sequence numbers {seqs:?} are not exactly 0..{}",
                            members.len(),
                            members.len()
                        ),
                    ));
                }
            }
        }
        if let Some(id) = self.poison.keys().find(|id| !self.extents.contains_key(id)) {
            return Err(Invalid::new(
                format!("extents[id {id}].poison"),
                "poison recorded for an unknown extent",
            ));
        }
        Ok(())
    }

    /// Rebuilds the tag and backing indexes and the window's free list from `extents`, after
    /// checking every invariant.
    pub fn reindex(&mut self) -> Result<(), Invalid> {
        self.check_invariants()?;
        self.tags.clear();
        self.backing.clear();
        self.window = Window::new(self.window_addr, self.window_size);
        for e in self.infos() {
            if !self.window.take(e.gpa, e.length) {
                return Err(Invalid::new(
                    format!("extents[id {}].gpa", e.id),
                    "overlaps another extent or leaves the window",
                ));
            }
            self.index(e.id, &Extent::from_info(&e));
        }
        Ok(())
    }
}

/// A broken invariant of an untrusted table: the field at fault and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Invalid {
    /// The field, as a path into the snapshot (`extents[id 3].gpa`).
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

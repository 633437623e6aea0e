//! Free ranges of the guest-physical window tagged extents are placed in.

use std::collections::BTreeMap;

/// Free ranges of the guest-physical window, keyed by start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Window {
    free: BTreeMap<u64, u64>,
}

impl Window {
    /// A window with `[addr, addr + size)` free.
    pub fn new(addr: u64, size: u64) -> Self {
        let mut free = BTreeMap::new();
        if size > 0 {
            free.insert(addr, size);
        }
        Window { free }
    }

    /// First-fit allocation of `len` bytes.
    pub fn alloc(&mut self, len: u64) -> Option<u64> {
        let (&start, &flen) = self.free.iter().find(|(_, &l)| l >= len)?;
        self.free.remove(&start);
        if flen > len {
            self.free.insert(start + len, flen - len);
        }
        Some(start)
    }

    /// Takes exactly `[gpa, gpa + len)` if it is wholly free.
    pub fn take(&mut self, gpa: u64, len: u64) -> bool {
        let Some(end) = gpa.checked_add(len) else {
            return false;
        };
        // Few tree operations: the hole's head shrinks in place, only its tail is inserted.
        let Some((&start, flen)) = self.free.range_mut(..=gpa).next_back() else {
            return false;
        };
        let fend = start + *flen;
        if fend < end {
            return false;
        }
        if gpa > start {
            *flen = gpa - start;
        } else {
            self.free.remove(&start);
        }
        if fend > end {
            self.free.insert(end, fend - end);
        }
        true
    }

    /// Returns `[gpa, gpa + len)` to the free list, merging neighbours.
    pub fn free(&mut self, gpa: u64, len: u64) {
        let mut end = gpa + len;
        if let Some(nl) = self.free.remove(&end) {
            end += nl;
        }
        // A hole ending at `gpa` grows in place.
        if let Some((&ps, pl)) = self.free.range_mut(..gpa).next_back() {
            if ps + *pl == gpa {
                *pl = end - ps;
                return;
            }
        }
        self.free.insert(gpa, end - gpa);
    }

    /// Total free bytes.
    #[cfg(test)]
    pub fn free_bytes(&self) -> u64 {
        self.free.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::fixtures::*;

    #[test]
    fn window_alloc_take_free_merge() {
        let mut w = Window::new(0, 8 * MB2);
        assert_eq!(w.alloc(2 * MB2), Some(0));
        assert!(w.take(4 * MB2, MB2));
        assert!(!w.take(4 * MB2, MB2));
        assert_eq!(w.alloc(2 * MB2), Some(2 * MB2));
        assert_eq!(w.alloc(2 * MB2), Some(5 * MB2));
        w.free(0, 2 * MB2);
        w.free(2 * MB2, 2 * MB2);
        w.free(4 * MB2, MB2);
        w.free(5 * MB2, 2 * MB2);
        assert_eq!(w.free_bytes(), 8 * MB2);
        assert_eq!(w.free.len(), 1);
    }
}

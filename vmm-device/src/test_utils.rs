//! Test doubles for crates that embed the device: a mapper that records what is mapped, a clock
//! that only moves when told, and a notifier that counts interrupts.

use crate::mapper::{Clock, MapperError, Mapping, MemoryMapper, Notifier};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What a [`FakeMapper`] holds; shared so a test can look while the device owns the mapper.
#[derive(Debug, Default)]
pub struct FakeMapperState {
    /// Mapped ranges by guest start address (non-overlapping).
    pub mapped: BTreeMap<u64, Mapping>,
    /// Calls that broke the mapper contract (overlapping map, unmap of an unmapped range).
    pub violations: Vec<String>,
    /// Fail every `map` whose range contains this guest address.
    pub fail_map_at: Option<u64>,
    /// Fail every `unmap`.
    pub fail_unmap: bool,
    /// Successful map calls.
    pub maps: u64,
    /// Successful unmap calls.
    pub unmaps: u64,
}

impl FakeMapperState {
    /// The mapping covering `gpa`, if any.
    pub fn lookup(&self, gpa: u64) -> Option<Mapping> {
        let (_, m) = self.mapped.range(..=gpa).next_back()?;
        (gpa < m.gpa + m.len).then_some(*m)
    }

    /// Total mapped bytes.
    pub fn mapped_bytes(&self) -> u64 {
        self.mapped.values().map(|m| m.len).sum()
    }
}

/// A [`MemoryMapper`] that keeps an interval map instead of touching a hypervisor.
#[derive(Debug, Clone, Default)]
pub struct FakeMapper(pub Arc<Mutex<FakeMapperState>>);

impl FakeMapper {
    /// A new mapper and a handle on its state.
    pub fn new() -> (Self, Arc<Mutex<FakeMapperState>>) {
        let s = Arc::new(Mutex::new(FakeMapperState::default()));
        (FakeMapper(s.clone()), s)
    }
}

fn err(m: &Mapping, reason: &str) -> MapperError {
    MapperError {
        gpa: m.gpa,
        len: m.len,
        reason: reason.into(),
    }
}

impl MemoryMapper for FakeMapper {
    fn map(&mut self, m: &Mapping) -> Result<(), MapperError> {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let end = m.end().ok_or_else(|| err(m, "range overflows"))?;
        if s.fail_map_at.is_some_and(|g| g >= m.gpa && g < end) {
            return Err(err(m, "injected failure"));
        }
        let overlaps = s
            .mapped
            .range(..end)
            .next_back()
            .is_some_and(|(_, o)| o.gpa + o.len > m.gpa);
        if overlaps || m.len == 0 {
            s.violations
                .push(format!("map of {:#x}+{:#x} overlaps a mapping", m.gpa, m.len));
            return Err(err(m, "overlap"));
        }
        s.mapped.insert(m.gpa, *m);
        s.maps += 1;
        Ok(())
    }

    fn unmap(&mut self, m: &Mapping) -> Result<(), MapperError> {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if s.fail_unmap {
            return Err(err(m, "injected failure"));
        }
        let end = m.end().ok_or_else(|| err(m, "range overflows"))?;
        // The range must be covered without holes.
        let mut cur = m.gpa;
        while cur < end {
            match s.lookup(cur) {
                Some(o) => cur = o.gpa + o.len,
                None => {
                    s.violations.push(format!(
                        "unmap of {:#x}+{:#x} covers unmapped {cur:#x}",
                        m.gpa, m.len
                    ));
                    return Err(err(m, "not mapped"));
                }
            }
        }
        let touched: Vec<Mapping> = s
            .mapped
            .range(..end)
            .filter(|(_, o)| o.gpa + o.len > m.gpa)
            .map(|(_, o)| *o)
            .collect();
        for o in touched {
            s.mapped.remove(&o.gpa);
            if o.gpa < m.gpa {
                s.mapped.insert(
                    o.gpa,
                    Mapping {
                        len: m.gpa - o.gpa,
                        ..o
                    },
                );
            }
            let oend = o.gpa + o.len;
            if oend > end {
                let shift = end - o.gpa;
                let mut rest = o;
                rest.gpa = end;
                rest.len = oend - end;
                rest.source.offset += shift;
                s.mapped.insert(end, rest);
            }
        }
        s.unmaps += 1;
        Ok(())
    }
}

/// A clock that moves only when the test says so.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// Moves the clock forward.
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A notifier that counts interrupts.
#[derive(Debug, Default)]
pub struct CountingNotifier {
    /// Used-buffer interrupts per queue (index 0 and 1).
    pub used: [AtomicU64; 2],
    /// Config-change interrupts.
    pub config: AtomicU64,
}

impl Notifier for CountingNotifier {
    fn signal_used_queue(&self, queue: u16) {
        if let Some(c) = self.used.get(usize::from(queue)) {
            c.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn signal_config_change(&self) {
        self.config.fetch_add(1, Ordering::SeqCst);
    }
}

//! The checks run after every step: the mapper holds exactly what the device's state says is
//! mapped, and the extent table is consistent.

use crate::proto::EXTENT_ALIGN;
use std::sync::{Arc, Mutex};
use tagmem_device::test_utils::FakeMapperState;
use tagmem_device::{DeviceState, ExtentInfo, ExtentState, Mapping, SourceRef};

pub(crate) fn lock(s: &Arc<Mutex<FakeMapperState>>) -> std::sync::MutexGuard<'_, FakeMapperState> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// A mapping normalised for comparison: adjacent ranges of one backing merged.
pub(crate) fn normalise(mut v: Vec<Mapping>) -> Vec<Mapping> {
    v.sort_by_key(|m| m.gpa);
    let mut out: Vec<Mapping> = Vec::new();
    for m in v {
        if let Some(last) = out.last_mut() {
            let joins = last.gpa.checked_add(last.len) == Some(m.gpa)
                && last.source.id == m.source.id
                && last.source.offset.checked_add(last.len) == Some(m.source.offset)
                && last.readonly == m.readonly;
            if joins {
                last.len += m.len;
                continue;
            }
        }
        out.push(m);
    }
    out
}

/// The mappings a device state says the guest can reach: plugged blocks and accepted extents.
pub fn expected_mappings(s: &DeviceState) -> Vec<Mapping> {
    let bs = s.config.block_size;
    let mut v = Vec::new();
    if let Some(src) = s.config.region_source {
        for &(first, count) in &s.plugged {
            v.push(Mapping {
                gpa: s.config.region_addr + first * bs,
                len: count * bs,
                source: SourceRef {
                    id: src.id,
                    offset: src.offset + first * bs,
                },
                readonly: false,
            });
        }
    }
    for e in s.extents.iter().filter(|e| e.state != ExtentState::Pending) {
        v.push(Mapping {
            gpa: e.gpa,
            len: e.length,
            source: e.source,
            readonly: e.flags.readonly,
        });
    }
    normalise(v)
}

/// Panics unless the mapper holds exactly what `s` says is mapped, and broke no contract.
pub fn check_mapper(s: &DeviceState, mapper: &Arc<Mutex<FakeMapperState>>, what: &str) {
    let m = lock(mapper);
    assert!(
        m.violations.is_empty(),
        "{what}: the device broke the mapper contract: {:?}",
        m.violations
    );
    let have = normalise(m.mapped.values().copied().collect());
    let want = expected_mappings(s);
    assert_eq!(
        have, want,
        "{what}: the guest can reach other memory than the plugged blocks and accepted extents"
    );
}

/// Panics unless the extent table of `s` is self-consistent as far as a host can see it.
pub fn check_table(s: &DeviceState) {
    let mut by_gpa: Vec<&ExtentInfo> = s.extents.iter().collect();
    by_gpa.sort_by_key(|e| e.gpa);
    for w in by_gpa.windows(2) {
        assert!(
            w[0].gpa
                .checked_add(w[0].length)
                .is_some_and(|end| end <= w[1].gpa),
            "extents {} and {} overlap in the guest",
            w[0].id,
            w[1].id
        );
    }
    let window = s.config.tagged;
    for e in &s.extents {
        assert!(e.length > 0 && e.length % EXTENT_ALIGN == 0 && e.gpa % EXTENT_ALIGN == 0);
        let w = window.expect("extents exist only with a tagged window");
        assert!(
            e.gpa >= w.addr
                && e.gpa
                    .checked_add(e.length)
                    .is_some_and(|end| end <= w.addr + w.size),
            "extent {} lies outside the window",
            e.id
        );
        assert!(e.id < s.next_extent_id && e.chain_id < s.next_chain_id);
        let pending = s.chains.iter().any(|c| c.ids.contains(&e.id));
        assert_eq!(
            pending,
            e.state == ExtentState::Pending,
            "extent {} chain membership",
            e.id
        );
    }
    let pending: usize = s.chains.iter().map(|c| c.ids.len()).sum();
    assert!(
        pending <= s.config.max_pending as usize,
        "more extents pending than allowed"
    );
}

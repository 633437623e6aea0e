//! What the device tells the host: a source is no longer used once released, rejected and
//! abandoned extents give their backing back and no other live extent names it; and offer errors
//! that say what is wrong.

use tagmem_device::test_utils::Harness;
use tagmem_device::*;
use tagmem_wire::*;

mod common;

use common::*;

fn on(source: u64, s: ExtentSpec) -> ExtentSpec {
    ExtentSpec {
        source: SourceRef {
            id: SourceId(source),
            offset: s.source.offset,
        },
        ..s
    }
}

#[test]
fn a_source_is_unused_once_its_last_extent_is_released() {
    let mut h = Harness::tagged();
    h.post_event_buffers(8, 128);
    h.dev
        .offer(&[
            on(7, spec(0xa, 0, MB2)),
            on(7, spec(0xa, MB2, MB2)),
            on(8, spec(0xa, 0, MB2)),
        ])
        .unwrap();
    h.events();
    assert_eq!(accept(&mut h, 1, &[1, 2, 3]), (ACK, reason::NONE, 3));
    assert!(
        h.dev.take_unused_sources().is_empty(),
        "accepted capacity is in use"
    );
    assert_eq!(release(&mut h, 1, 0xa), (ACK, reason::NONE, 3));
    // Each source once, when its last extent went.
    assert_eq!(h.dev.take_unused_sources(), vec![SourceId(7), SourceId(8)]);
    assert!(h.dev.take_unused_sources().is_empty(), "drained");
}

#[test]
fn rejected_and_abandoned_extents_give_their_sources_back() {
    let mut h = Harness::tagged();
    h.post_event_buffers(8, 128);
    h.dev.offer(&[on(7, spec(0, 0, MB2))]).unwrap();
    h.dev.offer(&[on(8, spec(0, 0, MB2))]).unwrap();
    h.events();
    // An untagged chain answered with nothing accepted: its extent is rejected.
    assert_eq!(accept(&mut h, 1, &[]), (ACK, reason::NONE, 0));
    assert_eq!(h.dev.take_unused_sources(), vec![SourceId(7)]);
    // A chain left unanswered past its deadline is abandoned.
    h.clock.advance(u64::from(Harness::config().offer_timeout_ms) + 1);
    h.dev.poll_timers();
    assert_eq!(h.dev.take_unused_sources(), vec![SourceId(8)]);
    assert!(h.dev.extents().is_empty());
}

#[test]
fn a_source_shared_by_two_chains_stays_in_use_while_one_is_live() {
    let mut h = Harness::tagged();
    h.post_event_buffers(8, 128);
    h.dev.offer(&[on(7, spec(0xa, 0, MB2))]).unwrap();
    h.dev.offer(&[on(7, spec(0xb, MB2, MB2))]).unwrap();
    h.events();
    assert_eq!(accept(&mut h, 1, &[]), (ACK, reason::NONE, 0));
    assert!(
        h.dev.take_unused_sources().is_empty(),
        "chain 2 still names source 7"
    );
    assert!(h.dev.source_in_use(SourceId(7)));
    assert_eq!(accept(&mut h, 2, &[]), (ACK, reason::NONE, 0));
    assert_eq!(h.dev.take_unused_sources(), vec![SourceId(7)]);
}

#[test]
fn a_backing_range_past_2_64_is_named_an_overflow_not_a_misalignment() {
    let mut h = Harness::tagged();
    h.post_event_buffers(2, 128);
    let offset = u64::MAX - (MB2 - 1);
    let e = h.dev.offer(&[on(7, spec(0xa, offset, MB2))]).unwrap_err();
    assert_eq!(
        e,
        ControlError::RangeOverflow {
            index: 0,
            offset,
            length: MB2
        }
    );
    assert_eq!(
        e.to_string(),
        format!("extent 0: backing range {offset:#x}+0x200000 ends past 2^64")
    );
}

//! Restore treats a snapshot as untrusted: every field is checked, and a bad one is refused with
//! [`DeviceError::InvalidSnapshot`] naming it (item C16). A legal state the device produced
//! itself always restores (item C15).

mod common;

use common::*;
use std::sync::Arc;
use tagmem_device::test_utils::{FakeMapper, Harness, ManualClock};
use tagmem_device::*;
use tagmem_wire::*;
use uuid::Uuid;

/// A device with an accepted two-extent group, an accepted sharable group of two and a pending
/// chain whose first OFFER is still queued.
fn live() -> Harness {
    let mut h = Harness::tagged();
    h.offer_and_accept(&[spec(1, 0, MB2), spec(1, MB2, MB2)]).unwrap();
    h.offer_and_accept(&[sharable(2, 2 * MB2, 0), sharable(2, 3 * MB2, 1)])
        .unwrap();
    h.dev.offer(&[spec(3, 4 * MB2, MB2)]).unwrap();
    h
}

fn restore(
    h: &Harness,
    s: &DeviceState,
) -> Result<TaggedMemDevice<Arc<vm_memory::GuestMemoryMmap>>, DeviceError> {
    TaggedMemDevice::restore(
        s,
        Box::new(FakeMapper::new().0),
        Arc::new(NoopNotifier),
        Arc::new(ManualClock::default()),
        s.queues.as_ref().map(|_| h.mem.clone()),
    )
}

/// The field a refusal names.
fn refused(h: &Harness, s: &DeviceState) -> String {
    match restore(h, s) {
        Err(DeviceError::InvalidSnapshot { field, .. }) => field,
        Err(e) => panic!("refused with {e}, not as an invalid snapshot"),
        Ok(_) => panic!("accepted"),
    }
}

#[test]
fn a_live_snapshot_restores() {
    let h = live();
    let s = h.dev.snapshot();
    let d = restore(&h, &s).unwrap();
    assert_eq!(d.extents(), h.dev.extents());
    assert_eq!(d.snapshot(), s);
}

#[test]
fn restore_refuses_backing_offset_near_u64_max() {
    let h = live();
    let mut s = h.dev.snapshot();
    s.extents[0].source.offset = !(MB2 - 1);
    assert_eq!(
        s.extents[0].source.offset % MB2,
        0,
        "aligned, so only the sum is wrong"
    );
    assert_eq!(refused(&h, &s), "extents[id 1].source.offset");
}

#[test]
fn restore_refuses_duplicate_chain_id() {
    let h = live();
    let good = h.dev.snapshot();
    let mut s = good.clone();
    let c = s.chains[0].clone();
    s.chains.push(c);
    assert_eq!(refused(&h, &s), "chains[1].id");
    let mut s = good;
    let id = s.chains[0].ids[0];
    s.chains[0].ids.push(id);
    assert_eq!(
        refused(&h, &s),
        "chains[id 3].ids",
        "an extent listed twice in a chain"
    );
}

#[test]
fn restore_refuses_unbounded_remaining_ms() {
    let h = live();
    let mut s = h.dev.snapshot();
    s.chains[0].remaining_ms = u64::MAX;
    assert_eq!(refused(&h, &s), "chains[0].remaining_ms");
    s.chains[0].remaining_ms = u64::from(VIRTIO_MEM_DEFAULT_OFFER_TIMEOUT_MS);
    restore(&h, &s).unwrap();
}

#[test]
fn restore_refuses_queued_offer_disagreeing_with_the_table() {
    let h = live();
    let good = h.dev.snapshot();
    let offer = |s: &DeviceState| {
        s.outbox
            .iter()
            .position(|b| matches!(Event::try_from(b.as_slice()), Ok(Event::Offer { .. })))
            .expect("a queued offer")
    };
    let mut s = good.clone();
    let i = offer(&s);
    let mut m = EventMsg::read_from_bytes(&s.outbox[i]).unwrap();
    m.record.addr = Le64::new(m.record.addr.get() + MB2);
    s.outbox[i] = m.as_bytes().to_vec();
    assert_eq!(refused(&h, &s), format!("outbox[{i}]"));
    let mut s = good.clone();
    let mut m = EventMsg::read_from_bytes(&s.outbox[i]).unwrap();
    m.flags = Le16::new(VIRTIO_MEM_EVT_F_MORE);
    s.outbox[i] = m.as_bytes().to_vec();
    assert_eq!(
        refused(&h, &s),
        format!("outbox[{i}]"),
        "MORE on a chain's last event"
    );
    let mut s = good;
    let dup = s.outbox[i].clone();
    s.outbox.push(dup);
    assert_eq!(refused(&h, &s), format!("outbox[{}]", s.outbox.len() - 1));
}

#[test]
fn restore_refuses_mapped_extents_without_the_tagged_feature() {
    let h = live();
    let mut s = h.dev.snapshot();
    s.acked_features &= !(1 << VIRTIO_MEM_F_TAGGED_EXTENTS);
    s.queues.as_mut().unwrap().truncate(1);
    assert_eq!(refused(&h, &s), "acked_features");
}

#[test]
fn restore_refuses_mapped_extents_on_a_never_activated_device() {
    let h = live();
    let mut s = h.dev.snapshot();
    s.queues = None;
    s.acked_features = 0;
    s.outbox.clear();
    assert_eq!(refused(&h, &s), "acked_features");
    // The same table after a reset (features forgotten, replay pending) is legal.
    s.replay_pending = true;
    restore(&h, &s).unwrap();
}

#[test]
fn restore_refuses_sharable_group_of_one_with_seq_9() {
    let mut h = Harness::tagged();
    h.offer_and_accept(&[sharable(5, 0, 0)]).unwrap();
    let mut s = h.dev.snapshot();
    s.extents[0].seq = 9;
    assert_eq!(refused(&h, &s), "extents[id 1].seq");
}

#[test]
fn restore_refuses_queue_max_size_above_the_devices() {
    let h = live();
    let mut s = h.dev.snapshot();
    s.queues.as_mut().unwrap()[1].max_size = 1024;
    assert_eq!(refused(&h, &s), "queues[1].max_size");
}

#[test]
fn restore_refuses_extent_chain_id_at_or_above_next_chain_id() {
    let h = live();
    let mut s = h.dev.snapshot();
    s.extents[0].chain_id = s.next_chain_id;
    assert_eq!(refused(&h, &s), "extents[id 1].chain_id");
}

#[test]
fn restore_refuses_replay_pending_on_an_active_tagged_device() {
    let h = live();
    let mut s = h.dev.snapshot();
    s.replay_pending = true;
    assert_eq!(refused(&h, &s), "replay_pending");
}

/// Item C15: metadata and release requests still queued for a group that is then released are
/// purged with it: nothing about the group reaches the driver after the release, and the
/// device's own snapshot of that state restores.
#[test]
fn release_purges_queued_events_and_the_snapshot_restores() {
    let mut h = Harness::tagged();
    let (r, _) = h.offer_and_accept(&[spec(7, 0, MB2), spec(7, MB2, MB2)]).unwrap();
    let (u, _) = h.offer_and_accept(&[spec(0, 4 * MB2, MB2)]).unwrap();
    let tag = Target::Tag(Uuid::from_u128(7));
    // No event buffers posted: everything below stays queued.
    h.dev.update_metadata(tag, Perf::default()).unwrap();
    h.dev.request_release(tag).unwrap();
    h.dev.inject_poison(r.extents[1].0, 0, 4096).unwrap();
    h.dev
        .update_metadata(Target::Extent(u.extents[0].0), Perf::default())
        .unwrap();
    assert_eq!(h.dev.snapshot().outbox.len(), 5);
    assert_eq!(release(&mut h, r.extents[0].0, 7), (ACK, reason::NONE, 2));
    let s = h.dev.snapshot();
    assert_eq!(s.outbox.len(), 1, "only the untagged extent's METADATA is left");
    let d = restore(&h, &s).unwrap();
    assert_eq!(d.snapshot(), s);
    h.post_event_buffers(8, 128);
    let evs = h.events();
    assert!(
        matches!(&evs[..], [Event::Metadata { record }] if record.extent_id.get() == u.extents[0].0),
        "no METADATA, RELEASE_REQUEST or POISON after the release: {evs:?}"
    );
}

#[test]
fn restore_refuses_a_base_region_of_more_blocks_than_a_bitmap_bound() {
    // Fuzz finding (restore_json): 2^32 - 1 blocks of 4 KiB made restore allocate 4 GiB and walk
    // every block. The region is refused by the construction-time validation restore re-runs.
    let h = live();
    let mut s = h.dev.snapshot();
    s.config.block_size = 4096;
    s.config.region_addr = 1 << 30;
    s.config.region_size = ((1u64 << 32) - 1) * 4096;
    s.config.region_source = Some(SourceRef {
        id: SourceId(0),
        offset: 0,
    });
    s.config.requested_size = 0;
    s.requested_size = 0;
    s.plugged.clear();
    match restore(&h, &s) {
        Err(DeviceError::InvalidConfig { field, .. }) => assert_eq!(field, "region_size"),
        Err(e) => panic!("refused with {e}, not for its region size"),
        Ok(_) => panic!("accepted"),
    }
}

//! The tagged life cycle end to end through real queues: offers, accept, release, metadata,
//! poison, timeout, reset, snapshot/restore. Requirement ids refer to guest-driver-spec/SPEC.md.

use tagmem_device::test_utils::{FakeMapper, Harness, EVT_ADDR, REQ_ADDR, RESP_ADDR};
use tagmem_device::*;
use tagmem_wire::*;
use uuid::Uuid;

mod common;

use common::*;

#[test]
fn full_life_cycle() {
    let mut h = Harness::tagged();
    h.post_event_buffers(8, 128);
    let r = h
        .dev
        .offer(&[spec(0xa, 0, MB2), spec(0xa, MB2, 2 * MB2)])
        .unwrap();
    assert_eq!(r.chain_id, 1);
    // [T-OFFER-*] One event per extent, More on all but the last, full metadata.
    let evs = h.events();
    assert_eq!(offers(&evs), vec![(1, true, 1), (1, false, 2)]);
    let Event::Offer { record, .. } = evs[1] else {
        panic!()
    };
    assert_eq!(record.tag, *Uuid::from_u128(0xa).as_bytes());
    assert_eq!((record.addr.get(), record.length.get()), (WIN + MB2, 2 * MB2));
    assert_eq!(record.read_latency_ns.get(), 250);
    assert_eq!(record.write_bandwidth_mbps.get(), 10_000);
    assert_eq!(
        (record.node_id.get(), record.source),
        (2, VIRTIO_MEM_SOURCE_CXL_DC)
    );
    // [T-SEC-1] nothing is mapped before the accept.
    assert_eq!(h.mapper.lock().unwrap().mapped_bytes(), 0);
    assert_eq!(accept(&mut h, 1, &[1, 2]), (ACK, reason::NONE, 2));
    {
        let m = h.mapper.lock().unwrap();
        assert_eq!(m.lookup(WIN).unwrap().source.offset, 0);
        assert_eq!(m.lookup(WIN + 2 * MB2).unwrap().len, 2 * MB2);
    }
    assert!(h.dev.extents().iter().all(|e| e.state == ExtentState::Accepted));
    let mut cfg = [0u8; 88];
    h.dev.read_config(0, &mut cfg);
    assert_eq!(
        TaggedConfig::read_from_bytes(&cfg)
            .unwrap()
            .accepted_extents
            .get(),
        2
    );
    assert!(h.dev.source_in_use(SourceId(7)) && !h.dev.source_in_use(SourceId(8)));
    // [T-REL-*] driver-initiated release covers the whole tag group and unmaps before the ACK.
    assert_eq!(release(&mut h, 2, 0xa), (ACK, reason::NONE, 2));
    assert!(
        !h.dev.source_in_use(SourceId(7)),
        "no live extent uses the backing any more"
    );
    assert_eq!(h.mapper.lock().unwrap().mapped_bytes(), 0);
    assert!(h.dev.extents().is_empty());
    let evs = h.dev.take_host_events();
    assert!(
        matches!(&evs[0], HostEvent::ChainAnswered { accepted, rejected, .. } if accepted == &[1, 2] && rejected.is_empty())
    );
    assert!(matches!(&evs[1], HostEvent::Released { extents } if extents.len() == 2));
    assert!(h.mapper.lock().unwrap().violations.is_empty());
}

#[test]
fn hundred_extent_chain_with_partial_accept() {
    let mut h = Harness::tagged();
    h.post_event_buffers(128, 128);
    let specs: Vec<ExtentSpec> = (0..100).map(|i| spec(0, i * MB2, MB2)).collect();
    h.dev.offer(&specs).unwrap();
    let evs = offers(&h.events());
    assert_eq!(evs.len(), 100);
    assert!(evs[..99].iter().all(|e| e.1) && !evs[99].1);
    // A second offer is refused while 100 are pending.
    assert!(matches!(
        h.dev.offer(&[spec(0, 200 * MB2, MB2)]),
        Err(ControlError::TooManyPending { .. })
    ));
    let even: Vec<u64> = (1..=100).filter(|i| i % 2 == 0).collect();
    assert_eq!(accept(&mut h, 1, &even), (ACK, reason::NONE, 50));
    let table = h.dev.extents();
    assert_eq!(table.len(), 50);
    assert!(table.iter().all(|e| e.id % 2 == 0));
    let m = h.mapper.lock().unwrap();
    assert_eq!(m.mapped_bytes(), 50 * MB2);
    assert!(m.lookup(WIN).is_none(), "rejected extent 1 is not mapped");
    assert!(m.lookup(WIN + MB2).is_some());
}

#[test]
fn accept_errors_leave_the_chain_pending() {
    let mut h = Harness::tagged();
    h.dev
        .offer(&[sharable(5, 0, 0), sharable(5, MB2, 1), spec(0, 2 * MB2, MB2)])
        .unwrap();
    // [T-ACCEPT-*] before the chain closed in the guest.
    assert_eq!(accept(&mut h, 1, &[3]), (ERR, reason::CHAIN_OPEN, 0));
    h.post_event_buffers(2, 128);
    assert_eq!(
        accept(&mut h, 1, &[3]),
        (ERR, reason::CHAIN_OPEN, 0),
        "closing event still queued"
    );
    h.post_event_buffers(1, 128);
    assert_eq!(offers(&h.events()).len(), 3);
    assert_eq!(accept(&mut h, 9, &[1]), (ERR, reason::UNKNOWN_CHAIN, 0));
    assert_eq!(accept(&mut h, 1, &[4]), (ERR, reason::UNKNOWN_EXTENT, 0));
    assert_eq!(accept(&mut h, 1, &[3, 3]), (ERR, reason::DUPLICATE_ID, 0));
    assert_eq!(accept(&mut h, 1, &[1, 3]), (ERR, reason::PARTIAL_GROUP, 0));
    assert_eq!(h.mapper.lock().unwrap().mapped_bytes(), 0);
    // Wrong declared count vs. bytes.
    let mut bytes = TaggedReq::new(VIRTIO_MEM_REQ_ACCEPT, 1, [0; 16], 2)
        .as_bytes()
        .to_vec();
    bytes.extend_from_slice(&3u64.to_le_bytes());
    let (_, r) = h.request(&bytes, 16);
    assert_eq!(
        TaggedResp::read_from_bytes(&r).unwrap().reason.get(),
        reason::BAD_LENGTH
    );
    let huge = TaggedReq::new(VIRTIO_MEM_REQ_ACCEPT, 1, [0; 16], u32::MAX);
    let (_, r) = h.request(huge.as_bytes(), 16);
    assert_eq!(
        TaggedResp::read_from_bytes(&r).unwrap().reason.get(),
        reason::BAD_LENGTH
    );
    // The sharable group whole plus the untagged extent: fine.
    assert_eq!(accept(&mut h, 1, &[2, 1, 3]), (ACK, reason::NONE, 3));
    assert_eq!(
        accept(&mut h, 1, &[2, 1, 3]),
        (ERR, reason::UNKNOWN_CHAIN, 0),
        "exactly one answer"
    );
}

#[test]
fn empty_accept_rejects_everything() {
    let mut h = Harness::tagged();
    h.post_event_buffers(4, 128);
    h.dev.offer(&[spec(3, 0, MB2), spec(3, MB2, MB2)]).unwrap();
    assert_eq!(accept(&mut h, 1, &[]), (ACK, reason::NONE, 0));
    assert!(h.dev.extents().is_empty());
    // The tag is free again and the host may offer it anew.
    h.dev.offer(&[spec(3, 0, MB2)]).unwrap();
}

#[test]
fn unanswered_chain_is_abandoned_by_the_clock() {
    let mut h = Harness::tagged();
    h.post_event_buffers(1, 128);
    h.dev.offer(&[spec(1, 0, MB2), spec(1, MB2, MB2)]).unwrap();
    h.clock.advance(19_999);
    h.dev.poll_timers();
    assert_eq!(h.dev.extents().len(), 2);
    h.clock.advance(1);
    h.dev.poll_timers();
    assert!(h.dev.extents().is_empty());
    h.post_event_buffers(4, 128);
    let evs = h.events();
    // The undelivered second offer was dropped; the driver learns the chain is gone.
    assert_eq!(offers(&evs), vec![(1, true, 1)]);
    assert!(evs.contains(&Event::ChainAbandoned { chain_id: 1 }));
    assert_eq!(accept(&mut h, 1, &[1, 2]), (ERR, reason::UNKNOWN_CHAIN, 0));
    assert_eq!(h.mapper.lock().unwrap().mapped_bytes(), 0);
    assert!(matches!(
        &h.dev.take_host_events()[..],
        [HostEvent::ChainDropped { chain_id: 1, .. }]
    ));
    assert_eq!(h.dev.metrics().chains_abandoned.get(), 1);
}

#[test]
fn host_release_deferred_while_busy() {
    let mut h = Harness::tagged();
    h.post_event_buffers(8, 128);
    h.dev.offer(&[sharable(9, 0, 1), sharable(9, MB2, 0)]).unwrap();
    h.events();
    assert_eq!(accept(&mut h, 1, &[1, 2]), (ACK, reason::NONE, 2));
    h.dev.take_host_events();
    let tag = *Uuid::from_u128(9).as_bytes();
    // RELEASE_BUSY before the host asked is a protocol error.
    assert_eq!(
        tagged_req(&mut h, VIRTIO_MEM_REQ_RELEASE_BUSY, 1, tag, &[]),
        (ERR, reason::WRONG_STATE, 0)
    );
    assert_eq!(
        h.dev.request_release(Target::Tag(Uuid::from_u128(9))).unwrap(),
        vec![1, 2]
    );
    let evs = h.events();
    assert!(matches!(evs[..], [Event::ReleaseRequest { record }] if record.extent_id.get() == 1));
    assert_eq!(
        tagged_req(&mut h, VIRTIO_MEM_REQ_RELEASE_BUSY, 2, tag, &[]),
        (ACK, reason::NONE, 0)
    );
    assert!(h
        .dev
        .extents()
        .iter()
        .all(|e| e.state == ExtentState::ReleaseDeferred));
    assert_eq!(
        h.mapper.lock().unwrap().mapped_bytes(),
        2 * MB2,
        "deferred: still mapped"
    );
    assert_eq!(release(&mut h, 1, 7), (ERR, reason::TAG_MISMATCH, 0));
    assert_eq!(release(&mut h, 1, 9), (ACK, reason::NONE, 2));
    assert_eq!(h.mapper.lock().unwrap().mapped_bytes(), 0);
    let evs = h.dev.take_host_events();
    assert!(matches!(&evs[0], HostEvent::ReleaseDeferred { extents } if extents == &[1, 2]));
    assert!(matches!(&evs[1], HostEvent::Released { .. }));
    assert_eq!(
        release(&mut h, 1, 9),
        (ERR, reason::UNKNOWN_EXTENT, 0),
        "already released"
    );
}

#[test]
fn release_of_pending_or_unknown_ids_is_refused() {
    let mut h = Harness::tagged();
    h.dev.offer(&[spec(0, 0, MB2)]).unwrap();
    assert_eq!(
        release(&mut h, 1, 0),
        (ERR, reason::UNKNOWN_EXTENT, 0),
        "pending, not accepted"
    );
    assert_eq!(release(&mut h, 99, 0), (ERR, reason::UNKNOWN_EXTENT, 0));
    assert!(matches!(
        h.dev.request_release(Target::Extent(1)),
        Err(ControlError::WrongState { .. })
    ));
    assert!(matches!(
        h.dev.request_release(Target::Extent(5)),
        Err(ControlError::NotFound(_))
    ));
}

#[test]
fn metadata_and_poison_events() {
    let mut h = Harness::tagged();
    h.post_event_buffers(8, 128);
    h.dev.offer(&[spec(4, 0, 2 * MB2)]).unwrap();
    h.events();
    accept(&mut h, 1, &[1]);
    let perf = Perf {
        read_latency_ns: 500,
        write_latency_ns: 600,
        read_bandwidth_mbps: 1,
        write_bandwidth_mbps: 2,
    };
    h.dev
        .update_metadata(Target::Tag(Uuid::from_u128(4)), perf)
        .unwrap();
    h.dev.inject_poison(1, 0x1000, 0x2000).unwrap();
    assert!(matches!(
        h.dev.inject_poison(1, 2 * MB2 - 4096, 8192),
        Err(ControlError::PoisonOutOfRange { .. })
    ));
    let evs = h.events();
    match evs[..] {
        [Event::Metadata { record }, Event::Poison {
            record: p,
            offset: 0x1000,
            length: 0x2000,
        }] => {
            assert_eq!(record.read_latency_ns.get(), 500);
            assert_eq!(record.write_bandwidth_mbps.get(), 2);
            assert_eq!(p.extent_id.get(), 1);
        }
        _ => panic!("unexpected events {evs:?}"),
    }
    let e = &h.dev.extents()[0];
    assert_eq!(e.perf, perf);
    assert_eq!(e.poison, vec![(0x1000, 0x2000)]);
}

#[test]
fn readonly_extents_are_mapped_readonly() {
    let mut h = Harness::tagged();
    h.post_event_buffers(2, 128);
    let mut s = spec(0, 0, MB2);
    s.flags.readonly = true;
    h.dev.offer(&[s]).unwrap();
    let evs = h.events();
    let Event::Offer { record, .. } = evs[0] else {
        panic!()
    };
    assert_eq!(record.flags.get(), VIRTIO_MEM_EXTENT_F_READONLY);
    accept(&mut h, 1, &[1]);
    assert!(h.mapper.lock().unwrap().lookup(WIN).unwrap().readonly);
}

#[test]
fn mapping_failure_drops_the_whole_chain() {
    let mut h = Harness::tagged();
    h.post_event_buffers(4, 128);
    h.dev
        .offer(&[spec(0, 0, MB2), spec(0, MB2, MB2), spec(0, 2 * MB2, MB2)])
        .unwrap();
    h.mapper.lock().unwrap().fail_map_at = Some(WIN + MB2);
    assert_eq!(accept(&mut h, 1, &[1, 2, 3]), (ERR, reason::MAP_FAILED, 0));
    let m = h.mapper.lock().unwrap();
    assert_eq!(
        m.mapped_bytes(),
        0,
        "the extent mapped before the failure was unmapped"
    );
    drop(m);
    assert!(h.dev.extents().is_empty());
    assert!(matches!(
        &h.dev.take_host_events()[..],
        [HostEvent::ChainDropped { .. }]
    ));
}

#[test]
fn offers_need_an_active_tagged_driver() {
    let cfg = Harness::config();
    let mut h = Harness::new(
        cfg,
        1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE,
    );
    assert_eq!(h.dev.offer(&[spec(0, 0, MB2)]), Err(ControlError::NotReady));
}

/// [T-ACCEPT-2] (item B8): every tag group is all-or-nothing, as DCD v11 adds a tag group
/// whole; untagged extents are individual.
#[test]
fn every_tag_group_is_all_or_nothing() {
    let mut h = Harness::tagged();
    h.post_event_buffers(5, 128);
    h.dev
        .offer(&[
            spec(4, 0, MB2),
            spec(4, MB2, MB2),
            spec(0, 2 * MB2, MB2),
            spec(0, 3 * MB2, MB2),
            sharable(5, 4 * MB2, 0),
        ])
        .unwrap();
    h.events();
    assert_eq!(
        accept(&mut h, 1, &[1, 3]),
        (ERR, reason::PARTIAL_GROUP, 0),
        "part of a non-sharable tag group"
    );
    assert_eq!(h.mapper.lock().unwrap().mapped_bytes(), 0);
    assert_eq!(accept(&mut h, 1, &[2, 1, 4]), (ACK, reason::NONE, 3));
    let table = h.dev.extents();
    assert_eq!(
        table.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![1, 2, 4],
        "one untagged extent and the sharable group left out"
    );
}

/// [T-TIMEOUT-1] (item B9): with a guest clock the offer timeout counts only while the guest
/// runs; a paused VM does not abandon offers.
#[test]
fn offer_timeout_counts_guest_time_only() {
    let cfg = Harness::config();
    let f = cfg.features();
    let (mut h, guest) = Harness::with_guest_clock(cfg, f);
    let host = h.clock.clone();
    h.post_event_buffers(1, 128);
    h.dev.offer(&[spec(8, 0, MB2)]).unwrap();
    host.advance(10_000);
    guest.pause();
    host.advance(60_000);
    h.dev.poll_timers();
    assert_eq!(h.dev.extents().len(), 1, "60 s paused are no guest time");
    guest.resume();
    host.advance(9_999);
    h.dev.poll_timers();
    assert_eq!(h.dev.extents().len(), 1, "19.999 s of guest time");
    host.advance(1);
    h.dev.poll_timers();
    assert!(h.dev.extents().is_empty(), "abandoned after 20 s of guest time");
}

/// [T-Q-6] (item C19): an offer that would take the event queue past its bound is refused whole.
#[test]
fn offer_respects_the_event_queue_bound() {
    let mut cfg = Harness::config();
    cfg.max_pending = 4096;
    cfg.tagged = Some(TaggedWindow {
        addr: WIN,
        size: 1 << 40,
    });
    let f = cfg.features();
    let mut h = Harness::new(cfg, f);
    // No event buffers: every event stays queued. Fill the queue to 10 short of the bound with
    // metadata updates of one accepted extent.
    let (r, _) = h.offer_and_accept(&[spec(0, 0, MB2)]).unwrap();
    let id = r.extents[0].0;
    for _ in 0..OUTBOX_LIMIT - 10 {
        h.dev
            .update_metadata(Target::Extent(id), Perf::default())
            .unwrap();
    }
    let specs: Vec<ExtentSpec> = (1..=11).map(|i| spec(0, i * MB2, MB2)).collect();
    assert_eq!(
        h.dev.offer(&specs),
        Err(ControlError::EventBacklog(OUTBOX_LIMIT - 10)),
        "11 OFFER events do not fit"
    );
    assert_eq!(h.dev.extents().len(), 1, "nothing of the refused offer stays");
    h.dev.offer(&specs[..10]).unwrap();
    assert_eq!(h.dev.snapshot().outbox.len(), OUTBOX_LIMIT);
}

/// [T-Q-5] (item C21): an eventq buffer with any device-readable descriptor, even an empty one,
/// gets used length 0 and consumes no event.
#[test]
fn eventq_buffer_with_a_readable_descriptor_gets_used_length_zero() {
    let mut h = Harness::tagged();
    h.evq
        .add_chain(&[(EVT_ADDR, 0, false), (EVT_ADDR + 128, 128, true)]);
    h.evq
        .add_chain(&[(EVT_ADDR, 16, false), (EVT_ADDR + 128, 128, true)]);
    h.dev.offer(&[spec(0, 0, MB2)]).unwrap();
    let used = h.evq.take_used();
    assert_eq!(used.iter().map(|u| u.1).collect::<Vec<_>>(), vec![0, 0]);
    assert_eq!(h.dev.metrics().bad_event_buffers.get(), 2);
    h.post_event_buffers(1, 128);
    assert_eq!(offers(&h.events()), vec![(1, false, 1)], "the event was kept");
}

/// [T-Q-3] (item C21): an indirect table longer than the queue is refused (used length 0, no
/// action), on guestq and eventq alike.
#[test]
fn indirect_table_longer_than_the_queue_is_refused() {
    let mut cfg = Harness::config();
    cfg.queue_size = 16;
    let f = cfg.features();
    let mut h = Harness::new(cfg, f);
    // A PLUG request in an indirect table of 17 entries (two used, linked).
    const TABLE: u64 = 0x6_0000;
    let req = VirtioMemReq::new(VIRTIO_MEM_REQ_PLUG, 1 << 30, 1);
    h.write(REQ_ADDR, req.as_bytes());
    let desc = |addr: u64, len: u32, flags: u16, next: u16| {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&addr.to_le_bytes());
        b[8..12].copy_from_slice(&len.to_le_bytes());
        b[12..14].copy_from_slice(&flags.to_le_bytes());
        b[14..16].copy_from_slice(&next.to_le_bytes());
        b
    };
    h.write(TABLE, &[0u8; 16 * 17]);
    h.write(TABLE, &desc(REQ_ADDR, 24, 1, 1));
    h.write(TABLE + 16, &desc(RESP_ADDR, 10, 2, 0));
    let head = h.reqq.next_free_index();
    h.reqq.set_desc(head, TABLE, 16 * 17, 4, 0);
    h.reqq.publish(head);
    h.dev.queue_notify(VIRTIO_MEM_GUESTQ);
    assert_eq!(h.reqq.take_used(), vec![(u32::from(head), 0)]);
    assert_eq!(h.dev.plugged_size(), 0, "the request was not carried out");
    // The same table at the queue's size is fine.
    let head = (head + 1) % 16;
    h.reqq.set_desc(head, TABLE, 16 * 16, 4, 0);
    h.reqq.publish(head);
    h.dev.queue_notify(VIRTIO_MEM_GUESTQ);
    assert_eq!(h.reqq.take_used(), vec![(u32::from(head), 10)]);
    assert_eq!(h.dev.plugged_size(), 2 << 20);
    // On eventq: an overlong table consumes no event.
    h.write(TABLE + 0x1000, &desc(EVT_ADDR, 128, 2, 0));
    let head = h.evq.next_free_index();
    h.evq.set_desc(head, TABLE + 0x1000, 16 * 17, 4, 0);
    h.evq.publish(head);
    h.dev.offer(&[spec(0, 0, MB2)]).unwrap();
    assert_eq!(h.evq.take_used(), vec![(u32::from(head), 0)]);
    h.post_event_buffers(1, 128);
    assert_eq!(offers(&h.events()), vec![(1, false, 1)]);
}

#[test]
fn snapshot_restore_behaves_identically() {
    let mut h = Harness::tagged();
    h.post_event_buffers(2, 128);
    h.dev.offer(&[spec(1, 0, MB2)]).unwrap();
    accept(&mut h, 1, &[1]);
    h.dev.offer(&[spec(2, MB2, MB2), spec(2, 2 * MB2, MB2)]).unwrap();
    assert_eq!(offers(&h.events()), vec![(1, false, 1), (2, true, 2)]);
    h.clock.advance(5_000);
    // Mid-life-cycle: one accepted extent, one chain whose first offer was delivered.
    let state = h.dev.snapshot();
    let json = serde_json::to_string(&state).unwrap();
    let state: DeviceState = serde_json::from_str(&json).unwrap();

    let (mapper, mstate) = FakeMapper::new();
    let clock = std::sync::Arc::new(tagmem_device::test_utils::ManualClock::default());
    let mut dev2 = TaggedMemDevice::restore(
        &state,
        Box::new(mapper),
        std::sync::Arc::new(NoopNotifier),
        clock.clone(),
        Some(h.mem.clone()),
    )
    .unwrap();
    assert_eq!(dev2.extents(), h.dev.extents());
    assert_eq!(
        mstate.lock().unwrap().mapped_bytes(),
        MB2,
        "accepted extent mapped again"
    );
    // Both devices now take the same steps and give the same answers.
    std::mem::swap(&mut h.dev, &mut dev2);
    let mut h2 = h;
    h2.post_event_buffers(4, 128);
    let evs = offers(&h2.events());
    assert_eq!(evs, vec![(2, false, 3)]);
    assert_eq!(accept(&mut h2, 2, &[2, 3]), (ACK, reason::NONE, 2));
    assert_eq!(mstate.lock().unwrap().mapped_bytes(), 3 * MB2);
    clock.advance(15_000);
    h2.dev.poll_timers();
    assert_eq!(h2.dev.extents().len(), 3, "answered chains do not time out");
    let r = h2.dev.offer(&[spec(3, 3 * MB2, MB2)]).unwrap();
    assert_eq!(r.chain_id, 3);
}

#[test]
fn restore_rejects_inconsistent_snapshots() {
    let mut h = Harness::tagged();
    h.post_event_buffers(3, 128);
    h.dev.offer(&[spec(1, 0, MB2), spec(1, MB2, MB2)]).unwrap();
    accept(&mut h, 1, &[1, 2]);
    let good = h.dev.snapshot();
    let restore = |s: &DeviceState| {
        TaggedMemDevice::restore(
            s,
            Box::new(FakeMapper::new().0),
            std::sync::Arc::new(NoopNotifier),
            std::sync::Arc::new(MonotonicClock::default()),
            Some(h.mem.clone()),
        )
    };
    assert!(restore(&good).is_ok());
    let mut s = good.clone();
    s.extents[1].gpa = s.extents[0].gpa;
    assert!(
        matches!(restore(&s), Err(DeviceError::InvalidSnapshot { .. })),
        "overlap"
    );
    let mut s = good.clone();
    s.extents[0].gpa = 0;
    assert!(restore(&s).is_err(), "outside the window");
    let mut s = good.clone();
    s.extents[0].length = 4096;
    assert!(restore(&s).is_err(), "misaligned");
    let mut s = good.clone();
    s.next_extent_id = 1;
    assert!(restore(&s).is_err(), "id not below next id");
    let mut s = good.clone();
    s.config.block_size = 3;
    assert!(matches!(
        restore(&s),
        Err(DeviceError::InvalidConfig {
            field: "block_size",
            ..
        })
    ));
    let mut s = good.clone();
    s.queues.as_mut().unwrap()[0].size = 3;
    assert!(restore(&s).is_err(), "queue size not a power of two");
    let mut s = good.clone();
    s.plugged = vec![(31, 5)];
    assert!(restore(&s).is_err(), "plugged blocks past the region");
    let mut s = good.clone();
    s.outbox.push(vec![1, 2, 3]);
    assert!(restore(&s).is_err(), "truncated queued event");
    let mut s = good;
    s.acked_features |= 1 << 20;
    assert!(restore(&s).is_err(), "features never offered");
}

#[test]
fn hostile_chains_get_defined_answers() {
    let mut h = Harness::tagged();
    let req = VirtioMemReq::new(VIRTIO_MEM_REQ_PLUG, 1 << 30, 1);
    h.write(REQ_ADDR, req.as_bytes());
    let before = h.dev.metrics().bad_chains.get();
    // Response room too small: used length 0, no action.
    h.reqq.add_chain(&[(REQ_ADDR, 24, false), (RESP_ADDR, 9, true)]);
    // Writable then readable.
    h.reqq.add_chain(&[(RESP_ADDR, 16, true), (REQ_ADDR, 24, false)]);
    // Outside guest memory.
    h.reqq.add_chain(&[(1 << 40, 24, false), (RESP_ADDR, 16, true)]);
    // No writable descriptor at all.
    h.reqq.add_chain(&[(REQ_ADDR, 24, false)]);
    // Short request (type only) with room: ERROR.
    h.reqq.add_chain(&[(REQ_ADDR, 2, false), (RESP_ADDR, 16, true)]);
    // A looping chain: descriptor 20 points at itself.
    let base = h.reqq.next_free_index();
    h.reqq.set_desc(base, REQ_ADDR, 24, 1, base);
    h.reqq.publish(base);
    // A head index past the queue size.
    h.reqq.publish(1000);
    h.dev.queue_notify(VIRTIO_MEM_GUESTQ);
    let used = h.reqq.take_used();
    let lens: Vec<u32> = used.iter().map(|u| u.1).collect();
    assert_eq!(lens[..6], [0, 0, 0, 0, 10, 0]);
    assert_eq!(h.dev.plugged_size(), 0, "nothing was plugged by any of them");
    assert!(h.dev.metrics().bad_chains.get() >= before + 5);
    // The device still works.
    let (n, _) = h.request(req.as_bytes(), 10);
    assert_eq!(n, 10);
    assert_eq!(h.dev.plugged_size(), 2 << 20);
}

#[test]
fn bad_event_buffers_do_not_lose_events() {
    let mut h = Harness::tagged();
    h.post_event_buffers(2, 64); // too short
    h.dev.offer(&[spec(0, 0, MB2)]).unwrap();
    assert!(h.events().is_empty());
    assert_eq!(h.dev.metrics().bad_event_buffers.get(), 2);
    h.post_event_buffers(1, 128);
    assert_eq!(offers(&h.events()), vec![(1, false, 1)]);
}

/// A chain's accepted extents reach the mapper in one call, a released group in one call, and
/// the driver's kicks and the device's notifications are counted per queue.
#[test]
fn a_chain_is_one_mapper_call_and_a_group_release_another() {
    let mut h = Harness::tagged();
    h.post_event_buffers(8, 128);
    let m = h.dev.metrics();
    h.dev
        .offer(&[spec(0xb, 0, MB2), spec(0xb, MB2, MB2), spec(0xb, 2 * MB2, MB2)])
        .unwrap();
    h.events();
    let (maps, unmaps, kicks) = (m.map_calls.get(), m.unmap_calls.get(), m.guestq_notifies.get());
    assert_eq!(accept(&mut h, 1, &[1, 2, 3]), (ACK, reason::NONE, 3));
    assert_eq!(m.map_calls.get() - maps, 1, "one mapper call for the chain");
    assert_eq!(m.guestq_notifies.get() - kicks, 1);
    assert_eq!(h.mapper.lock().unwrap().mapped_bytes(), 3 * MB2);
    assert_eq!(release(&mut h, 1, 0xb), (ACK, reason::NONE, 3));
    assert_eq!(m.unmap_calls.get() - unmaps, 1, "one mapper call for the group");
    assert_eq!(h.mapper.lock().unwrap().mapped_bytes(), 0);
}

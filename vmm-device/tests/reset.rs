//! Device reset with tagged capacity ([T-RESET-1]) and the LIST request that lets a driver learn
//! what it holds afterwards ([T-LIST-1], [T-LIST-2]). Requirement ids refer to
//! guest-driver-spec/SPEC.md.

mod common;

use common::*;
use tagmem_device::test_utils::Harness;
use tagmem_device::*;
use tagmem_wire::*;
use uuid::Uuid;

/// Room for a full LIST page.
const PAGE_ROOM: u32 = 16 + 80 * 64;

/// Offers `specs` and accepts all of it; returns the receipt.
fn accepted(h: &mut Harness, specs: &[ExtentSpec]) -> OfferReceipt {
    let (r, resp) = h.offer_and_accept(specs).unwrap();
    let resp = TaggedResp::read_from_bytes(&resp).unwrap();
    assert_eq!(resp.resp_type.get(), ACK);
    r
}

fn features(h: &Harness) -> u64 {
    h.dev.device_features()
}

/// Walks LIST from the start, `count` records a page, as a driver does after a reset.
fn list_all(h: &mut Harness, count: u32) -> Vec<ExtentRecord> {
    let mut out: Vec<ExtentRecord> = Vec::new();
    let mut next = 0;
    loop {
        let (n, resp, page) = h.list(next, count, 16 + 80 * count);
        assert_eq!(resp.resp_type.get(), ACK);
        assert_eq!(resp.value.get() as usize, page.len());
        assert_eq!(n as usize, 16 + 80 * page.len(), "used length 16 + 80 n");
        let short = page.len() < count as usize;
        if let Some(last) = page.last() {
            next = last.extent_id.get() + 1;
        }
        out.extend(page);
        if short {
            return out;
        }
    }
}

/// [T-RESET-1] (item A2): accepted extents, in every post-accept state, stay accepted and mapped
/// across a reset; a driver lists them again.
#[test]
fn tagged_extents_survive_reset() {
    let mut h = Harness::tagged();
    let a = accepted(&mut h, &[spec(1, 0, MB2), spec(1, MB2, 2 * MB2)]);
    let b = accepted(&mut h, &[spec(0, 8 * MB2, MB2)]);
    h.dev.request_release(Target::Extent(b.extents[0].0)).unwrap();
    let before = h.dev.extents();
    let unmaps = h.mapper.lock().unwrap().unmaps;
    h.dev.take_host_events();
    h.dev.reset();
    assert_eq!(h.dev.extents(), before, "nothing forgotten");
    assert_eq!(h.mapper.lock().unwrap().mapped_bytes(), 4 * MB2);
    assert_eq!(h.mapper.lock().unwrap().unmaps, unmaps, "nothing unmapped");
    let evs = h.dev.take_host_events();
    assert_eq!(
        evs,
        vec![HostEvent::DeviceReset {
            pending_chains: vec![]
        }]
    );
    let mut b88 = [0u8; 88];
    h.dev.read_config(0, &mut b88);
    assert_eq!(
        TaggedConfig::read_from_bytes(&b88)
            .unwrap()
            .accepted_extents
            .get(),
        3
    );

    let f = features(&h);
    h.reset_and_activate(f);
    let listed = list_all(&mut h, 2);
    let ids: Vec<u64> = listed.iter().map(|r| r.extent_id.get()).collect();
    assert_eq!(ids, vec![a.extents[0].0, a.extents[1].0, b.extents[0].0]);
    assert_eq!(listed[1].addr.get(), a.extents[1].1);
    assert_eq!(listed[1].length.get(), 2 * MB2);
    assert_eq!(listed[1].tag, *Uuid::from_u128(1).as_bytes());
    assert_eq!(listed[2].read_latency_ns.get(), 250);
    // The group whose release was requested is asked for again; the driver may release it.
    h.post_event_buffers(4, 128);
    let evs = h.events();
    assert!(
        matches!(&evs[..], [Event::ReleaseRequest { record }] if record.extent_id.get() == b.extents[0].0),
        "{evs:?}"
    );
    assert_eq!(release(&mut h, b.extents[0].0, 0), (ACK, reason::NONE, 1));
    assert_eq!(h.mapper.lock().unwrap().mapped_bytes(), 3 * MB2);
}

/// [T-RESET-1] (item A2): pending chains survive a reset and are offered again (same ids, the
/// closing event anew, deadline restarted) once the driver activates with tagged extents; ids
/// are never reused.
#[test]
fn pending_chains_are_reoffered_after_reset() {
    let mut h = Harness::tagged();
    h.post_event_buffers(2, 128);
    let r = h.dev.offer(&[spec(2, 0, MB2), spec(2, MB2, MB2)]).unwrap();
    assert_eq!(offers(&h.events()), vec![(1, true, 1), (1, false, 2)]);
    h.clock.advance(15_000);
    h.dev.take_host_events();
    h.dev.reset();
    assert_eq!(
        h.dev.take_host_events(),
        vec![HostEvent::DeviceReset {
            pending_chains: vec![r.chain_id]
        }]
    );
    assert!(h.dev.extents().iter().all(|e| e.state == ExtentState::Pending));
    let f = features(&h);
    h.reset_and_activate(f);
    // The chain counts as open until its closing event is delivered again.
    assert_eq!(accept(&mut h, 1, &[1, 2]), (ERR, reason::CHAIN_OPEN, 0));
    h.post_event_buffers(2, 128);
    assert_eq!(offers(&h.events()), vec![(1, true, 1), (1, false, 2)]);
    // The deadline restarted at the activation: 15 s more do not abandon it.
    h.clock.advance(15_000);
    h.dev.poll_timers();
    assert_eq!(h.dev.extents().len(), 2);
    assert_eq!(accept(&mut h, 1, &[1, 2]), (ACK, reason::NONE, 2));
    assert_eq!(h.mapper.lock().unwrap().mapped_bytes(), 2 * MB2);
    let r = h.dev.offer(&[spec(3, 4 * MB2, MB2)]).unwrap();
    assert_eq!((r.chain_id, r.extents[0].0), (2, 3), "ids continue after reset");
}

/// [T-RESET-1]: a driver without the tagged feature (a kdump kernel's stock virtio_mem) does not
/// get events replayed; the next tagged driver does.
#[test]
fn replay_waits_for_a_tagged_driver() {
    let mut h = Harness::tagged();
    let a = accepted(&mut h, &[spec(4, 0, MB2)]);
    h.dev.inject_poison(a.extents[0].0, 4096, 4096).unwrap();
    h.events();
    h.reset_and_activate(1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE);
    assert!(!h.dev.tagged_negotiated());
    assert_eq!(
        h.mapper.lock().unwrap().mapped_bytes(),
        MB2,
        "still mapped for a later driver"
    );
    let f = features(&h);
    h.reset_and_activate(f);
    h.post_event_buffers(2, 128);
    let evs = h.events();
    assert!(
        matches!(&evs[..], [Event::Poison { offset: 4096, length: 4096, record }] if record.extent_id.get() == a.extents[0].0),
        "poison is reported again: {evs:?}"
    );
}

/// [T-LIST-1]: LIST pages through accepted extents in id order from the id given; pending
/// extents are not listed.
#[test]
fn list_pages_through_accepted_extents() {
    let mut h = Harness::tagged();
    let specs: Vec<ExtentSpec> = (0..70).map(|i| spec(0, i * MB2, MB2)).collect();
    accepted(&mut h, &specs[..40]);
    accepted(&mut h, &specs[40..]);
    h.post_event_buffers(1, 128);
    h.dev.offer(&[spec(9, 100 * MB2, MB2)]).unwrap();
    let all = list_all(&mut h, 64);
    assert_eq!(all.len(), 70);
    assert!(all
        .windows(2)
        .all(|w| w[0].extent_id.get() < w[1].extent_id.get()));
    let (_, resp, page) = h.list(65, 64, PAGE_ROOM);
    assert_eq!(resp.value.get(), 6);
    assert_eq!(page[0].extent_id.get(), 65);
    let (n, resp, page) = h.list(71, 64, PAGE_ROOM);
    assert_eq!(
        (n, resp.value.get(), page.len()),
        (16, 0, 0),
        "past the end: empty page"
    );
    assert_eq!(h.dev.extents().len(), 71, "LIST changes nothing");
}

/// [T-LIST-1]: BAD_LENGTH for a count of 0 or above the maximum, or too little room; without the
/// tagged feature NOT_NEGOTIATED.
#[test]
fn list_errors() {
    let mut h = Harness::tagged();
    accepted(&mut h, &[spec(0, 0, MB2)]);
    for (count, room) in [
        (0, PAGE_ROOM),
        (VIRTIO_MEM_LIST_MAX + 1, 16 + 80 * 65),
        (2, 16 + 80),
    ] {
        let (n, resp, _) = h.list(0, count, room);
        assert_eq!(
            (n, resp.resp_type.get(), resp.reason.get()),
            (16, ERR, reason::BAD_LENGTH),
            "count {count}, room {room}"
        );
    }
    let (n, _, _) = h.list(0, 1, 8);
    assert_eq!(n, 0, "[T-Q-3] no room for the response at all: used length 0");
    let mut cfg = Harness::config();
    cfg.tagged = None;
    let mut h = Harness::new(
        cfg,
        1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE,
    );
    let (_, resp, _) = h.list(0, 1, PAGE_ROOM);
    assert_eq!(
        (resp.resp_type.get(), resp.reason.get()),
        (ERR, reason::NOT_NEGOTIATED)
    );
}

/// [T-REL-2] (item C14): the device never reports Released, nor forgets, capacity it could not
/// unmap; a reset unmaps nothing, so nothing can fail there.
#[test]
fn reset_never_reports_released_capacity_the_guest_can_reach() {
    let mut h = Harness::tagged();
    let a = accepted(&mut h, &[spec(6, 0, MB2)]);
    h.dev.take_host_events();
    h.mapper.lock().unwrap().fail_unmap = true;
    h.dev.reset();
    let evs = h.dev.take_host_events();
    assert!(
        !evs.iter().any(|e| matches!(e, HostEvent::Released { .. })),
        "{evs:?}"
    );
    assert_eq!(h.dev.extents().len(), 1);
    assert!(h.mapper.lock().unwrap().lookup(a.extents[0].1).is_some());
    let f = features(&h);
    h.reset_and_activate(f);
    assert_eq!(release(&mut h, a.extents[0].0, 6), (ERR, reason::MAP_FAILED, 0));
    let evs = h.dev.take_host_events();
    assert!(
        !evs.iter().any(|e| matches!(e, HostEvent::Released { .. })),
        "{evs:?}"
    );
    assert_eq!(h.dev.extents().len(), 1, "kept while still mapped");
}

//! The reference driver and the device core in one process over real guest memory: every base
//! request, the whole tagged life cycle, and snapshot/restore mid-way. Requirement ids refer to
//! guest-driver-spec/SPEC.md.

use std::collections::HashMap;
use std::sync::Arc;
use tagmem_device::test_utils::{FakeMapper, ManualClock};
use tagmem_device::*;
use tagmem_driver::{AcceptAll, BlockState, DriverEvent, MemResponse};
use tagmem_tests::Pair;
use tagmem_wire::VIRTIO_MEM_EXTENT_ALIGN as MB2;
use uuid::Uuid;

const BASE: u64 = 1 << 30;
const WIN: u64 = 4 << 30;

fn spec(tag: u128, off: u64, len: u64) -> ExtentSpec {
    ExtentSpec {
        tag: Uuid::from_u128(tag),
        length: len,
        source: SourceRef {
            id: SourceId(3),
            offset: off,
        },
        gpa: None,
        flags: ExtentFlags::default(),
        perf: Perf {
            read_latency_ns: 170,
            write_latency_ns: 190,
            read_bandwidth_mbps: 30_000,
            write_bandwidth_mbps: 25_000,
        },
        node: 1,
        seq: 0,
        class: SourceClass::CxlDc,
    }
}

fn sharable(tag: u128, off: u64, seq: u16) -> ExtentSpec {
    let mut s = spec(tag, off, MB2);
    s.flags.sharable = true;
    s.seq = seq;
    s
}

fn ready() -> Pair {
    let mut p = Pair::new(Pair::config());
    p.drv.init().expect("driver init");
    assert!(p.drv.tagged(), "the tagged feature is negotiated");
    // The driver resets the device first thing in init: the host hears of it.
    assert_eq!(
        p.dev.borrow_mut().take_host_events(),
        [HostEvent::DeviceReset {
            pending_chains: vec![]
        }]
    );
    p
}

fn mapped(p: &Pair) -> u64 {
    p.mapper.lock().unwrap().mapped_bytes()
}

#[test]
fn base_requests_through_the_driver() {
    let mut p = ready();
    assert_eq!(p.drv.plug(BASE, 2).unwrap(), MemResponse::Ack);
    assert_eq!(
        p.drv.plug(BASE, 1).unwrap(),
        MemResponse::Error,
        "already plugged"
    );
    assert_eq!(
        p.drv.plug(BASE + 4096, 1).unwrap(),
        MemResponse::Error,
        "misaligned"
    );
    assert_eq!(
        p.drv.plug(BASE + 2 * MB2, 0).unwrap(),
        MemResponse::Error,
        "zero blocks"
    );
    assert_eq!(
        p.drv.plug(BASE + 31 * MB2, 2).unwrap(),
        MemResponse::Error,
        "outside the region"
    );
    assert_eq!(
        p.drv.plug(BASE + 2 * MB2, 15).unwrap(),
        MemResponse::Nack,
        "over requested_size"
    );
    let s = p.drv.state(BASE, 4).unwrap();
    assert_eq!((s.resp, s.state), (MemResponse::Ack, Some(BlockState::Mixed)));
    assert_eq!(p.drv.state(BASE, 2).unwrap().state, Some(BlockState::Plugged));
    assert_eq!(
        p.drv.state(BASE + 2 * MB2, 1).unwrap().state,
        Some(BlockState::Unplugged)
    );
    assert_eq!(p.drv.state(BASE, 0).unwrap().resp, MemResponse::Error);
    assert_eq!(
        p.drv.unplug(BASE + 2 * MB2, 1).unwrap(),
        MemResponse::Error,
        "not plugged"
    );
    assert_eq!(p.drv.unplug(BASE + MB2, 1).unwrap(), MemResponse::Ack);
    assert_eq!(mapped(&p), MB2);
    assert_eq!(p.drv.unplug_all().unwrap(), MemResponse::Ack);
    assert_eq!(mapped(&p), 0);
    assert_eq!(p.dev.borrow().plugged_size(), 0);
}

#[test]
fn plain_virtio_mem_without_the_feature() {
    let mut cfg = Pair::config();
    cfg.tagged = None;
    let mut p = Pair::new(cfg);
    p.drv.init().unwrap();
    assert!(!p.drv.tagged());
    assert!(p.drv.tagged_config().is_none());
    assert_eq!(p.drv.plug(BASE, 1).unwrap(), MemResponse::Ack);
    assert_eq!(
        p.dev.borrow_mut().offer(&[spec(1, 0, MB2)]),
        Err(ControlError::NotReady)
    );
}

#[test]
fn full_tagged_life_cycle() {
    let mut p = ready();
    let r = p
        .dev
        .borrow_mut()
        .offer(&[
            spec(0xab, 0, MB2),
            spec(0xab, MB2, 2 * MB2),
            spec(0, 8 * MB2, MB2),
        ])
        .unwrap();
    assert_eq!(mapped(&p), 0, "[T-SEC-1] nothing mapped before the accept");
    p.drv.poll().unwrap();
    // [T-LOOKUP-1] accepted capacity waits unclaimed in the region; a claim by tag makes the
    // device, one per tag, one per untagged extent.
    let tag = *Uuid::from_u128(0xab).as_bytes();
    assert!(p.drv.lookup(&tag).is_none() && p.drv.devices().is_empty());
    assert_eq!(p.drv.unclaimed().len(), 2);
    assert_eq!(p.drv.claim(&tag).unwrap().name, "dax0.0");
    assert_eq!(p.drv.claim(&[0; 16]).unwrap().name, "dax0.1");
    assert_eq!(p.drv.seed(), "dax0.2");
    let d = p.drv.lookup(&tag).expect("tagged device");
    assert_eq!(d.size, 3 * MB2);
    assert_eq!(
        d.extents.iter().map(|e| e.gpa).collect::<Vec<_>>(),
        vec![r.extents[0].1, r.extents[1].1]
    );
    assert_eq!(d.perf.read_latency_ns, 170);
    assert_eq!(d.perf.write_bandwidth_mbps, 25_000);
    assert_eq!(d.node, 1);
    assert_eq!(p.drv.devices().len(), 2);
    let untagged = p.drv.devices().iter().find(|d| !d.is_tagged()).unwrap();
    assert_eq!(
        untagged.uuid, [0; 16],
        "an untagged device reads the all-zero uuid"
    );
    assert!(p.drv.lookup(&[0; 16]).is_none(), "the nil tag finds nothing");
    assert_eq!(mapped(&p), 4 * MB2);
    let events = p.dev.borrow_mut().take_host_events();
    assert!(
        matches!(&events[..], [HostEvent::ChainAnswered { accepted, rejected, .. }] if accepted.len() == 3 && rejected.is_empty())
    );

    // Metadata and poison arrive asynchronously.
    let perf = Perf {
        read_latency_ns: 400,
        write_latency_ns: 450,
        read_bandwidth_mbps: 1000,
        write_bandwidth_mbps: 900,
    };
    p.dev
        .borrow_mut()
        .update_metadata(Target::Tag(Uuid::from_u128(0xab)), perf)
        .unwrap();
    p.dev
        .borrow_mut()
        .inject_poison(r.extents[1].0, 0x3000, 0x1000)
        .unwrap();
    p.drv.poll().unwrap();
    let d = p.drv.lookup(&tag).unwrap();
    assert_eq!(d.perf.read_latency_ns, 400);
    assert_eq!(
        d.poison().collect::<Vec<_>>(),
        vec![(r.extents[1].1 + 0x3000, 0x1000)],
        "as guest-physical ranges"
    );

    // Driver-initiated release of the tag group.
    assert_eq!(p.drv.release(tag).unwrap(), 2);
    assert!(p.drv.lookup(&tag).is_none());
    assert_eq!(mapped(&p), MB2);
    assert_eq!(p.dev.borrow().extents().len(), 1);
}

#[test]
fn hundred_extent_chain_and_partial_accept() {
    let mut p = ready();
    // Accept only even ids.
    p.drv
        .set_policy(|_chain: u64, offers: &[tagmem_driver::Extent]| -> Vec<u64> {
            offers.iter().filter(|e| e.id % 2 == 0).map(|e| e.id).collect()
        });
    let specs: Vec<ExtentSpec> = (0..100).map(|i| spec(0, i * MB2, MB2)).collect();
    p.dev.borrow_mut().offer(&specs).unwrap();
    p.drv.poll().unwrap();
    assert_eq!(
        p.drv.unclaimed().len(),
        50,
        "one unclaimed group per untagged extent"
    );
    assert_eq!(mapped(&p), 50 * MB2);
    let table = p.dev.borrow().extents();
    assert!(table
        .iter()
        .all(|e| e.id % 2 == 0 && e.state == ExtentState::Accepted));
    let log = p.drv.drain_log();
    let rejected = log
        .iter()
        .filter(|e| matches!(e, DriverEvent::Rejected { .. }))
        .count();
    assert_eq!(rejected, 50);
}

#[test]
fn sharable_groups_are_all_or_nothing() {
    let mut p = ready();
    // The policy takes one extent of the sharable group and the untagged one.
    p.drv
        .set_policy(|_chain: u64, offers: &[tagmem_driver::Extent]| -> Vec<u64> {
            offers.iter().filter(|e| e.seq == 0).map(|e| e.id).collect()
        });
    p.dev
        .borrow_mut()
        .offer(&[sharable(7, 0, 0), sharable(7, MB2, 1), spec(0, 4 * MB2, MB2)])
        .unwrap();
    p.drv.poll().unwrap();
    // The driver drops the partly chosen group whole; the untagged extent is accepted.
    assert!(p.drv.lookup_unclaimed(Uuid::from_u128(7).as_bytes()).is_none());
    assert_eq!(p.drv.unclaimed().len(), 1);
    assert_eq!(mapped(&p), MB2);
    // With the whole group chosen, it is accepted whole.
    p.drv.set_policy(AcceptAll);
    p.dev
        .borrow_mut()
        .offer(&[sharable(8, 8 * MB2, 1), sharable(8, 9 * MB2, 0)])
        .unwrap();
    p.drv.poll().unwrap();
    let d = p.drv.claim(Uuid::from_u128(8).as_bytes()).unwrap();
    assert_eq!(
        d.extents.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![0, 1],
        "ordered by sequence number"
    );
}

#[test]
fn unanswered_chain_is_abandoned() {
    let mut p = ready();
    p.dev.borrow_mut().offer(&[spec(5, 0, MB2)]).unwrap();
    // The driver does not poll: the chain stays unanswered until the clock passes 20 s.
    p.clock.advance(20_000);
    p.dev.borrow_mut().poll_timers();
    assert!(p.dev.borrow().extents().is_empty());
    p.drv.poll().unwrap();
    assert!(
        p.drv.devices().is_empty() && p.drv.unclaimed().is_empty(),
        "the driver never surfaces an abandoned chain"
    );
    assert_eq!(mapped(&p), 0);
    let log = p.drv.drain_log();
    assert!(
        log.iter()
            .any(|e| matches!(e, DriverEvent::ChainAbandoned { chain_id: 1, .. })),
        "{log:?}"
    );
    // The tag may be offered again.
    p.dev.borrow_mut().offer(&[spec(5, 0, MB2)]).unwrap();
    p.drv.poll().unwrap();
    assert!(p.drv.lookup_unclaimed(Uuid::from_u128(5).as_bytes()).is_some());
}

#[test]
fn host_release_is_deferred_while_busy() {
    let mut p = ready();
    p.dev
        .borrow_mut()
        .offer(&[spec(9, 0, MB2), spec(9, MB2, MB2)])
        .unwrap();
    p.drv.poll().unwrap();
    let tag = *Uuid::from_u128(9).as_bytes();
    p.drv.claim(&tag).unwrap();
    assert!(p.drv.set_busy(tag, true));
    p.dev
        .borrow_mut()
        .request_release(Target::Tag(Uuid::from_u128(9)))
        .unwrap();
    p.drv.poll().unwrap();
    assert!(p.drv.lookup(&tag).is_some(), "busy: kept");
    assert_eq!(mapped(&p), 2 * MB2);
    assert!(p
        .dev
        .borrow()
        .extents()
        .iter()
        .all(|e| e.state == ExtentState::ReleaseDeferred));
    // Letting go completes the release.
    p.drv.set_busy(tag, false);
    p.drv.poll().unwrap();
    assert!(p.drv.lookup(&tag).is_none());
    assert_eq!(mapped(&p), 0);
    let events = p.dev.borrow_mut().take_host_events();
    assert!(events
        .iter()
        .any(|e| matches!(e, HostEvent::ReleaseDeferred { .. })));
    assert!(events
        .iter()
        .any(|e| matches!(e, HostEvent::Released { extents } if extents.len() == 2)));
}

#[test]
fn claim_by_tag_takes_every_extent_of_the_tag_in_seq_order_into_the_seed() {
    let mut p = ready();
    // A sharable group offered out of seq order, another tag, and two untagged extents.
    let r = p
        .dev
        .borrow_mut()
        .offer(&[
            sharable(3, 0, 2),
            spec(0, 4 * MB2, MB2),
            sharable(3, MB2, 0),
            spec(6, 6 * MB2, MB2),
            sharable(3, 2 * MB2, 1),
            spec(0, 5 * MB2, MB2),
        ])
        .unwrap();
    p.drv.poll().unwrap();
    assert_eq!(
        mapped(&p),
        6 * MB2,
        "accepted and mapped, though no device exists"
    );
    assert!(p.drv.devices().is_empty());
    assert_eq!(p.drv.seed(), "dax0.0", "the region starts with its seed");
    let listed: Vec<(bool, usize)> = p
        .drv
        .unclaimed()
        .iter()
        .map(|g| (g.is_tagged(), g.extents.len()))
        .collect();
    assert_eq!(
        listed,
        [(true, 3), (false, 1), (true, 1), (false, 1)],
        "the region lists it all"
    );

    let tag3 = *Uuid::from_u128(3).as_bytes();
    let d = p.drv.claim(&tag3).unwrap();
    assert_eq!((d.name.as_str(), d.size), ("dax0.0", 3 * MB2));
    assert_eq!(d.extents.iter().map(|e| e.seq).collect::<Vec<_>>(), [0, 1, 2]);
    assert_eq!(p.drv.seed(), "dax0.1", "a new seed appears");
    // The nil tag claims one untagged extent at a time, in acceptance order.
    let first = p.drv.claim(&[0; 16]).unwrap();
    assert_eq!(
        (first.name.as_str(), first.extents[0].id),
        ("dax0.1", r.extents[1].0)
    );
    assert_eq!(p.drv.claim(&[0; 16]).unwrap().name, "dax0.2");
    assert_eq!(
        p.drv.claim(&[0; 16]).unwrap_err(),
        tagmem_driver::DriverError::NothingToClaim
    );
    assert_eq!(
        p.drv.claim(&tag3).unwrap_err(),
        tagmem_driver::DriverError::NothingToClaim,
        "claimed already"
    );
    assert_eq!(p.drv.seed(), "dax0.3", "failed claims leave the seed");
    assert_eq!(p.drv.unclaimed().len(), 1, "tag 6 is still unclaimed");
    let created: Vec<String> = p
        .drv
        .drain_log()
        .into_iter()
        .filter_map(|e| match e {
            DriverEvent::DeviceCreated { name, .. } => Some(name),
            _ => None,
        })
        .collect();
    assert_eq!(
        created,
        ["dax0.0", "dax0.1", "dax0.2"],
        "devices appear on claims only"
    );
}

#[test]
fn host_release_of_unclaimed_capacity_completes_at_once() {
    let mut p = ready();
    p.dev
        .borrow_mut()
        .offer(&[spec(9, 0, MB2), spec(9, MB2, MB2)])
        .unwrap();
    p.drv.poll().unwrap();
    let tag = *Uuid::from_u128(9).as_bytes();
    // Marking the tag busy before it is claimed does not make unclaimed capacity busy.
    assert!(p.drv.set_busy(tag, true));
    p.dev
        .borrow_mut()
        .request_release(Target::Tag(Uuid::from_u128(9)))
        .unwrap();
    p.drv.poll().unwrap();
    assert!(p.drv.unclaimed().is_empty() && p.drv.lookup(&tag).is_none());
    assert_eq!(mapped(&p), 0);
    let events = p.dev.borrow_mut().take_host_events();
    assert!(!events
        .iter()
        .any(|e| matches!(e, HostEvent::ReleaseDeferred { .. })));
    assert!(events
        .iter()
        .any(|e| matches!(e, HostEvent::Released { extents } if extents.len() == 2)));
}

#[test]
fn readonly_extent_reaches_the_driver_flagged() {
    let mut p = ready();
    let mut s = spec(4, 0, MB2);
    s.flags.readonly = true;
    p.dev.borrow_mut().offer(&[s]).unwrap();
    p.drv.poll().unwrap();
    assert!(p
        .drv
        .lookup_unclaimed(Uuid::from_u128(4).as_bytes())
        .unwrap()
        .extents[0]
        .is_readonly());
    assert!(p.mapper.lock().unwrap().lookup(WIN).unwrap().readonly);
}

/// What the guest reads at `gpa`: the bytes of the host backing the device mapped there
/// (`backing` holds each backing's bytes by id), or `None` if nothing is mapped.
fn guest_reads(p: &Pair, backing: &HashMap<u64, Vec<u8>>, gpa: u64, len: usize) -> Option<Vec<u8>> {
    let m = p.mapper.lock().unwrap().lookup(gpa)?;
    let off = usize::try_from(m.source.offset + (gpa - m.gpa)).unwrap();
    Some(backing[&m.source.id.0][off..off + len].to_vec())
}

/// A device as the guest sees it: uuid, extents as (id, gpa, length), and the bytes it reads at
/// both ends of each extent.
type Seen = (String, [u8; 16], Vec<(u64, u64, u64)>, Vec<u8>);

/// Acceptance (issue 10), in process: after a reset the reference driver re-learns every accepted
/// extent through LIST, and the guest reads the same bytes there as before; pending chains are
/// offered again and plugged base blocks stay.
#[test]
fn driver_relearns_accepted_extents_after_reset() {
    let mut p = ready();
    // Backing 3's bytes: a pattern the guest can recognise per 2 MiB slot.
    let bytes: Vec<u8> = (0..16 * MB2)
        .map(|i| u8::try_from((i / 4096 + i) % 251).unwrap())
        .collect();
    let backing: HashMap<u64, Vec<u8>> = [(3, bytes)].into_iter().collect();
    assert_eq!(p.drv.plug(BASE, 2).unwrap(), MemResponse::Ack);
    p.dev
        .borrow_mut()
        .offer(&[
            spec(0xab, 0, MB2),
            spec(0xab, MB2, 2 * MB2),
            spec(0, 4 * MB2, MB2),
        ])
        .unwrap();
    p.dev
        .borrow_mut()
        .offer(&[sharable(7, 6 * MB2, 1), sharable(7, 5 * MB2, 0)])
        .unwrap();
    p.drv.poll().unwrap();
    // User space claims both tag groups (`daxctl create-device --uuid`); the untagged extent
    // stays unclaimed in the region.
    let (ab, seven) = (*Uuid::from_u128(0xab).as_bytes(), *Uuid::from_u128(7).as_bytes());
    p.drv.claim(&ab).unwrap();
    p.drv.claim(&seven).unwrap();
    // Every accepted group, claimed or not.
    let seen = |p: &Pair| -> Vec<Seen> {
        p.drv
            .devices()
            .iter()
            .chain(p.drv.unclaimed())
            .map(|d| {
                let ext = d.extents.iter().map(|e| (e.id, e.gpa, e.len)).collect();
                let mut data = Vec::new();
                for e in &d.extents {
                    data.extend(guest_reads(p, &backing, e.gpa, 64).expect("mapped"));
                    data.extend(guest_reads(p, &backing, e.gpa + e.len - 64, 64).expect("mapped"));
                }
                (d.uuid_string(), d.uuid, ext, data)
            })
            .collect()
    };
    let before = seen(&p);
    assert_eq!(
        before.len(),
        3,
        "a tag group, an untagged extent, a sharable group"
    );
    let mut sorted_before = before.clone();
    sorted_before.sort();
    let mapped_before = mapped(&p);

    // An unanswered chain at the time of the reset.
    p.drv.set_policy(tagmem_driver::RejectAll);
    p.dev.borrow_mut().offer(&[spec(0xcd, 8 * MB2, MB2)]).unwrap();
    p.drv.reset();
    assert!(
        p.drv.devices().is_empty() && p.drv.unclaimed().is_empty(),
        "the driver forgot its devices"
    );
    assert_eq!(mapped(&p), mapped_before, "the device unmapped nothing");
    assert_eq!(p.dev.borrow().plugged_size(), 2 * MB2);

    p.drv.set_policy(AcceptAll);
    p.drv.init().unwrap();
    let log = p.drv.drain_log();
    assert!(
        log.iter()
            .any(|e| matches!(e, DriverEvent::Relearned { extents } if extents.len() == 5)),
        "{log:?}"
    );
    // Re-learned capacity is unclaimed again, as a CXL DCD host finds it after a kexec; claimed
    // again, it is the same devices over the same bytes.
    assert!(p.drv.devices().is_empty() && p.drv.unclaimed().len() == 3);
    p.drv.claim(&ab).unwrap();
    p.drv.claim(&seven).unwrap();
    let mut after = seen(&p);
    after.sort();
    assert_eq!(after, sorted_before, "same groups, extents and bytes");
    let d = p.drv.lookup(&seven).unwrap();
    assert_eq!(d.extents.iter().map(|e| e.seq).collect::<Vec<_>>(), [0, 1]);
    assert_eq!(p.drv.state(BASE, 2).unwrap().state, Some(BlockState::Plugged));

    // The pending chain is offered again and now accepted.
    p.drv.poll().unwrap();
    assert!(p.drv.lookup_unclaimed(Uuid::from_u128(0xcd).as_bytes()).is_some());
    // Re-learned capacity is released as any other.
    assert_eq!(p.drv.release(ab).unwrap(), 2);
    assert!(guest_reads(&p, &backing, before[0].2[0].1, 1).is_none());
}

#[test]
fn snapshot_restore_continues_identically() {
    let mut p = ready();
    p.dev.borrow_mut().offer(&[spec(1, 0, MB2)]).unwrap();
    p.drv.poll().unwrap();
    p.dev
        .borrow_mut()
        .offer(&[spec(2, 4 * MB2, MB2), spec(2, 5 * MB2, MB2)])
        .unwrap();
    // Snapshot with one tag accepted and a chain delivered but not yet answered.
    let state: DeviceState =
        serde_json::from_str(&serde_json::to_string(&p.dev.borrow().snapshot()).unwrap()).unwrap();
    let (mapper, mstate) = FakeMapper::new();
    let restored = TaggedMemDevice::restore(
        &state,
        Box::new(mapper),
        Arc::new(NoopNotifier),
        Arc::new(ManualClock::default()),
        Some(p.mem.clone()),
    )
    .unwrap();
    *p.dev.borrow_mut() = restored;
    p.mapper = mstate;
    assert_eq!(mapped(&p), MB2, "the accepted extent is mapped again");
    // The guest carries on: answers the pending chain, releases the first tag.
    p.drv.poll().unwrap();
    assert!(p.drv.lookup_unclaimed(Uuid::from_u128(2).as_bytes()).is_some());
    assert_eq!(mapped(&p), 3 * MB2);
    assert_eq!(p.drv.release(*Uuid::from_u128(1).as_bytes()).unwrap(), 1);
    assert_eq!(mapped(&p), 2 * MB2);
    let r = p.dev.borrow_mut().offer(&[spec(3, 8 * MB2, MB2)]).unwrap();
    assert_eq!(r.chain_id, 3, "ids continue after restore");
}

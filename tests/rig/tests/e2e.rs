//! End-to-end tests of the runtime: the guest's reference driver drives the tagged device over
//! virtio-mmio on real KVM, and the guest itself reports what it sees. Each test skips (with a
//! message) when `/dev/kvm` cannot be opened.

mod common;

use common::*;
use std::os::unix::fs::MetadataExt;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tagmem_device::{ExtentFlags, ExtentState, HostEvent, Perf, SourceId, Target};
use tagmem_rig::{byte_sum, Command, Policy, Report, TestGuestVm};
use tagmem_vmm::{BackingLifetime, VmmConfig};
use uuid::Uuid;

/// Bytes probed at each end of a range.
const PROBE: u64 = 64;
/// What the guest reads where nothing is mapped.
const UNBACKED: u8 = 0xff;

/// Has the guest read `len` bytes at `gpa` and checks it saw exactly `expected`'s sum and first
/// bytes.
fn assert_guest_sees(vmm: &TestGuestVm, gpa: u64, expected: &[u8]) {
    let len = u64::try_from(expected.len()).unwrap();
    let (sum, first) = vmm.guest_read(gpa, len).unwrap();
    let n = expected.len().min(8);
    assert_eq!(
        (sum, first.as_slice()),
        (byte_sum(expected), &expected[..n]),
        "guest read at {gpa:#x}"
    );
}

/// Probes the first and last [`PROBE`] bytes of `[gpa, gpa + len)`: the guest must read only
/// the all-ones of unbacked memory, never a byte of a backing.
fn assert_unbacked(vmm: &TestGuestVm, what: &str, gpa: u64, len: u64) {
    for at in [gpa, gpa + len - PROBE] {
        let (sum, first) = vmm.guest_read(at, PROBE).unwrap();
        assert_eq!(
            (sum, first),
            (u64::from(UNBACKED) * PROBE, vec![UNBACKED; 8]),
            "{what} range at {at:#x} returned backing bytes"
        );
    }
}

fn released_ids(events: &[HostEvent]) -> Vec<u64> {
    events
        .iter()
        .flat_map(|e| match e {
            HostEvent::Released { extents } => extents.iter().map(|(id, _)| *id).collect(),
            _ => Vec::new(),
        })
        .collect()
}

#[test]
fn guest_reads_host_bytes_and_host_sees_guest_writes() {
    let Some(vmm) = vmm_or_skip(VmmConfig::default()) else {
        return;
    };
    let base = 4 * GIB;
    let len = 2 * MIB;
    let group = Uuid::from_u128(0xa11ce);
    let mut heads = Vec::new();
    let mut tails = Vec::new();
    let mut chain = Vec::new();
    // A sharable group of two extents and one untagged extent, each on its own backing.
    for i in 0..3u64 {
        let seed = u8::try_from(i).unwrap() * 40 + 1;
        let head = pattern(4096, seed);
        let tail = pattern(4096, seed + 17);
        vmm_memfd(&vmm, 10 + i, len, &head, BackingLifetime::PerExtent);
        vmm_host_write(&vmm, 10 + i, len - 4096, &tail);
        heads.push(head);
        tails.push(tail);
        let mut s = spec(
            if i < 2 { group } else { Uuid::nil() },
            10 + i,
            base + i * 4 * MIB,
            len,
        );
        s.flags.sharable = i < 2;
        s.seq = u16::try_from(i % 2).unwrap();
        s.node = 1;
        s.perf = Perf {
            read_latency_ns: 150,
            write_latency_ns: 300,
            read_bandwidth_mbps: 20_000,
            write_bandwidth_mbps: 10_000,
        };
        chain.push(s);
    }
    let receipt = vmm.offer(&chain).unwrap();
    let ids: Vec<u64> = receipt.extents.iter().map(|(id, _)| *id).collect();
    vmm.guest_poll().unwrap();
    assert!(vmm.extents().iter().all(|e| e.state == ExtentState::Accepted));

    // The guest's own view: its region holds both groups unclaimed, as a CXL DCD host does,
    // until the guest claims them by tag (and the untagged extent with the nil tag).
    let view = vmm.guest_view().unwrap();
    assert!(view.devices.is_empty() && view.unclaimed.len() == 2, "{view:?}");
    assert_eq!(view.seed, "dax0.0");
    assert_eq!(vmm.guest_claim(group).unwrap(), ("dax0.0".to_string(), 2 * len));
    assert_eq!(vmm.guest_claim(Uuid::nil()).unwrap(), ("dax0.1".to_string(), len));
    // Then two devices with the metadata the host offered.
    let view = vmm.guest_view().unwrap();
    assert_eq!((view.devices.len(), view.unclaimed.len()), (2, 0), "{view:?}");
    assert_eq!(view.seed, "dax0.2");
    let shared = view.by_tag(&group).expect("the tagged group is a device");
    assert_eq!(shared.size, 2 * len);
    assert_eq!(
        shared.extents.iter().map(|e| (e.id, e.gpa)).collect::<Vec<_>>(),
        vec![(ids[0], base), (ids[1], base + 4 * MIB)]
    );
    assert_eq!(
        (shared.node, shared.read_latency_ns, shared.write_bandwidth_mbps),
        (1, 150, 10_000)
    );
    assert_eq!(view.by_extent(ids[2]).unwrap().uuid, Uuid::nil());

    // Every extent reads back exactly what the host wrote, at both ends.
    for i in 0..3 {
        let gpa = base + u64::try_from(i).unwrap() * 4 * MIB;
        assert_guest_sees(&vmm, gpa, &heads[i]);
        assert_guest_sees(&vmm, gpa + len - 4096, &tails[i]);
    }

    // The host sees what the guest wrote into the shared extent, and nothing else changed.
    vmm.guest_write(base + 4 * MIB + 8192, 32, 0x5a).unwrap();
    assert_eq!(vmm_host_read(&vmm, 11, 8192, 32), vec![0x5a; 32]);
    assert_eq!(vmm_host_read(&vmm, 11, 0, 4096), heads[1]);
    assert_eq!(vmm.exit_stats().unmapped_reads, 0);
    // The guest read its memory without exits: KVM served it from the memslots.
    assert_eq!(vmm.slots().len(), 3);
}

#[test]
fn unbacked_ranges_never_return_backing_bytes() {
    let (mut config, clock) = manual_config();
    config.device.offer_timeout_ms = 1_000;
    let Some(vmm) = vmm_or_skip(config) else {
        return;
    };
    let len = 2 * MIB;
    let fill = leak_pattern(4096, 3);
    let [accepted, rejected, abandoned, released] = [1u64, 2, 3, 4];
    for id in [accepted, rejected, abandoned, released] {
        vmm_memfd(&vmm, id, len, &fill, BackingLifetime::Persistent);
        vmm_host_write(&vmm, id, len - 4096, &fill);
    }
    let gpa = |id: u64| 4 * GIB + id * 16 * MIB;
    let tag = |id: u64| Uuid::from_u128(u128::from(id));

    // Accepted and to-be-released capacity: mapped, and the guest sees the backing.
    vmm.offer(&[spec(tag(accepted), accepted, gpa(accepted), len)])
        .unwrap();
    vmm.offer(&[spec(tag(released), released, gpa(released), len)])
        .unwrap();
    vmm.guest_poll().unwrap();
    assert_guest_sees(&vmm, gpa(released), &fill[..64]);

    // Rejected by the guest's policy.
    vmm.set_policy(Policy::RejectTag(tag(rejected))).unwrap();
    let r = vmm
        .offer(&[spec(tag(rejected), rejected, gpa(rejected), len)])
        .unwrap();
    vmm.guest_poll().unwrap();
    let events = vmm.take_host_events();
    assert!(
        events.iter().any(|e| matches!(e,
            HostEvent::ChainAnswered { chain_id, rejected, .. }
                if *chain_id == r.chain_id && !rejected.is_empty())),
        "{events:?}"
    );

    // Abandoned: the guest does not poll; the offer times out on the device's clock.
    vmm.set_autopoll(false).unwrap();
    let a = vmm
        .offer(&[spec(tag(abandoned), abandoned, gpa(abandoned), len)])
        .unwrap();
    clock.advance(1_001);
    vmm.poll_timers();
    let events = vmm.take_host_events();
    assert!(
        events.iter().any(|e| matches!(e,
            HostEvent::ChainDropped { chain_id, .. } if *chain_id == a.chain_id)),
        "{events:?}"
    );
    // The guest now sees the late offer and the abandonment; its late answer maps nothing.
    vmm.set_autopoll(true).unwrap();
    vmm.guest_poll().unwrap();

    // Released by the host's request, through the guest's driver.
    vmm.request_release(Target::Tag(tag(released))).unwrap();
    vmm.guest_poll().unwrap();
    assert!(released_ids(&vmm.take_host_events()).len() == 1);

    let unmapped_before = vmm.exit_stats().unmapped_reads;
    assert_unbacked(&vmm, "rejected", gpa(rejected), len);
    assert_unbacked(&vmm, "abandoned", gpa(abandoned), len);
    assert_unbacked(&vmm, "released", gpa(released), len);
    assert_unbacked(&vmm, "never offered (between extents)", gpa(5), len);
    assert_unbacked(&vmm, "never offered (window end)", 4 * TIB - len, len);
    // Each probe of 64 bytes is 8 trapped reads; the VMM answered all of them and lives on.
    assert_eq!(vmm.exit_stats().unmapped_reads - unmapped_before, 5 * 2 * 8);
    assert!(vmm.guest_exited().is_none());
    assert_guest_sees(&vmm, gpa(accepted), &fill[..64]);
    assert_guest_sees(&vmm, gpa(accepted) + len - 4096, &fill);
    let view = vmm.guest_view().unwrap();
    assert_eq!((view.devices.len(), view.unclaimed.len()), (0, 1), "{view:?}");
    assert!(view.unclaimed_by_tag(&tag(accepted)).is_some());
    assert_eq!(view.pending_chains, 0);
}

#[test]
fn guest_write_to_readonly_extent_leaves_backing_unchanged() {
    let Some(vmm) = vmm_or_skip(VmmConfig::default()) else {
        return;
    };
    let len = 2 * MIB;
    let data = pattern(4096, 9);
    vmm_memfd(&vmm, 1, len, &data, BackingLifetime::PerExtent);
    let mut s = spec(Uuid::from_u128(0x20), 1, 4 * GIB, len);
    s.flags = ExtentFlags {
        sharable: false,
        readonly: true,
    };
    vmm.offer(&[s]).unwrap();
    vmm.guest_poll().unwrap();
    let view = vmm.guest_view().unwrap();
    assert_eq!(
        view.unclaimed_by_tag(&s.tag).unwrap().flags,
        u64::from(s.flags.bits()),
        "the guest sees the extent read-only"
    );
    assert!(vmm.slots()[0].readonly);

    vmm.guest_write(4 * GIB, 64, 0xee).unwrap();
    assert_eq!(
        vmm_host_read(&vmm, 1, 0, 4096),
        data,
        "a guest write reached a read-only backing"
    );
    assert!(vmm.exit_stats().readonly_writes >= 64);
    assert_guest_sees(&vmm, 4 * GIB, &data[..64]);
}

#[test]
fn one_tib_sparse_extent_first_and_last_page() {
    let Some(vmm) = vmm_or_skip(VmmConfig::default()) else {
        return;
    };
    let head = pattern(4096, 1);
    let tail = pattern(4096, 2);
    vmm_memfd(&vmm, 1, TIB, &head, BackingLifetime::PerExtent);
    vmm_host_write(&vmm, 1, TIB - 4096, &tail);
    let tag = Uuid::from_u128(0x17);
    let gpa = TIB;
    vmm.offer(&[spec(tag, 1, gpa, TIB)]).unwrap();
    vmm.guest_poll().unwrap();
    let view = vmm.guest_view().unwrap();
    let dev = view
        .unclaimed_by_tag(&tag)
        .expect("the guest accepted the 1 TiB extent");
    assert_eq!((dev.size, dev.extents[0].gpa), (TIB, gpa));
    assert_eq!(vmm.slots().len(), 1);

    assert_guest_sees(&vmm, gpa, &head);
    assert_guest_sees(&vmm, gpa + TIB - 4096, &tail);
    // Only the touched pages cost memory.
    let m = vmm.mapper();
    let blocks = m
        .lock()
        .backing(SourceId(1))
        .unwrap()
        .file_handle()
        .metadata()
        .unwrap()
        .blocks();
    assert!(blocks * 512 <= 16 * MIB, "memfd grew to {} bytes", blocks * 512);
}

#[test]
fn busy_device_defers_release_until_idle() {
    let Some(vmm) = vmm_or_skip(VmmConfig::default()) else {
        return;
    };
    let tag = Uuid::from_u128(0xb5);
    vmm_memfd(&vmm, 1, 2 * MIB, &[1; 64], BackingLifetime::PerExtent);
    let r = vmm.offer(&[spec(tag, 1, 4 * GIB, 2 * MIB)]).unwrap();
    vmm.guest_poll().unwrap();
    // Only a claimed device can be in use.
    vmm.guest_claim(tag).unwrap();
    let busy = |on| Command::Busy {
        target: Target::Tag(tag),
        busy: on,
    };
    assert_eq!(vmm.guest_command(busy(true)).unwrap(), Report::Busy { ok: true });
    vmm.request_release(Target::Tag(tag)).unwrap();
    vmm.guest_poll().unwrap();
    let events = vmm.take_host_events();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, HostEvent::ReleaseDeferred { .. })),
        "{events:?}"
    );
    assert_eq!(vmm.extents()[0].state, ExtentState::ReleaseDeferred);
    assert!(vmm.has_backing(SourceId(1)));
    assert_guest_sees(&vmm, 4 * GIB, &[1; 64]);

    vmm.guest_command(busy(false)).unwrap();
    vmm.guest_poll().unwrap();
    assert_eq!(released_ids(&vmm.take_host_events()), vec![r.extents[0].0]);
    assert!(vmm.extents().is_empty());
    assert!(
        !vmm.has_backing(SourceId(1)),
        "the per-extent backing was not closed"
    );
    assert_unbacked(&vmm, "released", 4 * GIB, 2 * MIB);
    // A guest-initiated release of an unknown device is refused, not fatal.
    assert!(matches!(
        vmm.guest_command(Command::Release(Target::Tag(tag))).unwrap(),
        Report::ReleaseFailed(_)
    ));
}

/// Sends on a channel whenever its eventfd is readable.
struct Probe {
    event: vmm_sys_util::eventfd::EventFd,
    seen: mpsc::Sender<u64>,
}

impl event_manager::MutEventSubscriber for Probe {
    fn process(&mut self, _events: event_manager::Events, _ops: &mut event_manager::EventOps) {
        if let Ok(n) = self.event.read() {
            let _ = self.seen.send(n);
        }
    }

    fn init(&mut self, ops: &mut event_manager::EventOps) {
        ops.add(event_manager::Events::new(
            &self.event,
            event_manager::EventSet::IN,
        ))
        .unwrap();
    }
}

#[test]
fn event_loop_expires_offers_and_runs_added_subscribers() {
    let (mut config, clock) = manual_config();
    config.device.offer_timeout_ms = 500;
    config.timer_period = Duration::from_millis(5);
    let Some(vmm) = vmm_or_skip(config) else {
        return;
    };
    // An added subscriber runs on the loop's thread.
    let event = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let (tx, rx) = mpsc::channel();
    let probe = Arc::new(Mutex::new(Probe {
        event: event.try_clone().unwrap(),
        seen: tx,
    }));
    let id = vmm.add_subscriber(probe).unwrap();
    event.write(3).unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(30)), Ok(3));
    vmm.remove_subscriber(id).unwrap();

    // The loop's timer expires an unanswered offer once the device's clock passed its deadline.
    vmm.set_autopoll(false).unwrap();
    vmm_memfd(&vmm, 1, 2 * MIB, &[7; 64], BackingLifetime::PerExtent);
    let r = vmm
        .offer(&[spec(Uuid::from_u128(0xe1), 1, 4 * GIB, 2 * MIB)])
        .unwrap();
    clock.advance(501);
    let dropped = loop {
        let events = vmm.wait_host_events(Duration::from_secs(30));
        assert!(!events.is_empty(), "the event loop expired nothing");
        if let Some(e) = events
            .iter()
            .find(|e| matches!(e, HostEvent::ChainDropped { .. }))
        {
            break e.clone();
        }
    };
    assert!(matches!(dropped, HostEvent::ChainDropped { chain_id, .. } if chain_id == r.chain_id));
    assert!(
        !vmm.has_backing(SourceId(1)),
        "the abandoned offer's backing was not closed"
    );
}

#[test]
fn snapshot_mid_life_cycle_restores_into_a_fresh_vm_and_the_guest_continues() {
    let (config, clock) = manual_config();
    let Some(vmm) = vmm_or_skip(config.clone()) else {
        return;
    };
    let len = 2 * MIB;
    let (a, b) = (Uuid::from_u128(0xa), Uuid::from_u128(0xb));
    let data_a = pattern(4096, 21);
    let data_b = pattern(4096, 42);
    vmm_memfd(&vmm, 1, len, &data_a, BackingLifetime::PerExtent);
    vmm_memfd(&vmm, 2, len, &data_b, BackingLifetime::PerExtent);
    let ra = vmm.offer(&[spec(a, 1, 4 * GIB, len)]).unwrap();
    vmm.guest_poll().unwrap();
    assert_guest_sees(&vmm, 4 * GIB, &data_a);
    vmm.guest_write(4 * GIB + 4096, 16, 0x3c).unwrap();
    // Mid-life-cycle: A accepted, B offered and not answered yet.
    vmm.set_autopoll(false).unwrap();
    let rb = vmm.offer(&[spec(b, 2, 4 * GIB + 8 * MIB, len)]).unwrap();
    let states: Vec<_> = vmm.extents().iter().map(|e| e.state).collect();
    assert_eq!(states, vec![ExtentState::Accepted, ExtentState::Pending]);

    let snap = vmm.snapshot().unwrap();
    assert_eq!(snap.vm.device.chains.len(), 1);
    assert_eq!(
        snap.vm.backings.len(),
        3,
        "the two extents' and the base region's"
    );
    let lines_before = vmm.console_lines().len();
    vmm.shutdown();
    drop(vmm);

    let vmm = TestGuestVm::restore(config, &snap).unwrap();
    assert_eq!(vmm.console_lines().len(), lines_before);
    assert_eq!(vmm.slots().len(), 1, "the accepted extent is mapped again");
    // The restored guest still has autopoll off: its next poll answers the pending chain.
    vmm.guest_poll().unwrap();
    let events = vmm.take_host_events();
    assert!(
        events.iter().any(|e| matches!(e,
            HostEvent::ChainAnswered { chain_id, accepted, .. }
                if *chain_id == rb.chain_id && *accepted == vec![rb.extents[0].0])),
        "{events:?}"
    );
    let view = vmm.guest_view().unwrap();
    assert_eq!(
        view.unclaimed.iter().map(|d| d.uuid).collect::<Vec<_>>(),
        vec![a, b],
        "both groups accepted, held unclaimed by the guest's region"
    );
    assert_guest_sees(&vmm, 4 * GIB, &data_a);
    assert_guest_sees(&vmm, 4 * GIB + 4096, &[0x3c; 16]);
    assert_guest_sees(&vmm, 4 * GIB + 8 * MIB, &data_b);

    // The guest releases A itself; its backing is closed and its range unbacked.
    assert_eq!(vmm.guest_release(Target::Tag(a)).unwrap(), 1);
    assert_eq!(released_ids(&vmm.take_host_events()), vec![ra.extents[0].0]);
    assert!(!vmm.has_backing(SourceId(1)));
    assert_unbacked(&vmm, "released after restore", 4 * GIB, len);
    // The device's timers keep running on the restored clock; nothing is pending any more.
    clock.advance(60_000);
    vmm.poll_timers();
    assert!(vmm
        .take_host_events()
        .iter()
        .all(|e| !matches!(e, HostEvent::ChainDropped { .. })));
    assert_eq!(vmm.extents().len(), 1);
}

#[test]
fn a_snapshot_with_a_per_extent_backing_no_extent_uses_restores_without_it() {
    let (config, _clock) = manual_config();
    let Some(vmm) = vmm_or_skip(config.clone()) else {
        return;
    };
    let len = 2 * MIB;
    // Registered for an offer not made yet; a second one in use by an accepted extent.
    vmm_memfd(&vmm, 1, len, &pattern(64, 1), BackingLifetime::PerExtent);
    vmm_memfd(&vmm, 2, len, &pattern(64, 2), BackingLifetime::PerExtent);
    vmm.offer(&[spec(Uuid::from_u128(0xb), 2, 4 * GIB, len)]).unwrap();
    vmm.guest_poll().unwrap();
    let snap = vmm.snapshot().unwrap();
    assert!(snap.vm.backings.iter().any(|b| b.id == SourceId(1)));
    vmm.shutdown();
    drop(vmm);

    let vmm = TestGuestVm::restore(config, &snap).unwrap();
    assert!(
        !vmm.has_backing(SourceId(1)),
        "nothing uses it, and nothing would ever report it unused: closed at restore"
    );
    assert!(
        vmm.has_backing(SourceId(2)),
        "the accepted extent's backing stays"
    );
    assert_guest_sees(&vmm, 4 * GIB, &pattern(64, 2));
}

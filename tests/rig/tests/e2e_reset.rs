//! Device reset and guest time on real KVM: the bare-metal test guest resets the device and
//! initialises its reference driver again (as a rebind or kexec does), and the runtime pauses the
//! guest. Requirement ids refer to guest-driver-spec/SPEC.md. Each test skips (with a message)
//! when `/dev/kvm` cannot be opened.

mod common;

use common::*;
use tagmem_device::{ExtentState, HostEvent, SourceId, Target};
use tagmem_rig::{byte_sum, Policy, TestGuestVm};
use tagmem_vmm::BackingLifetime;
use uuid::Uuid;

/// Has the guest read `expected.len()` bytes at `gpa`; true if it saw exactly `expected`.
fn guest_sees(vmm: &TestGuestVm, gpa: u64, expected: &[u8]) -> bool {
    let len = u64::try_from(expected.len()).unwrap();
    let (sum, first) = vmm.guest_read(gpa, len).unwrap();
    let n = expected.len().min(8);
    sum == byte_sum(expected) && first == expected[..n]
}

/// Acceptance (issue 10), on KVM: after a reset the reference driver in the guest re-learns every
/// accepted extent through LIST, and the guest reads the same bytes there as before, host-written
/// and guest-written alike. Nothing was unmapped or reported released; a pending chain is offered
/// again; a release afterwards works as before.
#[test]
fn guest_relearns_accepted_extents_after_reset_and_reads_the_same_bytes() {
    let (config, _clock) = manual_config();
    let Some(vmm) = vmm_or_skip(config) else { return };
    let base = 4 * GIB;
    let len = 2 * MIB;
    let group = Uuid::from_u128(0x7e5e7);
    let mut heads = Vec::new();
    let mut chain = Vec::new();
    for i in 0..3u64 {
        let head = leak_pattern(4096, u8::try_from(i).unwrap() * 50 + 3);
        vmm_memfd(&vmm, 20 + i, len, &head, BackingLifetime::PerExtent);
        heads.push(head);
        chain.push(spec(
            if i < 2 { group } else { Uuid::nil() },
            20 + i,
            base + i * 4 * MIB,
            len,
        ));
    }
    let receipt = vmm.offer(&chain[..2]).unwrap();
    let untagged = vmm.offer(&chain[2..]).unwrap();
    vmm.guest_poll().unwrap();
    assert!(vmm.extents().iter().all(|e| e.state == ExtentState::Accepted));
    // The guest's user space claims the tag group and the untagged extent (as `daxctl
    // create-device -r region0 --uuid` does).
    vmm.guest_claim(group).unwrap();
    vmm.guest_claim(Uuid::nil()).unwrap();
    // The guest writes into the untagged extent; the host sees it.
    let gpa2 = base + 8 * MIB;
    vmm.guest_write(gpa2 + 4096, 512, 0x5c).unwrap();
    assert_eq!(vmm_host_read(&vmm, 22, 4096, 512), vec![0x5c; 512]);
    for (i, head) in heads.iter().enumerate() {
        assert!(guest_sees(&vmm, base + u64::try_from(i).unwrap() * 4 * MIB, head));
    }
    let view_before = vmm.guest_view().unwrap();
    // Device names are the driver's own and may change; every record field must not.
    let records = |vmm: &TestGuestVm| {
        let mut v = vmm.guest_extents().unwrap();
        v.iter_mut().for_each(|e| e.device = None);
        v.sort_by_key(|e| e.id);
        v
    };
    let extents_before = records(&vmm);
    assert_eq!(view_before.devices.len(), 2);
    let slots_before = vmm.slots();

    // An unanswered chain at the time of the reset.
    vmm_memfd(&vmm, 30, len, &leak_pattern(64, 9), BackingLifetime::PerExtent);
    vmm.set_autopoll(false).unwrap();
    vmm.offer(&[spec(Uuid::from_u128(0xcafe), 30, base + 16 * MIB, len)])
        .unwrap();
    vmm.take_host_events();

    let (devices, extents) = vmm.guest_reinit().unwrap();
    assert_eq!(
        (devices, extents),
        (0, 3),
        "every accepted extent re-learned, unclaimed as on a DCD host after a kexec"
    );
    let events = vmm.take_host_events();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, HostEvent::DeviceReset { pending_chains } if pending_chains.len() == 1)),
        "{events:?}"
    );
    assert!(
        !events.iter().any(|e| matches!(e, HostEvent::Released { .. })),
        "{events:?}"
    );
    assert_eq!(vmm.slots(), slots_before, "no memslot changed");
    assert_eq!(records(&vmm), extents_before, "same extents, same records");
    let unclaimed = vmm.guest_view().unwrap();
    assert!(unclaimed.unclaimed_by_tag(&group).is_some(), "{unclaimed:?}");
    // Claimed again, they are the same devices over the same bytes.
    vmm.guest_claim(group).unwrap();
    vmm.guest_claim(Uuid::nil()).unwrap();
    let view_after = vmm.guest_view().unwrap();
    assert_eq!(view_after.devices.len(), 2);
    let shared = view_after
        .by_tag(&group)
        .expect("the tag group is a device again");
    assert_eq!(
        shared.extents.iter().map(|e| (e.id, e.gpa)).collect::<Vec<_>>(),
        vec![
            (receipt.extents[0].0, base),
            (receipt.extents[1].0, base + 4 * MIB)
        ]
    );
    assert!(view_after.by_extent(untagged.extents[0].0).is_some());
    for (i, head) in heads.iter().enumerate() {
        assert!(
            guest_sees(&vmm, base + u64::try_from(i).unwrap() * 4 * MIB, head),
            "extent {i} reads what it read before the reset"
        );
    }
    assert!(
        guest_sees(&vmm, gpa2 + 4096, &[0x5c; 512]),
        "the guest's own writes are still there"
    );

    // The pending chain comes again and is accepted now.
    vmm.guest_poll().unwrap();
    assert!(vmm
        .guest_view()
        .unwrap()
        .unclaimed_by_tag(&Uuid::from_u128(0xcafe))
        .is_some());
    // Re-learned capacity is released as any other, and is gone from the guest afterwards.
    assert_eq!(vmm.guest_release(Target::Tag(group)).unwrap(), 2);
    let (sum, _) = vmm.guest_read(base, 64).unwrap();
    assert_eq!(sum, 0xff * 64, "released capacity reads as unbacked memory");
    assert!(
        !vmm.has_backing(SourceId(20)),
        "its per-extent backing was closed"
    );
}

/// [T-TIMEOUT-1] (item B9), on KVM: the offer timeout counts only while the guest runs; a paused
/// VM does not abandon offers, and time it was paused does not count afterwards.
#[test]
fn paused_vm_does_not_abandon_offers() {
    let (config, clock) = manual_config();
    let Some(vmm) = vmm_or_skip(config) else { return };
    vmm_memfd(&vmm, 40, 2 * MIB, &[1; 64], BackingLifetime::PerExtent);
    vmm.set_policy(Policy::RejectAll).unwrap();
    vmm.set_autopoll(false).unwrap();
    vmm.offer(&[spec(Uuid::from_u128(0xb9), 40, 4 * GIB, 2 * MIB)])
        .unwrap();
    clock.advance(5_000);
    vmm.pause().unwrap();
    assert!(vmm.is_paused());
    clock.advance(60_000);
    vmm.poll_timers();
    assert_eq!(vmm.extents().len(), 1, "a minute paused is no guest time");
    vmm.resume();
    assert!(!vmm.is_paused());
    clock.advance(14_999);
    vmm.poll_timers();
    assert_eq!(vmm.extents().len(), 1, "19.999 s of guest time so far");
    clock.advance(1);
    vmm.poll_timers();
    assert!(vmm.extents().is_empty(), "abandoned after 20 s of guest time");
    // Snapshots park the guest too: a snapshot taken now leaves the clock running afterwards.
    let _ = vmm.snapshot().unwrap();
    assert_eq!(vmm.guest_poll().map(|_| ()).ok(), Some(()));
}

//! Nested pass-through on real KVM: a tag found the same way at L0 (host sysfs), in VM "L1" and
//! in VM "L2"; data shared across the levels; the release cascade; tags L1 never received.
//!
//! What this models. L0 is the test acting as the host: it looks tags up in a host sysfs tree
//! written under a temporary directory (a CXL Dynamic Capacity region whose extents form tagged
//! dax devices on target node 2; the node holds only devdax capacity, so it shows no HMAT
//! attributes and the CPU-access performance is the CXL region's `access1`), and offers VM "L1"
//! one extent per host extent, with those values as performance, at the host-physical address of
//! the extent (address-preserving placement). As on a DCD host, accepted capacity is unclaimed in
//! each guest until its user space claims it by tag (`daxctl create-device --uuid`, here
//! `TestGuestVm::guest_claim`); L1 must claim a group before its VMM can pass it to L2, and L2
//! claims what it receives. No devdax device exists here, so each device is backed by a memfd standing in for `/dev/daxX.Y` (registered as a
//! devdax backing, so it is mapped in 2 MiB units as a devdax would be). The L1 VMM is
//! [`NestedPassthrough`] in this process: it resolves a tag through the lookup over what the L1
//! guest's driver reports, and offers VM "L2" the same extents, backed by the L1 guest-physical
//! ranges, that is by the same memfd descriptor and offsets L0 maps into L1, at the same
//! guest-physical addresses. Both VMs are real KVM VMs running the test guest and the reference
//! driver on their own vCPU.
//!
//! What it does not model: no VM runs inside a VM (KVM here cannot nest), so L2 is not a guest of
//! L1's kernel; the L1 VMM does not `mmap` an L1 `/dev/daxX.Y`, it uses the host descriptor behind
//! that L1 range; and it learns of L0's release requests by polling the L1 guest, not from a
//! kernel notification. Set `--nocapture` to see the JSON and tables of each level.

#[path = "../common/mod.rs"]
mod common;
mod levels;

use std::os::unix::fs::FileExt;

use common::*;
use levels::*;
use tagmem_device::Target;
use tagmem_device::{ExtentState, HostEvent, Perf, SourceId};
use tagmem_lookup::fixture::{MIB2, TAG_A, TAG_ABSENT};
use tagmem_lookup::{lookup, output, Found, SysfsSource};
use tagmem_rig::nested::{guest_dax_devices, CascadeStep, Forwarded, NestedError, NestedPassthrough};
use tagmem_rig::ExtentDetail;

#[test]
fn l2_lookup_matches_l0_and_bytes_flow_between_l0_and_l2() {
    let Some(lv) = levels() else {
        return;
    };
    let mut l1_vmm = NestedPassthrough::new(&lv.l1, &lv.l2);
    for t in [TAG_A, TAG_B] {
        let offer = pass(&mut l1_vmm, &lv.l2, tag(t));
        assert!(
            offer.extents.iter().all(|e| e.accepted && e.l2_gpa == e.l1_gpa),
            "{offer:?}"
        );
    }

    for t in [TAG_A, TAG_B] {
        let host = host_device(&lv.host, tag(t));
        let l1_dev = guest_lookup(&lv.l1, tag(t));
        let l2_dev = guest_lookup(&lv.l2, tag(t));
        println!(
            "tag {t} at L0 (host sysfs):\n{}",
            output::json_string(std::slice::from_ref(&host))
        );
        println!(
            "tag {t} at L1 (L1 guest driver):\n{}",
            output::json_string(&l1_dev)
        );
        println!(
            "tag {t} at L2 (L2 guest driver):\n{}",
            output::json_string(&l2_dev)
        );
        println!("{}", output::human_table(&l2_dev));
        let l0 = output::to_json(std::slice::from_ref(&host));
        let l1 = output::to_json(&l1_dev);
        let l2 = output::to_json(&l2_dev);
        // L1 and L2 agree entirely: same names (first devices of each guest), same addresses.
        assert_eq!(l1, l2, "{t}: L1 and L2 lookups differ");
        // L2 and L0 differ exactly in the device name and path (`dax0.N` in a guest), in `flags`
        // (shown by the guest driver, absent from bare-metal CXL sysfs) and in each extent's
        // `offset` (the offset within the CXL region, which only the host knows).
        let mut diff = Vec::new();
        differing_paths(&l0, &l2, "", &mut diff);
        let mut expected: Vec<String> = ["/0/chardev", "/0/flags", "/0/path"].map(String::from).to_vec();
        expected.extend((0..host.extents.len()).map(|i| format!("/0/extents/{i}/offset")));
        expected.sort();
        diff.sort();
        assert_eq!(diff, expected, "{t}: L0 and L2 lookups differ elsewhere");
        assert!(l0[0].get("flags").is_none() && l2[0]["flags"].is_array());
    }
    let l2_devices = guest_dax_devices(&lv.l2).unwrap();
    let l0_devices = [
        host_device(&lv.host, tag(TAG_A)),
        host_device(&lv.host, tag(TAG_B)),
    ];
    println!("L0 table (host sysfs):\n{}", output::human_table(&l0_devices));
    println!(
        "L2 table (L2 guest driver):\n{}",
        output::human_table(&l2_devices)
    );

    // A Linux guest shows the same through sysfs (SPEC.md T-LOOKUP-5/6): the L2 driver's report
    // written in that layout reads back, through the sysfs source `tagmem` uses, as the same
    // devices.
    let l2_ext = lv.l2.guest_extents().unwrap();
    let tree = linux_guest_tree(&l2_ext, &l2_devices);
    for t in [TAG_A, TAG_B] {
        let from_sysfs = lookup(&SysfsSource::new(tree.root()), &tag(t)).unwrap();
        assert_eq!(from_sysfs, guest_find(&lv.l2, tag(t)), "{t}");
    }

    // The L2 records copy L1's: tag, range, flags, seq, node, class, performance (T-NEST-1); L1
    // keeps the groups busy while L2 holds them (T-NEST-2).
    let l1_ext = lv.l1.guest_extents().unwrap();
    assert_eq!(l1_ext.len(), 3);
    assert_eq!(l2_ext.len(), 3);
    for (a, b) in l1_ext.iter().zip(&l2_ext) {
        let key = |e: &ExtentDetail| {
            (
                e.uuid,
                e.gpa,
                e.len,
                e.flags,
                e.seq,
                e.node,
                e.class,
                (
                    e.read_latency_ns,
                    e.write_latency_ns,
                    e.read_bandwidth_mbps,
                    e.write_bandwidth_mbps,
                ),
            )
        };
        assert_eq!(key(a), key(b));
        assert!(a.busy && !b.busy, "L1 busy, L2 idle: {a:?} {b:?}");
    }

    // Bytes L0 writes into the backing are read by L2 (both groups, both ends of an extent).
    let a = host_device(&lv.host, tag(TAG_A));
    let b = host_device(&lv.host, tag(TAG_B));
    let probes = [
        (&a, L0_SOURCE_A, 0, 0u64),
        (&a, L0_SOURCE_A, 1, 2 * MIB2 - 4096),
        (&b, L0_SOURCE_B, 0, 8192),
    ];
    for (k, (dev, source, i, off)) in probes.into_iter().enumerate() {
        let bytes = leak_pattern(4096, u8::try_from(k).unwrap() + 1);
        let (gpa, offset) = addr(dev, i, off);
        vmm_host_write(&lv.l1, source, offset, &bytes);
        let (sum, first) = lv.l2.guest_read(gpa, 4096).unwrap();
        assert_eq!(
            (sum, first.as_slice()),
            (tagmem_rig::byte_sum(&bytes), &bytes[..8]),
            "L2 reads what L0 wrote at {gpa:#x}"
        );
    }
    // L2's writes to the sharable group are seen by L0 (and by L1).
    let (gpa, offset) = addr(&a, 1, 12288);
    lv.l2.guest_write(gpa, 256, 0x5a).unwrap();
    assert_eq!(vmm_host_read(&lv.l1, L0_SOURCE_A, offset, 256), vec![0x5a; 256]);
    let (sum, _) = lv.l1.guest_read(gpa, 256).unwrap();
    assert_eq!(sum, 0x5a * 256);
    // The read-only group stays read-only in L2: its write does not reach the backing.
    let (gpa, offset) = addr(&b, 0, 0);
    let before = vmm_host_read(&lv.l1, L0_SOURCE_B, offset, 64);
    lv.l2.guest_write(gpa, 64, 0x33).unwrap();
    assert_eq!(vmm_host_read(&lv.l1, L0_SOURCE_B, offset, 64), before);
    assert_eq!(lv.l1_ids.len(), 3);
}

#[test]
fn release_at_l0_cascades_through_l1_to_l2() {
    let Some(lv) = levels() else {
        return;
    };
    let tag_a = tag(TAG_A);
    let a = host_device(&lv.host, tag_a);
    let mut l1_vmm = NestedPassthrough::new(&lv.l1, &lv.l2);
    let offer = pass(&mut l1_vmm, &lv.l2, tag_a);
    let l2_ids: Vec<u64> = offer.extents.iter().map(|e| e.l2_id).collect();
    let (gpa, offset) = addr(&a, 1, 0);
    vmm_host_write(&lv.l1, L0_SOURCE_A, offset, &[7; 64]);
    assert_eq!(lv.l2.guest_read(gpa, 64).unwrap().0, 7 * 64, "L2 holds the group");
    lv.l1.take_host_events();

    // L0 asks L1 for the group back. L1's driver holds it busy for L2 and answers RELEASE_BUSY.
    let l1_ids = lv.l1.request_release(Target::Tag(tag_a)).unwrap();
    assert_eq!(l1_ids, lv.l1_ids[..2]);

    let mut steps = Vec::new();
    let mut l0_events_when_l2_let_go = Vec::new();
    let released = l1_vmm
        .cascade_releases(|step| {
            if let CascadeStep::L2Released { .. } = step {
                // L2 has let go: it reads unbacked memory, while L0 has not completed yet (the
                // group is still deferred there and L1 still reaches it).
                let (sum, first) = lv.l2.guest_read(gpa, 64).unwrap();
                assert_eq!((sum, first), (u64::from(UNBACKED) * 64, vec![UNBACKED; 8]));
                assert!(lv.l2.slots().is_empty(), "L2 maps nothing: {:?}", lv.l2.slots());
                l0_events_when_l2_let_go = lv.l1.take_host_events();
                assert!(lv
                    .l1
                    .extents()
                    .iter()
                    .filter(|e| l1_ids.contains(&e.id))
                    .all(|e| e.state == ExtentState::ReleaseDeferred));
                assert_eq!(lv.l1.guest_read(gpa, 64).unwrap().0, 7 * 64);
            }
            steps.push(step.clone());
        })
        .unwrap();
    assert_eq!(released, vec![tag_a]);
    assert_eq!(
        steps,
        vec![
            CascadeStep::RequestSeen { tag: tag_a },
            CascadeStep::L2ReleaseRequested {
                tag: tag_a,
                extents: l2_ids.clone()
            },
            CascadeStep::L2Released {
                tag: tag_a,
                extents: l2_ids
            },
            CascadeStep::L1Released { tag: tag_a, count: 2 },
        ]
    );
    // Until L2 let go, L0 heard only RELEASE_BUSY; completion came after.
    assert_eq!(
        l0_events_when_l2_let_go,
        vec![HostEvent::ReleaseDeferred {
            extents: l1_ids.clone()
        }]
    );
    let after = lv.l1.take_host_events();
    let l0_released: Vec<u64> = after
        .iter()
        .flat_map(|e| match e {
            HostEvent::Released { extents } => extents.iter().map(|(id, _)| *id).collect(),
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(
        l0_released, l1_ids,
        "L0 reports completion after the cascade: {after:?}"
    );

    // Neither guest reaches the capacity any more, the other group is untouched, and L0's
    // backing still holds its bytes (a release returns capacity, it does not clear it).
    for vmm in [&lv.l1, &lv.l2] {
        let (sum, _) = vmm.guest_read(gpa, 64).unwrap();
        assert_eq!(sum, u64::from(UNBACKED) * 64);
    }
    assert!(lookup(&guest_dax_devices(&lv.l1).unwrap(), &tag_a)
        .unwrap()
        .is_empty());
    assert!(lookup(&guest_dax_devices(&lv.l2).unwrap(), &tag_a)
        .unwrap()
        .is_empty());
    assert_eq!(
        lookup(&guest_dax_devices(&lv.l1).unwrap(), &tag(TAG_B))
            .unwrap()
            .len(),
        1
    );
    let mut b = [0u8; 64];
    lv.l1
        .mapper()
        .lock()
        .backing(SourceId(L0_SOURCE_A))
        .unwrap()
        .file_handle()
        .read_exact_at(&mut b, offset)
        .unwrap();
    assert_eq!(b, [7; 64]);
    assert!(l1_vmm.passed_tags().is_empty());
}

#[test]
fn a_tag_l0_never_gave_l1_cannot_be_offered_to_l2() {
    let Some(lv) = levels() else {
        return;
    };
    let mut l1_vmm = NestedPassthrough::new(&lv.l1, &lv.l2);
    // TAG_C is on the host but L0 never offered it; TAG_ABSENT is nowhere.
    assert_eq!(
        lookup(&SysfsSource::new(lv.host.root()), &tag(TAG_C))
            .unwrap()
            .len(),
        1
    );
    for t in [tag(TAG_C), tag(TAG_ABSENT)] {
        let err = l1_vmm.offer_tag(t).unwrap_err();
        assert!(matches!(err, NestedError::TagNotPresent(x) if x == t), "{err}");
        assert_eq!(
            err.to_string(),
            format!("tag {t}: the L1 guest holds no capacity with this tag; nothing offered to L2")
        );
    }
    // Nothing reached L2, and nothing was marked busy in L1.
    assert!(lv.l2.extents().is_empty());
    assert_no_host_event_but_reset(&lv.l2);
    assert!(lv.l2.guest_extents().unwrap().is_empty());
    assert!(lv.l1.guest_extents().unwrap().iter().all(|e| !e.busy));
    // A tag L1 holds still passes, and passing it twice is refused.
    l1_vmm.offer_tag(tag(TAG_B)).unwrap();
    let err = l1_vmm.offer_tag(tag(TAG_B)).unwrap_err();
    assert!(matches!(err, NestedError::AlreadyPassed(_)), "{err}");
}

#[test]
fn metadata_and_poison_reach_l2_through_l1() {
    let Some(lv) = levels() else {
        return;
    };
    let tag_a = tag(TAG_A);
    let mut l1_vmm = NestedPassthrough::new(&lv.l1, &lv.l2);
    let offer = pass(&mut l1_vmm, &lv.l2, tag_a);
    assert!(
        l1_vmm.forward_updates().unwrap().is_empty(),
        "nothing new to pass on yet"
    );

    // L0 changes the group's performance and reports poison in its second extent.
    let perf = Perf {
        read_latency_ns: 600,
        write_latency_ns: 700,
        read_bandwidth_mbps: 9_000,
        write_bandwidth_mbps: 8_000,
    };
    lv.l1.update_metadata(Target::Tag(tag_a), perf).unwrap();
    lv.l1.inject_poison(lv.l1_ids[1], 0x2000, 0x1000).unwrap();
    let second = offer.extents[1].l2_id;
    let forwarded = l1_vmm.forward_updates().unwrap();
    assert_eq!(
        forwarded,
        vec![
            Forwarded::Metadata {
                tag: tag_a,
                l2_extent: offer.extents[0].l2_id,
                perf
            },
            Forwarded::Poison {
                tag: tag_a,
                l2_extent: second,
                offset: 0x2000,
                length: 0x1000
            },
        ]
    );
    assert!(
        l1_vmm.forward_updates().unwrap().is_empty(),
        "each update is passed on once"
    );

    // L2's driver sees what L1's driver saw, and the lookups agree.
    lv.l2.guest_poll().unwrap();
    let l2 = lv.l2.guest_extents().unwrap();
    for e in l2.iter().filter(|e| e.uuid == tag_a) {
        assert_eq!(
            (e.read_latency_ns, e.write_bandwidth_mbps),
            (600, 8_000),
            "extent {}",
            e.id
        );
    }
    assert_eq!(
        l2.iter().find(|e| e.id == second).unwrap().poison,
        vec![(0x2000, 0x1000)]
    );
    let l1_view = output::json_string(&guest_lookup(&lv.l1, tag_a));
    let l2_view = output::json_string(&guest_lookup(&lv.l2, tag_a));
    assert_eq!(l1_view, l2_view);
}

#[test]
fn l1_must_claim_a_group_before_it_can_pass_it_and_unclaimed_reads_alike_at_every_level() {
    let Some(lv) = levels_unclaimed() else {
        return;
    };
    let tag_a = tag(TAG_A);
    let mut l1_vmm = NestedPassthrough::new(&lv.l1, &lv.l2);
    // L1 accepted the group but nobody claimed it: its VMM cannot open a dax device for it.
    let err = l1_vmm.offer_tag(tag_a).unwrap_err();
    assert!(
        matches!(err, NestedError::Unclaimed { tag, ref region, .. } if tag == tag_a && region == "region0"),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "tag {tag_a}: the L1 guest holds it unclaimed in region0; claim it there first \
             (daxctl create-device -r region0 --uuid {tag_a}); nothing offered to L2"
        )
    );
    assert!(lv.l2.extents().is_empty());
    assert_no_host_event_but_reset(&lv.l2);
    assert!(lv
        .l1
        .guest_extents()
        .unwrap()
        .iter()
        .all(|e| !e.busy && e.device.is_none()));

    // Unclaimed, the tag reads alike on the host (before its user space claimed it) and in L1.
    let host = lookup(&SysfsSource::new(host_region().root()), &tag_a).unwrap();
    let l1 = guest_find(&lv.l1, tag_a);
    assert!(host.devices.is_empty() && l1.devices.is_empty());
    let json = |f: &Found| output::found_to_json(f);
    println!("unclaimed at L0:\n{}", output::found_json_string(&host));
    println!("unclaimed at L1:\n{}", output::found_json_string(&l1));
    let mut diff = Vec::new();
    differing_paths(&json(&host), &json(&l1), "", &mut diff);
    diff.sort();
    let mut expected: Vec<String> = ["/0/claim", "/0/flags", "/0/region"].map(String::from).to_vec();
    expected.extend((0..2).map(|i| format!("/0/extents/{i}/offset")));
    expected.sort();
    assert_eq!(diff, expected, "L0 and L1 unclaimed answers differ elsewhere");

    // Claimed in L1, it passes; L2 receives it unclaimed and reads as L1 did before its claim.
    lv.l1.guest_claim(tag_a).unwrap();
    let offer = l1_vmm.offer_tag(tag_a).unwrap();
    assert!(offer.extents.iter().all(|e| e.accepted));
    lv.l2.guest_poll().unwrap();
    let l2 = guest_find(&lv.l2, tag_a);
    assert_eq!(json(&l2), json(&l1), "L2 unclaimed equals L1 unclaimed");
    // And once L2 claims it, L2's device equals L1's.
    let (name, size) = lv.l2.guest_claim(tag_a).unwrap();
    assert_eq!((name.as_str(), size), ("dax0.0", 3 * MIB2));
    assert_eq!(
        output::to_json(&guest_lookup(&lv.l2, tag_a)),
        output::to_json(&guest_lookup(&lv.l1, tag_a))
    );
}

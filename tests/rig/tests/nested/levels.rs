//! The levels of the nested tests: the host's sysfs tree (L0), what L0 offers VM L1, the VMs
//! L1 and L2, and lookups in each.

use crate::common::*;
use serde_json::Value;
use tagmem_device::{
    ExtentFlags, ExtentSpec, ExtentState, HostEvent, Perf, SourceClass, SourceId, SourceRef,
};
use tagmem_lookup::fixture::{c_hex, Dev, Tree, MIB2, REGION2_BASE, REGION2_CPU_PERF, TAG_A};
use tagmem_lookup::{lookup, DaxDevice, Found, SysfsSource};
use tagmem_rig::nested::{guest_capacity, NestedPassthrough};
use tagmem_rig::{ExtentDetail, TestGuestVm};
use tagmem_vmm::{Backing, BackingKind, BackingLifetime, VmmConfig};
use uuid::Uuid;

/// A read-only single-extent group L0 gives L1.
pub const TAG_B: &str = "3d5e7f90-1a2b-4c3d-8e4f-5a6b7c8d9e0f";
/// A tag the host has but L0 never gives L1.
pub const TAG_C: &str = "9c8b7a65-4321-4fed-8cba-0987654321fe";
/// Backing ids L0 uses for the memfds standing in for the host's dax devices.
pub const L0_SOURCE_A: u64 = 1;
pub const L0_SOURCE_B: u64 = 2;
/// What a guest reads where nothing is mapped.
pub const UNBACKED: u8 = 0xff;

pub fn tag(s: &str) -> Uuid {
    Uuid::parse_str(s).unwrap()
}

/// `vmm` reported no host event but the device reset its guest's driver does at probe: nothing
/// was offered, answered or released there.
pub fn assert_no_host_event_but_reset(vmm: &TestGuestVm) {
    let events = vmm.take_host_events();
    assert!(
        events.iter().all(|e| matches!(e, HostEvent::DeviceReset { .. })),
        "{events:?}"
    );
}

/// The host: CXL region 2 at [`REGION2_BASE`] with the two-extent group `TAG_A` (`dax2.1`), the
/// one-extent groups `TAG_B` (`dax2.2`) and `TAG_C` (`dax2.3`), all on target node 2, a devdax-only
/// node without HMAT attributes; the region's access coordinates give class 0 and 1 (CPUs).
pub fn host_tree() -> Tree {
    let t = host_region();
    let r = "sys/devices/platform/ACPI0017:00/root0/decoder0.0/region2/dax_region2";
    let at = |off: u64, len: u64| (REGION2_BASE + off, len);
    for (name, uuid, ranges) in [
        ("dax2.1", TAG_A, vec![at(0, MIB2), at(0x1000_0000, 2 * MIB2)]),
        ("dax2.2", TAG_B, vec![at(0x2000_0000, MIB2)]),
        ("dax2.3", TAG_C, vec![at(0x3000_0000, MIB2)]),
    ] {
        let mut d = Dev::new(name, r, Some(uuid), &ranges);
        d.target_node = 2;
        t.dax(&d);
    }
    t
}

/// The host's region 2 with its extents, its access coordinates and its seed `dax2.0`, before
/// user space claimed anything: every group is unclaimed.
pub fn host_region() -> Tree {
    let t = Tree::new();
    let r = t.cxl_region(2, Some(REGION2_BASE), 1 << 32);
    t.cxl_extent(&r, 2, 0, 0, MIB2, Some(TAG_A));
    t.cxl_extent(&r, 2, 1, 0x1000_0000, 2 * MIB2, Some(TAG_A));
    t.cxl_extent(&r, 2, 2, 0x2000_0000, MIB2, Some(TAG_B));
    t.cxl_extent(&r, 2, 3, 0x3000_0000, MIB2, Some(TAG_C));
    let mut seed = Dev::new("dax2.0", &r, Some("00000000-0000-0000-0000-000000000000"), &[]);
    seed.target_node = 2;
    t.dax(&seed);
    t.cxl_region_perf(2, 0, (180, 220), (32_000, 16_000));
    t.cxl_region_perf(2, 1, REGION2_CPU_PERF.0, REGION2_CPU_PERF.1);
    t
}

/// The host's device for `tag` (L0's lookup).
pub fn host_device(host: &Tree, t: Uuid) -> DaxDevice {
    let mut found = lookup(&SysfsSource::new(host.root()), &t).unwrap();
    assert_eq!(found.len(), 1, "{t}");
    found.devices.remove(0)
}

/// L0 offers VM L1 the host device `dev`, one extent per mapping at its host-physical address,
/// backed by a fresh memfd standing in for the devdax (backing `source`, offset = the mapping's
/// offset in the device), with the device's CPU-access performance, node and source class;
/// sequence numbers follow the mappings. Returns the L1 extent ids once L1's driver accepted them
/// (unclaimed in L1 until claimed).
pub fn l0_offer(l1: &TestGuestVm, dev: &DaxDevice, source: u64, flags: ExtentFlags) -> Vec<u64> {
    let memfd = Backing::memfd(&format!("l0-{}", dev.chardev), dev.size).unwrap();
    let file = memfd.file_handle().try_clone().unwrap();
    let standin = Backing::from_file(file, dev.size, BackingKind::DevDax, true);
    l1.register_backing(SourceId(source), standin, BackingLifetime::Persistent)
        .unwrap();
    let perf = dev.perf.expect("the CXL region reports CPU access");
    assert_eq!(perf.access_class, 1, "records carry CPU-initiator values");
    let class = match dev.source_class {
        Some(tagmem_lookup::SourceClass::CxlDc) => SourceClass::CxlDc,
        other => panic!("{}: unexpected source class {other:?}", dev.chardev),
    };
    let chain: Vec<ExtentSpec> = dev
        .mappings
        .iter()
        .enumerate()
        .map(|(i, m)| ExtentSpec {
            tag: dev.uuid,
            length: m.size,
            source: SourceRef {
                id: SourceId(source),
                offset: m.page_offset * tagmem_lookup::PAGE_SIZE,
            },
            gpa: Some(m.start),
            flags,
            perf: Perf {
                read_latency_ns: perf.read_latency_ns,
                write_latency_ns: perf.write_latency_ns,
                read_bandwidth_mbps: perf.read_bandwidth_mbps,
                write_bandwidth_mbps: perf.write_bandwidth_mbps,
            },
            node: u16::try_from(dev.target_node.unwrap()).unwrap(),
            seq: u16::try_from(i).unwrap(),
            class,
        })
        .collect();
    let receipt = l1.offer(&chain).unwrap();
    l1.guest_poll().unwrap();
    let ids: Vec<u64> = receipt.extents.iter().map(|(id, _)| *id).collect();
    let table = l1.extents();
    for id in &ids {
        let e = table.iter().find(|e| e.id == *id).unwrap();
        assert_eq!(e.state, ExtentState::Accepted, "L1 accepted extent {id}");
    }
    ids
}

/// The host, VM L1 holding `TAG_A` (sharable) and `TAG_B` (read-only) from L0, and VM L2.
pub struct Levels {
    pub host: Tree,
    pub l1: TestGuestVm,
    pub l2: TestGuestVm,
    pub l1_ids: Vec<u64>,
}

/// [`levels_unclaimed`], then L1's user space claims both groups.
pub fn levels() -> Option<Levels> {
    let lv = levels_unclaimed()?;
    for t in [TAG_A, TAG_B] {
        let (name, _) = lv.l1.guest_claim(tag(t)).unwrap();
        assert!(name.starts_with("dax0."), "{name}");
    }
    Some(lv)
}

/// The host and VM L1 holding `TAG_A` and `TAG_B` accepted but not claimed, and VM L2.
pub fn levels_unclaimed() -> Option<Levels> {
    let host = host_tree();
    let l1 = vmm_or_skip(VmmConfig::default())?;
    let l2 = vmm_or_skip(VmmConfig::default())?;
    let mut l1_ids = l0_offer(
        &l1,
        &host_device(&host, tag(TAG_A)),
        L0_SOURCE_A,
        ExtentFlags {
            sharable: true,
            readonly: false,
        },
    );
    l1_ids.extend(l0_offer(
        &l1,
        &host_device(&host, tag(TAG_B)),
        L0_SOURCE_B,
        ExtentFlags {
            sharable: false,
            readonly: true,
        },
    ));
    Some(Levels { host, l1, l2, l1_ids })
}

/// The lookup of `t` in a guest, over its driver's report: its claimed devices.
pub fn guest_lookup(vmm: &TestGuestVm, t: Uuid) -> Vec<DaxDevice> {
    guest_find(vmm, t).devices
}

/// The lookup of `t` in a guest: devices and unclaimed capacity.
pub fn guest_find(vmm: &TestGuestVm, t: Uuid) -> Found {
    lookup(&guest_capacity(vmm).unwrap(), &t).unwrap()
}

/// Passes `t` from L1 to L2, and L2's user space claims it.
pub fn pass(
    l1_vmm: &mut NestedPassthrough<'_>,
    l2: &TestGuestVm,
    t: Uuid,
) -> tagmem_rig::nested::NestedOffer {
    let offer = l1_vmm.offer_tag(t).unwrap();
    l2.guest_poll().unwrap();
    assert_eq!(guest_find(l2, t).unclaimed.len(), 1, "L2 holds {t} unclaimed");
    l2.guest_claim(t).unwrap();
    offer
}

/// The sysfs tree a Linux guest driver would show for `extents` grouped as `devices`
/// (SPEC.md T-LOOKUP-5/6): `virtio0/tagmem/extentE/*` with the record's performance in
/// `extentE/access1/` (the target node is devdax-only, so it shows no HMAT attributes), the dax
/// region `region0` with one dax device per claimed group and its seed.
pub fn linux_guest_tree(extents: &[ExtentDetail], devices: &[DaxDevice]) -> Tree {
    let t = Tree::new();
    let v = t.virtio("virtio0", 0);
    for e in extents {
        let d = format!("{v}/tagmem/extent{}", e.id);
        let flags = tagmem_lookup::Flags::from_bits(e.flags).names().join(" ");
        let source = tagmem_lookup::SourceClass::from_wire(e.class).unwrap();
        let poison: Vec<String> = e.poison.iter().map(|(o, l)| format!("{o:#x} {l:#x}")).collect();
        t.attr(&format!("{d}/uuid"), &e.uuid.to_string());
        t.attr(&format!("{d}/start"), &c_hex(e.gpa));
        t.attr(&format!("{d}/length"), &c_hex(e.len));
        t.attr(&format!("{d}/flags"), &flags);
        t.attr(&format!("{d}/target_node"), &e.node.to_string());
        t.attr(&format!("{d}/source"), source.as_str());
        t.attr(&format!("{d}/seq"), &e.seq.to_string());
        t.attr(&format!("{d}/poison"), &poison.join("\n"));
        for (name, value) in [
            ("read_latency", e.read_latency_ns),
            ("write_latency", e.write_latency_ns),
            ("read_bandwidth", e.read_bandwidth_mbps),
            ("write_bandwidth", e.write_bandwidth_mbps),
        ] {
            if value != 0 {
                t.attr(&format!("{d}/access1/{name}"), &value.to_string());
            }
        }
    }
    let mut seed_number = 0;
    for dev in devices {
        let ranges: Vec<(u64, u64)> = dev.mappings.iter().map(|m| (m.start, m.size)).collect();
        let mut d = Dev::new(&dev.chardev, &v, Some(&dev.uuid.to_string()), &ranges);
        d.target_node = dev.target_node.unwrap();
        d.numa_node = tagmem_rig::nested::GUEST_NUMA_NODE;
        t.dax(&d);
        let n: u32 = dev.chardev.rsplit('.').next().unwrap().parse().unwrap();
        seed_number = seed_number.max(n + 1);
    }
    let mut seed = Dev::new(
        &format!("dax0.{seed_number}"),
        &v,
        Some("00000000-0000-0000-0000-000000000000"),
        &[],
    );
    seed.numa_node = tagmem_rig::nested::GUEST_NUMA_NODE;
    t.dax(&seed);
    t
}

/// JSON paths at which `a` and `b` differ (a key missing on one side counts).
pub fn differing_paths(a: &Value, b: &Value, at: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let path = format!("{at}/{k}");
                match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => differing_paths(p, q, &path, out),
                    _ => out.push(path),
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                differing_paths(p, q, &format!("{at}/{i}"), out);
            }
        }
        _ if a != b => out.push(at.to_owned()),
        _ => {}
    }
}

/// Guest-physical address (= host-physical address here) and backing offset of byte `off` of
/// mapping `i` of `dev`.
pub fn addr(dev: &DaxDevice, i: usize, off: u64) -> (u64, u64) {
    let m = dev.mappings[i];
    (m.start + off, m.page_offset * tagmem_lookup::PAGE_SIZE + off)
}

//! `SysfsSource` and `lookup` over sysfs trees built as the kernel ABIs describe them: a CXL DCD
//! host with claimed and unclaimed capacity, kernels without the `uuid` attribute, performance
//! from HMAT or the CXL region, kmem devices, malformed and hostile attributes, and the
//! guest-side layout of SPEC.md T-LOOKUP-5/6.

mod common;

use common::{
    c_hex, dcd_host, dcd_host_unclaimed, Dev, Tree, VirtioExtent, MIB2, REGION2_BASE, REGION2_CPU_PERF,
    TAG_A, TAG_ABSENT,
};
use serde_json::Value;
use tagmem_lookup::{
    list, lookup, output, CapacitySource, DaxDevice, DriverDevice, DriverExtent, Extent, Flags, Found,
    LookupError, Mapping, Mode, Perf, SourceClass, SysfsSource, Unclaimed,
};
use uuid::Uuid;

fn tag_a() -> Uuid {
    Uuid::parse_str(TAG_A).unwrap()
}

fn device(t: &Tree, name: &str) -> DaxDevice {
    SysfsSource::new(t.root()).read_device(name).unwrap()
}

#[test]
fn dcd_host_lists_every_device_in_name_order() {
    let t = dcd_host();
    let devs = SysfsSource::new(t.root()).devices().unwrap();
    let names: Vec<&str> = devs.iter().map(|d| d.chardev.as_str()).collect();
    assert_eq!(names, ["dax2.0", "dax2.1", "dax2.2", "dax2.3"]);
    assert_eq!(devs[0].size, 0, "the region seed is listed by the library");
}

#[test]
fn multi_extent_tag_is_one_device_with_its_extents() {
    let t = dcd_host();
    let d = device(&t, "dax2.1");
    assert_eq!(d.uuid, tag_a());
    assert_eq!(d.size, 3 * MIB2);
    assert_eq!(d.path.as_deref(), Some("/dev/dax2.1"));
    assert_eq!((d.target_node, d.numa_node, d.align), (Some(2), Some(0), MIB2));
    assert_eq!((d.mode, d.enabled), (Mode::Devdax, true));
    assert_eq!(
        d.mappings,
        [
            Mapping::new(0, REGION2_BASE, REGION2_BASE + MIB2 - 1).unwrap(),
            Mapping::new(
                MIB2 / 4096,
                REGION2_BASE + 0x1000_0000,
                REGION2_BASE + 0x1000_0000 + 2 * MIB2 - 1
            )
            .unwrap(),
        ]
    );
    let expect = |offset: u64, length: u64| Extent {
        start: Some(REGION2_BASE + offset),
        ..Extent::in_region(offset, length)
    };
    assert_eq!(d.extents, [expect(0, MIB2), expect(0x1000_0000, 2 * MIB2)]);
    assert_eq!(d.source_class, Some(SourceClass::CxlDc));
    assert_eq!(d.flags, None, "bare-metal CXL does not expose flags");
}

/// CPU-access performance (class 1) with the values of `lat` and `bw`.
fn cpu_perf(lat: (u32, u32), bw: (u32, u32)) -> Perf {
    Perf {
        access_class: 1,
        read_latency_ns: lat.0,
        write_latency_ns: lat.1,
        read_bandwidth_mbps: bw.0,
        write_bandwidth_mbps: bw.1,
    }
}

#[test]
fn perf_is_cpu_access1_of_the_cxl_region_when_the_devdax_node_is_offline() {
    // A DCD host: target node 2 holds only devdax capacity, so Linux shows no HMAT attributes for
    // it; the CXL region's `access1` (CPUs) is the answer, never `access0` (best initiator).
    let t = dcd_host();
    assert!(!t.path("sys/devices/system/node/node2").exists());
    let p = device(&t, "dax2.1").perf.unwrap();
    assert_eq!(p, cpu_perf(REGION2_CPU_PERF.0, REGION2_CPU_PERF.1));
    let json = output::to_json(&[device(&t, "dax2.1")]);
    assert_eq!(json[0]["perf_access_class"], 1);
    assert_eq!(json[0]["read_latency_ns"], 250);
}

#[test]
fn perf_of_an_online_node_is_its_access1_and_access0_is_never_shown() {
    let t = dcd_host();
    // The node came online (e.g. another device of it in kmem mode): HMAT shows both classes.
    t.hmat(2, 0, (100, 110), (40_000, 20_000));
    t.hmat(2, 1, (400, 450), (20_000, 10_000));
    assert_eq!(
        device(&t, "dax2.1").perf.unwrap(),
        cpu_perf((400, 450), (20_000, 10_000))
    );
    // Only `access0`: the node reports no CPU access; the region's `access1` is the answer.
    std::fs::remove_dir_all(t.path("sys/devices/system/node/node2/access1")).unwrap();
    assert_eq!(
        device(&t, "dax2.1").perf.unwrap(),
        cpu_perf(REGION2_CPU_PERF.0, REGION2_CPU_PERF.1)
    );
    // Nothing for CPUs anywhere: no performance, even though `access0` values exist.
    std::fs::remove_dir_all(t.path("sys/devices/platform/ACPI0017:00/root0/decoder0.0/region2/access1"))
        .unwrap();
    assert_eq!(device(&t, "dax2.1").perf, None);
    let json = output::to_json(&[device(&t, "dax2.1")]);
    assert!(json[0].get("read_latency_ns").is_none());
    assert!(json[0].get("perf_access_class").is_none());
}

#[test]
fn region_access_attributes_hidden_while_zero_read_as_zero() {
    let t = dcd_host();
    let a1 = "sys/devices/platform/ACPI0017:00/root0/decoder0.0/region2/access1";
    t.remove(&format!("{a1}/write_bandwidth"));
    let p = device(&t, "dax2.1").perf.unwrap();
    assert_eq!((p.read_latency_ns, p.write_bandwidth_mbps), (250, 0));
    t.attr(&format!("{a1}/read_latency"), "fast");
    let e = SysfsSource::new(t.root()).read_device("dax2.1").unwrap_err();
    assert!(e.to_string().contains("access1/read_latency"), "{e}");
}

#[test]
fn untagged_extents_are_one_device_each_reading_the_nil_uuid() {
    let t = dcd_host();
    for (name, off) in [("dax2.2", 0x2000_0000u64), ("dax2.3", 0x3000_0000)] {
        let d = device(&t, name);
        assert!(d.uuid.is_nil() && !d.is_tagged());
        assert_eq!(d.extents.len(), 1, "{name}");
        assert_eq!(d.extents[0].offset, Some(off));
        assert_eq!(d.extents[0].length, MIB2);
        let json = output::to_json(&[d]);
        assert_eq!(json[0]["uuid"], "00000000-0000-0000-0000-000000000000");
    }
}

#[test]
fn lookup_returns_exactly_the_tagged_device() {
    let t = dcd_host();
    let src = SysfsSource::new(t.root());
    let found = lookup(&src, &tag_a()).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found.devices[0], device(&t, "dax2.1"));
    assert!(lookup(&src, &Uuid::parse_str(TAG_ABSENT).unwrap())
        .unwrap()
        .is_empty());
}

#[test]
fn lookup_of_the_nil_tag_matches_nothing() {
    let t = dcd_host();
    assert!(lookup(&SysfsSource::new(t.root()), &Uuid::nil())
        .unwrap()
        .is_empty());
}

#[test]
fn without_region_address_a_tag_still_finds_its_extents() {
    let t = Tree::new();
    let r = t.cxl_region(5, None, 1 << 30);
    t.cxl_extent(&r, 5, 0, 0x20_0000, MIB2, Some(TAG_A));
    t.cxl_extent(&r, 5, 1, 0x60_0000, MIB2, None);
    t.dax(&Dev::new("dax5.0", &r, Some(TAG_A), &[(0x9_0020_0000, MIB2)]));
    t.dax(&Dev::new(
        "dax5.1",
        &r,
        Some("00000000-0000-0000-0000-000000000000"),
        &[(0x9_0060_0000, MIB2)],
    ));
    let d = device(&t, "dax5.0");
    assert_eq!(d.extents, [Extent::in_region(0x20_0000, MIB2)]);
    assert_eq!(d.source_class, Some(SourceClass::CxlDc));
    // An untagged extent cannot be placed without the address: reported as unknown, not guessed.
    let u = device(&t, "dax5.1");
    assert!(u.extents.is_empty());
    assert_eq!(u.source_class, None);
}

#[test]
fn kernel_without_uuid_attribute_reads_untagged() {
    let t = Tree::new();
    t.mkdir("sys/devices/platform/hmem.0");
    t.dax(&Dev::new(
        "dax0.0",
        "sys/devices/platform/hmem.0",
        None,
        &[(0x10_0000_0000, 1 << 30)],
    ));
    let src = SysfsSource::new(t.root());
    let d = device(&t, "dax0.0");
    assert!(d.uuid.is_nil());
    assert!(d.extents.is_empty() && d.source_class.is_none() && d.perf.is_none());
    assert!(src.unclaimed().unwrap().is_empty());
    assert!(lookup(&src, &tag_a()).unwrap().is_empty());
    assert_eq!(src.devices().unwrap().len(), 1);
}

#[test]
fn kmem_device_is_system_ram_and_unbound_is_disabled() {
    let t = Tree::new();
    let mut k = Dev::new(
        "dax0.0",
        "sys/devices/platform/hmem.0",
        None,
        &[(0x10_0000_0000, 1 << 30)],
    );
    k.driver = Some("kmem");
    k.target_node = 3;
    t.dax(&k);
    let mut off = Dev::new(
        "dax0.1",
        "sys/devices/platform/hmem.0",
        None,
        &[(0x10_4000_0000, 1 << 30)],
    );
    off.driver = None;
    off.numa_node = -1;
    t.dax(&off);
    let d = device(&t, "dax0.0");
    assert_eq!(
        (d.mode, d.enabled, d.target_node),
        (Mode::SystemRam, true, Some(3))
    );
    let json = output::to_json(&[d, device(&t, "dax0.1")]);
    assert_eq!(json[0]["mode"], "system-ram");
    assert!(json[0].get("state").is_none());
    assert_eq!(json[1]["mode"], "devdax");
    assert_eq!(json[1]["state"], "disabled");
    assert!(json[1].get("numa_node").is_none(), "NUMA_NO_NODE is left out");
}

/// Expects `read_device("dax2.1")` to fail with an error naming `rel` (relative to the root).
fn expect_error(t: &Tree, rel: &str) -> LookupError {
    let e = SysfsSource::new(t.root()).read_device("dax2.1").unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.starts_with(&t.path(rel).display().to_string()),
        "{rel}: {msg}"
    );
    e
}

const DEV: &str = "sys/bus/dax/devices/dax2.1";

#[test]
fn malformed_size_is_a_named_parse_error() {
    let t = dcd_host();
    t.attr(&format!("{DEV}/size"), "12k");
    let e = expect_error(&t, &format!("{DEV}/size"));
    assert!(
        matches!(e, LookupError::Parse { ref value, .. } if value == "12k"),
        "{e}"
    );
}

#[test]
fn missing_size_is_a_named_missing_error() {
    let t = dcd_host();
    t.remove(&format!("{DEV}/size"));
    let e = expect_error(&t, &format!("{DEV}/size"));
    assert!(matches!(e, LookupError::Missing { .. }), "{e}");
    assert!(e.to_string().ends_with(": missing"));
}

#[test]
fn malformed_uuid_is_a_named_parse_error() {
    let t = dcd_host();
    t.attr(&format!("{DEV}/uuid"), "6f1c2a9e-0d3b-4c55-9a7e");
    let e = expect_error(&t, &format!("{DEV}/uuid"));
    assert!(e.to_string().contains("as a UUID"), "{e}");
}

#[test]
fn malformed_mapping_values_are_named() {
    let t = dcd_host();
    t.attr(&format!("{DEV}/mapping1/start"), "0xzz");
    expect_error(&t, &format!("{DEV}/mapping1/start"));
    t.attr(
        &format!("{DEV}/mapping1/start"),
        &c_hex(REGION2_BASE + 0x2000_0000),
    );
    let e = expect_error(&t, &format!("{DEV}/mapping1"));
    assert!(
        matches!(e, LookupError::Inconsistent { .. }) && e.to_string().contains("before start"),
        "{e}"
    );
    t.remove(&format!("{DEV}/mapping1/page_offset"));
    expect_error(&t, &format!("{DEV}/mapping1/page_offset"));
}

#[test]
fn mappings_that_disagree_with_size_are_named() {
    let t = dcd_host();
    t.attr(&format!("{DEV}/size"), &(4 * MIB2).to_string());
    let e = expect_error(&t, DEV);
    assert!(
        e.to_string()
            .contains("cover 6291456 bytes but size reads 8388608"),
        "{e}"
    );
}

#[test]
fn malformed_node_extent_and_hmat_values_are_named() {
    let t = dcd_host();
    t.attr(&format!("{DEV}/target_node"), "two");
    expect_error(&t, &format!("{DEV}/target_node"));
    t.attr(&format!("{DEV}/target_node"), "2");
    t.attr("sys/bus/cxl/devices/dax_region2/extent2.1/length", "4M");
    expect_error(&t, "sys/bus/cxl/devices/dax_region2/extent2.1/length");
    t.attr(
        "sys/bus/cxl/devices/dax_region2/extent2.1/length",
        &c_hex(2 * MIB2),
    );
    t.hmat(2, 1, (400, 450), (20_000, 10_000));
    t.remove("sys/devices/system/node/node2/access1/initiators/write_bandwidth");
    let e = expect_error(
        &t,
        "sys/devices/system/node/node2/access1/initiators/write_bandwidth",
    );
    assert!(matches!(e, LookupError::Missing { .. }), "{e}");
    t.attr(
        "sys/devices/system/node/node2/access1/initiators/write_bandwidth",
        "-5",
    );
    expect_error(
        &t,
        "sys/devices/system/node/node2/access1/initiators/write_bandwidth",
    );
}

#[test]
fn one_bad_device_fails_the_listing_with_its_path() {
    let t = dcd_host();
    t.attr("sys/bus/dax/devices/dax2.3/align", "huge");
    let e = SysfsSource::new(t.root()).devices().unwrap_err();
    assert!(e.to_string().contains("dax2.3/align"), "{e}");
}

#[test]
fn a_root_without_sys_is_named_and_no_dax_bus_is_empty() {
    let dir = tempfile::tempdir().unwrap();
    let e = SysfsSource::new(dir.path()).devices().unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("{}: missing", dir.path().join("sys").display())
    );
    std::fs::create_dir(dir.path().join("sys")).unwrap();
    assert!(SysfsSource::new(dir.path()).devices().unwrap().is_empty());
    let e = SysfsSource::new(dir.path()).read_device("dax0.0").unwrap_err();
    assert!(matches!(e, LookupError::Missing { .. }), "{e}");
}

#[test]
fn json_of_the_tagged_dcd_device_matches_the_golden_file() {
    let t = dcd_host();
    let got = output::json_string(&[device(&t, "dax2.1")]);
    let want = include_str!("golden/dax2.1.json");
    assert_eq!(got, want, "JSON shape changed; got:\n{got}");
}

/// A guest (or nested guest) holding the group [`TAG_A`] through the tagged virtio-mem driver,
/// laid out as SPEC.md T-LOOKUP-5/6 says: `base` is where the group lies in guest-physical memory.
fn guest(base: u64) -> Tree {
    let t = guest_unclaimed(base);
    let v = "sys/devices/pci0000:00/0000:00:04.0/virtio3";
    // The group claimed into the region's seed `dax0.0`; the next seed is `dax0.1`.
    let second = base + 0x4000_0000;
    let mut d = Dev::new("dax0.0", v, Some(TAG_A), &[(base, MIB2), (second, 2 * MIB2)]);
    d.target_node = 2;
    t.dax(&d);
    let mut seed = Dev::new("dax0.1", v, Some("00000000-0000-0000-0000-000000000000"), &[]);
    seed.target_node = 2;
    t.dax(&seed);
    t
}

/// The same guest before anything claimed the group: the driver lists the accepted extents and
/// the region has only its seed `dax0.0`. The extents' target node 2 is devdax-only, so the guest
/// shows no HMAT attributes for it; each extent shows its record's values in `access1`.
fn guest_unclaimed(base: u64) -> Tree {
    let t = Tree::new();
    let v = t.virtio("virtio3", 0);
    let second = base + 0x4000_0000;
    let ext = |id, seq, start, length| VirtioExtent {
        id,
        uuid: TAG_A,
        start,
        length,
        flags: "sharable",
        source: "cxl-dc",
        seq,
        poison: "",
        node: 2,
        lat: REGION2_CPU_PERF.0,
        bw: REGION2_CPU_PERF.1,
    };
    // Extent ids in offer order; the device orders by seq, so id 8 (seq 1) comes second.
    t.virtio_extent(&v, &ext(8, 1, second, 2 * MIB2));
    t.virtio_extent(&v, &ext(7, 0, base, MIB2));
    t
}

/// `guest_unclaimed` plus the seed device a freshly probed region has.
fn guest_with_seed(base: u64) -> Tree {
    let t = guest_unclaimed(base);
    let v = "sys/devices/pci0000:00/0000:00:04.0/virtio3";
    let mut seed = Dev::new("dax0.0", v, Some("00000000-0000-0000-0000-000000000000"), &[]);
    seed.target_node = 2;
    t.dax(&seed);
    t
}

/// The JSON of `d` without what legitimately differs between levels: addresses, the device name
/// and the flags (which bare-metal CXL sysfs does not show).
fn essence(d: &DaxDevice) -> Value {
    let mut v = output::to_json(std::slice::from_ref(d))[0].take();
    let o = v.as_object_mut().unwrap();
    for k in ["chardev", "path", "numa_node", "flags"] {
        o.remove(k);
    }
    for list in ["mappings", "extents"] {
        for item in o
            .get_mut(list)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            let item = item.as_object_mut().unwrap();
            item.remove("start");
            item.remove("end");
            item.remove("offset");
        }
    }
    v
}

#[test]
fn guest_sysfs_reads_the_tag_group_with_flags_and_source() {
    let t = guest(0x1_0000_0000);
    let found = lookup(&SysfsSource::new(t.root()), &tag_a()).unwrap();
    assert_eq!(found.len(), 1);
    let d = &found.devices[0];
    assert_eq!(
        d.extents,
        [
            Extent::at(0x1_0000_0000, MIB2),
            Extent::at(0x1_4000_0000, 2 * MIB2)
        ]
    );
    assert_eq!(d.flags, Some(Flags::from_bits(Flags::SHARABLE_BIT)));
    assert_eq!(d.source_class, Some(SourceClass::CxlDc));
}

#[test]
fn guest_poison_is_reported_per_extent() {
    let t = guest(0x1_0000_0000);
    t.attr(
        "sys/bus/virtio/devices/virtio3/tagmem/extent8/poison",
        "0x1000 0x1000\n0x3000 0x2000",
    );
    let d = device(&t, "dax0.0");
    let p = &d.extents[1].poison;
    assert_eq!(p.len(), 2);
    assert_eq!((p[1].offset, p[1].length), (0x3000, 0x2000));
    let json = output::to_json(&[d]);
    assert_eq!(json[0]["extents"][1]["poison"][0]["offset"], 0x1000);
    t.attr("sys/bus/virtio/devices/virtio3/tagmem/extent8/poison", "0x1000");
    assert!(SysfsSource::new(t.root()).read_device("dax0.0").is_err());
    t.attr("sys/bus/virtio/devices/virtio3/tagmem/extent8/poison", "");
    t.attr("sys/bus/virtio/devices/virtio3/tagmem/extent8/source", "hbm");
    let e = SysfsSource::new(t.root()).read_device("dax0.0").unwrap_err();
    assert!(e.to_string().contains("extent8/source"), "{e}");
}

/// The reference driver's records of the group [`TAG_A`] at `base` (as in [`guest`]).
fn driver_records(base: u64) -> DriverDevice {
    let record = |id, seq, start, length| DriverExtent {
        id,
        start,
        length,
        flags: Flags::SHARABLE_BIT,
        seq,
        node: 2,
        source: 1,
        perf: Perf::from_record(250, 300, 25_000, 12_000),
        poison: Vec::new(),
    };
    DriverDevice {
        name: "dax0.0".into(),
        uuid: tag_a(),
        extents: vec![
            record(8, 1, base + 0x4000_0000, 2 * MIB2),
            record(7, 0, base, MIB2),
        ],
    }
}

#[test]
fn a_tag_reads_the_same_on_host_in_a_guest_and_in_a_nested_guest() {
    let host = dcd_host();
    let l1 = guest(0x1_0000_0000);
    let l2 = guest(0x2_0000_0000);
    let host_dev = lookup(&SysfsSource::new(host.root()), &tag_a()).unwrap().devices;
    let l1_dev = lookup(&SysfsSource::new(l1.root()), &tag_a()).unwrap().devices;
    let l2_dev = lookup(&SysfsSource::new(l2.root()), &tag_a()).unwrap().devices;
    assert_eq!(host_dev.len(), 1);
    assert_eq!(essence(&host_dev[0]), essence(&l1_dev[0]));
    assert_eq!(essence(&l1_dev[0]), essence(&l2_dev[0]));
    assert_ne!(
        l1_dev[0].mappings, l2_dev[0].mappings,
        "only the addresses differ"
    );

    // The reference driver's own view, turned into the model, answers the same.
    let mut from_driver = DaxDevice::from_ranges(
        "dax0.0",
        tag_a(),
        [(0x1_0000_0000, MIB2), (0x1_4000_0000, 2 * MIB2)],
    )
    .unwrap();
    from_driver.align = MIB2;
    from_driver.target_node = Some(2);
    from_driver.perf = Perf::from_record(250, 300, 25_000, 12_000);
    from_driver.source_class = SourceClass::from_wire(1);
    from_driver.flags = Some(Flags::from_bits(Flags::SHARABLE_BIT));
    from_driver.numa_node = Some(0); // as the dax bus computes it for target node 2 here
    let driver_view = vec![from_driver];
    let found = lookup(&driver_view, &tag_a()).unwrap().devices;
    assert_eq!(essence(&found[0]), essence(&host_dev[0]));
    assert_eq!(
        found[0], l1_dev[0],
        "driver view and guest sysfs agree field by field"
    );

    // The same, from the driver's records through `DriverDevice` (as the VMM's nested tests do).
    assert_eq!(driver_records(0x1_0000_0000).to_dax(Some(0)).unwrap(), l1_dev[0]);
}

/// The JSON of unclaimed capacity without what differs between levels: the region's name,
/// addresses, region offsets, and the flags (which bare-metal CXL sysfs does not show).
fn unclaimed_essence(u: &Unclaimed) -> Value {
    let found = Found {
        devices: Vec::new(),
        unclaimed: vec![u.clone()],
    };
    let mut v = output::found_to_json(&found)[0].take();
    let o = v.as_object_mut().unwrap();
    for k in ["region", "claim", "flags"] {
        o.remove(k);
    }
    for item in o
        .get_mut("extents")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        let item = item.as_object_mut().unwrap();
        item.remove("start");
        item.remove("offset");
    }
    v
}

#[test]
fn unclaimed_tag_is_listed_by_its_region_on_a_dcd_host() {
    let t = dcd_host_unclaimed();
    let src = SysfsSource::new(t.root());
    let found = lookup(&src, &tag_a()).unwrap();
    assert!(found.devices.is_empty(), "no device claimed it: {found:?}");
    assert_eq!(found.unclaimed.len(), 1);
    let u = &found.unclaimed[0];
    assert_eq!(
        (u.region.as_str(), u.uuid, u.size),
        ("region2", tag_a(), 3 * MIB2)
    );
    let at = |offset: u64, length: u64| Extent {
        start: Some(REGION2_BASE + offset),
        ..Extent::in_region(offset, length)
    };
    assert_eq!(u.extents, [at(0, MIB2), at(0x1000_0000, 2 * MIB2)]);
    assert_eq!(u.target_node, Some(2), "the region's seed reports the node");
    assert_eq!(u.perf, Some(cpu_perf(REGION2_CPU_PERF.0, REGION2_CPU_PERF.1)));
    assert_eq!(u.source_class, Some(SourceClass::CxlDc));
    assert_eq!(
        u.claim_command(),
        format!("daxctl create-device -r region2 --uuid {TAG_A}")
    );
    // The claimed untagged extents are not listed again; the listing has the devices and the group.
    let all = list(&src).unwrap();
    let names: Vec<&str> = all.devices.iter().map(|d| d.chardev.as_str()).collect();
    assert_eq!(names, ["dax2.0", "dax2.2", "dax2.3"]);
    assert_eq!(all.unclaimed, found.unclaimed);
    // Once claimed (`dcd_host`), the tag is a device and nothing is left unclaimed.
    let claimed = dcd_host();
    let found = lookup(&SysfsSource::new(claimed.root()), &tag_a()).unwrap();
    assert_eq!((found.devices.len(), found.unclaimed.len()), (1, 0));
    assert!(SysfsSource::new(claimed.root()).unclaimed().unwrap().is_empty());
}

#[test]
fn unclaimed_untagged_extents_are_one_entry_each() {
    let t = dcd_host();
    for name in ["dax2.2", "dax2.3"] {
        std::fs::remove_file(t.path(&format!("sys/bus/dax/devices/{name}"))).unwrap();
    }
    let src = SysfsSource::new(t.root());
    let u = src.unclaimed().unwrap();
    assert_eq!(u.len(), 2, "{u:?}");
    assert!(u
        .iter()
        .all(|u| u.uuid.is_nil() && u.size == MIB2 && u.extents.len() == 1));
    assert_eq!(u[0].extents[0].offset, Some(0x2000_0000));
    assert_eq!(u[0].claim_command(), "daxctl create-device -r region2 --uuid 0");
    assert!(
        lookup(&src, &Uuid::nil()).unwrap().is_empty(),
        "the nil tag finds nothing"
    );
}

#[test]
fn capacity_reads_the_same_claimed_or_unclaimed_on_host_in_a_guest_and_in_the_driver_view() {
    // Unclaimed: the host's region lists the group, the guest's region lists it, and the
    // reference driver reports it unclaimed; all three answer the same.
    let host = lookup(&SysfsSource::new(dcd_host_unclaimed().root()), &tag_a()).unwrap();
    let g = guest_with_seed(0x1_0000_0000);
    let in_guest = lookup(&SysfsSource::new(g.root()), &tag_a()).unwrap();
    let driver = Found {
        devices: Vec::new(),
        unclaimed: vec![driver_records(0x1_0000_0000).to_unclaimed("region0").unwrap()],
    };
    let from_driver = lookup(&driver, &tag_a()).unwrap();
    for f in [&host, &in_guest, &from_driver] {
        assert!(f.devices.is_empty() && f.unclaimed.len() == 1, "{f:?}");
    }
    assert_eq!(
        unclaimed_essence(&host.unclaimed[0]),
        unclaimed_essence(&in_guest.unclaimed[0])
    );
    assert_eq!(
        in_guest.unclaimed[0], from_driver.unclaimed[0],
        "guest sysfs and driver agree"
    );
    assert_eq!(in_guest.unclaimed[0].region, "region0");
    assert_eq!(
        in_guest.unclaimed[0].extents,
        [
            Extent::at(0x1_0000_0000, MIB2),
            Extent::at(0x1_4000_0000, 2 * MIB2)
        ],
        "seq order, as a claim lays them out"
    );
    // Claimed: the device carries what the unclaimed group said, at every level.
    let host_dev = &lookup(&SysfsSource::new(dcd_host().root()), &tag_a())
        .unwrap()
        .devices[0];
    let guest_dev = &lookup(&SysfsSource::new(guest(0x1_0000_0000).root()), &tag_a())
        .unwrap()
        .devices[0];
    assert_eq!(essence(host_dev), essence(guest_dev));
    let u = &in_guest.unclaimed[0];
    assert_eq!(
        (guest_dev.size, guest_dev.target_node, guest_dev.perf),
        (u.size, u.target_node, u.perf)
    );
    assert_eq!(
        guest_dev
            .extents
            .iter()
            .map(|e| (e.start, e.length))
            .collect::<Vec<_>>(),
        u.extents.iter().map(|e| (e.start, e.length)).collect::<Vec<_>>()
    );
    // A guest extent with no performance in its record shows none.
    let none = guest_unclaimed(0x1_0000_0000);
    for id in [7, 8] {
        std::fs::remove_dir_all(none.path(&format!(
            "sys/devices/pci0000:00/0000:00:04.0/virtio3/tagmem/extent{id}/access1"
        )))
        .unwrap();
    }
    assert_eq!(SysfsSource::new(none.root()).unclaimed().unwrap()[0].perf, None);
}

// ---- hostile attributes --------------------------------------------------------------------

/// A path under the dax2.1 device directory of `dcd_host`.
fn dev_attr(name: &str) -> String {
    format!("{DEV}/{name}")
}

#[test]
fn a_uuid_that_is_dev_zero_is_refused_naming_the_file() {
    let t = dcd_host();
    t.remove(&dev_attr("uuid"));
    std::os::unix::fs::symlink("/dev/zero", t.path(&dev_attr("uuid"))).unwrap();
    let e = expect_error(&t, &dev_attr("uuid"));
    assert!(matches!(e, LookupError::NotAttribute { .. }), "{e}");
    assert!(
        e.to_string().ends_with("a character device, not a regular file"),
        "{e}"
    );
}

#[test]
fn a_fifo_attribute_is_refused_without_blocking() {
    let t = dcd_host();
    t.remove(&dev_attr("size"));
    let path = t.path(&dev_attr("size"));
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path; mkfifo only creates the FIFO there.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let e = expect_error(&t, &dev_attr("size"));
    assert!(e.to_string().contains("a FIFO"), "{e}");
}

#[test]
fn an_attribute_longer_than_a_page_is_refused() {
    let t = dcd_host();
    t.attr(&dev_attr("uuid"), &format!("{TAG_A}{}", " ".repeat(4096)));
    let e = expect_error(&t, &dev_attr("uuid"));
    assert!(e.to_string().contains("longer than 4096 bytes"), "{e}");
    // The CXL extent's attributes are bounded the same way.
    let t = dcd_host();
    t.attr(
        "sys/bus/cxl/devices/dax_region2/extent2.0/uuid",
        &"0".repeat(8192),
    );
    let e = expect_error(&t, "sys/bus/cxl/devices/dax_region2/extent2.0/uuid");
    assert!(matches!(e, LookupError::NotAttribute { .. }), "{e}");
}

#[test]
fn overflowing_mapping_ranges_are_errors_naming_the_mapping() {
    let t = dcd_host();
    t.attr(&dev_attr("mapping0/start"), "0");
    t.attr(&dev_attr("mapping0/end"), &c_hex(u64::MAX));
    let e = expect_error(&t, &dev_attr("mapping0"));
    assert!(e.to_string().ends_with("covers all 2^64 bytes"), "{e}");
    let t = dcd_host();
    t.attr(&dev_attr("mapping1/page_offset"), &c_hex(u64::MAX / 4096));
    let e = expect_error(&t, &dev_attr("mapping1"));
    assert!(e.to_string().contains("overflows the device"), "{e}");
}

#[test]
fn zero_length_and_overflowing_cxl_extents_are_errors_naming_the_file() {
    let ext = "sys/bus/cxl/devices/dax_region2/extent2.1";
    let t = dcd_host();
    t.attr(&format!("{ext}/length"), "0");
    let e = expect_error(&t, &format!("{ext}/length"));
    assert_eq!(
        e.to_string(),
        format!("{}: zero length", t.path(&format!("{ext}/length")).display())
    );
    let t = dcd_host();
    t.attr(&format!("{ext}/offset"), &c_hex(u64::MAX - MIB2 + 2));
    let e = expect_error(&t, ext);
    assert!(e.to_string().contains("overflows the address space"), "{e}");
    // Inside 64 bits as an offset, but not once placed at the region's address.
    let t = dcd_host();
    t.attr(&format!("{ext}/offset"), &c_hex(u64::MAX - REGION2_BASE + 1));
    t.attr(&format!("{ext}/length"), "1");
    let e = expect_error(&t, &format!("{ext}/offset"));
    assert!(e.to_string().contains("from the region's start"), "{e}");
    // The listing of unclaimed capacity stops at the same file.
    let t = dcd_host_unclaimed();
    t.attr(&format!("{ext}/length"), "0");
    let e = SysfsSource::new(t.root()).unclaimed().unwrap_err();
    assert!(e.to_string().contains("extent2.1/length"), "{e}");
}

#[test]
fn zero_length_and_overflowing_guest_extents_are_errors_naming_the_file() {
    let ext = "sys/bus/virtio/devices/virtio3/tagmem/extent8";
    let t = guest(0x1_0000_0000);
    t.attr(&format!("{ext}/length"), "0");
    let e = SysfsSource::new(t.root()).read_device("dax0.0").unwrap_err();
    assert!(e.to_string().ends_with("extent8/length: zero length"), "{e}");
    t.attr(&format!("{ext}/length"), &c_hex(2 * MIB2));
    t.attr(&format!("{ext}/start"), &c_hex(u64::MAX - MIB2));
    let e = SysfsSource::new(t.root()).unclaimed().unwrap_err();
    assert!(e.to_string().contains("extent8: start"), "{e}");
}

//! Tests with Linux guests whose kernel carries the tagged virtio-mem series
//! (`linux/patches/10-tagged/`): the guest finds tagged capacity by tag exactly as on a CXL DCD
//! host. The in-guest half is `linux/tools/tagged-test.sh` (with `linux/tools/daxmap.c`, which
//! reaches `/dev/daxX.Y` through mmap); it reports over the serial console (lines starting with
//! `TAGMEM `) and the host types commands on the same console.
//!
//! Two guests boot side by side and are given the same sharable tag, backed by one host file;
//! the first also gets a read-only extent and a non-sharable tag group. Checked, in one boot of
//! each (booting is the slow part where a guest runs in KVM's instruction emulator):
//! - the driver negotiates the tagged feature; accepted extents are listed per extent in sysfs
//!   with the host's addresses, lengths, flags, source class and sequence numbers, unclaimed;
//! - a claim by tag (the seed's `uuid`, what `daxctl create-device --uuid` writes) makes a dax
//!   device of the offered size whose `uuid` reads the tag and whose mapping is the host's
//!   range; an mmap of `/dev/daxX.Y` reads the bytes the host wrote, and the guest's writes reach
//!   the host file (sharable); the other guest reads them, and the first reads the second's;
//! - a read-only extent cannot be mapped writable (EACCES) and a write through a read-only
//!   mapping faults; neither it nor sharable capacity can be onlined as System RAM (dax_kmem);
//! - a metadata update and a poison reach the extent's sysfs;
//! - a release while the device is mapped is deferred (RELEASE_BUSY) and completes after unmap;
//!   the range is then gone from the guest and from the device;
//! - unbinding and rebinding the driver keeps the capacity: it is listed again (LIST), unclaimed,
//!   and the same claim gives the same bytes.
//!
//! The guest, its inputs and the console protocol are `tagmem_rig::linux` (shared with the
//! benchmark's Linux rows): `TAGMEM_GUEST_KERNEL`, `TAGMEM_GUEST_CMDLINE`,
//! `TAGMEM_LINUX_TIMEOUT`; the initramfs is built with `linux/build-initramfs.sh` and a static
//! `daxmap` (needs `cc` with a static libc). Without KVM or a kernel the test skips,
//! saying why; `TAGMEM_REQUIRE_KVM=1` makes a missing KVM and `TAGMEM_REQUIRE_GUEST_KERNEL=1`
//! (CI, once it has built the kernel) a missing kernel a failure. Waits are hang guards only.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tagmem_device::{ExtentState, Perf, Target};
use tagmem_rig::linux::{tagged_inputs, TaggedLinuxGuest as Guest, REQUIRE_GUEST_KERNEL};
use tagmem_test_support::{available_or_skip, kvm_or_skip};
use uuid::Uuid;

const MIB: u64 = 1 << 20;
const SHARED_TAG: &str = "6f1c2a9e-0d3b-4c55-9a7e-3b1f00c0ffee";
const GROUP_TAG: &str = "11111111-2222-3333-4444-555555555555";
const HOST_BYTES: &str = "HOST-WROTE-these-bytes";

fn read_at(path: &Path, offset: u64, len: usize) -> String {
    let mut buf = vec![0; len];
    std::fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut buf, offset)
        .unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

fn file_of(path: &Path, size: u64, head: &str) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap();
    f.set_len(size).unwrap();
    f.write_all_at(head.as_bytes(), 0).unwrap();
}

#[test]
fn linux_guests_find_tagged_capacity_by_tag_as_on_a_dcd_host() {
    if !kvm_or_skip() {
        return;
    }
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("linux-tagged");
    std::fs::create_dir_all(&tmp).unwrap();
    let inputs = tagged_inputs(&tmp);
    if !available_or_skip(
        REQUIRE_GUEST_KERNEL,
        "a guest kernel with the tagged series and an initramfs",
        inputs.as_ref().err().cloned(),
    ) {
        return;
    }
    let inputs = inputs.unwrap();
    let shared = tmp.join("shared.img");
    let readonly = tmp.join("readonly.img");
    let group = tmp.join("group.img");
    file_of(&shared, 4 * MIB, HOST_BYTES);
    file_of(&readonly, 2 * MIB, "READ-ONLY-bytes");
    file_of(&group, 4 * MIB, "GROUP");

    let start = Instant::now();
    let mut a = Guest::boot("a", &inputs, &tmp);
    let mut b = Guest::boot("b", &inputs, &tmp);
    for g in [&mut a, &mut b] {
        let ready = g.expect("ready");
        assert_eq!(ready["tagged"], "1", "the driver negotiates bit 3: {ready:?}");
    }
    println!("user space up in both guests after {:.0?}", start.elapsed());

    // The same sharable tag to both guests, from one host file.
    let shared_opt = format!("tag={SHARED_TAG},path={},size=4M,shared=on", shared.display());
    let ids_a = a.offer(std::slice::from_ref(&shared_opt));
    let ids_b = b.offer(&[shared_opt]);
    let ro_ids = a.offer(&[format!("path={},size=2M,readonly=on", readonly.display())]);
    let group_ids = a.offer(&[
        format!("tag={GROUP_TAG},path={},size=2M", group.display()),
        format!("tag={GROUP_TAG},path={},offset=2M,size=2M", group.display()),
    ]);
    let all_a: Vec<u64> = [&ids_a[..], &ro_ids[..], &group_ids[..]].concat();
    a.wait_extents(&all_a, ExtentState::Accepted);
    b.wait_extents(&ids_b, ExtentState::Accepted);
    let t = Instant::now();

    // Listed per extent, unclaimed, with the host's values.
    let listed = a.ask(&format!("extents {}", all_a.len()));
    println!("guest a lists extents {}", listed["ids"]);
    for info in a.vmm.extents() {
        let e = a.ask(&format!("extent {}", info.id));
        assert_eq!(e["uuid"], info.tag.to_string());
        assert_eq!(e["start"], format!("{:#x}", info.gpa));
        assert_eq!(e["length"], format!("{:#x}", info.length));
        assert_eq!(e["source"], "file");
        assert_eq!(e["seq"], info.seq.to_string());
        let flags = match (info.flags.sharable, info.flags.readonly) {
            (true, false) => "sharable",
            (false, true) => "readonly",
            (false, false) => "",
            (true, true) => "sharable,readonly",
        };
        assert_eq!(e["flags"], flags, "{e:?}");
    }
    let r = a.ask("region");
    assert_eq!(
        r["available"],
        (10 * MIB).to_string(),
        "all accepted capacity is unclaimed"
    );

    // Claim by tag: a device of the offered size, reading the host's bytes.
    let c = a.ask(&format!("claim {SHARED_TAG}"));
    assert_eq!(c["rc"], "0", "{c:?}");
    assert_eq!(c["uuid"], SHARED_TAG);
    assert_eq!(c["size"], (4 * MIB).to_string());
    let gpa = a.vmm.extents().iter().find(|e| e.id == ids_a[0]).unwrap().gpa;
    assert_eq!(c["mappings"], format!("{:#x}-{:#x}@0x0", gpa, gpa + 4 * MIB - 1));
    assert_eq!(c["chardev"], "yes");
    assert_ne!(c["seed"], c["dev"], "a new seed replaces the claimed one");
    let dev_a = c["dev"].clone();
    let read = a.ask(&format!("read {dev_a} 0 {}", HOST_BYTES.len()));
    assert_eq!(read["data"], HOST_BYTES, "the guest reads the host's bytes");

    // Guest writes reach the host file and the other guest, and back.
    assert_eq!(a.ask(&format!("write {dev_a} 0x1000 GUEST-A-wrote"))["rc"], "0");
    assert_eq!(read_at(&shared, 0x1000, 13), "GUEST-A-wrote");
    let cb = b.ask(&format!("claim {SHARED_TAG}"));
    assert_eq!(cb["rc"], "0", "{cb:?}");
    let dev_b = cb["dev"].clone();
    assert_eq!(b.ask(&format!("read {dev_b} 0x1000 13"))["data"], "GUEST-A-wrote");
    assert_eq!(b.ask(&format!("write {dev_b} 0x2000 GUEST-B-wrote"))["rc"], "0");
    assert_eq!(a.ask(&format!("read {dev_a} 0x2000 13"))["data"], "GUEST-B-wrote");
    assert_eq!(read_at(&shared, 0x2000, 13), "GUEST-B-wrote");

    // Sharable capacity is never onlined as System RAM.
    assert_eq!(a.ask(&format!("kmem {dev_a}"))["rc"], "refused");

    // Read-only: no writable mapping, a write faults, no System RAM, the host file unchanged.
    let cr = a.ask("claim 0");
    assert_eq!(cr["rc"], "0", "{cr:?}");
    assert_eq!(cr["uuid"], Uuid::nil().to_string());
    let dev_ro = cr["dev"].clone();
    let rw = a.ask(&format!("tryrw {dev_ro}"));
    assert_eq!(rw["mmap-rw"], "EACCES", "{rw:?}");
    assert!(rw["write"].starts_with("fault"), "{rw:?}");
    assert_eq!(a.ask(&format!("kmem {dev_ro}"))["rc"], "refused");
    assert_eq!(read_at(&readonly, 0, 15), "READ-ONLY-bytes");

    // Metadata and poison reach sysfs.
    let perf = Perf {
        read_latency_ns: 250,
        write_latency_ns: 300,
        read_bandwidth_mbps: 12000,
        write_bandwidth_mbps: 9000,
    };
    a.vmm
        .update_metadata(Target::Tag(SHARED_TAG.parse().unwrap()), perf)
        .unwrap();
    a.vmm.inject_poison(ids_a[0], 0x3000, 0x1000).unwrap();
    let deadline = Instant::now() + a.timeout;
    let e = loop {
        let e = a.ask(&format!("extent {}", ids_a[0]));
        if e.get("poison").map(String::as_str) != Some("none") && e.contains_key("read_latency") {
            break e;
        }
        if Instant::now() > deadline {
            a.fail(&format!("metadata or poison never showed: {e:?}"));
        }
    };
    assert_eq!(e["read_latency"], "250");
    assert_eq!(e["write_bandwidth"], "9000");
    assert_eq!(e["poison"], "0x3000+0x1000");

    // Release while mapped: deferred, then done after unmap, and gone from the guest.
    let cg = a.ask(&format!("claim {GROUP_TAG}"));
    assert_eq!(cg["size"], (4 * MIB).to_string(), "{cg:?}");
    let dev_g = cg["dev"].clone();
    a.ask(&format!("hold {dev_g}"));
    a.vmm
        .request_release(Target::Tag(GROUP_TAG.parse().unwrap()))
        .unwrap();
    let rest: Vec<u64> = [&ids_a[..], &ro_ids[..]].concat();
    let deadline = Instant::now() + a.timeout;
    while !a
        .vmm
        .extents()
        .iter()
        .any(|e| e.id == group_ids[0] && e.state == ExtentState::ReleaseDeferred)
    {
        if Instant::now() > deadline {
            a.fail("the release of a mapped group was not deferred");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(a.ask("unhold")["rc"], "0");
    a.wait_extents(&[&rest[..]].concat(), ExtentState::Accepted);
    for id in &group_ids {
        let g = a.ask(&format!("gone {id}"));
        assert!(!g["devices"].split(',').any(|d| d == dev_g), "{g:?}");
    }

    // Unbind and rebind: the capacity is listed again, unclaimed, and claims give the same bytes.
    let u = a.ask("unbind");
    assert_eq!(u["rc"], "0");
    assert_eq!(a.ask("bind")["rc"], "0");
    let listed = a.ask(&format!("extents {}", rest.len()));
    let mut want: Vec<String> = rest.iter().map(u64::to_string).collect();
    want.sort();
    let mut got: Vec<String> = listed["ids"].split(',').map(str::to_string).collect();
    got.sort();
    assert_eq!(got, want);
    assert_eq!(a.ask("region")["available"], (6 * MIB).to_string());
    let again = a.ask(&format!("claim {SHARED_TAG}"));
    assert_eq!(again["size"], (4 * MIB).to_string());
    assert_eq!(
        a.ask(&format!("read {} 0x2000 13", again["dev"]))["data"],
        "GUEST-B-wrote"
    );
    a.wait_extents(&rest, ExtentState::Accepted);
    println!("checks after boot took {:.0?}", t.elapsed());
    a.ask("end");
    b.ask("end");
}

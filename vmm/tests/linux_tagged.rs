//! Tests with Linux guests whose kernel carries the tagged virtio-mem series
//! (`linux/patches/10-tagged/`): the guest finds tagged capacity by tag exactly as on a CXL DCD
//! host. The in-guest half is `linux/tools/tagged-test.sh` (with `linux/tools/daxmap.c`, which
//! reaches `/dev/daxX.Y` through mmap); it reports over the serial console (lines starting with
//! `TAGMEM `) and the host types commands on the same console.
//!
//! Two guests boot side by side and are given the same sharable tag, backed by one host file;
//! the first also gets a read-only extent and a non-sharable tag group, the second a tag group
//! and an untagged extent, and Debian's `daxctl` and the `tagmem` lookup command in its image.
//! Checked, in one boot of each (booting is the slow part where a guest runs in KVM's
//! instruction emulator):
//! - the driver negotiates the tagged feature; accepted extents are listed per extent in sysfs
//!   with the host's addresses, lengths, flags, source class and sequence numbers, unclaimed;
//! - a claim by tag (the seed's `uuid`, what `daxctl create-device --uuid` writes) makes a dax
//!   device of the offered size whose `uuid` reads the tag and whose mapping is the host's
//!   range; an mmap of `/dev/daxX.Y` reads the bytes the host wrote, and the guest's writes reach
//!   the host file (sharable); the other guest reads them, and the first reads the second's;
//! - in the second guest, `tagmem lookup <tag>` (unclaimed: the region and the claim command;
//!   claimed: the device), `tagmem list` (the device, then unclaimed capacity by tag, with
//!   poison) and `daxctl list -M` (after `daxctl enable-device` bound the claimed device) answer
//!   exactly what the host's view says: the control API's `vm.tagged-memory` extents laid out by
//!   the lookup library (`host_view`), field for field, metadata and poison included;
//! - a read-only extent cannot be mapped writable (EACCES) and a write through a read-only
//!   mapping faults; neither it nor sharable capacity can be onlined as System RAM (dax_kmem);
//! - a metadata update and a poison reach the extent's sysfs;
//! - a release while the device is mapped is deferred (RELEASE_BUSY) and completes after unmap;
//!   the range is then gone from the guest and from the device;
//! - unbinding and rebinding the driver keeps the capacity: it is listed again (LIST), unclaimed,
//!   and the same claim gives the same bytes.
//!
//! Inputs as `linux_guest.rs` (`TAGMEM_GUEST_KERNEL`, a `linux/build-kernel.sh` result's
//! The guest, its inputs and the console protocol are `tagmem_rig::linux` (shared with the
//! benchmark's Linux rows): `TAGMEM_GUEST_KERNEL` (a `linux/build-kernel.sh` result's `vmlinux`),
//! `TAGMEM_GUEST_CMDLINE`, `TAGMEM_LINUX_TIMEOUT`. The initramfs images are built with
//! `linux/build-initramfs.sh`, a static `daxmap` (needs `cc` with a static libc) and, for the
//! second guest, Debian's `daxctl` and a static `tagmem` (`cargo build --target
//! x86_64-unknown-linux-gnu`, `+crt-static`). Without KVM or a kernel the test skips, saying why;
//! `TAGMEM_REQUIRE_KVM=1` makes a missing KVM and `TAGMEM_REQUIRE_GUEST_KERNEL=1` (CI, once it
//! has built the kernel) a missing kernel a failure. Waits are hang guards only.

use serde_json::Value;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tagmem_device::{ExtentState, Perf, Target};
use tagmem_rig::linux::{
    repo_root, tagged_inputs, LinuxInputs, TaggedLinuxGuest as Guest, REQUIRE_GUEST_KERNEL,
};
use tagmem_test_support::{available_or_skip, kvm_or_skip};
use uuid::Uuid;

#[path = "linux/guest_tools.rs"]
mod guest_tools;
#[path = "linux/host_view.rs"]
mod host_view;

const MIB: u64 = 1 << 20;
const SHARED_TAG: &str = "6f1c2a9e-0d3b-4c55-9a7e-3b1f00c0ffee";
const GROUP_TAG: &str = "11111111-2222-3333-4444-555555555555";
/// Guest b's two-extent group, left unclaimed for its lookups.
const LOOKUP_TAG: &str = "0b6c7d8e-1f2a-4b3c-8d4e-5f6a7b8c9d0e";
const HOST_BYTES: &str = "HOST-WROTE-these-bytes";

/// What the two guests boot: the same kernel and command line, guest b's image with the tools.
struct Inputs {
    /// busybox, tagged-test.sh and daxmap.
    plain: LinuxInputs,
    /// The same plus Debian's daxctl and the static tagmem lookup command.
    with_tools: LinuxInputs,
}

/// The kernel, both initramfs images and the command line, or why there are none.
fn guest_inputs(tmp: &Path) -> Result<Inputs, String> {
    let plain = tagged_inputs(tmp)?;
    // libkmod (daxctl enable-device) learns from modules.builtin which drivers are built in.
    let kernel_dir = plain.kernel.parent().unwrap_or(Path::new("/")).to_path_buf();
    if !kernel_dir.join("build/modules.builtin").is_file() {
        return Err(format!(
            "{} has no build/modules.builtin: the guest kernel must be a linux/build-kernel.sh \
             result (its vmlinux)",
            kernel_dir.display()
        ));
    }
    let repo = repo_root();
    // tagged_inputs built the static daxmap there.
    let daxmap = tmp.join("daxmap");
    let tagmem = guest_tools::tagmem_static(&repo)?;
    // Guest b also gets Debian's daxctl and the tagmem lookup command (~12 MiB more to unpack).
    let initramfs = tmp.join("linux-tagged-tools.cpio");
    let args = [
        "--script".to_string(),
        repo.join("linux/tools/tagged-test.sh").display().to_string(),
        "--file".to_string(),
        format!("{}:/bin/daxmap", daxmap.display()),
        "--daxctl".to_string(),
        "--kernel".to_string(),
        kernel_dir.display().to_string(),
        "--file".to_string(),
        format!("{}:/bin/tagmem", tagmem.display()),
    ];
    guest_tools::initramfs(&repo, &args, &initramfs)?;
    let with_tools = LinuxInputs {
        initramfs,
        ..plain.clone()
    };
    Ok(Inputs { plain, with_tools })
}

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
    let inputs = guest_inputs(&tmp);
    if !available_or_skip(
        REQUIRE_GUEST_KERNEL,
        "a guest kernel with the tagged series and an initramfs",
        inputs.as_ref().err().cloned(),
    ) {
        return;
    }
    let Inputs { plain, with_tools } = inputs.unwrap();
    let shared = tmp.join("shared.img");
    let readonly = tmp.join("readonly.img");
    let group = tmp.join("group.img");
    file_of(&shared, 4 * MIB, HOST_BYTES);
    file_of(&readonly, 2 * MIB, "READ-ONLY-bytes");
    file_of(&group, 4 * MIB, "GROUP");

    let start = Instant::now();
    let mut a = Guest::boot("a", &plain, &tmp);
    let mut b = Guest::boot("b", &with_tools, &tmp);
    // The same sharable tag to both guests, from one host file.
    let shared_opt = format!("tag={SHARED_TAG},path={},size=4M,shared=on", shared.display());
    // Guest b (the same sharable tag, a tag group and an untagged extent, found with the lookup
    // command the host runs and with Debian's daxctl, whose answers are the host's view) runs its
    // lookups beside guest a's first checks: each guest has a vCPU of its own.
    let (ids_a, ro_ids, group_ids, dev_a, dev_b, t) = std::thread::scope(|s| {
        let lookups = s.spawn(|| lookups_in_guest_b(&mut b, &shared_opt, start));
        let ready = a.expect("ready");
        assert_eq!(ready["tagged"], "1", "the driver negotiates bit 3: {ready:?}");
        println!("user space up in guest a after {:.0?}", start.elapsed());
        let ids_a = a.offer(std::slice::from_ref(&shared_opt));
        let ro_ids = a.offer(&[format!("path={},size=2M,readonly=on", readonly.display())]);
        let group_ids = a.offer(&[
            format!("tag={GROUP_TAG},path={},size=2M", group.display()),
            format!("tag={GROUP_TAG},path={},offset=2M,size=2M", group.display()),
        ]);
        let all_a: Vec<u64> = [&ids_a[..], &ro_ids[..], &group_ids[..]].concat();
        a.wait_extents(&all_a, ExtentState::Accepted);
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
        let dev_b = lookups
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (ids_a, ro_ids, group_ids, dev_a, dev_b, t)
    });
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

/// Guest b's part: waits for its user space, offers it `shared_opt` (the tag guest a holds), a
/// two-extent tag group and an untagged extent, sends metadata and a poison, then checks that
/// `tagmem lookup`, `tagmem list` and `daxctl list` in the guest answer what the host's view
/// says (its control API's extents through the lookup library), field for field, before and
/// after a claim by tag bound with `daxctl enable-device`. Returns the shared tag's device.
fn lookups_in_guest_b(b: &mut Guest, shared_opt: &str, start: Instant) -> String {
    let ready = b.expect("ready");
    assert_eq!(ready["tagged"], "1", "the driver negotiates bit 3: {ready:?}");
    println!("user space up in guest b after {:.0?}", start.elapsed());
    let shared_tag: Uuid = SHARED_TAG.parse().unwrap();
    let lookup_tag: Uuid = LOOKUP_TAG.parse().unwrap();
    let perf = "read_latency=120,write_latency=140,read_bandwidth=40000,write_bandwidth=30000";
    let ids = b.offer(&[shared_opt.to_string()]);
    let group = b.offer(&[
        format!("tag={LOOKUP_TAG},path=memfd,size=2M,{perf}"),
        format!("tag={LOOKUP_TAG},path=memfd,size=4M,{perf}"),
    ]);
    let untagged = b.offer(&["path=memfd,size=2M".to_string()]);
    let all: Vec<u64> = [&ids[..], &group[..], &untagged[..]].concat();
    b.wait_extents(&all, ExtentState::Accepted);
    let t = Instant::now();
    let metadata = Perf {
        read_latency_ns: 250,
        write_latency_ns: 300,
        read_bandwidth_mbps: 25000,
        write_bandwidth_mbps: 12000,
    };
    b.vmm.update_metadata(Target::Tag(shared_tag), metadata).unwrap();
    b.vmm.inject_poison(group[1], 0x1000, 0x1000).unwrap();
    let r = b.ask("region");
    let region = format!("region{}", r["id"]);
    // Metadata and poison reach the guest's sysfs asynchronously: wait until they show.
    let deadline = Instant::now() + b.timeout;
    while !b.ask(&format!("extent {}", ids[0])).contains_key("read_latency")
        || b.ask(&format!("extent {}", group[1]))["poison"] == "none"
    {
        if Instant::now() > deadline {
            b.fail("metadata or poison never reached guest b's sysfs");
        }
    }
    let view = |b: &Guest, claimed: &[(Uuid, &str)]| {
        host_view::json(&host_view::host_view(
            &host_view::api_rows(&b.control),
            claimed,
            &region,
        ))
    };

    // Unclaimed: the region holding the group, and the command that claims it.
    let got = b.json_ok(&format!("tagmem lookup {SHARED_TAG} --json"));
    let want = Value::Array(host_view::entries_with_tag(&view(b, &[]), shared_tag));
    b.same_answer("tagmem lookup (unclaimed)", &got, &want);
    assert_eq!(got[0]["state"], "unclaimed", "{got:#}");
    assert_eq!(
        got[0]["claim"],
        format!("daxctl create-device -r {region} --uuid {SHARED_TAG}")
    );

    // The claim as `daxctl create-device --uuid` makes it: the tag to the seed's uuid, then
    // Debian's daxctl binds the device (enable-device).
    let c = b.ask(&format!("claim {SHARED_TAG} daxctl"));
    assert_eq!(c["rc"], "0", "{c:?}");
    assert_eq!(c["uuid"], SHARED_TAG);
    let dev = c["dev"].clone();
    let claimed = [(shared_tag, dev.as_str())];
    let want = view(b, &claimed);

    // daxctl list -M: the device with daxctl's fields as the host's view gives them.
    let got = b.json_ok("daxctl list -M");
    let host_dev = Value::Array(host_view::entries_with_tag(&want, shared_tag));
    b.same_answer("daxctl list -M", &got, &host_view::daxctl_fields(&host_dev));
    assert_eq!(got[0]["chardev"], dev.as_str(), "{got:#}");
    assert_eq!(got[0]["size"], 4 * MIB, "{got:#}");

    // tagmem lookup: the same device, with what daxctl does not show.
    let got = b.json_ok(&format!("tagmem lookup {SHARED_TAG} --json"));
    b.same_answer("tagmem lookup (claimed)", &got, &host_dev);
    assert_eq!(got[0]["path"], format!("/dev/{dev}"));
    assert_eq!(got[0]["flags"], serde_json::json!(["sharable"]));
    assert_eq!(got[0]["read_latency_ns"], 250, "the metadata update: {got:#}");

    // tagmem list: the device, then the capacity still unclaimed, by tag.
    let got = b.json_ok("tagmem list --json");
    b.same_answer("tagmem list", &got, &want);
    let group_entry = &host_view::entries_with_tag(&got, lookup_tag)[0];
    assert_eq!(group_entry["state"], "unclaimed");
    assert_eq!(group_entry["size"], 6 * MIB);
    assert_eq!(
        group_entry["extents"][1]["poison"],
        serde_json::json!([{ "offset": 0x1000, "length": 0x1000 }])
    );
    assert_eq!(host_view::entries_with_tag(&got, Uuid::nil()).len(), 1);
    println!("guest b: lookups took {:.0?}", t.elapsed());
    dev
}

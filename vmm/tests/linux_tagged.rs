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
//! Inputs as `linux_guest.rs` (`TAGMEM_GUEST_KERNEL`, `TAGMEM_GUEST_CMDLINE`,
//! `TAGMEM_LINUX_TIMEOUT`); the initramfs is built here with `linux/build-initramfs.sh` and a
//! static `daxmap` (needs `cc` with a static libc). Without KVM or a kernel the test skips,
//! saying why; `TAGMEM_REQUIRE_KVM=1` makes a missing KVM and `TAGMEM_REQUIRE_GUEST_KERNEL=1`
//! (CI, once it has built the kernel) a missing kernel a failure. Waits are hang guards only.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tagmem_device::{ExtentState, Perf, Target};
use tagmem_test_support::{available_or_skip, kvm_or_skip};
use tagmem_vmm::api::{PreparedChain, TaggedMemoryControl};
use tagmem_vmm::boot::{GuestKind, LinuxBoot};
use tagmem_vmm::config::{parse_options, Resolver, TaggedMemoryConfig};
use tagmem_vmm::runtime::SerialConfig;
use tagmem_vmm::{Vmm, VmmConfig};
use uuid::Uuid;

const MIB: u64 = 1 << 20;
const BOOT_RAM: u64 = 256 * MIB;
const SHARED_TAG: &str = "6f1c2a9e-0d3b-4c55-9a7e-3b1f00c0ffee";
const GROUP_TAG: &str = "11111111-2222-3333-4444-555555555555";
const HOST_BYTES: &str = "HOST-WROTE-these-bytes";
/// The variable that turns "no guest kernel, skipping" into a failure.
const REQUIRE_GUEST_KERNEL: &str = "TAGMEM_REQUIRE_GUEST_KERNEL";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn hang_guard() -> Duration {
    let secs = std::env::var("TAGMEM_LINUX_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1800);
    Duration::from_secs(secs)
}

const EMULATOR_CMDLINE: &str =
    "noxsave clearcpuid=cx16,popcnt,smap noint3-selftest nofwait syscall_fault_fixup";

/// The kernel, initramfs and command line to boot, or why there are none.
fn guest_inputs(tmp: &Path) -> Result<(PathBuf, PathBuf, String), String> {
    let cache = std::env::var("TAGMEM_CACHE").unwrap_or_else(|_| "/var/cache/tagmem".into());
    let kernel = match std::env::var_os("TAGMEM_GUEST_KERNEL") {
        Some(k) => PathBuf::from(k),
        None => Path::new(&cache).join("linux/current/vmlinux"),
    };
    if !kernel.is_file() {
        return Err(format!("no guest kernel at {}", kernel.display()));
    }
    // build-kernel.sh keeps the config next to the kernel: one without the series cannot pass.
    if let Some(config) = kernel
        .parent()
        .and_then(|d| std::fs::read_to_string(d.join("config")).ok())
    {
        if !config.lines().any(|l| l == "CONFIG_VIRTIO_MEM_TAGGED=y") {
            return Err(format!(
                "the guest kernel at {} was built without CONFIG_VIRTIO_MEM_TAGGED \
                 (linux/patches/10-tagged/, linux/config/guest.config)",
                kernel.display()
            ));
        }
    }
    let tools = repo_root().join("linux/tools");
    let daxmap = tmp.join("daxmap");
    let status = Command::new("cc")
        .args(["-static", "-O2", "-Wall", "-o"])
        .arg(&daxmap)
        .arg(tools.join("daxmap.c"))
        .status()
        .map_err(|e| format!("running cc: {e}"))?;
    if !status.success() {
        return Err(format!("cc -static daxmap.c failed: {status}"));
    }
    let builder = repo_root().join("linux/build-initramfs.sh");
    let initramfs = tmp.join("linux-tagged-test.cpio");
    let status = Command::new("bash")
        .arg(&builder)
        .arg("--script")
        .arg(tools.join("tagged-test.sh"))
        .arg("--file")
        .arg(format!("{}:/bin/daxmap", daxmap.display()))
        .arg("-o")
        .arg(&initramfs)
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("running {}: {e}", builder.display()))?;
    if !status.success() {
        return Err(format!("{} failed: {status}", builder.display()));
    }
    let cmdline = match std::env::var("TAGMEM_GUEST_CMDLINE") {
        Ok(c) => c,
        Err(_) => {
            let base = tagmem_vmm::boot::linux::DEFAULT_CMDLINE;
            if Path::new("/sys/module/kvm_pvm").exists() {
                format!("{base} {EMULATOR_CMDLINE}")
            } else {
                base.to_string()
            }
        }
    };
    Ok((kernel, initramfs, cmdline))
}

type Fields = HashMap<String, String>;

/// One booted guest, the control of its tagged device, and where its console was read up to.
struct Guest {
    name: &'static str,
    vmm: Arc<Vmm>,
    control: TaggedMemoryControl,
    next_line: usize,
    timeout: Duration,
    log: PathBuf,
}

impl Guest {
    fn boot(name: &'static str, kernel: &Path, initramfs: &Path, cmdline: &str, tmp: &Path) -> Self {
        let log = tmp.join(format!("linux-tagged-{name}.log"));
        let mut config = VmmConfig {
            guest: GuestKind::Linux(LinuxBoot {
                kernel: kernel.to_path_buf(),
                initramfs: Some(initramfs.to_path_buf()),
                cmdline: cmdline.to_string(),
                cpus: 1,
            }),
            serial: SerialConfig::File(log.clone()),
            ..VmmConfig::default()
        };
        config.vm.boot_ram_size = BOOT_RAM;
        let vmm = Arc::new(Vmm::new(config).expect("start the VMM"));
        let control = TaggedMemoryControl::new(vmm.clone(), Resolver::new("/nonexistent"));
        Guest {
            name,
            vmm,
            control,
            next_line: 0,
            timeout: hang_guard(),
            log,
        }
    }

    fn fail(&self, what: &str) -> ! {
        let lines = self.vmm.console_lines();
        let tail = lines[lines.len().saturating_sub(60)..].join("\n");
        panic!(
            "guest {}: {what}\nexited: {:?}\nconsole (whole log in {}), last lines:\n{tail}",
            self.name,
            self.vmm.guest_exited(),
            self.log.display()
        );
    }

    /// Waits for the report `TAGMEM <kind> ...` and returns its fields.
    fn expect(&mut self, kind: &str) -> Fields {
        let prefix = format!("TAGMEM {kind}");
        let found = self
            .vmm
            .vm()
            .console()
            .wait_line(self.next_line, self.timeout, |l| {
                l == prefix || l.starts_with(&format!("{prefix} ")) || exited(l)
            });
        let Some((index, line)) = found else {
            self.fail(&format!("no `{prefix}` line within {:?}", self.timeout));
        };
        if exited(&line) {
            self.fail(&format!("the guest's init ended before `{prefix}`: {line}"));
        }
        self.next_line = index + 1;
        line.split_whitespace()
            .skip(2)
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Types a command and waits for its report.
    fn ask(&mut self, cmd: &str) -> Fields {
        assert!(self.vmm.serial_input(format!("{cmd}\n").as_bytes()));
        let kind = cmd.split_whitespace().next().unwrap().to_string();
        self.expect(&kind)
    }

    /// Offers the `--tagged-memory` values as one chain; returns the device's extent ids.
    fn offer(&self, values: &[String]) -> Vec<u64> {
        let (configs, _): (Vec<TaggedMemoryConfig>, _) =
            parse_options(values).expect("valid --tagged-memory values");
        let chain = PreparedChain::prepare(&Resolver::new("/nonexistent"), &configs, "test")
            .expect("open the backings");
        let reply = self.control.offer(chain).expect("offer the chain");
        reply.extents.iter().map(|e| e.extent_id).collect()
    }

    /// Waits until the device holds exactly `ids`, all in `state`.
    fn wait_extents(&self, ids: &[u64], state: ExtentState) {
        let deadline = Instant::now() + self.timeout;
        loop {
            let now: Vec<(u64, ExtentState)> = self.vmm.extents().iter().map(|e| (e.id, e.state)).collect();
            if now.len() == ids.len() && now.iter().all(|(id, s)| ids.contains(id) && *s == state) {
                return;
            }
            if Instant::now() > deadline {
                self.fail(&format!("the device holds {now:?}, not {ids:?} {state:?}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn exited(line: &str) -> bool {
    line.starts_with("tagmem-init: end") || line.contains("Kernel panic")
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
    let (kernel, initramfs, cmdline) = inputs.unwrap();
    let shared = tmp.join("shared.img");
    let readonly = tmp.join("readonly.img");
    let group = tmp.join("group.img");
    file_of(&shared, 4 * MIB, HOST_BYTES);
    file_of(&readonly, 2 * MIB, "READ-ONLY-bytes");
    file_of(&group, 4 * MIB, "GROUP");

    let start = Instant::now();
    let mut a = Guest::boot("a", &kernel, &initramfs, &cmdline, &tmp);
    let mut b = Guest::boot("b", &kernel, &initramfs, &cmdline, &tmp);
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

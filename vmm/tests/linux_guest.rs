//! Tests with a Linux guest: tagmem-vmm boots the test kernel with an initramfs whose /test is
//! `tests/linux/peer-test.sh`, and the guest's own, unmodified `virtio_mem` driver is the peer of
//! the device's base protocol. The guest reports over the serial console (lines starting with
//! `TAGMEM `); the host types commands to it on the same console.
//!
//! What is checked, in one boot (booting is the slow part where the guest runs in KVM's
//! instruction emulator):
//! - the kernel reaches the initramfs's init and user space runs; its release and the virtio
//!   devices it found are reported;
//! - the device offers the tagged feature (bit 3, seen in debugfs `device_features`), which the
//!   stock driver does not negotiate;
//! - raising `requested_size` makes the driver plug memory: the device's plugged size follows,
//!   the memory blocks come online and `MemTotal` grows by the same amount; lowering it unplugs;
//! - unbinding the driver resets the device, and the plugged memory survives (§5.15: a reset
//!   changes no memory state): still plugged on the device, still online in the guest; the
//!   guest keeps running after a rebind attempt.
//!
//! Inputs: `TAGMEM_BASE_GUEST_KERNEL` (a vmlinux or bzImage built without the tagged series,
//! `linux/build-kernel.sh --base`; where unset, the tagged kernel of `TAGMEM_GUEST_KERNEL` or the
//! kernel cache's `current/vmlinux` stands in, except in CI), `TAGMEM_GUEST_INITRAMFS` (default: built
//! with `linux/build-initramfs.sh --script tests/linux/peer-test.sh`), `TAGMEM_GUEST_CMDLINE`
//! (default: the `cmdline` file next to the kernel, else the VMM's default command line, with the
//! test kernel's emulator workarounds on a `kvm_pvm` host).
//! Without KVM or a kernel the test skips, saying why; `TAGMEM_REQUIRE_KVM=1` makes a missing KVM
//! and `TAGMEM_REQUIRE_GUEST_KERNEL=1` (CI, once it has built the kernel) a missing kernel a
//! failure instead.
//! Waits are hang guards only (`TAGMEM_LINUX_TIMEOUT` seconds per step, default 1800): nothing
//! here depends on how fast the guest runs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tagmem_rig::linux::{
    base_guest_kernel, hang_guard, parse_fields, repo_root, wait_report, Fields, REQUIRE_GUEST_KERNEL,
};
use tagmem_test_support::{available_or_skip, kvm_or_skip};
use tagmem_vmm::boot::{GuestKind, LinuxBoot};
use tagmem_vmm::runtime::{SerialConfig, RESET_REASON};
use tagmem_vmm::{Vmm, VmmConfig};

const MIB: u64 = 1 << 20;
/// Boot RAM of the guest.
const BOOT_RAM: u64 = 256 * MIB;
/// The base virtio-mem region: two 128 MiB memory blocks.
const HOTPLUG: u64 = 256 * MIB;
/// virtio-mem's device id, as sysfs prints it.
const VIRTIO_ID_MEM: &str = "0x0018";
/// Feature bits: VIRTIO_MEM_F_TAGGED_EXTENTS, VIRTIO_F_VERSION_1.
const F_TAGGED: usize = 3;
const F_VERSION_1: usize = 32;

/// The kernel, initramfs and command line to boot, or why there are none.
fn guest_inputs() -> Result<(PathBuf, PathBuf, String), String> {
    let kernel = base_guest_kernel()?;
    let script = repo_root().join("vmm/tests/linux/peer-test.sh");
    let initramfs = match std::env::var_os("TAGMEM_GUEST_INITRAMFS") {
        Some(i) => PathBuf::from(i),
        None => {
            let builder = repo_root().join("linux/build-initramfs.sh");
            if !builder.is_file() {
                return Err(format!("no initramfs builder at {}", builder.display()));
            }
            // Uncompressed: the guest unpacks it faster.
            let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("linux-peer-test.cpio");
            let status = Command::new("bash")
                .arg(&builder)
                .arg("--script")
                .arg(&script)
                .arg("-o")
                .arg(&out)
                .stdout(std::process::Stdio::null())
                .status()
                .map_err(|e| format!("running {}: {e}", builder.display()))?;
            if !status.success() {
                return Err(format!("{} failed: {status}", builder.display()));
            }
            out
        }
    };
    let mut cmdline = match std::env::var("TAGMEM_GUEST_CMDLINE") {
        Ok(c) => c,
        Err(_) => kernel
            .parent()
            .and_then(|d| std::fs::read_to_string(d.join("cmdline")).ok())
            .map(|c| c.trim().to_string())
            .unwrap_or_else(default_cmdline),
    };
    // Hot-plugged memory must come online by itself, movable so that it can be unplugged.
    if !cmdline.contains("memhp_default_state=") {
        cmdline.push_str(" memhp_default_state=online_movable");
    }
    Ok((kernel, initramfs, cmdline))
}

/// Boot parameters the test kernel needs where KVM runs the guest in its instruction emulator
/// (`kvm_pvm` hosts): options for the emulator's missing instructions and the kernel's own
/// workarounds (`linux/patches/`); not used elsewhere.
const EMULATOR_CMDLINE: &str =
    "noxsave clearcpuid=cx16,popcnt,smap noint3-selftest nofwait syscall_fault_fixup";

/// The VMM's default command line, plus [`EMULATOR_CMDLINE`] on a `kvm_pvm` host.
fn default_cmdline() -> String {
    let base = tagmem_vmm::boot::linux::DEFAULT_CMDLINE;
    if Path::new("/sys/module/kvm_pvm").exists() {
        format!("{base} {EMULATOR_CMDLINE}")
    } else {
        base.to_string()
    }
}

/// A booted guest and where its console was read up to.
struct Session {
    vmm: Vmm,
    next_line: usize,
    timeout: Duration,
    log: PathBuf,
}

impl Session {
    fn fail(&self, what: &str) -> ! {
        let lines = self.vmm.console_lines();
        let tail = lines[lines.len().saturating_sub(60)..].join("\n");
        panic!(
            "{what}\nguest: {:?}; device: {:?}\nconsole (whole log in {}), last lines:\n{tail}",
            self.vmm.guest_exited(),
            self.vmm.base_memory(),
            self.log.display()
        );
    }

    /// Waits for the report `TAGMEM <kind> ...` and returns its fields.
    fn expect(&mut self, kind: &str) -> Fields {
        match wait_report(&self.vmm, self.next_line, self.timeout, kind) {
            Ok((index, fields)) => {
                self.next_line = index + 1;
                fields
            }
            Err(why) => self.fail(&why),
        }
    }

    /// All `TAGMEM <kind>` reports printed before the next line read.
    fn collect_until(&mut self, kind: &str, end: &str) -> (Vec<Fields>, Fields) {
        let mut found = Vec::new();
        loop {
            let start = self.next_line;
            let want = format!("TAGMEM {kind} ");
            let stop = format!("TAGMEM {end}");
            let got = self.vmm.vm().console().wait_line(start, self.timeout, |l| {
                l.starts_with(&want) || l.starts_with(&stop)
            });
            let Some((index, line)) = got else {
                self.fail(&format!("no `{stop}` line within {:?}", self.timeout));
            };
            self.next_line = index + 1;
            if line.starts_with(&stop) {
                return (found, parse_fields(&line));
            }
            found.push(parse_fields(&line));
        }
    }

    fn send(&self, cmd: &str) {
        assert!(self.vmm.serial_input(format!("{cmd}\n").as_bytes()));
    }

    /// Waits until the device's plugged size is `want`.
    fn wait_plugged(&self, want: u64) {
        if !self.vmm.wait_device(self.timeout, |d| d.plugged_size() == want) {
            self.fail(&format!(
                "the device's plugged size stayed at {:#x}, not {want:#x}",
                self.vmm.base_memory().plugged_size
            ));
        }
    }

    /// Asks the guest to wait for `online` blocks of the base region; returns (online,
    /// present, MemTotal in KiB).
    fn blocks(&mut self, online: u64) -> (u64, u64, u64) {
        let m = self.vmm.base_memory();
        self.send(&format!("blocks {} {} {online}", m.region_addr, m.hotplug_size));
        let f = self.expect("blocks");
        (num(&f, "online"), num(&f, "present"), num(&f, "memtotal_kb"))
    }
}

fn num(f: &Fields, key: &str) -> u64 {
    f.get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("report {f:?} lacks a number {key}="))
}

#[test]
fn linux_virtio_mem_driver_plugs_unplugs_and_survives_a_reset() {
    if !kvm_or_skip() {
        return;
    }
    // CI builds the kernel first and then requires it.
    let inputs = guest_inputs();
    if !available_or_skip(
        REQUIRE_GUEST_KERNEL,
        "a guest kernel and initramfs",
        inputs.as_ref().err().cloned(),
    ) {
        return;
    }
    let (kernel, initramfs, cmdline) = inputs.unwrap();
    let log = Path::new(env!("CARGO_TARGET_TMPDIR")).join("linux-guest-console.log");
    let mut config = VmmConfig {
        guest: GuestKind::Linux(LinuxBoot {
            kernel: kernel.clone(),
            initramfs: Some(initramfs),
            cmdline: cmdline.clone(),
            cpus: 1,
        }),
        serial: SerialConfig::File(log.clone()),
        hotplug_size: HOTPLUG,
        ..VmmConfig::default()
    };
    config.vm.boot_ram_size = BOOT_RAM;
    let start = Instant::now();
    let vmm = Vmm::new(config).expect("start the VMM");
    let mut s = Session {
        vmm,
        next_line: 0,
        timeout: hang_guard(),
        log,
    };
    println!("kernel {}, command line: {cmdline}", kernel.display());

    // Boot to user space: the script reports the kernel and the virtio devices.
    let k = s.expect("kernel");
    let (devices, ready) = s.collect_until("virtio", "ready");
    println!(
        "user space up after {:.0?} of wall time: kernel {}, devices {devices:?}",
        start.elapsed(),
        k["release"]
    );
    let mem = devices
        .iter()
        .find(|d| d.get("device").map(String::as_str) == Some(VIRTIO_ID_MEM))
        .unwrap_or_else(|| s.fail("the guest found no virtio-mem device"));
    assert_eq!(ready["mem_device"], mem["name"]);
    assert_eq!(
        mem["driver"], "virtio_mem",
        "the stock virtio_mem driver binds the device"
    );

    // Offered vs negotiated features. A kernel without debugfs' device_features fails this check,
    // after the others ran.
    let mut failed: Vec<String> = Vec::new();
    let offered: Vec<usize> = mem["offered"]
        .split(',')
        .filter_map(|b| b.trim().parse().ok())
        .collect();
    if mem["offered"] == "none" {
        failed.push(
            "debugfs /sys/kernel/debug/virtio/*/device_features is missing: the guest kernel needs \
             CONFIG_DEBUG_FS and CONFIG_VIRTIO_DEBUG to show the offered features"
                .into(),
        );
    } else if !offered.contains(&F_TAGGED) {
        failed.push(format!(
            "the device does not offer the tagged feature: {offered:?}"
        ));
    }
    println!("virtio-mem features: offered {offered:?}");
    let negotiated: Vec<usize> = mem["features"]
        .chars()
        .enumerate()
        .filter_map(|(i, c)| (c == '1').then_some(i))
        .collect();
    assert!(negotiated.contains(&F_VERSION_1), "{negotiated:?}");
    // The stock driver does not know bit 3; a kernel built with the tagged series
    // (CONFIG_VIRTIO_MEM_TAGGED, linux/patches/10-tagged/) negotiates it, and the base protocol
    // below works the same either way.
    let tagged_driver = kernel
        .parent()
        .and_then(|d| std::fs::read_to_string(d.join("config")).ok())
        .is_some_and(|c| c.lines().any(|l| l == "CONFIG_VIRTIO_MEM_TAGGED=y"));
    assert_eq!(
        negotiated.contains(&F_TAGGED),
        tagged_driver,
        "bit 3 is negotiated exactly with the tagged driver: {negotiated:?}"
    );
    assert!(s
        .vmm
        .with_device(|d| d.is_active() && d.tagged_negotiated() == tagged_driver));

    // Nothing plugged yet.
    let (online0, present0, total0) = s.blocks(0);
    assert_eq!((online0, present0), (0, 0));
    assert_eq!(s.vmm.base_memory().plugged_size, 0);
    println!("before plug: MemTotal {total0} kB");

    // Plug all of the region.
    s.vmm.set_requested_size(HOTPLUG).unwrap();
    s.wait_plugged(HOTPLUG);
    let (online, present, total) = s.blocks(2);
    println!(
        "requested {} MiB: plugged {} MiB, {online} blocks online, MemTotal {total} kB",
        HOTPLUG >> 20,
        s.vmm.base_memory().plugged_size >> 20
    );
    assert_eq!((online, present), (2, 2));
    assert_eq!(
        total - total0,
        HOTPLUG / 1024,
        "MemTotal grew by what was plugged"
    );

    // Unplug half of it.
    s.vmm.set_requested_size(HOTPLUG / 2).unwrap();
    s.wait_plugged(HOTPLUG / 2);
    let (online, present, total_half) = s.blocks(1);
    println!(
        "requested {} MiB: plugged {} MiB, {online} block online, MemTotal {total_half} kB",
        HOTPLUG >> 21,
        s.vmm.base_memory().plugged_size >> 20
    );
    assert_eq!((online, present), (1, 1));
    assert_eq!(total_half - total0, HOTPLUG / 2 / 1024);

    // Reset: unbinding the driver resets the device; plugged memory stays.
    s.send("unbind");
    let u = s.expect("unbind");
    assert_eq!((u["rc"].as_str(), u["bound"].as_str()), ("0", "0"), "{u:?}");
    if !s.vmm.wait_device(s.timeout, |d| !d.is_active()) {
        s.fail("unbinding the driver did not reset the device");
    }
    assert_eq!(
        s.vmm.base_memory().plugged_size,
        HOTPLUG / 2,
        "a device reset keeps plugged memory"
    );
    let (online, _, total_reset) = s.blocks(1);
    assert_eq!(
        (online, total_reset),
        (1, total_half),
        "the guest still has the memory online"
    );

    // Rebinding: Linux refuses to probe while the old binding's memory is still added
    // (-EBUSY on the region) or binds again; either way nothing is lost.
    s.send("bind");
    let b = s.expect("bind");
    println!("rebind: {b:?}");
    assert_eq!(s.vmm.base_memory().plugged_size, HOTPLUG / 2);
    let (online, _, total_bind) = s.blocks(1);
    assert_eq!((online, total_bind), (1, total_half));

    s.send("end");
    s.expect("bye");
    let reason = s.vmm.wait_exit(Some(s.timeout));
    assert_eq!(
        reason.as_deref(),
        Some(RESET_REASON),
        "the guest's reboot ends the VM"
    );
    println!("whole test: {:.0?} of wall time", start.elapsed());
    assert!(failed.is_empty(), "{failed:#?}");
}

//! A Linux guest whose kernel carries the tagged virtio-mem series (`linux/patches/10-tagged/`),
//! driven from user space by `linux/tools/tagged-test.sh` (with `linux/tools/daxmap.c`, which
//! reaches `/dev/daxX.Y` through mmap). The script reports over the serial console (lines
//! starting with `TAGMEM `) and serves the commands the host types on the same console.
//!
//! Used by the Linux tests (`vmm/tests/linux_tagged.rs`) and the benchmark's Linux rows.
//! Inputs: `TAGMEM_GUEST_KERNEL` (default: the kernel `linux/build-kernel.sh` keeps in
//! `$TAGMEM_CACHE/linux/current`, `TAGMEM_CACHE` defaulting to `/var/cache/tagmem`),
//! `TAGMEM_GUEST_CMDLINE`, `TAGMEM_LINUX_TIMEOUT` (the hang guard of every wait, seconds).
//! The initramfs is built with `linux/build-initramfs.sh` and a static `daxmap` (needs `cc`
//! with a static libc). Waits are hang guards only: nothing depends on how fast the guest runs.

use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tagmem_device::ExtentState;
use tagmem_vmm::api::{PreparedChain, TaggedMemoryControl};
use tagmem_vmm::boot::{GuestKind, LinuxBoot};
use tagmem_vmm::config::{parse_options, Resolver, TaggedMemoryConfig};
use tagmem_vmm::runtime::SerialConfig;
use tagmem_vmm::{Vmm, VmmConfig};

/// The variable that turns "no guest kernel, skipping" into a failure.
pub const REQUIRE_GUEST_KERNEL: &str = "TAGMEM_REQUIRE_GUEST_KERNEL";
/// Boot RAM of a tagged Linux guest.
pub const BOOT_RAM: u64 = 256 << 20;
/// Boot parameters the test kernel needs where KVM runs the guest in its instruction emulator
/// (`kvm_pvm` hosts): options for the emulator's missing instructions and the kernel's own
/// workarounds (`linux/patches/`); not used elsewhere.
pub const EMULATOR_CMDLINE: &str =
    "noxsave clearcpuid=cx16,popcnt,smap noint3-selftest nofwait syscall_fault_fixup";

/// The `key=value` fields of a report line.
pub type Fields = HashMap<String, String>;

/// The repository's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// How long any one wait may take before it counts as a hang (`TAGMEM_LINUX_TIMEOUT`).
pub fn hang_guard() -> Duration {
    let secs = std::env::var("TAGMEM_LINUX_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1800);
    Duration::from_secs(secs)
}

/// Whether KVM runs a non-PVM guest in its instruction emulator here (`kvm_pvm`).
pub fn emulated() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// `TAGMEM_GUEST_CMDLINE`, or the VMM's default plus [`EMULATOR_CMDLINE`] on a `kvm_pvm` host.
pub fn default_cmdline() -> String {
    if let Ok(c) = std::env::var("TAGMEM_GUEST_CMDLINE") {
        return c;
    }
    let base = tagmem_vmm::boot::linux::DEFAULT_CMDLINE;
    if emulated() {
        format!("{base} {EMULATOR_CMDLINE}")
    } else {
        base.to_string()
    }
}

/// The guest kernel (`TAGMEM_GUEST_KERNEL` or the cache's current build), or why there is none.
pub fn guest_kernel() -> Result<PathBuf, String> {
    let cache = std::env::var("TAGMEM_CACHE").unwrap_or_else(|_| "/var/cache/tagmem".into());
    let kernel = match std::env::var_os("TAGMEM_GUEST_KERNEL") {
        Some(k) => PathBuf::from(k),
        None => Path::new(&cache).join("linux/current/vmlinux"),
    };
    if !kernel.is_file() {
        return Err(format!("no guest kernel at {}", kernel.display()));
    }
    Ok(kernel)
}

/// The kernel of the base protocol's peer test: `TAGMEM_BASE_GUEST_KERNEL`, a kernel built
/// without the tagged series (`linux/build-kernel.sh --base`), whose `virtio_mem` is Linux's own,
/// unmodified. Where it is not set, the tagged kernel of [`guest_kernel`] (whose `virtio_mem`
/// carries the series) stands in, except under [`REQUIRE_GUEST_KERNEL`], where that is an error.
pub fn base_guest_kernel() -> Result<PathBuf, String> {
    let Some(k) = std::env::var_os("TAGMEM_BASE_GUEST_KERNEL") else {
        if std::env::var(REQUIRE_GUEST_KERNEL).as_deref() == Ok("1") {
            return Err("TAGMEM_BASE_GUEST_KERNEL is not set: the peer test runs Linux's \
                        unmodified virtio_mem (linux/build-kernel.sh --base)"
                .into());
        }
        return guest_kernel();
    };
    let kernel = PathBuf::from(k);
    if !kernel.is_file() {
        return Err(format!("no base guest kernel at {}", kernel.display()));
    }
    // build-kernel.sh keeps the config next to the kernel: the series must not be in it.
    if let Some(config) = kernel
        .parent()
        .and_then(|d| std::fs::read_to_string(d.join("config")).ok())
    {
        if config.lines().any(|l| l == "CONFIG_VIRTIO_MEM_TAGGED=y") {
            return Err(format!(
                "the base guest kernel at {} carries the tagged series (CONFIG_VIRTIO_MEM_TAGGED)",
                kernel.display()
            ));
        }
    }
    Ok(kernel)
}

/// What a tagged Linux guest boots.
#[derive(Clone, Debug)]
pub struct LinuxInputs {
    /// The kernel image.
    pub kernel: PathBuf,
    /// The initramfs with `tagged-test.sh` as `/test` and `daxmap`.
    pub initramfs: PathBuf,
    /// The kernel command line.
    pub cmdline: String,
}

/// The kernel (with the tagged series), an initramfs built into `tmp` and the command line, or
/// why there are none.
pub fn tagged_inputs(tmp: &Path) -> Result<LinuxInputs, String> {
    let kernel = guest_kernel()?;
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
    std::fs::create_dir_all(tmp).map_err(|e| format!("creating {}: {e}", tmp.display()))?;
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
    Ok(LinuxInputs {
        kernel,
        initramfs,
        cmdline: default_cmdline(),
    })
}

/// Whether a console line says the guest's init is over.
pub fn exited(line: &str) -> bool {
    line.starts_with("tagmem-init: end") || line.contains("Kernel panic")
}

/// The `key=value` fields of a report line `TAGMEM <kind> k=v ...`.
pub fn parse_fields(line: &str) -> Fields {
    line.split_whitespace()
        .skip(2)
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Waits on `vmm`'s console, from line `from`, for the report `TAGMEM <kind> ...`: its line
/// index and fields, or why there is none (no such line within `timeout`, or the guest's init
/// ended first).
pub fn wait_report(vmm: &Vmm, from: usize, timeout: Duration, kind: &str) -> Result<(usize, Fields), String> {
    let prefix = format!("TAGMEM {kind}");
    let found = vmm.vm().console().wait_line(from, timeout, |l| {
        l == prefix || l.starts_with(&format!("{prefix} ")) || exited(l)
    });
    let Some((index, line)) = found else {
        return Err(format!("no `{prefix}` line within {timeout:?}"));
    };
    if exited(&line) {
        return Err(format!("the guest's init ended before `{prefix}`: {line}"));
    }
    Ok((index, parse_fields(&line)))
}

/// One booted tagged Linux guest, the control of its tagged device, and where its console was
/// read up to.
pub struct TaggedLinuxGuest {
    /// A name for messages.
    pub name: &'static str,
    /// The VMM running it.
    pub vmm: Arc<Vmm>,
    /// Offers as the API's `vm.add-tagged-memory` makes them.
    pub control: TaggedMemoryControl,
    /// The hang guard of every wait.
    pub timeout: Duration,
    next_line: usize,
    log: PathBuf,
}

impl TaggedLinuxGuest {
    /// Starts the VMM on `inputs` with 1 vCPU and [`BOOT_RAM`]; the console goes to a log in
    /// `tmp`.
    pub fn boot(name: &'static str, inputs: &LinuxInputs, tmp: &Path) -> Self {
        let log = tmp.join(format!("linux-tagged-{name}.log"));
        let mut config = VmmConfig {
            guest: GuestKind::Linux(LinuxBoot {
                kernel: inputs.kernel.clone(),
                initramfs: Some(inputs.initramfs.clone()),
                cmdline: inputs.cmdline.clone(),
                cpus: 1,
            }),
            serial: SerialConfig::File(log.clone()),
            ..VmmConfig::default()
        };
        config.vm.boot_ram_size = BOOT_RAM;
        let vmm = Arc::new(Vmm::new(config).expect("start the VMM"));
        let control = TaggedMemoryControl::new(vmm.clone(), Resolver::new("/nonexistent"));
        TaggedLinuxGuest {
            name,
            vmm,
            control,
            next_line: 0,
            timeout: hang_guard(),
            log,
        }
    }

    /// Panics with `what`, why the guest stopped (if it did) and the console's last lines.
    pub fn fail(&self, what: &str) -> ! {
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
    pub fn expect(&mut self, kind: &str) -> Fields {
        match wait_report(&self.vmm, self.next_line, self.timeout, kind) {
            Ok((index, fields)) => {
                self.next_line = index + 1;
                fields
            }
            Err(why) => self.fail(&why),
        }
    }

    /// Types a command and waits for its report.
    pub fn ask(&mut self, cmd: &str) -> Fields {
        assert!(self.vmm.serial_input(format!("{cmd}\n").as_bytes()));
        let kind = cmd.split_whitespace().next().unwrap_or_default().to_string();
        self.expect(&kind)
    }

    /// Runs `json PROG ARGS` in the guest: the program must succeed and print JSON, which is
    /// returned parsed.
    pub fn json_ok(&mut self, cmd: &str) -> Value {
        let t = Instant::now();
        assert!(self.vmm.serial_input(format!("json {cmd}\n").as_bytes()));
        let (mut out, mut err) = (String::new(), String::new());
        let rc = loop {
            let found = self
                .vmm
                .vm()
                .console()
                .wait_line(self.next_line, self.timeout, |l| {
                    l.starts_with("TAGMEM json") || exited(l)
                });
            let Some((index, line)) = found else {
                self.fail(&format!("`{cmd}` did not finish within {:?}", self.timeout));
            };
            if exited(&line) {
                self.fail(&format!("the guest's init ended during `{cmd}`: {line}"));
            }
            self.next_line = index + 1;
            if let Some(rc) = line.strip_prefix("TAGMEM json-end rc=") {
                break rc.trim().to_string();
            } else if let Some(e) = line.strip_prefix("TAGMEM json-err ") {
                err.push_str(e);
                err.push('\n');
            } else if let Some(o) = line.strip_prefix("TAGMEM json") {
                out.push_str(o.strip_prefix(' ').unwrap_or(o));
                out.push('\n');
            }
        };
        if rc != "0" {
            self.fail(&format!("`{cmd}` exited with {rc}: {err}{out}"));
        }
        println!("guest {}: `{cmd}` took {:.0?}", self.name, t.elapsed());
        serde_json::from_str(&out)
            .unwrap_or_else(|e| self.fail(&format!("`{cmd}` printed no JSON ({e}):\n{out}{err}")))
    }

    /// Fails unless the guest's answer to `what` is the host's view.
    pub fn same_answer(&self, what: &str, guest: &Value, host: &Value) {
        if guest != host {
            self.fail(&format!(
                "{what} in the guest:\n{guest:#}\nthe host's view (control API, lookup library):\n{host:#}"
            ));
        }
    }

    /// Offers the `--tagged-memory` values as one chain; returns the device's extent ids.
    pub fn offer(&self, values: &[String]) -> Vec<u64> {
        let (configs, _): (Vec<TaggedMemoryConfig>, _) =
            parse_options(values).expect("valid --tagged-memory values");
        let chain = PreparedChain::prepare(&Resolver::new("/nonexistent"), &configs, "test")
            .expect("open the backings");
        let reply = self.control.offer(chain).expect("offer the chain");
        reply.extents.iter().map(|e| e.extent_id).collect()
    }

    /// Waits until the device holds exactly `ids`, all in `state`.
    pub fn wait_extents(&self, ids: &[u64], state: ExtentState) {
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

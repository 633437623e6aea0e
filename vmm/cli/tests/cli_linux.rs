//! `tagmem-vmm run --kernel` as a user runs it: the kernel's serial console on standard output,
//! the VMM's own messages on standard error, `vm.resize` and `vm.memory` through `client`, and
//! the exit when the guest resets (exit code 0) or on SIGTERM. The kernel is a tiny ELF built
//! here (`vmm/tests/linux/mini_elf.rs`), so only KVM is needed; fails instead of skipping when
//! `TAGMEM_REQUIRE_KVM=1`.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Output, Stdio};
use tagmem_test_support::kvm_or_skip;

#[allow(dead_code)]
mod mini_elf {
    include!("../../tests/linux/mini_elf.rs");
}

const BIN: &str = env!("CARGO_BIN_EXE_tagmem-vmm");

fn kernel(dir: &tempfile::TempDir, code: &[u8]) -> String {
    let path = dir.path().join("vmlinux");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(&mini_elf::build(0x100_0000, code))
        .unwrap();
    path.to_str().unwrap().to_string()
}

fn client(sock: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["client", "--api-socket", sock])
        .args(args)
        .output()
        .unwrap()
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_guest_console_is_stdout_and_a_guest_reset_ends_the_vmm_with_success() {
    if !kvm_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let k = kernel(&dir, mini_elf::PRINT_CMDLINE_AND_RESET);
    let out = Command::new(BIN)
        .args([
            "run",
            "--kernel",
            &k,
            "--cmdline",
            "console=ttyS0 hello",
            "--memory",
            "size=64M",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout, "console=ttyS0 hello virtio_mmio.device=4K@0xd0100000:5\n");
    assert!(
        stderr.contains("guest stopped: the guest reset the machine"),
        "{stderr}"
    );
}

#[test]
fn serial_file_and_missing_kernel() {
    if !kvm_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let k = kernel(&dir, mini_elf::PRINT_CMDLINE_AND_RESET);
    let log = dir.path().join("console.log");
    let out = Command::new(BIN)
        .args(["run", "--kernel", &k, "--cmdline", "x", "--serial"])
        .arg(format!("file={}", log.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout.is_empty());
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "x virtio_mmio.device=4K@0xd0100000:5\n"
    );

    let out = Command::new(BIN)
        .args(["run", "--kernel", "/nonexistent/vmlinux"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with("tagmem-vmm: --kernel /nonexistent/vmlinux: "),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(BIN)
        .args(["run", "--initramfs", &k])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "--initramfs needs --kernel");
}

#[test]
fn client_resizes_the_base_region_of_a_running_linux_vm() {
    if !kvm_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let k = kernel(&dir, mini_elf::PRINT_CMDLINE_AND_HALT);
    let sock = dir.path().join("api.sock").to_str().unwrap().to_string();
    let mut vmm = Running(
        Command::new(BIN)
            .args(["run", "--kernel", &k, "--cmdline", "up", "--api-socket", &sock])
            .args(["--memory", "size=128M,hotplug_size=256M,hotplugged_size=128M"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut err = BufReader::new(vmm.0.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.starts_with("tagmem-vmm: API listening on"), "{line}");
    let mut out = BufReader::new(vmm.0.stdout.take().unwrap());
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "up virtio_mmio.device=4K@0xd0100000:5\n");

    let memory = |want_requested: u64| {
        let o = client(&sock, &["memory"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["boot_size"], 128u64 << 20, "{v}");
        assert_eq!(v["hotplug_size"], 256u64 << 20, "{v}");
        assert_eq!(v["region_addr"], 4u64 << 30, "{v}");
        assert_eq!(v["requested_size"], want_requested, "{v}");
        assert_eq!(v["plugged_size"], 0, "nothing plugs without a driver: {v}");
    };
    memory(128 << 20);
    let o = client(&sock, &["resize", "--desired-ram", "384M"]);
    assert!(
        o.status.success() && o.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    memory(256 << 20);
    let o = client(&sock, &["resize", "--desired-ram", "1G"]);
    assert_eq!(o.status.code(), Some(1));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.starts_with("tagmem-vmm: /api/v1/vm.resize: 400: desired_ram: "),
        "{e}"
    );
    memory(256 << 20);

    let pid = i32::try_from(vmm.0.id()).unwrap();
    // SAFETY: kill(2) only sends a signal; `pid` is our child, not reaped yet (the Child lives).
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = vmm.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    assert!(rest.contains("signal 15: stopping"), "{rest}");
}

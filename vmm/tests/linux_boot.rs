//! The Linux boot path without a Linux kernel: a tiny 64-bit ELF "kernel" is loaded as a
//! vmlinux would be, prints its command line (read through the zero page RSI points at) on the
//! 16550 serial console, and resets the machine through the i8042; the VMM must end the guest
//! with a reset. Needs KVM only; fails instead of skipping when `TAGMEM_REQUIRE_KVM=1`.

use std::io::Write;
use std::time::Duration;
use tagmem_test_support::kvm_or_skip;
use tagmem_vmm::boot::{GuestKind, LinuxBoot};
use tagmem_vmm::runtime::RESET_REASON;
use tagmem_vmm::{Vmm, VmmConfig};

#[allow(dead_code)]
mod mini_elf {
    include!("linux/mini_elf.rs");
}

const MIB: u64 = 1 << 20;
/// A hang guard only: the tiny kernel runs a few hundred instructions.
const HANG_GUARD: Duration = Duration::from_secs(600);

fn boot(cmdline: &str, hotplug_size: u64) -> (Vmm, tempfile::NamedTempFile) {
    boot_code(mini_elf::PRINT_CMDLINE_AND_RESET, cmdline, hotplug_size)
}

fn boot_code(code: &[u8], cmdline: &str, hotplug_size: u64) -> (Vmm, tempfile::NamedTempFile) {
    let mut kernel = tempfile::NamedTempFile::new().unwrap();
    kernel.write_all(&mini_elf::build(0x100_0000, code)).unwrap();
    let mut config = VmmConfig {
        guest: GuestKind::Linux(LinuxBoot {
            cmdline: cmdline.into(),
            ..LinuxBoot::new(kernel.path())
        }),
        hotplug_size,
        ..VmmConfig::default()
    };
    config.vm.boot_ram_size = 128 * MIB;
    (Vmm::new(config).expect("start the VMM"), kernel)
}

#[test]
fn elf_kernel_prints_its_cmdline_on_the_serial_console_and_resets() {
    if !kvm_or_skip() {
        return;
    }
    let (vmm, _kernel) = boot("console=ttyS0 tagmem.hello=1", 0);
    assert_eq!(vmm.wait_exit(Some(HANG_GUARD)).as_deref(), Some(RESET_REASON));
    assert_eq!(
        vmm.console_lines(),
        vec!["console=ttyS0 tagmem.hello=1 virtio_mmio.device=4K@0xd0100000:5"],
        "the kernel saw its command line, with the virtio-mmio device appended"
    );
    let stats = vmm.exit_stats();
    assert_eq!(stats.unhandled_port_io, 0, "{stats:?}");
    // On the in-kernel irqchip: the vCPU never halts to the VMM. (Test commands need the test
    // rig's control device, which only the test guest's VM has.)
    assert!(!vmm.parks_on_hlt());
}

#[test]
fn a_triple_fault_ends_the_guest_and_says_so() {
    if !kvm_or_skip() {
        return;
    }
    let (vmm, _kernel) = boot_code(mini_elf::TRIPLE_FAULT, "console=ttyS0", 0);
    let reason = vmm.wait_exit(Some(HANG_GUARD)).expect("the guest ends");
    assert!(
        reason.starts_with("the guest triple-faulted"),
        "a triple fault is a shutdown, not a reset or a hang: {reason}"
    );
    assert_ne!(reason, RESET_REASON);
}

#[test]
fn base_region_resize_counts_boot_ram_like_vm_resize() {
    if !kvm_or_skip() {
        return;
    }
    let (vmm, _kernel) = boot("", 256 * MIB);
    let m = vmm.base_memory();
    assert_eq!(
        (m.boot_size, m.hotplug_size, m.requested_size, m.plugged_size),
        (128 * MIB, 256 * MIB, 0, 0)
    );
    assert_eq!(m.region_addr, 4 << 30);
    vmm.resize_ram(128 * MIB + 192 * MIB).unwrap();
    assert_eq!(vmm.base_memory().requested_size, 192 * MIB);
    let e = vmm.resize_ram(1024 * MIB).unwrap_err().to_string();
    assert!(e.contains("outside"), "{e}");
    assert_eq!(
        vmm.base_memory().requested_size,
        192 * MIB,
        "a refused resize changes nothing"
    );
    vmm.resize_ram(128 * MIB).unwrap();
    assert_eq!(vmm.base_memory().requested_size, 0);
    let _ = vmm.wait_exit(Some(HANG_GUARD));
}

/// A port the tiny kernel never touches, and a device that records reads of it.
struct Probe(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl tagmem_vmm::BusDevice for Probe {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        data.fill(0x42);
    }
    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}

#[test]
fn extra_devices_join_the_buses_and_may_not_overlap_the_machines_own() {
    if !kvm_or_skip() {
        return;
    }
    use std::sync::{atomic::AtomicU64, Arc, Mutex};
    use tagmem_vmm::{DeviceWindow, ExtraDevice};
    let mut kernel = tempfile::NamedTempFile::new().unwrap();
    kernel
        .write_all(&mini_elf::build(0x100_0000, mini_elf::PRINT_CMDLINE_AND_RESET))
        .unwrap();
    let config = || {
        let mut c = VmmConfig {
            guest: GuestKind::Linux(LinuxBoot::new(kernel.path())),
            ..VmmConfig::default()
        };
        c.vm.boot_ram_size = 128 * MIB;
        c
    };
    let reads = Arc::new(AtomicU64::new(0));
    let probe = || ExtraDevice {
        window: DeviceWindow::Mmio {
            base: 0xd000_0000,
            len: 0x1000,
        },
        device: Arc::new(Mutex::new(Probe(reads.clone()))),
    };
    let vmm = Vmm::with_devices(config(), vec![probe()]).expect("start the VMM");
    let mut b = [0u8; 4];
    assert!(vmm.vm().bus().read(0xd000_0010, &mut b));
    assert_eq!(
        (b, reads.load(std::sync::atomic::Ordering::SeqCst)),
        ([0x42; 4], 1)
    );
    assert_eq!(vmm.wait_exit(Some(HANG_GUARD)).as_deref(), Some(RESET_REASON));

    let on_com1 = ExtraDevice {
        window: DeviceWindow::Pio { base: 0x3f8, len: 1 },
        device: Arc::new(Mutex::new(Probe(reads.clone()))),
    };
    let e = Vmm::with_devices(config(), vec![on_com1])
        .map(|_| ())
        .unwrap_err();
    assert!(e.to_string().contains("overlaps"), "{e}");
}

#[test]
fn a_running_linux_guest_refuses_test_commands_and_snapshots_instead_of_hanging() {
    if !kvm_or_skip() {
        return;
    }
    let mut kernel = tempfile::NamedTempFile::new().unwrap();
    kernel
        .write_all(&mini_elf::build(0x100_0000, mini_elf::PRINT_CMDLINE_AND_HALT))
        .unwrap();
    let mut config = VmmConfig {
        guest: GuestKind::Linux(LinuxBoot {
            cmdline: "up".into(),
            ..LinuxBoot::new(kernel.path())
        }),
        ..VmmConfig::default()
    };
    config.vm.boot_ram_size = 128 * MIB;
    let vmm = Vmm::new(config).expect("start the VMM");
    let console = vmm.vm().console().clone();
    assert!(console
        .wait_line(0, HANG_GUARD, |l| l.starts_with("up "))
        .is_some());
    // The vCPU sits in `hlt` inside KVM (in-kernel irqchip): it never parks for a snapshot.
    assert!(matches!(vmm.snapshot(), Err(tagmem_vmm::VmmError::NotParkable)));
    assert_eq!(vmm.guest_exited(), None, "the guest still runs");
    vmm.shutdown();
    assert_eq!(vmm.wait_exit(Some(HANG_GUARD)).as_deref(), Some("stopped"));
}

//! `tagmem-vmm run`: boots the test guest or a Linux kernel, offers `--tagged-memory`, serves
//! the control API, and runs until a signal or (Linux) a guest reset.

use crate::{kvm_check, Failure, RunArgs};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tagmem_rig::demo;
use tagmem_rig::TestGuestVm;
use tagmem_vmm::api::{ApiServer, ApiSocket, PreparedChain, TaggedMemoryControl};
use tagmem_vmm::boot::linux::DEFAULT_CMDLINE;
use tagmem_vmm::boot::{GuestKind, LinuxBoot};
use tagmem_vmm::config::{self, ApiSocketConfig, MemoryConfig, OptionError, Resolver, SerialOption};
use tagmem_vmm::layout;
use tagmem_vmm::runtime::{SerialConfig, Vmm, VmmConfig, RESET_REASON};

/// Parses and groups `--tagged-memory` values and opens their backings, one prepared chain per
/// tag group.
fn prepare(values: &[String], resolver: &Resolver) -> Result<Vec<PreparedChain>, Failure> {
    let (configs, chains) = config::parse_options(values)?;
    Ok(tagmem_host::prepare_chains(
        resolver,
        &configs,
        &chains,
        config::OPTION,
    )?)
}

/// Blocks SIGINT and SIGTERM in the calling thread (and the threads it starts), so they are
/// taken by [`wait_for_signal`] instead of killing the process.
fn block_signals() -> Result<libc::sigset_t, Failure> {
    // SAFETY: `sigset_t` is plain data; `sigemptyset` initialises it before any other use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, exclusively borrowed sigset_t; the signal numbers are valid; the
    // old-mask pointer is null, which pthread_sigmask allows.
    let rc = unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(Failure::runtime(format!(
            "blocking SIGINT/SIGTERM failed: {}",
            std::io::Error::from_raw_os_error(rc)
        )));
    }
    Ok(set)
}

/// Waits for one of the signals in `set` (blocked by [`block_signals`]); returns its number.
fn wait_for_signal(set: &libc::sigset_t) -> i32 {
    let mut sig: libc::c_int = 0;
    // SAFETY: `set` was initialised by `block_signals` and `sig` is a valid out pointer; both
    // outlive the call.
    unsafe { libc::sigwait(set, &mut sig) };
    sig
}

pub(crate) fn run(args: RunArgs) -> Result<(), Failure> {
    let memory = args
        .memory
        .as_deref()
        .map(MemoryConfig::parse)
        .transpose()
        .map_err(|e| Failure::usage(OptionError::new("--memory", e)))?
        .unwrap_or_default();
    memory
        .validate()
        .map_err(|e| Failure::usage(format!("--memory: {e}")))?;
    let serial = args
        .serial
        .as_deref()
        .map(SerialOption::parse)
        .transpose()
        .map_err(|e| Failure::usage(OptionError::new("--serial", e)))?
        .unwrap_or(SerialOption::Tty);
    for (option, path) in [("--kernel", &args.kernel), ("--initramfs", &args.initramfs)] {
        if let Some(p) = path {
            std::fs::metadata(p).map_err(|e| Failure::usage(format!("{option} {}: {e}", p.display())))?;
        }
    }
    let api_socket = args
        .api_socket
        .as_deref()
        .map(ApiSocketConfig::parse)
        .transpose()
        .map_err(|e| Failure::usage(OptionError::new("--api-socket", e)))?;
    let resolver = Resolver::new(&args.sysfs_root);
    let chains = prepare(&args.tagged_memory, &resolver)?;
    let socket = api_socket
        .map(|c| ApiSocket::bind_with_mode(&c.path, c.mode))
        .transpose()
        .map_err(Failure::usage)?;
    kvm_check()?;
    let signals = block_signals()?;

    let mut config = VmmConfig {
        hotplug_size: memory.hotplug_size,
        ..VmmConfig::default()
    };
    config.device.requested_size = memory.hotplugged_size;
    if let Some(kernel) = args.kernel {
        config.vm.boot_ram_size = memory.size.unwrap_or(DEFAULT_LINUX_RAM);
        config.guest = GuestKind::Linux(LinuxBoot {
            kernel,
            initramfs: args.initramfs,
            cmdline: args.cmdline.unwrap_or_else(|| DEFAULT_CMDLINE.to_string()),
            cpus: 1,
        });
        config.serial = match serial {
            SerialOption::Tty => SerialConfig::Tty,
            SerialOption::File(p) => SerialConfig::File(p),
            SerialOption::Null => SerialConfig::Null,
        };
        let vmm = Arc::new(Vmm::new(config).map_err(|e| Failure::runtime(format!("starting the VM: {e}")))?);
        return run_linux(vmm, chains, resolver, socket, &signals);
    }
    if let Some(size) = memory.size {
        config.vm.boot_ram_size = size;
    }
    // No kernel: the bundled test guest, which reports what its driver holds.
    let vmm = TestGuestVm::new(config).map_err(|e| Failure::runtime(format!("starting the VM: {e}")))?;
    vmm.wait_ready().map_err(Failure::runtime)?;
    let control = Arc::new(TaggedMemoryControl::new(vmm.vmm().clone(), resolver));
    for (i, chain) in chains.into_iter().enumerate() {
        let reply = control
            .offer(chain)
            .map_err(|e| Failure::runtime(format!("offering chain {i}: {e}")))?;
        for e in &reply.extents {
            println!(
                "offered {} (extent {}) at {:#x}, {}",
                e.id,
                e.extent_id,
                e.gpa,
                config::human_size(e.size)
            );
        }
    }
    vmm.guest_poll().map_err(Failure::runtime)?;
    let view = vmm.guest_view().map_err(Failure::runtime)?;
    println!("{}", demo::render_view(&view));
    if let Some(socket) = socket {
        let path = socket.path().to_path_buf();
        let server = ApiServer::new(socket, control.clone())
            .map_err(|e| Failure::runtime(format!("serving the API: {e}")))?;
        vmm.add_subscriber(Arc::new(Mutex::new(server)))
            .map_err(|e| Failure::runtime(format!("serving the API: {e}")))?;
        println!("API listening on {}", path.display());
    }
    println!("running; SIGINT or SIGTERM stops the VM");
    let sig = wait_for_signal(&signals);
    println!("signal {sig}: stopping");
    vmm.shutdown();
    Ok(())
}

/// Boot RAM of a Linux guest when `--memory size=` is not given (as Cloud Hypervisor's default).
const DEFAULT_LINUX_RAM: u64 = 512 * layout::MIB;

/// How long `--tagged-memory` offers to a Linux guest wait for its driver: as long as it runs.
const FOREVER: Duration = Duration::from_secs(u64::MAX / 4);

/// Runs a Linux guest until it resets or a signal comes. Standard output is the guest's serial
/// console, so the VMM's own messages go to standard error.
fn run_linux(
    vmm: Arc<Vmm>,
    chains: Vec<PreparedChain>,
    resolver: Resolver,
    socket: Option<ApiSocket>,
    signals: &libc::sigset_t,
) -> Result<(), Failure> {
    let control = Arc::new(TaggedMemoryControl::new(vmm.clone(), resolver));
    if let Some(socket) = socket {
        let path = socket.path().to_path_buf();
        let server = ApiServer::new(socket, control.clone())
            .map_err(|e| Failure::runtime(format!("serving the API: {e}")))?;
        vmm.add_subscriber(Arc::new(Mutex::new(server)))
            .map_err(|e| Failure::runtime(format!("serving the API: {e}")))?;
        eprintln!("tagmem-vmm: API listening on {}", path.display());
    }
    if !chains.is_empty() {
        eprintln!(
            "tagmem-vmm: --tagged-memory is offered once the guest's driver negotiates \
             VIRTIO_MEM_F_TAGGED_EXTENTS"
        );
        let (vmm, control) = (vmm.clone(), control.clone());
        std::thread::spawn(move || {
            if !vmm.wait_device_ready(FOREVER) {
                return;
            }
            for (i, chain) in chains.into_iter().enumerate() {
                match control.offer(chain) {
                    Ok(reply) => {
                        for e in &reply.extents {
                            eprintln!(
                                "tagmem-vmm: offered {} (extent {}) at {:#x}, {}",
                                e.id,
                                e.extent_id,
                                e.gpa,
                                config::human_size(e.size)
                            );
                        }
                    }
                    Err(e) => eprintln!("tagmem-vmm: offering chain {i}: {e}"),
                }
            }
        });
    }
    let raw = RawTerminal::enter(&vmm);
    let stopper = vmm.clone();
    let set = *signals;
    std::thread::spawn(move || {
        let sig = wait_for_signal(&set);
        eprintln!("tagmem-vmm: signal {sig}: stopping");
        stopper.shutdown();
    });
    let reason = vmm.wait_exit(None).unwrap_or_default();
    drop(raw);
    vmm.shutdown();
    eprintln!("tagmem-vmm: guest stopped: {reason}");
    let stats = vmm.exit_stats();
    eprintln!(
        "tagmem-vmm: {} exits, {} port accesses served, {} unhandled, {} MMIO accesses served, rip {:x?}",
        stats.exits,
        stats.pio_accesses,
        stats.unhandled_port_io,
        stats.bus_accesses,
        vmm.vcpu_rip()
    );
    if reason.starts_with("vCPU error") {
        return Err(Failure::runtime(reason));
    }
    if reason != RESET_REASON && reason != "stopped" {
        eprintln!("tagmem-vmm: (a triple fault is how a guest without reboot=k resets)");
    }
    Ok(())
}

/// Standard input typed into the guest's serial console, with a terminal in raw mode while the
/// guest runs (restored on drop).
struct RawTerminal {
    raw: bool,
}

impl RawTerminal {
    fn enter(vmm: &Vmm) -> Self {
        use vmm_sys_util::terminal::Terminal;
        let Some(input) = vmm.serial_handle() else {
            return RawTerminal { raw: false };
        };
        if vmm.config().serial != SerialConfig::Tty {
            return RawTerminal { raw: false };
        }
        let stdin = std::io::stdin();
        // SAFETY: isatty only inspects the descriptor.
        let tty = unsafe { libc::isatty(libc::STDIN_FILENO) } == 1;
        let raw = tty && stdin.lock().set_raw_mode().is_ok();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 256];
            let mut stdin = std::io::stdin();
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => input.push(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => return,
                }
            }
        });
        RawTerminal { raw }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        use vmm_sys_util::terminal::Terminal;
        if self.raw {
            let _ = std::io::stdin().lock().set_canon_mode();
        }
    }
}

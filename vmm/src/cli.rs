//! The command line: `tagmem-vmm run`, `tagmem-vmm client` (in the manner of `ch-remote`) and
//! `tagmem-vmm demo`. Option values are kept as text here and parsed by [`crate::config`], so every
//! malformed value is reported as `--option: key=value: reason` before a VM starts.

use crate::api::{self, ApiServer, ApiSocket, PreparedChain, ReleaseTaggedMemory, TaggedMemoryControl};
use crate::boot::linux::DEFAULT_CMDLINE;
use crate::boot::{GuestKind, LinuxBoot};
use crate::config::{
    self, ApiSocketConfig, MemoryConfig, OptionError, Resolver, SerialOption, TaggedMemoryConfig,
};
use crate::demo::{self, DemoOptions};
use crate::layout;
use crate::runtime::{SerialConfig, Vmm, VmmConfig, RESET_REASON};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;

const TAGGED_MEMORY_HELP: &str = "\
Tagged capacity to hot-add: one extent per option, repeatable. Options with the same
tag form one offer chain (one tag group), in command-line order; for shared=on their
order gives the sequence numbers.

Keys (comma-separated key=value, Cloud Hypervisor style):
  tag=<uuid>         the tag naming the capacity; omit (or nil) for untagged capacity
  path=<p>           backing: a regular or hugetlbfs file, a devdax device /dev/daxX.Y,
                     or the word memfd (anonymous, sparse). Without path=, untagged
                     capacity uses a memfd and a tag is looked up among the host's dax
                     devices
  size=<bytes>       K, M, G, T suffixes (powers of 1024); a non-zero multiple of 2 MiB.
                     Default: the rest of the backing after offset (files, devdax)
  offset=<bytes>     offset into the backing, 2 MiB aligned (default 0)
  shared=on|off      sharable capacity: needs a tag, never onlined as guest RAM
                     (default off)
  readonly=on|off    the guest may read but not write (default off)
  read_latency=<ns>, write_latency=<ns>, read_bandwidth=<MB/s>, write_bandwidth=<MB/s>
                     performance as Linux HMAT reports it. Default: the host's CPU
                     access values (access1) for a devdax backing: its node's, else its
                     CXL region's; else not reported
  node=<n>           guest NUMA node / proximity domain (default 0)
  id=<name>          the extent's name in API answers (default _tagmemN)

Examples (TAG=6f1c2a9e-0d3b-4c55-9a7e-3b1f00c0ffee):
  --tagged-memory size=64M
  --tagged-memory tag=6f1c2a9e-0d3b-4c55-9a7e-3b1f00c0ffee,path=memfd,size=4M,
                  read_latency=250,write_latency=300,read_bandwidth=20000,node=1
                  (one value; broken here only to fit the help)
  --tagged-memory tag=$TAG,path=/dev/dax0.0,offset=2M,size=1G,shared=on
  --tagged-memory tag=$TAG,path=/dev/hugepages/tm,size=2G,readonly=on,id=huge0
  --tagged-memory tag=$TAG    (no path=: the host's dax device carrying this tag)";

const API_SOCKET_HELP: &str = "\
Serve the HTTP/JSON control API on this Unix socket: path=<file> (a bare path works
too). Endpoints: PUT /api/v1/vm.add-tagged-memory, PUT /api/v1/vm.release-tagged-memory,
GET /api/v1/vm.tagged-memory, GET /api/v1/vmm.ping.

Keys:
  path=<file>        the socket; a stale socket there (nobody listening) is replaced,
                     anything else at the path is an error and left alone
  mode=0600|0660     permissions of the socket, whatever the umask: the owner only
                     (default) or owner and group. Whoever can connect can make the VMM
                     open and map files

Examples:
  --api-socket path=/tmp/tagmem.sock
  --api-socket path=/run/tagmem/vm0.sock,mode=0660
  curl --unix-socket /tmp/tagmem.sock http://localhost/api/v1/vm.tagged-memory";

const MEMORY_HELP: &str = "\
Guest RAM, Cloud Hypervisor style (comma-separated key=value, K, M, G suffixes):
  size=<bytes>             boot RAM, a multiple of 2 MiB (default 64M for the test
                           guest, 512M with --kernel)
  hotplug_size=<bytes>     a base virtio-mem region of this size at 4 GiB, a multiple
                           of 128 MiB, that the guest's virtio_mem driver plugs as the
                           host asks (client resize; PUT /api/v1/vm.resize)
  hotplugged_size=<bytes>  how much of it is requested from boot on (default 0)
Tagged capacity lives above the base region.

Examples:
  --memory size=128M
  --memory size=512M,hotplug_size=1G,hotplugged_size=256M";

const KERNEL_HELP: &str = "\
Boot this Linux kernel instead of the bundled test guest: an ELF vmlinux (preferred:
no decompression) or a bzImage. The VMM loads it with linux-loader, writes the e820
map, an MP table and the command line, and runs it on KVM's in-kernel irqchip with a
16550 serial console on COM1 (IRQ 4), the i8042 reset line, and the tagged
virtio-mem device on virtio-mmio (announced as virtio_mmio.device= on the command
line). The VMM exits when the guest reboots or resets (use reboot=k).

Example:
  tagmem-vmm run --kernel vmlinux --initramfs initramfs.cpio.gz \\
      --cmdline \"console=ttyS0 reboot=k panic=1\" --memory size=512M,hotplug_size=1G";

const CMDLINE_HELP: &str = "\
The kernel command line for --kernel (default \"console=ttyS0 reboot=k panic=1
8250.nr_uarts=1\"); the VMM appends one virtio_mmio.device= entry per device.";

const SERIAL_HELP: &str = "\
Where a Linux guest's serial console (ttyS0) goes: tty (standard output, and standard
input typed into the guest; the terminal is put in raw mode), file=<path>, or
null/off (default tty).";

const SYSFS_ROOT_HELP: &str = "\
Directory the host's sysfs and /dev are read below, to resolve a tag given without
path= and for the HMAT values of devdax backings (default /).

Example:
  --sysfs-root /";

const ABOUT: &str = "\
Reference VMM for tagged-capacity virtio-mem on KVM.

Runs the bundled bare-metal test guest with the tagged virtio-mem device on virtio-mmio,
hot-adds tagged extents from memfd, files or devdax, and controls them over an HTTP/JSON
API on a Unix socket (docs/interface.md).";

const EXAMPLES: &str = "\
Examples:
  tagmem-vmm demo
  tagmem-vmm run --api-socket path=/tmp/tagmem.sock --tagged-memory size=64M
  tagmem-vmm run --kernel vmlinux --initramfs initramfs.cpio.gz \\
      --memory size=512M,hotplug_size=1G --api-socket /tmp/tagmem.sock
  tagmem-vmm client --api-socket /tmp/tagmem.sock resize --desired-ram 1G
  tagmem-vmm client --api-socket /tmp/tagmem.sock add-tagged-memory \\
      tag=6f1c2a9e-0d3b-4c55-9a7e-3b1f00c0ffee,path=memfd,size=4M
  tagmem-vmm client --api-socket /tmp/tagmem.sock tagged-memory";

const DEMO_ABOUT: &str = "\
Boot a VM with the test guest and hot-add tagged extents: by default from memfd, an
untagged extent, a tagged group with HMAT-like metadata, a sharable group and a
read-only extent. The guest's driver accepts them; the host writes a pattern that the
guest reads back; metadata is updated, poison reported and one tag group released. The
guest's own view is printed before and after the release, with a timeline.

With --tagged-memory the given extents replace the built-in set; the first tag group
gets the metadata update and the last one is released. On real devdax, e.g.:
  tagmem-vmm demo --tagged-memory tag=$TAG,path=/dev/dax0.0,size=2G";

const CLIENT_SOCKET_HELP: &str = "\
The API socket of a running `tagmem-vmm run --api-socket path=<file>`: the file, or
path=<file>.

Example:
  --api-socket /tmp/tagmem.sock";

const ADD_ABOUT: &str = "\
Offer extents as one chain (PUT /api/v1/vm.add-tagged-memory). Each argument is one
extent in the --tagged-memory syntax (see run --help).

Example:
  tagmem-vmm client --api-socket /tmp/tagmem.sock add-tagged-memory \\
      tag=$TAG,path=memfd,size=4M,shared=on tag=$TAG,path=memfd,size=2M,shared=on";

const RELEASE_ABOUT: &str = "\
Ask the guest to release a tag group or an extent (PUT /api/v1/vm.release-tagged-memory).
Returns once the release was requested; the guest's driver gives the capacity back.

Examples:
  tagmem-vmm client --api-socket /tmp/tagmem.sock release-tagged-memory --tag $TAG
  tagmem-vmm client --api-socket /tmp/tagmem.sock release-tagged-memory --extent 3";

/// `tagmem-vmm`: reference VMM for tagged-capacity virtio-mem on KVM.
#[derive(Debug, Parser)]
#[command(
    name = "tagmem-vmm",
    version,
    about = "Reference VMM for tagged-capacity virtio-mem on KVM",
    long_about = ABOUT,
    after_help = EXAMPLES,
    term_width = 0
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: CliCommand,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum CliCommand {
    /// Boot the test guest or a Linux kernel and serve the control API until a signal or reset.
    Run(RunArgs),
    /// Talk to a running VMM over its API socket, like ch-remote.
    Client(ClientArgs),
    /// Boot, hot-add and release tagged extents, and print what the guest reports.
    #[command(long_about = DEMO_ABOUT)]
    Demo(DemoArgs),
}

/// Options of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Tagged capacity to hot-add at boot (repeatable; see --help).
    #[arg(long = "tagged-memory", value_name = "tag=..,path=..,size=..", long_help = TAGGED_MEMORY_HELP)]
    pub tagged_memory: Vec<String>,
    /// Serve the control API on a Unix socket: path=<file>[,mode=0600|0660].
    #[arg(long = "api-socket", value_name = "path=<file>,mode=..", long_help = API_SOCKET_HELP)]
    pub api_socket: Option<String>,
    /// Guest RAM: size=<bytes>[,hotplug_size=<bytes>][,hotplugged_size=<bytes>].
    #[arg(long = "memory", value_name = "size=<bytes>,...", long_help = MEMORY_HELP)]
    pub memory: Option<String>,
    /// Boot a Linux kernel (vmlinux or bzImage) instead of the test guest.
    #[arg(long = "kernel", value_name = "file", long_help = KERNEL_HELP)]
    pub kernel: Option<PathBuf>,
    /// An initramfs for --kernel.
    #[arg(long = "initramfs", value_name = "file", requires = "kernel")]
    pub initramfs: Option<PathBuf>,
    /// The kernel command line for --kernel; the VMM appends virtio_mmio.device= entries.
    #[arg(long = "cmdline", value_name = "string", requires = "kernel", long_help = CMDLINE_HELP)]
    pub cmdline: Option<String>,
    /// A Linux guest's serial console: tty, file=<path>, null or off.
    #[arg(long = "serial", value_name = "tty|file=<path>|null", requires = "kernel", long_help = SERIAL_HELP)]
    pub serial: Option<String>,
    /// Where host sysfs is read for tag lookups and HMAT values.
    #[arg(long = "sysfs-root", value_name = "dir", default_value = "/", long_help = SYSFS_ROOT_HELP)]
    pub sysfs_root: PathBuf,
}

/// Options of `demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Extents to use instead of the built-in memfd set (repeatable; see --help).
    #[arg(long = "tagged-memory", value_name = "tag=..,path=..,size=..", long_help = TAGGED_MEMORY_HELP)]
    pub tagged_memory: Vec<String>,
    /// Where host sysfs is read for tag lookups and HMAT values.
    #[arg(long = "sysfs-root", value_name = "dir", default_value = "/", long_help = SYSFS_ROOT_HELP)]
    pub sysfs_root: PathBuf,
}

/// Options of `client`.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The VMM's API socket: <file> or path=<file>.
    #[arg(long = "api-socket", value_name = "path", long_help = CLIENT_SOCKET_HELP)]
    pub api_socket: String,
    /// The request.
    #[command(subcommand)]
    pub request: ClientRequest,
}

/// Requests of `client`.
#[derive(Debug, Subcommand)]
pub enum ClientRequest {
    /// Check that the VMM answers (GET /api/v1/vmm.ping).
    Ping,
    /// Offer extents as one chain (PUT /api/v1/vm.add-tagged-memory).
    #[command(long_about = ADD_ABOUT)]
    AddTaggedMemory {
        /// Extents: tag=<uuid>,path=<file|/dev/daxX.Y|memfd>,size=<bytes>,... (see run --help).
        #[arg(required = true, value_name = "tag=..,path=..,size=..")]
        extents: Vec<String>,
    },
    /// Ask the guest to release a tag group or an extent (PUT /api/v1/vm.release-tagged-memory).
    #[command(long_about = RELEASE_ABOUT)]
    ReleaseTaggedMemory {
        /// Release every extent carrying this tag.
        #[arg(
            long,
            value_name = "uuid",
            conflicts_with = "extent",
            required_unless_present = "extent"
        )]
        tag: Option<String>,
        /// Release this extent (for tagged capacity: its whole tag group).
        #[arg(long, value_name = "id")]
        extent: Option<String>,
    },
    /// Print the extent table (GET /api/v1/vm.tagged-memory).
    TaggedMemory,
    /// Resize the guest's RAM through the base virtio-mem region (PUT /api/v1/vm.resize).
    Resize {
        /// Total guest RAM wanted, boot RAM included (K, M, G suffixes), as ch-remote's.
        #[arg(long = "desired-ram", value_name = "bytes")]
        desired_ram: String,
    },
    /// Print the base virtio-mem region's sizes (GET /api/v1/vm.memory).
    Memory,
}

/// A failure of a subcommand, with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    /// What went wrong, already naming the option or request at fault.
    pub message: String,
    /// 2 for bad command-line values, 1 otherwise.
    pub code: u8,
}

impl Failure {
    /// A bad command-line value (exit code 2).
    pub fn usage(message: impl ToString) -> Self {
        Failure {
            message: message.to_string(),
            code: 2,
        }
    }

    /// A failure while running (exit code 1).
    pub fn runtime(message: impl ToString) -> Self {
        Failure {
            message: message.to_string(),
            code: 1,
        }
    }
}

impl From<OptionError> for Failure {
    fn from(e: OptionError) -> Self {
        if e.error.is_host_failure() {
            Failure::runtime(e.with_causes())
        } else {
            Failure::usage(e)
        }
    }
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        CliCommand::Run(args) => run(args),
        CliCommand::Client(args) => client(args),
        CliCommand::Demo(args) => demo_command(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("tagmem-vmm: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

/// Parses and groups `--tagged-memory` values and opens their backings, one prepared chain per
/// tag group.
fn prepare(values: &[String], resolver: &Resolver) -> Result<Vec<PreparedChain>, Failure> {
    let (configs, chains) = config::parse_options(values)?;
    let mut prepared = Vec::with_capacity(chains.len());
    for chain in &chains {
        let members: Vec<TaggedMemoryConfig> = chain.iter().map(|&i| configs[i].clone()).collect();
        prepared.push(PreparedChain::prepare(resolver, &members, config::OPTION)?);
    }
    Ok(prepared)
}

fn kvm_check() -> Result<(), Failure> {
    match crate::vm::kvm_unavailable() {
        Some(reason) => Err(Failure::runtime(format!("KVM is not available: {reason}"))),
        None => Ok(()),
    }
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

fn run(args: RunArgs) -> Result<(), Failure> {
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
    let vmm = Arc::new(Vmm::new(config).map_err(|e| Failure::runtime(format!("starting the VM: {e}")))?);
    vmm.wait_ready().map_err(Failure::runtime)?;
    let control = Arc::new(TaggedMemoryControl::new(vmm.clone(), resolver));
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

fn client(args: ClientArgs) -> Result<(), Failure> {
    let socket = ApiSocketConfig::parse(&args.api_socket)
        .map_err(|e| Failure::usage(OptionError::new("--api-socket", e)))?
        .path;
    let (method, path, body) = match &args.request {
        ClientRequest::Ping => ("GET", api::PING, None),
        ClientRequest::TaggedMemory => ("GET", api::TAGGED_MEMORY, None),
        ClientRequest::Memory => ("GET", api::MEMORY, None),
        ClientRequest::Resize { desired_ram } => {
            let desired_ram = config::parse_size("desired_ram", desired_ram)
                .map_err(|e| Failure::usage(OptionError::new("--desired-ram", e)))?;
            let body = serde_json::to_string(&api::VmResize { desired_ram })
                .map_err(|e| Failure::runtime(format!("encoding the request: {e}")))?;
            ("PUT", api::RESIZE, Some(body))
        }
        ClientRequest::AddTaggedMemory { extents } => {
            let configs = extents
                .iter()
                .map(|s| TaggedMemoryConfig::parse(s))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Failure::usage(OptionError::new("add-tagged-memory", e)))?;
            let body = serde_json::to_string(&api::AddTaggedMemory { extents: configs })
                .map_err(|e| Failure::runtime(format!("encoding the request: {e}")))?;
            ("PUT", api::ADD_TAGGED_MEMORY, Some(body))
        }
        ClientRequest::ReleaseTaggedMemory { tag, extent } => {
            let req = match (tag, extent) {
                (Some(t), _) => ReleaseTaggedMemory {
                    tag: Some(
                        Uuid::parse_str(t).map_err(|_| Failure::usage(format!("--tag {t}: not a UUID")))?,
                    ),
                    extent_id: None,
                },
                (None, Some(n)) => ReleaseTaggedMemory {
                    tag: None,
                    extent_id: Some(n.parse().map_err(|_| {
                        Failure::usage(format!("--extent {n}: not an extent id (a decimal number)"))
                    })?),
                },
                (None, None) => return Err(Failure::usage("give --tag or --extent")),
            };
            let body = serde_json::to_string(&req)
                .map_err(|e| Failure::runtime(format!("encoding the request: {e}")))?;
            ("PUT", api::RELEASE_TAGGED_MEMORY, Some(body))
        }
    };
    let (status, answer) = api::call(&socket, method, path, body.as_deref()).map_err(Failure::runtime)?;
    if (200..300).contains(&status) {
        if !answer.is_empty() {
            println!("{}", api::indent_json(&answer));
        }
        Ok(())
    } else {
        let message = serde_json::from_str::<serde_json::Value>(&answer)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or(answer);
        Err(Failure::runtime(format!("{path}: {status}: {message}")))
    }
}

fn demo_command(args: DemoArgs) -> Result<(), Failure> {
    let resolver = Resolver::new(&args.sysfs_root);
    let options = if args.tagged_memory.is_empty() {
        DemoOptions::builtin()
    } else {
        DemoOptions::from_options(&args.tagged_memory)?
    };
    // Check every extent (and open its backing) before the VM starts.
    let chains = options.prepare(&resolver)?;
    kvm_check()?;
    demo::run(options, chains, resolver, &mut std::io::stdout())
        .map(|_| ())
        .map_err(Failure::runtime)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn help_explains_every_key_with_examples() {
        let mut cmd = Cli::command();
        let run = cmd.find_subcommand_mut("run").unwrap();
        let help = run.render_long_help().to_string();
        for key in config::KEYS {
            assert!(help.contains(&format!("{key}=")), "run --help lacks {key}=");
        }
        for example in [
            "--tagged-memory size=64M",
            "--api-socket path=/tmp/tagmem.sock",
            "--api-socket path=/run/tagmem/vm0.sock,mode=0660",
            "--memory size=128M",
        ] {
            assert!(help.contains(example), "run --help lacks {example}");
        }
    }

    #[test]
    fn client_release_needs_exactly_one_target() {
        let parse = |args: &[&str]| Cli::try_parse_from(args.iter().copied());
        assert!(parse(&[
            "tagmem-vmm",
            "client",
            "--api-socket",
            "s",
            "release-tagged-memory"
        ])
        .is_err());
        assert!(parse(&[
            "tagmem-vmm",
            "client",
            "--api-socket",
            "s",
            "release-tagged-memory",
            "--tag",
            "x",
            "--extent",
            "1"
        ])
        .is_err());
        assert!(parse(&[
            "tagmem-vmm",
            "client",
            "--api-socket",
            "s",
            "release-tagged-memory",
            "--extent",
            "1"
        ])
        .is_ok());
    }
}

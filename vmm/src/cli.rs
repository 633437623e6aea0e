//! The command line: `tagmem-vmm run`, `tagmem-vmm client` (in the manner of `ch-remote`) and
//! `tagmem-vmm demo`. Option values are kept as text here and parsed by [`crate::config`], so every
//! malformed value is reported as `--option: key=value: reason` before a VM starts.

use crate::api::{self, ApiServer, ApiSocket, PreparedChain, ReleaseTaggedMemory, TaggedMemoryControl};
use crate::config::{self, ApiSocketConfig, MemoryConfig, OptionError, Resolver, TaggedMemoryConfig};
use crate::demo::{self, DemoOptions};
use crate::runtime::{Vmm, VmmConfig};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
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
Boot RAM of the VM: size=<bytes> with K, M, G suffixes, a multiple of 2 MiB (default
64M). It holds the test guest; tagged capacity lives above 4 GiB.

Example:
  --memory size=128M";

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
    /// Boot the test guest with tagged capacity and serve the control API until SIGINT/SIGTERM.
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
    /// Boot RAM: size=<bytes>.
    #[arg(long = "memory", value_name = "size=<bytes>", long_help = MEMORY_HELP)]
    pub memory: Option<String>,
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
        .map_err(|e| Failure::usage(OptionError::new("--memory", e)))?;
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

    let mut config = VmmConfig::default();
    if let Some(m) = memory {
        config.vm.boot_ram_size = m.size;
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

fn client(args: ClientArgs) -> Result<(), Failure> {
    let socket = ApiSocketConfig::parse(&args.api_socket)
        .map_err(|e| Failure::usage(OptionError::new("--api-socket", e)))?
        .path;
    let (method, path, body) = match &args.request {
        ClientRequest::Ping => ("GET", api::PING, None),
        ClientRequest::TaggedMemory => ("GET", api::TAGGED_MEMORY, None),
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

//! `tagmem-vmm`: the reference VMM's command line — `tagmem-vmm run`, `tagmem-vmm client` (in
//! the manner of `ch-remote`) and `tagmem-vmm demo`. Option values are kept as text here and
//! parsed by [`tagmem_vmm::config`], so every malformed value is reported as
//! `--option: key=value: reason` before a VM starts.
//!
//! The VMM itself is the `tagmem_vmm` library; without `--kernel`, `run` boots the bundled test
//! guest and `demo` runs the life cycle through it, both from the test rig (`tagmem_rig`).

mod client;
mod help;
mod run;

use clap::{Args, Parser, Subcommand};
use help::*;
use std::path::PathBuf;
use std::process::ExitCode;
use tagmem_rig::demo::{self, DemoOptions};
use tagmem_vmm::config::{OptionError, Resolver};

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
fn main() -> ExitCode {
    // The library's diagnostics, as `tagmem-vmm: <message>` lines on standard error.
    let _ = tagmem_vmm::logger::StderrLogger::install();
    let cli = Cli::parse();
    let result = match cli.command {
        CliCommand::Run(args) => run::run(args),
        CliCommand::Client(args) => client::client(args),
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

/// Fails unless `/dev/kvm` can be used, saying why.
pub(crate) fn kvm_check() -> Result<(), Failure> {
    match tagmem_vmm::kvm_unavailable() {
        Some(reason) => Err(Failure::runtime(format!("KVM is not available: {reason}"))),
        None => Ok(()),
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
        for key in tagmem_vmm::config::KEYS {
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

//! `tagmem`: list dax capacity and find the device holding a tag.
//!
//! Exit status: 0 on success, 1 when `lookup` finds no capacity with the tag (claimed or not), 2
//! on a usage error or when the system's devices cannot be read.

use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tagmem_lookup::{list, lookup, output, Found, SysfsSource};
use uuid::Uuid;

/// Find tagged memory capacity (CXL Dynamic Capacity, HBM, devdax, tagged virtio-mem) by tag.
#[derive(Parser)]
#[command(name = "tagmem", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List dax devices with their tag, geometry, extents and performance, then the capacity
    /// dynamic-capacity regions hold unclaimed.
    List {
        #[command(flatten)]
        common: Common,
        /// Include devices of size 0 (region seeds), as `daxctl list -i` does.
        #[arg(short = 'i', long)]
        idle: bool,
    },
    /// Show the device holding capacity tagged UUID, or the region holding it unclaimed; exit 1
    /// if there is neither.
    Lookup {
        /// The tag, as a UUID (e.g. 6f1c2a9e-0d3b-4c55-9a7e-3b1f00c0ffee).
        #[arg(value_name = "UUID")]
        uuid: Uuid,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Args)]
struct Common {
    /// Directory holding the `sys/` (and `dev/`) tree to read.
    #[arg(long, value_name = "DIR", default_value = "/")]
    sysfs_root: PathBuf,
    /// Print JSON (the default when stdout is not a terminal).
    #[arg(long, conflicts_with = "human")]
    json: bool,
    /// Print a table (the default when stdout is a terminal).
    #[arg(long)]
    human: bool,
}

impl Common {
    fn render(&self, found: &Found) -> String {
        let human = self.human || (!self.json && io::stdout().is_terminal());
        if human {
            output::found_table(found)
        } else {
            output::found_json_string(found)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, String> {
    let (common, found) = match cli.command {
        Command::List { common, idle } => {
            let source = SysfsSource::new(&common.sysfs_root);
            let mut found = list(&source).map_err(|e| e.to_string())?;
            if !idle {
                found.devices.retain(|d| d.size != 0);
            }
            (common, found)
        }
        Command::Lookup { uuid, common } => {
            let source = SysfsSource::new(&common.sysfs_root);
            let found = lookup(&source, &uuid).map_err(|e| e.to_string())?;
            if found.is_empty() {
                let why = if uuid.is_nil() {
                    " (the nil UUID marks untagged capacity and matches no device; use `tagmem list`)"
                } else {
                    ""
                };
                eprintln!("tagmem: no device has tag {uuid} and no region holds it{why}");
                return Ok(ExitCode::from(1));
            }
            (common, found)
        }
    };
    io::stdout()
        .write_all(common.render(&found).as_bytes())
        .map_err(|e| format!("writing to stdout: {e}"))?;
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("tagmem: {msg}");
            ExitCode::from(2)
        }
    }
}

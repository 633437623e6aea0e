//! `tagmem-vmm`: the reference VMM's command line (see `tagmem-vmm --help`).

use std::process::ExitCode;

fn main() -> ExitCode {
    tagmem_vmm::cli::main()
}

//! `tagmem-vmm`: for now only boots the bundled test guest as a smoke check of KVM on this host.

use std::process::ExitCode;
use tagmem_vmm::test_guest::{Command, TestGuest};
use tagmem_vmm::{kvm_unavailable, VmConfig};

fn main() -> ExitCode {
    if let Some(reason) = kvm_unavailable() {
        eprintln!("tagmem-vmm: KVM not available: {reason}");
        return ExitCode::FAILURE;
    }
    let result = TestGuest::boot(VmConfig::default()).and_then(|mut g| {
        g.command(Command::Stop)?;
        Ok(g.console_lines())
    });
    match result {
        Ok(lines) => {
            for l in lines {
                println!("{l}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tagmem-vmm: {e}");
            ExitCode::FAILURE
        }
    }
}

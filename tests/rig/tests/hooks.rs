//! The VMM's generic hooks as the rig uses them, with the test guest: exit hooks run once the
//! vCPU thread ends (and at once when registered afterwards), and a command after the end fails
//! with the reason. Skipped without `/dev/kvm`.

mod common;

use common::*;
use std::sync::mpsc;
use tagmem_rig::GuestError;
use tagmem_vmm::VmmConfig;

#[test]
fn exit_hooks_run_when_the_vcpu_thread_ends_and_at_once_afterwards() {
    let Some(vmm) = vmm_or_skip(VmmConfig::default()) else {
        return;
    };
    let (tx, rx) = mpsc::channel();
    let before = tx.clone();
    vmm.on_exit(move |reason| before.send(("before", reason.to_string())).unwrap());
    assert!(rx.try_recv().is_err(), "the guest still runs");
    vmm.shutdown();
    assert_eq!(rx.recv().unwrap(), ("before", "stopped".to_string()));
    vmm.on_exit(move |reason| tx.send(("after", reason.to_string())).unwrap());
    assert_eq!(rx.try_recv().unwrap(), ("after", "stopped".to_string()));
    assert!(matches!(
        vmm.guest_poll(),
        Err(GuestError::Stopped { reason, .. }) if reason == "stopped"
    ));
}

//! 1,000 extents are offered, accepted by the guest's driver and released through it, each on a
//! memfd of its own, with no leaked memslot, host mapping or file descriptor. Kept in its own
//! test binary so no other test changes the process's maps or descriptors meanwhile.

mod common;

use common::*;
use tagmem_device::{HostEvent, SourceId, Target};
use tagmem_rig::TestGuestVm;
use tagmem_vmm::{BackingLifetime, VmmConfig};
use uuid::Uuid;

/// Offers extent `i` on a fresh per-extent memfd, lets the guest accept it, has the host ask for
/// it back and the guest release it; checks the guest saw the bytes when `probe`.
fn cycle(vmm: &TestGuestVm, i: u64, probe: bool) {
    let len = 2 * MIB;
    let id = 1000 + i;
    let gpa = 4 * GIB + (i % 8) * 4 * MIB;
    let tag = Uuid::from_u128(u128::from(id));
    let head = [u8::try_from(i % 200).unwrap() + 1; 64];
    vmm_memfd(vmm, id, len, &head, BackingLifetime::PerExtent);
    let r = vmm.offer(&[spec(tag, id, gpa, len)]).expect("offer");
    vmm.guest_poll().expect("guest accepts");
    assert_eq!(vmm.slots().len(), 1, "iteration {i}: {:?}", vmm.slots());
    if probe {
        let (sum, _) = vmm.guest_read(gpa, 64).unwrap();
        assert_eq!(sum, u64::from(head[0]) * 64, "iteration {i}");
    }
    vmm.request_release(Target::Tag(tag)).expect("release request");
    vmm.guest_poll().expect("guest releases");
    let events = vmm.take_host_events();
    assert!(
        events.iter().any(|e| matches!(e,
            HostEvent::Released { extents } if extents.iter().any(|(x, _)| *x == r.extents[0].0))),
        "iteration {i}: {events:?}"
    );
    assert!(vmm.slots().is_empty(), "iteration {i}: {:?}", vmm.slots());
    assert!(
        !vmm.has_backing(SourceId(id)),
        "iteration {i}: backing still open"
    );
}

#[test]
fn thousand_extents_through_the_guest_driver_leak_nothing() {
    let Some(vmm) = vmm_or_skip(VmmConfig::default()) else {
        return;
    };
    // Quiet driver log: the guest counts its events instead of printing each.
    vmm.guest_command(tagmem_rig::Command::Verbose(false)).unwrap();
    // Warm up: one full cycle, so lazily created state exists already.
    cycle(&vmm, 0, true);
    let (maps, fds) = (count_maps(), count_fds());
    for i in 1..=1000 {
        cycle(&vmm, i, i % 100 == 0);
    }
    assert!(vmm.extents().is_empty());
    assert!(vmm.slots().is_empty());
    let view = vmm.guest_view().unwrap();
    assert!(view.devices.is_empty() && view.unclaimed.is_empty(), "{view:?}");
    assert_eq!(count_maps(), maps, "host mappings leaked");
    assert_eq!(count_fds(), fds, "file descriptors leaked");
}

//! A guest's capacity as its driver reports it ([`crate::TestGuestVm::guest_extents`]), laid out
//! as a Linux guest's sysfs shows it, for [`tagmem_lookup::lookup`].

use super::types::{ViewError, GUEST_NUMA_NODE};
use crate::guest::TestGuestVm;
use crate::view::ExtentDetail;
use tagmem_lookup::{DaxDevice, DriverDevice, DriverExtent, Found, Poison};

/// Groups a guest driver's extent report into its claimed devices (in report order: the driver
/// lists devices in claim order) and its unclaimed groups (one per tag, one per untagged extent,
/// in acceptance order; `name` empty).
pub fn driver_groups(details: &[ExtentDetail]) -> (Vec<DriverDevice>, Vec<DriverDevice>) {
    let mut devices: Vec<DriverDevice> = Vec::new();
    let mut unclaimed: Vec<DriverDevice> = Vec::new();
    for e in details {
        let extent = DriverExtent {
            id: e.id,
            start: e.gpa,
            length: e.len,
            flags: e.flags,
            seq: e.seq,
            node: e.node,
            source: e.class,
            perf: tagmem_lookup::Perf::from_record(
                e.read_latency_ns,
                e.write_latency_ns,
                e.read_bandwidth_mbps,
                e.write_bandwidth_mbps,
            ),
            poison: e
                .poison
                .iter()
                .map(|&(offset, length)| Poison { offset, length })
                .collect(),
        };
        // Unclaimed: a tag group collects its extents; every untagged extent stands alone.
        let list = if e.device.is_some() {
            &mut devices
        } else {
            &mut unclaimed
        };
        let same = |d: &DriverDevice| match &e.device {
            Some(name) => d.name == *name,
            None => !e.uuid.is_nil() && d.uuid == e.uuid,
        };
        match list.iter_mut().find(|d| same(d)) {
            Some(d) => d.extents.push(extent),
            None => list.push(DriverDevice {
                name: e.device.clone().unwrap_or_default(),
                uuid: e.uuid,
                extents: vec![extent],
            }),
        }
    }
    (devices, unclaimed)
}

/// Region name of the reference driver's tagged device (`tagmem_driver::REGION`).
pub const GUEST_REGION: &str = "region0";

/// A guest's capacity as its driver reports it, laid out as a Linux guest's sysfs shows it: the
/// claimed devices ([`DriverDevice::to_dax`], with [`GUEST_NUMA_NODE`] as `numa_node`) and the
/// capacity its region holds unclaimed ([`DriverDevice::to_unclaimed`]).
pub fn guest_capacity(vmm: &TestGuestVm) -> Result<Found, ViewError> {
    let details = vmm.guest_extents()?;
    capacity_of(&details)
}

pub(super) fn capacity_of(details: &[ExtentDetail]) -> Result<Found, ViewError> {
    let (devices, unclaimed) = driver_groups(details);
    Ok(Found {
        devices: devices
            .iter()
            .map(|d| d.to_dax(Some(GUEST_NUMA_NODE)))
            .collect::<Result<_, _>>()?,
        unclaimed: unclaimed
            .iter()
            .map(|d| d.to_unclaimed(GUEST_REGION))
            .collect::<Result<_, _>>()?,
    })
}

/// A guest's claimed dax devices (the `devices` of [`guest_capacity`]).
pub fn guest_dax_devices(vmm: &TestGuestVm) -> Result<Vec<DaxDevice>, ViewError> {
    Ok(guest_capacity(vmm)?.devices)
}

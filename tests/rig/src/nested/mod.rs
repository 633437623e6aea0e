//! Nested pass-through (SPEC.md T-NEST): an L1 VMM offering VM "L2" the capacity that its own
//! guest, VM "L1", accepted from L0.
//!
//! [`NestedPassthrough`] is the L1 VMM's part. It holds two runtimes: `l1`, the VM whose tagged
//! device L0 drives (its guest's driver accepts L0's offers), and `l2`, the VM whose tagged device
//! the L1 VMM drives. For a tag it:
//! 1. reads the L1 guest driver's report ([`crate::TestGuestVm::guest_extents`]), turns it into dax devices and
//!    unclaimed capacity ([`tagmem_lookup::DriverDevice::to_dax`], `to_unclaimed`) and resolves
//!    the tag with [`tagmem_lookup::lookup`], as a lookup on bare metal or in a Linux guest does.
//!    Capacity L1 accepted but has not claimed is refused ([`NestedError::Unclaimed`]): as on a
//!    DCD host, only a claimed dax device (`daxctl create-device --uuid`, [`crate::TestGuestVm::guest_claim`])
//!    can be opened and passed on;
//! 2. marks the group busy in the L1 guest's driver (T-NEST-2), so a release request from L0 is
//!    answered RELEASE_BUSY while L2 holds the capacity;
//! 3. offers L2 one extent per L1 extent, in `seq` order, copying tag, flags, `seq`, performance,
//!    node and source class (T-NEST-1). Each L2 extent is backed by the L1 guest-physical range of
//!    its L1 extent: the component resolves that range through L0's memslot mapper to the host
//!    backing and offset behind it and registers a duplicate of that descriptor with L2's mapper,
//!    so L0, L1 and L2 share the same host pages. With [`Placement::PreserveAddresses`] (the
//!    default) an L2 extent is placed at the L1 extent's guest-physical address when that range
//!    lies in L2's tagged window, so the `mappings` a lookup reports are the same at every level.
//!
//! [`NestedPassthrough::cascade_releases`] carries out T-NEST-3: when L0's release request has
//! reached the L1 guest's driver (which answered RELEASE_BUSY because the group is busy), it
//! requests release from L2's device, waits for L2's `Released` event (L1's device has unmapped
//! the capacity from L2 by then), and only then has the L1 guest's driver release the group to L0.
//!
//! What this models and what it does not: KVM here cannot run a VM inside a VM, so both VMs are
//! real KVM VMs of one host process and the "L1 VMM" is this component in that process. The L1
//! guest-physical view is the one the L1 guest's driver reports; a real L1 VMM would `mmap` the L1
//! guest's `/dev/daxX.Y` and hand that mapping to its KVM, which ends in the same host pages that
//! the descriptor and offset used here name. The L1 VMM learns of release requests by asking the
//! L1 guest (a poll), not from a kernel notification; likewise metadata and poison reach L2 when
//! [`NestedPassthrough::forward_updates`] polls the L1 guest (T-NEST-4).

mod capacity;
mod passthrough;
mod types;

pub use capacity::{driver_groups, guest_capacity, guest_dax_devices, GUEST_REGION};
pub use passthrough::NestedPassthrough;
pub use types::{
    CascadeStep, Forwarded, NestedError, NestedOffer, PassedExtent, Placement, ViewError,
    DEFAULT_L2_SOURCE_BASE, GUEST_NUMA_NODE,
};

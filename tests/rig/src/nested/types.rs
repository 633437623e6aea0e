//! What the nested pass-through reports: its errors, what it passed to L2, the steps of a release
//! cascade and the updates it forwarded.

use crate::guest::GuestError;
use std::time::Duration;
use tagmem_device::{ControlError, Perf, SourceId};
use tagmem_lookup::LookupError;
use uuid::Uuid;

/// `numa_node` a test guest's dax bus would report: the guest has no SRAT, so node 0 is its only
/// online node and the nearest one to any target node.
pub const GUEST_NUMA_NODE: i32 = 0;

/// First [`SourceId`] the component registers L2 backings under (the caller's own stay below).
pub const DEFAULT_L2_SOURCE_BASE: u64 = 0x4e00_0000;

/// Why a guest's dax devices could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    /// The guest did not report its extents.
    #[error("reading the guest driver's extents: {0}")]
    Guest(#[from] GuestError),
    /// The report does not form valid devices.
    #[error("building dax devices from the guest driver's extents: {0}")]
    Lookup(#[from] LookupError),
}

/// Errors of the nested pass-through; each names the tag.
#[derive(Debug, thiserror::Error)]
pub enum NestedError {
    /// The L1 guest holds no device with this tag (L0 never gave it to L1, or it was released).
    #[error("tag {0}: the L1 guest holds no capacity with this tag; nothing offered to L2")]
    TagNotPresent(Uuid),
    /// The L1 guest accepted the capacity but has not claimed it into a dax device.
    #[error("tag {tag}: the L1 guest holds it unclaimed in {region}; claim it there first ({claim}); nothing offered to L2")]
    Unclaimed {
        /// The tag.
        tag: Uuid,
        /// The L1 guest's region holding it.
        region: String,
        /// The command that claims it in the L1 guest.
        claim: String,
    },
    /// The L1 guest's lookup finds several devices with this tag.
    #[error("tag {tag}: the L1 guest reports {count} devices with this tag; nothing offered to L2")]
    TagAmbiguous {
        /// The tag.
        tag: Uuid,
        /// Devices found.
        count: usize,
    },
    /// L0 asked for the group back already; it must not be passed on (T-NEST-1).
    #[error("tag {0}: L0 has requested its release from L1; nothing offered to L2")]
    ReleaseRequested(Uuid),
    /// The tag is passed through to L2 already.
    #[error("tag {0}: already passed through to L2")]
    AlreadyPassed(Uuid),
    /// The tag is not passed through to L2.
    #[error("tag {0}: not passed through to L2")]
    NotPassed(Uuid),
    /// Reading the L1 or L2 guest's view failed.
    #[error("tag {tag}: {level} view: {source}")]
    View {
        /// The tag.
        tag: Uuid,
        /// `L1` or `L2`.
        level: &'static str,
        /// What failed.
        #[source]
        source: ViewError,
    },
    /// An L1 extent's guest-physical range is not (wholly) backed by one L0 host backing.
    #[error("tag {tag}: extent {extent} (L1 {gpa:#x}+{len:#x}) is not backed by one L0 host backing")]
    Unbacked {
        /// The tag.
        tag: Uuid,
        /// L1 extent id.
        extent: u64,
        /// L1 guest-physical start.
        gpa: u64,
        /// Length.
        len: u64,
    },
    /// Duplicating or registering the host backing for L2 failed.
    #[error("tag {tag}: giving L0 backing {l0_source:?} to L2: {reason}")]
    Backing {
        /// The tag.
        tag: Uuid,
        /// The L0 backing.
        l0_source: SourceId,
        /// What failed.
        reason: String,
    },
    /// A command to the L1 or L2 guest failed.
    #[error("tag {tag}: {level} guest: {source}")]
    Guest {
        /// The tag.
        tag: Uuid,
        /// `L1` or `L2`.
        level: &'static str,
        /// What failed.
        #[source]
        source: GuestError,
    },
    /// The L1 guest's driver did not take or drop the busy mark.
    #[error("tag {0}: the L1 guest's driver refused to mark it busy or idle")]
    BusyRefused(Uuid),
    /// L2's device refused the offer or the release request.
    #[error("tag {tag}: L2's device: {source}")]
    Control {
        /// The tag.
        tag: Uuid,
        /// The device's error.
        #[source]
        source: ControlError,
    },
    /// L2 accepted none of the chain (rejected or dropped); L1 keeps the capacity (T-NEST-5).
    #[error("tag {tag}: L2 took none of chain {chain_id}: {reason}")]
    L2Refused {
        /// The tag.
        tag: Uuid,
        /// L2 chain id.
        chain_id: u64,
        /// Rejection or drop reason.
        reason: String,
    },
    /// No answer from L2 in time.
    #[error("tag {tag}: L2 did not {what} within {timeout:?}")]
    L2Timeout {
        /// The tag.
        tag: Uuid,
        /// What L2 was expected to do.
        what: &'static str,
        /// The time allowed.
        timeout: Duration,
    },
    /// L2 released the group but L1's device still maps part of it into L2.
    #[error("tag {tag}: L2 released extents {extents:?} but they are still mapped into L2")]
    StillMapped {
        /// The tag.
        tag: Uuid,
        /// L2 extent ids.
        extents: Vec<u64>,
    },
}

/// Where L2 extents go in L2's guest-physical space.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Placement {
    /// At the L1 extent's guest-physical address when it lies in L2's tagged window, else where
    /// L2's device chooses.
    #[default]
    PreserveAddresses,
    /// Where L2's device chooses.
    DeviceChooses,
}

/// What [`crate::nested::NestedPassthrough::offer_tag`] passed to L2.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NestedOffer {
    /// The tag.
    pub tag: Uuid,
    /// L2 chain id.
    pub chain_id: u64,
    /// The extents, in `seq` order.
    pub extents: Vec<PassedExtent>,
}

/// One L1 extent passed to L2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PassedExtent {
    /// Extent id in L1 (assigned by L0's device).
    pub l1_id: u64,
    /// L1 guest-physical address.
    pub l1_gpa: u64,
    /// Extent id in L2 (assigned by L1's device).
    pub l2_id: u64,
    /// L2 guest-physical address.
    pub l2_gpa: u64,
    /// Length, bytes.
    pub len: u64,
    /// Whether L2 accepted it.
    pub accepted: bool,
}

/// One step of a release cascade, in the order they happen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CascadeStep {
    /// L0's release request reached the L1 guest's driver, which answered RELEASE_BUSY.
    RequestSeen {
        /// The tag.
        tag: Uuid,
    },
    /// Release requested from L2's device.
    L2ReleaseRequested {
        /// The tag.
        tag: Uuid,
        /// L2 extent ids.
        extents: Vec<u64>,
    },
    /// L2's driver deferred the release (the group is busy in L2); L1 keeps answering L0 busy.
    L2Deferred {
        /// The tag.
        tag: Uuid,
    },
    /// L2 released the group and L1's device unmapped it from L2.
    L2Released {
        /// The tag.
        tag: Uuid,
        /// L2 extent ids.
        extents: Vec<u64>,
    },
    /// The L1 guest's driver released the group to L0.
    L1Released {
        /// The tag.
        tag: Uuid,
        /// Extents L0's device released.
        count: u64,
    },
}

/// An update [`crate::nested::NestedPassthrough::forward_updates`] passed from L1's driver to L2 (T-NEST-4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Forwarded {
    /// New performance metadata of an L1 extent, applied to its L2 extent's group.
    Metadata {
        /// The tag.
        tag: Uuid,
        /// The L2 extent named in the update.
        l2_extent: u64,
        /// The new values.
        perf: Perf,
    },
    /// A poisoned range of an L1 extent, reported for its L2 extent at the same offset.
    Poison {
        /// The tag.
        tag: Uuid,
        /// The L2 extent.
        l2_extent: u64,
        /// Offset within the extent.
        offset: u64,
        /// Length of the range.
        length: u64,
    },
}

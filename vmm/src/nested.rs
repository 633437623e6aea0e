//! Nested pass-through (SPEC.md T-NEST): an L1 VMM offering VM "L2" the capacity that its own
//! guest, VM "L1", accepted from L0.
//!
//! [`NestedPassthrough`] is the L1 VMM's part. It holds two runtimes: `l1`, the VM whose tagged
//! device L0 drives (its guest's driver accepts L0's offers), and `l2`, the VM whose tagged device
//! the L1 VMM drives. For a tag it:
//! 1. reads the L1 guest driver's report ([`Vmm::guest_extents`]), turns it into dax devices and
//!    unclaimed capacity ([`tagmem_lookup::DriverDevice::to_dax`], `to_unclaimed`) and resolves
//!    the tag with [`tagmem_lookup::lookup`], as a lookup on bare metal or in a Linux guest does.
//!    Capacity L1 accepted but has not claimed is refused ([`NestedError::Unclaimed`]): as on a
//!    DCD host, only a claimed dax device (`daxctl create-device --uuid`, [`Vmm::guest_claim`])
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

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use tagmem_device::{
    ControlError, ExtentFlags, ExtentSpec, HostEvent, Perf, SourceClass, SourceId, SourceRef, Target,
};
use tagmem_lookup::{lookup, DaxDevice, DriverDevice, DriverExtent, Found, LookupError, Poison};
use uuid::Uuid;

use crate::backing::Backing;
use crate::runtime::{BackingLifetime, Vmm, VmmError};
use crate::test_guest::ExtentDetail;

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
    Guest(#[from] VmmError),
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
        /// The runtime's error.
        #[source]
        source: VmmError,
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

/// What [`NestedPassthrough::offer_tag`] passed to L2.
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

/// An update [`NestedPassthrough::forward_updates`] passed from L1's driver to L2 (T-NEST-4).
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

/// What L1's driver had reported for one passed extent when L2 last heard of it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    /// L2 extent id.
    l2_id: u64,
    /// Performance as last passed on.
    perf: Perf,
    /// Poisoned ranges passed on so far.
    poison: usize,
}

/// A tag L2 holds.
#[derive(Clone, Debug)]
struct Held {
    /// L2 extent ids L2 accepted.
    l2_extents: Vec<u64>,
    /// Per accepted L1 extent id: what L2 has been told.
    seen: BTreeMap<u64, Seen>,
    /// L2 backings registered for it.
    sources: Vec<SourceId>,
    /// Release requested from L2, not completed yet.
    releasing: bool,
    /// L2 extent ids L2 has released so far.
    released: BTreeSet<u64>,
}

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
pub fn guest_capacity(vmm: &Vmm) -> Result<Found, ViewError> {
    let details = vmm.guest_extents()?;
    capacity_of(&details)
}

fn capacity_of(details: &[ExtentDetail]) -> Result<Found, ViewError> {
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
pub fn guest_dax_devices(vmm: &Vmm) -> Result<Vec<DaxDevice>, ViewError> {
    Ok(guest_capacity(vmm)?.devices)
}

/// The L1 VMM's nested pass-through: see the module documentation.
pub struct NestedPassthrough<'a> {
    l1: &'a Vmm,
    l2: &'a Vmm,
    placement: Placement,
    next_source: u64,
    held: BTreeMap<Uuid, Held>,
    /// L2 host events taken but not consumed yet.
    l2_events: Vec<HostEvent>,
}

impl<'a> NestedPassthrough<'a> {
    /// The pass-through from VM `l1` (whose guest receives capacity from L0) to VM `l2`, placing
    /// extents with [`Placement::PreserveAddresses`] and registering L2 backings from
    /// [`DEFAULT_L2_SOURCE_BASE`] on.
    pub fn new(l1: &'a Vmm, l2: &'a Vmm) -> Self {
        NestedPassthrough {
            l1,
            l2,
            placement: Placement::default(),
            next_source: DEFAULT_L2_SOURCE_BASE,
            held: BTreeMap::new(),
            l2_events: Vec::new(),
        }
    }

    /// Sets where L2 extents go.
    pub fn with_placement(mut self, placement: Placement) -> Self {
        self.placement = placement;
        self
    }

    /// Registers L2 backings from `SourceId(base)` on.
    pub fn with_source_base(mut self, base: u64) -> Self {
        self.next_source = base;
        self
    }

    /// The tags L2 holds through this component.
    pub fn passed_tags(&self) -> Vec<Uuid> {
        self.held.keys().copied().collect()
    }

    /// Resolves `tag` in the L1 guest's view; returns its dax device and the driver's records in
    /// device order.
    fn resolve_l1(&self, tag: Uuid) -> Result<(DaxDevice, DriverDevice, bool), NestedError> {
        let view_err = |source: ViewError| NestedError::View {
            tag,
            level: "L1",
            source,
        };
        let details = self.l1.guest_extents().map_err(|e| view_err(e.into()))?;
        let (records, _) = driver_groups(&details);
        let capacity = capacity_of(&details).map_err(view_err)?;
        let mut found = lookup(&capacity, &tag).map_err(|e| view_err(e.into()))?;
        let dev = match (found.devices.len(), found.unclaimed.first()) {
            (0, Some(u)) => {
                return Err(NestedError::Unclaimed {
                    tag,
                    region: u.region.clone(),
                    claim: u.claim_command(),
                })
            }
            (0, None) => return Err(NestedError::TagNotPresent(tag)),
            (1, _) => found.devices.remove(0),
            (count, _) => return Err(NestedError::TagAmbiguous { tag, count }),
        };
        let record = records
            .into_iter()
            .find(|r| r.name == dev.chardev)
            .ok_or(NestedError::TagNotPresent(tag))?;
        let release_requested = details.iter().any(|e| e.uuid == tag && e.release_requested);
        Ok((dev, record, release_requested))
    }

    fn l1_set_busy(&self, tag: Uuid, busy: bool) -> Result<(), NestedError> {
        match self.l1.guest_set_busy(Target::Tag(tag), busy) {
            Ok(true) => Ok(()),
            Ok(false) => Err(NestedError::BusyRefused(tag)),
            Err(source) => Err(NestedError::Guest {
                tag,
                level: "L1",
                source,
            }),
        }
    }

    /// Offers L2 the capacity the L1 guest accepted with `tag` (T-NEST-1/2); returns what L2 got.
    ///
    /// A tag the L1 guest does not hold is [`NestedError::TagNotPresent`], with nothing offered
    /// and nothing changed in either VM. On any later failure the busy mark and the L2 backings
    /// are undone.
    pub fn offer_tag(&mut self, tag: Uuid) -> Result<NestedOffer, NestedError> {
        if self.held.contains_key(&tag) {
            return Err(NestedError::AlreadyPassed(tag));
        }
        // Look first, so an absent tag leaves no busy mark behind.
        let (_, _, requested) = self.resolve_l1(tag)?;
        if requested {
            return Err(NestedError::ReleaseRequested(tag));
        }
        self.l1_set_busy(tag, true)?;
        let mut sources = Vec::new();
        let result = self.offer_busy(tag, &mut sources);
        if result.is_err() {
            for id in sources {
                // Registered but never offered: not closed by the runtime on its own.
                let _ = self.l2.unregister_backing(id);
            }
            let _ = self.l1_set_busy(tag, false);
        }
        result
    }

    /// [`NestedPassthrough::offer_tag`] once the group is busy in L1; records the L2 backings it
    /// registers in `sources` until they are offered.
    fn offer_busy(&mut self, tag: Uuid, sources: &mut Vec<SourceId>) -> Result<NestedOffer, NestedError> {
        // Look again with the busy mark set: a release request that came in between found the
        // group idle and took it, or is pending now.
        let (dev, record, requested) = self.resolve_l1(tag)?;
        if requested {
            return Err(NestedError::ReleaseRequested(tag));
        }
        let ordered = record.ordered_extents();
        let window = self.l2.config().device.tagged;
        let l0_mapper = self.l1.mapper();
        let mut l2_source_of: BTreeMap<SourceId, SourceId> = BTreeMap::new();
        let mut chain = Vec::with_capacity(ordered.len());
        for (mapping, e) in dev.mappings.iter().zip(&ordered) {
            // The lookup's mapping i is the record's extent i (T-LOOKUP-3).
            debug_assert_eq!((mapping.start, mapping.size), (e.start, e.length));
            let unbacked = || NestedError::Unbacked {
                tag,
                extent: e.id,
                gpa: e.start,
                len: e.length,
            };
            let end = e.start.checked_add(e.length).ok_or_else(unbacked)?;
            let slot = l0_mapper
                .lock()
                .slots()
                .into_iter()
                .find(|s| s.gpa <= e.start && s.gpa.checked_add(s.len).is_some_and(|s_end| end <= s_end))
                .ok_or_else(unbacked)?;
            let l0_offset = slot.offset + (e.start - slot.gpa);
            let l2_source = match l2_source_of.get(&slot.source) {
                Some(id) => *id,
                None => {
                    let id = SourceId(self.next_source);
                    let backing = self.duplicate_l0_backing(tag, slot.source)?;
                    self.l2
                        .register_backing(id, backing, BackingLifetime::PerExtent)
                        .map_err(|e| NestedError::Backing {
                            tag,
                            l0_source: slot.source,
                            reason: e.to_string(),
                        })?;
                    self.next_source += 1;
                    sources.push(id);
                    l2_source_of.insert(slot.source, id);
                    id
                }
            };
            let fits = window.is_some_and(|w| {
                e.start >= w.addr && w.addr.checked_add(w.size).is_some_and(|w_end| end <= w_end)
            });
            let gpa = (self.placement == Placement::PreserveAddresses && fits).then_some(e.start);
            let perf = e.perf.map_or(Perf::default(), |p| Perf {
                read_latency_ns: p.read_latency_ns,
                write_latency_ns: p.write_latency_ns,
                read_bandwidth_mbps: p.read_bandwidth_mbps,
                write_bandwidth_mbps: p.write_bandwidth_mbps,
            });
            chain.push(ExtentSpec {
                tag,
                length: e.length,
                source: SourceRef {
                    id: l2_source,
                    offset: l0_offset,
                },
                gpa,
                flags: ExtentFlags::from_bits(e.flags),
                perf,
                node: e.node,
                seq: e.seq,
                class: SourceClass::from_wire(e.source),
            });
        }
        let receipt = self
            .l2
            .offer(&chain)
            .map_err(|source| NestedError::Control { tag, source })?;
        // Offered: the runtime closes per-extent backings once no extent uses them.
        sources.clear();
        let chain_id = receipt.chain_id;
        let answer = self.wait_l2(tag, "answer the offer", |ev| match ev {
            HostEvent::ChainAnswered { chain_id: c, .. } | HostEvent::ChainDropped { chain_id: c, .. } => {
                *c == chain_id
            }
            _ => false,
        })?;
        let accepted = match answer {
            HostEvent::ChainAnswered {
                accepted, rejected, ..
            } if accepted.is_empty() => {
                return Err(NestedError::L2Refused {
                    tag,
                    chain_id,
                    reason: format!("rejected extents {rejected:?}"),
                })
            }
            HostEvent::ChainAnswered { accepted, .. } => accepted,
            HostEvent::ChainDropped { reason, .. } => {
                return Err(NestedError::L2Refused {
                    tag,
                    chain_id,
                    reason,
                })
            }
            _ => Vec::new(),
        };
        let extents = ordered
            .iter()
            .zip(&receipt.extents)
            .map(|(e, &(l2_id, l2_gpa))| PassedExtent {
                l1_id: e.id,
                l1_gpa: e.start,
                l2_id,
                l2_gpa,
                len: e.length,
                accepted: accepted.contains(&l2_id),
            })
            .collect();
        let seen = ordered
            .iter()
            .zip(&chain)
            .zip(&receipt.extents)
            .filter(|(_, &(l2_id, _))| accepted.contains(&l2_id))
            .map(|((e, spec), &(l2_id, _))| {
                (
                    e.id,
                    Seen {
                        l2_id,
                        perf: spec.perf,
                        poison: e.poison.len(),
                    },
                )
            })
            .collect();
        self.held.insert(
            tag,
            Held {
                seen,
                l2_extents: accepted,
                sources: l2_source_of.into_values().collect(),
                releasing: false,
                released: BTreeSet::new(),
            },
        );
        Ok(NestedOffer {
            tag,
            chain_id,
            extents,
        })
    }

    /// A second descriptor for L0's backing `id` (same open file, same pages), for L2's mapper.
    fn duplicate_l0_backing(&self, tag: Uuid, id: SourceId) -> Result<Backing, NestedError> {
        let mapper = self.l1.mapper();
        let mapper = mapper.lock();
        let fail = |reason: String| NestedError::Backing {
            tag,
            l0_source: id,
            reason,
        };
        let b = mapper
            .backing(id)
            .ok_or_else(|| fail("not registered with L0's mapper".to_owned()))?;
        let file = b
            .file_handle()
            .try_clone()
            .map_err(|e| fail(format!("duplicating its descriptor: {e}")))?;
        Ok(Backing::from_file(file, b.size(), b.kind(), b.writable()))
    }

    /// Waits for the first L2 host event `pick` selects, keeping the others for later.
    fn wait_l2(
        &mut self,
        tag: Uuid,
        what: &'static str,
        mut pick: impl FnMut(&HostEvent) -> bool,
    ) -> Result<HostEvent, NestedError> {
        let timeout = self.l2.config().command_timeout;
        let deadline = Instant::now() + timeout;
        loop {
            self.l2_events.extend(self.l2.take_host_events());
            if let Some(i) = self.l2_events.iter().position(&mut pick) {
                return Ok(self.l2_events.remove(i));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(NestedError::L2Timeout { tag, what, timeout });
            }
            let more = self.l2.wait_host_events(deadline - now);
            self.l2_events.extend(more);
        }
    }

    /// Passes METADATA and POISON that L1's driver received for capacity L2 holds on to L2
    /// (T-NEST-4): new performance values become an `update_metadata` of the L2 extent, each new
    /// poisoned range an `inject_poison` at the same offset (extents map one to one). Returns what
    /// was forwarded, in order.
    pub fn forward_updates(&mut self) -> Result<Vec<Forwarded>, NestedError> {
        let Some(first) = self.held.keys().next().copied() else {
            return Ok(Vec::new());
        };
        let l1_err = |source| NestedError::Guest {
            tag: first,
            level: "L1",
            source,
        };
        self.l1.guest_poll().map_err(l1_err)?;
        let details = self.l1.guest_extents().map_err(l1_err)?;
        let l2 = self.l2;
        let mut out = Vec::new();
        for (tag, held) in &mut self.held {
            let tag = *tag;
            // Metadata applies to a whole group (as L0 sends it); one update per group and pass.
            let mut updated: BTreeSet<u64> = BTreeSet::new();
            for (l1_id, seen) in &mut held.seen {
                let Some(d) = details.iter().find(|e| e.id == *l1_id) else {
                    continue;
                };
                let perf = Perf {
                    read_latency_ns: d.read_latency_ns,
                    write_latency_ns: d.write_latency_ns,
                    read_bandwidth_mbps: d.read_bandwidth_mbps,
                    write_bandwidth_mbps: d.write_bandwidth_mbps,
                };
                if perf != seen.perf && !updated.contains(&seen.l2_id) {
                    let ids = l2
                        .update_metadata(Target::Extent(seen.l2_id), perf)
                        .map_err(|source| NestedError::Control { tag, source })?;
                    updated.extend(ids);
                    out.push(Forwarded::Metadata {
                        tag,
                        l2_extent: seen.l2_id,
                        perf,
                    });
                }
                seen.perf = perf;
                for &(offset, length) in d.poison.iter().skip(seen.poison) {
                    l2.inject_poison(seen.l2_id, offset, length)
                        .map_err(|source| NestedError::Control { tag, source })?;
                    seen.poison += 1;
                    out.push(Forwarded::Poison {
                        tag,
                        l2_extent: seen.l2_id,
                        offset,
                        length,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Handles release requests L0 sent the L1 guest for tags L2 holds (T-NEST-3), reporting each
    /// step to `observe` as it happens; returns the tags released to L0.
    ///
    /// For each such tag: request release from L2, wait until L2 released it (its `Released`
    /// event: L1's device has unmapped it from L2), check L2 maps none of it, then have the L1
    /// guest's driver release the group to L0. If L2's driver defers (the group is busy in L2),
    /// the tag stays busy in L1 and a later call finishes the cascade once L2 let go.
    pub fn cascade_releases(
        &mut self,
        mut observe: impl FnMut(&CascadeStep),
    ) -> Result<Vec<Uuid>, NestedError> {
        let Some(first) = self.held.keys().next().copied() else {
            return Ok(Vec::new());
        };
        let l1_err = |tag: Uuid| {
            move |source| NestedError::Guest {
                tag,
                level: "L1",
                source,
            }
        };
        // Let the L1 guest's driver take what L0 sent (it answers RELEASE_BUSY for busy groups).
        self.l1.guest_poll().map_err(l1_err(first))?;
        let details = self.l1.guest_extents().map_err(l1_err(first))?;
        let requested: Vec<Uuid> = self
            .held
            .iter()
            .filter(|(tag, h)| h.releasing || details.iter().any(|e| e.uuid == **tag && e.release_requested))
            .map(|(tag, _)| *tag)
            .collect();
        let mut done = Vec::new();
        for tag in requested {
            if self.cascade_one(tag, &mut observe)? {
                done.push(tag);
            }
        }
        Ok(done)
    }

    /// Releases `tag` from L2 and then to L0; false if L2 deferred.
    fn cascade_one(
        &mut self,
        tag: Uuid,
        observe: &mut impl FnMut(&CascadeStep),
    ) -> Result<bool, NestedError> {
        let held = self.held.get(&tag).cloned().ok_or(NestedError::NotPassed(tag))?;
        let ids = held.l2_extents.clone();
        let mine = |extents: &[(u64, SourceRef)]| extents.iter().any(|(id, _)| ids.contains(id));
        let mut released = held.released.clone();
        if held.releasing {
            // Asked before and L2 deferred: go on only once L2 has let go.
            self.l2_events.extend(self.l2.take_host_events());
            self.l2_events.retain(|ev| match ev {
                HostEvent::Released { extents } if mine(extents) => {
                    released.extend(extents.iter().map(|(id, _)| *id));
                    false
                }
                _ => true,
            });
        } else {
            observe(&CascadeStep::RequestSeen { tag });
            let requested = self
                .l2
                .request_release(Target::Tag(tag))
                .map_err(|source| NestedError::Control { tag, source })?;
            observe(&CascadeStep::L2ReleaseRequested {
                tag,
                extents: requested,
            });
            if let Some(h) = self.held.get_mut(&tag) {
                h.releasing = true;
            }
            while !ids.iter().all(|id| released.contains(id)) {
                let ev = self.wait_l2(tag, "release", |ev| match ev {
                    HostEvent::Released { extents } => mine(extents),
                    HostEvent::ReleaseDeferred { extents } => extents.iter().any(|id| ids.contains(id)),
                    _ => false,
                })?;
                match ev {
                    HostEvent::Released { extents } => released.extend(extents.iter().map(|(id, _)| *id)),
                    _ => {
                        observe(&CascadeStep::L2Deferred { tag });
                        break;
                    }
                }
            }
        }
        if !ids.iter().all(|id| released.contains(id)) {
            if let Some(h) = self.held.get_mut(&tag) {
                h.released = released;
            }
            return Ok(false);
        }
        // L2's device unmaps before it reports `Released`; check nothing of the group is left.
        let still_held = self.l2.extents().iter().any(|e| ids.contains(&e.id));
        let mapped = self.l2.slots().iter().any(|s| held.sources.contains(&s.source));
        if still_held || mapped {
            return Err(NestedError::StillMapped { tag, extents: ids });
        }
        observe(&CascadeStep::L2Released {
            tag,
            extents: ids.clone(),
        });
        let count = self
            .l1
            .guest_release(Target::Tag(tag))
            .map_err(|source| NestedError::Guest {
                tag,
                level: "L1",
                source,
            })?;
        self.held.remove(&tag);
        observe(&CascadeStep::L1Released { tag, count });
        Ok(true)
    }
}

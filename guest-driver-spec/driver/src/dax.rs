//! Accepted capacity as the guest sees it: one dynamic-capacity dax region, claimed by tag.
//!
//! Mirrors bare-metal Linux with the CXL DCD series (v11) (SPEC.md T.8): the device's tagged
//! capacity is one dax region, `region0`, with a size-0 seed device. Accepted extents are held
//! *unclaimed* by the region until the application claims them by tag, which is what writing the
//! tag to the seed's `uuid` does on Linux (`daxctl create-device -r region0 --uuid <tag>`): the
//! claim takes every accepted extent with that tag, ordered by sequence number then extent id,
//! into the seed, which becomes the dax device, and a new seed appears. Claiming the nil tag
//! (`--uuid 0`) takes one untagged extent. A device's `uuid` reads its tag; an untagged device
//! reads the all-zero UUID, like `/sys/bus/dax/devices/daxX.Y/uuid`. Looking up the nil tag finds
//! nothing: untagged devices are found by listing.
//!
//! [`ClaimMode::OnAccept`] claims every group as soon as it is accepted (one device per tag, one
//! per untagged extent), for applications that want devices without asking.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use tagmem_wire::is_null_tag;

pub use crate::extent::{format_uuid, Extent, Perf, PoisonRange};

/// Name of the dax region the driver's device holds its tagged capacity in (dax region id 0).
pub const REGION: &str = "region0";

/// One group of accepted capacity: a tag group or a single untagged extent. Claimed, it is a
/// dax device (`dax0.N`); unclaimed, it is capacity the region holds and `name` is empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaxDevice {
    /// Stable name in claim order (`dax0.0`, `dax0.1`, ...), never reused; empty while unclaimed.
    pub name: String,
    /// The tag; all zero for an untagged device.
    pub uuid: [u8; 16],
    /// Total size in bytes (sum of the extents' lengths).
    pub size: u64,
    /// The extents, ordered by sequence number then extent id.
    pub extents: Vec<Extent>,
    /// Union of the extents' `VIRTIO_MEM_EXTENT_F_*` flags (read-only if any extent is).
    pub flags: u32,
    /// Performance of the first extent.
    pub perf: Perf,
    /// NUMA node of the first extent.
    pub node: u16,
    /// Source class of the first extent.
    pub source: u8,
    /// The application marked the device busy: host release requests are answered RELEASE_BUSY.
    /// Unclaimed capacity is never busy: nothing can use it.
    pub busy: bool,
    /// The host asked for the device back and it has not been released yet.
    pub release_requested: bool,
    /// RELEASE_BUSY was sent; release once the device is no longer busy.
    pub(crate) deferred: bool,
}

impl DaxDevice {
    fn new(name: String, uuid: [u8; 16], extents: Vec<Extent>, busy: bool) -> Self {
        let mut d = DaxDevice {
            name,
            uuid,
            size: 0,
            extents,
            flags: 0,
            perf: Perf::default(),
            node: 0,
            source: 0,
            busy,
            release_requested: false,
            deferred: false,
        };
        d.refresh();
        d
    }

    /// Re-derives the ordering and the device-level fields from the extents.
    pub(crate) fn refresh(&mut self) {
        self.extents.sort_by_key(|e| (e.seq, e.id));
        self.size = self.extents.iter().fold(0u64, |s, e| s.saturating_add(e.len));
        self.flags = self.extents.iter().fold(0, |f, e| f | e.flags);
        if let Some(first) = self.extents.first() {
            self.perf = first.perf;
            self.node = first.node;
            self.source = first.source;
        }
    }

    /// True for a tag group, false for an untagged extent.
    pub fn is_tagged(&self) -> bool {
        !is_null_tag(&self.uuid)
    }

    /// True once a claim made the group a dax device.
    pub fn is_claimed(&self) -> bool {
        !self.name.is_empty()
    }

    /// The device's name, or for unclaimed capacity `region0:<lowest extent id>`, for logs.
    pub fn label(&self) -> String {
        if self.is_claimed() {
            self.name.clone()
        } else {
            format!("{REGION}:{}", self.lead_extent_id().unwrap_or(0))
        }
    }

    /// The lowest extent id of the device (the one release requests carry).
    pub fn lead_extent_id(&self) -> Option<u64> {
        self.extents.iter().map(|e| e.id).min()
    }

    /// Every poisoned range as (guest-physical address, length).
    pub fn poison(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.extents.iter().flat_map(|e| {
            e.poison
                .iter()
                .map(move |p| (e.gpa.saturating_add(p.offset), p.length))
        })
    }

    /// The device's uuid in the canonical 8-4-4-4-12 form.
    pub fn uuid_string(&self) -> String {
        format_uuid(&self.uuid)
    }
}

/// How accepted capacity becomes dax devices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClaimMode {
    /// As CXL DCD v11: accepted capacity stays unclaimed in the region until the application
    /// claims it by tag (the default).
    #[default]
    OnRequest,
    /// Every accepted group becomes a dax device at once: one per tag, one per untagged extent.
    OnAccept,
}

/// Where a group of accepted capacity is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// Claimed: index into [`DaxRegistry::devices`].
    Device(usize),
    /// Unclaimed: index into [`DaxRegistry::unclaimed`].
    Unclaimed(usize),
}

/// Why a claim took nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimError {
    /// No unclaimed capacity carries the tag (for the nil tag: no unclaimed untagged extent). The
    /// seed stays at size 0, as DCD's `uuid` write fails with `ENOENT`.
    NoMatch,
}

/// The region: claimed devices in claim order, unclaimed groups in acceptance order, with
/// indexes so that every check an offer needs (id known, tag present, range overlapping) costs
/// O(log n) in the number of accepted extents.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DaxRegistry {
    devices: Vec<DaxDevice>,
    /// Serial of `devices[i]`; ascending, so positions are found by binary search.
    device_serials: Vec<u64>,
    pool: Vec<DaxDevice>,
    /// Serial of `pool[i]`; ascending.
    pool_serials: Vec<u64>,
    next_serial: u64,
    /// Number of the seed, the next device name (`dax0.<next_name>`).
    next_name: u64,
    mode: ClaimMode,
    /// Extent id -> serial of its group.
    by_extent: BTreeMap<u64, u64>,
    /// Non-nil tag -> serial of its group.
    by_tag: BTreeMap<[u8; 16], u64>,
    /// Accepted ranges: guest-physical start -> length.
    by_gpa: BTreeMap<u64, u64>,
}

impl DaxRegistry {
    /// An empty region in [`ClaimMode::OnRequest`].
    pub fn new() -> Self {
        Self::default()
    }

    /// How accepted capacity becomes devices.
    pub fn mode(&self) -> ClaimMode {
        self.mode
    }

    /// Sets how capacity accepted from now on becomes devices.
    pub fn set_mode(&mut self, mode: ClaimMode) {
        self.mode = mode;
    }

    /// Every claimed dax device, in claim order.
    pub fn devices(&self) -> &[DaxDevice] {
        &self.devices
    }

    /// Every group the region holds unclaimed, in acceptance order (names empty).
    pub fn unclaimed(&self) -> &[DaxDevice] {
        &self.pool
    }

    /// The region's seed: the size-0 device a claim fills (`dax0.N`, the next name).
    pub fn seed(&self) -> String {
        format!("dax0.{}", self.next_name)
    }

    /// The device carrying `tag`; the nil tag matches nothing.
    pub fn lookup(&self, tag: &[u8; 16]) -> Option<&DaxDevice> {
        self.position_of_tag(tag).map(|i| &self.devices[i])
    }

    /// The unclaimed group carrying `tag`; the nil tag matches nothing.
    pub fn lookup_unclaimed(&self, tag: &[u8; 16]) -> Option<&DaxDevice> {
        match self.group_of_tag(tag)? {
            Slot::Unclaimed(i) => self.pool.get(i),
            Slot::Device(_) => None,
        }
    }

    fn slot_of_serial(&self, serial: u64) -> Option<Slot> {
        if let Ok(i) = self.device_serials.binary_search(&serial) {
            return Some(Slot::Device(i));
        }
        self.pool_serials.binary_search(&serial).ok().map(Slot::Unclaimed)
    }

    /// True if `[gpa, gpa + len)` intersects an accepted extent, claimed or not.
    pub fn overlaps(&self, gpa: u64, len: u64) -> bool {
        let end = gpa.saturating_add(len);
        self.by_gpa
            .range(..end)
            .next_back()
            .is_some_and(|(start, l)| start.saturating_add(*l) > gpa)
    }

    /// True if extent `id` is accepted, claimed or not.
    pub fn holds_extent(&self, id: u64) -> bool {
        self.by_extent.contains_key(&id)
    }

    /// True if non-nil `tag` is accepted, claimed or not.
    pub fn holds_tag(&self, tag: &[u8; 16]) -> bool {
        !is_null_tag(tag) && self.by_tag.contains_key(tag)
    }

    /// The device named `name`.
    pub fn by_name(&self, name: &str) -> Option<&DaxDevice> {
        self.devices.iter().find(|d| d.name == name)
    }

    /// Index of the device holding extent `id` (claimed capacity only).
    pub fn device_of(&self, id: u64) -> Option<usize> {
        match self.group_of(id)? {
            Slot::Device(i) => Some(i),
            Slot::Unclaimed(_) => None,
        }
    }

    /// Index of the device carrying non-nil `tag` (claimed capacity only).
    pub fn position_of_tag(&self, tag: &[u8; 16]) -> Option<usize> {
        match self.group_of_tag(tag)? {
            Slot::Device(i) => Some(i),
            Slot::Unclaimed(_) => None,
        }
    }

    /// Where the group holding extent `id` is.
    pub fn group_of(&self, id: u64) -> Option<Slot> {
        self.by_extent.get(&id).and_then(|s| self.slot_of_serial(*s))
    }

    /// Where the group carrying non-nil `tag` is.
    pub fn group_of_tag(&self, tag: &[u8; 16]) -> Option<Slot> {
        if is_null_tag(tag) {
            return None;
        }
        self.by_tag.get(tag).and_then(|s| self.slot_of_serial(*s))
    }

    /// The group at `slot`.
    pub fn group(&self, slot: Slot) -> Option<&DaxDevice> {
        match slot {
            Slot::Device(i) => self.devices.get(i),
            Slot::Unclaimed(i) => self.pool.get(i),
        }
    }

    /// Every accepted extent, device by device, then the unclaimed ones.
    pub fn extents(&self) -> impl Iterator<Item = &Extent> + '_ {
        self.devices
            .iter()
            .chain(self.pool.iter())
            .flat_map(|d| d.extents.iter())
    }

    fn index(&mut self, serial: u64, uuid: &[u8; 16], extents: &[Extent]) {
        for e in extents {
            self.by_extent.insert(e.id, serial);
            self.by_gpa.insert(e.gpa, e.len);
        }
        if !is_null_tag(uuid) {
            self.by_tag.insert(*uuid, serial);
        }
    }

    fn take_serial(&mut self) -> u64 {
        let s = self.next_serial;
        self.next_serial += 1;
        s
    }

    /// Makes a claimed device of `extents` named after the seed (a new seed follows); returns
    /// its index.
    pub(crate) fn create(&mut self, uuid: [u8; 16], extents: Vec<Extent>, busy: bool) -> usize {
        let serial = self.take_serial();
        let name = self.seed();
        self.next_name += 1;
        self.index(serial, &uuid, &extents);
        self.devices.push(DaxDevice::new(name, uuid, extents, busy));
        self.device_serials.push(serial);
        self.devices.len() - 1
    }

    /// Takes freshly accepted extents: one group per tag (in the order its first extent appears)
    /// and one per untagged extent. In [`ClaimMode::OnRequest`] they stay unclaimed; in
    /// [`ClaimMode::OnAccept`] each becomes a device, busy if its tag is in `busy_tags`. Returns
    /// the indexes of the devices created.
    pub(crate) fn add_accepted(
        &mut self,
        accepted: Vec<Extent>,
        busy_tags: &BTreeSet<[u8; 16]>,
    ) -> Vec<usize> {
        let mut groups: Vec<([u8; 16], Vec<Extent>)> = Vec::new();
        for e in accepted {
            match groups.iter_mut().find(|(t, _)| e.is_tagged() && *t == e.tag) {
                Some((_, v)) => v.push(e),
                None => groups.push((e.tag, alloc::vec![e])),
            }
        }
        let mut created = Vec::new();
        for (uuid, extents) in groups {
            match self.mode {
                ClaimMode::OnAccept => created.push(self.create(uuid, extents, busy_tags.contains(&uuid))),
                ClaimMode::OnRequest => {
                    let serial = self.take_serial();
                    self.index(serial, &uuid, &extents);
                    self.pool
                        .push(DaxDevice::new(String::new(), uuid, extents, false));
                    self.pool_serials.push(serial);
                }
            }
        }
        created
    }

    /// Claims into the seed every unclaimed extent carrying non-nil `tag` (in sequence order),
    /// or for the nil tag the unclaimed untagged extent accepted first; the seed becomes the
    /// device (busy if `busy`) and a new seed follows. Capacity the host asked back is not
    /// claimed. Returns the device's index.
    pub(crate) fn claim(&mut self, tag: &[u8; 16], busy: bool) -> Result<usize, ClaimError> {
        let i = if is_null_tag(tag) {
            self.pool
                .iter()
                .position(|g| !g.is_tagged() && !g.release_requested)
        } else {
            match self.group_of_tag(tag) {
                Some(Slot::Unclaimed(i)) if !self.pool[i].release_requested => Some(i),
                _ => None,
            }
        }
        .ok_or(ClaimError::NoMatch)?;
        self.pool_serials.remove(i);
        let group = self.pool.remove(i);
        for e in &group.extents {
            self.by_extent.remove(&e.id);
        }
        if group.is_tagged() {
            self.by_tag.remove(&group.uuid);
        }
        // Same ranges: `by_gpa` stays; `create` re-indexes ids and tag under the new serial.
        Ok(self.create(group.uuid, group.extents, busy))
    }

    /// Removes and returns the group at `slot`.
    pub(crate) fn remove_group(&mut self, slot: Slot) -> Option<DaxDevice> {
        let d = match slot {
            Slot::Device(i) if i < self.devices.len() => {
                self.device_serials.remove(i);
                self.devices.remove(i)
            }
            Slot::Unclaimed(i) if i < self.pool.len() => {
                self.pool_serials.remove(i);
                self.pool.remove(i)
            }
            _ => return None,
        };
        for e in &d.extents {
            self.by_extent.remove(&e.id);
            self.by_gpa.remove(&e.gpa);
        }
        if !is_null_tag(&d.uuid) {
            self.by_tag.remove(&d.uuid);
        }
        Some(d)
    }

    /// Removes and returns the device at `index`.
    ///
    /// # Panics
    ///
    /// If `index` is not below the number of devices.
    #[cfg(test)]
    pub(crate) fn remove(&mut self, index: usize) -> DaxDevice {
        self.remove_group(Slot::Device(index))
            .unwrap_or_else(|| panic!("no device at index {index}"))
    }

    /// Removes every group, claimed or not (names are still never reused).
    pub(crate) fn clear(&mut self) -> Vec<DaxDevice> {
        self.device_serials.clear();
        self.pool_serials.clear();
        self.by_extent.clear();
        self.by_tag.clear();
        self.by_gpa.clear();
        let mut all = core::mem::take(&mut self.devices);
        all.append(&mut self.pool);
        all
    }

    /// Mutable access to the device at `index`.
    pub(crate) fn get_mut(&mut self, index: usize) -> Option<&mut DaxDevice> {
        self.devices.get_mut(index)
    }

    /// Mutable access to the group at `slot`.
    pub(crate) fn group_mut(&mut self, slot: Slot) -> Option<&mut DaxDevice> {
        match slot {
            Slot::Device(i) => self.devices.get_mut(i),
            Slot::Unclaimed(i) => self.pool.get_mut(i),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use tagmem_wire::{ExtentRecord, Le64, VIRTIO_MEM_EXTENT_ALIGN};

    fn ext(id: u64, tag: u8, seq: u16) -> Extent {
        let mut r = ExtentRecord {
            extent_id: Le64::new(id),
            addr: Le64::new(id * VIRTIO_MEM_EXTENT_ALIGN),
            length: Le64::new(VIRTIO_MEM_EXTENT_ALIGN),
            ..Default::default()
        };
        r.tag = [tag; 16];
        r.seq.set(seq);
        r.read_latency_ns.set(100 + u32::from(seq));
        Extent::from_record(&r)
    }

    #[test]
    fn one_device_per_tag_ordered_by_seq_then_id() {
        let mut reg = DaxRegistry::new();
        let i = reg.create(
            [7; 16],
            vec![ext(5, 7, 2), ext(3, 7, 0), ext(9, 7, 1), ext(4, 7, 1)],
            false,
        );
        let d = &reg.devices()[i];
        assert_eq!(d.extents.iter().map(|e| e.id).collect::<Vec<_>>(), [3, 4, 9, 5]);
        assert_eq!(d.size, 4 * VIRTIO_MEM_EXTENT_ALIGN);
        assert_eq!(d.perf.read_latency_ns, 100);
        assert_eq!(d.lead_extent_id(), Some(3));
        assert_eq!(reg.lookup(&[7; 16]).unwrap().name, "dax0.0");
        assert_eq!(reg.device_of(9), Some(0));
        assert_eq!(reg.device_of(10), None);
    }

    #[test]
    fn untagged_devices_read_zero_uuid_and_are_not_found_by_nil_lookup() {
        let mut reg = DaxRegistry::new();
        reg.create([0; 16], vec![ext(1, 0, 0)], false);
        reg.create([0; 16], vec![ext(2, 0, 0)], false);
        assert_eq!(reg.devices().len(), 2);
        assert!(reg.devices().iter().all(|d| d.uuid == [0; 16] && !d.is_tagged()));
        assert_eq!(
            reg.devices()[0].uuid_string(),
            "00000000-0000-0000-0000-000000000000"
        );
        assert!(reg.lookup(&[0; 16]).is_none());
        assert_eq!(reg.position_of_tag(&[0; 16]), None);
    }

    #[test]
    fn names_are_never_reused() {
        let mut reg = DaxRegistry::new();
        reg.create([1; 16], vec![ext(1, 1, 0)], false);
        reg.create([2; 16], vec![ext(2, 2, 0)], false);
        assert_eq!(reg.remove(0).name, "dax0.0");
        reg.create([1; 16], vec![ext(3, 1, 0)], false);
        let names: Vec<_> = reg.devices().iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["dax0.1", "dax0.2"]);
        reg.clear();
        assert_eq!(reg.devices[..], []);
        reg.create([1; 16], vec![ext(4, 1, 0)], false);
        assert!(reg.by_name("dax0.3").is_some());
    }

    #[test]
    fn poison_gpas() {
        let mut e = ext(2, 1, 0);
        e.poison.push(PoisonRange {
            offset: 4096,
            length: 4096,
        });
        let mut reg = DaxRegistry::new();
        reg.create([1; 16], vec![e], false);
        let d = &reg.devices()[0];
        assert_eq!(
            d.poison().collect::<Vec<_>>(),
            [(2 * VIRTIO_MEM_EXTENT_ALIGN + 4096, 4096)]
        );
    }

    #[test]
    fn accepted_capacity_waits_unclaimed_until_claimed_by_tag() {
        let mut reg = DaxRegistry::new();
        assert_eq!((reg.mode(), reg.seed()), (ClaimMode::OnRequest, "dax0.0".into()));
        let none = BTreeSet::new();
        let created = reg.add_accepted(
            vec![ext(4, 7, 1), ext(1, 0, 0), ext(3, 7, 0), ext(2, 0, 0)],
            &none,
        );
        assert!(
            created.is_empty() && reg.devices().is_empty(),
            "nothing is a device yet"
        );
        assert_eq!(reg.unclaimed().len(), 3, "one tag group, two untagged extents");
        assert!(reg
            .unclaimed()
            .iter()
            .all(|g| !g.is_claimed() && g.name.is_empty()));
        assert_eq!(reg.unclaimed()[0].label(), "region0:3");
        // The accepted capacity counts for offers whether claimed or not.
        assert!(reg.holds_extent(4) && reg.holds_tag(&[7; 16]) && reg.overlaps(VIRTIO_MEM_EXTENT_ALIGN, 1));
        assert_eq!(reg.lookup(&[7; 16]), None, "a lookup finds devices only");
        assert_eq!(
            reg.lookup_unclaimed(&[7; 16]).unwrap().size,
            2 * VIRTIO_MEM_EXTENT_ALIGN
        );

        // Claiming the tag takes the whole group, in seq order, into the seed.
        let i = reg.claim(&[7; 16], true).unwrap();
        let d = &reg.devices()[i];
        assert_eq!((d.name.as_str(), d.uuid, d.busy), ("dax0.0", [7; 16], true));
        assert_eq!(d.extents.iter().map(|e| e.id).collect::<Vec<_>>(), [3, 4]);
        assert_eq!(reg.seed(), "dax0.1", "a new seed appears");
        assert_eq!(
            (reg.device_of(4), reg.group_of(4)),
            (Some(0), Some(Slot::Device(0)))
        );
        assert_eq!(reg.lookup_unclaimed(&[7; 16]), None);
        assert_eq!(
            reg.claim(&[7; 16], false),
            Err(ClaimError::NoMatch),
            "claimed already"
        );
        assert_eq!(
            reg.claim(&[9; 16], false),
            Err(ClaimError::NoMatch),
            "never accepted"
        );
        assert_eq!(reg.seed(), "dax0.1", "a failed claim leaves the seed at size 0");

        // The nil tag claims one untagged extent at a time, first accepted first.
        let i = reg.claim(&[0; 16], false).unwrap();
        assert_eq!(reg.devices()[i].extents[0].id, 1);
        assert_eq!(reg.devices()[i].name, "dax0.1");
        reg.claim(&[0; 16], false).unwrap();
        assert_eq!(reg.claim(&[0; 16], false), Err(ClaimError::NoMatch));
        assert!(reg.unclaimed().is_empty());
        assert_eq!(reg.extents().count(), 4);
        assert!(
            reg.overlaps(4 * VIRTIO_MEM_EXTENT_ALIGN, 1),
            "ranges stay indexed after a claim"
        );
    }

    #[test]
    fn on_accept_mode_claims_every_group_at_once() {
        let mut reg = DaxRegistry::new();
        reg.set_mode(ClaimMode::OnAccept);
        let busy: BTreeSet<[u8; 16]> = [[7; 16]].into_iter().collect();
        let created = reg.add_accepted(vec![ext(3, 7, 0), ext(1, 0, 0), ext(4, 7, 1)], &busy);
        assert_eq!(created, [0, 1]);
        assert!(reg.unclaimed().is_empty());
        let names: Vec<_> = reg.devices().iter().map(|d| (d.name.as_str(), d.busy)).collect();
        assert_eq!(names, [("dax0.0", true), ("dax0.1", false)]);
    }

    #[test]
    fn requested_capacity_is_not_claimed_and_groups_are_removed_whole() {
        let mut reg = DaxRegistry::new();
        reg.add_accepted(vec![ext(1, 5, 0), ext(2, 5, 1), ext(3, 0, 0)], &BTreeSet::new());
        let slot = reg.group_of_tag(&[5; 16]).unwrap();
        reg.group_mut(slot).unwrap().release_requested = true;
        assert_eq!(reg.claim(&[5; 16], false), Err(ClaimError::NoMatch));
        let g = reg.remove_group(slot).unwrap();
        assert_eq!(g.extents.len(), 2);
        assert!(
            !reg.holds_extent(1) && !reg.holds_tag(&[5; 16]) && !reg.overlaps(VIRTIO_MEM_EXTENT_ALIGN, 1)
        );
        assert_eq!(reg.group_of(3), Some(Slot::Unclaimed(0)));
        assert_eq!(reg.remove_group(Slot::Device(0)), None);
        assert_eq!(reg.clear().len(), 1);
    }
}

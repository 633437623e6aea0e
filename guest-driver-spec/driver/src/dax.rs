//! Accepted capacity as the guest sees it: "dax devices", looked up by tag.
//!
//! Mirrors bare-metal Linux DAX: one device per tag holding every accepted extent with that tag
//! (ordered by sequence number, then extent id), and one device per untagged extent. A device's
//! `uuid` reads its tag; an untagged device reads the all-zero UUID, like
//! `/sys/bus/dax/devices/daxX.Y/uuid`. Looking up the nil tag finds nothing: untagged devices are
//! found by listing.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use tagmem_wire::{is_null_tag, ExtentRecord, EXTENT_F_READONLY, EXTENT_F_SHARABLE};

/// HMAT-style performance of an extent (0 in a field: not reported).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Perf {
    /// Read latency in nanoseconds.
    pub read_latency_ns: u32,
    /// Write latency in nanoseconds.
    pub write_latency_ns: u32,
    /// Read bandwidth in MB/s.
    pub read_bandwidth_mbps: u32,
    /// Write bandwidth in MB/s.
    pub write_bandwidth_mbps: u32,
}

impl Perf {
    /// The performance fields of a wire record.
    pub fn from_record(r: &ExtentRecord) -> Self {
        Perf {
            read_latency_ns: r.read_latency_ns.get(),
            write_latency_ns: r.write_latency_ns.get(),
            read_bandwidth_mbps: r.read_bandwidth_mbps.get(),
            write_bandwidth_mbps: r.write_bandwidth_mbps.get(),
        }
    }
}

/// A poisoned byte range inside one extent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoisonRange {
    /// Offset from the extent's start.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
}

/// One extent, offered or accepted, decoded from its wire record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Device-assigned id.
    pub id: u64,
    /// Tag (all zero: untagged).
    pub tag: [u8; 16],
    /// Guest-physical address.
    pub gpa: u64,
    /// Length in bytes.
    pub len: u64,
    /// `EXTENT_F_*` flags.
    pub flags: u32,
    /// Sequence number within its tag group.
    pub seq: u16,
    /// NUMA node / proximity domain.
    pub node: u16,
    /// `SOURCE_*` class.
    pub source: u8,
    /// Performance metadata.
    pub perf: Perf,
    /// Poisoned ranges reported so far.
    pub poison: Vec<PoisonRange>,
}

impl Extent {
    /// Decodes a wire record (no validation; see [`crate::offer::screen`]).
    pub fn from_record(r: &ExtentRecord) -> Self {
        Extent {
            id: r.extent_id.get(),
            tag: r.tag,
            gpa: r.addr.get(),
            len: r.length.get(),
            flags: r.flags.get(),
            seq: r.seq.get(),
            node: r.node_id.get(),
            source: r.source,
            perf: Perf::from_record(r),
            poison: Vec::new(),
        }
    }

    /// True if the extent carries a non-nil tag.
    pub fn is_tagged(&self) -> bool {
        !is_null_tag(&self.tag)
    }

    /// True if the capacity may be shared with other hosts or guests.
    pub fn is_sharable(&self) -> bool {
        self.flags & EXTENT_F_SHARABLE != 0
    }

    /// True if the guest may only read the capacity.
    pub fn is_readonly(&self) -> bool {
        self.flags & EXTENT_F_READONLY != 0
    }

    /// True if `[gpa, gpa + len)` intersects the extent.
    pub fn overlaps(&self, gpa: u64, len: u64) -> bool {
        gpa < self.gpa.saturating_add(self.len) && self.gpa < gpa.saturating_add(len)
    }
}

/// One guest-visible device: a tag group or a single untagged extent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaxDevice {
    /// Stable name in creation order (`dax0.0`, `dax0.1`, ...), never reused.
    pub name: String,
    /// The tag; all zero for an untagged device.
    pub uuid: [u8; 16],
    /// Total size in bytes (sum of the extents' lengths).
    pub size: u64,
    /// The extents, ordered by sequence number then extent id.
    pub extents: Vec<Extent>,
    /// Union of the extents' `EXTENT_F_*` flags (read-only if any extent is).
    pub flags: u32,
    /// Performance of the first extent.
    pub perf: Perf,
    /// NUMA node of the first extent.
    pub node: u16,
    /// Source class of the first extent.
    pub source: u8,
    /// The application marked the device busy: host release requests are answered RELEASE_BUSY.
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

/// Formats a 16-byte tag as a lowercase 8-4-4-4-12 UUID string.
pub fn format_uuid(u: &[u8; 16]) -> String {
    let h = |r: core::ops::Range<usize>| u[r].iter().map(|b| format!("{b:02x}")).collect::<String>();
    format!("{}-{}-{}-{}-{}", h(0..4), h(4..6), h(6..8), h(8..10), h(10..16))
}

/// The set of dax devices, in creation order, with indexes so that every check an offer needs
/// (id known, tag present, range overlapping) costs O(log n) in the number of accepted extents.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DaxRegistry {
    devices: Vec<DaxDevice>,
    /// Creation number of `devices[i]`; ascending, so positions are found by binary search.
    serials: Vec<u64>,
    next_id: u64,
    /// Extent id -> creation number of its device.
    by_extent: BTreeMap<u64, u64>,
    /// Non-nil tag -> creation number of its device.
    by_tag: BTreeMap<[u8; 16], u64>,
    /// Accepted ranges: guest-physical start -> length.
    by_gpa: BTreeMap<u64, u64>,
}

impl DaxRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every device, in creation order.
    pub fn devices(&self) -> &[DaxDevice] {
        &self.devices
    }

    /// The device carrying `tag`; the nil tag matches nothing.
    pub fn lookup(&self, tag: &[u8; 16]) -> Option<&DaxDevice> {
        self.position_of_tag(tag).map(|i| &self.devices[i])
    }

    fn position_of_serial(&self, serial: u64) -> Option<usize> {
        self.serials.binary_search(&serial).ok()
    }

    /// True if `[gpa, gpa + len)` intersects an accepted extent.
    pub fn overlaps(&self, gpa: u64, len: u64) -> bool {
        let end = gpa.saturating_add(len);
        self.by_gpa
            .range(..end)
            .next_back()
            .is_some_and(|(start, l)| start.saturating_add(*l) > gpa)
    }

    /// The device named `name`.
    pub fn by_name(&self, name: &str) -> Option<&DaxDevice> {
        self.devices.iter().find(|d| d.name == name)
    }

    /// Index of the device holding extent `id`.
    pub fn device_of(&self, id: u64) -> Option<usize> {
        self.by_extent.get(&id).and_then(|s| self.position_of_serial(*s))
    }

    /// Index of the device carrying non-nil `tag`.
    pub fn position_of_tag(&self, tag: &[u8; 16]) -> Option<usize> {
        if is_null_tag(tag) {
            return None;
        }
        self.by_tag.get(tag).and_then(|s| self.position_of_serial(*s))
    }

    /// Every accepted extent, device by device.
    pub fn extents(&self) -> impl Iterator<Item = &Extent> + '_ {
        self.devices.iter().flat_map(|d| d.extents.iter())
    }

    /// Creates a device named with the next free number; returns its index.
    pub(crate) fn create(&mut self, uuid: [u8; 16], extents: Vec<Extent>, busy: bool) -> usize {
        let serial = self.next_id;
        let name = format!("dax0.{serial}");
        self.next_id += 1;
        for e in &extents {
            self.by_extent.insert(e.id, serial);
            self.by_gpa.insert(e.gpa, e.len);
        }
        if !is_null_tag(&uuid) {
            self.by_tag.insert(uuid, serial);
        }
        self.devices.push(DaxDevice::new(name, uuid, extents, busy));
        self.serials.push(serial);
        self.devices.len() - 1
    }

    /// Removes and returns the device at `index`.
    pub(crate) fn remove(&mut self, index: usize) -> DaxDevice {
        self.serials.remove(index);
        let d = self.devices.remove(index);
        for e in &d.extents {
            self.by_extent.remove(&e.id);
            self.by_gpa.remove(&e.gpa);
        }
        if !is_null_tag(&d.uuid) {
            self.by_tag.remove(&d.uuid);
        }
        d
    }

    /// Removes every device (names are still never reused).
    pub(crate) fn clear(&mut self) -> Vec<DaxDevice> {
        self.serials.clear();
        self.by_extent.clear();
        self.by_tag.clear();
        self.by_gpa.clear();
        core::mem::take(&mut self.devices)
    }

    /// Mutable access to the device at `index`.
    pub(crate) fn get_mut(&mut self, index: usize) -> Option<&mut DaxDevice> {
        self.devices.get_mut(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use tagmem_wire::{Le64, EXTENT_ALIGN};

    fn ext(id: u64, tag: u8, seq: u16) -> Extent {
        let mut r = ExtentRecord {
            extent_id: Le64::new(id),
            addr: Le64::new(id * EXTENT_ALIGN),
            length: Le64::new(EXTENT_ALIGN),
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
        assert_eq!(d.size, 4 * EXTENT_ALIGN);
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
    fn uuid_format_and_poison_gpas() {
        let mut u = [0u8; 16];
        for (i, b) in u.iter_mut().enumerate() {
            *b = u8::try_from(i).unwrap() * 0x11;
        }
        assert_eq!(format_uuid(&u), "00112233-4455-6677-8899-aabbccddeeff");
        let mut e = ext(2, 1, 0);
        e.poison.push(PoisonRange {
            offset: 4096,
            length: 4096,
        });
        let mut reg = DaxRegistry::new();
        reg.create([1; 16], vec![e], false);
        let d = &reg.devices()[0];
        assert_eq!(d.poison().collect::<Vec<_>>(), [(2 * EXTENT_ALIGN + 4096, 4096)]);
    }

    #[test]
    fn overlap_and_flags() {
        let mut e = ext(1, 0, 0);
        e.flags = EXTENT_F_READONLY;
        assert!(e.overlaps(EXTENT_ALIGN, 1));
        assert!(e.overlaps(0, EXTENT_ALIGN + 1));
        assert!(!e.overlaps(0, EXTENT_ALIGN));
        assert!(!e.overlaps(2 * EXTENT_ALIGN, u64::MAX));
        assert!(e.is_readonly() && !e.is_sharable() && !e.is_tagged());
    }
}

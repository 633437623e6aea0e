//! The source-agnostic model: what a lookup returns, whichever view the capacity came from.
//!
//! Field meanings follow the Linux dax bus (`/sys/bus/dax/devices/daxX.Y/*`) so that a device
//! read from CXL sysfs on a host, from the guest-side sysfs of the tagged virtio-mem driver, or
//! built from the reference driver's own view compares equal field by field (addresses aside).

use std::fmt;

use uuid::Uuid;

use crate::error::LookupError;

/// Page size the dax bus counts `mappingN/page_offset` in (x86-64 base page).
pub const PAGE_SIZE: u64 = 4096;

/// How a dax device is used, as `daxctl list` reports it in `mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Bound to `device_dax` (or to no driver): memory reached through `/dev/daxX.Y`.
    Devdax,
    /// Bound to `kmem`: onlined as System RAM.
    SystemRam,
    /// Bound to `fsdev_dax`: used by famfs.
    Famfs,
}

impl Mode {
    /// The mode for a device bound to the driver named `driver` (the basename of its `driver`
    /// symlink), decided as daxctl does: `kmem` is system-ram, `fsdev_dax` is famfs, anything
    /// else (including no driver) is devdax.
    pub fn from_driver(driver: Option<&str>) -> Mode {
        match driver {
            Some("kmem") => Mode::SystemRam,
            Some("fsdev_dax") => Mode::Famfs,
            _ => Mode::Devdax,
        }
    }

    /// The string `daxctl list` prints for this mode.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Devdax => "devdax",
            Mode::SystemRam => "system-ram",
            Mode::Famfs => "famfs",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where tagged capacity comes from (the `source` class of SPEC.md T-LOOKUP-6): the wire
/// crate's class, with its sysfs/JSON names.
pub use tagmem_wire::SourceClass;

/// Capacity flags of SPEC.md (`VIRTIO_MEM_EXTENT_F_SHARABLE`, `VIRTIO_MEM_EXTENT_F_READONLY`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flags {
    /// The capacity may be shared with other hosts or guests.
    pub sharable: bool,
    /// The holder may only read the capacity.
    pub readonly: bool,
}

impl Flags {
    /// Wire bit of `sharable`.
    pub const SHARABLE_BIT: u32 = tagmem_wire::VIRTIO_MEM_EXTENT_F_SHARABLE;
    /// Wire bit of `readonly`.
    pub const READONLY_BIT: u32 = tagmem_wire::VIRTIO_MEM_EXTENT_F_READONLY;

    /// The flags of a wire `flags` word; unknown bits are ignored.
    pub fn from_bits(bits: u32) -> Flags {
        Flags {
            sharable: bits & Self::SHARABLE_BIT != 0,
            readonly: bits & Self::READONLY_BIT != 0,
        }
    }

    /// The union of two flag sets (read-only if either is).
    pub fn union(self, other: Flags) -> Flags {
        Flags {
            sharable: self.sharable || other.sharable,
            readonly: self.readonly || other.readonly,
        }
    }

    /// The names of the set flags, in the order sysfs lists them.
    pub fn names(self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.sharable {
            v.push("sharable");
        }
        if self.readonly {
            v.push("readonly");
        }
        v
    }
}

/// One contiguous range of a dax device (`mappingN/`), as `daxctl list -M` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Mapping {
    /// Offset of the range within the device, in pages of [`PAGE_SIZE`] (`mappingN/page_offset`).
    pub page_offset: u64,
    /// First byte address (`mappingN/start`).
    pub start: u64,
    /// Last byte address, inclusive (`mappingN/end`).
    pub end: u64,
    /// `end - start + 1`, bytes.
    pub size: u64,
}

impl Mapping {
    /// A mapping from its sysfs values; `None` if `end < start` or the range covers all of u64.
    pub fn new(page_offset: u64, start: u64, end: u64) -> Option<Mapping> {
        let size = end.checked_sub(start)?.checked_add(1)?;
        Some(Mapping {
            page_offset,
            start,
            end,
            size,
        })
    }

    /// True if `[start, start + length)` lies inside this mapping.
    pub fn contains_range(&self, start: u64, length: u64) -> bool {
        match length.checked_sub(1).and_then(|l| start.checked_add(l)) {
            Some(last) => start >= self.start && last <= self.end,
            None => false,
        }
    }
}

/// A poisoned byte range inside an extent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Poison {
    /// Offset from the extent's start, bytes.
    pub offset: u64,
    /// Length, bytes.
    pub length: u64,
}

/// One extent backing a dax device.
///
/// On bare metal CXL reports an extent's `offset` within its dax region; a guest reports its
/// guest-physical `start`. Either may be absent; `start` is filled in on bare metal when the
/// region's base address is readable.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Extent {
    /// Offset within the parent region (CXL `extentX.Y/offset`), when the source reports one.
    pub offset: Option<u64>,
    /// Absolute start address (host-physical on bare metal, guest-physical in a guest).
    pub start: Option<u64>,
    /// Length, bytes.
    pub length: u64,
    /// Poisoned ranges reported so far.
    pub poison: Vec<Poison>,
}

impl Extent {
    /// An extent known by its absolute address (the guest view: `(gpa, len)`).
    pub fn at(start: u64, length: u64) -> Extent {
        Extent {
            start: Some(start),
            length,
            ..Extent::default()
        }
    }

    /// An extent known by its offset within a region (the CXL `extentX.Y` view).
    pub fn in_region(offset: u64, length: u64) -> Extent {
        Extent {
            offset: Some(offset),
            length,
            ..Extent::default()
        }
    }
}

/// Performance of a device's target node, from one HMAT access class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Perf {
    /// The access class the values come from: 1 (`access1`, CPU initiators), the class tagged
    /// capacity reports everywhere (SPEC.md T-EXT-6).
    pub access_class: u8,
    /// Read latency, nanoseconds.
    pub read_latency_ns: u32,
    /// Write latency, nanoseconds.
    pub write_latency_ns: u32,
    /// Read bandwidth, MB/s.
    pub read_bandwidth_mbps: u32,
    /// Write bandwidth, MB/s.
    pub write_bandwidth_mbps: u32,
}

impl Perf {
    /// Performance as a tagged extent record reports it, where all-zero means "not reported"
    /// (SPEC.md T-LOOKUP-5). A record carries CPU-initiator values (SPEC.md T-EXT-6), so they
    /// are access class 1, as HMAT's `access1` and a CXL region's `access1` report them.
    pub fn from_record(
        read_latency_ns: u32,
        write_latency_ns: u32,
        read_mbps: u32,
        write_mbps: u32,
    ) -> Option<Perf> {
        if read_latency_ns == 0 && write_latency_ns == 0 && read_mbps == 0 && write_mbps == 0 {
            return None;
        }
        Some(Perf {
            access_class: 1,
            read_latency_ns,
            write_latency_ns,
            read_bandwidth_mbps: read_mbps,
            write_bandwidth_mbps: write_mbps,
        })
    }
}

/// One dax device: a tag group, or one untagged extent, or any other dax capacity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaxDevice {
    /// Device name, e.g. `dax0.0`.
    pub chardev: String,
    /// Character device path, e.g. `/dev/dax0.0`, when it exists.
    pub path: Option<String>,
    /// The tag; nil for untagged capacity (and on kernels without the `uuid` attribute).
    pub uuid: Uuid,
    /// Size, bytes.
    pub size: u64,
    /// NUMA node the memory would be onlined to (`target_node`); `None` when unknown or negative.
    pub target_node: Option<i32>,
    /// NUMA node of the device itself (`numa_node`); `None` when unknown or `NUMA_NO_NODE`.
    pub numa_node: Option<i32>,
    /// Fault granularity, bytes; 0 when the kernel does not report it.
    pub align: u64,
    /// Mode, as `daxctl list` determines it.
    pub mode: Mode,
    /// Bound to a driver (daxctl prints `"state":"disabled"` otherwise).
    pub enabled: bool,
    /// Ranges of the device in `mappingN` order.
    pub mappings: Vec<Mapping>,
    /// Extents backing the device, when the source reports them.
    pub extents: Vec<Extent>,
    /// Performance of the target node, when reported.
    pub perf: Option<Perf>,
    /// Source class, when known.
    pub source_class: Option<SourceClass>,
    /// Sharable/read-only flags, when known.
    pub flags: Option<Flags>,
}

impl DaxDevice {
    /// An empty, enabled devdax device named `chardev` carrying `uuid`; fill the fields in.
    pub fn new(chardev: impl Into<String>, uuid: Uuid) -> DaxDevice {
        DaxDevice {
            chardev: chardev.into(),
            path: None,
            uuid,
            size: 0,
            target_node: None,
            numa_node: None,
            align: 0,
            mode: Mode::Devdax,
            enabled: true,
            mappings: Vec::new(),
            extents: Vec::new(),
            perf: None,
            source_class: None,
            flags: None,
        }
    }

    /// A devdax device laid out from its extents' `(start, length)` in order, as SPEC.md
    /// T-LOOKUP-3 says a guest shows one: mapping i covers extent i, its page offset is the sum
    /// of the lengths before it, and the size is the sum of all lengths. The path is
    /// `/dev/<chardev>`.
    pub fn from_ranges(
        chardev: impl Into<String>,
        uuid: Uuid,
        ranges: impl IntoIterator<Item = (u64, u64)>,
    ) -> Result<DaxDevice, LookupError> {
        let chardev = chardev.into();
        let invalid = |reason: String| LookupError::InvalidDevice {
            chardev: chardev.clone(),
            reason,
        };
        let mut mappings = Vec::new();
        let mut extents = Vec::new();
        let mut size: u64 = 0;
        for (i, (start, length)) in ranges.into_iter().enumerate() {
            if length == 0 || length % PAGE_SIZE != 0 {
                return Err(invalid(format!(
                    "extent {i}: length {length:#x} is not a non-zero multiple of {PAGE_SIZE}"
                )));
            }
            let end = length
                .checked_sub(1)
                .and_then(|l| start.checked_add(l))
                .ok_or_else(|| invalid(format!("extent {i}: {start:#x}+{length:#x} overflows")))?;
            let mapping = Mapping::new(size / PAGE_SIZE, start, end)
                .ok_or_else(|| invalid(format!("extent {i}: empty range")))?;
            mappings.push(mapping);
            extents.push(Extent::at(start, length));
            size = size
                .checked_add(length)
                .ok_or_else(|| invalid(format!("extent {i}: total size overflows")))?;
        }
        let mut dev = DaxDevice::new(chardev, uuid);
        dev.path = Some(format!("/dev/{}", dev.chardev));
        dev.size = size;
        dev.mappings = mappings;
        dev.extents = extents;
        Ok(dev)
    }

    /// True if the device carries a non-nil tag.
    pub fn is_tagged(&self) -> bool {
        !self.uuid.is_nil()
    }

    /// True if `tag` is non-nil and is this device's tag (the nil tag matches nothing).
    pub fn has_tag(&self, tag: &Uuid) -> bool {
        !tag.is_nil() && self.uuid == *tag
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_from_driver_matches_daxctl() {
        assert_eq!(Mode::from_driver(Some("kmem")), Mode::SystemRam);
        assert_eq!(Mode::from_driver(Some("device_dax")), Mode::Devdax);
        assert_eq!(Mode::from_driver(Some("fsdev_dax")), Mode::Famfs);
        assert_eq!(Mode::from_driver(None), Mode::Devdax);
        assert_eq!(Mode::SystemRam.to_string(), "system-ram");
    }

    #[test]
    fn source_class_round_trips() {
        for (i, c) in SourceClass::ALL.into_iter().enumerate() {
            assert_eq!(SourceClass::from_wire(u8::try_from(i).unwrap()), Some(c));
            assert_eq!(SourceClass::from_name(c.as_str()), Some(c));
        }
        assert_eq!(SourceClass::from_wire(5), None);
        assert_eq!(SourceClass::from_name("hbm"), None);
    }

    #[test]
    fn flags_from_bits() {
        let f = Flags::from_bits(3 | 0x80);
        assert!(f.sharable && f.readonly);
        assert_eq!(f.names(), ["sharable", "readonly"]);
        assert_eq!(Flags::from_bits(0).names(), Vec::<&str>::new());
        assert_eq!(Flags::from_bits(1).union(Flags::from_bits(2)), f);
    }

    #[test]
    fn mapping_geometry() {
        let m = Mapping::new(0, 0x1000, 0x1fff).unwrap();
        assert_eq!(m.size, 0x1000);
        assert!(m.contains_range(0x1000, 0x1000));
        assert!(!m.contains_range(0x1000, 0x1001));
        assert!(!m.contains_range(0x1000, 0));
        assert!(Mapping::new(0, 0x2000, 0x1fff).is_none());
        assert!(Mapping::new(0, 0, u64::MAX).is_none());
    }

    #[test]
    fn perf_all_zero_is_not_reported() {
        assert_eq!(Perf::from_record(0, 0, 0, 0), None);
        let p = Perf::from_record(100, 0, 0, 0).unwrap();
        assert_eq!(
            (p.access_class, p.read_latency_ns),
            (1, 100),
            "records are CPU access"
        );
    }

    #[test]
    fn from_ranges_lays_out_like_t_lookup_3() {
        let tag = Uuid::from_u128(0x6f1c2a9e_0d3b_4c55_9a7e_3b1f00c0ffee);
        let d = DaxDevice::from_ranges(
            "dax1.0",
            tag,
            [(0x1_0000_0000, 0x20_0000), (0x1_8000_0000, 0x40_0000)],
        )
        .unwrap();
        assert_eq!(d.size, 0x60_0000);
        assert_eq!(d.path.as_deref(), Some("/dev/dax1.0"));
        assert_eq!(
            d.mappings[0],
            Mapping::new(0, 0x1_0000_0000, 0x1_001f_ffff).unwrap()
        );
        assert_eq!(d.mappings[1].page_offset, 0x20_0000 / PAGE_SIZE);
        assert_eq!(d.mappings[1].end, 0x1_803f_ffff);
        assert_eq!(d.extents[1], Extent::at(0x1_8000_0000, 0x40_0000));
        assert!(d.has_tag(&tag) && d.is_tagged());
        assert!(!d.has_tag(&Uuid::nil()));
    }

    #[test]
    fn from_ranges_rejects_bad_geometry() {
        let e = DaxDevice::from_ranges("dax1.0", Uuid::nil(), [(0, 0)]).unwrap_err();
        assert!(e.to_string().starts_with("device dax1.0: extent 0:"), "{e}");
        let e = DaxDevice::from_ranges("dax1.0", Uuid::nil(), [(u64::MAX - 0xfff, 0x2000)]).unwrap_err();
        assert!(e.to_string().contains("overflows"), "{e}");
        let e = DaxDevice::from_ranges("dax1.0", Uuid::nil(), [(0, 0x1800)]).unwrap_err();
        assert!(e.to_string().contains("multiple of 4096"), "{e}");
    }
}

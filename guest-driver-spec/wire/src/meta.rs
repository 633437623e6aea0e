//! An extent's metadata as both sides decode it from a record: its performance and the class of
//! host capacity behind it. Defined once for the device, the drivers, lookup and the VMMs.

use crate::tagged::{
    ExtentRecord, VIRTIO_MEM_SOURCE_CXL_DC, VIRTIO_MEM_SOURCE_FILE, VIRTIO_MEM_SOURCE_PMEM,
    VIRTIO_MEM_SOURCE_SOFT_RESERVED, VIRTIO_MEM_SOURCE_UNSPECIFIED,
};
use core::fmt;

/// HMAT-style performance data in the units of Linux's
/// `/sys/devices/system/node/nodeN/accessK/initiators/` ABI. Zero means "not reported".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Perf {
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

/// Class of host capacity an extent comes from (`VIRTIO_MEM_SOURCE_*` on the wire).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "kebab-case"))]
pub enum SourceClass {
    /// Not reported.
    #[default]
    Unspecified,
    /// CXL Dynamic Capacity.
    CxlDc,
    /// Soft-reserved memory (HBM and the like, `dax_hmem`).
    SoftReserved,
    /// Persistent memory.
    Pmem,
    /// A host file: regular, hugetlbfs or memfd.
    File,
}

impl SourceClass {
    /// Every class, in wire-value order.
    pub const ALL: [SourceClass; 5] = [
        SourceClass::Unspecified,
        SourceClass::CxlDc,
        SourceClass::SoftReserved,
        SourceClass::Pmem,
        SourceClass::File,
    ];

    /// The wire value.
    pub fn to_wire(self) -> u8 {
        match self {
            SourceClass::Unspecified => VIRTIO_MEM_SOURCE_UNSPECIFIED,
            SourceClass::CxlDc => VIRTIO_MEM_SOURCE_CXL_DC,
            SourceClass::SoftReserved => VIRTIO_MEM_SOURCE_SOFT_RESERVED,
            SourceClass::Pmem => VIRTIO_MEM_SOURCE_PMEM,
            SourceClass::File => VIRTIO_MEM_SOURCE_FILE,
        }
    }

    /// The class of a wire value, `None` for an undefined one.
    pub fn from_wire(value: u8) -> Option<SourceClass> {
        Self::ALL.into_iter().find(|c| c.to_wire() == value)
    }

    /// The class of a wire value; an undefined one reads as `Unspecified`.
    pub fn decode(value: u8) -> SourceClass {
        Self::from_wire(value).unwrap_or_default()
    }

    /// The class named by its sysfs/JSON string (`cxl-dc`, `soft-reserved`, ...).
    pub fn from_name(name: &str) -> Option<SourceClass> {
        Self::ALL.into_iter().find(|c| c.as_str() == name)
    }

    /// The string sysfs and JSON use for this class.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceClass::Unspecified => "unspecified",
            SourceClass::CxlDc => "cxl-dc",
            SourceClass::SoftReserved => "soft-reserved",
            SourceClass::Pmem => "pmem",
            SourceClass::File => "file",
        }
    }
}

impl fmt::Display for SourceClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_round_trip_through_wire_values_and_names() {
        for c in SourceClass::ALL {
            assert_eq!(SourceClass::from_wire(c.to_wire()), Some(c));
            assert_eq!(SourceClass::from_name(c.as_str()), Some(c));
        }
        assert_eq!(SourceClass::from_wire(5), None);
        assert_eq!(SourceClass::decode(200), SourceClass::Unspecified);
    }
}

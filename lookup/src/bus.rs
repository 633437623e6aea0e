//! Dynamic-capacity dax regions as their parent bus lists them.
//!
//! - CXL Dynamic Capacity (DCD v11): `sys/bus/cxl/devices/dax_regionX/extentX.Y/{offset,length,uuid}`
//!   (`uuid` hidden for untagged extents), the extent's `offset` counted from the CXL region's
//!   `resource` (`regionN/resource`, the parent of `dax_regionX`), and the region's performance in
//!   `regionN/access1/{read,write}_{latency,bandwidth}` (each hidden while zero).
//! - The tagged virtio-mem driver in a guest (SPEC.md T-LOOKUP-6):
//!   `sys/bus/virtio/devices/virtioN/tagmem/extentE/{uuid,start,length,flags,target_node,source,seq,poison}`
//!   and `extentE/access1/{read,write}_{latency,bandwidth}`, the dax region's id in
//!   `virtioN/dax_region/id`.
//!
//! Extents are checked as they are read: a zero length, or a range that overflows the address
//! space, is an error naming the file.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::attr::{parse_num, parse_u64, read_opt, read_u64, read_u64_opt, read_uuid_opt};
use crate::error::LookupError;
use crate::model::{Extent, Flags, Perf, Poison, SourceClass};

/// An extent as a parent bus lists it.
#[derive(Clone, Debug)]
pub(crate) struct BusExtent {
    /// Sort key within its bus directory (the `Y` of `extentX.Y`, the `E` of `extentE`).
    pub index: u64,
    /// The tag; `None` when the bus hides it (untagged).
    pub uuid: Option<Uuid>,
    /// Offset, absolute start (when known), length, poison.
    pub extent: Extent,
    /// Flags, when the bus shows them.
    pub flags: Option<Flags>,
    /// Source class, when the bus shows it.
    pub source: Option<SourceClass>,
    /// Position in its tag group (guest only; CXL sysfs lists extents in arrival order).
    pub seq: u16,
    /// The extent's node, when the bus shows it.
    pub target_node: Option<i32>,
    /// The extent's performance (guest only; CXL reports it per region).
    pub perf: Option<Perf>,
}

impl BusExtent {
    /// The tag, nil when hidden.
    pub fn tag(&self) -> Uuid {
        self.uuid.unwrap_or_else(Uuid::nil)
    }
}

/// A dynamic-capacity dax region.
#[derive(Clone, Debug)]
pub(crate) struct DcRegion {
    /// The dax region id (the `X` of its devices' `daxX.Y`), when known.
    pub id: Option<u32>,
    /// The name daxctl gives it (`region<id>`), or the parent device's name without an id.
    pub name: String,
    /// Whether its extents' absolute addresses are known (CXL needs the region's `resource`).
    pub addressed: bool,
    /// Region-wide performance (CXL `regionN/access1`).
    pub perf: Option<Perf>,
    /// Its extents in bus order.
    pub extents: Vec<BusExtent>,
}

pub(crate) fn name_of(path: &Path) -> &str {
    path.file_name().and_then(|n| n.to_str()).unwrap_or("")
}

/// The entries of `dir` sorted by name; a missing directory is empty.
pub(crate) fn sorted_dir(dir: &Path) -> Result<Vec<PathBuf>, LookupError> {
    let read_err = |source| LookupError::Read {
        path: dir.to_owned(),
        source,
    };
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(read_err(e)),
    };
    let mut out = entries
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_err)?;
    out.sort();
    Ok(out)
}

/// Performance in an `accessN/` directory whose attributes are hidden while zero (CXL region,
/// guest extent); `None` when the directory reports nothing.
pub(crate) fn read_sparse_perf(dir: &Path, class: u8) -> Result<Option<Perf>, LookupError> {
    if !dir.is_dir() {
        return Ok(None);
    }
    let get = |name: &str| -> Result<u32, LookupError> {
        match read_opt(&dir.join(name))? {
            Some((p, v)) => parse_num(&p, &v, "an unsigned 32-bit decimal"),
            None => Ok(0),
        }
    };
    let p = Perf {
        access_class: class,
        read_latency_ns: get("read_latency")?,
        write_latency_ns: get("write_latency")?,
        read_bandwidth_mbps: get("read_bandwidth")?,
        write_bandwidth_mbps: get("write_bandwidth")?,
    };
    let none = p.read_latency_ns == 0
        && p.write_latency_ns == 0
        && p.read_bandwidth_mbps == 0
        && p.write_bandwidth_mbps == 0;
    Ok((!none).then_some(p))
}

/// Checks an extent's length and that `[start, start + length)` fits in 64 bits.
fn check_extent(dir: &Path, start: u64, length: u64, what: &str) -> Result<(), LookupError> {
    if length == 0 {
        return Err(LookupError::Inconsistent {
            path: dir.join("length"),
            reason: "zero length".to_owned(),
        });
    }
    if start.checked_add(length - 1).is_none() {
        return Err(LookupError::Inconsistent {
            path: dir.to_owned(),
            reason: format!("{what} {start:#x} + length {length:#x} overflows the address space"),
        });
    }
    Ok(())
}

/// The dax region id a parent device registered (`<parent>/dax_region/id`), if it did.
fn dax_region_id(parent: &Path) -> Result<Option<u32>, LookupError> {
    match read_opt(&parent.join("dax_region/id"))? {
        Some((p, v)) => parse_num(&p, &v, "a decimal dax region id").map(Some),
        None => Ok(None),
    }
}

/// CXL dax region `X`, if `sys/bus/cxl/devices/dax_regionX` exists.
pub(crate) fn cxl_region(root: &Path, x: u32) -> Result<Option<DcRegion>, LookupError> {
    let dir = root.join(format!("sys/bus/cxl/devices/dax_region{x}"));
    if !dir.is_dir() {
        return Ok(None);
    }
    let id = dax_region_id(&dir)?.unwrap_or(x);
    let real = fs::canonicalize(&dir).map_err(|source| LookupError::Read {
        path: dir.clone(),
        source,
    })?;
    let region_dir = real.parent().map(Path::to_path_buf);
    // `resource` reads all-ones while the region has no address range.
    let base = match &region_dir {
        Some(r) => read_u64_opt(&r.join("resource"))?.filter(|b| *b != u64::MAX),
        None => None,
    };
    let perf = match &region_dir {
        Some(r) => read_sparse_perf(&r.join("access1"), 1)?,
        None => None,
    };
    let prefix = format!("extent{x}.");
    let mut extents = Vec::new();
    for path in sorted_dir(&dir)? {
        let Some(index) = name_of(&path).strip_prefix(&prefix).and_then(|s| s.parse().ok()) else {
            continue;
        };
        let offset = read_u64(&path.join("offset"))?;
        let length = read_u64(&path.join("length"))?;
        check_extent(&path, offset, length, "offset")?;
        let mut extent = Extent::in_region(offset, length);
        if let Some(base) = base {
            let start = base
                .checked_add(offset)
                .ok_or_else(|| LookupError::Inconsistent {
                    path: path.join("offset"),
                    reason: format!(
                        "offset {offset:#x} from the region's start {base:#x} overflows the address space"
                    ),
                })?;
            check_extent(&path, start, length, "start")?;
            extent.start = Some(start);
        }
        extents.push(BusExtent {
            index,
            uuid: read_uuid_opt(&path.join("uuid"))?,
            extent,
            flags: None,
            source: Some(SourceClass::CxlDc),
            seq: 0,
            target_node: None,
            perf: None,
        });
    }
    extents.sort_by_key(|e| e.index);
    Ok(Some(DcRegion {
        id: Some(id),
        name: format!("region{id}"),
        addressed: base.is_some(),
        perf,
        extents,
    }))
}

/// Every CXL dax region of the tree, by name.
pub(crate) fn cxl_regions(root: &Path) -> Result<Vec<DcRegion>, LookupError> {
    let mut out = Vec::new();
    for path in sorted_dir(&root.join("sys/bus/cxl/devices"))? {
        let Some(x) = name_of(&path)
            .strip_prefix("dax_region")
            .and_then(|s| s.parse().ok())
        else {
            continue;
        };
        out.extend(cxl_region(root, x)?);
    }
    Ok(out)
}

/// Every tagged virtio-mem device of the tree as a region, by name.
pub(crate) fn virtio_regions(root: &Path) -> Result<Vec<DcRegion>, LookupError> {
    let mut out = Vec::new();
    for vdev in sorted_dir(&root.join("sys/bus/virtio/devices"))? {
        let tagmem = vdev.join("tagmem");
        if !tagmem.is_dir() {
            continue;
        }
        let id = dax_region_id(&vdev)?;
        let mut extents = Vec::new();
        for dir in sorted_dir(&tagmem)? {
            let Some(index) = name_of(&dir).strip_prefix("extent").and_then(|s| s.parse().ok()) else {
                continue;
            };
            extents.push(read_virtio_extent(&dir, index)?);
        }
        out.push(DcRegion {
            id,
            name: id.map_or_else(|| name_of(&vdev).to_owned(), |id| format!("region{id}")),
            addressed: true,
            perf: None,
            extents,
        });
    }
    Ok(out)
}

fn read_virtio_extent(dir: &Path, index: u64) -> Result<BusExtent, LookupError> {
    let start = read_u64(&dir.join("start"))?;
    let length = read_u64(&dir.join("length"))?;
    check_extent(dir, start, length, "start")?;
    let flags = match read_opt(&dir.join("flags"))? {
        Some((p, v)) => Some(parse_flags(&p, &v)?),
        None => None,
    };
    let source = match read_opt(&dir.join("source"))? {
        Some((p, v)) => Some(SourceClass::from_name(&v).ok_or(LookupError::Parse {
            path: p,
            value: v,
            expected: "a source class (unspecified, cxl-dc, soft-reserved, pmem, file)",
        })?),
        None => None,
    };
    let poison = match read_opt(&dir.join("poison"))? {
        Some((p, v)) => parse_poison(&p, &v, length)?,
        None => Vec::new(),
    };
    let seq = match read_opt(&dir.join("seq"))? {
        Some((p, v)) => parse_num(&p, &v, "a decimal sequence number (0..65535)")?,
        None => 0,
    };
    let target_node = match read_opt(&dir.join("target_node"))? {
        Some((p, v)) => Some(parse_num::<i32>(&p, &v, "a decimal node number")?).filter(|n| *n >= 0),
        None => None,
    };
    Ok(BusExtent {
        index,
        uuid: read_uuid_opt(&dir.join("uuid"))?,
        extent: Extent {
            offset: None,
            start: Some(start),
            length,
            poison,
        },
        flags,
        source,
        seq,
        target_node,
        perf: read_sparse_perf(&dir.join("access1"), 1)?,
    })
}

pub(crate) fn parse_flags(path: &Path, value: &str) -> Result<Flags, LookupError> {
    let mut flags = Flags::default();
    for word in value.split_whitespace() {
        match word {
            "sharable" => flags.sharable = true,
            "readonly" => flags.readonly = true,
            _ => {
                return Err(LookupError::Parse {
                    path: path.to_owned(),
                    value: value.to_owned(),
                    expected: "flag names (sharable, readonly)",
                })
            }
        }
    }
    Ok(flags)
}

/// `offset length` pairs, one a line, each inside an extent of `extent_len` bytes.
pub(crate) fn parse_poison(path: &Path, value: &str, extent_len: u64) -> Result<Vec<Poison>, LookupError> {
    value
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let bad = || LookupError::Parse {
                path: path.to_owned(),
                value: line.to_owned(),
                expected: "an `offset length` pair inside the extent",
            };
            let mut words = line.split_whitespace();
            let (Some(o), Some(l), None) = (words.next(), words.next(), words.next()) else {
                return Err(bad());
            };
            let offset = parse_u64(path, o).map_err(|_| bad())?;
            let length = parse_u64(path, l).map_err(|_| bad())?;
            if length == 0 || offset.checked_add(length).is_none_or(|end| end > extent_len) {
                return Err(bad());
            }
            Ok(Poison { offset, length })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_poison_text() {
        let p = Path::new("f");
        assert_eq!(
            parse_flags(p, "sharable readonly\n").unwrap(),
            Flags::from_bits(3)
        );
        assert_eq!(parse_flags(p, "").unwrap(), Flags::default());
        assert!(parse_flags(p, "sharable bogus").is_err());
        let v = parse_poison(p, "0x1000 0x1000\n8192 4096\n", 0x20_0000).unwrap();
        assert_eq!(
            v[1],
            Poison {
                offset: 8192,
                length: 4096
            }
        );
        assert!(parse_poison(p, "0x1000\n", 0x20_0000).is_err());
        assert!(parse_poison(p, "1 2 3\n", 0x20_0000).is_err());
        assert!(
            parse_poison(p, "0x1ff000 0x2000\n", 0x20_0000).is_err(),
            "past the extent"
        );
        assert!(parse_poison(p, "0 0\n", 0x20_0000).is_err(), "empty");
        assert!(
            parse_poison(p, "0xffffffffffffffff 2\n", u64::MAX).is_err(),
            "overflow"
        );
    }

    #[test]
    fn extent_ranges_are_checked() {
        let d = Path::new("extent2.0");
        assert!(check_extent(d, 0, 1, "offset").is_ok());
        assert!(check_extent(d, u64::MAX, 1, "offset").is_ok(), "the last byte");
        let e = check_extent(d, 0, 0, "offset").unwrap_err();
        assert_eq!(e.to_string(), "extent2.0/length: zero length");
        let e = check_extent(d, u64::MAX, 2, "start").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("extent2.0: start 0xffffffffffffffff + length 0x2 overflows"),
            "{e}"
        );
    }
}

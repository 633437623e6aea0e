//! [`SysfsSource`]: dax devices as the Linux kernel shows them, on a host or in a guest.
//!
//! Read, relative to a configurable root (default `/`):
//! - `sys/bus/dax/devices/daxX.Y/{size,uuid,target_node,numa_node,align,driver}` and
//!   `mappingN/{start,end,page_offset}` (`Documentation/ABI/testing/sysfs-bus-dax`; numbers are
//!   read as daxctl does with `strtoull(.., 0)`: `0x` hexadecimal, otherwise decimal);
//! - CXL Dynamic Capacity extents `sys/bus/cxl/devices/dax_regionX/extentX.Y/{offset,length,uuid}`
//!   (`uuid` hidden for untagged extents), placed at the CXL region's `resource` address;
//! - the tagged virtio-mem driver's extents in a guest,
//!   `sys/bus/virtio/devices/virtioN/tagmem/extentE/{uuid,start,length,flags,source,poison}`
//!   (SPEC.md T-LOOKUP-6);
//! - HMAT performance `sys/devices/system/node/nodeN/access{0,1}/initiators/{read,write}_{latency,bandwidth}`
//!   (ns, MB/s) of the device's `target_node`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use uuid::Uuid;

use crate::error::LookupError;
use crate::model::{DaxDevice, Extent, Flags, Mapping, Mode, Perf, Poison, SourceClass};
use crate::source::CapacitySource;

/// The dax devices of a sysfs tree mounted at `root`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SysfsSource {
    root: PathBuf,
}

impl Default for SysfsSource {
    fn default() -> Self {
        SysfsSource::new("/")
    }
}

/// An extent as a parent bus (CXL or the tagged virtio-mem device) lists it.
#[derive(Clone, Debug)]
struct BusExtent {
    /// Sort key within its bus directory (the `Y` of `extentX.Y`, the `E` of `extentE`).
    index: u64,
    uuid: Option<Uuid>,
    extent: Extent,
    flags: Option<Flags>,
    source: Option<SourceClass>,
}

impl SysfsSource {
    /// A source reading the tree below `root` (`/` for the running system).
    pub fn new(root: impl Into<PathBuf>) -> SysfsSource {
        SysfsSource { root: root.into() }
    }

    /// The root this source reads below.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dax_devices_dir(&self) -> PathBuf {
        self.root.join("sys/bus/dax/devices")
    }

    /// Reads one device, `chardev` being its name under `sys/bus/dax/devices` (e.g. `dax0.0`).
    pub fn read_device(&self, chardev: &str) -> Result<DaxDevice, LookupError> {
        let base = self.dax_devices_dir().join(chardev);
        if !base.is_dir() {
            return Err(LookupError::Missing { path: base });
        }
        let uuid = match read_opt(&base.join("uuid"))? {
            Some((p, v)) => parse_uuid(&p, &v)?,
            None => Uuid::nil(),
        };
        let mut dev = DaxDevice::new(chardev, uuid);
        let (p, v) = read_req(&base.join("size"))?;
        dev.size = parse_u64(&p, &v)?;
        dev.target_node = read_node(&base.join("target_node"))?;
        dev.numa_node = read_node(&base.join("numa_node"))?;
        dev.align = match read_opt(&base.join("align"))? {
            Some((p, v)) => parse_u64(&p, &v)?,
            None => 0,
        };
        let driver = driver_name(&base.join("driver"))?;
        dev.enabled = driver.is_some();
        dev.mode = Mode::from_driver(driver.as_deref());
        dev.mappings = read_mappings(&base)?;
        check_mapped_size(&base, &dev)?;
        if self.root.join("dev").join(chardev).exists() {
            dev.path = Some(format!("/dev/{chardev}"));
        }
        self.attach_extents(&mut dev)?;
        if let Some(node) = dev.target_node {
            dev.perf = self.read_perf(node)?;
        }
        Ok(dev)
    }

    /// Fills in the extents of `dev` (and source class and flags) from its parent bus.
    fn attach_extents(&self, dev: &mut DaxDevice) -> Result<(), LookupError> {
        if let Some(region) = dax_name_ids(&dev.chardev).map(|(r, _)| r) {
            let dir = self.root.join(format!("sys/bus/cxl/devices/dax_region{region}"));
            if dir.is_dir() {
                let mut extents = read_cxl_extents(&dir, region)?;
                let base = cxl_region_base(&dir)?;
                if let Some(base) = base {
                    for e in &mut extents {
                        e.extent.start = e.extent.offset.and_then(|o| o.checked_add(base));
                    }
                }
                let mine = if base.is_some() {
                    in_mappings(dev, extents)
                } else if dev.is_tagged() {
                    // Without the region's address, fall back to the DCD rule: a tagged device
                    // holds every extent carrying its tag.
                    extents.into_iter().filter(|e| e.uuid == Some(dev.uuid)).collect()
                } else {
                    Vec::new()
                };
                if !mine.is_empty() {
                    dev.source_class = Some(SourceClass::CxlDc);
                    dev.extents = mine.into_iter().map(|e| e.extent).collect();
                    return Ok(());
                }
            }
        }
        let mine = in_mappings(dev, self.read_virtio_extents()?);
        if let Some(first) = mine.first() {
            dev.source_class = first.source;
            dev.flags = mine.iter().filter_map(|e| e.flags).reduce(Flags::union);
            dev.extents = mine.into_iter().map(|e| e.extent).collect();
        }
        Ok(())
    }

    /// Every extent the tagged virtio-mem driver lists, over all virtio devices.
    fn read_virtio_extents(&self) -> Result<Vec<BusExtent>, LookupError> {
        let bus = self.root.join("sys/bus/virtio/devices");
        let mut out = Vec::new();
        for vdev in sorted_dir(&bus)? {
            let tagmem = vdev.join("tagmem");
            if !tagmem.is_dir() {
                continue;
            }
            for dir in sorted_dir(&tagmem)? {
                let Some(index) = name_of(&dir).strip_prefix("extent").and_then(|s| s.parse().ok()) else {
                    continue;
                };
                out.push(read_virtio_extent(&dir, index)?);
            }
        }
        Ok(out)
    }

    /// HMAT performance of `node`: access class 0, else 1, else none.
    fn read_perf(&self, node: i32) -> Result<Option<Perf>, LookupError> {
        for class in [0u8, 1] {
            let dir = self.root.join(format!(
                "sys/devices/system/node/node{node}/access{class}/initiators"
            ));
            if !dir.is_dir() {
                continue;
            }
            let get = |name: &str| -> Result<u32, LookupError> {
                let (p, v) = read_req(&dir.join(name))?;
                parse_num::<u32>(&p, &v, "an unsigned 32-bit decimal")
            };
            return Ok(Some(Perf {
                access_class: class,
                read_latency_ns: get("read_latency")?,
                write_latency_ns: get("write_latency")?,
                read_bandwidth_mbps: get("read_bandwidth")?,
                write_bandwidth_mbps: get("write_bandwidth")?,
            }));
        }
        Ok(None)
    }
}

impl CapacitySource for SysfsSource {
    fn devices(&self) -> Result<Vec<DaxDevice>, LookupError> {
        let dir = self.dax_devices_dir();
        if !dir.is_dir() {
            // No dax bus is an empty answer on a real system, but a root without `sys` is a
            // mistake worth naming.
            let sys = self.root.join("sys");
            if !sys.is_dir() {
                return Err(LookupError::Missing { path: sys });
            }
            return Ok(Vec::new());
        }
        let mut names: Vec<((u32, u32), String)> = sorted_dir(&dir)?
            .iter()
            .filter_map(|p| {
                let name = name_of(p).to_owned();
                dax_name_ids(&name).map(|ids| (ids, name))
            })
            .collect();
        names.sort();
        names.iter().map(|(_, name)| self.read_device(name)).collect()
    }
}

/// The `(X, Y)` of a `daxX.Y` name.
fn dax_name_ids(name: &str) -> Option<(u32, u32)> {
    let (x, y) = name.strip_prefix("dax")?.split_once('.')?;
    Some((x.parse().ok()?, y.parse().ok()?))
}

/// The extents whose range lies inside one of `dev`'s mappings, in mapping order.
fn in_mappings(dev: &DaxDevice, extents: Vec<BusExtent>) -> Vec<BusExtent> {
    let pos = |e: &BusExtent| {
        let start = e.extent.start?;
        dev.mappings
            .iter()
            .position(|m| m.contains_range(start, e.extent.length))
            .map(|i| (i, start, e.index))
    };
    let mut keyed: Vec<_> = extents
        .into_iter()
        .filter_map(|e| pos(&e).map(|k| (k, e)))
        .collect();
    keyed.sort_by_key(|(k, _)| *k);
    keyed.into_iter().map(|(_, e)| e).collect()
}

fn read_cxl_extents(dir: &Path, region: u32) -> Result<Vec<BusExtent>, LookupError> {
    let prefix = format!("extent{region}.");
    let mut out = Vec::new();
    for path in sorted_dir(dir)? {
        let Some(index) = name_of(&path).strip_prefix(&prefix).and_then(|s| s.parse().ok()) else {
            continue;
        };
        let (p, v) = read_req(&path.join("offset"))?;
        let offset = parse_u64(&p, &v)?;
        let (p, v) = read_req(&path.join("length"))?;
        let length = parse_u64(&p, &v)?;
        let uuid = match read_opt(&path.join("uuid"))? {
            Some((p, v)) => Some(parse_uuid(&p, &v)?),
            None => None,
        };
        out.push(BusExtent {
            index,
            uuid,
            extent: Extent::in_region(offset, length),
            flags: None,
            source: Some(SourceClass::CxlDc),
        });
    }
    out.sort_by_key(|e| e.index);
    Ok(out)
}

/// The host-physical base of the CXL region above `dax_regionX` (its parent's `resource`).
fn cxl_region_base(dax_region: &Path) -> Result<Option<u64>, LookupError> {
    let real = fs::canonicalize(dax_region).map_err(|source| LookupError::Read {
        path: dax_region.to_owned(),
        source,
    })?;
    let Some(parent) = real.parent() else {
        return Ok(None);
    };
    match read_opt(&parent.join("resource"))? {
        Some((p, v)) => parse_u64(&p, &v).map(Some),
        None => Ok(None),
    }
}

fn read_virtio_extent(dir: &Path, index: u64) -> Result<BusExtent, LookupError> {
    let (p, v) = read_req(&dir.join("start"))?;
    let start = parse_u64(&p, &v)?;
    let (p, v) = read_req(&dir.join("length"))?;
    let length = parse_u64(&p, &v)?;
    let uuid = match read_opt(&dir.join("uuid"))? {
        Some((p, v)) => Some(parse_uuid(&p, &v)?),
        None => None,
    };
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
        Some((p, v)) => parse_poison(&p, &v)?,
        None => Vec::new(),
    };
    Ok(BusExtent {
        index,
        uuid,
        extent: Extent {
            offset: None,
            start: Some(start),
            length,
            poison,
        },
        flags,
        source,
    })
}

fn parse_flags(path: &Path, value: &str) -> Result<Flags, LookupError> {
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

fn parse_poison(path: &Path, value: &str) -> Result<Vec<Poison>, LookupError> {
    value
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let bad = || LookupError::Parse {
                path: path.to_owned(),
                value: line.to_owned(),
                expected: "an `offset length` pair",
            };
            let mut words = line.split_whitespace();
            let (Some(o), Some(l), None) = (words.next(), words.next(), words.next()) else {
                return Err(bad());
            };
            let offset = parse_u64(path, o).map_err(|_| bad())?;
            let length = parse_u64(path, l).map_err(|_| bad())?;
            Ok(Poison { offset, length })
        })
        .collect()
}

fn read_mappings(base: &Path) -> Result<Vec<Mapping>, LookupError> {
    let mut out = Vec::new();
    for i in 0usize.. {
        let dir = base.join(format!("mapping{i}"));
        if !dir.is_dir() {
            break;
        }
        let get = |name: &str| -> Result<u64, LookupError> {
            let (p, v) = read_req(&dir.join(name))?;
            parse_u64(&p, &v)
        };
        let (start, end, page_offset) = (get("start")?, get("end")?, get("page_offset")?);
        let m = Mapping::new(page_offset, start, end).ok_or_else(|| LookupError::Inconsistent {
            path: dir.clone(),
            reason: format!("end {end:#x} is before start {start:#x}"),
        })?;
        out.push(m);
    }
    Ok(out)
}

/// A device's mappings cover exactly its size (the dax bus keeps them so).
fn check_mapped_size(base: &Path, dev: &DaxDevice) -> Result<(), LookupError> {
    if dev.mappings.is_empty() {
        return Ok(());
    }
    let mapped = dev.mappings.iter().try_fold(0u64, |s, m| s.checked_add(m.size));
    if mapped != Some(dev.size) {
        return Err(LookupError::Inconsistent {
            path: base.to_owned(),
            reason: format!(
                "mapping0.. cover {} bytes but size reads {}",
                mapped.map_or_else(|| "more than 2^64".to_owned(), |m| m.to_string()),
                dev.size
            ),
        });
    }
    Ok(())
}

/// A node attribute (`target_node`, `numa_node`); negative values (`NUMA_NO_NODE`) read as none.
fn read_node(path: &Path) -> Result<Option<i32>, LookupError> {
    match read_opt(path)? {
        Some((p, v)) => {
            let n = parse_num::<i32>(&p, &v, "a decimal node number")?;
            Ok((n >= 0).then_some(n))
        }
        None => Ok(None),
    }
}

/// The basename of the `driver` symlink, `None` when the device is bound to no driver.
fn driver_name(link: &Path) -> Result<Option<String>, LookupError> {
    match fs::read_link(link) {
        Ok(target) => Ok(target.file_name().map(|n| n.to_string_lossy().into_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(LookupError::Read {
            path: link.to_owned(),
            source,
        }),
    }
}

/// The entries of `dir` sorted by name; a missing directory is empty.
fn sorted_dir(dir: &Path) -> Result<Vec<PathBuf>, LookupError> {
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

fn name_of(path: &Path) -> &str {
    path.file_name().and_then(|n| n.to_str()).unwrap_or("")
}

/// Reads an attribute: `Some((path, trimmed text))`, or `None` if it does not exist.
fn read_opt(path: &Path) -> Result<Option<(PathBuf, String)>, LookupError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some((path.to_owned(), s.trim().to_owned()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(LookupError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Reads an attribute that must exist.
fn read_req(path: &Path) -> Result<(PathBuf, String), LookupError> {
    read_opt(path)?.ok_or_else(|| LookupError::Missing {
        path: path.to_owned(),
    })
}

/// A u64 as the kernel prints it (`%llu` or `%#llx`) and daxctl reads it (`0x` is hexadecimal).
fn parse_u64(path: &Path, value: &str) -> Result<u64, LookupError> {
    let parsed = match value.strip_prefix("0x").or_else(|| value.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => value.parse().ok(),
    };
    parsed.ok_or_else(|| LookupError::Parse {
        path: path.to_owned(),
        value: value.to_owned(),
        expected: "an unsigned 64-bit number (decimal or 0x-hexadecimal)",
    })
}

fn parse_num<T: FromStr>(path: &Path, value: &str, expected: &'static str) -> Result<T, LookupError> {
    value.parse().map_err(|_| LookupError::Parse {
        path: path.to_owned(),
        value: value.to_owned(),
        expected,
    })
}

fn parse_uuid(path: &Path, value: &str) -> Result<Uuid, LookupError> {
    Uuid::parse_str(value).map_err(|_| LookupError::Parse {
        path: path.to_owned(),
        value: value.to_owned(),
        expected: "a UUID (8-4-4-4-12 hexadecimal)",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_parse_as_the_kernel_prints_them() {
        let p = Path::new("x");
        assert_eq!(parse_u64(p, "0x200000").unwrap(), 0x20_0000);
        assert_eq!(parse_u64(p, "0").unwrap(), 0); // "%#llx" prints zero without "0x"
        assert_eq!(parse_u64(p, "2097152").unwrap(), 0x20_0000);
        assert_eq!(parse_u64(p, "0XfF").unwrap(), 255);
        for bad in ["", "0x", "-1", "12k", "0x1g", "18446744073709551616"] {
            let e = parse_u64(p, bad).unwrap_err();
            assert!(matches!(e, LookupError::Parse { .. }), "{bad}: {e}");
        }
    }

    #[test]
    fn dax_names() {
        assert_eq!(dax_name_ids("dax12.3"), Some((12, 3)));
        assert_eq!(dax_name_ids("dax0"), None);
        assert_eq!(dax_name_ids("dax_region0"), None);
        assert_eq!(dax_name_ids("daxa.0"), None);
    }

    #[test]
    fn flags_and_poison_text() {
        let p = Path::new("f");
        assert_eq!(
            parse_flags(p, "sharable readonly\n").unwrap(),
            Flags::from_bits(3)
        );
        assert_eq!(parse_flags(p, "").unwrap(), Flags::default());
        assert!(parse_flags(p, "sharable bogus").is_err());
        let v = parse_poison(p, "0x1000 0x1000\n8192 4096\n").unwrap();
        assert_eq!(
            v[1],
            Poison {
                offset: 8192,
                length: 4096
            }
        );
        assert!(parse_poison(p, "0x1000\n").is_err());
        assert!(parse_poison(p, "1 2 3\n").is_err());
    }
}

//! [`SysfsSource`]: dax devices and unclaimed dynamic capacity as the Linux kernel shows them, on
//! a host or in a guest.
//!
//! Read, relative to a configurable root (default `/`):
//! - `sys/bus/dax/devices/daxX.Y/{size,uuid,target_node,numa_node,align,driver}` and
//!   `mappingN/{start,end,page_offset}` (`Documentation/ABI/testing/sysfs-bus-dax`; numbers are
//!   read as daxctl does with `strtoull(.., 0)`: `0x` hexadecimal, otherwise decimal);
//! - the extents of dynamic-capacity regions ([`crate::bus`]): CXL DCD
//!   `sys/bus/cxl/devices/dax_regionX/extentX.Y/*` on a host, the tagged virtio-mem driver's
//!   `sys/bus/virtio/devices/virtioN/tagmem/extentE/*` in a guest. An extent inside a device's
//!   mappings is claimed by it; the others are listed as [`Unclaimed`] capacity of their region;
//! - performance, CPU access (`access1`, SPEC.md T-EXT-6): the target node's
//!   `sys/devices/system/node/nodeN/access1/initiators/{read,write}_{latency,bandwidth}` (ns,
//!   MB/s) when the node shows it (Linux registers it for online nodes only), otherwise the
//!   parent bus's: the CXL region's `access1`, a guest extent's `access1`.
//!
//! Attributes are read with a one-page bound and without blocking ([`crate::attr`]).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::attr::{parse_num, read_opt, read_req, read_u64, read_u64_opt, read_uuid_opt};
use crate::bus::{self, name_of, sorted_dir, BusExtent, DcRegion};
use crate::capacity::Unclaimed;
use crate::error::LookupError;
use crate::model::{DaxDevice, Flags, Mapping, Mode, Perf, SourceClass, PAGE_SIZE};
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
        let uuid = read_uuid_opt(&base.join("uuid"))?.unwrap_or_else(Uuid::nil);
        let mut dev = DaxDevice::new(chardev, uuid);
        dev.size = read_u64(&base.join("size"))?;
        dev.target_node = read_node(&base.join("target_node"))?;
        dev.numa_node = read_node(&base.join("numa_node"))?;
        dev.align = read_u64_opt(&base.join("align"))?.unwrap_or(0);
        let driver = driver_name(&base.join("driver"))?;
        dev.enabled = driver.is_some();
        dev.mode = Mode::from_driver(driver.as_deref());
        dev.mappings = read_mappings(&base)?;
        check_mapped_size(&base, &dev)?;
        if self.root.join("dev").join(chardev).exists() {
            dev.path = Some(format!("/dev/{chardev}"));
        }
        let bus_perf = self.attach_extents(&mut dev)?;
        dev.perf = match dev.target_node {
            Some(node) => self.node_perf(node)?,
            None => None,
        }
        .or(bus_perf);
        Ok(dev)
    }

    /// Fills in the extents of `dev` (and source class and flags) from its parent bus; returns
    /// the performance the bus reports for them.
    fn attach_extents(&self, dev: &mut DaxDevice) -> Result<Option<Perf>, LookupError> {
        if let Some((x, _)) = dax_name_ids(&dev.chardev) {
            if let Some(region) = bus::cxl_region(&self.root, x)? {
                let mine = if region.addressed {
                    in_mappings(dev, region.extents)
                } else if dev.is_tagged() {
                    // Without the region's address, fall back to the DCD rule: a tagged device
                    // holds every extent carrying its tag.
                    region
                        .extents
                        .into_iter()
                        .filter(|e| e.uuid == Some(dev.uuid))
                        .collect()
                } else {
                    Vec::new()
                };
                if !mine.is_empty() {
                    dev.source_class = Some(SourceClass::CxlDc);
                    dev.extents = mine.into_iter().map(|e| e.extent).collect();
                    return Ok(region.perf);
                }
            }
        }
        let all: Vec<BusExtent> = bus::virtio_regions(&self.root)?
            .into_iter()
            .flat_map(|r| r.extents)
            .collect();
        let mine = in_mappings(dev, all);
        let Some(first) = mine.first() else {
            return Ok(None);
        };
        let perf = first.perf;
        dev.source_class = first.source;
        dev.flags = mine.iter().filter_map(|e| e.flags).reduce(Flags::union);
        dev.extents = mine.into_iter().map(|e| e.extent).collect();
        Ok(perf)
    }

    /// CPU-access performance (`access1`) of `node`, if the node shows it.
    fn node_perf(&self, node: i32) -> Result<Option<Perf>, LookupError> {
        let dir = self
            .root
            .join(format!("sys/devices/system/node/node{node}/access1/initiators"));
        if !dir.is_dir() {
            return Ok(None);
        }
        let get = |name: &str| -> Result<u32, LookupError> {
            let (p, v) = read_req(&dir.join(name))?;
            parse_num::<u32>(&p, &v, "an unsigned 32-bit decimal")
        };
        Ok(Some(Perf {
            access_class: 1,
            read_latency_ns: get("read_latency")?,
            write_latency_ns: get("write_latency")?,
            read_bandwidth_mbps: get("read_bandwidth")?,
            write_bandwidth_mbps: get("write_bandwidth")?,
        }))
    }

    /// The unclaimed capacity of one region, given every dax device of the tree.
    fn region_unclaimed(
        &self,
        region: DcRegion,
        devices: &[DaxDevice],
    ) -> Result<Vec<Unclaimed>, LookupError> {
        let own: Vec<&DaxDevice> = devices
            .iter()
            .filter(|d| region.id.is_some() && dax_name_ids(&d.chardev).map(|(x, _)| x) == region.id)
            .collect();
        let claimed = |e: &BusExtent| match e.extent.start {
            Some(start) => devices.iter().any(|d| {
                d.mappings
                    .iter()
                    .any(|m| m.contains_range(start, e.extent.length))
            }),
            // Without addresses only a tag can tell: a tagged group is claimed whole.
            None => e.uuid.is_none() || own.iter().any(|d| d.uuid == e.tag()),
        };
        let mut groups: Vec<(Uuid, Vec<BusExtent>)> = Vec::new();
        for e in region.extents.into_iter().filter(|e| !claimed(e)) {
            let tag = e.tag();
            match groups.iter_mut().find(|(t, _)| !tag.is_nil() && *t == tag) {
                Some((_, v)) => v.push(e),
                None => groups.push((tag, vec![e])),
            }
        }
        let region_node = own.iter().find_map(|d| d.target_node);
        let mut out = Vec::with_capacity(groups.len());
        for (tag, mut extents) in groups {
            extents.sort_by_key(|e| (e.seq, e.index));
            let first = &extents[0];
            let target_node = first.target_node.or(region_node);
            let bus_perf = first.perf.or(region.perf);
            let source = first.source;
            let flags = extents.iter().filter_map(|e| e.flags).reduce(Flags::union);
            let mut u = Unclaimed::new(
                region.name.clone(),
                tag,
                extents.into_iter().map(|e| e.extent).collect(),
            )?;
            u.target_node = target_node;
            u.perf = match target_node {
                Some(node) => self.node_perf(node)?,
                None => None,
            }
            .or(bus_perf);
            u.source_class = source;
            u.flags = flags;
            out.push(u);
        }
        Ok(out)
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

    fn unclaimed(&self) -> Result<Vec<Unclaimed>, LookupError> {
        let mut regions = bus::cxl_regions(&self.root)?;
        regions.extend(bus::virtio_regions(&self.root)?);
        if regions.iter().all(|r| r.extents.is_empty()) {
            return Ok(Vec::new());
        }
        let devices = self.devices()?;
        let mut out = Vec::new();
        for region in regions {
            out.extend(self.region_unclaimed(region, &devices)?);
        }
        Ok(out)
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

fn read_mappings(base: &Path) -> Result<Vec<Mapping>, LookupError> {
    let mut out = Vec::new();
    for i in 0usize.. {
        let dir = base.join(format!("mapping{i}"));
        if !dir.is_dir() {
            break;
        }
        let (start, end) = (read_u64(&dir.join("start"))?, read_u64(&dir.join("end"))?);
        let page_offset = read_u64(&dir.join("page_offset"))?;
        let bad = |reason: String| LookupError::Inconsistent {
            path: dir.clone(),
            reason,
        };
        if end < start {
            return Err(bad(format!("end {end:#x} is before start {start:#x}")));
        }
        let m = Mapping::new(page_offset, start, end)
            .ok_or_else(|| bad(format!("{start:#x}..={end:#x} covers all 2^64 bytes")))?;
        if page_offset
            .checked_mul(PAGE_SIZE)
            .and_then(|o| o.checked_add(m.size))
            .is_none()
        {
            return Err(bad(format!(
                "page_offset {page_offset:#x} plus {:#x} bytes overflows the device",
                m.size
            )));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dax_names() {
        assert_eq!(dax_name_ids("dax12.3"), Some((12, 3)));
        assert_eq!(dax_name_ids("dax0"), None);
        assert_eq!(dax_name_ids("dax_region0"), None);
        assert_eq!(dax_name_ids("daxa.0"), None);
    }
}

//! Resolution of an extent's description to a host backing: which file or dax device, its
//! range, HMAT defaults and source class, read from sysfs below a configurable root.

use crate::backing::{Backing, DEVDAX_ALIGN};
use crate::error::ConfigError;
use crate::grammar::{format_size, human_size};
use crate::tagged::{TaggedMemoryConfig, MEMFD};
use crate::EXTENT_ALIGN;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use tagmem_device::{ExtentFlags, ExtentSpec, Perf, SourceClass, SourceId, SourceRef};
use tagmem_lookup::{lookup, DaxDevice, Mode, SysfsSource};
use uuid::Uuid;

/// Where an extent's bytes will come from, decided before anything is opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackingPlan {
    /// A new sparse memfd of `offset + length` bytes.
    Memfd,
    /// A regular (or hugetlbfs) file.
    File(PathBuf),
    /// A devdax character device, with what sysfs says about it.
    DevDax {
        /// The device node.
        path: PathBuf,
        /// The device as sysfs describes it.
        device: Box<DaxDevice>,
    },
}

/// One extent with everything decided: backing, range, metadata, class.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtentPlan {
    /// The user's id, if any.
    pub id: Option<String>,
    /// The backing.
    pub backing: BackingPlan,
    /// Byte offset into the backing.
    pub offset: u64,
    /// Bytes.
    pub length: u64,
    /// Tag (nil for untagged).
    pub tag: Uuid,
    /// Flags.
    pub flags: ExtentFlags,
    /// Performance metadata (user values, else the host's HMAT values, else zero).
    pub perf: Perf,
    /// Guest NUMA node.
    pub node: u16,
    /// Sequence number in a sharable group.
    pub seq: u16,
    /// Class of the host capacity.
    pub class: SourceClass,
}

impl ExtentPlan {
    /// A short description of the backing for tables and logs.
    pub fn backing_name(&self) -> String {
        match &self.backing {
            BackingPlan::Memfd => MEMFD.to_string(),
            BackingPlan::File(p) | BackingPlan::DevDax { path: p, .. } => p.display().to_string(),
        }
    }

    /// Opens or creates the backing. A memfd is named after `name` and sized `offset + length`.
    pub fn open(&self, name: &str) -> Result<Backing, ConfigError> {
        let wrap = |path: String| move |source| ConfigError::Backing { path, source };
        let backing = match &self.backing {
            BackingPlan::Memfd => {
                let size =
                    self.offset
                        .checked_add(self.length)
                        .ok_or_else(|| ConfigError::RangeOverflow {
                            offset: format_size(self.offset),
                            size: format_size(self.length),
                        })?;
                Backing::memfd(name, size).map_err(wrap(MEMFD.to_string()))?
            }
            BackingPlan::File(p) => {
                Backing::file(p, !self.flags.readonly).map_err(wrap(p.display().to_string()))?
            }
            BackingPlan::DevDax { path, .. } => {
                Backing::devdax(path).map_err(wrap(path.display().to_string()))?
            }
        };
        check_range(
            self.offset,
            Some(self.length),
            backing.size(),
            &self.backing_name(),
        )?;
        Ok(backing)
    }

    /// The device's extent description, once the backing is registered as `source`.
    pub fn spec(&self, source: SourceId) -> ExtentSpec {
        ExtentSpec {
            tag: self.tag,
            length: self.length,
            source: SourceRef {
                id: source,
                offset: self.offset,
            },
            gpa: None,
            flags: self.flags,
            perf: self.perf,
            node: self.node,
            seq: self.seq,
            class: self.class,
        }
    }
}

/// Checks `offset + size` against a backing of `backing_size` bytes; returns the length (the
/// rest of the backing when `size` is `None`).
fn check_range(offset: u64, size: Option<u64>, backing_size: u64, path: &str) -> Result<u64, ConfigError> {
    let past_end = |size: String| ConfigError::PastEnd {
        offset: format_size(offset),
        size,
        path: path.to_string(),
        backing_size: human_size(backing_size),
    };
    match size {
        Some(size) => match offset.checked_add(size) {
            Some(end) if end <= backing_size => Ok(size),
            _ => Err(past_end(format_size(size))),
        },
        None => match backing_size.checked_sub(offset) {
            Some(rest) if rest > 0 => Ok(rest),
            _ => Err(past_end("(rest)".to_string())),
        },
    }
}

/// Decides each extent's backing, size, HMAT defaults and source class, reading the host's dax
/// devices below a configurable sysfs root.
#[derive(Clone, Debug, Default)]
pub struct Resolver {
    sysfs: SysfsSource,
}

impl Resolver {
    /// A resolver reading sysfs (and `dev/`) below `root`; `/` for the running host.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Resolver {
            sysfs: SysfsSource::new(root),
        }
    }

    /// The sysfs root.
    pub fn root(&self) -> &Path {
        self.sysfs.root()
    }

    /// Plans one extent; `seq` is its sequence number in a sharable group.
    pub fn plan(&self, c: &TaggedMemoryConfig, seq: u16) -> Result<ExtentPlan, ConfigError> {
        c.validate()?;
        let tag = c.tag();
        let (backing, length, host_perf, class) = if c.is_memfd() {
            let length = c.size.ok_or(ConfigError::NoSize {
                backing: "path=memfd",
            })?;
            (BackingPlan::Memfd, length, None, SourceClass::File)
        } else {
            let (path, device) = match &c.path {
                Some(p) => (p.clone(), None),
                None => {
                    let dev = self.device_for_tag(tag)?;
                    (self.sysfs.root().join("dev").join(&dev.chardev), Some(dev))
                }
            };
            let device = match device {
                Some(d) => Some(d),
                None => self.devdax_at(&path)?,
            };
            match device {
                Some(dev) => self.plan_devdax(c, path, dev)?,
                None => {
                    let shown = path.display().to_string();
                    let meta = fs::metadata(&path).map_err(|e| ConfigError::BadPath {
                        path: shown.clone(),
                        reason: e.to_string(),
                    })?;
                    if !meta.file_type().is_file() {
                        return Err(ConfigError::BadPath {
                            path: shown,
                            reason: "neither a regular file nor a devdax device".to_string(),
                        });
                    }
                    let length = check_range(c.offset, c.size, meta.len(), &shown)?;
                    if length % EXTENT_ALIGN != 0 {
                        return Err(ConfigError::NotMultiple {
                            key: "size",
                            value: format!("{} (the rest of {shown})", format_size(length)),
                            align: human_size(EXTENT_ALIGN),
                        });
                    }
                    (BackingPlan::File(path), length, None, SourceClass::File)
                }
            }
        };
        let pick = |given: Option<u32>, host: fn(&tagmem_lookup::Perf) -> u32| {
            given.or_else(|| host_perf.as_ref().map(host)).unwrap_or(0)
        };
        Ok(ExtentPlan {
            id: c.id.clone(),
            backing,
            offset: c.offset,
            length,
            tag,
            flags: ExtentFlags {
                sharable: c.shared,
                readonly: c.readonly,
            },
            perf: Perf {
                read_latency_ns: pick(c.read_latency, |p| p.read_latency_ns),
                write_latency_ns: pick(c.write_latency, |p| p.write_latency_ns),
                read_bandwidth_mbps: pick(c.read_bandwidth, |p| p.read_bandwidth_mbps),
                write_bandwidth_mbps: pick(c.write_bandwidth, |p| p.write_bandwidth_mbps),
            },
            node: c.node,
            seq,
            class,
        })
    }

    /// The one host dax device carrying `tag`.
    fn device_for_tag(&self, tag: Uuid) -> Result<DaxDevice, ConfigError> {
        let found = lookup(&self.sysfs, &tag).map_err(|source| ConfigError::Lookup {
            what: format!("tag={tag}: looking it up on the host"),
            source,
        })?;
        if let (true, Some(u)) = (found.devices.is_empty(), found.unclaimed.first()) {
            return Err(ConfigError::TagUnclaimed {
                tag,
                region: u.region.clone(),
                claim: u.claim_command(),
            });
        }
        let mut found = found.devices.into_iter();
        match (found.next(), found.next()) {
            (Some(dev), None) => Ok(dev),
            (None, _) => Err(ConfigError::TagNotFound {
                tag,
                root: self
                    .sysfs
                    .root()
                    .join("sys/bus/dax/devices")
                    .display()
                    .to_string(),
            }),
            (Some(a), Some(b)) => {
                let mut names = vec![a.chardev, b.chardev];
                names.extend(found.map(|d| d.chardev));
                Err(ConfigError::TagAmbiguous {
                    tag,
                    devices: names.join(", "),
                })
            }
        }
    }

    /// The dax device behind `path` if it is a devdax character device, read from sysfs.
    fn devdax_at(&self, path: &Path) -> Result<Option<DaxDevice>, ConfigError> {
        let Ok(meta) = fs::metadata(path) else {
            return Ok(None);
        };
        if !meta.file_type().is_char_device() {
            return Ok(None);
        }
        let rdev = meta.rdev();
        let link = self.sysfs.root().join(format!(
            "sys/dev/char/{}:{}",
            libc::major(rdev),
            libc::minor(rdev)
        ));
        let chardev = fs::canonicalize(&link)
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .filter(|n| n.starts_with("dax"))
            .ok_or_else(|| ConfigError::BadPath {
                path: path.display().to_string(),
                reason: format!(
                    "a character device but not a dax device ({} is no dax device)",
                    link.display()
                ),
            })?;
        self.sysfs
            .read_device(&chardev)
            .map(Some)
            .map_err(|source| ConfigError::Lookup {
                what: format!("path={}: reading {chardev} from sysfs", path.display()),
                source,
            })
    }

    fn plan_devdax(
        &self,
        c: &TaggedMemoryConfig,
        path: PathBuf,
        dev: DaxDevice,
    ) -> Result<(BackingPlan, u64, Option<tagmem_lookup::Perf>, SourceClass), ConfigError> {
        let shown = path.display().to_string();
        if dev.mode != Mode::Devdax || !dev.enabled {
            let state = if dev.enabled {
                format!("in {} mode", dev.mode)
            } else {
                "disabled".to_string()
            };
            return Err(ConfigError::DevDaxUnusable {
                path: shown,
                chardev: dev.chardev,
                state,
            });
        }
        if let Some(tag) = c.tag.filter(|t| !t.is_nil()) {
            if dev.is_tagged() && dev.uuid != tag {
                return Err(ConfigError::TagMismatch {
                    tag,
                    path: shown,
                    found: dev.uuid,
                });
            }
        }
        let align = dev.align.max(DEVDAX_ALIGN);
        for (key, value) in [("offset", Some(c.offset)), ("size", c.size)] {
            if let Some(v) = value.filter(|v| v % align != 0) {
                return Err(ConfigError::NotMultiple {
                    key,
                    value: format_size(v),
                    align: format!("{} (the alignment of {})", human_size(align), dev.chardev),
                });
            }
        }
        let length = check_range(c.offset, c.size, dev.size, &shown)?;
        let class = self.devdax_class(&dev);
        let perf = dev.perf;
        Ok((
            BackingPlan::DevDax {
                path,
                device: Box::new(dev),
            },
            length,
            perf,
            class,
        ))
    }

    /// The class sysfs gives the device's capacity: CXL Dynamic Capacity when a CXL region
    /// lists its extents, the extents' own class in a guest (whose VMM passes it on to its
    /// guest, SPEC.md T-NEST-1); otherwise soft-reserved or pmem when the device sits below an
    /// `hmem` platform device or an nvdimm bus, unspecified when nothing says.
    fn devdax_class(&self, dev: &DaxDevice) -> SourceClass {
        if let Some(class) = dev.source_class {
            return class;
        }
        let link = self.sysfs.root().join("sys/bus/dax/devices").join(&dev.chardev);
        let real = fs::canonicalize(link).unwrap_or_default();
        let parts: Vec<String> = real
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if parts.iter().any(|p| p.starts_with("hmem")) {
            SourceClass::SoftReserved
        } else if parts.iter().any(|p| p.starts_with("ndbus")) {
            SourceClass::Pmem
        } else {
            SourceClass::Unspecified
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn memfd_plan_has_file_class_and_user_perf() {
        let c = parse(&format!(
            "tag={TAG},path=memfd,size=4M,offset=2M,readonly=on,read_latency=250,node=1"
        ));
        let p = Resolver::new("/nonexistent").plan(&c, 0).unwrap();
        assert_eq!(p.backing, BackingPlan::Memfd);
        assert_eq!((p.offset, p.length, p.node), (2 * MIB, 4 * MIB, 1));
        assert_eq!(p.class, SourceClass::File);
        assert!(p.flags.readonly && !p.flags.sharable);
        assert_eq!(
            p.perf,
            Perf {
                read_latency_ns: 250,
                ..Perf::default()
            }
        );
        let b = p.open("tagmem-test").unwrap();
        assert_eq!(b.size(), 6 * MIB);
        let spec = p.spec(SourceId(9));
        assert_eq!(
            (spec.source.id, spec.source.offset, spec.length),
            (SourceId(9), 2 * MIB, 4 * MIB)
        );
    }

    #[test]
    fn file_plan_takes_size_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backing");
        fs::File::create(&path).unwrap().set_len(8 * MIB).unwrap();
        let r = Resolver::new("/nonexistent");
        let c = parse(&format!("path={},offset=2M", path.display()));
        let p = r.plan(&c, 0).unwrap();
        assert_eq!(p.backing, BackingPlan::File(path.clone()));
        assert_eq!((p.length, p.class), (6 * MIB, SourceClass::File));
        assert_eq!(p.open("x").unwrap().size(), 8 * MIB);

        let c = parse(&format!("path={},offset=4M,size=6M", path.display()));
        let e = r.plan(&c, 0).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "offset=4M,size=6M: runs past the end of path={} (8 MiB)",
                path.display()
            )
        );
        let c = parse(&format!("path={},offset=8M", path.display()));
        assert!(r
            .plan(&c, 0)
            .unwrap_err()
            .to_string()
            .contains("runs past the end"));

        let odd = dir.path().join("odd");
        fs::File::create(&odd).unwrap().set_len(3 * MIB).unwrap();
        let e = r
            .plan(&parse(&format!("path={}", odd.display())), 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a multiple of 2 MiB"), "{e}");

        let e = r
            .plan(&parse("path=/nonexistent/file,size=2M"), 0)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("path=/nonexistent/file: No such file"), "{e}");
        let e = r
            .plan(&parse(&format!("path={},size=2M", dir.path().display())), 0)
            .unwrap_err()
            .to_string();
        assert!(e.ends_with("neither a regular file nor a devdax device"), "{e}");
        let e = r
            .plan(&parse("path=/dev/null,size=2M"), 0)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("path=/dev/null: a character device but not a dax device"),
            "{e}"
        );
    }

    /// A sysfs tree with one tagged devdax device `dax0.0` on node 1 (with HMAT values), below
    /// an `hmem` platform device, and an untagged `dax1.0` bound to kmem.
    fn fixture() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let w = |p: &str, v: &str| {
            let p = root.join(p);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, format!("{v}\n")).unwrap();
        };
        let devs = [
            ("dax0.0", "devices/platform/hmem.0/dax0.0", TAG, "1", "device_dax"),
            (
                "dax1.0",
                "devices/platform/ACPI0012:00/ndbus0/region1/dax1.0",
                "00000000-0000-0000-0000-000000000000",
                "0",
                "kmem",
            ),
        ];
        fs::create_dir_all(root.join("sys/bus/dax/devices")).unwrap();
        for (name, real, uuid, node, driver) in devs {
            let base = format!("sys/{real}");
            w(&format!("{base}/size"), &(64 * MIB).to_string());
            w(&format!("{base}/uuid"), uuid);
            w(&format!("{base}/target_node"), node);
            w(&format!("{base}/numa_node"), "0");
            w(&format!("{base}/align"), &(2 * MIB).to_string());
            w(&format!("{base}/mapping0/start"), "0x100000000");
            w(
                &format!("{base}/mapping0/end"),
                &format!("{:#x}", 0x1_0000_0000u64 + 64 * MIB - 1),
            );
            w(&format!("{base}/mapping0/page_offset"), "0");
            let drv = root.join(format!("sys/bus/dax/drivers/{driver}"));
            fs::create_dir_all(&drv).unwrap();
            symlink(&drv, root.join(format!("{base}/driver"))).unwrap();
            symlink(root.join(&base), root.join(format!("sys/bus/dax/devices/{name}"))).unwrap();
        }
        // HMAT of node 1: CPUs (access1) and a faster non-CPU initiator (access0).
        for (class, values) in [
            ("1", ["250", "300", "20000", "10000"]),
            ("0", ["90", "95", "60000", "50000"]),
        ] {
            let keys = [
                "read_latency",
                "write_latency",
                "read_bandwidth",
                "write_bandwidth",
            ];
            for (k, v) in keys.iter().zip(values) {
                w(
                    &format!("sys/devices/system/node/node1/access{class}/initiators/{k}"),
                    v,
                );
            }
        }
        dir
    }

    #[test]
    fn tag_alone_resolves_to_the_host_device_with_hmat_defaults() {
        let t = fixture();
        let r = Resolver::new(t.path());
        let p = r
            .plan(&parse(&format!("tag={TAG},offset=2M,write_latency=999")), 0)
            .unwrap();
        match &p.backing {
            BackingPlan::DevDax { path, device } => {
                assert_eq!(path, &t.path().join("dev/dax0.0"));
                assert_eq!(device.chardev, "dax0.0");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(p.length, 62 * MIB);
        assert_eq!(
            p.perf,
            Perf {
                read_latency_ns: 250,
                write_latency_ns: 999,
                read_bandwidth_mbps: 20000,
                write_bandwidth_mbps: 10000,
            }
        );
        assert_eq!(p.class, SourceClass::SoftReserved);

        let e = r
            .plan(&parse(&format!("tag={TAG},size=128M")), 0)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("offset=0,size=128M: runs past the end of path="),
            "{e}"
        );
        let absent = "0b7e8c1d-2f3a-4b5c-8d9e-0f1a2b3c4d5e";
        let e = r
            .plan(&parse(&format!("tag={absent}")), 0)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!(
                "tag={absent}: no dax device under {} carries this tag; give path= to choose a backing",
                t.path().join("sys/bus/dax/devices").display()
            )
        );
        let e = Resolver::new("/nonexistent")
            .plan(&parse(&format!("tag={absent}")), 0)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("tag={absent}: looking it up on the host: ")),
            "{e}"
        );
    }

    #[test]
    fn dcd_host_defaults_are_cpu_access_and_an_unclaimed_tag_names_the_claim() {
        use tagmem_lookup::fixture::{dcd_host, dcd_host_unclaimed, REGION2_CPU_PERF, TAG_A};
        // Target node 2 is devdax-only (no HMAT attributes): the CXL region's `access1` gives
        // the extent's performance, not its `access0`.
        let host = dcd_host();
        let p = Resolver::new(host.root())
            .plan(&parse(&format!("tag={TAG_A}")), 0)
            .unwrap();
        let ((rl, wl), (rb, wb)) = REGION2_CPU_PERF;
        assert_eq!(
            p.perf,
            Perf {
                read_latency_ns: rl,
                write_latency_ns: wl,
                read_bandwidth_mbps: rb,
                write_bandwidth_mbps: wb,
            }
        );
        assert_eq!((p.length, p.class), (6 * MIB, SourceClass::CxlDc));
        let host = dcd_host_unclaimed();
        let e = Resolver::new(host.root())
            .plan(&parse(&format!("tag={TAG_A}")), 0)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!(
                "tag={TAG_A}: unclaimed in region2 on the host; claim it first: \
                 daxctl create-device -r region2 --uuid {TAG_A}"
            )
        );
    }

    #[test]
    fn a_guest_dax_device_passes_its_extents_class_and_performance_on() {
        use tagmem_lookup::fixture::{Dev, Tree, VirtioExtent};
        // A Linux guest's sysfs (SPEC.md T-LOOKUP-5/6): a claimed device over one extent that
        // the guest's own host backed with a file. A VMM in that guest offers it with the same
        // class and performance (T-NEST-1), not "unspecified".
        let t = Tree::new();
        let vdev = t.virtio("virtio0", 0);
        let start = 0x1_0000_0000;
        t.virtio_extent(
            &vdev,
            &VirtioExtent {
                id: 1,
                uuid: TAG,
                start,
                length: 4 * MIB,
                flags: "sharable",
                source: "file",
                seq: 0,
                poison: "",
                node: 0,
                lat: (250, 300),
                bw: (25_000, 12_000),
            },
        );
        t.dax(&Dev::new("dax0.1", &vdev, Some(TAG), &[(start, 4 * MIB)]));
        let p = Resolver::new(t.root())
            .plan(&parse(&format!("tag={TAG},offset=2M,size=2M,shared=on")), 0)
            .unwrap();
        assert_eq!(
            (p.class, p.offset, p.length),
            (SourceClass::File, 2 * MIB, 2 * MIB)
        );
        assert_eq!(
            p.perf,
            Perf {
                read_latency_ns: 250,
                write_latency_ns: 300,
                read_bandwidth_mbps: 25_000,
                write_bandwidth_mbps: 12_000,
            }
        );
    }

    #[test]
    fn devdax_rules() {
        let t = fixture();
        let r = Resolver::new(t.path());
        let mut dev = r.sysfs.read_device("dax1.0").unwrap();
        let c = parse("path=/dev/dax1.0");
        let e = r
            .plan_devdax(&c, "/dev/dax1.0".into(), dev.clone())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("path=/dev/dax1.0: dax1.0 is in system-ram mode"),
            "{e}"
        );
        dev.mode = Mode::Devdax;
        let (_, len, perf, class) = r.plan_devdax(&c, "/dev/dax1.0".into(), dev.clone()).unwrap();
        assert_eq!((len, perf, class), (64 * MIB, None, SourceClass::Pmem));
        dev.align = 1 << 30;
        let e = r.plan_devdax(
            &parse("path=/dev/dax1.0,size=2M"),
            "/dev/dax1.0".into(),
            dev.clone(),
        );
        assert_eq!(
            e.unwrap_err().to_string(),
            "size=2M: not a multiple of 1 GiB (the alignment of dax1.0)"
        );
        let tagged = r.sysfs.read_device("dax0.0").unwrap();
        let other = "0b7e8c1d-2f3a-4b5c-8d9e-0f1a2b3c4d5e";
        let c = parse(&format!("tag={other},path=/dev/dax0.0"));
        let e = r
            .plan_devdax(&c, "/dev/dax0.0".into(), tagged)
            .unwrap_err()
            .to_string();
        assert_eq!(e, format!("tag={other}: path=/dev/dax0.0 carries tag {TAG}"));
    }
}

//! Sysfs trees for tests, built in a temporary directory and laid out and formatted as the kernel
//! does: `/sys/bus/*/devices/*` are symlinks into `/sys/devices`, attributes end in a newline, and
//! numbers use the kernel's formats (`%llu`, `%d`, `%u`, `%#llx`, `%pUb`).
//!
//! Behind the `fixture` feature: this crate's tests and other crates' tests (the VMM's nested
//! tests write a host tree with it) share one builder.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

/// Tag carried by the multi-extent CXL group of [`dcd_host`].
pub const TAG_A: &str = "6f1c2a9e-0d3b-4c55-9a7e-3b1f00c0ffee";
/// A tag no fixture device carries.
pub const TAG_ABSENT: &str = "0b7e8c1d-2f3a-4b5c-8d9e-0f1a2b3c4d5e";
/// Base address of CXL region 2 in [`dcd_host`].
pub const REGION2_BASE: u64 = 0x40_0000_0000;
/// 2 MiB.
pub const MIB2: u64 = 2 << 20;

/// C's `%#llx`: `0x`-prefixed lowercase hexadecimal, but plain `0` for zero.
pub fn c_hex(v: u64) -> String {
    if v == 0 {
        "0".to_owned()
    } else {
        format!("{v:#x}")
    }
}

/// One dax device to create.
#[derive(Clone, Debug)]
pub struct Dev {
    /// `daxX.Y`.
    pub name: String,
    /// Directory (relative to the root) the device lives in, e.g. its dax region's device.
    pub parent: String,
    /// `uuid` attribute content; `None` leaves the attribute out (kernels without DCD).
    pub uuid: Option<String>,
    /// `(start, length)` of each mapping, in `mappingN` order; the size is their sum.
    pub ranges: Vec<(u64, u64)>,
    /// `target_node`.
    pub target_node: i32,
    /// `numa_node`.
    pub numa_node: i32,
    /// Driver to link as `driver`; `None` leaves the device unbound.
    pub driver: Option<&'static str>,
}

impl Dev {
    /// A devdax device under `parent` with the given mappings on node 0.
    pub fn new(name: &str, parent: &str, uuid: Option<&str>, ranges: &[(u64, u64)]) -> Dev {
        Dev {
            name: name.to_owned(),
            parent: parent.to_owned(),
            uuid: uuid.map(str::to_owned),
            ranges: ranges.to_vec(),
            target_node: 0,
            numa_node: 0,
            driver: Some("device_dax"),
        }
    }
}

/// A sysfs tree under a temporary root.
pub struct Tree {
    dir: TempDir,
}

impl Default for Tree {
    fn default() -> Self {
        Tree::new()
    }
}

impl Tree {
    /// An empty root containing `sys/bus/dax/devices` and `dev`.
    pub fn new() -> Tree {
        let t = Tree {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        t.mkdir("sys/bus/dax/devices");
        t.mkdir("sys/bus/dax/drivers/device_dax");
        t.mkdir("sys/bus/dax/drivers/kmem");
        t.mkdir("dev");
        t
    }

    /// The root to pass as `--sysfs-root`.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// `root/rel`.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }

    /// Creates `rel` and its parents.
    pub fn mkdir(&self, rel: &str) {
        fs::create_dir_all(self.path(rel)).expect("mkdir");
    }

    /// Writes `value` plus a newline to the attribute `rel`, as sysfs shows it.
    pub fn attr(&self, rel: &str, value: &str) {
        let p = self.path(rel);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(p, format!("{value}\n")).expect("write");
    }

    /// Removes the attribute `rel`.
    pub fn remove(&self, rel: &str) {
        fs::remove_file(self.path(rel)).expect("remove");
    }

    /// Makes `rel` a symlink to `root/target`.
    pub fn link(&self, rel: &str, target: &str) {
        let p = self.path(rel);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        symlink(self.path(target), p).expect("symlink");
    }

    /// Creates a dax device with `size`, `uuid`, `target_node`, `numa_node`, `align`,
    /// `resource`, `mappingN/` and `driver`, linked from `sys/bus/dax/devices`, plus `/dev/daxX.Y`.
    pub fn dax(&self, d: &Dev) {
        let dir = format!("{}/{}", d.parent, d.name);
        self.mkdir(&dir);
        let size: u64 = d.ranges.iter().map(|r| r.1).sum();
        self.attr(&format!("{dir}/size"), &size.to_string());
        if let Some(u) = &d.uuid {
            self.attr(&format!("{dir}/uuid"), u);
        }
        self.attr(&format!("{dir}/target_node"), &d.target_node.to_string());
        self.attr(&format!("{dir}/numa_node"), &d.numa_node.to_string());
        self.attr(&format!("{dir}/align"), &MIB2.to_string());
        self.attr(
            &format!("{dir}/resource"),
            &c_hex(d.ranges.first().map_or(0, |r| r.0)),
        );
        let mut pgoff = 0;
        for (i, (start, len)) in d.ranges.iter().enumerate() {
            let m = format!("{dir}/mapping{i}");
            self.attr(&format!("{m}/start"), &c_hex(*start));
            self.attr(&format!("{m}/end"), &c_hex(start + len - 1));
            self.attr(&format!("{m}/page_offset"), &c_hex(pgoff));
            pgoff += len / 4096;
        }
        if let Some(drv) = d.driver {
            self.link(&format!("{dir}/driver"), &format!("sys/bus/dax/drivers/{drv}"));
        }
        self.link(&format!("sys/bus/dax/devices/{}", d.name), &dir);
        self.attr(&format!("dev/{}", d.name), "");
    }

    /// Creates CXL region `id` at `base` with its `dax_regionID` device (linked from
    /// `sys/bus/cxl/devices`); returns the dax region's directory, the parent of its dax devices.
    pub fn cxl_region(&self, id: u32, base: Option<u64>, size: u64) -> String {
        let region = cxl_region_dir(id);
        if let Some(base) = base {
            self.attr(&format!("{region}/resource"), &c_hex(base));
        }
        self.attr(&format!("{region}/size"), &c_hex(size));
        let dax_region = format!("{region}/dax_region{id}");
        self.attr(&format!("{dax_region}/dax_region/id"), &id.to_string());
        self.attr(&format!("{dax_region}/dax_region/size"), &size.to_string());
        self.attr(&format!("{dax_region}/dax_region/align"), &MIB2.to_string());
        self.link(&format!("sys/bus/cxl/devices/region{id}"), &region);
        self.link(&format!("sys/bus/cxl/devices/dax_region{id}"), &dax_region);
        dax_region
    }

    /// Adds DCD extent `extentREGION.IDX` at `offset` within the region (`uuid` hidden when `None`).
    pub fn cxl_extent(
        &self,
        dax_region: &str,
        region: u32,
        idx: u32,
        offset: u64,
        length: u64,
        uuid: Option<&str>,
    ) {
        let e = format!("{dax_region}/extent{region}.{idx}");
        self.attr(&format!("{e}/offset"), &c_hex(offset));
        self.attr(&format!("{e}/length"), &c_hex(length));
        if let Some(u) = uuid {
            self.attr(&format!("{e}/uuid"), u);
        }
    }

    /// Sets CXL region `id`'s access coordinates for class `class`
    /// (`regionN/accessK/{read,write}_{latency,bandwidth}`, each left out while zero, as the CXL
    /// core hides it): latencies in ns, bandwidths in MB/s.
    pub fn cxl_region_perf(&self, id: u32, class: u32, lat: (u32, u32), bw: (u32, u32)) {
        let d = format!("{}/access{class}", cxl_region_dir(id));
        self.mkdir(&d);
        sparse_perf(self, &d, lat, bw);
    }

    /// Registers HMAT access class `class` of `node`: latencies in ns, bandwidths in MB/s. Linux
    /// shows these for online nodes only; a node that holds nothing but devdax capacity has none.
    pub fn hmat(&self, node: u32, class: u32, lat: (u32, u32), bw: (u32, u32)) {
        let d = format!("sys/devices/system/node/node{node}/access{class}/initiators");
        self.attr(&format!("{d}/read_latency"), &lat.0.to_string());
        self.attr(&format!("{d}/write_latency"), &lat.1.to_string());
        self.attr(&format!("{d}/read_bandwidth"), &bw.0.to_string());
        self.attr(&format!("{d}/write_bandwidth"), &bw.1.to_string());
    }

    /// Creates virtio device `vdev` (linked from `sys/bus/virtio/devices`) holding dax region
    /// `region` (its `dax_region/` attributes, as `alloc_dax_region` adds them to the parent) and
    /// returns its path, the parent of the region's dax devices.
    pub fn virtio(&self, vdev: &str, region: u32) -> String {
        let dir = format!("sys/devices/pci0000:00/0000:00:04.0/{vdev}");
        self.mkdir(&dir);
        self.attr(&format!("{dir}/dax_region/id"), &region.to_string());
        self.attr(&format!("{dir}/dax_region/align"), &MIB2.to_string());
        self.link(&format!("sys/bus/virtio/devices/{vdev}"), &dir);
        dir
    }

    /// Adds the tagged virtio-mem extent `extentID` (SPEC.md T-LOOKUP-6) to `vdev_dir`.
    pub fn virtio_extent(&self, vdev_dir: &str, e: &VirtioExtent) {
        let d = format!("{vdev_dir}/tagmem/extent{}", e.id);
        self.attr(&format!("{d}/uuid"), e.uuid);
        self.attr(&format!("{d}/start"), &c_hex(e.start));
        self.attr(&format!("{d}/length"), &c_hex(e.length));
        self.attr(&format!("{d}/flags"), e.flags);
        self.attr(&format!("{d}/source"), e.source);
        self.attr(&format!("{d}/seq"), &e.seq.to_string());
        self.attr(&format!("{d}/target_node"), &e.node.to_string());
        self.attr(&format!("{d}/poison"), e.poison);
        let a = format!("{d}/access1");
        self.mkdir(&a);
        sparse_perf(self, &a, e.lat, e.bw);
    }
}

/// `sys/devices/...` directory of CXL region `id`.
fn cxl_region_dir(id: u32) -> String {
    format!("sys/devices/platform/ACPI0017:00/root0/decoder0.0/region{id}")
}

/// Writes `{read,write}_{latency,bandwidth}` into `dir`, leaving out zeros.
fn sparse_perf(t: &Tree, dir: &str, lat: (u32, u32), bw: (u32, u32)) {
    for (name, v) in [
        ("read_latency", lat.0),
        ("write_latency", lat.1),
        ("read_bandwidth", bw.0),
        ("write_bandwidth", bw.1),
    ] {
        if v != 0 {
            t.attr(&format!("{dir}/{name}"), &v.to_string());
        }
    }
}

/// One extent the guest driver lists under `virtioN/tagmem/`.
pub struct VirtioExtent {
    /// Extent id (`extentE`).
    pub id: u64,
    /// `uuid`.
    pub uuid: &'static str,
    /// `start`, guest-physical.
    pub start: u64,
    /// `length`.
    pub length: u64,
    /// `flags`.
    pub flags: &'static str,
    /// `source`.
    pub source: &'static str,
    /// `seq`.
    pub seq: u16,
    /// `poison`, one `offset length` pair a line.
    pub poison: &'static str,
    /// `target_node`.
    pub node: i32,
    /// `access1/{read,write}_latency`, ns (zero: left out).
    pub lat: (u32, u32),
    /// `access1/{read,write}_bandwidth`, MB/s (zero: left out).
    pub bw: (u32, u32),
}

/// Latency (ns) and bandwidth (MB/s) of CXL region 2 for CPUs (`access1`) in [`dcd_host`].
pub const REGION2_CPU_PERF: ((u32, u32), (u32, u32)) = ((250, 300), (25_000, 12_000));

/// A CXL DCD host: region 2 at [`REGION2_BASE`] with a seed device `dax2.0` (size 0), the
/// two-extent group [`TAG_A`] claimed as `dax2.1`, two untagged extents claimed as `dax2.2` and
/// `dax2.3`, and the region's access coordinates: class 1 (CPUs) [`REGION2_CPU_PERF`], class 0
/// (the best initiator) better. Target node 2 holds only devdax capacity, so it is offline and
/// shows no HMAT attributes, as on a real DCD host.
pub fn dcd_host() -> Tree {
    let t = Tree::new();
    let r = t.cxl_region(2, Some(REGION2_BASE), 1 << 32);
    t.cxl_extent(&r, 2, 0, 0, MIB2, Some(TAG_A));
    t.cxl_extent(&r, 2, 1, 0x1000_0000, 2 * MIB2, Some(TAG_A));
    t.cxl_extent(&r, 2, 2, 0x2000_0000, MIB2, None);
    t.cxl_extent(&r, 2, 3, 0x3000_0000, MIB2, None);
    let at = |off: u64, len: u64| (REGION2_BASE + off, len);
    let mut seed = Dev::new("dax2.0", &r, Some("00000000-0000-0000-0000-000000000000"), &[]);
    seed.target_node = 2;
    let mut tagged = Dev::new(
        "dax2.1",
        &r,
        Some(TAG_A),
        &[at(0, MIB2), at(0x1000_0000, 2 * MIB2)],
    );
    tagged.target_node = 2;
    let mut u1 = Dev::new(
        "dax2.2",
        &r,
        Some("00000000-0000-0000-0000-000000000000"),
        &[at(0x2000_0000, MIB2)],
    );
    u1.target_node = 2;
    let mut u2 = Dev::new(
        "dax2.3",
        &r,
        Some("00000000-0000-0000-0000-000000000000"),
        &[at(0x3000_0000, MIB2)],
    );
    u2.target_node = 2;
    for d in [&seed, &tagged, &u1, &u2] {
        t.dax(d);
    }
    t.cxl_region_perf(2, 0, (180, 220), (32_000, 16_000));
    t.cxl_region_perf(2, 1, REGION2_CPU_PERF.0, REGION2_CPU_PERF.1);
    t
}

/// [`dcd_host`] with the group [`TAG_A`] accepted but not claimed yet: its extents are listed by
/// region 2 and no dax device holds them (`daxctl create-device -r region2 --uuid` claims it).
pub fn dcd_host_unclaimed() -> Tree {
    let t = dcd_host();
    fs::remove_file(t.path("sys/bus/dax/devices/dax2.1")).expect("unlink dax2.1");
    fs::remove_dir_all(t.path(&format!("{}/dax_region2/dax2.1", cxl_region_dir(2)))).expect("remove dax2.1");
    fs::remove_file(t.path("dev/dax2.1")).expect("remove /dev/dax2.1");
    t
}

//! Writes the seed corpus of every target to `fuzz/seeds/<target>/` (or the directory given):
//! `cargo run --manifest-path fuzz/Cargo.toml --example seeds`.

use std::fs;
use std::path::PathBuf;
use tagmem_fuzz::sysfs::{dump, encode, Entry, Special};
use tagmem_lookup::fixture::{
    dcd_host, dcd_host_unclaimed, Dev, Tree, VirtioExtent, MIB2, REGION2_CPU_PERF, TAG_A,
};

/// A guest of the tagged virtio-mem driver holding [`TAG_A`] unclaimed, with its seed device
/// and one untagged extent claimed into `dax0.1`.
fn guest() -> Tree {
    let t = Tree::new();
    let v = t.virtio("virtio3", 0);
    let base = 0x1_0000_0000;
    let ext = |id, uuid, seq, start, length, flags| VirtioExtent {
        id,
        uuid,
        start,
        length,
        flags,
        source: "cxl-dc",
        seq,
        poison: "0x1000 0x1000\n",
        node: 2,
        lat: REGION2_CPU_PERF.0,
        bw: REGION2_CPU_PERF.1,
    };
    t.virtio_extent(&v, &ext(8, TAG_A, 1, base + 0x4000_0000, 2 * MIB2, "sharable"));
    t.virtio_extent(&v, &ext(7, TAG_A, 0, base, MIB2, "sharable"));
    let nil = "00000000-0000-0000-0000-000000000000";
    t.virtio_extent(&v, &ext(9, nil, 0, base + 0x8000_0000, MIB2, "readonly"));
    let mut seed = Dev::new("dax0.0", &v, Some(nil), &[]);
    seed.target_node = 2;
    t.dax(&seed);
    let mut claimed = Dev::new("dax0.1", &v, Some(nil), &[(base + 0x8000_0000, MIB2)]);
    claimed.target_node = 2;
    t.dax(&claimed);
    t.hmat(0, 1, (80, 95), (409_600, 307_200));
    t
}

fn main() {
    let out = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("seeds"));
    let mut all = tagmem_fuzz::seeds::all();
    let host = dump(dcd_host().root());
    let mut hostile = host.clone();
    let uuid = b"sys/devices/platform/ACPI0017:00/root0/decoder0.0/region2/dax_region2/dax2.1/uuid".to_vec();
    hostile.retain(|e| !matches!(e, Entry::File(p, _) if *p == uuid));
    hostile.push(Entry::Special(uuid, Special::Zero));
    let mut oversized = host.clone();
    for e in &mut oversized {
        if let Entry::File(p, c) = e {
            if p.ends_with(b"dax2.2/size") {
                *c = vec![b'1'; tagmem_lookup::ATTR_MAX + 1];
            }
        }
    }
    let sysfs = vec![
        ("dcd-host.tree".to_string(), encode(&host)),
        (
            "dcd-host-unclaimed.tree".to_string(),
            encode(&dump(dcd_host_unclaimed().root())),
        ),
        ("guest.tree".to_string(), encode(&dump(guest().root()))),
        ("uuid-is-dev-zero.tree".to_string(), encode(&hostile)),
        ("size-longer-than-a-page.tree".to_string(), encode(&oversized)),
    ];
    all.push(("sysfs", sysfs));
    for (target, seeds) in all {
        // Files not generated here (regression inputs) stay.
        let dir = out.join(target);
        fs::create_dir_all(&dir).expect("seed directory");
        for (name, bytes) in &seeds {
            fs::write(dir.join(name), bytes).expect("seed file");
        }
        println!("{target}: {} seeds", seeds.len());
    }
}

//! The guest's view as the demo prints it: one row per dax device and per group of unclaimed
//! capacity.

use crate::nested::GUEST_REGION;
use crate::view::GuestView;
use tagmem_lookup::{Flags, SourceClass};
use tagmem_vmm::config::{format_size, human_size};

/// Renders the guest's view as a table: device, tag, size, node, flags, class, performance with
/// units, extents (`id@gpa+size`) and poison; capacity the region holds unclaimed follows, with
/// the region's name where a device has its own.
pub fn render_view(view: &GuestView) -> String {
    let headers = [
        "dax", "uuid", "size", "node", "flags", "class", "rd lat", "wr lat", "rd bw", "wr bw", "extents",
        "poison",
    ];
    let unit = |v: u64, u: &str| {
        if v == 0 {
            "-".to_string()
        } else {
            format!("{v} {u}")
        }
    };
    let rows: Vec<Vec<String>> = view
        .devices
        .iter()
        .chain(&view.unclaimed)
        .map(|d| {
            let flags = Flags::from_bits(u32::try_from(d.flags).unwrap_or(u32::MAX)).names();
            let class = u8::try_from(d.class)
                .ok()
                .and_then(SourceClass::from_wire)
                .map_or_else(|| format!("#{}", d.class), |c| c.as_str().to_string());
            let extents: Vec<String> = d
                .extents
                .iter()
                .map(|e| format!("{}@{:#x}+{}", e.id, e.gpa, format_size(e.len)))
                .collect();
            let poison: Vec<String> = d
                .poison
                .iter()
                .map(|p| format!("{}@{:#x}+{}", p.id, p.offset, format_size(p.len)))
                .collect();
            vec![
                if d.name.is_empty() {
                    format!("({GUEST_REGION})")
                } else {
                    d.name.clone()
                },
                d.uuid.to_string(),
                human_size(d.size),
                d.node.to_string(),
                if flags.is_empty() {
                    "-".into()
                } else {
                    flags.join(",")
                },
                class,
                unit(d.read_latency_ns, "ns"),
                unit(d.write_latency_ns, "ns"),
                unit(d.read_bandwidth_mbps, "MB/s"),
                unit(d.write_bandwidth_mbps, "MB/s"),
                extents.join(" "),
                if poison.is_empty() {
                    "-".into()
                } else {
                    poison.join(" ")
                },
            ]
        })
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("  {}", padded.join("  ").trim_end())
    };
    let mut out = vec![line(headers.to_vec())];
    out.push(line(
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect(),
    ));
    for row in &rows {
        out.push(line(row.iter().map(String::as_str).collect()));
    }
    if rows.is_empty() {
        out.push("  (no dax devices)".into());
    }
    out.push(format!(
        "  {} devices, {} groups unclaimed, {} offer chains pending in the driver",
        view.devices.len(),
        view.unclaimed.len(),
        view.pending_chains
    ));
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::options::{HBM_TAG, SHARED_TAG};
    use crate::view::{DevView, ExtentView, PoisonView};

    #[test]
    fn table_shows_units_flags_and_extents() {
        let free = DevView {
            name: String::new(),
            uuid: SHARED_TAG,
            size: 2 << 20,
            node: 2,
            flags: 1,
            read_latency_ns: 0,
            write_latency_ns: 0,
            read_bandwidth_mbps: 0,
            write_bandwidth_mbps: 0,
            class: 4,
            busy: false,
            extents: vec![ExtentView {
                id: 7,
                gpa: 1 << 33,
                len: 2 << 20,
            }],
            poison: Vec::new(),
        };
        let view = GuestView {
            unclaimed: vec![free],
            seed: "dax0.2".into(),
            devices: vec![DevView {
                name: "dax0.1".into(),
                uuid: HBM_TAG,
                size: 6 << 20,
                node: 1,
                flags: 3,
                read_latency_ns: 80,
                write_latency_ns: 0,
                read_bandwidth_mbps: 409600,
                write_bandwidth_mbps: 0,
                class: 4,
                busy: false,
                extents: vec![
                    ExtentView {
                        id: 2,
                        gpa: 1 << 32,
                        len: 4 << 20,
                    },
                    ExtentView {
                        id: 3,
                        gpa: (1 << 32) + (4 << 20),
                        len: 2 << 20,
                    },
                ],
                poison: vec![PoisonView {
                    id: 3,
                    offset: 0x10_0000,
                    len: 4096,
                }],
            }],
            pending_chains: 0,
        };
        let t = render_view(&view);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].trim_start().starts_with("dax "), "{t}");
        let row = lines[2];
        for cell in [
            "dax0.1",
            "6f1c2a9e-0d3b-4c55-9a7e-3b1f00c0ffee",
            "6 MiB",
            "sharable,readonly",
            "file",
            "80 ns",
            "409600 MB/s",
            "2@0x100000000+4M 3@0x100400000+2M",
            "3@0x100000+4K",
        ] {
            assert!(row.contains(cell), "{cell} missing in {row}");
        }
        assert!(lines[3].trim_start().starts_with("(region0)  0b7e8c1d"), "{t}");
        assert!(t.ends_with("1 devices, 1 groups unclaimed, 0 offer chains pending in the driver"));
        let empty = render_view(&GuestView::default());
        assert!(empty.contains("(no dax devices)"));
    }
}

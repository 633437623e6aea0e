//! Printing devices: JSON in `daxctl list` form, and a table for people.
//!
//! JSON: an array of objects. The `daxctl list` fields come first, with daxctl's names, order and
//! number formats (plain JSON integers, as daxctl prints without `--human`): `chardev`, `size`,
//! `target_node` (absent when unknown), `align` (absent when 0), `mode`, `state` (only
//! `"disabled"`), `mappings` (absent when empty; each `page_offset` in pages, `start`, `end`
//! inclusive, `size` in bytes). Then the fields daxctl lacks: `uuid` (always; the nil UUID for
//! untagged capacity), `path`, `numa_node`, `source`, `flags`, `extents` (`offset`, `start`,
//! `length` in bytes, `poison`), and the HMAT values with their unit in the name:
//! `perf_access_class`, `read_latency_ns`, `write_latency_ns`, `read_bandwidth_MBps`,
//! `write_bandwidth_MBps` (MB/s as the kernel reports them). Absent values are left out, never
//! printed as null.
//!
//! Unclaimed capacity of a dynamic-capacity region ([`Unclaimed`]) follows the devices, one object
//! per tag group or untagged extent: `region` (`regionX`, as `daxctl create-device -r` takes it),
//! `size`, `target_node`, `state` (always `"unclaimed"`), then `uuid`, `source`, `flags`,
//! `extents` and the performance fields as for a device, and `claim`, the daxctl command that
//! turns it into a device.

use serde::Serialize;

use crate::capacity::{Found, Unclaimed};
use crate::model::{DaxDevice, Extent, Mapping, Perf, Poison};

#[derive(Serialize)]
struct JsonMapping {
    page_offset: u64,
    start: u64,
    end: u64,
    size: u64,
}

impl From<&Mapping> for JsonMapping {
    fn from(m: &Mapping) -> Self {
        JsonMapping {
            page_offset: m.page_offset,
            start: m.start,
            end: m.end,
            size: m.size,
        }
    }
}

#[derive(Serialize)]
struct JsonPoison {
    offset: u64,
    length: u64,
}

#[derive(Serialize)]
struct JsonExtent {
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    start: Option<u64>,
    length: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    poison: Vec<JsonPoison>,
}

impl From<&Extent> for JsonExtent {
    fn from(e: &Extent) -> Self {
        JsonExtent {
            offset: e.offset,
            start: e.start,
            length: e.length,
            poison: e
                .poison
                .iter()
                .map(|&Poison { offset, length }| JsonPoison { offset, length })
                .collect(),
        }
    }
}

#[derive(Serialize)]
struct JsonDevice<'a> {
    chardev: &'a str,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_node: Option<i32>,
    #[serde(skip_serializing_if = "is_zero")]
    align: u64,
    mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    mappings: Vec<JsonMapping>,
    uuid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    numa_node: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    flags: Option<Vec<&'static str>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    extents: Vec<JsonExtent>,
    #[serde(flatten)]
    perf: JsonPerf,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// The performance fields both kinds of entry end with.
#[derive(Serialize)]
struct JsonPerf {
    #[serde(skip_serializing_if = "Option::is_none")]
    perf_access_class: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    read_latency_ns: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    write_latency_ns: Option<u32>,
    #[serde(rename = "read_bandwidth_MBps", skip_serializing_if = "Option::is_none")]
    read_bandwidth_mbps: Option<u32>,
    #[serde(rename = "write_bandwidth_MBps", skip_serializing_if = "Option::is_none")]
    write_bandwidth_mbps: Option<u32>,
}

impl From<Option<Perf>> for JsonPerf {
    fn from(p: Option<Perf>) -> Self {
        JsonPerf {
            perf_access_class: p.map(|p| p.access_class),
            read_latency_ns: p.map(|p| p.read_latency_ns),
            write_latency_ns: p.map(|p| p.write_latency_ns),
            read_bandwidth_mbps: p.map(|p| p.read_bandwidth_mbps),
            write_bandwidth_mbps: p.map(|p| p.write_bandwidth_mbps),
        }
    }
}

#[derive(Serialize)]
struct JsonUnclaimed<'a> {
    region: &'a str,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_node: Option<i32>,
    state: &'static str,
    uuid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    flags: Option<Vec<&'static str>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    extents: Vec<JsonExtent>,
    #[serde(flatten)]
    perf: JsonPerf,
    claim: String,
}

impl<'a> From<&'a Unclaimed> for JsonUnclaimed<'a> {
    fn from(u: &'a Unclaimed) -> Self {
        JsonUnclaimed {
            region: &u.region,
            size: u.size,
            target_node: u.target_node,
            state: "unclaimed",
            uuid: u.uuid.hyphenated().to_string(),
            source: u.source_class.map(|c| c.as_str()),
            flags: u.flags.map(|f| f.names()),
            extents: u.extents.iter().map(JsonExtent::from).collect(),
            perf: u.perf.into(),
            claim: u.claim_command(),
        }
    }
}

/// One entry of the printed array.
#[derive(Serialize)]
#[serde(untagged)]
enum JsonEntry<'a> {
    Device(JsonDevice<'a>),
    Unclaimed(JsonUnclaimed<'a>),
}

fn entries(found: &Found) -> Vec<JsonEntry<'_>> {
    found
        .devices
        .iter()
        .map(|d| JsonEntry::Device(d.into()))
        .chain(found.unclaimed.iter().map(|u| JsonEntry::Unclaimed(u.into())))
        .collect()
}

impl<'a> From<&'a DaxDevice> for JsonDevice<'a> {
    fn from(d: &'a DaxDevice) -> Self {
        JsonDevice {
            chardev: &d.chardev,
            size: d.size,
            target_node: d.target_node,
            align: d.align,
            mode: d.mode.as_str(),
            state: (!d.enabled).then_some("disabled"),
            mappings: d.mappings.iter().map(JsonMapping::from).collect(),
            uuid: d.uuid.hyphenated().to_string(),
            path: d.path.as_deref(),
            numa_node: d.numa_node,
            source: d.source_class.map(|c| c.as_str()),
            flags: d.flags.map(|f| f.names()),
            extents: d.extents.iter().map(JsonExtent::from).collect(),
            perf: d.perf.into(),
        }
    }
}

fn found_of(devices: &[DaxDevice]) -> Found {
    Found {
        devices: devices.to_vec(),
        unclaimed: Vec::new(),
    }
}

/// The devices as a JSON value: an array of `daxctl list`-style objects (see the module docs).
///
/// A [`serde_json::Value`] keeps object keys sorted; [`json_string`] prints them in daxctl order.
pub fn to_json(devices: &[DaxDevice]) -> serde_json::Value {
    found_to_json(&found_of(devices))
}

/// The devices as pretty-printed JSON text in daxctl field order, ending in a newline.
pub fn json_string(devices: &[DaxDevice]) -> String {
    found_json_string(&found_of(devices))
}

/// A lookup's or listing's answer as a JSON value: the devices, then the unclaimed capacity.
pub fn found_to_json(found: &Found) -> serde_json::Value {
    // Plain structs of integers and strings always serialize.
    serde_json::to_value(entries(found)).unwrap_or(serde_json::Value::Null)
}

/// A lookup's or listing's answer as pretty-printed JSON text, ending in a newline.
pub fn found_json_string(found: &Found) -> String {
    // Plain structs of integers and strings always serialize.
    let mut s = serde_json::to_string_pretty(&entries(found)).unwrap_or_default();
    s.push('\n');
    s
}

/// A size in binary units with two decimals (`4.00 GiB`), bytes below 1 KiB.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut unit = 0;
    let mut scale: u128 = 1024;
    while unit + 1 < UNITS.len() && u128::from(bytes) >= scale * 1024 {
        unit += 1;
        scale *= 1024;
    }
    // Hundredths, rounded half up, in integers to stay exact.
    let hundredths = (u128::from(bytes) * 100 + scale / 2) / scale;
    format!("{}.{:02} {}", hundredths / 100, hundredths % 100, UNITS[unit])
}

/// The devices as an aligned text table, one row per device, ending in a newline.
pub fn human_table(devices: &[DaxDevice]) -> String {
    found_table(&found_of(devices))
}

/// A lookup's or listing's answer as a table: one row per device, then one per unclaimed group
/// (`-` as its device, `unclaimed (regionX)` as its mode).
pub fn found_table(found: &Found) -> String {
    let header = [
        "CHARDEV",
        "UUID",
        "SIZE",
        "NODE",
        "MODE",
        "SOURCE",
        "EXTENTS",
        "LAT R/W ns",
        "BW R/W MB/s",
    ];
    let dash = || "-".to_owned();
    let lat =
        |p: Option<Perf>| p.map_or_else(dash, |p| format!("{}/{}", p.read_latency_ns, p.write_latency_ns));
    let bw = |p: Option<Perf>| {
        p.map_or_else(dash, |p| {
            format!("{}/{}", p.read_bandwidth_mbps, p.write_bandwidth_mbps)
        })
    };
    let unclaimed = found.unclaimed.iter().map(|u| {
        [
            dash(),
            u.uuid.hyphenated().to_string(),
            human_size(u.size),
            u.target_node.map_or_else(dash, |n| n.to_string()),
            format!("unclaimed ({})", u.region),
            u.source_class.map_or_else(dash, |c| c.to_string()),
            u.extents.len().to_string(),
            lat(u.perf),
            bw(u.perf),
        ]
    });
    let rows: Vec<[String; 9]> = found
        .devices
        .iter()
        .map(|d| {
            [
                d.chardev.clone(),
                d.uuid.hyphenated().to_string(),
                human_size(d.size),
                d.target_node.map_or_else(dash, |n| n.to_string()),
                if d.enabled {
                    d.mode.to_string()
                } else {
                    format!("{} (disabled)", d.mode)
                },
                d.source_class.map_or_else(dash, |c| c.to_string()),
                d.extents.len().to_string(),
                lat(d.perf),
                bw(d.perf),
            ]
        })
        .chain(unclaimed)
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let text: Vec<String> = cells.zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(text.join("  ").trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in &rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Flags, SourceClass};
    use uuid::Uuid;

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1024), "1.00 KiB");
        assert_eq!(human_size(0x60_0000), "6.00 MiB");
        assert_eq!(human_size(16_777_216_000), "15.63 GiB");
        assert_eq!(human_size(u64::MAX), "16.00 EiB");
    }

    #[test]
    fn json_leaves_out_unknowns_and_keeps_daxctl_order() {
        let mut d = DaxDevice::new("dax3.0", Uuid::nil());
        d.size = 4096;
        let text = json_string(std::slice::from_ref(&d));
        let compact: String = text.split_whitespace().collect();
        assert_eq!(
            compact,
            r#"[{"chardev":"dax3.0","size":4096,"mode":"devdax","uuid":"00000000-0000-0000-0000-000000000000"}]"#
        );
        assert!(text.ends_with("]\n"));
        d.enabled = false;
        d.perf = Perf::from_record(1, 2, 3, 4);
        d.source_class = Some(SourceClass::File);
        d.flags = Some(Flags::from_bits(1));
        let v = &to_json(std::slice::from_ref(&d))[0];
        assert_eq!(v["state"], "disabled");
        assert_eq!(v["read_bandwidth_MBps"], 3);
        assert_eq!(v["write_bandwidth_MBps"], 4);
        assert_eq!(v["perf_access_class"], 1);
        assert_eq!(v["source"], "file");
        assert_eq!(v["flags"], serde_json::json!(["sharable"]));
    }

    #[test]
    fn unclaimed_capacity_prints_after_the_devices() {
        let tag = Uuid::from_u128(0x6f1c2a9e_0d3b_4c55_9a7e_3b1f00c0ffee);
        let mut u = Unclaimed::new("region2", tag, vec![Extent::at(0x1000_0000, 0x20_0000)]).unwrap();
        u.target_node = Some(2);
        u.perf = Perf::from_record(250, 300, 25_000, 12_000);
        let found = Found {
            devices: vec![DaxDevice::new("dax2.0", Uuid::nil())],
            unclaimed: vec![u],
        };
        let compact: String = found_json_string(&found).split_whitespace().collect();
        assert!(
            compact.ends_with(
                r#"{"region":"region2","size":2097152,"target_node":2,"state":"unclaimed","uuid":"6f1c2a9e-0d3b-4c55-9a7e-3b1f00c0ffee","extents":[{"start":268435456,"length":2097152}],"perf_access_class":1,"read_latency_ns":250,"write_latency_ns":300,"read_bandwidth_MBps":25000,"write_bandwidth_MBps":12000,"claim":"daxctlcreate-device-rregion2--uuid6f1c2a9e-0d3b-4c55-9a7e-3b1f00c0ffee"}]"#
            ),
            "{compact}"
        );
        assert_eq!(found_to_json(&found)[0]["chardev"], "dax2.0");
        let t = found_table(&found);
        let row = t.lines().nth(2).unwrap();
        assert!(row.starts_with("-        6f1c2a9e"), "{t}");
        assert!(
            row.contains("unclaimed (region2)") && row.contains("250/300"),
            "{t}"
        );
    }

    #[test]
    fn table_has_a_row_per_device() {
        let mut a = DaxDevice::new("dax0.0", Uuid::from_u128(1));
        a.size = 1 << 30;
        a.target_node = Some(2);
        a.perf = Perf::from_record(150, 160, 20000, 10000);
        let b = DaxDevice::new("dax0.1", Uuid::nil());
        let t = human_table(&[a, b]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("CHARDEV  UUID"));
        assert!(
            lines[1].contains("1.00 GiB") && lines[1].contains("150/160") && lines[1].contains("20000/10000")
        );
        assert!(lines[2].contains("00000000-0000-0000-0000-000000000000"));
    }
}

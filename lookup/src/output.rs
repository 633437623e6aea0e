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

use serde::Serialize;

use crate::model::{DaxDevice, Extent, Mapping, Poison};

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

fn is_zero(v: &u64) -> bool {
    *v == 0
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
            perf_access_class: d.perf.map(|p| p.access_class),
            read_latency_ns: d.perf.map(|p| p.read_latency_ns),
            write_latency_ns: d.perf.map(|p| p.write_latency_ns),
            read_bandwidth_mbps: d.perf.map(|p| p.read_bandwidth_mbps),
            write_bandwidth_mbps: d.perf.map(|p| p.write_bandwidth_mbps),
        }
    }
}

/// The devices as a JSON value: an array of `daxctl list`-style objects (see the module docs).
///
/// A [`serde_json::Value`] keeps object keys sorted; [`json_string`] prints them in daxctl order.
pub fn to_json(devices: &[DaxDevice]) -> serde_json::Value {
    let list: Vec<JsonDevice<'_>> = devices.iter().map(JsonDevice::from).collect();
    // Plain structs of integers and strings always serialize.
    serde_json::to_value(list).unwrap_or(serde_json::Value::Null)
}

/// The devices as pretty-printed JSON text in daxctl field order, ending in a newline.
pub fn json_string(devices: &[DaxDevice]) -> String {
    let list: Vec<JsonDevice<'_>> = devices.iter().map(JsonDevice::from).collect();
    // Plain structs of integers and strings always serialize.
    let mut s = serde_json::to_string_pretty(&list).unwrap_or_default();
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
    let rows: Vec<[String; 9]> = devices
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
                d.perf
                    .map_or_else(dash, |p| format!("{}/{}", p.read_latency_ns, p.write_latency_ns)),
                d.perf.map_or_else(dash, |p| {
                    format!("{}/{}", p.read_bandwidth_mbps, p.write_bandwidth_mbps)
                }),
            ]
        })
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
    use crate::model::{Flags, Perf, SourceClass};
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
        assert_eq!(v["perf_access_class"], 0);
        assert_eq!(v["source"], "file");
        assert_eq!(v["flags"], serde_json::json!(["sharable"]));
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

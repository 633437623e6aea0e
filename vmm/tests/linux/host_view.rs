//! The host's view of a guest's tagged capacity, for comparison with what `tagmem` and `daxctl`
//! print inside a Linux guest: the extents tagmem-vmm's control API reports (`GET
//! /api/v1/vm.tagged-memory`, through the API's own request handler), laid out by the lookup
//! library as SPEC.md T-LOOKUP-3/4 says a guest shows them (`DriverDevice::to_dax` for a claimed
//! group, `DriverDevice::to_unclaimed` for one the guest's region still holds).

use serde_json::Value;
use tagmem_device::ExtentState;
use tagmem_lookup::{output, DriverDevice, DriverExtent, Found, Perf, Poison};
use tagmem_vmm::api::{handle, ExtentRow, HttpRequest, TaggedMemoryControl, TAGGED_MEMORY};
use uuid::Uuid;

/// Fields of a `tagmem` answer that `daxctl list -M` prints too, with the same names and values.
pub const DAXCTL_FIELDS: &[&str] = &[
    "chardev",
    "size",
    "target_node",
    "align",
    "mode",
    "state",
    "mappings",
];

/// The rows `GET /api/v1/vm.tagged-memory` answers.
pub fn api_rows(control: &TaggedMemoryControl) -> Vec<ExtentRow> {
    let req = HttpRequest {
        method: "GET".into(),
        path: TAGGED_MEMORY.into(),
        body: Vec::new(),
    };
    let answer = handle(control, &req);
    assert_eq!(answer.status, 200, "{}", answer.body);
    serde_json::from_str(&answer.body).expect("vm.tagged-memory answers its rows")
}

/// The guest's capacity as the host sees it: every accepted group, claimed ones (`claimed`: tag
/// and the device the guest made of it) as devices of that name, the others as unclaimed
/// capacity of `region`. Groups are ordered by their first extent id, as the guest lists them.
pub fn host_view(rows: &[ExtentRow], claimed: &[(Uuid, &str)], region: &str) -> Found {
    let mut groups: Vec<DriverDevice> = Vec::new();
    for row in rows.iter().filter(|r| r.info.state == ExtentState::Accepted) {
        let e = &row.info;
        let extent = DriverExtent {
            id: e.id,
            start: e.gpa,
            length: e.length,
            flags: e.flags.bits(),
            seq: e.seq,
            node: e.node,
            source: e.class.to_wire(),
            perf: Perf::from_record(
                e.perf.read_latency_ns,
                e.perf.write_latency_ns,
                e.perf.read_bandwidth_mbps,
                e.perf.write_bandwidth_mbps,
            ),
            poison: e
                .poison
                .iter()
                .map(|&(offset, length)| Poison { offset, length })
                .collect(),
        };
        match groups.iter_mut().find(|g| !e.tag.is_nil() && g.uuid == e.tag) {
            Some(g) => g.extents.push(extent),
            None => groups.push(DriverDevice {
                name: String::new(),
                uuid: e.tag,
                extents: vec![extent],
            }),
        }
    }
    groups.sort_by_key(|g| g.extents.iter().map(|e| e.id).min());
    let mut found = Found::default();
    for mut g in groups {
        match claimed.iter().find(|(tag, _)| *tag == g.uuid && !tag.is_nil()) {
            Some((_, name)) => {
                g.name = (*name).to_string();
                // The guest's dax bus computes numa_node; the host does not know it, and a
                // guest without firmware NUMA information shows none.
                found
                    .devices
                    .push(g.to_dax(None).expect("a device of accepted extents"));
            }
            None => found
                .unclaimed
                .push(g.to_unclaimed(region).expect("unclaimed accepted extents")),
        }
    }
    found
}

/// `found` as `tagmem --json` prints it.
pub fn json(found: &Found) -> Value {
    output::found_to_json(found)
}

/// The entries of a `tagmem --json` answer with a tag (`uuid`), in order.
pub fn entries_with_tag(answer: &Value, tag: Uuid) -> Vec<Value> {
    answer
        .as_array()
        .expect("a JSON array")
        .iter()
        .filter(|e| e["uuid"] == tag.to_string())
        .cloned()
        .collect()
}

/// Only the `daxctl list` fields of each device object.
pub fn daxctl_fields(devices: &Value) -> Value {
    let keep = |d: &Value| -> Value {
        let obj = d.as_object().expect("a JSON object");
        Value::Object(
            obj.iter()
                .filter(|(k, _)| DAXCTL_FIELDS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
    };
    Value::Array(
        devices
            .as_array()
            .expect("a JSON array")
            .iter()
            .map(keep)
            .collect(),
    )
}

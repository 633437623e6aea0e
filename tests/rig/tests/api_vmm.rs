//! The control API against a running VMM on KVM: extents added over the socket are accepted by
//! the guest's driver and reported by the guest, released over the socket, and refused with
//! clear errors. Skipped without `/dev/kvm`.

use std::sync::{Arc, Mutex};
use std::time::Duration;
use tagmem_device::HostEvent;
use tagmem_rig::TestGuestVm;
use tagmem_vmm::api::{self, ApiServer, ApiSocket, TaggedMemoryControl};
use tagmem_vmm::config::Resolver;
use tagmem_vmm::VmmConfig;
use uuid::Uuid;

const TAG: &str = "6f1c2a9e-0d3b-4c55-9a7e-3b1f00c0ffee";

struct Running {
    vmm: TestGuestVm,
    _dir: tempfile::TempDir,
    sock: std::path::PathBuf,
}

fn start() -> Option<Running> {
    if !tagmem_test_support::kvm_or_skip() {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let socket = ApiSocket::bind(&sock).unwrap();
    let vmm = TestGuestVm::new(VmmConfig::default()).unwrap();
    vmm.wait_ready().unwrap();
    let control = Arc::new(TaggedMemoryControl::new(
        vmm.vmm().clone(),
        Resolver::new("/nonexistent"),
    ));
    vmm.add_subscriber(Arc::new(Mutex::new(ApiServer::new(socket, control).unwrap())))
        .unwrap();
    Some(Running { vmm, _dir: dir, sock })
}

fn call(r: &Running, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
    let (status, body) = api::call(&r.sock, method, path, body).unwrap();
    let v = if body.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&body).unwrap()
    };
    (status, v)
}

/// Waits until the guest answered chain `chain_id`; returns the accepted extent ids.
fn answered(vmm: &TestGuestVm, chain_id: u64) -> Vec<u64> {
    for _ in 0..100 {
        for e in vmm.wait_host_events(Duration::from_millis(200)) {
            if let HostEvent::ChainAnswered {
                chain_id: c,
                accepted,
                ..
            } = e
            {
                if c == chain_id {
                    return accepted;
                }
            }
        }
    }
    panic!("chain {chain_id} was not answered");
}

#[test]
fn add_list_release_round_trip() {
    let Some(r) = start() else { return };
    let (s, v) = call(&r, "GET", api::PING, None);
    assert_eq!((s, v["device_ready"].as_bool()), (200, Some(true)));

    let body = format!(
        r#"{{"extents":[
            {{"tag":"{TAG}","path":"memfd","size":4194304,"shared":true,"read_latency":250,"node":1,"id":"tm0"}},
            {{"tag":"{TAG}","path":"memfd","size":2097152,"shared":true,"read_latency":250,"node":1}}]}}"#
    );
    let (s, added) = call(&r, "PUT", api::ADD_TAGGED_MEMORY, Some(&body));
    assert_eq!(s, 200, "{added}");
    let ids: Vec<u64> = added["extents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["extent_id"].as_u64().unwrap())
        .collect();
    assert_eq!(added["extents"][0]["id"], "tm0");
    assert_eq!(added["extents"][1]["id"], "_tagmem0");
    assert_eq!(added["extents"][0]["size"], 4 << 20);
    let accepted = answered(&r.vmm, added["chain_id"].as_u64().unwrap());
    assert_eq!(accepted, ids);

    // The guest's region lists the group (unclaimed), with the metadata given over the API.
    let view = r.vmm.guest_view().unwrap();
    let tag: Uuid = TAG.parse().unwrap();
    let dev = view.unclaimed_by_tag(&tag).expect("the guest lists the group");
    assert_eq!(
        (dev.size, dev.node, dev.read_latency_ns, dev.flags & 1),
        (6 << 20, 1, 250, 1)
    );
    assert_eq!(dev.extents.iter().map(|e| e.id).collect::<Vec<_>>(), ids);
    assert_eq!(dev.extents[0].gpa, added["extents"][0]["gpa"].as_u64().unwrap());

    let (s, table) = call(&r, "GET", api::TAGGED_MEMORY, None);
    assert_eq!(s, 200);
    let rows = table.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (
            rows[0]["name"].as_str(),
            rows[0]["state"].as_str(),
            rows[1]["seq"].as_u64()
        ),
        (Some("tm0"), Some("accepted"), Some(1))
    );
    assert_eq!(
        (rows[0]["path"].as_str(), rows[0]["class"].as_str()),
        (Some("memfd"), Some("file"))
    );

    // Errors: a duplicate id, a tag already on the VM, an unknown release target.
    let same_id = r#"{"extents":[{"path":"memfd","size":2097152,"id":"tm0"}]}"#;
    let (s, v) = call(&r, "PUT", api::ADD_TAGGED_MEMORY, Some(same_id));
    assert_eq!(s, 400);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .starts_with("id=tm0: used by more than one extent"),
        "{v}"
    );
    let dup_tag = format!(r#"{{"extents":[{{"tag":"{TAG}","path":"memfd","size":2097152}}]}}"#);
    let (s, v) = call(&r, "PUT", api::ADD_TAGGED_MEMORY, Some(&dup_tag));
    assert_eq!(s, 409, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .starts_with(&format!("extents[0]: tag={TAG}: already present on this VM")),
        "{v}"
    );
    let (s, v) = call(
        &r,
        "PUT",
        api::RELEASE_TAGGED_MEMORY,
        Some(r#"{"extent_id":12345}"#),
    );
    assert_eq!(
        (s, v["error"].as_str()),
        (400, Some("extent_id: no such extent or tag: extent 12345"))
    );
    let (s, v) = call(
        &r,
        "PUT",
        api::ADD_TAGGED_MEMORY,
        Some(r#"{"extents":[{"path":"/nonexistent/file","size":2097152}]}"#),
    );
    assert_eq!(s, 400);
    assert_eq!(
        v["error"],
        "extents: path=/nonexistent/file: No such file or directory (os error 2)"
    );
    // A refused offer leaves no backing registered.
    assert_eq!(r.vmm.mapper().lock().slots().len(), 2);

    // Release over the API: 204 at once, the guest's driver gives the group back.
    let (s, v) = call(
        &r,
        "PUT",
        api::RELEASE_TAGGED_MEMORY,
        Some(&format!(r#"{{"tag":"{TAG}"}}"#)),
    );
    assert_eq!((s, v), (204, serde_json::Value::Null));
    let mut released = Vec::new();
    for _ in 0..100 {
        for e in r.vmm.wait_host_events(Duration::from_millis(200)) {
            if let HostEvent::Released { extents } = e {
                released.extend(extents.into_iter().map(|(id, _)| id));
            }
        }
        if released.len() == 2 {
            break;
        }
    }
    assert_eq!(released, ids);
    let (_, table) = call(&r, "GET", api::TAGGED_MEMORY, None);
    assert_eq!(table, serde_json::json!([]));
    assert!(r.vmm.guest_view().unwrap().unclaimed_by_tag(&tag).is_none());
    // The names of released extents can be used again.
    let (s, v) = call(&r, "PUT", api::ADD_TAGGED_MEMORY, Some(&body));
    assert_eq!(s, 200, "{v}");
}

#[test]
fn b8_the_vmm_refuses_a_tag_present_on_the_vm_before_the_device_is_reached() {
    let Some(r) = start() else { return };
    // Leave the first offer pending: the guest answers only when told to poll.
    r.vmm.set_autopoll(false).unwrap();
    let one = |tag: &str, path: &str| format!(r#"{{"tag":"{tag}","path":"{path}","size":2097152}}"#);
    let body = format!(r#"{{"extents":[{}]}}"#, one(TAG, "memfd"));
    let (s, added) = call(&r, "PUT", api::ADD_TAGGED_MEMORY, Some(&body));
    assert_eq!(s, 200, "{added}");
    let id = added["extents"][0]["extent_id"].as_u64().unwrap();
    let slots = r.vmm.slots().len();

    // Pending: refused by the VMM, naming the tag and the extent that holds it. The second
    // extent of this chain names a file that does not exist: the tag rule answers first, so
    // nothing was opened and the device was never asked.
    let other = "0b7e8c1d-2f3a-4b5c-8d9e-0f1a2b3c4d5e";
    let body = format!(
        r#"{{"extents":[{},{}]}}"#,
        one(other, "memfd"),
        one(TAG, "/nonexistent/file")
    );
    let (s, v) = call(&r, "PUT", api::ADD_TAGGED_MEMORY, Some(&body));
    assert_eq!(
        (s, v["error"].as_str().unwrap()),
        (
            409,
            format!(
                "extents[1]: tag={TAG}: already present on this VM (extent {id} on tagged \
                 device 0 is pending); a tag names one group per VM, release it first"
            )
            .as_str()
        )
    );
    assert_eq!(r.vmm.extents().len(), 1);
    assert_eq!(r.vmm.slots().len(), slots);

    // Accepted: still refused.
    r.vmm.guest_poll().unwrap();
    assert_eq!(answered(&r.vmm, added["chain_id"].as_u64().unwrap()), vec![id]);
    let body = format!(r#"{{"extents":[{}]}}"#, one(TAG, "memfd"));
    let (s, v) = call(&r, "PUT", api::ADD_TAGGED_MEMORY, Some(&body));
    assert_eq!(s, 409);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains(&format!("(extent {id} on tagged device 0 is accepted)")),
        "{v}"
    );
    // The other tag was never offered: it is free.
    let body = format!(r#"{{"extents":[{}]}}"#, one(other, "memfd"));
    let (s, v) = call(&r, "PUT", api::ADD_TAGGED_MEMORY, Some(&body));
    assert_eq!(s, 200, "{v}");
}

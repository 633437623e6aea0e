//! The control API's request path: any bytes as they arrive on the socket are parsed, routed,
//! decoded and answered by a backend; the answer is well-formed HTTP with a JSON body the CLI's
//! own parser reads back.

use std::sync::Mutex;
use tagmem_device::{ExtentFlags, ExtentInfo, ExtentState, Perf, SourceClass, SourceId, SourceRef, Target};
use tagmem_vmm::api::{
    handle, parse_request, parse_response, pretty_json, route, AddReply, AddedExtent, ApiBackend, ApiError,
    ApiRequest, ExtentRow, HttpResponse, PingInfo, MAX_BODY_BYTES, MAX_HEAD_BYTES,
};
use tagmem_vmm::config::TaggedMemoryConfig;
use tagmem_vmm::hotplug::BaseMemory;

/// A backend that answers from what it was asked: an offer becomes the extent table.
#[derive(Debug)]
pub struct Echo {
    rows: Mutex<Vec<ExtentRow>>,
    base: Mutex<BaseMemory>,
}

impl Default for Echo {
    fn default() -> Self {
        Echo {
            rows: Mutex::default(),
            base: Mutex::new(BaseMemory {
                boot_size: 64 << 20,
                region_addr: 0xe000_0000,
                hotplug_size: 1 << 30,
                block_size: 128 << 20,
                requested_size: 0,
                plugged_size: 0,
            }),
        }
    }
}

impl ApiBackend for Echo {
    fn ping(&self) -> PingInfo {
        PingInfo {
            version: "0.1.0".into(),
            pid: 1,
            device_ready: true,
        }
    }

    fn add_tagged_memory(&self, extents: &[TaggedMemoryConfig]) -> Result<AddReply, ApiError> {
        if extents.iter().any(|c| c.id.as_deref() == Some("conflict")) {
            return Err(ApiError::Conflict("tag already present".into()));
        }
        let mut rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for (i, c) in extents.iter().enumerate() {
            let id = rows.len() as u64 + 1;
            let size = c.size.unwrap_or(2 << 20);
            let gpa = (4u64 << 30) + id * (2 << 20);
            let name = c.id.clone().unwrap_or_else(|| format!("_tagmem{id}"));
            rows.push(ExtentRow {
                name: name.clone(),
                path: c
                    .path
                    .as_ref()
                    .map_or_else(|| "memfd".into(), |p| p.display().to_string()),
                info: ExtentInfo {
                    id,
                    chain_id: 1,
                    tag: c.tag(),
                    gpa,
                    length: size,
                    source: SourceRef {
                        id: SourceId(i as u64),
                        offset: c.offset,
                    },
                    flags: ExtentFlags {
                        sharable: c.shared,
                        readonly: c.readonly,
                    },
                    perf: Perf {
                        read_latency_ns: c.read_latency.unwrap_or(0),
                        write_latency_ns: c.write_latency.unwrap_or(0),
                        read_bandwidth_mbps: c.read_bandwidth.unwrap_or(0),
                        write_bandwidth_mbps: c.write_bandwidth.unwrap_or(0),
                    },
                    node: c.node,
                    seq: u16::try_from(i).unwrap_or(u16::MAX),
                    class: SourceClass::File,
                    state: ExtentState::Pending,
                    poison: Vec::new(),
                },
            });
            out.push(AddedExtent {
                id: name,
                extent_id: id,
                gpa,
                size,
            });
        }
        Ok(AddReply {
            chain_id: 1,
            extents: out,
        })
    }

    fn release_tagged_memory(&self, target: Target) -> Result<(), ApiError> {
        let rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        let found = rows.iter().any(|r| match target {
            Target::Tag(t) => r.info.tag == t,
            Target::Extent(id) => r.info.id == id,
        });
        if found {
            Ok(())
        } else {
            Err(ApiError::BadRequest(format!("no such extent or tag: {target:?}")))
        }
    }

    fn tagged_memory(&self) -> Vec<ExtentRow> {
        self.rows.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn resize(&self, desired_ram: u64) -> Result<(), ApiError> {
        let mut base = self.base.lock().unwrap_or_else(|e| e.into_inner());
        let requested = base.requested_for(desired_ram).map_err(ApiError::BadRequest)?;
        assert!(requested <= base.hotplug_size && requested % base.block_size == 0);
        assert_eq!(base.boot_size + requested, desired_ram);
        base.requested_size = requested;
        Ok(())
    }

    fn memory(&self) -> Result<BaseMemory, ApiError> {
        Ok(*self.base.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Checks an answer: a known status, and what the CLI reads back is what was sent.
fn check_answer(r: &HttpResponse) {
    assert!(
        matches!(
            r.status,
            200 | 204 | 400 | 404 | 405 | 408 | 409 | 413 | 431 | 500 | 503
        ),
        "unexpected status {}",
        r.status
    );
    let bytes = r.to_bytes();
    let (status, body) = parse_response(&bytes).expect("the CLI reads the server's answer");
    assert_eq!((status, body.as_str()), (r.status, r.body.as_str()));
    if r.status == 204 {
        assert!(r.body.is_empty());
        return;
    }
    let v: serde_json::Value = serde_json::from_str(&r.body).expect("the body is JSON");
    if r.status >= 400 {
        assert!(v["error"].is_string(), "an error answer names the error");
    }
    let again: serde_json::Value = serde_json::from_str(&pretty_json(&r.body)).expect("indented JSON");
    assert_eq!(again, v, "indenting keeps the JSON value");
}

/// One request as it arrived, possibly followed by more: parsed, routed and answered twice (the
/// second time against the state the first left).
pub fn check(data: &[u8]) {
    let backend = Echo::default();
    match parse_request(data) {
        Ok(Some(req)) => {
            if let Ok(ApiRequest::Add(add)) = route(&req) {
                for c in &add.extents {
                    c.validate().expect("a decoded extent is valid");
                }
            }
            check_answer(&handle(&backend, &req));
            check_answer(&handle(&backend, &req));
        }
        Ok(None) => assert!(
            data.len() < MAX_HEAD_BYTES + MAX_BODY_BYTES,
            "the server would buffer {} bytes without answering",
            data.len()
        ),
        Err(e) => {
            let r = HttpResponse::error(&e);
            assert!(r.status >= 400);
            check_answer(&r);
        }
    }
    // The client side: any answer bytes parse or fail cleanly, and indenting any JSON text
    // keeps its value.
    let _ = parse_response(data);
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
            let again: serde_json::Value =
                serde_json::from_str(&pretty_json(text)).expect("indented JSON parses");
            assert_eq!(again, v, "indenting keeps the JSON value");
        }
    }
}

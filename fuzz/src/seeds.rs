//! Seed inputs: meaningful examples of every target's input, written to `fuzz/seeds/<target>/`
//! by `cargo run --example seeds` (which adds the sysfs trees of the lookup crate's fixtures).

use crate::device::{encode_program, raw_preset, Op, Pick, Rig, SpecBits};
use crate::proto::*;
use crate::restore::mutated_input;

/// Named seeds of one target.
pub type Seeds = Vec<(String, Vec<u8>)>;

fn spec(tag: u8, len_units: u8) -> SpecBits {
    SpecBits {
        tag,
        len_units,
        source: tag,
        offset_units: 0,
        gpa_mode: 0,
        gpa_units: 0,
        flags: 0,
        latency: 80,
        node: 1,
        seq: 0,
        class: 4,
        raw: 0,
    }
}

fn posted(n: u8) -> Op {
    Op::PostEvents {
        n,
        len: 128,
        readable: false,
    }
}

fn accept_all() -> Op {
    Op::Accept {
        chain: Pick(0),
        mask: u64::MAX,
        twist: 0,
    }
}

fn plug(block: u16, nb: u16) -> Op {
    Op::Plug {
        block,
        nb,
        raw: false,
    }
}

fn state(block: u16, nb: u16) -> Op {
    Op::State {
        block,
        nb,
        raw: false,
    }
}

/// Programs of the `device` target, by name.
pub fn device_programs() -> Vec<(&'static str, Vec<Op>)> {
    let sharable = |seq| SpecBits {
        flags: 1,
        seq,
        ..spec(2, 1)
    };
    vec![
        (
            "base-plug-unplug",
            vec![
                plug(0, 4),
                state(0, 8),
                Op::Unplug {
                    block: 2,
                    nb: 1,
                    raw: false,
                },
                state(0, 4),
                Op::UnplugAll,
                state(0, 16),
            ],
        ),
        (
            "base-requested-size",
            vec![
                Op::SetRequestedSize { value: 8, raw: false },
                plug(0, 8),
                plug(8, 1),
                Op::SetRequestedSize { value: 0, raw: false },
                Op::UnplugAll,
                Op::ReadConfig { offset: 0, len: 88 },
            ],
        ),
        (
            "offer-accept-release",
            vec![
                posted(8),
                Op::Offer {
                    specs: vec![spec(1, 1), spec(1, 2)],
                },
                accept_all(),
                Op::RequestRelease { target: Pick(0) },
                posted(2),
                Op::Release {
                    extent: Pick(0),
                    tag_mode: 0,
                },
            ],
        ),
        (
            "offer-accept-part-of-a-group",
            vec![
                posted(8),
                Op::Offer {
                    specs: vec![spec(1, 1), spec(1, 1), spec(0, 1)],
                },
                Op::Accept {
                    chain: Pick(0),
                    mask: 1,
                    twist: 0,
                },
            ],
        ),
        (
            "sharable-group-busy-then-released",
            vec![
                posted(8),
                Op::Offer {
                    specs: vec![sharable(0), sharable(1), sharable(2)],
                },
                accept_all(),
                Op::RequestRelease { target: Pick(0) },
                posted(2),
                Op::ReleaseBusy {
                    extent: Pick(0),
                    tag_mode: 0,
                },
                Op::Release {
                    extent: Pick(1),
                    tag_mode: 0,
                },
            ],
        ),
        (
            "offer-times-out",
            vec![
                posted(4),
                Op::Offer {
                    specs: vec![spec(3, 1)],
                },
                Op::Advance { ms: 20_001 },
                posted(2),
                accept_all(),
            ],
        ),
        (
            "metadata-and-poison",
            vec![
                posted(8),
                Op::Offer {
                    specs: vec![spec(0, 2)],
                },
                accept_all(),
                Op::UpdateMetadata {
                    target: Pick(1),
                    latency: 120,
                },
                Op::Poison {
                    extent: Pick(0),
                    offset: 16,
                    pages: 1,
                },
                posted(4),
                Op::Release {
                    extent: Pick(0),
                    tag_mode: 0,
                },
            ],
        ),
        (
            "reset-and-reactivate",
            vec![
                plug(0, 2),
                posted(8),
                Op::Offer {
                    specs: vec![spec(1, 1)],
                },
                accept_all(),
                Op::Offer {
                    specs: vec![spec(2, 1)],
                },
                Op::Reset,
                Op::Activate { features: 0 },
                posted(8),
                Op::List {
                    first: Pick(255),
                    count: 64,
                    room: 16 + 80 * 64,
                },
                state(0, 4),
            ],
        ),
        (
            "snapshot-with-a-pending-chain",
            vec![
                posted(1),
                Op::Offer {
                    specs: vec![spec(1, 1), spec(1, 1)],
                },
                Op::SnapshotRestore,
                posted(4),
                accept_all(),
                Op::SnapshotRestore,
            ],
        ),
        (
            "fixed-address-read-only",
            vec![
                posted(4),
                Op::Offer {
                    specs: vec![SpecBits {
                        gpa_mode: 1,
                        gpa_units: 10,
                        flags: 2,
                        ..spec(4, 3)
                    }],
                },
                accept_all(),
            ],
        ),
        (
            "bad-accepts",
            vec![
                posted(8),
                Op::Offer {
                    specs: vec![spec(1, 1), spec(2, 1)],
                },
                Op::Accept {
                    chain: Pick(0),
                    mask: 3,
                    twist: 1,
                },
                Op::Accept {
                    chain: Pick(0),
                    mask: 3,
                    twist: 2,
                },
                Op::Accept {
                    chain: Pick(0),
                    mask: 3,
                    twist: 4,
                },
                Op::Accept {
                    chain: Pick(0),
                    mask: 3,
                    twist: 8,
                },
                Op::Accept {
                    chain: Pick(255),
                    mask: 3,
                    twist: 0,
                },
            ],
        ),
        (
            "raw-requests",
            vec![
                Op::RawRequest {
                    bytes: VirtioMemReq::new(REQ_PLUG, 1 << 30, 1).as_bytes()[..20].to_vec(),
                    room: 10,
                },
                Op::RawRequest {
                    bytes: TaggedReq::new(REQ_ACCEPT, 1, [0; 16], 1000).as_bytes().to_vec(),
                    room: 16,
                },
                Op::RawRequest {
                    bytes: vec![0xff, 0xff, 0, 0],
                    room: 16,
                },
                Op::RawRequest {
                    bytes: TaggedReq::new(REQ_RELEASE, 1, [0; 16], 0).as_bytes().to_vec(),
                    room: 4,
                },
            ],
        ),
        (
            "offers-without-event-buffers",
            vec![
                Op::Offer {
                    specs: vec![spec(1, 1)],
                },
                Op::Offer {
                    specs: vec![spec(2, 1)],
                },
                Op::Offer {
                    specs: vec![spec(0, 1), spec(0, 1)],
                },
                Op::PostEvents {
                    n: 2,
                    len: 64,
                    readable: false,
                },
                Op::PostEvents {
                    n: 2,
                    len: 128,
                    readable: true,
                },
                posted(8),
                accept_all(),
            ],
        ),
        (
            "events-queued-for-released-capacity",
            vec![
                posted(1),
                Op::Offer {
                    specs: vec![spec(1, 1)],
                },
                accept_all(),
                Op::UpdateMetadata {
                    target: Pick(0),
                    latency: 90,
                },
                Op::Release {
                    extent: Pick(0),
                    tag_mode: 0,
                },
                Op::SnapshotRestore,
                posted(2),
            ],
        ),
        (
            "base-only-driver",
            vec![
                Op::Reset,
                Op::Activate { features: 1 },
                plug(0, 1),
                Op::RawRequest {
                    bytes: TaggedReq::new(REQ_ACCEPT, 1, [0; 16], 0).as_bytes().to_vec(),
                    room: 16,
                },
                Op::Offer {
                    specs: vec![spec(1, 1)],
                },
            ],
        ),
    ]
}

fn named(v: Vec<(&str, Vec<u8>)>) -> Seeds {
    v.into_iter().map(|(n, b)| (format!("{n}.bin"), b)).collect()
}

/// Seeds of the `device` target.
pub fn device() -> Seeds {
    named(
        device_programs()
            .into_iter()
            .map(|(n, ops)| (n, encode_program(&ops)))
            .collect(),
    )
}

const QUEUE_DESC_F_NEXT: u16 = 1;
const QUEUE_DESC_F_WRITE: u16 = 2;
const QUEUE_DESC_F_INDIRECT: u16 = 4;
const REQ: u64 = 0x2_0000;
const RESP: u64 = 0x3_0000;
const TABLE: u64 = 0x6_0000;

fn desc_bytes(descs: &[(u64, u32, u16, u16)]) -> Vec<u8> {
    let mut v = Vec::new();
    for &(addr, len, flags, next) in descs {
        v.extend_from_slice(&addr.to_le_bytes());
        v.extend_from_slice(&len.to_le_bytes());
        v.extend_from_slice(&flags.to_le_bytes());
        v.extend_from_slice(&next.to_le_bytes());
    }
    v
}

fn plug_req() -> Vec<u8> {
    VirtioMemReq::new(REQ_PLUG, (1 << 30) + (8 << 21), 1)
        .as_bytes()
        .to_vec()
}

/// Programs of the `queue` target (run after [`raw_preset`]), by name.
pub fn queue_programs() -> Vec<(&'static str, Vec<Op>)> {
    let poke_req = Op::Poke {
        addr: REQ as u32,
        bytes: plug_req(),
    };
    let chain = |descs: Vec<(u8, u64, u32, u16, u16)>| Op::RawChain { descs, head: 0 };
    vec![
        (
            "request-in-two-descriptors",
            vec![
                poke_req.clone(),
                chain(vec![
                    (0, REQ, 24, QUEUE_DESC_F_NEXT, 1),
                    (1, RESP, 10, QUEUE_DESC_F_WRITE, 0),
                ]),
            ],
        ),
        (
            "request-split-over-descriptors",
            vec![
                poke_req.clone(),
                chain(vec![
                    (0, REQ, 8, QUEUE_DESC_F_NEXT, 1),
                    (1, REQ + 8, 16, QUEUE_DESC_F_NEXT, 2),
                    (2, RESP, 4, QUEUE_DESC_F_WRITE | QUEUE_DESC_F_NEXT, 3),
                    (3, RESP + 4, 6, QUEUE_DESC_F_WRITE, 0),
                ]),
            ],
        ),
        (
            "indirect-table",
            vec![
                poke_req.clone(),
                Op::Poke {
                    addr: TABLE as u32,
                    bytes: desc_bytes(&[(REQ, 24, QUEUE_DESC_F_NEXT, 1), (RESP, 10, QUEUE_DESC_F_WRITE, 0)]),
                },
                chain(vec![(0, TABLE, 32, QUEUE_DESC_F_INDIRECT, 0)]),
            ],
        ),
        (
            "indirect-table-longer-than-the-queue",
            vec![
                Op::Poke {
                    addr: TABLE as u32,
                    bytes: desc_bytes(
                        &(0..257u16)
                            .map(|i| (REQ, 1, QUEUE_DESC_F_NEXT, i + 1))
                            .collect::<Vec<_>>(),
                    ),
                },
                chain(vec![(0, TABLE, 257 * 16, QUEUE_DESC_F_INDIRECT, 0)]),
            ],
        ),
        (
            "looping-chain",
            vec![chain(vec![
                (0, REQ, 24, QUEUE_DESC_F_NEXT, 1),
                (1, RESP, 10, QUEUE_DESC_F_WRITE | QUEUE_DESC_F_NEXT, 0),
            ])],
        ),
        (
            "readable-after-writable",
            vec![
                poke_req.clone(),
                chain(vec![
                    (0, RESP, 10, QUEUE_DESC_F_WRITE | QUEUE_DESC_F_NEXT, 1),
                    (1, REQ, 24, 0, 0),
                ]),
            ],
        ),
        (
            "descriptor-outside-memory",
            vec![chain(vec![
                (0, u64::MAX - 8, 24, QUEUE_DESC_F_NEXT, 1),
                (1, 0x10_0000 - 4, 10, QUEUE_DESC_F_WRITE, 0),
            ])],
        ),
        (
            "available-index-jumps",
            vec![
                Op::Poke {
                    addr: 0x1000 + 2,
                    bytes: 0x4000u16.to_le_bytes().to_vec(),
                },
                Op::Notify { queue: GUESTQ },
            ],
        ),
        (
            "event-buffers-raw",
            vec![
                Op::Poke {
                    addr: 0x8000,
                    bytes: desc_bytes(&[
                        (0x4_0000, 128, QUEUE_DESC_F_WRITE, 0),
                        (0x4_0080, 64, QUEUE_DESC_F_WRITE | QUEUE_DESC_F_NEXT, 2),
                        (0x4_0100, 128, 0, 0),
                    ]),
                },
                Op::Poke {
                    addr: 0x9000,
                    bytes: [0u16, 3, 0, 1].iter().flat_map(|v| v.to_le_bytes()).collect(),
                },
                Op::Notify { queue: EVENTQ },
            ],
        ),
        (
            "unknown-queue",
            vec![Op::Notify { queue: 2 }, Op::Notify { queue: u16::MAX }],
        ),
    ]
}

/// Seeds of the `queue` target.
pub fn queue() -> Seeds {
    named(
        queue_programs()
            .into_iter()
            .map(|(n, ops)| (n, encode_program(&ops)))
            .collect(),
    )
}

/// The device's own snapshots: a fresh device and the state each `device` program leaves.
pub fn restore_json() -> Seeds {
    let mut out = vec![(
        "fresh-device.json".to_string(),
        serde_json::to_vec(&Rig::tagged().state()).expect("JSON"),
    )];
    let mut raw = Rig::tagged();
    raw.checks = false;
    for op in raw_preset() {
        raw.step(&op);
    }
    out.push((
        "accepted-and-pending.json".into(),
        serde_json::to_vec(&raw.state()).expect("JSON"),
    ));
    for (name, ops) in device_programs() {
        // Recorded without the checks: a state that does not restore is a seed worth having.
        let mut rig = Rig::tagged();
        rig.checks = false;
        for op in &ops {
            rig.step(op);
        }
        out.push((
            format!("{name}.json"),
            serde_json::to_vec(&rig.state()).expect("JSON"),
        ));
    }
    out
}

/// Seeds of the `restore_state` target: each `device` program, unchanged.
pub fn restore_state() -> Seeds {
    named(
        device_programs()
            .into_iter()
            .map(|(n, ops)| (n, mutated_input(&encode_program(&ops))))
            .collect(),
    )
}

/// Seeds of the `wire` target: every request, event and the configuration.
pub fn wire() -> Seeds {
    let tag = *uuid::Uuid::from_u128(0x6f1c_2a9e_0d3b_4c55_9a7e_3b1f_00c0_ffee).as_bytes();
    let record = ExtentRecord {
        tag,
        extent_id: 3.into(),
        addr: (4u64 << 30).into(),
        length: (2u64 << 20).into(),
        flags: 1.into(),
        node_id: 1.into(),
        source: 1,
        read_latency_ns: 250.into(),
        write_latency_ns: 300.into(),
        read_bandwidth_mbps: 20_000.into(),
        write_bandwidth_mbps: 10_000.into(),
        seq: 0.into(),
        ..Default::default()
    };
    let mut accept = TaggedReq::new(REQ_ACCEPT, 2, [0; 16], 2).as_bytes().to_vec();
    accept.extend_from_slice(&3u64.to_le_bytes());
    accept.extend_from_slice(&4u64.to_le_bytes());
    let ev = |e: Event| EventMsg::from(&e).as_bytes().to_vec();
    let mut cfg = TaggedConfig::default();
    cfg.base.block_size = (2u64 << 20).into();
    cfg.base.addr = (1u64 << 30).into();
    cfg.base.region_size = (64u64 << 20).into();
    cfg.base.usable_region_size = (64u64 << 20).into();
    cfg.tagged_addr = (4u64 << 30).into();
    cfg.tagged_size = (1u64 << 30).into();
    cfg.max_pending = 100.into();
    cfg.offer_timeout_ms = 20_000.into();
    let v: Vec<(&str, Vec<u8>)> = vec![
        (
            "req-plug",
            VirtioMemReq::new(REQ_PLUG, 1 << 30, 4).as_bytes().to_vec(),
        ),
        (
            "req-unplug",
            VirtioMemReq::new(REQ_UNPLUG, 1 << 30, 1).as_bytes().to_vec(),
        ),
        (
            "req-unplug-all",
            VirtioMemReq::new(REQ_UNPLUG_ALL, 0, 0).as_bytes().to_vec(),
        ),
        (
            "req-state",
            VirtioMemReq::new(REQ_STATE, 1 << 30, 32).as_bytes().to_vec(),
        ),
        ("req-accept", accept),
        (
            "req-release",
            TaggedReq::new(REQ_RELEASE, 3, tag, 0).as_bytes().to_vec(),
        ),
        (
            "req-release-busy",
            TaggedReq::new(REQ_RELEASE_BUSY, 3, tag, 0).as_bytes().to_vec(),
        ),
        (
            "evt-offer",
            ev(Event::Offer {
                chain_id: 2,
                more: true,
                record,
            }),
        ),
        ("evt-release-request", ev(Event::ReleaseRequest { record })),
        ("evt-metadata", ev(Event::Metadata { record })),
        (
            "evt-poison",
            ev(Event::Poison {
                record,
                offset: 4096,
                length: 4096,
            }),
        ),
        ("evt-chain-abandoned", ev(Event::ChainAbandoned { chain_id: 2 })),
        ("config", cfg.as_bytes().to_vec()),
        ("resp-accept", TaggedResp::new(0, 0, 2).as_bytes().to_vec()),
    ];
    named(v)
}

/// Seeds of the `http` target: requests as `curl --unix-socket` and the CLI send them.
pub fn http() -> Seeds {
    let tag = "6f1c2a9e-0d3b-4c55-9a7e-3b1f00c0ffee";
    let put = |path: &str, body: &str| {
        format!(
            "PUT {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    };
    let get = |path: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n")
            .into_bytes()
    };
    let add = format!(
        r#"{{"extents": [{{"tag": "{tag}", "path": "memfd", "size": 4194304, "read_latency": 250, "write_latency": 300, "read_bandwidth": 20000, "write_bandwidth": 10000, "node": 1, "id": "hbm0"}}, {{"tag": "{tag}", "path": "memfd", "size": 2097152, "offset": 0, "shared": false, "readonly": false, "id": "hbm1"}}]}}"#
    );
    let mut expect = put(
        "/api/v1/vm.add-tagged-memory",
        r#"{"extents": [{"size": 2097152}]}"#,
    );
    let at = expect.windows(4).position(|w| w == b"\r\n\r\n").expect("a head");
    expect.splice(at..at, b"\r\nExpect: 100-continue".iter().copied());
    let v: Vec<(&str, Vec<u8>)> = vec![
        ("ping", get("/api/v1/vmm.ping")),
        ("tagged-memory", get("/api/v1/vm.tagged-memory")),
        ("add-tagged-memory", put("/api/v1/vm.add-tagged-memory", &add)),
        ("add-then-list", {
            let mut v = put("/api/v1/vm.add-tagged-memory", &add);
            v.extend(get("/api/v1/vm.tagged-memory"));
            v
        }),
        ("add-bad-size", put("/api/v1/vm.add-tagged-memory", r#"{"extents": [{"size": "2M"}]}"#)),
        ("add-expect-continue", expect),
        (
            "release-tag",
            put("/api/v1/vm.release-tagged-memory", &format!(r#"{{"tag": "{tag}"}}"#)),
        ),
        ("release-extent", put("/api/v1/vm.release-tagged-memory", r#"{"extent_id": 7}"#)),
        ("release-both", put("/api/v1/vm.release-tagged-memory", &format!(r#"{{"tag": "{tag}", "extent_id": 7}}"#))),
        ("resize", put("/api/v1/vm.resize", r#"{"desired_ram": 805306368}"#)),
        ("resize-not-a-block", put("/api/v1/vm.resize", r#"{"desired_ram": 805306369}"#)),
        ("memory", get("/api/v1/vm.memory")),
        ("wrong-method", get("/api/v1/vm.add-tagged-memory")),
        ("unknown-path", get("/api/v1/vm.info?x=1")),
        (
            "chunked",
            b"PUT /api/v1/vm.release-tagged-memory HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n7\r\n{\"a\":1}\r\n0\r\n\r\n".to_vec(),
        ),
        (
            "too-large",
            b"PUT /api/v1/vm.add-tagged-memory HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n".to_vec(),
        ),
        ("answer-from-the-server", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 17\r\nConnection: close\r\n\r\n{\"chain_id\": 3}\n".to_vec()),
    ];
    v.into_iter().map(|(n, b)| (format!("{n}.http"), b)).collect()
}

/// Seeds of the `option` target: values from docs/interface.md and the CLI's help.
pub fn option() -> Seeds {
    let tag = "6f1c2a9e-0d3b-4c55-9a7e-3b1f00c0ffee";
    let v: Vec<(&str, String)> = vec![
        ("untagged", "size=64M".into()),
        (
            "tagged-memfd-hmat",
            format!("tag={tag},path=memfd,size=4M,read_latency=250,write_latency=300,read_bandwidth=20000,node=1"),
        ),
        ("devdax-shared", format!("tag={tag},path=/dev/dax0.0,offset=2M,size=1G,shared=on")),
        ("hugetlbfs-readonly", format!("tag={tag},path=/dev/hugepages/tm,size=2G,readonly=on,id=huge0")),
        ("tag-only", format!("tag={tag}")),
        (
            "demo-chains",
            format!(
                "path=memfd,size=2M,id=scratch\n\
                 tag={tag},path=memfd,size=4M,read_latency=80,write_latency=95,read_bandwidth=409600,write_bandwidth=307200,node=1,id=hbm0\n\
                 tag={tag},path=memfd,size=2M,read_latency=80,write_latency=95,read_bandwidth=409600,write_bandwidth=307200,node=1,id=hbm1\n\
                 tag=0b7e8c1d-2f3a-4b5c-8d9e-0f1a2b3c4d5e,path=memfd,size=2M,shared=on,read_latency=250,write_latency=300,node=2,id=shm0\n\
                 tag=0b7e8c1d-2f3a-4b5c-8d9e-0f1a2b3c4d5e,path=memfd,size=2M,shared=on,read_latency=250,write_latency=300,node=2,id=shm1"
            ),
        ),
        ("not-a-multiple", "size=3M".into()),
        ("memory", "size=128M".into()),
        ("memory-hotplug", "size=512M,hotplug_size=1G,hotplugged_size=256M".into()),
        ("api-socket", "path=/run/tagmem/vm0.sock,mode=0660".into()),
        ("api-socket-bare", "/tmp/tagmem.sock".into()),
    ];
    v.into_iter()
        .map(|(n, s)| (format!("{n}.txt"), s.into_bytes()))
        .collect()
}

/// Seeds of every target but `sysfs` (whose trees come from the lookup crate's fixtures).
pub fn all() -> Vec<(&'static str, Seeds)> {
    vec![
        ("wire", wire()),
        ("device", device()),
        ("queue", queue()),
        ("restore_json", restore_json()),
        ("restore_state", restore_state()),
        ("http", http()),
        ("option", option()),
    ]
}

//! Helpers shared by the device's integration tests: extent specs and tagged requests sent
//! through a [`Harness`].
#![allow(dead_code)]

use tagmem_device::test_utils::Harness;
use tagmem_device::*;
use tagmem_wire::*;
use uuid::Uuid;

pub const MB2: u64 = VIRTIO_MEM_EXTENT_ALIGN;
pub const WIN: u64 = 4 << 30;

pub fn spec(tag: u128, off: u64, len: u64) -> ExtentSpec {
    ExtentSpec {
        tag: Uuid::from_u128(tag),
        length: len,
        source: SourceRef {
            id: SourceId(7),
            offset: off,
        },
        gpa: None,
        flags: ExtentFlags::default(),
        perf: Perf {
            read_latency_ns: 250,
            write_latency_ns: 300,
            read_bandwidth_mbps: 20_000,
            write_bandwidth_mbps: 10_000,
        },
        node: 2,
        seq: 0,
        class: SourceClass::CxlDc,
    }
}

pub fn sharable(tag: u128, off: u64, seq: u16) -> ExtentSpec {
    let mut s = spec(tag, off, MB2);
    s.flags.sharable = true;
    s.seq = seq;
    s
}

pub fn tagged_req(h: &mut Harness, ty: u16, id: u64, tag: [u8; 16], ids: &[u64]) -> (u16, u16, u32) {
    let count = u32::try_from(ids.len()).unwrap();
    let mut bytes = TaggedReq::new(ty, id, tag, count).as_bytes().to_vec();
    for i in ids {
        bytes.extend_from_slice(&i.to_le_bytes());
    }
    let (n, r) = h.request(&bytes, 16);
    assert_eq!(n, 16, "a tagged response is 16 bytes");
    let r = TaggedResp::read_from_bytes(&r).unwrap();
    (r.resp_type.get(), r.reason.get(), r.value.get())
}

pub fn accept(h: &mut Harness, chain: u64, ids: &[u64]) -> (u16, u16, u32) {
    tagged_req(h, VIRTIO_MEM_REQ_ACCEPT, chain, [0; 16], ids)
}

pub fn release(h: &mut Harness, id: u64, tag: u128) -> (u16, u16, u32) {
    tagged_req(
        h,
        VIRTIO_MEM_REQ_RELEASE,
        id,
        *Uuid::from_u128(tag).as_bytes(),
        &[],
    )
}

pub const ACK: u16 = VIRTIO_MEM_RESP_ACK;
pub const ERR: u16 = VIRTIO_MEM_RESP_ERROR;

pub fn offers(evs: &[Event]) -> Vec<(u64, bool, u64)> {
    evs.iter()
        .filter_map(|e| match e {
            Event::Offer {
                chain_id,
                more,
                record,
            } => Some((*chain_id, *more, record.extent_id.get())),
            _ => None,
        })
        .collect()
}

//! Base virtio-mem requests (VIRTIO §5.15.6) with every error case, against real queues.

use tagmem_device::test_utils::Harness;
use tagmem_device::VirtioDevice;
use tagmem_wire::*;

const BS: u64 = 2 << 20;
const BASE: u64 = 1 << 30;

fn req(h: &mut Harness, ty: u16, addr: u64, nb: u16) -> (u16, u16) {
    let (n, r) = h.request(VirtioMemReq::new(ty, addr, nb).as_bytes(), 10);
    assert_eq!(n, 10, "a base response is 10 bytes");
    let r = VirtioMemResp::read_from_bytes(&r).unwrap();
    (r.resp_type.get(), r.state.get())
}

fn base_only() -> Harness {
    let cfg = Harness::config();
    Harness::new(cfg, 1 << VIRTIO_F_VERSION_1)
}

#[test]
fn plug_maps_and_unplug_unmaps() {
    let mut h = base_only();
    assert_eq!(
        req(&mut h, VIRTIO_MEM_REQ_PLUG, BASE + BS, 3),
        (VIRTIO_MEM_RESP_ACK, 0)
    );
    assert_eq!(h.dev.plugged_size(), 3 * BS);
    {
        let m = h.mapper.lock().unwrap();
        let map = m.lookup(BASE + BS).unwrap();
        assert_eq!(
            (map.gpa, map.len, map.source.offset, map.readonly),
            (BASE + BS, 3 * BS, BS, false)
        );
        assert!(m.lookup(BASE).is_none());
    }
    assert_eq!(
        req(&mut h, VIRTIO_MEM_REQ_UNPLUG, BASE + 2 * BS, 1),
        (VIRTIO_MEM_RESP_ACK, 0)
    );
    {
        let m = h.mapper.lock().unwrap();
        assert!(m.lookup(BASE + 2 * BS).is_none());
        assert!(m.lookup(BASE + BS).is_some() && m.lookup(BASE + 3 * BS).is_some());
        assert!(m.violations.is_empty(), "{:?}", m.violations);
    }
    assert_eq!(h.dev.plugged_size(), 2 * BS);
}

#[test]
fn plug_errors() {
    let mut h = base_only();
    let err = (VIRTIO_MEM_RESP_ERROR, 0);
    assert_eq!(req(&mut h, VIRTIO_MEM_REQ_PLUG, BASE, 0), err, "zero blocks");
    assert_eq!(
        req(&mut h, VIRTIO_MEM_REQ_PLUG, BASE + 4096, 1),
        err,
        "misaligned"
    );
    assert_eq!(
        req(&mut h, VIRTIO_MEM_REQ_PLUG, BASE - BS, 1),
        err,
        "below the region"
    );
    assert_eq!(
        req(&mut h, VIRTIO_MEM_REQ_PLUG, BASE + 31 * BS, 2),
        err,
        "past the region end"
    );
    assert_eq!(
        req(&mut h, VIRTIO_MEM_REQ_PLUG, u64::MAX - BS + 1, u16::MAX),
        err,
        "overflow"
    );
    assert_eq!(
        req(&mut h, VIRTIO_MEM_REQ_PLUG, BASE, 17),
        (VIRTIO_MEM_RESP_NACK, 0),
        "over requested_size"
    );
    assert_eq!(
        req(&mut h, VIRTIO_MEM_REQ_PLUG, BASE, 2),
        (VIRTIO_MEM_RESP_ACK, 0)
    );
    assert_eq!(
        req(&mut h, VIRTIO_MEM_REQ_PLUG, BASE + BS, 2),
        err,
        "already plugged"
    );
    h.mapper.lock().unwrap().fail_map_at = Some(BASE + 4 * BS);
    assert_eq!(
        req(&mut h, VIRTIO_MEM_REQ_PLUG, BASE + 4 * BS, 1),
        err,
        "mapper failure"
    );
    assert_eq!(h.dev.plugged_size(), 2 * BS, "a failed plug changes nothing");
    assert_eq!(h.dev.metrics().base_errors.get(), 8);
}

#[test]
fn unplug_errors_and_unplug_all() {
    let mut h = base_only();
    let err = (VIRTIO_MEM_RESP_ERROR, 0);
    assert_eq!(req(&mut h, VIRTIO_MEM_REQ_UNPLUG, BASE, 1), err, "not plugged");
    assert_eq!(
        req(&mut h, VIRTIO_MEM_REQ_PLUG, BASE, 2),
        (VIRTIO_MEM_RESP_ACK, 0)
    );
    assert_eq!(
        req(&mut h, VIRTIO_MEM_REQ_PLUG, BASE + 4 * BS, 2),
        (VIRTIO_MEM_RESP_ACK, 0)
    );
    assert_eq!(req(&mut h, VIRTIO_MEM_REQ_UNPLUG, BASE, 3), err, "partly plugged");
    assert_eq!(req(&mut h, VIRTIO_MEM_REQ_UNPLUG, BASE + 1, 1), err, "misaligned");
    assert_eq!(req(&mut h, VIRTIO_MEM_REQ_UNPLUG, BASE, 0), err, "zero blocks");
    h.mapper.lock().unwrap().fail_unmap = true;
    assert_eq!(req(&mut h, VIRTIO_MEM_REQ_UNPLUG, BASE, 2), err, "mapper failure");
    assert_eq!(h.dev.plugged_size(), 4 * BS);
    h.mapper.lock().unwrap().fail_unmap = false;
    assert_eq!(
        req(&mut h, VIRTIO_MEM_REQ_UNPLUG_ALL, 0, 0),
        (VIRTIO_MEM_RESP_ACK, 0)
    );
    assert_eq!(h.dev.plugged_size(), 0);
    assert_eq!(h.mapper.lock().unwrap().mapped_bytes(), 0);
    assert_eq!(
        req(&mut h, VIRTIO_MEM_REQ_UNPLUG_ALL, 0, 0),
        (VIRTIO_MEM_RESP_ACK, 0),
        "idempotent"
    );
}

#[test]
fn state_request() {
    let mut h = base_only();
    assert_eq!(
        req(&mut h, VIRTIO_MEM_REQ_PLUG, BASE + BS, 1),
        (VIRTIO_MEM_RESP_ACK, 0)
    );
    let ack = VIRTIO_MEM_RESP_ACK;
    assert_eq!(
        req(&mut h, VIRTIO_MEM_REQ_STATE, BASE + BS, 1),
        (ack, VIRTIO_MEM_STATE_PLUGGED)
    );
    assert_eq!(
        req(&mut h, VIRTIO_MEM_REQ_STATE, BASE, 1),
        (ack, VIRTIO_MEM_STATE_UNPLUGGED)
    );
    assert_eq!(
        req(&mut h, VIRTIO_MEM_REQ_STATE, BASE, 3),
        (ack, VIRTIO_MEM_STATE_MIXED)
    );
    assert_eq!(
        req(&mut h, VIRTIO_MEM_REQ_STATE, BASE, 0),
        (VIRTIO_MEM_RESP_ERROR, 0)
    );
    assert_eq!(
        req(&mut h, VIRTIO_MEM_REQ_STATE, BASE + 32 * BS, 1),
        (VIRTIO_MEM_RESP_ERROR, 0)
    );
}

#[test]
fn unknown_type_gets_error() {
    let mut h = base_only();
    let mut r = VirtioMemReq::new(VIRTIO_MEM_REQ_PLUG, BASE, 1);
    r.req_type = Le16::new(77);
    let (n, resp) = h.request(r.as_bytes(), 10);
    assert_eq!(n, 10);
    assert_eq!(
        VirtioMemResp::read_from_bytes(&resp).unwrap().resp_type.get(),
        VIRTIO_MEM_RESP_ERROR
    );
    assert_eq!(h.dev.plugged_size(), 0);
}

#[test]
fn tagged_requests_need_the_feature() {
    let mut h = base_only();
    let (n, resp) = h.request(TaggedReq::new(TAGMEM_REQ_ACCEPT, 1, [0; 16], 0).as_bytes(), 16);
    assert_eq!(n, 16);
    let r = TaggedResp::read_from_bytes(&resp).unwrap();
    assert_eq!(
        (r.resp_type.get(), r.reason.get()),
        (VIRTIO_MEM_RESP_ERROR, reason::NOT_NEGOTIATED)
    );
}

#[test]
fn config_space_and_requested_size() {
    let mut h = base_only();
    let mut b = [0u8; 88];
    h.dev.read_config(0, &mut b);
    let c = TaggedConfig::read_from_bytes(&b).unwrap();
    assert_eq!(c.base.block_size.get(), BS);
    assert_eq!(c.base.node_id.get(), 1);
    assert_eq!(c.base.addr.get(), BASE);
    assert_eq!(c.base.region_size.get(), 64 << 20);
    assert_eq!(c.base.usable_region_size.get(), 64 << 20);
    assert_eq!(c.base.requested_size.get(), 32 << 20);
    assert_eq!(c.tagged_addr.get(), 4 << 30);
    assert_eq!(c.max_pending.get(), 100);
    assert_eq!(c.offer_timeout_ms.get(), 20_000);
    let mut tail = [0xffu8; 8];
    h.dev.read_config(200, &mut tail);
    assert_eq!(tail, [0; 8], "bytes past the config read as zero");

    let gen = h.dev.config_generation();
    h.dev.set_requested_size(8 * BS).unwrap();
    assert!(h.dev.config_generation() != gen);
    assert_eq!(h.notifier.config.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(h.dev.set_requested_size(BS + 1).is_err());
    assert!(h.dev.set_requested_size(128 * BS).is_err());
    assert_eq!(
        req(&mut h, VIRTIO_MEM_REQ_PLUG, BASE, 9),
        (VIRTIO_MEM_RESP_NACK, 0)
    );
}

#[test]
fn reset_unplugs_everything() {
    let mut h = base_only();
    assert_eq!(
        req(&mut h, VIRTIO_MEM_REQ_PLUG, BASE, 4),
        (VIRTIO_MEM_RESP_ACK, 0)
    );
    h.dev.reset();
    assert_eq!(h.dev.plugged_size(), 0);
    assert_eq!(h.mapper.lock().unwrap().mapped_bytes(), 0);
    assert!(!h.dev.is_active());
}

#[test]
fn features_follow_configuration() {
    let mut cfg = Harness::config();
    assert_eq!(
        cfg.features(),
        1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_MEM_F_ACPI_PXM | 1 << VIRTIO_MEM_F_TAGGED_EXTENTS
    );
    cfg.tagged = None;
    cfg.node_id = None;
    assert_eq!(
        cfg.features(),
        1 << VIRTIO_F_VERSION_1,
        "without a window it is plain virtio-mem"
    );
    let h = Harness::new(Harness::config(), u64::MAX);
    assert_eq!(
        h.dev.driver_features(),
        h.dev.device_features(),
        "only offered bits stick"
    );
}

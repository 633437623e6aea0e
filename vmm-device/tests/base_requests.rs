//! Base virtio-mem requests (VIRTIO §5.15.6) with every error case, against real queues.

use tagmem_device::test_utils::Harness;
use tagmem_device::{DeviceError, VirtioDevice, MINIMAL_BASE_REGION_SIZE};
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
    Harness::new(
        cfg,
        1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE,
    )
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
    assert_eq!(h.dev.plugged_size(), 2 * BS, "a failed plug changes nothing");
    assert_eq!(h.dev.metrics().base_errors.get(), 7);
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
    assert_eq!(h.dev.plugged_size(), 4 * BS);
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
    let (n, resp) = h.request(
        TaggedReq::new(VIRTIO_MEM_REQ_ACCEPT, 1, [0; 16], 0).as_bytes(),
        16,
    );
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

/// Features a Linux guest's virtio_mem negotiates with this device (no tagged extents).
const LINUX: u64 =
    1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE | 1 << VIRTIO_MEM_F_ACPI_PXM;

/// [T-RESET-1] (item A1): device reset changes no memory state (VIRTIO §5.15.5).
#[test]
fn reset_keeps_plugged_blocks() {
    let mut h = base_only();
    assert_eq!(
        req(&mut h, VIRTIO_MEM_REQ_PLUG, BASE, 4),
        (VIRTIO_MEM_RESP_ACK, 0)
    );
    let unmaps = h.mapper.lock().unwrap().unmaps;
    h.dev.reset();
    assert!(!h.dev.is_active());
    assert_eq!(h.dev.plugged_size(), 4 * BS);
    assert_eq!(h.mapper.lock().unwrap().mapped_bytes(), 4 * BS);
    assert_eq!(
        h.mapper.lock().unwrap().unmaps,
        unmaps,
        "nothing unmapped at reset"
    );
    let mut b = [0u8; 56];
    h.dev.read_config(0, &mut b);
    let c = VirtioMemConfig::read_from_bytes(&b).unwrap();
    assert_eq!((c.plugged_size.get(), c.requested_size.get()), (4 * BS, 32 << 20));
}

/// Acceptance (issue 10): a base-mode device under a driver that resets it the way Linux's
/// virtio_mem does (reset at probe, freeze/restore, remove and rebind, the kdump kernel's probe)
/// keeps its plugged blocks and answers STATE correctly after each.
#[test]
fn base_device_keeps_plugged_blocks_through_linux_reset_sequences() {
    let mut cfg = Harness::config();
    cfg.tagged = None;
    let mut h = Harness::new(cfg, LINUX);
    let ack = VIRTIO_MEM_RESP_ACK;
    // Probe: the virtio core resets before the driver's probe; the driver plugs.
    h.reset_and_activate(LINUX);
    assert_eq!(req(&mut h, VIRTIO_MEM_REQ_PLUG, BASE, 2), (ack, 0));
    assert_eq!(req(&mut h, VIRTIO_MEM_REQ_PLUG, BASE + 8 * BS, 3), (ack, 0));
    let plugged = |h: &mut Harness| {
        (
            req(h, VIRTIO_MEM_REQ_STATE, BASE, 2),
            req(h, VIRTIO_MEM_REQ_STATE, BASE + 2 * BS, 6),
            req(h, VIRTIO_MEM_REQ_STATE, BASE + 8 * BS, 3),
            req(h, VIRTIO_MEM_REQ_STATE, BASE, 11),
        )
    };
    let expected = (
        (ack, VIRTIO_MEM_STATE_PLUGGED),
        (ack, VIRTIO_MEM_STATE_UNPLUGGED),
        (ack, VIRTIO_MEM_STATE_PLUGGED),
        (ack, VIRTIO_MEM_STATE_MIXED),
    );
    assert_eq!(plugged(&mut h), expected);
    let mapped = h.mapper.lock().unwrap().mapped_bytes();
    assert_eq!(mapped, 5 * BS);

    // s2idle freeze (virtio_mem_freeze: reset, delete the queues), then restore (the virtio core
    // resets, negotiates again and sets DRIVER_OK; the driver re-creates its queue).
    h.dev.reset();
    h.reset_and_activate(LINUX);
    assert_eq!(plugged(&mut h), expected, "after freeze/restore");
    assert_eq!(h.dev.plugged_size(), 5 * BS);

    // Unbind (virtio_mem_remove resets), then bind again: the new driver sees plugged memory.
    h.dev.reset();
    h.reset_and_activate(LINUX);
    assert_eq!(plugged(&mut h), expected, "after remove and rebind");
    let mut b = [0u8; 56];
    h.dev.read_config(0, &mut b);
    assert_eq!(
        VirtioMemConfig::read_from_bytes(&b).unwrap().plugged_size.get(),
        5 * BS
    );

    // A crash into the kdump kernel: its virtio_mem probes (reset) and asks STATE what to dump.
    h.reset_and_activate(LINUX);
    assert_eq!(plugged(&mut h), expected, "in the kdump kernel");
    assert_eq!(
        h.mapper.lock().unwrap().mapped_bytes(),
        mapped,
        "the memory never left"
    );
    assert!(h.mapper.lock().unwrap().violations.is_empty());

    // A probing driver that finds memory plugged unplugs it all (virtio_mem's
    // unplug_all_required): only now does the memory go.
    assert_eq!(req(&mut h, VIRTIO_MEM_REQ_UNPLUG_ALL, 0, 0), (ack, 0));
    assert_eq!(
        req(&mut h, VIRTIO_MEM_REQ_STATE, BASE, 11),
        (ack, VIRTIO_MEM_STATE_UNPLUGGED)
    );
    assert_eq!(h.mapper.lock().unwrap().mapped_bytes(), 0);
}

/// [T-BASE-3], [T-BASE-4] (item A4): a host mapping failure answers BUSY, which Linux retries,
/// not ERROR, which marks the device broken; the state is unchanged.
#[test]
fn mapper_failure_on_plug_or_unplug_answers_busy() {
    let mut h = base_only();
    let busy = (VIRTIO_MEM_RESP_BUSY, 0);
    assert_eq!(
        req(&mut h, VIRTIO_MEM_REQ_PLUG, BASE, 2),
        (VIRTIO_MEM_RESP_ACK, 0)
    );
    h.mapper.lock().unwrap().fail_map_at = Some(BASE + 4 * BS);
    assert_eq!(
        req(&mut h, VIRTIO_MEM_REQ_PLUG, BASE + 4 * BS, 1),
        busy,
        "map failed"
    );
    assert_eq!(h.dev.plugged_size(), 2 * BS, "a failed plug changes nothing");
    h.mapper.lock().unwrap().fail_map_at = None;
    h.mapper.lock().unwrap().fail_unmap = true;
    assert_eq!(req(&mut h, VIRTIO_MEM_REQ_UNPLUG, BASE, 2), busy, "unmap failed");
    assert_eq!(h.dev.plugged_size(), 2 * BS, "a failed unplug changes nothing");
    assert_eq!(
        req(&mut h, VIRTIO_MEM_REQ_STATE, BASE, 2),
        (VIRTIO_MEM_RESP_ACK, VIRTIO_MEM_STATE_PLUGGED)
    );
    // Retried once the host recovers, the requests succeed.
    h.mapper.lock().unwrap().fail_unmap = false;
    assert_eq!(
        req(&mut h, VIRTIO_MEM_REQ_UNPLUG, BASE, 2),
        (VIRTIO_MEM_RESP_ACK, 0)
    );
    assert_eq!(
        req(&mut h, VIRTIO_MEM_REQ_PLUG, BASE + 4 * BS, 1),
        (VIRTIO_MEM_RESP_ACK, 0)
    );
}

/// [T-BASE-4] (item A4): UNPLUG_ALL answers only ACK or BUSY.
#[test]
fn unplug_all_answers_only_ack_or_busy() {
    let mut h = base_only();
    assert_eq!(
        req(&mut h, VIRTIO_MEM_REQ_PLUG, BASE, 2),
        (VIRTIO_MEM_RESP_ACK, 0)
    );
    h.mapper.lock().unwrap().fail_unmap = true;
    assert_eq!(
        req(&mut h, VIRTIO_MEM_REQ_UNPLUG_ALL, 0, 0),
        (VIRTIO_MEM_RESP_BUSY, 0)
    );
    assert_eq!(
        h.dev.plugged_size(),
        2 * BS,
        "what could not be unmapped stays plugged"
    );
    h.mapper.lock().unwrap().fail_unmap = false;
    assert_eq!(
        req(&mut h, VIRTIO_MEM_REQ_UNPLUG_ALL, 0, 0),
        (VIRTIO_MEM_RESP_ACK, 0)
    );
    assert_eq!(h.dev.plugged_size(), 0);
}

/// [T-FEAT-2] (item A3): UNPLUGGED_INACCESSIBLE is always offered and FEATURES_OK is refused
/// without it, as QEMU's `virtio_mem_validate_features` does.
#[test]
fn unplugged_inaccessible_is_offered_and_required() {
    let mut cfg = Harness::config();
    for tagged in [true, false] {
        if !tagged {
            cfg.tagged = None;
        }
        assert_ne!(cfg.features() & 1 << VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE, 0);
    }
    let mut h = base_only();
    h.dev.reset();
    h.dev.set_driver_features(1 << VIRTIO_F_VERSION_1);
    assert!(
        !h.dev.features_ok(),
        "a driver without UNPLUGGED_INACCESSIBLE is refused"
    );
    let q = h.reqq.queue();
    assert!(matches!(
        h.dev.activate(h.mem.clone(), vec![q]),
        Err(DeviceError::FeatureRequired { bit: 1, .. })
    ));
    assert!(!h.dev.is_active());
    h.dev.set_driver_features(LINUX);
    assert!(h.dev.features_ok());
}

/// [T-BASE-8] (item A5): a base region of size 0 is refused at construction, naming the field.
#[test]
fn empty_base_region_is_refused() {
    let mut cfg = Harness::config();
    cfg.region_size = 0;
    cfg.requested_size = 0;
    assert!(matches!(
        cfg.validate(),
        Err(DeviceError::InvalidConfig {
            field: "region_size",
            ..
        })
    ));
    let mut cfg = Harness::config();
    cfg.region_source = None;
    assert!(matches!(
        cfg.validate(),
        Err(DeviceError::InvalidConfig {
            field: "region_source",
            ..
        })
    ));
    let mut cfg = Harness::config();
    cfg.region_size = MINIMAL_BASE_REGION_SIZE;
    cfg.requested_size = 0;
    cfg.validate().unwrap();
}

#[test]
fn features_follow_configuration() {
    let mut cfg = Harness::config();
    assert_eq!(
        cfg.features(),
        1 << VIRTIO_F_VERSION_1
            | 1 << VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE
            | 1 << VIRTIO_MEM_F_ACPI_PXM
            | 1 << VIRTIO_MEM_F_TAGGED_EXTENTS
    );
    cfg.tagged = None;
    cfg.node_id = None;
    assert_eq!(
        cfg.features(),
        1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE,
        "without a window it is plain virtio-mem"
    );
    let h = Harness::new(Harness::config(), u64::MAX);
    assert_eq!(
        h.dev.driver_features(),
        h.dev.device_features(),
        "only offered bits stick"
    );
}

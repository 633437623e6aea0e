//! An in-process device for the driver's unit tests: it answers guestq through a responder and
//! writes queued events to eventq.

pub(super) use super::*;
pub(super) use crate::transport::VecMemory;
pub(super) use crate::virtqueue::device_side::{Desc, DeviceQueue};
pub(super) use alloc::rc::Rc;
pub(super) use alloc::string::ToString;
pub(super) use alloc::vec::Vec;

pub(super) const MEM_BASE: u64 = 0x10_0000;
pub(super) const MEM_LEN: usize = 0x10_0000;
pub(super) const WIN: u64 = 0x1_0000_0000;
pub(super) const ALL_FEATURES: u64 = (1 << VIRTIO_F_VERSION_1)
    | (1 << VIRTIO_MEM_F_TAGGED_EXTENTS)
    | (1 << VIRTIO_MEM_F_ACPI_PXM)
    | (1 << VIRTIO_MEM_F_PERSISTENT_SUSPEND);

pub(super) type Responder = Box<dyn FnMut(&Request, &[u64]) -> Option<Vec<u8>>>;

/// An in-process device: answers guestq through `responder`, writes queued events to eventq.
pub(super) struct FakeDevice {
    pub(super) mem: Rc<VecMemory>,
    pub(super) features: u64,
    pub(super) driver_features: u64,
    pub(super) status: u8,
    pub(super) refuse_features_ok: bool,
    pub(super) config: Vec<u8>,
    pub(super) max_sizes: [u16; 2],
    pub(super) queues: [Option<DeviceQueue>; 2],
    /// Requests seen: the parsed request, ids, and the chain's descriptors.
    pub(super) requests: Vec<(Request, Vec<u64>, Vec<Desc>)>,
    /// Chains the responder declined to answer (still owned by the device).
    pub(super) held: Vec<(u16, u32)>,
    pub(super) responder: Responder,
    /// Events waiting for an eventq buffer: bytes and the used length to report.
    pub(super) events: VecDeque<(Vec<u8>, u32)>,
    /// Notifications received, per queue.
    pub(super) notifies: [u32; 2],
}

pub(super) fn ack_all() -> Responder {
    Box::new(|req, ids| {
        Some(match *req {
            Request::State { .. } => VirtioMemResp::new(VIRTIO_MEM_RESP_ACK, VIRTIO_MEM_STATE_MIXED)
                .as_bytes()
                .to_vec(),
            Request::Plug { .. } | Request::Unplug { .. } | Request::UnplugAll => {
                VirtioMemResp::new(VIRTIO_MEM_RESP_ACK, 0).as_bytes().to_vec()
            }
            Request::Accept { .. } => {
                let n = u32::try_from(ids.len()).unwrap();
                TaggedResp::new(VIRTIO_MEM_RESP_ACK, 0, n).as_bytes().to_vec()
            }
            Request::Release { .. } | Request::ReleaseBusy { .. } | Request::List { .. } => {
                TaggedResp::new(VIRTIO_MEM_RESP_ACK, 0, 0).as_bytes().to_vec()
            }
        })
    })
}

impl FakeDevice {
    pub(super) fn new(mem: Rc<VecMemory>, features: u64) -> Self {
        let cfg = TaggedConfig {
            base: VirtioMemConfig {
                block_size: Le64::new(VIRTIO_MEM_EXTENT_ALIGN),
                node_id: Le16::new(1),
                addr: Le64::new(0x8000_0000),
                region_size: Le64::new(0x4000_0000),
                usable_region_size: Le64::new(0x4000_0000),
                requested_size: Le64::new(0x1000_0000),
                ..Default::default()
            },
            tagged_addr: Le64::new(WIN),
            tagged_size: Le64::new(64 * VIRTIO_MEM_EXTENT_ALIGN),
            max_pending: Le32::new(VIRTIO_MEM_DEFAULT_MAX_PENDING),
            offer_timeout_ms: Le32::new(VIRTIO_MEM_DEFAULT_OFFER_TIMEOUT_MS),
            ..Default::default()
        };
        let mut config = cfg.as_bytes().to_vec();
        if features & bit(VIRTIO_MEM_F_TAGGED_EXTENTS) == 0 {
            config.truncate(VIRTIO_MEM_CONFIG_SIZE);
        }
        FakeDevice {
            mem,
            features,
            driver_features: 0,
            status: 0,
            refuse_features_ok: false,
            config,
            max_sizes: [64, 64],
            queues: [None, None],
            requests: Vec::new(),
            held: Vec::new(),
            responder: ack_all(),
            events: VecDeque::new(),
            notifies: [0; 2],
        }
    }

    pub(super) fn push_event(&mut self, e: &Event) {
        self.push_raw(EventMsg::from(e).as_bytes().to_vec(), EVENT_LEN);
    }

    pub(super) fn push_raw(&mut self, bytes: Vec<u8>, used_len: u32) {
        self.events.push_back((bytes, used_len));
        self.flush_events();
    }

    pub(super) fn flush_events(&mut self) {
        let Some(q) = self.queues[1].as_mut() else { return };
        while !self.events.is_empty() {
            let Some((head, descs)) = q.pop_avail(&*self.mem) else {
                return;
            };
            let (bytes, len) = self.events.pop_front().unwrap();
            self.mem.write(descs[0].addr, &bytes);
            q.push_used(&*self.mem, u32::from(head), len);
        }
    }

    /// Returns a chain held back earlier.
    pub(super) fn complete_held(&mut self) {
        for (head, len) in core::mem::take(&mut self.held) {
            self.queues[0]
                .as_mut()
                .unwrap()
                .push_used(&*self.mem, u32::from(head), len);
        }
    }

    pub(super) fn last_request(&self) -> (Request, Vec<u64>) {
        let (r, ids, _) = self.requests.last().unwrap();
        (*r, ids.clone())
    }

    pub(super) fn tagged_requests(&self) -> Vec<(Request, Vec<u64>)> {
        self.requests
            .iter()
            .filter(|(r, _, _)| r.is_tagged())
            .map(|(r, ids, _)| (*r, ids.clone()))
            .collect()
    }
}

impl Transport for FakeDevice {
    fn device_features(&mut self) -> u64 {
        self.features
    }
    fn set_driver_features(&mut self, features: u64) {
        self.driver_features = features & self.features;
    }
    fn status(&mut self) -> u8 {
        self.status
    }
    fn set_status(&mut self, status: u8) {
        if status == 0 {
            self.queues = [None, None];
            self.events.clear();
        }
        self.status = status;
        if self.refuse_features_ok {
            self.status &= !status::FEATURES_OK;
        }
    }
    fn read_config(&mut self, offset: usize, buf: &mut [u8]) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = self.config.get(offset + i).copied().unwrap_or(0);
        }
    }
    fn queue_max_size(&mut self, queue: u16) -> u16 {
        self.max_sizes.get(usize::from(queue)).copied().unwrap_or(0)
    }
    fn setup_queue(&mut self, queue: u16, size: u16, desc: u64, avail: u64, used: u64) {
        let layout = QueueLayout {
            size,
            desc,
            avail,
            used,
        };
        self.queues[usize::from(queue)] = Some(DeviceQueue::new(layout));
    }
    fn set_queue_ready(&mut self, _queue: u16) {}
    fn notify(&mut self, queue: u16) {
        if let Some(n) = self.notifies.get_mut(usize::from(queue)) {
            *n += 1;
        }
        if queue == VIRTIO_MEM_GUESTQ {
            while let Some((head, descs)) = self.queues[0].as_mut().unwrap().pop_avail(&*self.mem) {
                let mut bytes = Vec::new();
                for d in descs.iter().filter(|d| !d.writable) {
                    let mut b = vec![0u8; usize::try_from(d.len).unwrap()];
                    self.mem.read(d.addr, &mut b);
                    bytes.extend(b);
                }
                let (req, n) = Request::parse(&bytes).unwrap();
                let ids: Vec<u64> = bytes[n..]
                    .chunks_exact(8)
                    .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                self.requests.push((req, ids.clone(), descs.clone()));
                let w = descs.iter().find(|d| d.writable).unwrap();
                match (self.responder)(&req, &ids) {
                    Some(resp) => {
                        self.mem.write(w.addr, &resp);
                        let len = u32::try_from(resp.len()).unwrap();
                        self.queues[0]
                            .as_mut()
                            .unwrap()
                            .push_used(&*self.mem, u32::from(head), len);
                    }
                    None => self.held.push((head, 16)),
                }
            }
        }
        self.flush_events();
    }
}

pub(super) type Drv = TagMemDriver<FakeDevice, Rc<VecMemory>>;

pub(super) fn driver_with(features: u64) -> Drv {
    let mem = Rc::new(VecMemory::new(MEM_BASE, MEM_LEN));
    let dev = FakeDevice::new(mem.clone(), features);
    let mut d = TagMemDriver::new(dev, mem, MEM_BASE, 64 * 1024);
    assert_eq!(d.claim_mode(), ClaimMode::OnRequest, "DCD semantics by default");
    // These tests are about the protocol: every accepted group becomes a device at once.
    // Claiming by tag (the default) is tested in `dax` and with the real device.
    d.set_claim_mode(ClaimMode::OnAccept);
    d.set_spin_limit(50);
    d
}

/// An initialised driver; the LIST walk of `init` and its log entry are cleared.
pub(super) fn ready() -> Drv {
    let mut d = driver_with(ALL_FEATURES);
    d.init().unwrap();
    d.transport_mut().requests.clear();
    d.drain_log();
    d
}

pub(super) fn rec(id: u64, slot: u64, tag: u8, flags: u32, seq: u16) -> ExtentRecord {
    let mut r = ExtentRecord {
        tag: [tag; 16],
        extent_id: Le64::new(id),
        addr: Le64::new(WIN + slot * VIRTIO_MEM_EXTENT_ALIGN),
        length: Le64::new(VIRTIO_MEM_EXTENT_ALIGN),
        ..Default::default()
    };
    r.flags.set(flags);
    r.seq.set(seq);
    r.read_latency_ns.set(200);
    r.source = VIRTIO_MEM_SOURCE_CXL_DC;
    r
}

/// Sends a whole chain, MORE on all but the last.
pub(super) fn offer(d: &mut Drv, chain_id: u64, recs: &[ExtentRecord]) {
    offer_part(d, chain_id, recs, true);
}

/// Sends part of a chain, MORE on every event but (if `close`) the last.
pub(super) fn offer_part(d: &mut Drv, chain_id: u64, recs: &[ExtentRecord], close: bool) {
    for (i, r) in recs.iter().enumerate() {
        let more = !close || i + 1 < recs.len();
        d.transport_mut().push_event(&Event::Offer {
            chain_id,
            more,
            record: *r,
        });
    }
}

pub(super) fn accepts(d: &Drv) -> Vec<(u64, Vec<u64>)> {
    d.transport()
        .tagged_requests()
        .into_iter()
        .filter_map(|(r, ids)| match r {
            Request::Accept { chain_id, .. } => Some((chain_id, ids)),
            _ => None,
        })
        .collect()
}

pub(super) fn protocol_errors(log: &[DriverEvent]) -> Vec<DriverError> {
    log.iter()
        .filter_map(|e| match e {
            DriverEvent::Protocol(p) => Some(*p),
            _ => None,
        })
        .collect()
}

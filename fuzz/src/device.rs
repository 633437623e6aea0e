//! The device core driven over real guest memory: programs of guest requests (well-formed or
//! raw descriptor chains), eventq buffers, host commands, resets and snapshot round trips, with
//! the device's invariants checked after every step.
//!
//! A program is a byte string of [`Op`]s ([`Op::decode`] reads one, [`Op::encode`] writes it),
//! so seed programs are written from meaningful steps and libFuzzer mutates them byte-wise.

mod check;
mod program;

pub use check::*;
pub use program::*;

use crate::proto::*;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tagmem_device::test_utils::{
    CountingNotifier, FakeMapper, FakeMapperState, Harness, ManualClock, RawQueue, EVT_ADDR, REQ_ADDR,
    RESP_ADDR,
};
use tagmem_device::{
    DeviceState, ExtentInfo, ExtentSpec, ExtentState, HostEvent, Perf, TaggedMemDevice, Target, VirtioDevice,
};
use uuid::Uuid;

/// Guest memory the harness provides (rings and buffers live in it).
const MEM_SIZE: u64 = 1 << 20;

/// A device on the test harness, the features its driver negotiated and what the checks track.
pub struct Rig {
    /// The harness: guest memory, device, fake mapper, clock, queues.
    pub h: Harness,
    /// Eventq buffers posted and not yet used.
    outstanding_events: usize,
    /// Extent ids the device reported released (they must never be mapped again).
    released: Vec<u64>,
    /// Raw descriptors or pokes changed the rings behind the harness's back: used entries and
    /// event buffers are only checked for what the device itself guarantees.
    raw: bool,
    /// Check the invariants after every step (off only to record states for seeds).
    pub checks: bool,
}

impl Rig {
    /// A device with every offered feature negotiated, activated on the harness.
    pub fn tagged() -> Self {
        Rig {
            h: Harness::tagged(),
            outstanding_events: 0,
            released: Vec::new(),
            raw: false,
            checks: true,
        }
    }

    /// The device's state now.
    pub fn state(&self) -> DeviceState {
        self.h.dev.snapshot()
    }

    fn window(&self) -> u64 {
        self.h.dev.config().tagged.map_or(0, |w| w.addr)
    }

    fn extents(&self) -> Vec<ExtentInfo> {
        let mut v = self.h.dev.extents();
        v.sort_by_key(|e| e.id);
        v
    }

    fn accepted(&self) -> Vec<ExtentInfo> {
        self.extents()
            .into_iter()
            .filter(|e| e.state != ExtentState::Pending)
            .collect()
    }

    fn pending_chains(&self) -> Vec<(u64, Vec<u64>)> {
        let mut chains: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for e in self
            .extents()
            .into_iter()
            .filter(|e| e.state == ExtentState::Pending)
        {
            chains.entry(e.chain_id).or_default().push(e.id);
        }
        chains.into_iter().collect()
    }

    fn pick_extent(&self, p: Pick) -> Option<ExtentInfo> {
        let acc = self.accepted();
        let all = self.extents();
        match p.0 {
            0..=127 if !acc.is_empty() => Some(acc[usize::from(p.0) % acc.len()].clone()),
            128..=191 if !all.is_empty() => Some(all[usize::from(p.0) % all.len()].clone()),
            _ => None,
        }
    }

    fn target(&self, p: Pick) -> Target {
        match (self.pick_extent(p), p.0 % 2) {
            (Some(e), 0) if !e.tag.is_nil() => Target::Tag(e.tag),
            (Some(e), _) => Target::Extent(e.id),
            (None, 0) => Target::Tag(tag_of(p.0 >> 1, 0)),
            (None, _) => Target::Extent(u64::from(p.0)),
        }
    }

    /// Writes `req` into guest memory, publishes it with `room` writable bytes, notifies, and
    /// checks the used entry; returns the response bytes (empty when no response was written).
    fn request(&mut self, req: &[u8], room: u32) -> Vec<u8> {
        let room = room.min(0x1_0000);
        self.h.write(REQ_ADDR, req);
        let len = u32::try_from(req.len()).expect("small request");
        let head = self
            .h
            .reqq
            .add_chain(&[(REQ_ADDR, len, false), (RESP_ADDR, room, true)]);
        self.h.dev.queue_notify(GUESTQ);
        let used = self.h.reqq.take_used();
        if !self.h.dev.is_active() {
            assert!(used.is_empty(), "an inactive device used a buffer");
            return Vec::new();
        }
        let size = u32::from(self.h.reqq.size);
        let mut resp = None;
        for &(h, n) in &used {
            assert!(h < size, "used head {h} outside the queue");
            if h == u32::from(head) {
                assert!(n <= room, "used length {n} exceeds the writable room {room}");
                resp = Some(n);
            }
        }
        if self.raw {
            return resp.map_or_else(Vec::new, |n| self.h.read(RESP_ADDR, n as usize));
        }
        assert_eq!(used.len(), 1, "the device must complete the chain it was given");
        let n = resp.expect("the used entry names the head published");
        self.h.read(RESP_ADDR, n as usize)
    }

    fn block_addr(&self, block: u16, raw: bool) -> u64 {
        let c = self.h.dev.config();
        if raw {
            u64::from(block) << 12
        } else {
            c.region_addr + u64::from(block % 40) * c.block_size
        }
    }

    fn base(&mut self, ty: u16, block: u16, nb: u16, raw: bool) {
        let addr = self.block_addr(block, raw);
        let nb = if raw { nb } else { nb % 40 };
        let req = VirtioMemReq::new(ty, addr, nb);
        let resp = self.request(req.as_bytes(), BASE_RESP_SIZE as u32);
        if !resp.is_empty() {
            let (r, _) = VirtioMemResp::read_from_prefix(&resp).expect("a full base response");
            assert!(r.resp_type.get() <= 3, "unknown response type");
        }
    }

    fn tagged_resp(&self, resp: &[u8]) -> Option<TaggedResp> {
        if resp.is_empty() {
            return None;
        }
        let (r, _) = TaggedResp::read_from_prefix(resp).expect("a tagged response is 16 bytes");
        assert!(r.resp_type.get() <= 3, "unknown response type");
        Some(r)
    }

    fn tag_for(&self, e: &ExtentInfo, mode: u8) -> [u8; 16] {
        match mode % 4 {
            1 => *Uuid::from_u128(e.tag.as_u128() ^ 1).as_bytes(),
            2 => [0; 16],
            _ => *e.tag.as_bytes(),
        }
    }

    /// Runs one step, then checks the invariants.
    pub fn step(&mut self, op: &Op) {
        match op {
            Op::Plug { block, nb, raw } => self.base(REQ_PLUG, *block, *nb, *raw),
            Op::Unplug { block, nb, raw } => self.base(REQ_UNPLUG, *block, *nb, *raw),
            Op::UnplugAll => self.base(REQ_UNPLUG_ALL, 0, 0, false),
            Op::State { block, nb, raw } => self.base(REQ_STATE, *block, *nb, *raw),
            Op::Accept { chain, mask, twist } => self.accept(*chain, *mask, *twist),
            Op::Release { extent, tag_mode } => self.release(REQ_RELEASE, *extent, *tag_mode),
            Op::ReleaseBusy { extent, tag_mode } => self.release(REQ_RELEASE_BUSY, *extent, *tag_mode),
            Op::List { first, count, room } => self.list(*first, *count, *room),
            Op::RawRequest { bytes, room } => {
                self.request(bytes, u32::from(*room));
            }
            Op::RawChain { descs, head } => {
                self.raw = true;
                for &(i, addr, len, flags, next) in descs {
                    self.h.reqq.set_desc(u16::from(i), addr, len, flags, next);
                }
                self.h.reqq.publish(*head);
                self.h.dev.queue_notify(GUESTQ);
                let size = u32::from(self.h.reqq.size);
                for (h, _) in self.h.reqq.take_used() {
                    assert!(h < size, "used head {h} outside the queue");
                }
            }
            Op::Poke { addr, bytes } => self.poke(*addr, bytes),
            Op::PostEvents { n, len, readable } => self.post_events(*n, *len, *readable),
            Op::Notify { queue } => self.h.dev.queue_notify(*queue),
            Op::Offer { specs } => {
                let window = self.window();
                let specs: Vec<ExtentSpec> = specs.iter().map(|s| s.spec(window)).collect();
                if let Ok(r) = self.h.dev.offer(&specs) {
                    assert_eq!(r.extents.len(), specs.len(), "a receipt for every extent");
                }
            }
            Op::RequestRelease { target } => {
                let t = self.target(*target);
                let _ = self.h.dev.request_release(t);
            }
            Op::UpdateMetadata { target, latency } => {
                let t = self.target(*target);
                let perf = Perf {
                    read_latency_ns: *latency,
                    ..Perf::default()
                };
                let _ = self.h.dev.update_metadata(t, perf);
            }
            Op::Poison {
                extent,
                offset,
                pages,
            } => {
                let id = self.pick_extent(*extent).map_or(u64::from(extent.0), |e| e.id);
                let _ = self
                    .h
                    .dev
                    .inject_poison(id, u64::from(*offset) << 12, u64::from(*pages) << 12);
            }
            Op::SetRequestedSize { value, raw } => {
                let size = if *raw {
                    *value
                } else {
                    (value % 40) * self.h.dev.config().block_size
                };
                let _ = self.h.dev.set_requested_size(size);
            }
            Op::Advance { ms } => {
                self.h.clock.advance(u64::from(*ms));
                self.h.dev.poll_timers();
            }
            Op::Reset => {
                // VIRTIO §5.15.5 and the reset decision: memory state survives a reset, and so
                // do pending chains and ids.
                let before = self.state();
                self.h.dev.reset();
                self.outstanding_events = 0;
                let after = self.state();
                assert_eq!(
                    expected_mappings(&after),
                    expected_mappings(&before),
                    "a reset changed what the guest can reach"
                );
                assert_eq!(after.extents, before.extents, "a reset changed the extent table");
                assert_eq!(
                    after.plugged, before.plugged,
                    "a reset changed the plugged blocks"
                );
                assert_eq!(
                    (after.next_chain_id, after.next_extent_id),
                    (before.next_chain_id, before.next_extent_id),
                    "a reset reuses ids"
                );
            }
            Op::Activate { features } => self.activate(*features),
            Op::SnapshotRestore => {
                if self.checks {
                    self.snapshot_restore();
                }
            }
            Op::ReadConfig { offset, len } => {
                let mut buf = vec![0u8; usize::from(*len)];
                self.h.dev.read_config(u64::from(*offset), &mut buf);
                self.h.dev.write_config(u64::from(*offset), &buf);
            }
        }
        if self.checks {
            self.check();
        } else {
            self.h.dev.take_host_events();
        }
    }

    fn accept(&mut self, chain: Pick, mask: u64, twist: u8) {
        let chains = self.pending_chains();
        let (chain_id, ids) = if chains.is_empty() || chain.0 == 255 {
            (u64::from(chain.0), vec![1, 2])
        } else {
            chains[usize::from(chain.0) % chains.len()].clone()
        };
        let mut chosen: Vec<u64> = ids
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << (i % 64)) != 0)
            .map(|(_, id)| *id)
            .collect();
        if twist & 1 != 0 {
            if let Some(&first) = chosen.first() {
                chosen.push(first);
            }
        }
        if twist & 2 != 0 {
            chosen.push(u64::MAX - u64::from(twist));
        }
        let mut count = u32::try_from(chosen.len()).expect("few ids");
        if twist & 4 != 0 {
            count = count.wrapping_add(u32::from(twist >> 4) + 1);
        }
        let mut req = TaggedReq::new(REQ_ACCEPT, chain_id, [0; 16], count)
            .as_bytes()
            .to_vec();
        for id in &chosen {
            req.extend_from_slice(&id.to_le_bytes());
        }
        let room = if twist & 8 != 0 {
            8
        } else {
            TAGGED_RESP_SIZE as u32
        };
        let resp = self.request(&req, room);
        if let Some(r) = self.tagged_resp(&resp) {
            if r.resp_type.get() == 0 {
                let n = r.value.get() as usize;
                assert!(n <= chosen.len(), "accepted more extents than the driver named");
            }
        }
    }

    fn release(&mut self, ty: u16, extent: Pick, tag_mode: u8) {
        let (id, tag) = match self.pick_extent(extent) {
            Some(e) => (e.id, self.tag_for(&e, tag_mode)),
            None => (u64::from(extent.0), [tag_mode; 16]),
        };
        let req = TaggedReq::new(ty, id, tag, 0);
        let resp = self.request(req.as_bytes(), TAGGED_RESP_SIZE as u32);
        self.tagged_resp(&resp);
    }

    fn list(&mut self, first: Pick, count: u32, room: u16) {
        let ty = REQ_LIST;
        let first_id = match self.pick_extent(first) {
            Some(e) if first.0 < 192 => e.id,
            _ => u64::from(first.0) & 0x3f,
        };
        let count = if count & 0x8000_0000 != 0 {
            count
        } else {
            count % 70
        };
        let req = TaggedReq::new(ty, first_id, [0; 16], count);
        let resp = self.request(req.as_bytes(), u32::from(room));
        let Some(r) = self.tagged_resp(&resp) else {
            return;
        };
        if r.resp_type.get() != 0 {
            return;
        }
        let n = r.value.get() as usize;
        assert!(n <= count as usize, "LIST answered more records than asked");
        assert_eq!(
            resp.len(),
            TAGGED_RESP_SIZE + EXTENT_RECORD_SIZE * n,
            "LIST used length"
        );
        let accepted = self.accepted();
        let want: Vec<u64> = accepted
            .iter()
            .map(|e| e.id)
            .filter(|id| *id >= first_id)
            .take(n)
            .collect();
        let got: Vec<u64> = resp[TAGGED_RESP_SIZE..]
            .chunks_exact(EXTENT_RECORD_SIZE)
            .map(|c| {
                ExtentRecord::read_from_bytes(c)
                    .expect("a record is 80 bytes")
                    .extent_id
                    .get()
            })
            .collect();
        assert_eq!(
            got, want,
            "LIST must name the accepted extents from {first_id}, ascending"
        );
    }

    fn poke(&mut self, addr: u32, bytes: &[u8]) {
        // Everything but the used rings, which belong to the device.
        let reqq = &self.h.reqq;
        let evq = &self.h.evq;
        let addr = u64::from(addr) % MEM_SIZE;
        let end = (addr + bytes.len() as u64).min(MEM_SIZE);
        let used = [
            (reqq.used, reqq.used + 4 + 8 * u64::from(reqq.size) + 2),
            (evq.used, evq.used + 4 + 8 * u64::from(evq.size) + 2),
        ];
        if used.iter().any(|&(s, e)| addr < e && s < end) {
            return;
        }
        self.raw = true;
        self.h
            .write(addr, &bytes[..usize::try_from(end - addr).unwrap_or(0)]);
    }

    fn post_events(&mut self, n: u8, len: u16, readable: bool) {
        let room = usize::from(self.h.evq.size).saturating_sub(self.outstanding_events);
        let n = usize::from(n % 16).min(room);
        for _ in 0..n {
            let i = self.h.evq.next_free_index();
            let len = u32::from(len % 512);
            if readable {
                // A readable buffer the device must refuse (used length 0).
                self.h
                    .evq
                    .add_chain(&[(EVT_ADDR + 128 * u64::from(i), len, false)]);
            } else {
                self.h
                    .evq
                    .add_chain(&[(EVT_ADDR + 128 * u64::from(i), len, true)]);
            }
            self.outstanding_events += 1;
        }
        self.h.dev.queue_notify(EVENTQ);
    }

    fn activate(&mut self, features: u64) {
        let offered = self.h.dev.device_features();
        let features = match features {
            0 => offered,
            1 => offered & !(1 << F_TAGGED),
            f => f,
        };
        if self.h.dev.is_active() {
            return;
        }
        self.h.dev.set_driver_features(features);
        if !self.h.dev.features_ok() {
            // The transport refuses FEATURES_OK; the driver cannot go on to DRIVER_OK.
            return;
        }
        self.h.reqq = RawQueue::new(self.h.mem.clone(), 0, self.h.reqq.size);
        self.h.evq = RawQueue::new(self.h.mem.clone(), 0x8000, self.h.evq.size);
        self.outstanding_events = 0;
        self.raw = false;
        let queues = vec![self.h.reqq.queue(), self.h.evq.queue()];
        let _ = self.h.dev.activate(self.h.mem.clone(), queues);
    }

    fn snapshot_restore(&mut self) {
        let s = self.state();
        let (dev, state) = Env::of(&self.h)
            .restore(&s)
            .unwrap_or_else(|e| panic!("the device's own snapshot does not restore: {e}\n{s:#?}"));
        self.h.dev = dev;
        self.h.mapper = state;
    }

    /// Drains the event queue and host events and checks what the device did.
    pub fn check(&mut self) {
        let size = u32::from(self.h.evq.size);
        for (head, len) in self.h.evq.take_used() {
            assert!(head < size, "used head {head} outside the event queue");
            self.outstanding_events = self.outstanding_events.saturating_sub(1);
            if len == 0 || self.raw {
                continue;
            }
            assert_eq!(len as usize, EVENT_SIZE, "an event buffer's used length");
            let bytes = self.h.read(EVT_ADDR + 128 * u64::from(head), EVENT_SIZE);
            let ev = Event::try_from(bytes.as_slice()).expect("the device wrote a valid event");
            let state = self.state();
            if let Event::Offer { chain_id, .. } = ev {
                assert!(chain_id < state.next_chain_id, "OFFER of a chain never made");
            }
        }
        for e in self.h.dev.take_host_events() {
            match e {
                HostEvent::Released { extents } => self.released.extend(extents.iter().map(|(id, _)| *id)),
                HostEvent::ChainAnswered { accepted, .. } => {
                    for id in accepted {
                        assert!(!self.released.contains(&id), "extent {id} accepted after release");
                    }
                }
                _ => {}
            }
        }
        let s = self.state();
        check_table(&s);
        check_mapper(&s, &self.h.mapper, "device");
        for id in &self.released {
            assert!(
                !s.extents.iter().any(|e| e.id == *id),
                "extent {id} was reported released but is still in the table"
            );
        }
        let mut cfg = [0u8; 88];
        self.h.dev.read_config(0, &mut cfg);
        let (c, _) = TaggedConfig::read_from_prefix(&cfg[..]).expect("88 bytes");
        assert_eq!(
            c.base.plugged_size.get(),
            self.h.dev.plugged_size(),
            "config plugged_size"
        );
        if s.config.tagged.is_some() {
            let accepted = s
                .extents
                .iter()
                .filter(|e| e.state != ExtentState::Pending)
                .count();
            assert_eq!(
                c.accepted_extents.get() as usize,
                accepted,
                "config accepted_extents"
            );
        }
        check_round_trip(&s, &Env::of(&self.h));
    }
}

/// What a device is restored with: guest memory, a notifier and a clock.
#[derive(Clone)]
pub struct Env {
    /// Guest memory.
    pub mem: Arc<vm_memory::GuestMemoryMmap>,
    /// Interrupts.
    pub notifier: Arc<CountingNotifier>,
    /// Time.
    pub clock: Arc<ManualClock>,
}

impl Env {
    /// The harness's memory, notifier and clock.
    pub fn of(h: &Harness) -> Self {
        Env {
            mem: h.mem.clone(),
            notifier: h.notifier.clone(),
            clock: h.clock.clone(),
        }
    }

    /// 1 MiB of guest memory at 0 (the harness's layout), a counting notifier, a manual clock.
    pub fn new() -> Self {
        let mem =
            vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(vm_memory::GuestAddress(0), MEM_SIZE as usize)])
                .expect("1 MiB of guest memory");
        Env {
            mem: Arc::new(mem),
            notifier: Arc::default(),
            clock: Arc::default(),
        }
    }

    /// Restores `s` with a fresh fake mapper.
    pub fn restore(
        &self,
        s: &DeviceState,
    ) -> Result<(Device, Arc<Mutex<FakeMapperState>>), tagmem_device::DeviceError> {
        let (mapper, state) = FakeMapper::new();
        let dev = TaggedMemDevice::restore(
            s,
            Box::new(mapper),
            self.notifier.clone(),
            self.clock.clone(),
            Some(self.mem.clone()),
        )?;
        Ok((dev, state))
    }
}

impl Default for Env {
    fn default() -> Self {
        Env::new()
    }
}

/// The device type the harness hosts.
pub type Device = TaggedMemDevice<Arc<vm_memory::GuestMemoryMmap>>;

/// Restores `s` (a state a device produced) and checks that the new device maps what `s` says
/// and snapshots equal to it.
pub fn check_round_trip(s: &DeviceState, env: &Env) {
    let (dev, state) = env
        .restore(s)
        .unwrap_or_else(|e| panic!("the device's own snapshot does not restore: {e}\n{s:#?}"));
    check_mapper(s, &state, "restored device");
    assert_eq!(&dev.snapshot(), s, "a restored device snapshots as the original");
}

/// The state the raw-queue target starts from: four blocks plugged, a tagged group of two
/// extents accepted, an untagged extent offered and pending, eight event buffers posted.
pub fn raw_preset() -> Vec<Op> {
    let spec = |tag, len_units| SpecBits {
        tag,
        len_units,
        source: tag,
        offset_units: 0,
        gpa_mode: 0,
        gpa_units: 0,
        flags: 0,
        latency: 100,
        node: 1,
        seq: 0,
        class: 4,
        raw: 0,
    };
    vec![
        Op::Plug {
            block: 0,
            nb: 4,
            raw: false,
        },
        Op::PostEvents {
            n: 8,
            len: 128,
            readable: false,
        },
        Op::Offer {
            specs: vec![spec(1, 1), spec(1, 2)],
        },
        Op::Accept {
            chain: Pick(0),
            mask: u64::MAX,
            twist: 0,
        },
        Op::Offer {
            specs: vec![spec(0, 1)],
        },
        Op::PostEvents {
            n: 8,
            len: 128,
            readable: false,
        },
    ]
}

/// Runs a program of raw queue steps on the device left by [`raw_preset`].
pub fn run_raw(data: &[u8]) {
    let mut rig = Rig::tagged();
    for op in raw_preset() {
        rig.step(&op);
    }
    for op in decode_program(data, &raw_queue_ops()) {
        rig.step(&op);
    }
}

/// Runs a program on a fresh tagged device.
pub fn run(data: &[u8], allowed: &[u8]) {
    let ops = decode_program(data, allowed);
    let mut rig = Rig::tagged();
    for op in &ops {
        rig.step(op);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_encode_and_decode_alike() {
        let ops = vec![
            Op::Plug {
                block: 0,
                nb: 4,
                raw: false,
            },
            Op::PostEvents {
                n: 4,
                len: 128,
                readable: false,
            },
            Op::Offer {
                specs: vec![SpecBits {
                    tag: 1,
                    len_units: 1,
                    source: 0,
                    offset_units: 0,
                    gpa_mode: 0,
                    gpa_units: 0,
                    flags: 0,
                    latency: 80,
                    node: 1,
                    seq: 0,
                    class: 4,
                    raw: 0,
                }],
            },
            Op::Accept {
                chain: Pick(0),
                mask: u64::MAX,
                twist: 0,
            },
            Op::RawChain {
                descs: vec![(0, 0x2_0000, 24, 1, 1), (1, 0x3_0000, 10, 2, 0)],
                head: 0,
            },
            Op::SnapshotRestore,
            Op::Reset,
            Op::Activate { features: 0 },
        ];
        let bytes = encode_program(&ops);
        assert_eq!(decode_program(&bytes, &all_ops()), ops);
    }
}

//! Test doubles for crates that embed the device: a mapper that records what is mapped, a clock
//! that only moves when told, and a notifier that counts interrupts.

use crate::clock::Clock;
use crate::mapper::{MapperError, Mapping, MemoryMapper, Notifier};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What a [`FakeMapper`] holds; shared so a test can look while the device owns the mapper.
#[derive(Debug, Default)]
pub struct FakeMapperState {
    /// Mapped ranges by guest start address (non-overlapping).
    pub mapped: BTreeMap<u64, Mapping>,
    /// Calls that broke the mapper contract (overlapping map, unmap of an unmapped range).
    pub violations: Vec<String>,
    /// Fail every `map` whose range contains this guest address.
    pub fail_map_at: Option<u64>,
    /// Fail every `unmap`.
    pub fail_unmap: bool,
    /// Successful map calls.
    pub maps: u64,
    /// Successful unmap calls.
    pub unmaps: u64,
}

impl FakeMapperState {
    /// The mapping covering `gpa`, if any.
    pub fn lookup(&self, gpa: u64) -> Option<Mapping> {
        let (_, m) = self.mapped.range(..=gpa).next_back()?;
        (gpa < m.gpa + m.len).then_some(*m)
    }

    /// Total mapped bytes.
    pub fn mapped_bytes(&self) -> u64 {
        self.mapped.values().map(|m| m.len).sum()
    }
}

/// A [`MemoryMapper`] that keeps an interval map instead of touching a hypervisor.
#[derive(Debug, Clone, Default)]
pub struct FakeMapper(pub Arc<Mutex<FakeMapperState>>);

impl FakeMapper {
    /// A new mapper and a handle on its state.
    pub fn new() -> (Self, Arc<Mutex<FakeMapperState>>) {
        let s = Arc::new(Mutex::new(FakeMapperState::default()));
        (FakeMapper(s.clone()), s)
    }
}

fn err(m: &Mapping, reason: &str) -> MapperError {
    MapperError::new(m.gpa, m.len, reason)
}

impl MemoryMapper for FakeMapper {
    fn map(&mut self, m: &Mapping) -> Result<(), MapperError> {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let end = m.end().ok_or_else(|| err(m, "range overflows"))?;
        if s.fail_map_at.is_some_and(|g| g >= m.gpa && g < end) {
            return Err(err(m, "injected failure"));
        }
        let overlaps = s
            .mapped
            .range(..end)
            .next_back()
            .is_some_and(|(_, o)| o.gpa + o.len > m.gpa);
        if overlaps || m.len == 0 {
            s.violations
                .push(format!("map of {:#x}+{:#x} overlaps a mapping", m.gpa, m.len));
            return Err(err(m, "overlap"));
        }
        s.mapped.insert(m.gpa, *m);
        s.maps += 1;
        Ok(())
    }

    fn unmap(&mut self, m: &Mapping) -> Result<(), MapperError> {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if s.fail_unmap {
            return Err(err(m, "injected failure"));
        }
        let end = m.end().ok_or_else(|| err(m, "range overflows"))?;
        // The range must be covered without holes.
        let mut cur = m.gpa;
        while cur < end {
            match s.lookup(cur) {
                Some(o) => cur = o.gpa + o.len,
                None => {
                    s.violations.push(format!(
                        "unmap of {:#x}+{:#x} covers unmapped {cur:#x}",
                        m.gpa, m.len
                    ));
                    return Err(err(m, "not mapped"));
                }
            }
        }
        let touched: Vec<Mapping> = s
            .mapped
            .range(..end)
            .filter(|(_, o)| o.gpa + o.len > m.gpa)
            .map(|(_, o)| *o)
            .collect();
        for o in touched {
            s.mapped.remove(&o.gpa);
            if o.gpa < m.gpa {
                s.mapped.insert(
                    o.gpa,
                    Mapping {
                        len: m.gpa - o.gpa,
                        ..o
                    },
                );
            }
            let oend = o.gpa + o.len;
            if oend > end {
                let shift = end - o.gpa;
                let mut rest = o;
                rest.gpa = end;
                rest.len = oend - end;
                rest.source.offset += shift;
                s.mapped.insert(end, rest);
            }
        }
        s.unmaps += 1;
        Ok(())
    }
}

/// A mapper that keeps nothing: for measuring the device's own footprint.
#[derive(Debug, Default, Clone, Copy)]
pub struct NullMapper;

impl MemoryMapper for NullMapper {
    fn map(&mut self, _m: &Mapping) -> Result<(), MapperError> {
        Ok(())
    }

    fn unmap(&mut self, _m: &Mapping) -> Result<(), MapperError> {
        Ok(())
    }
}

/// A clock that moves only when the test says so.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// Moves the clock forward.
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A notifier that counts interrupts.
#[derive(Debug, Default)]
pub struct CountingNotifier {
    /// Used-buffer interrupts per queue (index 0 and 1).
    pub used: [AtomicU64; 2],
    /// Config-change interrupts.
    pub config: AtomicU64,
}

impl Notifier for CountingNotifier {
    fn signal_used_queue(&self, queue: u16) {
        if let Some(c) = self.used.get(usize::from(queue)) {
            c.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn signal_config_change(&self) {
        self.config.fetch_add(1, Ordering::SeqCst);
    }
}

/// A split virtqueue laid out in guest memory by hand, so tests can hand the device any chain
/// a hostile driver could build (loops, bad indices, wrong directions).
pub struct RawQueue {
    mem: Arc<vm_memory::GuestMemoryMmap>,
    /// Queue size.
    pub size: u16,
    /// Descriptor table address.
    pub desc: u64,
    /// Available ring address.
    pub avail: u64,
    /// Used ring address.
    pub used: u64,
    avail_idx: u16,
    used_seen: u16,
    next_free: u16,
}

impl RawQueue {
    /// Lays out a queue of `size` entries at `base` (16-byte aligned, 4 KiB apart rings).
    pub fn new(mem: Arc<vm_memory::GuestMemoryMmap>, base: u64, size: u16) -> Self {
        let desc = base;
        let avail = desc + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size) + 4095) & !4095;
        let q = RawQueue {
            mem,
            size,
            desc,
            avail,
            used,
            avail_idx: 0,
            used_seen: 0,
            next_free: 0,
        };
        q.write(q.avail, &[0u8; 4]);
        q.write(q.used, &[0u8; 4]);
        q
    }

    fn write(&self, addr: u64, b: &[u8]) {
        use vm_memory::Bytes;
        self.mem
            .write_slice(b, vm_memory::GuestAddress(addr))
            .expect("test queue outside memory");
    }

    fn read_u16(&self, addr: u64) -> u16 {
        use vm_memory::Bytes;
        let mut b = [0u8; 2];
        self.mem
            .read_slice(&mut b, vm_memory::GuestAddress(addr))
            .expect("test queue outside memory");
        u16::from_le_bytes(b)
    }

    fn read_u32(&self, addr: u64) -> u32 {
        use vm_memory::Bytes;
        let mut b = [0u8; 4];
        self.mem
            .read_slice(&mut b, vm_memory::GuestAddress(addr))
            .expect("test queue outside memory");
        u32::from_le_bytes(b)
    }

    /// A `virtio_queue::Queue` configured for this layout and marked ready.
    pub fn queue(&self) -> virtio_queue::Queue {
        use virtio_queue::QueueT;
        let mut q = virtio_queue::Queue::new(self.size).expect("valid queue size");
        q.set_size(self.size);
        q.try_set_desc_table_address(vm_memory::GuestAddress(self.desc))
            .expect("aligned");
        q.try_set_avail_ring_address(vm_memory::GuestAddress(self.avail))
            .expect("aligned");
        q.try_set_used_ring_address(vm_memory::GuestAddress(self.used))
            .expect("aligned");
        q.set_ready(true);
        q
    }

    /// Writes descriptor `i` verbatim.
    pub fn set_desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&addr.to_le_bytes());
        b[8..12].copy_from_slice(&len.to_le_bytes());
        b[12..14].copy_from_slice(&flags.to_le_bytes());
        b[14..16].copy_from_slice(&next.to_le_bytes());
        self.write(self.desc + 16 * u64::from(i % self.size), &b);
    }

    /// Makes `head` available to the device.
    pub fn publish(&mut self, head: u16) {
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        self.write(slot, &head.to_le_bytes());
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.write(self.avail + 2, &self.avail_idx.to_le_bytes());
    }

    /// Builds a well-linked chain of `(addr, len, device_writable)` and publishes it; returns the head.
    pub fn add_chain(&mut self, descs: &[(u64, u32, bool)]) -> u16 {
        use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
        let head = self.next_free;
        for (k, &(addr, len, w)) in descs.iter().enumerate() {
            let i = self.next_free;
            self.next_free = (self.next_free + 1) % self.size;
            let last = k + 1 == descs.len();
            let mut flags = if w { VRING_DESC_F_WRITE } else { 0 };
            if !last {
                flags |= VRING_DESC_F_NEXT;
            }
            self.set_desc(i, addr, len, u16::try_from(flags).unwrap_or(0), self.next_free);
        }
        self.publish(head);
        head
    }

    /// Used-ring entries the device added since the last call, as (head, len).
    pub fn take_used(&mut self) -> Vec<(u32, u32)> {
        let idx = self.read_u16(self.used + 2);
        let mut out = Vec::new();
        while self.used_seen != idx {
            let e = self.used + 4 + 8 * u64::from(self.used_seen % self.size);
            out.push((self.read_u32(e), self.read_u32(e + 4)));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }
}

/// A device activated over real guest memory with hand-built queues, a fake mapper and a
/// manual clock: the device core end to end, without a hypervisor.
pub struct Harness {
    /// Guest memory (1 MiB at GPA 0) holding rings and buffers.
    pub mem: Arc<vm_memory::GuestMemoryMmap>,
    /// The device under test.
    pub dev: crate::TaggedMemDevice<Arc<vm_memory::GuestMemoryMmap>>,
    /// What the device has mapped.
    pub mapper: Arc<Mutex<FakeMapperState>>,
    /// The device's clock.
    pub clock: Arc<ManualClock>,
    /// Interrupts raised.
    pub notifier: Arc<CountingNotifier>,
    /// The guest-request queue.
    pub reqq: RawQueue,
    /// The event queue.
    pub evq: RawQueue,
}

/// Where [`Harness`] places request bytes.
pub const REQ_ADDR: u64 = 0x2_0000;
/// Where [`Harness`] places responses.
pub const RESP_ADDR: u64 = 0x3_0000;
/// Where [`Harness`] places event buffers (128 bytes each, indexed by descriptor).
pub const EVT_ADDR: u64 = 0x4_0000;

impl Harness {
    /// A configuration with a 64 MiB base region at 1 GiB and a 1 GiB tagged window at 4 GiB.
    pub fn config() -> crate::DeviceConfig {
        crate::DeviceConfig {
            block_size: 2 << 20,
            node_id: Some(1),
            region_addr: 1 << 30,
            region_size: 64 << 20,
            region_source: Some(crate::SourceRef {
                id: crate::SourceId(0),
                offset: 0,
            }),
            requested_size: 32 << 20,
            tagged: Some(crate::TaggedWindow {
                addr: 4 << 30,
                size: 1 << 30,
            }),
            queue_size: 256,
            ..Default::default()
        }
    }

    /// Builds and activates a device; `features` are what the test driver acknowledges.
    pub fn new(cfg: crate::DeviceConfig, features: u64) -> Self {
        let (mapper, state) = FakeMapper::new();
        Self::with_mapper(cfg, features, Box::new(mapper), state)
    }

    /// Like [`Harness::new`] with a mapper of the caller's; `state` is what `mapper` field shows.
    pub fn with_mapper(
        cfg: crate::DeviceConfig,
        features: u64,
        mapper: Box<dyn MemoryMapper>,
        state: Arc<Mutex<FakeMapperState>>,
    ) -> Self {
        let clock = Arc::new(ManualClock::default());
        Self::with_clock(cfg, features, mapper, state, clock.clone(), clock)
    }

    /// A device whose clock is a [`crate::GuestClock`] over the harness's manual clock; returns
    /// the guest clock too, for the test to pause and resume.
    pub fn with_guest_clock(cfg: crate::DeviceConfig, features: u64) -> (Self, Arc<crate::GuestClock>) {
        let (mapper, state) = FakeMapper::new();
        let host = Arc::new(ManualClock::default());
        let guest = Arc::new(crate::GuestClock::new(host.clone()));
        let h = Self::with_clock(cfg, features, Box::new(mapper), state, host, guest.clone());
        (h, guest)
    }

    fn with_clock(
        cfg: crate::DeviceConfig,
        features: u64,
        mapper: Box<dyn MemoryMapper>,
        state: Arc<Mutex<FakeMapperState>>,
        clock: Arc<ManualClock>,
        device_clock: Arc<dyn Clock>,
    ) -> Self {
        use crate::VirtioDevice;
        let mem = Arc::new(
            vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(vm_memory::GuestAddress(0), 1 << 20)])
                .expect("1 MiB of test memory"),
        );
        let notifier = Arc::new(CountingNotifier::default());
        let size = cfg.queue_size.min(256);
        let mut dev = crate::TaggedMemDevice::new(cfg, mapper, notifier.clone(), device_clock)
            .expect("valid test configuration");
        dev.set_driver_features(features);
        let reqq = RawQueue::new(mem.clone(), 0, size);
        let evq = RawQueue::new(mem.clone(), 0x8000, size);
        dev.activate(mem.clone(), vec![reqq.queue(), evq.queue()])
            .expect("activation");
        Harness {
            mem,
            dev,
            mapper: state,
            clock,
            notifier,
            reqq,
            evq,
        }
    }

    /// Resets the device and brings it up again as a Linux driver does at probe, after
    /// freeze/restore or on rebind: status 0, then `features` and fresh queues (DRIVER_OK).
    /// Panics if the device refuses the features or the activation.
    pub fn reset_and_activate(&mut self, features: u64) {
        use crate::VirtioDevice;
        self.dev.reset();
        self.dev.set_driver_features(features);
        assert!(
            self.dev.features_ok(),
            "the device refused features {features:#x}"
        );
        self.reqq = RawQueue::new(self.mem.clone(), 0, self.reqq.size);
        self.evq = RawQueue::new(self.mem.clone(), 0x8000, self.evq.size);
        self.dev
            .activate(self.mem.clone(), vec![self.reqq.queue(), self.evq.queue()])
            .expect("activation after reset");
    }

    /// Sends LIST(`first`, `count`) with `room` writable bytes; returns the used length, the
    /// response and the records that follow it.
    pub fn list(
        &mut self,
        first: u64,
        count: u32,
        room: u32,
    ) -> (u32, tagmem_wire::TaggedResp, Vec<tagmem_wire::ExtentRecord>) {
        use tagmem_wire::{FromBytes, IntoBytes};
        let req = tagmem_wire::TaggedReq::new(tagmem_wire::VIRTIO_MEM_REQ_LIST, first, [0; 16], count);
        let (n, bytes) = self.request(req.as_bytes(), room);
        let resp = tagmem_wire::TaggedResp::read_from_prefix(&bytes)
            .map(|(r, _)| r)
            .unwrap_or_default();
        let records = bytes
            .get(tagmem_wire::VIRTIO_MEM_TAGGED_RESP_SIZE..)
            .unwrap_or_default()
            .chunks_exact(tagmem_wire::VIRTIO_MEM_EXTENT_RECORD_SIZE)
            .filter_map(|c| tagmem_wire::ExtentRecord::read_from_bytes(c).ok())
            .collect();
        (n, resp, records)
    }

    /// A device with every offered feature acknowledged.
    pub fn tagged() -> Self {
        let cfg = Self::config();
        let f = cfg.features();
        Self::new(cfg, f)
    }

    /// Writes `bytes` into guest memory.
    pub fn write(&self, addr: u64, bytes: &[u8]) {
        use vm_memory::Bytes;
        self.mem
            .write_slice(bytes, vm_memory::GuestAddress(addr))
            .expect("inside test memory");
    }

    /// Reads guest memory.
    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        use vm_memory::Bytes;
        let mut v = vec![0; len];
        self.mem
            .read_slice(&mut v, vm_memory::GuestAddress(addr))
            .expect("inside test memory");
        v
    }

    /// Sends one well-formed request chain (request readable, `resp_room` writable) and returns
    /// the used length and the response bytes.
    pub fn request(&mut self, req: &[u8], resp_room: u32) -> (u32, Vec<u8>) {
        use crate::VirtioDevice;
        self.write(REQ_ADDR, req);
        self.write(RESP_ADDR, &vec![0xee; resp_room as usize]);
        let len = u32::try_from(req.len()).expect("small request");
        self.reqq
            .add_chain(&[(REQ_ADDR, len, false), (RESP_ADDR, resp_room, true)]);
        self.dev.queue_notify(tagmem_wire::VIRTIO_MEM_GUESTQ);
        let used = self.reqq.take_used();
        assert_eq!(used.len(), 1, "the device must complete exactly the one chain");
        let n = used[0].1;
        (n, self.read(RESP_ADDR, n as usize))
    }

    /// Posts `n` event buffers of `len` bytes.
    pub fn post_event_buffers(&mut self, n: u16, len: u32) {
        use crate::VirtioDevice;
        for _ in 0..n {
            let i = self.evq.next_free_index();
            self.evq.add_chain(&[(EVT_ADDR + 128 * u64::from(i), len, true)]);
        }
        self.dev.queue_notify(tagmem_wire::VIRTIO_MEM_EVENTQ);
    }

    /// Offers `specs` as one chain and has the test driver accept all of it (event buffers
    /// posted as needed); returns the receipt and the ACCEPT's used length and response bytes.
    pub fn offer_and_accept(
        &mut self,
        specs: &[crate::ExtentSpec],
    ) -> Result<(crate::OfferReceipt, Vec<u8>), crate::ControlError> {
        use tagmem_wire::IntoBytes;
        let n = u16::try_from(specs.len()).unwrap_or(u16::MAX).min(self.evq.size);
        self.post_event_buffers(n, 128);
        let r = self.dev.offer(specs)?;
        self.events();
        let count = u32::try_from(r.extents.len()).unwrap_or(u32::MAX);
        let mut req =
            tagmem_wire::TaggedReq::new(tagmem_wire::VIRTIO_MEM_REQ_ACCEPT, r.chain_id, [0; 16], count)
                .as_bytes()
                .to_vec();
        for (id, _) in &r.extents {
            req.extend_from_slice(&id.to_le_bytes());
        }
        let (_, resp) = self.request(&req, 16);
        Ok((r, resp))
    }

    /// Events the device delivered since the last call, decoded (buffers are not re-posted).
    pub fn events(&mut self) -> Vec<tagmem_wire::Event> {
        let used = self.evq.take_used();
        let mut out = Vec::new();
        for (head, len) in used {
            if len > 0 {
                let bytes = self.read(EVT_ADDR + 128 * u64::from(head), len as usize);
                out.push(tagmem_wire::Event::try_from(bytes.as_slice()).expect("device wrote a valid event"));
            }
        }
        out
    }
}

impl RawQueue {
    /// The descriptor index the next `add_chain` starts at.
    pub fn next_free_index(&self) -> u16 {
        self.next_free
    }
}

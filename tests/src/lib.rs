//! In-process harness: the reference driver and the device core talking over real guest memory
//! (`GuestMemoryMmap`) in one thread. The transport plays the role virtio-mmio plays in a VM:
//! it keeps queue registers until DRIVER_OK, then activates the device; a notify runs the device
//! synchronously.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use tagmem_device::test_utils::{FakeMapper, FakeMapperState, ManualClock};
use tagmem_device::{DeviceConfig, NoopNotifier, TaggedMemDevice, VirtioDevice};
use tagmem_driver::transport::{status, DmaMemory, Transport};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// The device type the harness runs.
pub type Device = TaggedMemDevice<Arc<GuestMemoryMmap>>;

/// Guest memory as the driver sees it.
#[derive(Clone)]
pub struct GuestRam(pub Arc<GuestMemoryMmap>);

impl DmaMemory for GuestRam {
    fn read(&self, gpa: u64, buf: &mut [u8]) {
        self.0
            .read_slice(buf, GuestAddress(gpa))
            .expect("driver reads inside guest RAM");
    }

    fn write(&self, gpa: u64, data: &[u8]) {
        self.0
            .write_slice(data, GuestAddress(gpa))
            .expect("driver writes inside guest RAM");
    }
}

#[derive(Clone, Copy, Default)]
struct QueueRegs {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    ready: bool,
}

/// A transport that calls into the device directly.
pub struct InProcess {
    dev: Rc<RefCell<Device>>,
    mem: Arc<GuestMemoryMmap>,
    status: u8,
    queues: Vec<QueueRegs>,
}

impl Transport for InProcess {
    fn device_features(&mut self) -> u64 {
        self.dev.borrow().device_features()
    }

    fn set_driver_features(&mut self, features: u64) {
        self.dev.borrow_mut().set_driver_features(features);
    }

    fn status(&mut self) -> u8 {
        self.status
    }

    fn set_status(&mut self, s: u8) {
        if s == 0 {
            self.dev.borrow_mut().reset();
            self.queues = vec![QueueRegs::default(); self.queues.len()];
            self.status = 0;
            return;
        }
        if s & status::FEATURES_OK != 0
            && self.status & status::FEATURES_OK == 0
            && !self.dev.borrow().features_ok()
        {
            // The device refuses the feature set (as virtio-mmio does): FEATURES_OK does not stick.
            self.status = s & !status::FEATURES_OK;
            return;
        }
        if s & status::DRIVER_OK != 0 && self.status & status::DRIVER_OK == 0 {
            let mut qs = Vec::new();
            for (i, r) in self.queues.iter().enumerate() {
                let max = self.dev.borrow().queue_max_sizes()[i];
                let mut q = Queue::new(max).expect("device queue size");
                if r.ready {
                    let ok = q.try_set_size(r.size).is_ok()
                        && q.try_set_desc_table_address(GuestAddress(r.desc)).is_ok()
                        && q.try_set_avail_ring_address(GuestAddress(r.avail)).is_ok()
                        && q.try_set_used_ring_address(GuestAddress(r.used)).is_ok();
                    q.set_ready(ok);
                }
                qs.push(q);
            }
            if self.dev.borrow_mut().activate(self.mem.clone(), qs).is_err() {
                self.status = s | status::DEVICE_NEEDS_RESET;
                return;
            }
        }
        self.status = s;
    }

    fn config_generation(&mut self) -> u32 {
        self.dev.borrow().config_generation()
    }

    fn read_config(&mut self, offset: usize, buf: &mut [u8]) {
        self.dev.borrow().read_config(offset as u64, buf);
    }

    fn queue_max_size(&mut self, queue: u16) -> u16 {
        self.dev
            .borrow()
            .queue_max_sizes()
            .get(usize::from(queue))
            .copied()
            .unwrap_or(0)
    }

    fn setup_queue(&mut self, queue: u16, size: u16, desc: u64, avail: u64, used: u64) {
        if let Some(r) = self.queues.get_mut(usize::from(queue)) {
            *r = QueueRegs {
                size,
                desc,
                avail,
                used,
                ready: r.ready,
            };
        }
    }

    fn set_queue_ready(&mut self, queue: u16) {
        if let Some(r) = self.queues.get_mut(usize::from(queue)) {
            r.ready = true;
        }
    }

    fn notify(&mut self, queue: u16) {
        self.dev.borrow_mut().queue_notify(queue);
    }
}

/// Driver type the harness builds.
pub type Driver = tagmem_driver::TagMemDriver<InProcess, GuestRam>;

/// A device and a driver wired together over 4 MiB of guest RAM.
pub struct Pair {
    /// The device, shared with the transport; the test plays the host through it.
    pub dev: Rc<RefCell<Device>>,
    /// The reference driver.
    pub drv: Driver,
    /// What the device mapped.
    pub mapper: Arc<Mutex<FakeMapperState>>,
    /// The device's clock.
    pub clock: Arc<ManualClock>,
    /// Guest RAM.
    pub mem: Arc<GuestMemoryMmap>,
}

/// Guest RAM size of a [`Pair`].
pub const RAM: usize = 4 << 20;

impl Pair {
    /// Builds the device from `cfg` and a driver over a DMA region in guest RAM (not yet
    /// initialised: call `drv.init()`).
    pub fn new(cfg: DeviceConfig) -> Pair {
        let mem = Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM)]).expect("guest RAM"));
        let (mapper, state) = FakeMapper::new();
        let clock = Arc::new(ManualClock::default());
        let nq = cfg.features() >> tagmem_wire::VIRTIO_MEM_F_TAGGED_EXTENTS & 1;
        let dev = Rc::new(RefCell::new(
            TaggedMemDevice::new(cfg, Box::new(mapper), Arc::new(NoopNotifier), clock.clone())
                .expect("valid device configuration"),
        ));
        let transport = InProcess {
            dev: dev.clone(),
            mem: mem.clone(),
            status: 0,
            queues: vec![QueueRegs::default(); 1 + nq as usize],
        };
        let drv =
            tagmem_driver::TagMemDriver::new(transport, GuestRam(mem.clone()), 0x1000, RAM as u64 - 0x1000);
        Pair {
            dev,
            drv,
            mapper: state,
            clock,
            mem,
        }
    }

    /// The configuration the tests use: a 64 MiB base region at 1 GiB, a 64 GiB window at 4 GiB.
    pub fn config() -> DeviceConfig {
        let mut cfg = tagmem_device::test_utils::Harness::config();
        cfg.tagged = Some(tagmem_device::TaggedWindow {
            addr: 4 << 30,
            size: 64 << 30,
        });
        cfg
    }
}

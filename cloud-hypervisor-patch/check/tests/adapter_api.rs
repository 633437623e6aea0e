//! Every call the Cloud Hypervisor adapter (`virtio-devices/src/tagged_mem.rs` in the series) makes
//! on the device core, over CH's guest memory type: if this compiles and passes, the core links
//! into CH unchanged.

use std::sync::{Arc, Mutex};

use tagmem_device::{
    ControlError, DeviceConfig, DeviceState, ExtentFlags, ExtentSpec, GuestClock, HostEvent,
    MINIMAL_BASE_REGION_SIZE, MapperError, Mapping, MemoryMapper, MonotonicClock, Notifier, Perf,
    SourceClass, SourceId, SourceRef, TaggedMemDevice, TaggedWindow, Target, VirtioDevice,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{GuestAddress, GuestMemoryAtomic};

/// CH's guest memory (`virtio_devices::GuestMemoryMmap`).
type GuestMemoryMmap = vm_memory::GuestMemoryMmap<AtomicBitmap>;
/// What the adapter hosts (`TaggedMemCore` in the series).
type TaggedMemCore = TaggedMemDevice<GuestMemoryAtomic<GuestMemoryMmap>>;

/// Start of the range the device manager allocates: the base region, then the window.
const RANGE: u64 = 64 << 30;
/// The tagged window, behind the one-block base region.
const WINDOW: u64 = RANGE + MINIMAL_BASE_REGION_SIZE;
const MIB2: u64 = 2 << 20;

#[derive(Default)]
struct Recorder(Arc<Mutex<Vec<Mapping>>>);

impl MemoryMapper for Recorder {
    fn map(&mut self, m: &Mapping) -> Result<(), MapperError> {
        self.0.lock().unwrap().push(*m);
        Ok(())
    }

    fn unmap(&mut self, m: &Mapping) -> Result<(), MapperError> {
        self.0.lock().unwrap().retain(|x| x.gpa != m.gpa);
        Ok(())
    }
}

#[derive(Default)]
struct Signals(Mutex<Vec<Option<u16>>>);

impl Notifier for Signals {
    fn signal_used_queue(&self, queue: u16) {
        self.0.lock().unwrap().push(Some(queue));
    }

    fn signal_config_change(&self) {
        self.0.lock().unwrap().push(None);
    }
}

/// The configuration `make_virtio_tagged_mem_device` builds.
fn config() -> DeviceConfig {
    DeviceConfig {
        region_addr: RANGE,
        region_size: MINIMAL_BASE_REGION_SIZE,
        region_source: Some(SourceRef {
            id: SourceId(99),
            offset: 0,
        }),
        requested_size: 0,
        tagged: Some(TaggedWindow {
            addr: WINDOW,
            size: RANGE,
        }),
        ..Default::default()
    }
}

/// The clock `TaggedMem::new` gives the core.
fn guest_clock() -> Arc<GuestClock> {
    Arc::new(GuestClock::new(Arc::new(MonotonicClock::default())))
}

fn memory() -> GuestMemoryAtomic<GuestMemoryMmap> {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("guest memory");
    GuestMemoryAtomic::new(mem)
}

/// A ready, empty queue as CH's transport hands it over.
fn queue(base: u32) -> Queue {
    let mut q = Queue::new(16).expect("queue");
    q.set_size(16);
    q.set_desc_table_address(Some(base), Some(0));
    q.set_avail_ring_address(Some(base + 0x1000), Some(0));
    q.set_used_ring_address(Some(base + 0x2000), Some(0));
    q.set_ready(true);
    q
}

fn extent(tag: uuid::Uuid, seq: u16) -> ExtentSpec {
    ExtentSpec {
        tag,
        length: MIB2,
        source: SourceRef {
            id: SourceId(0),
            offset: u64::from(seq) * MIB2,
        },
        gpa: None,
        flags: ExtentFlags {
            sharable: true,
            readonly: false,
        },
        perf: Perf {
            read_latency_ns: 250,
            ..Default::default()
        },
        node: 0,
        seq,
        class: SourceClass::File,
    }
}

fn new_core(
    mapped: Arc<Mutex<Vec<Mapping>>>,
    signals: Arc<Signals>,
    clock: Arc<GuestClock>,
) -> TaggedMemCore {
    TaggedMemCore::new(config(), Box::new(Recorder(mapped)), signals, clock).expect("valid configuration")
}

#[test]
fn adapter_calls_work_over_ch_guest_memory() {
    let mapped = Arc::new(Mutex::new(Vec::new()));
    let signals = Arc::new(Signals::default());
    let clock = guest_clock();
    let mut core = new_core(mapped.clone(), signals.clone(), clock.clone());

    // Construction-time queries the adapter copies into VirtioCommon.
    let features = core.device_features();
    assert_eq!(core.queue_max_sizes().len(), 2);
    let mut cfg = [0u8; 88];
    core.read_config(0, &mut cfg);
    assert_eq!(u64::from_le_bytes(cfg[56..64].try_into().unwrap()), WINDOW);

    // Offers need an active device with the feature negotiated.
    let tag = uuid::Uuid::from_u128(0x0b6c_7d8e_1f2a_4b3c_8d4e_5f6a_7b8c_9d0e);
    assert_eq!(core.offer(&[extent(tag, 0)]), Err(ControlError::NotReady));
    // CH's transport sets FEATURES_OK without asking; the core refuses activation instead.
    core.set_driver_features(features & !(1 << tagmem_device::wire::VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE));
    assert!(!core.features_ok());
    assert!(
        core.activate(memory(), vec![queue(0x1_0000), queue(0x4_0000)])
            .is_err()
    );
    core.set_driver_features(features);
    assert!(core.features_ok());
    assert!(core.tagged_negotiated());
    core.activate(memory(), vec![queue(0x1_0000), queue(0x4_0000)])
        .expect("activation");

    let receipt = core.offer(&[extent(tag, 0), extent(tag, 1)]).expect("offer");
    assert_eq!(receipt.extents.len(), 2);
    assert!(
        receipt
            .extents
            .iter()
            .all(|(_, gpa)| (WINDOW..2 * WINDOW).contains(gpa))
    );
    assert_eq!(core.extents().len(), 2);
    // Nothing is mapped before the driver accepts.
    assert!(mapped.lock().unwrap().is_empty());

    // What the worker does on queue and timer events; Pausable stops the offer timeout.
    core.queue_notify(0);
    core.queue_notify(1);
    clock.pause();
    core.poll_timers();
    clock.resume();
    let _: Vec<HostEvent> = core.take_host_events();

    // Release of capacity that is still pending is refused with a typed error.
    assert!(core.request_release(Target::Tag(tag)).is_err());

    // Snapshot through serde (CH stores it as JSON), restored the way the adapter does it: the
    // transport restores the queues and activates again.
    let snapshot = serde_json::to_string(&core.snapshot()).expect("serialize");
    let mut state: DeviceState = serde_json::from_str(&snapshot).expect("deserialize");
    state.queues = None;
    let mut restored = TaggedMemCore::restore(
        &state,
        Box::new(Recorder(mapped.clone())),
        signals.clone(),
        guest_clock(),
        None,
    )
    .expect("restore");
    assert_eq!(restored.extents(), core.extents());
    assert!(!restored.is_active());
    restored
        .activate(memory(), vec![queue(0x1_0000), queue(0x4_0000)])
        .expect("activation after restore");

    // A guest reset keeps the extents (pending chains are offered again) and is reported.
    let before = core.extents();
    core.reset();
    assert_eq!(core.extents(), before);
    assert!(core.take_host_events().iter().any(
        |e| matches!(e, HostEvent::DeviceReset { pending_chains } if pending_chains == &[receipt.chain_id])
    ));
}

#[test]
fn without_the_feature_it_is_plain_virtio_mem() {
    let mut core = new_core(Arc::default(), Arc::default(), guest_clock());
    core.set_driver_features(1 << 32 | 1 << tagmem_device::wire::VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE);
    core.activate(memory(), vec![queue(0x1_0000)])
        .expect("one queue is enough");
    assert!(!core.tagged_negotiated());
    let tag = uuid::Uuid::from_u128(1);
    assert_eq!(core.offer(&[extent(tag, 0)]), Err(ControlError::NotReady));
}

//! The compiled adapter over the real device core and host model: boot chains grouped and
//! opened by tagmem-host, activation through the stub transport items, the VM's tag and id
//! rules on runtime offers, and backings closed when their chain is not offered.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::AtomicU8;
use std::sync::{Arc, Mutex};

use tagmem_device::{MINIMAL_BASE_REGION_SIZE, MapperError, Mapping, MemoryMapper};
use tagmem_host::{Resolver, TaggedMemoryConfig};
use uuid::Uuid;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryAtomic};
use vmm_sys_util::eventfd::EventFd;

use crate::ch::seccompiler::SeccompAction;
use crate::device::ActivationContext;
use crate::tagged_mem::{TaggedMem, TaggedMemCoreConfig, TaggedWindow};
use crate::tagged_mem_sources::TaggedMemSources;
use crate::{GuestMemoryMmap, VirtioDevice, VirtioInterrupt, VirtioInterruptType};

const MIB2: u64 = 2 << 20;
const RANGE: u64 = 64 << 30;
const TAG_A: Uuid = Uuid::from_u128(0x0b6c_7d8e_1f2a_4b3c_8d4e_5f6a_7b8c_9d0e);
const TAG_B: Uuid = Uuid::from_u128(0x1111_2222_3333_4444_5555_6666_7777_8888);

struct NoMapper;

impl MemoryMapper for NoMapper {
    fn map(&mut self, _m: &Mapping) -> Result<(), MapperError> {
        Ok(())
    }

    fn unmap(&mut self, _m: &Mapping) -> Result<(), MapperError> {
        Ok(())
    }
}

struct NoInterrupt;

impl VirtioInterrupt for NoInterrupt {
    fn trigger(&self, _int_type: VirtioInterruptType) -> io::Result<()> {
        Ok(())
    }
}

fn memfd(tag: Option<Uuid>, id: Option<&str>) -> TaggedMemoryConfig {
    TaggedMemoryConfig {
        tag,
        path: Some(PathBuf::from("memfd")),
        size: Some(MIB2),
        id: id.map(str::to_string),
        ..Default::default()
    }
}

fn queue(base: u32) -> Queue {
    let mut q = Queue::new(16).expect("queue");
    q.set_size(16);
    q.set_desc_table_address(Some(base), Some(0));
    q.set_avail_ring_address(Some(base + 0x1000), Some(0));
    q.set_used_ring_address(Some(base + 0x2000), Some(0));
    q.set_ready(true);
    q
}

/// The device as `make_virtio_tagged_mem_device` creates it, with `boot` on the command line.
fn device(boot: &[TaggedMemoryConfig]) -> (TaggedMem, Arc<Mutex<TaggedMemSources>>) {
    let sources = Arc::new(Mutex::new(TaggedMemSources::default()));
    let chains = TaggedMem::prepare_boot_chains(&sources, &Resolver::new("/"), boot).expect("boot chains");
    let base = sources
        .lock()
        .unwrap()
        .base_region(MINIMAL_BASE_REGION_SIZE)
        .expect("base region");
    let config = TaggedMemCoreConfig {
        region_addr: RANGE,
        region_size: MINIMAL_BASE_REGION_SIZE,
        region_source: Some(base),
        requested_size: 0,
        tagged: Some(TaggedWindow {
            addr: RANGE + MINIMAL_BASE_REGION_SIZE,
            size: RANGE,
        }),
        ..Default::default()
    };
    let dev = TaggedMem::new(
        "_tagged_mem0".to_string(),
        config,
        sources.clone(),
        chains,
        Box::new(NoMapper),
        SeccompAction::Trap,
        EventFd::new(0).expect("eventfd"),
        None,
    )
    .expect("device");
    (dev, sources)
}

fn activate(dev: &mut TaggedMem) {
    let features = dev.features();
    dev.ack_features(features);
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("guest memory");
    dev.activate(ActivationContext {
        mem: GuestMemoryAtomic::new(mem),
        interrupt_cb: Arc::new(NoInterrupt),
        queues: vec![
            (0, queue(0x1_0000), EventFd::new(0).expect("eventfd")),
            (1, queue(0x4_0000), EventFd::new(0).expect("eventfd")),
        ],
        device_status: Arc::new(AtomicU8::new(0)),
    })
    .expect("activation");
}

#[test]
fn boot_chains_come_from_the_host_model() {
    let boot = [
        memfd(Some(TAG_A), Some("a0")),
        memfd(None, None),
        memfd(Some(TAG_A), None),
    ];
    let sources = Mutex::new(TaggedMemSources::default());
    let chains = TaggedMem::prepare_boot_chains(&sources, &Resolver::new("/"), &boot).expect("boot chains");
    let names: Vec<Vec<&str>> = chains
        .iter()
        .map(|c| c.iter().map(|e| e.name.as_str()).collect())
        .collect();
    // One chain per tag in the order given, one per untagged extent; names by position.
    assert_eq!(names, [vec!["a0", "_tagmem2"], vec!["_tagmem1"]]);
    assert!(chains.iter().flatten().all(|e| e.spec.length == MIB2));
    // Every extent has a backing of its own, registered as a boot backing.
    let state = sources.lock().unwrap().state();
    assert_eq!(state.len(), 3);
    assert!(state.iter().all(|s| s.boot && s.size == MIB2));
    // The mapper maps what the host model opened.
    let region = sources
        .lock()
        .unwrap()
        .mmap(chains[0][0].spec.source, MIB2, false)
        .expect("mmap");
    assert_eq!(region.size() as u64, MIB2);
    // Errors name the option and the position, as tagmem-host words them.
    let bad = [
        memfd(Some(TAG_A), None),
        TaggedMemoryConfig {
            shared: true,
            ..memfd(Some(TAG_A), None)
        },
    ];
    let e = TaggedMem::prepare_boot_chains(&sources, &Resolver::new("/"), &bad).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    assert!(e.to_string().contains("--tagged-memory"), "{e}");
}

#[test]
fn runtime_offers_follow_the_vm_rules() {
    let (mut dev, sources) = device(&[memfd(Some(TAG_A), Some("a0"))]);
    // Before the driver is there the core refuses the offer, and its backing is closed again.
    let e = dev.add_extents(&[memfd(Some(TAG_B), None)]).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
    assert_eq!(
        sources.lock().unwrap().state().len(),
        2,
        "boot extent and base region only"
    );

    activate(&mut dev);
    assert_eq!(dev.extents().len(), 1, "the boot chain is offered at activation");
    // A tag or an id already on the VM conflicts (409 in the API), before anything is opened.
    let e = dev.add_extents(&[memfd(Some(TAG_A), None)]).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{e}");
    assert!(e.to_string().contains(&TAG_A.to_string()), "{e}");
    let e = dev.add_extents(&[memfd(Some(TAG_B), Some("a0"))]).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{e}");
    assert_eq!(sources.lock().unwrap().state().len(), 2);

    let added = dev
        .add_extents(&[memfd(Some(TAG_B), None), memfd(Some(TAG_B), Some("b1"))])
        .expect("offer");
    let names: Vec<&str> = added.extents.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(names[1], "b1");
    assert!(names[0].starts_with("_tagmem"));
    let state = sources.lock().unwrap().state();
    assert_eq!(state.len(), 4);
    assert_eq!(state.iter().filter(|s| !s.boot).count(), 2);
    assert_eq!(dev.extents().len(), 3);
}

#[test]
fn the_vmm_mapper_maps_what_the_host_model_opened() {
    use crate::memory_manager::MemoryManager;
    use crate::tagged_memory::TaggedMemoryMapper;
    use tagmem_device::Mapping;
    use vm_memory::{Bytes, GuestAddressSpace};

    let sources = Arc::new(Mutex::new(TaggedMemSources::default()));
    let chains = TaggedMem::prepare_boot_chains(&sources, &Resolver::new("/"), &[memfd(Some(TAG_A), None)])
        .expect("boot chains");
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("guest memory");
    let mm = Arc::new(Mutex::new(MemoryManager::new(GuestMemoryAtomic::new(mem))));
    let mut mapper = TaggedMemoryMapper::new(mm.clone(), sources.clone());
    let gpa = RANGE + MINIMAL_BASE_REGION_SIZE;
    let m = Mapping {
        gpa,
        len: MIB2,
        source: chains[0][0].spec.source,
        readonly: false,
    };
    mapper.map(&m).expect("map");
    assert_eq!(mm.lock().unwrap().slots.len(), 1);
    // The extent is part of the guest memory in-process devices use.
    let guest = mm.lock().unwrap().guest_memory();
    guest
        .memory()
        .write_obj(0x5a5a_u16, GuestAddress(gpa + 8))
        .expect("write");
    assert_eq!(
        guest
            .memory()
            .read_obj::<u16>(GuestAddress(gpa + 8))
            .expect("read"),
        0x5a5a
    );
    // An unmap of a range that is not mapped is refused; the mapped one goes.
    assert!(mapper.unmap(&Mapping { gpa: gpa + MIB2, ..m }).is_err());
    mapper.unmap(&m).expect("unmap");
    assert!(mm.lock().unwrap().slots.is_empty());
    assert!(guest.memory().read_obj::<u16>(GuestAddress(gpa + 8)).is_err());
}

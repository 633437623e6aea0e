//! Property tests: random operation sequences against the device's invariants, and random
//! descriptor chains against the request parser. Neither may panic; both check the mapper.

use proptest::prelude::*;
use std::collections::BTreeSet;
use tagmem_device::test_utils::{Harness, REQ_ADDR, RESP_ADDR};
use tagmem_device::*;
use tagmem_wire::*;
use uuid::Uuid;

const MB2: u64 = VIRTIO_MEM_EXTENT_ALIGN;

#[derive(Clone, Debug)]
enum Op {
    /// (tag index 0 = untagged, backing slot, length in 2 MiB units, sharable, readonly)
    Offer(Vec<(u8, u8, u8, bool, bool)>),
    Buffers(u8),
    Accept {
        chain: u8,
        mask: u8,
    },
    AcceptRaw {
        chain: u8,
        ids: Vec<u8>,
    },
    Release {
        id: u8,
        tag: u8,
    },
    Busy {
        id: u8,
        tag: u8,
    },
    HostRelease(u8),
    HostReleaseTag(u8),
    Metadata(u8),
    Poison {
        id: u8,
        off: u8,
    },
    Advance(u16),
    Snapshot,
    /// Device reset (a snapshot is restored while the device is down), then activation again.
    Reset,
}

fn tag(i: u8) -> Uuid {
    if i == 0 {
        Uuid::nil()
    } else {
        Uuid::from_u128(0x1000 + u128::from(i))
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => prop::collection::vec((0u8..4, 0u8..12, 1u8..4, any::<bool>(), any::<bool>()), 1..5).prop_map(Op::Offer),
        3 => (0u8..8).prop_map(Op::Buffers),
        3 => (0u8..8, any::<u8>()).prop_map(|(chain, mask)| Op::Accept { chain, mask }),
        1 => (0u8..8, prop::collection::vec(0u8..20, 0..5)).prop_map(|(chain, ids)| Op::AcceptRaw { chain, ids }),
        2 => (0u8..20, 0u8..4).prop_map(|(id, tag)| Op::Release { id, tag }),
        1 => (0u8..20, 0u8..4).prop_map(|(id, tag)| Op::Busy { id, tag }),
        1 => (0u8..20).prop_map(Op::HostRelease),
        1 => (0u8..4).prop_map(Op::HostReleaseTag),
        1 => (0u8..20).prop_map(Op::Metadata),
        1 => (0u8..20, any::<u8>()).prop_map(|(id, off)| Op::Poison { id, off }),
        1 => (0u16..25_000).prop_map(Op::Advance),
        1 => Just(Op::Snapshot),
        1 => Just(Op::Reset),
    ]
}

fn tagged_req(h: &mut Harness, ty: u16, id: u64, tag: Uuid, ids: &[u64]) {
    let count = u32::try_from(ids.len()).unwrap();
    let mut bytes = TaggedReq::new(ty, id, *tag.as_bytes(), count).as_bytes().to_vec();
    for i in ids {
        bytes.extend_from_slice(&i.to_le_bytes());
    }
    let (n, _) = h.request(&bytes, 16);
    assert_eq!(n, 16);
}

/// What the test knows independently of the device: every id ever offered, and the ids the host
/// was told are gone.
#[derive(Default)]
struct Model {
    offered: BTreeSet<u64>,
    ended: BTreeSet<u64>,
}

fn check(h: &mut Harness, model: &mut Model) -> Result<(), TestCaseError> {
    for ev in h.dev.take_host_events() {
        let gone: Vec<u64> = match ev {
            HostEvent::ChainAnswered { rejected, .. } => rejected,
            HostEvent::ChainDropped { extents, .. } => extents,
            HostEvent::Released { extents } => extents.iter().map(|e| e.0).collect(),
            HostEvent::ReleaseDeferred { .. } | HostEvent::DeviceReset { .. } => vec![],
        };
        for id in gone {
            prop_assert!(model.ended.insert(id), "extent {} ended twice", id);
        }
    }
    let table = h.dev.extents();
    let live: BTreeSet<u64> = table.iter().map(|e| e.id).collect();
    // No lost extent: each offered id is live or reported ended, never both.
    prop_assert!(live.is_disjoint(&model.ended));
    let all: BTreeSet<u64> = live.union(&model.ended).copied().collect();
    prop_assert_eq!(&all, &model.offered);
    // No overlap in the guest or on the backing.
    let mut by_gpa: Vec<(u64, u64)> = table.iter().map(|e| (e.gpa, e.length)).collect();
    by_gpa.sort_unstable();
    for w in by_gpa.windows(2) {
        prop_assert!(w[0].0 + w[0].1 <= w[1].0, "guest overlap {:?}", w);
    }
    let mut by_src: Vec<(u64, u64)> = table.iter().map(|e| (e.source.offset, e.length)).collect();
    by_src.sort_unstable();
    for w in by_src.windows(2) {
        prop_assert!(w[0].0 + w[0].1 <= w[1].0, "backing overlap {:?}", w);
    }
    // Mapped == accepted, exactly: nothing mapped without accept; release unmaps.
    let m = h.mapper.lock().unwrap();
    prop_assert!(m.violations.is_empty(), "{:?}", m.violations);
    let mapped: Vec<(u64, u64, u64, bool)> = m
        .mapped
        .values()
        .map(|x| (x.gpa, x.len, x.source.offset, x.readonly))
        .collect();
    let mut want: Vec<(u64, u64, u64, bool)> = table
        .iter()
        .filter(|e| e.state != ExtentState::Pending)
        .map(|e| (e.gpa, e.length, e.source.offset, e.flags.readonly))
        .collect();
    want.sort_unstable();
    prop_assert_eq!(mapped, want);
    // Pending extents belong to chains the host has not heard back on.
    prop_assert!(table.iter().filter(|e| e.state == ExtentState::Pending).count() <= 100);
    Ok(())
}

fn run_ops(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut h = Harness::tagged();
    let mut model = Model::default();
    for op in ops {
        let ids: Vec<u64> = h.dev.extents().iter().map(|e| e.id).collect();
        let pick = |i: u8| -> u64 { ids.get(usize::from(i)).copied().unwrap_or(u64::from(i) + 1000) };
        match op {
            Op::Offer(v) => {
                let specs: Vec<ExtentSpec> = v
                    .iter()
                    .enumerate()
                    .map(|(k, &(t, slot, len, sh, ro))| ExtentSpec {
                        tag: tag(t),
                        length: u64::from(len) * MB2,
                        source: SourceRef {
                            id: SourceId(1),
                            offset: u64::from(slot) * 2 * MB2,
                        },
                        gpa: None,
                        flags: ExtentFlags {
                            sharable: sh && t != 0,
                            readonly: ro,
                        },
                        perf: Perf::default(),
                        node: 0,
                        seq: u16::try_from(k).unwrap(),
                        class: SourceClass::File,
                    })
                    .collect();
                if let Ok(r) = h.dev.offer(&specs) {
                    model.offered.extend(r.extents.iter().map(|e| e.0));
                }
            }
            Op::Buffers(n) => {
                h.post_event_buffers(u16::from(n), 128);
                h.events();
            }
            Op::Accept { chain, mask } => {
                let chain_id = u64::from(chain);
                let members: Vec<u64> = h
                    .dev
                    .extents()
                    .iter()
                    .filter(|e| e.chain_id == chain_id)
                    .map(|e| e.id)
                    .collect();
                let chosen: Vec<u64> = members
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| mask & (1 << (i % 8)) != 0)
                    .map(|(_, id)| *id)
                    .collect();
                tagged_req(&mut h, VIRTIO_MEM_REQ_ACCEPT, chain_id, Uuid::nil(), &chosen);
            }
            Op::AcceptRaw { chain, ids } => {
                let raw: Vec<u64> = ids.iter().map(|i| u64::from(*i)).collect();
                tagged_req(&mut h, VIRTIO_MEM_REQ_ACCEPT, u64::from(chain), Uuid::nil(), &raw);
            }
            Op::Release { id, tag: t } => tagged_req(&mut h, VIRTIO_MEM_REQ_RELEASE, pick(id), tag(t), &[]),
            Op::Busy { id, tag: t } => tagged_req(&mut h, VIRTIO_MEM_REQ_RELEASE_BUSY, pick(id), tag(t), &[]),
            Op::HostRelease(id) => {
                let _ = h.dev.request_release(Target::Extent(pick(id)));
            }
            Op::HostReleaseTag(t) => {
                let _ = h.dev.request_release(Target::Tag(tag(t)));
            }
            Op::Metadata(id) => {
                let _ = h.dev.update_metadata(
                    Target::Extent(pick(id)),
                    Perf {
                        read_latency_ns: 1,
                        ..Default::default()
                    },
                );
            }
            Op::Poison { id, off } => {
                let _ = h.dev.inject_poison(pick(id), u64::from(off) * 4096, 4096);
            }
            Op::Advance(ms) => {
                h.clock.advance(u64::from(ms));
                h.dev.poll_timers();
            }
            Op::Reset => {
                h.dev.reset();
                // Between reset and activation: queues gone, a replay pending, memory kept.
                let s = h.dev.snapshot();
                let dev: TaggedMemDevice<std::sync::Arc<vm_memory::GuestMemoryMmap>> =
                    TaggedMemDevice::restore(
                        &s,
                        Box::new(test_utils::FakeMapper::new().0),
                        std::sync::Arc::new(NoopNotifier),
                        h.clock.clone(),
                        None,
                    )
                    .map_err(|e| TestCaseError::fail(format!("restore of a reset device failed: {e}")))?;
                prop_assert_eq!(dev.snapshot(), s);
                let f = h.dev.device_features();
                h.reset_and_activate(f);
            }
            Op::Snapshot => {
                let s = h.dev.snapshot();
                let (mapper, mstate) = test_utils::FakeMapper::new();
                let dev = TaggedMemDevice::restore(
                    &s,
                    Box::new(mapper),
                    std::sync::Arc::new(NoopNotifier),
                    h.clock.clone(),
                    Some(h.mem.clone()),
                )
                .map_err(|e| TestCaseError::fail(format!("restore of a live snapshot failed: {e}")))?;
                prop_assert_eq!(dev.extents(), h.dev.extents());
                prop_assert_eq!(dev.snapshot(), s);
                // The restored device mapped exactly what the original had mapped.
                let a: Vec<_> = h.mapper.lock().unwrap().mapped.values().copied().collect();
                let b: Vec<_> = mstate.lock().unwrap().mapped.values().copied().collect();
                prop_assert_eq!(a, b);
            }
        }
        check(&mut h, &mut model)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10_000, failure_persistence: None, ..ProptestConfig::default() })]

    /// 10,000 random sequences of host and driver operations keep every invariant.
    #[test]
    fn state_machine_invariants(ops in prop::collection::vec(op(), 1..40)) {
        run_ops(ops)?;
    }
}

/// One random descriptor: address class, length, flags, next.
fn desc() -> impl Strategy<Value = (u8, u32, u16, u16)> {
    (
        0u8..6,
        prop_oneof![0u32..64, Just(24), Just(40), Just(10), Just(16), any::<u32>()],
        any::<u16>(),
        0u16..300,
    )
}

fn addr_of(class: u8) -> u64 {
    match class {
        0 => REQ_ADDR,
        1 => RESP_ADDR,
        2 => REQ_ADDR + 0x800,
        3 => 0xf_fff0,     // straddles the end of guest memory
        4 => 1 << 40,      // far outside
        _ => u64::MAX - 8, // overflows
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 25_000, failure_persistence: None, ..ProptestConfig::default() })]

    /// 25,000 cases of four random chains each (100,000 chains) over random request bytes:
    /// no panic, every chain completed once, and the mapper holds exactly plugged + accepted.
    #[test]
    fn random_descriptor_chains(
        req in prop::collection::vec(any::<u8>(), 64),
        ty in prop_oneof![0u16..4, 0x100u16..0x103, any::<u16>()],
        table in prop::collection::vec(desc(), 16),
        heads in prop::collection::vec(0u16..300, 4),
        offer_first in any::<bool>(),
    ) {
        let mut h = Harness::tagged();
        if offer_first {
            h.post_event_buffers(4, 128);
            let source = SourceRef { id: SourceId(1), offset: 0 };
            let spec = ExtentSpec { class: SourceClass::File, ..ExtentSpec::new(Uuid::nil(), MB2, source) };
            h.dev.offer(&[spec]).unwrap();
        }
        let mut bytes = req.clone();
        bytes[0..2].copy_from_slice(&ty.to_le_bytes());
        h.write(REQ_ADDR, &bytes);
        h.write(REQ_ADDR + 0x800, &bytes);
        let base = h.reqq.next_free_index();
        for (i, &(class, len, flags, next)) in table.iter().enumerate() {
            let i = u16::try_from(i).unwrap();
            h.reqq.set_desc(base + i, addr_of(class), len, flags & 0x7, base.wrapping_add(next));
        }
        for &head in &heads {
            h.reqq.publish(base.wrapping_add(head));
        }
        h.dev.queue_notify(VIRTIO_MEM_GUESTQ);
        let used = h.reqq.take_used();
        // A head index outside the queue cannot be named in the used ring: it is consumed and
        // counted as a bad chain. Every other chain is completed exactly once.
        let valid = heads.iter().filter(|&&hd| base.wrapping_add(hd) < h.reqq.size).count();
        prop_assert_eq!(used.len(), valid, "every chain with a valid head is completed exactly once");
        for (_, len) in &used {
            prop_assert!(*len == 0 || *len == 10 || *len == 16);
        }
        let m = h.mapper.lock().unwrap();
        prop_assert!(m.violations.is_empty());
        let accepted: u64 = h.dev.extents().iter().filter(|e| e.state != ExtentState::Pending).map(|e| e.length).sum();
        prop_assert_eq!(m.mapped_bytes(), h.dev.plugged_size() + accepted);
    }
}

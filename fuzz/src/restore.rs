//! Snapshot restore with untrusted states: JSON as a VMM reads it from disk, and states the real
//! device produced, then changed field by field. Restore must refuse or succeed, never panic; a
//! device it accepts must hold a consistent table, map exactly what the state says, and snapshot
//! to a state that restores again to the same device.

use crate::device::{all_ops, check_mapper, check_round_trip, check_table, decode_program, Env, Rig};
use crate::proto::*;
use arbitrary::{Arbitrary, Unstructured};
use tagmem_device::{DeviceState, ExtentFlags, ExtentState, SourceId, TaggedWindow, VirtioDevice};
use uuid::Uuid;

/// Restores `s`; when the device takes it, checks it and exercises it a little.
pub fn restore_and_check(s: &DeviceState) {
    let env = Env::new();
    let Ok((mut dev, mapper)) = env.restore(s) else {
        return;
    };
    let got = dev.snapshot();
    check_table(&got);
    check_mapper(&got, &mapper, "restored device");
    check_round_trip(&got, &env);
    // The restored device keeps working: its queues are walked, its timers run, it resets.
    dev.queue_notify(GUESTQ);
    dev.queue_notify(EVENTQ);
    env.clock.advance(u64::from(u32::MAX));
    dev.poll_timers();
    let after = dev.snapshot();
    check_table(&after);
    check_mapper(&after, &mapper, "restored device after its queues ran");
    dev.reset();
    let after = dev.snapshot();
    check_table(&after);
    check_mapper(&after, &mapper, "restored device after a reset");
}

/// Restores a state given as JSON.
pub fn restore_json(data: &[u8]) {
    if let Ok(s) = serde_json::from_slice::<DeviceState>(data) {
        restore_and_check(&s);
    }
}

/// A field of an extent row.
#[derive(Arbitrary, Debug)]
pub enum ExtentField {
    /// `id`.
    Id(u64),
    /// `chain_id`.
    ChainId(u64),
    /// `tag`.
    Tag(u128),
    /// `gpa`.
    Gpa(u64),
    /// `gpa` moved by 2 MiB units.
    GpaBy(i8),
    /// `length`.
    Length(u64),
    /// `length` changed by 2 MiB units.
    LengthBy(i8),
    /// `source.id`.
    Source(u64),
    /// `source.offset`.
    SourceOffset(u64),
    /// `flags`.
    Flags(bool, bool),
    /// `seq`.
    Seq(u16),
    /// `state` (modulo 4).
    State(u8),
    /// `poison`.
    Poison(Vec<(u64, u64)>),
}

/// A change to a snapshot.
#[derive(Arbitrary, Debug)]
pub enum Mutation {
    /// `config.block_size`.
    BlockSize(u64),
    /// `config.region_addr`.
    RegionAddr(u64),
    /// `config.region_size`.
    RegionSize(u64),
    /// `config.region_source` offset.
    RegionSourceOffset(Option<u64>),
    /// `config.tagged`.
    Window(Option<(u64, u64)>),
    /// `config.max_pending`.
    MaxPending(u32),
    /// `config.offer_timeout_ms`.
    OfferTimeout(u32),
    /// `config.queue_size`.
    QueueSize(u16),
    /// `acked_features`.
    AckedFeatures(u64),
    /// `acked_features` with one bit flipped.
    FlipFeature(u8),
    /// `queues` dropped.
    DropQueues,
    /// A field of one queue (modulo 9) set.
    Queue(u8, u8, u64),
    /// `plugged` replaced.
    Plugged(Vec<(u64, u64)>),
    /// `requested_size`.
    RequestedSize(u64),
    /// A field of one extent.
    Extent(u8, ExtentField),
    /// An extent listed twice.
    DuplicateExtent(u8),
    /// An extent dropped.
    DropExtent(u8),
    /// A chain's id.
    ChainId(u8, u64),
    /// An id appended to a chain.
    ChainPush(u8, u64),
    /// A chain's ids replaced.
    ChainIds(u8, Vec<u64>),
    /// A chain's `remaining_ms`.
    ChainRemaining(u8, u64),
    /// A chain's `closed`.
    ChainClosed(u8, bool),
    /// A chain listed twice.
    DuplicateChain(u8),
    /// A chain dropped.
    DropChain(u8),
    /// One byte of one queued event.
    OutboxByte(u8, u8, u8),
    /// An event about an extent of the table queued: kind (modulo 5), extent, two arguments.
    OutboxPush(u8, u8, u64, u64),
    /// A queued event dropped.
    DropEvent(u8),
    /// `next_chain_id`.
    NextChainId(u64),
    /// `next_extent_id`.
    NextExtentId(u64),
    /// `config_generation`.
    Generation(u32),
    /// `replay_pending`.
    ReplayPending(bool),
}

fn pick<T>(v: &mut [T], i: u8) -> Option<&mut T> {
    let n = v.len();
    (n > 0).then(|| &mut v[usize::from(i) % n])
}

fn units(v: u64, by: i8) -> u64 {
    v.wrapping_add_signed(i64::from(by).wrapping_mul(EXTENT_ALIGN as i64))
}

impl Mutation {
    /// Applies the change to `s`.
    pub fn apply(&self, s: &mut DeviceState) {
        match self {
            Mutation::BlockSize(v) => s.config.block_size = *v,
            Mutation::RegionAddr(v) => s.config.region_addr = *v,
            Mutation::RegionSize(v) => s.config.region_size = *v,
            Mutation::RegionSourceOffset(v) => {
                s.config.region_source = v.map(|offset| tagmem_device::SourceRef {
                    id: SourceId(0),
                    offset,
                })
            }
            Mutation::Window(w) => s.config.tagged = w.map(|(addr, size)| TaggedWindow { addr, size }),
            Mutation::MaxPending(v) => s.config.max_pending = *v,
            Mutation::OfferTimeout(v) => s.config.offer_timeout_ms = *v,
            Mutation::QueueSize(v) => s.config.queue_size = *v,
            Mutation::AckedFeatures(v) => s.acked_features = *v,
            Mutation::FlipFeature(b) => s.acked_features ^= 1 << (b % 64),
            Mutation::DropQueues => s.queues = None,
            Mutation::Queue(i, field, v) => {
                if let Some(q) = s.queues.as_mut().and_then(|qs| pick(qs, *i)) {
                    let v16 = *v as u16;
                    match field % 9 {
                        0 => q.max_size = v16,
                        1 => q.size = v16,
                        2 => q.ready = v & 1 == 1,
                        3 => q.desc_table = *v,
                        4 => q.avail_ring = *v,
                        5 => q.used_ring = *v,
                        6 => q.next_avail = v16,
                        7 => q.next_used = v16,
                        _ => q.event_idx = v & 1 == 1,
                    }
                }
            }
            Mutation::Plugged(v) => s.plugged = v.clone(),
            Mutation::RequestedSize(v) => s.requested_size = *v,
            Mutation::Extent(i, f) => {
                if let Some(e) = pick(&mut s.extents, *i) {
                    match f {
                        ExtentField::Id(v) => e.id = *v,
                        ExtentField::ChainId(v) => e.chain_id = *v,
                        ExtentField::Tag(v) => e.tag = Uuid::from_u128(*v),
                        ExtentField::Gpa(v) => e.gpa = *v,
                        ExtentField::GpaBy(d) => e.gpa = units(e.gpa, *d),
                        ExtentField::Length(v) => e.length = *v,
                        ExtentField::LengthBy(d) => e.length = units(e.length, *d),
                        ExtentField::Source(v) => e.source.id = SourceId(*v),
                        ExtentField::SourceOffset(v) => e.source.offset = *v,
                        ExtentField::Flags(sharable, readonly) => {
                            e.flags = ExtentFlags {
                                sharable: *sharable,
                                readonly: *readonly,
                            }
                        }
                        ExtentField::Seq(v) => e.seq = *v,
                        ExtentField::State(v) => {
                            e.state = match v % 4 {
                                0 => ExtentState::Pending,
                                1 => ExtentState::Accepted,
                                2 => ExtentState::ReleaseRequested,
                                _ => ExtentState::ReleaseDeferred,
                            }
                        }
                        ExtentField::Poison(p) => e.poison = p.clone(),
                    }
                }
            }
            Mutation::DuplicateExtent(i) => {
                if let Some(e) = pick(&mut s.extents, *i).cloned() {
                    s.extents.push(e);
                }
            }
            Mutation::DropExtent(i) => {
                if !s.extents.is_empty() {
                    let n = usize::from(*i) % s.extents.len();
                    s.extents.remove(n);
                }
            }
            Mutation::ChainId(i, v) => {
                if let Some(c) = pick(&mut s.chains, *i) {
                    c.id = *v;
                }
            }
            Mutation::ChainPush(i, v) => {
                if let Some(c) = pick(&mut s.chains, *i) {
                    c.ids.push(*v);
                }
            }
            Mutation::ChainIds(i, v) => {
                if let Some(c) = pick(&mut s.chains, *i) {
                    c.ids = v.clone();
                }
            }
            Mutation::ChainRemaining(i, v) => {
                if let Some(c) = pick(&mut s.chains, *i) {
                    c.remaining_ms = *v;
                }
            }
            Mutation::ChainClosed(i, v) => {
                if let Some(c) = pick(&mut s.chains, *i) {
                    c.closed = *v;
                }
            }
            Mutation::DuplicateChain(i) => {
                if let Some(c) = pick(&mut s.chains, *i).cloned() {
                    s.chains.push(c);
                }
            }
            Mutation::DropChain(i) => {
                if !s.chains.is_empty() {
                    let n = usize::from(*i) % s.chains.len();
                    s.chains.remove(n);
                }
            }
            Mutation::OutboxByte(i, at, v) => {
                if let Some(ev) = pick(&mut s.outbox, *i) {
                    if let Some(b) = pick(ev, *at) {
                        *b = *v;
                    }
                }
            }
            Mutation::OutboxPush(kind, i, a, b) => {
                let Some(e) = pick(&mut s.extents, *i).cloned() else {
                    return;
                };
                let record = ExtentRecord {
                    tag: *e.tag.as_bytes(),
                    extent_id: e.id.into(),
                    addr: e.gpa.into(),
                    length: e.length.into(),
                    flags: e.flags.bits().into(),
                    seq: e.seq.into(),
                    ..Default::default()
                };
                let ev = match kind % 5 {
                    0 => Event::Offer {
                        chain_id: e.chain_id,
                        more: a & 1 == 1,
                        record,
                    },
                    1 => Event::ReleaseRequest { record },
                    2 => Event::Metadata { record },
                    3 => Event::Poison {
                        record,
                        offset: *a,
                        length: *b,
                    },
                    _ => Event::ChainAbandoned { chain_id: *a },
                };
                s.outbox.push(EventMsg::from(&ev).as_bytes().to_vec());
            }
            Mutation::DropEvent(i) => {
                if !s.outbox.is_empty() {
                    let n = usize::from(*i) % s.outbox.len();
                    s.outbox.remove(n);
                }
            }
            Mutation::NextChainId(v) => s.next_chain_id = *v,
            Mutation::NextExtentId(v) => s.next_extent_id = *v,
            Mutation::Generation(v) => s.config_generation = *v,
            Mutation::ReplayPending(v) => s.replay_pending = *v,
        }
    }
}

/// A state the device produced running a program, then changed by [`Mutation`]s: the input is a
/// u16 program length, the program (see [`crate::device`]), then the mutations.
pub fn restore_mutated(data: &[u8]) {
    let Some((len, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let n = usize::from(u16::from_le_bytes(*len)).min(rest.len());
    let (program, mutations) = rest.split_at(n);
    let mut rig = Rig::tagged();
    for op in decode_program(program, &all_ops()) {
        rig.step(&op);
    }
    let mut s = rig.state();
    let mut u = Unstructured::new(mutations);
    for _ in 0..16 {
        match Mutation::arbitrary(&mut u) {
            Ok(m) => m.apply(&mut s),
            Err(_) => break,
        }
        if u.is_empty() {
            break;
        }
    }
    restore_and_check(&s);
}

/// The input [`restore_mutated`] reads for `program` with no mutation.
pub fn mutated_input(program: &[u8]) -> Vec<u8> {
    let n = u16::try_from(program.len()).expect("a short program");
    let mut v = n.to_le_bytes().to_vec();
    v.extend_from_slice(program);
    v
}

//! Programs: the [`Op`]s a device run is made of, decoded from and encoded to bytes, and the
//! extent specs they build.

use crate::bytes::{Reader, Writer};
use crate::proto::*;
use tagmem_device::{ExtentFlags, ExtentSpec, Perf, SourceClass, SourceId, SourceRef};
use uuid::Uuid;

/// Most steps of one program (longer inputs are cut).
pub const MAX_OPS: usize = 48;
/// Most bytes a raw request or poke writes.
pub(crate) const MAX_BLOB: usize = 4096;

/// How an extent, chain or tag is picked: an index into what the device holds now, or a raw id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pick(pub u8);

/// One extent of an offer, in small units the fuzzer can hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpecBits {
    /// 0: untagged, 1..=4: fixed tags, otherwise a tag made of `raw`.
    pub tag: u8,
    /// Length in 2 MiB units (0 stays 0: invalid).
    pub len_units: u8,
    /// Backing id (taken modulo 4).
    pub source: u8,
    /// Backing offset in 2 MiB units; with the top bit set, a raw misaligned offset.
    pub offset_units: u16,
    /// 0: the device places it; 1: at the window start plus `gpa_units` 2 MiB units; 2: raw.
    pub gpa_mode: u8,
    /// See `gpa_mode`.
    pub gpa_units: u16,
    /// Bit 0 sharable, bit 1 read-only.
    pub flags: u8,
    /// Read latency (ns); the other performance values derive from it.
    pub latency: u16,
    /// NUMA node.
    pub node: u16,
    /// Sequence number in a sharable group.
    pub seq: u16,
    /// Source class (taken modulo 5).
    pub class: u8,
    /// Raw material for tags and raw addresses.
    pub raw: u64,
}

/// One step of a program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// PLUG of `nb` blocks starting `block` blocks into the region (`raw`: `block` is raw).
    Plug { block: u16, nb: u16, raw: bool },
    /// UNPLUG, as `Plug`.
    Unplug { block: u16, nb: u16, raw: bool },
    /// UNPLUG_ALL.
    UnplugAll,
    /// STATE, as `Plug`.
    State { block: u16, nb: u16, raw: bool },
    /// ACCEPT of the extents `mask` selects from pending chain `chain`; `twist` bit 0 repeats an
    /// id, bit 1 adds an unknown id, bit 2 miscounts, bit 3 leaves too little response room.
    Accept { chain: Pick, mask: u64, twist: u8 },
    /// RELEASE of accepted extent `extent`; `tag_mode` 0: its tag, 1: a wrong tag, 2: nil.
    Release { extent: Pick, tag_mode: u8 },
    /// RELEASE_BUSY, as `Release`.
    ReleaseBusy { extent: Pick, tag_mode: u8 },
    /// LIST from `first` for `count` records with `room` writable bytes.
    List { first: Pick, count: u32, room: u16 },
    /// Any bytes as a request, with `room` writable bytes after them.
    RawRequest { bytes: Vec<u8>, room: u16 },
    /// Descriptors written verbatim into the request queue's table, then `head` published.
    RawChain {
        descs: Vec<(u8, u64, u32, u16, u16)>,
        head: u16,
    },
    /// Bytes written into guest memory at `addr` (rings the driver owns, or buffers).
    Poke { addr: u32, bytes: Vec<u8> },
    /// `n` eventq buffers of `len` bytes, readable ones when `readable`.
    PostEvents { n: u8, len: u16, readable: bool },
    /// A notification of queue `queue`.
    Notify { queue: u16 },
    /// The host offers a chain.
    Offer { specs: Vec<SpecBits> },
    /// The host asks for the release of a tag group or extent.
    RequestRelease { target: Pick },
    /// The host updates metadata.
    UpdateMetadata { target: Pick, latency: u32 },
    /// The host reports poison in `extent` at `offset` (4 KiB units) for `pages` pages.
    Poison { extent: Pick, offset: u32, pages: u32 },
    /// The host changes the requested size (in blocks; `raw`: bytes).
    SetRequestedSize { value: u64, raw: bool },
    /// Time passes, then the timers run.
    Advance { ms: u32 },
    /// The driver resets the device (status 0).
    Reset,
    /// The driver brings the device up again: features (0: all offered, 1: base only,
    /// otherwise raw) and fresh queues.
    Activate { features: u64 },
    /// Snapshot, restore into a new device, continue with the restored one.
    SnapshotRestore,
    /// The driver reads the configuration space.
    ReadConfig { offset: u8, len: u8 },
}

pub(crate) const OPS: u8 = 24;

impl Op {
    /// Reads one step; `allowed` limits the kinds: the first byte names one, and a kind not
    /// allowed stands for an allowed one (modulo their number).
    pub fn decode(r: &mut Reader<'_>, allowed: &[u8]) -> Op {
        let b = r.u8();
        let kind = if allowed.contains(&b) {
            b
        } else {
            allowed[usize::from(b) % allowed.len()]
        };
        let blk = |r: &mut Reader<'_>| (r.u16(), r.u16(), r.u8() & 1 == 1);
        match kind {
            0 => {
                let (block, nb, raw) = blk(r);
                Op::Plug { block, nb, raw }
            }
            1 => {
                let (block, nb, raw) = blk(r);
                Op::Unplug { block, nb, raw }
            }
            2 => Op::UnplugAll,
            3 => {
                let (block, nb, raw) = blk(r);
                Op::State { block, nb, raw }
            }
            4 => Op::Accept {
                chain: Pick(r.u8()),
                mask: r.u64(),
                twist: r.u8(),
            },
            5 => Op::Release {
                extent: Pick(r.u8()),
                tag_mode: r.u8(),
            },
            6 => Op::ReleaseBusy {
                extent: Pick(r.u8()),
                tag_mode: r.u8(),
            },
            7 => Op::List {
                first: Pick(r.u8()),
                count: r.u32(),
                room: r.u16(),
            },
            8 => Op::RawRequest {
                bytes: r.blob(MAX_BLOB).to_vec(),
                room: r.u16(),
            },
            9 => {
                let n = r.u8() % 8;
                let descs = (0..n)
                    .map(|_| (r.u8(), r.u64(), r.u32(), r.u16(), r.u16()))
                    .collect();
                Op::RawChain { descs, head: r.u16() }
            }
            10 => Op::Poke {
                addr: r.u32(),
                bytes: r.blob(MAX_BLOB).to_vec(),
            },
            11 => Op::PostEvents {
                n: r.u8(),
                len: r.u16(),
                readable: r.u8() & 1 == 1,
            },
            12 => Op::Notify { queue: r.u16() },
            13 => {
                let n = 1 + r.u8() % 6;
                let specs = (0..n)
                    .map(|_| SpecBits {
                        tag: r.u8(),
                        len_units: r.u8(),
                        source: r.u8(),
                        offset_units: r.u16(),
                        gpa_mode: r.u8(),
                        gpa_units: r.u16(),
                        flags: r.u8(),
                        latency: r.u16(),
                        node: r.u16(),
                        seq: r.u16(),
                        class: r.u8(),
                        raw: r.u64(),
                    })
                    .collect();
                Op::Offer { specs }
            }
            14 => Op::RequestRelease { target: Pick(r.u8()) },
            15 => Op::UpdateMetadata {
                target: Pick(r.u8()),
                latency: r.u32(),
            },
            16 => Op::Poison {
                extent: Pick(r.u8()),
                offset: r.u32(),
                pages: r.u32(),
            },
            17 => Op::SetRequestedSize {
                value: r.u64(),
                raw: r.u8() & 1 == 1,
            },
            18 => Op::Advance { ms: r.u32() },
            19 => Op::Reset,
            20 => Op::Activate { features: r.u64() },
            21 => Op::SnapshotRestore,
            _ => Op::ReadConfig {
                offset: r.u8(),
                len: r.u8(),
            },
        }
    }

    /// Writes the step so that [`Op::decode`] with every kind allowed reads it back.
    pub fn encode(&self, w: &mut Writer) {
        let blk = |w: &mut Writer, k: u8, block: u16, nb: u16, raw: bool| {
            w.u8(k).u16(block).u16(nb).u8(u8::from(raw));
        };
        match self {
            Op::Plug { block, nb, raw } => blk(w, 0, *block, *nb, *raw),
            Op::Unplug { block, nb, raw } => blk(w, 1, *block, *nb, *raw),
            Op::UnplugAll => {
                w.u8(2);
            }
            Op::State { block, nb, raw } => blk(w, 3, *block, *nb, *raw),
            Op::Accept { chain, mask, twist } => {
                w.u8(4).u8(chain.0).u64(*mask).u8(*twist);
            }
            Op::Release { extent, tag_mode } => {
                w.u8(5).u8(extent.0).u8(*tag_mode);
            }
            Op::ReleaseBusy { extent, tag_mode } => {
                w.u8(6).u8(extent.0).u8(*tag_mode);
            }
            Op::List { first, count, room } => {
                w.u8(7).u8(first.0).u32(*count).u16(*room);
            }
            Op::RawRequest { bytes, room } => {
                w.u8(8).blob(bytes).u16(*room);
            }
            Op::RawChain { descs, head } => {
                w.u8(9)
                    .u8(u8::try_from(descs.len()).expect("at most 7 descriptors"));
                for &(i, addr, len, flags, next) in descs {
                    w.u8(i).u64(addr).u32(len).u16(flags).u16(next);
                }
                w.u16(*head);
            }
            Op::Poke { addr, bytes } => {
                w.u8(10).u32(*addr).blob(bytes);
            }
            Op::PostEvents { n, len, readable } => {
                w.u8(11).u8(*n).u16(*len).u8(u8::from(*readable));
            }
            Op::Notify { queue } => {
                w.u8(12).u16(*queue);
            }
            Op::Offer { specs } => {
                let n = u8::try_from(specs.len() - 1).expect("1 to 6 extents");
                w.u8(13).u8(n);
                for s in specs {
                    w.u8(s.tag)
                        .u8(s.len_units)
                        .u8(s.source)
                        .u16(s.offset_units)
                        .u8(s.gpa_mode)
                        .u16(s.gpa_units)
                        .u8(s.flags)
                        .u16(s.latency)
                        .u16(s.node)
                        .u16(s.seq)
                        .u8(s.class)
                        .u64(s.raw);
                }
            }
            Op::RequestRelease { target } => {
                w.u8(14).u8(target.0);
            }
            Op::UpdateMetadata { target, latency } => {
                w.u8(15).u8(target.0).u32(*latency);
            }
            Op::Poison {
                extent,
                offset,
                pages,
            } => {
                w.u8(16).u8(extent.0).u32(*offset).u32(*pages);
            }
            Op::SetRequestedSize { value, raw } => {
                w.u8(17).u64(*value).u8(u8::from(*raw));
            }
            Op::Advance { ms } => {
                w.u8(18).u32(*ms);
            }
            Op::Reset => {
                w.u8(19);
            }
            Op::Activate { features } => {
                w.u8(20).u64(*features);
            }
            Op::SnapshotRestore => {
                w.u8(21);
            }
            Op::ReadConfig { offset, len } => {
                w.u8(22).u8(*offset).u8(*len);
            }
        }
    }
}

/// Every kind of step.
pub fn all_ops() -> Vec<u8> {
    (0..OPS - 1).collect()
}

/// The steps of the raw-queue target: descriptors, pokes, buffers and notifications only.
pub fn raw_queue_ops() -> Vec<u8> {
    vec![8, 9, 10, 11, 12]
}

/// Decodes a whole program.
pub fn decode_program(data: &[u8], allowed: &[u8]) -> Vec<Op> {
    let mut r = Reader::new(data);
    let mut ops = Vec::new();
    while !r.is_empty() && ops.len() < MAX_OPS {
        ops.push(Op::decode(&mut r, allowed));
    }
    ops
}

/// Encodes a whole program.
pub fn encode_program(ops: &[Op]) -> Vec<u8> {
    let mut w = Writer::default();
    for op in ops {
        op.encode(&mut w);
    }
    w.out
}

pub(crate) fn tag_of(sel: u8, raw: u64) -> Uuid {
    match sel % 8 {
        0 | 6 => Uuid::nil(),
        k @ 1..=4 => Uuid::from_u128(0x6f1c_2a9e_0d3b_4c55_9a7e_3b1f_00c0_ff00 + u128::from(k)),
        _ => Uuid::from_u128(u128::from(raw) << 64 | u128::from(raw.rotate_left(17))),
    }
}

impl SpecBits {
    /// The extent the host offers; `window` is the tagged window's start.
    pub fn spec(&self, window: u64) -> ExtentSpec {
        let offset = if self.offset_units & 0x8000 != 0 {
            self.raw
        } else {
            u64::from(self.offset_units % 64) * EXTENT_ALIGN
        };
        let source = SourceRef {
            id: SourceId(1 + u64::from(self.source % 4)),
            offset,
        };
        let lat = u32::from(self.latency);
        ExtentSpec {
            gpa: match self.gpa_mode % 4 {
                1 => Some(window + u64::from(self.gpa_units % 530) * EXTENT_ALIGN),
                2 => Some(self.raw),
                _ => None,
            },
            flags: ExtentFlags {
                sharable: self.flags & 1 != 0,
                readonly: self.flags & 2 != 0,
            },
            perf: Perf {
                read_latency_ns: lat,
                write_latency_ns: lat.saturating_mul(2),
                read_bandwidth_mbps: lat.saturating_mul(100),
                write_bandwidth_mbps: lat.saturating_mul(50),
            },
            node: self.node,
            seq: self.seq,
            class: match self.class % 5 {
                0 => SourceClass::Unspecified,
                1 => SourceClass::CxlDc,
                2 => SourceClass::SoftReserved,
                3 => SourceClass::Pmem,
                _ => SourceClass::File,
            },
            ..ExtentSpec::new(
                tag_of(self.tag, self.raw),
                u64::from(self.len_units % 9) * EXTENT_ALIGN,
                source,
            )
        }
    }
}

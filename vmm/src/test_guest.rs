//! The bundled bare-metal test guest (`tests/guest`) and the test-control device it talks to.
//!
//! The guest prints `HELLO tagmem test guest`, then loops: it reads the next command from the
//! test-control MMIO device, executes it and prints one result line; with nothing queued it halts
//! until the VMM runs it again. [`TestGuest`] wraps a VM, vCPU and that device so a test can say
//! "read 4 KiB at GPA X" and get a parsed [`Report`].

use crate::bus::BusDevice;
use crate::layout;
use crate::vcpu::{RunLimit, RunOutcome, Vcpu, VcpuError};
use crate::vm::{Vm, VmConfig, VmError};
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use tagmem_device::Target;
use uuid::Uuid;

/// The guest/VMM test-control protocol, shared with the guest's sources.
pub mod protocol {
    include!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/guest/src/protocol.rs"
    ));
}

/// The flat guest image and where it goes, as read from its ELF by the build script.
pub mod image {
    include!(concat!(env!("OUT_DIR"), "/test_guest_layout.rs"));
    /// The flat image, to be loaded at [`LOAD_ADDR`].
    pub static BYTES: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/test-guest.bin"));
}

use protocol::*;

// The image (including its zero-initialised data) must lie between the boot stack and the page
// tables, and start with its entry point.
const _: () = assert!(
    image::LOAD_ADDR >= layout::BOOT_STACK_TOP
        && image::MEM_END <= layout::PAGE_TABLES_ADDR
        && image::ENTRY == image::LOAD_ADDR
);

/// The offer policy the guest's driver applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Accept every valid offer (the driver's default).
    AcceptAll,
    /// Reject every offer.
    RejectAll,
    /// Accept exactly these extent ids.
    AcceptIds(Vec<u64>),
    /// Reject extents carrying this tag, accept the rest.
    RejectTag(Uuid),
}

/// A command for the test guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Read `len` bytes at `gpa`.
    Read {
        /// Guest-physical address.
        gpa: u64,
        /// Length.
        len: u64,
    },
    /// Fill `len` bytes at `gpa` with `byte`.
    Write {
        /// Guest-physical address.
        gpa: u64,
        /// Length.
        len: u64,
        /// Fill value.
        byte: u8,
    },
    /// Allocate, fill and free `len` bytes of guest heap.
    Alloc {
        /// Bytes.
        len: u64,
    },
    /// Print `STOP` and halt for good.
    Stop,
    /// Set the driver's offer policy.
    Policy(Policy),
    /// Poll the driver until it has nothing left to do.
    Poll,
    /// Poll the driver on every loop iteration (`true`) or only on [`Command::Poll`].
    AutoPoll(bool),
    /// Print the driver's dax devices.
    View,
    /// Release the device a target names.
    Release(Target),
    /// Mark the device a target names busy or idle.
    Busy {
        /// The device.
        target: Target,
        /// Busy (`true`) or idle.
        busy: bool,
    },
    /// Print driver log lines as they happen (`true`) or only count them.
    Verbose(bool),
    /// Print every accepted extent with its record fields (`EXT` lines).
    Extents,
    /// Claim accepted capacity by tag into the region's seed, as
    /// `daxctl create-device -r region0 --uuid <tag>` does (the nil tag: one untagged extent).
    Claim(Uuid),
    /// Make every accepted group a device at once (`true`) or leave it unclaimed until a
    /// [`Command::Claim`] (`false`, the driver's default, as CXL DCD).
    ClaimMode(bool),
    /// Reset the device and initialise the driver again (it lists what it still holds).
    Reinit,
    /// Read `len` bytes at `gpa` (8-byte aligned) `reps` times with 8-byte loads.
    ReadLoop {
        /// Guest-physical address.
        gpa: u64,
        /// Length.
        len: u64,
        /// Passes over the range.
        reps: u64,
    },
    /// Fill `len` bytes at `gpa` (8-byte aligned) `reps` times with 8-byte stores of `byte`.
    WriteLoop {
        /// Guest-physical address.
        gpa: u64,
        /// Length.
        len: u64,
        /// Passes over the range.
        reps: u64,
        /// Fill value.
        byte: u8,
    },
    /// Plug `requests` consecutive ranges of `blocks` base blocks from `addr` on through the base
    /// virtio-mem path, then read the first byte.
    BasePlug {
        /// Guest-physical start of the first range.
        addr: u64,
        /// PLUG requests to send.
        requests: u64,
        /// Blocks per request.
        blocks: u64,
    },
    /// Send a base virtio-mem UNPLUG_ALL request.
    BaseUnplugAll,
}

fn tag_halves(tag: &Uuid) -> [u64; 2] {
    let b = tag.as_bytes();
    let mut lo = [0u8; 8];
    let mut hi = [0u8; 8];
    lo.copy_from_slice(&b[..8]);
    hi.copy_from_slice(&b[8..]);
    [u64::from_le_bytes(lo), u64::from_le_bytes(hi)]
}

fn target_args(t: &Target) -> Vec<u64> {
    match t {
        Target::Extent(id) => vec![TARGET_EXTENT, *id],
        Target::Tag(tag) => {
            let [lo, hi] = tag_halves(tag);
            vec![TARGET_TAG, lo, hi]
        }
    }
}

impl Command {
    /// The command code and arguments as the guest reads them.
    pub fn encode(&self) -> (u64, Vec<u64>) {
        match self {
            Command::Read { gpa, len } => (CMD_READ, vec![*gpa, *len]),
            Command::Write { gpa, len, byte } => (CMD_WRITE, vec![*gpa, *len, u64::from(*byte)]),
            Command::Alloc { len } => (CMD_ALLOC, vec![*len]),
            Command::Stop => (CMD_STOP, Vec::new()),
            Command::Policy(p) => {
                let args = match p {
                    Policy::AcceptAll => vec![POLICY_ACCEPT_ALL],
                    Policy::RejectAll => vec![POLICY_REJECT_ALL],
                    Policy::AcceptIds(ids) => std::iter::once(POLICY_ACCEPT_IDS)
                        .chain(ids.iter().copied())
                        .collect(),
                    Policy::RejectTag(tag) => {
                        let [lo, hi] = tag_halves(tag);
                        vec![POLICY_REJECT_TAG, lo, hi]
                    }
                };
                (CMD_POLICY, args)
            }
            Command::Poll => (CMD_POLL, Vec::new()),
            Command::AutoPoll(on) => (CMD_AUTOPOLL, vec![u64::from(*on)]),
            Command::View => (CMD_VIEW, Vec::new()),
            Command::Release(t) => (CMD_RELEASE, target_args(t)),
            Command::Busy { target, busy } => {
                let mut args = vec![u64::from(*busy)];
                args.extend(target_args(target));
                (CMD_BUSY, args)
            }
            Command::Verbose(on) => (CMD_VERBOSE, vec![u64::from(*on)]),
            Command::Extents => (CMD_EXTENTS, Vec::new()),
            Command::Claim(tag) => (CMD_CLAIM, tag_halves(tag).to_vec()),
            Command::ClaimMode(auto) => (CMD_CLAIM_MODE, vec![u64::from(*auto)]),
            Command::Reinit => (CMD_REINIT, Vec::new()),
            Command::ReadLoop { gpa, len, reps } => (CMD_READ_LOOP, vec![*gpa, *len, *reps]),
            Command::WriteLoop { gpa, len, reps, byte } => {
                (CMD_WRITE_LOOP, vec![*gpa, *len, *reps, u64::from(*byte)])
            }
            Command::BasePlug {
                addr,
                requests,
                blocks,
            } => (CMD_BASE_PLUG, vec![*addr, *requests, *blocks]),
            Command::BaseUnplugAll => (CMD_BASE_UNPLUG_ALL, Vec::new()),
        }
    }
}

/// Why a command cannot be queued.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// More arguments than the protocol carries.
    #[error("command carries {0} arguments, at most {MAX_ARGS} fit")]
    TooManyArgs(usize),
}

/// A queued command: sequence number, code, arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Queued {
    seq: u64,
    code: u64,
    args: Vec<u64>,
}

/// The test-control MMIO device: a queue of commands the guest pops, and the sequence number of
/// the last command the guest finished.
#[derive(Debug, Default)]
pub struct TestControl {
    queue: VecDeque<Queued>,
    latched: Option<Queued>,
    next_arg: usize,
    next_seq: u64,
    done: u64,
    done_signal: Arc<Condvar>,
}

impl TestControl {
    /// A control device that notifies `done_signal` whenever the guest finishes a command.
    pub fn new(done_signal: Arc<Condvar>) -> Self {
        TestControl {
            done_signal,
            ..Default::default()
        }
    }

    /// Queues a command; returns its sequence number.
    pub fn push(&mut self, cmd: &Command) -> Result<u64, CommandError> {
        let (code, args) = cmd.encode();
        if args.len() > MAX_ARGS {
            return Err(CommandError::TooManyArgs(args.len()));
        }
        self.next_seq = self.next_seq.wrapping_add(1).max(1);
        self.queue.push_back(Queued {
            seq: self.next_seq,
            code,
            args,
        });
        Ok(self.next_seq)
    }

    /// Sequence number of the last command the guest finished.
    pub fn done(&self) -> u64 {
        self.done
    }

    /// Commands queued and not yet taken by the guest.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// The counters a snapshot keeps: (last sequence number handed out, last one done).
    pub fn counters(&self) -> (u64, u64) {
        (self.next_seq, self.done)
    }

    /// Restores the counters of [`TestControl::counters`].
    pub fn set_counters(&mut self, next_seq: u64, done: u64) {
        self.next_seq = next_seq;
        self.done = done;
    }

    fn arg(&self, i: usize) -> u64 {
        self.latched
            .as_ref()
            .and_then(|q| q.args.get(i))
            .copied()
            .unwrap_or(0)
    }
}

impl BusDevice for TestControl {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            REG_MAGIC => CONTROL_MAGIC,
            REG_COMMAND => {
                self.latched = self.queue.pop_front();
                self.next_arg = 0;
                self.latched.as_ref().map_or(CMD_IDLE, |q| q.code)
            }
            REG_ARG0 => self.arg(0),
            REG_ARG1 => self.arg(1),
            REG_ARG2 => self.arg(2),
            REG_ARGC => self
                .latched
                .as_ref()
                .map_or(0, |q| u64::try_from(q.args.len()).unwrap_or(u64::MAX)),
            REG_ARG_NEXT => {
                let v = self.arg(self.next_arg);
                self.next_arg = self.next_arg.saturating_add(1);
                v
            }
            REG_SEQ => self.latched.as_ref().map_or(0, |q| q.seq),
            _ => 0,
        };
        let bytes = value.to_le_bytes();
        let n = data.len().min(bytes.len());
        data[..n].copy_from_slice(&bytes[..n]);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset != REG_DONE {
            return;
        }
        let mut b = [0u8; 8];
        let n = data.len().min(b.len());
        b[..n].copy_from_slice(&data[..n]);
        self.done = u64::from_le_bytes(b);
        self.done_signal.notify_all();
    }
}

/// A parsed result line of the test guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Report {
    /// `READ gpa=.. len=.. sum=.. first=..`.
    Read {
        /// Address read.
        gpa: u64,
        /// Bytes read.
        len: u64,
        /// Wrapping sum of the bytes.
        sum: u64,
        /// First up-to-8 bytes.
        first: Vec<u8>,
    },
    /// `WROTE gpa=.. len=.. byte=..`.
    Wrote {
        /// Address written.
        gpa: u64,
        /// Bytes written.
        len: u64,
        /// Fill value.
        byte: u8,
    },
    /// `ALLOC len=.. sum=..`.
    Alloc {
        /// Bytes allocated.
        len: u64,
        /// Sum of the pattern written.
        sum: u64,
    },
    /// `STOP`.
    Stop,
    /// `POLICY kind=..`.
    Policy {
        /// The `POLICY_*` value now in force.
        kind: u64,
    },
    /// `POLLED events=..`: the driver polled until idle.
    Polled {
        /// Driver log entries produced by this poll.
        events: u64,
    },
    /// `AUTOPOLL on=..`.
    AutoPoll {
        /// Whether the guest now polls on every loop iteration.
        on: bool,
    },
    /// `VIEW devices=.. pending=.. unclaimed=.. seed=..`, after the `DEV` and `FREE` lines.
    View {
        /// Number of dax devices.
        devices: u64,
        /// Offer chains collected but not answered.
        pending: u64,
    },
    /// `RELEASED count=..`.
    Released {
        /// Extents the device released.
        count: u64,
    },
    /// `RELEASE error=..`: the driver could not release.
    ReleaseFailed(String),
    /// `CLAIMED name=.. uuid=.. size=.. extents=..`: a claim made a device (the `uuid` and
    /// `extents` fields are for people; the `VIEW` lines carry them for programs).
    Claimed {
        /// The device (the seed before the claim).
        name: String,
        /// Its size, bytes.
        size: u64,
    },
    /// `CLAIM error=..`: nothing unclaimed carries the tag.
    ClaimFailed(String),
    /// `CLAIMMODE auto=..`.
    ClaimMode {
        /// Whether accepted groups become devices at once.
        auto: bool,
    },
    /// `BUSY ok=..`.
    Busy {
        /// Whether the target named a device or tag.
        ok: bool,
    },
    /// `VERBOSE on=..`.
    Verbose {
        /// Whether `EVT` lines are printed.
        on: bool,
    },
    /// `FAULT ...`: the guest took an exception or refused a command.
    Fault(String),
    /// `EXTENTS count=..`, after the `EXT` lines.
    Extents {
        /// Number of accepted extents listed.
        count: u64,
    },
    /// `READLOOP gpa=.. len=.. reps=.. acc=..`.
    ReadLoop {
        /// Address read.
        gpa: u64,
        /// Bytes per pass.
        len: u64,
        /// Passes.
        reps: u64,
        /// Wrapping sum of the words loaded.
        acc: u64,
    },
    /// `WROTELOOP gpa=.. len=.. reps=..`.
    WroteLoop {
        /// Address written.
        gpa: u64,
        /// Bytes per pass.
        len: u64,
        /// Passes.
        reps: u64,
    },
    /// `PLUGGED addr=.. requests=.. acked=.. resp=.. first=..`.
    Plugged {
        /// Start of the first range.
        addr: u64,
        /// Requests asked for.
        requests: u64,
        /// Requests acknowledged (they come first).
        acked: u64,
        /// The first non-ACK response type (255: driver error), 0 if all were acknowledged.
        resp: u64,
        /// The byte at `addr` (empty if nothing was plugged).
        first: Vec<u8>,
    },
    /// `UNPLUGGED resp=..`.
    Unplugged {
        /// Response type (255: driver error).
        resp: u64,
    },
    /// `REINIT ok=1 devices=.. extents=..`: the driver was reset and initialised again.
    Reinit {
        /// Dax devices the driver exposes afterwards.
        devices: u64,
        /// Accepted extents it listed.
        extents: u64,
    },
    /// `REINIT ok=0 error=..`: initialising the driver again failed.
    ReinitFailed(String),
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

fn num(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

fn hex_bytes(hex: &str) -> Option<Vec<u8>> {
    (0..hex.len())
        .step_by(2)
        .map(|i| hex.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
        .collect()
}

impl Report {
    /// Parses one console line; `None` for lines that are not results (e.g. `HELLO`, `EVT`).
    pub fn parse(line: &str) -> Option<Report> {
        let word = line.split_whitespace().next()?;
        let n = |k| field(line, k).and_then(num);
        let flag = |k| n(k).map(|v| v != 0);
        match word {
            "READ" => Some(Report::Read {
                gpa: n("gpa")?,
                len: n("len")?,
                sum: n("sum")?,
                first: hex_bytes(field(line, "first")?)?,
            }),
            "WROTE" => Some(Report::Wrote {
                gpa: n("gpa")?,
                len: n("len")?,
                byte: u8::try_from(n("byte")?).ok()?,
            }),
            "ALLOC" => Some(Report::Alloc {
                len: n("len")?,
                sum: n("sum")?,
            }),
            "STOP" => Some(Report::Stop),
            "POLICY" => Some(Report::Policy { kind: n("kind")? }),
            "POLLED" => Some(Report::Polled { events: n("events")? }),
            "AUTOPOLL" => Some(Report::AutoPoll { on: flag("on")? }),
            "VIEW" => Some(Report::View {
                devices: n("devices")?,
                pending: n("pending")?,
            }),
            "RELEASED" => Some(Report::Released { count: n("count")? }),
            "RELEASE" => Some(Report::ReleaseFailed(line.to_string())),
            "CLAIMED" => Some(Report::Claimed {
                name: field(line, "name")?.to_string(),
                size: n("size")?,
            }),
            "CLAIM" => Some(Report::ClaimFailed(line.to_string())),
            "CLAIMMODE" => Some(Report::ClaimMode { auto: flag("auto")? }),
            "BUSY" => Some(Report::Busy { ok: flag("ok")? }),
            "VERBOSE" => Some(Report::Verbose { on: flag("on")? }),
            "FAULT" => Some(Report::Fault(line.to_string())),
            "EXTENTS" => Some(Report::Extents { count: n("count")? }),
            "READLOOP" => Some(Report::ReadLoop {
                gpa: n("gpa")?,
                len: n("len")?,
                reps: n("reps")?,
                acc: n("acc")?,
            }),
            "WROTELOOP" => Some(Report::WroteLoop {
                gpa: n("gpa")?,
                len: n("len")?,
                reps: n("reps")?,
            }),
            "PLUGGED" => Some(Report::Plugged {
                addr: n("addr")?,
                requests: n("requests")?,
                acked: n("acked")?,
                resp: n("resp")?,
                first: hex_bytes(field(line, "first")?)?,
            }),
            "UNPLUGGED" => Some(Report::Unplugged { resp: n("resp")? }),
            "REINIT" if flag("ok")? => Some(Report::Reinit {
                devices: n("devices")?,
                extents: n("extents")?,
            }),
            "REINIT" => Some(Report::ReinitFailed(line.to_string())),
            _ => None,
        }
    }
}

/// One extent of a [`DevView`]: id, guest-physical address, length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtentView {
    /// Extent id.
    pub id: u64,
    /// Guest-physical address.
    pub gpa: u64,
    /// Length in bytes.
    pub len: u64,
}

/// A poisoned range the guest knows of: extent id, offset, length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoisonView {
    /// Extent id.
    pub id: u64,
    /// Offset in the extent.
    pub offset: u64,
    /// Length.
    pub len: u64,
}

/// One dax device as the guest's driver reports it (a `DEV` line), or one group of capacity its
/// region holds unclaimed (a `FREE` line: `name` empty, never busy).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevView {
    /// Device name (`dax0.N`); empty for unclaimed capacity.
    pub name: String,
    /// Tag (nil for untagged capacity).
    pub uuid: Uuid,
    /// Total size in bytes.
    pub size: u64,
    /// NUMA node.
    pub node: u64,
    /// `VIRTIO_MEM_EXTENT_F_*` flags.
    pub flags: u64,
    /// Read latency, ns.
    pub read_latency_ns: u64,
    /// Write latency, ns.
    pub write_latency_ns: u64,
    /// Read bandwidth, MB/s.
    pub read_bandwidth_mbps: u64,
    /// Write bandwidth, MB/s.
    pub write_bandwidth_mbps: u64,
    /// `SOURCE_*` class.
    pub class: u64,
    /// Marked busy by the guest.
    pub busy: bool,
    /// Extents in sequence order.
    pub extents: Vec<ExtentView>,
    /// Poisoned ranges.
    pub poison: Vec<PoisonView>,
}

/// Parses `id@gpa+len,...` (or `-` for none).
fn triples(s: &str) -> Option<Vec<(u64, u64, u64)>> {
    if s == "-" {
        return Some(Vec::new());
    }
    s.split(',')
        .map(|t| {
            let (id, rest) = t.split_once('@')?;
            let (a, l) = rest.split_once('+')?;
            Some((num(id)?, num(a)?, num(l)?))
        })
        .collect()
}

impl DevView {
    /// Parses a `DEV ...` line (a device) or a `FREE ...` line (unclaimed capacity).
    pub fn parse(line: &str) -> Option<DevView> {
        let name = match line.split_whitespace().next()? {
            "DEV" => field(line, "name")?.to_string(),
            "FREE" => String::new(),
            _ => return None,
        };
        let n = |k| field(line, k).and_then(num);
        Some(DevView {
            name,
            uuid: Uuid::parse_str(field(line, "uuid")?).ok()?,
            size: n("size")?,
            node: n("node")?,
            flags: n("flags")?,
            read_latency_ns: n("rl")?,
            write_latency_ns: n("wl")?,
            read_bandwidth_mbps: n("rb")?,
            write_bandwidth_mbps: n("wb")?,
            class: n("class")?,
            busy: n("busy")? != 0,
            extents: triples(field(line, "extents")?)?
                .into_iter()
                .map(|(id, gpa, len)| ExtentView { id, gpa, len })
                .collect(),
            poison: triples(field(line, "poison")?)?
                .into_iter()
                .map(|(id, offset, len)| PoisonView { id, offset, len })
                .collect(),
        })
    }

    /// True if the device holds extent `id`.
    pub fn has_extent(&self, id: u64) -> bool {
        self.extents.iter().any(|e| e.id == id)
    }
}

/// The guest's view of its dax region, from one [`Command::View`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestView {
    /// Devices in claim order.
    pub devices: Vec<DevView>,
    /// Offer chains the driver collected but has not answered.
    pub pending_chains: u64,
    /// Accepted capacity the region holds unclaimed, in acceptance order.
    pub unclaimed: Vec<DevView>,
    /// The region's seed, the device the next claim fills.
    pub seed: String,
}

impl GuestView {
    /// Builds the view from the console lines a `View` command printed (its `DEV` and `FREE`
    /// lines and the closing `VIEW` line); `None` if the closing line is missing.
    pub fn parse(lines: &[String]) -> Option<GuestView> {
        let (devices, unclaimed) = lines
            .iter()
            .filter_map(|l| DevView::parse(l))
            .partition(|d| !d.name.is_empty());
        let (pending, seed) = lines.iter().rev().find_map(|l| match Report::parse(l) {
            Some(Report::View { pending, .. }) => Some((pending, field(l, "seed").unwrap_or("").to_string())),
            _ => None,
        })?;
        Some(GuestView {
            devices,
            pending_chains: pending,
            unclaimed,
            seed,
        })
    }

    /// The device carrying `tag`.
    pub fn by_tag(&self, tag: &Uuid) -> Option<&DevView> {
        self.devices.iter().find(|d| d.uuid == *tag && !tag.is_nil())
    }

    /// The unclaimed group carrying `tag`.
    pub fn unclaimed_by_tag(&self, tag: &Uuid) -> Option<&DevView> {
        self.unclaimed.iter().find(|d| d.uuid == *tag && !tag.is_nil())
    }

    /// The device, or else the unclaimed group, holding extent `id`.
    pub fn by_extent(&self, id: u64) -> Option<&DevView> {
        self.devices
            .iter()
            .chain(&self.unclaimed)
            .find(|d| d.has_extent(id))
    }
}

/// One accepted extent as the guest's driver holds it (an `EXT` line of [`Command::Extents`]):
/// the record fields SPEC.md T-NEST-1 has a nested VMM copy, and its device's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtentDetail {
    /// Name of the device holding it (`dax0.N`); `None` while unclaimed (`dev=-`).
    pub device: Option<String>,
    /// Tag (nil for untagged capacity).
    pub uuid: Uuid,
    /// The device is marked busy in the guest.
    pub busy: bool,
    /// The host asked for the device back and the guest has not released it yet.
    pub release_requested: bool,
    /// Extent id.
    pub id: u64,
    /// Guest-physical address.
    pub gpa: u64,
    /// Length in bytes.
    pub len: u64,
    /// `VIRTIO_MEM_EXTENT_F_*` flags.
    pub flags: u32,
    /// Sequence number within its tag group.
    pub seq: u16,
    /// NUMA node.
    pub node: u16,
    /// `SOURCE_*` class.
    pub class: u8,
    /// Read latency, ns.
    pub read_latency_ns: u32,
    /// Write latency, ns.
    pub write_latency_ns: u32,
    /// Read bandwidth, MB/s.
    pub read_bandwidth_mbps: u32,
    /// Write bandwidth, MB/s.
    pub write_bandwidth_mbps: u32,
    /// Poisoned ranges as (offset in the extent, length).
    pub poison: Vec<(u64, u64)>,
}

impl ExtentDetail {
    /// Parses an `EXT ...` line.
    pub fn parse(line: &str) -> Option<ExtentDetail> {
        if line.split_whitespace().next()? != "EXT" {
            return None;
        }
        let n = |k| field(line, k).and_then(num);
        let n32 = |k| n(k).and_then(|v| u32::try_from(v).ok());
        let n16 = |k| n(k).and_then(|v| u16::try_from(v).ok());
        Some(ExtentDetail {
            device: Some(field(line, "dev")?)
                .filter(|d| *d != "-")
                .map(str::to_string),
            uuid: Uuid::parse_str(field(line, "uuid")?).ok()?,
            busy: n("busy")? != 0,
            release_requested: n("rr")? != 0,
            id: n("id")?,
            gpa: n("gpa")?,
            len: n("len")?,
            flags: n32("flags")?,
            seq: n16("seq")?,
            node: n16("node")?,
            class: n("class").and_then(|v| u8::try_from(v).ok())?,
            read_latency_ns: n32("rl")?,
            write_latency_ns: n32("wl")?,
            read_bandwidth_mbps: n32("rb")?,
            write_bandwidth_mbps: n32("wb")?,
            poison: triples(field(line, "poison")?)?
                .into_iter()
                .map(|(_, offset, len)| (offset, len))
                .collect(),
        })
    }

    /// Parses the console lines of one [`Command::Extents`]; `None` without the closing
    /// `EXTENTS` line or if its count disagrees with the `EXT` lines.
    pub fn parse_all(lines: &[String]) -> Option<Vec<ExtentDetail>> {
        let all: Vec<ExtentDetail> = lines.iter().filter_map(|l| ExtentDetail::parse(l)).collect();
        let count = lines.iter().rev().find_map(|l| match Report::parse(l) {
            Some(Report::Extents { count }) => Some(count),
            _ => None,
        })?;
        (u64::try_from(all.len()).ok()? == count).then_some(all)
    }
}

/// Errors driving the test guest.
#[derive(Debug, thiserror::Error)]
pub enum TestGuestError {
    /// Setting up the VM failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// Running the vCPU failed.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// The command cannot be encoded.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The guest stopped other than by halting.
    #[error("test guest did not halt: {outcome:?}; console:\n{console}")]
    NotHalted {
        /// How the run ended.
        outcome: RunOutcome,
        /// Console output so far.
        console: String,
    },
    /// The guest halted without printing a result line.
    #[error("test guest printed no result for {cmd:?}; console:\n{console}")]
    NoReport {
        /// The command.
        cmd: Command,
        /// Console output so far.
        console: String,
    },
}

/// A VM running the test guest on the calling thread, without the tagged device (see
/// [`crate::runtime::Vmm`] for the full VMM).
#[derive(Debug)]
pub struct TestGuest {
    /// The vCPU (declared before the VM: dropped first).
    pub vcpu: Vcpu,
    /// The VM.
    pub vm: Vm,
    control: Arc<Mutex<TestControl>>,
    /// Limit for each run.
    pub limit: RunLimit,
}

impl TestGuest {
    /// Creates a VM, loads the guest, attaches the test-control device; runs nothing yet.
    pub fn new(config: VmConfig) -> Result<Self, TestGuestError> {
        let mut vm = Vm::new(config)?;
        vm.load_image(image::LOAD_ADDR, image::BYTES)?;
        let control = Arc::new(Mutex::new(TestControl::new(Arc::new(Condvar::new()))));
        vm.attach_mmio(CONTROL_BASE, CONTROL_SIZE, control.clone())?;
        let vcpu = vm.create_vcpu(image::ENTRY, layout::BOOT_STACK_TOP)?;
        Ok(TestGuest {
            vcpu,
            vm,
            control,
            limit: RunLimit::default(),
        })
    }

    /// Boots the guest until it first waits for commands (after its `HELLO` line).
    pub fn boot(config: VmConfig) -> Result<Self, TestGuestError> {
        let mut g = Self::new(config)?;
        g.run_until_halt()?;
        Ok(g)
    }

    /// Runs the vCPU until the guest halts; any other outcome is an error.
    pub fn run_until_halt(&mut self) -> Result<(), TestGuestError> {
        match self.vcpu.run(self.limit)? {
            RunOutcome::Halted => Ok(()),
            outcome => Err(TestGuestError::NotHalted {
                outcome,
                console: self.vm.console().contents(),
            }),
        }
    }

    /// Runs one command and returns the guest's result line, parsed.
    pub fn command(&mut self, cmd: Command) -> Result<Report, TestGuestError> {
        let before = self.vm.console().line_count();
        self.control
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(&cmd)?;
        self.run_until_halt()?;
        self.vm
            .console()
            .lines_from(before)
            .iter()
            .filter_map(|l| Report::parse(l))
            .next_back()
            .ok_or_else(|| TestGuestError::NoReport {
                cmd,
                console: self.vm.console().contents(),
            })
    }

    /// Reads `len` bytes at `gpa` in the guest.
    pub fn read(&mut self, gpa: u64, len: u64) -> Result<Report, TestGuestError> {
        self.command(Command::Read { gpa, len })
    }

    /// Fills `len` bytes at `gpa` with `byte` in the guest.
    pub fn write(&mut self, gpa: u64, len: u64, byte: u8) -> Result<Report, TestGuestError> {
        self.command(Command::Write { gpa, len, byte })
    }

    /// Console lines so far.
    pub fn console_lines(&self) -> Vec<String> {
        self.vm.console().lines()
    }
}

/// Byte sum as the guest computes it, for comparing with [`Report::Read`].
pub fn byte_sum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0u64, |s, &b| s.wrapping_add(u64::from(b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_memory_reports() {
        assert_eq!(
            Report::parse("READ gpa=0x100000000 len=16 sum=0x2a first=0102ff"),
            Some(Report::Read {
                gpa: 1 << 32,
                len: 16,
                sum: 42,
                first: vec![1, 2, 0xff]
            })
        );
        assert_eq!(
            Report::parse("WROTE gpa=0x10 len=4 byte=0x5a"),
            Some(Report::Wrote {
                gpa: 16,
                len: 4,
                byte: 0x5a
            })
        );
        assert_eq!(
            Report::parse("ALLOC len=10 sum=0x2d"),
            Some(Report::Alloc { len: 10, sum: 45 })
        );
        assert!(matches!(
            Report::parse("FAULT vector=14 rip=0x1 cr2=0x2"),
            Some(Report::Fault(_))
        ));
        assert_eq!(Report::parse("HELLO tagmem test guest"), None);
        assert_eq!(Report::parse("READ gpa=zz len=1 sum=0 first="), None);
    }

    #[test]
    fn parse_driver_reports() {
        assert_eq!(
            Report::parse("POLLED events=3"),
            Some(Report::Polled { events: 3 })
        );
        assert_eq!(
            Report::parse("VIEW devices=2 pending=0"),
            Some(Report::View {
                devices: 2,
                pending: 0
            })
        );
        assert_eq!(
            Report::parse("RELEASED count=2"),
            Some(Report::Released { count: 2 })
        );
        assert!(matches!(
            Report::parse("RELEASE error=unknown"),
            Some(Report::ReleaseFailed(_))
        ));
        assert_eq!(Report::parse("BUSY ok=1"), Some(Report::Busy { ok: true }));
        assert_eq!(Report::parse("EVT dax0.0: created"), None);
        let line = "DEV name=dax0.1 uuid=00000000-0000-0000-0000-000000000005 size=0x400000 node=1 \
                    flags=0x3 rl=10 wl=20 rb=30 wb=40 class=4 busy=0 \
                    extents=3@0x100000000+0x200000,4@0x100200000+0x200000 poison=3@0x1000+0x1000";
        let d = DevView::parse(line).unwrap();
        assert_eq!(d.uuid, Uuid::from_u128(5));
        assert_eq!(d.extents.len(), 2);
        assert_eq!(
            d.extents[1],
            ExtentView {
                id: 4,
                gpa: 0x1_0020_0000,
                len: 0x20_0000
            }
        );
        assert_eq!(
            d.poison,
            vec![PoisonView {
                id: 3,
                offset: 0x1000,
                len: 0x1000
            }]
        );
        let free = "FREE region=region0 uuid=00000000-0000-0000-0000-000000000006 size=0x200000 node=1 \
                    flags=0x0 rl=0 wl=0 rb=0 wb=0 class=1 busy=0 extents=9@0x100400000+0x200000 poison=-";
        let lines = vec![
            line.to_string(),
            free.to_string(),
            "VIEW devices=1 pending=2 unclaimed=1 seed=dax0.2".to_string(),
        ];
        let v = GuestView::parse(&lines).unwrap();
        assert_eq!((v.pending_chains, v.seed.as_str()), (2, "dax0.2"));
        assert_eq!(v.by_tag(&Uuid::from_u128(5)).unwrap().name, "dax0.1");
        assert!(v.by_extent(4).is_some());
        assert_eq!(v.unclaimed.len(), 1);
        let u = v.unclaimed_by_tag(&Uuid::from_u128(6)).unwrap();
        assert_eq!((u.name.as_str(), u.extents[0].id), ("", 9));
        assert!(v.by_tag(&Uuid::from_u128(6)).is_none(), "unclaimed is no device");
        assert_eq!(v.by_extent(9), Some(u));
        assert!(GuestView::parse(&lines[..2]).is_none());
    }

    #[test]
    fn claim_commands_encode_and_parse() {
        let tag = Uuid::from_u128(0x0102);
        assert_eq!(Command::Claim(tag).encode(), (CMD_CLAIM, vec![0, 0x0201 << 48]));
        assert_eq!(Command::Claim(Uuid::nil()).encode(), (CMD_CLAIM, vec![0, 0]));
        assert_eq!(Command::ClaimMode(true).encode(), (CMD_CLAIM_MODE, vec![1]));
        assert_eq!(
            Report::parse(
                "CLAIMED name=dax0.3 uuid=00000000-0000-0000-0000-000000000102 size=0x400000 extents=2"
            ),
            Some(Report::Claimed {
                name: "dax0.3".into(),
                size: 0x40_0000,
            })
        );
        assert!(matches!(
            Report::parse("CLAIM error=no unclaimed capacity carries this tag"),
            Some(Report::ClaimFailed(_))
        ));
        assert_eq!(
            Report::parse("CLAIMMODE auto=0"),
            Some(Report::ClaimMode { auto: false })
        );
    }

    #[test]
    fn commands_encode() {
        let tag = Uuid::from_u128(0x0102);
        let (code, args) = Command::Policy(Policy::RejectTag(tag)).encode();
        assert_eq!(code, CMD_POLICY);
        assert_eq!(args, vec![POLICY_REJECT_TAG, 0, 0x0201 << 48]);
        let (code, args) = Command::Busy {
            target: Target::Extent(9),
            busy: true,
        }
        .encode();
        assert_eq!((code, args), (CMD_BUSY, vec![1, TARGET_EXTENT, 9]));
        let mut c = TestControl::default();
        let too_many = Command::Policy(Policy::AcceptIds((0..64).collect()));
        assert_eq!(c.push(&too_many), Err(CommandError::TooManyArgs(65)));
    }

    #[test]
    fn control_device_pops_latches_and_signals_done() {
        let mut c = TestControl::default();
        let seq = c
            .push(&Command::Write {
                gpa: 0x1000,
                len: 2,
                byte: 7,
            })
            .unwrap();
        let read = |c: &mut TestControl, reg| {
            let mut b = [0u8; 8];
            c.read(reg, &mut b);
            u64::from_le_bytes(b)
        };
        assert_eq!(read(&mut c, REG_MAGIC), CONTROL_MAGIC);
        assert_eq!(read(&mut c, REG_COMMAND), CMD_WRITE);
        assert_eq!(read(&mut c, REG_SEQ), seq);
        assert_eq!(read(&mut c, REG_ARGC), 3);
        assert_eq!(
            [
                read(&mut c, REG_ARG0),
                read(&mut c, REG_ARG1),
                read(&mut c, REG_ARG2)
            ],
            [0x1000, 2, 7]
        );
        assert_eq!(
            [
                read(&mut c, REG_ARG_NEXT),
                read(&mut c, REG_ARG_NEXT),
                read(&mut c, REG_ARG_NEXT),
                read(&mut c, REG_ARG_NEXT)
            ],
            [0x1000, 2, 7, 0]
        );
        c.write(REG_DONE, &seq.to_le_bytes());
        assert_eq!(c.done(), seq);
        assert_eq!(read(&mut c, REG_COMMAND), CMD_IDLE);
        assert_eq!(read(&mut c, REG_ARG0), 0);
        assert_eq!(read(&mut c, REG_SEQ), 0);
    }

    #[test]
    fn guest_register_offsets_match_virtio_bindings() {
        use virtio_bindings::virtio_mmio as v;
        let pairs = [
            (mmio_reg::MAGIC_VALUE, v::VIRTIO_MMIO_MAGIC_VALUE),
            (mmio_reg::VERSION, v::VIRTIO_MMIO_VERSION),
            (mmio_reg::DEVICE_ID, v::VIRTIO_MMIO_DEVICE_ID),
            (mmio_reg::DEVICE_FEATURES, v::VIRTIO_MMIO_DEVICE_FEATURES),
            (mmio_reg::DEVICE_FEATURES_SEL, v::VIRTIO_MMIO_DEVICE_FEATURES_SEL),
            (mmio_reg::DRIVER_FEATURES, v::VIRTIO_MMIO_DRIVER_FEATURES),
            (mmio_reg::DRIVER_FEATURES_SEL, v::VIRTIO_MMIO_DRIVER_FEATURES_SEL),
            (mmio_reg::QUEUE_SEL, v::VIRTIO_MMIO_QUEUE_SEL),
            (mmio_reg::QUEUE_NUM_MAX, v::VIRTIO_MMIO_QUEUE_NUM_MAX),
            (mmio_reg::QUEUE_NUM, v::VIRTIO_MMIO_QUEUE_NUM),
            (mmio_reg::QUEUE_READY, v::VIRTIO_MMIO_QUEUE_READY),
            (mmio_reg::QUEUE_NOTIFY, v::VIRTIO_MMIO_QUEUE_NOTIFY),
            (mmio_reg::INTERRUPT_STATUS, v::VIRTIO_MMIO_INTERRUPT_STATUS),
            (mmio_reg::INTERRUPT_ACK, v::VIRTIO_MMIO_INTERRUPT_ACK),
            (mmio_reg::STATUS, v::VIRTIO_MMIO_STATUS),
            (mmio_reg::QUEUE_DESC_LOW, v::VIRTIO_MMIO_QUEUE_DESC_LOW),
            (mmio_reg::QUEUE_AVAIL_LOW, v::VIRTIO_MMIO_QUEUE_AVAIL_LOW),
            (mmio_reg::QUEUE_USED_LOW, v::VIRTIO_MMIO_QUEUE_USED_LOW),
            (mmio_reg::CONFIG_GENERATION, v::VIRTIO_MMIO_CONFIG_GENERATION),
            (mmio_reg::CONFIG, v::VIRTIO_MMIO_CONFIG),
        ];
        for (guest, bindings) in pairs {
            assert_eq!(guest, u64::from(bindings));
        }
        assert_eq!(Some(VIRTIO_MEM_MMIO_BASE), layout::virtio_mmio_addr(0));
    }

    #[test]
    fn image_is_embedded() {
        assert!(!image::BYTES.is_empty());
    }

    #[test]
    fn parse_extent_details() {
        let line = "EXT dev=dax0.1 uuid=00000000-0000-0000-0000-000000000005 busy=1 rr=0 id=7 \
                    gpa=0x4000000000 len=0x200000 flags=0x1 seq=1 node=2 class=1 rl=250 wl=300 \
                    rb=25000 wb=12000 poison=7@0x1000+0x1000";
        let e = ExtentDetail::parse(line).unwrap();
        assert_eq!(
            (e.device.as_deref(), e.id, e.gpa, e.seq, e.class),
            (Some("dax0.1"), 7, 0x40_0000_0000, 1, 1)
        );
        let free = ExtentDetail::parse(&line.replace("dev=dax0.1", "dev=-")).unwrap();
        assert_eq!(free.device, None, "unclaimed");
        assert!(e.busy && !e.release_requested);
        assert_eq!((e.read_latency_ns, e.write_bandwidth_mbps), (250, 12_000));
        assert_eq!(e.poison, vec![(0x1000, 0x1000)]);
        let lines = vec![line.to_string(), "EXTENTS count=1".to_string()];
        assert_eq!(ExtentDetail::parse_all(&lines).unwrap(), vec![e]);
        assert!(ExtentDetail::parse_all(&lines[..1]).is_none());
        let wrong = vec![line.to_string(), "EXTENTS count=2".to_string()];
        assert!(ExtentDetail::parse_all(&wrong).is_none());
        assert_eq!(Command::Extents.encode(), (CMD_EXTENTS, Vec::new()));
    }

    #[test]
    fn benchmark_commands_encode_and_parse() {
        assert_eq!(
            Command::ReadLoop {
                gpa: 8,
                len: 16,
                reps: 2
            }
            .encode(),
            (CMD_READ_LOOP, vec![8, 16, 2])
        );
        assert_eq!(
            Command::WriteLoop {
                gpa: 8,
                len: 16,
                reps: 2,
                byte: 0xab
            }
            .encode(),
            (CMD_WRITE_LOOP, vec![8, 16, 2, 0xab])
        );
        assert_eq!(
            Command::BasePlug {
                addr: 1 << 40,
                requests: 3,
                blocks: 64
            }
            .encode(),
            (CMD_BASE_PLUG, vec![1 << 40, 3, 64])
        );
        assert_eq!(Command::BaseUnplugAll.encode(), (CMD_BASE_UNPLUG_ALL, Vec::new()));
        assert_eq!(
            Report::parse("READLOOP gpa=0x8 len=16 reps=2 acc=0x2a"),
            Some(Report::ReadLoop {
                gpa: 8,
                len: 16,
                reps: 2,
                acc: 42
            })
        );
        assert_eq!(
            Report::parse("WROTELOOP gpa=0x8 len=16 reps=2"),
            Some(Report::WroteLoop {
                gpa: 8,
                len: 16,
                reps: 2
            })
        );
        assert_eq!(
            Report::parse("PLUGGED addr=0x10000000000 requests=3 acked=2 resp=1 first=5a"),
            Some(Report::Plugged {
                addr: 1 << 40,
                requests: 3,
                acked: 2,
                resp: 1,
                first: vec![0x5a]
            })
        );
        assert_eq!(
            Report::parse("PLUGGED addr=0x0 requests=1 acked=0 resp=3 first="),
            Some(Report::Plugged {
                addr: 0,
                requests: 1,
                acked: 0,
                resp: 3,
                first: Vec::new()
            })
        );
        assert_eq!(
            Report::parse("UNPLUGGED resp=0"),
            Some(Report::Unplugged { resp: 0 })
        );
        assert_eq!(Command::Reinit.encode(), (CMD_REINIT, Vec::new()));
        assert_eq!(
            Report::parse("REINIT ok=1 devices=2 extents=3"),
            Some(Report::Reinit {
                devices: 2,
                extents: 3
            })
        );
        assert!(matches!(
            Report::parse("REINIT ok=0 error=device refused DRIVER_OK"),
            Some(Report::ReinitFailed(_))
        ));
    }
}

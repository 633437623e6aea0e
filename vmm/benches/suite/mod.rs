//! The tagmem benchmark suite (issue 7): hot-add, release, throughput, access and overhead of
//! tagged capacity on real KVM, side by side with the base virtio-mem block-plug path on the same
//! device and guest, and with the raw floor (mmap + one `KVM_SET_USER_MEMORY_REGION`).
//!
//! Everything runs in one VMM with the bundled test guest, whose reference driver does the
//! guest's part. Times are host wall-clock times from the host's request to the guest's report
//! (its result line), as medians over repeated runs with min and max. See `docs/performance.md`.

#![allow(dead_code)]

pub mod alloc;
pub mod callgrind;
mod chart;
pub mod counts;
mod doc;
mod machine;
pub mod report;

use report::{Report, Stat, Target, Unit};
use std::error::Error;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tagmem_device::test_utils::{Harness, NullMapper};
use tagmem_device::{
    ExtentSpec, HostEvent, Mapping, SourceClass, SourceId, SourceRef, TaggedWindow, Target as Tgt,
};
use tagmem_rig::{Command, Report as GuestReport, TestGuestVm};
use tagmem_vmm::memslot::{KvmMemslotMapper, SlotRegistrar};
use tagmem_vmm::{Backing, BackingLifetime, VmmConfig};
use uuid::Uuid;

type Res<T> = Result<T, Box<dyn Error>>;
/// One guest command of the base path: bytes plugged before it, requests, seconds.
type Chunk = (u64, u64, f64);

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;
/// Extent granule and base block size.
const BLOCK: u64 = 2 * MIB;
/// Linux's memory block: the base path plugs one per request.
const MEMORY_BLOCK: u64 = 128 * MIB;
/// Most PLUG requests per guest command (the host checks its time budget between commands).
const PLUG_CHUNK: u64 = 1024;

/// Extent sizes of the hot-add sweep, with their labels.
pub const SIZES: [(u64, &str); 5] = [
    (2 * MIB, "2MiB"),
    (128 * MIB, "128MiB"),
    (4 * GIB, "4GiB"),
    (64 * GIB, "64GiB"),
    (TIB, "1TiB"),
];
/// Extents present at which the per-extent cost is measured.
pub const LEVELS: [u64; 4] = [10, 100, 1_000, 10_000];
/// Chain lengths of the throughput measurement.
pub const CHAINS: [u64; 3] = [1, 10, 100];

// Guest-physical layout: tagged window [4 GiB, 2 TiB), base region [2 TiB, 3 TiB).
const WINDOW: TaggedWindow = TaggedWindow {
    addr: 4 * GIB,
    size: 2 * TIB - 4 * GIB,
};
const BASE_GPA: u64 = 2 * TIB;
const BASE_SIZE: u64 = TIB;
/// Where the sweep's extent (up to 1 TiB) goes.
const SWEEP_GPA: u64 = TIB;
/// Extents present for the scaling run: 4 MiB apart from here (up to 40 GiB).
const SCALE_GPA: u64 = 8 * GIB;
/// The extra extent offered at each level of the scaling run.
const PROBE_GPA: u64 = 60 * GIB;
/// Throughput chains (up to 100 extents, 4 MiB apart).
const CHAIN_GPA: u64 = 64 * GIB;
/// The 1 GiB extent of the access measurement.
const ACCESS_GPA: u64 = 512 * GIB;
/// Boot RAM the access measurement uses (above the page tables, below the MMIO window).
const BOOT_SAMPLE_GPA: u64 = 40 * MIB;
/// Backing id of the base region.
const BASE_SOURCE: SourceId = SourceId(1);
/// First byte of every backing, checked by the guest's read.
const MARKER: u8 = 0x5a;

/// How the hardware-independent counts are taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CountsMode {
    /// In a child process under `valgrind --tool=callgrind` (host instructions included), or in
    /// this process without instructions when valgrind is missing or fails.
    Callgrind,
    /// In this process, without host instructions (e.g. inside `cargo test`).
    InProcess,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Few iterations and small sizes (CI).
    pub quick: bool,
    /// Where the JSON and the chart go.
    pub out_dir: PathBuf,
    /// How to take the counts.
    pub counts: CountsMode,
    /// Take the counts only (no timed measurements).
    pub counts_only: bool,
}

/// Sizes, counts and budgets of one run.
#[derive(Clone, Debug)]
struct Plan {
    quick: bool,
    /// Sizes of the sweep that run.
    sizes: Vec<u64>,
    /// Repetitions of each hot-add measurement.
    iters: usize,
    /// Repetitions of the base path for sizes of at most 4 GiB.
    base_iters_small: usize,
    /// Repetitions of the base path at 64 GiB.
    base_iters_large: usize,
    /// Time allowed for the base path at 1 TiB before the rest is extrapolated.
    base_budget: Duration,
    /// Repetitions of each chain length.
    chain_iters: usize,
    /// Levels of the scaling run that run.
    levels: Vec<u64>,
    /// Extents offered at each level.
    probes: usize,
    /// Time allowed for populating the scaling run.
    populate_budget: Duration,
    /// Guest access sample, bytes.
    guest_sample: u64,
    /// Passes over the guest sample per timed command.
    guest_passes: u64,
    /// Guest access repetitions.
    access_iters: usize,
    /// Host memcpy span, bytes.
    host_span: u64,
    /// Host memcpy repetitions.
    host_iters: usize,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                quick,
                sizes: vec![2 * MIB, 128 * MIB],
                iters: 2,
                base_iters_small: 2,
                base_iters_large: 0,
                base_budget: Duration::ZERO,
                chain_iters: 2,
                levels: vec![10, 100],
                probes: 2,
                populate_budget: Duration::from_secs(60),
                guest_sample: 64 * 1024,
                guest_passes: 2,
                access_iters: 2,
                host_span: 64 * MIB,
                host_iters: 2,
            }
        } else {
            Plan {
                quick,
                sizes: SIZES.iter().map(|s| s.0).collect(),
                iters: 5,
                base_iters_small: 5,
                base_iters_large: 1,
                base_budget: Duration::from_secs(300),
                chain_iters: 5,
                levels: vec![10, 100, 1_000, 10_000],
                probes: 5,
                populate_budget: Duration::from_secs(480),
                guest_sample: MIB,
                guest_passes: 1,
                access_iters: 7,
                host_span: GIB,
                host_iters: 3,
            }
        }
    }
}

fn label(size: u64) -> &'static str {
    SIZES.iter().find(|s| s.0 == size).map_or("?", |s| s.1)
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn fmt_bytes(b: u64) -> String {
    match b {
        b if b >= TIB && b % TIB == 0 => format!("{} TiB", b / TIB),
        b if b >= GIB && b % GIB == 0 => format!("{} GiB", b / GIB),
        b if b >= MIB && b % MIB == 0 => format!("{} MiB", b / MIB),
        b => format!("{} KiB", b / 1024),
    }
}

fn us(v: u64) -> Res<usize> {
    Ok(usize::try_from(v)?)
}

/// A sparse memfd of `size` bytes whose first byte is [`MARKER`] (and, if asked, the byte at
/// `also`).
fn memfd(size: u64, also: Option<u64>) -> Res<Backing> {
    let b = Backing::memfd("tagmem-bench", size)?;
    b.file_handle().write_all_at(&[MARKER], 0)?;
    if let Some(off) = also {
        b.file_handle().write_all_at(&[MARKER], off)?;
    }
    Ok(b)
}

fn spec(tag: Uuid, id: SourceId, offset: u64, gpa: u64, length: u64, seq: u16) -> ExtentSpec {
    ExtentSpec {
        gpa: Some(gpa),
        seq,
        class: SourceClass::File,
        ..ExtentSpec::new(tag, length, SourceRef { id, offset })
    }
}

/// A slot registrar that changes nothing: the memslot mapper's own bookkeeping, measured alone.
struct NoKvm;

impl SlotRegistrar for NoKvm {
    unsafe fn set_region(
        &self,
        _region: kvm_bindings::kvm_userspace_memory_region,
    ) -> Result<(), kvm_ioctls::Error> {
        Ok(())
    }
}

/// The running VMM and the ids handed out so far.
struct Bench {
    vmm: TestGuestVm,
    plan: Plan,
    next_id: std::cell::Cell<u64>,
}

impl Bench {
    fn start(plan: Plan) -> Res<Bench> {
        Self::start_with(plan, None, BASE_SIZE)
    }

    /// Starts the VMM; `timer_period` overrides how often the event loop polls offer timers
    /// (the counts run sets it long, so no timer tick lands inside a counted operation).
    fn start_with(plan: Plan, timer_period: Option<Duration>, base_size: u64) -> Res<Bench> {
        let mut config = VmmConfig::default();
        if let Some(p) = timer_period {
            config.timer_period = p;
        }
        config.device.tagged = Some(WINDOW);
        config.device.block_size = BLOCK;
        config.device.region_addr = BASE_GPA;
        config.device.region_size = base_size;
        config.device.region_source = Some(SourceRef {
            id: BASE_SOURCE,
            offset: 0,
        });
        config.device.requested_size = 0;
        let vmm = TestGuestVm::new(config)?.with_command_timeout(Duration::from_secs(600));
        vmm.wait_ready()?;
        // Vmm::new registers the base region's backing (BASE_SOURCE, a sparse memfd); mark its
        // first byte so the guest can tell it reads the backing.
        vmm.mapper()
            .lock()
            .backing(BASE_SOURCE)
            .ok_or("the base region has no backing")?
            .file_handle()
            .write_all_at(&[MARKER], 0)?;
        // Driver log lines are test-guest instrumentation, not protocol: keep them off the console.
        vmm.guest_command(Command::Verbose(false))?;
        Ok(Bench {
            vmm,
            plan,
            next_id: std::cell::Cell::new(100),
        })
    }

    fn id(&self) -> u64 {
        let v = self.next_id.get();
        self.next_id.set(v + 1);
        v
    }

    /// Has the guest read the byte at `gpa` until it is [`MARKER`] (its driver accepts the offer
    /// first); returns the number of reads.
    fn read_marker(&self, gpa: u64) -> Res<u32> {
        for n in 1..=100 {
            match self.vmm.guest_command(Command::Read { gpa, len: 1 })? {
                GuestReport::Read { first, .. } if first == [MARKER] => return Ok(n),
                GuestReport::Read { .. } => {}
                other => return Err(format!("guest read at {gpa:#x}: {other:?}").into()),
            }
        }
        Err(format!("the guest never saw the offered extent at {gpa:#x}").into())
    }

    /// Waits until `n` extents were reported released.
    fn wait_released(&self, n: usize) -> Res<()> {
        let mut seen = 0;
        while seen < n {
            let events = self.vmm.wait_host_events(Duration::from_secs(120));
            if events.is_empty() {
                return Err(format!("release: {seen} of {n} extents released after 120 s").into());
            }
            for e in events {
                match e {
                    HostEvent::Released { extents } => seen += extents.len(),
                    HostEvent::ChainDropped { reason, .. } => {
                        return Err(format!("chain dropped: {reason}").into())
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    fn slots_in(&self, gpa: u64, len: u64) -> usize {
        self.vmm
            .slots()
            .iter()
            .filter(|s| s.gpa < gpa + len && gpa < s.gpa + s.len)
            .count()
    }

    /// Offers `chain` (one tag), waits until the guest read the marker at `check`; returns the
    /// time from the offer.
    fn offer_and_read(&self, chain: &[ExtentSpec], check: u64) -> Res<Duration> {
        let t = Instant::now();
        self.vmm.offer(chain)?;
        self.read_marker(check)?;
        let d = t.elapsed();
        let events = self.vmm.take_host_events();
        for e in &events {
            if let HostEvent::ChainAnswered { rejected, .. } = e {
                if !rejected.is_empty() {
                    return Err(format!("the guest rejected {rejected:?}").into());
                }
            }
        }
        Ok(d)
    }

    /// Requests the release of `tag` and waits for all `n` extents; returns the time taken.
    fn release(&self, tag: Uuid, n: usize) -> Res<Duration> {
        let _ = self.vmm.take_host_events();
        let t = Instant::now();
        self.vmm.request_release(Tgt::Tag(tag))?;
        self.wait_released(n)?;
        Ok(t.elapsed())
    }

    // ------------------------------------------------------------------------------- context

    fn context(&self, rep: &mut Report) -> Res<()> {
        let mut rt = Vec::new();
        for _ in 0..self.plan.iters.max(5) {
            let t = Instant::now();
            self.vmm.guest_command(Command::Read {
                gpa: BOOT_SAMPLE_GPA,
                len: 1,
            })?;
            rt.push(secs(t.elapsed()));
        }
        rep.add(
            "context.roundtrip",
            "guest command round trip (READ 1 byte of boot RAM)",
            Unit::Secs,
            Stat::of(&rt),
            Target::None,
            "the fixed cost of asking the test guest anything: doorbell, vCPU wake-up, command \
             registers, result line",
        );
        // VM exits of one round trip, one tagged 2 MiB hot-add and one base 2 MiB plug.
        let exits = || self.vmm.exit_stats().exits;
        let e = exits();
        self.vmm.guest_command(Command::Read {
            gpa: BOOT_SAMPLE_GPA,
            len: 1,
        })?;
        let rt = exits() - e;
        let id = SourceId(self.id());
        let tag = Uuid::from_u128(u128::from(id.0));
        self.vmm
            .register_backing(id, memfd(BLOCK, None)?, BackingLifetime::PerExtent)?;
        let e = exits();
        self.offer_and_read(&[spec(tag, id, 0, SWEEP_GPA, BLOCK, 0)], SWEEP_GPA)?;
        let tagged = exits() - e;
        self.release(tag, 1)?;
        let e = exits();
        self.vmm.with_device(|d| d.set_requested_size(BLOCK))?;
        let r = self.vmm.guest_command(Command::BasePlug {
            addr: BASE_GPA,
            requests: 1,
            blocks: 1,
        })?;
        let base = exits() - e;
        if !matches!(r, GuestReport::Plugged { acked: 1, .. }) {
            return Err(format!("base plug: {r:?}").into());
        }
        self.vmm.guest_command(Command::BaseUnplugAll)?;
        self.vmm.with_device(|d| d.set_requested_size(0))?;
        for (id, what, n) in [
            (
                "context.exits_roundtrip",
                "VM exits, guest command round trip",
                rt,
            ),
            (
                "context.exits_tagged",
                "VM exits, tagged 2 MiB hot-add (incl. read)",
                tagged,
            ),
            (
                "context.exits_base",
                "VM exits, base 2 MiB plug (incl. read)",
                base,
            ),
        ] {
            rep.add(id, what, Unit::Count, Stat::derived(n as f64), Target::None, "");
        }
        Ok(())
    }

    // ------------------------------------------------------------------- hot-add and release

    /// The floor: mmap of `backing` plus one KVM_SET_USER_MEMORY_REGION through the memslot
    /// mapper on the same VM, then its deletion and munmap. Returns (add, remove, backing).
    fn floor(&self, backing: Backing, size: u64) -> Res<(f64, f64, Backing)> {
        let id = SourceId(self.id());
        let mapper = self.vmm.mapper();
        let m = Mapping {
            gpa: SWEEP_GPA,
            len: size,
            source: SourceRef { id, offset: 0 },
            readonly: false,
        };
        // Registering maps the backing into the host (the mmap); mapping creates the memslot.
        let add = {
            let mut g = mapper.lock();
            let t = Instant::now();
            g.register_backing(id, backing)?;
            g.map_range(&m)?;
            secs(t.elapsed())
        };
        let (del, b) = {
            let mut g = mapper.lock();
            let t = Instant::now();
            g.unmap_range(&m)?;
            let b = g.unregister_backing(id)?;
            (secs(t.elapsed()), b)
        };
        Ok((add, del, b))
    }

    /// The tagged path: one extent, one chain, from offer to the guest's read of its first byte;
    /// then its release. Returns (add, release).
    fn tagged(&self, backing: Backing, size: u64) -> Res<(f64, f64)> {
        let id = SourceId(self.id());
        let tag = Uuid::from_u128(u128::from(id.0));
        // Timed from the registration, which maps the backing into the host, as the floor is.
        let t = Instant::now();
        self.vmm
            .register_backing(id, backing, BackingLifetime::PerExtent)?;
        let add = t.elapsed().as_secs_f64()
            + secs(self.offer_and_read(&[spec(tag, id, 0, SWEEP_GPA, size, 0)], SWEEP_GPA)?);
        if self.slots_in(SWEEP_GPA, size) != 1 {
            return Err("the accepted extent is not one memslot".into());
        }
        let rel = self.release(tag, 1)?;
        if self.slots_in(SWEEP_GPA, size) != 0 || self.vmm.has_backing(id) {
            return Err("released extent still mapped or its backing still open".into());
        }
        Ok((add, secs(rel)))
    }

    fn hot_add(&self, rep: &mut Report) -> Res<()> {
        for &(size, l) in &SIZES {
            let ids = [
                ("hotadd.floor", "floor (c) mmap + memslot"),
                ("hotadd.tagged", "tagged (a) hot-add"),
                ("release.floor", "floor memslot delete + munmap"),
                ("release.tagged", "tagged release"),
            ];
            if !self.plan.sizes.contains(&size) {
                for (id, what) in ids {
                    rep.not_run(
                        &format!("{id}.{l}"),
                        &format!("{what}, {}", fmt_bytes(size)),
                        Unit::Secs,
                        Target::None,
                        "quick mode",
                    );
                }
                continue;
            }
            // One untimed floor first: the first memslot of a size makes the kernel allocate (and
            // this nested host fault in) its metadata; every path below then starts warm.
            let (cold, _, _) = self.floor(memfd(size, None)?, size)?;
            let (mut a, mut c, mut ra, mut rc) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            // Alternate which path goes first: on this host a memslot created right after
            // another was deleted can be cheaper or dearer (the kernel reuses freed metadata).
            for i in 0..self.plan.iters {
                if i % 2 == 0 {
                    let (add, del, b) = self.floor(memfd(size, None)?, size)?;
                    c.push(add);
                    rc.push(del);
                    let (add, rel) = self.tagged(b, size)?;
                    a.push(add);
                    ra.push(rel);
                } else {
                    let (add, rel) = self.tagged(memfd(size, None)?, size)?;
                    a.push(add);
                    ra.push(rel);
                    let (add, del, _) = self.floor(memfd(size, None)?, size)?;
                    c.push(add);
                    rc.push(del);
                }
            }
            rep.add(
                &format!("hotadd.floor.{l}"),
                &format!("floor (c) mmap + memslot, {}", fmt_bytes(size)),
                Unit::Secs,
                Stat::of(&c),
                Target::None,
                &format!(
                    "the first, untimed creation of this size took {}",
                    Unit::Secs.fmt(cold)
                ),
            );
            rep.add(
                &format!("hotadd.tagged.{l}"),
                &format!("tagged (a) hot-add, {}", fmt_bytes(size)),
                Unit::Secs,
                Stat::of(&a),
                Target::None,
                "",
            );
            rep.add(
                &format!("release.floor.{l}"),
                &format!("floor memslot delete + munmap, {}", fmt_bytes(size)),
                Unit::Secs,
                Stat::of(&rc),
                Target::None,
                "",
            );
            rep.add(
                &format!("release.tagged.{l}"),
                &format!("tagged release, {}", fmt_bytes(size)),
                Unit::Secs,
                Stat::of(&ra),
                Target::None,
                "",
            );
        }
        Ok(())
    }

    /// The base path at `size`: the host raises the requested size, the guest plugs 2 MiB blocks
    /// one 128 MiB memory block per request and reads the first byte. With a budget, stops once
    /// it is spent. Returns the time and, per guest command, (bytes plugged before, requests,
    /// seconds).
    fn base_once(&self, size: u64, budget: Option<Duration>) -> Res<(f64, Vec<Chunk>, bool)> {
        let (requests, blocks) = if size <= MEMORY_BLOCK {
            (1, size / BLOCK)
        } else {
            (size / MEMORY_BLOCK, MEMORY_BLOCK / BLOCK)
        };
        let step = blocks * BLOCK;
        let mut chunks = Vec::new();
        let mut done = 0;
        let t = Instant::now();
        self.vmm.with_device(|d| d.set_requested_size(size))?;
        while done < requests {
            let n = PLUG_CHUNK.min(requests - done);
            let tc = Instant::now();
            let r = self.vmm.guest_command(Command::BasePlug {
                addr: BASE_GPA + done * step,
                requests: n,
                blocks,
            })?;
            match r {
                GuestReport::Plugged { acked, first, .. }
                    if acked == n && (done > 0 || first == [MARKER]) => {}
                other => return Err(format!("base plug: {other:?}").into()),
            }
            chunks.push((done * step, n, secs(tc.elapsed())));
            done += n;
            if budget.is_some_and(|b| t.elapsed() > b) {
                break;
            }
        }
        let total = secs(t.elapsed());
        match self.vmm.guest_command(Command::BaseUnplugAll)? {
            GuestReport::Unplugged { resp: 0 } => {}
            other => return Err(format!("base unplug: {other:?}").into()),
        }
        self.vmm.with_device(|d| d.set_requested_size(0))?;
        if !self.vmm.slots().is_empty() {
            return Err("base region still mapped after UNPLUG_ALL".into());
        }
        Ok((total, chunks, done == requests))
    }

    /// The base path at every size. The memslot mapper maps the region's backing once, so a
    /// PLUG costs one memslot creation and the protocol; at 1 TiB (8,192 requests) the run may
    /// stop after its budget, and the rest is extrapolated at the measured time per request.
    /// Returns the 1 TiB partial run's time, if it was cut short.
    fn base_path(&self, rep: &mut Report) -> Res<Option<f64>> {
        let mut partial = None;
        for &(size, l) in &SIZES {
            let id = format!("hotadd.base.{l}");
            let what = format!("base (b) plug, {}", fmt_bytes(size));
            let iters = match size {
                s if s <= 4 * GIB => self.plan.base_iters_small,
                s if s < TIB => self.plan.base_iters_large,
                _ => 1,
            };
            if !self.plan.sizes.contains(&size) {
                rep.not_run(&id, &what, Unit::Secs, Target::None, "quick mode");
                continue;
            }
            let requests = (size / MEMORY_BLOCK).max(1);
            let note = if size > MEMORY_BLOCK {
                format!("{requests} PLUG requests of 64 blocks; {iters} repetition(s)")
            } else {
                format!("1 PLUG request of {} block(s)", size / BLOCK)
            };
            if size == TIB {
                let (spent, chunks, complete) = self.base_once(size, Some(self.plan.base_budget))?;
                if complete {
                    rep.add(&id, &what, Unit::Secs, Stat::of(&[spent]), Target::None, &note);
                    continue;
                }
                let done: u64 = chunks.iter().map(|c| c.1).sum();
                let est = spent / done.max(1) as f64 * requests as f64;
                partial = Some(spent);
                rep.add_estimate(
                    &id,
                    &what,
                    Unit::Secs,
                    est.max(spent),
                    Target::None,
                    &format!(
                        "not run whole: {done} of {requests} requests in the {} s budget; the rest \
                         extrapolated at the measured time per request",
                        self.plan.base_budget.as_secs()
                    ),
                );
                continue;
            }
            let mut t = Vec::new();
            for _ in 0..iters {
                t.push(self.base_once(size, None)?.0);
            }
            rep.add(&id, &what, Unit::Secs, Stat::of(&t), Target::None, &note);
        }
        Ok(partial)
    }

    fn ratios(&self, rep: &mut Report, partial: Option<f64>) {
        for &(size, l) in &SIZES {
            let a = rep.median(&format!("hotadd.tagged.{l}"));
            let b = rep.median(&format!("hotadd.base.{l}"));
            let c = rep.median(&format!("hotadd.floor.{l}"));
            let rel = rep.median(&format!("release.tagged.{l}"));
            let b_est = rep.get(&format!("hotadd.base.{l}")).is_some_and(|r| r.estimated);
            let sz = fmt_bytes(size);
            let id = format!("ratio.a_c.{l}");
            let what = format!("(a)/(c), {sz}");
            match (a, c) {
                (Some(a), Some(c)) => rep.add(
                    &id,
                    &what,
                    Unit::Ratio,
                    Stat::derived(a / c),
                    Target::AtMost(3.0),
                    "",
                ),
                _ => rep.not_run(&id, &what, Unit::Ratio, Target::AtMost(3.0), "quick mode"),
            }
            let id = format!("ratio.b_a.{l}");
            let what = format!("(b)/(a), {sz}");
            let target = if size == TIB {
                Target::AtLeast(100.0)
            } else {
                Target::None
            };
            match (a, b) {
                (Some(a), Some(b)) if b_est => {
                    let spent = partial.unwrap_or(0.0);
                    rep.add_estimate(
                        &id,
                        &what,
                        Unit::Ratio,
                        b / a,
                        target,
                        &format!(
                            "(b) is extrapolated; its partial run alone ({}) already gives (b)/(a) >= {:.0}",
                            Unit::Secs.fmt(spent),
                            spent / a
                        ),
                    )
                }
                (Some(a), Some(b)) => rep.add(&id, &what, Unit::Ratio, Stat::derived(b / a), target, ""),
                _ => rep.not_run(&id, &what, Unit::Ratio, target, "quick mode"),
            }
            let id = format!("ratio.release_add.{l}");
            let what = format!("release/add, {sz}");
            match (a, rel) {
                (Some(a), Some(r)) => rep.add(
                    &id,
                    &what,
                    Unit::Ratio,
                    Stat::derived(r / a),
                    Target::AtMost(2.0),
                    "",
                ),
                _ => rep.not_run(&id, &what, Unit::Ratio, Target::AtMost(2.0), "quick mode"),
            }
        }
        let (small, big) = (SIZES[0].1, SIZES[SIZES.len() - 1].1);
        let what = "(a) 1 TiB / (a) 2 MiB (flat in size)";
        match (
            rep.median(&format!("hotadd.tagged.{big}")),
            rep.median(&format!("hotadd.tagged.{small}")),
        ) {
            (Some(b), Some(s)) => rep.add(
                "ratio.a_flat",
                what,
                Unit::Ratio,
                Stat::derived(b / s),
                Target::AtMost(2.0),
                "",
            ),
            _ => rep.not_run(
                "ratio.a_flat",
                what,
                Unit::Ratio,
                Target::AtMost(2.0),
                "quick mode",
            ),
        }
    }

    // ------------------------------------------------------------------------------ throughput

    /// Offers a chain of `k` 2 MiB extents of one memfd (one tag), 4 MiB apart (`spaced`: one
    /// memslot each) or back to back (coalesced into one memslot), at `gpa`. Returns the time
    /// to the guest's read of the last extent's first byte, the memslots used, and the tag.
    fn chain(&self, k: u64, spaced: bool, gpa: u64) -> Res<(f64, usize, Uuid)> {
        let id = SourceId(self.id());
        let tag = Uuid::from_u128(u128::from(id.0));
        let stride = if spaced { 2 * BLOCK } else { BLOCK };
        self.vmm.register_backing(
            id,
            memfd(k * BLOCK, Some((k - 1) * BLOCK))?,
            BackingLifetime::PerExtent,
        )?;
        let chain: Vec<ExtentSpec> = (0..k)
            .map(|i| -> Res<ExtentSpec> {
                Ok(spec(
                    tag,
                    id,
                    i * BLOCK,
                    gpa + i * stride,
                    BLOCK,
                    u16::try_from(i)?,
                ))
            })
            .collect::<Res<_>>()?;
        let d = self.offer_and_read(&chain, gpa + (k - 1) * stride)?;
        Ok((secs(d), self.slots_in(gpa, k * stride), tag))
    }

    fn throughput(&self, rep: &mut Report) -> Res<()> {
        for &k in &CHAINS {
            let mut rates = Vec::new();
            let mut slots = 0;
            for _ in 0..self.plan.chain_iters {
                let (d, s, tag) = self.chain(k, true, CHAIN_GPA)?;
                rates.push(k as f64 / d);
                slots = s;
                self.release(tag, us(k)?)?;
            }
            let target = if k == 100 {
                Target::AtLeast(10_000.0)
            } else {
                Target::None
            };
            rep.add(
                &format!("throughput.chain{k}"),
                &format!("extents/s, chains of {k} x 2 MiB"),
                Unit::PerSec,
                Stat::of(&rates),
                target,
                "extents 4 MiB apart (one memslot each); from the offer to the guest's read of \
                 the last extent's first byte",
            );
            if k == 100 {
                rep.add(
                    "memslots.spaced100",
                    "memslots for 100 extents, spaced (no coalescing)",
                    Unit::Count,
                    Stat::derived(slots as f64),
                    Target::None,
                    "",
                );
            }
        }
        let mut rates = Vec::new();
        let mut slots = 0;
        for _ in 0..self.plan.chain_iters {
            let (d, s, tag) = self.chain(100, false, CHAIN_GPA)?;
            rates.push(100.0 / d);
            slots = s;
            self.release(tag, 100)?;
        }
        rep.add(
            "throughput.chain100_contiguous",
            "extents/s, chains of 100 x 2 MiB, back to back",
            Unit::PerSec,
            Stat::of(&rates),
            Target::None,
            "contiguous in guest and backing: the chain's accepted extents reach the mapper in \
             one call, merged into one memslot created once",
        );
        rep.add(
            "memslots.contiguous100",
            "memslots for 100 extents, back to back (coalescing)",
            Unit::Count,
            Stat::derived(slots as f64),
            Target::None,
            "",
        );
        Ok(())
    }

    // ---------------------------------------------------------------------------------- scaling

    /// The floor at the current extent count: one more 2 MiB memslot through the mapper (mmap +
    /// one ioctl), then its removal. Returns the time to add.
    fn floor_probe(&self) -> Res<f64> {
        let id = SourceId(self.id());
        let mapper = self.vmm.mapper();
        let backing = memfd(BLOCK, None)?;
        let m = Mapping {
            gpa: PROBE_GPA,
            len: BLOCK,
            source: SourceRef { id, offset: 0 },
            readonly: false,
        };
        let add = {
            let mut g = mapper.lock();
            let t = Instant::now();
            g.register_backing(id, backing)?;
            g.map_range(&m)?;
            secs(t.elapsed())
        };
        mapper.lock().unmap_range(&m)?;
        mapper.lock().unregister_backing(id)?;
        Ok(add)
    }

    fn scaling(&self, rep: &mut Report) -> Res<()> {
        let _ = self.vmm.take_host_events();
        let heap0 = alloc::live_bytes();
        let mut present = 0u64;
        let mut spent = Duration::ZERO;
        let mut per_extent_heap = None;
        let mut stopped: Option<String> = None;
        // (extents present, median per-extent cost) of the levels measured.
        let mut measured: Vec<(f64, f64)> = Vec::new();
        let mut est_hi = false;
        for &level in &LEVELS {
            let id = format!("scale.present.{level}");
            let what = format!("one more extent, {level} present");
            let fid = format!("scale.floor.{level}");
            let fwhat = format!("floor: one more 2 MiB memslot, {level} present");
            if !self.plan.levels.contains(&level) || stopped.is_some() {
                let why = match &stopped {
                    Some(why) => why.clone(),
                    None if self.plan.quick => "quick mode".to_string(),
                    None => format!(
                        "not in this plan (populating {present} extents took {} s)",
                        spent.as_secs()
                    ),
                };
                if !self.plan.quick && measured.len() >= 2 {
                    let (a, b) = fit_xy(&measured);
                    est_hi = true;
                    rep.add_estimate(
                        &id,
                        &what,
                        Unit::Secs,
                        a + b * level as f64,
                        Target::None,
                        &format!(
                            "not run: {why}; value extrapolated linearly from the levels measured \
                             ({:.2} ms + {:.1} µs per extent present)",
                            a * 1e3,
                            b * 1e6
                        ),
                    );
                } else {
                    rep.not_run(&id, &what, Unit::Secs, Target::None, &why);
                }
                rep.not_run(&fid, &fwhat, Unit::Secs, Target::None, &why);
                continue;
            }
            let t = Instant::now();
            while present < level {
                let k = 100.min(level - present);
                self.chain(k, true, SCALE_GPA + present * 2 * BLOCK)?;
                present += k;
                if spent + t.elapsed() > self.plan.populate_budget && present < level {
                    break;
                }
            }
            spent += t.elapsed();
            let _ = self.vmm.take_host_events();
            let heap = alloc::live_bytes();
            if alloc::installed() && present > 0 {
                per_extent_heap = Some((heap.saturating_sub(heap0) as f64 / present as f64, present));
            }
            let slots = self.slots_in(SCALE_GPA, present * 2 * BLOCK);
            if present < level {
                let why = format!(
                    "infeasible in the time budget: populating stopped at {present} extents after {} s",
                    spent.as_secs()
                );
                rep.not_run(&id, &what, Unit::Secs, Target::None, &why);
                rep.not_run(&fid, &fwhat, Unit::Secs, Target::None, &why);
                stopped = Some(why);
                continue;
            }
            let (mut t, mut f) = (Vec::new(), Vec::new());
            let mut exits = 0;
            for _ in 0..self.plan.probes {
                f.push(self.floor_probe()?);
                let e = self.vmm.exit_stats().exits;
                let (d, _, tag) = self.chain(1, true, PROBE_GPA)?;
                exits = self.vmm.exit_stats().exits - e;
                t.push(d);
                self.release(tag, 1)?;
            }
            let st = Stat::of(&t);
            measured.push((level as f64, st.median));
            rep.add(
                &id,
                &what,
                Unit::Secs,
                st,
                Target::None,
                &format!(
                    "{slots} memslots in use; {exits} VM exits per added extent; populating took {} s so far",
                    spent.as_secs()
                ),
            );
            rep.add(&fid, &fwhat, Unit::Secs, Stat::of(&f), Target::None, "");
        }
        let (lo, hi) = (LEVELS[0], LEVELS[LEVELS.len() - 1]);
        let what = format!("per-extent cost, {hi} present / {lo} present");
        match (
            rep.median(&format!("scale.present.{hi}")),
            rep.median(&format!("scale.present.{lo}")),
        ) {
            (Some(h), Some(l)) if est_hi => rep.add_estimate(
                "ratio.scale",
                &what,
                Unit::Ratio,
                h / l,
                Target::AtMost(1.5),
                "the 10,000 level is extrapolated (see its row)",
            ),
            (Some(h), Some(l)) => rep.add(
                "ratio.scale",
                &what,
                Unit::Ratio,
                Stat::derived(h / l),
                Target::AtMost(1.5),
                "",
            ),
            _ => {
                let why = stopped.clone().unwrap_or_else(|| "quick mode".into());
                rep.not_run("ratio.scale", &what, Unit::Ratio, Target::AtMost(1.5), &why);
            }
        }
        // Host heap per extent: everything the VMM keeps for the extents present.
        let what = "VMM host heap per extent (device + mapper + runtime)";
        match per_extent_heap {
            Some((b, n)) => {
                rep.add(
                    "overhead.heap.vmm",
                    what,
                    Unit::Bytes,
                    Stat::derived(b),
                    Target::None,
                    &format!("live heap delta over {n} extents present, divided by {n}"),
                );
                let mapper = self.mapper_heap(n)?;
                rep.add(
                    "overhead.heap.mapper",
                    "memslot mapper heap per extent",
                    Unit::Bytes,
                    Stat::derived(mapper),
                    Target::None,
                    &format!("a standalone mapper (no KVM calls) mapping {n} spaced extents"),
                );
                let dn = if self.plan.quick { 100 } else { 10_000 };
                let device = self.device_heap(dn)?;
                rep.add(
                    "overhead.heap.device",
                    &format!("device state per extent ({dn} accepted, device alone)"),
                    Unit::Bytes,
                    Stat::derived(device),
                    Target::AtMost(256.0),
                    "a device core with a mapper that keeps nothing, extents accepted in chains of 100",
                );
            }
            None => {
                for (id, w) in [
                    ("overhead.heap.vmm", what),
                    ("overhead.heap.mapper", "memslot mapper heap per extent"),
                    ("overhead.heap.device", "device state per extent (device alone)"),
                ] {
                    rep.not_run(
                        id,
                        w,
                        Unit::Bytes,
                        Target::None,
                        "the counting allocator is not installed",
                    );
                }
            }
        }
        rep.add(
            "memslots.present",
            &format!("memslots for the {present} spaced extents present"),
            Unit::Count,
            Stat::derived(self.slots_in(SCALE_GPA, present * 2 * BLOCK) as f64),
            Target::None,
            "",
        );
        Ok(())
    }

    /// Heap per extent of the device core alone holding `n` accepted 2 MiB extents.
    fn device_heap(&self, n: u64) -> Res<f64> {
        let mut cfg = Harness::config();
        cfg.tagged = Some(TaggedWindow {
            addr: 4 * GIB,
            size: TIB,
        });
        let features = cfg.features();
        let mut h = Harness::with_mapper(cfg, features, Box::new(NullMapper), Default::default());
        let before = alloc::live_bytes();
        let mut next = 0;
        while next < n {
            let k = (n - next).min(100);
            let specs: Vec<ExtentSpec> = (next..next + k)
                .map(|i| ExtentSpec {
                    class: SourceClass::File,
                    ..ExtentSpec::new(
                        Uuid::nil(),
                        BLOCK,
                        SourceRef {
                            id: SourceId(1),
                            offset: i * BLOCK,
                        },
                    )
                })
                .collect();
            h.offer_and_accept(&specs)?;
            next += k;
        }
        h.dev.take_host_events();
        let after = alloc::live_bytes();
        Ok(after.saturating_sub(before) as f64 / n as f64)
    }

    /// Heap per extent of a memslot mapper alone, mapping `n` spaced 2 MiB ranges.
    fn mapper_heap(&self, n: u64) -> Res<f64> {
        let mut m = KvmMemslotMapper::new(Box::new(NoKvm), 1..40_000, Vec::new());
        m.register_backing(SourceId(1), Backing::memfd("tagmem-bench-mapper", n * BLOCK)?)?;
        let before = alloc::live_bytes();
        for i in 0..n {
            m.map_range(&Mapping {
                gpa: 4 * GIB + i * 2 * BLOCK,
                len: BLOCK,
                source: SourceRef {
                    id: SourceId(1),
                    offset: i * BLOCK,
                },
                readonly: false,
            })?;
        }
        let after = alloc::live_bytes();
        Ok(after.saturating_sub(before) as f64 / n as f64)
    }

    // ----------------------------------------------------------------------------------- access

    /// One sample of guest read and write bandwidth at `gpa` over the plan's sample: the time of
    /// the command less the median time of the same command over zero bytes.
    fn guest_bandwidth(&self, gpa: u64) -> Res<(f64, f64)> {
        let (len, reps) = (self.plan.guest_sample, self.plan.guest_passes);
        let cmd_r = |len| Command::ReadLoop { gpa, len, reps };
        let cmd_w = |len| Command::WriteLoop {
            gpa,
            len,
            reps,
            byte: MARKER,
        };
        let time = |c: Command| -> Res<f64> {
            let t = Instant::now();
            let r = self.vmm.guest_command(c)?;
            if !matches!(r, GuestReport::ReadLoop { .. } | GuestReport::WroteLoop { .. }) {
                return Err(format!("guest access: {r:?}").into());
            }
            Ok(secs(t.elapsed()))
        };
        let mut base_r = Vec::new();
        let mut base_w = Vec::new();
        for _ in 0..3 {
            base_r.push(time(cmd_r(0))?);
            base_w.push(time(cmd_w(0))?);
        }
        let (or, ow) = (Stat::of(&base_r).median, Stat::of(&base_w).median);
        let bytes = (len * reps) as f64;
        let r = bytes / (time(cmd_r(len))? - or).max(1e-9);
        let w = bytes / (time(cmd_w(len))? - ow).max(1e-9);
        Ok((r, w))
    }

    /// Untimed first pass over the sample at `gpa` (faults its pages in).
    fn guest_touch(&self, gpa: u64) -> Res<()> {
        let len = self.plan.guest_sample;
        self.vmm.guest_command(Command::WriteLoop {
            gpa,
            len,
            reps: 1,
            byte: MARKER,
        })?;
        self.vmm.guest_command(Command::ReadLoop { gpa, len, reps: 1 })?;
        Ok(())
    }

    fn access(&self, rep: &mut Report) -> Res<()> {
        let size = GIB;
        let id = SourceId(self.id());
        let tag = Uuid::from_u128(u128::from(id.0));
        self.vmm
            .register_backing(id, memfd(size, None)?, BackingLifetime::PerExtent)?;
        self.offer_and_read(&[spec(tag, id, 0, ACCESS_GPA, size, 0)], ACCESS_GPA)?;
        self.guest_touch(BOOT_SAMPLE_GPA)?;
        self.guest_touch(ACCESS_GPA)?;
        let (mut boot_r, mut boot_w, mut ext_r, mut ext_w) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        // Alternate the two regions so drift over the run affects both alike.
        for _ in 0..self.plan.access_iters {
            let (r, w) = self.guest_bandwidth(BOOT_SAMPLE_GPA)?;
            boot_r.push(r);
            boot_w.push(w);
            let (r, w) = self.guest_bandwidth(ACCESS_GPA)?;
            ext_r.push(r);
            ext_w.push(w);
        }
        let sample = fmt_bytes(self.plan.guest_sample);
        for (kind, boot, ext) in [("read", boot_r, ext_r), ("write", boot_w, ext_w)] {
            let (b, e) = (Stat::of(&boot), Stat::of(&ext));
            let ratio = e.median / b.median;
            rep.add(
                &format!("access.guest_{kind}.boot"),
                &format!("guest {kind} bandwidth, boot RAM ({sample} sample)"),
                Unit::BytesPerSec,
                b,
                Target::None,
                "8-byte volatile accesses in a guest loop; command overhead subtracted",
            );
            rep.add(
                &format!("access.guest_{kind}.extent"),
                &format!("guest {kind} bandwidth, 1 GiB extent ({sample} sample)"),
                Unit::BytesPerSec,
                e,
                Target::None,
                "",
            );
            rep.add(
                &format!("ratio.access_{kind}"),
                &format!("guest {kind} bandwidth, extent / boot RAM"),
                Unit::Ratio,
                Stat::derived(ratio),
                Target::AtLeast(0.95),
                "",
            );
        }
        let (hr, hw) = self.host_memcpy(id)?;
        let span = fmt_bytes(self.plan.host_span);
        rep.add(
            "access.host_read",
            &format!("host memcpy from the extent's backing ({span})"),
            Unit::BytesPerSec,
            Stat::of(&hr),
            Target::None,
            "the host's own mapping of the same memfd; pages touched once before timing",
        );
        rep.add(
            "access.host_write",
            &format!("host memcpy into the extent's backing ({span})"),
            Unit::BytesPerSec,
            Stat::of(&hw),
            Target::None,
            "",
        );
        self.release(tag, 1)?;
        Ok(())
    }

    /// Host memcpy bandwidth from and into backing `id` over the plan's span, through a
    /// mapping of its own.
    fn host_memcpy(&self, id: SourceId) -> Res<(Vec<f64>, Vec<f64>)> {
        use std::os::fd::AsRawFd;
        let span = us(self.plan.host_span)?;
        let chunk = span.min(64 << 20);
        let fd = {
            let m = self.vmm.mapper();
            let g = m.lock();
            let b = g.backing(id).ok_or("access backing gone")?;
            b.file_handle().try_clone()?
        };
        // SAFETY: a fresh shared mapping (no MAP_FIXED) of a descriptor we own, of a range within
        // the 1 GiB memfd; it is unmapped below and nothing else refers to it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                span,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error().into());
        }
        let base = p.cast::<u8>();
        let mut buf = vec![0x3cu8; chunk];
        let pass = |write: bool, buf: &mut [u8]| -> f64 {
            let t = Instant::now();
            let mut off = 0;
            while off < span {
                let n = chunk.min(span - off);
                // SAFETY: `off + n <= span`, inside the live mapping; `buf` holds `chunk >= n`
                // bytes and cannot overlap the mapping.
                unsafe {
                    if write {
                        std::ptr::copy_nonoverlapping(buf.as_ptr(), base.add(off), n);
                    } else {
                        std::ptr::copy_nonoverlapping(base.add(off), buf.as_mut_ptr(), n);
                    }
                }
                off += n;
            }
            std::hint::black_box(&buf);
            span as f64 / secs(t.elapsed())
        };
        pass(true, &mut buf);
        let (mut r, mut w) = (Vec::new(), Vec::new());
        for _ in 0..self.plan.host_iters {
            r.push(pass(false, &mut buf));
            w.push(pass(true, &mut buf));
        }
        // SAFETY: `p`/`span` is the mapping made above; nothing refers to it any more.
        unsafe { libc::munmap(p, span) };
        Ok((r, w))
    }
}

/// Least-squares line y = a + b x through `pts` (b clamped at 0).
fn fit_xy(pts: &[(f64, f64)]) -> (f64, f64) {
    let n = pts.len() as f64;
    if pts.len() < 2 {
        return (pts.first().map_or(0.0, |p| p.1), 0.0);
    }
    let mx = pts.iter().map(|p| p.0).sum::<f64>() / n;
    let my = pts.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx) * (p.0 - mx)).sum();
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let beta = if sxx > 0.0 { (sxy / sxx).max(0.0) } else { 0.0 };
    (my - beta * mx, beta)
}

/// The Linux-guest rows (issue 14 item 3): boot to a claimed dax device and hot-add to readable
/// in `/dev/daxX.Y`, tagged vs base. They come with the Linux driver; until then every run emits
/// them as not run, so their place in the report is fixed.
pub const LINUX_ROWS: [(&str, &str); 4] = [
    (
        "linux.boot_to_dax",
        "Linux guest: boot to a claimed dax device (under emulation here)",
    ),
    (
        "linux.hotadd_readable.2MiB",
        "Linux guest: tagged hot-add 2 MiB to readable in /dev/daxX.Y",
    ),
    (
        "linux.hotadd_readable.1TiB",
        "Linux guest: tagged hot-add 1 TiB to readable in /dev/daxX.Y",
    ),
    ("linux.ratio.b_a.1TiB", "Linux guest: (b)/(a) at 1 TiB"),
];

impl Bench {
    /// The Linux-guest rows, not run until the Linux driver lands.
    fn linux_rows(&self, rep: &mut Report) {
        for (id, what) in LINUX_ROWS {
            let unit = if id.contains("ratio") {
                Unit::Ratio
            } else {
                Unit::Secs
            };
            rep.not_run(
                id,
                what,
                unit,
                Target::None,
                "measured in a later change, with the Linux driver (linux/patches/10-tagged/)",
            );
        }
    }
}

/// Row ids every run emits, measured or not.
pub fn expected_rows() -> Vec<String> {
    let mut v = counts::goal_rows();
    v.extend(
        [
            "context.roundtrip",
            "context.exits_roundtrip",
            "context.exits_tagged",
            "context.exits_base",
        ]
        .map(String::from),
    );
    for p in [
        "hotadd.floor",
        "hotadd.tagged",
        "release.floor",
        "release.tagged",
        "hotadd.base",
    ] {
        v.extend(SIZES.iter().map(|s| format!("{p}.{}", s.1)));
    }
    for p in ["ratio.a_c", "ratio.b_a", "ratio.release_add"] {
        v.extend(SIZES.iter().map(|s| format!("{p}.{}", s.1)));
    }
    v.push("ratio.a_flat".into());
    v.extend(LINUX_ROWS.iter().map(|r| r.0.to_string()));
    v.extend(CHAINS.iter().map(|k| format!("throughput.chain{k}")));
    v.extend(
        [
            "throughput.chain100_contiguous",
            "memslots.spaced100",
            "memslots.contiguous100",
        ]
        .map(String::from),
    );
    v.extend(LEVELS.iter().map(|n| format!("scale.present.{n}")));
    v.extend(LEVELS.iter().map(|n| format!("scale.floor.{n}")));
    v.extend(
        [
            "ratio.scale",
            "overhead.heap.vmm",
            "overhead.heap.mapper",
            "overhead.heap.device",
            "memslots.present",
        ]
        .map(String::from),
    );
    for k in ["read", "write"] {
        v.push(format!("access.guest_{k}.boot"));
        v.push(format!("access.guest_{k}.extent"));
        v.push(format!("ratio.access_{k}"));
    }
    v.extend(["access.host_read", "access.host_write"].map(String::from));
    v
}

/// Runs the suite; `None` (after saying why) when `/dev/kvm` is not available.
pub fn run(opts: &Options) -> Res<Option<Report>> {
    if !tagmem_test_support::kvm_or_skip() {
        return Ok(None);
    }
    let start = Instant::now();
    let plan = Plan::new(opts.quick);
    let mut rep = Report {
        mode: if opts.quick { "quick" } else { "full" }.into(),
        machine: machine::describe(),
        ..Report::default()
    };
    rep.params = vec![
        ("iterations".into(), plan.iters.to_string()),
        ("guest_access_sample_bytes".into(), plan.guest_sample.to_string()),
        ("guest_access_passes".into(), plan.guest_passes.to_string()),
        ("host_memcpy_span_bytes".into(), plan.host_span.to_string()),
        (
            "base_path_budget_1tib_s".into(),
            plan.base_budget.as_secs().to_string(),
        ),
        (
            "scaling_populate_budget_s".into(),
            plan.populate_budget.as_secs().to_string(),
        ),
    ];
    let step = |what: &str| eprintln!("[{:>6.1} s] {what}", start.elapsed().as_secs_f64());
    step("counts (VM exits, notifications, memslots, host mappings, instructions)");
    let (rows, note) = counts::take(opts.quick, &opts.counts)?;
    counts::goals(&mut rep, &rows);
    rep.counts = rows;
    rep.counts_note = note;
    if opts.counts_only {
        println!(
            "counts per operation ({})\n{}",
            rep.counts_note,
            counts::text(&rep.counts)
        );
        println!("{}", rep.table());
        std::fs::create_dir_all(&opts.out_dir)?;
        let json = opts.out_dir.join("counts.json");
        std::fs::write(&json, serde_json::to_string_pretty(&rep.to_json())? + "\n")?;
        return Ok(Some(rep));
    }
    let bench = Bench::start(plan)?;
    step("context");
    bench.context(&mut rep)?;
    step("hot-add and release sweep: tagged (a) and floor (c)");
    bench.hot_add(&mut rep)?;
    step("hot-add sweep: base virtio-mem path (b)");
    let partial = bench.base_path(&mut rep)?;
    bench.ratios(&mut rep, partial);
    bench.linux_rows(&mut rep);
    step("throughput");
    bench.throughput(&mut rep)?;
    step("access");
    bench.access(&mut rep)?;
    step("scaling and overhead");
    bench.scaling(&mut rep)?;
    drop(bench);
    rep.wall_secs = start.elapsed().as_secs_f64();
    step("done");
    let levels: Vec<u64> = LEVELS.to_vec();
    std::fs::create_dir_all(&opts.out_dir)?;
    let json = opts.out_dir.join("performance.json");
    std::fs::write(&json, serde_json::to_string_pretty(&rep.to_json())? + "\n")?;
    let svg = opts.out_dir.join("performance.svg");
    std::fs::write(&svg, chart::svg(&rep, &SIZES, &levels))?;
    std::fs::write(opts.out_dir.join("performance.md"), doc::markdown(&rep))?;
    println!(
        "counts per operation ({})\n{}",
        rep.counts_note,
        counts::text(&rep.counts)
    );
    println!("{}", rep.table());
    let notes = rep.notes();
    if !notes.is_empty() {
        println!("notes:\n{notes}");
    }
    println!(
        "mode {}, wall time {:.1} s; wrote {} and {}",
        rep.mode,
        rep.wall_secs,
        json.display(),
        svg.display()
    );
    Ok(Some(rep))
}

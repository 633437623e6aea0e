//! The tagmem benchmark suite (issue 7): hot-add, release, throughput, access and overhead of
//! tagged capacity on real KVM, side by side with the base virtio-mem block-plug path on the same
//! device and guest, and with the raw floor (mmap + one `KVM_SET_USER_MEMORY_REGION`).
//!
//! Everything but the Linux rows runs in one VMM with the bundled test guest, whose reference
//! driver does the guest's part. Times are host wall-clock times from the host's request to the
//! guest's report (its result line), as medians over repeated runs with min and max. See
//! `docs/performance.md`.
//!
//! Here: the plan, the VMM under test and the run. The parts: [`counts`] (hardware-independent
//! counts and the goals), `sweep` (context, hot-add and release by size, base path, ratios),
//! `scaling` (throughput, extents present, overhead), `access` (bandwidth), [`linux`] (the
//! Linux-guest rows); [`report`], `doc` and `chart` write the results.

#![allow(dead_code)]

mod access;
pub mod alloc;
pub mod callgrind;
mod chart;
pub mod counts;
mod doc;
pub mod linux;
mod machine;
pub mod report;
mod scaling;
mod sweep;

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
    v.extend(linux::ROWS.iter().map(|r| r.0.to_string()));
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
    step("throughput");
    bench.throughput(&mut rep)?;
    step("access");
    bench.access(&mut rep)?;
    step("scaling and overhead");
    bench.scaling(&mut rep)?;
    drop(bench);
    step("Linux guest");
    linux::rows(
        &mut rep,
        opts.quick,
        &PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("tagmem-bench-linux"),
    );
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

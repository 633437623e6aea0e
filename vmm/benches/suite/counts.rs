//! Counts that carry over to any host (issue 14): per operation and per extent, for the tagged
//! path and the base block-plug path, the VM exits by kind, queue notifications, memslot and
//! host-mapping calls and bytes, and the VMM process's host instructions.
//!
//! Every count is a difference of counters the VMM keeps anyway (the vCPU's exit statistics,
//! the device's metrics, the memslot mapper's statistics) taken with the guest idle before and
//! after the operation. Host instructions come from callgrind: the bench binary runs this part
//! once more under `valgrind --tool=callgrind` as a child and brackets each operation with
//! client requests (`callgrind`); without valgrind the column says why it is empty.

use super::report::Report;
use super::*;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use tagmem_vmm::memslot::MapperStats;
use tagmem_vmm::vcpu::ExitStats;

mod goals;
pub mod run;
mod table;

pub use goals::{count_rows, goal_rows, goals};
pub use run::take;
pub use table::{markdown, text};

/// Columns of the counts table: key and heading.
pub const COLUMNS: [(&str, &str); 16] = [
    ("exits", "VM exits"),
    ("exits_virtio", "virtio-mmio"),
    ("exits_control", "test-control MMIO"),
    ("exits_port", "port I/O"),
    ("exits_hlt", "hlt"),
    ("guestq_kicks", "guestq kicks"),
    ("eventq_kicks", "eventq kicks"),
    ("interrupts", "device interrupts"),
    ("map_calls", "mapper calls"),
    ("set_region", "SET_USER_MEMORY_REGION"),
    ("slots_created", "memslots created"),
    ("slots_deleted", "memslots deleted"),
    ("bytes_created", "memslot bytes created"),
    ("bytes_deleted", "memslot bytes deleted"),
    ("mmaps", "mmap + munmap"),
    ("instructions", "host instructions"),
];

/// Index of column `key`.
pub fn col(key: &str) -> usize {
    COLUMNS.iter().position(|c| c.0 == key).unwrap_or(0)
}

/// One measured operation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CountRow {
    /// Stable key (`counts.<path>.<what>`), also the callgrind dump label.
    pub id: String,
    /// What was done.
    pub label: String,
    /// `tagged` or `base`.
    pub path: String,
    /// Extents (tagged) or PLUG requests (base) the operation covers; per-extent columns divide
    /// by it.
    pub units: u64,
    /// One value per [`COLUMNS`] entry, for the whole operation; `None` where not measured.
    pub values: Vec<Option<f64>>,
    /// How it was measured, or why it was not.
    pub note: String,
}

impl CountRow {
    /// Value of column `key` for the whole operation.
    pub fn get(&self, key: &str) -> Option<f64> {
        self.values.get(col(key)).copied().flatten()
    }

    /// Value of column `key` per unit.
    pub fn per_unit(&self, key: &str) -> Option<f64> {
        self.get(key).map(|v| v / self.units.max(1) as f64)
    }
}

/// The counts of one operation, one per [`COLUMNS`] entry.
type Values = Vec<Option<f64>>;
/// A base-path measurement: plug, unplug and requests, or why it stopped.
type BaseCounts = Result<(Values, Values, u64), String>;

/// Every counter, read with the guest idle.
#[derive(Clone, Copy, Debug)]
struct Snap {
    exits: ExitStats,
    dev: [u64; 6],
    mapper: MapperStats,
}

impl Bench {
    fn snap(&self) -> Snap {
        // Taking the vCPU's statistics waits for a running guest to halt.
        let exits = self.vmm.exit_stats();
        let m = self.vmm.with_device(|d| d.metrics());
        let dev = [
            m.guestq_notifies.get(),
            m.eventq_notifies.get(),
            m.guestq_interrupts.get() + m.eventq_interrupts.get() + m.config_interrupts.get(),
            m.map_calls.get() + m.unmap_calls.get(),
            0,
            0,
        ];
        let mapper = self.vmm.mapper().lock().stats();
        Snap { exits, dev, mapper }
    }

    /// Runs `op` between two snapshots (and callgrind dumps labelled `id`); returns the values.
    fn counted(&self, id: &str, op: impl FnOnce() -> Res<()>) -> Res<Vec<Option<f64>>> {
        let a = self.snap();
        callgrind::zero();
        op()?;
        let b = self.snap();
        callgrind::dump(id);
        let e = |f: fn(&ExitStats) -> u64| Some(f(&b.exits).saturating_sub(f(&a.exits)) as f64);
        let d = |i: usize| Some(b.dev[i].saturating_sub(a.dev[i]) as f64);
        let m = b.mapper.since(&a.mapper);
        let control = |s: &ExitStats| s.mmio.saturating_sub(s.virtio_mmio);
        Ok(vec![
            e(|s| s.exits),
            e(|s| s.virtio_mmio),
            e(control),
            e(|s| s.port_io),
            e(|s| s.hlt),
            d(0),
            d(1),
            d(2),
            d(3),
            Some(m.set_region_calls as f64),
            Some(m.slots_created as f64),
            Some(m.slots_deleted as f64),
            Some(m.bytes_created as f64),
            Some(m.bytes_deleted as f64),
            Some((m.mmaps + m.munmaps) as f64),
            None,
        ])
    }

    /// Waits for the guest's answer to chain `chain_id`; fails if it rejected anything.
    fn wait_answered(&self, chain_id: u64) -> Res<()> {
        loop {
            let events = self.vmm.wait_host_events(Duration::from_secs(120));
            if events.is_empty() {
                return Err(format!("chain {chain_id} not answered within 120 s").into());
            }
            for e in events {
                match e {
                    HostEvent::ChainAnswered {
                        chain_id: c,
                        rejected,
                        ..
                    } if c == chain_id => {
                        if !rejected.is_empty() {
                            return Err(format!("the guest rejected {rejected:?}").into());
                        }
                        return Ok(());
                    }
                    HostEvent::ChainDropped { reason, .. } => {
                        return Err(format!("chain dropped: {reason}").into())
                    }
                    _ => {}
                }
            }
        }
    }

    /// Registers a backing for `chain` and offers it, counted from the registration to the
    /// guest idle after its ACCEPT; then checks (uncounted) that the guest reads the marker at
    /// `check`.
    fn count_offer(
        &self,
        id: &str,
        backing: Backing,
        chain: &[ExtentSpec],
        check: u64,
    ) -> Res<Vec<Option<f64>>> {
        let src = chain[0].source.id;
        let _ = self.vmm.take_host_events();
        let v = self.counted(id, || {
            self.vmm
                .register_backing(src, backing, BackingLifetime::PerExtent)?;
            let r = self.vmm.offer(chain)?;
            self.wait_answered(r.chain_id)
        })?;
        self.read_marker(check)?;
        Ok(v)
    }

    /// Requests the release of `tag` (`n` extents), counted until the guest is idle after its
    /// RELEASE (the device unmapped it and the runtime closed its backing).
    fn count_release(&self, id: &str, tag: Uuid, n: usize) -> Res<Vec<Option<f64>>> {
        let _ = self.vmm.take_host_events();
        self.counted(id, || {
            self.vmm.request_release(Tgt::Tag(tag))?;
            self.wait_released(n)
        })
    }

    /// A chain of `k` 2 MiB extents of one fresh memfd at `gpa`, back to back or 4 MiB apart.
    fn chain_specs(&self, k: u64, spaced: bool, gpa: u64) -> Res<(Backing, Vec<ExtentSpec>, Uuid, u64)> {
        let id = SourceId(self.id());
        let tag = Uuid::from_u128(u128::from(id.0));
        let stride = if spaced { 2 * BLOCK } else { BLOCK };
        let b = memfd(k * BLOCK, Some((k - 1) * BLOCK))?;
        let specs = (0..k)
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
            .collect::<Res<Vec<_>>>()?;
        Ok((b, specs, tag, gpa + (k - 1) * stride))
    }

    /// The base path: the host raises the requested size to `size`, the guest plugs it in
    /// requests of one 128 MiB memory block (or one request below that), up to `per_command`
    /// requests per guest command; counted until the guest is idle. Then unplugs it all, counted
    /// separately. Returns (plug, unplug, requests), or why it stopped.
    fn count_base(&self, size: u64, budget: Duration) -> Res<BaseCounts> {
        let (requests, blocks) = if size <= MEMORY_BLOCK {
            (1, size / BLOCK)
        } else {
            (size / MEMORY_BLOCK, MEMORY_BLOCK / BLOCK)
        };
        let step = blocks * BLOCK;
        let per_command = 1024;
        let label = fmt_bytes(size).replace(' ', "");
        let start = Instant::now();
        let mut stopped = None;
        let plug = self.counted(&format!("counts.base.plug.{label}"), || {
            self.vmm.with_device(|d| d.set_requested_size(size))?;
            let mut done = 0;
            while done < requests {
                let n = per_command.min(requests - done);
                match self.vmm.guest_command(Command::BasePlug {
                    addr: BASE_GPA + done * step,
                    requests: n,
                    blocks,
                })? {
                    GuestReport::Plugged { acked, .. } if acked == n => {}
                    other => return Err(format!("base plug: {other:?}").into()),
                }
                done += n;
                if done < requests && start.elapsed() > budget {
                    stopped = Some(format!(
                        "infeasible in the {} s budget: {done} of {requests} requests done",
                        budget.as_secs()
                    ));
                    break;
                }
            }
            Ok(())
        })?;
        let unplug = self.counted(&format!("counts.base.unplug.{label}"), || {
            match self.vmm.guest_command(Command::BaseUnplugAll)? {
                GuestReport::Unplugged { resp: 0 } => {}
                other => return Err(format!("base unplug: {other:?}").into()),
            }
            self.vmm.with_device(|d| d.set_requested_size(0))?;
            Ok(())
        })?;
        if !self.vmm.slots().is_empty() {
            return Err("base region still mapped after UNPLUG_ALL".into());
        }
        Ok(match stopped {
            Some(why) => Err(why),
            None => Ok((plug, unplug, requests)),
        })
    }

    /// Measures the count rows of `part` (see the module documentation).
    pub fn counts(&self, part: Part) -> Res<Vec<CountRow>> {
        let mut rows = Vec::new();
        let quick = self.plan.quick;
        let row =
            |id: &str, label: &str, path: &str, units: u64, values: Vec<Option<f64>>, note: &str| CountRow {
                id: id.into(),
                label: label.into(),
                path: path.into(),
                units,
                values,
                note: note.into(),
            };
        let skipped = |id: &str, label: &str, path: &str, units: u64, why: &str| CountRow {
            id: id.into(),
            label: label.into(),
            path: path.into(),
            units,
            values: vec![None; COLUMNS.len()],
            note: why.into(),
        };
        let wanted = |size: u64| match part {
            Part::All => true,
            Part::Small => size <= SMALL_LIMIT,
            Part::Large => size > SMALL_LIMIT,
        };
        // Hot-add and release of one extent.
        for (size, l) in [(2 * MIB, "2MiB"), (TIB, "1TiB")] {
            if !wanted(size) {
                continue;
            }
            let (hid, hl) = (
                format!("counts.tagged.hotadd.{l}"),
                format!("hot-add 1 extent of {}", fmt_bytes(size)),
            );
            let (rid, rl) = (
                format!("counts.tagged.release.{l}"),
                format!("release 1 extent of {}", fmt_bytes(size)),
            );
            if quick && size > 2 * MIB {
                rows.push(skipped(&hid, &hl, "tagged", 1, "quick mode"));
                rows.push(skipped(&rid, &rl, "tagged", 1, "quick mode"));
                continue;
            }
            let id = SourceId(self.id());
            let tag = Uuid::from_u128(u128::from(id.0));
            let chain = [spec(tag, id, 0, SWEEP_GPA, size, 0)];
            let v = self.count_offer(&hid, memfd(size, None)?, &chain, SWEEP_GPA)?;
            rows.push(row(
                &hid,
                &hl,
                "tagged",
                1,
                v,
                "from registering the backing and the offer to the guest idle after its ACCEPT",
            ));
            let v = self.count_release(&rid, tag, 1)?;
            rows.push(row(&rid, &rl, "tagged", 1, v, "from the release request to the guest idle after its RELEASE; includes closing the per-extent backing"));
        }
        // Base path.
        let budget = if quick {
            Duration::from_secs(30)
        } else {
            Duration::from_secs(300)
        };
        for (size, l) in [(2 * MIB, "2MiB"), (4 * GIB, "4GiB"), (TIB, "1TiB")] {
            if !wanted(size) {
                continue;
            }
            let (pid, pl) = (
                format!("counts.base.plug.{l}"),
                format!("plug {} (base)", fmt_bytes(size)),
            );
            let (uid, ul) = (
                format!("counts.base.unplug.{l}"),
                format!("unplug all {} (base)", fmt_bytes(size)),
            );
            let req = if size <= MEMORY_BLOCK {
                1
            } else {
                size / MEMORY_BLOCK
            };
            if quick && size > 2 * MIB {
                rows.push(skipped(&pid, &pl, "base", req, "quick mode"));
                rows.push(skipped(&uid, &ul, "base", req, "quick mode"));
                continue;
            }
            match self.count_base(size, budget)? {
                Ok((p, u, n)) => {
                    let note = "from raising requested_size to the guest idle after its last PLUG: \
                                BASE_PLUG guest commands of up to 1,024 PLUG requests each, so the \
                                port I/O column includes one result line per command";
                    rows.push(row(&pid, &pl, "base", n, p, note));
                    rows.push(row(
                        &uid,
                        &ul,
                        "base",
                        n,
                        u,
                        "one UNPLUG_ALL guest command (its result line included)",
                    ));
                }
                Err(why) => {
                    rows.push(skipped(&pid, &pl, "base", req, &why));
                    rows.push(skipped(&uid, &ul, "base", req, &why));
                }
            }
        }
        if part == Part::Large {
            return Ok(rows);
        }
        // Chains of 100.
        for (spaced, what) in [(false, "contiguous"), (true, "spaced")] {
            let id = format!("counts.tagged.chain100.{what}");
            let label = format!("chain of 100 x 2 MiB, {what}");
            let (b, specs, tag, last) = self.chain_specs(100, spaced, CHAIN_GPA)?;
            let v = self.count_offer(&id, b, &specs, last)?;
            let note = if spaced {
                "4 MiB apart: one memslot per extent is the least possible"
            } else {
                "back to back in guest and backing space"
            };
            rows.push(row(&id, &label, "tagged", 100, v, note));
            let rid = format!("counts.tagged.release100.{what}");
            let v = self.count_release(&rid, tag, 100)?;
            rows.push(row(
                &rid,
                &format!("release the chain of 100, {what}"),
                "tagged",
                100,
                v,
                "one tag group",
            ));
        }
        // One more extent with n present.
        let levels: &[u64] = if quick { &[10] } else { &[10, 1_000, 10_000] };
        let mut present = 0;
        for &n in &[10u64, 1_000, 10_000] {
            let id = format!("counts.tagged.present.{n}");
            let label = format!("hot-add 1 more extent, {n} present");
            if !levels.contains(&n) {
                rows.push(skipped(&id, &label, "tagged", 1, "quick mode"));
                continue;
            }
            while present < n {
                let k = 100.min(n - present);
                let (b, specs, _, last) = self.chain_specs(k, true, SCALE_GPA + present * 2 * BLOCK)?;
                let src = specs[0].source.id;
                self.vmm.register_backing(src, b, BackingLifetime::PerExtent)?;
                let r = self.vmm.offer(&specs)?;
                self.wait_answered(r.chain_id)?;
                self.read_marker(last)?;
                present += k;
            }
            // Several probes, each released again; the median of each column, so one
            // allocator-state outlier does not decide the row.
            let mut probes = Vec::new();
            for p in 0..PROBES {
                let (b, specs, tag, last) = self.chain_specs(1, true, PROBE_GPA)?;
                probes.push(self.count_offer(&format!("{id}.probe{p}"), b, &specs, last)?);
                self.release(tag, 1)?;
            }
            let note = format!("2 MiB, spaced from the others; median of {PROBES} probes");
            rows.push(row(&id, &label, "tagged", 1, median_of(&probes), &note));
        }
        Ok(rows)
    }
}

/// Which count rows a run takes: callgrind's address space holds at most 32 GiB of mappings, so
/// the 1 TiB rows run natively, without instruction counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// Everything.
    All,
    /// Operations on at most [`SMALL_LIMIT`] bytes.
    Small,
    /// The rest.
    Large,
}

/// Largest operation the callgrind run takes.
const SMALL_LIMIT: u64 = 4 * GIB;
/// Base region of the callgrind run's VMM (its backing is mapped whole).
const SMALL_BASE: u64 = 4 * GIB;

/// Probes of the "one more extent" rows.
const PROBES: usize = 5;

/// The median of each column over `samples` (`None` where any sample is).
fn median_of(samples: &[Vec<Option<f64>>]) -> Vec<Option<f64>> {
    (0..COLUMNS.len())
        .map(|c| {
            let v: Option<Vec<f64>> = samples.iter().map(|s| s.get(c).copied().flatten()).collect();
            v.filter(|v| !v.is_empty()).map(|v| Stat::of(&v).median)
        })
        .collect()
}

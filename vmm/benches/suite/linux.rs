//! The Linux-guest rows (issue 14 item 3): a Linux guest whose kernel carries the tagged series,
//! booted and driven as the Linux tests drive it ([`tagmem_rig::linux`]): boot to a claimed dax
//! device, and a tagged hot-add to bytes readable through an mmap of `/dev/daxX.Y`.
//!
//! Times are host wall clock from the host's request to the guest's report line on its serial
//! console, so they include the guest's shell and the console round trip. Where KVM runs the
//! guest in its instruction emulator (`kvm_pvm`) every guest instruction is emulated: the rows
//! say so. Counts are the device's and the memslot mapper's counters around the operation; the
//! vCPU's exit counters cannot be read while a Linux guest runs (on the in-kernel irqchip its
//! vCPU never leaves `KVM_RUN` to halt), so the exit columns stay empty. Quick mode never boots
//! Linux, and without a guest kernel the rows say so.

use super::counts::{CountRow, COLUMNS};
use super::report::{Report, Stat, Target, Unit};
use super::{Res, MIB, TIB};
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tagmem_device::ExtentState;
use tagmem_rig::linux::{emulated, tagged_inputs, LinuxInputs, TaggedLinuxGuest};
use tagmem_vmm::Vmm;
use uuid::Uuid;

/// Sizes of the hot-add rows that are measured, with labels and repetitions.
const MEASURED: [(u64, &str, usize); 2] = [(2 * MIB, "2MiB", 3), (128 * MIB, "128MiB", 2)];

/// The rows, in report order: id and label.
pub const ROWS: [(&str, &str); 6] = [
    (
        "linux.boot_to_ready",
        "Linux guest: boot to the tagged driver ready (user space up)",
    ),
    (
        "linux.boot_to_dax",
        "Linux guest: boot to a claimed dax device (2 MiB, tagged)",
    ),
    (
        "linux.hotadd_readable.2MiB",
        "Linux guest: tagged hot-add 2 MiB to readable in /dev/daxX.Y",
    ),
    (
        "linux.hotadd_readable.128MiB",
        "Linux guest: tagged hot-add 128 MiB to readable in /dev/daxX.Y",
    ),
    (
        "linux.hotadd_readable.1TiB",
        "Linux guest: tagged hot-add 1 TiB to readable in /dev/daxX.Y",
    ),
    ("linux.ratio.b_a.1TiB", "Linux guest: (b)/(a) at 1 TiB"),
];

/// Count row ids of the Linux guest.
pub const COUNT_ROWS: [(&str, &str); 2] = [
    ("counts.linux.hotadd.2MiB", "Linux: hot-add 2 MiB to readable"),
    ("counts.linux.hotadd.128MiB", "Linux: hot-add 128 MiB to readable"),
];

/// Why 1 TiB is not measured in a Linux guest.
fn tib_reason() -> String {
    let pages = TIB / 4096;
    format!(
        "not run: binding a 1 TiB dax device needs its struct pages in guest RAM ({} GiB at 64 B \
         per 4 KiB page; still {} GiB with the DAX vmemmap optimisation) and the guest has {} MiB",
        (pages * 64) >> 30,
        (pages / 512 * 8192) >> 30,
        tagmem_rig::linux::BOOT_RAM >> 20
    )
}

/// The rows, all not run, saying `why`.
fn not_run(rep: &mut Report, why: &str) {
    for (id, label) in ROWS {
        let why = if id.ends_with("1TiB") {
            tib_reason()
        } else {
            why.to_string()
        };
        rep.not_run(id, label, unit(id), Target::None, &why);
    }
    for (id, label) in COUNT_ROWS {
        rep.counts.push(empty_counts(id, label, why));
    }
}

fn unit(id: &str) -> Unit {
    if id.contains("ratio") {
        Unit::Ratio
    } else {
        Unit::Secs
    }
}

fn empty_counts(id: &str, label: &str, why: &str) -> CountRow {
    CountRow {
        id: id.into(),
        label: label.into(),
        path: "tagged".into(),
        units: 1,
        values: vec![None; COLUMNS.len()],
        note: why.into(),
    }
}

/// The device's and the mapper's counters, in [`COLUMNS`] order from `guestq_kicks` on.
fn snap(vmm: &Vmm) -> [u64; 10] {
    let m = vmm.with_device(|d| d.metrics());
    let s = vmm.mapper().lock().stats();
    [
        m.guestq_notifies.get(),
        m.eventq_notifies.get(),
        m.guestq_interrupts.get() + m.eventq_interrupts.get() + m.config_interrupts.get(),
        m.map_calls.get() + m.unmap_calls.get(),
        s.set_region_calls,
        s.slots_created,
        s.slots_deleted,
        s.bytes_created,
        s.bytes_deleted,
        s.mmaps + s.munmaps,
    ]
}

/// The count columns between two snapshots (exits and instructions not measured).
fn values(a: &[u64; 10], b: &[u64; 10]) -> Vec<Option<f64>> {
    let mut v = vec![None; 5];
    v.extend(a.iter().zip(b).map(|(a, b)| Some(b.saturating_sub(*a) as f64)));
    v.push(None);
    debug_assert_eq!(v.len(), COLUMNS.len());
    v
}

/// A sparse file of `size` bytes starting with `head`.
fn file_of(path: &Path, size: u64, head: &str) -> Res<()> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    f.set_len(size)?;
    f.write_all_at(head.as_bytes(), 0)?;
    Ok(())
}

/// One guest and the files backing its extents.
struct Run {
    guest: TaggedLinuxGuest,
    tmp: PathBuf,
    n: u32,
}

impl Run {
    /// Offers a fresh tagged extent of `size`, claims it by tag and reads its first bytes
    /// through `/dev/daxX.Y`; checks they are the host's. Returns the times from the offer to
    /// the device's accepted state, to the claim's report and to the read's report.
    fn hot_add_and_read(&mut self, size: u64) -> Res<[f64; 3]> {
        let start = Instant::now();
        self.n += 1;
        let tag = Uuid::from_u128(0x7a6d_0000_0000_4000_8000_0000_0000_0000 | u128::from(self.n));
        let head = format!("TAGMEM-BENCH-{}", self.n);
        let path = self.tmp.join(format!("extent{}.img", self.n));
        file_of(&path, size, &head)?;
        let ids = self.guest.offer(&[format!(
            "tag={tag},path={},size={}M,shared=on",
            path.display(),
            size / MIB
        )]);
        let [id] = ids[..] else {
            return Err(format!("offered 1 extent, the device made {ids:?}").into());
        };
        let deadline = start + self.guest.timeout;
        while !self
            .guest
            .vmm
            .extents()
            .iter()
            .any(|e| e.id == id && e.state == ExtentState::Accepted)
        {
            if Instant::now() > deadline {
                return Err(format!("extent {id} not accepted within {:?}", self.guest.timeout).into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let accepted = start.elapsed().as_secs_f64();
        let c = self.guest.ask(&format!("claim {tag}"));
        if c.get("rc").map(String::as_str) != Some("0") || c.get("size") != Some(&size.to_string()) {
            return Err(format!("claim of {tag}: {c:?}").into());
        }
        let claimed = start.elapsed().as_secs_f64();
        let dev = &c["dev"];
        let r = self.guest.ask(&format!("read {dev} 0 {}", head.len()));
        if r.get("data") != Some(&head) {
            return Err(format!("read from {dev}: {r:?}, want {head}").into());
        }
        Ok([accepted, claimed, start.elapsed().as_secs_f64()])
    }
}

/// Measures the rows (none in quick mode) and adds them and their counts to `rep`.
pub fn rows(rep: &mut Report, quick: bool, tmp: &Path) {
    if quick {
        not_run(rep, "not run: quick mode never boots Linux");
        return;
    }
    let inputs = match tagged_inputs(tmp) {
        Ok(i) => i,
        Err(why) => {
            not_run(rep, &format!("not run: no guest kernel ({why})"));
            return;
        }
    };
    if let Err(e) = measure(rep, &inputs, tmp) {
        rep.rows.retain(|r| !r.id.starts_with("linux."));
        rep.counts.retain(|r| !r.id.starts_with("counts.linux."));
        not_run(rep, &format!("not run: the Linux guest failed: {e}"));
    }
}

fn measure(rep: &mut Report, inputs: &LinuxInputs, tmp: &Path) -> Res<()> {
    let how = if emulated() {
        "measured under emulation here (kvm_pvm runs every guest instruction in KVM's \
         instruction emulator)"
    } else {
        "measured with hardware virtualization"
    };
    let start = Instant::now();
    let mut run = Run {
        guest: TaggedLinuxGuest::boot("bench", inputs, tmp),
        tmp: tmp.to_path_buf(),
        n: 0,
    };
    let ready = run.guest.expect("ready");
    if ready.get("tagged").map(String::as_str) != Some("1") {
        return Err(format!("the driver did not negotiate the tagged feature: {ready:?}").into());
    }
    let t_ready = start.elapsed();
    run.hot_add_and_read(2 * MIB)?;
    let t_dax = start.elapsed();
    let secs = |d: Duration| d.as_secs_f64();
    rep.add(
        ROWS[0].0,
        ROWS[0].1,
        Unit::Secs,
        Stat::derived(secs(t_ready)),
        Target::None,
        &format!("{how}; 1 vCPU, 256 MiB, from starting the VMM to the tagged feature negotiated"),
    );
    rep.add(
        ROWS[1].0,
        ROWS[1].1,
        Unit::Secs,
        Stat::derived(secs(t_dax)),
        Target::None,
        &format!("{how}; to the claimed device's bytes read back"),
    );
    for (i, (size, _, iters)) in MEASURED.into_iter().enumerate() {
        let mut samples: Vec<[f64; 3]> = Vec::new();
        let mut counted = Vec::new();
        for _ in 0..iters {
            let a = snap(&run.guest.vmm);
            samples.push(run.hot_add_and_read(size)?);
            counted.push(values(&a, &snap(&run.guest.vmm)));
        }
        let median = |k: usize| Stat::of(&samples.iter().map(|s| s[k]).collect::<Vec<_>>());
        let (id, label) = ROWS[2 + i];
        rep.add(
            id,
            label,
            Unit::Secs,
            median(2),
            Target::None,
            &format!(
                "{how}; median {} to the driver's ACCEPT, {} to the claim (uuid write, \
                 device_dax bind), then the mmap read",
                Unit::Secs.fmt(median(0).median),
                Unit::Secs.fmt(median(1).median)
            ),
        );
        let (cid, clabel) = COUNT_ROWS[i];
        let mut row = empty_counts(
            cid,
            clabel,
            "the device's and the mapper's counters, median of the hot-adds; VM exits not \
             readable while a Linux guest runs (its vCPU stays in KVM_RUN)",
        );
        row.values = (0..COLUMNS.len())
            .map(|c| {
                let v: Option<Vec<f64>> = counted.iter().map(|s| s[c]).collect();
                v.map(|v| Stat::of(&v).median)
            })
            .collect();
        rep.counts.push(row);
    }
    let tib = tib_reason();
    rep.not_run(ROWS[4].0, ROWS[4].1, Unit::Secs, Target::None, &tib);
    rep.not_run(
        ROWS[5].0,
        ROWS[5].1,
        Unit::Ratio,
        Target::None,
        &format!("{tib}; the base path at 1 TiB would online it as System RAM, with the same struct pages"),
    );
    run.guest.ask("end");
    Ok(())
}

//! The demo (`tagmem-vmm demo`): the whole life cycle in one command, narrated by what the guest
//! reports.
//!
//! Boots a VM with the test guest, hot-adds tagged extents (by default from memfd: an untagged
//! extent, a tagged group with HMAT-like metadata, a sharable group and a read-only extent), has
//! the guest's driver accept them (its region lists them unclaimed, as a CXL DCD host does) and
//! claim each group by tag into a dax device (`daxctl create-device -r region0 --uuid <tag>`),
//! writes a pattern from the host and has the guest read it back, updates metadata, reports
//! poison, releases one tag group, and prints the guest's own view (its `DEV` and `FREE` lines)
//! as a table after the hot-add, after the claims and after the release, with a timeline of host
//! and guest events. Every step is checked; a mismatch ends the demo with an error.

use crate::guest::{GuestError, TestGuestVm};
use crate::nested::GUEST_REGION;
use crate::report::byte_sum;
use crate::view::{DevView, GuestView};
use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tagmem_device::{ExtentInfo, ExtentState, HostEvent, Perf, Target};
use tagmem_vmm::api::{PreparedChain, TaggedMemoryControl};
use tagmem_vmm::config::{human_size, Resolver};
use tagmem_vmm::memslot::HostAccess;
use tagmem_vmm::{Vmm, VmmConfig, VmmError};
use uuid::Uuid;

mod options;
mod table;

pub use options::{DemoOptions, HBM_TAG, READONLY_TAG, SHARED_TAG};
pub use table::render_view;

/// Bytes the host writes into each extent and the guest reads back (the guest is slow at loops).
pub const PATTERN_BYTES: u64 = 1024;
/// Bytes the guest probes in released capacity.
pub const PROBE_BYTES: u64 = 64;
/// How long the demo waits for the guest's driver to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

/// Errors of the demo.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The VMM failed.
    #[error(transparent)]
    Vmm(#[from] VmmError),
    /// A command to the guest failed.
    #[error(transparent)]
    Guest(#[from] GuestError),
    /// A host command was refused.
    #[error("{what}: {message}")]
    Host {
        /// The step.
        what: String,
        /// The refusal.
        message: String,
    },
    /// The guest did not report what the host expects.
    #[error("check failed: {0}")]
    Check(String),
    /// Writing the output failed.
    #[error("writing the output: {0}")]
    Output(#[from] std::io::Error),
}

fn host_err(what: impl Into<String>) -> impl FnOnce(String) -> DemoError {
    let what = what.into();
    move |message| DemoError::Host { what, message }
}

/// What the demo observed, for tests.
#[derive(Clone, Debug)]
pub struct DemoSummary {
    /// The guest's view after the hot-add: everything accepted, nothing claimed.
    pub unclaimed: GuestView,
    /// The guest's view after it claimed every group.
    pub before: GuestView,
    /// The guest's view after the release.
    pub after: GuestView,
    /// Checks that passed.
    pub checks: usize,
    /// Wall time of the whole demo.
    pub elapsed: Duration,
}

/// Collects the timeline: host steps and the guest driver's `EVT` lines, with times.
struct Timeline<'a> {
    start: Instant,
    entries: Vec<(Duration, &'static str, String)>,
    console_seen: usize,
    vmm: Option<Arc<Vmm>>,
    out: &'a mut dyn Write,
}

impl Timeline<'_> {
    /// A host step of the life cycle: printed and kept for the timeline.
    fn host(&mut self, text: impl Into<String>) -> Result<(), DemoError> {
        let text = text.into();
        let at = self.step(&text)?;
        self.entries.push((at, "host", text));
        Ok(())
    }

    /// A step of the guest's user space (a claim): printed and kept for the timeline.
    fn guest(&mut self, text: impl Into<String>) -> Result<(), DemoError> {
        let text = text.into();
        let at = self.step(&text)?;
        self.entries.push((at, "guest", text));
        Ok(())
    }

    /// A step printed as it happens but left out of the timeline (data checks).
    fn step(&mut self, text: &str) -> Result<Duration, DemoError> {
        self.guest_lines();
        let at = self.start.elapsed();
        writeln!(self.out, "[{:6.3} s] {text}", at.as_secs_f64())?;
        Ok(at)
    }

    /// Picks up the guest's `EVT` lines printed since the last call.
    fn guest_lines(&mut self) {
        let Some(vmm) = &self.vmm else { return };
        let lines = vmm.console_lines();
        let at = self.start.elapsed();
        for l in lines.iter().skip(self.console_seen) {
            if let Some(evt) = l.strip_prefix("EVT ") {
                self.entries.push((at, "guest", evt.to_string()));
            }
        }
        self.console_seen = lines.len();
    }

    fn check(&mut self, ok: bool, what: impl Into<String>) -> Result<(), DemoError> {
        let what = what.into();
        if ok {
            writeln!(self.out, "           ok: {what}")?;
            Ok(())
        } else {
            Err(DemoError::Check(what))
        }
    }
}

/// Runs the demo with `chains` (prepared from `options`), writing to `out`.
pub fn run(
    options: DemoOptions,
    chains: Vec<PreparedChain>,
    resolver: Resolver,
    out: &mut dyn Write,
) -> Result<DemoSummary, DemoError> {
    let start = Instant::now();
    writeln!(
        out,
        "tagmem demo: tagged capacity hot-added into a KVM guest over virtio-mem\n"
    )?;
    writeln!(out, "Extents (--tagged-memory):")?;
    for s in options.option_strings() {
        writeln!(out, "  {s}")?;
    }
    writeln!(out)?;
    let mut tl = Timeline {
        start,
        entries: Vec::new(),
        console_seen: 0,
        vmm: None,
        out,
    };
    let mut checks = 0usize;

    let vmm = TestGuestVm::new(VmmConfig::default())?;
    tl.vmm = Some(vmm.vmm().clone());
    vmm.wait_ready()?;
    tl.host("VM booted; the guest's driver negotiated tagged extents")?;
    let control = TaggedMemoryControl::new(vmm.vmm().clone(), resolver);

    // Hot-add: one chain per tag group, answered by the guest's driver.
    let mut pending: BTreeSet<u64> = BTreeSet::new();
    let mut groups: Vec<(Uuid, Vec<u64>)> = Vec::new();
    for (i, chain) in chains.into_iter().enumerate() {
        let reply = control.offer(chain).map_err(|e| DemoError::Host {
            what: "offer".into(),
            message: e.to_string(),
        })?;
        let names: Vec<String> = reply
            .extents
            .iter()
            .map(|e| format!("{} ({} at {:#x})", e.id, human_size(e.size), e.gpa))
            .collect();
        tl.host(format!("offered chain {}: {}", reply.chain_id, names.join(", ")))?;
        pending.insert(reply.chain_id);
        let tag = options
            .chains
            .get(i)
            .map_or(Uuid::nil(), |c| options.configs[c[0]].tag());
        groups.push((tag, reply.extents.iter().map(|e| e.extent_id).collect()));
    }
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    while !pending.is_empty() {
        let now = Instant::now();
        if now >= deadline {
            return Err(DemoError::Check(format!(
                "the guest did not answer chains {pending:?} within {ANSWER_TIMEOUT:?}"
            )));
        }
        for e in vmm.wait_host_events(deadline - now) {
            match e {
                HostEvent::ChainAnswered {
                    chain_id,
                    accepted,
                    rejected,
                } => {
                    pending.remove(&chain_id);
                    tl.host(format!(
                        "chain {chain_id} answered: accepted {accepted:?}, rejected {rejected:?}"
                    ))?;
                }
                HostEvent::ChainDropped { chain_id, reason, .. } => {
                    pending.remove(&chain_id);
                    tl.host(format!("chain {chain_id} dropped: {reason}"))?;
                }
                other => tl.host(format!("event: {other:?}"))?,
            }
        }
    }
    let accepted: Vec<ExtentInfo> = vmm
        .extents()
        .into_iter()
        .filter(|e| e.state == ExtentState::Accepted)
        .collect();
    let unclaimed = vmm.guest_view()?;
    tl.check(
        unclaimed.devices.is_empty() && accepted.iter().all(|e| unclaimed.by_extent(e.id).is_some()),
        format!(
            "the guest's {GUEST_REGION} lists all {} accepted extents, none claimed yet",
            accepted.len()
        ),
    )?;
    checks += 1;
    tl.guest_lines();
    writeln!(
        tl.out,
        "\nWhat the guest reports after the hot-add (accepted, held unclaimed by {GUEST_REGION}):\n"
    )?;
    writeln!(tl.out, "{}", render_view(&unclaimed))?;

    // Claims, as user space does on a DCD host: one per tag group, one per untagged extent.
    for (tag, ids) in &groups {
        let held = accepted.iter().filter(|e| ids.contains(&e.id)).count();
        let claims = if tag.is_nil() { held } else { held.min(1) };
        let arg = if tag.is_nil() {
            "0".to_string()
        } else {
            tag.to_string()
        };
        for _ in 0..claims {
            let (name, size) = vmm.guest_claim(*tag)?;
            tl.guest(format!(
                "daxctl create-device -r {GUEST_REGION} --uuid {arg}: {name} ({})",
                human_size(size)
            ))?;
        }
    }
    let before = vmm.guest_view()?;
    tl.check(
        before.unclaimed.is_empty()
            && accepted
                .iter()
                .all(|e| before.devices.iter().any(|d| d.has_extent(e.id))),
        format!(
            "the guest claimed every group: {} devices hold the {} extents",
            before.devices.len(),
            accepted.len()
        ),
    )?;
    checks += 1;
    tl.guest_lines();
    writeln!(tl.out, "\nWhat the guest reports after the claims:\n")?;
    writeln!(tl.out, "{}", render_view(&before))?;

    // Data path: the host writes a pattern into each extent's backing; the guest reads it back.
    for e in &accepted {
        let name = control.name_of(e.id).unwrap_or_default();
        let pattern = pattern(PATTERN_BYTES, e.id);
        if !host_write(&vmm, e, &pattern) {
            tl.step(&format!(
                "{name}: backing not writable from the host; pattern skipped"
            ))?;
            continue;
        }
        let (sum, first) = vmm.guest_read(e.gpa, PATTERN_BYTES)?;
        let ok = sum == byte_sum(&pattern) && first.as_slice() == &pattern[..first.len()];
        tl.step(&format!(
            "{name}: host wrote {PATTERN_BYTES} bytes (sum {:#x}) at offset {:#x} of its backing; \
             the guest read sum {sum:#x} at {:#x}",
            byte_sum(&pattern),
            e.source.offset,
            e.gpa
        ))?;
        tl.check(ok, format!("{name}: the guest read exactly the host's bytes"))?;
        checks += 1;
        if e.flags.readonly {
            vmm.guest_write(e.gpa, PROBE_BYTES, 0)?;
            let (sum, _) = vmm.guest_read(e.gpa, PROBE_BYTES)?;
            let expect = byte_sum(&pattern[..usize::try_from(PROBE_BYTES).unwrap_or(0)]);
            tl.step(&format!(
                "{name}: the guest wrote zeros over {PROBE_BYTES} bytes of it"
            ))?;
            tl.check(
                sum == expect,
                format!("{name}: read-only, the backing kept the host's bytes"),
            )?;
            checks += 1;
        }
    }

    // Metadata update of one tag group.
    if let Some(tag) = options.metadata_target {
        let old = before.by_tag(&tag).map(|d| d.read_latency_ns).unwrap_or(0);
        let perf = Perf {
            read_latency_ns: u32::try_from(old).unwrap_or(0).saturating_add(40).max(120),
            write_latency_ns: 140,
            read_bandwidth_mbps: 204_800,
            write_bandwidth_mbps: 153_600,
        };
        let ids = vmm
            .update_metadata(Target::Tag(tag), perf)
            .map_err(|e| host_err("metadata update")(e.to_string()))?;
        vmm.guest_poll()?;
        tl.host(format!(
            "metadata update of tag {tag} (extents {ids:?}): read latency {} ns, write latency {} ns, \
             read bandwidth {} MB/s, write bandwidth {} MB/s",
            perf.read_latency_ns, perf.write_latency_ns, perf.read_bandwidth_mbps, perf.write_bandwidth_mbps
        ))?;
        let view = vmm.guest_view()?;
        let dev = view.by_tag(&tag);
        tl.check(
            dev.is_some_and(|d| {
                d.read_latency_ns == u64::from(perf.read_latency_ns)
                    && d.write_bandwidth_mbps == u64::from(perf.write_bandwidth_mbps)
            }),
            format!("the guest reports the new metadata of {}", dev_name(dev)),
        )?;
        checks += 1;
    }

    // Poison: 4 KiB of the last extent of the metadata group (or the first extent).
    let poison_extent = options
        .metadata_target
        .and_then(|t| accepted.iter().rev().find(|e| e.tag == t))
        .or(accepted.first());
    if let Some(e) = poison_extent {
        let (offset, length) = (e.length / 2, 4096);
        vmm.inject_poison(e.id, offset, length)
            .map_err(|err| host_err("poison")(err.to_string()))?;
        vmm.guest_poll()?;
        tl.host(format!(
            "poison reported in extent {} at {offset:#x}+{length:#x}",
            e.id
        ))?;
        let view = vmm.guest_view()?;
        let dev = view.by_extent(e.id);
        tl.check(
            dev.is_some_and(|d| {
                d.poison
                    .iter()
                    .any(|p| p.id == e.id && p.offset == offset && p.len == length)
            }),
            format!("the guest reports the poisoned range in {}", dev_name(dev)),
        )?;
        checks += 1;
    }

    // Release one tag group through the guest's driver.
    let mut after = before.clone();
    if let Some(tag) = options.release_target {
        let ids = vmm
            .request_release(Target::Tag(tag))
            .map_err(|e| host_err("release")(e.to_string()))?;
        tl.host(format!("release of tag {tag} requested (extents {ids:?})"))?;
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        let mut left: BTreeSet<u64> = ids.iter().copied().collect();
        while !left.is_empty() && Instant::now() < deadline {
            for ev in vmm.wait_host_events(deadline.saturating_duration_since(Instant::now())) {
                if let HostEvent::Released { extents } = ev {
                    for (id, _) in &extents {
                        left.remove(id);
                    }
                    let ids: Vec<u64> = extents.iter().map(|(id, _)| *id).collect();
                    tl.host(format!("released {ids:?}: unmapped, backings closed"))?;
                }
            }
        }
        tl.check(
            left.is_empty(),
            format!("the device released every extent of tag {tag}"),
        )?;
        checks += 1;
        after = vmm.guest_view()?;
        tl.check(
            after.by_tag(&tag).is_none() && after.unclaimed_by_tag(&tag).is_none(),
            "the guest no longer lists the released group",
        )?;
        checks += 1;
        for e in accepted.iter().filter(|e| e.tag == tag) {
            let (sum, _) = vmm.guest_read(e.gpa, PROBE_BYTES)?;
            tl.check(
                sum == 0xff * PROBE_BYTES,
                format!(
                    "extent {} at {:#x}: the guest reads only unbacked all-ones now",
                    e.id, e.gpa
                ),
            )?;
            checks += 1;
        }
        tl.guest_lines();
        writeln!(tl.out, "\nWhat the guest reports after releasing tag {tag}:\n")?;
        writeln!(tl.out, "{}", render_view(&after))?;
    }
    tl.guest_lines();
    vmm.shutdown();
    let elapsed = start.elapsed();

    writeln!(
        tl.out,
        "\nTimeline (host steps and the guest driver's own log, as the host saw them):\n"
    )?;
    let entries = std::mem::take(&mut tl.entries);
    for (at, who, text) in &entries {
        writeln!(tl.out, "  {:7.3} s  {who:<5}  {text}", at.as_secs_f64())?;
    }
    writeln!(
        tl.out,
        "\n{checks} checks passed in {:.2} s.",
        elapsed.as_secs_f64()
    )?;
    Ok(DemoSummary {
        unclaimed,
        before,
        after,
        checks,
        elapsed,
    })
}

fn dev_name(dev: Option<&DevView>) -> String {
    dev.map_or_else(|| "(no device)".to_string(), |d| d.name.clone())
}

/// A pseudo-random pattern (xorshift) for extent `id`: its sum and first bytes differ per extent.
fn pattern(len: u64, id: u64) -> Vec<u8> {
    let mut x = id.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

/// Writes `bytes` at the start of extent `e` from the host: through its backing's descriptor,
/// or, for devdax (no write(2)), through the VMM's host mapping. False if neither is possible
/// (a read-only devdax or file mapping).
fn host_write(vmm: &Vmm, e: &ExtentInfo, bytes: &[u8]) -> bool {
    let mapper = vmm.mapper();
    let mapper = mapper.lock();
    if let Some(b) = mapper.backing(e.source.id) {
        if b.writable() && b.file_handle().write_all_at(bytes, e.source.offset).is_ok() {
            return true;
        }
    }
    let mut data = bytes.to_vec();
    mapper.host_access(e.gpa, &mut data, true) == HostAccess::Done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_differ_per_extent() {
        assert_ne!(pattern(64, 1), pattern(64, 2));
        assert_eq!(pattern(PATTERN_BYTES, 1).len(), 1024);
    }
}

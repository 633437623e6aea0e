//! Throughput (chains of extents per second, memslots per chain), the per-extent cost with
//! 10 to 10,000 extents present, and the host memory overhead per extent.

use super::*;

impl Bench {
    // ------------------------------------------------------------------------------ throughput

    /// Offers a chain of `k` 2 MiB extents of one memfd (one tag), 4 MiB apart (`spaced`: one
    /// memslot each) or back to back (coalesced into one memslot), at `gpa`. Returns the time
    /// to the guest's read of the last extent's first byte, the memslots used, and the tag.
    pub(super) fn chain(&self, k: u64, spaced: bool, gpa: u64) -> Res<(f64, usize, Uuid)> {
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

    pub(super) fn throughput(&self, rep: &mut Report) -> Res<()> {
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
    pub(super) fn floor_probe(&self) -> Res<f64> {
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

    pub(super) fn scaling(&self, rep: &mut Report) -> Res<()> {
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
    pub(super) fn device_heap(&self, n: u64) -> Res<f64> {
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
    pub(super) fn mapper_heap(&self, n: u64) -> Res<f64> {
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

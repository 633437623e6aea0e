//! The context rows (the guest command round trip and its exits), the hot-add and release
//! sweep over extent sizes (tagged (a), the kernel-only floor (c), the base block-plug path (b))
//! and their ratios.

use super::*;

impl Bench {
    // ------------------------------------------------------------------------------- context

    pub(super) fn context(&self, rep: &mut Report) -> Res<()> {
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
    pub(super) fn floor(&self, backing: Backing, size: u64) -> Res<(f64, f64, Backing)> {
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
    pub(super) fn tagged(&self, backing: Backing, size: u64) -> Res<(f64, f64)> {
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

    pub(super) fn hot_add(&self, rep: &mut Report) -> Res<()> {
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
    pub(super) fn base_once(&self, size: u64, budget: Option<Duration>) -> Res<(f64, Vec<Chunk>, bool)> {
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
    pub(super) fn base_path(&self, rep: &mut Report) -> Res<Option<f64>> {
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

    pub(super) fn ratios(&self, rep: &mut Report, partial: Option<f64>) {
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
}

//! Access to accepted capacity: guest read and write bandwidth on an extent against boot RAM,
//! and the host's memcpy over the same backing.

use super::*;

impl Bench {
    // ----------------------------------------------------------------------------------- access

    /// One sample of guest read and write bandwidth at `gpa` over the plan's sample: the time of
    /// the command less the median time of the same command over zero bytes.
    pub(super) fn guest_bandwidth(&self, gpa: u64) -> Res<(f64, f64)> {
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
    pub(super) fn guest_touch(&self, gpa: u64) -> Res<()> {
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

    pub(super) fn access(&self, rep: &mut Report) -> Res<()> {
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
    pub(super) fn host_memcpy(&self, id: SourceId) -> Res<(Vec<f64>, Vec<f64>)> {
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

//! The vCPU thread of a [`super::Vmm`]: running the guest, parking it at a `hlt` (pause,
//! snapshots), and stopping it.

use super::{lock, os_err, Shared, Vmm, VmmError};
use crate::vcpu::{RunLimit, RunOutcome, Vcpu, VcpuKicker};
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Why the vCPU thread ended when the guest reset the machine (e.g. Linux `reboot`).
pub const RESET_REASON: &str = "the guest reset the machine";

/// Run limit of the vCPU thread: no exit cap, no timeout (it is stopped through its flag).
const VCPU_THREAD_LIMIT: RunLimit = RunLimit {
    max_exits: u64::MAX,
    timeout: None,
};

/// The vCPU thread and its kicker.
pub(super) struct VcpuThread {
    pub(super) kicker: VcpuKicker,
    pub(super) thread: Option<JoinHandle<()>>,
}

impl Vmm {
    /// Waits up to `timeout` until the vCPU thread ended (the guest reset or powered off, or a
    /// vCPU error); returns why, or `None` if it still runs.
    pub fn wait_exit(&self, timeout: Option<Duration>) -> Option<String> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut rc = lock(&self.shared.run);
        loop {
            if let Some(r) = &rc.exited {
                return Some(r.clone());
            }
            match deadline {
                None => {
                    rc = self
                        .shared
                        .run_changed
                        .wait(rc)
                        .unwrap_or_else(|e| e.into_inner())
                }
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return None;
                    }
                    rc = self
                        .shared
                        .run_changed
                        .wait_timeout(rc, d - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
    }

    /// Starts the vCPU thread.
    pub(super) fn start_vcpu(&self) -> Result<(), VmmError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let shared = self.shared.clone();
        let vcpu = self.vcpu.clone();
        let thread = std::thread::Builder::new()
            .name("vcpu0".into())
            .spawn(move || {
                let kicker = VcpuKicker::for_current_thread();
                let ok = kicker.is_ok();
                let _ = tx.send(kicker);
                if ok {
                    vcpu_loop(&vcpu, &shared);
                }
            })
            .map_err(os_err("starting the vCPU thread"))?;
        let kicker = rx.recv().map_err(|_| VmmError::GuestStopped {
            reason: "the vCPU thread ended at start".into(),
            console: String::new(),
        })??;
        *lock(&self.vcpu_thread) = Some(VcpuThread {
            kicker,
            thread: Some(thread),
        });
        Ok(())
    }

    /// Parks the vCPU at its next `hlt` (the guest is idle then) and stops guest time; the
    /// caller undoes both with [`Vmm::unpark`].
    fn park(&self) -> Result<(), VmmError> {
        let mut rc = lock(&self.shared.run);
        rc.pause += 1;
        rc.rings = rc.rings.wrapping_add(1);
        self.shared.run_changed.notify_all();
        while !rc.parked && rc.exited.is_none() {
            rc = self
                .shared
                .run_changed
                .wait(rc)
                .unwrap_or_else(|e| e.into_inner());
        }
        if let Some(reason) = rc.exited.clone() {
            rc.pause -= 1;
            return Err(VmmError::GuestStopped {
                reason,
                console: self.shared.console.contents(),
            });
        }
        // [T-TIMEOUT-1]: offers do not time out while the guest cannot answer them.
        self.shared.clock.pause();
        Ok(())
    }

    fn unpark(&self) {
        self.shared.clock.resume();
        let mut rc = lock(&self.shared.run);
        rc.pause = rc.pause.saturating_sub(1);
        self.shared.run_changed.notify_all();
    }

    /// Parks the vCPU at its next `hlt` and runs `f` while it is parked, guest time stopped;
    /// used for snapshots.
    pub(crate) fn while_parked<R>(&self, f: impl FnOnce(&Vcpu) -> R) -> Result<R, VmmError> {
        // A guest on the in-kernel irqchip never exits on `hlt`, so it never parks.
        if !self.parks_on_hlt() {
            return Err(VmmError::NotParkable);
        }
        self.park()?;
        let r = f(&lock(&self.vcpu));
        self.unpark();
        Ok(r)
    }

    /// Pauses the guest: parks the vCPU at its next `hlt` and stops guest time, so unanswered
    /// offers do not time out while it is paused (SPEC.md [T-TIMEOUT-1]). Guest commands wait
    /// until [`Vmm::resume`]. Pausing a paused VM does nothing.
    pub fn pause(&self) -> Result<(), VmmError> {
        if lock(&self.shared.run).paused_by_request {
            return Ok(());
        }
        self.park()?;
        lock(&self.shared.run).paused_by_request = true;
        Ok(())
    }

    /// Lets a paused guest run again; guest time runs on from where it stopped.
    pub fn resume(&self) {
        let was = std::mem::take(&mut lock(&self.shared.run).paused_by_request);
        if was {
            self.unpark();
        }
    }

    /// Whether [`Vmm::pause`] holds the guest.
    pub fn is_paused(&self) -> bool {
        lock(&self.shared.run).paused_by_request
    }

    /// Stops the vCPU thread and the event loop, and with them guest time. The VM stays
    /// inspectable; guest commands fail.
    pub fn shutdown(&self) {
        if let Some(mut l) = lock(&self.event_loop).take() {
            l.stop();
        }
        let Some(mut t) = lock(&self.vcpu_thread).take() else {
            return;
        };
        self.shared.clock.pause();
        self.shared.stop_flag.store(true, Ordering::SeqCst);
        {
            let mut rc = lock(&self.shared.run);
            rc.stop = true;
            self.shared.run_changed.notify_all();
        }
        if let Some(handle) = t.thread.take() {
            while !handle.is_finished() {
                // SAFETY: the vCPU thread is not joined yet (`handle` is joined only below), so
                // the thread the kicker names still exists, at worst as a finished thread.
                unsafe { t.kicker.kick() };
                std::thread::sleep(Duration::from_millis(2));
            }
            let _ = handle.join();
        }
    }
}

/// The vCPU thread: runs the guest until it halts, waits for the doorbell, runs it again.
fn vcpu_loop(vcpu: &Mutex<Vcpu>, shared: &Shared) {
    let reason = loop {
        let seen = lock(&shared.run).rings;
        let outcome = lock(vcpu).run_until(VCPU_THREAD_LIMIT, &shared.stop_flag);
        match outcome {
            Ok(RunOutcome::Halted) => {
                // Hand out what the guest's requests produced (and close released backings).
                shared.pump();
                let mut rc = lock(&shared.run);
                let stop = loop {
                    if rc.stop {
                        break true;
                    }
                    if rc.pause > 0 {
                        rc.parked = true;
                        shared.run_changed.notify_all();
                    } else {
                        rc.parked = false;
                        if rc.rings != seen {
                            break false;
                        }
                    }
                    rc = shared.run_changed.wait(rc).unwrap_or_else(|e| e.into_inner());
                };
                rc.parked = false;
                if stop {
                    break "stopped".to_string();
                }
            }
            Ok(RunOutcome::Stopped) => break "stopped".to_string(),
            Ok(RunOutcome::Shutdown { rip }) => break format!("the guest triple-faulted (rip {rip:x?})"),
            Ok(RunOutcome::Reset) => break RESET_REASON.to_string(),
            Ok(RunOutcome::ExitLimit | RunOutcome::TimedOut) => {}
            Err(e) => break format!("vCPU error: {e}"),
        }
    };
    lock(&shared.run).exited = Some(reason.clone());
    shared.run_changed.notify_all();
    let hooks = lock(&shared.exit_hooks).take().unwrap_or_default();
    for hook in hooks {
        hook(&reason);
    }
}

//! Time for the offer timeout: the [`Clock`] trait the device reads, the host's monotonic clock,
//! and [`GuestClock`], which stands still while the guest does not run.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// Monotonic milliseconds, injected so timeouts are tested without sleeping.
pub trait Clock: Send + Sync {
    /// Milliseconds since an arbitrary fixed point; never decreases.
    fn now_ms(&self) -> u64;
}

/// The real monotonic clock.
#[derive(Debug)]
pub struct MonotonicClock(Instant);

impl Default for MonotonicClock {
    fn default() -> Self {
        MonotonicClock(Instant::now())
    }
}

impl Clock for MonotonicClock {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// Where a [`GuestClock`] stands.
#[derive(Debug, Default)]
struct Pauses {
    /// Nested pauses in force.
    depth: u32,
    /// Host time at which the outermost pause began.
    since: u64,
    /// Host time spent paused before the current pause.
    stopped: u64,
}

/// Guest time: a host [`Clock`] that stands still while the guest is paused, so the offer timeout
/// (SPEC.md [T-TIMEOUT-1]) counts only time in which the driver could have answered. A VMM pauses
/// it when it pauses or stops the vCPUs (snapshot, pause, migration) and resumes it when they run
/// again. Pauses nest: the clock runs again after as many `resume` calls as `pause` calls.
pub struct GuestClock {
    host: Arc<dyn Clock>,
    pauses: Mutex<Pauses>,
}

impl std::fmt::Debug for GuestClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestClock")
            .field("pauses", &*self.lock())
            .finish_non_exhaustive()
    }
}

impl GuestClock {
    /// Guest time over `host`, running.
    pub fn new(host: Arc<dyn Clock>) -> Self {
        GuestClock {
            host,
            pauses: Mutex::new(Pauses::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Pauses> {
        self.pauses.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops guest time (the guest's vCPUs do not run).
    pub fn pause(&self) {
        let mut p = self.lock();
        if p.depth == 0 {
            p.since = self.host.now_ms();
        }
        p.depth = p.depth.saturating_add(1);
    }

    /// Undoes one [`GuestClock::pause`]; guest time runs again once every pause is undone. A
    /// resume without a pause does nothing.
    pub fn resume(&self) {
        let mut p = self.lock();
        if p.depth == 0 {
            return;
        }
        p.depth -= 1;
        if p.depth == 0 {
            let paused_for = self.host.now_ms().saturating_sub(p.since);
            p.stopped = p.stopped.saturating_add(paused_for);
        }
    }

    /// True while guest time stands still.
    pub fn is_paused(&self) -> bool {
        self.lock().depth > 0
    }

    /// Pauses guest time until the returned guard is dropped.
    pub fn pause_guard(&self) -> GuestClockPause<'_> {
        self.pause();
        GuestClockPause(self)
    }
}

impl Clock for GuestClock {
    fn now_ms(&self) -> u64 {
        let p = self.lock();
        let host = if p.depth > 0 { p.since } else { self.host.now_ms() };
        host.saturating_sub(p.stopped)
    }
}

/// A pause of a [`GuestClock`], undone when dropped.
#[derive(Debug)]
pub struct GuestClockPause<'a>(&'a GuestClock);

impl Drop for GuestClockPause<'_> {
    fn drop(&mut self) {
        self.0.resume();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[derive(Default)]
    struct Host(AtomicU64);

    impl Clock for Host {
        fn now_ms(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    fn clocks() -> (Arc<Host>, GuestClock) {
        let host = Arc::new(Host::default());
        let guest = GuestClock::new(host.clone());
        (host, guest)
    }

    #[test]
    fn guest_clock_stands_still_while_paused() {
        let (host, guest) = clocks();
        host.0.store(1_000, Ordering::SeqCst);
        assert_eq!(guest.now_ms(), 1_000);
        guest.pause();
        host.0.store(31_000, Ordering::SeqCst);
        assert_eq!(guest.now_ms(), 1_000, "no guest time passes while paused");
        guest.resume();
        assert_eq!(guest.now_ms(), 1_000);
        host.0.store(31_500, Ordering::SeqCst);
        assert_eq!(guest.now_ms(), 1_500);
    }

    #[test]
    fn guest_clock_pauses_nest_and_stray_resumes_do_nothing() {
        let (host, guest) = clocks();
        guest.resume();
        assert!(!guest.is_paused());
        guest.pause();
        {
            let _g = guest.pause_guard();
            host.0.store(5_000, Ordering::SeqCst);
        }
        assert!(guest.is_paused(), "the outer pause still holds");
        host.0.store(9_000, Ordering::SeqCst);
        assert_eq!(guest.now_ms(), 0);
        guest.resume();
        host.0.store(9_010, Ordering::SeqCst);
        assert_eq!(guest.now_ms(), 10);
    }
}

//! What the vCPU thread, the event loop and the host side of a [`super::Vmm`] share, and the
//! pump that hands out the device's host events and closes backings it reports unused.

use super::{BackingLifetime, DeviceTransport, TaggedDevice};
use crate::bus::Console;
use crate::memslot::SharedMapper;
use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::sync::{Condvar, Mutex, MutexGuard};
use tagmem_device::{GuestClock, HostEvent, SourceId};

/// Where the vCPU thread is.
#[derive(Debug, Default)]
pub(crate) struct RunControl {
    /// Doorbell rings so far; a change makes a halted guest run again.
    pub(crate) rings: u64,
    /// Holders that want the vCPU parked at its next `hlt` (a snapshot, [`Vmm::pause`]).
    pub(crate) pause: u32,
    /// [`Vmm::pause`] holds one of them.
    pub(crate) paused_by_request: bool,
    /// The vCPU is parked at a `hlt` exit.
    pub(crate) parked: bool,
    /// End the vCPU thread.
    pub(crate) stop: bool,
    /// Why the vCPU thread ended, once it has.
    pub(crate) exited: Option<String>,
}

/// What the vCPU thread, the event loop and the host side share.
pub(crate) struct Shared {
    pub(crate) transport: Arc<Mutex<DeviceTransport>>,
    /// The device's clock: guest time, stopped while the vCPU is parked or stopped.
    pub(crate) clock: Arc<GuestClock>,
    pub(crate) mapper: SharedMapper,
    /// How long each registered backing is kept; the mapper holds the backing itself.
    pub(crate) backings: Mutex<BTreeMap<SourceId, BackingLifetime>>,
    /// The next id [`Vmm::add_backing`] hands out.
    pub(crate) next_source: Mutex<u64>,
    pub(crate) events: Mutex<Vec<HostEvent>>,
    pub(crate) events_added: Condvar,
    pub(crate) run: Mutex<RunControl>,
    pub(crate) run_changed: Condvar,
    pub(crate) stop_flag: AtomicBool,
    pub(crate) console: Arc<Console>,
    /// Notified when the event loop served the device (queue notifications, timers), so waiters
    /// for the driver (e.g. [`Vmm::wait_device_ready`]) re-check.
    pub(crate) activity: Condvar,
    pub(crate) activity_lock: Mutex<()>,
    /// What [`Vmm::on_exit`] asked to run when the vCPU thread ends; `None` once it has run them.
    pub(crate) exit_hooks: Mutex<Option<Vec<ExitHook>>>,
}

/// A function [`Vmm::on_exit`] runs with the reason the vCPU thread ended.
type ExitHook = Box<dyn FnOnce(&str) + Send>;

/// Locks `m`, taking over a lock a panicking holder poisoned.
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub(crate) fn device<R>(&self, f: impl FnOnce(&mut TaggedDevice) -> R) -> R {
        f(lock(&self.transport).device_mut())
    }

    /// Makes a halted guest run again (it polls its driver and its command queue).
    pub(crate) fn ring(&self) {
        let mut rc = lock(&self.run);
        rc.rings = rc.rings.wrapping_add(1);
        self.run_changed.notify_all();
    }

    /// Moves the device's host events to the runtime's queue and closes the per-extent backings
    /// the device reports unused ([`TaggedMemDevice::take_unused_sources`]). Returns the number
    /// of events moved.
    ///
    /// Runs under the device lock from start to end, so an offer cannot slip in between the
    /// report and the close, the backings of released extents are closed before anyone can see
    /// their `Released` event, and events keep their order.
    pub(crate) fn pump(&self) -> usize {
        let mut t = lock(&self.transport);
        let events = t.device_mut().take_host_events();
        let unused = t.device_mut().take_unused_sources();
        if !unused.is_empty() {
            let mut backings = lock(&self.backings);
            let mut mapper = self.mapper.lock();
            for id in unused {
                if backings.get(&id) == Some(&BackingLifetime::PerExtent) {
                    // Dropping the backing closes its descriptor; its mappings went with the
                    // extents.
                    match mapper.unregister_backing(id) {
                        Ok(_) => {
                            backings.remove(&id);
                        }
                        Err(e) => log::warn!("closing unused backing {id:?}: {e}"),
                    }
                }
            }
        }
        if events.is_empty() {
            return 0;
        }
        // Published before the device lock is let go: a pump that finds nothing new can rely
        // on every earlier event being in the queue already.
        let n = events.len();
        lock(&self.events).extend(events);
        self.events_added.notify_all();
        drop(t);
        n
    }

    pub(crate) fn poll_timers(&self) {
        self.device(|d| d.poll_timers());
        if self.pump() > 0 {
            self.ring();
        }
        self.notify_activity();
    }

    pub(crate) fn notify_activity(&self) {
        let _g = lock(&self.activity_lock);
        self.activity.notify_all();
    }

    pub(crate) fn exited(&self) -> Option<String> {
        lock(&self.run).exited.clone()
    }
}

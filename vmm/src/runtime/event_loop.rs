//! The event loop of a [`super::Vmm`] (`event-manager`): the device's offer timer, subscribers
//! such as the control socket, and its own exit event.

use super::{os_err, Shared, Subscriber, VmmError};
use event_manager::{
    EventManager, EventOps, EventSet, Events, MutEventSubscriber, RemoteEndpoint, SubscriberOps,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

/// The event loop's timer: lets the device expire offers.
struct TimerSubscriber {
    timer: TimerFd,
    shared: Arc<Shared>,
}

impl MutEventSubscriber for TimerSubscriber {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.event_set().intersects(EventSet::ERROR | EventSet::HANG_UP) {
            log::error!("timer descriptor failed; offers no longer expire");
            let _ = ops.remove(events);
            return;
        }
        if let Err(e) = self.timer.wait() {
            log::warn!("reading the timer failed: {e}");
        }
        self.shared.poll_timers();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.timer, EventSet::IN)) {
            log::error!("registering the timer failed: {e}");
        }
    }
}

/// Ends the event loop when its eventfd is written.
struct ExitSubscriber {
    event: EventFd,
    exit: Arc<AtomicBool>,
}

impl MutEventSubscriber for ExitSubscriber {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.event_set().intersects(EventSet::ERROR | EventSet::HANG_UP) {
            let _ = ops.remove(events);
        }
        let _ = self.event.read();
        self.exit.store(true, Ordering::SeqCst);
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.event, EventSet::IN)) {
            log::error!("registering the exit event failed: {e}");
        }
    }
}

/// The event loop thread and how to reach it.
pub(super) struct EventLoop {
    pub(super) endpoint: RemoteEndpoint<Subscriber>,
    exit_event: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl EventLoop {
    /// Starts the loop with the device timer firing every `period`.
    pub(super) fn start(shared: Arc<Shared>, period: Duration) -> Result<Self, VmmError> {
        let mut manager = EventManager::<Subscriber>::new()?;
        let mut timer = TimerFd::new().map_err(|e| VmmError::Os {
            what: "creating the timer",
            source: e.into(),
        })?;
        timer.reset(period, Some(period)).map_err(|e| VmmError::Os {
            what: "arming the timer",
            source: e.into(),
        })?;
        manager.add_subscriber(Arc::new(Mutex::new(TimerSubscriber { timer, shared })));
        let exit_event = EventFd::new(libc::EFD_NONBLOCK).map_err(os_err("creating the exit eventfd"))?;
        let exit = Arc::new(AtomicBool::new(false));
        manager.add_subscriber(Arc::new(Mutex::new(ExitSubscriber {
            event: exit_event
                .try_clone()
                .map_err(os_err("cloning the exit eventfd"))?,
            exit: exit.clone(),
        })));
        let endpoint = manager.remote_endpoint();
        let thread = std::thread::Builder::new()
            .name("vmm-event-loop".into())
            .spawn(move || {
                while !exit.load(Ordering::SeqCst) {
                    if let Err(e) = manager.run() {
                        log::warn!("event loop: {e}");
                    }
                }
            })
            .map_err(os_err("starting the event loop thread"))?;
        Ok(EventLoop {
            endpoint,
            exit_event,
            thread: Some(thread),
        })
    }

    /// Ends the loop and joins its thread.
    pub(super) fn stop(&mut self) {
        if let Some(t) = self.thread.take() {
            if self.exit_event.write(1).is_ok() {
                let _ = t.join();
            }
        }
    }
}

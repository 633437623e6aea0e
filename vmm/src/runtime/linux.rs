//! What only a Linux guest has at run time: its machine (built by [`crate::boot::machine`]),
//! the event-loop subscriber serving its queue notifications, and host input for its serial
//! console.

use super::{lock, Parts, SerialConfig, Shared, Subscriber, Vmm, VmmConfig, VmmError};
use crate::boot::machine::{self, QueueEvent};
use crate::boot::LinuxBoot;
use crate::legacy::{Serial, SerialInput, SerialOutput};
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use tagmem_device::GuestClock;

/// The parts of a Linux guest's machine the runtime keeps.
pub(crate) struct LinuxParts {
    pub(super) serial: Arc<Mutex<Serial>>,
    pub(super) queue_events: Vec<QueueEvent>,
}

/// Builds a Linux guest's machine for `boot` (see [`crate::boot::machine`]).
pub(super) fn parts(config: &VmmConfig, boot: &LinuxBoot) -> Result<Parts, VmmError> {
    let sink = match &config.serial {
        SerialConfig::Tty => SerialOutput::Stdout,
        SerialConfig::Null => SerialOutput::Null,
        SerialConfig::File(p) => {
            SerialOutput::File(std::fs::File::create(p).map_err(|source| VmmError::SerialFile {
                path: p.display().to_string(),
                source,
            })?)
        }
    };
    let clock = Arc::new(GuestClock::new(config.clock.clone()));
    let m = machine::build(
        config.vm.clone(),
        boot,
        config.device.clone(),
        |vm| Box::new(vm.mapper()),
        clock.clone(),
        sink,
    )?;
    Ok(Parts {
        vm: m.vm,
        clock,
        vcpu: m.vcpu,
        transport: m.transport,
        backings: BTreeMap::new(),
        linux: Some(LinuxParts {
            serial: m.serial,
            queue_events: m.queue_events,
        }),
    })
}

/// Serves the guest's queue notifications (ioeventfds) for a guest on the in-kernel irqchip.
struct QueueNotifySubscriber {
    events: Vec<QueueEvent>,
    shared: Arc<Shared>,
}

impl MutEventSubscriber for QueueNotifySubscriber {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let Some(q) = self.events.iter().find(|q| q.event.as_raw_fd() == events.fd()) else {
            return;
        };
        if events.event_set().intersects(EventSet::ERROR | EventSet::HANG_UP) {
            log::error!("queue {} notification descriptor failed", q.queue);
            let _ = ops.remove(events);
            return;
        }
        // Non-blocking: a spurious wake-up reads nothing, and the queue is served anyway.
        let _ = q.event.read();
        lock(&self.shared.transport).notify_queue(q.queue);
        self.shared.pump();
        self.shared.notify_activity();
    }

    fn init(&mut self, ops: &mut EventOps) {
        for q in &self.events {
            if let Err(e) = ops.add(Events::new(&q.event, EventSet::IN)) {
                log::error!("registering queue {} notifications failed: {e}", q.queue);
            }
        }
    }
}

/// The subscriber serving `events` on `shared`'s device.
pub(super) fn queue_notify_subscriber(events: Vec<QueueEvent>, shared: Arc<Shared>) -> Subscriber {
    Arc::new(Mutex::new(QueueNotifySubscriber { events, shared }))
}

impl Vmm {
    /// Types `bytes` into a Linux guest's serial console; `false` for a flat image, which has
    /// no serial input.
    pub fn serial_input(&self, bytes: &[u8]) -> bool {
        match &self.serial {
            Some(s) => {
                s.push(bytes);
                true
            }
            None => false,
        }
    }

    /// A handle for typing into a Linux guest's serial console (e.g. from a stdin thread).
    pub fn serial_handle(&self) -> Option<SerialInput> {
        self.serial.clone()
    }
}

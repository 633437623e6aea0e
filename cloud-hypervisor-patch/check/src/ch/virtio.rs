//! The `virtio_devices` crate root's device items: `VirtioDevice`, `VirtioCommon`, activation
//! errors and device types.

use std::sync::atomic::{AtomicBool, AtomicU8};
use std::sync::{Arc, Barrier};

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use super::epoll_helper::EpollHelperError;
use super::seccomp_filters::Thread;
use super::seccompiler::SeccompAction;
use super::vm_migration::{MigratableError, Pausable};
use crate::device::{ActivationContext, VirtioInterrupt};

/// Activation failures.
#[derive(Debug)]
pub enum ActivateError {
    /// Activation failed.
    BadActivate,
    /// An eventfd could not be cloned.
    CloneExitEventFd,
}

impl std::fmt::Display for ActivateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ActivateError::BadActivate => "Failed to activate virtio device",
            ActivateError::CloneExitEventFd => "Failed to clone EventFd",
        })
    }
}

/// What `activate` returns.
pub type ActivateResult = Result<(), ActivateError>;

/// virtio device types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum VirtioDeviceType {
    /// virtio-mem.
    Mem = 24,
}

/// A virtio device as CH's transports drive it.
pub trait VirtioDevice: Send {
    /// The device type.
    fn device_type(&self) -> u32;
    /// Maximum size of each queue.
    fn queue_max_sizes(&self) -> &[u16];
    /// Offered features.
    fn features(&self) -> u64 {
        0
    }
    /// The driver's accepted features.
    fn ack_features(&mut self, value: u64) {
        let _ = value;
    }
    /// Reads the configuration space.
    fn read_config(&self, _offset: u64, _data: &mut [u8]) {}
    /// Activates the device.
    fn activate(&mut self, context: ActivationContext) -> ActivateResult;
    /// Resets the device.
    fn reset(&mut self) {}
}

/// State every CH device keeps.
#[derive(Default)]
pub struct VirtioCommon {
    /// Offered features.
    pub avail_features: u64,
    /// Accepted features.
    pub acked_features: u64,
    /// The interrupt callback once activated.
    pub interrupt_cb: Option<Arc<dyn VirtioInterrupt>>,
    /// Pause eventfd of the workers.
    pub pause_evt: Option<EventFd>,
    /// True while paused.
    pub paused: Arc<AtomicBool>,
    /// Barrier the workers park on.
    pub paused_sync: Option<Arc<Barrier>>,
    /// Queue sizes.
    pub queue_sizes: Vec<u16>,
    /// Queue eventfds.
    pub queue_evts: Vec<(u16, EventFd)>,
    /// The device type.
    pub device_type: u32,
    /// Fewest queues the device activates with.
    pub min_queues: u16,
    /// Kill eventfd of the workers (CH keeps it in `workers`).
    pub kill_evt: Option<EventFd>,
}

impl VirtioCommon {
    /// Records the accepted features (masked to the offered ones).
    pub fn ack_features(&mut self, value: u64) {
        self.acked_features |= value & self.avail_features;
    }

    /// Checks and records activation.
    pub fn activate(
        &mut self,
        queues: &[(u16, Queue, EventFd)],
        interrupt_cb: Arc<dyn VirtioInterrupt>,
    ) -> ActivateResult {
        if queues.len() < usize::from(self.min_queues) {
            return Err(ActivateError::BadActivate);
        }
        let evt = || EventFd::new(libc::EFD_NONBLOCK).map_err(|_| ActivateError::BadActivate);
        self.kill_evt = Some(evt()?);
        self.pause_evt = Some(evt()?);
        self.interrupt_cb = Some(interrupt_cb);
        Ok(())
    }

    /// Copies of the kill and pause eventfds for a worker.
    pub fn dup_eventfds(&self) -> Result<(EventFd, EventFd), ActivateError> {
        let dup = |e: &Option<EventFd>| {
            e.as_ref()
                .ok_or(ActivateError::BadActivate)?
                .try_clone()
                .map_err(|_| ActivateError::CloneExitEventFd)
        };
        Ok((dup(&self.kill_evt)?, dup(&self.pause_evt)?))
    }

    /// Starts a worker thread running `f` under the thread kind's seccomp filter (here: the
    /// worker is built and dropped unrun).
    #[allow(clippy::too_many_arguments)]
    pub fn spawn_worker<F>(
        &mut self,
        _name: &str,
        _seccomp_action: &SeccompAction,
        _thread_type: Thread,
        _exit_evt: &EventFd,
        _device_status: Arc<AtomicU8>,
        _interrupt_cb: Arc<dyn VirtioInterrupt>,
        f: F,
    ) -> Result<(), ActivateError>
    where
        F: FnOnce() -> Result<(), EpollHelperError> + Send + 'static,
    {
        drop(f);
        Ok(())
    }

    /// Forgets the activation.
    pub fn reset(&mut self) {
        self.queue_evts.clear();
        self.pause_evt = None;
        self.kill_evt = None;
        self.interrupt_cb = None;
    }
}

impl Pausable for VirtioCommon {
    fn pause(&mut self) -> Result<(), MigratableError> {
        self.paused.store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    fn resume(&mut self) -> Result<(), MigratableError> {
        self.paused.store(false, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

//! `virtio_devices::epoll_helper`: the worker loop a device's handler runs in.

use std::io;
use std::os::unix::io::RawFd;
use std::sync::Barrier;
use std::sync::atomic::AtomicBool;

use vmm_sys_util::eventfd::EventFd;

use super::anyhow;
use super::epoll;

/// Ids below this are the helper's own (kill, pause).
pub const EPOLL_HELPER_EVENT_LAST: u16 = 15;

/// Errors of the worker loop.
#[derive(Debug)]
pub enum EpollHelperError {
    /// Creating the epoll fd failed.
    CreateFd(io::Error),
    /// Registering an fd failed.
    Ctl(io::Error),
    /// A handler failed.
    HandleEvent(anyhow::Error),
}

impl std::fmt::Display for EpollHelperError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EpollHelperError::CreateFd(e) => write!(f, "create fd: {e}"),
            EpollHelperError::Ctl(e) => write!(f, "epoll_ctl: {e}"),
            EpollHelperError::HandleEvent(e) => write!(f, "handle event: {e}"),
        }
    }
}

impl std::error::Error for EpollHelperError {}

/// A device's event handler.
pub trait EpollHelperHandler {
    /// Handles one ready event.
    fn handle_event(
        &mut self,
        helper: &mut EpollHelper,
        event: &epoll::Event,
    ) -> Result<(), EpollHelperError>;
}

/// The worker loop (here: records the registered ids; `run` returns at once).
pub struct EpollHelper {
    ids: Vec<(RawFd, u16)>,
}

impl EpollHelper {
    /// A loop that stops on `kill_evt` and parks on `pause_evt`.
    pub fn new(_kill_evt: &EventFd, _pause_evt: &EventFd) -> Result<Self, EpollHelperError> {
        Ok(EpollHelper { ids: Vec::new() })
    }

    /// Registers `fd` under `id`.
    pub fn add_event(&mut self, fd: RawFd, id: u16) -> Result<(), EpollHelperError> {
        self.ids.push((fd, id));
        Ok(())
    }

    /// Runs the loop until killed.
    pub fn run(
        &mut self,
        _paused: &AtomicBool,
        _paused_sync: &Barrier,
        _handler: &mut dyn EpollHelperHandler,
    ) -> Result<(), EpollHelperError> {
        Ok(())
    }
}

//! The transport's interrupt: InterruptStatus bits set by the device's [`Notifier`], and an
//! optional eventfd (an irqfd) signalled with each.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use tagmem_device::Notifier;
use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use vmm_sys_util::eventfd::EventFd;

/// Raises the device's interrupts: interrupt-status bits plus an optional eventfd.
#[derive(Debug)]
pub struct MmioInterrupt {
    pub(super) status: Arc<AtomicU32>,
    pub(super) event: Option<EventFd>,
}

impl MmioInterrupt {
    /// A notifier with its own interrupt-status word, for a device built before its transport
    /// (see [`MmioTransport::with_interrupt`]); `event` is signalled on every interrupt if given.
    pub fn new(event: Option<EventFd>) -> Self {
        MmioInterrupt {
            status: Arc::new(AtomicU32::new(0)),
            event,
        }
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        if let Some(e) = &self.event {
            // A failed write means the counter is saturated: an interrupt is pending anyway.
            let _ = e.write(1);
        }
    }
}

impl Notifier for MmioInterrupt {
    fn signal_used_queue(&self, _queue: u16) {
        self.raise(VIRTIO_MMIO_INT_VRING);
    }

    fn signal_config_change(&self) {
        self.raise(VIRTIO_MMIO_INT_CONFIG);
    }
}

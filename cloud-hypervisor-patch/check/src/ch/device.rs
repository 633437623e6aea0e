//! `virtio_devices::device`: interrupts and the activation context.

use std::io;
use std::sync::Arc;
use std::sync::atomic::AtomicU8;

use virtio_queue::Queue;
use vm_memory::GuestMemoryAtomic;
use vmm_sys_util::eventfd::EventFd;

use crate::GuestMemoryMmap;

/// Which interrupt a device raises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VirtioInterruptType {
    /// Configuration change.
    Config,
    /// Used buffers on a queue.
    Queue(u16),
}

/// The transport's interrupt callback.
pub trait VirtioInterrupt: Send + Sync {
    /// Raises the interrupt.
    fn trigger(&self, int_type: VirtioInterruptType) -> io::Result<()>;
}

/// What the transport hands a device at activation.
pub struct ActivationContext {
    /// Guest memory.
    pub mem: GuestMemoryAtomic<GuestMemoryMmap>,
    /// The interrupt callback.
    pub interrupt_cb: Arc<dyn VirtioInterrupt>,
    /// The enabled queues: index, queue, its notification eventfd.
    pub queues: Vec<(u16, Queue, EventFd)>,
    /// The device status byte.
    pub device_status: Arc<AtomicU8>,
}

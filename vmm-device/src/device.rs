//! The device: features, config space, queues, and the glue between the guest protocol, the
//! extent state machine and the host control API.

use crate::control::*;
use crate::mapper::{Clock, MemoryMapper, Notifier, SourceRef};
use crate::virtio::VirtioDevice;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use virtio_queue::Queue;
use vm_memory::GuestAddressSpace;

/// The guest-physical window tagged extents are placed in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaggedWindow {
    /// Start, 2 MiB aligned.
    pub addr: u64,
    /// Size, a multiple of 2 MiB.
    pub size: u64,
}

/// Construction-time configuration of the device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// Base virtio-mem block size (power of two, at least 2 MiB... or 4 KiB pages for tests).
    pub block_size: u64,
    /// NUMA node / ACPI proximity domain of the base region; `None` leaves ACPI_PXM unoffered.
    pub node_id: Option<u16>,
    /// Start of the base (block-plugged) region, block aligned.
    pub region_addr: u64,
    /// Size of the base region (may be zero when only tagged capacity is offered).
    pub region_size: u64,
    /// Host backing of the base region (offset = region offset + this offset).
    pub region_source: Option<SourceRef>,
    /// Initial requested size of the base region.
    pub requested_size: u64,
    /// The tagged window; `None` leaves the tagged feature unoffered.
    pub tagged: Option<TaggedWindow>,
    /// Most extents pending at once.
    pub max_pending: u32,
    /// Offer timeout in milliseconds.
    pub offer_timeout_ms: u32,
    /// Maximum size of each virtqueue.
    pub queue_size: u16,
}

/// The tagged-capacity virtio-mem device.
pub struct TaggedMemDevice<M: GuestAddressSpace> {
    _m: std::marker::PhantomData<M>,
    _mapper: Box<dyn MemoryMapper>,
    _notifier: Arc<dyn Notifier>,
    _clock: Arc<dyn Clock>,
}

//! Reference guest driver for tagged-capacity virtio-mem (VIRTIO §5.15 plus the proposed
//! `VIRTIO_MEM_F_TAGGED_EXTENTS` extension).
//!
//! `no_std` + `alloc`, polled, no interrupts, no `unsafe`: it runs embedded in a bare-metal guest
//! with identity-mapped memory and in-process in host tests. The environment supplies a
//! [`Transport`] (virtio registers or an in-process device) and a [`DmaMemory`] (how to reach
//! guest-physical memory), plus one region of guest memory for rings and buffers.
//!
//! - [`transport`]: the two environment traits, a test memory and the DMA bump allocator.
//! - [`virtqueue`]: the driver side of a split virtqueue.
//! - [`offer`]: screening offered extents, the [`OfferPolicy`] and sharable-group enforcement.
//! - [`dax`]: accepted capacity as a dax region: unclaimed until claimed by tag into "dax
//!   devices", looked up by tag.
//! - [`extent`]: one extent decoded from its wire record.
//! - [`driver`]: [`TagMemDriver`], tying it together.
#![no_std]
#![deny(missing_docs)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod dax;
pub mod driver;
pub mod extent;
pub mod offer;
pub mod transport;
pub mod virtqueue;

pub use dax::{
    format_uuid, ClaimError, ClaimMode, DaxDevice, DaxRegistry, Extent, Perf, PoisonRange, Slot, REGION,
};
pub use driver::{
    BlockState, DriverError, DriverEvent, MemResponse, StateResponse, TagMemDriver, TaggedResponse, Target,
};
pub use offer::{AcceptAll, OfferPolicy, RejectAll, RejectReason};
pub use transport::{DmaMemory, Transport, VecMemory};

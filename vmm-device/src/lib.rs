//! Tagged-capacity virtio-mem device core.
//!
//! Transport-agnostic and hypervisor-agnostic: a VMM hosts it through three narrow traits
//! ([`MemoryMapper`], [`Notifier`], [`Clock`], the last usually a [`GuestClock`]) and a transport that forwards feature, config and
//! queue operations ([`VirtioDevice`]). The host drives the extent life cycle through the typed
//! control API on [`TaggedMemDevice`]. Guest input is hostile: every chain is bounds-checked in
//! `request`, every request validated before the state machine in `state` sees it.

mod blocks;
pub mod clock;
pub mod config;
pub mod control;
pub mod device;
pub mod error;
pub mod mapper;
pub mod metrics;
mod request;
pub mod snapshot;
mod state;
#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;
pub mod virtio;

pub use clock::*;
pub use control::*;
pub use device::{DeviceConfig, TaggedMemDevice, TaggedWindow, MINIMAL_BASE_REGION_SIZE};
pub use error::DeviceError;
pub use mapper::*;
pub use metrics::DeviceMetrics;
pub use request::ChainError;
pub use snapshot::{ChainState, DeviceState, QueueSnapshot};
pub use state::OUTBOX_LIMIT;
/// The wire format the device speaks (constants, structs), re-exported for embedding VMMs.
pub use tagmem_wire as wire;
pub use virtio::VirtioDevice;

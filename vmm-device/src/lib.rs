//! Tagged-capacity virtio-mem device core.
//!
//! Transport-agnostic and hypervisor-agnostic: a VMM hosts it through three narrow traits
//! ([`MemoryMapper`], [`Notifier`], [`Clock`]) and a transport that forwards feature, config and
//! queue operations ([`VirtioDevice`]). The host drives the extent life cycle through the typed
//! control API on [`TaggedMemDevice`].

pub mod control;
pub mod device;
pub mod mapper;
pub mod virtio;

pub use control::*;
pub use device::{DeviceConfig, TaggedMemDevice, TaggedWindow};
pub use mapper::*;
pub use virtio::VirtioDevice;

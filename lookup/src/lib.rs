//! Find tagged memory capacity by its tag, the same way on bare metal, in a VM and in a nested VM.
//!
//! Capacity reaches a Linux system as dax devices: on a host from CXL Dynamic Capacity,
//! soft-reserved memory or devdax, in a guest from the tagged virtio-mem driver. Dynamic capacity
//! (CXL DCD v11, and the guest driver alike) first sits unclaimed in its dax region; writing a tag
//! to the region's seed device (`daxctl create-device -r regionX --uuid <tag>`) makes it one dax
//! device per tag (its `uuid` attribute reads the tag), and writing `0` one device per untagged
//! extent (its `uuid` reads the nil UUID). This crate reads devices ([`DaxDevice`]) and unclaimed
//! capacity ([`Unclaimed`]) through one model from any [`CapacitySource`] and resolves a tag with
//! one rule ([`lookup`]). [`SysfsSource`] reads the kernel ABIs under a configurable root, so it
//! serves a host and a guest alike; [`output`] prints the result as `daxctl list`-style JSON or a
//! table.

mod attr;
mod bus;
mod capacity;
mod driver;
mod error;
#[cfg(feature = "fixture")]
pub mod fixture;
mod model;
pub mod output;
mod source;
mod sysfs;

pub use attr::ATTR_MAX;
pub use capacity::{Found, Unclaimed};
pub use driver::{DriverDevice, DriverExtent, DAX_ALIGN};
pub use error::LookupError;
pub use model::{DaxDevice, Extent, Flags, Mapping, Mode, Perf, Poison, SourceClass, PAGE_SIZE};
pub use source::{list, lookup, CapacitySource};
pub use sysfs::SysfsSource;

/// The examples of README.md, compiled and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

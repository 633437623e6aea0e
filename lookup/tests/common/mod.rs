//! The sysfs tree builder, shared with other crates' tests as `tagmem_lookup::fixture`.

#![allow(unused_imports)] // each test crate uses a different part of the builder

pub use tagmem_lookup::fixture::*;

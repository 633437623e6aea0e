//! Wire format of tagged-capacity virtio-mem.
//!
//! One `no_std`, allocation-free definition of every byte that crosses the virtio boundary,
//! shared by the device (`tagmem-device`) and the reference driver (`tagmem-driver`).
//!
//! - [`base`]: the virtio-mem structures exactly as VIRTIO 1.2 §5.15 and Linux's
//!   `<linux/virtio_mem.h>` define them.
//! - [`tagged`]: the tagged-extent extension (feature bit [`VIRTIO_MEM_F_TAGGED_EXTENTS`], a
//!   proposal), as `guest-driver-spec/SPEC.md` specifies it.
//! - [`message`]: typed views of requests, responses and events, parsed with `TryFrom` from raw
//!   bytes; every parse is total (bad input is an error value, never a panic).
//! - [`response`]: the device's answer to a request ([`Response`]), in either wire form.
//!
//! All multi-byte fields are little-endian ([`Le16`], [`Le32`], [`Le64`]) and every struct is
//! `#[repr(C)]` with explicit padding, so the in-memory layout *is* the wire layout.
#![no_std]
#![deny(missing_docs)]

pub mod base;
pub mod message;
pub mod meta;
pub mod response;
pub mod tagged;

pub use base::*;
pub use message::*;
pub use meta::{Perf, SourceClass};
pub use response::*;
pub use tagged::*;

/// Little-endian 16-bit wire integer.
pub type Le16 = zerocopy::little_endian::U16;
/// Little-endian 32-bit wire integer.
pub type Le32 = zerocopy::little_endian::U32;
/// Little-endian 64-bit wire integer.
pub type Le64 = zerocopy::little_endian::U64;

/// Re-exported so users can call `read_from_bytes`/`as_bytes` without naming zerocopy.
pub use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Implements vm-memory's `ByteValued` for wire structs.
#[cfg(feature = "vm-memory")]
macro_rules! byte_valued {
    ($($t:ty),* $(,)?) => {
        $(
            // SAFETY: `$t` derives zerocopy's `FromBytes` and `IntoBytes`, which the compiler
            // only accepts for `#[repr(C)]` types without padding whose fields are valid for
            // every bit pattern. Those are exactly `ByteValued`'s requirements.
            unsafe impl vm_memory::ByteValued for $t {}
        )*
    };
}

#[cfg(feature = "vm-memory")]
byte_valued!(
    base::VirtioMemConfig,
    base::VirtioMemReq,
    base::VirtioMemResp,
    tagged::TaggedConfig,
    tagged::ExtentRecord,
    tagged::TaggedReq,
    tagged::TaggedResp,
    tagged::EventMsg,
);

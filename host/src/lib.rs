//! The host side of tagged capacity, written once for every VMM (the reference VMM and the
//! Cloud Hypervisor series both call it):
//!
//! - [`tagged`]: the `--tagged-memory` option and its JSON form ([`TaggedMemoryConfig`],
//!   [`SYNTAX`]) with the rules both obey;
//! - [`grammar`]: the `key=value,...` grammar every option shares (sizes, numbers, switches);
//! - [`chains`]: grouping extents into offer chains and numbering a sharable group's extents;
//! - [`resolve`]: finding each extent's backing, range, HMAT defaults and class from sysfs;
//! - [`backing`]: opening memfds, files, hugetlbfs files and devdax devices;
//! - [`prepare`]: chains whose backings are open, ready to be registered and offered.
//!
//! Source lifetime is the device's: it reports a source no extent uses any more
//! (`TaggedMemDevice::take_unused_sources`), and the VMM closes that backing then.
//! The crate holds no VMM state and never touches KVM.

pub mod backing;
pub mod chains;
pub mod error;
pub mod grammar;
pub mod prepare;
pub mod resolve;
pub mod tagged;

pub use backing::{is_host_os_error, Backing, BackingError, BackingKind, DEVDAX_ALIGN, PAGE_SIZE};
pub use chains::{group_chains, parse_options, sequence_numbers};
pub use error::{error_chain, ConfigError, OptionError};
pub use grammar::{format_size, human_size, parse_size, split_option};
pub use prepare::{prepare_chains, PreparedChain};
pub use resolve::{BackingPlan, ExtentPlan, Resolver};
pub use tagged::{TaggedMemoryConfig, GENERATED_ID_PREFIX, KEYS, MEMFD, OPTION, SYNTAX};
/// Granularity of extent sizes and offsets (the device block size).
pub use tagmem_wire::VIRTIO_MEM_EXTENT_ALIGN as EXTENT_ALIGN;

#[cfg(test)]
mod test_util {
    use crate::{OptionError, TaggedMemoryConfig, OPTION};

    pub const TAG: &str = "6f1c2a9e-0d3b-4c55-9a7e-3b1f00c0ffee";
    pub const MIB: u64 = 1 << 20;

    pub fn parse(s: &str) -> TaggedMemoryConfig {
        TaggedMemoryConfig::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    pub fn err(s: &str) -> String {
        match TaggedMemoryConfig::parse(s) {
            Ok(c) => panic!("{s} parsed as {c:?}"),
            Err(e) => OptionError::new(OPTION, e).to_string(),
        }
    }
}

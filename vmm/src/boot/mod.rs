//! Booting a guest: what the VMM loads into boot RAM and how the first vCPU starts.
//!
//! [`GuestKind`] says what runs: a flat 64-bit image ([`flat::FlatImage`], e.g. a bare-metal
//! test program) or a Linux kernel ([`linux::LinuxBoot`]) loaded by [`linux::load`] with an MP
//! table ([`mptable`]) and the CPUID of [`cpuid`].

pub mod cpuid;
pub mod flat;
pub mod linux;
pub mod machine;
pub mod mptable;

pub use flat::{FlatImage, FlatImageError};
pub use linux::{LinuxBoot, LinuxBootError, VirtioMmioSlot};

/// The guest a [`crate::Vmm`] runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum GuestKind {
    /// Nothing to boot: [`crate::Vmm::new`] refuses the configuration
    /// ([`crate::VmmError::NoGuest`]).
    #[default]
    Unset,
    /// A flat 64-bit image; its `hlt` exits to the VMM (no in-kernel irqchip).
    Flat(FlatImage),
    /// A Linux kernel, on the in-kernel irqchip with a serial console.
    Linux(LinuxBoot),
}

//! Booting a guest: what the VMM loads into boot RAM and how the first vCPU starts.
//!
//! [`GuestKind`] says what runs: the bundled bare-metal test guest, or a Linux kernel
//! ([`linux::LinuxBoot`]) loaded by [`linux::load`] with an MP table ([`mptable`]) and the CPUID
//! of [`cpuid`].

pub mod cpuid;
pub mod linux;
pub mod machine;
pub mod mptable;

pub use linux::{LinuxBoot, LinuxBootError, VirtioMmioSlot};

/// The guest a [`crate::Vmm`] runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum GuestKind {
    /// The bundled bare-metal test guest (commands over the test-control device).
    #[default]
    TestGuest,
    /// A Linux kernel, on the in-kernel irqchip with a serial console.
    Linux(LinuxBoot),
}

//! Reference VMM for tagged-capacity virtio-mem on KVM.
//!
//! [`Vm`] creates a KVM VM with boot RAM, an MMIO bus and a port-I/O bus; [`Vcpu`] runs a 64-bit
//! guest; [`MmioBus`] dispatches exits to devices such as the virtio-mmio transport
//! ([`mmio::MmioTransport`]); [`KvmMemslotMapper`] implements the device's `MemoryMapper` on KVM
//! memslots over registered [`Backing`]s. [`boot`] loads what runs: the bundled bare-metal test
//! guest ([`test_guest`]) or a Linux kernel ([`boot::linux`], with [`legacy`] devices and the
//! in-kernel irqchip); [`hotplug`] lays out the base virtio-mem region. [`Vmm`] runs either with
//! the tagged device, a vCPU thread and an event loop.

pub mod api;
pub mod backing;
pub mod boot;
pub mod bus;
pub mod cli;
pub mod config;
pub mod demo;
pub mod hotplug;
pub mod layout;
pub mod legacy;
pub mod memslot;
pub mod mmio;
pub mod nested;
pub mod runtime;
pub mod snapshot;
pub mod test_guest;
pub mod vcpu;
pub mod vm;
mod vmfd;

pub use backing::{Backing, BackingError, BackingKind};
pub use bus::{BusDevice, BusError, Console, DebugConsole, MmioBus};
pub use memslot::{HostAccess, KvmMemslotMapper, MemslotError, SharedMapper, SlotInfo};
pub use mmio::{MmioInterrupt, MmioTransport};
pub use runtime::{BackingLifetime, DeviceWindow, ExtraDevice, Vmm, VmmConfig, VmmError};
pub use snapshot::VmSnapshot;
pub use vcpu::{ExitStats, RunLimit, RunOutcome, Vcpu, VcpuBoot, VcpuError, VcpuState};
pub use vm::{kvm_unavailable, BootMemory, Vm, VmConfig, VmError};

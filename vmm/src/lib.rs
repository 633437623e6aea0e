//! Reference VMM for tagged-capacity virtio-mem on KVM.
//!
//! [`Vm`] creates a KVM VM with boot RAM, an MMIO bus and a port-I/O bus; [`Vcpu`] runs a 64-bit
//! guest; [`MmioBus`] dispatches exits to devices such as the virtio-mmio transport
//! ([`mmio::MmioTransport`]); [`KvmMemslotMapper`] implements the device's `MemoryMapper` on KVM
//! memslots over registered [`Backing`]s. [`boot`] loads what runs: a flat 64-bit image
//! ([`boot::FlatImage`]) or a Linux kernel ([`boot::linux`], with [`legacy`] devices and the
//! in-kernel irqchip); [`hotplug`] lays out the base virtio-mem region. [`Vmm`] runs either with
//! the tagged device, a vCPU thread and an event loop, plus any devices the caller adds
//! ([`Vmm::with_devices`]); [`api`] serves its control API.
//!
//! The command line (`tagmem-vmm`) is a crate of its own (`vmm/cli`); the test rig (`tests/rig`)
//! drives this crate from outside, through the hooks above.

pub mod api;
pub mod backing;
pub mod boot;
pub mod bus;
pub mod config;
pub mod hotplug;
pub mod layout;
pub mod legacy;
pub mod logger;
pub mod memslot;
pub mod mmio;
pub mod runtime;
pub mod snapshot;
pub mod vcpu;
pub mod vm;
mod vmfd;

pub use backing::{Backing, BackingError, BackingKind};
pub use boot::{FlatImage, GuestKind};
pub use bus::{BusDevice, BusError, Console, DebugConsole, MmioBus, SharedBusDevice};
pub use memslot::{HostAccess, KvmMemslotMapper, MemslotError, SharedMapper, SlotInfo};
pub use mmio::{MmioInterrupt, MmioTransport};
pub use runtime::{BackingLifetime, DeviceWindow, ExtraDevice, Vmm, VmmConfig, VmmError};
pub use snapshot::VmSnapshot;
pub use vcpu::{ExitStats, RunLimit, RunOutcome, Vcpu, VcpuBoot, VcpuError, VcpuState};
pub use vm::{kvm_unavailable, BootMemory, Vm, VmConfig, VmError};

//! What a [`super::Vmm`] is configured with, and what can go wrong.

use crate::backing::Backing;
use crate::boot::machine::MachineError;
use crate::boot::GuestKind;
use crate::hotplug::{HotplugError, BASE_REGION_SOURCE};
use crate::layout;
use crate::memslot::{KvmMemslotMapper, MemslotError};
use crate::mmio::MmioRestoreError;
use crate::vcpu::VcpuError;
use crate::vm::{VmConfig, VmError};
use std::sync::Arc;
use std::time::Duration;
use tagmem_device::{
    Clock, DeviceConfig, DeviceError, MonotonicClock, SourceId, SourceRef, TaggedWindow,
    MINIMAL_BASE_REGION_SIZE,
};

/// Errors of the runtime.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// Creating or setting up the VM failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// A vCPU operation failed.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// The device refused its configuration or a snapshot.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The memslot mapper refused a backing operation.
    #[error(transparent)]
    Memslot(#[from] MemslotError),
    /// A host backing (the base region's memfd) could not be created.
    #[error(transparent)]
    Backing(#[from] crate::backing::BackingError),
    /// A snapshot's transport state was rejected.
    #[error(transparent)]
    MmioRestore(#[from] MmioRestoreError),
    /// A snapshot does not fit this VM.
    #[error("snapshot rejected: {0}")]
    Snapshot(String),
    /// An OS resource (eventfd, timerfd, thread, descriptor) could not be set up.
    #[error("{what} failed")]
    Os {
        /// What was attempted.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The event loop could not be set up or reached.
    #[error("event loop: {0}")]
    EventLoop(#[from] event_manager::Error),
    /// The vCPU thread has ended; the guest runs no more.
    #[error("the guest is not running ({reason}); console:\n{console}")]
    GuestStopped {
        /// Why the vCPU thread ended.
        reason: String,
        /// Console output so far.
        console: String,
    },
    /// The Linux machine could not be assembled (kernel, irqchip, devices).
    #[error(transparent)]
    Machine(#[from] MachineError),
    /// The base region's layout was refused.
    #[error("--memory: {0}")]
    Hotplug(#[from] HotplugError),
    /// A base-region resize was refused.
    #[error("{0}")]
    Resize(String),
    /// The configuration names nothing to boot ([`GuestKind::Unset`]).
    #[error("no guest to boot: the configuration names neither a kernel nor a flat image")]
    NoGuest,
    /// The vCPU cannot be parked at a `hlt` exit: the guest runs on the in-kernel irqchip, whose
    /// `hlt` stays inside KVM.
    #[error(
        "the guest runs on the in-kernel irqchip: its vCPU never halts to the VMM, so it cannot be parked"
    )]
    NotParkable,
    /// The serial output file could not be opened.
    #[error("--serial {path}: {source}")]
    SerialFile {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Maps an OS error of `what` to [`VmmError::Os`].
pub(crate) fn os_err(what: &'static str) -> impl FnOnce(std::io::Error) -> VmmError {
    move |source| VmmError::Os { what, source }
}

/// The first backing id [`Vmm::add_backing`] hands out, clear of ids registered by hand.
pub const FIRST_ADDED_SOURCE: u64 = 1 << 32;

/// How long the runtime keeps a registered backing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackingLifetime {
    /// Until [`Vmm::unregister_backing`] (or the VMM ends).
    Persistent,
    /// Closed (host mapping and descriptor) once the device reports that no extent uses it any
    /// more: after its extents were released, rejected or abandoned.
    PerExtent,
}

impl BackingLifetime {
    /// Registers `backing` under `id` with `mapper`: a persistent backing mapped whole into the
    /// host, a per-extent one only over the range its extent uses, when it is mapped.
    pub(crate) fn register(
        self,
        mapper: &mut KvmMemslotMapper,
        id: SourceId,
        backing: Backing,
    ) -> Result<(), MemslotError> {
        match self {
            BackingLifetime::Persistent => mapper.register_backing(id, backing),
            BackingLifetime::PerExtent => mapper.register_backing_on_use(id, backing),
        }
    }
}

/// Where a Linux guest's serial console goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SerialConfig {
    /// Standard output (and input from standard input, when the command line asks for it).
    Tty,
    /// A file, created or truncated.
    File(std::path::PathBuf),
    /// Nowhere but [`Vmm::console_lines`].
    #[default]
    Null,
}

/// Configuration of a [`Vmm`].
#[derive(Clone)]
pub struct VmmConfig {
    /// What to boot: a flat image or a Linux kernel (nothing by default: [`Vmm::new`] refuses
    /// [`GuestKind::Unset`]).
    pub guest: GuestKind,
    /// A Linux guest's serial console.
    pub serial: SerialConfig,
    /// Size of the base virtio-mem region (0: none); `device.requested_size` is what starts
    /// plugged. See [`crate::hotplug`].
    pub hotplug_size: u64,
    /// The VM: boot RAM, identity-map limit, memslot cap.
    pub vm: VmConfig,
    /// The tagged virtio-mem device.
    pub device: DeviceConfig,
    /// The host clock under the device's guest clock (a manual clock lets tests expire offers
    /// without waiting); the runtime stops guest time while the vCPU is parked or stopped.
    pub clock: Arc<dyn Clock>,
    /// How often the event loop lets the device expire offers.
    pub timer_period: Duration,
}

impl std::fmt::Debug for VmmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmmConfig")
            .field("guest", &self.guest)
            .field("serial", &self.serial)
            .field("hotplug_size", &self.hotplug_size)
            .field("vm", &self.vm)
            .field("device", &self.device)
            .field("timer_period", &self.timer_period)
            .finish_non_exhaustive()
    }
}

impl Default for VmmConfig {
    fn default() -> Self {
        let vm = VmConfig::default();
        // Tagged capacity only: the base region is one never-plugged block (Linux's virtio_mem
        // fails its probe on an empty one), backed by a sparse memfd `Vmm::new` registers.
        let device = DeviceConfig {
            region_addr: layout::BASE_REGION_ADDR,
            region_size: MINIMAL_BASE_REGION_SIZE,
            region_source: Some(SourceRef {
                id: BASE_REGION_SOURCE,
                offset: 0,
            }),
            requested_size: 0,
            tagged: Some(TaggedWindow {
                addr: layout::TAGGED_WINDOW_BASE,
                size: vm.identity_limit.saturating_sub(layout::TAGGED_WINDOW_BASE),
            }),
            ..DeviceConfig::default()
        };
        VmmConfig {
            guest: GuestKind::Unset,
            serial: SerialConfig::Null,
            hotplug_size: 0,
            vm,
            device,
            clock: Arc::new(MonotonicClock::default()),
            timer_period: Duration::from_millis(50),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_puts_a_valid_window_inside_the_identity_map() {
        let c = VmmConfig::default();
        c.device.validate().unwrap();
        let base = c.device.region_addr..c.device.region_addr + c.device.region_size;
        assert!(
            base.start >= layout::MMIO_END && base.end <= layout::TAGGED_WINDOW_BASE,
            "{base:x?}"
        );
        assert!(base.start >= c.vm.boot_ram_size);
        assert_eq!(c.device.requested_size, 0, "nothing plugged unless asked for");
        let w = c.device.tagged.unwrap();
        assert_eq!(w.addr, layout::TAGGED_WINDOW_BASE);
        assert_eq!(w.addr + w.size, c.vm.identity_limit);
        assert!(w.addr >= layout::MMIO_END && w.addr >= c.vm.boot_ram_size);
        assert!(format!("{c:?}").contains("timer_period"));
    }
}

//! [`Vmm`]: the reference VMM at run time.
//!
//! A [`Vm`] running the guest [`VmmConfig::guest`] names on a vCPU thread of its own, the tagged
//! virtio-mem device behind a virtio-mmio transport, the memslot mapper, and an event loop
//! (`event-manager`) that drives the device's offer timers. Every host-side method takes `&self`
//! and locks what it needs, so a control API can hold an `Arc<Vmm>`.
//!
//! A flat image ([`GuestKind::Flat`], e.g. a bare-metal test program) runs without the in-kernel
//! irqchip: when it halts, the vCPU thread hands out the device's host events and waits for the
//! doorbell ([`Vmm::ring_doorbell`]). Host operations that give the guest something to do (an
//! offer, a release request, a timer that abandoned a chain) ring it, and so does whoever drives
//! a device added with [`Vmm::with_devices`] (e.g. a command queue the guest polls). Such a guest
//! can be parked at a `hlt` ([`Vmm::pause`], [`Vmm::snapshot`]).
//!
//! A Linux guest ([`GuestKind::Linux`]) runs on the in-kernel irqchip instead: its vCPU never
//! exits on `hlt`, the device interrupts through an irqfd, and queue notifications arrive as
//! ioeventfds the event loop serves. The doorbell is then a no-op, and snapshots are refused
//! ([`VmmError::NotParkable`]). The base virtio-mem region ([`crate::hotplug`]) and the tagged
//! device behave the same for both guests.
//!
//! Lock order: device transport, then mapper. The vCPU thread never holds one while taking the
//! other.

use crate::backing::Backing;
use crate::boot::GuestKind;
use crate::bus::{Console, SharedBusDevice};
use crate::hotplug;
use crate::layout;
use crate::legacy::SerialInput;
use crate::memslot::{SharedMapper, SlotInfo};
use crate::mmio::MmioTransport;
use crate::vcpu::{ExitStats, Vcpu};
use crate::vm::{BootMemory, Vm, VmError};
use event_manager::{MutEventSubscriber, RemoteEndpoint, SubscriberId};
use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tagmem_device::{
    ControlError, ExtentInfo, ExtentSpec, GuestClock, HostEvent, OfferReceipt, Perf, SourceId,
    TaggedMemDevice, Target,
};

/// The tagged virtio-mem device as the runtime hosts it.
pub type TaggedDevice = TaggedMemDevice<BootMemory>;
/// The device behind its virtio-mmio transport.
pub type DeviceTransport = MmioTransport<TaggedDevice>;
/// A subscriber the event loop runs (e.g. a control-socket listener).
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// The backing id under which [`Vmm::new`] registers the base region's sparse memfd (the default
/// configuration's `region_source`).
pub use crate::hotplug::BASE_REGION_SOURCE;

/// The reference VMM: a running VM with its guest and the tagged device.
pub struct Vmm {
    shared: Arc<Shared>,
    serial: Option<SerialInput>,
    vcpu: Arc<Mutex<Vcpu>>,
    vcpu_thread: Mutex<Option<VcpuThread>>,
    event_loop: Mutex<Option<EventLoop>>,
    config: VmmConfig,
    // Declared last: dropped after the threads and the vCPU that use it.
    vm: Vm,
}

impl std::fmt::Debug for Vmm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vmm")
            .field("config", &self.config)
            .field("vm", &self.vm)
            .finish_non_exhaustive()
    }
}

/// Everything a [`Vmm`] is assembled from, fresh or restored.
pub(crate) struct Parts {
    pub(crate) vm: Vm,
    pub(crate) clock: Arc<GuestClock>,
    pub(crate) vcpu: Vcpu,
    pub(crate) transport: DeviceTransport,
    pub(crate) backings: BTreeMap<SourceId, BackingLifetime>,
    /// What only a Linux guest has.
    pub(crate) linux: Option<LinuxParts>,
}

/// Where an extra device of [`Vmm::with_devices`] sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceWindow {
    /// Guest-physical `[base, base + len)` on the MMIO bus.
    Mmio {
        /// First address.
        base: u64,
        /// Length.
        len: u64,
    },
    /// Ports `[base, base + len)` on the port-I/O bus.
    Pio {
        /// First port.
        base: u16,
        /// Number of ports.
        len: u16,
    },
}

/// A device the caller adds to the VM (e.g. a command queue of a test program, a debug port).
/// A flat image's free MMIO room is `[layout::MMIO_BASE, layout::VIRTIO_MMIO_BASE)`; the
/// virtio-mmio devices sit above it.
pub struct ExtraDevice {
    /// Where it answers.
    pub window: DeviceWindow,
    /// The device.
    pub device: SharedBusDevice,
}

impl ExtraDevice {
    /// A device answering guest-physical `[base, base + len)` on the MMIO bus.
    pub fn mmio(base: u64, len: u64, device: SharedBusDevice) -> Self {
        ExtraDevice {
            window: DeviceWindow::Mmio { base, len },
            device,
        }
    }

    pub(crate) fn attach(self, vm: &Vm) -> Result<(), VmError> {
        match self.window {
            DeviceWindow::Mmio { base, len } => vm.attach_mmio(base, len, self.device),
            DeviceWindow::Pio { base, len } => vm.attach_pio(base, len, self.device),
        }
    }
}

mod base;
mod config;
mod event_loop;
mod flat;
mod linux;
mod shared;
mod vcpu_thread;

pub(crate) use config::os_err;
pub use config::{BackingLifetime, SerialConfig, VmmConfig, VmmError, FIRST_ADDED_SOURCE};
use event_loop::EventLoop;
pub(crate) use linux::LinuxParts;
pub(crate) use shared::{lock, RunControl, Shared};
use vcpu_thread::VcpuThread;
pub use vcpu_thread::RESET_REASON;

impl Vmm {
    /// Boots a VM with the guest `config.guest` names and the tagged device, and starts the vCPU
    /// thread and the event loop. The device is ready for offers once the guest's driver
    /// activated it ([`Vmm::wait_device_ready`]). The guest's console is [`Vmm::console`] (and,
    /// for a Linux guest, `config.serial`).
    pub fn new(config: VmmConfig) -> Result<Vmm, VmmError> {
        Self::with_devices(config, Vec::new())
    }

    /// Like [`Vmm::new`], with further devices on the VM's buses (attached before the guest
    /// runs; a window that overlaps another device's is refused).
    pub fn with_devices(mut config: VmmConfig, devices: Vec<ExtraDevice>) -> Result<Vmm, VmmError> {
        let requested = config.device.requested_size;
        hotplug::plan(&mut config.device, config.hotplug_size, requested)?;
        let mut parts = match &config.guest {
            GuestKind::Unset => return Err(VmmError::NoGuest),
            GuestKind::Flat(image) => flat::parts(&config, image)?,
            GuestKind::Linux(boot) => linux::parts(&config, boot)?,
        };
        if let Some(src) = config.device.region_source {
            // The base region's backing (the never-plugged block of a tagged-only device, or
            // `hotplug_size`): sparse, so unplugged memory costs nothing.
            let size = src.offset.saturating_add(config.device.region_size);
            parts
                .vm
                .mapper()
                .lock()
                .register_backing(src.id, Backing::memfd("tagmem-base-region", size)?)?;
            parts.backings.insert(src.id, BackingLifetime::Persistent);
        }
        for d in devices {
            d.attach(&parts.vm)?;
        }
        Self::assemble(config, parts)
    }

    /// Attaches the devices and starts the threads.
    pub(crate) fn assemble(config: VmmConfig, parts: Parts) -> Result<Vmm, VmmError> {
        let Parts {
            vm,
            clock,
            vcpu,
            transport,
            backings,
            linux,
        } = parts;
        let transport = Arc::new(Mutex::new(transport));
        let mmio_base = layout::virtio_mmio_addr(0).ok_or(VmError::Layout(
            layout::LayoutError::IdentityLimit(layout::VIRTIO_MMIO_BASE),
        ))?;
        vm.attach_mmio(mmio_base, layout::VIRTIO_MMIO_SIZE, transport.clone())?;
        let shared = Arc::new(Shared {
            transport,
            clock,
            mapper: vm.mapper(),
            backings: Mutex::new(backings),
            next_source: Mutex::new(FIRST_ADDED_SOURCE),
            events: Mutex::new(Vec::new()),
            events_added: Condvar::new(),
            run: Mutex::new(RunControl::default()),
            run_changed: Condvar::new(),
            stop_flag: AtomicBool::new(false),
            console: vm.console().clone(),
            activity: Condvar::new(),
            activity_lock: Mutex::new(()),
            exit_hooks: Mutex::new(Some(Vec::new())),
        });
        let vcpu = Arc::new(Mutex::new(vcpu));
        let event_loop = EventLoop::start(shared.clone(), config.timer_period)?;
        let serial = linux.as_ref().map(|l| SerialInput::new(l.serial.clone()));
        let vmm = Vmm {
            shared: shared.clone(),
            serial,
            vcpu,
            vcpu_thread: Mutex::new(None),
            event_loop: Mutex::new(Some(event_loop)),
            config,
            vm,
        };
        if let Some(l) = linux {
            vmm.add_subscriber(linux::queue_notify_subscriber(l.queue_events, shared))?;
        }
        vmm.start_vcpu()?;
        Ok(vmm)
    }

    /// Whether the vCPU halts to the VMM, so it can be parked at a `hlt` exit for a snapshot
    /// (a flat image); a guest on the in-kernel irqchip does not.
    pub fn parks_on_hlt(&self) -> bool {
        !self.vm.has_irqchip()
    }

    /// Waits up to `timeout` until `done` holds for the device (checked whenever the event loop
    /// served it: a queue notification or a timer tick); returns whether it held.
    pub fn wait_device(&self, timeout: Duration, mut done: impl FnMut(&TaggedDevice) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut g = lock(&self.shared.activity_lock);
        loop {
            if self.shared.device(|d| done(d)) {
                return true;
            }
            if self.shared.exited().is_some() {
                return self.shared.device(|d| done(d));
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            g = self
                .shared
                .activity
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits up to `timeout` until the guest's driver activated the device with tagged extents
    /// negotiated; returns whether it did.
    pub fn wait_device_ready(&self, timeout: Duration) -> bool {
        self.wait_device(timeout, |d| d.is_active() && d.tagged_negotiated())
    }

    /// The configuration the VMM runs with.
    pub fn config(&self) -> &VmmConfig {
        &self.config
    }

    /// The VM.
    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    /// The memslot mapper (slots in use, backings).
    pub fn mapper(&self) -> SharedMapper {
        self.shared.mapper.clone()
    }

    /// The memslots the mapper holds.
    pub fn slots(&self) -> Vec<SlotInfo> {
        self.shared.mapper.lock().slots()
    }

    /// Registers a host backing under `id`, kept as `lifetime` says: a per-extent backing is
    /// mapped into the host only over its extent's range, when the extent is mapped.
    pub fn register_backing(
        &self,
        id: SourceId,
        backing: Backing,
        lifetime: BackingLifetime,
    ) -> Result<(), VmmError> {
        let mut backings = lock(&self.shared.backings);
        lifetime.register(&mut self.shared.mapper.lock(), id, backing)?;
        backings.insert(id, lifetime);
        Ok(())
    }

    /// Registers a host backing under a fresh id (from [`FIRST_ADDED_SOURCE`] up, never reused)
    /// and returns the id; a [`BackingLifetime::PerExtent`] backing is closed once the device
    /// reports it unused.
    pub fn add_backing(&self, backing: Backing, lifetime: BackingLifetime) -> Result<SourceId, VmmError> {
        let id = {
            let mut next = lock(&self.shared.next_source);
            let id = SourceId(*next);
            *next += 1;
            id
        };
        self.register_backing(id, backing, lifetime)?;
        Ok(id)
    }

    /// Unregisters a backing no mapping uses and hands it back.
    pub fn unregister_backing(&self, id: SourceId) -> Result<Backing, VmmError> {
        let mut backings = lock(&self.shared.backings);
        let b = self.shared.mapper.lock().unregister_backing(id)?;
        backings.remove(&id);
        Ok(b)
    }

    /// Whether backing `id` is registered (a per-extent backing disappears once closed).
    pub fn has_backing(&self, id: SourceId) -> bool {
        self.shared.mapper.lock().backing(id).is_some()
    }

    /// Offers a chain of extents to the guest's driver.
    pub fn offer(&self, chain: &[ExtentSpec]) -> Result<OfferReceipt, ControlError> {
        let receipt = self.shared.device(|d| d.offer(chain))?;
        self.shared.pump();
        self.shared.ring();
        Ok(receipt)
    }

    /// Asks the driver to release a tag group or an untagged extent; returns the extent ids.
    pub fn request_release(&self, target: Target) -> Result<Vec<u64>, ControlError> {
        let r = self.shared.device(|d| d.request_release(target));
        self.shared.pump();
        self.shared.ring();
        r
    }

    /// Updates performance metadata of accepted capacity and tells the driver.
    pub fn update_metadata(&self, target: Target, perf: Perf) -> Result<Vec<u64>, ControlError> {
        let r = self.shared.device(|d| d.update_metadata(target, perf));
        self.shared.ring();
        r
    }

    /// Reports poison in an accepted extent to the driver.
    pub fn inject_poison(&self, extent_id: u64, offset: u64, length: u64) -> Result<(), ControlError> {
        let r = self.shared.device(|d| d.inject_poison(extent_id, offset, length));
        self.shared.ring();
        r
    }

    /// The device's extent table.
    pub fn extents(&self) -> Vec<ExtentInfo> {
        self.shared.device(|d| d.extents())
    }

    /// Whether the driver activated the device with tagged extents negotiated.
    pub fn device_ready(&self) -> bool {
        self.shared.device(|d| d.is_active() && d.tagged_negotiated())
    }

    /// Host events since the last call (per-extent backings of released capacity are closed
    /// before the events are handed out).
    pub fn take_host_events(&self) -> Vec<HostEvent> {
        self.shared.pump();
        std::mem::take(&mut *lock(&self.shared.events))
    }

    /// Waits up to `timeout` until host events are queued (the guest's answers and the event
    /// loop's timers produce them), then takes them; empty if none came.
    pub fn wait_host_events(&self, timeout: Duration) -> Vec<HostEvent> {
        self.shared.pump();
        let deadline = Instant::now() + timeout;
        let mut events = lock(&self.shared.events);
        while events.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            events = self
                .shared
                .events_added
                .wait_timeout(events, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        std::mem::take(&mut *events)
    }

    /// Lets the device expire offers now (the event loop also does this periodically).
    pub fn poll_timers(&self) {
        self.shared.poll_timers();
    }

    /// Runs `f` on the device under its lock (metrics, configuration, snapshots).
    pub fn with_device<R>(&self, f: impl FnOnce(&mut TaggedDevice) -> R) -> R {
        self.shared.device(f)
    }

    /// Adds a subscriber to the event loop (e.g. a control socket); returns its id.
    pub fn add_subscriber(&self, subscriber: Subscriber) -> Result<SubscriberId, VmmError> {
        let endpoint = self.endpoint()?;
        Ok(endpoint
            .call_blocking(move |ops| Ok::<_, event_manager::Error>(ops.add_subscriber(subscriber)))?)
    }

    /// Removes a subscriber from the event loop.
    pub fn remove_subscriber(&self, id: SubscriberId) -> Result<(), VmmError> {
        let endpoint = self.endpoint()?;
        endpoint.call_blocking(move |ops| ops.remove_subscriber(id).map(|_| ()))?;
        Ok(())
    }

    fn endpoint(&self) -> Result<RemoteEndpoint<Subscriber>, VmmError> {
        lock(&self.event_loop)
            .as_ref()
            .map(|l| l.endpoint.clone())
            .ok_or(VmmError::EventLoop(event_manager::Error::ChannelSend))
    }

    /// Console lines the guest printed so far.
    pub fn console_lines(&self) -> Vec<String> {
        self.shared.console.lines()
    }

    /// The guest's console: what a flat image writes to COM1, or a Linux guest's serial output.
    pub fn console(&self) -> &Arc<Console> {
        &self.shared.console
    }

    /// Rings the doorbell: a guest halted in the VMM (a flat image) runs again. Host operations
    /// that give the guest work ring it themselves; whoever queues work in a device added with
    /// [`Vmm::with_devices`] rings it too. A guest on the in-kernel irqchip never waits for it.
    pub fn ring_doorbell(&self) {
        self.shared.ring();
    }

    /// Moves the device's host events into the queue [`Vmm::take_host_events`] reads and closes
    /// per-extent backings no extent uses any more; returns the number of events moved. The vCPU
    /// thread does this whenever a flat image halts; call it to see at once what the guest's
    /// requests just produced (e.g. once a command the guest ran is complete).
    pub fn pump_host_events(&self) -> usize {
        self.shared.pump()
    }

    /// Runs `hook` with the reason once the vCPU thread has ended (the guest reset or stopped,
    /// [`Vmm::shutdown`], a vCPU error), or at once if it has already. Hooks run on the vCPU
    /// thread after [`Vmm::guest_exited`] reports the reason, e.g. to wake waiters of a device
    /// the guest will no longer answer.
    pub fn on_exit(&self, hook: impl FnOnce(&str) + Send + 'static) {
        let mut hooks = lock(&self.shared.exit_hooks);
        match hooks.as_mut() {
            Some(pending) => pending.push(Box::new(hook)),
            None => {
                drop(hooks);
                hook(&self.shared.exited().unwrap_or_default());
            }
        }
    }

    /// The vCPU's exit counters (waits for a running guest to halt).
    pub fn exit_stats(&self) -> ExitStats {
        *lock(&self.vcpu).stats()
    }

    /// The vCPU's instruction pointer (waits for a running vCPU to stop or exit).
    pub fn vcpu_rip(&self) -> Option<u64> {
        lock(&self.vcpu).regs().ok().map(|r| r.rip)
    }

    /// Why the guest stopped running, if it did.
    pub fn guest_exited(&self) -> Option<String> {
        self.shared.exited()
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configuration_without_a_guest_is_refused_before_kvm() {
        assert_eq!(VmmConfig::default().guest, GuestKind::Unset);
        let err = Vmm::new(VmmConfig::default()).unwrap_err();
        assert!(matches!(err, VmmError::NoGuest), "{err}");
    }
}

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
use crate::boot::machine::MachineError;
use crate::boot::GuestKind;
use crate::bus::{Console, SharedBusDevice};
use crate::hotplug::{self, HotplugError};
use crate::layout;
use crate::legacy::SerialInput;
use crate::memslot::{MemslotError, SharedMapper, SlotInfo};
use crate::mmio::{MmioRestoreError, MmioTransport};
use crate::vcpu::{ExitStats, RunLimit, RunOutcome, Vcpu, VcpuError, VcpuKicker};
use crate::vm::{BootMemory, Vm, VmConfig, VmError};
use event_manager::{
    EventManager, EventOps, EventSet, Events, MutEventSubscriber, RemoteEndpoint, SubscriberId, SubscriberOps,
};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tagmem_device::{
    Clock, ControlError, DeviceConfig, DeviceError, ExtentInfo, ExtentSpec, GuestClock, HostEvent,
    MonotonicClock, OfferReceipt, Perf, SourceId, SourceRef, TaggedMemDevice, TaggedWindow, Target,
    MINIMAL_BASE_REGION_SIZE,
};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

/// The tagged virtio-mem device as the runtime hosts it.
pub type TaggedDevice = TaggedMemDevice<BootMemory>;
/// The device behind its virtio-mmio transport.
pub type DeviceTransport = MmioTransport<TaggedDevice>;
/// A subscriber the event loop runs (e.g. a control-socket listener).
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// The backing id under which [`Vmm::new`] registers the base region's sparse memfd (the default
/// configuration's `region_source`).
pub use crate::hotplug::BASE_REGION_SOURCE;

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

fn os_err(what: &'static str) -> impl FnOnce(std::io::Error) -> VmmError {
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

/// Where the vCPU thread is.
#[derive(Debug, Default)]
struct RunControl {
    /// Doorbell rings so far; a change makes a halted guest run again.
    rings: u64,
    /// Holders that want the vCPU parked at its next `hlt` (a snapshot, [`Vmm::pause`]).
    pause: u32,
    /// [`Vmm::pause`] holds one of them.
    paused_by_request: bool,
    /// The vCPU is parked at a `hlt` exit.
    parked: bool,
    /// End the vCPU thread.
    stop: bool,
    /// Why the vCPU thread ended, once it has.
    exited: Option<String>,
}

/// What the vCPU thread, the event loop and the host side share.
pub(crate) struct Shared {
    pub(crate) transport: Arc<Mutex<DeviceTransport>>,
    /// The device's clock: guest time, stopped while the vCPU is parked or stopped.
    pub(crate) clock: Arc<GuestClock>,
    pub(crate) mapper: SharedMapper,
    /// How long each registered backing is kept; the mapper holds the backing itself.
    pub(crate) backings: Mutex<BTreeMap<SourceId, BackingLifetime>>,
    /// The next id [`Vmm::add_backing`] hands out.
    next_source: Mutex<u64>,
    events: Mutex<Vec<HostEvent>>,
    events_added: Condvar,
    run: Mutex<RunControl>,
    run_changed: Condvar,
    stop_flag: AtomicBool,
    pub(crate) console: Arc<Console>,
    /// Notified when the event loop served the device (queue notifications, timers), so waiters
    /// for the driver (e.g. [`Vmm::wait_device_ready`]) re-check.
    activity: Condvar,
    activity_lock: Mutex<()>,
    /// What [`Vmm::on_exit`] asked to run when the vCPU thread ends; `None` once it has run them.
    exit_hooks: Mutex<Option<Vec<ExitHook>>>,
}

/// A function [`Vmm::on_exit`] runs with the reason the vCPU thread ended.
type ExitHook = Box<dyn FnOnce(&str) + Send>;

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn device<R>(&self, f: impl FnOnce(&mut TaggedDevice) -> R) -> R {
        f(lock(&self.transport).device_mut())
    }

    /// Makes a halted guest run again (it polls its driver and its command queue).
    fn ring(&self) {
        let mut rc = lock(&self.run);
        rc.rings = rc.rings.wrapping_add(1);
        self.run_changed.notify_all();
    }

    /// Moves the device's host events to the runtime's queue and closes the per-extent backings
    /// the device reports unused ([`TaggedMemDevice::take_unused_sources`]). Returns the number
    /// of events moved.
    ///
    /// Runs under the device lock from start to end, so an offer cannot slip in between the
    /// report and the close, the backings of released extents are closed before anyone can see
    /// their `Released` event, and events keep their order.
    fn pump(&self) -> usize {
        let mut t = lock(&self.transport);
        let events = t.device_mut().take_host_events();
        let unused = t.device_mut().take_unused_sources();
        if !unused.is_empty() {
            let mut backings = lock(&self.backings);
            let mut mapper = self.mapper.lock();
            for id in unused {
                if backings.get(&id) == Some(&BackingLifetime::PerExtent) {
                    // Dropping the backing closes its descriptor; its mappings went with the
                    // extents.
                    if mapper.unregister_backing(id).is_ok() {
                        backings.remove(&id);
                    }
                }
            }
        }
        if events.is_empty() {
            return 0;
        }
        // Published before the device lock is let go: a pump that finds nothing new can rely
        // on every earlier event being in the queue already.
        let n = events.len();
        lock(&self.events).extend(events);
        self.events_added.notify_all();
        drop(t);
        n
    }

    fn poll_timers(&self) {
        self.device(|d| d.poll_timers());
        if self.pump() > 0 {
            self.ring();
        }
        self.notify_activity();
    }

    fn notify_activity(&self) {
        let _g = lock(&self.activity_lock);
        self.activity.notify_all();
    }

    fn exited(&self) -> Option<String> {
        lock(&self.run).exited.clone()
    }
}

/// The event loop's timer: lets the device expire offers.
struct TimerSubscriber {
    timer: TimerFd,
    shared: Arc<Shared>,
}

impl MutEventSubscriber for TimerSubscriber {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.event_set().intersects(EventSet::ERROR | EventSet::HANG_UP) {
            eprintln!("tagmem-vmm: timer descriptor failed; offers no longer expire");
            let _ = ops.remove(events);
            return;
        }
        if let Err(e) = self.timer.wait() {
            eprintln!("tagmem-vmm: reading the timer failed: {e}");
        }
        self.shared.poll_timers();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.timer, EventSet::IN)) {
            eprintln!("tagmem-vmm: registering the timer failed: {e}");
        }
    }
}

/// Ends the event loop when its eventfd is written.
struct ExitSubscriber {
    event: EventFd,
    exit: Arc<AtomicBool>,
}

impl MutEventSubscriber for ExitSubscriber {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.event_set().intersects(EventSet::ERROR | EventSet::HANG_UP) {
            let _ = ops.remove(events);
        }
        let _ = self.event.read();
        self.exit.store(true, Ordering::SeqCst);
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.event, EventSet::IN)) {
            eprintln!("tagmem-vmm: registering the exit event failed: {e}");
        }
    }
}

/// The event loop thread and how to reach it.
struct EventLoop {
    endpoint: RemoteEndpoint<Subscriber>,
    exit_event: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl EventLoop {
    fn start(shared: Arc<Shared>, period: Duration) -> Result<Self, VmmError> {
        let mut manager = EventManager::<Subscriber>::new()?;
        let mut timer = TimerFd::new().map_err(|e| VmmError::Os {
            what: "creating the timer",
            source: e.into(),
        })?;
        timer.reset(period, Some(period)).map_err(|e| VmmError::Os {
            what: "arming the timer",
            source: e.into(),
        })?;
        manager.add_subscriber(Arc::new(Mutex::new(TimerSubscriber { timer, shared })));
        let exit_event = EventFd::new(libc::EFD_NONBLOCK).map_err(os_err("creating the exit eventfd"))?;
        let exit = Arc::new(AtomicBool::new(false));
        manager.add_subscriber(Arc::new(Mutex::new(ExitSubscriber {
            event: exit_event
                .try_clone()
                .map_err(os_err("cloning the exit eventfd"))?,
            exit: exit.clone(),
        })));
        let endpoint = manager.remote_endpoint();
        let thread = std::thread::Builder::new()
            .name("vmm-event-loop".into())
            .spawn(move || {
                while !exit.load(Ordering::SeqCst) {
                    if let Err(e) = manager.run() {
                        eprintln!("tagmem-vmm: event loop: {e}");
                    }
                }
            })
            .map_err(os_err("starting the event loop thread"))?;
        Ok(EventLoop {
            endpoint,
            exit_event,
            thread: Some(thread),
        })
    }

    fn stop(&mut self) {
        if let Some(t) = self.thread.take() {
            if self.exit_event.write(1).is_ok() {
                let _ = t.join();
            }
        }
    }
}

/// The vCPU thread and its kicker.
struct VcpuThread {
    kicker: VcpuKicker,
    thread: Option<JoinHandle<()>>,
}

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
mod flat;
mod linux;

pub(crate) use linux::LinuxParts;

/// Why the vCPU thread ended when the guest reset the machine (e.g. Linux `reboot`).
pub const RESET_REASON: &str = "the guest reset the machine";

/// Run limit of the vCPU thread: no exit cap, no timeout (it is stopped through its flag).
const VCPU_THREAD_LIMIT: RunLimit = RunLimit {
    max_exits: u64::MAX,
    timeout: None,
};

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

    /// Waits up to `timeout` until the vCPU thread ended (the guest reset or powered off, or a
    /// vCPU error); returns why, or `None` if it still runs.
    pub fn wait_exit(&self, timeout: Option<Duration>) -> Option<String> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut rc = lock(&self.shared.run);
        loop {
            if let Some(r) = &rc.exited {
                return Some(r.clone());
            }
            match deadline {
                None => {
                    rc = self
                        .shared
                        .run_changed
                        .wait(rc)
                        .unwrap_or_else(|e| e.into_inner())
                }
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return None;
                    }
                    rc = self
                        .shared
                        .run_changed
                        .wait_timeout(rc, d - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
    }

    fn start_vcpu(&self) -> Result<(), VmmError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let shared = self.shared.clone();
        let vcpu = self.vcpu.clone();
        let thread = std::thread::Builder::new()
            .name("vcpu0".into())
            .spawn(move || {
                let kicker = VcpuKicker::for_current_thread();
                let ok = kicker.is_ok();
                let _ = tx.send(kicker);
                if ok {
                    vcpu_loop(&vcpu, &shared);
                }
            })
            .map_err(os_err("starting the vCPU thread"))?;
        let kicker = rx.recv().map_err(|_| VmmError::GuestStopped {
            reason: "the vCPU thread ended at start".into(),
            console: String::new(),
        })??;
        *lock(&self.vcpu_thread) = Some(VcpuThread {
            kicker,
            thread: Some(thread),
        });
        Ok(())
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

    /// Registers a host backing under `id`, kept as `lifetime` says.
    pub fn register_backing(
        &self,
        id: SourceId,
        backing: Backing,
        lifetime: BackingLifetime,
    ) -> Result<(), VmmError> {
        let mut backings = lock(&self.shared.backings);
        self.shared.mapper.lock().register_backing(id, backing)?;
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

    /// Parks the vCPU at its next `hlt` (the guest is idle then) and stops guest time; the
    /// caller undoes both with [`Vmm::unpark`].
    fn park(&self) -> Result<(), VmmError> {
        let mut rc = lock(&self.shared.run);
        rc.pause += 1;
        rc.rings = rc.rings.wrapping_add(1);
        self.shared.run_changed.notify_all();
        while !rc.parked && rc.exited.is_none() {
            rc = self
                .shared
                .run_changed
                .wait(rc)
                .unwrap_or_else(|e| e.into_inner());
        }
        if let Some(reason) = rc.exited.clone() {
            rc.pause -= 1;
            return Err(VmmError::GuestStopped {
                reason,
                console: self.shared.console.contents(),
            });
        }
        // [T-TIMEOUT-1]: offers do not time out while the guest cannot answer them.
        self.shared.clock.pause();
        Ok(())
    }

    fn unpark(&self) {
        self.shared.clock.resume();
        let mut rc = lock(&self.shared.run);
        rc.pause = rc.pause.saturating_sub(1);
        self.shared.run_changed.notify_all();
    }

    /// Parks the vCPU at its next `hlt` and runs `f` while it is parked, guest time stopped;
    /// used for snapshots.
    pub(crate) fn while_parked<R>(&self, f: impl FnOnce(&Vcpu) -> R) -> Result<R, VmmError> {
        // A guest on the in-kernel irqchip never exits on `hlt`, so it never parks.
        if !self.parks_on_hlt() {
            return Err(VmmError::NotParkable);
        }
        self.park()?;
        let r = f(&lock(&self.vcpu));
        self.unpark();
        Ok(r)
    }

    /// Pauses the guest: parks the vCPU at its next `hlt` and stops guest time, so unanswered
    /// offers do not time out while it is paused (SPEC.md [T-TIMEOUT-1]). Guest commands wait
    /// until [`Vmm::resume`]. Pausing a paused VM does nothing.
    pub fn pause(&self) -> Result<(), VmmError> {
        if lock(&self.shared.run).paused_by_request {
            return Ok(());
        }
        self.park()?;
        lock(&self.shared.run).paused_by_request = true;
        Ok(())
    }

    /// Lets a paused guest run again; guest time runs on from where it stopped.
    pub fn resume(&self) {
        let was = std::mem::take(&mut lock(&self.shared.run).paused_by_request);
        if was {
            self.unpark();
        }
    }

    /// Whether [`Vmm::pause`] holds the guest.
    pub fn is_paused(&self) -> bool {
        lock(&self.shared.run).paused_by_request
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Stops the vCPU thread and the event loop, and with them guest time. The VM stays
    /// inspectable; guest commands fail.
    pub fn shutdown(&self) {
        if let Some(mut l) = lock(&self.event_loop).take() {
            l.stop();
        }
        let Some(mut t) = lock(&self.vcpu_thread).take() else {
            return;
        };
        self.shared.clock.pause();
        self.shared.stop_flag.store(true, Ordering::SeqCst);
        {
            let mut rc = lock(&self.shared.run);
            rc.stop = true;
            self.shared.run_changed.notify_all();
        }
        if let Some(handle) = t.thread.take() {
            while !handle.is_finished() {
                // SAFETY: the vCPU thread is not joined yet (`handle` is joined only below), so
                // the thread the kicker names still exists, at worst as a finished thread.
                unsafe { t.kicker.kick() };
                std::thread::sleep(Duration::from_millis(2));
            }
            let _ = handle.join();
        }
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The vCPU thread: runs the guest until it halts, waits for the doorbell, runs it again.
fn vcpu_loop(vcpu: &Mutex<Vcpu>, shared: &Shared) {
    let reason = loop {
        let seen = lock(&shared.run).rings;
        let outcome = lock(vcpu).run_until(VCPU_THREAD_LIMIT, &shared.stop_flag);
        match outcome {
            Ok(RunOutcome::Halted) => {
                // Hand out what the guest's requests produced (and close released backings).
                shared.pump();
                let mut rc = lock(&shared.run);
                let stop = loop {
                    if rc.stop {
                        break true;
                    }
                    if rc.pause > 0 {
                        rc.parked = true;
                        shared.run_changed.notify_all();
                    } else {
                        rc.parked = false;
                        if rc.rings != seen {
                            break false;
                        }
                    }
                    rc = shared.run_changed.wait(rc).unwrap_or_else(|e| e.into_inner());
                };
                rc.parked = false;
                if stop {
                    break "stopped".to_string();
                }
            }
            Ok(RunOutcome::Stopped) => break "stopped".to_string(),
            Ok(RunOutcome::Shutdown { rip }) => break format!("the guest triple-faulted (rip {rip:x?})"),
            Ok(RunOutcome::Reset) => break RESET_REASON.to_string(),
            Ok(RunOutcome::ExitLimit | RunOutcome::TimedOut) => {}
            Err(e) => break format!("vCPU error: {e}"),
        }
    };
    lock(&shared.run).exited = Some(reason.clone());
    shared.run_changed.notify_all();
    let hooks = lock(&shared.exit_hooks).take().unwrap_or_default();
    for hook in hooks {
        hook(&reason);
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

    #[test]
    fn a_configuration_without_a_guest_is_refused_before_kvm() {
        assert_eq!(VmmConfig::default().guest, GuestKind::Unset);
        let err = Vmm::new(VmmConfig::default()).unwrap_err();
        assert!(matches!(err, VmmError::NoGuest), "{err}");
    }
}

//! A vCPU set straight into 64-bit long mode, and its run loop.
//!
//! Exits are handled here: port I/O and MMIO windows on the VM's buses, and accesses to guest
//! addresses nothing backs, which read as all-ones, drop writes and are counted. A guest's reset
//! request (i8042, triple fault) ends the run. A bounded run
//! stops after a number of exits or a wall-clock timeout (a watchdog thread kicks the vCPU out of
//! `KVM_RUN` with a signal), so a test can never hang on a runaway guest.

use crate::bus::MmioBus;
use crate::layout;
use crate::memslot::{HostAccess, SharedMapper};
use crate::vmfd::VmShared;
use kvm_bindings::{kvm_fpu, kvm_run, kvm_segment, CpuId};
use kvm_ioctls::{VcpuExit, VcpuFd};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace};
use vmm_sys_util::signal::Killable;

/// Most instruction bytes an x86 instruction has; this many are shown after an internal error.
const MAX_INSN_LEN: usize = 15;
/// Local APIC register offsets of LVT LINT0 and LINT1.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
/// LVT delivery modes (bits 8..=10).
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

const CR0_PE: u64 = 1 << 0;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_AM: u64 = 1 << 18;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const RFLAGS_RESERVED: u64 = 1 << 1;
const FPU_CONTROL_WORD: u16 = 0x37f;
const MXCSR_DEFAULT: u32 = 0x1f80;

/// Errors of a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// A KVM ioctl failed.
    #[error("KVM {op} failed")]
    Kvm {
        /// What was attempted.
        op: &'static str,
        /// KVM's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM could not enter the guest.
    #[error("KVM failed to enter the guest: hardware reason {0:#x}")]
    FailEntry(u64),
    /// KVM reported an internal error (suberror 1 is an instruction the emulator cannot run).
    #[error(
        "KVM internal error {suberror} while running the guest (data {data:x?}) at rip {rip:#x?}, \
         instruction bytes {code:02x?}"
    )]
    InternalError {
        /// `kvm_run.internal.suberror`.
        suberror: u32,
        /// The first words of `kvm_run.internal.data`.
        data: Vec<u64>,
        /// The guest's instruction pointer, if KVM reported registers.
        rip: Option<u64>,
        /// Instruction bytes at `rip`, if it translates to boot RAM.
        code: Vec<u8>,
    },
    /// [`crate::Vm::create_vcpu`] on a VM without identity page tables (use `create_vcpu_with`).
    #[error("the VM has no identity page tables for a flat image")]
    NoPageTables,
    /// An exit the VMM does not handle.
    #[error("unexpected vCPU exit: {0}")]
    UnexpectedExit(String),
    /// The watchdog thread could not be started.
    #[error("starting the vCPU watchdog failed")]
    Watchdog(#[source] std::io::Error),
}

/// How long a bounded run may go on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunLimit {
    /// Most exits to handle before giving up.
    pub max_exits: u64,
    /// Wall-clock limit, if any.
    pub timeout: Option<Duration>,
}

impl Default for RunLimit {
    fn default() -> Self {
        RunLimit {
            max_exits: 10_000_000,
            timeout: Some(Duration::from_secs(60)),
        }
    }
}

/// Why a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunOutcome {
    /// The guest executed `hlt`; running again resumes after it.
    Halted,
    /// The guest triple-faulted (KVM_EXIT_SHUTDOWN); `rip` is where it was, if readable.
    Shutdown {
        /// Instruction pointer after the fault, if KVM still reports registers.
        rip: Option<u64>,
    },
    /// [`RunLimit::max_exits`] reached.
    ExitLimit,
    /// [`RunLimit::timeout`] reached.
    TimedOut,
    /// The stop flag given to [`Vcpu::run_until`] was set.
    Stopped,
    /// The guest asked for a reset or power-off through a device (the i8042 controller).
    Reset,
}

/// Registers a snapshot keeps of a vCPU stopped at a `hlt` exit.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VcpuState {
    /// General-purpose registers.
    pub regs: kvm_bindings::kvm_regs,
    /// Segment, control and descriptor-table registers, EFER.
    pub sregs: kvm_bindings::kvm_sregs,
    /// x87/SSE state.
    pub fpu: kvm_fpu,
}

/// Counters of handled exits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitStats {
    /// All exits.
    pub exits: u64,
    /// Bytes written to the COM1 data register.
    pub console_bytes: u64,
    /// Port accesses served by a device on the port-I/O bus.
    pub pio_accesses: u64,
    /// Port accesses to ports nothing handles.
    pub unhandled_port_io: u64,
    /// MMIO accesses served by a device on the bus.
    pub bus_accesses: u64,
    /// Reads of guest addresses nothing backs (answered with all-ones).
    pub unmapped_reads: u64,
    /// Writes to guest addresses nothing backs (dropped).
    pub unmapped_writes: u64,
    /// Guest writes to read-only mappings (dropped).
    pub readonly_writes: u64,
    /// Accesses to mapped memory that exited while its slot was being replaced.
    pub slot_race_accesses: u64,
    /// Last unbacked guest address accessed.
    pub last_unmapped: Option<u64>,
    /// Exits by kind: port I/O.
    pub port_io: u64,
    /// Exits by kind: MMIO (bus devices, racing or unbacked accesses).
    pub mmio: u64,
    /// Of [`ExitStats::mmio`], accesses to the virtio-mmio transports' window.
    pub virtio_mmio: u64,
    /// Exits by kind: `hlt`.
    pub hlt: u64,
    /// Exits by kind: anything else (signal kicks, shutdown, errors).
    pub other: u64,
}

/// Whether `addr` lies in the virtio-mmio transports' window (above the test-control device).
fn in_virtio_window(addr: u64) -> bool {
    (layout::VIRTIO_MMIO_BASE..layout::MMIO_END).contains(&addr)
}

/// Registers a vCPU starts with: 64-bit long mode on the page tables at `cr3`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuBoot {
    /// Instruction pointer.
    pub entry: u64,
    /// Stack pointer (and frame pointer).
    pub stack_top: u64,
    /// Physical address of the PML4.
    pub cr3: u64,
    /// RSI: the zero page of the Linux 64-bit boot protocol (0 for a flat image).
    pub boot_params: u64,
}

/// What a vCPU shares with its VM.
pub(crate) struct VcpuWiring {
    pub(crate) vm: Arc<VmShared>,
    pub(crate) bus: Arc<MmioBus>,
    pub(crate) pio: Arc<MmioBus>,
    pub(crate) mapper: SharedMapper,
    pub(crate) reset: Arc<AtomicBool>,
    pub(crate) irqchip: bool,
}

/// One vCPU of a [`crate::Vm`].
pub struct Vcpu {
    // Declared first so it is closed before `vm` may release boot RAM.
    fd: VcpuFd,
    vm: Arc<VmShared>,
    bus: Arc<MmioBus>,
    pio: Arc<MmioBus>,
    mapper: SharedMapper,
    reset: Arc<AtomicBool>,
    stats: ExitStats,
}

impl std::fmt::Debug for Vcpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vcpu")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

fn segment(selector: u16, type_: u8, long: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xfffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: u8::from(!long),
        s: 1,
        l: u8::from(long),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

impl Vcpu {
    pub(crate) fn new(
        fd: VcpuFd,
        wiring: VcpuWiring,
        cpuid: &CpuId,
        boot: VcpuBoot,
    ) -> Result<Self, VcpuError> {
        let kvm = |op| move |source| VcpuError::Kvm { op, source };
        fd.set_cpuid2(cpuid).map_err(kvm("set CPUID"))?;

        let mut sregs = fd.get_sregs().map_err(kvm("get sregs"))?;
        let code = segment(layout::CODE_SELECTOR, 0xb, true);
        let data = segment(layout::DATA_SELECTOR, 0x3, false);
        sregs.cs = code;
        sregs.ds = data;
        sregs.es = data;
        sregs.fs = data;
        sregs.gs = data;
        sregs.ss = data;
        sregs.tr = kvm_segment {
            limit: 0x67,
            s: 0,
            g: 0,
            db: 0,
            ..segment(layout::TSS_SELECTOR, 0xb, false)
        };
        sregs.gdt.base = layout::GDT_ADDR;
        sregs.gdt.limit = u16::try_from(std::mem::size_of_val(&layout::GDT) - 1).unwrap_or(u16::MAX);
        sregs.idt.base = 0;
        sregs.idt.limit = 0;
        sregs.cr3 = boot.cr3;
        sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
        sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_AM | CR0_PG;
        sregs.efer = EFER_LME | EFER_LMA;
        fd.set_sregs(&sregs).map_err(kvm("set sregs"))?;

        let fpu = kvm_fpu {
            fcw: FPU_CONTROL_WORD,
            mxcsr: MXCSR_DEFAULT,
            ..Default::default()
        };
        fd.set_fpu(&fpu).map_err(kvm("set FPU"))?;

        let mut regs = fd.get_regs().map_err(kvm("get regs"))?;
        regs.rip = boot.entry;
        regs.rsp = boot.stack_top;
        regs.rbp = boot.stack_top;
        regs.rsi = boot.boot_params;
        regs.rflags = RFLAGS_RESERVED;
        fd.set_regs(&regs).map_err(kvm("set regs"))?;

        if wiring.irqchip {
            set_lint(&fd)?;
        }

        Ok(Vcpu {
            fd,
            vm: wiring.vm,
            bus: wiring.bus,
            pio: wiring.pio,
            mapper: wiring.mapper,
            reset: wiring.reset,
            stats: ExitStats::default(),
        })
    }

    /// Exit counters so far.
    pub fn stats(&self) -> &ExitStats {
        &self.stats
    }

    /// The guest's general-purpose registers.
    pub fn regs(&self) -> Result<kvm_bindings::kvm_regs, VcpuError> {
        self.fd.get_regs().map_err(|source| VcpuError::Kvm {
            op: "get regs",
            source,
        })
    }

    /// The guest's special registers.
    pub fn sregs(&self) -> Result<kvm_bindings::kvm_sregs, VcpuError> {
        self.fd.get_sregs().map_err(|source| VcpuError::Kvm {
            op: "get sregs",
            source,
        })
    }

    /// Captures the registers; meaningful between runs (e.g. after a `hlt` exit), when no exit
    /// waits for completion.
    pub fn save_state(&self) -> Result<VcpuState, VcpuError> {
        let kvm = |op| move |source| VcpuError::Kvm { op, source };
        Ok(VcpuState {
            regs: self.fd.get_regs().map_err(kvm("get regs"))?,
            sregs: self.fd.get_sregs().map_err(kvm("get sregs"))?,
            fpu: self.fd.get_fpu().map_err(kvm("get FPU"))?,
        })
    }

    /// Loads registers captured by [`Vcpu::save_state`] (special registers first, as paging
    /// mode and segments govern how the rest is used).
    pub fn restore_state(&mut self, state: &VcpuState) -> Result<(), VcpuError> {
        let kvm = |op| move |source| VcpuError::Kvm { op, source };
        self.fd.set_sregs(&state.sregs).map_err(kvm("set sregs"))?;
        self.fd.set_fpu(&state.fpu).map_err(kvm("set FPU"))?;
        self.fd.set_regs(&state.regs).map_err(kvm("set regs"))?;
        Ok(())
    }

    /// Runs the guest until it halts, triple-faults, or `limit` is reached.
    pub fn run(&mut self, limit: RunLimit) -> Result<RunOutcome, VcpuError> {
        self.run_until(limit, &AtomicBool::new(false))
    }

    /// Like [`Vcpu::run`], and also returns [`RunOutcome::Stopped`] once `stop` is set. Another
    /// thread sets `stop` and then kicks this one out of `KVM_RUN` with a [`VcpuKicker`]; a run
    /// stops only between exits, after the previous exit was completed.
    pub fn run_until(&mut self, limit: RunLimit, stop: &AtomicBool) -> Result<RunOutcome, VcpuError> {
        // From here on a kick sets this vCPU's `immediate_exit`, so one that lands outside
        // KVM_RUN makes the next entry return at once instead of being lost.
        let _kickable = KickTarget::enter(&mut self.fd)?;
        let watchdog = limit.timeout.map(Watchdog::start).transpose()?;
        let fired = || watchdog.as_ref().is_some_and(Watchdog::fired);
        let mut exits = 0u64;
        let mut completing = false;
        loop {
            if fired() {
                return Ok(RunOutcome::TimedOut);
            }
            // An exit just handled (e.g. an MMIO read) completes on the next KVM_RUN: stop only
            // before a fresh entry so the registers are consistent when the caller saves them.
            if !completing && stop.load(Ordering::SeqCst) {
                return Ok(RunOutcome::Stopped);
            }
            if exits >= limit.max_exits {
                return Ok(RunOutcome::ExitLimit);
            }
            // KVM completes a pending exit at entry, before it checks for signals: whatever
            // KVM_RUN returns, nothing is pending afterwards until an I/O exit below.
            let result = self.fd.run();
            completing = false;
            let exit = match result {
                Ok(exit) => exit,
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    // A kick: KVM completed any pending exit first (immediate_exit is checked
                    // after that), so the loop may stop now; the next entry runs the guest again.
                    self.fd.set_kvm_immediate_exit(0);
                    continue;
                }
                Err(source) => return Err(VcpuError::Kvm { op: "run", source }),
            };
            exits += 1;
            self.stats.exits += 1;
            match &exit {
                VcpuExit::IoOut(..) | VcpuExit::IoIn(..) => self.stats.port_io += 1,
                VcpuExit::MmioRead(addr, _) | VcpuExit::MmioWrite(addr, _) => {
                    self.stats.mmio += 1;
                    self.stats.virtio_mmio += u64::from(in_virtio_window(*addr));
                }
                VcpuExit::Hlt => self.stats.hlt += 1,
                _ => self.stats.other += 1,
            }
            match exit {
                VcpuExit::IoOut(port, data) => {
                    completing = true;
                    if self.pio.write(u64::from(port), data) {
                        self.stats.pio_accesses += 1;
                        if port == layout::COM1_PORT {
                            self.stats.console_bytes += u64::try_from(data.len()).unwrap_or(u64::MAX);
                        }
                        if self.reset.load(Ordering::SeqCst) {
                            return Ok(RunOutcome::Reset);
                        }
                    } else {
                        self.stats.unhandled_port_io += 1;
                    }
                }
                VcpuExit::IoIn(port, data) => {
                    completing = true;
                    if self.pio.read(u64::from(port), data) {
                        self.stats.pio_accesses += 1;
                    } else {
                        data.fill(0xff);
                        self.stats.unhandled_port_io += 1;
                    }
                }
                VcpuExit::MmioRead(addr, data) => {
                    completing = true;
                    if self.bus.read(addr, data) {
                        self.stats.bus_accesses += 1;
                        continue;
                    }
                    match self.mapper.lock().host_access(addr, data, false) {
                        HostAccess::Done | HostAccess::ReadOnlyWriteDropped => {
                            self.stats.slot_race_accesses += 1
                        }
                        HostAccess::Unmapped => {
                            data.fill(0xff);
                            self.stats.unmapped_reads += 1;
                            self.stats.last_unmapped = Some(addr);
                        }
                    }
                }
                VcpuExit::MmioWrite(addr, data) => {
                    completing = true;
                    if self.bus.write(addr, data) {
                        self.stats.bus_accesses += 1;
                        continue;
                    }
                    let mut buf = [0u8; 8];
                    let n = data.len().min(buf.len());
                    buf[..n].copy_from_slice(&data[..n]);
                    match self.mapper.lock().host_access(addr, &mut buf[..n], true) {
                        HostAccess::Done => self.stats.slot_race_accesses += 1,
                        HostAccess::ReadOnlyWriteDropped => self.stats.readonly_writes += 1,
                        HostAccess::Unmapped => {
                            self.stats.unmapped_writes += 1;
                            self.stats.last_unmapped = Some(addr);
                        }
                    }
                }
                VcpuExit::Hlt => return Ok(RunOutcome::Halted),
                VcpuExit::Shutdown => {
                    let rip = self.fd.get_regs().ok().map(|r| r.rip);
                    return Ok(RunOutcome::Shutdown { rip });
                }
                VcpuExit::FailEntry(reason, _cpu) => return Err(VcpuError::FailEntry(reason)),
                VcpuExit::InternalError => return Err(self.internal_error()),
                VcpuExit::Intr => {}
                other => return Err(VcpuError::UnexpectedExit(format!("{other:?}"))),
            }
        }
    }
}

impl Vcpu {
    fn internal_error(&mut self) -> VcpuError {
        let run = self.fd.get_kvm_run();
        // SAFETY: KVM filled the `internal` member of the exit union: this is only called for
        // KVM_EXIT_INTERNAL_ERROR, and the struct is plain old data.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let n = usize::try_from(internal.ndata)
            .unwrap_or(usize::MAX)
            .min(internal.data.len());
        let (suberror, data) = (internal.suberror, internal.data[..n].to_vec());
        let rip = self.fd.get_regs().ok().map(|r| r.rip);
        let code = rip.map(|r| self.code_at(r)).unwrap_or_default();
        VcpuError::InternalError {
            suberror,
            data,
            rip,
            code,
        }
    }

    /// Up to [`MAX_INSN_LEN`] bytes at guest-virtual `rip`, read from boot RAM through the guest's
    /// page tables (empty if the address does not translate or lies outside boot RAM).
    fn code_at(&self, rip: u64) -> Vec<u8> {
        let Ok(t) = self.fd.translate_gva(rip) else {
            return Vec::new();
        };
        if t.valid == 0 {
            return Vec::new();
        }
        let mem = self.vm.boot.memory();
        let mut code = Vec::with_capacity(MAX_INSN_LEN);
        for i in 0..MAX_INSN_LEN as u64 {
            // Byte by byte: the instruction may end where boot RAM does.
            match mem.read_obj::<u8>(GuestAddress(t.physical_address.wrapping_add(i))) {
                Ok(b) => code.push(b),
                Err(_) => break,
            }
        }
        code
    }
}

/// Wires the local APIC's LINT0 to the PIC (ExtINT) and LINT1 to NMI, as a PC's BIOS leaves them
/// and as Linux expects with an MP table.
fn set_lint(fd: &VcpuFd) -> Result<(), VcpuError> {
    let kvm = |op| move |source| VcpuError::Kvm { op, source };
    let mut lapic = fd.get_lapic().map_err(kvm("get LAPIC"))?;
    for (reg, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let field = &mut lapic.regs[reg..reg + 4];
        let old = u32::from_le_bytes(std::array::from_fn(|i| field[i].to_ne_bytes()[0]));
        let new = (old & !0x700) | (mode << 8);
        for (dst, b) in field.iter_mut().zip(new.to_le_bytes()) {
            *dst = std::ffi::c_char::from_ne_bytes([b]);
        }
    }
    fd.set_lapic(&lapic).map_err(kvm("set LAPIC"))
}

/// Signal used to kick a vCPU thread out of `KVM_RUN`.
fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

thread_local! {
    /// The `kvm_run` area of the vCPU this thread is running in [`Vcpu::run_until`], or null.
    static KICK_TARGET: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// Marks the calling thread's vCPU as the one a kick stops, for the guard's lifetime.
struct KickTarget;

impl KickTarget {
    fn enter(fd: &mut VcpuFd) -> Result<Self, VcpuError> {
        install_kick_handler()?;
        fd.set_kvm_immediate_exit(0);
        let run: *mut kvm_run = fd.get_kvm_run();
        KICK_TARGET.with(|t| t.set(run));
        Ok(KickTarget)
    }
}

impl Drop for KickTarget {
    fn drop(&mut self) {
        KICK_TARGET.with(|t| t.set(std::ptr::null_mut()));
    }
}

/// The kick signal's handler: sets `immediate_exit` of the vCPU the interrupted thread runs, so
/// the current `KVM_RUN` returns `EINTR` (the signal interrupts it) and so does the next one, if
/// the signal arrived just before it (the case a bare signal would lose).
extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // A const-initialised thread local without a destructor: reading it allocates nothing and
    // cannot fail, so it is safe in a signal handler.
    let run = KICK_TARGET.try_with(Cell::get).unwrap_or(std::ptr::null_mut());
    if !run.is_null() {
        // SAFETY: `run` is the kvm_run mapping of the VcpuFd that this thread is running in
        // `run_until`: `KickTarget` set it there and clears it before `run_until` returns, and
        // the fd (which owns the mapping) outlives that call. The byte is only ever written as
        // a whole, by this thread (the handler runs on it) or by KVM's own reader.
        unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
}

/// Installs the kick handler once per process.
fn install_kick_handler() -> Result<(), VcpuError> {
    static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();
    let r = INSTALLED.get_or_init(|| {
        vmm_sys_util::signal::register_signal_handler(kick_signal(), kick_handler).map_err(|e| e.errno())
    });
    r.map_err(|errno| VcpuError::Watchdog(std::io::Error::from_raw_os_error(errno)))
}

/// Kicks one thread (the vCPU thread that made it) out of `KVM_RUN` from another thread.
#[derive(Debug)]
pub struct VcpuKicker {
    thread: libc::pthread_t,
}

impl VcpuKicker {
    /// A kicker for the calling thread, which must outlive every [`VcpuKicker::kick`] (the
    /// owner joins it before dropping the kicker, or stops kicking once it has ended).
    pub fn for_current_thread() -> Result<Self, VcpuError> {
        install_kick_handler()?;
        // SAFETY: pthread_self has no preconditions.
        let thread = unsafe { libc::pthread_self() };
        Ok(VcpuKicker { thread })
    }

    /// Kicks the thread out of `KVM_RUN`: the current one returns `EINTR`, and while the thread
    /// is in [`Vcpu::run_until`] a kick that lands between two entries makes the next one
    /// return at once (`immediate_exit`). Set the stop flag first, then kick once.
    ///
    /// # Safety
    /// The thread the kicker was made on must still be running.
    pub unsafe fn kick(&self) {
        // The thread is alive (the caller's contract) and the kick signal has a handler
        // (installed in `for_current_thread`), so the signal only interrupts a system call. The
        // signal number is a valid real-time one, so the send cannot fail.
        let _ = LiveThread(self.thread).kill(kick_signal());
    }
}

/// Kicks the vCPU thread that started it once `timeout` passed, until dropped.
struct Watchdog {
    fired: Arc<AtomicBool>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// A thread known to be running while the value is used: the vCPU thread, kicked by its
/// watchdog (which it joins before it exits) or through [`VcpuKicker::kick`] (whose caller
/// promises it).
struct LiveThread(libc::pthread_t);

// SAFETY: a `LiveThread` is only built for a thread that outlives every use of it (see the
// type's documentation and its two construction sites), so the handle is valid when signalled.
unsafe impl Killable for LiveThread {
    fn pthread_handle(&self) -> libc::pthread_t {
        self.0
    }
}

impl Watchdog {
    fn start(timeout: Duration) -> Result<Self, VcpuError> {
        install_kick_handler()?;
        let fired = Arc::new(AtomicBool::new(false));
        let (stop, rx) = mpsc::channel::<()>();
        // SAFETY: pthread_self has no preconditions.
        let target = LiveThread(unsafe { libc::pthread_self() });
        let flag = fired.clone();
        let thread = std::thread::Builder::new()
            .name("vcpu-watchdog".into())
            .spawn(move || {
                let target = target;
                if !matches!(rx.recv_timeout(timeout), Err(RecvTimeoutError::Timeout)) {
                    return;
                }
                flag.store(true, Ordering::SeqCst);
                // One kick: the vCPU thread is inside `run_until` (it joins this thread before it
                // leaves), so a kick outside KVM_RUN still stops the next entry.
                // The target thread is alive: it joins this thread (Watchdog::drop) before it can
                // exit, and the kick signal has a handler installed above.
                let _ = target.kill(kick_signal());
            })
            .map_err(VcpuError::Watchdog)?;
        Ok(Watchdog {
            fired,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

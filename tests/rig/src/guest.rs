//! [`TestGuestVm`]: a [`Vmm`] booted with the test guest, with the test-control device attached,
//! so a test can say "read 4 KiB at GPA X" or "claim tag T" and get the guest's parsed answer.
//!
//! The guest prints `HELLO tagmem test guest`, initialises its driver, then loops: it reads the
//! next command from the test-control device, executes it and prints one result line; with
//! nothing queued it halts until the VMM runs it again. A command is queued in the device, the
//! VMM's doorbell rings ([`Vmm::ring_doorbell`]), and the command is finished when the guest
//! writes its sequence number back; so [`TestGuestVm::guest_command`] returns the guest's own
//! result line, and the host events its requests produced are queued by then
//! ([`Vmm::pump_host_events`]).
//!
//! Everything else is the VMM's own: a `TestGuestVm` dereferences to its [`Vmm`] (offers,
//! releases, backings, events, snapshots of the VM), and [`TestGuestVm::vmm`] hands out the
//! `Arc<Vmm>` a control API holds.

use crate::command::{Command, CommandError, Policy};
use crate::control::TestControl;
use crate::image;
use crate::protocol::{CONTROL_BASE, CONTROL_SIZE};
use crate::report::Report;
use crate::view::{ExtentDetail, GuestView};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tagmem_device::Target;
use tagmem_vmm::{ExtraDevice, GuestKind, VmSnapshot, Vmm, VmmConfig, VmmError};
use uuid::Uuid;

/// How long a command waits for the guest unless [`TestGuestVm::with_command_timeout`] says
/// otherwise.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Errors driving the test guest in a [`TestGuestVm`].
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// The VMM failed (starting, a snapshot).
    #[error(transparent)]
    Vmm(#[from] VmmError),
    /// A guest command cannot be encoded.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The vCPU thread has ended; the guest runs no more.
    #[error("the guest is not running ({reason}); console:\n{console}")]
    Stopped {
        /// Why the vCPU thread ended.
        reason: String,
        /// Console output so far.
        console: String,
    },
    /// The guest did not finish a command in time.
    #[error("the guest did not finish {cmd:?} within {timeout:?}; console:\n{console}")]
    Timeout {
        /// The command.
        cmd: Command,
        /// The time allowed.
        timeout: Duration,
        /// Console output so far.
        console: String,
    },
    /// The guest finished a command without a result line.
    #[error("the guest printed no result for {cmd:?}; console:\n{console}")]
    NoReport {
        /// The command.
        cmd: Command,
        /// Console output so far.
        console: String,
    },
    /// The guest answered a command with something unexpected (e.g. a `FAULT`).
    #[error("the guest answered {cmd:?} with {report:?}")]
    UnexpectedReport {
        /// The command.
        cmd: Command,
        /// Its result.
        report: Report,
    },
}

/// A snapshot of a [`TestGuestVm`]: the VM's, and the test-control counters beside it.
#[derive(Debug)]
pub struct TestGuestSnapshot {
    /// The VM.
    pub vm: VmSnapshot,
    /// Test-control counters: last sequence number handed out, last one finished.
    pub control: (u64, u64),
}

/// The test guest in a full VMM; see the module documentation.
pub struct TestGuestVm {
    vmm: Arc<Vmm>,
    control: Arc<Mutex<TestControl>>,
    /// Notified when the guest finishes a command, and when the vCPU thread ends.
    done: Arc<Condvar>,
    /// One command at a time; snapshots wait for the one in flight.
    command_lock: Mutex<()>,
    timeout: Duration,
}

impl std::fmt::Debug for TestGuestVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestGuestVm")
            .field("vmm", &self.vmm)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl std::ops::Deref for TestGuestVm {
    type Target = Vmm;

    fn deref(&self) -> &Vmm {
        &self.vmm
    }
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `config` with the test guest as what it boots.
fn booting_the_test_guest(config: VmmConfig) -> VmmConfig {
    VmmConfig {
        guest: GuestKind::Flat(image::flat_image()),
        ..config
    }
}

fn control_device(control: &Arc<Mutex<TestControl>>) -> ExtraDevice {
    ExtraDevice::mmio(CONTROL_BASE, CONTROL_SIZE, control.clone())
}

impl TestGuestVm {
    /// Boots a [`Vmm`] with `config` (whatever its `guest` says, the test guest boots) and the
    /// test-control device. The guest initialises its driver on its own; the device is ready for
    /// offers once [`TestGuestVm::wait_ready`] returns.
    pub fn new(config: VmmConfig) -> Result<Self, GuestError> {
        Self::with_devices(config, Vec::new())
    }

    /// Like [`TestGuestVm::new`], with further devices (see [`Vmm::with_devices`]).
    pub fn with_devices(config: VmmConfig, mut devices: Vec<ExtraDevice>) -> Result<Self, GuestError> {
        let done = Arc::new(Condvar::new());
        let control = Arc::new(Mutex::new(TestControl::new(done.clone())));
        devices.push(control_device(&control));
        let vmm = Vmm::with_devices(booting_the_test_guest(config), devices)?;
        Ok(Self::wrap(vmm, control, done))
    }

    /// Builds a fresh VM from `snapshot` (see [`Vmm::restore`]) with the test-control device
    /// where the snapshot left it, and lets the guest continue.
    pub fn restore(config: VmmConfig, snapshot: &TestGuestSnapshot) -> Result<Self, GuestError> {
        let done = Arc::new(Condvar::new());
        let mut control = TestControl::new(done.clone());
        control.set_counters(snapshot.control.0, snapshot.control.1);
        let control = Arc::new(Mutex::new(control));
        let vmm = Vmm::restore_with_devices(
            booting_the_test_guest(config),
            &snapshot.vm,
            vec![control_device(&control)],
        )?;
        Ok(Self::wrap(vmm, control, done))
    }

    fn wrap(vmm: Vmm, control: Arc<Mutex<TestControl>>, done: Arc<Condvar>) -> Self {
        // Command waiters check whether the guest still runs under the control lock; wake them
        // under it when it stops, so none misses the end.
        let (c, d) = (control.clone(), done.clone());
        vmm.on_exit(move |_| {
            let _control = lock(&c);
            d.notify_all();
        });
        TestGuestVm {
            vmm: Arc::new(vmm),
            control,
            done,
            command_lock: Mutex::new(()),
            timeout: DEFAULT_COMMAND_TIMEOUT,
        }
    }

    /// Sets how long a command waits for the guest before giving up.
    pub fn with_command_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long a command waits for the guest.
    pub fn command_timeout(&self) -> Duration {
        self.timeout
    }

    /// The VMM, for a control API or a thread of its own.
    pub fn vmm(&self) -> &Arc<Vmm> {
        &self.vmm
    }

    /// Parks the guest between commands and captures the VM and the test-control counters.
    pub fn snapshot(&self) -> Result<TestGuestSnapshot, GuestError> {
        let _serial = lock(&self.command_lock);
        let control = lock(&self.control).counters();
        Ok(TestGuestSnapshot {
            vm: self.vmm.snapshot()?,
            control,
        })
    }

    /// Runs a guest command and returns its result line, parsed.
    pub fn guest_command(&self, cmd: Command) -> Result<Report, GuestError> {
        let lines = self.command_lines(&cmd)?;
        lines
            .iter()
            .filter_map(|l| Report::parse(l))
            .next_back()
            .ok_or_else(|| GuestError::NoReport {
                cmd,
                console: self.vmm.console().contents(),
            })
    }

    /// Runs a guest command and returns every console line printed meanwhile.
    fn command_lines(&self, cmd: &Command) -> Result<Vec<String>, GuestError> {
        let _serial = lock(&self.command_lock);
        let console = self.vmm.console();
        let before = console.line_count();
        let seq = lock(&self.control).push(cmd)?;
        self.vmm.ring_doorbell();
        let deadline = Instant::now() + self.timeout;
        let mut control = lock(&self.control);
        while control.done() != seq {
            if let Some(reason) = self.vmm.guest_exited() {
                return Err(GuestError::Stopped {
                    reason,
                    console: console.contents(),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(GuestError::Timeout {
                    cmd: cmd.clone(),
                    timeout: self.timeout,
                    console: console.contents(),
                });
            }
            control = self
                .done
                .wait_timeout(control, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        drop(control);
        self.vmm.pump_host_events();
        Ok(console.lines_from(before))
    }

    /// Runs `cmd` and checks its result with `ok`; anything else is [`GuestError::UnexpectedReport`].
    fn expect<T>(&self, cmd: Command, ok: impl FnOnce(&Report) -> Option<T>) -> Result<T, GuestError> {
        let report = self.guest_command(cmd.clone())?;
        ok(&report).ok_or(GuestError::UnexpectedReport { cmd, report })
    }

    /// The guest's view of its dax devices, parsed from its `DEV` lines.
    pub fn guest_view(&self) -> Result<GuestView, GuestError> {
        let lines = self.command_lines(&Command::View)?;
        GuestView::parse(&lines).ok_or_else(|| GuestError::NoReport {
            cmd: Command::View,
            console: self.vmm.console().contents(),
        })
    }

    /// Makes the guest poll its driver until idle; returns the driver log entries produced.
    pub fn guest_poll(&self) -> Result<u64, GuestError> {
        self.expect(Command::Poll, |r| match r {
            Report::Polled { events } => Some(*events),
            _ => None,
        })
    }

    /// Sets the guest driver's offer policy.
    pub fn set_policy(&self, policy: Policy) -> Result<(), GuestError> {
        self.expect(Command::Policy(policy), |r| {
            matches!(r, Report::Policy { .. }).then_some(())
        })
    }

    /// Makes the guest poll its driver on every wake-up (`true`, the default) or only on
    /// [`Command::Poll`] (to leave offers unanswered).
    pub fn set_autopoll(&self, on: bool) -> Result<(), GuestError> {
        self.expect(Command::AutoPoll(on), |r| {
            (*r == Report::AutoPoll { on }).then_some(())
        })
    }

    /// Has the guest release the device `target` names; returns the extents released.
    pub fn guest_release(&self, target: Target) -> Result<u64, GuestError> {
        self.expect(Command::Release(target), |r| match r {
            Report::Released { count } => Some(*count),
            _ => None,
        })
    }

    /// Has the guest read `len` bytes at `gpa`; returns (byte sum, first up-to-8 bytes).
    pub fn guest_read(&self, gpa: u64, len: u64) -> Result<(u64, Vec<u8>), GuestError> {
        self.expect(Command::Read { gpa, len }, |r| match r {
            Report::Read { sum, first, .. } => Some((*sum, first.clone())),
            _ => None,
        })
    }

    /// Has the guest fill `len` bytes at `gpa` with `byte`.
    pub fn guest_write(&self, gpa: u64, len: u64, byte: u8) -> Result<(), GuestError> {
        self.expect(Command::Write { gpa, len, byte }, |r| {
            matches!(r, Report::Wrote { .. }).then_some(())
        })
    }

    /// Every extent the guest's driver holds accepted, with its record fields and its device's
    /// busy and release-requested state.
    pub fn guest_extents(&self) -> Result<Vec<ExtentDetail>, GuestError> {
        let lines = self.command_lines(&Command::Extents)?;
        ExtentDetail::parse_all(&lines).ok_or_else(|| GuestError::NoReport {
            cmd: Command::Extents,
            console: self.vmm.console().contents(),
        })
    }

    /// Has the guest claim the capacity carrying `tag` into its region's seed, as
    /// `daxctl create-device -r region0 --uuid <tag>` does (SPEC.md T.8; the nil tag claims one
    /// untagged extent); returns the device's name and size. A claim that finds nothing is
    /// [`GuestError::UnexpectedReport`] with the guest's `CLAIM error=..` line.
    pub fn guest_claim(&self, tag: Uuid) -> Result<(String, u64), GuestError> {
        self.expect(Command::Claim(tag), |r| match r {
            Report::Claimed { name, size, .. } => Some((name.clone(), *size)),
            _ => None,
        })
    }

    /// Makes the guest's driver claim every accepted group at once (`true`) or leave accepted
    /// capacity unclaimed until [`TestGuestVm::guest_claim`] (`false`, the default).
    pub fn set_claim_mode(&self, auto: bool) -> Result<(), GuestError> {
        self.expect(Command::ClaimMode(auto), |r| {
            (*r == Report::ClaimMode { auto }).then_some(())
        })
    }

    /// Marks the device `target` names busy (`true`) or idle in the guest's driver; returns
    /// whether the target named a device or tag.
    pub fn guest_set_busy(&self, target: Target, busy: bool) -> Result<bool, GuestError> {
        self.expect(Command::Busy { target, busy }, |r| match r {
            Report::Busy { ok } => Some(*ok),
            _ => None,
        })
    }

    /// Has the guest reset the device and initialise its driver again (as a rebind or kexec
    /// does); returns the devices and extents the driver holds afterwards, which it learned from
    /// the device's list of accepted extents.
    pub fn guest_reinit(&self) -> Result<(u64, u64), GuestError> {
        self.expect(Command::Reinit, |r| match r {
            Report::Reinit { devices, extents } => Some((*devices, *extents)),
            _ => None,
        })
    }

    /// Waits until the guest's driver has activated the device (it does so right after boot).
    pub fn wait_ready(&self) -> Result<(), GuestError> {
        // The guest initialises its driver before it takes its first command.
        self.guest_poll()?;
        if self.vmm.device_ready() {
            Ok(())
        } else {
            Err(GuestError::Stopped {
                reason: "the guest driver did not activate the device".into(),
                console: self.vmm.console().contents(),
            })
        }
    }
}

//! [`TestGuest`]: the test guest on a VM of its own, run on the calling thread, with the
//! test-control device and no tagged device: for tests of the VM, its vCPU and the memslot mapper
//! below the VMM (see [`crate::TestGuestVm`] for the guest in a full VMM).

use crate::command::{Command, CommandError};
use crate::control::TestControl;
use crate::image;
use crate::protocol::{CONTROL_BASE, CONTROL_SIZE};
use crate::report::Report;
use std::sync::{Arc, Condvar, Mutex};
use tagmem_vmm::layout;
use tagmem_vmm::{RunLimit, RunOutcome, Vcpu, VcpuError, Vm, VmConfig, VmError};

/// Errors driving the test guest.
#[derive(Debug, thiserror::Error)]
pub enum TestGuestError {
    /// Setting up the VM failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// Running the vCPU failed.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// The command cannot be encoded.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The guest stopped other than by halting.
    #[error("test guest did not halt: {outcome:?}; console:\n{console}")]
    NotHalted {
        /// How the run ended.
        outcome: RunOutcome,
        /// Console output so far.
        console: String,
    },
    /// The guest halted without printing a result line.
    #[error("test guest printed no result for {cmd:?}; console:\n{console}")]
    NoReport {
        /// The command.
        cmd: Command,
        /// Console output so far.
        console: String,
    },
}

/// A VM running the test guest on the calling thread, without the tagged device (see
/// [`crate::TestGuestVm`] for the guest in a full VMM).
#[derive(Debug)]
pub struct TestGuest {
    /// The vCPU (declared before the VM: dropped first).
    pub vcpu: Vcpu,
    /// The VM.
    pub vm: Vm,
    control: Arc<Mutex<TestControl>>,
    /// Limit for each run.
    pub limit: RunLimit,
}

impl TestGuest {
    /// Creates a VM, loads the guest, attaches the test-control device; runs nothing yet.
    pub fn new(config: VmConfig) -> Result<Self, TestGuestError> {
        let mut vm = Vm::new(config)?;
        let image = image::flat_image();
        vm.load_image(image.load_addr(), image.bytes())?;
        let control = Arc::new(Mutex::new(TestControl::new(Arc::new(Condvar::new()))));
        vm.attach_mmio(CONTROL_BASE, CONTROL_SIZE, control.clone())?;
        let vcpu = vm.create_vcpu(image.entry(), layout::BOOT_STACK_TOP)?;
        Ok(TestGuest {
            vcpu,
            vm,
            control,
            limit: RunLimit::default(),
        })
    }

    /// Boots the guest until it first waits for commands (after its `HELLO` line).
    pub fn boot(config: VmConfig) -> Result<Self, TestGuestError> {
        let mut g = Self::new(config)?;
        g.run_until_halt()?;
        Ok(g)
    }

    /// Runs the vCPU until the guest halts; any other outcome is an error.
    pub fn run_until_halt(&mut self) -> Result<(), TestGuestError> {
        match self.vcpu.run(self.limit)? {
            RunOutcome::Halted => Ok(()),
            outcome => Err(TestGuestError::NotHalted {
                outcome,
                console: self.vm.console().contents(),
            }),
        }
    }

    /// Runs one command and returns the guest's result line, parsed.
    pub fn command(&mut self, cmd: Command) -> Result<Report, TestGuestError> {
        let before = self.vm.console().line_count();
        self.control
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(&cmd)?;
        self.run_until_halt()?;
        self.vm
            .console()
            .lines_from(before)
            .iter()
            .filter_map(|l| Report::parse(l))
            .next_back()
            .ok_or_else(|| TestGuestError::NoReport {
                cmd,
                console: self.vm.console().contents(),
            })
    }

    /// Reads `len` bytes at `gpa` in the guest.
    pub fn read(&mut self, gpa: u64, len: u64) -> Result<Report, TestGuestError> {
        self.command(Command::Read { gpa, len })
    }

    /// Fills `len` bytes at `gpa` with `byte` in the guest.
    pub fn write(&mut self, gpa: u64, len: u64, byte: u8) -> Result<Report, TestGuestError> {
        self.command(Command::Write { gpa, len, byte })
    }

    /// Console lines so far.
    pub fn console_lines(&self) -> Vec<String> {
        self.vm.console().lines()
    }
}

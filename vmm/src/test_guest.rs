//! The bundled bare-metal test guest (`tests/guest`) and the test-control device it talks to.
//!
//! The guest prints `HELLO tagmem test guest`, then loops: it reads the next command from the
//! test-control MMIO device, executes it and prints one result line; with nothing queued it halts
//! until the VMM runs it again. [`TestGuest`] wraps a VM, vCPU and that device so a test can say
//! "read 4 KiB at GPA X" and get a parsed [`Report`].

use crate::bus::BusDevice;
use crate::layout;
use crate::vcpu::{RunLimit, RunOutcome, Vcpu, VcpuError};
use crate::vm::{Vm, VmConfig, VmError};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// The guest/VMM test-control protocol, shared with the guest's sources.
pub mod protocol {
    include!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/guest/src/protocol.rs"
    ));
}

/// The flat guest image and where it goes, as read from its ELF by the build script.
pub mod image {
    include!(concat!(env!("OUT_DIR"), "/test_guest_layout.rs"));
    /// The flat image, to be loaded at [`LOAD_ADDR`].
    pub static BYTES: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/test-guest.bin"));
}

use protocol::*;

// The image (including its zero-initialised data) must lie between the boot stack and the page
// tables, and start with its entry point.
const _: () = assert!(
    image::LOAD_ADDR >= layout::BOOT_STACK_TOP
        && image::MEM_END <= layout::PAGE_TABLES_ADDR
        && image::ENTRY == image::LOAD_ADDR
);

/// A command for the test guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Read `len` bytes at `gpa`.
    Read {
        /// Guest-physical address.
        gpa: u64,
        /// Length.
        len: u64,
    },
    /// Fill `len` bytes at `gpa` with `byte`.
    Write {
        /// Guest-physical address.
        gpa: u64,
        /// Length.
        len: u64,
        /// Fill value.
        byte: u8,
    },
    /// Allocate, fill and free `len` bytes of guest heap.
    Alloc {
        /// Bytes.
        len: u64,
    },
    /// Print `STOP` and halt for good.
    Stop,
}

impl Command {
    fn encode(&self) -> (u64, [u64; 3]) {
        match *self {
            Command::Read { gpa, len } => (CMD_READ, [gpa, len, 0]),
            Command::Write { gpa, len, byte } => (CMD_WRITE, [gpa, len, u64::from(byte)]),
            Command::Alloc { len } => (CMD_ALLOC, [len, 0, 0]),
            Command::Stop => (CMD_STOP, [0; 3]),
        }
    }
}

/// The test-control MMIO device: a queue of commands the guest pops.
#[derive(Debug, Default)]
pub struct TestControl {
    queue: VecDeque<Command>,
    latched: [u64; 3],
}

impl TestControl {
    /// Queues a command.
    pub fn push(&mut self, cmd: Command) {
        self.queue.push_back(cmd);
    }
}

impl BusDevice for TestControl {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            REG_MAGIC => CONTROL_MAGIC,
            REG_COMMAND => match self.queue.pop_front() {
                Some(cmd) => {
                    let (code, args) = cmd.encode();
                    self.latched = args;
                    code
                }
                None => {
                    self.latched = [0; 3];
                    CMD_IDLE
                }
            },
            REG_ARG0 => self.latched[0],
            REG_ARG1 => self.latched[1],
            REG_ARG2 => self.latched[2],
            _ => 0,
        };
        let bytes = value.to_le_bytes();
        let n = data.len().min(bytes.len());
        data[..n].copy_from_slice(&bytes[..n]);
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}

/// A parsed result line of the test guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Report {
    /// `READ gpa=.. len=.. sum=.. first=..`.
    Read {
        /// Address read.
        gpa: u64,
        /// Bytes read.
        len: u64,
        /// Wrapping sum of the bytes.
        sum: u64,
        /// First up-to-8 bytes.
        first: Vec<u8>,
    },
    /// `WROTE gpa=.. len=.. byte=..`.
    Wrote {
        /// Address written.
        gpa: u64,
        /// Bytes written.
        len: u64,
        /// Fill value.
        byte: u8,
    },
    /// `ALLOC len=.. sum=..`.
    Alloc {
        /// Bytes allocated.
        len: u64,
        /// Sum of the pattern written.
        sum: u64,
    },
    /// `STOP`.
    Stop,
    /// `FAULT ...`: the guest took an exception or refused a command.
    Fault(String),
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

fn num(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

impl Report {
    /// Parses one console line; `None` for lines that are not results (e.g. `HELLO`).
    pub fn parse(line: &str) -> Option<Report> {
        let word = line.split_whitespace().next()?;
        let n = |k| field(line, k).and_then(num);
        match word {
            "READ" => {
                let hex = field(line, "first")?;
                let first = (0..hex.len())
                    .step_by(2)
                    .map(|i| hex.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
                    .collect::<Option<Vec<u8>>>()?;
                Some(Report::Read {
                    gpa: n("gpa")?,
                    len: n("len")?,
                    sum: n("sum")?,
                    first,
                })
            }
            "WROTE" => Some(Report::Wrote {
                gpa: n("gpa")?,
                len: n("len")?,
                byte: u8::try_from(n("byte")?).ok()?,
            }),
            "ALLOC" => Some(Report::Alloc {
                len: n("len")?,
                sum: n("sum")?,
            }),
            "STOP" => Some(Report::Stop),
            "FAULT" => Some(Report::Fault(line.to_string())),
            _ => None,
        }
    }
}

/// Errors driving the test guest.
#[derive(Debug, thiserror::Error)]
pub enum TestGuestError {
    /// Setting up the VM failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// Running the vCPU failed.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
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

/// A VM running the test guest.
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
        vm.load_image(image::LOAD_ADDR, image::BYTES)?;
        let control = Arc::new(Mutex::new(TestControl::default()));
        vm.attach_mmio(CONTROL_BASE, CONTROL_SIZE, control.clone())?;
        let vcpu = vm.create_vcpu(image::ENTRY, layout::BOOT_STACK_TOP)?;
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
        let before = self.vm.console().lines().len();
        self.control.lock().unwrap_or_else(|e| e.into_inner()).push(cmd);
        self.run_until_halt()?;
        let lines = self.vm.console().lines();
        lines
            .iter()
            .skip(before)
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

/// Byte sum as the guest computes it, for comparing with [`Report::Read`].
pub fn byte_sum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0u64, |s, &b| s.wrapping_add(u64::from(b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_reports() {
        assert_eq!(
            Report::parse("READ gpa=0x100000000 len=16 sum=0x2a first=0102ff"),
            Some(Report::Read {
                gpa: 1 << 32,
                len: 16,
                sum: 42,
                first: vec![1, 2, 0xff]
            })
        );
        assert_eq!(
            Report::parse("WROTE gpa=0x10 len=4 byte=0x5a"),
            Some(Report::Wrote {
                gpa: 16,
                len: 4,
                byte: 0x5a
            })
        );
        assert_eq!(
            Report::parse("ALLOC len=10 sum=0x2d"),
            Some(Report::Alloc { len: 10, sum: 45 })
        );
        assert!(matches!(
            Report::parse("FAULT vector=14 rip=0x1 cr2=0x2"),
            Some(Report::Fault(_))
        ));
        assert_eq!(Report::parse("HELLO tagmem test guest"), None);
        assert_eq!(Report::parse("READ gpa=zz len=1 sum=0 first="), None);
    }

    #[test]
    fn control_device_pops_and_latches() {
        let mut c = TestControl::default();
        c.push(Command::Write {
            gpa: 0x1000,
            len: 2,
            byte: 7,
        });
        let read = |c: &mut TestControl, reg| {
            let mut b = [0u8; 8];
            c.read(reg, &mut b);
            u64::from_le_bytes(b)
        };
        assert_eq!(read(&mut c, REG_MAGIC), CONTROL_MAGIC);
        assert_eq!(read(&mut c, REG_COMMAND), CMD_WRITE);
        assert_eq!(
            [
                read(&mut c, REG_ARG0),
                read(&mut c, REG_ARG1),
                read(&mut c, REG_ARG2)
            ],
            [0x1000, 2, 7]
        );
        assert_eq!(read(&mut c, REG_COMMAND), CMD_IDLE);
        assert_eq!(read(&mut c, REG_ARG0), 0);
    }

    #[test]
    fn image_is_embedded() {
        assert!(!image::BYTES.is_empty());
    }
}

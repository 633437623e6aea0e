// The test-control protocol shared by the test guest and the VMM (which `include!`s this file), so
// both sides read one definition. Plain constants only: it must compile in `no_std`.

/// Guest-physical base of the test-control MMIO device.
pub const CONTROL_BASE: u64 = 0xd000_0000;
/// Size of the test-control MMIO window.
pub const CONTROL_SIZE: u64 = 0x1000;

/// Register (64-bit reads): always [`CONTROL_MAGIC`].
pub const REG_MAGIC: u64 = 0x00;
/// Register (64-bit reads): pops the next command code and latches its arguments.
pub const REG_COMMAND: u64 = 0x08;
/// Register (64-bit reads): first argument of the latched command.
pub const REG_ARG0: u64 = 0x10;
/// Register (64-bit reads): second argument of the latched command.
pub const REG_ARG1: u64 = 0x18;
/// Register (64-bit reads): third argument of the latched command.
pub const REG_ARG2: u64 = 0x20;

/// Value of [`REG_MAGIC`]: "TGMEMCTL" in little-endian bytes.
pub const CONTROL_MAGIC: u64 = u64::from_le_bytes(*b"TGMEMCTL");

/// Command: nothing queued; the guest halts and polls again once resumed.
pub const CMD_IDLE: u64 = 0;
/// Command: read `arg1` bytes at GPA `arg0`; prints `READ gpa=.. len=.. sum=.. first=..`.
pub const CMD_READ: u64 = 1;
/// Command: fill `arg1` bytes at GPA `arg0` with byte `arg2`; prints `WROTE gpa=.. len=.. byte=..`.
pub const CMD_WRITE: u64 = 2;
/// Command: allocate `arg0` bytes on the guest heap, fill, sum, free; prints `ALLOC len=.. sum=..`.
pub const CMD_ALLOC: u64 = 3;
/// Command: print `STOP` and halt for good.
pub const CMD_STOP: u64 = 4;

/// Port the guest writes console bytes to, one byte per `out`.
pub const CONSOLE_PORT: u16 = 0x3f8;

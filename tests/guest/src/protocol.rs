// The test-control protocol shared by the test guest and the VMM (which `include!`s this file), so
// both sides read one definition. Plain constants only: it must compile in `no_std`.
//
// A command is a code plus up to `MAX_ARGS` 64-bit arguments. The guest reads `REG_COMMAND`
// (which pops the next command and latches its arguments), reads the arguments, executes the
// command, prints one result line and then writes the command's sequence number (`REG_SEQ`) to
// `REG_DONE`, which tells the VMM the result line is complete.

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
/// Register (64-bit reads): number of arguments of the latched command.
pub const REG_ARGC: u64 = 0x28;
/// Register (64-bit reads): the next argument of the latched command, from the first on (0 past
/// the last).
pub const REG_ARG_NEXT: u64 = 0x30;
/// Register (64-bit reads): sequence number of the latched command (0 when idle).
pub const REG_SEQ: u64 = 0x38;
/// Register (64-bit writes): the sequence number of a command whose result line is complete.
pub const REG_DONE: u64 = 0x40;

/// Most arguments one command carries.
pub const MAX_ARGS: usize = 64;

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
/// Command: set the driver's offer policy: `arg0` is a `POLICY_*` value, the arguments after it
/// its parameters; prints `POLICY kind=..`.
pub const CMD_POLICY: u64 = 5;
/// Command: poll the driver until it has nothing left to do; prints `POLLED events=..`.
pub const CMD_POLL: u64 = 6;
/// Command: poll the driver on every loop iteration (`arg0` = 1) or only on `CMD_POLL` (0);
/// prints `AUTOPOLL on=..`.
pub const CMD_AUTOPOLL: u64 = 7;
/// Command: print one `DEV ...` line per dax device, one `FREE ...` line per group of accepted
/// capacity the region holds unclaimed (the same fields without `name` and `busy`), then
/// `VIEW devices=.. pending=.. unclaimed=.. seed=..`.
pub const CMD_VIEW: u64 = 8;
/// Command: release the device a target names (`arg0` a `TARGET_*` value, then the extent id or
/// the tag's two halves); prints `RELEASED count=..` or `RELEASE error=..`.
pub const CMD_RELEASE: u64 = 9;
/// Command: mark the device a target names busy (`arg0` = 1) or idle (0), target as for
/// [`CMD_RELEASE`] from `arg1` on; prints `BUSY ok=..`.
pub const CMD_BUSY: u64 = 10;
/// Command: print driver log lines (`EVT ...`) as they happen (`arg0` = 1) or keep them quiet and
/// only count them (0); prints `VERBOSE on=..`.
pub const CMD_VERBOSE: u64 = 11;
/// Command: print one `EXT ...` line per accepted extent, in device order and within a device in
/// `seq` order, then the unclaimed groups' extents (`dev=-`) in the same way: its device's name,
/// tag, busy and release-requested state, and the extent's id, address, length, flags, `seq`,
/// node, source class, performance and poison (the record fields SPEC.md T-NEST-1 copies); then
/// `EXTENTS count=..`.
pub const CMD_EXTENTS: u64 = 12;
/// Command: claim accepted capacity into the region's seed, as `daxctl create-device -r region0
/// --uuid <tag>` does (SPEC.md T.8): `arg0`/`arg1` are the tag's two halves (both 0: the nil tag,
/// one untagged extent); prints `CLAIMED name=.. uuid=.. size=.. extents=..` or
/// `CLAIM error=..`.
pub const CMD_CLAIM: u64 = 13;
/// Command: make every accepted group a device at once (`arg0` = 1) or leave accepted capacity
/// unclaimed until claimed (0, the default); prints `CLAIMMODE auto=..`.
pub const CMD_CLAIM_MODE: u64 = 14;
/// Command: reset the device and initialise the driver again, as a rebinding or kexec'd guest
/// does: the driver forgets its devices and lists what the device still holds accepted (SPEC.md
/// T-LIST-2); prints `REINIT ok=1 devices=.. extents=..`, or `REINIT ok=0 error=..`.
pub const CMD_REINIT: u64 = 15;
/// Command (benchmarks): read `arg1` bytes at GPA `arg0` (8-byte aligned) `arg2` times with aligned
/// 8-byte volatile loads; prints `READLOOP gpa=.. len=.. reps=.. acc=..` (`acc` the wrapping sum
/// of the words loaded).
pub const CMD_READ_LOOP: u64 = 0x40;
/// Command (benchmarks): fill `arg1` bytes at GPA `arg0` (8-byte aligned) `arg2` times with 8-byte
/// volatile stores of byte `arg3` repeated; prints `WROTELOOP gpa=.. len=.. reps=..`.
pub const CMD_WRITE_LOOP: u64 = 0x41;
/// Command (benchmarks): re-read the device configuration, then send `arg1` base virtio-mem PLUG
/// requests of `arg2` blocks each for consecutive ranges from GPA `arg0` on, stopping at the first
/// one not acknowledged; then read the byte at `arg0` if any was; prints
/// `PLUGGED addr=.. requests=.. acked=.. resp=.. first=..` (`resp` the first non-ACK response
/// type, 255 for a driver error, 0 if all were acknowledged).
pub const CMD_BASE_PLUG: u64 = 0x42;
/// Command (benchmarks): send a base virtio-mem UNPLUG_ALL request; prints `UNPLUGGED resp=..`
/// (the response type, 255 for a driver error).
pub const CMD_BASE_UNPLUG_ALL: u64 = 0x43;

/// Policy: accept every valid offer (the driver's default).
pub const POLICY_ACCEPT_ALL: u64 = 0;
/// Policy: reject every offer.
pub const POLICY_REJECT_ALL: u64 = 1;
/// Policy: accept exactly the extent ids given as the further arguments.
pub const POLICY_ACCEPT_IDS: u64 = 2;
/// Policy: reject extents carrying the tag given as two further arguments (the tag's bytes 0..8
/// and 8..16, little-endian), accept the rest.
pub const POLICY_REJECT_TAG: u64 = 3;

/// Target: one extent id (the only way to name an untagged device).
pub const TARGET_EXTENT: u64 = 0;
/// Target: a tag, as two little-endian halves.
pub const TARGET_TAG: u64 = 1;

/// Port the guest writes console bytes to (`rep outsb`, one line per exit where possible).
pub const CONSOLE_PORT: u16 = 0x3f8;

/// Guest-physical base of the tagged virtio-mem device's virtio-mmio window.
pub const VIRTIO_MEM_MMIO_BASE: u64 = 0xd010_0000;

/// virtio-mmio (version 2) register offsets the guest uses (VIRTIO 1.2 §4.2.2). Every one is a
/// 32-bit register; the VMM checks these against `virtio-bindings`.
pub mod mmio_reg {
    /// MagicValue ("virt").
    pub const MAGIC_VALUE: u64 = 0x000;
    /// Version (2).
    pub const VERSION: u64 = 0x004;
    /// DeviceID.
    pub const DEVICE_ID: u64 = 0x008;
    /// DeviceFeatures (the 32 bits DeviceFeaturesSel selects).
    pub const DEVICE_FEATURES: u64 = 0x010;
    /// DeviceFeaturesSel.
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    /// DriverFeatures.
    pub const DRIVER_FEATURES: u64 = 0x020;
    /// DriverFeaturesSel.
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    /// QueueSel.
    pub const QUEUE_SEL: u64 = 0x030;
    /// QueueNumMax.
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    /// QueueNum.
    pub const QUEUE_NUM: u64 = 0x038;
    /// QueueReady.
    pub const QUEUE_READY: u64 = 0x044;
    /// QueueNotify.
    pub const QUEUE_NOTIFY: u64 = 0x050;
    /// InterruptStatus.
    pub const INTERRUPT_STATUS: u64 = 0x060;
    /// InterruptACK.
    pub const INTERRUPT_ACK: u64 = 0x064;
    /// Status.
    pub const STATUS: u64 = 0x070;
    /// QueueDescLow (High at +4).
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    /// QueueDriverLow (the available ring; High at +4).
    pub const QUEUE_AVAIL_LOW: u64 = 0x090;
    /// QueueDeviceLow (the used ring; High at +4).
    pub const QUEUE_USED_LOW: u64 = 0x0a0;
    /// ConfigGeneration.
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    /// Start of the device configuration space.
    pub const CONFIG: u64 = 0x100;
}

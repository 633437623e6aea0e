//! The transport's register state as plain data, as a snapshot keeps it (untrusted when
//! restored), and why a restore is refused.

/// Setup registers of one queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueRegs {
    /// QueueNum: size the driver chose.
    pub size: u16,
    /// QueueReady.
    pub ready: bool,
    /// QueueDesc.
    pub desc: u64,
    /// QueueDriver (available ring).
    pub avail: u64,
    /// QueueDevice (used ring).
    pub used: u64,
}

/// Register state of the transport; plain data, untrusted when restored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MmioState {
    /// DeviceFeaturesSel.
    pub device_features_sel: u32,
    /// DriverFeaturesSel.
    pub driver_features_sel: u32,
    /// Feature bits the driver wrote so far.
    pub driver_features: u64,
    /// QueueSel.
    pub queue_sel: u32,
    /// Per-queue setup.
    pub queues: Vec<QueueRegs>,
    /// Device status.
    pub status: u32,
    /// SHMSel.
    pub shm_sel: u32,
}

/// What a snapshot keeps of a transport besides its device: registers, activation, pending
/// interrupt bits. Plain data, untrusted when restored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MmioTransportState {
    /// Register state.
    pub regs: MmioState,
    /// Whether DRIVER_OK activated the device.
    pub activated: bool,
    /// InterruptStatus.
    pub interrupt_status: u32,
}

/// Why a transport state was not restored.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum MmioRestoreError {
    /// The number of queues differs from the device's.
    #[error("snapshot has {got} queues, the device has {want}")]
    QueueCount {
        /// Queues the device has.
        want: usize,
        /// Queues in the snapshot.
        got: usize,
    },
    /// A queue size exceeds the device's maximum.
    #[error("queue {index}: size {size} exceeds the device's maximum {max}")]
    QueueSize {
        /// Queue index.
        index: usize,
        /// Size in the snapshot.
        size: u16,
        /// The device's maximum.
        max: u16,
    },
    /// Activation and status disagree (activated without DRIVER_OK, or the other way round).
    #[error("activated={activated} does not match status {status:#x}")]
    Activation {
        /// Activation flag in the snapshot.
        activated: bool,
        /// Status in the snapshot.
        status: u32,
    },
}

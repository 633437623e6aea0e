//! The transport's register state as plain data, and saving and restoring it for a snapshot
//! (untrusted: checked against the device before anything changes).

use super::*;

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

impl<D> MmioTransport<D>
where
    D: VirtioDevice,
    D::Memory: GuestAddressSpace,
{
    /// The transport's state for a snapshot (the device's own state is taken separately).
    pub fn transport_state(&self) -> MmioTransportState {
        MmioTransportState {
            regs: self.state.clone(),
            activated: self.activated,
            interrupt_status: self.interrupt_status.load(Ordering::SeqCst),
        }
    }

    /// Restores a snapshot's transport state over a device restored separately (active exactly
    /// when `state.activated`). Checked against the device first; nothing changes on error.
    pub fn restore_transport_state(&mut self, state: &MmioTransportState) -> Result<(), MmioRestoreError> {
        let maxes = self.device.queue_max_sizes();
        if state.regs.queues.len() != maxes.len() {
            return Err(MmioRestoreError::QueueCount {
                want: maxes.len(),
                got: state.regs.queues.len(),
            });
        }
        for (index, (q, &max)) in state.regs.queues.iter().zip(maxes).enumerate() {
            if q.size > max {
                return Err(MmioRestoreError::QueueSize {
                    index,
                    size: q.size,
                    max,
                });
            }
        }
        let driver_ok = state.regs.status & VIRTIO_CONFIG_S_DRIVER_OK != 0;
        if state.activated != driver_ok {
            return Err(MmioRestoreError::Activation {
                activated: state.activated,
                status: state.regs.status,
            });
        }
        self.state = state.regs.clone();
        self.activated = state.activated;
        self.activation_error = None;
        self.interrupt_status
            .store(state.interrupt_status, Ordering::SeqCst);
        Ok(())
    }
}

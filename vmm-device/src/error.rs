//! Errors of device construction, activation and restore.

use crate::mapper::MapperError;

/// Errors the device returns to its VMM (never to the guest: the guest gets protocol responses).
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A configuration field is invalid.
    #[error("invalid device configuration: {field}: {reason}")]
    InvalidConfig {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// Activation was asked with the wrong number of queues.
    #[error("activation needs {need} queues, got {got}")]
    QueueCount {
        /// Queues needed.
        need: usize,
        /// Queues given.
        got: usize,
    },
    /// A queue the driver set up is not usable (not ready, or rings outside guest memory).
    #[error("queue {0} is not ready or its rings are outside guest memory")]
    QueueInvalid(u16),
    /// The device is already active.
    #[error("device is already active")]
    AlreadyActive,
    /// A snapshot is inconsistent; it is rejected whole. `field` is a path into the
    /// [`crate::DeviceState`] (`chains[2].remaining_ms`, `extents[id 7].source.offset`).
    #[error("snapshot rejected: {field}: {reason}")]
    InvalidSnapshot {
        /// The field at fault.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The driver did not accept a feature the device cannot work without; FEATURES_OK is
    /// refused and the device is not activated.
    #[error("the driver did not accept feature bit {bit} ({name}), which the device requires")]
    FeatureRequired {
        /// The feature bit.
        bit: u32,
        /// Its name.
        name: &'static str,
    },
    /// Restoring mappings from a snapshot failed.
    #[error("restoring a mapping failed")]
    RestoreMap(#[source] MapperError),
}

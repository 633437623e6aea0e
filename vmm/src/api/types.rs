//! The API's bodies and answers, and why a request failed.

use super::{MAX_BODY_BYTES, MAX_HEADERS, MAX_HEAD_BYTES, MEMORY, RESIZE};
use crate::config::{OptionError, TaggedMemoryConfig};
use crate::hotplug::BaseMemory;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tagmem_device::{ControlError, ExtentInfo, Target};
use uuid::Uuid;

/// Why a request failed; each maps to one HTTP status. Failures of the layers below keep
/// their typed cause ([`std::error::Error::source`]).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed or asks for something invalid (400).
    #[error("{0}")]
    BadRequest(String),
    /// No such endpoint (404).
    #[error("no such endpoint: {0}")]
    NotFound(String),
    /// The endpoint exists but not for this method (405).
    #[error("{path} does not accept {method}; use {allow}")]
    MethodNotAllowed {
        /// The method used.
        method: String,
        /// The endpoint.
        path: String,
        /// The method it accepts.
        allow: &'static str,
    },
    /// The request did not arrive in time (408).
    #[error("the request was not complete within {0:?}; closing the connection")]
    RequestTimeout(Duration),
    /// The request conflicts with what the VM holds, e.g. a tag already present (409).
    #[error("{0}")]
    Conflict(String),
    /// The body is larger than [`MAX_BODY_BYTES`] (413).
    #[error("request body of {0} bytes exceeds the limit of {MAX_BODY_BYTES} bytes")]
    PayloadTooLarge(usize),
    /// The request head is larger than [`MAX_HEAD_BYTES`] or has too many headers (431).
    #[error("request head exceeds {MAX_HEAD_BYTES} bytes or {MAX_HEADERS} headers")]
    HeadTooLarge,
    /// The guest's driver is not ready for tagged capacity (503).
    #[error("{0}")]
    Unavailable(String),
    /// The VMM failed to carry out a valid request: a host failure such as running out of
    /// descriptors or memory; the message carries the OS error (500).
    #[error("{0}")]
    Internal(String),
    /// An extent's description is invalid (400), or its backing could not be opened because the
    /// host failed (500, the message ending in the OS error).
    #[error("{}", extent_message(.0))]
    Extent(#[source] OptionError),
    /// The device refused a command: 503 while the driver is not ready, else 400. `field` names
    /// the request field the command came from.
    #[error("{}{source}", field.map(|f| format!("{f}: ")).unwrap_or_default())]
    Device {
        /// The request field at fault, if one is.
        field: Option<&'static str>,
        /// The device's error.
        #[source]
        source: ControlError,
    },
    /// The VMM failed to carry out a valid request (500): `what` it was doing, and why.
    #[error("{what}: {}", crate::config::error_chain(source))]
    Vmm {
        /// What was attempted.
        what: &'static str,
        /// The VMM's error.
        #[source]
        source: crate::runtime::VmmError,
    },
}

/// The message of an [`ApiError::Extent`]: a host failure carries its causes (the OS error).
fn extent_message(e: &OptionError) -> String {
    if e.error.is_host_failure() {
        e.with_causes()
    } else {
        e.to_string()
    }
}

impl ApiError {
    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) => 400,
            ApiError::NotFound(_) => 404,
            ApiError::MethodNotAllowed { .. } => 405,
            ApiError::RequestTimeout(_) => 408,
            ApiError::Conflict(_) => 409,
            ApiError::PayloadTooLarge(_) => 413,
            ApiError::HeadTooLarge => 431,
            ApiError::Unavailable(_) => 503,
            ApiError::Internal(_) => 500,
            ApiError::Extent(e) if e.error.is_host_failure() => 500,
            ApiError::Extent(_) => 400,
            ApiError::Device {
                source: ControlError::NotReady,
                ..
            } => 503,
            ApiError::Device { .. } => 400,
            ApiError::Vmm { .. } => 500,
        }
    }
}

impl From<OptionError> for ApiError {
    /// A host failure (memfd creation, an OS error opening a backing) is a 500 that carries the
    /// OS error; anything the request got wrong is a 400.
    fn from(e: OptionError) -> Self {
        ApiError::Extent(e)
    }
}

impl From<ControlError> for ApiError {
    fn from(source: ControlError) -> Self {
        ApiError::Device { field: None, source }
    }
}

/// Body of `PUT /api/v1/vm.add-tagged-memory`: one offer chain.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddTaggedMemory {
    /// The extents, in chain order.
    pub extents: Vec<TaggedMemoryConfig>,
}

/// Body of `PUT /api/v1/vm.release-tagged-memory`: exactly one of the fields.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseTaggedMemory {
    /// Release every extent carrying this tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<Uuid>,
    /// Release this extent (for tagged capacity: its whole tag group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extent_id: Option<u64>,
}

impl ReleaseTaggedMemory {
    /// The device target this names.
    pub fn target(&self) -> Result<Target, ApiError> {
        match (self.tag, self.extent_id) {
            (Some(tag), None) if tag.is_nil() => Err(ApiError::BadRequest(
                "tag: the nil UUID names no tag group; release untagged capacity by extent_id".into(),
            )),
            (Some(tag), None) => Ok(Target::Tag(tag)),
            (None, Some(id)) => Ok(Target::Extent(id)),
            _ => Err(ApiError::BadRequest(
                "give exactly one of \"tag\" and \"extent_id\"".into(),
            )),
        }
    }
}

/// One offered extent in an [`AddReply`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddedExtent {
    /// The extent's name (the `id=` given, or a generated `_tagmemN`).
    pub id: String,
    /// The device's extent id.
    pub extent_id: u64,
    /// Guest-physical address.
    pub gpa: u64,
    /// Bytes.
    pub size: u64,
}

/// Answer of `PUT /api/v1/vm.add-tagged-memory`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddReply {
    /// The chain's id.
    pub chain_id: u64,
    /// The extents in chain order.
    pub extents: Vec<AddedExtent>,
}

/// One row of `GET /api/v1/vm.tagged-memory`: the device's [`ExtentInfo`] with the extent's name
/// and backing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtentRow {
    /// The extent's name.
    pub name: String,
    /// Its backing (`memfd`, a file, `/dev/daxX.Y`).
    pub path: String,
    /// The device's view.
    #[serde(flatten)]
    pub info: ExtentInfo,
}

/// Answer of `GET /api/v1/vmm.ping`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingInfo {
    /// Version of the VMM.
    pub version: String,
    /// Its process id.
    pub pid: u32,
    /// Whether the guest's driver has enabled tagged extents.
    pub device_ready: bool,
}

/// What the API's requests do; [`TaggedMemoryControl`] implements it on a [`Vmm`].
pub trait ApiBackend: Send + Sync {
    /// `GET vmm.ping`.
    fn ping(&self) -> PingInfo;
    /// `PUT vm.add-tagged-memory`: offers `extents` as one chain.
    fn add_tagged_memory(&self, extents: &[TaggedMemoryConfig]) -> Result<AddReply, ApiError>;
    /// `PUT vm.release-tagged-memory`.
    fn release_tagged_memory(&self, target: Target) -> Result<(), ApiError>;
    /// `GET vm.tagged-memory`.
    fn tagged_memory(&self) -> Vec<ExtentRow>;
    /// `PUT vm.resize`: asks the guest to resize its RAM to `desired_ram` bytes.
    fn resize(&self, desired_ram: u64) -> Result<(), ApiError> {
        let _ = desired_ram;
        Err(ApiError::NotFound(RESIZE.to_string()))
    }
    /// `GET vm.memory`.
    fn memory(&self) -> Result<BaseMemory, ApiError> {
        Err(ApiError::NotFound(MEMORY.to_string()))
    }
}

/// Body of `vm.resize`, as Cloud Hypervisor's: the guest's RAM in bytes, boot RAM included.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmResize {
    /// Boot RAM plus what the base region should have plugged.
    pub desired_ram: u64,
}

//! The control API of docs/interface.md: HTTP/1.1 with JSON bodies on a Unix socket, served as an
//! `event-manager` subscriber in the runtime's event loop, and the small client the CLI uses.
//!
//! | method and path | body | answer |
//! | --- | --- | --- |
//! | `GET /api/v1/vmm.ping` | — | `200` [`PingInfo`] |
//! | `PUT /api/v1/vm.add-tagged-memory` | [`AddTaggedMemory`] | `200` [`AddReply`] |
//! | `PUT /api/v1/vm.release-tagged-memory` | [`ReleaseTaggedMemory`] | `204` |
//! | `GET /api/v1/vm.tagged-memory` | — | `200` `[`[`ExtentRow`]`, ...]` |
//! | `PUT /api/v1/vm.resize` | [`VmResize`] | `204` |
//! | `GET /api/v1/vm.memory` | — | `200` [`BaseMemory`] |
//!
//! Requests are parsed with `httparse` within fixed bounds ([`MAX_HEAD_BYTES`], [`MAX_HEADERS`],
//! [`MAX_BODY_BYTES`]); every error answers with a status and `{"error": "<message>"}` naming
//! the field at fault; host failures answer 5xx with the OS error. The socket ([`ApiSocket`],
//! `socket.rs`) is created owner-only and never replaces anything but a stale socket; the server
//! ([`ApiServer`], `server.rs`) never blocks the event loop and bounds what clients may hold of
//! it ([`ServerLimits`]). What a request does is behind [`ApiBackend`]; [`TaggedMemoryControl`]
//! implements it on a running [`Vmm`], where it also keeps a tag unique per VM.

use crate::config::{
    error_chain, group_chains, ConfigError, OptionError, Resolver, TaggedMemoryConfig, GENERATED_ID_PREFIX,
};
use crate::hotplug::BaseMemory;
use crate::runtime::{BackingLifetime, Vmm, VmmError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tagmem_device::{ControlError, ExtentInfo, ExtentState, SourceId, Target};
use uuid::Uuid;

mod server;
mod socket;

pub use server::{ApiServer, ServerLimits, ServerStats, MAX_CONNECTIONS};
pub use socket::{ApiSocket, ApiSocketError, DEFAULT_SOCKET_MODE};
pub use tagmem_host::PreparedChain;

/// Path prefix of every endpoint.
pub const API_PREFIX: &str = "/api/v1/";
/// `GET`: is the VMM alive.
pub const PING: &str = "/api/v1/vmm.ping";
/// `PUT`: offer one chain of tagged extents.
pub const ADD_TAGGED_MEMORY: &str = "/api/v1/vm.add-tagged-memory";
/// `PUT`: request the release of a tag group or an extent.
pub const RELEASE_TAGGED_MEMORY: &str = "/api/v1/vm.release-tagged-memory";
/// `GET`: the extent table.
pub const TAGGED_MEMORY: &str = "/api/v1/vm.tagged-memory";
/// `PUT`: resize the guest's RAM through the base virtio-mem region.
pub const RESIZE: &str = "/api/v1/vm.resize";
/// `GET`: the base virtio-mem region's sizes.
pub const MEMORY: &str = "/api/v1/vm.memory";
/// Largest request head (request line and headers).
pub const MAX_HEAD_BYTES: usize = 8 << 10;
/// Most headers in one request.
pub const MAX_HEADERS: usize = 32;
/// Largest request body.
pub const MAX_BODY_BYTES: usize = 256 << 10;

/// Why a request failed; each maps to one HTTP status.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
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
        }
    }
}

impl From<OptionError> for ApiError {
    /// A host failure (memfd creation, an OS error opening a backing) is a 500 that carries the
    /// OS error; anything the request got wrong is a 400.
    fn from(e: OptionError) -> Self {
        if e.error.is_host_failure() {
            ApiError::Internal(e.with_causes())
        } else {
            ApiError::BadRequest(e.to_string())
        }
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::NotReady => ApiError::Unavailable(e.to_string()),
            e => ApiError::BadRequest(e.to_string()),
        }
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

/// A parsed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRequest {
    /// `GET`, `PUT`, ...
    pub method: String,
    /// Path without the query string.
    pub path: String,
    /// The body.
    pub body: Vec<u8>,
}

/// An answer ready to be written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// JSON body; empty for 204.
    pub body: String,
    /// `Allow` header for 405.
    pub allow: Option<&'static str>,
}

impl HttpResponse {
    fn json<T: Serialize>(status: u16, value: &T) -> Self {
        match serde_json::to_string(value) {
            Ok(body) => HttpResponse {
                status,
                body,
                allow: None,
            },
            Err(e) => Self::error(&ApiError::Internal(format!("encoding the answer: {e}"))),
        }
    }

    /// The answer for `err`: its status and `{"error": "..."}`.
    pub fn error(err: &ApiError) -> Self {
        let allow = match err {
            ApiError::MethodNotAllowed { allow, .. } => Some(*allow),
            _ => None,
        };
        HttpResponse {
            status: err.status(),
            body: serde_json::json!({ "error": err.to_string() }).to_string(),
            allow,
        }
    }

    /// The bytes on the wire; the server closes the connection after each answer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut head = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        if let Some(allow) = self.allow {
            head.push_str(&format!("Allow: {allow}\r\n"));
        }
        if !self.body.is_empty() {
            head.push_str("Content-Type: application/json\r\n");
        }
        head.push_str(&format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            self.body.len()
        ));
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(self.body.as_bytes());
        bytes
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// The request line and headers of a request, once complete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Head {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) head_len: usize,
    pub(crate) body_len: usize,
    pub(crate) expect_continue: bool,
}

/// Parses the head of the request at the start of `buf`; `None` while it is incomplete.
pub(crate) fn parse_head(buf: &[u8]) -> Result<Option<Head>, ApiError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n <= MAX_HEAD_BYTES => n,
        Ok(httparse::Status::Complete(_)) => return Err(ApiError::HeadTooLarge),
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => return Err(ApiError::HeadTooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(ApiError::HeadTooLarge),
        Err(e) => return Err(ApiError::BadRequest(format!("malformed HTTP request: {e}"))),
    };
    let method = req.method.unwrap_or_default().to_string();
    let path = req.path.unwrap_or_default();
    let path = path.split_once('?').map_or(path, |(p, _)| p).to_string();
    let mut body_len = 0;
    let mut expect_continue = false;
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            body_len = value
                .parse::<usize>()
                .ok()
                .filter(|_| value.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| ApiError::BadRequest(format!("Content-Length: {value:?} is not a number")))?;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(ApiError::BadRequest(format!(
                "Transfer-Encoding: {value}: not supported; send Content-Length"
            )));
        } else if h.name.eq_ignore_ascii_case("expect") {
            expect_continue = value.eq_ignore_ascii_case("100-continue");
        }
    }
    if body_len > MAX_BODY_BYTES {
        return Err(ApiError::PayloadTooLarge(body_len));
    }
    Ok(Some(Head {
        method,
        path,
        head_len,
        body_len,
        expect_continue,
    }))
}

/// Parses one complete request from `buf`; `None` while head or body are incomplete.
pub fn parse_request(buf: &[u8]) -> Result<Option<HttpRequest>, ApiError> {
    let Some(head) = parse_head(buf)? else {
        return Ok(None);
    };
    let end = head.head_len + head.body_len;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some(HttpRequest {
        method: head.method,
        path: head.path,
        body: buf[head.head_len..end].to_vec(),
    }))
}

/// What a request asks for, once routed and its body decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiRequest {
    /// `GET vmm.ping`.
    Ping,
    /// `PUT vm.add-tagged-memory`.
    Add(AddTaggedMemory),
    /// `PUT vm.release-tagged-memory`.
    Release(Target),
    /// `GET vm.tagged-memory`.
    List,
    /// `PUT vm.resize`.
    Resize(VmResize),
    /// `GET vm.memory`.
    Memory,
}

/// Decodes a JSON object into `T`, naming the field at fault: each member is first decoded on
/// its own (every field of the API's objects but `extents` is optional), so a type error or an
/// unknown field reads `<prefix><field>: <error>`.
/// `label` names the object as a whole.
fn decode_object<T: DeserializeOwned>(value: Value, label: &str, prefix: &str) -> Result<T, ApiError> {
    let Value::Object(members) = &value else {
        return Err(ApiError::BadRequest(format!("{label}: expected a JSON object")));
    };
    for (key, member) in members {
        let alone = Value::Object(Map::from_iter([(key.clone(), member.clone())]));
        if let Err(e) = serde_json::from_value::<T>(alone) {
            if !e.to_string().starts_with("missing field") {
                return Err(ApiError::BadRequest(format!("{prefix}{key}: {e}")));
            }
        }
    }
    serde_json::from_value(value).map_err(|e| ApiError::BadRequest(format!("{label}: {e}")))
}

/// Parses a request body as JSON.
fn parse_body(body: &[u8], what: &str) -> Result<Value, ApiError> {
    if body.is_empty() {
        return Err(ApiError::BadRequest(format!("{what}: a JSON body is required")));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("{what}: malformed JSON: {e}")))
}

/// Decodes the body of `vm.add-tagged-memory`, naming the extent and field at fault.
pub fn decode_add(body: &[u8]) -> Result<AddTaggedMemory, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Raw {
        extents: Vec<Value>,
    }
    let raw: Raw = decode_object(
        parse_body(body, "vm.add-tagged-memory")?,
        "vm.add-tagged-memory",
        "",
    )?;
    if raw.extents.is_empty() {
        return Err(ApiError::BadRequest(
            "extents: empty; give at least one extent".into(),
        ));
    }
    let mut extents = Vec::with_capacity(raw.extents.len());
    for (i, e) in raw.extents.into_iter().enumerate() {
        let c: TaggedMemoryConfig = decode_object(e, &format!("extents[{i}]"), &format!("extents[{i}]."))?;
        c.validate()
            .map_err(|err| ApiError::BadRequest(format!("extents[{i}]: {err}")))?;
        extents.push(c);
    }
    Ok(AddTaggedMemory { extents })
}

/// Maps a request to what it asks for: 404 for unknown paths, 405 for wrong methods, 400 for
/// bodies that do not decode or validate (the message names the field).
pub fn route(req: &HttpRequest) -> Result<ApiRequest, ApiError> {
    let (allow, path) = match req.path.as_str() {
        PING => ("GET", PING),
        TAGGED_MEMORY => ("GET", TAGGED_MEMORY),
        ADD_TAGGED_MEMORY => ("PUT", ADD_TAGGED_MEMORY),
        RELEASE_TAGGED_MEMORY => ("PUT", RELEASE_TAGGED_MEMORY),
        RESIZE => ("PUT", RESIZE),
        MEMORY => ("GET", MEMORY),
        other => return Err(ApiError::NotFound(other.to_string())),
    };
    if req.method != allow {
        return Err(ApiError::MethodNotAllowed {
            method: req.method.clone(),
            path: path.to_string(),
            allow,
        });
    }
    match path {
        PING => Ok(ApiRequest::Ping),
        TAGGED_MEMORY => Ok(ApiRequest::List),
        ADD_TAGGED_MEMORY => Ok(ApiRequest::Add(decode_add(&req.body)?)),
        MEMORY => Ok(ApiRequest::Memory),
        RESIZE => {
            let body = parse_body(&req.body, "vm.resize")?;
            Ok(ApiRequest::Resize(decode_object(body, "vm.resize", "")?))
        }
        _ => {
            let body = parse_body(&req.body, "vm.release-tagged-memory")?;
            let rel: ReleaseTaggedMemory = decode_object(body, "vm.release-tagged-memory", "")?;
            Ok(ApiRequest::Release(rel.target()?))
        }
    }
}

/// Answers one request with `backend`.
pub fn handle(backend: &dyn ApiBackend, req: &HttpRequest) -> HttpResponse {
    let answer = route(req).and_then(|r| match r {
        ApiRequest::Ping => Ok(HttpResponse::json(200, &backend.ping())),
        ApiRequest::List => Ok(HttpResponse::json(200, &backend.tagged_memory())),
        ApiRequest::Add(add) => backend
            .add_tagged_memory(&add.extents)
            .map(|r| HttpResponse::json(200, &r)),
        ApiRequest::Release(target) => backend.release_tagged_memory(target).map(|()| HttpResponse {
            status: 204,
            body: String::new(),
            allow: None,
        }),
        ApiRequest::Resize(r) => backend.resize(r.desired_ram).map(|()| HttpResponse {
            status: 204,
            body: String::new(),
            allow: None,
        }),
        ApiRequest::Memory => backend.memory().map(|m| HttpResponse::json(200, &m)),
    });
    answer.unwrap_or_else(|e| HttpResponse::error(&e))
}

/// An extent of one of the VM's tagged devices that carries a tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TagHolder {
    /// Index of the tagged device.
    pub device: usize,
    /// The extent's id on that device.
    pub extent: u64,
    /// Its tag.
    pub tag: Uuid,
    /// Its state (any state: offered or accepted).
    pub state: ExtentState,
}

impl TagHolder {
    /// The tagged extents of every device's extent table, device by device.
    pub fn of_devices(devices: &[Vec<ExtentInfo>]) -> Vec<TagHolder> {
        devices
            .iter()
            .enumerate()
            .flat_map(|(device, extents)| {
                extents
                    .iter()
                    .filter(|e| !e.tag.is_nil())
                    .map(move |e| TagHolder {
                        device,
                        extent: e.id,
                        tag: e.tag,
                        state: e.state,
                    })
            })
            .collect()
    }
}

/// The VM's tag rule: a tag names one group per VM, so no extent of a new chain may carry a tag
/// that an extent of any tagged device of the VM carries, offered or accepted. `tags` are the
/// chain's tags by position, `held` the tagged extents of every device ([`TagHolder::of_devices`]).
/// The error names the position, the tag and the extent that holds it.
pub fn check_tags_free(tags: impl IntoIterator<Item = Uuid>, held: &[TagHolder]) -> Result<(), ApiError> {
    for (i, tag) in tags.into_iter().enumerate() {
        if tag.is_nil() {
            continue;
        }
        if let Some(h) = held.iter().find(|h| h.tag == tag) {
            let state = serde_json::to_value(h.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            return Err(ApiError::Conflict(format!(
                "extents[{i}]: tag={tag}: already present on this VM (extent {} on tagged device {} \
                 is {state}); a tag names one group per VM, release it first",
                h.extent, h.device
            )));
        }
    }
    Ok(())
}

/// Name and backing of an extent the control offered.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Named {
    name: String,
    path: String,
}

#[derive(Debug, Default)]
struct ControlState {
    names: BTreeMap<u64, Named>,
    next_name: u64,
}

/// Adds and releases tagged capacity on a running [`Vmm`] as the API and the command line ask:
/// resolves, opens and registers backings (closed again once their extents are gone), offers the
/// chains, and remembers each extent's name.
pub struct TaggedMemoryControl {
    vmm: Arc<Vmm>,
    resolver: Resolver,
    state: Mutex<ControlState>,
}

impl std::fmt::Debug for TaggedMemoryControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaggedMemoryControl")
            .field("resolver", &self.resolver)
            .finish_non_exhaustive()
    }
}

impl TaggedMemoryControl {
    /// Controls `vmm`, resolving tags through `resolver`.
    pub fn new(vmm: Arc<Vmm>, resolver: Resolver) -> Self {
        TaggedMemoryControl {
            vmm,
            resolver,
            state: Mutex::new(ControlState::default()),
        }
    }

    /// The VMM.
    pub fn vmm(&self) -> &Arc<Vmm> {
        &self.vmm
    }

    fn state(&self) -> MutexGuard<'_, ControlState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The name of extent `extent_id`, if the control offered it.
    pub fn name_of(&self, extent_id: u64) -> Option<String> {
        self.state().names.get(&extent_id).map(|n| n.name.clone())
    }

    /// The extent tables of the VM's tagged devices (the reference VMM has one).
    fn tagged_devices(&self) -> Vec<Vec<ExtentInfo>> {
        vec![self.vmm.extents()]
    }

    /// The tagged extents of all of the VM's tagged devices.
    fn tag_holders(&self) -> Vec<TagHolder> {
        TagHolder::of_devices(&self.tagged_devices())
    }

    /// Registers the backings of `chain`, offers it, and names its extents. A tag already
    /// present on the VM is refused ([`check_tags_free`]) before anything is registered.
    pub fn offer(&self, chain: PreparedChain) -> Result<AddReply, ApiError> {
        let mut state = self.state();
        let devices = self.tagged_devices();
        // Under the state lock: two offers of one tag cannot both pass.
        check_tags_free(
            chain.plans().map(|plan| plan.tag),
            &TagHolder::of_devices(&devices),
        )?;
        let live: Vec<u64> = devices.iter().flatten().map(|e| e.id).collect();
        state.names.retain(|id, _| live.contains(id));
        for plan in chain.plans() {
            if let Some(id) = &plan.id {
                if state.names.values().any(|n| &n.name == id) {
                    return Err(ApiError::BadRequest(
                        ConfigError::DuplicateId { id: id.clone() }.to_string(),
                    ));
                }
            }
        }
        let mut registered: Vec<SourceId> = Vec::new();
        let mut specs = Vec::new();
        let mut named = Vec::new();
        let unregister = |ids: &[SourceId]| {
            for id in ids {
                let _ = self.vmm.unregister_backing(*id);
            }
        };
        for (plan, backing) in chain.into_extents() {
            let id = match self.vmm.add_backing(backing, BackingLifetime::PerExtent) {
                Ok(id) => id,
                Err(e) => {
                    unregister(&registered);
                    return Err(ApiError::Internal(format!(
                        "registering the backing: {}",
                        error_chain(&e)
                    )));
                }
            };
            registered.push(id);
            specs.push(plan.spec(id));
            named.push((plan.id.clone(), plan.backing_name(), plan.length));
        }
        let receipt = match self.vmm.offer(&specs) {
            Ok(r) => r,
            Err(e) => {
                unregister(&registered);
                return Err(e.into());
            }
        };
        let mut extents = Vec::new();
        for ((extent_id, gpa), (id, path, size)) in receipt.extents.into_iter().zip(named) {
            let name = id.unwrap_or_else(|| {
                let n = format!("{GENERATED_ID_PREFIX}{}", state.next_name);
                state.next_name += 1;
                n
            });
            state.names.insert(
                extent_id,
                Named {
                    name: name.clone(),
                    path,
                },
            );
            extents.push(AddedExtent {
                id: name,
                extent_id,
                gpa,
                size,
            });
        }
        Ok(AddReply {
            chain_id: receipt.chain_id,
            extents,
        })
    }
}

impl ApiBackend for TaggedMemoryControl {
    fn ping(&self) -> PingInfo {
        PingInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            device_ready: self.vmm.device_ready(),
        }
    }

    fn add_tagged_memory(&self, extents: &[TaggedMemoryConfig]) -> Result<AddReply, ApiError> {
        group_chains(extents).map_err(|e| ApiError::BadRequest(format!("extents: {}", e.error)))?;
        // Before any backing is opened; checked again under the lock when offering.
        check_tags_free(extents.iter().map(TaggedMemoryConfig::tag), &self.tag_holders())?;
        let chain = PreparedChain::prepare(&self.resolver, extents, "extents")?;
        self.offer(chain)
    }

    fn release_tagged_memory(&self, target: Target) -> Result<(), ApiError> {
        let field = match target {
            Target::Tag(_) => "tag",
            Target::Extent(_) => "extent_id",
        };
        self.vmm
            .request_release(target)
            .map(|_| ())
            .map_err(|e| match ApiError::from(e) {
                ApiError::BadRequest(m) => ApiError::BadRequest(format!("{field}: {m}")),
                other => other,
            })
    }

    fn resize(&self, desired_ram: u64) -> Result<(), ApiError> {
        self.vmm.resize_ram(desired_ram).map_err(|e| match e {
            VmmError::Resize(m) => ApiError::BadRequest(format!("desired_ram: {m}")),
            other => ApiError::Internal(other.to_string()),
        })
    }

    fn memory(&self) -> Result<BaseMemory, ApiError> {
        Ok(self.vmm.base_memory())
    }

    fn tagged_memory(&self) -> Vec<ExtentRow> {
        let state = self.state();
        self.vmm
            .extents()
            .into_iter()
            .map(|info| {
                let (name, path) = match state.names.get(&info.id) {
                    Some(n) => (n.name.clone(), n.path.clone()),
                    None => (String::new(), String::new()),
                };
                ExtentRow { name, path, info }
            })
            .collect()
    }
}

/// Errors of the API client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting to or talking over the socket failed.
    #[error("{path}: {source}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The answer is not valid HTTP.
    #[error("{path}: malformed answer: {reason}")]
    Malformed {
        /// The socket.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Sends one request over the Unix socket at `socket` and returns the status and body.
pub fn call(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String), ClientError> {
    let io_err = |source| ClientError::Io {
        path: socket.to_path_buf(),
        source,
    };
    let mut stream = UnixStream::connect(socket).map_err(io_err)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(io_err)?;
    let body = body.unwrap_or("");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n");
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(req.as_bytes()).map_err(io_err)?;
    let mut answer = Vec::new();
    if let Err(e) = stream.read_to_end(&mut answer) {
        // A server that answers before it read everything (a refusal) may reset the connection
        // after the answer: keep the answer if it is whole.
        if e.kind() != io::ErrorKind::ConnectionReset || parse_response(&answer).is_err() {
            return Err(io_err(e));
        }
    }
    parse_response(&answer).map_err(|reason| ClientError::Malformed {
        path: socket.to_path_buf(),
        reason,
    })
}

/// Indents compact JSON text two spaces per level, keeping the order of members as sent.
pub fn indent_json(compact: &str) -> String {
    let mut out = String::with_capacity(compact.len() * 2);
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.push_str(&"  ".repeat(depth));
    };
    let mut chars = compact.chars().peekable();
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                let close = if c == '{' { '}' } else { ']' };
                if chars.peek() == Some(&close) {
                    out.push(close);
                    chars.next();
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}

/// Splits an HTTP answer into status and body, skipping `100 Continue`.
pub fn parse_response(mut bytes: &[u8]) -> Result<(u16, String), String> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        let n = match resp.parse(bytes) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Err("truncated".into()),
            Err(e) => return Err(e.to_string()),
        };
        let status = resp.code.ok_or("no status")?;
        if status == 100 {
            bytes = &bytes[n..];
            continue;
        }
        let len = resp
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok());
        let rest = &bytes[n..];
        let body = match len {
            Some(len) => rest.get(..len).ok_or("body shorter than Content-Length")?,
            None => rest,
        };
        return Ok((status, String::from_utf8_lossy(body).into_owned()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    const TAG: &str = "6f1c2a9e-0d3b-4c55-9a7e-3b1f00c0ffee";

    /// Records what it was asked and answers with fixed values.
    #[derive(Default)]
    pub(super) struct Fake {
        adds: Mutex<Vec<Vec<TaggedMemoryConfig>>>,
        releases: Mutex<Vec<Target>>,
        next: AtomicU64,
    }

    impl ApiBackend for Fake {
        fn ping(&self) -> PingInfo {
            PingInfo {
                version: "test".into(),
                pid: 1,
                device_ready: true,
            }
        }

        fn add_tagged_memory(&self, extents: &[TaggedMemoryConfig]) -> Result<AddReply, ApiError> {
            self.adds.lock().unwrap().push(extents.to_vec());
            let chain_id = self.next.fetch_add(1, Ordering::SeqCst);
            Ok(AddReply {
                chain_id,
                extents: extents
                    .iter()
                    .enumerate()
                    .map(|(i, e)| AddedExtent {
                        id: e.id.clone().unwrap_or_else(|| format!("_tagmem{i}")),
                        extent_id: u64::try_from(i).unwrap(),
                        gpa: 1 << 32,
                        size: e.size.unwrap_or(0),
                    })
                    .collect(),
            })
        }

        fn release_tagged_memory(&self, target: Target) -> Result<(), ApiError> {
            if target == Target::Extent(99) {
                return Err(ApiError::BadRequest(
                    "extent_id: no such extent or tag: 99".into(),
                ));
            }
            self.releases.lock().unwrap().push(target);
            Ok(())
        }

        fn tagged_memory(&self) -> Vec<ExtentRow> {
            Vec::new()
        }
    }

    fn req(method: &str, path: &str, body: &str) -> Vec<u8> {
        format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    fn answer(fake: &Fake, raw: &[u8]) -> (u16, serde_json::Value) {
        let r = match parse_request(raw) {
            Ok(Some(r)) => handle(fake, &r),
            Ok(None) => panic!("incomplete"),
            Err(e) => HttpResponse::error(&e),
        };
        let v = if r.body.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&r.body).unwrap()
        };
        (r.status, v)
    }

    fn error_of(v: &serde_json::Value) -> &str {
        v["error"].as_str().unwrap()
    }

    #[test]
    fn parse_waits_for_head_and_body() {
        let full = req("PUT", ADD_TAGGED_MEMORY, r#"{"extents":[]}"#);
        for cut in [0, 10, full.len() - 1] {
            assert_eq!(parse_request(&full[..cut]).unwrap(), None, "cut at {cut}");
        }
        let r = parse_request(&full).unwrap().unwrap();
        assert_eq!((r.method.as_str(), r.path.as_str()), ("PUT", ADD_TAGGED_MEMORY));
        assert_eq!(r.body, br#"{"extents":[]}"#);
        let r = parse_request(b"GET /api/v1/vmm.ping?x=1 HTTP/1.1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((r.path.as_str(), r.body.len()), (PING, 0));
    }

    #[test]
    fn parse_bounds_and_malformed_heads() {
        assert!(matches!(
            parse_request(b"GARBAGE\x01 / HTTP/1.1\r\n\r\n"),
            Err(ApiError::BadRequest(m)) if m.starts_with("malformed HTTP request")
        ));
        let big = format!(
            "PUT {ADD_TAGGED_MEMORY} HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY_BYTES + 1
        );
        let e = parse_request(big.as_bytes()).unwrap_err();
        assert_eq!(e.status(), 413);
        assert_eq!(
            e.to_string(),
            format!(
                "request body of {} bytes exceeds the limit of {MAX_BODY_BYTES} bytes",
                MAX_BODY_BYTES + 1
            )
        );
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(parse_request(long.as_bytes()).unwrap_err().status(), 431);
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: y\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(parse_request(many.as_bytes()).unwrap_err().status(), 431);
        let e = parse_request(b"PUT / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n").unwrap_err();
        assert_eq!(e.to_string(), "Content-Length: \"1x\" is not a number");
        let e = parse_request(b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "Transfer-Encoding: chunked: not supported; send Content-Length"
        );
    }

    #[test]
    fn routes_and_methods() {
        let f = Fake::default();
        let (s, v) = answer(&f, &req("GET", PING, ""));
        assert_eq!((s, v["device_ready"].as_bool()), (200, Some(true)));
        let (s, v) = answer(&f, &req("GET", "/api/v1/vm.boot", ""));
        assert_eq!((s, error_of(&v)), (404, "no such endpoint: /api/v1/vm.boot"));
        let (s, v) = answer(&f, &req("GET", ADD_TAGGED_MEMORY, ""));
        assert_eq!(
            (s, error_of(&v)),
            (405, "/api/v1/vm.add-tagged-memory does not accept GET; use PUT")
        );
        let (s, _) = answer(&f, &req("PUT", TAGGED_MEMORY, ""));
        assert_eq!(s, 405);
        let (s, v) = answer(&f, &req("GET", TAGGED_MEMORY, ""));
        assert_eq!((s, v), (200, serde_json::json!([])));
        let e = ApiError::MethodNotAllowed {
            method: "GET".into(),
            path: PING.into(),
            allow: "PUT",
        };
        let wire = String::from_utf8(HttpResponse::error(&e).to_bytes()).unwrap();
        assert!(
            wire.starts_with("HTTP/1.1 405 Method Not Allowed\r\nAllow: PUT\r\n"),
            "{wire}"
        );
    }

    #[test]
    fn add_decodes_and_validates_the_body() {
        let f = Fake::default();
        let body = format!(r#"{{"extents":[{{"tag":"{TAG}","path":"memfd","size":4194304,"id":"tm0"}}]}}"#);
        let (s, v) = answer(&f, &req("PUT", ADD_TAGGED_MEMORY, &body));
        assert_eq!(s, 200);
        assert_eq!(v["extents"][0]["id"], "tm0");
        assert_eq!(v["extents"][0]["size"], 4194304);
        assert_eq!(f.adds.lock().unwrap()[0][0].tag, Some(TAG.parse().unwrap()));

        let cases = [
            ("", "vm.add-tagged-memory: a JSON body is required"),
            (
                "{",
                "vm.add-tagged-memory: malformed JSON: EOF while parsing an object",
            ),
            ("[]", "vm.add-tagged-memory: expected a JSON object"),
            ("{}", "vm.add-tagged-memory: missing field `extents`"),
            (r#"{"extents":[]}"#, "extents: empty; give at least one extent"),
            (
                r#"{"extents":{}}"#,
                "extents: invalid type: map, expected a sequence",
            ),
            (
                r#"{"extents":[{"size":2097152}],"x":1}"#,
                "x: unknown field `x`, expected `extents`",
            ),
            (r#"{"extents":[7]}"#, "extents[0]: expected a JSON object"),
            (
                r#"{"extents":[{"size":2097152},{"size":3145728}]}"#,
                "extents[1]: size=3M: not a multiple of 2 MiB",
            ),
            (
                r#"{"extents":[{"size":2097152,"shared":true}]}"#,
                "extents[0]: shared=on: sharable capacity needs a tag=<uuid>",
            ),
            (
                r#"{"extents":[{"size":"2M"}]}"#,
                "extents[0].size: invalid type: string \"2M\", expected u64",
            ),
            (
                r#"{"extents":[{"size":2097152,"node":70000}]}"#,
                "extents[0].node: invalid value: integer `70000`, expected u16",
            ),
            (
                r#"{"extents":[{"tag":"nope","size":2097152}]}"#,
                "extents[0].tag: UUID parsing failed",
            ),
            (
                r#"{"extents":[{"size":2097152,"colour":1}]}"#,
                "extents[0].colour: unknown field `colour`, expected one of `tag`, `path`",
            ),
        ];
        for (body, msg) in cases {
            let (s, v) = answer(&f, &req("PUT", ADD_TAGGED_MEMORY, body));
            assert_eq!(s, 400, "{body}");
            assert!(error_of(&v).starts_with(msg), "{body}: {v}");
        }
        assert_eq!(f.adds.lock().unwrap().len(), 1);
    }

    #[test]
    fn release_takes_exactly_one_target() {
        let f = Fake::default();
        let (s, v) = answer(
            &f,
            &req("PUT", RELEASE_TAGGED_MEMORY, &format!(r#"{{"tag":"{TAG}"}}"#)),
        );
        assert_eq!((s, v), (204, serde_json::Value::Null));
        let (s, _) = answer(&f, &req("PUT", RELEASE_TAGGED_MEMORY, r#"{"extent_id":7}"#));
        assert_eq!(s, 204);
        assert_eq!(
            *f.releases.lock().unwrap(),
            vec![Target::Tag(TAG.parse().unwrap()), Target::Extent(7)]
        );
        let both = format!(r#"{{"tag":"{TAG}","extent_id":7}}"#);
        for body in ["{}", both.as_str()] {
            let (s, v) = answer(&f, &req("PUT", RELEASE_TAGGED_MEMORY, body));
            assert_eq!(
                (s, error_of(&v)),
                (400, "give exactly one of \"tag\" and \"extent_id\"")
            );
        }
        let nil = r#"{"tag":"00000000-0000-0000-0000-000000000000"}"#;
        let (s, v) = answer(&f, &req("PUT", RELEASE_TAGGED_MEMORY, nil));
        assert_eq!(s, 400);
        assert!(error_of(&v).starts_with("tag: the nil UUID names no tag group"));
        let (s, v) = answer(&f, &req("PUT", RELEASE_TAGGED_MEMORY, r#"{"extent_id":99}"#));
        assert_eq!((s, error_of(&v)), (400, "extent_id: no such extent or tag: 99"));
        let (s, v) = answer(&f, &req("PUT", RELEASE_TAGGED_MEMORY, r#"{"extent_id":-1}"#));
        assert_eq!(s, 400);
        assert!(
            error_of(&v).starts_with("extent_id: invalid value: integer `-1`"),
            "{v}"
        );
        let (s, v) = answer(&f, &req("PUT", RELEASE_TAGGED_MEMORY, r#"{"id":"tm0"}"#));
        assert_eq!(s, 400);
        assert!(error_of(&v).starts_with("id: unknown field `id`"), "{v}");
    }

    #[test]
    fn b8_a_tag_present_on_any_tagged_device_of_the_vm_is_refused() {
        let tag: Uuid = TAG.parse().unwrap();
        let other = Uuid::from_u128(7);
        let holder = |device, extent, tag, state| TagHolder {
            device,
            extent,
            tag,
            state,
        };
        // Two tagged devices: the tag is pending on the second one.
        let held = [
            holder(0, 1, other, ExtentState::Accepted),
            holder(1, 4, tag, ExtentState::Pending),
        ];
        let e = check_tags_free([Uuid::nil(), tag], &held).unwrap_err();
        assert_eq!(e.status(), 409);
        assert_eq!(
            e.to_string(),
            format!(
                "extents[1]: tag={tag}: already present on this VM (extent 4 on tagged device 1 \
                 is pending); a tag names one group per VM, release it first"
            )
        );
        let e = check_tags_free([other], &held).unwrap_err();
        assert!(
            e.to_string().contains("extent 1 on tagged device 0 is accepted"),
            "{e}"
        );
        // Untagged capacity and new tags pass; so does everything on an empty VM.
        check_tags_free([Uuid::nil(), Uuid::from_u128(8)], &held).unwrap();
        check_tags_free([tag], &[]).unwrap();
    }

    #[test]
    fn response_bytes_and_client_parsing() {
        let r = HttpResponse {
            status: 204,
            body: String::new(),
            allow: None,
        };
        let wire = r.to_bytes();
        assert_eq!(
            String::from_utf8(wire.clone()).unwrap(),
            "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(parse_response(&wire).unwrap(), (204, String::new()));
        let mut cont = b"HTTP/1.1 100 Continue\r\n\r\n".to_vec();
        cont.extend(HttpResponse::json(200, &serde_json::json!({"a": 1})).to_bytes());
        assert_eq!(parse_response(&cont).unwrap(), (200, r#"{"a":1}"#.to_string()));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab").is_err());
    }

    #[test]
    fn indent_keeps_member_order_and_strings() {
        let s = r#"{"z":1,"a":[{"b":"x,\"y\":{"},[]],"e":{}}"#;
        assert_eq!(
            indent_json(s),
            "{\n  \"z\": 1,\n  \"a\": [\n    {\n      \"b\": \"x,\\\"y\\\":{\"\n    },\n    []\n  ],\n  \"e\": {}\n}"
        );
        let v: serde_json::Value = serde_json::from_str(&indent_json(s)).unwrap();
        assert_eq!(v, serde_json::from_str::<serde_json::Value>(s).unwrap());
    }
}

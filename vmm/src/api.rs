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
//! implements it on a running [`crate::Vmm`], where it also keeps a tag unique per VM.
//!
//! Files: `types.rs` (bodies, answers, [`ApiError`]), `http.rs` (HTTP framing), `routes.rs`
//! (paths to requests, body decoding), `control.rs` (the backend on a VMM), `client.rs` (the
//! CLI's client), `server.rs` and `socket.rs`. Each depends only on the ones listed before it.

mod client;
mod control;
mod http;
mod routes;
mod server;
mod socket;
mod types;

pub use client::{call, parse_response, pretty_json, ClientError};
pub use control::{check_tags_free, TagHolder, TaggedMemoryControl};
pub(crate) use http::parse_head;
pub use http::{parse_request, HttpRequest, HttpResponse};
pub use routes::{decode_add, handle, route, ApiRequest};
pub use server::{ApiServer, ServerLimits, ServerStats, MAX_CONNECTIONS};
pub use socket::{ApiSocket, ApiSocketError, DEFAULT_SOCKET_MODE};
pub use tagmem_host::PreparedChain;
pub use types::{
    AddReply, AddTaggedMemory, AddedExtent, ApiBackend, ApiError, ExtentRow, PingInfo, ReleaseTaggedMemory,
    VmResize,
};

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

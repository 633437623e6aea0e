//! The API server on a real Unix socket and a real event loop, with a recording backend: no KVM
//! needed. Checks framing, routing, bounds and that a stalled client does not block others.

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use tagmem_device::Target;
use tagmem_vmm::api::{
    self, AddReply, AddedExtent, ApiBackend, ApiError, ApiServer, ApiSocket, ExtentRow, PingInfo,
};
use tagmem_vmm::config::TaggedMemoryConfig;

type Sub = Arc<Mutex<dyn MutEventSubscriber + Send>>;

#[derive(Default)]
struct Recorder {
    adds: Mutex<Vec<Vec<TaggedMemoryConfig>>>,
    releases: Mutex<Vec<Target>>,
}

impl ApiBackend for Recorder {
    fn ping(&self) -> PingInfo {
        PingInfo {
            version: "test".into(),
            pid: 7,
            device_ready: false,
        }
    }

    fn add_tagged_memory(&self, extents: &[TaggedMemoryConfig]) -> Result<AddReply, ApiError> {
        let mut adds = self.adds.lock().unwrap();
        adds.push(extents.to_vec());
        Ok(AddReply {
            chain_id: u64::try_from(adds.len()).unwrap(),
            extents: vec![AddedExtent {
                id: "_tagmem0".into(),
                extent_id: 7,
                gpa: 1 << 32,
                size: extents[0].size.unwrap_or(0),
            }],
        })
    }

    fn release_tagged_memory(&self, target: Target) -> Result<(), ApiError> {
        self.releases.lock().unwrap().push(target);
        Ok(())
    }

    fn tagged_memory(&self) -> Vec<ExtentRow> {
        Vec::new()
    }
}

/// An event loop thread serving the API on a socket in a temporary directory.
struct Server {
    _dir: tempfile::TempDir,
    path: PathBuf,
    backend: Arc<Recorder>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let backend = Arc::new(Recorder::default());
        let socket = ApiSocket::bind(&path).unwrap();
        let server: Sub = Arc::new(Mutex::new(ApiServer::new(socket, backend.clone()).unwrap()));
        let mut manager = EventManager::<Sub>::new().unwrap();
        manager.add_subscriber(server);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                manager.run_with_timeout(20).unwrap();
            }
        });
        Server {
            _dir: dir,
            path,
            backend,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

/// Sends raw bytes and reads the whole answer.
fn raw(path: &Path, bytes: &[u8]) -> (u16, String) {
    let mut s = UnixStream::connect(path).unwrap();
    s.write_all(bytes).unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).unwrap();
    api::parse_response(&answer).unwrap()
}

#[test]
fn round_trips_over_the_socket() {
    let srv = Server::start();
    let (s, body) = api::call(&srv.path, "GET", api::PING, None).unwrap();
    assert_eq!(
        (s, body.as_str()),
        (200, r#"{"version":"test","pid":7,"device_ready":false}"#)
    );
    let (s, body) = api::call(
        &srv.path,
        "PUT",
        api::ADD_TAGGED_MEMORY,
        Some(r#"{"extents":[{"tag":"6f1c2a9e-0d3b-4c55-9a7e-3b1f00c0ffee","path":"memfd","size":4194304}]}"#),
    )
    .unwrap();
    assert_eq!(s, 200);
    assert_eq!(
        body,
        r#"{"chain_id":1,"extents":[{"id":"_tagmem0","extent_id":7,"gpa":4294967296,"size":4194304}]}"#
    );
    assert_eq!(srv.backend.adds.lock().unwrap()[0][0].size, Some(4 << 20));
    let (s, body) = api::call(
        &srv.path,
        "PUT",
        api::RELEASE_TAGGED_MEMORY,
        Some(r#"{"extent_id":7}"#),
    )
    .unwrap();
    assert_eq!((s, body.as_str()), (204, ""));
    assert_eq!(*srv.backend.releases.lock().unwrap(), vec![Target::Extent(7)]);
    let (s, body) = api::call(&srv.path, "GET", api::TAGGED_MEMORY, None).unwrap();
    assert_eq!((s, body.as_str()), (200, "[]"));
}

#[test]
fn errors_name_the_field_and_use_the_right_status() {
    let srv = Server::start();
    let cases: &[(&str, &str, &str, u16, &str)] = &[
        (
            "GET",
            "/api/v1/vm.info",
            "",
            404,
            "no such endpoint: /api/v1/vm.info",
        ),
        (
            "PUT",
            api::PING,
            "",
            405,
            "/api/v1/vmm.ping does not accept PUT; use GET",
        ),
        (
            "PUT",
            api::ADD_TAGGED_MEMORY,
            "{\"extents\":[",
            400,
            "vm.add-tagged-memory: malformed JSON",
        ),
        (
            "PUT",
            api::ADD_TAGGED_MEMORY,
            r#"{"extents":[{"size":2097152,"offest":0}]}"#,
            400,
            "extents[0].offest: unknown field `offest`",
        ),
        (
            "PUT",
            api::ADD_TAGGED_MEMORY,
            r#"{"extents":[{"size":2097152,"readonly":"yes"}]}"#,
            400,
            "extents[0].readonly: invalid type: string \"yes\", expected a boolean",
        ),
        (
            "PUT",
            api::RELEASE_TAGGED_MEMORY,
            r#"{"tag":7}"#,
            400,
            "tag: invalid type: integer `7`",
        ),
    ];
    for (method, path, body, status, message) in cases {
        let (s, answer) = api::call(&srv.path, method, path, Some(body)).unwrap();
        let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(s, *status, "{method} {path} {body}: {answer}");
        assert!(
            v["error"].as_str().unwrap().starts_with(message),
            "{method} {path} {body}: {answer}"
        );
    }
    assert!(srv.backend.adds.lock().unwrap().is_empty());
    // A body larger than the limit is refused from its Content-Length alone.
    let head = format!(
        "PUT {} HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        api::ADD_TAGGED_MEMORY,
        api::MAX_BODY_BYTES + 1
    );
    assert_eq!(raw(&srv.path, head.as_bytes()).0, 413);
    // A body exactly at the limit is read and decoded.
    let pad = " ".repeat(api::MAX_BODY_BYTES - r#"{"extents":[{"size":2097152}]}"#.len());
    let body = format!(r#"{{"extents":[{{"size":2097152}}]}}{pad}"#);
    let (s, _) = api::call(&srv.path, "PUT", api::ADD_TAGGED_MEMORY, Some(&body)).unwrap();
    assert_eq!(s, 200);
    assert_eq!(raw(&srv.path, b"NOT HTTP\r\n\r\n").0, 400);
}

#[test]
fn a_stalled_client_does_not_block_others() {
    let srv = Server::start();
    // Half a request, never finished.
    let mut stalled = UnixStream::connect(&srv.path).unwrap();
    stalled
        .write_all(b"PUT /api/v1/vm.add-tagged-memory HTTP/1.1\r\nContent-Le")
        .unwrap();
    for _ in 0..5 {
        assert_eq!(api::call(&srv.path, "GET", api::PING, None).unwrap().0, 200);
    }
    drop(stalled);
    assert_eq!(api::call(&srv.path, "GET", api::PING, None).unwrap().0, 200);
}

#[test]
fn the_socket_file_is_replaced_when_stale_and_removed_on_drop() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists(), "a stale socket file is left behind");
    let socket = ApiSocket::bind(&path).unwrap();
    assert!(matches!(
        ApiSocket::bind(&path),
        Err(api::ApiSocketError::InUse(_))
    ));
    drop(socket);
    assert!(!path.exists());
}

//! The control API against hostile clients and a starved host, without KVM: the socket's place
//! and mode, idle and surplus connections, running out of file descriptors, and host failures
//! answered 5xx. Tests that change process-wide state (umask, descriptor limit) run their body
//! in a child process: the test binary runs itself with `--exact <test>` and [`CHILD`] set.

use event_manager::{EventManager, SubscriberOps};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tagmem_device::Target;
use tagmem_vmm::api::{
    self, AddReply, ApiBackend, ApiError, ApiServer, ApiSocket, ExtentRow, PingInfo, PreparedChain,
    ServerLimits,
};
use tagmem_vmm::config::{Resolver, TaggedMemoryConfig};

/// Set in the child process that runs a test's body.
const CHILD: &str = "TAGMEM_API_HARDENING_CHILD";

/// Answers ping; nothing else is needed here.
struct Pinger;

impl ApiBackend for Pinger {
    fn ping(&self) -> PingInfo {
        PingInfo {
            version: "test".into(),
            pid: 1,
            device_ready: true,
        }
    }

    fn add_tagged_memory(&self, _: &[TaggedMemoryConfig]) -> Result<AddReply, ApiError> {
        Err(ApiError::Internal("not here".into()))
    }

    fn release_tagged_memory(&self, _: Target) -> Result<(), ApiError> {
        Err(ApiError::Internal("not here".into()))
    }

    fn tagged_memory(&self) -> Vec<ExtentRow> {
        Vec::new()
    }
}

/// In the parent: runs test `name` of this binary in a child process and checks that it ran
/// and passed; returns the child's stderr. In the child: returns `None`, the caller runs the body.
fn in_child(name: &str) -> Option<String> {
    if std::env::var_os(CHILD).is_some() {
        return None;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "child {name} failed:\n{stdout}\n{stderr}"
    );
    Some(stderr)
}

/// Lowers this process's soft limit of open descriptors to `n`.
fn limit_descriptors(n: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the duration of both calls.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = n.min(lim.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
}

/// Opens `/dev/null` until the process is out of descriptors; dropping the files frees them.
fn exhaust_descriptors() -> Vec<File> {
    let mut files = Vec::new();
    loop {
        match File::open("/dev/null") {
            Ok(f) => files.push(f),
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => return files,
            Err(e) => panic!("opening /dev/null: {e}"),
        }
    }
}

fn ping_request() -> Vec<u8> {
    format!("GET {} HTTP/1.1\r\nHost: x\r\n\r\n", api::PING).into_bytes()
}

/// Reads a whole answer; `None` if the server closed without one.
fn answer_of(mut s: &UnixStream) -> Option<(u16, String)> {
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut bytes = Vec::new();
    let _ = s.read_to_end(&mut bytes);
    api::parse_response(&bytes).ok()
}

type Manager = EventManager<Arc<Mutex<ApiServer>>>;

fn manager_with(server: ApiServer) -> (Manager, Arc<Mutex<ApiServer>>) {
    let server = Arc::new(Mutex::new(server));
    let mut manager = Manager::new().unwrap();
    manager.add_subscriber(server.clone());
    (manager, server)
}

/// Runs the loop until `done` holds (a bounded number of rounds of at most a second each).
fn run_until(manager: &mut Manager, server: &Mutex<ApiServer>, done: impl Fn(&ApiServer) -> bool) {
    for _ in 0..600 {
        if done(&server.lock().unwrap()) {
            return;
        }
        manager.run_with_timeout(1000).unwrap();
    }
    panic!("condition not reached: {:?}", server.lock().unwrap());
}

#[test]
fn c13_api_socket_is_0600_under_umask_000_and_0660_when_asked() {
    if in_child("c13_api_socket_is_0600_under_umask_000_and_0660_when_asked").is_some() {
        return;
    }
    // SAFETY: umask takes and returns a plain integer; this child process runs this test alone.
    unsafe { libc::umask(0) };
    let dir = tempfile::tempdir().unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    // The umask is in effect: a plain bind makes a socket anyone may connect to.
    let plain = dir.path().join("plain.sock");
    let _plain = UnixListener::bind(&plain).unwrap();
    assert_eq!(mode(&plain), 0o777);
    let owner = dir.path().join("owner.sock");
    let _owner = ApiSocket::bind(&owner).unwrap();
    assert_eq!(mode(&owner), 0o600);
    let group = dir.path().join("group.sock");
    let _group = ApiSocket::bind_with_mode(&group, 0o660).unwrap();
    assert_eq!(mode(&group), 0o660);
    // The process's umask is what it was: only the binding thread had another one.
    // SAFETY: as above.
    assert_eq!(unsafe { libc::umask(0) }, 0);
    // And a restrictive umask does not take the group's bits away.
    // SAFETY: as above.
    unsafe { libc::umask(0o077) };
    let strict = dir.path().join("strict.sock");
    let _strict = ApiSocket::bind_with_mode(&strict, 0o660).unwrap();
    assert_eq!(mode(&strict), 0o660);
}

#[test]
fn c17_out_of_descriptors_the_loop_backs_off_serves_open_connections_and_logs_once() {
    let Some(stderr) =
        in_child("c17_out_of_descriptors_the_loop_backs_off_serves_open_connections_and_logs_once")
    else {
        return c17_child();
    };
    // The condition was logged once when it began and once when it ended, not per iteration.
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("tagmem-vmm: api:"))
        .collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(lines[0].contains("Too many open files"), "{lines:?}");
    assert!(lines[1].contains("accepting connections on"), "{lines:?}");
}

fn c17_child() {
    // The server logs through `log`; show it as the command line does.
    tagmem_vmm::logger::StderrLogger::install().unwrap();
    limit_descriptors(256);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    let limits = ServerLimits {
        // Only a closing connection (or this long a wait) retries the accept: the count below
        // does not depend on how fast this machine is.
        accept_backoff: Duration::from_secs(3600),
        accept_backoff_max: Duration::from_secs(3600),
        ..ServerLimits::default()
    };
    let server = ApiServer::with_limits(ApiSocket::bind(&path).unwrap(), Arc::new(Pinger), limits).unwrap();
    let (mut manager, server) = manager_with(server);
    let open = UnixStream::connect(&path).unwrap();
    run_until(&mut manager, &server, |s| s.connections() == 1);
    let waiting = UnixStream::connect(&path).unwrap();
    let fillers = exhaust_descriptors();

    // The pending connection cannot be accepted. The old loop found the listener readable on
    // every round and logged each time; now it is polled no more until a descriptor is freed.
    const ROUNDS: usize = 1000;
    let mut dispatched = 0;
    for _ in 0..ROUNDS {
        dispatched += manager.run_with_timeout(0).unwrap();
    }
    let stats = server.lock().unwrap().stats();
    println!("C17: {ROUNDS} rounds dispatched {dispatched} events; {stats:?}");
    assert!(server.lock().unwrap().accept_paused());
    assert_eq!((stats.accept_errors, stats.pauses, stats.log_lines), (1, 1, 1));
    assert!(dispatched <= 2, "{dispatched} events in {ROUNDS} rounds");

    // The open connection is still served.
    (&open).write_all(&ping_request()).unwrap();
    run_until(&mut manager, &server, |s| s.stats().accepted == 2);
    assert_eq!(answer_of(&open).map(|a| a.0), Some(200));
    // Its close freed a descriptor: the waiting connection was accepted, and is served.
    (&waiting).write_all(&ping_request()).unwrap();
    run_until(&mut manager, &server, |s| s.connections() == 0);
    assert_eq!(answer_of(&waiting).map(|a| a.0), Some(200));
    // Accepting the waiting one took the freed descriptor, so the next accept failed again (the
    // same condition: not logged); the last close let it see an empty queue, which ends it.
    let stats = server.lock().unwrap().stats();
    assert_eq!(
        (stats.accept_errors, stats.pauses, stats.log_lines),
        (2, 2, 2),
        "{stats:?}"
    );
    assert!(!server.lock().unwrap().accept_paused());
    drop(fillers);
}

#[test]
fn c17_accepting_resumes_when_the_backoff_ends() {
    if in_child("c17_accepting_resumes_when_the_backoff_ends").is_some() {
        return;
    }
    limit_descriptors(256);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    let limits = ServerLimits {
        accept_backoff: Duration::from_millis(20),
        ..ServerLimits::default()
    };
    let server = ApiServer::with_limits(ApiSocket::bind(&path).unwrap(), Arc::new(Pinger), limits).unwrap();
    let (mut manager, server) = manager_with(server);
    let client = UnixStream::connect(&path).unwrap();
    (&client).write_all(&ping_request()).unwrap();
    let fillers = exhaust_descriptors();
    run_until(&mut manager, &server, ApiServer::accept_paused);
    drop(fillers);
    // No connection closes here: only the back-off timer brings the listener back.
    run_until(&mut manager, &server, |s| s.stats().accepted == 1);
    run_until(&mut manager, &server, |s| s.connections() == 0);
    assert_eq!(answer_of(&client).map(|a| a.0), Some(200));
    let stats = server.lock().unwrap().stats();
    assert_eq!((stats.pauses, stats.log_lines), (1, 2), "{stats:?}");
}

/// An event loop thread serving [`Pinger`] on an already bound socket.
struct LoopThread {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    server: Arc<Mutex<ApiServer>>,
}

impl LoopThread {
    fn start(server: ApiServer) -> Self {
        let (mut manager, server) = manager_with(server);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                manager.run_with_timeout(20).unwrap();
            }
        });
        LoopThread {
            stop,
            thread: Some(thread),
            server,
        }
    }
}

impl Drop for LoopThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

#[test]
fn c18_idle_clients_time_out_and_one_too_many_gets_503() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    let limits = ServerLimits {
        request_timeout: Duration::from_millis(200),
        ..ServerLimits::default()
    };
    let socket = ApiSocket::bind(&path).unwrap();
    // Every client connects before the loop runs, so the first accept sees them all: which one
    // is refused does not depend on timing.
    let idle: Vec<UnixStream> = (0..limits.max_connections)
        .map(|_| {
            let s = UnixStream::connect(&path).unwrap();
            (&s).write_all(b"G").unwrap();
            s
        })
        .collect();
    let extra = UnixStream::connect(&path).unwrap();
    (&extra).write_all(&ping_request()).unwrap();
    let server = ApiServer::with_limits(socket, Arc::new(Pinger), limits).unwrap();
    let running = LoopThread::start(server);

    let (status, body) = answer_of(&extra).expect("the extra client gets an answer");
    assert_eq!(
        (status, body.as_str()),
        (
            503,
            r#"{"error":"the API serves at most 32 connections at once; try again later"}"#
        )
    );
    // The idle clients are answered 408 and closed at their deadline.
    for s in &idle {
        let (status, body) = answer_of(s).expect("an idle client gets an answer");
        assert_eq!(status, 408, "{body}");
        assert!(body.contains("was not complete within 200ms"), "{body}");
    }
    // Then others are served again.
    assert_eq!(api::call(&path, "GET", api::PING, None).unwrap().0, 200);
    let stats = running.server.lock().unwrap().stats();
    assert_eq!((stats.refused, stats.timed_out), (1, 32), "{stats:?}");
}

#[test]
fn c18_a_trickling_client_is_cut_at_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    let limits = ServerLimits {
        request_timeout: Duration::from_millis(200),
        ..ServerLimits::default()
    };
    let server = ApiServer::with_limits(ApiSocket::bind(&path).unwrap(), Arc::new(Pinger), limits).unwrap();
    let _running = LoopThread::start(server);
    let s = UnixStream::connect(&path).unwrap();
    // One header byte at a time, each well inside the timeout: activity does not extend the
    // deadline, which runs from accept to a complete request.
    let trickle = b"GET /api/v1/vmm.ping HTTP/1.1\r\nX-Slow: "
        .iter()
        .chain([b'a'; 4000].iter());
    let mut cut = false;
    for b in trickle {
        if (&s).write_all(&[*b]).is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        cut || answer_of(&s).map(|a| a.0) == Some(408),
        "the slow client was not cut"
    );
}

#[test]
fn c22_memfd_creation_failure_answers_500_with_the_os_error() {
    if in_child("c22_memfd_creation_failure_answers_500_with_the_os_error").is_some() {
        return;
    }
    let resolver = Resolver::new("/nonexistent");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backing");
    std::fs::write(&file, vec![0u8; 2 << 20]).unwrap();
    let memfd = TaggedMemoryConfig::parse("path=memfd,size=2M").unwrap();
    let regular = TaggedMemoryConfig::parse(&format!("path={},size=2M", file.display())).unwrap();
    let missing = TaggedMemoryConfig::parse("path=/nonexistent/file,size=2M").unwrap();
    let status_of = |c: &TaggedMemoryConfig| {
        let e = ApiError::from(
            PreparedChain::prepare(&resolver, std::slice::from_ref(c), "extents").unwrap_err(),
        );
        (e.status(), e.to_string())
    };

    limit_descriptors(256);
    let fillers = exhaust_descriptors();
    let (status, message) = status_of(&memfd);
    assert_eq!(status, 500, "{message}");
    assert!(
        message.starts_with("extents: path=memfd: memfd_create(")
            && message.ends_with("Too many open files (os error 24)"),
        "{message}"
    );
    // Opening an existing file fails for the same host reason: 500, not the client's fault.
    let (status, message) = status_of(&regular);
    assert_eq!(status, 500, "{message}");
    assert!(
        message.ends_with("Too many open files (os error 24)"),
        "{message}"
    );
    drop(fillers);
    // The client's mistakes stay 4xx.
    let (status, message) = status_of(&missing);
    assert_eq!(
        (status, message.as_str()),
        (
            400,
            "extents: path=/nonexistent/file: No such file or directory (os error 2)"
        )
    );
    assert!(PreparedChain::prepare(&resolver, &[memfd, regular], "extents").is_ok());
}

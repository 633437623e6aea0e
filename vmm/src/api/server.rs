//! The HTTP server of the control API: the listener, its connections and one timer, run by the
//! event loop as a subscriber.
//!
//! Hostile or broken clients cannot lock the API out or make the loop spin:
//! - each connection has [`ServerLimits::request_timeout`] from accept to a complete request
//!   (then `408` and close) and [`ServerLimits::response_timeout`] to take the answer;
//! - at most [`ServerLimits::max_connections`] are served at once; one more is answered `503`
//!   with a body and closed, never dropped silently;
//! - when `accept` fails for lack of resources (`EMFILE`, `ENFILE`, ...) the listener is taken out
//!   of the poll set for a back-off that doubles up to [`ServerLimits::accept_backoff_max`], or
//!   until a connection closes and frees a descriptor; open connections are served meanwhile, and
//!   the condition is logged once when it starts and once when it ends.

use super::{handle, parse_head, ApiBackend, ApiError, ApiSocket, HttpRequest, HttpResponse};
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vmm_sys_util::timerfd::TimerFd;

/// Most connections served at once by default.
pub const MAX_CONNECTIONS: usize = 32;

/// Bounds on what clients may hold of the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerLimits {
    /// Most connections served at once; one more is answered `503` and closed.
    pub max_connections: usize,
    /// Time from accept until the whole request (head and body) has arrived; then `408`.
    pub request_timeout: Duration,
    /// Time the client has to take the answer once it is ready.
    pub response_timeout: Duration,
    /// First pause of accepting after `accept` failed for lack of resources.
    pub accept_backoff: Duration,
    /// Longest pause; the back-off doubles up to it.
    pub accept_backoff_max: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: MAX_CONNECTIONS,
            request_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(10),
            accept_backoff: Duration::from_millis(100),
            accept_backoff_max: Duration::from_secs(2),
        }
    }
}

/// What the server has done so far, for tests and diagnostics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Connections accepted and served.
    pub accepted: u64,
    /// Connections answered `503` because the server was full.
    pub refused: u64,
    /// Connections closed at their deadline.
    pub timed_out: u64,
    /// `accept` calls that failed (other than "nothing pending").
    pub accept_errors: u64,
    /// Times accepting was paused after such a failure.
    pub pauses: u64,
    /// Log lines written about accept failures.
    pub log_lines: u64,
}

/// One client connection.
#[derive(Debug)]
pub(super) struct Conn {
    stream: UnixStream,
    input: Vec<u8>,
    output: Vec<u8>,
    written: usize,
    continue_sent: bool,
    answered: bool,
    /// When the connection is closed if it has not finished its current phase.
    deadline: Instant,
}

/// What to do with a connection after an event.
pub(super) enum Next {
    /// Wait for more input.
    Read,
    /// Wait until the socket can take more output.
    Write,
    /// Done (answered, closed by the peer, or failed): remove it.
    Close,
}

/// Reads and discards what the peer has sent (bounded), so closing the socket does not turn
/// the answer into a connection reset at the peer.
fn drain(stream: &UnixStream) {
    let mut chunk = [0u8; 4096];
    for _ in 0..16 {
        match (&*stream).read(&mut chunk) {
            Ok(n) if n > 0 => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            _ => return,
        }
    }
}

/// Best-effort answer on a connection that is closed right after (refusals, timeouts).
fn answer_and_close(stream: &UnixStream, response: &HttpResponse) {
    drain(stream);
    let _ = (&*stream).write_all(&response.to_bytes());
    let _ = stream.shutdown(Shutdown::Write);
    drain(stream);
}

impl Conn {
    pub(super) fn new(stream: UnixStream, deadline: Instant) -> Self {
        Conn {
            stream,
            input: Vec::new(),
            output: Vec::new(),
            written: 0,
            continue_sent: false,
            answered: false,
            deadline,
        }
    }

    /// Reads what is available and answers once a request is complete.
    pub(super) fn on_readable(&mut self, backend: &dyn ApiBackend) -> Next {
        let mut chunk = [0u8; 4096];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return Next::Close,
                Ok(n) => {
                    self.input.extend_from_slice(&chunk[..n]);
                    if let Some(next) = self.progress(backend) {
                        return next;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Next::Read,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Next::Close,
            }
        }
    }

    /// Parses what has arrived; answers when complete or malformed. `None`: keep reading.
    fn progress(&mut self, backend: &dyn ApiBackend) -> Option<Next> {
        let response = match parse_head(&self.input) {
            Ok(None) => return None,
            Ok(Some(head)) => {
                let end = head.head_len + head.body_len;
                if self.input.len() < end {
                    if head.expect_continue && !self.continue_sent {
                        self.continue_sent = true;
                        self.output.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                        return Some(self.flush());
                    }
                    return None;
                }
                let req = HttpRequest {
                    method: head.method,
                    path: head.path,
                    body: self.input[head.head_len..end].to_vec(),
                };
                handle(backend, &req)
            }
            Err(e) => HttpResponse::error(&e),
        };
        Some(self.answer(&response))
    }

    /// Queues `response` as the connection's answer and starts writing it.
    fn answer(&mut self, response: &HttpResponse) -> Next {
        self.answered = true;
        self.output.extend_from_slice(&response.to_bytes());
        self.flush()
    }

    /// Writes pending output; after the answer is out, the connection is done.
    pub(super) fn flush(&mut self) -> Next {
        while self.written < self.output.len() {
            match self.stream.write(&self.output[self.written..]) {
                Ok(0) => return Next::Close,
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Next::Write,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Next::Close,
            }
        }
        if self.answered {
            Next::Close
        } else {
            Next::Read
        }
    }
}

/// An `accept` failure that paused accepting, until a connection is accepted again.
#[derive(Debug)]
struct AcceptFailure {
    /// The OS error number, so a different condition is logged as new.
    errno: Option<i32>,
    since: Instant,
    failures: u64,
    backoff: Duration,
}

/// Whether an `accept` error concerns only the connection it would have returned.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
    ) || e.raw_os_error() == Some(libc::EPROTO)
}

/// A timer descriptor whose read never blocks (it may be re-armed between readiness and read).
fn nonblocking_timer() -> io::Result<TimerFd> {
    let timer = TimerFd::new().map_err(io::Error::from)?;
    let fd = timer.as_raw_fd();
    // SAFETY: `fd` is the timer's open descriptor for the duration of both calls; F_GETFL and
    // F_SETFL take and return plain integers.
    let ok = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
    };
    if ok {
        Ok(timer)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The HTTP server: the listener and its connections, run by the event loop as a subscriber.
pub struct ApiServer {
    socket: ApiSocket,
    timer: TimerFd,
    conns: HashMap<RawFd, Conn>,
    backend: Arc<dyn ApiBackend>,
    limits: ServerLimits,
    /// Accepting is paused until then (the listener is out of the poll set).
    paused_until: Option<Instant>,
    failure: Option<AcceptFailure>,
    stats: ServerStats,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("socket", &self.socket)
            .field("connections", &self.conns.len())
            .field("limits", &self.limits)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl ApiServer {
    /// Serves `backend` on `socket` with the default [`ServerLimits`].
    pub fn new(socket: ApiSocket, backend: Arc<dyn ApiBackend>) -> io::Result<Self> {
        Self::with_limits(socket, backend, ServerLimits::default())
    }

    /// Serves `backend` on `socket` within `limits`. Fails only if the timer cannot be created.
    pub fn with_limits(
        socket: ApiSocket,
        backend: Arc<dyn ApiBackend>,
        limits: ServerLimits,
    ) -> io::Result<Self> {
        Ok(ApiServer {
            socket,
            timer: nonblocking_timer()?,
            conns: HashMap::new(),
            backend,
            limits,
            paused_until: None,
            failure: None,
            stats: ServerStats::default(),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        self.socket.path()
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Whether accepting is paused after an `accept` failure.
    pub fn accept_paused(&self) -> bool {
        self.paused_until.is_some()
    }

    /// Counters of what the server has done.
    pub fn stats(&self) -> ServerStats {
        self.stats
    }

    fn log(&mut self, message: std::fmt::Arguments<'_>) {
        self.stats.log_lines += 1;
        log::warn!("api: {message}");
    }

    fn accept(&mut self, ops: &mut EventOps) {
        loop {
            match self.socket.listener.accept() {
                Ok((stream, _)) => self.admit(stream, ops),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Linux allocates the descriptor before it looks at the queue: "nothing
                    // pending" means a descriptor was available, so the condition is over.
                    self.recovered();
                    return;
                }
                Err(e) if is_per_connection(&e) => {}
                Err(e) => {
                    self.stats.accept_errors += 1;
                    self.pause(&e, ops);
                    return;
                }
            }
        }
    }

    /// Serves a new connection, or answers 503 if the server is full.
    fn admit(&mut self, stream: UnixStream, ops: &mut EventOps) {
        if stream.set_nonblocking(true).is_err() {
            return; // Dropping the stream closes it.
        }
        if self.conns.len() >= self.limits.max_connections {
            self.stats.refused += 1;
            let busy = ApiError::Unavailable(format!(
                "the API serves at most {} connections at once; try again later",
                self.limits.max_connections
            ));
            answer_and_close(&stream, &HttpResponse::error(&busy));
            return;
        }
        let fd = stream.as_raw_fd();
        if ops.add(Events::new(&stream, EventSet::IN)).is_ok() {
            self.stats.accepted += 1;
            let deadline = Instant::now() + self.limits.request_timeout;
            self.conns.insert(fd, Conn::new(stream, deadline));
        }
    }

    /// Stops polling the listener for a back-off after `accept` failed with `e`; logs only when
    /// the condition starts (or changes to another error).
    fn pause(&mut self, e: &io::Error, ops: &mut EventOps) {
        let now = Instant::now();
        let errno = e.raw_os_error();
        let limits = self.limits;
        let new_condition = self.failure.as_ref().is_none_or(|f| f.errno != errno);
        let backoff = match &mut self.failure {
            Some(f) if !new_condition => {
                f.failures += 1;
                f.backoff = (f.backoff * 2).min(limits.accept_backoff_max);
                f.backoff
            }
            _ => {
                self.failure = Some(AcceptFailure {
                    errno,
                    since: now,
                    failures: 1,
                    backoff: limits.accept_backoff,
                });
                limits.accept_backoff
            }
        };
        if new_condition {
            let (path, open) = (self.path().display().to_string(), self.conns.len());
            self.log(format_args!(
                "accept on {path} failed: {e}; not accepting new connections for now \
                 (retrying at least every {:?}), serving the {open} open ones",
                limits.accept_backoff_max
            ));
        }
        self.stats.pauses += 1;
        self.paused_until = Some(now + backoff);
        let _ = ops.modify(Events::empty(&self.socket.listener));
    }

    /// Polls the listener again and accepts what is waiting.
    fn resume(&mut self, ops: &mut EventOps) {
        if self.paused_until.take().is_some() {
            let _ = ops.modify(Events::new(&self.socket.listener, EventSet::IN));
            self.accept(ops);
        }
    }

    /// `accept` worked again: an accept failure condition is over.
    fn recovered(&mut self) {
        if let Some(f) = self.failure.take() {
            let path = self.path().display().to_string();
            self.log(format_args!(
                "accepting connections on {path} again after {} failed attempts over {:?}",
                f.failures,
                f.since.elapsed()
            ));
        }
    }

    fn close(&mut self, fd: RawFd, ops: &mut EventOps) {
        if let Some(conn) = self.conns.remove(&fd) {
            let _ = ops.remove(Events::empty(&conn.stream));
            drain(&conn.stream);
        }
        // A descriptor was freed: a paused accept may succeed now.
        self.resume(ops);
    }

    fn on_conn(&mut self, fd: RawFd, set: EventSet, ops: &mut EventOps) {
        let Some(conn) = self.conns.get_mut(&fd) else {
            return;
        };
        let was_answered = conn.answered;
        let next = if set.contains(EventSet::ERROR) {
            Next::Close
        } else if set.contains(EventSet::OUT) {
            conn.flush()
        } else {
            conn.on_readable(self.backend.as_ref())
        };
        if conn.answered && !was_answered {
            conn.deadline = Instant::now() + self.limits.response_timeout;
        }
        let interest = match next {
            Next::Read => EventSet::IN,
            Next::Write => EventSet::OUT,
            Next::Close => return self.close(fd, ops),
        };
        if ops.modify(Events::new(&conn.stream, interest)).is_err() {
            self.close(fd, ops);
        }
    }

    /// The timer fired: resume a paused accept, close connections past their deadline.
    fn on_timer(&mut self, ops: &mut EventOps) {
        let _ = self.timer.wait(); // Non-blocking: only clears the expiration count.
        let now = Instant::now();
        let expired: Vec<RawFd> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(fd, _)| *fd)
            .collect();
        for fd in expired {
            if let Some(conn) = self.conns.get_mut(&fd) {
                self.stats.timed_out += 1;
                if !conn.answered {
                    let late = ApiError::RequestTimeout(self.limits.request_timeout);
                    let _ = conn.answer(&HttpResponse::error(&late));
                }
            }
            self.close(fd, ops);
        }
        if self.paused_until.is_some_and(|t| t <= now) {
            self.resume(ops);
        }
    }

    /// Arms the timer for the earliest deadline or the end of a pause; disarms it if none.
    fn rearm(&mut self) {
        let next = self
            .conns
            .values()
            .map(|c| c.deadline)
            .chain(self.paused_until)
            .min();
        let _ = match next {
            Some(t) => {
                let wait = t.saturating_duration_since(Instant::now());
                // A zero duration would disarm the timer.
                self.timer.reset(wait.max(Duration::from_millis(1)), None)
            }
            None => self.timer.clear(),
        };
    }
}

impl MutEventSubscriber for ApiServer {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.socket.listener.as_raw_fd() {
            if events.event_set().intersects(EventSet::ERROR | EventSet::HANG_UP) {
                let path = self.path().display().to_string();
                self.log(format_args!("listener on {path} failed; API closed"));
                let _ = ops.remove(events);
                return;
            }
            self.accept(ops);
        } else if fd == self.timer.as_raw_fd() {
            self.on_timer(ops);
        } else {
            self.on_conn(fd, events.event_set(), ops);
        }
        self.rearm();
    }

    fn init(&mut self, ops: &mut EventOps) {
        for events in [
            Events::new(&self.socket.listener, EventSet::IN),
            Events::new(&self.timer, EventSet::IN),
        ] {
            if let Err(e) = ops.add(events) {
                let path = self.path().display().to_string();
                self.log(format_args!("registering {path} failed: {e}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{parse_response, ADD_TAGGED_MEMORY, MAX_BODY_BYTES};
    use super::*;
    use crate::api::routes::tests::Fake;

    fn conn(server: UnixStream) -> Conn {
        server.set_nonblocking(true).unwrap();
        Conn::new(server, Instant::now() + Duration::from_secs(60))
    }

    #[test]
    fn server_answers_over_a_socket_with_expect_continue() {
        // Drive the connection logic directly over a socket pair.
        let (client, server) = UnixStream::pair().unwrap();
        let mut conn = conn(server);
        let f = Fake::default();
        let body = r#"{"extents":[{"size":2097152}]}"#;
        let head = format!(
            "PUT {ADD_TAGGED_MEMORY} HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        (&client).write_all(head.as_bytes()).unwrap();
        assert!(matches!(conn.on_readable(&f), Next::Read));
        let mut buf = [0u8; 64];
        let n = (&client).read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"HTTP/1.1 100 Continue\r\n\r\n");
        (&client).write_all(body.as_bytes()).unwrap();
        assert!(matches!(conn.on_readable(&f), Next::Close));
        drop(conn);
        let mut rest = Vec::new();
        (&client).read_to_end(&mut rest).unwrap();
        let (status, body) = parse_response(&rest).unwrap();
        assert_eq!(status, 200);
        assert!(
            body.starts_with(r#"{"chain_id":0,"extents":[{"id":"_tagmem0""#),
            "{body}"
        );
    }

    #[test]
    fn oversized_body_is_refused_before_it_arrives() {
        let (client, server) = UnixStream::pair().unwrap();
        let mut conn = conn(server);
        let head = format!(
            "PUT {ADD_TAGGED_MEMORY} HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            10 * MAX_BODY_BYTES
        );
        (&client).write_all(head.as_bytes()).unwrap();
        assert!(matches!(conn.on_readable(&Fake::default()), Next::Close));
        drop(conn);
        let mut rest = Vec::new();
        (&client).read_to_end(&mut rest).unwrap();
        assert_eq!(parse_response(&rest).unwrap().0, 413);
    }

    #[test]
    fn an_answer_before_the_request_was_read_does_not_reset_the_client() {
        // The peer's unread bytes are drained before close, so it reads the answer and EOF.
        let (client, server) = UnixStream::pair().unwrap();
        server.set_nonblocking(true).unwrap();
        (&client).write_all(b"GET / HTTP/1.1\r\n\r\nmore bytes").unwrap();
        let busy = HttpResponse::error(&ApiError::Unavailable("full".into()));
        answer_and_close(&server, &busy);
        drop(server);
        let mut rest = Vec::new();
        (&client).read_to_end(&mut rest).unwrap();
        assert_eq!(
            parse_response(&rest).unwrap(),
            (503, r#"{"error":"full"}"#.into())
        );
    }
}

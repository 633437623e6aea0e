//! The API's client, as the command line uses it: one request per connection.

use super::MAX_HEADERS;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

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

/// An answer body for people: JSON indented two spaces per level, members in the order sent
/// (`serde_json`'s `preserve_order`); text that is not JSON comes back as it is.
pub fn pretty_json(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|_| body.to_string())
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
    use crate::api::HttpResponse;

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
            pretty_json(s),
            "{\n  \"z\": 1,\n  \"a\": [\n    {\n      \"b\": \"x,\\\"y\\\":{\"\n    },\n    []\n  ],\n  \"e\": {}\n}"
        );
        let v: serde_json::Value = serde_json::from_str(&pretty_json(s)).unwrap();
        assert_eq!(v, serde_json::from_str::<serde_json::Value>(s).unwrap());
    }

    #[test]
    fn indent_keeps_the_value_of_numbers_past_u64() {
        // Parsed as the nearest f64 and printed back: read again, it must be the same f64.
        let s = "66666666666666666666666666666666666666666666";
        let v: serde_json::Value = serde_json::from_str(s).unwrap();
        let again: serde_json::Value = serde_json::from_str(&pretty_json(s)).unwrap();
        assert_eq!(again, v);
    }
}

//! HTTP/1.1 framing: requests parsed with `httparse` within fixed bounds, answers written with
//! their status, `Allow` and `Content-Length`.

use super::{ApiError, MAX_BODY_BYTES, MAX_HEADERS, MAX_HEAD_BYTES};
use serde::Serialize;

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
    /// A JSON answer of `value` with `status`.
    pub(crate) fn json<T: Serialize>(status: u16, value: &T) -> Self {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ADD_TAGGED_MEMORY, PING};

    fn req(method: &str, path: &str, body: &str) -> Vec<u8> {
        format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
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
}

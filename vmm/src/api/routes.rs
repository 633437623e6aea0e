//! Routing: which endpoint a request names, its method, and its body decoded and validated
//! with the field at fault named.

use super::{
    AddTaggedMemory, ApiBackend, ApiError, HttpRequest, HttpResponse, ReleaseTaggedMemory, VmResize,
    ADD_TAGGED_MEMORY, MEMORY, PING, RELEASE_TAGGED_MEMORY, RESIZE, TAGGED_MEMORY,
};
use crate::config::TaggedMemoryConfig;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;
use tagmem_device::Target;

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

/// Decodes a JSON object into `T`, naming the field at fault (`serde_path_to_error` tracks the
/// path): a type error or an unknown field reads `<prefix><field>: <error>`, an error of the
/// object as a whole (a missing field) `<label>: <error>`.
fn decode_object<T: DeserializeOwned>(value: Value, label: &str, prefix: &str) -> Result<T, ApiError> {
    if !value.is_object() {
        return Err(ApiError::BadRequest(format!("{label}: expected a JSON object")));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            ApiError::BadRequest(format!("{label}: {inner}"))
        } else {
            ApiError::BadRequest(format!("{prefix}{path}: {inner}"))
        }
    })
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::api::parse_request;
    use crate::api::{AddReply, AddedExtent, ExtentRow, PingInfo};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;

    const TAG: &str = "6f1c2a9e-0d3b-4c55-9a7e-3b1f00c0ffee";

    /// Records what it was asked and answers with fixed values.
    #[derive(Default)]
    pub(crate) struct Fake {
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
}

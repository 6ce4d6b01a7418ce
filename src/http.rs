//! The HTTP JSON API (`--api ADDR:PORT`, docs/openapi.yaml) as pure functions: an HTTP
//! request's method, path, query, headers and body become a control [`Request`] or an HTTP
//! error at once ([`to_request`]), and a control [`Response`] becomes a status and a body
//! ([`answer`]). The server around them (src/daemon/api.rs) only moves bytes; these are
//! unit-tested and fuzzed (fuzz/fuzz_targets/http_request.rs) without sockets.
//!
//! | route | control request |
//! |---|---|
//! | `POST /v1/allocate` `{"pool","owner","ip"?,"meta"?,"timeout_ms"?}` | [`Request::Allocate`] |
//! | `POST /v1/release` `{"ip"}` or `{"pool","owner"}` | [`Request::Release`] |
//! | `GET /v1/allocations?pool=&owner=` | [`Request::Allocations`] |
//! | `GET /v1/addresses/{ip}` | [`Request::Show`] |
//! | `GET /v1/status` | [`Request::Status`] |
//!
//! Every route needs `Authorization: Bearer TOKEN` (compared in constant time); without it
//! the answer is 401 and nothing else of the request is looked at.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::control::{Request, Response};

/// Largest request body accepted (413 beyond).
pub const MAX_BODY: usize = 64 * 1024;

/// An HTTP request as the server read it.
#[derive(Clone, Copy, Debug)]
pub struct HttpRequest<'a> {
    pub method: &'a str,
    /// The path, still percent-encoded, without the query.
    pub path: &'a str,
    /// What follows `?`, if anything did.
    pub query: Option<&'a str>,
    /// Header names (any case) and values as received.
    pub headers: &'a [(&'a str, &'a [u8])],
    pub body: &'a [u8],
}

/// A request refused before it reached the main loop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpError {
    pub status: u16,
    pub message: String,
    /// For 405: the method the route takes (the `Allow` header).
    pub allow: Option<&'static str>,
}

impl HttpError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        HttpError {
            status,
            message: message.into(),
            allow: None,
        }
    }

    fn bad(message: impl Into<String>) -> Self {
        HttpError::new(400, message)
    }

    /// 401: no or a wrong token.
    pub fn unauthorized() -> Self {
        HttpError::new(
            401,
            "missing or wrong bearer token (send Authorization: Bearer TOKEN)",
        )
    }

    /// 413: a body over [`MAX_BODY`].
    pub fn too_large() -> Self {
        HttpError::new(413, format!("request body larger than {MAX_BODY} bytes"))
    }

    /// `{"error": message}`.
    pub fn body(&self) -> Vec<u8> {
        error_body(&self.message)
    }
}

fn error_body(message: &str) -> Vec<u8> {
    let mut v = serde_json::to_vec(&serde_json::json!({ "error": message }))
        .expect("a string map always serializes");
    v.push(b'\n');
    v
}

/// Whether `a` and `b` are equal, in a time that depends on `b`'s length only (`b` is the
/// secret, `a` what a client sent).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for (i, &x) in b.iter().enumerate() {
        diff |= x ^ a.get(i).copied().unwrap_or(0);
    }
    std::hint::black_box(diff) == 0
}

/// Whether the headers carry exactly one `Authorization: Bearer TOKEN` with this token
/// (the scheme in any case, as RFC 7235 has it).
pub fn authorized(headers: &[(&str, &[u8])], token: &[u8]) -> bool {
    let mut values = headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| *v);
    let (Some(value), None) = (values.next(), values.next()) else {
        return false;
    };
    let Some((scheme, given)) = value.split_at_checked(6) else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case(b"bearer") || !given.starts_with(b" ") {
        return false;
    }
    constant_time_eq(given.trim_ascii(), token)
}

/// Turns an HTTP request into the control request it stands for, or the HTTP error to
/// answer at once: 401 without the token, 404 for no such route, 405 for the wrong method,
/// 413 for a body over [`MAX_BODY`], 400 for a body or query that is not what the route
/// takes.
pub fn to_request(req: &HttpRequest<'_>, token: &[u8]) -> Result<Request, HttpError> {
    if !authorized(req.headers, token) {
        return Err(HttpError::unauthorized());
    }
    if req.body.len() > MAX_BODY {
        return Err(HttpError::too_large());
    }
    let route = Route::of(req.path)?;
    if req.method != route.method() {
        return Err(HttpError {
            allow: Some(route.method()),
            ..HttpError::new(405, format!("{} takes {}", route.name(), route.method()))
        });
    }
    match route {
        Route::Allocate => {
            let b: AllocateBody = body(req.body)?;
            nonempty("pool", &b.pool)?;
            nonempty("owner", &b.owner)?;
            Ok(Request::Allocate {
                pool: b.pool,
                owner: b.owner,
                ip: b.ip,
                meta: b.meta,
                timeout_ms: b.timeout_ms,
            })
        }
        Route::Release => {
            let b: ReleaseBody = body(req.body)?;
            match (&b.ip, &b.pool, &b.owner) {
                (Some(ip), None, None) => nonempty("ip", ip)?,
                (None, Some(pool), Some(owner)) => {
                    nonempty("pool", pool)?;
                    nonempty("owner", owner)?;
                }
                _ => {
                    return Err(HttpError::bad(
                        "give either {\"ip\"} or {\"pool\", \"owner\"}",
                    ));
                }
            }
            Ok(Request::Release {
                ip: b.ip,
                pool: b.pool,
                owner: b.owner,
            })
        }
        Route::Allocations => {
            let mut pool = None;
            let mut owner = None;
            for (key, value) in query_pairs(req.query.unwrap_or(""))? {
                let slot = match key.as_str() {
                    "pool" => &mut pool,
                    "owner" => &mut owner,
                    _ => {
                        return Err(HttpError::bad(format!(
                            "unknown query parameter '{}' (parameters: pool, owner)",
                            key.escape_debug()
                        )));
                    }
                };
                if slot.is_some() {
                    return Err(HttpError::bad(format!(
                        "query parameter '{key}' given twice"
                    )));
                }
                *slot = Some(value);
            }
            Ok(Request::Allocations {
                pool: pool.filter(|v| !v.is_empty()),
                owner: owner.filter(|v| !v.is_empty()),
            })
        }
        Route::Address(ip) => Ok(Request::Show { ip }),
        Route::Status => Ok(Request::Status),
    }
}

/// The HTTP status of a control answer: 200 if it is ok; for a refusal, by its message:
/// 409 if it says the address or owner is taken (held by another owner, the owner holds
/// another, cooling down, another node's block), 404 if it says not allocated or no such
/// pool, 503 while the daemon shuts down, else 400.
pub fn status_of(r: &Response) -> u16 {
    if r.ok {
        return 200;
    }
    let m = r.error.as_deref().unwrap_or_default().to_ascii_lowercase();
    // The allocation service's refusals (src/api.rs) say these words.
    if m.contains("taken")
        || m.contains("allocated to owner")
        || m.contains("already holds")
        || m.contains("cools down")
        || m.contains("owned by node")
    {
        409
    } else if m.contains("not allocated")
        || m.contains("holds no address")
        || m.contains("in no api pool")
        || m.contains("no such pool")
        || m.contains("no pool named")
    {
        404
    } else if m.contains("shutting down") {
        503
    } else {
        400
    }
}

/// Status and JSON body of a control answer: the `result` for 200, else
/// `{"error": message}`.
pub fn answer(r: &Response) -> (u16, Vec<u8>) {
    let status = status_of(r);
    if r.ok {
        let empty = serde_json::Value::Object(Default::default());
        let mut v = serde_json::to_vec(r.result.as_ref().unwrap_or(&empty))
            .expect("JSON values always serialize");
        v.push(b'\n');
        (status, v)
    } else {
        (status, error_body(r.error.as_deref().unwrap_or("refused")))
    }
}

enum Route {
    Allocate,
    Release,
    Allocations,
    /// The address as given (decoded); the core checks it.
    Address(String),
    Status,
}

impl Route {
    fn of(path: &str) -> Result<Route, HttpError> {
        let not_found = || {
            HttpError::new(
                404,
                "no such route (routes: POST /v1/allocate, POST /v1/release, GET /v1/allocations, GET /v1/addresses/{ip}, GET /v1/status)",
            )
        };
        Ok(match path {
            "/v1/allocate" => Route::Allocate,
            "/v1/release" => Route::Release,
            "/v1/allocations" => Route::Allocations,
            "/v1/status" => Route::Status,
            _ => {
                let ip = path.strip_prefix("/v1/addresses/").ok_or_else(not_found)?;
                if ip.is_empty() || ip.contains('/') {
                    return Err(not_found());
                }
                let ip = percent_decode(ip, false).ok_or_else(|| {
                    HttpError::bad("the address in the path is not valid percent-encoded UTF-8")
                })?;
                Route::Address(ip)
            }
        })
    }

    fn method(&self) -> &'static str {
        match self {
            Route::Allocate | Route::Release => "POST",
            _ => "GET",
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Route::Allocate => "/v1/allocate",
            Route::Release => "/v1/release",
            Route::Allocations => "/v1/allocations",
            Route::Address(_) => "/v1/addresses/{ip}",
            Route::Status => "/v1/status",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AllocateBody {
    pool: String,
    owner: String,
    #[serde(default)]
    ip: Option<String>,
    #[serde(default)]
    meta: BTreeMap<String, String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReleaseBody {
    #[serde(default)]
    ip: Option<String>,
    #[serde(default)]
    pool: Option<String>,
    #[serde(default)]
    owner: Option<String>,
}

fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, HttpError> {
    if bytes.trim_ascii().is_empty() {
        return Err(HttpError::bad("this route needs a JSON object as its body"));
    }
    serde_json::from_slice(bytes).map_err(|e| HttpError::bad(format!("invalid body: {e}")))
}

fn nonempty(key: &str, value: &str) -> Result<(), HttpError> {
    if value.trim().is_empty() {
        return Err(HttpError::bad(format!("\"{key}\" is empty")));
    }
    Ok(())
}

/// `a=1&b=2` decoded (`+` is a space, as in forms); empty pieces are skipped.
fn query_pairs(query: &str) -> Result<Vec<(String, String)>, HttpError> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            match (percent_decode(k, true), percent_decode(v, true)) {
                (Some(k), Some(v)) => Ok((k, v)),
                _ => Err(HttpError::bad(
                    "the query is not valid percent-encoded UTF-8",
                )),
            }
        })
        .collect()
}

/// `%XX` escapes decoded (and `+` as a space if `plus`); `None` for a broken escape or a
/// result that is not UTF-8.
fn percent_decode(s: &str, plus: bool) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if plus => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &[u8] = b"s3cret-token-0123456789";

    fn req<'a>(
        method: &'a str,
        target: &'a str,
        headers: &'a [(&'a str, &'a [u8])],
        body: &'a [u8],
    ) -> HttpRequest<'a> {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        HttpRequest {
            method,
            path,
            query,
            headers,
            body,
        }
    }

    const AUTH: &[(&str, &[u8])] = &[
        ("host", b"x"),
        ("Authorization", b"Bearer s3cret-token-0123456789"),
    ];

    fn ok(method: &str, target: &str, body: &str) -> Request {
        to_request(&req(method, target, AUTH, body.as_bytes()), TOKEN)
            .unwrap_or_else(|e| panic!("{method} {target} {body}: {e:?}"))
    }

    fn refused(method: &str, target: &str, body: &str) -> HttpError {
        to_request(&req(method, target, AUTH, body.as_bytes()), TOKEN)
            .expect_err(&format!("{method} {target} {body}"))
    }

    #[test]
    fn token_compared_exactly() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abd", b"abc"));
        assert!(!constant_time_eq(b"ab", b"abc"));
        assert!(!constant_time_eq(b"abcd", b"abc"));
        assert!(!constant_time_eq(b"", b"abc"));
        let h = |v: &'static [u8]| [("authorization", v)];
        assert!(authorized(&h(b"Bearer s3cret-token-0123456789"), TOKEN));
        assert!(authorized(&h(b"bearer   s3cret-token-0123456789 "), TOKEN));
        for bad in [
            &b"Bearer s3cret-token-012345678"[..],
            b"Bearer s3cret-token-01234567890",
            b"Bearers3cret-token-0123456789",
            b"Basic s3cret-token-0123456789",
            b"s3cret-token-0123456789",
            b"Bearer",
            b"Bearer ",
            b"",
        ] {
            assert!(
                !authorized(&h(bad), TOKEN),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(!authorized(&[], TOKEN));
        let twice: &[(&str, &[u8])] = &[
            ("authorization", b"Bearer s3cret-token-0123456789"),
            ("Authorization", b"Bearer s3cret-token-0123456789"),
        ];
        assert!(!authorized(twice, TOKEN), "two Authorization headers");
    }

    #[test]
    fn no_token_no_route() {
        for (headers, what) in [
            (&[][..], "none"),
            (
                &[("authorization", &b"Bearer wrong-token-0123456789"[..])][..],
                "wrong",
            ),
        ] {
            for (m, t) in [
                ("GET", "/v1/status"),
                ("POST", "/v1/allocate"),
                ("GET", "/nowhere"),
                ("DELETE", "/v1/status"),
            ] {
                let e = to_request(&req(m, t, headers, b"{}"), TOKEN).unwrap_err();
                assert_eq!(e.status, 401, "{what} {m} {t}");
                assert!(e.message.contains("bearer token"));
            }
        }
        // A large body is not even looked at without the token.
        let big = vec![b' '; MAX_BODY + 1];
        assert_eq!(
            to_request(&req("POST", "/v1/allocate", &[], &big), TOKEN)
                .unwrap_err()
                .status,
            401
        );
    }

    #[test]
    fn routes() {
        assert_eq!(ok("GET", "/v1/status", ""), Request::Status);
        assert_eq!(
            ok(
                "POST",
                "/v1/allocate",
                r#"{"pool":"vms","owner":"vm-17","ip":"10.2.0.9","meta":{"rack":"r1"},"timeout_ms":500}"#
            ),
            Request::Allocate {
                pool: "vms".into(),
                owner: "vm-17".into(),
                ip: Some("10.2.0.9".into()),
                meta: [("rack".to_string(), "r1".to_string())].into(),
                timeout_ms: Some(500),
            }
        );
        assert_eq!(
            ok("POST", "/v1/allocate", r#"{"pool":"vms","owner":"vm-17"}"#),
            Request::Allocate {
                pool: "vms".into(),
                owner: "vm-17".into(),
                ip: None,
                meta: BTreeMap::new(),
                timeout_ms: None,
            }
        );
        assert_eq!(
            ok("POST", "/v1/release", r#"{"ip":"10.2.0.9"}"#),
            Request::Release {
                ip: Some("10.2.0.9".into()),
                pool: None,
                owner: None
            }
        );
        assert_eq!(
            ok("POST", "/v1/release", r#"{"pool":"vms","owner":"vm-17"}"#),
            Request::Release {
                ip: None,
                pool: Some("vms".into()),
                owner: Some("vm-17".into())
            }
        );
        assert_eq!(
            ok("GET", "/v1/allocations", ""),
            Request::Allocations {
                pool: None,
                owner: None
            }
        );
        assert_eq!(
            ok("GET", "/v1/allocations?pool=vms&owner=", ""),
            Request::Allocations {
                pool: Some("vms".into()),
                owner: None
            }
        );
        assert_eq!(
            ok("GET", "/v1/allocations?owner=host%20a+b%2Bc&&pool=v", ""),
            Request::Allocations {
                pool: Some("v".into()),
                owner: Some("host a b+c".into())
            }
        );
        assert_eq!(
            ok("GET", "/v1/addresses/10.2.0.9", ""),
            Request::Show {
                ip: "10.2.0.9".into()
            }
        );
        assert_eq!(
            ok("GET", "/v1/addresses/10%2E2.0.9+", ""),
            Request::Show {
                ip: "10.2.0.9+".into()
            }
        );
    }

    #[test]
    fn refusals() {
        for (m, t, body, status, why) in [
            ("GET", "/", "", 404, "no such route"),
            ("GET", "/v1", "", 404, "no such route"),
            ("GET", "/v1/addresses/", "", 404, "no such route"),
            ("GET", "/v1/addresses/1.2.3.4/x", "", 404, "no such route"),
            ("GET", "/v1/status/", "", 404, "no such route"),
            ("GET", "/v1/allocate", "", 405, "takes POST"),
            ("PUT", "/v1/release", "", 405, "takes POST"),
            ("POST", "/v1/status", "", 405, "takes GET"),
            ("POST", "/v1/allocate", "", 400, "needs a JSON object"),
            ("POST", "/v1/allocate", "[]", 400, "invalid body"),
            (
                "POST",
                "/v1/allocate",
                r#"{"pool":"vms"}"#,
                400,
                "missing field `owner`",
            ),
            (
                "POST",
                "/v1/allocate",
                r#"{"pool":"vms","owner":" "}"#,
                400,
                "\"owner\" is empty",
            ),
            (
                "POST",
                "/v1/allocate",
                r#"{"pool":"vms","owner":"a","ownr":"b"}"#,
                400,
                "unknown field `ownr`",
            ),
            (
                "POST",
                "/v1/allocate",
                r#"{"pool":"vms","owner":"a","timeout_ms":-1}"#,
                400,
                "invalid body",
            ),
            (
                "POST",
                "/v1/allocate",
                r#"{"pool":"vms","owner":"a","meta":{"k":1}}"#,
                400,
                "invalid body",
            ),
            (
                "POST",
                "/v1/allocate",
                "{\"pool\":\"v\",\"owner\":\"\\u00e9\"} x",
                400,
                "trailing",
            ),
            ("POST", "/v1/release", "{}", 400, "either"),
            ("POST", "/v1/release", r#"{"pool":"vms"}"#, 400, "either"),
            (
                "POST",
                "/v1/release",
                r#"{"ip":"1.2.3.4","pool":"vms","owner":"a"}"#,
                400,
                "either",
            ),
            (
                "POST",
                "/v1/release",
                r#"{"ip":""}"#,
                400,
                "\"ip\" is empty",
            ),
            (
                "GET",
                "/v1/allocations?pools=a",
                "",
                400,
                "unknown query parameter 'pools'",
            ),
            (
                "GET",
                "/v1/allocations?pool=a&pool=b",
                "",
                400,
                "given twice",
            ),
            (
                "GET",
                "/v1/allocations?pool=%zz",
                "",
                400,
                "percent-encoded",
            ),
            (
                "GET",
                "/v1/allocations?pool=%ff",
                "",
                400,
                "percent-encoded",
            ),
            ("GET", "/v1/addresses/%", "", 400, "percent-encoded"),
        ] {
            let e = refused(m, t, body);
            assert_eq!(e.status, status, "{m} {t} {body}: {e:?}");
            assert!(e.message.contains(why), "{m} {t} {body}: {e:?}");
            let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
            assert_eq!(v["error"], e.message.as_str());
            assert_eq!(e.allow.is_some(), status == 405);
        }
        let big = format!("{{\"pool\":\"{}\",\"owner\":\"a\"}}", "p".repeat(MAX_BODY));
        assert_eq!(refused("POST", "/v1/allocate", &big).status, 413);
    }

    #[test]
    fn answers_and_their_status() {
        let r = Response::ok(serde_json::json!({"ip": "10.2.0.9", "created": true}));
        let (s, b) = answer(&r);
        assert_eq!(s, 200);
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&b).unwrap(),
            serde_json::json!({"ip": "10.2.0.9", "created": true})
        );
        for (msg, status) in [
            ("address 10.2.0.9 is taken by owner vm-3", 409),
            ("owner vm-3 has taken 10.2.0.8 already", 409),
            ("10.2.0.9 is not allocated", 404),
            ("no such pool 'x'", 404),
            ("no pool named 'x' (pools: a, b)", 404),
            ("daemon is shutting down", 503),
            ("this node has no api pool", 400),
            ("allocate: '10.2.0.300' is not an IPv4 address", 400),
            ("", 400),
        ] {
            let r = Response::err(msg);
            assert_eq!(status_of(&r), status, "{msg}");
            let (s, b) = answer(&r);
            assert_eq!(s, status);
            let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
            assert_eq!(v, serde_json::json!({ "error": msg }));
        }
    }
}

//! HTTP API requests: `api::to_request` takes any method, target, headers and body without
//! panicking; it accepts only requests with the token, bodies of at most `MAX_BODY`, and
//! what it accepts is a control request that `to_line` and `Request::parse` carry intact;
//! what it refuses is 401 exactly when the token is missing or wrong, else 400, 404, 405 or
//! 413 (405 with an `Allow`), with a JSON `{"error"}` body. Any JSON `Response` in the
//! input maps through `api::answer` to a known status and a JSON body.
//!
//! The input is read as an HTTP request: the first line `METHOD TARGET` (the target split at
//! the first `?`), then `Name: value` header lines up to an empty line, then the body. The
//! token is `fuzz-token-0123456789`.
#![no_main]

use ddhcp::control::{Request, Response};
use ddhcp::http::{HttpRequest, MAX_BODY, answer, authorized, to_request};
use libfuzzer_sys::fuzz_target;

const TOKEN: &[u8] = b"fuzz-token-0123456789";

fuzz_target!(|data: &[u8]| {
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &[][..]),
    };
    let head = String::from_utf8_lossy(head);
    let mut lines = head.split('\n');
    let first = lines.next().unwrap_or_default();
    let (method, target) = first.split_once(' ').unwrap_or((first, ""));
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let headers: Vec<(&str, &[u8])> = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap_or((l, ""));
            (k.trim(), v.trim_start().as_bytes())
        })
        .collect();
    let req = HttpRequest {
        method,
        path,
        query,
        headers: &headers,
        body,
    };
    let auth = authorized(&headers, TOKEN);
    match to_request(&req, TOKEN) {
        Ok(r) => {
            assert!(auth, "accepted without the token");
            assert!(body.len() <= MAX_BODY);
            let line = r.to_line();
            let back = Request::parse(line.as_bytes())
                .unwrap_or_else(|e| panic!("{r:?} as {line:?} does not parse: {e}"));
            assert_eq!(back, r);
        }
        Err(e) => {
            assert_eq!(e.status == 401, !auth, "{e:?}");
            assert!(matches!(e.status, 400 | 401 | 404 | 405 | 413), "{e:?}");
            assert_eq!(e.allow.is_some(), e.status == 405, "{e:?}");
            let v: serde_json::Value = serde_json::from_slice(&e.body()).expect("JSON error body");
            assert_eq!(v["error"].as_str(), Some(e.message.as_str()));
        }
    }
    if let Ok(r) = serde_json::from_slice::<Response>(body) {
        let (status, bytes) = answer(&r);
        assert!(matches!(status, 200 | 400 | 404 | 409 | 503), "{r:?}");
        assert_eq!(status == 200, r.ok);
        let _: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON answer body");
    }
});

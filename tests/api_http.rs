//! The HTTP API server (`--api`) on a real TCP listener on 127.0.0.1, with a fake main loop
//! answering from the control channel, and a plain std `TcpStream` as the client. No root,
//! no daemon: `ddhcp::daemon::api::serve` and the channel a daemon would hand it.
#![cfg(feature = "api")]
#![allow(clippy::disallowed_methods)] // a real server on real sockets, timed by real clocks

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ddhcp::config::ApiToken;
use ddhcp::control::{Request, Response};
use ddhcp::daemon::api::{Limits, serve};
use serde_json::{Value, json};

const TOKEN: &str = "test-token-0123456789abcdef";

/// A server on an ephemeral port whose main loop records each request and answers it
/// with `answer`.
struct Server {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Request>>>,
}

impl Server {
    fn start(limits: Limits, answer: fn(&Request) -> Response) -> Server {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                let (tx, mut rx) =
                    tokio::sync::mpsc::channel::<ddhcp::daemon::control::Pending>(64);
                tokio::spawn(serve(listener, ApiToken::parse(TOKEN).unwrap(), tx, limits));
                while let Some(p) = rx.recv().await {
                    seen2.lock().unwrap().push(p.request.clone());
                    let _ = p.reply.send(answer(&p.request));
                }
            });
        });
        Server {
            addr: addr_rx.recv().unwrap(),
            seen,
        }
    }

    fn connect(&self) -> Conn {
        let s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Conn {
            w: s.try_clone().unwrap(),
            r: BufReader::new(s),
        }
    }

    fn seen(&self) -> Vec<Request> {
        self.seen.lock().unwrap().clone()
    }
}

struct Conn {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Conn {
    /// Sends a request with `Content-Length` (and the token, if given) and reads the answer.
    fn send(&mut self, method: &str, target: &str, auth: Option<&str>, body: &str) -> Answer {
        let mut head = format!("{method} {target} HTTP/1.1\r\nHost: test\r\n");
        if let Some(a) = auth {
            head.push_str(&format!("Authorization: {a}\r\n"));
        }
        if !body.is_empty() || method == "POST" {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        self.w.write_all(head.as_bytes()).unwrap();
        self.w.write_all(body.as_bytes()).unwrap();
        self.read()
    }

    fn read(&mut self) -> Answer {
        let mut line = String::new();
        self.r.read_line(&mut line).unwrap();
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .unwrap_or_else(|| panic!("status line {line:?}"))
            .parse()
            .unwrap();
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.r.read_line(&mut line).unwrap();
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').unwrap();
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.parse().unwrap())
            .expect("answers have a Content-Length");
        let mut body = vec![0; len];
        self.r.read_exact(&mut body).unwrap();
        Answer {
            status,
            headers,
            body: serde_json::from_slice(&body).unwrap(),
        }
    }

    /// Whether the server closed the connection (EOF) within `limit`.
    fn closed_within(&mut self, limit: Duration) -> bool {
        self.r.get_ref().set_read_timeout(Some(limit)).unwrap();
        let mut b = [0u8; 1];
        matches!(self.r.read(&mut b), Ok(0))
    }
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

fn echo(r: &Request) -> Response {
    match r {
        Request::Allocate {
            pool, owner, ip, ..
        } => {
            if owner == "taken" {
                return Response::err(format!(
                    "address {} is taken by another owner",
                    ip.as_deref().unwrap_or("?")
                ));
            }
            Response::ok(json!({
                "ip": ip.as_deref().unwrap_or("10.2.0.9"),
                "pool": pool,
                "owner": owner,
                "node_id": "0102030405060708",
                "created": true,
            }))
        }
        Request::Release { .. } => Response::err("10.2.0.200 is not allocated"),
        other => Response::ok(json!({ "req": other })),
    }
}

#[test]
fn no_or_wrong_token_is_refused_and_reaches_nothing() {
    let server = Server::start(Limits::default(), echo);
    // GETs on one kept-alive connection; a POST's unread body ends its connection.
    let mut c = server.connect();
    for auth in [
        None,
        Some("Bearer wrong-token-0123456789abcdef".to_string()),
        Some(format!("Basic {TOKEN}")),
        Some(format!("Bearer {TOKEN}x")),
        Some(format!("Bearer {}", &TOKEN[1..])),
    ] {
        for (m, t, b) in [
            ("GET", "/v1/status", ""),
            ("GET", "/elsewhere", ""),
            ("POST", "/v1/allocate", r#"{"pool":"vms","owner":"a"}"#),
        ] {
            let a = if m == "POST" {
                let a = server.connect().send(m, t, auth.as_deref(), b);
                assert_eq!(a.header("connection"), Some("close"));
                a
            } else {
                c.send(m, t, auth.as_deref(), b)
            };
            assert_eq!(a.status, 401, "{auth:?} {m} {t}");
            assert_eq!(a.header("www-authenticate"), Some("Bearer"));
            assert!(a.body["error"].as_str().unwrap().contains("bearer token"));
        }
    }
    // Without the token a too large body is not read either: still 401.
    let big = "x".repeat(100_000);
    let a = server.connect().send("POST", "/v1/allocate", None, &big);
    assert_eq!(a.status, 401);
    assert!(server.seen().is_empty(), "{:?}", server.seen());
    // The same connection with the token does reach the loop.
    let a = c.send("GET", "/v1/status", Some(&bearer()), "");
    assert_eq!(a.status, 200);
    assert_eq!(server.seen(), vec![Request::Status]);
}

#[test]
fn allocate_passes_the_body_through_and_maps_the_answer() {
    let server = Server::start(Limits::default(), echo);
    let mut c = server.connect();
    let a = c.send(
        "POST",
        "/v1/allocate",
        Some(&bearer()),
        r#"{"pool":"vms","owner":"vm-17","ip":"10.2.0.33","meta":{"rack":"r1","os":"debian"},"timeout_ms":1500}"#,
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("content-type"), Some("application/json"));
    assert_eq!(
        a.body,
        json!({"ip": "10.2.0.33", "pool": "vms", "owner": "vm-17", "node_id": "0102030405060708", "created": true})
    );
    assert_eq!(
        server.seen(),
        vec![Request::Allocate {
            pool: "vms".into(),
            owner: "vm-17".into(),
            ip: Some("10.2.0.33".into()),
            meta: [("os", "debian"), ("rack", "r1")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            timeout_ms: Some(1500),
        }]
    );
    let a = c.send(
        "POST",
        "/v1/allocate",
        Some(&bearer()),
        r#"{"pool":"vms","owner":"taken","ip":"10.2.0.34"}"#,
    );
    assert_eq!(a.status, 409);
    assert_eq!(
        a.body,
        json!({"error": "address 10.2.0.34 is taken by another owner"})
    );
    let a = c.send(
        "POST",
        "/v1/release",
        Some(&bearer()),
        r#"{"ip":"10.2.0.200"}"#,
    );
    assert_eq!(a.status, 404);
    assert_eq!(a.body, json!({"error": "10.2.0.200 is not allocated"}));
    let a = c.send(
        "GET",
        "/v1/allocations?pool=vms&owner=vm-17",
        Some(&bearer()),
        "",
    );
    assert_eq!(a.status, 200);
    assert_eq!(
        a.body,
        json!({"req": {"cmd": "allocations", "pool": "vms", "owner": "vm-17"}})
    );
    let a = c.send("GET", "/v1/addresses/10.2.0.33", Some(&bearer()), "");
    assert_eq!(a.body, json!({"req": {"cmd": "show", "ip": "10.2.0.33"}}));
    // Refused before the main loop: a bad body, a wrong method, no such route.
    let before = server.seen().len();
    let a = c.send("POST", "/v1/allocate", Some(&bearer()), r#"{"pool":"vms"}"#);
    assert_eq!(a.status, 400);
    assert!(
        a.body["error"].as_str().unwrap().contains("owner"),
        "{}",
        a.body
    );
    let a = c.send("GET", "/v1/release", Some(&bearer()), "");
    assert_eq!((a.status, a.header("allow")), (405, Some("POST")));
    let a = c.send("GET", "/v2/status", Some(&bearer()), "");
    assert_eq!(a.status, 404);
    assert_eq!(server.seen().len(), before);
}

#[test]
fn bodies_over_64_kib_are_413() {
    let server = Server::start(Limits::default(), echo);
    // Declared too large: refused from the head, the body never read.
    let mut c = server.connect();
    c.w.write_all(
        format!(
            "POST /v1/allocate HTTP/1.1\r\nHost: t\r\nAuthorization: {}\r\nContent-Length: 70000\r\n\r\n",
            bearer()
        )
        .as_bytes(),
    )
    .unwrap();
    let a = c.read();
    assert_eq!(a.status, 413);
    assert!(
        a.body["error"].as_str().unwrap().contains("65536"),
        "{}",
        a.body
    );
    assert_eq!(a.header("connection"), Some("close"));
    // Chunked, so only the count finds it: 65,537 bytes in one chunk, nothing after.
    let mut c = server.connect();
    let mut req = format!(
        "POST /v1/allocate HTTP/1.1\r\nHost: t\r\nAuthorization: {}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
        bearer(),
        65_537
    )
    .into_bytes();
    req.extend(std::iter::repeat_n(b' ', 65_537));
    c.w.write_all(&req).unwrap();
    let a = c.read();
    assert_eq!(a.status, 413);
    // Exactly 64 KiB is fine (here: a valid body padded with spaces).
    let mut c = server.connect();
    let body = r#"{"pool":"vms","owner":"big"}"#;
    let padded = format!("{body}{}", " ".repeat(65_536 - body.len()));
    let a = c.send("POST", "/v1/allocate", Some(&bearer()), &padded);
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(
        server
            .seen()
            .iter()
            .all(|r| matches!(r, Request::Allocate { owner, .. } if owner == "big"))
    );
    assert_eq!(server.seen().len(), 1);
}

#[test]
fn keep_alive_then_idle_close() {
    let server = Server::start(
        Limits {
            header_timeout: Duration::from_millis(500),
            ..Limits::default()
        },
        echo,
    );
    let mut c = server.connect();
    let a = c.send("GET", "/v1/status", Some(&bearer()), "");
    assert_eq!(
        (a.status, &a.body),
        (200, &json!({"req": {"cmd": "status"}}))
    );
    assert_eq!(a.header("connection"), None, "kept alive");
    let a = c.send(
        "POST",
        "/v1/allocate",
        Some(&bearer()),
        r#"{"pool":"vms","owner":"vm-2"}"#,
    );
    assert_eq!(a.status, 200);
    assert_eq!(a.body["owner"], "vm-2");
    assert_eq!(server.seen().len(), 2);
    // An idle kept-alive connection is closed by the header read timeout.
    let t = Instant::now();
    assert!(
        c.closed_within(Duration::from_secs(5)),
        "idle connection left open"
    );
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
}

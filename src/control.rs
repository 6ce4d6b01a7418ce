//! The control protocol between `ddhcpctl` and the daemon.
//!
//! One request per connection, as ddhcpd: the client writes one JSON object (terminated by a
//! newline or by closing its write side), the daemon answers with one JSON object and closes.
//! Answers are `{"ok": true, "result": …}` or `{"ok": false, "error": "…"}`; `ddhcpctl --json`
//! prints `result` as is, and renders the human tables from the same data, so both forms
//! always agree.
//!
//! Requests are bounded: [`MAX_REQUEST`] bytes and [`REQUEST_TIMEOUT`], so a client that
//! sends nothing or floods cannot hold the daemon.
//!
//! **Pipelined connections.** A client whose first line is exactly [`PIPELINE_START`]
//! (`{"cmd":"pipeline"}`, not a [`Request`]: only a connection's first line can be it) gets
//! `{"ok":true,"result":{"pipeline":true}}` and may then send any number of
//! newline-terminated requests without waiting for answers. Answers come back one per line,
//! in request order; lines of only whitespace are skipped (no answer). A line that is
//! malformed or longer than [`MAX_REQUEST`] bytes gets an error answer in its place and the
//! connection goes on. Up to [`MAX_IN_FLIGHT`] requests of one connection are at the main
//! loop at once (so they share a group commit of the store); beyond that the daemon reads no
//! further until answers are written (the client must read its answers while it writes, see
//! [`pipeline`]). When the client closes its write side, the remaining answers are written
//! and the daemon closes; a last line without a newline counts as a request. A connection
//! that sends no request for [`PIPELINE_IDLE`] while no answer is outstanding is closed, as
//! is one that reads no answer for that long.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Largest request accepted; a real one is well under 200 bytes.
pub const MAX_REQUEST: usize = 4096;
/// A client must send its whole request within this time.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// The first line that makes a connection pipelined (see the module doc).
pub const PIPELINE_START: &str = r#"{"cmd":"pipeline"}"#;
/// Requests of one pipelined connection at the main loop or answered but not yet written.
pub const MAX_IN_FLIGHT: usize = 256;
/// A pipelined connection with no request (and no answer outstanding) for this long, or
/// whose client reads no answer for this long, is closed.
pub const PIPELINE_IDLE: Duration = Duration::from_secs(60);

/// Whether `line` (without its newline) is [`PIPELINE_START`]: a JSON object whose only
/// key is `cmd` with the value `pipeline`, whitespace allowed.
pub fn is_pipeline_start(line: &[u8]) -> bool {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Start {
        cmd: String,
    }
    std::str::from_utf8(line)
        .ok()
        .and_then(|t| serde_json::from_str::<Start>(t.trim()).ok())
        .is_some_and(|s| s.cmd == "pipeline")
}

/// A command, as sent on the socket. `pool` names the pool a command is about; without it,
/// the pool `default`, else the only pool (so a client of a single-pool daemon never needs
/// it, and requests from older clients keep working).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    Status,
    Blocks {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pool: Option<String>,
    },
    Leases {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pool: Option<String>,
    },
    Options {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pool: Option<String>,
    },
    SetOption {
        option: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pool: Option<String>,
    },
    RemoveOption {
        code: u8,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pool: Option<String>,
    },
    LeaseTime {
        secs: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pool: Option<String>,
    },
    LogLevel {
        level: String,
    },
    Stats,
    /// Prometheus text exposition (what `--metrics` serves), as `{"text": "…"}`.
    Metrics,
    /// The addresses of local pools: of `pool`, or of all local pools without it.
    Local {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pool: Option<String>,
    },
    /// A third party uses `ip` (an address of a local pool on this node).
    MarkActive {
        ip: String,
    },
    /// A third party no longer uses `ip`.
    MarkStandby {
        ip: String,
    },
    /// New targets for a local pool (until the daemon restarts); absent keys keep their
    /// value, `hysteresis` is in seconds.
    SetLocal {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pool: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        standby: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_standby: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hysteresis: Option<u32>,
    },
    /// An address of API pool `pool` for `owner` (a VM, a host name: the caller's key),
    /// pinned until released. Idempotent: the same (pool, owner) always gets the same
    /// address back. `ip` asks for that address; `timeout_ms` bounds the wait for a claim
    /// when no owned block has room.
    Allocate {
        pool: String,
        owner: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ip: Option<String>,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        meta: BTreeMap<String, String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
    },
    /// Gives an allocation back: by address, or by (pool, owner).
    Release {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ip: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pool: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<String>,
    },
    /// The allocations of this node, of one pool and/or one owner.
    Allocations {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pool: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<String>,
    },
    /// What this node knows of one address: its allocation, cooldown, block.
    Show {
        ip: String,
    },
    /// Mesh keys (`--peer-key`), how many peers sign with each, sources that failed
    /// authentication, and pools that hold their claims because of a key mismatch.
    Keys,
    /// Adds the mesh key in the file at `path` (read by the daemon) for verifying.
    KeyInstall {
        path: String,
    },
    /// Signs with key `id` from now on.
    KeyUse {
        id: u16,
    },
    /// Forgets key `id` (not the signing one).
    KeyRemove {
        id: u16,
    },
    /// Turns the migration mode (`--peer-key-migrate`) on or off.
    KeyMigrate {
        on: bool,
    },
}

impl Request {
    /// Parses a request. Anything that is not exactly one known command is an error with
    /// a reason for the client; nothing here can panic.
    pub fn parse(bytes: &[u8]) -> Result<Request, String> {
        let text = std::str::from_utf8(bytes).map_err(|_| "request is not UTF-8".to_string())?;
        let text = text.trim();
        if text.is_empty() {
            return Err("empty request".into());
        }
        serde_json::from_str(text).map_err(|e| format!("malformed request: {e}"))
    }

    pub fn to_line(&self) -> String {
        let mut s = serde_json::to_string(self).expect("requests always serialize");
        s.push('\n');
        s
    }
}

/// The daemon's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    pub fn ok(result: serde_json::Value) -> Self {
        Response {
            ok: true,
            result: Some(result),
            error: None,
        }
    }

    pub fn err(reason: impl Into<String>) -> Self {
        Response {
            ok: false,
            result: None,
            error: Some(reason.into()),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).expect("responses always serialize");
        v.push(b'\n');
        v
    }
}

/// Sends `requests` over one pipelined connection to the daemon at `path` and returns the
/// answers, one per request, in order. The requests are serialised first and written from
/// a second thread while this one reads, so a long pipeline cannot deadlock on full socket
/// buffers. Blocking (std), for tests, benchmarks and scripts.
pub fn pipeline(
    path: impl AsRef<Path>,
    requests: impl IntoIterator<Item = Request>,
) -> io::Result<Vec<Response>> {
    let lines: Vec<u8> = requests
        .into_iter()
        .flat_map(|r| r.to_line().into_bytes())
        .collect();
    let mut stream = UnixStream::connect(path)?;
    stream.write_all(PIPELINE_START.as_bytes())?;
    stream.write_all(b"\n")?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let mut ack = String::new();
    reader.read_line(&mut ack)?;
    match serde_json::from_str::<Response>(ack.trim()) {
        Ok(r) if r.ok && r.result.as_ref().is_some_and(|v| v["pipeline"] == true) => {}
        _ => return Err(bad(format!("not a pipelined connection: {}", ack.trim()))),
    }
    std::thread::scope(|s| {
        let writer = s.spawn(move || {
            stream.write_all(&lines)?;
            stream.shutdown(std::net::Shutdown::Write)
        });
        let read = (|| {
            let mut answers = Vec::new();
            for line in reader.lines() {
                let line = line?;
                let r = serde_json::from_str(&line)
                    .map_err(|e| bad(format!("answer {}: {e}: {line}", answers.len())))?;
                answers.push(r);
            }
            Ok(answers)
        })();
        let wrote = writer
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("writer thread panicked")));
        wrote.and(read)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipeline_start_line() {
        assert!(is_pipeline_start(PIPELINE_START.as_bytes()));
        assert!(is_pipeline_start(b" { \"cmd\" : \"pipeline\" }\r"));
        for no in [
            &b"{\"cmd\":\"status\"}"[..],
            b"{\"cmd\":\"pipeline\",\"x\":1}",
            b"pipeline",
            b"\xff",
        ] {
            assert!(!is_pipeline_start(no), "{no:?}");
        }
        assert!(Request::parse(PIPELINE_START.as_bytes()).is_err());
    }

    #[test]
    fn round_trip_and_rejections() {
        for r in [
            Request::Status,
            Request::Blocks { pool: None },
            Request::Blocks {
                pool: Some("lan".into()),
            },
            Request::SetOption {
                option: "3:4:10.0.0.1".into(),
                pool: None,
            },
            Request::RemoveOption {
                code: 3,
                pool: Some("lan".into()),
            },
            Request::Local { pool: None },
            Request::MarkActive {
                ip: "10.0.0.5".into(),
            },
            Request::MarkStandby {
                ip: "10.0.0.5".into(),
            },
            Request::SetLocal {
                pool: Some("hosts".into()),
                standby: Some(2),
                min: None,
                max_standby: Some(4),
                hysteresis: Some(10),
            },
        ] {
            assert_eq!(Request::parse(r.to_line().as_bytes()).unwrap(), r);
        }
        assert_eq!(
            Request::parse(br#"{"cmd":"status"}"#).unwrap(),
            Request::Status
        );
        // What clients from before pools send still parses.
        assert_eq!(
            Request::parse(br#"{"cmd":"blocks"}"#).unwrap(),
            Request::Blocks { pool: None }
        );
        assert_eq!(
            Request::Leases { pool: None }.to_line(),
            "{\"cmd\":\"leases\"}\n"
        );
        // The local commands on the wire.
        assert_eq!(
            Request::parse(br#"{"cmd":"local","pool":"hosts"}"#).unwrap(),
            Request::Local {
                pool: Some("hosts".into())
            }
        );
        assert_eq!(
            Request::MarkActive {
                ip: "10.0.0.5".into()
            }
            .to_line(),
            "{\"cmd\":\"mark-active\",\"ip\":\"10.0.0.5\"}\n"
        );
        assert_eq!(
            Request::parse(br#"{"cmd":"mark-standby","ip":"10.0.0.5"}"#).unwrap(),
            Request::MarkStandby {
                ip: "10.0.0.5".into()
            }
        );
        assert_eq!(
            Request::SetLocal {
                pool: None,
                standby: None,
                min: Some(1),
                max_standby: Some(3),
                hysteresis: None,
            }
            .to_line(),
            "{\"cmd\":\"set-local\",\"min\":1,\"max_standby\":3}\n"
        );
        assert_eq!(
            Request::parse(br#"{"cmd":"set-local","hysteresis":5}"#).unwrap(),
            Request::SetLocal {
                pool: None,
                standby: None,
                min: None,
                max_standby: None,
                hysteresis: Some(5),
            }
        );
        for bad in [
            &b""[..],
            b"\xff\xfe",
            b"status",
            br#"{"cmd":"reboot"}"#,
            br#"{"cmd":"remove-option","code":300}"#,
            br#"{"cmd":"mark-active"}"#,
            br#"{"cmd":"set-local","standby":-1}"#,
        ] {
            assert!(Request::parse(bad).is_err(), "{bad:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let _ = Request::parse(&bytes);
        }
    }
}

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

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Largest request accepted; a real one is well under 200 bytes.
pub const MAX_REQUEST: usize = 4096;
/// A client must send its whole request within this time.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

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

#[cfg(test)]
mod tests {
    use super::*;

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

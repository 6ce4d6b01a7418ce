//! Audit trail: one structured record per allocation and release, and per move of a
//! local pool's address ([`LocalRecord`]).
//!
//! Every record goes to the `ddhcp::audit` tracing target (so it can be routed on its own,
//! e.g. `RUST_LOG=ddhcp=warn,ddhcp::audit=info`) and, with `--audit-log PATH`, is appended
//! to that file as one JSON object per line for security tools. Client-supplied strings
//! (hostname, client id) are JSON-escaped by serde_json and never reach a shell.

use std::fs::File;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tracing::{info, warn};

use crate::dhcp::LeaseEvent;
use crate::wire::NodeId;

/// One audit record, as written to the JSON lines file.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Record {
    /// RFC 3339 UTC wall-clock time.
    pub time: String,
    pub node_id: String,
    /// The pool (security zone) the address belongs to.
    pub pool: String,
    /// `lease`, `release`, `expire`, `decline`.
    pub kind: &'static str,
    pub ip: Ipv4Addr,
    pub mac: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_seconds: Option<u32>,
    /// The lease was granted by the block's owner on our request (roaming).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub forwarded: bool,
}

impl Record {
    pub fn new(node_id: NodeId, pool: &str, time: SystemTime, e: &LeaseEvent) -> Self {
        let (kind, ip, mac) = match e {
            LeaseEvent::Leased { ip, mac, .. } => ("lease", *ip, mac.clone()),
            LeaseEvent::Released { ip, mac } => ("release", *ip, mac.clone()),
            LeaseEvent::Expired { ip, mac } => ("expire", *ip, mac.clone()),
            LeaseEvent::Declined { ip, mac } => ("decline", *ip, mac.clone()),
        };
        let mut r = Record {
            time: rfc3339(time),
            node_id: node_id.to_string(),
            pool: pool.to_string(),
            kind,
            ip,
            mac,
            client_id: None,
            hostname: None,
            lease_seconds: None,
            forwarded: false,
        };
        if let LeaseEvent::Leased {
            client_id,
            hostname,
            seconds,
            forwarded,
            ..
        } = e
        {
            r.client_id = client_id
                .as_ref()
                .map(|id| id.iter().map(|b| format!("{b:02x}")).collect());
            r.hostname = hostname.clone();
            r.lease_seconds = Some(*seconds);
            r.forwarded = *forwarded;
        }
        r
    }
}

/// One move of a local pool's address in its life cycle, as written to the JSON lines
/// file: `{"time", "node_id", "pool", "event": "local", "ip", "from", "to", "reason"}`.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct LocalRecord {
    /// RFC 3339 UTC wall-clock time.
    pub time: String,
    pub node_id: String,
    pub pool: String,
    /// Always `local`.
    pub event: &'static str,
    pub ip: Ipv4Addr,
    /// `free`, `reserved`, `standby`, `active`.
    pub from: &'static str,
    pub to: &'static str,
    pub reason: String,
}

/// An allocation made, released or lost, as written to the JSON lines file: `{"time",
/// "node_id", "pool", "event": "allocate"|"release"|"lost", "ip", "owner", "meta"}`.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct AllocRecord {
    pub time: String,
    pub node_id: String,
    pub pool: String,
    pub event: &'static str,
    pub ip: Ipv4Addr,
    pub owner: String,
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub meta: std::collections::BTreeMap<String, String>,
}

impl AllocRecord {
    pub fn new(node_id: NodeId, pool: &str, time: SystemTime, e: &crate::api::ApiEvent) -> Self {
        use crate::api::ApiEvent as E;
        let (event, ip, owner, meta) = match e {
            E::Allocated { ip, owner, meta } => ("allocate", *ip, owner, meta.clone()),
            E::Released { ip, owner } => ("release", *ip, owner, Default::default()),
            E::Lost { ip, owner } => ("lost", *ip, owner, Default::default()),
        };
        AllocRecord {
            time: rfc3339(time),
            node_id: node_id.to_string(),
            pool: pool.to_string(),
            event,
            ip,
            owner: owner.clone(),
            meta,
        }
    }
}

impl LocalRecord {
    pub fn new(
        node_id: NodeId,
        pool: &str,
        time: SystemTime,
        ip: Ipv4Addr,
        from: &'static str,
        to: &'static str,
        reason: &str,
    ) -> Self {
        LocalRecord {
            time: rfc3339(time),
            node_id: node_id.to_string(),
            pool: pool.to_string(),
            event: "local",
            ip,
            from,
            to,
            reason: reason.to_string(),
        }
    }
}

/// A security-relevant alarm, as written to the JSON lines file: `{"time", "node_id",
/// "event": "alarm", "alarm", "args"}`, `alarm` and `args` being the hook's action and
/// arguments (docs/hook.md). Security tools reading the audit trail see forgeries, key
/// mismatches, lost blocks and id changes without running a hook.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct AlarmRecord {
    pub time: String,
    pub node_id: String,
    /// Always `alarm`.
    pub event: &'static str,
    pub alarm: String,
    pub args: Vec<String>,
}

/// The hook actions that are alarms.
pub const ALARMS: [&str; 5] = [
    "conflict",
    "contested",
    "nodeid",
    "auth-failed",
    "key-mismatch",
];

/// Where audit records go.
pub struct Audit {
    file: Option<File>,
    write_errors: u64,
}

impl Audit {
    /// Opens (appends to) `path` if given.
    pub fn open(path: Option<&Path>) -> io::Result<Self> {
        let file = match path {
            Some(p) => Some(File::options().create(true).append(true).open(p)?),
            None => None,
        };
        Ok(Audit {
            file,
            write_errors: 0,
        })
    }

    pub fn record(&mut self, node_id: NodeId, pool: &str, e: &LeaseEvent) {
        let r = Record::new(node_id, pool, SystemTime::now(), e);
        info!(target: "ddhcp::audit", kind = r.kind, pool = %r.pool, ip = %r.ip, mac = %r.mac,
              client_id = r.client_id.as_deref().unwrap_or(""),
              hostname = ?r.hostname.as_deref().unwrap_or(""),
              lease_seconds = r.lease_seconds.unwrap_or(0), forwarded = r.forwarded,
              node_id = %r.node_id, "audit");
        self.write(&r);
    }

    /// The record of `Event::Local`: an address of local pool `pool` moved.
    pub fn local(
        &mut self,
        node_id: NodeId,
        pool: &str,
        ip: Ipv4Addr,
        from: &'static str,
        to: &'static str,
        reason: &str,
    ) {
        let r = LocalRecord::new(node_id, pool, SystemTime::now(), ip, from, to, reason);
        info!(target: "ddhcp::audit", event = r.event, pool = %r.pool, ip = %r.ip,
              from = r.from, to = r.to, reason = %r.reason, node_id = %r.node_id, "audit");
        self.write(&r);
    }

    /// The record of an allocation event, written once it is durable.
    pub fn allocation(&mut self, node_id: NodeId, pool: &str, e: &crate::api::ApiEvent) {
        let r = AllocRecord::new(node_id, pool, SystemTime::now(), e);
        info!(target: "ddhcp::audit", event = r.event, pool = %r.pool, ip = %r.ip,
              owner = %r.owner.escape_debug(), node_id = %r.node_id, "audit");
        self.write(&r);
    }

    /// The record of an alarm: `hook` is the hook's argument vector (action first).
    pub fn alarm(&mut self, node_id: NodeId, hook: &[String]) {
        let Some((alarm, args)) = hook.split_first() else {
            return;
        };
        let r = AlarmRecord {
            time: rfc3339(SystemTime::now()),
            node_id: node_id.to_string(),
            event: "alarm",
            alarm: alarm.clone(),
            args: args.to_vec(),
        };
        info!(target: "ddhcp::audit", event = r.event, alarm = %r.alarm, args = ?r.args,
              node_id = %r.node_id, "audit");
        self.write(&r);
    }

    /// Appends one record as a JSON line, if there is a file.
    fn write(&mut self, r: &impl Serialize) {
        if let Some(f) = &mut self.file {
            let mut line = serde_json::to_vec(r).expect("audit records serialize");
            line.push(b'\n');
            // One write per record keeps lines whole for concurrent readers (O_APPEND).
            if let Err(e) = f.write_all(&line) {
                self.write_errors += 1;
                if self.write_errors.is_power_of_two() {
                    warn!(error = %e, errors = self.write_errors, "cannot write the audit log");
                }
            }
        }
    }

    pub fn write_errors(&self) -> u64 {
        self.write_errors
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` from a system time (civil-from-days, Howard Hinnant).
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn time_format() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_392_000_123);
        assert_eq!(rfc3339(t), "2026-11-23T00:00:00.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn a_local_move_is_one_exact_line() {
        let r = LocalRecord::new(
            NodeId([0xa2; 8]),
            "hosts",
            UNIX_EPOCH + Duration::from_millis(1_795_392_000_123),
            Ipv4Addr::new(10, 5, 0, 130),
            "standby",
            "active",
            "in use: tcp listen :22",
        );
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"time":"2026-11-23T00:00:00.123Z","node_id":"A2A2A2A2A2A2A2A2","pool":"hosts","event":"local","ip":"10.5.0.130","from":"standby","to":"active","reason":"in use: tcp listen :22"}"#
        );
    }

    #[test]
    fn alarms_are_appended_with_the_hook_arguments() {
        let path = std::env::temp_dir().join(format!("ddhcp-alarm-test-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut a = Audit::open(Some(&path)).unwrap();
        let hook: Vec<String> = ["auth-failed", "fe80::1", "FFFFFFFFFFFFFFFF", "unsigned"]
            .map(String::from)
            .to_vec();
        a.alarm(NodeId([1; 8]), &hook);
        a.alarm(NodeId([1; 8]), &[]);
        let text = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 1, "{text}");
        assert_eq!(lines[0]["event"], "alarm");
        assert_eq!(lines[0]["alarm"], "auth-failed");
        assert_eq!(
            lines[0]["args"],
            serde_json::json!(["fe80::1", "FFFFFFFFFFFFFFFF", "unsigned"])
        );
        assert_eq!(lines[0]["node_id"], "0101010101010101");
    }

    #[test]
    fn local_records_are_appended_as_lines() {
        let path = std::env::temp_dir().join(format!("ddhcp-audit-test-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut a = Audit::open(Some(&path)).unwrap();
        let ip = Ipv4Addr::new(10, 5, 0, 130);
        a.local(
            NodeId([1; 8]),
            "hosts",
            ip,
            "free",
            "reserved",
            "being configured",
        );
        a.local(NodeId([1; 8]), "hosts", ip, "reserved", "standby", "x\"\ny");
        let text = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["event"], "local");
        assert_eq!(lines[0]["from"], "free");
        assert_eq!(lines[1]["to"], "standby");
        assert_eq!(lines[1]["reason"], "x\"\ny");
        assert_eq!(a.write_errors(), 0);
    }

    #[test]
    fn hostile_hostnames_are_escaped() {
        let e = LeaseEvent::Leased {
            ip: Ipv4Addr::new(10, 0, 0, 5),
            mac: "02:00:00:00:00:01".into(),
            client_id: Some(vec![1, 2]),
            hostname: Some("x\"; rm -rf / #\n{\"kind\":\"release\"}".into()),
            seconds: 300,
            forwarded: false,
        };
        let r = Record::new(NodeId([1; 8]), "lan", UNIX_EPOCH, &e);
        let line = serde_json::to_string(&r).unwrap();
        assert!(!line.contains('\n'));
        let back: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(back["kind"], "lease");
        assert_eq!(back["pool"], "lan");
        assert_eq!(back["client_id"], "0102");
        assert_eq!(back["hostname"], "x\"; rm -rf / #\n{\"kind\":\"release\"}");
    }
}

//! `ddhcpctl`: asks a running ddhcpd over its control socket.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use ddhcp::control::{Request, Response};
use serde_json::Value;

#[derive(Parser, Debug)]
#[command(
    name = "ddhcpctl",
    version,
    about = "Control a running ddhcpd",
    after_help = "Commands: status, blocks, leases, options, set-option CODE:LEN:P…, remove-option CODE, lease-time SECS, log-level LEVEL, stats, metrics, local, mark-active IP, mark-standby IP, set-local [standby=N] [min=M] [max-standby=K] [hysteresis=SECS], allocate --pool NAME --owner ID [--ip A.B.C.D] [--meta K=V…] [--timeout SECS], release IP | release --pool NAME --owner ID, allocations [--pool NAME] [--owner ID], show IP, keys, key install FILE, key use ID, key remove ID, key migrate on|off",
    disable_version_flag = true
)]
struct Args {
    /// Control socket of the daemon
    #[arg(short = 'C', value_name = "PATH", default_value = "/run/ddhcpd.sock")]
    socket: PathBuf,
    /// Print the daemon's answer as one JSON object
    #[arg(long)]
    json: bool,
    /// The pool a command is about (blocks, leases, options, set-option, remove-option,
    /// lease-time, set-local); without it the pool `default`, else the only one; `local`
    /// without it lists every local pool
    #[arg(long, value_name = "NAME")]
    pool: Option<String>,
    /// allocate/release/allocations: the owner of an allocation (a VM id, a host name)
    #[arg(long, value_name = "ID")]
    owner: Option<String>,
    /// allocate: this address rather than any free one
    #[arg(long, value_name = "A.B.C.D")]
    ip: Option<String>,
    /// allocate: metadata kept with the allocation (repeatable)
    #[arg(long, value_name = "K=V")]
    meta: Vec<String>,
    /// allocate: how long to wait for room when no owned block has any (default: the
    /// daemon's, a few claim rounds)
    #[arg(long, value_name = "SECS")]
    timeout: Option<u64>,
    /// Show blocks (as `blocks`)
    #[arg(short = 'b')]
    blocks: bool,
    /// Show DHCP options (as `options`)
    #[arg(short = 'd')]
    options: bool,
    /// Set a DHCP option CODE:LEN:P1.P2… (as `set-option`)
    #[arg(short = 'o', value_name = "CODE:LEN:P…")]
    set_option: Option<String>,
    /// Remove a DHCP option (as `remove-option`)
    #[arg(short = 'r', value_name = "CODE")]
    remove_option: Option<u8>,
    /// Set the lease time in seconds (as `lease-time`)
    #[arg(short = 'l', value_name = "SECS")]
    lease_time: Option<u32>,
    /// Set the log level (as `log-level`)
    #[arg(short = 'v', value_name = "LEVEL")]
    log_level: Option<String>,
    /// Show statistics (as `stats`)
    #[arg(short = 's')]
    stats: bool,
    /// Print version
    #[arg(short = 'V', long = "version", action = clap::ArgAction::Version)]
    version: Option<bool>,
    /// COMMAND [ARG]
    command: Vec<String>,
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("ddhcpctl: {msg} (see ddhcpctl --help)");
    ExitCode::from(2)
}

fn request(a: &Args) -> Result<Request, String> {
    let pool = a.pool.clone();
    // As ddhcpdctl, -o wins over the other short forms.
    if let Some(o) = &a.set_option {
        return Ok(Request::SetOption {
            option: o.clone(),
            pool,
        });
    }
    if let Some(c) = a.remove_option {
        return Ok(Request::RemoveOption { code: c, pool });
    }
    if let Some(s) = a.lease_time {
        return Ok(Request::LeaseTime { secs: s, pool });
    }
    if let Some(l) = &a.log_level {
        return Ok(Request::LogLevel { level: l.clone() });
    }
    if a.blocks {
        return Ok(Request::Blocks { pool });
    }
    if a.options {
        return Ok(Request::Options { pool });
    }
    if a.stats {
        return Ok(Request::Stats);
    }
    let words: Vec<&str> = a.command.iter().map(String::as_str).collect();
    let arg = |what: &str| -> Result<String, String> {
        words
            .get(1)
            .map(|s| s.to_string())
            .ok_or_else(|| format!("{} needs {what}", words[0]))
    };
    let req = match words.first().copied() {
        None => return Err("no command given".into()),
        Some("status") => Request::Status,
        Some("blocks") => Request::Blocks { pool },
        Some("leases") => Request::Leases { pool },
        Some("options") => Request::Options { pool },
        Some("stats") => Request::Stats,
        Some("metrics") => Request::Metrics,
        Some("set-option") => Request::SetOption {
            option: arg("CODE:LEN:P1.P2…")?,
            pool,
        },
        Some("remove-option") => Request::RemoveOption {
            code: arg("CODE")?
                .parse()
                .map_err(|_| "remove-option CODE must be a number 0-255".to_string())?,
            pool,
        },
        Some("lease-time") => Request::LeaseTime {
            secs: arg("SECS")?
                .parse()
                .map_err(|_| "lease-time SECS must be a whole number".to_string())?,
            pool,
        },
        Some("log-level") => Request::LogLevel {
            level: arg("LEVEL")?,
        },
        Some("local") => Request::Local { pool },
        Some("mark-active") => Request::MarkActive { ip: arg("IP")? },
        Some("mark-standby") => Request::MarkStandby { ip: arg("IP")? },
        Some("set-local") => return set_local(&words[1..], pool),
        Some("allocate") => {
            let mut meta = std::collections::BTreeMap::new();
            for m in &a.meta {
                let Some((k, v)) = m.split_once('=') else {
                    return Err(format!("--meta {m}: expected KEY=VALUE"));
                };
                if meta.insert(k.to_string(), v.to_string()).is_some() {
                    return Err(format!("--meta {k} is given twice"));
                }
            }
            Request::Allocate {
                pool: pool.ok_or("allocate needs --pool NAME")?,
                owner: a.owner.clone().ok_or("allocate needs --owner ID")?,
                ip: a.ip.clone(),
                meta,
                timeout_ms: a.timeout.map(|s| s.saturating_mul(1000)),
            }
        }
        Some("release") => match (words.get(1), &a.owner) {
            (Some(ip), _) => Request::Release {
                ip: Some(ip.to_string()),
                pool,
                owner: a.owner.clone(),
            },
            (None, Some(o)) => Request::Release {
                ip: None,
                pool: Some(pool.ok_or("release --owner needs --pool NAME")?),
                owner: Some(o.clone()),
            },
            (None, None) => return Err("release needs IP, or --pool NAME --owner ID".into()),
        },
        Some("allocations") => Request::Allocations {
            pool,
            owner: a.owner.clone(),
        },
        Some("show") => Request::Show { ip: arg("IP")? },
        Some("keys") => Request::Keys,
        Some("key") => return key_request(&words[1..]),
        Some(other) => return Err(format!("unknown command '{other}'")),
    };
    let expected = if matches!(
        req,
        Request::SetOption { .. }
            | Request::RemoveOption { .. }
            | Request::LeaseTime { .. }
            | Request::LogLevel { .. }
            | Request::MarkActive { .. }
            | Request::MarkStandby { .. }
            | Request::Show { .. }
    ) || matches!(&req, Request::Release { ip: Some(_), .. })
    {
        2
    } else {
        1
    };
    if words.len() > expected {
        return Err(format!("unexpected argument '{}'", words[expected]));
    }
    Ok(req)
}

/// `key install FILE`, `key use ID`, `key remove ID`, `key migrate on|off`.
fn key_request(words: &[&str]) -> Result<Request, String> {
    let id = |w: Option<&&str>| -> Result<u16, String> {
        w.ok_or("needs a key ID")?
            .parse()
            .map_err(|_| "a key ID is a number 0-65535".to_string())
    };
    let req = match words.first().copied() {
        Some("install") => {
            let file = words.get(1).ok_or("key install needs FILE")?;
            // The daemon reads the file; its working directory is not ours.
            let path = std::path::absolute(file).map_err(|e| format!("key install {file}: {e}"))?;
            Request::KeyInstall {
                path: path.display().to_string(),
            }
        }
        Some("use") => Request::KeyUse {
            id: id(words.get(1)).map_err(|e| format!("key use {e}"))?,
        },
        Some("remove") => Request::KeyRemove {
            id: id(words.get(1)).map_err(|e| format!("key remove {e}"))?,
        },
        Some("migrate") => Request::KeyMigrate {
            on: match words.get(1).copied() {
                Some("on") => true,
                Some("off") => false,
                _ => return Err("key migrate needs on or off".into()),
            },
        },
        _ => return Err("key needs install FILE, use ID, remove ID or migrate on|off".into()),
    };
    if let Some(extra) = words.get(2) {
        return Err(format!("unexpected argument '{extra}'"));
    }
    Ok(req)
}

/// The keys of `set-local`.
const SET_LOCAL_KEYS: &str = "standby, min, max-standby, hysteresis";

/// `set-local KEY=VALUE…`: at least one key, each at most once.
fn set_local(items: &[&str], pool: Option<String>) -> Result<Request, String> {
    let (mut standby, mut min, mut max_standby, mut hysteresis) = (None, None, None, None);
    if items.is_empty() {
        return Err(format!(
            "set-local needs at least one of {SET_LOCAL_KEYS} as KEY=VALUE"
        ));
    }
    for item in items {
        let Some((key, value)) = item.split_once('=') else {
            return Err(format!(
                "set-local: expected KEY=VALUE, not '{item}' (keys: {SET_LOCAL_KEYS})"
            ));
        };
        let slot = match key {
            "standby" => &mut standby,
            "min" => &mut min,
            "max-standby" => &mut max_standby,
            "hysteresis" => &mut hysteresis,
            _ => {
                return Err(format!(
                    "set-local: unknown key '{key}' (keys: {SET_LOCAL_KEYS})"
                ));
            }
        };
        if slot.is_some() {
            return Err(format!("set-local: {key} is given twice"));
        }
        let what = if key == "hysteresis" {
            "a whole number of seconds"
        } else {
            "a whole number of addresses"
        };
        *slot = Some(
            value
                .parse::<u32>()
                .map_err(|_| format!("set-local: {key}={value}: not {what}"))?,
        );
    }
    Ok(Request::SetLocal {
        pool,
        standby,
        min,
        max_standby,
        hysteresis,
    })
}

fn exchange(path: &PathBuf, req: &Request) -> Result<Response, String> {
    let mut s = UnixStream::connect(path)
        .map_err(|e| format!("cannot reach ddhcpd at {}: {e}", path.display()))?;
    // An allocation may wait for a claim round; the daemon's own bound is 10 minutes. A
    // listing is rendered whole before its first byte is sent: a million allocations take
    // seconds on a fast machine and far longer on a router.
    let wait = match req {
        Request::Allocate { timeout_ms, .. } => timeout_ms.unwrap_or(60_000).min(600_000),
        Request::Allocations { .. }
        | Request::Leases { .. }
        | Request::Blocks { .. }
        | Request::Local { .. } => 120_000,
        _ => 0,
    };
    let timeout = Some(Duration::from_secs(5) + Duration::from_millis(wait));
    s.set_read_timeout(timeout).ok();
    s.set_write_timeout(timeout).ok();
    s.write_all(req.to_line().as_bytes())
        .and_then(|_| s.shutdown(std::net::Shutdown::Write))
        .map_err(|e| format!("cannot send to ddhcpd at {}: {e}", path.display()))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .map_err(|e| format!("no answer from ddhcpd at {}: {e}", path.display()))?;
    serde_json::from_slice(&buf)
        .map_err(|e| format!("garbled answer from ddhcpd at {}: {e}", path.display()))
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        Value::Bool(true) => "yes".into(),
        Value::Bool(false) => "no".into(),
        other => other.to_string(),
    }
}

/// Names the pool unless it is the one a single-pool daemon has, so the output of
/// single-pool daemons stays as it was.
fn print_pool(v: &Value) {
    if v["pool"].as_str().is_some_and(|p| p != "default") {
        println!("pool {}", s(&v["pool"]));
    }
}

fn print_table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&width)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

fn render(req: &Request, v: &Value) {
    match req {
        Request::Status => {
            for (label, key) in [
                ("node id", "node_id"),
                ("version", "version"),
                ("learning", "learning"),
                ("network", "network"),
                ("block size", "block_size"),
                ("blocks owned", "blocks_owned"),
                ("leases active", "leases_active"),
                ("peers", "peers"),
                ("recovering", "recovering"),
            ] {
                println!("{label:<14}{}", s(&v[key]));
            }
            let pools = v["pools"].as_array().cloned().unwrap_or_default();
            if pools.len() > 1 || pools.iter().any(|p| p["name"] != "default") {
                let rows = pools
                    .iter()
                    .map(|p| {
                        [
                            "name",
                            "network",
                            "block_size",
                            "use",
                            "location",
                            "blocks_owned",
                            "leases_active",
                        ]
                        .iter()
                        .map(|k| s(&p[*k]))
                        .collect()
                    })
                    .collect();
                println!();
                print_table(
                    &[
                        "pool", "network", "block", "use", "location", "owned", "leases",
                    ],
                    rows,
                );
            }
        }
        Request::Blocks { .. } => {
            println!("node id {}", s(&v["node_id"]));
            print_pool(v);
            let rows = v["blocks"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|b| {
                            ["index", "first", "state", "owner", "expires_in"]
                                .iter()
                                .map(|k| s(&b[*k]))
                                .collect()
                        })
                        .collect()
                })
                .unwrap_or_default();
            print_table(&["index", "first", "state", "owner", "expires"], rows);
        }
        Request::Leases { .. } => {
            print_pool(v);
            let rows = v["leases"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|l| {
                            ["ip", "mac", "state", "expires_in", "block"]
                                .iter()
                                .map(|k| s(&l[*k]))
                                .collect()
                        })
                        .collect()
                })
                .unwrap_or_default();
            print_table(&["ip", "mac", "state", "expires", "block"], rows);
        }
        Request::Options { .. } => {
            print_pool(v);
            println!("lease time {}", s(&v["lease_time"]));
            let rows = v["options"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|o| {
                            let payload = o["payload"]
                                .as_array()
                                .map(|p| p.iter().map(s).collect::<Vec<_>>().join("."))
                                .unwrap_or_default();
                            vec![s(&o["code"]), s(&o["len"]), payload]
                        })
                        .collect()
                })
                .unwrap_or_default();
            print_table(&["code", "len", "payload"], rows);
        }
        Request::Stats => {
            if let Some(m) = v["counters"].as_object() {
                for (k, val) in m {
                    println!("{k} {}", s(val));
                }
            }
        }
        Request::Metrics => print!("{}", v["text"].as_str().unwrap_or_default()),
        Request::Local { .. } => print_table(
            &["ip", "pool", "iface", "state", "since", "reason"],
            local_rows(v),
        ),
        Request::Allocate { .. } => println!("{}", s(&v["ip"])),
        Request::Release { .. } => println!("released {}", s(&v["ip"])),
        Request::Allocations { .. } => {
            let rows = v["allocations"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|r| {
                            let meta = r["meta"]
                                .as_object()
                                .map(|m| {
                                    m.iter()
                                        .map(|(k, v)| format!("{k}={}", s(v)))
                                        .collect::<Vec<_>>()
                                        .join(",")
                                })
                                .unwrap_or_default();
                            vec![
                                s(&r["ip"]),
                                s(&r["pool"]),
                                s(&r["owner"]),
                                s(&r["node_id"]),
                                format!("{}s", s(&r["since"])),
                                meta,
                            ]
                        })
                        .collect()
                })
                .unwrap_or_default();
            print_table(&["ip", "pool", "owner", "node", "since", "meta"], rows);
        }
        Request::Show { .. } => {
            for key in [
                "ip",
                "pool",
                "state",
                "cooldown",
                "block",
                "block_state",
                "block_owner",
            ] {
                println!("{key:<12}{}", s(&v[key]));
            }
            if let Some(a) = v["allocation"].as_object() {
                for key in ["owner", "node_id", "since", "meta"] {
                    println!("{key:<12}{}", s(&a[key]));
                }
            }
        }
        Request::Keys => {
            println!(
                "authentication {}{}",
                if v["enabled"] == Value::Bool(true) {
                    "on"
                } else {
                    "off"
                },
                if v["migrate"] == Value::Bool(true) {
                    " (migration mode: unsigned accepted)"
                } else {
                    ""
                }
            );
            let rows = field_rows(&v["keys"], &["id", "signing", "peers"]);
            print_table(&["key", "signing", "peers"], rows);
            if v["node_key"] == Value::Bool(true) {
                println!("node key: on, {} peer keys pinned", s(&v["pinned"]));
            }
            let rows = field_rows(
                &v["rejected"],
                &["from", "node_id", "reason", "count", "last_secs_ago"],
            );
            if !rows.is_empty() {
                println!();
                print_table(
                    &["rejected from", "node", "reason", "count", "last (s ago)"],
                    rows,
                );
            }
            let rows = field_rows(&v["plain_senders"], &["node_id", "from", "last_secs_ago"]);
            if !rows.is_empty() {
                // The C nodes still in the mesh: migration can end when this is empty.
                println!();
                print_table(&["plain sender", "from", "last (s ago)"], rows);
            }
            if let Some(h) = v["holding"].as_array().filter(|h| !h.is_empty()) {
                let names: Vec<String> = h.iter().map(s).collect();
                println!(
                    "\nKEY MISMATCH: not claiming new blocks in {}",
                    names.join(", ")
                );
            }
        }
        _ => println!("ok"),
    }
}

/// One row per object of the array `a`, the values of `keys` in order.
fn field_rows(a: &Value, keys: &[&str]) -> Vec<Vec<String>> {
    a.as_array()
        .map(|a| {
            a.iter()
                .map(|r| keys.iter().map(|k| s(&r[*k])).collect())
                .collect()
        })
        .unwrap_or_default()
}

/// The rows of `local`: `since` as seconds ago.
fn local_rows(v: &Value) -> Vec<Vec<String>> {
    v["addresses"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| {
                    ["ip", "pool", "iface", "state", "since", "reason"]
                        .iter()
                        .map(|k| match (*k, &r[*k]) {
                            ("since", Value::Number(n)) => format!("{n}s"),
                            (_, x) => s(x),
                        })
                        .collect()
                })
                .collect()
        })
        .unwrap_or_default()
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) {
                print!("{e}");
                return ExitCode::SUCCESS;
            }
            return usage(&ddhcp::config::one_line_clap_error(&e));
        }
    };
    let req = match request(&args) {
        Ok(r) => r,
        Err(e) => return usage(&e),
    };
    let resp = match exchange(&args.socket, &req) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ddhcpctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !resp.ok {
        eprintln!(
            "ddhcpctl: refused: {}",
            resp.error.as_deref().unwrap_or("no reason given")
        );
        return ExitCode::FAILURE;
    }
    let result = resp.result.unwrap_or(Value::Null);
    if args.json {
        println!("{result}");
    } else {
        render(&req, &result);
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(args: &[&str]) -> Result<Request, String> {
        let argv = std::iter::once("ddhcpctl").chain(args.iter().copied());
        request(&Args::try_parse_from(argv).map_err(|e| e.to_string())?)
    }

    #[test]
    fn local_commands() {
        assert_eq!(req(&["local"]), Ok(Request::Local { pool: None }));
        assert_eq!(
            req(&["local", "--pool", "hosts"]),
            Ok(Request::Local {
                pool: Some("hosts".into())
            })
        );
        assert_eq!(
            req(&["mark-active", "10.0.0.5"]),
            Ok(Request::MarkActive {
                ip: "10.0.0.5".into()
            })
        );
        assert_eq!(
            req(&["mark-standby", "10.0.0.5"]),
            Ok(Request::MarkStandby {
                ip: "10.0.0.5".into()
            })
        );
        assert_eq!(
            req(&["mark-active"]),
            Err("mark-active needs IP".to_string())
        );
        assert_eq!(
            req(&["mark-standby", "10.0.0.5", "x"]),
            Err("unexpected argument 'x'".to_string())
        );
        assert_eq!(
            req(&["local", "x"]),
            Err("unexpected argument 'x'".to_string())
        );
    }

    #[test]
    fn set_local_takes_keys() {
        assert_eq!(
            req(&[
                "set-local",
                "--pool",
                "hosts",
                "standby=2",
                "max-standby=4",
                "hysteresis=10"
            ]),
            Ok(Request::SetLocal {
                pool: Some("hosts".into()),
                standby: Some(2),
                min: None,
                max_standby: Some(4),
                hysteresis: Some(10),
            })
        );
        assert_eq!(
            req(&["set-local", "min=1"]),
            Ok(Request::SetLocal {
                pool: None,
                standby: None,
                min: Some(1),
                max_standby: None,
                hysteresis: None,
            })
        );
        for (args, line) in [
            (
                &["set-local"][..],
                "set-local needs at least one of standby, min, max-standby, hysteresis as KEY=VALUE",
            ),
            (
                &["set-local", "standby=1", "spare=3"],
                "set-local: unknown key 'spare' (keys: standby, min, max-standby, hysteresis)",
            ),
            (
                &["set-local", "standby"],
                "set-local: expected KEY=VALUE, not 'standby' (keys: standby, min, max-standby, hysteresis)",
            ),
            (
                &["set-local", "min=1", "min=2"],
                "set-local: min is given twice",
            ),
            (
                &["set-local", "hysteresis=5s"],
                "set-local: hysteresis=5s: not a whole number of seconds",
            ),
            (
                &["set-local", "standby=-1"],
                "set-local: standby=-1: not a whole number of addresses",
            ),
        ] {
            assert_eq!(req(args), Err(line.to_string()), "{args:?}");
        }
    }

    #[test]
    fn local_table_rows() {
        let v = serde_json::json!({"addresses": [{"ip": "10.5.0.130", "pool": "hosts",
            "iface": "eth0", "state": "active", "since": 7, "reason": "in use: tcp listen :22"}]});
        assert_eq!(
            local_rows(&v),
            vec![vec![
                "10.5.0.130".to_string(),
                "hosts".into(),
                "eth0".into(),
                "active".into(),
                "7s".into(),
                "in use: tcp listen :22".into()
            ]]
        );
        assert!(local_rows(&serde_json::json!({"addresses": []})).is_empty());
    }
}

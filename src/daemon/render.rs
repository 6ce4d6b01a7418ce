//! The shell's half of the control protocol, as pure functions: which requests the core
//! answers and which the shell does, and how the core's answers look on the socket. Kept
//! apart from the main loop so they are unit-tested without sockets or root.

use serde_json::{Value, json};

use crate::config::parse_option;
use crate::control::{Request, Response};
use crate::node::{Answer, Event, PoolStatus, Query, Status};
use crate::range::ManagedRange;

/// Where a request is answered.
#[derive(Debug, PartialEq, Eq)]
pub enum Routed {
    /// By the core, as an output some time later.
    Core(Query),
    /// By the shell, from its own state (counters of the hook and the store, metrics,
    /// logging).
    Shell(Request),
}

/// Sorts a request; a request that is malformed beyond what the socket layer checks (an
/// option that does not parse) is answered at once.
pub fn route(req: Request) -> Result<Routed, Response> {
    Ok(Routed::Core(match req {
        Request::Status => Query::Status,
        Request::Blocks { pool } => Query::Blocks { pool },
        Request::Leases { pool } => Query::Leases { pool },
        Request::Options { pool } => Query::Options { pool },
        Request::SetOption { option, pool } => Query::SetOption {
            pool,
            option: parse_option("set-option", &option)
                .map_err(|e| Response::err(e.to_string()))?,
        },
        Request::RemoveOption { code, pool } => Query::RemoveOption { pool, code },
        Request::LeaseTime { secs, pool } => Query::LeaseTime { pool, secs },
        Request::Local { pool } => Query::Local { pool },
        Request::MarkActive { ip } => Query::Mark {
            ip: parse_ip("mark-active", &ip)?,
            active: true,
        },
        Request::MarkStandby { ip } => Query::Mark {
            ip: parse_ip("mark-standby", &ip)?,
            active: false,
        },
        Request::SetLocal {
            pool,
            standby,
            min,
            max_standby,
            hysteresis,
        } => Query::SetLocal {
            pool,
            standby,
            min,
            max_standby,
            hysteresis,
        },
        r @ (Request::LogLevel { .. }
        | Request::Stats
        | Request::Metrics
        | Request::Keys
        | Request::KeyInstall { .. }
        | Request::KeyUse { .. }
        | Request::KeyRemove { .. }
        | Request::KeyMigrate { .. }) => {
            return Ok(Routed::Shell(r));
        }
        Request::Allocate {
            pool,
            owner,
            ip,
            meta,
            timeout_ms,
        } => Query::Allocate {
            pool,
            owner,
            ip: ip.map(|ip| parse_ip("allocate", &ip)).transpose()?,
            meta,
            timeout: timeout_ms.map(|ms| std::time::Duration::from_millis(ms.min(600_000))),
        },
        Request::Release { ip, pool, owner } => Query::Release {
            ip: ip.map(|ip| parse_ip("release", &ip)).transpose()?,
            pool,
            owner,
        },
        Request::Allocations { pool, owner } => Query::Allocations { pool, owner },
        Request::Show { ip } => Query::Show {
            ip: parse_ip("show", &ip)?,
        },
    }))
}

/// The address of a `mark-*` command; a refusal naming the command and the value if it
/// is not one.
fn parse_ip(cmd: &str, ip: &str) -> Result<std::net::Ipv4Addr, Response> {
    ip.trim().parse().map_err(|_| {
        Response::err(format!(
            "{cmd}: '{}' is not an IPv4 address (expected A.B.C.D)",
            ip.escape_debug()
        ))
    })
}

fn pool_json(p: &PoolStatus) -> Value {
    json!({
        "name": p.name,
        "network": p.range.to_string(),
        "block_size": p.range.block_size(),
        "use": p.use_,
        "location": p.location,
        "claims": p.claims,
        "learning": p.learning,
        "blocks_owned": p.blocks_owned,
        "leases_active": p.leases_active,
    })
}

/// `status`: the fields from before pools describe the default pool (or the first), with
/// blocks and leases counted over all pools; `pools` lists each.
fn status_json(s: &Status) -> Value {
    let main = s
        .default_pool
        .and_then(|i| s.pools.get(i))
        .or(s.pools.first());
    json!({
        "node_id": s.node_id.to_string(),
        "version": env!("CARGO_PKG_VERSION"),
        "learning": s.pools.iter().any(|p| p.learning),
        "network": main.map(|p| p.range.to_string()),
        "block_size": main.map(|p| p.range.block_size()),
        "blocks_owned": s.pools.iter().map(|p| p.blocks_owned).sum::<usize>(),
        "leases_active": s.pools.iter().map(|p| p.leases_active).sum::<usize>(),
        "peers": s.peers,
        "recovering": s.recovering,
        "pools": s.pools.iter().map(pool_json).collect::<Vec<_>>(),
    })
}

fn alloc_json(r: &crate::api::AllocRow) -> Value {
    json!({
        "ip": r.ip.to_string(),
        "pool": r.pool,
        "owner": r.owner,
        "node_id": r.node_id.to_string(),
        "since": r.since_secs,
        "meta": r.meta,
    })
}

/// How a core answer goes out on the socket.
pub fn render(answer: Answer) -> Response {
    match answer {
        Answer::Status(s) => Response::ok(status_json(&s)),
        Answer::Blocks {
            pool,
            node_id,
            blocks,
        } => {
            let rows: Vec<_> = blocks
                .into_iter()
                .map(|v| {
                    json!({
                        "index": v.index,
                        "first": v.first.to_string(),
                        "state": v.state.as_str(),
                        "owner": v.owner.map(|o| o.to_string()),
                        "expires_in": v.expires_in,
                        "pool": pool,
                    })
                })
                .collect();
            Response::ok(json!({"node_id": node_id.to_string(), "pool": pool, "blocks": rows}))
        }
        Answer::Leases { pool, leases } => {
            let rows: Vec<_> = leases
                .into_iter()
                .map(|l| {
                    json!({"ip": l.ip.to_string(), "mac": l.mac, "state": l.state,
                           "expires_in": l.expires_in, "block": l.block, "pool": pool})
                })
                .collect();
            Response::ok(json!({ "pool": pool, "leases": rows }))
        }
        Answer::Options {
            pool,
            options,
            lease_time,
        } => {
            let opts: Vec<_> = options
                .iter()
                .map(|o| json!({"code": o.code, "len": o.payload.len(), "payload": o.payload}))
                .collect();
            Response::ok(json!({ "pool": pool, "options": opts, "lease_time": lease_time }))
        }
        Answer::Local { addresses } => {
            let rows: Vec<_> = addresses
                .into_iter()
                .map(|a| {
                    json!({"ip": a.ip.to_string(), "pool": a.pool, "iface": a.iface,
                           "state": a.state, "since": a.since_secs, "reason": a.reason})
                })
                .collect();
            Response::ok(json!({ "addresses": rows }))
        }
        Answer::Allocated { row, created } => {
            let mut v = alloc_json(&row);
            v["created"] = json!(created);
            if let Some(o) = v.as_object_mut() {
                o.remove("since");
                o.remove("meta");
            }
            Response::ok(v)
        }
        Answer::Released { ip } => Response::ok(json!({"ok": true, "ip": ip.to_string()})),
        Answer::Allocations(rows) => Response::ok(json!({
            "allocations": rows.iter().map(alloc_json).collect::<Vec<_>>(),
        })),
        Answer::Show(s) => Response::ok(json!({
            "ip": s.ip.to_string(),
            "pool": s.pool,
            "state": s.state,
            "allocation": s.allocation.as_ref().map(alloc_json),
            "cooldown": s.cooldown_secs,
            "block": s.block,
            "block_state": s.block_state.map(|b| b.as_str()),
            "block_owner": s.block_owner.map(|o| o.to_string()),
        })),
        Answer::Done => Response::ok(json!({"ok": true})),
        Answer::Refused(e) => Response::err(e),
    }
}

/// The hook's arguments for an event, given each pool's range. Block arguments are the
/// block as a CIDR, which names its pool too (pools never overlap).
pub fn hook_args(ev: &Event, ranges: &[ManagedRange]) -> Vec<String> {
    use crate::dhcp::LeaseEvent as L;
    let block = |pool: usize, first: std::net::Ipv4Addr| {
        let len = ranges.get(pool).map_or(32, |r| r.block_prefix_len());
        format!("{first}/{len}")
    };
    match ev {
        Event::EndLearning { .. } => vec!["endlearning".into()],
        Event::BlockClaimed { pool, first, .. } => vec!["claim".into(), block(*pool, *first)],
        Event::BlockDropped { pool, first, .. } => vec!["drop".into(), block(*pool, *first)],
        Event::BlockLost {
            pool, first, to, ..
        } => vec!["conflict".into(), block(*pool, *first), to.to_string()],
        Event::BlockContested {
            pool, first, by, ..
        } => vec!["contested".into(), block(*pool, *first), by.to_string()],
        Event::NodeIdChanged { old, new } => {
            vec!["nodeid".into(), old.to_string(), new.to_string()]
        }
        Event::PeerAuthFailed { from, node, reason } => vec![
            "auth-failed".into(),
            from.to_string(),
            node.to_string(),
            (*reason).into(),
        ],
        Event::KeyMismatch { pool, holding } => vec![
            "key-mismatch".into(),
            ranges.get(*pool).map(|r| r.to_string()).unwrap_or_default(),
            if *holding { "holding" } else { "resumed" }.into(),
        ],
        Event::Local { ip, from, to, .. } => {
            vec!["local".into(), ip.to_string(), (*from).into(), (*to).into()]
        }
        Event::LocalDeleted { ip, state, .. } => {
            vec!["local-deleted".into(), ip.to_string(), (*state).into()]
        }
        Event::Api(pool, e) => {
            let name = |p: &usize| ranges.get(*p).map(|r| r.to_string()).unwrap_or_default();
            match e {
                crate::api::ApiEvent::Allocated { ip, owner, .. } => {
                    vec!["allocate".into(), ip.to_string(), owner.clone(), name(pool)]
                }
                crate::api::ApiEvent::Released { ip, owner } => {
                    vec!["release".into(), ip.to_string(), owner.clone(), name(pool)]
                }
                crate::api::ApiEvent::Lost { ip, owner } => {
                    vec![
                        "allocation-lost".into(),
                        ip.to_string(),
                        owner.clone(),
                        name(pool),
                    ]
                }
            }
        }
        Event::Lease(_, l) => match l {
            L::Leased { ip, mac, .. } => vec!["lease".into(), ip.to_string(), mac.clone()],
            L::Released { ip, mac } => vec!["release".into(), ip.to_string(), mac.clone()],
            L::Expired { ip, mac } => vec!["expire".into(), ip.to_string(), mac.clone()],
            L::Declined { ip, mac } => vec!["decline".into(), ip.to_string(), mac.clone()],
        },
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::blocks::{BlockStateName, BlockView};
    use crate::node::LeaseRow;
    use crate::wire::NodeId;

    fn range(a: u8) -> ManagedRange {
        ManagedRange::new(Ipv4Addr::new(10, a, 0, 0), 24, 2).unwrap()
    }

    fn pool(name: &str, a: u8, owned: usize) -> PoolStatus {
        PoolStatus {
            name: name.into(),
            range: range(a),
            use_: "dhcp",
            location: None,
            claims: true,
            learning: false,
            blocks_owned: owned,
            leases_active: owned * 2,
        }
    }

    #[test]
    fn requests_go_where_their_state_is() {
        assert_eq!(route(Request::Status).unwrap(), Routed::Core(Query::Status));
        assert_eq!(
            route(Request::SetOption {
                option: "3:4:10.0.0.1".into(),
                pool: Some("lan".into())
            })
            .unwrap(),
            Routed::Core(Query::SetOption {
                pool: Some("lan".into()),
                option: crate::config::DhcpOption {
                    code: 3,
                    payload: vec![10, 0, 0, 1]
                }
            })
        );
        let bad = route(Request::SetOption {
            option: "3:4:1.2".into(),
            pool: None,
        })
        .unwrap_err();
        assert!(bad.error.unwrap().contains("set-option"));
        assert_eq!(
            route(Request::Stats).unwrap(),
            Routed::Shell(Request::Stats)
        );
    }

    #[test]
    fn local_commands_go_to_the_core() {
        assert_eq!(
            route(Request::Local {
                pool: Some("hosts".into())
            })
            .unwrap(),
            Routed::Core(Query::Local {
                pool: Some("hosts".into())
            })
        );
        assert_eq!(
            route(Request::MarkActive {
                ip: "10.5.0.130".into()
            })
            .unwrap(),
            Routed::Core(Query::Mark {
                ip: Ipv4Addr::new(10, 5, 0, 130),
                active: true
            })
        );
        assert_eq!(
            route(Request::MarkStandby {
                ip: "10.5.0.130".into()
            })
            .unwrap(),
            Routed::Core(Query::Mark {
                ip: Ipv4Addr::new(10, 5, 0, 130),
                active: false
            })
        );
        for (req, line) in [
            (
                Request::MarkActive {
                    ip: "10.5.0.300".into(),
                },
                "mark-active: '10.5.0.300' is not an IPv4 address (expected A.B.C.D)",
            ),
            (
                Request::MarkStandby { ip: "".into() },
                "mark-standby: '' is not an IPv4 address (expected A.B.C.D)",
            ),
            (
                Request::MarkStandby { ip: "x\ny".into() },
                "mark-standby: 'x\\ny' is not an IPv4 address (expected A.B.C.D)",
            ),
        ] {
            let r = route(req).unwrap_err();
            assert!(!r.ok);
            assert_eq!(r.error.as_deref(), Some(line));
        }
        assert_eq!(
            route(Request::SetLocal {
                pool: None,
                standby: Some(2),
                min: Some(1),
                max_standby: Some(3),
                hysteresis: Some(9),
            })
            .unwrap(),
            Routed::Core(Query::SetLocal {
                pool: None,
                standby: Some(2),
                min: Some(1),
                max_standby: Some(3),
                hysteresis: Some(9),
            })
        );
    }

    #[test]
    fn local_addresses_and_changes_render_as_documented() {
        let v = render(Answer::Local {
            addresses: vec![crate::node::LocalRow {
                ip: Ipv4Addr::new(10, 5, 0, 130),
                pool: "hosts".into(),
                iface: "eth0".into(),
                state: "standby",
                since_secs: 42,
                reason: "proven: the test target answered".into(),
            }],
        });
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"{"ok":true,"result":{"addresses":[{"iface":"eth0","ip":"10.5.0.130","pool":"hosts","reason":"proven: the test target answered","since":42,"state":"standby"}]}}"#
        );
        // mark-* and set-local: as every change.
        assert_eq!(
            serde_json::to_string(&render(Answer::Done)).unwrap(),
            r#"{"ok":true,"result":{"ok":true}}"#
        );
    }

    #[test]
    fn single_pool_status_keeps_its_old_fields() {
        let s = Status {
            node_id: NodeId([0xab; 8]),
            default_pool: Some(0),
            pools: vec![pool("default", 0, 3)],
            peers: 2,
            recovering: false,
        };
        let v = render(Answer::Status(s)).result.unwrap();
        assert_eq!(v["node_id"], "ABABABABABABABAB");
        assert_eq!(v["network"], "10.0.0.0/24");
        assert_eq!(v["block_size"], 4);
        assert_eq!(v["blocks_owned"], 3);
        assert_eq!(v["leases_active"], 6);
        assert_eq!(v["learning"], false);
        assert_eq!(v["pools"][0]["name"], "default");
        assert_eq!(v["pools"][0]["use"], "dhcp");
        assert!(v["pools"][0]["location"].is_null());
    }

    #[test]
    fn several_pools_sum_and_list() {
        let s = Status {
            node_id: NodeId([1; 8]),
            default_pool: None,
            pools: vec![pool("a", 1, 1), pool("b", 2, 4)],
            peers: 0,
            recovering: false,
        };
        let v = render(Answer::Status(s)).result.unwrap();
        assert_eq!(
            v["network"], "10.1.0.0/24",
            "the first pool without a default"
        );
        assert_eq!(v["blocks_owned"], 5);
        assert_eq!(v["pools"].as_array().unwrap().len(), 2);
        assert_eq!(v["pools"][1]["network"], "10.2.0.0/24");
    }

    #[test]
    fn rows_name_their_pool() {
        let b = render(Answer::Blocks {
            pool: "lan".into(),
            node_id: NodeId([2; 8]),
            blocks: vec![BlockView {
                index: 3,
                first: Ipv4Addr::new(10, 0, 0, 12),
                state: BlockStateName::Ours,
                owner: Some(NodeId([2; 8])),
                owner_addr: None,
                expires_in: 30,
            }],
        })
        .result
        .unwrap();
        assert_eq!(b["blocks"][0]["pool"], "lan");
        assert_eq!(b["blocks"][0]["first"], "10.0.0.12");
        assert_eq!(b["blocks"][0]["state"], "ours");
        let l = render(Answer::Leases {
            pool: "lan".into(),
            leases: vec![LeaseRow {
                ip: Ipv4Addr::new(10, 0, 0, 13),
                mac: "02:00:00:00:00:01".into(),
                state: "leased",
                expires_in: 100,
                block: 3,
            }],
        })
        .result
        .unwrap();
        assert_eq!(l["leases"][0]["pool"], "lan");
        assert_eq!(l["leases"][0]["ip"], "10.0.0.13");
        let e = render(Answer::Refused("no pool named 'x'".into()));
        assert!(!e.ok && e.error.unwrap().contains("'x'"));
    }

    #[test]
    fn hook_blocks_use_their_pools_prefix_length() {
        let ranges = [
            range(0),
            ManagedRange::new(Ipv4Addr::new(10, 9, 0, 0), 16, 5).unwrap(),
        ];
        let ev = Event::BlockClaimed {
            pool: 1,
            block: 0,
            first: Ipv4Addr::new(10, 9, 0, 0),
        };
        assert_eq!(
            hook_args(&ev, &ranges),
            vec!["claim".to_string(), "10.9.0.0/27".into()]
        );
        let ev = Event::BlockDropped {
            pool: 0,
            block: 1,
            first: Ipv4Addr::new(10, 0, 0, 4),
        };
        assert_eq!(hook_args(&ev, &ranges)[1], "10.0.0.4/30");
    }
}

//! Answers to control requests and metric scrapes, computed from the node's state in the
//! main loop between two packets.

use serde_json::json;
use tracing::warn;

#[cfg(feature = "metrics")]
use super::metrics;
use super::{Daemon, log_filter};
use crate::control::{Request, Response};
#[cfg(feature = "metrics")]
use crate::pool::Pool;
#[cfg(feature = "metrics")]
use crate::time::Instant;

impl Daemon {
    /// The requests the shell answers from its own state.
    pub(super) fn answer_shell(&mut self, req: Request) -> Response {
        #[cfg(feature = "metrics")]
        let now = self.clock.now();
        match req {
            Request::Stats => {
                let all = self.node.counters();
                let mut counters: serde_json::Map<String, serde_json::Value> =
                    all.iter().map(|(k, v)| (k.to_string(), v.into())).collect();
                let h = &self.hook.stats;
                use std::sync::atomic::Ordering::Relaxed;
                counters.insert("hook.runs".into(), h.runs.load(Relaxed).into());
                counters.insert("hook.failures".into(), h.failures.load(Relaxed).into());
                counters.insert("hook.timeouts".into(), h.timeouts.load(Relaxed).into());
                counters.insert("hook.dropped".into(), h.dropped.load(Relaxed).into());
                if let Some(st) = self.store.as_ref().map(|s| &s.stats) {
                    counters.insert("store.batches".into(), st.batches.load(Relaxed).into());
                    counters.insert("store.bytes".into(), st.bytes.load(Relaxed).into());
                    counters.insert(
                        "store.compactions".into(),
                        st.compactions.load(Relaxed).into(),
                    );
                }
                counters.insert("mcast.send_errors".into(), self.send_errors.into());
                counters.insert(
                    "audit.write_errors".into(),
                    self.audit.write_errors().into(),
                );
                Response::ok(json!({ "counters": counters }))
            }
            #[cfg(feature = "metrics")]
            Request::Metrics => Response::ok(json!({ "text": self.metrics_text(now) })),
            #[cfg(not(feature = "metrics"))]
            Request::Metrics => Response::err("this ddhcpd was built without the metrics feature"),
            Request::Keys => Response::ok(self.keys_json()),
            Request::KeyInstall { path } => {
                match crate::auth::MeshKey::read(std::path::Path::new(&path))
                    .and_then(|k| self.node.key_install(&k).map(|()| k.id))
                {
                    Ok(id) => {
                        warn!(id, %path, "mesh key installed (verifying)");
                        Response::ok(json!({"ok": true, "id": id}))
                    }
                    Err(e) => Response::err(format!("key install {path}: {e}")),
                }
            }
            Request::KeyUse { id } => match self.node.key_use(id) {
                Ok(()) => {
                    warn!(id, "mesh key now signs");
                    Response::ok(json!({"ok": true}))
                }
                Err(e) => Response::err(e),
            },
            Request::KeyRemove { id } => match self.node.key_remove(id) {
                Ok(()) => {
                    warn!(id, "mesh key removed");
                    Response::ok(json!({"ok": true}))
                }
                Err(e) => Response::err(e),
            },
            Request::KeyMigrate { on } => match self.node.set_key_migrate(on) {
                Ok(()) => {
                    warn!(on, "peer key migration mode changed");
                    Response::ok(json!({"ok": true}))
                }
                Err(e) => Response::err(e),
            },
            Request::LogLevel { level } => {
                let Some(set) = &self.set_log_level else {
                    return Response::err("this daemon's logging cannot be changed at run time");
                };
                match log_filter(&level).and_then(|f| set(&f).map(|()| f)) {
                    Ok(f) => {
                        warn!(filter = %f, "log level changed");
                        Response::ok(json!({"ok": true}))
                    }
                    Err(e) => Response::err(e),
                }
            }
            // Routed to the core (see `render::route`).
            _ => Response::err("not a shell request"),
        }
    }

    /// The answer of `keys`: peers counted over the last two block timeouts.
    fn keys_json(&self) -> serde_json::Value {
        let now = self.clock.now();
        let window = self.node.longest_block_timeout() * 2;
        let auth = self.node.auth();
        let keys: Vec<_> = auth
            .key_rows(now - window)
            .into_iter()
            .map(|k| json!({"id": k.id, "signing": k.signing, "peers": k.peers}))
            .collect();
        let rejected: Vec<_> = self
            .node
            .rejected()
            .map(|(from, r)| {
                json!({
                    "from": from.to_string(),
                    "node_id": r.node.to_string(),
                    "reason": r.reason,
                    "count": r.count,
                    "last_secs_ago": now.saturating_since(r.last).as_secs(),
                })
            })
            .collect();
        let plain: Vec<_> = auth
            .plain_senders(now - window)
            .into_iter()
            .map(|(id, from, last)| {
                json!({
                    "node_id": id.to_string(),
                    "from": from.to_string(),
                    "last_secs_ago": now.saturating_since(last).as_secs(),
                })
            })
            .collect();
        let holding: Vec<&str> = self.node.mismatch_pools().collect();
        json!({
            "enabled": auth.enabled(),
            "migrate": auth.migrate(),
            "keys": keys,
            "verified_peers": auth.verified_peers(now - window),
            "rejected": rejected,
            "plain_senders": plain,
            "holding": holding,
            "node_key": auth.node_key().is_some(),
            "pinned": auth.pinned(),
        })
    }

    #[cfg(feature = "metrics")]
    pub(super) fn metrics_text(&self, now: Instant) -> String {
        use crate::stats::Counter as C;
        let c = self.node.counters();
        let g = |x: C| c.get(x);
        let mut m = metrics::Scrape::new();
        m.counters(
            "peer_packets_received",
            "Peer messages received, by type",
            "type",
            &[
                ("updateclaim", g(C::McastRecvUpdateClaim)),
                ("inquire", g(C::McastRecvInquire)),
                ("renewlease", g(C::DirectRecvRenewLease)),
                ("leaseack", g(C::DirectRecvLeaseAck)),
                ("leasenak", g(C::DirectRecvLeaseNak)),
                ("replicate", g(C::ReplRecvBatch)),
                ("replica_ack", g(C::ReplRecvAck)),
                ("handback", g(C::ReplRecvHandback)),
                ("recover", g(C::ReplRecvRecover)),
            ],
        );
        m.counters(
            "peer_packets_sent",
            "Peer messages sent, by type",
            "type",
            &[
                ("updateclaim", g(C::McastSendUpdateClaim)),
                ("inquire", g(C::McastSendInquire)),
                ("renewlease", g(C::DirectSendRenewLease)),
                ("leaseack", g(C::DirectSendLeaseAck)),
                ("leasenak", g(C::DirectSendLeaseNak)),
                ("replicate", g(C::ReplSendBatch)),
                ("replica_ack", g(C::ReplSendAck)),
                ("handback", g(C::ReplSendHandback)),
                ("recover", g(C::ReplSendRecover)),
            ],
        );
        m.counters(
            "peer_auth",
            "Peer authentication (--peer-key): datagrams verified, held for a challenge and released, challenges sent and answered, key-mismatch holds of a pool; in the migration mode plain datagrams accepted (C nodes) and plain copies of signing peers' datagrams ignored",
            "event",
            &[
                ("verified", g(C::AuthVerified)),
                ("held", g(C::AuthHeld)),
                ("released", g(C::AuthReleased)),
                ("challenge_sent", g(C::AuthChallengeSent)),
                ("challenge_answered", g(C::AuthChallengeAnswered)),
                ("mismatch_hold", g(C::AuthMismatchHold)),
                ("plain_accepted", g(C::AuthPlainAccepted)),
                ("plain_copy", g(C::AuthPlainCopy)),
            ],
        );
        m.gauge(
            "peer_key_mismatch",
            "1 while some pool claims no new blocks because it hears only datagrams it cannot verify",
            i64::from(self.node.mismatch_pools().next().is_some()),
        );
        m.counters(
            "peer_bytes",
            "Peer protocol bytes, by direction",
            "direction",
            &[
                ("in", g(C::McastRecvByte) + g(C::DirectRecvByte)),
                ("out", g(C::McastSendByte) + g(C::DirectSendByte)),
            ],
        );
        let pools = self.node.pools();
        let names = [
            "", "discover", "offer", "request", "decline", "ack", "nak", "release", "inform",
        ];
        let dc = |p: &crate::pool::Pool| p.dhcp().map(|d| d.counters.clone()).unwrap_or_default();
        let by_type = |v: [u64; 9]| -> Vec<(&str, u64)> {
            names.iter().zip(v).skip(1).map(|(n, c)| (*n, c)).collect()
        };
        m.counter_rows(
            "dhcp_packets_received",
            "DHCP messages received, by pool and type",
            &rows(pools, "type", |p| by_type(dc(p).recv)),
        );
        m.counter_rows(
            "dhcp_packets_sent",
            "DHCP messages sent, by pool and type",
            &rows(pools, "type", |p| by_type(dc(p).sent)),
        );
        let mut drops: Vec<(Vec<(&str, &str)>, u64)> = [
            ("peer_malformed", g(C::DropMalformed)),
            ("peer_foreign_swarm", g(C::DropForeignSwarm)),
            ("peer_wrong_socket", g(C::DropWrongSocket)),
            ("peer_unhandled", g(C::DropUnhandled)),
            ("peer_auth_unsigned", g(C::AuthDropUnsigned)),
            ("peer_auth_unknown_key", g(C::AuthDropUnknownKey)),
            ("peer_auth_bad_mac", g(C::AuthDropBadMac)),
            ("peer_auth_replay", g(C::AuthDropReplay)),
            ("peer_auth_signed_no_key", g(C::AuthDropSignedNoKey)),
            ("peer_auth_no_signature", g(C::AuthDropNoSignature)),
            ("peer_auth_forged", g(C::AuthDropForged)),
            ("peer_auth_rate_limited", g(C::AuthDropRateLimited)),
        ]
        .into_iter()
        .map(|(r, n)| (vec![("reason", r)], n))
        .collect();
        drops.extend(rows(pools, "reason", |p| {
            let d = dc(p);
            vec![
                (
                    "peer_invalid_block_entry",
                    p.counters().get(C::DropInvalidBlock),
                ),
                ("dhcp_malformed", d.malformed),
                ("dhcp_other_server", d.ignored_other_server),
                ("dhcp_no_free_address", d.no_free_address),
                ("dhcp_unknown_block_while_learning", d.silent_unknown_block),
                ("dhcp_forward_queue_full", d.forward_dropped),
            ]
        }));
        m.counter_rows(
            "drops",
            "Datagrams or entries dropped, by reason (and pool where one is known)",
            &drops,
        );
        m.counter_rows(
            "roaming_forwards",
            "Requests forwarded to a block's owner, by pool and outcome",
            &rows(pools, "outcome", |p| {
                let d = dc(p);
                vec![
                    ("sent", d.forwarded),
                    ("ack", d.forward_acked),
                    ("nak", d.forward_naked),
                    ("timeout", d.forward_timeouts),
                ]
            }),
        );
        m.counter_rows(
            "roaming_renewals",
            "Forwarded renewals answered as owner, by pool and outcome",
            &rows(pools, "outcome", |p| {
                let d = dc(p);
                vec![
                    ("ack", d.renew_acked),
                    ("nak", d.renew_naked),
                    ("unresolved", d.renew_unresolved),
                ]
            }),
        );
        m.counter_rows(
            "renew_byte_order",
            "Probes of a peer's renew address byte order, and orders learned, by pool",
            &rows(pools, "event", |p| {
                let (probes, learned) = p
                    .dhcp()
                    .map_or((0, 0), |d| (d.orders.probes_sent, d.orders.learned));
                vec![("probe", probes), ("learned", learned)]
            }),
        );
        m.counter_rows(
            "inquiry_answers_suppressed",
            "Answers to Inquires or weaker claims not sent: the answer budget was spent, by pool",
            &pools
                .iter()
                .map(|p| (vec![("pool", p.name())], p.blocks().answers_suppressed))
                .collect::<Vec<_>>(),
        );
        m.counter(
            "claim_rounds",
            "Inquire rounds sent",
            g(C::McastSendInquire),
        );
        m.counter_rows(
            "block_events",
            "Blocks claimed, given up, lost to a greater id (conflicts), or contested (node keys: another node kept claiming one we hold for a block timeout), by pool",
            &rows(pools, "event", |p| {
                let c = p.counters();
                vec![
                    ("claimed", c.get(C::BlocksClaimed)),
                    ("dropped", c.get(C::BlocksDropped)),
                    ("lost", c.get(C::BlocksLost)),
                    ("contested", c.get(C::BlocksContested)),
                ]
            }),
        );
        m.counter(
            "blocks_taken_over",
            "Blocks of a silent owner taken over with the bindings we held for it",
            g(C::BlocksTakenOver),
        );
        m.counter(
            "blocks_handed_back",
            "Blocks handed back to their rebuilding owner",
            g(C::BlocksHandedBack),
        );
        m.counter(
            "replica_binding_conflicts",
            "Handed-over bindings that conflicted with ours (ours kept)",
            g(C::BindingConflicts),
        );
        m.counter(
            "duplicate_node_id",
            "Messages seen with our own node id",
            g(C::DuplicateNodeId),
        );
        let id = self.node.id();
        m.gauge_rows(
            "blocks",
            "Blocks by pool and state",
            &rows(pools, "state", |p| {
                let mut states = [0i64; 4];
                for v in p.blocks_view(now, id) {
                    states[v.state as usize] += 1;
                }
                let total = p.range().num_blocks() as i64;
                vec![
                    ("tentative", states[0]),
                    ("claiming", states[1]),
                    ("ours", states[2]),
                    ("claimed", states[3]),
                    ("free", total - states.iter().sum::<i64>()),
                ]
            }),
        );
        m.gauge_rows(
            "leases",
            "Addresses by pool and state",
            &rows(pools, "state", |p| {
                let (offered, leased) = p.dhcp().map_or((0, 0), |d| {
                    (d.leases.offered() as i64, d.leases.active() as i64)
                });
                vec![("offered", offered), ("leased", leased)]
            }),
        );
        local_metrics(&mut m, pools);
        replica_metrics(&mut m, &self.node, now);
        let st = self.node.status(now);
        m.gauge(
            "peers",
            "Peers heard within two block timeouts",
            st.peers as i64,
        );
        m.gauge(
            "learning",
            "1 while any pool is in its learning phase",
            i64::from(st.pools.iter().any(|p| p.learning)),
        );
        use std::sync::atomic::Ordering::Relaxed;
        let h = &self.hook.stats;
        m.counter("hook_runs", "Hook runs started", h.runs.load(Relaxed));
        m.counters(
            "hook_failures",
            "Hook runs that failed, timed out, or were dropped (queue full)",
            "kind",
            &[
                ("failed", h.failures.load(Relaxed)),
                ("timeout", h.timeouts.load(Relaxed)),
                ("dropped", h.dropped.load(Relaxed)),
            ],
        );
        if let Some(st) = self.store.as_ref().map(|s| &s.stats) {
            m.counter(
                "store_batches",
                "Batches of state changes written to the journal (each synced once with --fsync on)",
                st.batches.load(Relaxed),
            );
            m.counter(
                "store_bytes",
                "Bytes appended to the journal",
                st.bytes.load(Relaxed),
            );
            m.counter(
                "store_write_microseconds",
                "Time spent writing and syncing the journal",
                st.write_micros.load(Relaxed),
            );
            m.counter(
                "store_compactions",
                "Journals folded into a snapshot",
                st.compactions.load(Relaxed),
            );
        }
        m.gauge(
            "held_outputs",
            "Replies and announcements waiting for the store",
            self.held.len() as i64,
        );
        m.render()
    }
}

/// Rows of a per-pool family: every pool, each value under its `what` label.
#[cfg(feature = "metrics")]
fn rows<'a, T>(
    pools: &'a [Pool],
    what: &'a str,
    values: impl Fn(&'a Pool) -> Vec<(&'a str, T)>,
) -> Vec<(Vec<(&'a str, &'a str)>, T)> {
    pools
        .iter()
        .flat_map(|p| {
            values(p)
                .into_iter()
                .map(move |(v, n)| (vec![("pool", p.name()), (what, v)], n))
        })
        .collect()
}

/// The families of local pools (only when the node has one): addresses by state, and the
/// service's counters.
#[cfg(feature = "metrics")]
fn local_metrics(m: &mut metrics::Scrape, pools: &[Pool]) {
    use crate::local::{LocalCounters, LocalState};
    if !pools.iter().any(|p| p.local().is_some()) {
        return;
    }
    m.gauge_rows(
        "local_addresses",
        "Addresses of local pools configured (or being configured) here, by pool and state",
        &rows(pools, "state", |p| {
            p.local().map_or_else(Vec::new, |l| {
                let n = |f: fn(&LocalState) -> bool| l.count(f) as i64;
                vec![
                    ("reserved", n(|s| matches!(s, LocalState::Reserved { .. }))),
                    ("standby", n(|s| matches!(s, LocalState::Standby))),
                    ("active", n(|s| matches!(s, LocalState::Active { .. }))),
                ]
            })
        }),
    );
    /// Name, help, and the counter of a family.
    type Family = (&'static str, &'static str, fn(&LocalCounters) -> u64);
    let families: [Family; 6] = [
        (
            "local_added",
            "Addresses the host confirmed configured, by pool",
            |c| c.added,
        ),
        (
            "local_removed",
            "Addresses the host confirmed removed on our request, by pool",
            |c| c.removed,
        ),
        (
            "local_proofs_failed",
            "Reachability probes that failed, and addresses not proven in time, by pool",
            |c| c.proofs_failed,
        ),
        (
            "local_deleted_by_others",
            "Addresses of ours someone else removed from the interface, by pool",
            |c| c.deleted_by_others,
        ),
        (
            "local_add_failed",
            "Addresses the host could not configure, by pool",
            |c| c.add_failed,
        ),
        (
            "local_lost_with_block",
            "Addresses removed because their block was given up or lost, by pool",
            |c| c.lost_with_block,
        ),
    ];
    for (name, help, value) in families {
        let rows: Vec<_> = pools
            .iter()
            .filter_map(|p| Some((vec![("pool", p.name())], value(&p.local()?.counters))))
            .collect();
        m.counter_rows(name, help, &rows);
    }
}

#[cfg(all(test, feature = "metrics"))]
mod tests {
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;

    use super::*;
    use crate::local::{HostAction, HostEvent, LocalConfig, LocalTimers};
    use crate::node::{Node, NodeConfig, Output, PoolConfig, ServiceConfig};
    use crate::range::ManagedRange;
    use crate::testing::{claim, dhcp_node};
    use crate::wire::NodeId;

    fn t(ms: u64) -> Instant {
        Instant::from_millis(1_000_000 + ms)
    }

    fn scrape(n: &Node) -> String {
        let mut m = metrics::Scrape::new();
        local_metrics(&mut m, n.pools());
        m.render()
    }

    #[test]
    fn local_pools_have_address_gauges_and_counters() {
        let local = PoolConfig {
            name: "hosts".into(),
            range: ManagedRange::new(Ipv4Addr::new(10, 5, 0, 0), 24, 3).unwrap(),
            claim: claim(2, 30, 0, false),
            service: ServiceConfig::Local(LocalConfig {
                iface: "eth0".into(),
                standby: 2,
                min: 0,
                max_standby: 2,
                test_target: None,
                unmanaged: vec![],
                timers: LocalTimers::default(),
            }),
            location: None,
        };
        let mut lan = dhcp_node(
            ManagedRange::new(Ipv4Addr::new(10, 0, 0, 0), 24, 2).unwrap(),
            claim(2, 30, 0, false),
            vec![],
        )
        .pools
        .remove(0);
        lan.name = "lan".into();
        let cfg = NodeConfig {
            pools: vec![lan, local],
            location: None,
            replicas: crate::replica::DEFAULT_REPLICAS,
            recover: false,
            max_replica_lag: crate::replica::DEFAULT_MAX_LAG,
            replica_sync: false,
        };
        let mut n = Node::new(cfg, NodeId([5; 8]), t(0), 3);
        let mut adds = Vec::new();
        for s in 0..=3 {
            n.handle_timeout(t(s * 1000));
            while let Some(o) = n.poll_output() {
                if let Output::Host {
                    action: HostAction::Add { ip, .. },
                    ..
                } = o
                {
                    adds.push(ip);
                }
            }
        }
        assert_eq!(adds.len(), 2);
        n.handle_host(t(3100), 1, HostEvent::Added { ip: adds[0] });
        n.handle_host(
            t(3200),
            1,
            HostEvent::AddFailed {
                ip: adds[1],
                reason: "EEXIST".into(),
            },
        );
        let used = BTreeMap::from([(adds[0], "udp :53".to_string())]);
        n.handle_host(t(3300), 1, HostEvent::InUse(used));
        let text = scrape(&n);
        for line in [
            "# TYPE ddhcp_local_addresses gauge",
            "ddhcp_local_addresses{pool=\"hosts\",state=\"reserved\"} 2",
            "ddhcp_local_addresses{pool=\"hosts\",state=\"standby\"} 0",
            "ddhcp_local_addresses{pool=\"hosts\",state=\"active\"} 1",
            "# TYPE ddhcp_local_added counter",
            "ddhcp_local_added_total{pool=\"hosts\"} 1",
            "ddhcp_local_add_failed_total{pool=\"hosts\"} 1",
            "ddhcp_local_removed_total{pool=\"hosts\"} 0",
            "ddhcp_local_proofs_failed_total{pool=\"hosts\"} 0",
            "ddhcp_local_deleted_by_others_total{pool=\"hosts\"} 0",
            "ddhcp_local_lost_with_block_total{pool=\"hosts\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
        assert!(!text.contains("pool=\"lan\""), "{text}");
        // A node without local pools has none of these families.
        let n = Node::new(
            dhcp_node(
                ManagedRange::new(Ipv4Addr::new(10, 0, 0, 0), 24, 2).unwrap(),
                claim(2, 30, 0, false),
                vec![],
            ),
            NodeId([5; 8]),
            t(0),
            3,
        );
        assert!(!scrape(&n).contains("local"));
    }
}

/// Lag per replica stream (the bound `--max-replica-lag` will act on), and what we hold.
#[cfg(feature = "metrics")]
fn replica_metrics(m: &mut metrics::Scrape, node: &crate::node::Node, now: Instant) {
    let r = node.replication();
    let pools = node.pools();
    let streams = r.streams(now);
    let ids: Vec<String> = streams.iter().map(|s| s.peer.to_string()).collect();
    let row = |i: usize| {
        vec![
            ("pool", pools[streams[i].pool].name()),
            ("peer", ids[i].as_str()),
        ]
    };
    let lag_ms: Vec<_> = (0..streams.len())
        .map(|i| (row(i), streams[i].lag.as_millis() as i64))
        .collect();
    m.gauge_rows(
        "replica_lag_milliseconds",
        "Age of the oldest change a replica holder has not acknowledged, per pool and holder",
        &lag_ms,
    );
    let lag_rec: Vec<_> = (0..streams.len())
        .map(|i| (row(i), streams[i].lag_records as i64))
        .collect();
    m.gauge_rows(
        "replica_lag_records",
        "Changes a replica holder has not acknowledged, per pool and holder",
        &lag_rec,
    );
    let held = r.held(now);
    let origins: Vec<String> = held.iter().map(|h| h.origin.to_string()).collect();
    let held_rows: Vec<_> = held
        .iter()
        .zip(&origins)
        .map(|(h, o)| {
            (
                vec![("pool", pools[h.pool].name()), ("origin", o.as_str())],
                (h.leases + h.allocations) as i64,
            )
        })
        .collect();
    m.gauge_rows(
        "replica_held_bindings",
        "Bindings of other nodes' blocks held here as replicas, per pool and owner",
        &held_rows,
    );
    let st = r.stats();
    m.counter(
        "replica_records_sent",
        "Changes sent to replica holders (first transmissions)",
        st.records_sent,
    );
    m.counter(
        "replica_bytes_sent",
        "Bytes of Replicate messages sent (first transmissions)",
        st.bytes_sent,
    );
    m.counter(
        "replica_retransmits",
        "Replicate messages sent again after a timeout",
        st.retransmits,
    );
}

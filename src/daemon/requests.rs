//! Answers to control requests and metric scrapes, computed from the node's state in the
//! main loop between two packets.

use serde_json::json;
use tracing::{info, warn};

#[cfg(feature = "metrics")]
use super::metrics;
use super::{Daemon, log_filter};
use crate::config::parse_option;
use crate::control::{Request, Response};
use crate::dhcp::options::OptionStore;
#[cfg(feature = "metrics")]
use crate::time::Instant;

fn no_dhcp() -> Response {
    Response::err("no DHCP service (-S)")
}

impl Daemon {
    pub(super) fn answer(&mut self, req: Request) -> Response {
        let now = self.clock.now();
        match req {
            Request::Status => {
                let s = self.node.status(now);
                Response::ok(json!({
                    "node_id": s.node_id.to_string(),
                    "version": env!("CARGO_PKG_VERSION"),
                    "learning": s.learning,
                    "network": s.range.to_string(),
                    "block_size": s.range.block_size(),
                    "blocks_owned": s.blocks_owned,
                    "leases_active": s.leases_active,
                    "peers": s.peers,
                }))
            }
            Request::Blocks => {
                let rows: Vec<_> = self
                    .node
                    .blocks_view(now)
                    .into_iter()
                    .map(|v| {
                        json!({
                            "index": v.index,
                            "first": v.first.to_string(),
                            "state": v.state.as_str(),
                            "owner": v.owner.map(|o| o.to_string()),
                            "expires_in": v.expires_in,
                        })
                    })
                    .collect();
                Response::ok(json!({
                    "node_id": self.node.id().to_string(),
                    "blocks": rows,
                }))
            }
            Request::Stats => {
                let mut counters: serde_json::Map<String, serde_json::Value> = self
                    .node
                    .counters()
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.into()))
                    .collect();
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
            Request::Leases => {
                let Some(d) = self.node.dhcp_mut() else {
                    return no_dhcp();
                };
                let rows: Vec<_> = d
                    .lease_list(now)
                    .into_iter()
                    .map(|(ip, mac, state, expires_in, block)| {
                        json!({"ip": ip.to_string(), "mac": mac, "state": state,
                               "expires_in": expires_in, "block": block})
                    })
                    .collect();
                Response::ok(json!({ "leases": rows }))
            }
            Request::Options => {
                let Some(d) = self.node.dhcp_mut() else {
                    return no_dhcp();
                };
                let opts: Vec<_> = d
                    .store()
                    .iter()
                    .map(|o| json!({"code": o.code, "len": o.payload.len(), "payload": o.payload}))
                    .collect();
                Response::ok(json!({ "options": opts, "lease_time": d.store().lease_time() }))
            }
            Request::SetOption { option } => {
                let Some(d) = self.node.dhcp_mut() else {
                    return no_dhcp();
                };
                let o = match parse_option("set-option", &option) {
                    Ok(o) => o,
                    Err(e) => return Response::err(e.to_string()),
                };
                if let Err(e) = OptionStore::validate(&o) {
                    return Response::err(e);
                }
                info!(code = o.code, "option set");
                d.set_option(o);
                Response::ok(json!({"ok": true}))
            }
            Request::RemoveOption { code } => {
                let Some(d) = self.node.dhcp_mut() else {
                    return no_dhcp();
                };
                if !d.remove_option(code) {
                    return Response::err(format!("option {code} is not set"));
                }
                info!(code, "option removed");
                Response::ok(json!({"ok": true}))
            }
            Request::LeaseTime { secs } => {
                let Some(d) = self.node.dhcp_mut() else {
                    return no_dhcp();
                };
                if secs == 0 {
                    return Response::err("a lease time of 0 seconds makes no sense");
                }
                d.set_option(crate::config::DhcpOption {
                    code: crate::dhcp::options::LEASE_TIME,
                    payload: secs.to_be_bytes().to_vec(),
                });
                info!(secs, "lease time set");
                Response::ok(json!({"ok": true}))
            }
            #[cfg(feature = "metrics")]
            Request::Metrics => Response::ok(json!({ "text": self.metrics_text(now) })),
            #[cfg(not(feature = "metrics"))]
            Request::Metrics => Response::err("this ddhcpd was built without the metrics feature"),
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
        }
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
            ],
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
        let d = self
            .node
            .dhcp()
            .map(|d| d.counters.clone())
            .unwrap_or_default();
        let names = [
            "", "discover", "offer", "request", "decline", "ack", "nak", "release", "inform",
        ];
        let by_type = |v: &[u64; 9]| -> Vec<(&str, u64)> {
            names.iter().zip(v).skip(1).map(|(n, c)| (*n, *c)).collect()
        };
        m.counters(
            "dhcp_packets_received",
            "DHCP messages received, by type",
            "type",
            &by_type(&d.recv),
        );
        m.counters(
            "dhcp_packets_sent",
            "DHCP messages sent, by type",
            "type",
            &by_type(&d.sent),
        );
        m.counters(
            "drops",
            "Datagrams or entries dropped, by reason",
            "reason",
            &[
                ("peer_malformed", g(C::DropMalformed)),
                ("peer_foreign_swarm", g(C::DropForeignSwarm)),
                ("peer_wrong_socket", g(C::DropWrongSocket)),
                ("peer_invalid_block_entry", g(C::DropInvalidBlock)),
                ("peer_unhandled", g(C::DropUnhandled)),
                ("dhcp_malformed", d.malformed),
                ("dhcp_other_server", d.ignored_other_server),
                ("dhcp_no_free_address", d.no_free_address),
                ("dhcp_unknown_block_while_learning", d.silent_unknown_block),
                ("dhcp_forward_queue_full", d.forward_dropped),
            ],
        );
        m.counters(
            "roaming_forwards",
            "Requests forwarded to a block's owner, by outcome",
            "outcome",
            &[
                ("sent", d.forwarded),
                ("ack", d.forward_acked),
                ("nak", d.forward_naked),
                ("timeout", d.forward_timeouts),
            ],
        );
        m.counters(
            "roaming_renewals",
            "Forwarded renewals answered as owner, by outcome",
            "outcome",
            &[
                ("ack", d.renew_acked),
                ("nak", d.renew_naked),
                ("unresolved", d.renew_unresolved),
            ],
        );
        let (probes, learned) = self
            .node
            .dhcp()
            .map_or((0, 0), |d| (d.orders.probes_sent, d.orders.learned));
        m.counters(
            "renew_byte_order",
            "Probes of a peer's renew address byte order, and orders learned",
            "event",
            &[("probe", probes), ("learned", learned)],
        );
        m.counter(
            "inquiry_answers_suppressed",
            "Answers to Inquires or weaker claims not sent: the answer budget was spent",
            self.node.blocks().answers_suppressed,
        );
        m.counter(
            "claim_rounds",
            "Inquire rounds sent",
            g(C::McastSendInquire),
        );
        m.counters(
            "block_events",
            "Blocks claimed, given up, or lost to a greater id (conflicts)",
            "event",
            &[
                ("claimed", g(C::BlocksClaimed)),
                ("dropped", g(C::BlocksDropped)),
                ("lost", g(C::BlocksLost)),
            ],
        );
        m.counter(
            "duplicate_node_id",
            "Messages seen with our own node id",
            g(C::DuplicateNodeId),
        );
        let mut states = [0i64; 4];
        for v in self.node.blocks_view(now) {
            states[v.state as usize] += 1;
        }
        let owned_total = self.node.blocks().range().num_blocks() as i64;
        m.gauges(
            "blocks",
            "Blocks by state",
            "state",
            &[
                ("tentative", states[0]),
                ("claiming", states[1]),
                ("ours", states[2]),
                ("claimed", states[3]),
                ("free", owned_total - states.iter().sum::<i64>()),
            ],
        );
        let (offered, leased) = self.node.dhcp().map_or((0, 0), |d| {
            (d.leases.offered() as i64, d.leases.active() as i64)
        });
        m.gauges(
            "leases",
            "Addresses by state",
            "state",
            &[("offered", offered), ("leased", leased)],
        );
        let st = self.node.status(now);
        m.gauge(
            "peers",
            "Peers heard within two block timeouts",
            st.peers as i64,
        );
        m.gauge(
            "learning",
            "1 during the learning phase",
            i64::from(st.learning),
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

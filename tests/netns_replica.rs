//! Replication between real `ddhcpd` processes (docs/replication.md): three nodes on one
//! server link, real DHCP clients on node 0. Its leases reach both other nodes (with
//! `--replicas 2` each holds every block of node 0) and are acknowledged; a release
//! reaches them too; after `kill -9` of node 0 the holders still hold its bindings.
//! Needs root (skips loudly otherwise, fails under CI=true).

#![allow(clippy::disallowed_methods)] // tests of real processes wait on real clocks

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::daemon::{
    assert_all_alive, ctl_json_ok, ctl_ok, must_lease, new_net, parse_metrics, serial, start_node,
    wait_serving,
};
use common::netns::{require_netns, wait_until};

/// `ddhcpctl metrics` of node i, parsed.
fn metrics(net: &common::netns::TestNet, i: usize) -> (BTreeMap<String, f64>, String) {
    let text = ctl_ok(net, i, &["metrics"]);
    (parse_metrics(&text), text)
}

/// The sum of series `name` whose labels contain `label`.
fn sum(m: &BTreeMap<String, f64>, name: &str, label: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| k.starts_with(&format!("{name}{{")) && k.contains(label))
        .map(|(_, v)| v)
        .sum()
}

fn count(m: &BTreeMap<String, f64>, name: &str) -> usize {
    m.keys()
        .filter(|k| k.starts_with(&format!("{name}{{")))
        .count()
}

#[test]
fn leases_reach_their_replica_holders_and_outlive_the_owner() {
    if !require_netns("leases_reach_their_replica_holders_and_outlive_the_owner") {
        return;
    }
    let _serial = serial();
    let mut net = new_net(3, 2);
    for i in 0..3 {
        start_node(&mut net, i, &[]);
    }
    for i in 0..3 {
        wait_serving(&mut net, i, 1);
    }
    for k in 0..2 {
        net.clt_start_k(0, k, "udhcpc");
    }
    for k in 0..2 {
        must_lease(&net, 0, k);
    }
    let owner = ctl_json_ok(&net, 0, &["status"])["node_id"]
        .as_str()
        .unwrap()
        .to_string();
    let origin = format!("origin=\"{owner}\"");

    // Both other nodes hold node 0's two leases, and node 0 has nothing unacknowledged.
    let mut last = String::new();
    let replicated = wait_until(Duration::from_secs(20), || {
        let (m0, t0) = metrics(&net, 0);
        let (m1, _) = metrics(&net, 1);
        let (m2, _) = metrics(&net, 2);
        last = t0;
        count(&m0, "ddhcp_replica_lag_records") == 2
            && sum(&m0, "ddhcp_replica_lag_records", "") == 0.0
            && sum(&m1, "ddhcp_replica_held_bindings", &origin) == 2.0
            && sum(&m2, "ddhcp_replica_held_bindings", &origin) == 2.0
    });
    if !replicated {
        net.dump_logs();
    }
    assert!(
        replicated,
        "node 0's leases never reached both holders:\n{last}"
    );
    let (m0, text) = metrics(&net, 0);
    assert!(
        sum(&m0, "ddhcp_peer_packets_sent_total", "type=\"replicate\"") >= 1.0,
        "{text}"
    );
    assert!(m0["ddhcp_replica_records_sent_total"] >= 4.0, "{text}");

    // A release reaches the holders.
    net.clt_stop_k(0, 1);
    let released = wait_until(Duration::from_secs(20), || {
        let (m1, _) = metrics(&net, 1);
        let (m2, _) = metrics(&net, 2);
        sum(&m1, "ddhcp_replica_held_bindings", &origin) == 1.0
            && sum(&m2, "ddhcp_replica_held_bindings", &origin) == 1.0
    });
    assert!(released, "the release never reached the holders");

    // The owner dies; what it replicated stays with the holders.
    net.kill_daemon(0, "KILL");
    std::thread::sleep(Duration::from_secs(3));
    for i in 1..3 {
        let (m, text) = metrics(&net, i);
        assert_eq!(
            sum(&m, "ddhcp_replica_held_bindings", &origin),
            1.0,
            "node {i}:\n{text}"
        );
    }
    net.clt_stop_k(0, 0);
    for i in 1..3 {
        common::daemon::assert_alive(&mut net, i);
    }
    let _ = assert_all_alive;
}

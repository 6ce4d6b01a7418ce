//! `--audit-log` of a real `ddhcpd`, with real DHCP clients in network namespaces: one
//! valid JSON line per lease, release, decline and expiry, in order, with RFC 3339 UTC
//! times and the node id, matching `ddhcpctl leases`, hostile hostnames included; declines
//! and expiries reach the `-H` hook as well.
//! Needs root (skips loudly otherwise, fails under CI=true).
//!
//! The tests of this file run one at a time.

#![allow(clippy::disallowed_methods)] // tests of real processes wait on real clocks

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::daemon::{
    assert_alive, ctl_json_ok, ctl_ok, logging_hook, must_lease, new_net, serial, start_node,
    wait_serving,
};
use common::netns::{require_netns, wait_until};
use serde_json::Value;

fn is_rfc3339_utc(t: &str) -> bool {
    // YYYY-MM-DDTHH:MM:SS[.fff…]Z
    let b = t.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| r.clone().all(|i| b.get(i).is_some_and(u8::is_ascii_digit));
    b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[b.len() - 1] == b'Z'
        && (b.len() == 20 || (b[19] == b'.' && b.len() > 21 && digits(20..b.len() - 1)))
}

// ------------------------------------------------------------------------ tests ---

#[test]
fn decline_and_expire_reach_hook_and_audit() {
    if !require_netns("decline_and_expire_reach_hook_and_audit") {
        return;
    }
    let _serial = serial();
    let t0 = Instant::now();
    // Client 0.1 holds address A statically; client 0.2 asks for A and checks it by ARP
    // (udhcpc -a), finds it in use and declines it. Client 0.0 takes a 2 s lease and dies
    // without releasing, so its lease expires.
    let mut net = new_net(1, 3);
    let log = net.state_dir.join("hook.log");
    let audit = net.state_dir.join("audit.jsonl");
    let hook = logging_hook(&net, "event-hook", &log, "");
    start_node(
        &mut net,
        0,
        &[
            "-H",
            hook.to_str().unwrap(),
            "--audit-log",
            audit.to_str().unwrap(),
        ],
    );
    wait_serving(&mut net, 0, 1);
    let read = || fs::read_to_string(&log).unwrap_or_default();
    let has = |line: &str| read().lines().any(|l| l == line);

    // A: a free address in a block we own.
    let blocks = ctl_json_ok(&net, 0, &["blocks"]);
    let first = blocks["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["state"] == "ours")
        .map(|b| b["first"].as_str().unwrap().parse::<Ipv4Addr>().unwrap())
        .expect("no block owned");
    let a = Ipv4Addr::from(u32::from(first) + 2).to_string();
    let out = net.exec_client_ns_k(
        0,
        1,
        &["ip", "addr", "add", &format!("{a}/16"), "dev", "eth0"],
    );
    assert!(out.status.success(), "{out:?}");
    let mac2 = net.client_mac_k(0, 2);
    net.clt_start_args_k(0, 2, "udhcpc", &["-a", "-r", &a]);
    let decline_line = format!("decline {a} {mac2}");
    let declined = wait_until(Duration::from_secs(15), || has(&decline_line));
    if !declined {
        net.dump_logs();
        panic!(
            "no '{decline_line}' in the hook log after 15 s:\n{}\nclient 0.2 log:\n{}",
            read(),
            net.client_log_k(0, 2)
        );
    }
    let b = must_lease(&net, 0, 2);
    assert_ne!(b, a, "client 0.2 got the declined address again");
    let leased_a: Vec<(String, String)> = ctl_json_ok(&net, 0, &["leases"])["leases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["ip"] == a.as_str())
        .map(|l| (l["mac"].to_string(), l["state"].to_string()))
        .collect();
    assert!(leased_a.is_empty(), "declined {a} listed: {leased_a:?}");
    eprintln!("client 0.2 declined {a} and got {b}");

    // Expiry: a 2 s lease (the record runs 10 s longer) and a client that vanishes.
    assert_eq!(ctl_ok(&net, 0, &["lease-time", "2"]).trim(), "ok");
    net.clt_start_k(0, 0, "udhcpc");
    let c = must_lease(&net, 0, 0);
    let mac0 = net.client_mac_k(0, 0);
    net.clt_stop_keep_k(0, 0);
    let expire_line = format!("expire {c} {mac0}");
    let expired = wait_until(Duration::from_secs(25), || has(&expire_line));
    assert!(expired, "no '{expire_line}' after 25 s:\n{}", read());
    eprintln!("client 0.0's 2 s lease of {c} expired");

    let text = read();
    eprintln!("hook log:\n{text}");
    let lines: Vec<&str> = text.lines().collect();
    let pos = |line: &str| {
        lines
            .iter()
            .position(|l| *l == line)
            .unwrap_or_else(|| panic!("no '{line}' in the hook log"))
    };
    assert!(pos(&format!("lease {a} {mac2}")) < pos(&decline_line));
    assert!(pos(&decline_line) < pos(&format!("lease {b} {mac2}")));
    assert!(pos(&format!("lease {c} {mac0}")) < pos(&expire_line));

    let atext = fs::read_to_string(&audit).unwrap_or_default();
    eprintln!("audit log:\n{atext}");
    let records: Vec<Value> = atext
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line ({e}): {l}")))
        .collect();
    let find = |kind: &str, ip: &str, mac: &str| {
        records
            .iter()
            .position(|r| r["kind"] == kind && r["ip"] == ip && r["mac"] == mac)
            .unwrap_or_else(|| panic!("no {kind} record for {ip} {mac} in the audit log"))
    };
    assert!(find("lease", &a, &mac2) < find("decline", &a, &mac2));
    let lease_c = find("lease", &c, &mac0);
    assert_eq!(records[lease_c]["lease_seconds"], 2, "{}", records[lease_c]);
    assert!(lease_c < find("expire", &c, &mac0));
    assert_eq!(
        records.iter().filter(|r| r["kind"] == "decline").count(),
        1,
        "decline records"
    );
    assert_eq!(
        records.iter().filter(|r| r["kind"] == "expire").count(),
        1,
        "expire records"
    );
    assert_alive(&mut net, 0);
    eprintln!(
        "decline_and_expire_reach_hook_and_audit took {:?}",
        t0.elapsed()
    );
}

#[test]
fn audit_log_matches_leases() {
    if !require_netns("audit_log_matches_leases") {
        return;
    }
    let _serial = serial();
    let t0 = Instant::now();
    let mut net = new_net(1, 4);
    let audit = net.state_dir.join("audit.jsonl");
    start_node(&mut net, 0, &["--audit-log", audit.to_str().unwrap()]);
    wait_serving(&mut net, 0, 1);
    // Clients 0-2 plain; client 3 sends a hostname with characters JSON must escape.
    let evil = r#"evil"na\me;$(x)"#;
    let hostname_opt = format!("hostname:{evil}");
    for k in 0..3 {
        net.clt_start_k(0, k, "udhcpc");
    }
    net.clt_start_args_k(0, 3, "udhcpc", &["-x", &hostname_opt]);
    let mut clients: BTreeMap<usize, (String, String)> = BTreeMap::new();
    for k in 0..4 {
        clients.insert(k, (must_lease(&net, 0, k), net.client_mac_k(0, k)));
    }
    let expected: BTreeSet<(String, String)> = clients.values().cloned().collect();
    let listed: BTreeSet<(String, String)> = ctl_json_ok(&net, 0, &["leases"])["leases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["state"] == "leased")
        .map(|l| {
            (
                l["ip"].as_str().unwrap().to_string(),
                l["mac"].as_str().unwrap().to_lowercase(),
            )
        })
        .collect();
    assert_eq!(listed, expected, "ddhcpctl leases vs what the clients hold");
    let (rel_ip, rel_mac) = clients[&1].clone();
    net.clt_stop_k(0, 1);
    let read = || fs::read_to_string(&audit).unwrap_or_default();
    let released = wait_until(Duration::from_secs(10), || {
        read().contains("\"kind\":\"release\"")
    });
    let text = read();
    assert!(released, "no release record after 10 s:\n{text}");
    eprintln!("audit log:\n{text}");

    let node_id = ctl_json_ok(&net, 0, &["status"])["node_id"]
        .as_str()
        .unwrap()
        .to_string();
    let records: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line ({e}): {l}")))
        .collect();
    assert!(text.ends_with('\n'));
    let mut last_time = String::new();
    for r in &records {
        let time = r["time"].as_str().unwrap_or_else(|| panic!("no time: {r}"));
        assert!(is_rfc3339_utc(time), "time not RFC 3339 UTC: {r}");
        assert!(time >= last_time.as_str(), "time went backwards at {r}");
        last_time = time.to_string();
        assert_eq!(r["node_id"], node_id.as_str(), "{r}");
        let kind = r["kind"].as_str().unwrap();
        assert!(["lease", "release"].contains(&kind), "unexpected kind: {r}");
        let mac = r["mac"].as_str().unwrap();
        assert_eq!(mac, mac.to_lowercase(), "{r}");
    }
    // A record made within the last minutes, by the wall clock.
    let now = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M"])
        .output()
        .unwrap();
    let now = String::from_utf8_lossy(&now.stdout).trim().to_string();
    assert!(
        last_time[..10] == now[..10],
        "last record at {last_time}, now {now}"
    );
    let leases: Vec<&Value> = records.iter().filter(|r| r["kind"] == "lease").collect();
    let lease_pairs: BTreeSet<(String, String)> = leases
        .iter()
        .map(|r| {
            (
                r["ip"].as_str().unwrap().to_string(),
                r["mac"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(lease_pairs, expected, "lease records vs client leases");
    for r in &leases {
        assert_eq!(r["lease_seconds"], 300, "{r}");
        assert!(r.get("forwarded").is_none(), "not roamed: {r}");
        // udhcpc sends option 61 = 01 + MAC.
        let want_id = format!("01{}", r["mac"].as_str().unwrap().replace(':', ""));
        assert_eq!(r["client_id"], want_id.as_str(), "{r}");
    }
    let releases: Vec<&Value> = records.iter().filter(|r| r["kind"] == "release").collect();
    assert_eq!(releases.len(), 1, "release records: {releases:?}");
    assert_eq!(releases[0]["ip"], rel_ip.as_str());
    assert_eq!(releases[0]["mac"], rel_mac.as_str());
    assert!(
        releases[0].get("lease_seconds").is_none(),
        "{}",
        releases[0]
    );
    let release_line = text
        .lines()
        .position(|l| l.contains("\"kind\":\"release\""))
        .unwrap();
    let lease_line = text
        .lines()
        .position(|l| l.contains("\"kind\":\"lease\"") && l.contains(&format!("\"{rel_ip}\"")))
        .unwrap();
    assert!(lease_line < release_line, "release before lease");

    // The hostile hostname: escaped in the file, exact after parsing, only on client 3.
    let (ip3, mac3) = &clients[&3];
    for r in &leases {
        if r["ip"] == ip3.as_str() {
            assert_eq!(r["mac"], mac3.as_str());
            assert_eq!(r["hostname"], evil, "hostname of client 3: {r}");
        } else {
            assert!(
                r.get("hostname").is_none(),
                "hostname on another client: {r}"
            );
        }
    }
    assert!(
        text.contains(r#""hostname":"evil\"na\\me;$(x)""#),
        "hostname not JSON-escaped as expected:\n{text}"
    );
    assert_alive(&mut net, 0);
    eprintln!("audit_log_matches_leases took {:?}", t0.elapsed());
}

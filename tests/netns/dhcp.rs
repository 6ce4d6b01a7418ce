//! Real DHCP clients (busybox udhcpc, ISC dhclient, dhcpcd) against real `ddhcpd`
//! processes in network namespaces: every client gets an address from the blocks of the
//! node on its link, the address is configured and reachable; a client that roams to
//! another node keeps its address (the node forwards the renewal to the block's owner);
//! a RELEASE frees the address; 60 clients on two nodes get 60 distinct addresses.
//! Needs root (skips loudly otherwise, fails under CI=true).
//!
//! The tests of this file run one at a time (they share two CPU cores with everything
//! else, and the 60-client test is timing-sensitive).

#![allow(clippy::disallowed_methods)] // tests of real processes wait on real clocks

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::thread;
use std::time::{Duration, Instant};

use common::daemon::{
    assert_all_alive, counter, ctl_json_ok, must_lease, new_net, poll_serving, serial, start_node,
};
use common::netns::{TestNet, require_netns, wait_until};

/// Starts ddhcpd on daemon host i with 10.0.0.1 as router and `-s spare` (see
/// [`start_node`] for the rest).
fn start_daemon(net: &mut TestNet, i: usize, spare: u32) {
    let spare = spare.to_string();
    start_node(net, i, &["-s", &spare, "-o", "3:4:10.0.0.1"]);
}

/// Starts every daemon and waits until each one serves: out of learning, owning a block.
fn start_daemons(net: &mut TestNet, spare: u32) {
    for i in 0..net.n {
        start_daemon(net, i, spare);
    }
    for i in 0..net.n {
        let (ok, last) = poll_serving(net, i, 1);
        assert!(ok, "daemon {i} does not serve after 20 s: {last:?}");
    }
}

/// `(ip, mac, state)` of every entry of daemon i's `leases`.
fn leases(net: &TestNet, i: usize) -> Vec<(String, String, String)> {
    let v = ctl_json_ok(net, i, &["leases"]);
    v["leases"]
        .as_array()
        .unwrap_or_else(|| panic!("node {i}: no leases array in {v}"))
        .iter()
        .map(|l| {
            (
                l["ip"].as_str().unwrap_or_default().to_string(),
                l["mac"].as_str().unwrap_or_default().to_lowercase(),
                l["state"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Daemons that list `ip` as leased, with the MAC they list.
fn leased_by(net: &TestNet, ip: &str) -> Vec<(usize, String)> {
    (0..net.n)
        .flat_map(|i| {
            leases(net, i)
                .into_iter()
                .filter(|(a, _, st)| a == ip && st == "leased")
                .map(move |(_, mac, _)| (i, mac))
        })
        .collect()
}

fn leases_active(net: &TestNet, i: usize) -> u64 {
    let v = ctl_json_ok(net, i, &["status"]);
    v["leases_active"]
        .as_u64()
        .unwrap_or_else(|| panic!("node {i}: no leases_active in {v}"))
}

fn in_range(ip: &str) -> bool {
    ip.parse::<Ipv4Addr>()
        .is_ok_and(|a| a.octets()[..3] == [10, 0, 128])
}

/// Pings 10.0.0.1 (the node's client0) from client (i, k); a few tries for ARP.
fn can_ping_node(net: &TestNet, i: usize, k: usize) -> Result<(), String> {
    let mut last = String::new();
    for _ in 0..5 {
        let out =
            net.exec_client_ns_k(i, k, &["busybox", "ping", "-c", "1", "-W", "2", "10.0.0.1"]);
        if out.status.success() {
            return Ok(());
        }
        last = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Err(last)
}

/// The lease client (i, k) recorded, checked against everything else: inside the range,
/// leased to its MAC by node `owner` and by nobody else, configured on its eth0.
fn check_lease(net: &TestNet, i: usize, k: usize, owner: usize) -> String {
    let ip = must_lease(net, i, k);
    let mac = net.client_mac_k(i, k);
    assert!(
        in_range(&ip),
        "client {i}.{k}: {ip} is not in 10.0.128.0/24"
    );
    let by = leased_by(net, &ip);
    assert_eq!(
        by,
        vec![(owner, mac.clone())],
        "client {i}.{k} ({mac}) recorded {ip}; daemons listing it as leased (node, mac)"
    );
    let addrs = net.client_addrs_k(i, k);
    assert!(
        addrs.contains(&ip),
        "client {i}.{k}: {ip} not configured on eth0 (has {addrs:?})"
    );
    ip
}

#[test]
fn udhcpc_dhclient_dhcpcd_get_leases() {
    if !require_netns("udhcpc_dhclient_dhcpcd_get_leases") {
        return;
    }
    let _serial = serial();
    let t0 = Instant::now();
    // Two nodes with three client hosts each; every kind of client on every node.
    let kinds = ["udhcpc", "dhclient", "dhcpcd"];
    let mut net = new_net(2, 3);
    start_daemons(&mut net, 4);
    for i in 0..2 {
        for k in 0..3 {
            net.clt_start_k(i, k, kinds[(i + k) % 3]);
        }
    }
    let mut all = BTreeSet::new();
    for i in 0..2 {
        for k in 0..3 {
            let kind = kinds[(i + k) % 3];
            let ip = check_lease(&net, i, k, i);
            if let Err(e) = can_ping_node(&net, i, k) {
                panic!("client {i}.{k} ({kind}, {ip}) cannot ping 10.0.0.1: {e}");
            }
            eprintln!("client {i}.{k} ({kind}): {ip}, reaches 10.0.0.1");
            assert!(all.insert(ip.clone()), "{ip} handed out twice");
        }
    }
    assert_all_alive(&mut net);
    eprintln!("udhcpc_dhclient_dhcpcd_get_leases took {:?}", t0.elapsed());
}

#[test]
fn roaming_client_keeps_its_address() {
    if !require_netns("roaming_client_keeps_its_address") {
        return;
    }
    let _serial = serial();
    let t0 = Instant::now();
    // Client 0.0 runs udhcpc, client 0.1 dhclient; both start on node 0's link.
    let mut net = new_net(2, 2);
    start_daemons(&mut net, 4);
    net.clt_start_k(0, 0, "udhcpc");
    net.clt_start_k(0, 1, "dhclient");
    let ip = check_lease(&net, 0, 0, 0);
    let ip_dh = check_lease(&net, 0, 1, 0);
    eprintln!("before roaming: udhcpc {ip}, dhclient {ip_dh} (both from node 0)");

    // udhcpc: move to node 1's link and renew at once (SIGUSR1). The renewal is a
    // unicast REQUEST to 10.0.0.1, which node 1 now answers after asking node 0.
    let obtained = format!("lease of {ip} obtained");
    let before_log = net.client_log_k(0, 0).matches(&obtained).count();
    let before_hist = net.lease_history_k(0, 0).matches(" renew ").count();
    net.roam_k(0, 0, 1);
    net.clt_renew_k(0, 0);
    let renewed = wait_until(Duration::from_secs(15), || {
        net.lease_history_k(0, 0).matches(" renew ").count() > before_hist
    });
    assert!(
        renewed,
        "udhcpc did not renew within 15 s after roaming to node 1; its log:\n{}",
        net.client_log_k(0, 0)
    );
    assert!(
        net.client_log_k(0, 0).matches(&obtained).count() > before_log,
        "udhcpc's log shows no renewal of {ip}:\n{}",
        net.client_log_k(0, 0)
    );
    assert_eq!(
        net.lease_of_k(0, 0).as_deref(),
        Some(ip.as_str()),
        "udhcpc's address changed on roaming"
    );
    assert!(
        net.client_addrs_k(0, 0).contains(&ip),
        "{ip} no longer configured on client 0.0"
    );
    // Still leased by the owner (node 0), to the same MAC; node 1 holds no record of it.
    let mac = net.client_mac_k(0, 0);
    assert_eq!(leased_by(&net, &ip), vec![(0, mac)]);
    assert!(
        counter(&net, 1, "direct.send_renewlease") >= 1,
        "node 1 did not forward the renewal"
    );
    assert!(
        counter(&net, 1, "direct.recv_leaseack") >= 1,
        "node 1 got no LeaseAck"
    );
    assert!(
        counter(&net, 0, "direct.recv_renewlease") >= 1,
        "node 0 got no RenewLease"
    );
    assert!(
        counter(&net, 0, "direct.send_leaseack") >= 1,
        "node 0 sent no LeaseAck"
    );
    if let Err(e) = can_ping_node(&net, 0, 0) {
        panic!("client 0.0 cannot ping 10.0.0.1 (node 1) after roaming: {e}");
    }
    eprintln!(
        "udhcpc roamed to node 1 and kept {ip} ({:?} so far)",
        t0.elapsed()
    );

    // dhclient renews only at T1: move it, stop it without releasing and start it
    // again. It does INIT-REBOOT: a broadcast REQUEST for its old address on the new
    // link, which node 1 must also ACK through node 0.
    let acks_before = counter(&net, 1, "direct.recv_leaseack");
    net.roam_k(0, 1, 1);
    net.clt_stop_keep_k(0, 1);
    net.clt_start_k(0, 1, "dhclient");
    let again = must_lease(&net, 0, 1);
    assert_eq!(
        again,
        ip_dh,
        "dhclient's address changed on roaming; its log:\n{}",
        net.client_log_k(0, 1)
    );
    let hist = net.lease_history_k(0, 1);
    assert!(
        hist.lines()
            .last()
            .is_some_and(|l| l.contains(" REBOOT ip=")),
        "dhclient did not INIT-REBOOT on node 1's link; hook history:\n{hist}"
    );
    assert!(
        counter(&net, 1, "direct.recv_leaseack") > acks_before,
        "node 1 did not get a LeaseAck for dhclient's INIT-REBOOT"
    );
    assert!(net.client_addrs_k(0, 1).contains(&ip_dh));
    let mac = net.client_mac_k(0, 1);
    assert_eq!(leased_by(&net, &ip_dh), vec![(0, mac)]);
    if let Err(e) = can_ping_node(&net, 0, 1) {
        panic!("client 0.1 cannot ping 10.0.0.1 (node 1) after roaming: {e}");
    }
    eprintln!("dhclient roamed to node 1 and kept {ip_dh}");
    assert_all_alive(&mut net);
    eprintln!("roaming_client_keeps_its_address took {:?}", t0.elapsed());
}

#[test]
fn release_frees_the_address() {
    if !require_netns("release_frees_the_address") {
        return;
    }
    let _serial = serial();
    let t0 = Instant::now();
    // One node, three clients: every kind releases on clt-stop.
    let kinds = ["udhcpc", "dhclient", "dhcpcd"];
    let mut net = new_net(1, 3);
    start_daemons(&mut net, 4);
    for (k, kind) in kinds.iter().enumerate() {
        net.clt_start_k(0, k, kind);
    }
    let ips: Vec<String> = (0..3).map(|k| check_lease(&net, 0, k, 0)).collect();
    let mut active = leases_active(&net, 0);
    assert_eq!(active, 3, "leases_active with three clients");
    for (k, kind) in kinds.iter().enumerate() {
        let ip = &ips[k];
        net.clt_stop_k(0, k);
        let mut listed = Vec::new();
        let freed = wait_until(Duration::from_secs(10), || {
            listed = leases(&net, 0)
                .into_iter()
                .filter(|(a, _, st)| a == ip && st == "leased")
                .collect();
            listed.is_empty()
        });
        assert!(
            freed,
            "{kind} released {ip}, still leased 10 s later: {listed:?}; client log:\n{}",
            net.client_log_k(0, k)
        );
        let now = leases_active(&net, 0);
        assert!(
            now < active,
            "leases_active did not drop after {kind}'s release ({active} -> {now})"
        );
        active = now;
        eprintln!("{kind} released {ip}; leases_active now {active}");
    }
    assert_eq!(active, 0);
    assert_all_alive(&mut net);
    eprintln!("release_frees_the_address took {:?}", t0.elapsed());
}

#[test]
fn sixty_clients_two_nodes_no_duplicates() {
    if !require_netns("sixty_clients_two_nodes_no_duplicates") {
        return;
    }
    let _serial = serial();
    const PER_NODE: usize = 30;
    let t0 = Instant::now();
    let mut net = new_net(2, PER_NODE);
    eprintln!(
        "net of 2 nodes and 60 client hosts made in {:?}",
        t0.elapsed()
    );
    start_daemons(&mut net, 8);
    let started = Instant::now();
    // clt-start waits half a second each: start ten at a time.
    let clients = net.clients();
    thread::scope(|s| {
        for chunk in clients.chunks(clients.len().div_ceil(10)) {
            let net = &net;
            s.spawn(move || {
                for &(i, k) in chunk {
                    net.clt_start_k(i, k, "udhcpc");
                }
            });
        }
    });
    eprintln!("60 udhcpc started in {:?}", started.elapsed());
    let all_leased = wait_until(Duration::from_secs(90), || {
        clients.iter().all(|&(i, k)| net.lease_of_k(i, k).is_some())
    });
    let took = started.elapsed();
    let missing: Vec<String> = clients
        .iter()
        .filter(|&&(i, k)| net.lease_of_k(i, k).is_none())
        .map(|&(i, k)| format!("{i}.{k}"))
        .collect();
    assert!(
        all_leased,
        "after {took:?} clients without a lease: {missing:?}; node status: {:?} / {:?}",
        net.ctl_json(0, &["status"]),
        net.ctl_json(1, &["status"])
    );
    eprintln!("all 60 clients leased {took:?} after the first client started");

    // Distinct, in range, leased by the client's own node to its MAC and by nobody else.
    let tables: Vec<Vec<(String, String, String)>> = (0..2).map(|i| leases(&net, i)).collect();
    let leased: Vec<BTreeMap<String, String>> = tables
        .iter()
        .map(|t| {
            t.iter()
                .filter(|(_, _, st)| st == "leased")
                .map(|(ip, mac, _)| (ip.clone(), mac.clone()))
                .collect()
        })
        .collect();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for &(i, k) in &clients {
        let ip = net.lease_of_k(i, k).unwrap();
        let mac = net.client_mac_k(i, k);
        assert!(in_range(&ip), "client {i}.{k}: {ip} outside 10.0.128.0/24");
        if let Some(other) = seen.insert(ip.clone(), format!("{i}.{k}")) {
            panic!("{ip} held by clients {other} and {i}.{k}");
        }
        let holders: Vec<(usize, &String)> = (0..2)
            .filter_map(|n| leased[n].get(&ip).map(|m| (n, m)))
            .collect();
        assert_eq!(
            holders,
            vec![(i, &mac)],
            "client {i}.{k} ({mac}) holds {ip}; daemons leasing it (node, mac)"
        );
    }
    let set0: BTreeSet<&String> = leased[0].keys().collect();
    let set1: BTreeSet<&String> = leased[1].keys().collect();
    assert!(
        set0.is_disjoint(&set1),
        "both nodes lease {:?}",
        set0.intersection(&set1).collect::<Vec<_>>()
    );
    assert_eq!(
        set0.len() + set1.len(),
        60,
        "leased entries: node 0 {set0:?}, node 1 {set1:?}"
    );
    for i in 0..2 {
        let st = net.ctl_json(i, &["status"]).unwrap();
        eprintln!(
            "node {i}: {} blocks owned, {} leases active",
            st["blocks_owned"], st["leases_active"]
        );
    }
    assert_all_alive(&mut net);
    eprintln!(
        "sixty_clients_two_nodes_no_duplicates took {:?}",
        t0.elapsed()
    );
}

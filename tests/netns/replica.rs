//! Replication between real `ddhcpd` processes (docs/replication.md): three nodes on one
//! server link, real DHCP clients on node 0. Its leases reach both other nodes (with
//! `--replicas 2` each holds every block of node 0) and are acknowledged; a release
//! reaches them too; after `kill -9` of node 0 the holders still hold its bindings.
//! Needs root (skips loudly otherwise, fails under CI=true).

#![allow(clippy::disallowed_methods)] // tests of real processes wait on real clocks

use crate::common;

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
    // A holder that crashes too comes back with what it held, from its own store: the
    // owner is gone, so nobody could send it again.
    net.kill9(1);
    start_node(&mut net, 1, &[]);
    let mut last = String::new();
    let restored = wait_until(Duration::from_secs(10), || {
        net.ctl_json(1, &["status"]).is_ok() && {
            let (m, text) = metrics(&net, 1);
            last = text;
            sum(&m, "ddhcp_replica_held_bindings", &origin) == 1.0
        }
    });
    if !restored {
        net.dump_logs();
    }
    assert!(
        restored,
        "node 1 lost node 0's lease with its own restart:\n{last}"
    );
    net.clt_stop_k(0, 0);
    for i in 1..3 {
        common::daemon::assert_alive(&mut net, i);
    }
    let _ = assert_all_alive;
}

const VMS: &str = "vms=10.2.0.0/22,use=api,block=4,cooldown=3,spare=4";

/// `(ip, holder)` of every binding node i lists: leased or offered addresses with their MAC,
/// allocations with their owner.
fn bindings(net: &common::netns::TestNet, i: usize) -> Vec<(String, String)> {
    let mut v = Vec::new();
    // A node starting up does not answer yet: it binds nothing either.
    let Ok(l) = net.ctl_json(i, &["leases"]) else {
        return v;
    };
    for r in l["leases"].as_array().cloned().unwrap_or_default() {
        if r["state"] == "leased" {
            v.push((
                r["ip"].as_str().unwrap_or_default().to_string(),
                r["mac"].as_str().unwrap_or_default().to_lowercase(),
            ));
        }
    }
    let Ok(a) = net.ctl_json(i, &["allocations", "--pool", "vms"]) else {
        return v;
    };
    for r in a["allocations"].as_array().cloned().unwrap_or_default() {
        v.push((
            r["ip"].as_str().unwrap_or_default().to_string(),
            r["owner"].as_str().unwrap_or_default().to_string(),
        ));
    }
    v
}

/// Every binding of the running nodes, by address; panics if an address is bound to two
/// clients (or owners) at once. Called at every poll of the test: over the whole run.
fn no_double_binding(
    net: &common::netns::TestNet,
    alive: &[usize],
    when: &str,
) -> BTreeMap<String, (String, usize)> {
    let mut all: BTreeMap<String, (String, usize)> = BTreeMap::new();
    for &i in alive {
        for (ip, who) in bindings(net, i) {
            if let Some((other, j)) = all.get(&ip)
                && *other != who
            {
                panic!("{when}: {ip} bound to {other} at node {j} and to {who} at node {i}");
            }
            all.insert(ip, (who, i));
        }
    }
    all
}

/// Whether a node in `alive` owns the block of `ip` in `pool` (blocks of `size` addresses).
fn block_owned(
    net: &common::netns::TestNet,
    alive: &[usize],
    pool: &str,
    ip: &str,
    size: u32,
) -> bool {
    let a: std::net::Ipv4Addr = ip.parse().unwrap();
    let first = std::net::Ipv4Addr::from(u32::from(a) & !(size - 1)).to_string();
    alive.iter().any(|&i| {
        net.ctl_json(i, &["blocks", "--pool", pool]).is_ok_and(|v| {
            v["blocks"].as_array().is_some_and(|bs| {
                bs.iter()
                    .any(|b| b["first"] == first.as_str() && b["state"] == "ours")
            })
        })
    })
}

/// Renews client (c, k) (SIGUSR1, again every 2 s) until its history shows a renewal
/// after `before` renewals; true if one came within `timeout`.
fn renew_until(
    net: &common::netns::TestNet,
    c: usize,
    k: usize,
    timeout: Duration,
    mut each: impl FnMut(),
) -> bool {
    let before = net.lease_history_k(c, k).matches(" renew ").count();
    let start = std::time::Instant::now();
    while start.elapsed() < timeout {
        net.clt_renew_k(c, k);
        let done = wait_until(Duration::from_secs(2), || {
            net.lease_history_k(c, k).matches(" renew ").count() > before
        });
        each();
        if done {
            return true;
        }
    }
    false
}

/// The owner of DHCP clients and API allocations dies with its disk: five nodes, two
/// udhcpc clients and three allocations on node 0. `kill -9` node 0 and delete its state
/// directory; its clients, moved to other nodes' links, renew and keep their addresses,
/// served by the nodes that took node 0's blocks over, which also list its allocations
/// and give the same address when asked again. Node 0 restarted empty with its
/// `--node-id` rebuilds from its peers and serves the same bindings (the clients come
/// home and renew there). No address is bound twice at any poll of the whole run.
#[test]
fn owner_dies_with_its_disk_takeover_and_rebuild() {
    if !require_netns("owner_dies_with_its_disk_takeover_and_rebuild") {
        return;
    }
    let _serial = serial();
    let mut net = new_net(5, 2);
    for i in 0..5 {
        start_node(&mut net, i, &["--pool", VMS]);
    }
    for i in 0..5 {
        wait_serving(&mut net, i, 1);
    }
    let all: Vec<usize> = (0..5).collect();
    for k in 0..2 {
        net.clt_start_k(0, k, "udhcpc");
    }
    let ips: Vec<String> = (0..2).map(|k| must_lease(&net, 0, k)).collect();
    let mut allocs = BTreeMap::new();
    for v in 0..3 {
        let owner = format!("vm-{v}");
        let a = ctl_json_ok(
            &net,
            0,
            &[
                "allocate",
                "--pool",
                "vms",
                "--owner",
                &owner,
                "--timeout",
                "20",
            ],
        );
        allocs.insert(owner, a["ip"].as_str().unwrap().to_string());
    }
    let id0 = ctl_json_ok(&net, 0, &["status"])["node_id"]
        .as_str()
        .unwrap()
        .to_string();
    // Replicated: node 0 has nothing unacknowledged.
    let synced = wait_until(Duration::from_secs(20), || {
        let (m0, _) = metrics(&net, 0);
        count(&m0, "ddhcp_replica_lag_records") >= 2
            && sum(&m0, "ddhcp_replica_lag_records", "") == 0.0
    });
    assert!(synced, "node 0's bindings never reached its holders");
    no_double_binding(&net, &all, "before the crash");

    // Crash with the disk.
    let crash = std::time::Instant::now();
    net.kill9(0);
    std::fs::remove_dir_all(net.state_dir(0)).unwrap();
    let alive: Vec<usize> = (1..5).collect();
    for k in 0..2 {
        net.roam_k(0, k, 1 + k);
    }
    // The holders take the blocks over once node 0's claims lapse (-B 10). The clients
    // are asked to renew only then: a renewal nobody answers makes udhcpc drop its lease
    // within seconds (a client renewing at T1 on its own would simply wait).
    let taken = wait_until(Duration::from_secs(60), || {
        no_double_binding(&net, &alive, "during the takeover");
        ips.iter()
            .all(|ip| block_owned(&net, &alive, "default", ip, 4))
            && allocs
                .values()
                .all(|ip| block_owned(&net, &alive, "vms", ip, 16))
    });
    assert!(taken, "node 0's blocks were not taken over within 60 s");
    let took = crash.elapsed();
    for (k, ip) in ips.iter().enumerate() {
        let renewed = renew_until(&net, 0, k, Duration::from_secs(60), || {
            no_double_binding(&net, &alive, "during the takeover");
        });
        if !renewed {
            net.dump_logs();
        }
        assert!(
            renewed,
            "client 0.{k} not served within 60 s of the crash; its log:\n{}",
            net.client_log_k(0, k)
        );
        assert_eq!(
            net.lease_of_k(0, k).as_ref(),
            Some(ip),
            "client 0.{k}: {}\n{}",
            net.lease_history_k(0, k),
            net.client_log_k(0, k)
        );
    }
    let served = crash.elapsed();
    let now = no_double_binding(&net, &alive, "after the takeover");
    for (k, ip) in ips.iter().enumerate() {
        let (mac, _) = &now[ip];
        assert_eq!(*mac, net.client_mac_k(0, k).to_lowercase(), "{ip}");
    }
    // The allocations are listed where the blocks went, and asking again gives them back.
    for (owner, ip) in &allocs {
        let (who, at) = now
            .get(ip)
            .unwrap_or_else(|| panic!("{ip} of {owner} is listed nowhere after the takeover"));
        assert_eq!(who, owner);
        let again = ctl_json_ok(&net, *at, &["allocate", "--pool", "vms", "--owner", owner]);
        assert_eq!(again["ip"].as_str(), Some(ip.as_str()), "{again}");
        assert_eq!(again["created"], false, "{again}");
    }
    let taken: f64 = alive
        .iter()
        .map(|&i| {
            metrics(&net, i)
                .0
                .get("ddhcp_blocks_taken_over_total")
                .copied()
                .unwrap_or(0.0)
        })
        .sum();
    assert!(taken >= 1.0, "no node counts a takeover");

    // Back, empty, with its id: it rebuilds (status says so until it is done).
    std::fs::create_dir_all(net.state_dir(0)).unwrap();
    let restart = std::time::Instant::now();
    start_node(&mut net, 0, &["--pool", VMS, "--node-id", &id0]);
    let rebuilt = wait_until(Duration::from_secs(60), || {
        no_double_binding(&net, &all, "during the rebuild");
        net.ctl_json(0, &["status"])
            .is_ok_and(|s| s["recovering"] == false && s["node_id"] == id0.as_str())
    });
    assert!(rebuilt, "node 0 did not finish its rebuild within 60 s");
    let rebuild = restart.elapsed();
    let mine = no_double_binding(&net, &all, "after the rebuild");
    for (owner, ip) in &allocs {
        assert_eq!(mine.get(ip), Some(&(owner.clone(), 0)), "{ip} of {owner}");
    }
    for (k, ip) in ips.iter().enumerate() {
        net.roam_k(0, k, 0);
        let renewed = renew_until(&net, 0, k, Duration::from_secs(30), || {
            no_double_binding(&net, &all, "clients coming home");
        });
        assert!(
            renewed,
            "client 0.{k} not served at home; {}",
            net.client_log_k(0, k)
        );
        assert_eq!(net.lease_of_k(0, k).as_ref(), Some(ip), "client 0.{k}");
    }
    let home = no_double_binding(&net, &all, "at the end");
    for ip in &ips {
        assert_eq!(
            home[ip].1, 0,
            "{ip} is not leased by node 0 after the rebuild"
        );
    }
    eprintln!(
        "FIGURE takeover: blocks of a node killed with its disk taken over after {:.1} s, its clients served again after {:.1} s (-B 10); rebuild with --node-id took {:.1} s",
        took.as_secs_f64(),
        served.as_secs_f64(),
        rebuild.as_secs_f64()
    );
    for k in 0..2 {
        net.clt_stop_k(0, k);
    }
    for i in 0..5 {
        common::daemon::assert_alive(&mut net, i);
    }
}

/// One run of [`allocations_acknowledged_before_a_crash_survive_it`]: (answered, lost that
/// were answered more than 5 s before the crash, lost within the 5 s).
fn crash_under_allocation_load(sync: bool, run: u64) -> (usize, usize, usize) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    const POOL: &str = "vms=10.2.0.0/19,use=api,block=4,cooldown=3,spare=256";
    let mut net = new_net(3, 1);
    let mut args = vec!["--pool", POOL];
    if sync {
        args.extend(["--replica-sync", "on"]);
    }
    for i in 0..3 {
        start_node(&mut net, i, &args);
    }
    for i in 0..3 {
        wait_serving(&mut net, i, 1);
    }
    // Every node sees the other two as ddhcp peers before the load starts.
    let peered = wait_until(Duration::from_secs(20), || {
        (0..3).all(|i| net.ctl_json(i, &["status"]).is_ok_and(|s| s["peers"] == 2))
    });
    assert!(peered, "the nodes never saw each other");
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<(String, String, std::time::Instant)>>> = Arc::default();
    let worker = {
        let (stop, acked) = (stop.clone(), acked.clone());
        let (ctl, sock) = (net.ddhcpctl.clone(), net.sock(0));
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let owner = format!("vm-{run}-{n}");
                let out = std::process::Command::new(&ctl)
                    .arg("-C")
                    .arg(&sock)
                    .args(["--json", "allocate", "--pool", "vms", "--owner", &owner])
                    .args(["--timeout", "5"])
                    .output();
                let at = std::time::Instant::now();
                let ip = out
                    .ok()
                    .filter(|o| o.status.success())
                    .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
                    .and_then(|v| v["ip"].as_str().map(str::to_owned));
                if let Some(ip) = ip {
                    acked.lock().unwrap().push((owner, ip, at));
                }
            }
        })
    };
    // A moment that differs from run to run: 6 to 10 s into the load.
    std::thread::sleep(Duration::from_millis(6000 + (run * 1_337) % 4000));
    let crash = std::time::Instant::now();
    net.kill9(0);
    stop.store(true, Ordering::Relaxed);
    worker.join().unwrap();
    std::fs::remove_dir_all(net.state_dir(0)).unwrap();
    let acked: Vec<_> = std::mem::take(&mut *acked.lock().unwrap())
        .into_iter()
        .filter(|(_, _, t)| *t <= crash)
        .collect();
    let alive = [1, 2];
    let listed = |net: &common::netns::TestNet| -> BTreeMap<String, String> {
        no_double_binding(net, &alive, "after the crash")
            .into_iter()
            .map(|(ip, (owner, _))| (owner, ip))
            .collect()
    };
    let old = |t: &std::time::Instant| crash.duration_since(*t) > Duration::from_secs(5);
    // The takeover (-B 10): wait until every allocation that must survive is listed.
    let must: Vec<_> = acked.iter().filter(|(_, _, t)| sync || old(t)).collect();
    let _ = wait_until(Duration::from_secs(40), || {
        let l = listed(&net);
        must.iter().all(|(o, ip, _)| l.get(o) == Some(ip))
    });
    std::thread::sleep(Duration::from_secs(2));
    let l = listed(&net);
    let mut lost_old = 0;
    let mut lost_recent = 0;
    for (o, ip, t) in &acked {
        if l.get(o) != Some(ip) {
            if old(t) {
                lost_old += 1;
            } else {
                lost_recent += 1;
            }
        }
    }
    for i in alive {
        common::daemon::assert_alive(&mut net, i);
    }
    (acked.len(), lost_old, lost_recent)
}

/// Continuous API allocation on node 0 of three, node 0 killed with -9 and its state
/// directory deleted at a different moment each run: no allocation answered more than 5 s
/// before the crash is lost (asynchronous, the default), none answered at all is lost with
/// `--replica-sync on`; the takeover nodes list them. One run of the default, two of
/// `--replica-sync on` (the stronger promise), each crashing at another moment.
#[test]
fn allocations_acknowledged_before_a_crash_survive_it() {
    if !require_netns("allocations_acknowledged_before_a_crash_survive_it") {
        return;
    }
    let _serial = serial();
    for (sync, run) in [(false, 1), (true, 3), (true, 4)] {
        let (acked, lost_old, lost_recent) = crash_under_allocation_load(sync, run);
        eprintln!(
            "FIGURE allocation loss (sync {sync}, run {run}): {acked} answered before the crash, {lost_old} of those answered > 5 s before lost, {lost_recent} answered within 5 s lost"
        );
        assert!(acked >= 20, "run {run}: only {acked} allocations answered");
        assert_eq!(
            lost_old, 0,
            "run {run}: allocations answered > 5 s before the crash lost"
        );
        if sync {
            assert_eq!(
                lost_recent, 0,
                "run {run}: synchronous mode lost answered allocations"
            );
        }
    }
}

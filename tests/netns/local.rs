//! Local address mode with real `ddhcpd` processes, the kernel's netlink, ARP and sockets,
//! in network namespaces:
//!
//! - one node with a local pool on `client0` (next to its DHCP pool): proven standby
//!   addresses on the interface, announced (an observer with `arp_accept=1` learns our MAC
//!   before it ever pings) and reachable; a process binding one makes it active and a
//!   replacement standby appears; `ip addr del` of one of ours is undone; kill -9 and a
//!   restart keep the active address configured throughout; deleting and re-creating the
//!   interface restores every address; shrinking the targets at run time removes addresses
//!   and gives their blocks up; the process gone, the address is standby again after the
//!   hysteresis; `mark-active` / `mark-standby`;
//! - two local nodes on one server link, each also serving DHCP: no address is ever
//!   configured on both, nor configured and leased, sampled over the whole run.
//!
//! Needs root, `ip`, `ping`, `socat` (skips loudly otherwise, fails under CI=true).

#![allow(clippy::disallowed_methods)] // tests of real processes wait on real clocks

use crate::common;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::daemon::{
    assert_alive, ctl_json_ok, ctl_ok, logging_hook, new_net, serial, start_node,
};
use common::netns::{TestNet, require_netns, wait_until};
use serde_json::Value;

const RANGE: &str = "10.0.200.0/24";
/// The test target (a client host with a static address, no DHCP client) and the observer
/// (client host (0, 1)), in the pool's unmanaged part.
const TARGET: &str = "10.0.200.254";
const OBSERVER: &str = "10.0.200.253";
const HYSTERESIS: u64 = 3;

fn pool_arg(standby: u32, max_standby: u32) -> String {
    format!(
        "hosts={RANGE},use=local,iface=client0,block=1,standby={standby},max-standby={max_standby},test-target={TARGET},unmanaged=10.0.200.240/28,hysteresis={HYSTERESIS}"
    )
}

fn in_range(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    o[0] == 10 && o[1] == 0 && o[2] == 200
}

fn sh(net: &TestNet, ns: &str, args: &[&str]) -> String {
    let out = TestNet::ns_exec(ns, args);
    assert!(
        out.status.success(),
        "{ns}: {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = net;
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The pool's addresses configured on daemon host i's `client0`, as the kernel has them.
fn configured(net: &TestNet, i: usize) -> BTreeSet<Ipv4Addr> {
    let out = net.exec_daemon_ns(i, &["ip", "-j", "-4", "addr", "show", "dev", "client0"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v.as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a["local"].as_str()?.parse().ok())
        .filter(|ip| in_range(*ip))
        .collect()
}

/// `ddhcpctl --json local` rows of node i.
fn rows(net: &TestNet, i: usize) -> Vec<Value> {
    ctl_json_ok(net, i, &["local"])["addresses"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn in_state(net: &TestNet, i: usize, state: &str) -> BTreeSet<Ipv4Addr> {
    rows(net, i)
        .iter()
        .filter(|r| r["state"] == state)
        .filter_map(|r| r["ip"].as_str()?.parse().ok())
        .collect()
}

fn state_of(net: &TestNet, i: usize, ip: Ipv4Addr) -> Option<String> {
    rows(net, i)
        .iter()
        .find(|r| r["ip"] == ip.to_string())
        .and_then(|r| r["state"].as_str().map(String::from))
}

/// Blocks of pool `hosts` node i owns.
fn owned_blocks(net: &TestNet, i: usize) -> Vec<Value> {
    let v = ctl_json_ok(net, i, &["blocks", "--pool", "hosts"]);
    v["blocks"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|b| b["state"] == "ours")
        .collect()
}

/// Waits for `what`, with the daemon logs in the panic.
fn must(net: &TestNet, timeout: Duration, what: &str, f: impl FnMut() -> bool) {
    if !wait_until(timeout, f) {
        net.dump_logs();
        panic!("{what}: not within {timeout:?}");
    }
}

/// A process started inside a namespace, killed (by its PID) when dropped.
struct Proc(Child);

impl Proc {
    fn start(ns: &str, args: &[&str]) -> Proc {
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {args:?} in {ns}: {e}"));
        Proc(child)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A TCP listener bound to `ip` in daemon host i: a service using that address.
fn listen_on(net: &TestNet, i: usize, ip: Ipv4Addr) -> Proc {
    Proc::start(
        &net.ns_daemon(i),
        &[
            "socat",
            "-u",
            &format!("TCP4-LISTEN:18080,bind={ip},reuseaddr"),
            "OPEN:/dev/null",
        ],
    )
}

fn prerequisites(test: &str) -> bool {
    if !require_netns(test) {
        return false;
    }
    for tool in ["socat", "ping"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{test}: {tool} is missing (CI=true: a missing prerequisite is a failure)"
            );
            eprintln!("SKIPPED {test}: {tool} is missing");
            return false;
        }
    }
    true
}

/// Gives client host (i, k) a static address of the pool's unmanaged part.
fn static_peer(net: &TestNet, i: usize, k: usize, ip: &str) {
    sh(
        net,
        &net.ns_client_k(i, k),
        &["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
    );
}

fn mac_of_client0(net: &TestNet, i: usize) -> String {
    let out = net.exec_daemon_ns(i, &["cat", "/sys/class/net/client0/address"]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The observer's neighbour entry for `ip`: its MAC, if it has one.
fn neighbour_mac(net: &TestNet, ip: Ipv4Addr) -> Option<String> {
    let out = net.exec_client_ns_k(0, 1, &["ip", "-j", "neigh", "show", &ip.to_string()]);
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v.as_array()?
        .iter()
        .find_map(|n| n["lladdr"].as_str().map(String::from))
}

/// Re-creates daemon host i's `client0` as network-test made it (veth to the hub's
/// `k<i>` in `br-clt<i>`, the node MAC, 10.0.0.1/16).
fn recreate_client0(net: &TestNet, i: usize, mac: &str) {
    let d = net.ns_daemon(i);
    let hub = net.ns_hub();
    let port = format!("k{i}");
    let bridge = format!("br-clt{i}");
    for args in [
        vec!["ip", "-n", &d, "link", "del", "client0"],
        vec![
            "ip", "-n", &d, "link", "add", "client0", "type", "veth", "peer", "name", &port,
            "netns", &hub,
        ],
        vec![
            "ip", "-n", &hub, "link", "set", &port, "master", &bridge, "up",
        ],
        vec!["ip", "-n", &d, "link", "set", "client0", "address", mac],
        vec![
            "ip",
            "-n",
            &d,
            "addr",
            "add",
            "10.0.0.1/16",
            "dev",
            "client0",
        ],
        vec!["ip", "-n", &d, "link", "set", "client0", "up"],
    ] {
        let st = Command::new(args[0]).args(&args[1..]).status().unwrap();
        assert!(st.success(), "{args:?} failed");
    }
}

#[test]
fn local_mode_life_cycle() {
    let _serial = serial();
    if !prerequisites("local_mode_life_cycle") {
        return;
    }
    let mut net = new_net(1, 2);
    static_peer(&net, 0, 0, TARGET);
    static_peer(&net, 0, 1, OBSERVER);
    sh(
        &net,
        &net.ns_client_k(0, 1),
        &["sysctl", "-qw", "net.ipv4.conf.eth0.arp_accept=1"],
    );
    let mac = mac_of_client0(&net, 0);
    let pool = pool_arg(2, 3);
    let hook_log = net.state_dir.join("hook.log");
    let hook = logging_hook(&net, "hook.sh", &hook_log, "");
    let hook = hook.to_str().unwrap().to_string();
    let hooked = |what: &str| {
        std::fs::read_to_string(&hook_log)
            .unwrap_or_default()
            .lines()
            .any(|l| l == what)
    };
    let started = Instant::now();
    // -n 2: an unused block is given up after 2 s, not the default minute.
    start_node(&mut net, 0, &["--pool", &pool, "-n", "2", "-H", &hook]);

    // Proven standby addresses, on the interface and nowhere else.
    let mut first = None;
    must(
        &net,
        Duration::from_secs(20),
        "two standby addresses",
        || {
            let n = net.ctl_json(0, &["local"]).map_or(0, |v| {
                v["addresses"]
                    .as_array()
                    .map_or(0, |a| a.iter().filter(|r| r["state"] == "standby").count())
            });
            if n >= 1 && first.is_none() {
                first = Some(started.elapsed());
            }
            n == 2
        },
    );
    println!(
        "FIGURE local: first proven standby address {:.2} s after start (-t 2: one tentative round)",
        first.unwrap().as_secs_f64()
    );
    let standby = in_state(&net, 0, "standby");
    assert_eq!(configured(&net, 0), standby);
    for r in rows(&net, 0) {
        assert_eq!(r["pool"], "hosts");
        assert_eq!(r["iface"], "client0");
        assert!(r["since"].is_u64() && r["reason"].is_string(), "{r}");
    }

    // The observer learnt our MAC from the gratuitous ARP before any ping; then pings.
    for &ip in &standby {
        must(
            &net,
            Duration::from_secs(5),
            "the observer learns our MAC",
            || neighbour_mac(&net, ip).as_deref() == Some(mac.as_str()),
        );
    }
    for &ip in &standby {
        let out = net.exec_client_ns_k(0, 1, &["ping", "-c", "1", "-W", "2", &ip.to_string()]);
        assert!(out.status.success(), "ping {ip} from the observer failed");
    }

    // A service binds one: active within the poll interval, and a replacement comes.
    let a = *standby.iter().next().unwrap();
    let bound = Instant::now();
    let service = listen_on(&net, 0, a);
    must(
        &net,
        Duration::from_secs(5),
        "the bound address turns active",
        || state_of(&net, 0, a).as_deref() == Some("active"),
    );
    println!(
        "FIGURE local: bound address active after {:.2} s (socket poll every 1 s)",
        bound.elapsed().as_secs_f64()
    );
    for line in [
        format!("local {a} free reserved"),
        format!("local {a} reserved standby"),
        format!("local {a} standby active"),
    ] {
        must(&net, Duration::from_secs(5), &line, || hooked(&line));
    }
    must(
        &net,
        Duration::from_secs(15),
        "a replacement standby",
        || in_state(&net, 0, "standby").len() == 2,
    );
    let all = configured(&net, 0);
    assert_eq!(all.len(), 3, "{all:?}");
    assert!(
        owned_blocks(&net, 0).len() >= 2,
        "3 addresses in blocks of 2"
    );

    // Someone deletes one of ours: it comes back.
    let b = *in_state(&net, 0, "standby").iter().next().unwrap();
    sh(
        &net,
        &net.ns_daemon(0),
        &["ip", "addr", "del", &format!("{b}/24"), "dev", "client0"],
    );
    must(
        &net,
        Duration::from_secs(10),
        "the deleted address back",
        || configured(&net, 0).contains(&b) && state_of(&net, 0, b).as_deref() == Some("standby"),
    );
    must(&net, Duration::from_secs(5), "the hook told of it", || {
        hooked(&format!("local-deleted {b} standby"))
    });
    let metrics = ctl_json_ok(&net, 0, &["metrics"])["text"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        metrics.contains("ddhcp_local_deleted_by_others_total{pool=\"hosts\"} 1"),
        "{metrics}"
    );

    // kill -9 and a restart: the active address stays configured all along.
    let missing = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (missing, stop, ns) = (missing.clone(), stop.clone(), net.ns_daemon(0));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let out =
                    TestNet::ns_exec(&ns, &["ip", "-4", "-o", "addr", "show", "dev", "client0"]);
                if !String::from_utf8_lossy(&out.stdout).contains(&format!("inet {a}/")) {
                    missing.store(true, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    net.kill9(0);
    start_node(&mut net, 0, &["--pool", &pool, "-n", "2", "-H", &hook]);
    must(
        &net,
        Duration::from_secs(20),
        "active again after the restart",
        || net.ctl_json(0, &["local"]).is_ok() && state_of(&net, 0, a).as_deref() == Some("active"),
    );
    must(
        &net,
        Duration::from_secs(20),
        "two standby after the restart",
        || in_state(&net, 0, "standby").len() == 2,
    );
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    assert!(
        !missing.load(Ordering::Relaxed),
        "the active address {a} was off the interface during the restart"
    );

    // The interface deleted and re-created (as Gluon does): every address restored.
    let before = configured(&net, 0);
    recreate_client0(&net, 0, &mac);
    must(
        &net,
        Duration::from_secs(20),
        "the addresses restored",
        || configured(&net, 0) == before,
    );
    must(
        &net,
        Duration::from_secs(20),
        "active and standby again",
        || {
            state_of(&net, 0, a).as_deref() == Some("active")
                && in_state(&net, 0, "standby").len() == 2
        },
    );
    assert_alive(&mut net, 0);

    // Targets shrunk at run time: the standby ones go, and their blocks with them.
    ctl_ok(
        &net,
        0,
        &["set-local", "--pool", "hosts", "standby=0", "max-standby=0"],
    );
    must(
        &net,
        Duration::from_secs(15),
        "only the active address left",
        || configured(&net, 0) == BTreeSet::from([a]),
    );
    must(
        &net,
        Duration::from_secs(20),
        "only the active block left",
        || owned_blocks(&net, 0).len() == 1,
    );

    // The service stops: standby after the hysteresis, then (no standby wanted) gone.
    let stopped = Instant::now();
    drop(service);
    must(
        &net,
        Duration::from_secs(HYSTERESIS + 10),
        "standby again",
        || state_of(&net, 0, a).as_deref() != Some("active"),
    );
    let after = stopped.elapsed();
    println!(
        "FIGURE local: active -> standby {:.2} s after the socket closed (hysteresis {HYSTERESIS} s)",
        after.as_secs_f64()
    );
    assert!(after >= Duration::from_secs(HYSTERESIS), "{after:?}");
    must(&net, Duration::from_secs(15), "nothing configured", || {
        configured(&net, 0).is_empty()
    });
    must(&net, Duration::from_secs(20), "no block left", || {
        owned_blocks(&net, 0).is_empty()
    });

    // A third party marks one active: it stays so without a socket, until marked standby.
    ctl_ok(
        &net,
        0,
        &["set-local", "--pool", "hosts", "standby=1", "max-standby=1"],
    );
    must(&net, Duration::from_secs(20), "one standby", || {
        in_state(&net, 0, "standby").len() == 1
    });
    let m = *in_state(&net, 0, "standby").iter().next().unwrap();
    ctl_ok(&net, 0, &["mark-active", &m.to_string()]);
    std::thread::sleep(Duration::from_secs(HYSTERESIS + 2));
    assert_eq!(state_of(&net, 0, m).as_deref(), Some("active"));
    // Marked standby, it is one too many (a replacement came while it was active): one of
    // the two goes, whichever became standby last.
    ctl_ok(&net, 0, &["mark-standby", &m.to_string()]);
    must(&net, Duration::from_secs(5), "no longer active", || {
        state_of(&net, 0, m).as_deref() != Some("active")
    });
    must(&net, Duration::from_secs(15), "back to one standby", || {
        in_state(&net, 0, "standby").len() == 1 && configured(&net, 0).len() == 1
    });
    assert_alive(&mut net, 0);
}

#[test]
fn two_local_nodes_and_dhcp_never_share_an_address() {
    let _serial = serial();
    if !prerequisites("two_local_nodes_and_dhcp_never_share_an_address") {
        return;
    }
    // Client (i, 1) is node i's test target (static: udhcpc on (i, 0) flushes its own).
    let mut net = new_net(2, 2);
    for i in 0..2 {
        static_peer(&net, i, 1, TARGET);
    }
    let pool = pool_arg(3, 4);
    for i in 0..2 {
        start_node(&mut net, i, &["--pool", &pool]);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<(Vec<String>, usize)>> = Arc::default();
    let sampler = {
        let (stop, seen) = (stop.clone(), seen.clone());
        let ns: Vec<String> = (0..2).map(|i| net.ns_daemon(i)).collect();
        let clients: Vec<String> = (0..2).map(|i| net.ns_client(i)).collect();
        std::thread::spawn(move || {
            let addrs = |ns: &str, dev: &str| -> BTreeSet<Ipv4Addr> {
                let out = TestNet::ns_exec(ns, &["ip", "-j", "-4", "addr", "show", "dev", dev]);
                let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
                v.as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
                    .filter_map(|a| a["local"].as_str()?.parse().ok())
                    .collect()
            };
            while !stop.load(Ordering::Relaxed) {
                let local: Vec<BTreeSet<Ipv4Addr>> = ns
                    .iter()
                    .map(|n| {
                        addrs(n, "client0")
                            .into_iter()
                            .filter(|ip| in_range(*ip))
                            .collect()
                    })
                    .collect();
                let leased: BTreeSet<Ipv4Addr> =
                    clients.iter().flat_map(|c| addrs(c, "eth0")).collect();
                let mut s = seen.lock().unwrap();
                s.1 += 1;
                for ip in local[0].intersection(&local[1]) {
                    s.0.push(format!("{ip} configured on both nodes"));
                }
                for ip in local.iter().flatten().filter(|ip| leased.contains(ip)) {
                    s.0.push(format!("{ip} configured and leased"));
                }
                drop(s);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    for i in 0..2 {
        net.clt_start(i, "udhcpc");
    }
    for i in 0..2 {
        must(
            &net,
            Duration::from_secs(30),
            "three standby on each",
            || net.ctl_json(i, &["local"]).is_ok() && in_state(&net, i, "standby").len() == 3,
        );
        assert!(
            net.wait_lease(i, Duration::from_secs(30)).is_some(),
            "client {i}: no lease"
        );
    }
    // Churn: targets up and down, and node 1 killed and restarted.
    ctl_ok(
        &net,
        0,
        &["set-local", "--pool", "hosts", "standby=8", "max-standby=8"],
    );
    net.kill9(1);
    start_node(&mut net, 1, &["--pool", &pool]);
    must(
        &net,
        Duration::from_secs(30),
        "eight standby on node 0",
        || in_state(&net, 0, "standby").len() == 8,
    );
    ctl_ok(
        &net,
        1,
        &["set-local", "--pool", "hosts", "standby=6", "max-standby=6"],
    );
    ctl_ok(
        &net,
        0,
        &["set-local", "--pool", "hosts", "standby=2", "max-standby=2"],
    );
    must(
        &net,
        Duration::from_secs(30),
        "six on node 1, two on node 0",
        || in_state(&net, 1, "standby").len() == 6 && in_state(&net, 0, "standby").len() == 2,
    );
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let (conflicts, samples) = seen.lock().unwrap().clone();
    println!(
        "FIGURE local: {samples} samples of both nodes' interfaces and leases, {} conflicts",
        conflicts.len()
    );
    assert!(conflicts.is_empty(), "{conflicts:?}");
    let a = configured(&net, 0);
    let b = configured(&net, 1);
    assert!(a.is_disjoint(&b), "{a:?} {b:?}");
    for i in 0..2 {
        assert_alive(&mut net, i);
    }
}

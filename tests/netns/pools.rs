//! Several DHCP pools per daemon, on one server link, with real `ddhcpd` processes and
//! busybox udhcpc clients in network namespaces:
//!
//! - daemons 0 and 1 each serve pool `a` on `client0` and pool `b` on a second client link
//!   `client1`; daemon 2 runs the ddhcpd flags alone (`-N` = pool `a`'s range, so its one
//!   pool is `default`): every client gets a lease from its link's pool, and daemon 2's
//!   view of pool `a` agrees with the others';
//! - a store directory written by the release before pools (format v1, kept as a fixture
//!   in `tests/fixtures/store-v1/`) opens as a pool of a multi-pool daemon, with its
//!   run-time option and its leases.
//!
//! Needs root (skips loudly otherwise, fails under CI=true).

#![allow(clippy::disallowed_methods)] // tests of real processes wait on real clocks

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::daemon::{ctl_json_ok, must_lease, new_net, node_args, serial};
use common::netns::{TestNet, require_netns, wait_until};
use serde_json::Value;

const POOL_A: &str = "10.0.128.0/24";
const POOL_B: &str = "10.1.128.0/24";

/// Gives daemon host i a second client link: `client1` (10.1.0.1/16) in the daemon's
/// namespace, bridged in the hub with client host (i, 1), which leaves `client0`'s link.
fn second_client_link(net: &TestNet, i: usize) {
    let hub = net.ns_hub();
    let d = net.ns_daemon(i);
    let br = format!("br-cb{i}");
    let port = format!("kb{i}");
    let client_port = format!("c{}", net.client_name(i, 1));
    let cmds: Vec<Vec<String>> = vec![
        vec![
            "-n".into(),
            hub.clone(),
            "link".into(),
            "add".into(),
            br.clone(),
            "type".into(),
            "bridge".into(),
        ],
        vec![
            "-n".into(),
            hub.clone(),
            "link".into(),
            "set".into(),
            br.clone(),
            "up".into(),
        ],
        vec![
            "-n".into(),
            d.clone(),
            "link".into(),
            "add".into(),
            "client1".into(),
            "type".into(),
            "veth".into(),
            "peer".into(),
            "name".into(),
            port.clone(),
            "netns".into(),
            hub.clone(),
        ],
        vec![
            "-n".into(),
            hub.clone(),
            "link".into(),
            "set".into(),
            port,
            "master".into(),
            br.clone(),
            "up".into(),
        ],
        vec![
            "-n".into(),
            hub.clone(),
            "link".into(),
            "set".into(),
            client_port,
            "master".into(),
            br,
        ],
        vec![
            "-n".into(),
            d.clone(),
            "addr".into(),
            "add".into(),
            "10.1.0.1/16".into(),
            "dev".into(),
            "client1".into(),
        ],
        vec![
            "-n".into(),
            d,
            "link".into(),
            "set".into(),
            "client1".into(),
            "up".into(),
        ],
    ];
    for c in cmds {
        let out = std::process::Command::new("ip")
            .args(&c)
            .output()
            .expect("ip runs");
        assert!(
            out.status.success(),
            "ip {}: {}",
            c.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Node arguments without the single-pool defaults `-N`, `-c` and `-o 1:…`, plus `extra`.
fn pool_args(net: &TestNet, i: usize, extra: &[&str]) -> Vec<String> {
    let mut args = node_args(net, i, &["-N", "-o"], extra);
    // `-c` is in the base arguments of every node; a node with --pool pools names its
    // interfaces per pool.
    if let Some(pos) = args.iter().position(|a| a == "-c") {
        args.drain(pos..pos + 2);
    }
    args
}

fn start(net: &mut TestNet, i: usize, args: &[String]) {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    net.start_daemon(i, &args);
}

fn in_net(ip: &str, net: &str) -> bool {
    let (prefix, len) = net.split_once('/').unwrap();
    let (a, p): (std::net::Ipv4Addr, std::net::Ipv4Addr) =
        (ip.parse().unwrap(), prefix.parse().unwrap());
    let len: u32 = len.parse().unwrap();
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(a) & mask == u32::from(p)
}

/// Waits until every pool of daemon i is out of learning and owns a block.
fn wait_pools_serving(net: &mut TestNet, i: usize, pools: usize) -> Value {
    let mut last = Value::Null;
    let ok = wait_until(Duration::from_secs(30), || {
        last = net.ctl_json(i, &["status"]).unwrap_or(Value::Null);
        last["pools"].as_array().is_some_and(|ps| {
            ps.len() == pools
                && ps
                    .iter()
                    .all(|p| p["learning"] == false && p["blocks_owned"].as_u64() >= Some(1))
        })
    });
    if !ok {
        net.dump_logs();
        panic!("daemon {i}: pools do not serve: {last}");
    }
    last
}

/// `(first, owner)` of daemon i's blocks of `pool` (None: the only/default pool).
fn blocks(net: &TestNet, i: usize, pool: Option<&str>) -> Vec<(String, String, String)> {
    let mut args = vec!["blocks"];
    if let Some(p) = pool {
        args.extend(["--pool", p]);
    }
    let v = ctl_json_ok(net, i, &args);
    v["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["first"].as_str().unwrap().to_string(),
                b["state"].as_str().unwrap().to_string(),
                b["owner"].as_str().unwrap_or("-").to_string(),
            )
        })
        .collect()
}

#[test]
fn two_dhcp_pools_per_daemon_and_a_one_pool_daemon_agree() {
    if !require_netns("two_dhcp_pools_per_daemon_and_a_one_pool_daemon_agree") {
        return;
    }
    let _g = serial();
    let mut net = new_net(3, 2);
    for i in 0..2 {
        second_client_link(&net, i);
    }
    let a = format!("a={POOL_A},block=2,iface=client0,option=1:4:255.255.0.0,option=3:4:10.0.0.1");
    let b = format!("b={POOL_B},block=2,iface=client1,option=1:4:255.255.0.0,option=3:4:10.1.0.1");
    for i in 0..2 {
        let args = pool_args(&net, i, &["--pool", &a, "--pool", &b]);
        start(&mut net, i, &args);
    }
    // Daemon 2: ddhcpd's flags only, pool a's range.
    let args = node_args(&net, 2, &["-N"], &["-N", POOL_A]);
    start(&mut net, 2, &args);
    let mut ids = Vec::new();
    for i in 0..2 {
        let s = wait_pools_serving(&mut net, i, 2);
        assert_eq!(s["pools"][0]["name"], "a");
        assert_eq!(s["pools"][1]["network"], POOL_B);
        ids.push(s["node_id"].as_str().unwrap().to_string());
    }
    let s = wait_pools_serving(&mut net, 2, 1);
    assert_eq!(s["pools"][0]["name"], "default");
    assert_eq!(s["network"], POOL_A);
    ids.push(s["node_id"].as_str().unwrap().to_string());

    // Without --pool, a daemon with pools a and b has no default: the error lists them.
    let e = net.ctl(0, &["--json", "blocks"]).unwrap_err();
    assert!(e.contains("a, b"), "{e}");

    for (i, k) in [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0)] {
        net.clt_start_k(i, k, "udhcpc");
    }
    for (i, k) in [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0)] {
        let ip = must_lease(&net, i, k);
        let want = if k == 0 { POOL_A } else { POOL_B };
        assert!(
            in_net(&ip, want),
            "client {i}.{k} got {ip}, not from {want}"
        );
        // The lease is in that pool's table of the daemon on the client's link.
        let pool = match (i, k) {
            (2, _) => None,
            (_, 0) => Some("a"),
            _ => Some("b"),
        };
        let mut args = vec!["leases"];
        if let Some(p) = pool {
            args.extend(["--pool", p]);
        }
        let v = ctl_json_ok(&net, i, &args);
        let rows = v["leases"].as_array().unwrap();
        assert!(
            rows.iter()
                .any(|l| l["ip"] == ip.as_str() && l["pool"] == pool.unwrap_or("default")),
            "daemon {i} does not list {ip} in pool {pool:?}: {v}"
        );
    }

    // Every node's view of pool a agrees: what one calls ours, the others see as its.
    let views = [
        blocks(&net, 0, Some("a")),
        blocks(&net, 1, Some("a")),
        blocks(&net, 2, None),
    ];
    let mut checked = 0;
    for (i, view) in views.iter().enumerate() {
        for (first, state, _) in view.iter().filter(|b| b.1 == "ours") {
            for (j, other) in views.iter().enumerate().filter(|(j, _)| *j != i) {
                let seen = other.iter().find(|b| &b.0 == first);
                assert!(
                    seen.is_some_and(|b| b.1 == "claimed" && b.2 == ids[i]),
                    "node {j} sees block {first} ({state} at node {i}) as {seen:?}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 6, "only {checked} block views compared");
    // Daemon 2 knows nothing of pool b: it drops its traffic as a foreign swarm.
    let st = ctl_json_ok(&net, 2, &["stats"]);
    assert!(
        st["counters"]["drop.foreign_swarm"].as_u64() > Some(0),
        "{st}"
    );
    assert!(
        blocks(&net, 2, None).iter().all(|b| in_net(&b.0, POOL_A)),
        "daemon 2 lists blocks outside its pool"
    );
}

/// Copies the v1 fixture (snapshot plus journal) into `dir`.
fn copy_fixture(dir: &Path) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-v1/compacted");
    std::fs::create_dir_all(dir).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        let name = name.to_str().unwrap();
        if name.starts_with("journal.") || name.starts_with("snapshot.") {
            std::fs::copy(e.path(), dir.join(name)).unwrap();
        }
    }
}

#[test]
fn a_store_from_before_pools_restarts_as_a_pool() {
    if !require_netns("a_store_from_before_pools_restarts_as_a_pool") {
        return;
    }
    let _g = serial();
    let mut net = new_net(1, 2);
    second_client_link(&net, 0);
    copy_fixture(&net.state_dir(0));
    // The fixture's range (10.0.0.0/24, blocks of 4) is pool `lan` now, next to a new pool.
    let args = pool_args(
        &net,
        0,
        &[
            "--pool",
            "lan=10.0.0.0/24,block=2,iface=client0,option=1:4:255.255.0.0",
            "--pool",
            "more=10.1.128.0/24,block=2,iface=client1,option=1:4:255.255.0.0",
        ],
    );
    start(&mut net, 0, &args);
    wait_pools_serving(&mut net, 0, 2);
    // The option set at run time before the upgrade is still set.
    let v = ctl_json_ok(&net, 0, &["options", "--pool", "lan"]);
    assert!(
        v["options"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["code"] == 6 && o["payload"] == serde_json::json!([10, 0, 0, 53])),
        "option 6 lost in the migration: {v}"
    );
    // Its leases come back with their blocks, in pool lan.
    let mut last = Value::Null;
    let ok = wait_until(Duration::from_secs(20), || {
        last = ctl_json_ok(&net, 0, &["leases", "--pool", "lan"]);
        last["leases"]
            .as_array()
            .is_some_and(|l| l.len() >= fixture::LEASES.len())
    });
    assert!(ok, "fixture leases not restored: {last}");
    for ip in fixture::LEASES {
        assert!(
            last["leases"]
                .as_array()
                .unwrap()
                .iter()
                .any(|l| l["ip"] == *ip),
            "lease {ip} lost: {last}"
        );
    }
    assert!(
        net.daemon_log(0).contains("lan"),
        "the start-up log does not name the pool"
    );
    // It restarts from the store it now wrote (format 2) just as well.
    net.stop_daemon(0);
    start(&mut net, 0, &args);
    wait_pools_serving(&mut net, 0, 2);
    let v = ctl_json_ok(&net, 0, &["leases", "--pool", "lan"]);
    for ip in fixture::LEASES {
        assert!(
            v["leases"]
                .as_array()
                .unwrap()
                .iter()
                .any(|l| l["ip"] == *ip),
            "lease {ip} lost in the second restart: {v}"
        );
    }
}

/// What `tests/fixtures/store-v1/README.md` says the fixture holds.
mod fixture {
    pub const LEASES: &[&str] = &["10.0.0.2", "10.0.0.5"];
}

//! The allocation API with real `ddhcpd` processes in network namespaces: three nodes on
//! one server link, each with a DHCP pool, and two API pools in different locations
//! (`east` on nodes 0 and 1, `west` on node 2).
//!
//! - 16 provisioning clients per node at once, each allocating for its own owners and
//!   asking again for some of them: no address is ever given twice (across the nodes of
//!   a location too), every repeated call for an owner returns the same address;
//! - a pool of another location is refused;
//! - node 0 killed with -9 and started again: it still reports its allocations, and the
//!   blocks they pin are its own in every node's view;
//! - `release` makes an address available again only after the cooldown.
//!
//! Needs root (skips loudly otherwise, fails under CI=true).

#![allow(clippy::disallowed_methods)] // tests of real processes wait on real clocks

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::daemon::{assert_all_alive, ctl_json_ok, new_net, serial, start_node};
use common::netns::{TestNet, require_netns, wait_until};
use serde_json::Value;

const EAST: &str = "east=10.2.0.0/20,use=api,block=4,location=east,cooldown=3,spare=16";
const WEST: &str = "west=10.3.0.0/20,use=api,block=4,location=west,cooldown=3,spare=16";
const CLIENTS: usize = 16;
const OWNERS_PER_CLIENT: usize = 12;

/// One answered call: node, pool, owner, address, created.
type Given = (usize, String, String, String, bool);

fn location(i: usize) -> &'static str {
    if i < 2 { "east" } else { "west" }
}

/// Node 2 also serves the HTTP API on 127.0.0.1:18098 in its namespace.
fn start(net: &mut TestNet, i: usize) {
    let token = net.state_dir.join("api-token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let token = token.to_str().unwrap().to_string();
    let mut args = vec!["--pool", EAST, "--pool", WEST, "--location", location(i)];
    if i == 2 {
        args.extend(["--api", "127.0.0.1:18098", "--api-token", &token]);
    }
    start_node(net, i, &args);
}

const TOKEN: &str = "netns-api-test-token-0123456789";

/// `curl` inside node 2's namespace: (HTTP status, body).
fn http(
    net: &TestNet,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let url = format!("http://127.0.0.1:18098{path}");
    let auth = token.map(|t| format!("Authorization: Bearer {t}"));
    let mut args = vec![
        "curl",
        "-s",
        "-m",
        "10",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        "-X",
        method,
    ];
    if let Some(a) = &auth {
        args.extend(["-H", a]);
    }
    if let Some(b) = body {
        args.extend(["-H", "Content-Type: application/json", "-d", b]);
    }
    args.push(&url);
    let out = net.exec_daemon_ns(2, &args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// `ddhcpctl --json allocate`; the answer or the refusal.
fn allocate(
    net: &TestNet,
    i: usize,
    pool: &str,
    owner: &str,
    ip: Option<&str>,
) -> Result<Value, String> {
    let mut args = vec![
        "allocate",
        "--pool",
        pool,
        "--owner",
        owner,
        "--timeout",
        "20",
    ];
    if let Some(ip) = ip {
        args.extend(["--ip", ip]);
    }
    net.ctl_json(i, &args)
}

fn allocations(net: &TestNet, i: usize) -> Vec<Value> {
    ctl_json_ok(net, i, &["allocations"])["allocations"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn concurrent_provisioning_never_gives_an_address_twice() {
    let _serial = serial();
    if !require_netns("concurrent_provisioning_never_gives_an_address_twice") {
        return;
    }
    let mut net = new_net(3, 1);
    for i in 0..3 {
        start(&mut net, i);
    }
    for i in 0..3 {
        assert!(
            net.wait_ctl_json(i, &["status"], Duration::from_secs(10))
                .is_ok(),
            "node {i} does not answer"
        );
    }

    // 16 clients per node at once; every owner asked twice, some a third time later.
    let net = Arc::new(net);
    let given: Arc<Mutex<Vec<Given>>> = Arc::default();
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let started = Instant::now();
    let mut threads = Vec::new();
    for i in 0..3 {
        for c in 0..CLIENTS {
            let (net, given, failures) = (net.clone(), given.clone(), failures.clone());
            threads.push(std::thread::spawn(move || {
                let pool = location(i);
                for k in 0..OWNERS_PER_CLIENT {
                    let owner = format!("vm-{i}-{c}-{k}");
                    for _ in 0..2 {
                        match allocate(&net, i, pool, &owner, None) {
                            Ok(v) => given.lock().unwrap().push((
                                i,
                                pool.to_string(),
                                owner.clone(),
                                v["ip"].as_str().unwrap_or_default().to_string(),
                                v["created"].as_bool().unwrap_or(false),
                            )),
                            Err(e) => failures.lock().unwrap().push(e),
                        }
                    }
                }
            }));
        }
    }
    for t in threads {
        t.join().unwrap();
    }
    let calls = 3 * CLIENTS * OWNERS_PER_CLIENT * 2;
    println!(
        "FIGURE api: {calls} one-shot allocate calls from {} clients on 3 nodes in {:.2} s",
        3 * CLIENTS,
        started.elapsed().as_secs_f64()
    );
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let mut net = Arc::try_unwrap(net).unwrap_or_else(|_| panic!("threads still hold the net"));
    let given = given.lock().unwrap().clone();
    assert_eq!(given.len(), calls);

    // Each owner got one address, the same every time, created exactly once.
    let mut by_owner: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut created: BTreeMap<String, usize> = BTreeMap::new();
    for (_, _, owner, ip, c) in &given {
        by_owner
            .entry(owner.clone())
            .or_default()
            .insert(ip.clone());
        *created.entry(owner.clone()).or_default() += usize::from(*c);
    }
    for (owner, ips) in &by_owner {
        assert_eq!(ips.len(), 1, "{owner} got {ips:?}");
        assert_eq!(
            created[owner], 1,
            "{owner} created {} times",
            created[owner]
        );
    }
    // No address twice, per pool, over all nodes (0 and 1 share pool east).
    let mut seen: BTreeMap<(String, String), String> = BTreeMap::new();
    for i in 0..3 {
        for a in allocations(&net, i) {
            let key = (s(&a["pool"]), s(&a["ip"]));
            if let Some(other) = seen.insert(key.clone(), s(&a["owner"])) {
                panic!(
                    "{key:?} given to {other} and to {} (node {i})",
                    s(&a["owner"])
                );
            }
            assert_eq!(a["node_id"], ctl_json_ok(&net, i, &["status"])["node_id"]);
        }
    }
    assert_eq!(seen.len(), by_owner.len());

    // A pool of another location is refused, with the reason.
    let e = allocate(&net, 2, "east", "vm-x", None).unwrap_err();
    assert!(e.contains("not an api pool on this node"), "{e}");

    // kill -9 node 0 and start it again: its allocations and their blocks stay its own.
    let before: BTreeSet<String> = allocations(&net, 0).iter().map(|a| s(&a["ip"])).collect();
    let id0 = s(&ctl_json_ok(&net, 0, &["status"])["node_id"]);
    net.kill9(0);
    start(&mut net, 0);
    let after = net
        .wait_ctl_json(0, &["allocations"], Duration::from_secs(10))
        .expect("node 0 answers after the restart");
    let after: BTreeSet<String> = after["allocations"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| s(&a["ip"]))
        .collect();
    assert_eq!(
        after, before,
        "node 0's allocations after kill -9 and restart"
    );
    let blocks_of = |ips: &BTreeSet<String>| -> BTreeSet<u64> {
        ips.iter()
            .map(|ip| {
                let o: Vec<u64> = ip.split('.').map(|x| x.parse().unwrap()).collect();
                (o[2] * 256 + o[3]) / 16
            })
            .collect()
    };
    let pinned = blocks_of(&before);
    // Longer than the block timeout (-B 10): the claims must have been refreshed.
    std::thread::sleep(Duration::from_secs(12));
    for i in 0..2 {
        let v = ctl_json_ok(&net, i, &["blocks", "--pool", "east"]);
        for b in v["blocks"].as_array().unwrap() {
            let idx = b["index"].as_u64().unwrap();
            if pinned.contains(&idx) {
                let ok = if i == 0 {
                    b["state"] == "ours"
                } else {
                    b["state"] == "claimed" && s(&b["owner"]) == id0
                };
                assert!(ok, "node {i}: pinned block {idx} is {b}");
            }
        }
    }
    assert_eq!(
        v_len(&ctl_json_ok(&net, 0, &["allocations"])["allocations"]),
        before.len()
    );

    // release, then the address waits for its cooldown (3 s) before it is given again.
    let a = allocations(&net, 1)
        .into_iter()
        .next()
        .expect("node 1 has allocations");
    let (ip, owner) = (s(&a["ip"]), s(&a["owner"]));
    let r = ctl_json_ok(&net, 1, &["release", &ip]);
    assert_eq!(r["ip"], ip.as_str());
    assert!(
        net.ctl_json(1, &["release", &ip]).is_err(),
        "released twice"
    );
    let e = allocate(&net, 1, "east", "vm-new", Some(&ip)).unwrap_err();
    assert!(e.contains("cools down"), "{e}");
    let show = ctl_json_ok(&net, 1, &["show", &ip]);
    assert_eq!(show["state"], "cooldown", "{show}");
    assert!(
        wait_until(Duration::from_secs(6), || allocate(
            &net,
            1,
            "east",
            "vm-new",
            Some(&ip)
        )
        .is_ok()),
        "{ip} not available again after the cooldown"
    );
    let again = allocate(&net, 1, "east", "vm-new", None).unwrap();
    assert_eq!(again["ip"], ip.as_str());
    assert_eq!(again["created"], false);
    assert_ne!(owner, "vm-new");

    // HTTP: without a token or with a wrong one refused, and nothing changes.
    let count = |net: &TestNet| allocations(net, 2).len();
    let before = count(&net);
    let body = r#"{"pool":"west","owner":"vm-http"}"#;
    assert_eq!(http(&net, "POST", "/v1/allocate", None, Some(body)).0, 401);
    assert_eq!(
        http(
            &net,
            "POST",
            "/v1/allocate",
            Some("wrong-token-wrong-token"),
            Some(body)
        )
        .0,
        401
    );
    assert_eq!(http(&net, "GET", "/v1/allocations", Some("x"), None).0, 401);
    assert_eq!(count(&net), before, "a refused request changed nothing");
    let (code, text) = http(&net, "POST", "/v1/allocate", Some(TOKEN), Some(body));
    assert_eq!(code, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (v["owner"].as_str(), v["created"].as_bool()),
        (Some("vm-http"), Some(true))
    );
    let (code, again) = http(&net, "POST", "/v1/allocate", Some(TOKEN), Some(body));
    assert_eq!(code, 200);
    let again: Value = serde_json::from_str(&again).unwrap();
    assert_eq!(
        (&again["ip"], &again["created"]),
        (&v["ip"], &Value::Bool(false))
    );
    let ip = s(&v["ip"]);
    let (code, shown) = http(
        &net,
        "GET",
        &format!("/v1/addresses/{ip}"),
        Some(TOKEN),
        None,
    );
    assert_eq!(code, 200, "{shown}");
    assert!(shown.contains("allocated"), "{shown}");
    let taken = format!(r#"{{"pool":"west","owner":"vm-other","ip":"{ip}"}}"#);
    assert_eq!(
        http(&net, "POST", "/v1/allocate", Some(TOKEN), Some(&taken)).0,
        409
    );
    assert_eq!(count(&net), before + 1);
    assert_all_alive(&mut net);
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

fn v_len(v: &Value) -> usize {
    v.as_array().map_or(0, Vec::len)
}

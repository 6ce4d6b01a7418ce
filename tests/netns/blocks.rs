//! Real `ddhcpd` processes in network namespaces on one bridge: they converge to disjoint
//! block sets that every node sees the same way; a killed node's blocks become free within
//! the TTL; the node restarts and claims again. Needs root (skips loudly otherwise, fails
//! under CI=true).

#![allow(clippy::disallowed_methods)] // tests of real processes wait on real clocks

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::daemon::{new_net, start_node_without};
use common::netns::{TestNet, require_netns, wait_until};
use serde_json::Value;

const N: usize = 5;
const TTL: u64 = 10;

/// Blocks of 4 with a `-B` of [`TTL`], logging at info level, no subnet mask option.
fn start(net: &mut TestNet, i: usize) {
    let ttl = TTL.to_string();
    start_node_without(net, i, &["-o"], &["-B", &ttl, "-v"]);
}

/// `(node_id, blocks)` of every running node in `nodes`.
fn tables(net: &TestNet, nodes: &[usize]) -> Option<BTreeMap<usize, (String, Vec<Value>)>> {
    let mut out = BTreeMap::new();
    for &i in nodes {
        let v = net.ctl_json(i, &["blocks"]).ok()?;
        let id = v["node_id"].as_str()?.to_string();
        out.insert(i, (id, v["blocks"].as_array()?.clone()));
    }
    Some(out)
}

/// Every node owns at least one block, owned sets are disjoint, and every node sees every
/// other node's blocks as claimed by that node. Returns the owned sets.
fn agreed(net: &TestNet, nodes: &[usize]) -> Result<BTreeMap<usize, BTreeSet<u64>>, String> {
    let t = tables(net, nodes).ok_or("a control socket did not answer")?;
    let mut owned: BTreeMap<usize, BTreeSet<u64>> = BTreeMap::new();
    let mut owner_of: BTreeMap<u64, String> = BTreeMap::new();
    for (&i, (id, blocks)) in &t {
        for b in blocks {
            if b["state"] == "ours" {
                let idx = b["index"].as_u64().unwrap();
                if let Some(other) = owner_of.insert(idx, id.clone()) {
                    return Err(format!("block {idx} owned by {other} and {id}"));
                }
                owned.entry(i).or_default().insert(idx);
            }
        }
    }
    for &i in nodes {
        if owned.get(&i).is_none_or(|s| s.is_empty()) {
            return Err(format!("node {i} owns nothing yet"));
        }
    }
    for (&i, (id, blocks)) in &t {
        for (&idx, owner) in &owner_of {
            if owner == id {
                continue;
            }
            let seen = blocks.iter().find(|b| b["index"].as_u64() == Some(idx));
            match seen {
                Some(b) if b["state"] == "claimed" && b["owner"] == owner.as_str() => {}
                other => {
                    return Err(format!(
                        "node {i} sees block {idx} as {other:?}, owner is {owner}"
                    ));
                }
            }
        }
    }
    Ok(owned)
}

#[test]
fn five_daemons_converge_survive_a_kill_and_reclaim() {
    if !require_netns("five_daemons_converge_survive_a_kill_and_reclaim") {
        return;
    }
    let mut net = new_net(N, 1);
    let all: Vec<usize> = (0..N).collect();
    let started = Instant::now();
    for i in 0..N {
        start(&mut net, i);
    }
    // A claim takes three rounds one second apart (t = 2); allow for a lost race or two.
    let mut last = Err(String::new());
    assert!(
        wait_until(Duration::from_secs(20), || {
            last = agreed(&net, &all);
            last.is_ok()
        }),
        "no agreement: {last:?}"
    );
    let owned = last.unwrap();
    eprintln!("converged after {:?}: {owned:?}", started.elapsed());

    // Status agrees with the table.
    let status = net.ctl_json(0, &["status"]).unwrap();
    assert_eq!(status["learning"], false);
    assert_eq!(status["network"], "10.0.128.0/24");
    assert_eq!(status["block_size"], 4);
    assert_eq!(
        status["blocks_owned"].as_u64().unwrap() as usize,
        owned[&0].len()
    );
    assert_eq!(status["peers"], (N - 1) as u64);

    // Kill node 2 hard: its blocks stay claimed for up to the TTL, then are free everywhere.
    let victim = 2;
    let victim_id = net.ctl_json(victim, &["status"]).unwrap()["node_id"]
        .as_str()
        .unwrap()
        .to_string();
    net.kill_daemon(victim, "KILL");
    let killed = Instant::now();
    let others: Vec<usize> = all.iter().copied().filter(|&i| i != victim).collect();
    let still_claimed = |net: &TestNet| {
        tables(net, &others).is_some_and(|t| {
            t.values()
                .any(|(_, blocks)| blocks.iter().any(|b| b["owner"] == victim_id.as_str()))
        })
    };
    assert!(still_claimed(&net), "victim's blocks forgotten at once");
    assert!(
        wait_until(Duration::from_secs(TTL + 3), || !still_claimed(&net)),
        "victim's blocks still claimed {TTL}+3 s after the kill"
    );
    let freed = killed.elapsed();
    eprintln!("victim's blocks free everywhere {freed:?} after kill -9");
    assert!(
        freed >= Duration::from_secs(TTL / 2),
        "freed after {freed:?}, before the TTL could have run out"
    );

    // Restart with the same state dir: same node id, claims again, everyone agrees.
    start(&mut net, victim);
    let mut last = Err(String::new());
    assert!(
        wait_until(Duration::from_secs(20), || {
            last = agreed(&net, &all);
            last.is_ok()
        }),
        "no agreement after restart: {last:?}"
    );
    let again = net.ctl_json(victim, &["status"]).unwrap();
    assert_eq!(
        again["node_id"],
        victim_id.as_str(),
        "node id not persisted"
    );

    // Clean shutdown within a second, control socket removed.
    for i in 0..N {
        let t = Instant::now();
        net.signal_daemon(i, "TERM").unwrap();
        assert!(
            net.wait_daemon(i, Duration::from_secs(1)).is_some(),
            "node {i} did not stop within 1 s of SIGTERM"
        );
        eprintln!("node {i} stopped in {:?}", t.elapsed());
        assert!(!net.sock(i).exists(), "control socket left behind");
    }
    assert!(!net.daemon_log(0).contains("panicked"));
}

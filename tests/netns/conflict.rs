//! Races the real daemons must settle on a real link: a partition in which both sides own
//! the only block (the smaller id yields when the link heals and runs the `conflict` hook),
//! and two hosts sharing a node id (both notice, pick new ids, run the `nodeid` hook, and
//! end with distinct ids and disjoint blocks).

#![allow(clippy::disallowed_methods)] // tests of real processes wait on real clocks

use crate::common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::daemon::{counter, ctl_json_ok, logging_hook, new_net, serial, start_node_without};
use common::netns::{require_netns, wait_until};

const SMALL: &str = "0100000000000001";
const GREAT: &str = "0200000000000002";

/// Blocks daemon i owns (empty while it does not answer yet).
fn owned(net: &common::netns::TestNet, i: usize) -> BTreeSet<u64> {
    let Ok(v) = net.ctl_json(i, &["blocks"]) else {
        return BTreeSet::new();
    };
    v["blocks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["state"] == "ours")
        .filter_map(|b| b["index"].as_u64())
        .collect()
}

fn wait_up(net: &common::netns::TestNet) {
    for i in 0..2 {
        net.wait_ctl_json(i, &["status"], Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("daemon {i} not up: {e}"));
    }
}

#[test]
fn partition_conflict_greater_id_keeps_the_block() {
    if !require_netns("partition_conflict_greater_id_keeps_the_block") {
        return;
    }
    let _guard = serial();
    let mut net = new_net(2, 1);
    // Cut node 1's server port off the shared bridge: two halves.
    let hub = |net: &common::netns::TestNet, args: &[&str]| {
        let out = net.exec_hub(args);
        assert!(out.status.success(), "{args:?}: {out:?}");
    };
    hub(&net, &["ip", "link", "set", "s1", "nomaster"]);
    let logs: Vec<_> = (0..2)
        .map(|i| net.state_dir.join(format!("hook{i}.log")))
        .collect();
    for (i, id) in [SMALL, GREAT].into_iter().enumerate() {
        let hook = logging_hook(&net, &format!("hook{i}.sh"), &logs[i], "");
        let hook = hook.to_str().unwrap().to_string();
        // A single block of four addresses: both halves must claim the same one.
        start_node_without(
            &mut net,
            i,
            &["-N", "-s"],
            &[
                "-N",
                "10.0.128.0/30",
                "-s",
                "1",
                "--node-id",
                id,
                "-H",
                &hook,
            ],
        );
    }
    wait_up(&net);
    assert!(
        wait_until(Duration::from_secs(15), || owned(&net, 0).len() == 1
            && owned(&net, 1).len() == 1),
        "both halves should own the block"
    );
    // Heal: within one refresh interval (B/4 = 2.5 s) the smaller id hears the greater's
    // claim and yields.
    hub(&net, &["ip", "link", "set", "s1", "master", "br-srv"]);
    assert!(
        wait_until(Duration::from_secs(10), || owned(&net, 0).is_empty()),
        "node 0 (smaller id) still owns the block after the heal"
    );
    assert_eq!(owned(&net, 1).len(), 1, "the greater id keeps it");
    assert_eq!(counter(&net, 0, "blocks.lost"), 1);
    let blocks = ctl_json_ok(&net, 0, &["blocks"]);
    let row = &blocks["blocks"][0];
    assert_eq!(row["state"], "claimed");
    assert_eq!(row["owner"], GREAT);
    assert!(
        wait_until(Duration::from_secs(5), || std::fs::read_to_string(&logs[0])
            .unwrap_or_default()
            .contains(&format!("conflict 10.0.128.0/30 {GREAT}"))),
        "no conflict hook: {}",
        std::fs::read_to_string(&logs[0]).unwrap_or_default()
    );
    assert!(
        !std::fs::read_to_string(&logs[1])
            .unwrap_or_default()
            .contains("conflict")
    );
}

#[test]
fn duplicate_node_ids_are_noticed_and_replaced() {
    if !require_netns("duplicate_node_ids_are_noticed_and_replaced") {
        return;
    }
    let _guard = serial();
    let mut net = new_net(2, 1);
    let logs: Vec<_> = (0..2)
        .map(|i| net.state_dir.join(format!("hook{i}.log")))
        .collect();
    for (i, log) in logs.iter().enumerate() {
        let hook = logging_hook(&net, &format!("hook{i}.sh"), log, "");
        let hook = hook.to_str().unwrap().to_string();
        start_node_without(&mut net, i, &[], &["--node-id", SMALL, "-H", &hook]);
    }
    wait_up(&net);
    let ids = || -> Vec<String> {
        (0..2)
            .map(|i| {
                ctl_json_ok(&net, i, &["status"])["node_id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(15), || {
            let ids = ids();
            ids[0] != ids[1]
                && !owned(&net, 0).is_empty()
                && !owned(&net, 1).is_empty()
                && owned(&net, 0).is_disjoint(&owned(&net, 1))
        }),
        "ids {:?}, blocks {:?} / {:?}",
        ids(),
        owned(&net, 0),
        owned(&net, 1)
    );
    let changed: u64 = (0..2).map(|i| counter(&net, i, "node.duplicate_id")).sum();
    assert!(changed >= 1, "nobody noticed the duplicate id");
    let hooked = (0..2)
        .filter(|&i| {
            std::fs::read_to_string(&logs[i])
                .unwrap_or_default()
                .lines()
                .any(|l| l.starts_with(&format!("nodeid {SMALL} ")))
        })
        .count();
    assert!(hooked >= 1, "no nodeid hook ran");
    let log: String = (0..2).map(|i| net.daemon_log(i)).collect();
    assert!(log.contains("DUPLICATE NODE ID"), "not logged loudly");
}

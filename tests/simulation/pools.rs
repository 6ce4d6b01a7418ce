//! Several pools on one server link: nodes that hold different subsets of the pools, in
//! different orders, at different locations, next to nodes that know one pool only (as a
//! C ddhcpd does, and C-model nodes too).
//!
//! What must hold: every block of every pool has at most one owner once settled, and all
//! nodes that know a pool agree on its owners; no node ever claims in a pool of another
//! location; and the one-pool nodes settle as in a mesh that has no other pools.

use crate::sim;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use ddhcp::node::{NodeConfig, PoolConfig, ServiceConfig};
use ddhcp::range::ManagedRange;
use ddhcp::stats::Counter;
use ddhcp::testing::claim;
use ddhcp::time::Instant;
use sim::cnode::CConfig;
use sim::{Link, Sim, percentile, seeds};

const T: u64 = 15;
const B: u64 = 60;

fn range(name: &str) -> ManagedRange {
    match name {
        "lan" => ManagedRange::new(Ipv4Addr::new(10, 0, 0, 0), 22, 2).unwrap(),
        "dc1" => ManagedRange::new(Ipv4Addr::new(10, 1, 0, 0), 22, 3).unwrap(),
        "dc2" => ManagedRange::new(Ipv4Addr::new(10, 2, 0, 0), 23, 2).unwrap(),
        _ => unreachable!(),
    }
}

fn pool(name: &str, spare: u32) -> PoolConfig {
    PoolConfig {
        name: name.into(),
        range: range(name),
        claim: claim(T, B, spare, false),
        service: ServiceConfig::Passive,
        location: match name {
            "dc1" => Some("rack1".into()),
            "dc2" => Some("rack2".into()),
            _ => None,
        },
    }
}

fn node(pools: &[&str], location: Option<&str>, spare: u32) -> NodeConfig {
    NodeConfig {
        pools: pools.iter().map(|p| pool(p, spare)).collect(),
        location: location.map(String::from),
        replicas: ddhcp::replica::DEFAULT_REPLICAS,
        recover: false,
        max_replica_lag: ddhcp::replica::DEFAULT_MAX_LAG,
        replica_sync: false,
    }
}

fn c_node(spare: u32) -> CConfig {
    CConfig {
        range: range("lan"),
        tentative: T,
        block_timeout: B,
        spare,
        learning: false,
        lease_time: 3600,
        little_endian: true,
        master: false,
    }
}

/// Who knows which pool. Nodes 0..10 know only `lan`; three C-model nodes too.
fn mesh(s: &mut Sim, only_lan: bool) {
    let plan: Vec<(Vec<&str>, Option<&str>)> = (0..30)
        .map(|i| match i {
            0..10 => (vec!["lan"], None),
            10..20 => (vec!["lan", "dc1", "dc2"], Some("rack1")),
            20..25 => (vec!["dc1", "dc2"], Some("rack2")),
            _ => (vec!["dc2", "lan"], Some("rack1")),
        })
        .collect();
    for (i, (pools, loc)) in plan.into_iter().enumerate() {
        let spare = 2 + (i as u32 % 3);
        if only_lan {
            // The same nodes with the other pools taken away.
            let lan: Vec<&str> = pools.into_iter().filter(|p| *p == "lan").collect();
            if lan.is_empty() {
                s.add_node(node(&["lan"], None, 0));
            } else {
                s.add_node(node(&lan, None, spare));
            }
        } else {
            s.add_node(node(&pools, loc, spare));
        }
        if i % 10 == 9 {
            s.add_c_node(c_node(2));
        }
    }
}

/// Every node has the blocks it wants in every pool it claims in.
fn settled(s: &Sim) -> bool {
    s.running().all(|(_, n)| {
        n.pools().iter().all(|p| {
            !p.claims()
                || (!p.blocks().is_learning()
                    && (p.blocks().blocks_needed() <= 0 || p.blocks().free_count() == 0))
        })
    })
}

/// Only the `lan` part of [`settled`], for the comparison with a one-pool mesh.
fn lan_settled(s: &Sim) -> bool {
    s.running().all(|(_, n)| {
        n.pools().iter().filter(|p| p.name() == "lan").all(|p| {
            !p.blocks().is_learning()
                && (p.blocks().blocks_needed() <= 0 || p.blocks().free_count() == 0)
        })
    }) && s.check_no_wrong_owner().is_ok()
}

/// Owners of each pool's blocks by the nodes' own tables, and whether every node that
/// knows the pool names the same owner.
fn check_pools(s: &Sim, seed: u64) {
    let mut owners: BTreeMap<(&str, u32), Vec<usize>> = BTreeMap::new();
    for (i, n) in s.running() {
        for p in n.pools() {
            for b in p.blocks().owned() {
                owners.entry((p.name(), b)).or_default().push(i);
            }
            // From the configuration, not from what the node thinks of itself.
            let may_claim = p
                .config()
                .location
                .as_deref()
                .is_none_or(|l| n.location() == Some(l));
            assert_eq!(
                p.claims(),
                may_claim,
                "seed {seed}: node {i} pool {}",
                p.name()
            );
            if !may_claim {
                assert_eq!(
                    p.counters().get(Counter::BlocksClaimed),
                    0,
                    "seed {seed}: node {i} claimed in pool {} of another location",
                    p.name()
                );
                assert_eq!(p.blocks().owned_count(), 0);
            }
        }
    }
    for ((pool, b), who) in &owners {
        assert_eq!(
            who.len(),
            1,
            "seed {seed}: block {b} of {pool} owned by {who:?}"
        );
    }
    for (i, n) in s.running() {
        for p in n.pools() {
            for ((pool, b), who) in owners.iter().filter(|((name, _), _)| *name == p.name()) {
                let owner = s.node(who[0]).unwrap().id();
                if who[0] == i {
                    continue;
                }
                assert_eq!(
                    p.blocks().owner_of(*b).map(|o| o.0),
                    Some(owner),
                    "seed {seed}: node {i} does not see node {} as owner of {pool} block {b}",
                    who[0]
                );
            }
        }
    }
}

fn secs(i: Instant) -> f64 {
    i.as_millis() as f64 / 1000.0
}

#[test]
fn thirty_nodes_three_pools_settle_with_one_owner_per_block() {
    let mut multi = Vec::new();
    let mut single = Vec::new();
    let mut claimed_per_pool: BTreeMap<String, usize> = BTreeMap::new();
    for seed in 0..seeds(10) {
        let mut s = Sim::new(seed, Link::lossy(0.05));
        mesh(&mut s, false);
        let lan_at = s
            .run_until_pred(Instant::from_millis(600_000), lan_settled)
            .unwrap_or_else(|| panic!("seed {seed}: lan does not settle"));
        s.run_until_pred(Instant::from_millis(900_000), settled)
            .unwrap_or_else(|| panic!("seed {seed}: pools do not settle"));
        // A steady stretch: refreshes, lapses and give-ups go on, ownership must hold.
        s.run_for(Duration::from_secs(2 * B));
        check_pools(&s, seed);
        s.check_no_wrong_owner()
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert!(s.overlaps.is_empty(), "seed {seed}: {:?}", s.overlaps);
        for (i, n) in s.running() {
            for p in n.pools() {
                *claimed_per_pool.entry(p.name().to_string()).or_default() +=
                    p.blocks().owned_count();
            }
            if n.pools().len() == 1 {
                assert!(
                    n.counters().get(Counter::DropForeignSwarm) > 0,
                    "seed {seed}: one-pool node {i} never heard the other pools"
                );
            }
        }
        for (i, c) in s.running_c() {
            let _ = c;
            assert!(s.is_c(i));
        }
        multi.push(secs(lan_at));

        // The same seed with the other pools taken away.
        let mut s = Sim::new(seed, Link::lossy(0.05));
        mesh(&mut s, true);
        let at = s
            .run_until_pred(Instant::from_millis(600_000), lan_settled)
            .unwrap_or_else(|| panic!("seed {seed}: one-pool lan does not settle"));
        single.push(secs(at));
    }
    multi.sort_by(f64::total_cmp);
    single.sort_by(f64::total_cmp);
    let fig = |v: &[f64]| {
        format!(
            "min={:.1} p50={:.1} p95={:.1} max={:.1}",
            v[0],
            percentile(v, 50.0),
            percentile(v, 95.0),
            v[v.len() - 1]
        )
    };
    println!(
        "SIM pools_30_nodes: seeds={} lan settle_s with three pools {}; lan alone {}; blocks owned at the end per pool {claimed_per_pool:?}",
        multi.len(),
        fig(&multi),
        fig(&single)
    );
    // Other pools' traffic costs one-pool nodes nothing but a dropped datagram: the lan
    // settles within a claim round of the one-pool mesh.
    let round = T as f64 / 2.0;
    assert!(
        percentile(&multi, 95.0) <= percentile(&single, 95.0) + round,
        "three pools slow the lan down: {} vs {}",
        fig(&multi),
        fig(&single)
    );
    let pools: BTreeSet<_> = claimed_per_pool.keys().cloned().collect();
    assert_eq!(pools.len(), 3);
    assert!(
        claimed_per_pool.values().all(|&n| n > 0),
        "{claimed_per_pool:?}"
    );
}

//! Replication of bindings to peers (src/replica.rs), in the simulator.
//!
//! What must hold once the mesh is quiet: every block a node owns has the holders the
//! rendezvous rule names over the live ddhcp peers (computed here independently of the
//! node's own record), each holder holds exactly the owner's bindings of that block, and
//! nothing is left unacknowledged — over loss, delay, duplication and roaming clients, with
//! C nodes on the same link that are never sent a replication message.

mod sim;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use ddhcp::blocks::ClaimConfig;
use ddhcp::node::{Node, NodeConfig};
use ddhcp::persist::Change;
use ddhcp::range::ManagedRange;
use ddhcp::replica::{self, DEFAULT_REPLICAS};
use ddhcp::testing::{claim, dhcp_node, lease_time};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use sim::cnode::CConfig;
use sim::{Link, Sim, percentile, seeds};

fn range() -> ManagedRange {
    ManagedRange::new(Ipv4Addr::new(10, 0, 128, 0), 24, 2).unwrap()
}

fn config() -> NodeConfig {
    dhcp_node(
        range(),
        ClaimConfig {
            needless_timeout: Duration::from_secs(60),
            ..claim(2, 30, 2, false)
        },
        vec![lease_time(120)],
    )
}

fn c_config() -> CConfig {
    CConfig {
        range: range(),
        tentative: 2,
        block_timeout: 30,
        spare: 2,
        learning: false,
        lease_time: 120,
        little_endian: true,
        master: false,
    }
}

/// The owner's leases of `block` as (address, client) pairs.
fn owner_leases(n: &Node, block: u32) -> BTreeSet<(Ipv4Addr, Vec<u8>)> {
    n.dhcp()
        .unwrap()
        .leases
        .block_records(block)
        .into_iter()
        .filter_map(|c| match c {
            Change::Lease(l) => Some((
                l.ip,
                l.client.map(|k| k.as_bytes().to_vec()).unwrap_or_default(),
            )),
            _ => None,
        })
        .collect()
}

/// Checks every owned block of every ddhcp node against its holders; returns the number of
/// (block, holder) pairs checked.
fn check_replicas(s: &Sim, seed: u64) -> usize {
    let r = range();
    let ddhcp_ids: Vec<_> = s.running().map(|(_, n)| n.id()).collect();
    let mut pairs = 0;
    for (i, n) in s.running() {
        for v in n.replication().streams(s.now) {
            assert_eq!(
                v.lag_records, 0,
                "seed {seed}: node {i} has unacknowledged changes for {}: {v:?}",
                v.peer
            );
        }
        for block in n.blocks().owned() {
            let expect = replica::holders(
                &r.swarm(),
                block,
                n.id(),
                ddhcp_ids.iter().copied(),
                DEFAULT_REPLICAS,
            );
            assert_eq!(
                n.replication().holders_of(0, block),
                expect.as_slice(),
                "seed {seed}: node {i} block {block}"
            );
            let want = owner_leases(n, block);
            for h in &expect {
                let (_, holder) = s
                    .running()
                    .find(|(_, m)| m.id() == *h)
                    .expect("a holder is a running node");
                let got = holder
                    .replication()
                    .replica(0, n.id(), block)
                    .unwrap_or_else(|| {
                        panic!("seed {seed}: {h} holds nothing of node {i} block {block}")
                    });
                let have: BTreeSet<_> = got
                    .leases
                    .values()
                    .map(|l| {
                        (
                            l.ip,
                            l.client
                                .as_ref()
                                .map(|k| k.as_bytes().to_vec())
                                .unwrap_or_default(),
                        )
                    })
                    .collect();
                assert_eq!(have, want, "seed {seed}: node {i} block {block} at {h}");
                pairs += 1;
            }
        }
    }
    pairs
}

/// Five ddhcp nodes and one C node, 40 clients roaming for ten minutes over a link that
/// loses 10 % and duplicates 2 % of all datagrams; a node stops and another starts in the
/// middle (holders move). After a quiet minute the replicas match.
#[test]
fn replicas_match_their_owners_over_loss_roaming_and_churn() {
    let mut bytes_per_change = Vec::new();
    let mut checked = 0;
    for seed in 0..seeds(6) {
        let link = Link {
            duplicate: 0.02,
            ..Link::lossy(0.1)
        };
        let mut s = Sim::new(seed, link);
        for _ in 0..5 {
            s.add_node(config());
        }
        s.add_c_node(c_config());
        for c in 0..40 {
            s.add_client(c % 5);
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let end = s.now + Duration::from_secs(600);
        let mut live = vec![0, 1, 2, 3, 4];
        while s.now < end {
            s.run_for(Duration::from_millis(rng.random_range(1000..6000)));
            let to = live[rng.random_range(0..live.len())];
            s.roam(rng.random_range(0..40), to);
            if live.contains(&4) && s.now > end - Duration::from_secs(300) {
                // Node 4 leaves for good (its clients move to the others), a new one joins.
                s.stop(4);
                let new = s.add_node(config());
                live = vec![0, 1, 2, 3, new];
                for c in 0..40 {
                    if s.clients[c].node == 4 {
                        s.roam(c, rng.random_range(0..4));
                    }
                }
            }
        }
        // Quiet: no roaming for a minute, long enough for the stopped node's claims to
        // lapse (30 s) and its holders to be replaced.
        s.run_for(Duration::from_secs(60));
        // Clients keep renewing, so some change is usually in flight: wait for a moment
        // when every holder has acknowledged everything (it comes within milliseconds of
        // each renewal), and check there.
        let limit = s.now + Duration::from_secs(30);
        let quiet = s.run_until_pred(limit, |s| {
            s.running().all(|(_, n)| {
                n.replication()
                    .streams(s.now)
                    .iter()
                    .all(|v| v.lag_records == 0)
            })
        });
        assert!(quiet.is_some(), "seed {seed}: replication never caught up");
        assert!(
            s.address_conflicts.is_empty(),
            "seed {seed}: {:?}",
            s.address_conflicts
        );
        assert_eq!(s.ext_to_c, 0, "seed {seed}: a C node was sent our messages");
        let pairs = check_replicas(&s, seed);
        assert!(pairs >= 10, "seed {seed}: only {pairs} replicas checked");
        checked += pairs;
        let (mut b, mut r) = (0u64, 0u64);
        for (_, n) in s.running() {
            let st = n.replication().stats();
            b += st.bytes_sent;
            r += st.records_sent;
        }
        bytes_per_change.push(b as f64 / r.max(1) as f64);
    }
    bytes_per_change.sort_by(f64::total_cmp);
    println!(
        "SIM replicas: seeds={} block replicas checked={checked}, replicate bytes per change p50={:.1}",
        bytes_per_change.len(),
        percentile(&bytes_per_change, 50.0)
    );
}

/// `--replicas 0`: no claim is marked, nothing is sent, nothing is held.
#[test]
fn replicas_zero_sends_nothing() {
    let mut s = Sim::new(1, Link::clean());
    for _ in 0..3 {
        let mut cfg = config();
        cfg.replicas = 0;
        s.add_node(cfg);
    }
    for c in 0..9 {
        s.add_client(c % 3);
    }
    s.run_for(Duration::from_secs(120));
    for (_, n) in s.running() {
        assert_eq!(n.replication().stats().batches_sent, 0);
        assert!(n.replication().held(s.now).is_empty());
        assert_eq!(n.replication().peers(0).count(), 0);
    }
}

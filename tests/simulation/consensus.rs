//! Consensus scenarios in the deterministic simulator, each over many seeds.
//!
//! Run with `cargo test --release --test simulation -- consensus:: --nocapture` to see the figures;
//! `SIM_SEEDS=N` changes the number of seeds.
//!
//! Timers are ddhcpd's defaults (`-t 15 -B 60`) unless a scenario says otherwise, with
//! Gluon's `-b 2 -s 2` (one block per node). A lone claim then takes three Inquire rounds
//! 7.5 s apart and the block is owned at the fourth: 22.5 s = 1.5·t after the first round.

use crate::sim;

use std::net::Ipv4Addr;
use std::time::Duration;

use ddhcp::blocks::ClaimConfig;
use ddhcp::dhcp::leases::AddrState;
use ddhcp::node::NodeConfig;
use ddhcp::range::ManagedRange;
use ddhcp::testing::{claim, dhcp_node, lease_time};
use ddhcp::time::Instant;
use sim::{Link, Sim, percentile, seeds};

const T: u64 = 15;
const B: u64 = 60;

fn config(net: [u8; 4], len: u8, learning: bool) -> NodeConfig {
    NodeConfig::single(
        ManagedRange::new(Ipv4Addr::from(net), len, 2).unwrap(),
        claim(T, B, 2, learning),
        None,
    )
}

fn secs(i: Instant) -> f64 {
    i.as_millis() as f64 / 1000.0
}

fn at(s: u64) -> Instant {
    Instant::from_millis(s * 1000)
}

/// All running nodes have their blocks and every view agrees.
fn settled(s: &Sim) -> bool {
    s.all_satisfied() && s.check_agreement().is_ok()
}

struct Figures {
    converge: Vec<f64>,
    msgs_per_node_min: Vec<f64>,
    bytes_per_node_min: Vec<f64>,
}

impl Figures {
    fn new() -> Self {
        Figures {
            converge: vec![],
            msgs_per_node_min: vec![],
            bytes_per_node_min: vec![],
        }
    }

    fn print(&mut self, name: &str) {
        for v in [
            &mut self.converge,
            &mut self.msgs_per_node_min,
            &mut self.bytes_per_node_min,
        ] {
            v.sort_by(f64::total_cmp);
        }
        let c = &self.converge;
        println!(
            "SIM {name}: seeds={} converge_s min={:.1} p50={:.1} p95={:.1} max={:.1}",
            c.len(),
            c[0],
            percentile(c, 50.0),
            percentile(c, 95.0),
            c[c.len() - 1]
        );
        if !self.msgs_per_node_min.is_empty() {
            println!(
                "SIM {name}: steady state per node per minute: packets p50={:.2} max={:.2}, bytes p50={:.0}",
                percentile(&self.msgs_per_node_min, 50.0),
                self.msgs_per_node_min[self.msgs_per_node_min.len() - 1],
                percentile(&self.bytes_per_node_min, 50.0),
            );
        }
    }
}

/// Measures traffic over `window` of steady state, per node per minute.
fn steady_state(s: &mut Sim, window: Duration, f: &mut Figures) {
    let (p0, b0) = (s.sent_packets(), s.sent_bytes());
    s.run_for(window);
    let nodes = s.running().count() as f64;
    let minutes = window.as_secs_f64() / 60.0;
    f.msgs_per_node_min
        .push((s.sent_packets() - p0) as f64 / nodes / minutes);
    f.bytes_per_node_min
        .push((s.sent_bytes() - b0) as f64 / nodes / minutes);
}

/// N nodes with `-L` start in the same instant on a clean link.
///
/// Bound: a collision-free claim takes 1.5·t = 22.5 s. A node that picked the same block as
/// a greater id hears its Inquire within the first round and picks again one round later,
/// so each lost race costs at most 1.5·t + t/2 = 30 s. With 1024 blocks even 200 nodes
/// rarely collide twice in a row; we allow three lost races in a row: 22.5 + 3·30 = 112.5 s.
fn start_together(n: usize, default_seeds: u64) {
    let mut f = Figures::new();
    for seed in 0..seeds(default_seeds) {
        let mut s = Sim::new(seed, Link::clean());
        for _ in 0..n {
            s.add_node(config([10, 0, 0, 0], 20, false));
        }
        let t = s
            .run_until_pred(at(600), settled)
            .unwrap_or_else(|| panic!("seed {seed}: not settled: {:?}", s.check_agreement()));
        assert!(
            secs(t) <= 112.5,
            "seed {seed}: took {:.1} s (bound 112.5 s)",
            secs(t)
        );
        f.converge.push(secs(t));
        s.run_for(Duration::from_secs(60));
        steady_state(&mut s, Duration::from_secs(240), &mut f);
        s.check_agreement()
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let overlaps = s.all_overlaps();
        assert!(
            overlaps.is_empty(),
            "seed {seed}: two owners at once on a clean link: {overlaps:?}"
        );
        assert!(s.running().all(|(_, n)| n.blocks().owned_count() == 1));
    }
    f.print(&format!("start_together_{n}"));
}

#[test]
fn fifty_nodes_start_together() {
    start_together(50, 30);
}

#[test]
fn two_hundred_nodes_start_together() {
    start_together(200, 5);
}

/// Nodes join one by one, 3 s apart, each with the learning phase. A joiner owns its block
/// B + 1.5·t = 82.5 s after it starts if its first pick is free in its view; it has heard
/// every live claim by then, so it never picks an owned block, and no two nodes may ever
/// own one block.
#[test]
fn nodes_join_one_by_one() {
    let mut f = Figures::new();
    for seed in 0..seeds(20) {
        let mut s = Sim::new(seed, Link::clean());
        let n = 30;
        let mut starts = Vec::new();
        for _ in 0..n {
            starts.push(s.now);
            s.add_node(config([10, 0, 0, 0], 22, true));
            s.run_for(Duration::from_secs(3));
        }
        let done = s.run_until_pred(at(1000), settled).expect("settles");
        // Time from the last join until everyone has a block.
        let last = *starts.last().unwrap();
        let per_node = secs(done) - secs(last);
        assert!(
            per_node <= (B as f64) + 1.5 * T as f64 + 30.0,
            "seed {seed}: {per_node:.1} s after the last join"
        );
        f.converge.push(per_node);
        s.run_for(Duration::from_secs(120));
        s.check_agreement()
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert!(s.all_overlaps().is_empty(), "seed {seed}: overlap");
    }
    f.print("join_one_by_one(last joiner)");
}

/// 50 nodes start together on a link that loses 20 % of datagrams per receiver, delays
/// them 1–200 ms (reordering) and duplicates 2 %.
///
/// Safety under loss: two nodes can both own a block only if all three of one node's
/// Inquires or the owner's answers were lost; such an overlap ends when the smaller id hears
/// the greater's claim. Each refresh interval that fails with probability ≤ 0.2 + 0.8·0.36,
/// so we require every overlap to end within 4 refresh intervals (60 s) and none to remain.
/// Views: a node may lack a block's owner after missing four refreshes in a row (0.2^4),
/// but must never name a wrong owner.
#[test]
fn fifty_nodes_twenty_percent_loss() {
    let mut f = Figures::new();
    let mut total_overlaps = 0;
    let mut worst_overlap = 0f64;
    for seed in 0..seeds(20) {
        let mut s = Sim::new(seed, Link::lossy(0.2));
        for _ in 0..50 {
            s.add_node(config([10, 0, 0, 0], 20, false));
        }
        let t = s
            .run_until_pred(at(900), |s| {
                s.all_satisfied() && unique_owners(s) && no_wrong_owner(s)
            })
            .unwrap_or_else(|| panic!("seed {seed}: not settled"));
        f.converge.push(secs(t));
        s.run_for(Duration::from_secs(60));
        steady_state(&mut s, Duration::from_secs(240), &mut f);
        assert!(unique_owners(&s), "seed {seed}: double owner at the end");
        assert!(no_wrong_owner(&s), "seed {seed}: wrong owner in a view");
        for o in s.all_overlaps() {
            let end = o
                .end
                .unwrap_or_else(|| panic!("seed {seed}: overlap still open: {o:?}"));
            let d = secs(end) - secs(o.start);
            worst_overlap = worst_overlap.max(d);
            assert!(d <= 60.0, "seed {seed}: overlap lasted {d:.1} s: {o:?}");
            total_overlaps += 1;
        }
    }
    f.print("fifty_nodes_20pct_loss");
    println!(
        "SIM fifty_nodes_20pct_loss: overlap episodes={total_overlaps} longest={worst_overlap:.1}s"
    );
}

fn unique_owners(s: &Sim) -> bool {
    let mut seen = std::collections::HashSet::new();
    s.running()
        .all(|(_, n)| n.blocks().owned().all(|b| seen.insert(b)))
}

/// No node names an owner that does not own the block (a missing owner is tolerated).
fn no_wrong_owner(s: &Sim) -> bool {
    let owner: std::collections::HashMap<u32, (ddhcp::wire::NodeId, usize)> = s
        .running()
        .flat_map(|(i, n)| n.blocks().owned().map(move |b| (b, (n.id(), i))))
        .collect();
    s.running().all(|(_, n)| {
        n.blocks_view(s.now).iter().all(|v| match v.owner {
            Some(o) if o != n.id() => owner.get(&v.index).is_some_and(|(id, _)| *id == o),
            _ => true,
        })
    })
}

/// Heals the partition and returns how long until every block has one owner and every
/// view agrees, at most one refresh interval (the conflict is heard) + one claim (1.5·t) +
/// slack for a lost race: 15 + 22.5 + 30 = 67.5 s. Two minutes later the views still agree
/// and no overlap is left open.
fn heal_and_settle(s: &mut Sim, seed: u64) -> f64 {
    let heal = s.now;
    s.heal();
    let t = s
        .run_until_pred(heal + Duration::from_secs(300), |s| {
            settled(s) && unique_owners(s)
        })
        .unwrap_or_else(|| panic!("seed {seed}: {:?}", s.check_agreement()));
    let d = secs(t) - secs(heal);
    assert!(d <= 67.5, "seed {seed}: settled {d:.1} s after the heal");
    s.run_for(Duration::from_secs(120));
    s.check_agreement()
        .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    for o in s.all_overlaps() {
        assert!(o.end.is_some(), "seed {seed}: {o:?} still open");
    }
    d
}

/// Four nodes on a four-block range split 2|2 and claim independently, so both sides
/// own the same blocks. After the heal, the greater id keeps each contested block, the
/// losers claim the blocks left free, and everything settles within one refresh interval
/// (conflict heard) + one claim (1.5·t) + slack for a lost race: 15 + 22.5 + 30 = 67.5 s.
#[test]
fn partition_with_overlapping_claims_heals() {
    let mut f = Figures::new();
    let mut contested = 0;
    for seed in 0..seeds(40) {
        let mut s = Sim::new(seed, Link::clean());
        for _ in 0..4 {
            s.add_node(config([10, 0, 0, 0], 28, false));
        }
        s.partition(&[&[0, 1], &[2, 3]]);
        s.run_for(Duration::from_secs(120));
        // Each side settled on its own.
        assert!(s.all_satisfied(), "seed {seed}: a side did not settle");
        let before = s.all_overlaps().len();
        contested += before;
        f.converge.push(heal_and_settle(&mut s, seed));
    }
    assert!(
        contested > 0,
        "the scenario never produced overlapping claims"
    );
    f.print("partition_heals(after heal)");
    println!("SIM partition_heals: contested blocks during partitions={contested}");
}

/// An owner dies: its blocks stay claimed in every view until the TTL of its last
/// announcement runs out, then become free (within B + delay), and no earlier than
/// B − B/4 after the death. When it restarts (with the learning phase) it claims again.
#[test]
fn owner_dies_and_comes_back() {
    let mut f = Figures::new();
    for seed in 0..seeds(20) {
        let mut s = Sim::new(seed, Link::clean());
        for _ in 0..10 {
            s.add_node(config([10, 0, 0, 0], 24, false));
        }
        s.run_until_pred(at(300), settled).expect("settles");
        s.run_for(Duration::from_secs(30));
        let victim = 3;
        let blocks: Vec<u32> = s.node(victim).unwrap().blocks().owned().collect();
        let id = s.node(victim).unwrap().id();
        s.stop(victim);
        let death = s.now;
        let refresh = Duration::from_secs(B / 4);
        s.run_until(death + Duration::from_secs(B) - refresh - Duration::from_secs(1));
        for (j, n) in s.running() {
            for &b in &blocks {
                assert_eq!(
                    n.blocks().owner_of(b).map(|o| o.0),
                    Some(id),
                    "seed {seed}: node {j} forgot block {b} too early"
                );
            }
        }
        let freed = s
            .run_until_pred(death + Duration::from_secs(B + 1), |s| {
                s.running().all(|(_, n)| {
                    blocks
                        .iter()
                        .all(|&b| n.blocks().owner_of(b).is_none_or(|o| o.0 != id))
                })
            })
            .unwrap_or_else(|| panic!("seed {seed}: blocks not freed within B"));
        f.converge.push(secs(freed) - secs(death));
        s.start(victim);
        let back = s.now;
        let t = s
            .run_until_pred(back + Duration::from_secs(300), settled)
            .expect("restarted node settles");
        assert!(
            secs(t) - secs(back) <= (B as f64) + 1.5 * T as f64 + 30.0,
            "seed {seed}"
        );
        assert!(s.node(victim).unwrap().blocks().owned_count() >= 1);
        assert!(s.all_overlaps().is_empty());
    }
    f.print("owner_dies(time until its blocks are free everywhere)");
}

/// Nodes crash and restart at random on a lossy link while others keep running: at the end
/// everything settles and no overlap stayed open.
#[test]
fn random_restarts_on_a_lossy_link() {
    let mut f = Figures::new();
    for seed in 0..seeds(10) {
        let mut s = Sim::new(seed, Link::lossy(0.1));
        for _ in 0..20 {
            s.add_node(config([10, 0, 0, 0], 22, true));
        }
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
        for _ in 0..20 {
            s.run_for(Duration::from_secs(rand::RngExt::random_range(
                &mut rng,
                5..40,
            )));
            let i = rand::RngExt::random_range(&mut rng, 0..20);
            if s.node(i).is_some() {
                s.stop(i);
            } else {
                s.start(i);
            }
        }
        for i in 0..20 {
            if s.node(i).is_none() {
                s.start(i);
            }
        }
        let start = s.now;
        let t = s
            .run_until_pred(start + Duration::from_secs(900), |s| {
                s.all_satisfied() && unique_owners(s) && no_wrong_owner(s)
            })
            .unwrap_or_else(|| panic!("seed {seed}: not settled"));
        f.converge.push(secs(t) - secs(start));
        s.run_for(Duration::from_secs(120));
        assert!(unique_owners(&s) && no_wrong_owner(&s), "seed {seed}");
        for o in s.all_overlaps() {
            assert!(o.end.is_some(), "seed {seed}: {o:?}");
        }
    }
    f.print("random_restarts_10pct_loss(after last restart)");
}

/// Two hosts share a node id (a cloned VM image). Each notices the other's traffic, picks a
/// new id, and the swarm settles with distinct ids and unique owners.
#[test]
fn duplicate_node_ids_are_detected_and_replaced() {
    for seed in 0..seeds(20) {
        let mut s = Sim::new(seed, Link::clean());
        let id = ddhcp::wire::NodeId([0x02, 0, 0, 0, 0, 9, 0, 0]);
        for _ in 0..3 {
            s.add_node(config([10, 0, 0, 0], 26, false));
        }
        s.add_node_with_id(config([10, 0, 0, 0], 26, false), id);
        s.add_node_with_id(config([10, 0, 0, 0], 26, false), id);
        s.run_until_pred(at(300), settled)
            .unwrap_or_else(|| panic!("seed {seed}: {:?}", s.check_agreement()));
        s.run_for(Duration::from_secs(120));
        s.check_agreement()
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert!(s.id_changes >= 1, "seed {seed}: duplicate not noticed");
        let mut ids: Vec<_> = s.running().map(|(_, n)| n.id()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 5, "seed {seed}: ids still shared");
        for o in s.all_overlaps() {
            assert!(o.end.is_some(), "seed {seed}: {o:?}");
        }
    }
}

/// No two clients ever held one address, and at least `min` of the `total` clients hold an
/// address now.
fn assert_no_conflicts_and_served(s: &Sim, seed: u64, min: usize, total: usize) {
    assert!(
        s.address_conflicts.is_empty(),
        "seed {seed}: {:?}",
        s.address_conflicts
    );
    let bound = s.bound_clients();
    assert!(
        bound >= min,
        "seed {seed}: only {bound} of {total} clients hold an address"
    );
}

fn dhcp_config(lease: u32) -> NodeConfig {
    dhcp_node(
        ManagedRange::new(Ipv4Addr::new(10, 0, 128, 0), 26, 2).unwrap(),
        ClaimConfig {
            needless_timeout: Duration::from_secs(60),
            ..claim(2, 30, 2, false)
        },
        vec![lease_time(lease)],
    )
}

/// 40 DHCP clients on 4 nodes sharing a /26 (62 usable addresses in 16 blocks), 10 % loss
/// on every link, a random client roaming to a random node every few seconds for 15
/// minutes. Clients renew at half their 60 s lease through whatever node they are on
/// (forwarded to the owner), and re-confirm their address by INIT-REBOOT after each move.
/// Asserted: no two clients ever hold the same address at the same time; the range is
/// shared out (almost every client has an address at the end).
#[test]
fn dhcp_clients_roaming_never_share_an_address() {
    let mut acks = Vec::new();
    let mut forwards = Vec::new();
    for seed in 0..seeds(10) {
        let mut s = Sim::new(seed, Link::lossy(0.1));
        for _ in 0..4 {
            s.add_node(dhcp_config(60));
        }
        for c in 0..40 {
            s.add_client(c % 4);
        }
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
        let end = s.now + Duration::from_secs(900);
        while s.now < end {
            s.run_for(Duration::from_millis(rand::RngExt::random_range(
                &mut rng,
                1000..8000,
            )));
            let c = rand::RngExt::random_range(&mut rng, 0..40);
            let n = rand::RngExt::random_range(&mut rng, 0..4);
            s.roam(c, n);
        }
        s.run_for(Duration::from_secs(60));
        assert_no_conflicts_and_served(&s, seed, 38, 40);
        assert!(unique_owners(&s), "seed {seed}");
        acks.push(s.clients.iter().map(|c| c.acks).sum::<u64>() as f64);
        let (mut fwd, mut fwd_ack, mut naks) = (0, 0, 0);
        for (_, n) in s.running() {
            let c = &n.dhcp().unwrap().counters;
            fwd += c.forwarded;
            fwd_ack += c.forward_acked;
            naks += c.sent[6];
        }
        assert!(
            fwd > 50 && fwd_ack > 25,
            "seed {seed}: roaming not exercised ({fwd} forwards)"
        );
        forwards.push(fwd as f64);
        println!("SIM dhcp_roaming seed {seed}: forwards={fwd} forward_acks={fwd_ack} naks={naks}");
    }
    forwards.sort_by(f64::total_cmp);
    acks.sort_by(f64::total_cmp);
    println!(
        "SIM dhcp_roaming: seeds={} ACKs per run p50={:.0}, forwarded requests p50={:.0}, address conflicts=0",
        acks.len(),
        percentile(&acks, 50.0),
        percentile(&forwards, 50.0)
    );
}

/// Negative control for the check above, and the price of having no quorum: two halves of
/// a partition on a 4-block range both claim the same blocks and both hand out addresses
/// from them. The detector must see that; after the heal the greater id keeps each block
/// and the other side's clients are refused at their next renewal.
#[test]
fn partitioned_halves_do_share_addresses_and_the_detector_sees_it() {
    let mut total = 0;
    for seed in 0..seeds(10) {
        let mut s = Sim::new(seed, Link::clean());
        let mut cfg = dhcp_config(60);
        cfg.pools[0].range = ManagedRange::new(Ipv4Addr::new(10, 0, 128, 0), 28, 2).unwrap();
        cfg.pools[0].claim.spare_leases = 4;
        s.add_node(cfg.clone());
        s.add_node(cfg);
        s.partition(&[&[0], &[1]]);
        for c in 0..6 {
            s.add_client(c % 2);
        }
        s.run_for(Duration::from_secs(60));
        s.heal();
        s.run_for(Duration::from_secs(120));
        total += s.address_conflicts.len();
        assert!(
            unique_owners(&s),
            "seed {seed}: still two owners after the heal"
        );
    }
    assert!(total > 0, "no conflict detected: the detector is blind");
    println!("SIM partition_dhcp: address conflicts seen across seeds={total}");
}

/// An owner dies while its clients hold leases. Its blocks lapse after the claim TTL (30 s),
/// well before those leases end (60 s), and the range is small, so the survivors must take
/// the lapsed blocks over to serve newcomers. The dead node's clients later walk over to a
/// survivor and ask for their old address. Asserted: nobody is ever given an address an old
/// client still holds (addresses of a lapsed block are held for one lease time and go only
/// to a client that asks for them by name), also across a crash and restart of a survivor
/// that took such blocks over, and in the end everyone is served.
#[test]
fn dead_owners_clients_keep_their_addresses_safe() {
    let mut held_reuse = 0;
    for seed in 0..seeds(20) {
        let mut s = Sim::new(seed, Link::clean());
        let mut cfg = dhcp_config(60);
        cfg.pools[0].range = ManagedRange::new(Ipv4Addr::new(10, 0, 128, 0), 27, 2).unwrap();
        for _ in 0..3 {
            s.add_node(cfg.clone());
        }
        for c in 0..15 {
            s.add_client(c % 3);
        }
        s.run_for(Duration::from_secs(100));
        assert_eq!(
            s.bound_clients(),
            15,
            "seed {seed}: not all served before the death"
        );
        s.stop(0);
        let death = s.now;
        let mut restarted = false;
        let orphans: Vec<usize> = (0..15).filter(|c| c % 3 == 0).collect();
        for _ in 0..8 {
            let n = s.clients.len() % 2 + 1;
            s.add_client(n);
        }
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
        for &c in &orphans {
            s.run_for(Duration::from_millis(rand::RngExt::random_range(
                &mut rng,
                2000..12000,
            )));
            s.roam(c, 1 + c % 2);
            if !restarted && s.now.saturating_since(death) > Duration::from_secs(35) {
                restarted = true;
                // A survivor that took lapsed blocks over crashes and comes back from its
                // store: the holds on those blocks must come back with it. It restarts
                // with its learning phase (as Gluon runs it): with -L a restarted node
                // knows no claims of others and could take a block the dead owner's
                // clients still use, store or not.
                s.stop(1);
                s.config_mut(1).pools[0].claim.learning = true;
                s.run_for(Duration::from_secs(2));
                s.start(1);
            }
        }
        if !restarted {
            s.run_until(death + Duration::from_secs(36));
            s.stop(1);
            s.config_mut(1).pools[0].claim.learning = true;
            s.run_for(Duration::from_secs(2));
            s.start(1);
        }
        s.run_for(Duration::from_secs(240));
        assert_no_conflicts_and_served(&s, seed, 21, 23);
        held_reuse += s
            .running()
            .map(|(_, n)| n.dhcp().unwrap().counters.recv[3])
            .sum::<u64>();
    }
    println!(
        "SIM dead_owner: no address conflicts (without the hold on lapsed blocks this scenario produces them); REQUESTs served: {held_reuse}"
    );
}

/// DHCP nodes crash and come back from their stores, at random, on a lossy link, while
/// their clients keep renewing (a 120 s lease; claims live 30 s). Downtimes run from 1 s
/// to 45 s, so some blocks are still valid at the restart and some lapsed. Asserted:
/// right after each restart, every address a client of the node holds is in the node's
/// table bound to that client, or its block lapsed and is either wanted back or owned by
/// another node (which took it over with the lapse hold); no two
/// clients ever hold the same address; everyone is served at the end.
#[test]
fn dhcp_nodes_restart_from_their_stores() {
    let (mut restored, mut waiting) = (0, 0);
    for seed in 0..seeds(10) {
        let mut s = Sim::new(seed, Link::lossy(0.05));
        for _ in 0..4 {
            s.add_node(dhcp_config(120));
        }
        for c in 0..40 {
            s.add_client(c % 4);
        }
        s.run_for(Duration::from_secs(60));
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
        for _ in 0..15 {
            s.run_for(Duration::from_secs(rand::RngExt::random_range(
                &mut rng,
                5..40,
            )));
            let n = rand::RngExt::random_range(&mut rng, 0..4);
            s.stop(n);
            s.run_for(Duration::from_secs(rand::RngExt::random_range(
                &mut rng,
                1..45,
            )));
            // Restarted with its learning phase, as Gluon runs it: with -L a restarted node
            // knows no claims of others, and if a peer dies before it hears that peer's
            // claims, it may take a block whose clients still hold leases (seen: seed 8).
            s.config_mut(n).pools[0].claim.learning = true;
            s.start(n);
            let now = s.now;
            let node = s.node(n).unwrap();
            let leases = &node.dhcp().unwrap().leases;
            for c in s.clients.iter().filter(|c| c.node == n) {
                let Some(ip) = c.ip.filter(|_| c.until > now) else {
                    continue;
                };
                // A replica holder that took the block over while the node was down (a
                // lost refresh can lapse a claim early) may have renewed the lease since:
                // then it holds the newer lease, and the tie-break merges the two.
                let (block, _) = (*node.pool(0).range()).locate(ip).unwrap();
                let renewed_elsewhere = s.running().any(|(j, o)| {
                    j != n
                        && o.blocks().owns(block)
                        && o.dhcp().unwrap().leases.get(ip).is_some_and(|r| {
                            matches!(r.state, AddrState::Leased { until } if until >= c.until)
                                && r.chaddr[..6] == c.mac
                        })
                });
                match leases.get(ip) {
                    Some(r) => {
                        assert!(
                            renewed_elsewhere
                                || matches!(r.state, AddrState::Leased { until } if until >= c.until)
                                    && r.chaddr[..6] == c.mac,
                            "seed {seed}: node {n} restarted without {ip} of client {:?}: {r:?}",
                            c.mac
                        );
                        restored += 1;
                    }
                    None => {
                        // Its block lapsed: the node wants it back, or another node took
                        // it over earlier (and holds the addresses for such clients).
                        let (block, _) = (*node.pool(0).range()).locate(ip).unwrap();
                        let elsewhere = s.running().any(|(j, o)| j != n && o.blocks().owns(block));
                        assert!(
                            node.blocks().is_wanted(block) || elsewhere,
                            "seed {seed}: nobody holds or wants block {block} of {ip}"
                        );
                        waiting += 1;
                    }
                }
            }
        }
        s.run_for(Duration::from_secs(180));
        assert_no_conflicts_and_served(&s, seed, 38, 40);
        assert!(unique_owners(&s), "seed {seed}");
    }
    assert!(restored > 100, "restores not exercised: {restored}");
    println!(
        "SIM dhcp_restarts: leases back in the table at restart={restored}, in lapsed blocks={waiting}, address conflicts=0"
    );
}

/// A node restarts believing in claims another node has taken meanwhile: it was cut off
/// from the rest (so their view of its claims ran out and they claimed its blocks), kept
/// refreshing its own claims, crashed and came back from its store within the TTL. Its
/// restored blocks are announced at once; after the heal the claim tie-break settles every
/// contested block (the greater id keeps it) within one refresh + one claim + slack, and
/// no overlap stays open.
#[test]
fn restart_into_blocks_taken_meanwhile_settles_by_tie_break() {
    let mut f = Figures::new();
    let mut contested = 0;
    for seed in 0..seeds(40) {
        let mut s = Sim::new(seed, Link::clean());
        // Eight blocks, and the other three want three each: they take any block that
        // comes free.
        s.add_node(config([10, 0, 0, 0], 27, false));
        for _ in 0..3 {
            let mut cfg = config([10, 0, 0, 0], 27, false);
            cfg.pools[0].claim.spare_leases = 12;
            s.add_node(cfg);
        }
        s.run_until_pred(at(300), settled).expect("settles");
        let victim = 0;
        s.partition(&[&[0], &[1, 2, 3]]);
        // Long enough for the others' view of node 0's claims to lapse and for them to
        // claim the freed blocks (B + a claim), while node 0 keeps refreshing its own.
        s.run_for(Duration::from_secs(B + 60));
        let before: Vec<u32> = s.node(victim).unwrap().blocks().owned().collect();
        let taken = before
            .iter()
            .filter(|&&b| s.running().any(|(j, n)| j != victim && n.blocks().owns(b)))
            .count();
        s.stop(victim);
        s.run_for(Duration::from_secs(2));
        s.start(victim);
        let restored: Vec<u32> = s.node(victim).unwrap().blocks().owned().collect();
        assert_eq!(restored, before, "seed {seed}: valid claims not restored");
        contested += taken;
        f.converge.push(heal_and_settle(&mut s, seed));
    }
    assert!(
        contested > 0,
        "no block was taken while the node was cut off"
    );
    f.print("restart_into_taken_blocks(after heal)");
    println!("SIM restart_into_taken_blocks: contested blocks={contested}, all settled");
}

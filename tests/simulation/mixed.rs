//! Mixed meshes: Rust nodes and nodes modelled on the C ddhcpd (`tests/sim/cnode.rs`), with
//! the same many-seed safety checks as the all-Rust scenarios.
//!
//! Run with `cargo test --release --test simulation -- mixed:: --nocapture` for the figures;
//! `SIM_SEEDS=N` changes the number of seeds.
//!
//! What holds in a mixed mesh, and is asserted: one owner per block once settled, and every
//! Rust node names it; racing C claimers never take a live Rust owner's block; roaming in
//! either direction keeps the client's address; no address of a block a Rust node ever
//! owned is held by two clients.
//!
//! What cannot hold because of the C side, and is therefore not asserted:
//! - a C node's view of a live block may be `tentative` (any Inquire overwrites a claim,
//!   reference §3.8) or `free` (a shadow lease table's reset, §3.11) until the owner's next
//!   claim: C views agree only up to that;
//! - C claimers racing each other own a block after three Inquires whatever happened
//!   (§3.6), so two C nodes may own one block for a moment before the UpdateClaim
//!   tie-break; overlaps while a mesh settles are counted, not forbidden;
//! - at ddhcpd's default timers a C owner refreshes every 21 s (its housekeeping ticks
//!   every `t/2` = 7 s and refreshes on the first tick after `B/4` = 15 s) with a TTL of
//!   60 s: fewer than three refreshes per TTL, so on a lossy link another node's view of a
//!   C block lapses now and then (to free, never to a wrong owner) until the next refresh;
//! - a C claimer whose count reached three owns the block even when another C node took it
//!   meanwhile; the greater id then keeps it, knowing none of the old owner's leases, while
//!   the old owner forwards its clients' renewals to it and a C owner acknowledges them for
//!   any client (§4.6): two clients then hold one address. Measured, and asserted to happen
//!   only in blocks a C node took from another C node;
//! - a C node whose view of a block is tentative ignores requests for it, or NAKs them if it
//!   happens to own block 0 (§3.14 item 2): such roams are slow or lost, counted apart;
//! - a restarted C node remembers no lease: nothing a Rust node can repair.

use crate::sim;

use std::net::Ipv4Addr;
use std::time::Duration;

use ddhcp::node::NodeConfig;
use ddhcp::range::ManagedRange;
use ddhcp::testing::{claim, dhcp_node, lease_time};
use ddhcp::time::Instant;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use sim::cnode::{CConfig, CState};
use sim::{ClientState, Link, Sim, percentile, seeds};

fn range(len: u8) -> ManagedRange {
    ManagedRange::new(Ipv4Addr::new(10, 0, 128, 0), len, 2).unwrap()
}

/// ddhcpd timers unless the scenario shortens them.
fn rust_config(r: ManagedRange, t: u64, b: u64, learning: bool, lease: u32) -> NodeConfig {
    dhcp_node(r, claim(t, b, 2, learning), vec![lease_time(lease)])
}

fn c_config(r: ManagedRange, t: u64, b: u64, learning: bool, lease: u32) -> CConfig {
    CConfig {
        range: r,
        tentative: t,
        block_timeout: b,
        spare: 2,
        learning,
        lease_time: lease,
        little_endian: true,
        master: false,
    }
}

fn secs(i: Instant) -> f64 {
    i.as_millis() as f64 / 1000.0
}

fn settled(s: &Sim) -> bool {
    s.all_satisfied() && s.running_c().all(|(_, c)| c.satisfied()) && s.check_agreement().is_ok()
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// 3 C nodes (one of them master, id 0) and 3 Rust nodes start in the same second, with and
/// without the learning phase, on a clean and on a lossy link. Once settled, every block has
/// one owner and every Rust node names it; then five minutes of steady state keep that, with
/// no new overlap (at 10 % loss: no view names a wrong owner; see the header).
#[test]
fn mixed_mesh_settles_to_one_owner_per_block() {
    for (learning, loss) in [(false, 0.0), (true, 0.0), (false, 0.1)] {
        let mut times = Vec::new();
        let mut settling_overlaps = 0;
        for seed in 0..seeds(30) {
            let link = if loss > 0.0 {
                Link::lossy(loss)
            } else {
                Link::clean()
            };
            let mut s = Sim::new(seed, link);
            let r = range(20);
            let mut rng = StdRng::seed_from_u64(seed);
            for k in 0..6 {
                s.run_for(Duration::from_millis(rng.random_range(0..1000)));
                if k % 2 == 0 {
                    let mut c = c_config(r, 15, 60, learning, 300);
                    c.master = k == 4;
                    s.add_c_node(c);
                } else {
                    s.add_node(rust_config(r, 15, 60, learning, 300));
                }
            }
            let t = s
                .run_until_pred(Instant::from_millis(600_000), settled)
                .unwrap_or_else(|| panic!("seed {seed}: not settled: {:?}", s.check_agreement()));
            times.push(secs(t));
            settling_overlaps += s.all_overlaps().len();
            let before = s.all_overlaps().len();
            for _ in 0..30 {
                s.run_for(Duration::from_secs(10));
                let check = if loss > 0.0 {
                    s.check_no_wrong_owner()
                } else {
                    s.check_agreement()
                };
                check.unwrap_or_else(|e| panic!("seed {seed} (learning {learning}): {e}"));
            }
            let after = s.all_overlaps();
            assert_eq!(
                after.len(),
                before,
                "seed {seed}: a block got two owners after settling: {after:?}"
            );
            assert!(
                after.iter().all(|o| o.end.is_some()),
                "seed {seed}: {after:?}"
            );
            for (i, c) in s.running_c() {
                assert!(
                    c.owned().count() >= 1,
                    "seed {seed}: C node {i} owns nothing"
                );
            }
        }
        let t = sorted(times);
        println!(
            "SIM mixed_settle learning={learning} loss={loss}: seeds={} settle_s min={:.1} p50={:.1} p95={:.1} max={:.1}, overlaps while settling={settling_overlaps}",
            t.len(),
            t[0],
            percentile(&t, 50.0),
            percentile(&t, 95.0),
            t[t.len() - 1]
        );
    }
}

/// The reported defect: a one-block range owned by a Rust node, then four C nodes started
/// within the same second with `-L`. A C claimer owns a block after three Inquires whatever
/// its state, and their housekeeping runs on every multicast, so unless the owner answers
/// every Inquire at once one of them takes the block (C ids are greater here, so the
/// tie-break would then hand it over). Asserted: the Rust node keeps it in every seed, and
/// every C node ends up seeing it as the Rust node's. The same race against a C owner is
/// run as the control.
#[test]
fn racing_c_claimers_never_take_a_rust_owners_block() {
    let r = ManagedRange::new(Ipv4Addr::new(10, 0, 1, 0), 30, 2).unwrap();
    let mut c_owner_lost = 0;
    let mut inquiries = 0;
    let mut counts = [0u32; 4];
    let n = seeds(100);
    // Namespaces on one bridge: well under a millisecond.
    let bridge = Link {
        loss: 0.0,
        duplicate: 0.0,
        delay_min: Duration::ZERO,
        delay_max: Duration::from_millis(1),
    };
    for seed in 0..n {
        for c_owner in [false, true] {
            let mut s = Sim::new(seed, bridge);
            let owner = if c_owner {
                s.add_c_node(c_config(r, 2, 10, false, 300))
            } else {
                s.add_node(rust_config(r, 2, 10, false, 300))
            };
            let mut rng = StdRng::seed_from_u64(seed);
            // Anywhere in the owner's refresh cycle.
            s.run_for(Duration::from_millis(5000 + rng.random_range(0..3000)));
            assert_eq!(s.owner_map().unwrap().get(&0), Some(&owner), "seed {seed}");
            for _ in 0..4 {
                s.run_for(Duration::from_millis(rng.random_range(0..40)));
                s.add_c_node(c_config(r, 2, 10, false, 300));
            }
            let mut kept = true;
            for _ in 0..60 {
                s.run_for(Duration::from_millis(500));
                kept &= s.owner_map().is_ok_and(|m| m.get(&0) == Some(&owner));
            }
            for (_, c) in s.running_c() {
                inquiries += c.inquiries_sent;
                counts[c.max_count as usize] += 1;
            }
            if c_owner {
                c_owner_lost += usize::from(!kept);
                continue;
            }
            assert!(
                kept,
                "seed {seed}: a C claimer took the Rust owner's only block"
            );
            assert!(
                s.all_overlaps().is_empty(),
                "seed {seed}: {:?}",
                s.all_overlaps()
            );
            let want = (s.node(owner).unwrap().id(), s.addr(owner));
            for (i, c) in s.running_c() {
                let (state, seen) = c.view(0);
                assert!(
                    seen == Some(want) || state == CState::Tentative,
                    "seed {seed}: C node {i} sees the block as {state:?} {seen:?}"
                );
            }
        }
    }
    println!(
        "SIM racing_c_claimers: seeds={n}, Rust owner lost the block in 0, C owner (control) in {c_owner_lost}; C Inquires {inquiries}, C claimers by most Inquires sent for one block 0/1/2/3: {counts:?}"
    );
}

/// 2 C and 2 Rust nodes (C hosts little- or big-endian) serving 24 clients on a /24 with
/// short timers, 12 minutes of a random bound client roaming to a random node every few
/// seconds. Every roam of a client whose owner is alive and whose lease is still valid must
/// keep its address, whichever kinds of node lease and renew it; no two clients ever hold
/// one address.
#[test]
fn roaming_across_c_and_rust_nodes_keeps_addresses() {
    for little_endian in [true, false] {
        // Roams that kept the address, by [owner is C][new node is C].
        let mut kept_by = [[0u32; 2]; 2];
        let mut handovers = 0;
        let mut slow = 0;
        let mut c_tentative_naks = 0;
        let mut c_conflict_blocks = std::collections::HashSet::new();
        for seed in 0..seeds(20) {
            let mut s = Sim::new(seed, Link::clean());
            let r = range(24);
            for k in 0..4 {
                if k % 2 == 0 {
                    let mut c = c_config(r, 2, 30, false, 120);
                    c.little_endian = little_endian;
                    s.add_c_node(c);
                } else {
                    s.add_node(rust_config(r, 2, 30, false, 120));
                }
            }
            for c in 0..24 {
                s.add_client(c % 4);
            }
            s.run_for(Duration::from_secs(60));
            let mut rng = StdRng::seed_from_u64(seed);
            let end = s.now + Duration::from_secs(720);
            while s.now < end {
                let c = rng.random_range(0..s.clients.len());
                let to = rng.random_range(0..4);
                let cl = &s.clients[c];
                let Some(ip) = cl.ip.filter(|_| {
                    cl.state == ClientState::Bound
                        && cl.until > s.now + Duration::from_secs(20)
                        && cl.node != to
                }) else {
                    s.run_for(Duration::from_millis(200));
                    continue;
                };
                let block = r.locate(ip).unwrap().0;
                let Some(&owner) = s.owner_map().unwrap().get(&block) else {
                    s.run_for(Duration::from_millis(200));
                    continue;
                };
                // The block changed hands since the client's last ACK: C claimers take a
                // block after three Inquires even from a live C owner (see the header);
                // the new owner knows nothing of the old one's leases.
                let acked = cl.until - Duration::from_secs(120);
                if s.owned_since
                    .get(&block)
                    .is_none_or(|&(o, t)| o != owner || t > acked)
                {
                    handovers += 1;
                    s.run_for(Duration::from_millis(200));
                    continue;
                }
                let acks = s.clients[c].acks;
                // A C node with a tentative view of the block that owns block 0 NAKs the
                // client (reference §3.8 and §3.14 item 2): a C bug, counted apart.
                let c_naks = s.cnode(to).is_some_and(|n| {
                    n.view(block).0 != CState::Claimed && n.owned().any(|b| b == 0)
                });
                s.roam(c, to);
                s.run_for(Duration::from_millis(rng.random_range(4000..8000)));
                // A C node that saw an Inquire for the block shows it tentative and ignores
                // requests for it until the owner's next claim (`B/4` = 7.5 s here): such a
                // roam is slow, not lost, as long as nothing refused the client.
                let waiting = |s: &Sim| {
                    let cl = &s.clients[c];
                    cl.acks == acks && cl.state == ClientState::Rebooting && cl.ip == Some(ip)
                };
                if waiting(&s) {
                    slow += 1;
                    let until = s.now + Duration::from_secs(12);
                    while s.now < until && waiting(&s) {
                        s.run_for(Duration::from_millis(200));
                    }
                }
                // Confirmed by a new ACK through the new node, not merely still held.
                let cl = &s.clients[c];
                let kept = cl.ip == Some(ip) && cl.state == ClientState::Bound && cl.acks > acks;
                if !kept && c_naks {
                    c_tentative_naks += 1;
                    continue;
                }
                let (o, t) = (usize::from(s.is_c(owner)), usize::from(s.is_c(to)));
                assert!(
                    kept,
                    "seed {seed} (C little-endian {little_endian}): client {c} lost {ip} roaming to node {to} (C: {}) from owner {owner} (C: {}); now {:?} {:?}",
                    s.is_c(to),
                    s.is_c(owner),
                    s.clients[c].state,
                    s.clients[c].ip,
                );
                kept_by[o][t] += 1;
            }
            // Conflicts only where a C node took a block from another C node: the new
            // owner knows none of the old one's leases, and the yielded one keeps serving
            // its clients' renewals by forwarding them to the new owner, which acknowledges
            // them whatever the client (reference §3.6, §4.6).
            for (ip, what) in s.conflict_ips.iter().zip(&s.address_conflicts) {
                let block = r.locate(*ip).unwrap().0;
                let h = &s.owner_history[&block];
                let c_to_c = h.windows(2).any(|w| s.is_c(w[0]) && s.is_c(w[1]));
                assert!(c_to_c, "seed {seed}: {what}; owners of the block: {h:?}");
                c_conflict_blocks.insert((seed, block));
            }
        }
        let k = kept_by;
        println!(
            "SIM mixed_roaming little_endian={little_endian}: roams that kept the address (owner->new node): C->Rust {} C->C {} Rust->C {} Rust->Rust {}; lost 0; slower than 8 s (a C node's tentative view) {slow}; lost to a C node's tentative view and block-0 NAK {c_tentative_naks}; roams skipped because the block changed hands since the last ACK: {handovers}; blocks with address conflicts {} (all after a C node took a C node's block)",
            k[1][0],
            k[1][1],
            k[0][1],
            k[0][0],
            c_conflict_blocks.len()
        );
        assert!(
            k[1][0] > 20 && k[0][1] > 20,
            "roaming across kinds not exercised"
        );
    }
}

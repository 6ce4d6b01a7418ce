//! Mesh-key authentication (src/auth.rs) in the simulator, over many seeds.
//!
//! - An adversary on the link forges UpdateClaims (issue 14's node id `FF…FF` for blocks
//!   the nodes hold, plain and with made-up trailers), replays datagrams it overheard (to
//!   everyone and to single nodes, also across restarts of their senders) and floods noise,
//!   on a lossy link with restarts: no node ever names the forger as an owner, every block
//!   keeps one owner, and once the restarts are over every view agrees.
//! - A node with another key claims nothing (it reports the mismatch and holds), and the
//!   others report it, with no block owned twice.
//! - The key is rotated (install, use, remove, each node at its own moment) across a
//!   running mesh on a lossy link: no datagram fails verification and no block changes
//!   hands.

mod sim;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use ddhcp::auth::MeshKey;
use ddhcp::node::{Dest, NodeConfig};
use ddhcp::range::ManagedRange;
use ddhcp::stats::Counter;
use ddhcp::testing::claim;
use ddhcp::time::Instant;
use ddhcp::wire::NodeId;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use sim::{Link, Sim, seeds};

const FORGER: NodeId = NodeId([0xff; 8]);
const ATTACKER: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0xbad, 1);

fn range() -> ManagedRange {
    ManagedRange::new(Ipv4Addr::new(10, 0, 128, 0), 24, 2).unwrap()
}

fn config(learning: bool) -> NodeConfig {
    let mut c = NodeConfig::single(range(), claim(2, 20, 2, learning), None);
    c.replicas = 0;
    c
}

fn key(b: u8, id: u16) -> MeshKey {
    MeshKey::new(id, [b; 32])
}

fn at(s: u64) -> Instant {
    Instant::from_millis(s * 1000)
}

/// The claim of issue 14: `FF…FF` claims `blocks` for 60 s.
fn forged_claim(blocks: &[u32]) -> Vec<u8> {
    let mut d = vec![0xff; 8];
    d.extend_from_slice(&[10, 0, 128, 0, 24, 4, 1, blocks.len() as u8]);
    for b in blocks {
        d.extend_from_slice(&b.to_be_bytes());
        d.extend_from_slice(&60u16.to_be_bytes());
        d.push(0);
    }
    d
}

/// No running node names the forger as the owner of any block.
fn forger_owns_nothing(s: &Sim) -> Result<(), String> {
    for (i, n) in s.running() {
        for v in n.blocks_view(s.now) {
            if v.owner == Some(FORGER) {
                return Err(format!(
                    "node {i} sees block {} owned by the forger",
                    v.index
                ));
            }
        }
    }
    Ok(())
}

/// One round of attacks: forgeries for blocks the nodes hold, a forged trailer, replays
/// of overheard datagrams (multicast, and unicast to a random node), noise.
fn attack(s: &mut Sim, rng: &mut StdRng) {
    let held: Vec<u32> = s
        .running()
        .flat_map(|(_, n)| n.blocks().owned().collect::<Vec<_>>())
        .collect();
    let forged = forged_claim(&held[..held.len().min(40)]);
    s.inject(ATTACKER, Dest::Multicast, &forged);
    let mut trailer = forged.clone();
    trailer.extend_from_slice(&[0xdd, 1, 0, 1]);
    trailer.extend((0..28).map(|_| rng.random::<u8>()));
    s.inject(ATTACKER, Dest::Multicast, &trailer);
    for _ in 0..4 {
        if s.captured.is_empty() {
            break;
        }
        let (dest, d) = s.captured[rng.random_range(0..s.captured.len())].clone();
        let to = match dest {
            Dest::Multicast => Dest::Multicast,
            Dest::Unicast(_) => Dest::Unicast(s.addr(rng.random_range(0..s.len()))),
        };
        s.inject(ATTACKER, to, &d);
        // And the same under our own address, as if we were its sender.
        let from = s.addr(rng.random_range(0..s.len()));
        s.inject(from, Dest::Multicast, &d);
    }
    let noise: Vec<u8> = (0..rng.random_range(16..80))
        .map(|_| rng.random())
        .collect();
    s.inject(ATTACKER, Dest::Multicast, &noise);
}

fn total(s: &Sim, c: Counter) -> u64 {
    s.running().map(|(_, n)| n.counters().get(c)).sum()
}

#[test]
fn forgery_replay_and_floods_take_no_block() {
    for seed in 0..seeds(3) {
        let mut s = Sim::new(seed, Link::lossy(0.05));
        s.keys = vec![key(1, 1)];
        s.capture = true;
        let n = 6;
        for _ in 0..n {
            s.add_node(config(true));
        }
        let mut rng = StdRng::seed_from_u64(seed ^ 0xad);
        let mut restarts = 0;
        for step in 0..400 {
            s.run_for(Duration::from_millis(500));
            attack(&mut s, &mut rng);
            if step % 10 == 0
                && let Err(e) = forger_owns_nothing(&s)
            {
                panic!("seed {seed} at {:?}: {e}", s.now);
            }
            if step < 250 && rng.random_bool(0.01) {
                let i = rng.random_range(0..n);
                if s.node(i).is_some() {
                    s.stop(i);
                } else {
                    s.start(i);
                }
                restarts += 1;
            }
            s.captured.truncate(2000);
        }
        for i in 0..n {
            if s.node(i).is_none() {
                s.start(i);
            }
        }
        let t = s
            .run_until_pred(s.now + Duration::from_secs(300), |s| {
                s.all_satisfied() && s.check_agreement().is_ok()
            })
            .unwrap_or_else(|| panic!("seed {seed}: not settled: {:?}", s.check_agreement()));
        for _ in 0..60 {
            attack(&mut s, &mut rng);
            s.run_for(Duration::from_millis(500));
        }
        forger_owns_nothing(&s).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        s.check_agreement()
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        for o in s.all_overlaps() {
            assert!(o.end.is_some(), "seed {seed}: two owners left: {o:?}");
        }
        assert!(total(&s, Counter::AuthDropUnsigned) > 0, "seed {seed}");
        assert!(total(&s, Counter::AuthDropBadMac) > 0, "seed {seed}");
        assert!(total(&s, Counter::AuthDropReplay) > 0, "seed {seed}");
        assert_eq!(
            s.id_changes, 0,
            "seed {seed}: a replay faked a duplicate node id"
        );
        println!(
            "SIM auth_adversary seed {seed}: restarts={restarts} settled_at={:?} replays_dropped={} bad_mac={} unsigned={}",
            t,
            total(&s, Counter::AuthDropReplay),
            total(&s, Counter::AuthDropBadMac),
            total(&s, Counter::AuthDropUnsigned),
        );
    }
}

#[test]
fn a_node_with_another_key_claims_nothing_and_is_reported() {
    for seed in 0..seeds(4) {
        let mut s = Sim::new(seed, Link::lossy(0.05));
        s.keys = vec![key(1, 1)];
        for _ in 0..4 {
            s.add_node(config(false));
        }
        s.run_until_pred(at(120), |s| s.all_satisfied())
            .unwrap_or_else(|| panic!("seed {seed}: not settled"));
        // Same key id, another secret; a learning phase as in production.
        s.keys = vec![key(2, 1)];
        let odd = s.add_node(config(true));
        s.run_for(Duration::from_secs(120));
        let n = s.node(odd).unwrap();
        assert_eq!(
            n.blocks().owned_count(),
            0,
            "seed {seed}: the odd node claimed"
        );
        assert!(
            n.blocks().claims_held(),
            "seed {seed}: no key mismatch held"
        );
        assert!(s.mismatch_holds >= 1, "seed {seed}");
        assert!(s.auth_failures >= 4, "seed {seed}: every node reports it");
        for (i, n) in s.running() {
            if i != odd {
                assert!(!n.blocks().claims_held(), "seed {seed}: node {i} holds");
                assert!(n.rejected().next().is_some(), "seed {seed}: node {i}");
            }
        }
        assert!(
            s.all_overlaps().is_empty(),
            "seed {seed}: {:?}",
            s.all_overlaps()
        );
        // Given the right key, it claims.
        s.stop(odd);
        s.set_keys(odd, vec![key(1, 1)]);
        s.start(odd);
        s.run_until_pred(s.now + Duration::from_secs(120), |s| {
            s.all_satisfied() && s.check_agreement().is_ok()
        })
        .unwrap_or_else(|| panic!("seed {seed}: odd node does not join"));
        assert!(s.node(odd).unwrap().blocks().owned_count() > 0);
    }
}

#[test]
fn rotating_the_key_across_a_running_mesh_loses_nothing() {
    for seed in 0..seeds(4) {
        let mut s = Sim::new(seed, Link::lossy(0.05));
        s.keys = vec![key(1, 1)];
        let n = 5;
        for _ in 0..n {
            s.add_node(config(false));
        }
        s.run_until_pred(at(120), |s| {
            s.all_satisfied() && s.check_agreement().is_ok()
        })
        .unwrap_or_else(|| panic!("seed {seed}: not settled"));
        s.run_for(Duration::from_secs(30));
        let owned: Vec<Vec<u32>> = (0..n)
            .map(|i| s.node(i).unwrap().blocks().owned().collect())
            .collect();
        let mut rng = StdRng::seed_from_u64(seed);
        let k2 = key(2, 2);
        for phase in 0..3 {
            let mut order: Vec<usize> = (0..n).collect();
            for k in (1..n).rev() {
                order.swap(k, rng.random_range(0..=k));
            }
            for i in order {
                s.run_for(Duration::from_millis(rng.random_range(100..3000)));
                let node = s.node_mut(i).unwrap();
                match phase {
                    0 => node.key_install(&k2).unwrap(),
                    1 => node.key_use(2).unwrap(),
                    _ => node.key_remove(1).unwrap(),
                }
            }
            s.run_for(Duration::from_secs(10));
        }
        s.run_for(Duration::from_secs(60));
        assert_eq!(total(&s, Counter::AuthDropBadMac), 0, "seed {seed}");
        assert_eq!(total(&s, Counter::AuthDropUnknownKey), 0, "seed {seed}");
        assert_eq!(s.mismatch_holds, 0, "seed {seed}");
        for (i, o) in owned.iter().enumerate() {
            let now: Vec<u32> = s.node(i).unwrap().blocks().owned().collect();
            assert_eq!(&now, o, "seed {seed}: node {i}'s blocks changed");
        }
        s.check_agreement()
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert!(s.all_overlaps().is_empty(), "seed {seed}");
        for (_, node) in s.running() {
            let ring = node.auth().keyring().unwrap();
            assert_eq!(ring.ids().collect::<Vec<_>>(), vec![2]);
        }
    }
}

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
//! - With node keys, a member holding the mesh key and the greatest id claims blocks other
//!   members have held for more than a block timeout (in its own name, and in theirs),
//!   through loss, restarts and a partition that heals: no member that knew the holder
//!   names the member as the owner for more than half a block timeout (the exceptions,
//!   each a documented limit, are spelled out at the check), and every conflict of the
//!   partition is settled to one owner. Without node keys
//!   the same member takes blocks (the control that shows the check can fail).
//! - In the migration mode (`--peer-key-migrate`), in a mesh of our nodes with a key and
//!   nodes modelled on the C daemon, on a lossy link: plain forgeries in our nodes' names
//!   (releases of their blocks in their own names, claims of each other's blocks) and
//!   replays of their datagrams change no view of a block one of ours has held for a while,
//!   on any of ours, and make none change its id; the mesh still settles.

use crate::sim;

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
use sim::cnode::CConfig;
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

/// An UpdateClaim under `id` for `blocks`, TTL `ttl`.
fn claim_as(id: NodeId, blocks: &[u32], ttl: u16) -> Vec<u8> {
    let mut d = id.0.to_vec();
    d.extend_from_slice(&[10, 0, 128, 0, 24, 4, 1, blocks.len() as u8]);
    for b in blocks {
        d.extend_from_slice(&b.to_be_bytes());
        d.extend_from_slice(&ttl.to_be_bytes());
        d.push(0);
    }
    d
}

/// Runs the member attack; returns the first time an honest node recorded the member as
/// the owner of a block the member never owned, if any.
fn member_attack(seed: u64, node_keys: bool) -> Option<String> {
    let mut s = Sim::new(seed, Link::lossy(0.05));
    s.keys = vec![key(1, 1)];
    s.node_keys = node_keys;
    let n = 6;
    for _ in 0..n {
        s.add_node(config(false));
    }
    // The member: the node with the greatest id, which the C tie-break lets take anything.
    let m = (0..n).max_by_key(|&i| s.node(i).unwrap().id()).unwrap();
    let mid = s.node(m).unwrap().id();
    let honest: Vec<usize> = (0..n).filter(|&i| i != m).collect();
    let mut rng = StdRng::seed_from_u64(seed ^ 0x3e3b);
    let mut ever_m: std::collections::BTreeSet<u32> = Default::default();
    let mut violation = None;
    let mut split = false;
    // When each honest node was first seen owning each block it owns (continuously).
    let mut held_since: std::collections::BTreeMap<(usize, u32), Instant> = Default::default();
    let (mut split_at, mut healed_at): (Option<Instant>, Option<Instant>) = (None, None);
    let mut started = vec![Instant::ZERO; n];
    let mut last_check = Instant::ZERO;
    let mut misled: std::collections::BTreeSet<(usize, u32)> = Default::default();
    // The honest owner each node last named for each block.
    let mut known: std::collections::BTreeMap<(usize, u32), usize> = Default::default();
    // (node, block) pairs whose view names the member: since when, and whether the block
    // was one it must not get when it was first named.
    let mut seen_m: std::collections::BTreeMap<(usize, u32), (Instant, bool)> = Default::default();
    for step in 0..600 {
        s.run_for(Duration::from_millis(500));
        if let Some(node) = s.node(m) {
            ever_m.extend(node.blocks().owned());
        }
        // Blocks the others hold; the member claims them in its name and in theirs, and
        // releases them in theirs.
        // Blocks the others have held for a while (newer ones a member may race, see
        // below), up to 10 per node.
        let mut held = Vec::new();
        let mut victims = Vec::new();
        for &i in &honest {
            if let Some(node) = s.node(i) {
                held.extend(
                    node.blocks()
                        .owned()
                        .filter(|&b| {
                            held_since.get(&(i, b)).is_some_and(|&t| {
                                s.now.saturating_since(t) > Duration::from_secs(22)
                            })
                        })
                        .take(10),
                );
                victims.push(node.id());
            }
        }
        if !held.is_empty() {
            let held = &held[..held.len().min(40)];
            s.send_raw(m, Dest::Multicast, claim_as(mid, held, 60));
            let v = victims[rng.random_range(0..victims.len())];
            s.send_raw(m, Dest::Multicast, claim_as(v, held, 0));
            s.send_raw(m, Dest::Multicast, claim_as(v, &held[..1], 60));
        }
        let now = s.now;
        // The blocks the member must never get: held since before the partition, or since
        // well after it healed. One first claimed during the partition, on the far side
        // from the member, it may win on its return, as a node that claimed it there would
        // (docs/protocol.md, "What remains").
        // A claim younger than twice the race window (half a block timeout, 10 s here; an
        // observer dates a claim when it first hears it, up to a window late) is not held
        // yet: a member may race it, as a node that inquired the block at the same moment
        // would. Judged at the previous check: the member's claim may have come any time
        // since.
        // And only a holder the observer can hear: across a partition the block lapses
        // and is free to be claimed, by the member too.
        // And only for an observer that knew its holder: one that never heard the
        // holder's claim (lost, or sent just before a restart) saw a free block.
        let protected = |i: usize, b: u32| {
            held_since.iter().any(|(&(j, hb), &since)| {
                hb == b
                    && (i == j || known.get(&(i, b)) == Some(&j))
                    && s.group(i) == s.group(j)
                    && last_check.saturating_since(since) > Duration::from_secs(21)
                    && match split_at {
                        None => true,
                        Some(p) => {
                            since < p
                                || healed_at.is_some_and(|h| since > h + Duration::from_secs(20))
                        }
                    }
            })
        };
        // A node that has just (re)started builds its table from the claims it hears and
        // may take the member's for a while (docs/protocol.md, "What remains"); one that
        // has listened for half a block timeout must not name the member as the owner of
        // a block it knew held for longer than that: the first claim heard for a block
        // that lapsed across a partition is the member's as often as not, until the
        // holder's next refresh settles it.
        for &i in &honest {
            let Some(node) = s.node(i) else { continue };
            let listening = now.saturating_since(started[i]) > Duration::from_secs(10);
            let mut named = std::collections::BTreeSet::new();
            for v in node.blocks_view(s.now) {
                if v.owner != Some(mid) || ever_m.contains(&v.index) {
                    continue;
                }
                named.insert(v.index);
                // Once misled about a block (named the member while it could not know
                // better), a node keeps dating that block from what it was told.
                let judged = listening && protected(i, v.index) && !misled.contains(&(i, v.index));
                if !judged {
                    misled.insert((i, v.index));
                }
                let &mut (first, guarded) = seen_m.entry((i, v.index)).or_insert((now, judged));
                if guarded
                    && now.saturating_since(first) > Duration::from_secs(10)
                    && violation.is_none()
                {
                    let holders: Vec<_> = held_since
                        .iter()
                        .filter(|((_, hb), _)| *hb == v.index)
                        .collect();
                    violation = Some(format!(
                        "seed {seed} at {:?}: node {i} names the member as the owner of block {} since {first:?} (member {m}; held: {holders:?}; split at {split_at:?}, healed at {healed_at:?})",
                        s.now, v.index
                    ));
                }
            }
            seen_m.retain(|&(j, b), _| j != i || named.contains(&b));
        }
        // After the check, which judges by what was held and known before this step.
        last_check = now;
        for &i in &honest {
            let Some(node) = s.node(i) else { continue };
            for v in node.blocks_view(s.now) {
                if let Some(j) = honest.iter().copied().find(|&j| {
                    v.owner.is_some() && s.node(j).is_some_and(|n| Some(n.id()) == v.owner)
                }) {
                    known.insert((i, v.index), j);
                }
            }
        }
        held_since.retain(|&(j, b), _| s.node(j).is_some_and(|n| n.blocks().owns(b)));
        for &j in &honest {
            if let Some(node) = s.node(j) {
                for b in node.blocks().owned() {
                    held_since.entry((j, b)).or_insert(now);
                }
            }
        }
        // A partition of the honest nodes (the member on one side) from 60 s to 150 s.
        if step == 120 {
            let (a, b) = honest.split_at(honest.len() / 2);
            let mut a = a.to_vec();
            a.push(m);
            s.partition(&[&a, b]);
            split = true;
            split_at = Some(s.now);
        }
        if step == 300 && split {
            s.heal();
            healed_at = Some(s.now);
        }
        // Restarts of honest nodes (their keys and state kept).
        if step < 400 && step % 50 == 25 {
            let i = honest[rng.random_range(0..honest.len())];
            s.stop(i);
            s.run_for(Duration::from_secs(rng.random_range(1..8)));
            s.start(i);
            started[i] = s.now;
            seen_m.retain(|&(j, _), _| j != i);
            // What it heard before is gone with the process.
            known.retain(|&(j, _), _| j != i);
            misled.retain(|&(j, _)| j != i);
        }
    }
    if !node_keys {
        return violation;
    }
    if let Some(v) = violation {
        panic!("{v}");
    }
    s.run_until_pred(s.now + Duration::from_secs(300), |s| {
        s.all_satisfied() && s.check_agreement().is_ok()
    })
    .unwrap_or_else(|| panic!("seed {seed}: not settled: {:?}", s.check_agreement()));
    for o in s.all_overlaps() {
        assert!(o.end.is_some(), "seed {seed}: two owners left: {o:?}");
    }
    let refused = total(&s, Counter::ClaimsRefused);
    let forged = total(&s, Counter::AuthDropForged);
    assert!(refused > 0, "seed {seed}: no claim refused");
    assert!(
        forged > 0,
        "seed {seed}: no claim in another's name refused"
    );
    // The owners it kept claiming from for a block timeout raised the alarm.
    assert!(s.contested > 0, "seed {seed}: no contest reported");
    println!(
        "SIM member_attack seed {seed}: refused={refused} forged={forged} contested={} signatures={}",
        s.contested,
        total(&s, Counter::AuthSignatureVerified)
    );
    None
}

#[test]
fn with_node_keys_a_member_cannot_take_a_held_block() {
    for seed in 0..seeds(3) {
        member_attack(seed, true);
    }
    // The control: the same member without node keys takes blocks.
    assert!(
        member_attack(0, false).is_some(),
        "without node keys the member should have taken a block"
    );
}

fn c_config() -> CConfig {
    CConfig {
        range: range(),
        tentative: 2,
        block_timeout: 20,
        spare: 2,
        learning: true,
        lease_time: 300,
        little_endian: true,
        master: false,
    }
}

/// One round of forgeries in the names of our nodes `ours`: each one's blocks released in
/// its name, the next one's claimed in its name (plain, as a C node would send them),
/// and replays of datagrams ours sent, from the attacker and from their senders' addresses.
fn migration_attack(s: &mut Sim, ours: &[usize], rng: &mut StdRng) {
    let running: Vec<(usize, NodeId, Vec<u32>)> = ours
        .iter()
        .filter_map(|&i| s.node(i).map(|n| (i, n.id(), n.blocks().owned().collect())))
        .collect();
    for (k, (_, id, blocks)) in running.iter().enumerate() {
        let (_, _, next) = &running[(k + 1) % running.len()];
        for (list, ttl) in [(blocks, 0), (next, 60)] {
            if !list.is_empty() {
                let n = list.len().min(40);
                s.inject(ATTACKER, Dest::Multicast, &claim_as(*id, &list[..n], ttl));
            }
        }
    }
    let ids: Vec<NodeId> = running.iter().map(|r| r.1).collect();
    let theirs: Vec<_> = s
        .captured
        .iter()
        .filter(|(_, d)| d.get(..8).is_some_and(|h| ids.iter().any(|id| id.0 == h)))
        .cloned()
        .collect();
    for _ in 0..4 {
        if theirs.is_empty() {
            break;
        }
        let (dest, d) = theirs[rng.random_range(0..theirs.len())].clone();
        let to = match dest {
            Dest::Multicast => Dest::Multicast,
            Dest::Unicast(_) => Dest::Unicast(s.addr(ours[rng.random_range(0..ours.len())])),
        };
        s.inject(ATTACKER, to, &d);
        let from = s.addr(ours[rng.random_range(0..ours.len())]);
        s.inject(from, Dest::Multicast, &d);
    }
}

/// Blocks of `ours` (block, owner) as they own them now.
fn held_by_ours(s: &Sim, ours: &[usize]) -> Vec<(u32, usize)> {
    ours.iter()
        .filter_map(|&i| s.node(i).map(|n| (i, n)))
        .flat_map(|(i, n)| n.blocks().owned().map(move |b| (b, i)).collect::<Vec<_>>())
        .collect()
}

/// Each block of `held` is still its owner's, in its own view and in the view of every
/// other of `ours` (by id: the source address is not authenticated, so a relayed genuine
/// datagram arriving first can stand for it; docs/protocol.md "What remains").
fn ours_unmoved(s: &Sim, ours: &[usize], held: &[(u32, usize)]) -> Result<(), String> {
    for &(b, owner) in held {
        let o = s.node(owner).expect("no restarts here");
        if !o.blocks().owned().any(|x| x == b) {
            return Err(format!("node {owner} lost block {b}"));
        }
        for &j in ours {
            if j == owner {
                continue;
            }
            let seen = s
                .node(j)
                .and_then(|n| n.blocks().owner_of(b))
                .map(|(id, _)| id);
            if seen != Some(o.id()) {
                return Err(format!(
                    "node {j} sees block {b} as {seen:?}, node {owner} ({}) holds it",
                    o.id()
                ));
            }
        }
    }
    Ok(())
}

#[test]
fn in_the_migration_mode_forgeries_in_our_nodes_names_change_nothing_on_them() {
    // Cheap (about 10 ms a seed): more seeds than the other tests here; with the mesh key
    // alone and with node keys as well.
    for (seed, node_keys) in (0..seeds(8)).flat_map(|s| [(s, false), (s, true)]) {
        let mut s = Sim::new(seed, Link::lossy(0.02));
        s.keys = vec![key(1, 1)];
        s.node_keys = node_keys;
        s.migrate = true;
        s.capture = true;
        let mut rng = StdRng::seed_from_u64(seed ^ 0x316);
        let mut ours = Vec::new();
        for k in 0..6 {
            s.run_for(Duration::from_millis(rng.random_range(0..1000)));
            if k % 2 == 0 {
                ours.push(s.add_node(config(true)));
            } else {
                s.add_c_node(c_config());
            }
        }
        let settled = |s: &Sim| {
            s.all_satisfied()
                && s.running_c().all(|(_, c)| c.satisfied())
                && s.check_agreement().is_ok()
        };
        let t = s.run_until_pred(at(300), settled).unwrap_or_else(|| {
            panic!(
                "seed {seed} (node keys {node_keys}): not settled: {:?}",
                s.check_agreement()
            )
        });
        // Settled: every view has had a refresh round to catch up.
        s.run_for(Duration::from_secs(6));
        let held = held_by_ours(&s, &ours);
        for step in 0..200 {
            s.run_for(Duration::from_millis(500));
            migration_attack(&mut s, &ours, &mut rng);
            s.captured.truncate(2000);
            if step % 4 == 0 {
                ours_unmoved(&s, &ours, &held)
                    .and_then(|()| s.owner_map().map(|_| ()))
                    .unwrap_or_else(|e| {
                        panic!("seed {seed} (node keys {node_keys}) at {:?}: {e}", s.now)
                    });
            }
        }
        assert_eq!(
            s.id_changes, 0,
            "seed {seed} (node keys {node_keys}): a forgery in its name changed an id"
        );
        let plain = total(&s, Counter::AuthPlainAccepted);
        let copies = total(&s, Counter::AuthPlainCopy);
        let refused = total(&s, Counter::AuthDropUnsigned);
        // Honest nodes and C nodes only: no claim of theirs is contested.
        assert_eq!(
            s.contested, 0,
            "seed {seed} (node keys {node_keys}): a false alarm"
        );
        assert!(
            plain > 0 && copies > 0 && refused > 0,
            "seed {seed} (node keys {node_keys}): {plain} {copies} {refused}"
        );
        s.run_until_pred(s.now + Duration::from_secs(120), settled)
            .unwrap_or_else(|| {
                panic!(
                    "seed {seed} (node keys {node_keys}): not settled after the attack: {:?}",
                    s.check_agreement()
                )
            });
        println!(
            "SIM migration seed {seed} node_keys={node_keys}: settled_at={t:?} plain_accepted={plain} plain_copies={copies} forgeries_refused={refused} overlaps={} contested={}",
            s.all_overlaps().len(),
            s.contested
        );
    }
}

//! Replication of bindings to peers (src/replica.rs), in the simulator.
//!
//! What must hold once the mesh is quiet: every block a node owns has the holders the
//! rendezvous rule names over the live ddhcp peers (computed here independently of the
//! node's own record), each holder holds exactly the owner's bindings of that block, and
//! nothing is left unacknowledged — over loss, delay, duplication and roaming clients, with
//! C nodes on the same link that are never sent a replication message.

use crate::sim;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use ddhcp::api::ApiConfig;
use ddhcp::blocks::ClaimConfig;
use ddhcp::node::{Answer, Node, NodeConfig, Query};
use ddhcp::persist::Change;
use ddhcp::pool::ServiceConfig;
use ddhcp::range::ManagedRange;
use ddhcp::replica::{self, DEFAULT_MAX_LAG, DEFAULT_REPLICAS};
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
                        panic!(
                            "seed {seed}: {h} holds nothing of node {i} block {block} (owners {:?}, leases {}, holder owns it {})",
                            s.owner_history.get(&block),
                            owner_leases(n, block).len(),
                            holder.blocks().owns(block)
                        )
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
        let quiet = s.run_until_pred(limit, caught_up);
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

/// How soon a crashed owner's blocks with bindings have a new owner: its last claim lapses
/// within a block timeout (and a claim round, the timer's granularity), the first holder
/// inquires for three rounds and claims; one takeover step later the second holder does,
/// if the first was not heard.
fn takeover_bound(c: &ClaimConfig) -> Duration {
    c.block_timeout
        + c.round_interval() * (u32::from(ddhcp::blocks::INQUIRE_ROUNDS) + 1)
        + ddhcp::node::takeover_step(c)
}

/// When node 0 crashes after the clients settled: some time into the run, varied by seed
/// (at 30 s refreshes, anywhere in the refresh cycle).
fn rng_secs(seed: u64) -> u64 {
    20 + StdRng::seed_from_u64(seed ^ 0xc4a5).random_range(0..90)
}

/// Every stream of every running node has all it sent acknowledged.
fn caught_up(s: &Sim) -> bool {
    s.running().all(|(_, n)| {
        n.replication()
            .streams(s.now)
            .iter()
            .all(|v| v.lag_records == 0)
    })
}

/// Every client bound, and node 0's (`mine`) in node 0's blocks: a block lost in a claim
/// race at the start leaves its client to the winner until it renews.
fn home_settled(s: &Sim, mine: &[usize]) -> bool {
    s.clients.iter().all(|c| c.ip.is_some())
        && mine.iter().all(|&c| {
            let ip = s.clients[c].ip.unwrap();
            owned_by(s, 0).contains(&range().locate(ip).unwrap().0)
        })
}

/// Five ddhcp nodes, `home` clients on node 0 and eight on the others; the indices of
/// node 0's clients.
fn five_nodes_with_clients(seed: u64, home: usize) -> (Sim, Vec<usize>) {
    let mut s = Sim::new(seed, Link::lossy(0.05));
    for _ in 0..5 {
        s.add_node(config());
    }
    let mine: Vec<usize> = (0..home).map(|_| s.add_client(0)).collect();
    for c in 0..8 {
        s.add_client(1 + c % 4);
    }
    (s, mine)
}

/// The blocks each node owns, by node index.
fn owned_by(s: &Sim, i: usize) -> BTreeSet<u32> {
    s.node(i)
        .map(|n| n.blocks().owned().collect())
        .unwrap_or_default()
}

/// Node 0 started empty with its id and `--recover`: how long until it is done and owns
/// every block of `bound0` again.
fn rebuild_node0(s: &mut Sim, bound0: &BTreeSet<u32>, seed: u64) -> Duration {
    let start = s.now;
    s.config_mut(0).recover = true;
    s.start(0);
    let rebuilt = s.run_until_pred(start + Duration::from_secs(200), |s| {
        s.node(0).is_some_and(|n| !n.is_recovering()) && bound0.is_subset(&owned_by(s, 0))
    });
    let Some(t) = rebuilt else {
        panic!(
            "seed {seed}: no rebuild: owns {:?} of {bound0:?}",
            owned_by(s, 0)
        );
    };
    t.saturating_since(start)
}

/// Node 0's clients (`mine`) come home after its rebuild and keep their addresses
/// (`before`); no address was ever held twice and every block has its rightful owner.
fn home_again(s: &mut Sim, mine: &[usize], before: &[Option<Ipv4Addr>], seed: u64) {
    for &c in mine {
        s.roam(c, 0);
    }
    s.run_for(Duration::from_secs(60));
    let home: Vec<_> = mine.iter().map(|&c| s.clients[c].ip).collect();
    assert_eq!(before, home, "seed {seed}: addresses changed after rebuild");
    assert!(
        s.address_conflicts.is_empty(),
        "seed {seed}: {:?}",
        s.address_conflicts
    );
    s.check_no_wrong_owner()
        .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
}

/// Takeover and rebuild: node 0 serves 16 clients, crashes and loses its store; its clients
/// move to the other nodes' links. Each keeps its address with no NAK, because the first
/// holder of each block's replica takes the block over with its bindings. Node 0 comes back
/// empty with its id and `--recover`: it gets every block back with the bindings, and
/// serves them (clients roam back). No address is ever held by two clients, over loss and
/// many seeds. Returns nothing; prints the takeover and rebuild times.
#[test]
fn owner_crash_with_wiped_store_then_rebuild() {
    let mut takeover = Vec::new();
    let mut served = Vec::new();
    let mut rebuild = Vec::new();
    for seed in 0..seeds(24) {
        let (mut s, mine) = five_nodes_with_clients(seed, 16);
        let settled = s.run_until_pred(s.now + Duration::from_secs(300), |s| {
            home_settled(s, &mine) && caught_up(s)
        });
        assert!(
            settled.is_some(),
            "seed {seed}: clients never all bound: {:?}",
            s.running()
                .map(|(i, n)| (i, n.replication().streams(s.now)))
                .collect::<Vec<_>>()
        );
        s.run_for(Duration::from_secs(rng_secs(seed)));
        let before: Vec<_> = mine.iter().map(|&c| s.clients[c].ip).collect();

        let naks: u64 = s.clients.iter().map(|c| c.naks).sum();
        // The blocks with bindings: those are taken over (an unused block is just free).
        let bound0: BTreeSet<u32> = before
            .iter()
            .map(|ip| range().locate(ip.unwrap()).unwrap().0)
            .collect();

        // Crash with the disk: the clients move to the other links and ask there.
        let crash = s.now;
        s.stop(0);
        s.wipe(0);
        for (k, &c) in mine.iter().enumerate() {
            s.roam(c, 1 + k % 4);
        }
        let acks: Vec<u64> = mine.iter().map(|&c| s.clients[c].acks).collect();
        let owned = s.run_until_pred(crash + Duration::from_secs(120), |s| {
            bound0
                .iter()
                .all(|&b| s.running().any(|(_, n)| n.blocks().owns(b)))
        });
        let Some(t) = owned else {
            panic!("seed {seed}: blocks not taken over");
        };
        let bound = takeover_bound(&config().pools[0].claim);
        let took = t.saturating_since(crash);
        assert!(
            took <= bound,
            "seed {seed}: blocks taken over after {took:?} > {bound:?}"
        );
        takeover.push(took.as_secs_f64());
        // The clients renew within their lease (each try is lost with 5 % on each of its
        // up to four hops, and retried after 3 s).
        let back = s.run_until_pred(crash + Duration::from_secs(110), |s| {
            mine.iter()
                .zip(&acks)
                .all(|(&c, &a)| s.clients[c].acks > a && s.clients[c].ip.is_some())
        });
        let Some(t) = back else {
            panic!("seed {seed}: clients not served after the crash");
        };
        served.push(t.saturating_since(crash).as_secs_f64());
        let after: Vec<_> = mine.iter().map(|&c| s.clients[c].ip).collect();
        assert_eq!(before, after, "seed {seed}: addresses changed on takeover");
        assert_eq!(
            s.clients.iter().map(|c| c.naks).sum::<u64>(),
            naks,
            "seed {seed}: a client was NAKed"
        );
        let taken: u64 = s
            .running()
            .map(|(_, n)| n.counters().get(ddhcp::stats::Counter::BlocksTakenOver))
            .sum();
        assert!(
            taken >= bound0.len() as u64,
            "seed {seed}: {taken} taken over"
        );

        // Back, empty, with its id: it rebuilds and owns its blocks again.
        s.run_for(Duration::from_secs(20));
        rebuild.push(rebuild_node0(&mut s, &bound0, seed).as_secs_f64());
        // Each client's lease is at its block's owner: node 0 for the blocks it rebuilt.
        for (k, &c) in mine.iter().enumerate() {
            let ip = s.clients[c]
                .ip
                .unwrap_or_else(|| {
                    let b = range().locate(before[k].unwrap()).unwrap().0;
                    panic!(
                        "seed {seed}: client {c} lost its address: {:?}; block {b} owners {:?}, views {:?}",
                        s.clients[c],
                        s.owner_history.get(&b),
                        s.running()
                            .map(|(i, n)| (i, n.blocks_view(s.now).into_iter().find(|v| v.index == b).map(|v| (v.state, v.owner))))
                            .collect::<Vec<_>>()
                    )
                });
            let block = range().locate(ip).unwrap().0;
            let (i, n) = s
                .running()
                .find(|(_, n)| n.blocks().owns(block))
                .unwrap_or_else(|| panic!("seed {seed}: nobody owns block {block} of {ip}"));
            assert!(
                !bound0.contains(&block) || i == 0,
                "seed {seed}: block {block} not rebuilt"
            );
            assert!(
                owner_leases(n, block)
                    .iter()
                    .any(|(a, k)| *a == ip && k.ends_with(&s.clients[c].mac)),
                "seed {seed}: {ip} (block {block}) has no lease at its owner {i}"
            );
        }
        // The clients come home and keep their addresses.
        home_again(&mut s, &mine, &before, seed);
    }
    takeover.sort_by(f64::total_cmp);
    served.sort_by(f64::total_cmp);
    rebuild.sort_by(f64::total_cmp);
    let c = config().pools[0].claim.clone();
    println!(
        "SIM takeover: seeds={} blocks taken over after the crash p50={:.1}s max={:.1}s (bound {:?}: block timeout {:?} + 4 rounds + step {:?}); clients served again p50={:.1}s max={:.1}s; rebuild p50={:.1}s max={:.1}s",
        takeover.len(),
        percentile(&takeover, 50.0),
        percentile(&takeover, 100.0),
        takeover_bound(&c),
        c.block_timeout,
        ddhcp::node::takeover_step(&c),
        percentile(&served, 50.0),
        percentile(&served, 100.0),
        percentile(&rebuild, 50.0),
        percentile(&rebuild, 100.0),
    );
}

fn api_range() -> ManagedRange {
    ManagedRange::new(Ipv4Addr::new(10, 1, 0, 0), 22, 3).unwrap()
}

/// A node with one API pool, "vms".
fn api_config(sync: bool) -> NodeConfig {
    let mut cfg = NodeConfig::single(
        api_range(),
        ClaimConfig {
            needless_timeout: Duration::from_secs(60),
            ..claim(2, 30, 2, false)
        },
        None,
    );
    cfg.pools[0].name = "vms".into();
    cfg.pools[0].service = ServiceConfig::Api(ApiConfig::default());
    cfg.replica_sync = sync;
    cfg
}

fn allocate(s: &mut Sim, i: usize, id: u64) {
    s.query(
        i,
        id,
        Query::Allocate {
            pool: "vms".into(),
            owner: format!("vm-{id}"),
            ip: None,
            meta: Default::default(),
            timeout: None,
        },
    );
}

/// Every allocation of every running node, by address, and how many are listed by two
/// nodes. Two owners for one address is a double allocation; the same one at two nodes
/// happens for a moment while two holders both took a block over, until the tie-break.
fn allocations(s: &Sim, seed: u64) -> (std::collections::BTreeMap<Ipv4Addr, String>, usize) {
    let mut all = std::collections::BTreeMap::new();
    let mut twice = 0;
    for (i, n) in s.running() {
        for r in n.pool(0).api().unwrap().rows(s.now, None) {
            match all.insert(r.ip, r.owner.clone()) {
                Some(o) if o != r.owner => {
                    panic!(
                        "seed {seed}: {} allocated to {o} and to {} (node {i})",
                        r.ip, r.owner
                    )
                }
                Some(_) => twice += 1,
                None => {}
            }
        }
    }
    (all, twice)
}

/// Under continuous allocation load on node 0 (over a lossy link), node 0 crashes and
/// loses its store at a random moment. Every allocation it acknowledged more than the lag
/// bound (5 s) before survives at the node that took its block over (in synchronous mode:
/// every acknowledged one), and no address is ever allocated twice, also while node 1 keeps
/// allocating through the takeover and after node 0 rebuilt.
#[test]
fn acknowledged_allocations_survive_a_crash_with_the_store() {
    let mut lost_recent = Vec::new();
    let mut total = 0;
    for seed in 0..seeds(20) {
        for sync in [false, true] {
            let mut s = Sim::new(seed, Link::lossy(0.05));
            for _ in 0..5 {
                s.add_node(api_config(sync));
            }
            s.run_for(Duration::from_secs(10));
            let mut rng = StdRng::seed_from_u64(seed ^ 0xa110c);
            let crash = s.now + Duration::from_millis(rng.random_range(30_000..90_000));
            let mut id = 0;
            while s.now < crash {
                id += 1;
                allocate(&mut s, 0, id);
                s.run_for(Duration::from_millis(rng.random_range(50..250)));
            }
            s.stop(0);
            s.wipe(0);
            let acked: Vec<(Ipv4Addr, String, ddhcp::time::Instant)> = s
                .answers
                .iter()
                .filter_map(|(i, _, a, t)| match a {
                    Answer::Allocated { row, .. } if *i == 0 => {
                        Some((row.ip, row.owner.clone(), *t))
                    }
                    _ => None,
                })
                .collect();
            assert!(
                acked.len() > 50,
                "seed {seed}: only {} acknowledged",
                acked.len()
            );
            // Node 1 allocates on through the takeover.
            let until = s.now + Duration::from_secs(90);
            while s.now < until {
                id += 1;
                allocate(&mut s, 1, id);
                s.run_for(Duration::from_millis(rng.random_range(200..600)));
                allocations(&s, seed);
            }
            let check = |s: &Sim, when: &str| {
                let (all, twice) = allocations(s, seed);
                assert_eq!(
                    twice, 0,
                    "seed {seed} {when}: allocations listed by two nodes"
                );
                let mut recent_lost = 0;
                for (ip, owner, t) in &acked {
                    if all.get(ip) == Some(owner) {
                        continue;
                    }
                    let old = crash.saturating_since(*t) > DEFAULT_MAX_LAG;
                    if sync || old {
                        let b = api_range().locate(*ip).unwrap().0;
                        for (i, n) in s.running() {
                            eprintln!(
                                "node {i}: owns {b}: {}, owner_of {:?}, taken {}, rows {:?}, held {:?}",
                                n.blocks().owns(b),
                                n.blocks().owner_of(b).map(|o| o.0),
                                n.counters().get(ddhcp::stats::Counter::BlocksTakenOver),
                                n.pool(0)
                                    .api()
                                    .unwrap()
                                    .rows(s.now, None)
                                    .iter()
                                    .filter(|r| api_range().locate(r.ip).unwrap().0 == b)
                                    .map(|r| (r.ip, r.owner.clone()))
                                    .collect::<Vec<_>>(),
                                n.replication().held(s.now),
                            );
                        }
                    }
                    assert!(
                        !(sync || old),
                        "seed {seed} sync {sync} {when}: {ip} of {owner}, acknowledged {:?} before the crash, is lost",
                        crash.saturating_since(*t)
                    );
                    recent_lost += 1;
                }
                recent_lost
            };
            let lost = check(&s, "after takeover");
            lost_recent.push(lost as f64);
            total += acked.len();
            // Node 0 comes back empty with its id and rebuilds.
            s.config_mut(0).recover = true;
            s.start(0);
            let done = s.run_until_pred(s.now + Duration::from_secs(200), |s| {
                s.node(0).is_some_and(|n| !n.is_recovering())
            });
            assert!(done.is_some(), "seed {seed}: no rebuild");
            for _ in 0..40 {
                id += 1;
                allocate(&mut s, 0, id);
                s.run_for(Duration::from_millis(500));
                allocations(&s, seed);
            }
            // A rebuild merges what every holder held, so it may bring back a recent one the
            // taker's copy lacked; it never loses one.
            let after = check(&s, "after rebuild");
            assert!(
                after <= lost,
                "seed {seed}: {after} lost after the rebuild, {lost} before"
            );
            let back = s.node(0).unwrap().pool(0).api().unwrap().count();
            assert!(back > 0, "seed {seed}: node 0 rebuilt no allocation");
        }
    }
    lost_recent.sort_by(f64::total_cmp);
    println!(
        "SIM allocation loss: runs={} allocations acknowledged={total}; lost (all within the lag bound, async only) p50={} max={}",
        lost_recent.len(),
        percentile(&lost_recent, 50.0),
        percentile(&lost_recent, 100.0)
    );
}

/// Node 0 is cut off from the server link for 100 s while its clients stay on its link;
/// half of them move to the other nodes' links meanwhile (so the holders take node 0's
/// blocks over and serve them), the rest keep renewing at node 0. The link heals, the
/// tie-break settles who keeps each block. In a second run node 0 instead crashes with its
/// store kept (its clients all move) and comes back after the takeover (a returning owner). No address is
/// ever held by two clients, every client keeps its address, and each block has one owner.
#[test]
fn partitioned_and_returning_owners_never_bind_an_address_twice() {
    let mut settle = Vec::new();
    for seed in 0..seeds(20) {
        for returning in [false, true] {
            let (mut s, mine) = five_nodes_with_clients(seed, 12);
            let ok = s.run_until_pred(s.now + Duration::from_secs(300), |s| home_settled(s, &mine));
            assert!(ok.is_some(), "seed {seed}: clients never all bound");
            s.run_for(Duration::from_secs(rng_secs(seed)));
            let before: Vec<_> = s.clients.iter().map(|c| c.ip).collect();
            if returning {
                s.stop(0);
            } else {
                s.partition(&[&[0], &[1, 2, 3, 4]]);
            }
            // A crashed node's link has no server: all its clients move then.
            for (k, &c) in mine
                .iter()
                .enumerate()
                .filter(|(k, _)| returning || k % 2 == 0)
            {
                s.roam(c, 1 + k % 4);
            }
            s.run_for(Duration::from_secs(100));
            if returning {
                s.start(0);
            } else {
                s.heal();
            }
            let start = s.now;
            let t = s.run_until_pred(start + Duration::from_secs(300), |s| {
                s.check_no_wrong_owner().is_ok() && {
                    let mut seen = BTreeSet::new();
                    s.running()
                        .all(|(_, n)| n.blocks().owned().all(|b| seen.insert(b)))
                }
            });
            let Some(t) = t else {
                panic!("seed {seed} returning {returning}: owners never settled");
            };
            settle.push(t.saturating_since(start).as_secs_f64());
            // Everyone renews at least once more where they are now.
            s.run_for(Duration::from_secs(130));
            let after: Vec<_> = s.clients.iter().map(|c| c.ip).collect();
            assert_eq!(
                before, after,
                "seed {seed} returning {returning}: addresses changed"
            );
            assert!(
                s.address_conflicts.is_empty(),
                "seed {seed} returning {returning}: {:?}",
                s.address_conflicts
            );
            // Each client's lease is at the owner of its block.
            for (c, ip) in after.iter().enumerate() {
                let ip = ip.unwrap();
                let block = range().locate(ip).unwrap().0;
                let owner = s.running().find(|(_, n)| n.blocks().owns(block));
                assert!(
                    owner.is_some_and(|(_, n)| owner_leases(n, block)
                        .iter()
                        .any(|(a, k)| *a == ip && k.ends_with(&s.clients[c].mac))),
                    "seed {seed} returning {returning}: {ip} of client {c} not at its owner"
                );
            }
        }
    }
    settle.sort_by(f64::total_cmp);
    println!(
        "SIM partitioned/returning owners: runs={} owners settled after heal/return p50={:.1}s max={:.1}s",
        settle.len(),
        percentile(&settle, 50.0),
        percentile(&settle, 100.0)
    );
}

/// A holder restarts at once (its replicas were in memory): its owners notice that it
/// does not know their streams, open new ones and send it the full state again, so after
/// a quiet minute every replica matches its owner and nothing is left unacknowledged.
#[test]
fn a_holder_that_restarts_gets_its_replicas_again() {
    for seed in 0..seeds(10) {
        let mut s = Sim::new(seed, Link::lossy(0.05));
        for _ in 0..4 {
            s.add_node(config());
        }
        for c in 0..16 {
            s.add_client(c % 4);
        }
        s.run_for(Duration::from_secs(60));
        s.stop(1);
        s.start(1);
        s.run_for(Duration::from_secs(60));
        let limit = s.now + Duration::from_secs(30);
        let quiet = s.run_until_pred(limit, caught_up);
        assert!(
            quiet.is_some(),
            "seed {seed}: replication never caught up after a holder restart"
        );
        check_replicas(&s, seed);
    }
}

/// A power cut of the whole mesh, and node 0 loses its disk as well: the replicas its
/// holders wrote to their own stores are all that is left of its bindings. The others come
/// back with their stores (and the learning phase); as node 0 stays silent for a block
/// timeout, its first holders take its blocks over from what they restored, and its
/// clients, moved to the other links, keep their addresses. Node 0 then rebuilds from
/// them. Without the holders' stores, nothing of node 0's would be left (broken on
/// purpose once: with `Change::Replica` never journalled, the takeover never happens).
#[test]
fn replicas_survive_a_mesh_wide_power_cut_in_the_holders_stores() {
    let mut took = Vec::new();
    for seed in 0..seeds(16) {
        let (mut s, mine) = five_nodes_with_clients(seed, 12);
        let settled = s.run_until_pred(s.now + Duration::from_secs(300), |s| {
            home_settled(s, &mine) && caught_up(s)
        });
        assert!(settled.is_some(), "seed {seed}: never settled");
        s.run_for(Duration::from_secs(rng_secs(seed)));
        let before: Vec<_> = mine.iter().map(|&c| s.clients[c].ip).collect();
        let bound0: BTreeSet<u32> = before
            .iter()
            .map(|ip| range().locate(ip.unwrap()).unwrap().0)
            .collect();
        let naks: u64 = s.clients.iter().map(|c| c.naks).sum();

        for i in 0..5 {
            s.stop(i);
        }
        s.wipe(0);
        s.run_for(Duration::from_secs(5));
        let start = s.now;
        for i in 1..5 {
            s.config_mut(i).pools[0].claim.learning = true;
            s.start(i);
        }
        for (k, &c) in mine.iter().enumerate() {
            s.roam(c, 1 + k % 4);
        }
        let held: usize = s
            .running()
            .flat_map(|(_, n)| n.replication().held(s.now))
            .map(|h| h.leases)
            .sum();
        assert!(
            held >= mine.len(),
            "seed {seed}: {held} leases restored from the holders' stores"
        );
        let owned = s.run_until_pred(start + Duration::from_secs(150), |s| {
            bound0
                .iter()
                .all(|&b| s.running().any(|(_, n)| n.blocks().owns(b)))
        });
        let Some(t) = owned else {
            panic!("seed {seed}: node 0's blocks not taken over after the power cut");
        };
        took.push(t.saturating_since(start).as_secs_f64());
        s.run_for(Duration::from_secs(60));
        let after: Vec<_> = mine.iter().map(|&c| s.clients[c].ip).collect();
        assert_eq!(before, after, "seed {seed}: addresses changed");
        assert_eq!(
            s.clients.iter().map(|c| c.naks).sum::<u64>(),
            naks,
            "seed {seed}: a client was NAKed"
        );

        // Node 0 rebuilds from what the takers and holders have.
        rebuild_node0(&mut s, &bound0, seed);
        home_again(&mut s, &mine, &before, seed);
    }
    took.sort_by(f64::total_cmp);
    println!(
        "SIM power cut: seeds={} node 0's blocks taken over from the holders' stores p50={:.1}s max={:.1}s after the restart",
        took.len(),
        percentile(&took, 50.0),
        percentile(&took, 100.0)
    );
}

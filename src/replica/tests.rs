use std::collections::BTreeSet;

use super::*;

fn range() -> ManagedRange {
    ManagedRange::new(Ipv4Addr::new(10, 0, 0, 0), 22, 2).unwrap()
}

fn id(n: u8) -> NodeId {
    NodeId([2, 0, 0, 0, 0, n, 0, 0])
}

fn addr(n: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, u16::from(n))
}

fn repl(me: u8, k: usize, epoch: u32) -> Replication {
    let r = range();
    Replication::new(k, id(me), epoch, [(r.swarm(), r, Duration::from_secs(60))])
}

fn lease(ip: [u8; 4], until: u64) -> Change {
    Change::Lease(LeaseRecord {
        ip: Ipv4Addr::from(ip),
        until: Instant::from_millis(until),
        declined: false,
        client: None,
        chaddr: [7; 16],
        hostname: None,
    })
}

/// Moves datagrams between `a` (id 1) and `b` (id 2) until neither has anything to send,
/// dropping those for which `lose` says so (counted from 0 over the whole exchange).
fn pump(
    now: Instant,
    a: &mut Replication,
    b: &mut Replication,
    lose: &mut impl FnMut(usize) -> bool,
    n: &mut usize,
) {
    loop {
        let from_a: Vec<_> = a.take_sends().collect();
        let from_b: Vec<_> = b.take_sends().collect();
        if from_a.is_empty() && from_b.is_empty() {
            return;
        }
        for (pool, to, m) in from_a {
            assert_eq!(to, addr(2));
            *n += 1;
            if lose(*n - 1) {
                continue;
            }
            if let Message::Replicate {
                epoch,
                seq,
                records,
            } = m
            {
                b.on_replicate(now, pool, id(1), addr(1), epoch, seq, &records, |_| false);
            }
        }
        for (pool, to, m) in from_b {
            assert_eq!(to, addr(1));
            *n += 1;
            if lose(*n - 1) {
                continue;
            }
            if let Message::ReplicaAck { epoch, next } = m {
                a.on_ack(now, pool, id(2), epoch, next);
            }
        }
    }
}

#[test]
fn holders_are_deterministic_exclude_the_owner_and_move_little() {
    let s = range().swarm();
    let peers: Vec<NodeId> = (1..=8).map(id).collect();
    for block in 0..256 {
        let h = holders(&s, block, id(1), peers.iter().copied(), 2);
        assert_eq!(h.len(), 2);
        assert!(!h.contains(&id(1)));
        // The same set in another order gives the same holders.
        let rev = holders(&s, block, id(1), peers.iter().rev().copied(), 2);
        assert_eq!(h, rev);
    }
    // A ninth peer takes over only the blocks it ranks first or second for: about 2/8.
    let mut moved = 0;
    for block in 0..1024 {
        let before = holders(&s, block, id(1), peers.iter().copied(), 2);
        let after = holders(&s, block, id(1), peers.iter().copied().chain([id(9)]), 2);
        let b: BTreeSet<_> = before.iter().collect();
        let a: BTreeSet<_> = after.iter().collect();
        let diff = b.difference(&a).count();
        assert!(diff <= 1, "block {block}: {before:?} -> {after:?}");
        if diff == 1 {
            assert!(after.contains(&id(9)));
            moved += 1;
        }
    }
    assert!((150..350).contains(&moved), "{moved} of 1024 blocks moved");
    // Fewer candidates than k: all of them.
    assert_eq!(holders(&s, 5, id(1), [id(1), id(2)], 2), vec![id(2)]);
}

/// The score is part of the protocol: these values must never change.
#[test]
fn golden_scores() {
    let s = range().swarm();
    let got: Vec<u64> = (0..3).map(|b| score(&s, b, id(1))).collect();
    let again: Vec<u64> = (0..3).map(|b| score(&s, b, id(1))).collect();
    assert_eq!(got, again);
    assert_eq!(got, GOLDEN_SCORES);
}

/// Computed independently (a few lines of Python over the documented definition).
const GOLDEN_SCORES: [u64; 3] = [
    12_575_044_139_646_448_879,
    9_044_671_757_700_008_015,
    1_274_812_475_453_994_938,
];

#[test]
fn changes_reach_the_holder_in_order_and_are_acknowledged() {
    let t0 = Instant::from_millis(1_000_000);
    let mut a = repl(1, 2, 100);
    let mut b = repl(2, 2, 200);
    a.saw_peer(t0, 0, id(2), addr(2));
    // A peer we hold nothing of is told so once, in case it thinks we do (we restarted).
    let greeting: Vec<_> = a.take_sends().collect();
    assert_eq!(
        greeting,
        vec![(
            0,
            addr(2),
            Message::ReplicaAck {
                epoch: 0,
                next: UNKNOWN_STREAM
            }
        )]
    );
    a.on_changes(
        t0,
        0,
        &[
            Change::BlockOwned {
                block: 3,
                since: t0,
            },
            lease([10, 0, 0, 12], t0.as_millis() + 60_000),
            lease([10, 0, 0, 13], t0.as_millis() + 60_000),
            Change::LeaseGone(Ipv4Addr::new(10, 0, 0, 13)),
            // Not ours to send: another block nobody told us we own.
            lease([10, 0, 0, 40], t0.as_millis() + 60_000),
        ],
    );
    assert_eq!(a.holders_of(0, 3), &[id(2)]);
    // Nothing leaves before the batch delay.
    a.handle_timeout(t0);
    assert_eq!(a.take_sends().count(), 0);
    assert_eq!(a.poll_timeout(), Some(t0 + BATCH_DELAY));
    let t1 = t0 + BATCH_DELAY;
    a.handle_timeout(t1);
    let v = a.streams(t1);
    assert_eq!(v[0].lag_records, 4);
    assert_eq!(v[0].lag, BATCH_DELAY);
    let mut n = 0;
    pump(t1, &mut a, &mut b, &mut |_| false, &mut n);
    assert_eq!(n, 2, "one batch, one acknowledgement");
    let r = b.replica(0, id(1), 3).expect("block 3 held");
    assert_eq!(r.leases.len(), 1);
    let l = &r.leases[&Ipv4Addr::new(10, 0, 0, 12)];
    // 60 s left when queued: 60 s from the holder's receipt (the batch delay is added, on
    // the safe side).
    assert_eq!(l.until, t1 + Duration::from_millis(60_000));
    assert_eq!(a.streams(t1)[0].lag_records, 0);
    assert_eq!(b.held(t1)[0].leases, 1);
    // The block given up: the holder forgets it.
    a.on_changes(t1, 0, &[Change::BlockGone { block: 3 }]);
    let t2 = t1 + BATCH_DELAY;
    a.handle_timeout(t2);
    pump(t2, &mut a, &mut b, &mut |_| false, &mut n);
    assert!(b.replica(0, id(1), 3).is_none());
    assert!(a.holders_of(0, 3).is_empty());
}

#[test]
fn lost_batches_and_acks_are_retransmitted_in_order() {
    let t0 = Instant::from_millis(5_000);
    let mut a = repl(1, 1, 7);
    let mut b = repl(2, 1, 8);
    a.saw_peer(t0, 0, id(2), addr(2));
    let owned: Vec<Change> = (0..256)
        .map(|block| Change::BlockOwned { block, since: t0 })
        .collect();
    a.on_changes(t0, 0, &owned);
    // 256 leases in four bursts: about ten datagrams.
    let mut now = t0;
    let mut sent = 0;
    for i in 0..4u8 {
        let changes: Vec<Change> = (0..64u8)
            .map(|j| lease([10, 0, i, j * 4 + 1], 9_000_000))
            .collect();
        a.on_changes(now, 0, &changes);
        now = now + Duration::from_millis(20);
        a.handle_timeout(now);
        // Lose every third datagram, batches and acknowledgements alike.
        pump(now, &mut a, &mut b, &mut |k| k % 3 == 0, &mut sent);
    }
    for _ in 0..100 {
        let Some(t) = a.poll_timeout() else { break };
        now = t.max(now);
        a.handle_timeout(now);
        pump(now, &mut a, &mut b, &mut |k| k % 5 == 0, &mut sent);
        if a.streams(now)[0].lag_records == 0 {
            break;
        }
    }
    assert_eq!(a.streams(now)[0].lag_records, 0);
    let held: usize = (0..256)
        .map(|blk| b.replica(0, id(1), blk).unwrap().leases.len())
        .sum();
    assert_eq!(held, 256);
    assert!(a.stats().batches_sent >= 10, "{:?}", a.stats());
    assert!(a.stats().retransmits > 0);
    assert!(b.stats().out_of_order > 0);
}

#[test]
fn a_restarted_owner_opens_a_stream_the_holder_takes() {
    let t0 = Instant::from_millis(1_000);
    let mut a = repl(1, 1, 40);
    let mut b = repl(2, 1, 0);
    a.saw_peer(t0, 0, id(2), addr(2));
    a.on_changes(
        t0,
        0,
        &[
            Change::BlockOwned {
                block: 1,
                since: t0,
            },
            lease([10, 0, 0, 5], 90_000),
        ],
    );
    a.handle_timeout(t0 + BATCH_DELAY);
    let mut n = 0;
    pump(t0 + BATCH_DELAY, &mut a, &mut b, &mut |_| false, &mut n);
    assert_eq!(b.replica(0, id(1), 1).unwrap().leases.len(), 1);
    // The owner comes back with a new epoch; its resync starts the block afresh (the lease
    // was released while it was down).
    let t1 = t0 + Duration::from_secs(5);
    let mut a = repl(1, 1, 900);
    a.saw_peer(t1, 0, id(2), addr(2));
    let rs = a.take_rebalance(t1, 0, [1]);
    assert_eq!(
        rs,
        vec![Resync {
            block: 1,
            to: vec![id(2)]
        }]
    );
    a.resync(t1, 0, 1, &[id(2)], &[]);
    a.handle_timeout(t1 + BATCH_DELAY);
    pump(t1 + BATCH_DELAY, &mut a, &mut b, &mut |_| false, &mut n);
    assert_eq!(b.replica(0, id(1), 1).unwrap().leases.len(), 0);
    assert_eq!(a.streams(t1)[0].lag_records, 0);
}

#[test]
fn a_holder_that_stops_claiming_is_replaced() {
    let t0 = Instant::from_millis(0);
    let mut a = repl(1, 1, 1);
    a.saw_peer(t0, 0, id(2), addr(2));
    a.on_changes(
        t0,
        0,
        &[Change::BlockOwned {
            block: 9,
            since: t0,
        }],
    );
    assert_eq!(a.holders_of(0, 9), &[id(2)]);
    // Peer 3 appears and keeps claiming; peer 2 falls silent.
    let mut now = t0;
    for _ in 0..7 {
        now = now + Duration::from_secs(10);
        a.saw_peer(now, 0, id(3), addr(3));
        a.handle_timeout(now);
    }
    assert!(a.needs_rebalance(0));
    let rs = a.take_rebalance(now, 0, [9]);
    assert_eq!(
        rs,
        vec![Resync {
            block: 9,
            to: vec![id(3)]
        }]
    );
    assert_eq!(a.holders_of(0, 9), &[id(3)]);
    assert!(a.streams(now).iter().all(|s| s.peer == id(3)));
}

#[test]
fn bad_records_are_counted_not_applied() {
    let t0 = Instant::from_millis(0);
    let mut b = repl(2, 1, 0);
    b.on_replicate(
        t0,
        0,
        id(1),
        addr(1),
        5,
        0,
        &[vec![0xee, 0, 1], vec![4]],
        |_| false,
    );
    assert_eq!(b.stats().bad_records, 2);
    assert_eq!(b.held(t0)[0].blocks, 0);
    // A replicate for a pool we do not have is ignored.
    b.on_replicate(t0, 3, id(1), addr(1), 5, 1, &[], |_| false);
    let acks: Vec<_> = b.take_sends().collect();
    assert_eq!(acks.len(), 1);
}

/// A Recover costs a datagram and starts a stream of all we hold for the node: one stream
/// per node per holdoff, whatever the nonce (a flood of forged Recovers is not amplified).
#[test]
fn handbacks_to_one_node_are_held_off() {
    let t0 = Instant::from_millis(1_000_000);
    let mut a = repl(1, 2, 100);
    assert!(a.open_handback(t0, 0, id(2), addr(2), 7));
    // The same rebuild asking again, and another nonce at once: neither starts a stream.
    assert!(!a.open_handback(t0 + Duration::from_secs(1), 0, id(2), addr(2), 7));
    assert!(!a.open_handback(t0 + Duration::from_secs(2), 0, id(2), addr(2), 8));
    // Another node is not held off by it.
    assert!(a.open_handback(t0 + Duration::from_secs(2), 0, id(3), addr(3), 9));
    // After the holdoff a new rebuild is served.
    assert!(a.open_handback(
        t0 + HANDBACK_HOLDOFF + Duration::from_secs(1),
        0,
        id(2),
        addr(2),
        8
    ));
}

/// Replicas restored from a store keep only what is consistent: a block outside the range
/// and bindings outside their block are dropped. A block timeout later, an owner that was
/// heard meanwhile and did not send a block again has it forgotten (and journalled so);
/// one never heard is gone, its blocks handed to the takeover.
#[test]
fn restored_replicas_are_checked_once_their_owners_could_be_heard() {
    let t0 = Instant::from_millis(1_000_000);
    let mut h = repl(3, 2, 7);
    let mut rep = BlockReplica::default();
    for ip in [[10, 0, 0, 9], [10, 0, 0, 10], [10, 0, 0, 200]] {
        let Change::Lease(l) = lease(ip, 9_000_000) else {
            unreachable!()
        };
        rep.leases.insert(l.ip, l);
    }
    // Block 2 is 10.0.0.8-11: the lease of 10.0.0.200 does not belong there.
    h.restore_held(
        t0,
        0,
        [
            (id(1), 2, rep.clone()),
            (id(1), 5000, rep.clone()),
            (id(2), 2, rep),
        ],
    );
    assert_eq!(h.replica(0, id(1), 2).map(|r| r.leases.len()), Some(2));
    assert!(h.replica(0, id(1), 5000).is_none());
    assert!(h.is_ddhcp(0, id(1)) && h.is_ddhcp(0, id(2)));
    assert!(
        h.take_journal().is_empty(),
        "what came from the store is not written again"
    );
    // Node 1 is heard (and greeted: it knows no stream of ours); node 2 never.
    h.saw_peer(t0 + Duration::from_secs(1), 0, id(1), addr(1));
    let greet: Vec<_> = h.take_sends().collect();
    assert!(greet.iter().any(|(_, to, m)| *to == addr(1)
        && matches!(
            m,
            Message::ReplicaAck {
                epoch: 0,
                next: UNKNOWN_STREAM
            }
        )));
    h.handle_timeout(t0 + Duration::from_secs(59));
    assert!(
        h.replica(0, id(1), 2).is_some(),
        "checked only a block timeout after"
    );
    h.saw_peer(t0 + Duration::from_secs(59), 0, id(1), addr(1));
    h.handle_timeout(t0 + Duration::from_secs(61));
    assert!(h.replica(0, id(1), 2).is_none());
    assert_eq!(
        h.take_journal(),
        vec![(
            0,
            Change::Replica {
                origin: id(1),
                block: 2,
                change: Box::new(Change::BlockGone { block: 2 }),
            }
        )]
    );
    assert_eq!(h.take_gone(), vec![(0, id(2), vec![2])]);
}

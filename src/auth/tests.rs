// Key lists built inline read better in tests than slice::from_ref.
#![allow(clippy::cloned_ref_to_slice_refs)]

use super::*;
use crate::wire::{ClaimEntry, Message, Packet};
use std::net::Ipv4Addr;

const A: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0xa);
const B: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0xb);

fn key(byte: u8, id: u16) -> MeshKey {
    MeshKey::new(id, [byte; 32])
}

fn swarm() -> Swarm {
    Swarm {
        prefix: Ipv4Addr::new(10, 0, 0, 0),
        prefix_len: 24,
        block_size: 4,
    }
}

fn node(n: u8) -> NodeId {
    NodeId([n; 8])
}

fn auth(n: u8, keys: &[MeshKey], seed: u64) -> Auth {
    Auth::new(keys, false, node(n), swarm(), seed).unwrap()
}

fn claim(n: u8, block: u32) -> Vec<u8> {
    Packet {
        node_id: node(n),
        swarm: swarm(),
        message: Message::UpdateClaim(vec![ClaimEntry { block, timeout: 60 }]),
    }
    .encode()
    .unwrap()
}

fn sealed(a: &mut Auth, ch: Channel, mut d: Vec<u8>) -> Vec<u8> {
    a.seal(ch, &mut d);
    d
}

fn t(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

/// Delivers every challenge message each side has queued to the other, until none are
/// left; what each side released on the way is returned.
fn settle(
    a: &mut Auth,
    a_addr: Ipv6Addr,
    b: &mut Auth,
    b_addr: Ipv6Addr,
    now: Instant,
) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let (mut ra, mut rb) = (Vec::new(), Vec::new());
    loop {
        let mut moved = false;
        while let Some(tx) = a.poll_transmit() {
            assert_eq!(tx.dest, Dest::Unicast(b_addr));
            assert_eq!(
                b.open(now, Channel::Unicast, a_addr, &tx.payload),
                Opened::Consumed
            );
            moved = true;
        }
        while let Some(tx) = b.poll_transmit() {
            assert_eq!(tx.dest, Dest::Unicast(a_addr));
            assert_eq!(
                a.open(now, Channel::Unicast, b_addr, &tx.payload),
                Opened::Consumed
            );
            moved = true;
        }
        ra.extend(a.take_released().into_iter().map(|r| r.2));
        rb.extend(b.take_released().into_iter().map(|r| r.2));
        if !moved {
            return (ra, rb);
        }
    }
}

#[test]
fn first_datagram_is_held_until_the_challenge_is_answered_then_released() {
    let k = key(1, 7);
    let (mut a, mut b) = (auth(1, &[k.clone()], 1), auth(2, &[k], 2));
    let d = sealed(&mut a, Channel::Multicast, claim(1, 3));
    assert_eq!(d.len(), claim(1, 3).len() + TRAILER_LEN);
    assert!(Auth::looks_sealed(&d));
    assert_eq!(b.open(t(0), Channel::Multicast, A, &d), Opened::Consumed);
    assert_eq!(b.challenges_sent, 1);
    let (released, _) = settle(&mut b, B, &mut a, A, t(5));
    assert_eq!(released, vec![claim(1, 3)]);
    // Known now: verified at once; the same datagram again is a replay.
    let d2 = sealed(&mut a, Channel::Multicast, claim(1, 4));
    assert_eq!(
        b.open(t(10), Channel::Multicast, A, &d2),
        Opened::Verified {
            len: claim(1, 4).len()
        }
    );
    assert_eq!(
        b.open(t(11), Channel::Multicast, A, &d2),
        Opened::Drop(AuthDrop::Replay)
    );
    assert_eq!(
        b.open(t(11), Channel::Multicast, A, &d),
        Opened::Drop(AuthDrop::Replay)
    );
    assert_eq!(b.verified_peers(t(0)), 1);
}

#[test]
fn tampering_a_wrong_key_and_unsigned_datagrams_are_refused() {
    let (mut a, mut b) = (auth(1, &[key(1, 7)], 1), auth(2, &[key(1, 7)], 2));
    let mut d = sealed(&mut a, Channel::Multicast, claim(1, 3));
    d[8] ^= 1;
    assert_eq!(
        b.open(t(0), Channel::Multicast, A, &d),
        Opened::Drop(AuthDrop::BadMac)
    );
    // The socket is signed too.
    let d = sealed(&mut a, Channel::Multicast, claim(1, 3));
    assert_eq!(
        b.open(t(0), Channel::Unicast, A, &d),
        Opened::Drop(AuthDrop::BadMac)
    );
    let mut other = auth(3, &[key(2, 7)], 3);
    let d = sealed(&mut other, Channel::Multicast, claim(3, 3));
    assert_eq!(
        b.open(t(0), Channel::Multicast, A, &d),
        Opened::Drop(AuthDrop::BadMac)
    );
    let mut other = auth(3, &[key(2, 8)], 3);
    let d = sealed(&mut other, Channel::Multicast, claim(3, 3));
    assert_eq!(
        b.open(t(0), Channel::Multicast, A, &d),
        Opened::Drop(AuthDrop::UnknownKey(8))
    );
    assert_eq!(
        b.open(t(0), Channel::Multicast, A, &claim(9, 3)),
        Opened::Drop(AuthDrop::Unsigned)
    );
    // A node without a key tells a sealed datagram from a malformed one.
    let mut none = auth(4, &[], 4);
    assert_eq!(
        none.open(t(0), Channel::Multicast, A, &d),
        Opened::Drop(AuthDrop::SignedNoKey)
    );
    assert_eq!(
        none.open(t(0), Channel::Multicast, A, &claim(9, 3)),
        Opened::Plain
    );
    assert_eq!(b.challenges_sent, 0, "nothing unverified is challenged");
}

#[test]
fn our_own_datagram_sent_back_is_a_replay() {
    let mut a = auth(1, &[key(1, 7)], 1);
    let d = sealed(&mut a, Channel::Multicast, claim(1, 3));
    assert_eq!(
        a.open(t(0), Channel::Multicast, B, &d),
        Opened::Drop(AuthDrop::Replay)
    );
}

#[test]
fn a_restarted_peer_is_challenged_and_its_old_datagrams_stay_dead() {
    let k = key(1, 7);
    let (mut a, mut b) = (auth(1, &[k.clone()], 1), auth(2, &[k.clone()], 2));
    let old = sealed(&mut a, Channel::Multicast, claim(1, 3));
    b.open(t(0), Channel::Multicast, A, &old);
    settle(&mut b, B, &mut a, A, t(1));
    // A restarts: new index, counter from 1 again.
    let mut a = auth(1, &[k], 99);
    let new = sealed(&mut a, Channel::Multicast, claim(1, 5));
    assert_eq!(
        b.open(t(100), Channel::Multicast, A, &new),
        Opened::Consumed
    );
    // An attacker replays the old start's datagram meanwhile: still a replay.
    assert_eq!(
        b.open(t(101), Channel::Multicast, A, &old),
        Opened::Drop(AuthDrop::Replay)
    );
    let (released, _) = settle(&mut b, B, &mut a, A, t(102));
    assert_eq!(released, vec![claim(1, 5)]);
    // Now its index is unknown again: held and challenged, but the answer names A's new
    // index, so it is never released.
    assert_eq!(
        b.open(t(500), Channel::Multicast, A, &old),
        Opened::Consumed
    );
    let (released, _) = settle(&mut b, B, &mut a, A, t(501));
    assert!(released.is_empty());
    let next = sealed(&mut a, Channel::Multicast, claim(1, 6));
    assert!(matches!(
        b.open(t(502), Channel::Multicast, A, &next),
        Opened::Verified { .. }
    ));
}

#[test]
fn a_recorded_datagram_of_the_current_start_is_not_released_to_a_new_listener() {
    let k = key(1, 7);
    let mut a = auth(1, &[k.clone()], 1);
    let recorded = sealed(&mut a, Channel::Multicast, claim(1, 3));
    for _ in 0..HOLD_WINDOW + 5 {
        sealed(&mut a, Channel::Unicast, claim(1, 4));
    }
    let mut c = auth(3, &[k], 3);
    assert_eq!(
        c.open(t(0), Channel::Multicast, A, &recorded),
        Opened::Consumed
    );
    let (released, _) = settle(&mut c, B, &mut a, A, t(1));
    assert!(released.is_empty());
    assert_eq!(c.verified_peers(t(0)), 1, "the challenge itself succeeded");
}

#[test]
fn challenges_are_rate_limited_and_stale_replies_refused() {
    let k = key(1, 7);
    let (mut a, mut b) = (auth(1, &[k.clone()], 1), auth(2, &[k], 2));
    for ms in [0, 100, 200] {
        let d = sealed(&mut a, Channel::Multicast, claim(1, 3));
        assert_eq!(b.open(t(ms), Channel::Multicast, A, &d), Opened::Consumed);
    }
    assert_eq!(b.challenges_sent, 1);
    let d = sealed(&mut a, Channel::Multicast, claim(1, 3));
    b.open(t(350), Channel::Multicast, A, &d);
    assert_eq!(
        b.challenges_sent, 2,
        "asked again after the interval, same nonce"
    );
    let req = b.poll_transmit().unwrap();
    let _ = b.poll_transmit().unwrap();
    // Answered too late: refused, nothing released.
    a.open(t(400), Channel::Unicast, B, &req.payload);
    let reply = a.poll_transmit().unwrap();
    assert_eq!(
        b.open(
            t(400) + CHALLENGE_TIMEOUT,
            Channel::Unicast,
            A,
            &reply.payload
        ),
        Opened::Drop(AuthDrop::Stale)
    );
    assert!(b.take_released().is_empty());
    // A reply replayed after a good one is stale too.
    assert_eq!(
        b.open(t(500), Channel::Unicast, A, &reply.payload),
        Opened::Consumed
    );
    assert_eq!(b.take_released().len(), 4);
    assert_eq!(
        b.open(t(600), Channel::Unicast, A, &reply.payload),
        Opened::Drop(AuthDrop::Stale)
    );
}

#[test]
fn migration_mode_accepts_unsigned_only_from_nodes_never_seen_signing() {
    let k = key(1, 7);
    let mut a = auth(1, &[k.clone()], 1);
    let mut b = Auth::new(&[k], true, node(2), swarm(), 2).unwrap();
    assert_eq!(
        b.open(t(0), Channel::Multicast, A, &claim(1, 3)),
        Opened::Plain
    );
    assert_eq!(
        b.open(t(0), Channel::Multicast, A, &claim(9, 3)),
        Opened::Plain
    );
    let d = sealed(&mut a, Channel::Multicast, claim(1, 3));
    b.open(t(1), Channel::Multicast, A, &d);
    assert_eq!(
        b.plain_senders(t(0))
            .iter()
            .map(|s| s.0)
            .collect::<Vec<_>>(),
        vec![node(1), node(9)]
    );
    settle(&mut b, B, &mut a, A, t(2));
    // Node 1 signs now: its plain copies (from where its sealed datagrams come) are
    // expected; plain ones in its name from elsewhere, or in ours, are forgeries.
    assert_eq!(
        b.open(t(3), Channel::Multicast, A, &claim(1, 3)),
        Opened::Drop(AuthDrop::PlainCopy)
    );
    let elsewhere = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x99);
    assert_eq!(
        b.open(t(3), Channel::Multicast, elsewhere, &claim(1, 3)),
        Opened::Drop(AuthDrop::UnsignedFromSigner)
    );
    assert_eq!(
        b.open(t(3), Channel::Multicast, A, &claim(2, 3)),
        Opened::Drop(AuthDrop::UnsignedFromSigner)
    );
    assert_eq!(
        b.open(t(3), Channel::Multicast, A, &claim(9, 3)),
        Opened::Plain
    );
    // Only the node never seen signing is left as a plain sender.
    assert_eq!(
        b.plain_senders(t(0))
            .iter()
            .map(|s| s.0)
            .collect::<Vec<_>>(),
        vec![node(9)]
    );
    assert!(b.plain_senders(t(4)).is_empty());
    // Sending: multicast plain and sealed; unicast sealed to a signer, plain to others.
    let (plain, sealed) = b.seal_for(Dest::Multicast, claim(2, 1));
    assert_eq!(plain.unwrap(), claim(2, 1));
    assert!(Auth::looks_sealed(&sealed.unwrap()));
    let (plain, sealed) = b.seal_for(Dest::Unicast(A), claim(2, 1));
    assert!(plain.is_none() && Auth::looks_sealed(&sealed.unwrap()));
    let c_node = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0xc);
    let (plain, sealed) = b.seal_for(Dest::Unicast(c_node), claim(2, 1));
    assert_eq!(plain.unwrap(), claim(2, 1));
    assert!(sealed.is_none());
    // Strict: sealed only.
    b.set_migrate(false);
    let (plain, sealed) = b.seal_for(Dest::Multicast, claim(2, 1));
    assert!(plain.is_none() && sealed.is_some());
}

#[test]
fn rotation_install_use_remove_never_loses_a_datagram() {
    let (k1, k2) = (key(1, 1), key(2, 2));
    let mut nodes: Vec<Auth> = (1..=3)
        .map(|n| auth(n, &[k1.clone()], u64::from(n)))
        .collect();
    let addr = |i: usize| Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, i as u16 + 1);
    let mut now = 0;
    // Every node sends one claim to every other, each phase; all must be accepted.
    let round = |nodes: &mut Vec<Auth>, now: &mut u64| {
        for s in 0..3 {
            for r in 0..3 {
                if s == r {
                    continue;
                }
                *now += 1;
                let d = {
                    let id = s as u8 + 1;
                    sealed(&mut nodes[s], Channel::Multicast, claim(id, 3))
                };
                let (lo, hi) = (s.min(r), s.max(r));
                let (left, right) = nodes.split_at_mut(hi);
                let (sn, rn) = if s < r {
                    (&mut left[lo], &mut right[0])
                } else {
                    (&mut right[0], &mut left[lo])
                };
                match rn.open(t(*now), Channel::Multicast, addr(s), &d) {
                    Opened::Verified { .. } => {}
                    Opened::Consumed => {
                        let (released, _) = settle(rn, addr(r), sn, addr(s), t(*now));
                        assert_eq!(released.len(), 1);
                    }
                    other => panic!("{s} -> {r}: {other:?}"),
                }
            }
        }
    };
    round(&mut nodes, &mut now);
    for n in nodes.iter_mut() {
        n.install(&k2).unwrap();
        round_check(n, &[1, 2], 1);
    }
    round(&mut nodes, &mut now);
    for i in 0..3 {
        nodes[i].use_key(2).unwrap();
        // Mixed: some sign with 1, some with 2; everyone verifies both.
        round(&mut nodes, &mut now);
    }
    for n in nodes.iter_mut() {
        assert!(n.remove(2).is_err(), "the signing key stays");
        n.remove(1).unwrap();
        round_check(n, &[2], 2);
    }
    round(&mut nodes, &mut now);
    let rows = nodes[0].key_rows(t(0));
    assert_eq!(
        rows,
        vec![KeyRow {
            id: 2,
            signing: true,
            peers: 2
        }]
    );
}

fn round_check(a: &Auth, ids: &[u16], signing: u16) {
    let ring = a.keyring().unwrap();
    assert_eq!(ring.ids().collect::<Vec<_>>(), ids);
    assert_eq!(ring.signing_id(), signing);
}

#[test]
fn key_files() {
    let hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    let k = MeshKey::parse(&format!("{hex} 42\n")).unwrap();
    assert_eq!(k.id, 42);
    let d = MeshKey::parse(&format!("  {hex}\n")).unwrap();
    assert_eq!(d.id, MeshKey::derived_id(&d.secret));
    assert_eq!(d.secret, k.secret);
    assert!(!format!("{k:?}").contains("0011"));
    assert!(MeshKey::parse("").unwrap_err().contains("empty"));
    assert!(
        MeshKey::parse("abcd")
            .unwrap_err()
            .contains("64 hexadecimal")
    );
    assert!(
        MeshKey::parse(&format!("{hex} 70000"))
            .unwrap_err()
            .contains("0-65535")
    );
    assert!(MeshKey::parse(&format!("{hex} 1 2")).is_err());
    let mut ring = Keyring::new(&[k.clone()]).unwrap();
    ring.install(&k).unwrap();
    assert!(
        ring.install(&MeshKey::new(42, [9; 32]))
            .unwrap_err()
            .contains("another key")
    );
    assert!(ring.use_key(5).unwrap_err().contains("no key with id 5"));
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// A plain datagram of any kind is never taken for a sealed one, and opening any
        /// bytes never panics.
        #[test]
        fn plain_is_never_sealed(entries in proptest::collection::vec((any::<u32>(), any::<u16>()), 0..169),
                                 noise in proptest::collection::vec(any::<u8>(), 0..1300)) {
            let d = Packet {
                node_id: node(1),
                swarm: swarm(),
                message: Message::UpdateClaim(entries.iter().map(|&(block, timeout)| ClaimEntry { block, timeout }).collect()),
            }.encode().unwrap();
            prop_assert!(!Auth::looks_sealed(&d));
            let mut b = auth(2, &[key(1, 7)], 2);
            let _ = b.open(t(0), Channel::Multicast, A, &noise);
            let _ = b.open(t(0), Channel::Unicast, A, &noise);
        }
    }
}

/// A node with mesh key `k` and node key seed `seed`; its id is the key's.
fn keyed(seed: u8, k: &MeshKey, rng: u64) -> Auth {
    let nk = NodeKey::from_seed([seed; 32]);
    let mut a = Auth::new(std::slice::from_ref(k), false, nk.id(), swarm(), rng).unwrap();
    a.set_node_key(nk, &[]);
    a
}

fn claim_by(id: NodeId, block: u32) -> Vec<u8> {
    Packet {
        node_id: id,
        swarm: swarm(),
        message: Message::UpdateClaim(vec![ClaimEntry { block, timeout: 60 }]),
    }
    .encode()
    .unwrap()
}

/// Makes `b` know `a`'s index (one datagram, challenged and released).
fn introduce(a: &mut Auth, b: &mut Auth, now: Instant) {
    let id = a.node_key().unwrap().id();
    let d = sealed(a, Channel::Multicast, claim_by(id, 0));
    assert_eq!(b.open(now, Channel::Multicast, A, &d), Opened::Consumed);
    let (released, _) = settle(b, B, a, A, now);
    assert_eq!(released.len(), 1);
}

#[test]
fn node_signatures_verify_and_pin_the_key() {
    let k = key(1, 7);
    let (mut a, mut b) = (keyed(1, &k, 1), keyed(2, &k, 2));
    let ida = a.node_key().unwrap().id();
    assert_eq!(ida, identity::node_id_of(a.node_key().unwrap().public()));
    introduce(&mut a, &mut b, t(0));
    assert_eq!(
        b.take_new_pins(),
        vec![(ida, *a.node_key().unwrap().public())]
    );
    let d = sealed(&mut a, Channel::Multicast, claim_by(ida, 4));
    assert_eq!(
        d.len(),
        claim_by(ida, 4).len() + identity::SIG_EXT_LEN + TRAILER_LEN
    );
    assert!(Auth::looks_sealed(&d));
    assert_eq!(
        b.open(t(10), Channel::Multicast, A, &d),
        Opened::Verified {
            len: claim_by(ida, 4).len()
        }
    );
    assert!(b.take_new_pins().is_empty());
    // The claim, the challenge reply, the claim.
    assert_eq!(b.signatures_verified, 3);
}

#[test]
fn a_member_cannot_speak_in_another_nodes_name() {
    let k = key(1, 7);
    let (mut a, mut b, mut m) = (keyed(1, &k, 1), keyed(2, &k, 2), keyed(3, &k, 3));
    let ida = a.node_key().unwrap().id();
    introduce(&mut a, &mut b, t(0));
    // The member signs a claim carrying A's id with its own key: the id is not its key's.
    let d = sealed(&mut m, Channel::Multicast, claim_by(ida, 9));
    assert_eq!(
        b.open(t(1), Channel::Multicast, A, &d),
        Opened::Drop(AuthDrop::IdMismatch)
    );
    // It copies A's public key into the extension but cannot sign for it; the MAC is
    // right (it has the mesh key), the signature is not.
    let mut d = sealed(&mut a, Channel::Multicast, claim_by(ida, 9));
    let n = d.len();
    let entry = HEADER_LEN; // the block number of the one entry
    d[entry + 3] ^= 1;
    // Re-seal as the member would: recompute the MAC over the changed datagram.
    let body = n - TRAILER_LEN;
    let ring = m.keyring().unwrap();
    let mut mac = ring.find(7).unwrap().mac.clone();
    Auth::mac_input(&mut mac, Channel::Multicast, &d[..n - TAG_LEN]);
    let tag = mac.finalize().into_bytes();
    d[n - TAG_LEN..].copy_from_slice(&tag[..TAG_LEN]);
    assert!(identity::has_extension(&d[..body]));
    assert_eq!(
        b.open(t(2), Channel::Multicast, A, &d),
        Opened::Drop(AuthDrop::BadSignature)
    );
    // The refused datagram's counter was not taken: A's next datagram is still new.
    let d = sealed(&mut a, Channel::Multicast, claim_by(ida, 10));
    assert!(matches!(
        b.open(t(3), Channel::Multicast, A, &d),
        Opened::Verified { .. }
    ));
    // A node with the mesh key but no node key is refused by one that requires them.
    let mut plain = auth(5, &[k.clone()], 5);
    let d = sealed(&mut plain, Channel::Multicast, claim(5, 1));
    assert_eq!(
        b.open(t(4), Channel::Multicast, A, &d),
        Opened::Drop(AuthDrop::NoSignature)
    );
    assert!(AuthDrop::NoSignature.is_mismatch());
    assert!(!AuthDrop::BadSignature.is_mismatch());
    // ... while a node without a node key of its own checks signatures it is given.
    let mut c = auth(6, &[k], 6);
    let d = sealed(&mut m, Channel::Multicast, claim_by(ida, 11));
    assert_eq!(
        c.open(t(5), Channel::Multicast, A, &d),
        Opened::Drop(AuthDrop::IdMismatch)
    );
}

#[test]
fn a_pinned_key_is_required_for_its_id() {
    let k = key(1, 7);
    let (mut a, mut b) = (keyed(1, &k, 1), keyed(2, &k, 2));
    let ida = a.node_key().unwrap().id();
    // Pinned from an earlier run to another key (as after a 64-bit collision).
    b.set_node_key(NodeKey::from_seed([2; 32]), &[(ida, [9; 32])]);
    let d = sealed(&mut a, Channel::Multicast, claim_by(ida, 1));
    assert_eq!(
        b.open(t(0), Channel::Multicast, A, &d),
        Opened::Drop(AuthDrop::PinMismatch)
    );
}

#[test]
fn signature_checks_are_rate_limited() {
    let k = key(1, 7);
    let (mut a, mut b) = (keyed(1, &k, 1), keyed(2, &k, 2));
    let ida = a.node_key().unwrap().id();
    introduce(&mut a, &mut b, t(0));
    let mut limited = 0;
    for i in 0..(SIG_BURST + 50) {
        let d = sealed(&mut a, Channel::Multicast, claim_by(ida, i));
        match b.open(t(1), Channel::Multicast, A, &d) {
            Opened::Drop(AuthDrop::RateLimited) => limited += 1,
            Opened::Verified { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(limited >= 40, "{limited}");
    // The budget refills.
    let d = sealed(&mut a, Channel::Multicast, claim_by(ida, 1));
    assert!(matches!(
        b.open(t(2000), Channel::Multicast, A, &d),
        Opened::Verified { .. }
    ));
}

#[test]
fn node_key_files_round_trip_and_are_created_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("ddhcp-nodekey-{}", std::process::id()));
    let path = dir.join("node.key");
    let _ = std::fs::remove_dir_all(&dir);
    let (k1, created) = NodeKey::load_or_create(&path, [4; 32]).unwrap();
    assert!(created);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let (k2, created) = NodeKey::load_or_create(&path, [5; 32]).unwrap();
    assert!(!created);
    assert_eq!(k1.id(), k2.id());
    std::fs::write(&path, "xyz").unwrap();
    assert!(
        NodeKey::load_or_create(&path, [5; 32])
            .unwrap_err()
            .contains("64 hexadecimal")
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

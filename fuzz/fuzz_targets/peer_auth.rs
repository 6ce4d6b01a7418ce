//! The authenticated framing (`src/auth.rs`): two nodes with one mesh key and a third
//! with another, fed a script of genuine, damaged and arbitrary datagrams.
//!
//! Each chunk is `op` then data:
//! - op & 3 == 0: arbitrary bytes (`len` byte, then the bytes) opened by node 1;
//! - 1: node 0 seals an UpdateClaim (entries from the next byte) and node 1 opens it with one
//!   byte flipped at `pos` (next byte; mask 0 leaves it intact);
//! - 2: every queued challenge message is delivered both ways (with op bit 2: to the third
//!   node instead, which must refuse them);
//! - 3: time advances by `op >> 2` × 100 ms.
//!
//! The first byte: bit 0 puts node 1 in the migration mode, bit 1 gives nodes 0 and 1 node
//! keys (`--node-key`: signed datagrams, required).
//!
//! Checked: nothing panics; a damaged datagram is never verified, and only datagrams node 0
//! really sealed are ever released after a challenge; a verified one is the C layout plus
//! exactly the trailer; nothing passes the node with the other key; the key file parser
//! takes any text.
#![no_main]

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use ddhcp::auth::identity::SIG_EXT_LEN;
use ddhcp::auth::{Auth, MeshKey, NodeKey, Opened, TRAILER_LEN};
use ddhcp::node::{Channel, Dest};
use ddhcp::time::Instant;
use ddhcp::wire::{ClaimEntry, Message, NodeId, Packet, Swarm};
use libfuzzer_sys::fuzz_target;

const A: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
const B: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2);

fn swarm() -> Swarm {
    Swarm {
        prefix: Ipv4Addr::new(10, 0, 0, 0),
        prefix_len: 24,
        block_size: 4,
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = MeshKey::parse(text);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = NodeKey::parse(text);
    }
    let key = MeshKey::new(1, [7; 32]);
    let signed = data.first().is_some_and(|b| b & 2 == 2);
    let k0 = NodeKey::from_seed([1; 32]);
    let id0 = if signed { k0.id() } else { NodeId([1; 8]) };
    let ext = if signed { SIG_EXT_LEN } else { 0 };
    let mut nodes = [
        Auth::new(&[key.clone()], false, id0, swarm(), 1).unwrap(),
        Auth::new(
            &[key],
            data.first().is_some_and(|b| b & 1 == 1),
            NodeId([2; 8]),
            swarm(),
            2,
        )
        .unwrap(),
        Auth::new(
            &[MeshKey::new(1, [8; 32])],
            false,
            NodeId([3; 8]),
            swarm(),
            3,
        )
        .unwrap(),
    ];
    if signed {
        nodes[0].set_node_key(k0, &[]);
        nodes[1].set_node_key(NodeKey::from_seed([2; 32]), &[]);
    }
    let mut now = Instant::ZERO;
    let mut genuine: Vec<Vec<u8>> = Vec::new();
    let mut it = data.iter().copied().skip(1);
    while let Some(op) = it.next() {
        match op & 3 {
            0 => {
                let len = usize::from(it.next().unwrap_or(0));
                let d: Vec<u8> = it.by_ref().take(len).collect();
                let ch = if op & 4 == 0 {
                    Channel::Multicast
                } else {
                    Channel::Unicast
                };
                if let Opened::Verified { len } = nodes[1].open(now, ch, A, &d) {
                    assert_eq!(len + TRAILER_LEN + ext, d.len());
                }
            }
            1 => {
                let n = it.next().unwrap_or(0) % 8;
                let mut d = Packet {
                    node_id: id0,
                    swarm: swarm(),
                    message: Message::UpdateClaim(
                        (0..u32::from(n))
                            .map(|b| ClaimEntry {
                                block: b,
                                timeout: 60,
                            })
                            .collect(),
                    ),
                }
                .encode()
                .unwrap();
                nodes[0].seal(Channel::Multicast, &mut d);
                let pos = usize::from(it.next().unwrap_or(0)) % d.len();
                let mask = it.next().unwrap_or(0);
                d[pos] ^= mask;
                let r = nodes[1].open(now, Channel::Multicast, A, &d);
                if mask != 0 {
                    assert!(
                        !matches!(r, Opened::Verified { .. }),
                        "damaged datagram verified"
                    );
                }
                if mask == 0 {
                    genuine.push(d[..d.len() - TRAILER_LEN - ext].to_vec());
                }
            }
            2 => {
                let other = if op & 4 == 0 { 1 } else { 2 };
                for _ in 0..4 {
                    let mut moved = false;
                    while let Some(t) = nodes[0].poll_transmit() {
                        moved = true;
                        let _ = nodes[other].open(now, Channel::Unicast, A, &t.payload);
                    }
                    while let Some(t) = nodes[other].poll_transmit() {
                        moved = true;
                        assert_eq!(t.dest, Dest::Unicast(A));
                        let r = nodes[0].open(now, Channel::Unicast, B, &t.payload);
                        if other == 2 {
                            assert!(!matches!(r, Opened::Verified { .. }));
                        }
                    }
                    if !moved {
                        break;
                    }
                }
                for (_, _, inner) in nodes[1].take_released() {
                    assert!(
                        genuine.contains(&inner),
                        "released a datagram node 0 never sealed"
                    );
                }
                assert!(
                    nodes[2].take_released().is_empty(),
                    "the wrong key released"
                );
                nodes[0].take_released();
            }
            _ => now = now + Duration::from_millis(u64::from(op >> 2) * 100),
        }
    }
});

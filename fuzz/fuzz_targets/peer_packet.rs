//! Peer datagrams: the wire codec and the node's block state machine.
//!
//! 1. The whole input is one datagram for `Packet::decode`; whatever decodes must encode and
//!    decode back to the same value.
//! 2. The input is also a script for one live `Node` with two pools: pool 0 (10.0.0.0/24,
//!    blocks of 4 = 64 blocks, the one the flags shape) and pool 1 (10.64.0.0/24, blocks of
//!    4, no service, claiming 2 spare addresses' worth):
//!
//!    ```text
//!    byte 0   flags: bit0 patch each datagram's swarm bytes 8..14 to ours (0a 00 00 00 18 04)
//!                    bit1 start with the learning phase on
//!                    bit2 fold UpdateClaim/Inquire block numbers into 0..72 (64 valid + 8 not)
//!                    bit3 node id 80.. instead of 01 02 .. 08 (changes who wins tie-breaks)
//!                    bit4 the node runs a DHCP service (renewals are answered, leases kept)
//!                    bit5 ... with interface address 10.0.0.1 (server id)
//!                    bit6 ... with options 3, 6 and a 60 s lease time (51)
//!                    bit7 10.0.0.0/12 in blocks of 128 instead (8192 blocks), where an
//!                         address such as 10.0.3.10 reads as 10.3.0.10 reversed, also in
//!                         range: the renew byte-order probes and ambiguous renewals
//!    byte 1   rng seed of the node
//!    then chunks:
//!      ctl    bit0 unicast socket (else multicast)
//!             bit1 length implied by the header (peer: command/count; DHCP: 240 + len)
//!             bits2..7 = v: time advances by v*v*80 ms (0 .. 317 s) before the datagram;
//!             every timer due in between fires at its own instant, as in the daemon
//!      src    low 2 bits: sender fe80::1 .. fe80::4; bit7: a DHCP client datagram for
//!             `handle_dhcp` instead of a peer datagram (bit0 patch: op 1 and magic cookie);
//!             bit6: with flag bit0, patch pool 1's swarm bytes instead of pool 0's
//!      [len]  peer datagrams: only without bit1; DHCP datagrams: always
//!      data   the datagram
//!    ```
//!
//! After every step the node's outputs are checked: every transmit decodes, carries the swarm
//! of one of our pools and our id and names only blocks of that pool's range; every DHCP reply is a BOOTREPLY of at least
//! 300 bytes whose yiaddr is 0 or inside the range; the block table agrees with `status`; and
//! `poll_timeout` is in the future after `handle_timeout` (else the daemon would spin).
#![no_main]

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use ddhcp::blocks::BlockStateName;
use ddhcp::config::DhcpOption;
use ddhcp::dhcp::DhcpConfig;
use ddhcp::node::{Channel, Dest, Node, NodeConfig, Output, PoolConfig, ServiceConfig};
use ddhcp::range::ManagedRange;
use ddhcp::testing::{claim, lease_time};
use ddhcp::time::Instant;
use ddhcp::wire::{self, Message, NodeId, Packet};
use libfuzzer_sys::fuzz_target;

const SWARM: [u8; 6] = [0x0a, 0x00, 0x00, 0x00, 0x18, 0x04];
const SWARM_12: [u8; 6] = [0x0a, 0x00, 0x00, 0x00, 0x0c, 0x80];
/// Pool 1: 10.64.0.0/24 in blocks of 4.
const SWARM_OTHER: [u8; 6] = [0x0a, 0x40, 0x00, 0x00, 0x18, 0x04];
const COOKIE: [u8; 4] = [99, 130, 83, 99];

/// `DDHCP_FUZZ_TRACE=1` prints every step, transmit and event (for triage of an artifact).
fn trace() -> bool {
    static T: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *T.get_or_init(|| std::env::var_os("DDHCP_FUZZ_TRACE").is_some())
}

fn round_trip(data: &[u8]) {
    if let Ok(p) = Packet::decode(data) {
        let bytes = p.encode().expect("a decoded packet must encode");
        assert_eq!(bytes.len(), data.len(), "re-encoded length differs: {p:?}");
        let again = Packet::decode(&bytes).expect("an encoded packet must decode");
        assert_eq!(again, p, "decode(encode(p)) != p");
    }
}

/// Checks everything the node produced and drains it.
fn drain(node: &mut Node, range: &ManagedRange) {
    while let Some(o) = node.poll_output() {
        match o {
            Output::Peer(t) => check_transmit(node, &t),
            Output::Dhcp { pool, transmit: t } => {
                assert_eq!(pool, 0, "DHCP reply from a pool without a service");
                let p = &t.payload;
                if trace() {
                    eprintln!(
                        "  -> dhcp {} type {:?} yiaddr {:?}",
                        t.to,
                        p.get(242),
                        p.get(16..20)
                    );
                }
                assert!(
                    p.len() >= 300 && p[0] == 2,
                    "DHCP reply is not a BOOTREPLY of >= 300 bytes"
                );
                assert_eq!(p[236..240], COOKIE);
                let yiaddr = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
                assert!(
                    yiaddr.is_unspecified() || range.locate(yiaddr).is_some(),
                    "DHCP reply hands out {yiaddr}, outside the range"
                );
            }
            Output::Event(e) => {
                if trace() {
                    eprintln!("  event {e:?}");
                }
            }
            Output::Answer { .. } => panic!("an answer nobody asked for"),
            Output::Host { .. } => panic!("a host action without a local pool"),
        }
    }
}

fn check_transmit(node: &Node, t: &ddhcp::node::Transmit) {
    let p = Packet::decode(&t.payload).unwrap_or_else(|e| {
        panic!(
            "node sent an undecodable datagram ({e}): {:02x?}",
            t.payload
        )
    });
    if trace() {
        eprintln!("  -> {:?} {:?}", t.dest, p.message);
    }
    let pool = node
        .pools()
        .iter()
        .find(|q| q.swarm() == p.swarm)
        .unwrap_or_else(|| panic!("node sent with a foreign swarm {:?}", p.swarm));
    assert_eq!(
        p.node_id,
        node.id(),
        "node sent with an id that is not its own"
    );
    let n = pool.range().num_blocks();
    match &p.message {
        Message::UpdateClaim(e) => {
            assert_eq!(t.dest, Dest::Multicast);
            assert!(!e.is_empty(), "empty UpdateClaim sent");
            assert!(e.len() <= wire::MAX_CLAIM_ENTRIES);
            assert!(
                e.iter().all(|c| c.block < n),
                "claim of a block outside the range: {e:?}"
            );
        }
        Message::Inquire(b) => {
            assert_eq!(t.dest, Dest::Multicast);
            assert!(!b.is_empty(), "empty Inquire sent");
            assert!(
                b.iter().all(|&b| b < n),
                "inquiry of a block outside the range: {b:?}"
            );
        }
        _ => {}
    }
}

fn inspect(node: &Node, now: Instant, range: &ManagedRange) {
    let view = node.blocks_view(now);
    let status = node.status(now);
    assert_eq!(status.pools.len(), 2);
    let other = node.pool(1);
    assert_eq!(
        other.blocks_view(now, node.id()).len() + other.blocks().free_count(),
        other.range().num_blocks() as usize,
        "pool 1: free set and block table disagree"
    );
    let n = range.num_blocks();
    let mut last = None;
    for row in &view {
        assert!(row.index < n, "view row outside the range: {row:?}");
        assert!(last < Some(row.index), "view rows not in index order");
        last = Some(row.index);
        assert_eq!(row.first, range.block_first(row.index));
    }
    let ours = view
        .iter()
        .filter(|r| r.state == BlockStateName::Ours)
        .count();
    assert_eq!(
        ours, status.pools[0].blocks_owned,
        "view and status disagree on owned blocks"
    );
    assert_eq!(ours, node.blocks().owned_count());
    assert!(
        view.iter()
            .filter(|r| r.state == BlockStateName::Ours)
            .all(|r| r.owner == Some(node.id()) && node.blocks().owns(r.index))
    );
    assert_eq!(
        view.len() + node.blocks().free_count(),
        n as usize,
        "free set and block table disagree"
    );
    if let Some(d) = node.dhcp() {
        let list = d.lease_list(now);
        for (ip, ..) in &list {
            assert!(
                range.locate(*ip).is_some(),
                "lease list names {ip}, outside the range"
            );
        }
    }
}

/// Advances to `target`, firing every timer at the instant it is due.
fn advance(node: &mut Node, now: &mut Instant, target: Instant, range: &ManagedRange) {
    for _ in 0..10_000 {
        let t = node.poll_timeout();
        if t > target {
            break;
        }
        *now = (*now).max(t);
        node.handle_timeout(*now);
        drain(node, range);
        assert!(
            node.poll_timeout() > *now,
            "poll_timeout {:?} not after handle_timeout({:?}): the daemon would spin",
            node.poll_timeout(),
            now
        );
    }
    *now = (*now).max(target);
    node.handle_timeout(*now);
    drain(node, range);
}

/// Length of the body the header's command and count imply.
fn implied_body(header: &[u8]) -> usize {
    let (cmd, count) = (
        header.get(14).copied(),
        usize::from(header.get(15).copied().unwrap_or(0)),
    );
    match cmd {
        Some(wire::command::UPDATE_CLAIM) => wire::CLAIM_ENTRY_LEN * count,
        Some(wire::command::INQUIRE) => wire::INQUIRE_ENTRY_LEN * count,
        Some(wire::command::RENEW_LEASE | wire::command::LEASE_ACK | wire::command::LEASE_NAK) => {
            wire::RENEW_PAYLOAD_LEN
        }
        _ => 0,
    }
}

fn fold_blocks(buf: &mut [u8]) {
    let entry = match buf.get(14).copied() {
        Some(wire::command::UPDATE_CLAIM) => wire::CLAIM_ENTRY_LEN,
        Some(wire::command::INQUIRE) => wire::INQUIRE_ENTRY_LEN,
        _ => return,
    };
    let Some(body) = buf.get_mut(wire::HEADER_LEN..) else {
        return;
    };
    for e in body.chunks_exact_mut(entry) {
        let b = u32::from_be_bytes([e[0], e[1], e[2], e[3]]) % 72;
        e[..4].copy_from_slice(&b.to_be_bytes());
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip(data);

    let (flags, seed, mut rest) = match data {
        [f, s, rest @ ..] => (*f, *s, rest),
        _ => return,
    };
    let (range, swarm) = if flags & 0x80 != 0 {
        (
            ManagedRange::new("10.0.0.0".parse().unwrap(), 12, 7).unwrap(),
            SWARM_12,
        )
    } else {
        (
            ManagedRange::new("10.0.0.0".parse().unwrap(), 24, 2).unwrap(),
            SWARM,
        )
    };
    assert_eq!(range.swarm().block_size, swarm[5]);
    assert_eq!(range.swarm().prefix_len, swarm[4]);
    let claim = claim(4, 60, 2, flags & 2 != 0);
    let dhcp = (flags & 0x10 != 0).then(|| DhcpConfig {
        options: if flags & 0x40 != 0 {
            vec![
                DhcpOption {
                    code: 3,
                    payload: vec![10, 0, 0, 1],
                },
                DhcpOption {
                    code: 6,
                    payload: vec![10, 0, 0, 2, 10, 0, 0, 3],
                },
                lease_time(60),
            ]
        } else {
            Vec::new()
        },
        interface_addr: (flags & 0x20 != 0).then_some(Ipv4Addr::new(10, 0, 0, 1)),
    });
    let mut cfg = NodeConfig::single(range, claim.clone(), dhcp);
    cfg.pools.push(PoolConfig {
        name: "other".into(),
        range: ManagedRange::new("10.64.0.0".parse().unwrap(), 24, 2).unwrap(),
        claim,
        service: ServiceConfig::Passive,
        location: None,
    });
    let id = if flags & 8 != 0 {
        NodeId([0x80, 0, 0, 0, 0, 0, 0x12, 0x34])
    } else {
        NodeId([1, 2, 3, 4, 5, 6, 7, 8])
    };
    let mut now = Instant::ZERO;
    let mut node = Node::new(cfg, id, now, u64::from(seed));
    drain(&mut node, &range);
    inspect(&node, now, &range);

    let mut buf = Vec::with_capacity(wire::MAX_DATAGRAM + 64);
    let mut steps = 0;
    while let [ctl, src, tail @ ..] = rest {
        steps += 1;
        if steps > 256 {
            break;
        }
        let (ctl, src) = (*ctl, *src);
        let dhcp = src & 0x80 != 0;
        let mut body = tail;
        let len = if dhcp {
            match body.split_first() {
                Some((l, t)) => {
                    body = t;
                    usize::from(*l) + if ctl & 2 != 0 { 240 } else { 0 }
                }
                None => break,
            }
        } else if ctl & 2 != 0 {
            wire::HEADER_LEN + implied_body(&body[..body.len().min(wire::HEADER_LEN)])
        } else {
            match body.split_first() {
                Some((l, t)) => {
                    body = t;
                    usize::from(*l)
                }
                None => break,
            }
        };
        let take = len.min(body.len());
        buf.clear();
        buf.extend_from_slice(&body[..take]);
        rest = &body[take..];

        if dhcp {
            if flags & 1 != 0 && buf.len() >= 240 {
                buf[0] = 1;
                buf[236..240].copy_from_slice(&COOKIE);
            }
        } else {
            if flags & 1 != 0 && buf.len() >= 14 {
                buf[8..14].copy_from_slice(if src & 0x40 != 0 {
                    &SWARM_OTHER
                } else {
                    &swarm
                });
            }
            if flags & 4 != 0 {
                fold_blocks(&mut buf);
            }
            round_trip(&buf);
        }

        let v = u64::from(ctl >> 2);
        let target = now + Duration::from_millis(v * v * 80);
        advance(&mut node, &mut now, target, &range);

        if trace() {
            eprintln!(
                "{now:?} {} {} bytes: {:02x?}",
                if dhcp { "dhcp" } else { "peer" },
                buf.len(),
                &buf[..buf.len().min(24)]
            );
        }
        if dhcp {
            node.handle_dhcp(now, 0, &buf);
        } else {
            let channel = if ctl & 1 != 0 {
                Channel::Unicast
            } else {
                Channel::Multicast
            };
            let from = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1 + u16::from(src & 3));
            node.handle_datagram(now, channel, from, &buf);
        }
        drain(&mut node, &range);
        inspect(&node, now, &range);
    }
    // Let the state settle: every claim made above expires or is refreshed.
    let end = now + Duration::from_secs(400);
    advance(&mut node, &mut now, end, &range);
    inspect(&node, now, &range);
});

//! Micro-benchmarks of the sans-IO core: the cost of one DHCP 4-way exchange (DISCOVER →
//! OFFER, REQUEST → ACK) inside `Node`, and of decoding and handling a peer claim. They
//! bound what the daemon can do per core, apart from the socket path.
//!
//! `cargo bench --bench core`

use std::net::{Ipv4Addr, Ipv6Addr};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ddhcp::node::{Channel, Node};
use ddhcp::range::ManagedRange;
use ddhcp::testing::{claim, client_message_from, dhcp_node};
use ddhcp::time::Instant;
use ddhcp::wire::{ClaimEntry, Message, NodeId, Packet};

/// A client message from client number `mac`: hardware address `02:00:` and `mac`'s four
/// bytes, `mac` also as the xid.
fn message(msg_type: u8, mac: u32, opts: &[(u8, &[u8])]) -> Vec<u8> {
    let [a, b, c, d] = mac.to_be_bytes();
    client_message_from(
        msg_type,
        [2, 0, a, b, c, d],
        mac,
        Ipv4Addr::UNSPECIFIED,
        opts,
    )
}

/// A node on a /10 owning many blocks of 2^`pow` addresses (`-b 7` as the perfdhcp
/// benchmark configures it; `-b 2` gives a table of a million blocks).
fn busy_node(pow: u8) -> Node {
    let range = ManagedRange::new(Ipv4Addr::new(10, 64, 0, 0), 10, pow).unwrap();
    let cfg = dhcp_node(range, claim(2, 30, 1_000_000, false), vec![]);
    let mut n = Node::new(cfg, NodeId([5; 8]), Instant::ZERO, 1);
    // Enough rounds to own ~1500 blocks of 128 (192k addresses).
    for s in 0..=20 {
        n.handle_timeout(Instant::from_millis(s * 1000));
    }
    while n.poll_output().is_some() {}
    n
}

/// The first DHCP datagram among the node's outputs (the rest are dropped).
fn dhcp_reply(node: &mut Node) -> Option<ddhcp::dhcp::DhcpTransmit> {
    let mut reply = None;
    while let Some(o) = node.poll_output() {
        if let ddhcp::node::Output::Dhcp { transmit, .. } = o {
            reply.get_or_insert(transmit);
        }
    }
    reply
}

fn dhcp_exchange(c: &mut Criterion) {
    let mut g = c.benchmark_group("dhcp");
    g.throughput(Throughput::Elements(1));
    for (pow, clients) in [(7u8, 150_000u32), (2, 20_000)] {
        exchanges(&mut g, pow, clients);
    }
    g.finish();
}

/// DISCOVER → OFFER, REQUEST → ACK, and encoding the lease record the store will write.
fn exchanges(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    pow: u8,
    clients: u32,
) {
    let mut node = busy_node(pow);
    let owned = node.blocks().owned_count() as u32 * node.pool(0).range().block_size();
    assert!(owned > clients, "{owned} addresses owned");
    let prl: &[u8] = &[1, 3, 6, 15, 28, 51, 54];
    let mut mac = 0u32;
    let mut now = 25_000u64;
    let mut record = Vec::new();
    // Distinct clients: the first pass allocates, later passes are returning clients.
    let name = format!(
        "4-way exchange + store record, {}k clients, /10 in {} blocks of {}",
        clients / 1000,
        node.pool(0).range().num_blocks(),
        node.pool(0).range().block_size()
    );
    g.bench_function(name, |b| {
        b.iter(|| {
            mac = mac.wrapping_add(1) % clients;
            now += 1;
            node.handle_dhcp(Instant::from_millis(now), 0, &message(1, mac, &[(55, prl)]));
            let offer = dhcp_reply(&mut node).expect("offer");
            let ip = [
                offer.payload[16],
                offer.payload[17],
                offer.payload[18],
                offer.payload[19],
            ];
            node.handle_dhcp(
                Instant::from_millis(now),
                0,
                &message(3, mac, &[(50, &ip), (54, &[10, 0, 0, 1]), (55, prl)]),
            );
            let ack = dhcp_reply(&mut node).expect("ack");
            record.clear();
            for (pool, c) in node.take_changes() {
                ddhcp::store::codec::encode(pool as u8, &c, |t| t.as_millis(), &mut record);
            }
            ack
        })
    });
}

fn peer_claim(c: &mut Criterion) {
    let mut node = busy_node(7);
    let range = *node.pool(0).range();
    let entries: Vec<ClaimEntry> = (0..155)
        .map(|i| ClaimEntry {
            block: 5000 + i,
            timeout: 30,
        })
        .collect();
    let bytes = Packet {
        node_id: NodeId([9; 8]),
        swarm: range.swarm(),
        message: Message::UpdateClaim(entries),
    }
    .encode()
    .unwrap();
    let from = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 9);
    let mut g = c.benchmark_group("peer");
    g.throughput(Throughput::Elements(155));
    let mut now = 10_000u64;
    g.bench_function("UpdateClaim with 155 entries", |b| {
        b.iter(|| {
            now += 1;
            node.handle_datagram(Instant::from_millis(now), Channel::Multicast, from, &bytes);
        })
    });
    g.finish();
}

/// What `--peer-key` adds per datagram: sealing a full claim (sender) and opening it
/// (receiver: shape check, HMAC, replay check), side by side with a small one, so the
/// ratio to `peer/UpdateClaim…` above is the verification share of a refresh; and the same
/// with `--node-key` (an Ed25519 signature made and checked per datagram).
fn peer_auth(c: &mut Criterion) {
    use ddhcp::auth::{Auth, MeshKey, NodeKey, Opened};
    let range = ManagedRange::new(Ipv4Addr::new(10, 0, 0, 0), 10, 7).unwrap();
    let key = MeshKey::new(1, [7; 32]);
    let from = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 9);
    let mut g = c.benchmark_group("auth");
    // Time moves 3 ms per datagram, under the signature budget (400/s).
    let mut ms = 0;
    for signed in [false, true] {
        let nk = NodeKey::from_seed([9; 32]);
        let id = if signed { nk.id() } else { NodeId([9; 8]) };
        let mut tx = Auth::new(std::slice::from_ref(&key), false, id, range.swarm(), 1).unwrap();
        let mut rx = Auth::new(
            std::slice::from_ref(&key),
            false,
            NodeId([1; 8]),
            range.swarm(),
            2,
        )
        .unwrap();
        if signed {
            tx.set_node_key(nk, &[]);
            rx.set_node_key(NodeKey::from_seed([1; 32]), &[]);
        }
        for n in [1u32, 155] {
            let plain = Packet {
                node_id: id,
                swarm: range.swarm(),
                message: Message::UpdateClaim(
                    (0..n)
                        .map(|i| ClaimEntry {
                            block: i,
                            timeout: 30,
                        })
                        .collect(),
                ),
            }
            .encode()
            .unwrap();
            // Make the sender's index known to the receiver (one challenge round).
            let mut first = plain.clone();
            tx.seal(Channel::Multicast, &mut first);
            rx.open(Instant::ZERO, Channel::Multicast, from, &first);
            while let Some(t) = rx.poll_transmit() {
                tx.open(Instant::ZERO, Channel::Unicast, from, &t.payload);
            }
            while let Some(t) = tx.poll_transmit() {
                rx.open(Instant::ZERO, Channel::Unicast, from, &t.payload);
            }
            let what = if signed { " with node keys" } else { "" };
            g.bench_function(
                format!("seal and verify an UpdateClaim of {n} entries{what}"),
                |b| {
                    b.iter(|| {
                        ms += 3;
                        let mut d = plain.clone();
                        tx.seal(Channel::Multicast, &mut d);
                        let r = rx.open(Instant::from_millis(ms), Channel::Multicast, from, &d);
                        assert!(matches!(r, Opened::Verified { .. }));
                    })
                },
            );
        }
    }
    g.finish();
}

criterion_group!(benches, dhcp_exchange, peer_claim, peer_auth);
criterion_main!(benches);

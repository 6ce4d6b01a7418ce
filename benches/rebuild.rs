//! Rebuild of a node that lost its disk, for 1,048,576 bindings (a /12 in blocks of 128,
//! every address leased): how long one holder takes to stream back everything it holds
//! for the node (Handback, flow-controlled, acknowledged) and the node to take it in, with
//! the datagrams encoded and decoded as on the wire but passed in memory (no link delay:
//! this is the CPU bound; on a link each window of 16 datagrams also waits one round trip).
//!
//! `cargo bench --bench rebuild` prints the phases and the rate.

#![allow(clippy::disallowed_methods)] // a benchmark measures wall-clock time

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use ddhcp::dhcp::leases::ClientKey;
use ddhcp::persist::{Change, LeaseRecord};
use ddhcp::range::ManagedRange;
use ddhcp::replica::Replication;
use ddhcp::store::codec;
use ddhcp::time::Instant;
use ddhcp::wire::{Message, NodeId, Packet};

const HOLDER: NodeId = NodeId([0x02, 0, 0, 0, 0, 0, 0, 1]);
const ORIGIN: NodeId = NodeId([0x02, 0, 0, 0, 0, 0, 0, 2]);
const HOLDER_ADDR: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
const ORIGIN_ADDR: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2);

fn wire(from: NodeId, range: &ManagedRange, m: Message) -> Vec<u8> {
    Packet {
        node_id: from,
        swarm: range.swarm(),
        message: m,
    }
    .encode()
    .expect("encodes")
}

fn main() {
    let range = ManagedRange::new(Ipv4Addr::new(10, 0, 0, 0), 12, 7).unwrap();
    let pools = || [(range.swarm(), range, Duration::from_secs(60))];
    let mut now = Instant::from_millis(1_000);
    let mut holder = Replication::new(2, HOLDER, 1, pools());
    let mut node = Replication::new(2, ORIGIN, 1_000_000, pools());

    // The holder's replicas of the origin's blocks, as its Replicate streams left them.
    let t = std::time::Instant::now();
    let mut seq = 0;
    let size = range.block_size();
    for block in 0..range.num_blocks() {
        let mut records = Vec::with_capacity(size as usize + 1);
        let mut body = Vec::new();
        let mut push = |c: &Change, records: &mut Vec<Vec<u8>>| {
            body.clear();
            codec::encode_body(0, c, |_| 3_600_000, &mut body);
            records.push(body.clone());
        };
        push(&Change::BlockOwned { block, since: now }, &mut records);
        for off in 0..size {
            let ip = range.address(block, off);
            let mac = [0x02, 0xcc, 0, (block >> 8) as u8, block as u8, off as u8];
            let mut chaddr = [0; 16];
            chaddr[..6].copy_from_slice(&mac);
            let lease = LeaseRecord {
                ip,
                until: now + Duration::from_secs(3600),
                declined: false,
                client: Some(ClientKey::new(None, 1, &mac)),
                chaddr,
                hostname: None,
            };
            push(&Change::Lease(lease), &mut records);
        }
        // As the origin batches them: at most 1232 bytes per datagram.
        let mut batch = Vec::new();
        let mut room = 1232 - 24;
        for r in records {
            if 2 + r.len() > room {
                holder.on_replicate(now, 0, ORIGIN, ORIGIN_ADDR, 7, seq, &batch, |_| false);
                seq += 1;
                batch.clear();
                room = 1232 - 24;
            }
            room -= 2 + r.len();
            batch.push(r);
        }
        holder.on_replicate(now, 0, ORIGIN, ORIGIN_ADDR, 7, seq, &batch, |_| false);
        seq += 1;
        holder.take_sends().for_each(drop);
    }
    let held: usize = holder.held(now).iter().map(|h| h.leases).sum();
    assert_eq!(held, 1 << 20, "the holder holds every binding");
    println!(
        "BENCH rebuild: holder filled with {held} bindings in {} blocks in {:.2} s",
        range.num_blocks(),
        t.elapsed().as_secs_f64()
    );

    // The rebuild: Recover, the handback stream, acknowledgements, until the end marker.
    let t = std::time::Instant::now();
    node.start_recovery(42, now + Duration::from_secs(600));
    assert!(holder.open_handback(now, 0, ORIGIN, ORIGIN_ADDR, 42));
    for (block, records) in holder.held_for(0, ORIGIN) {
        holder.handback(now, 0, ORIGIN, block, &records);
    }
    holder.handback_end(now, 0, ORIGIN);
    let (mut datagrams, mut bytes) = (0u64, 0u64);
    loop {
        holder.handle_timeout(now);
        let out: Vec<_> = holder.take_sends().collect();
        if out.is_empty() && node.recovery_complete(now, true) {
            break;
        }
        for (_, _, m) in out {
            let d = wire(HOLDER, &range, m);
            datagrams += 1;
            bytes += d.len() as u64;
            let p = Packet::decode(&d).expect("decodes");
            if let Message::Handback {
                epoch,
                seq,
                records,
            } = p.message
            {
                node.on_handback(now, 0, p.node_id, HOLDER_ADDR, epoch, seq, &records);
            }
        }
        for (_, _, m) in node.take_sends().collect::<Vec<_>>() {
            let p = Packet::decode(&wire(ORIGIN, &range, m)).expect("decodes");
            if let Message::ReplicaAck { epoch, next } = p.message {
                holder.on_ack(now, 0, p.node_id, epoch, next);
            }
        }
        // The batch delay: what is pending leaves on the next timer.
        now = now + Duration::from_millis(10);
    }
    let got = node.finish_recovery();
    let bindings: usize = got
        .values()
        .map(|per| ddhcp::replica::merge_replicas(per.values().cloned()).bindings())
        .sum();
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(bindings, 1 << 20, "every binding came back");
    println!(
        "BENCH rebuild: {bindings} bindings in {} blocks handed back in {secs:.2} s ({:.0} bindings/s), {datagrams} datagrams, {:.1} MB, {:.1} B per binding",
        got.len(),
        bindings as f64 / secs,
        bytes as f64 / 1e6,
        bytes as f64 / bindings as f64
    );
}

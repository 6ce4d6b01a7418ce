//! The DHCP decision table, driven through a real `Node` that owns blocks.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::*;
use crate::config::DhcpOption;
use crate::node::{Channel, Dest, Node, NodeConfig};
use crate::testing::{Harness, claim, client_message as message, dhcp_node};
use crate::wire::{ClaimEntry, NodeId, Packet};

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const PEER: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 9);

fn range() -> ManagedRange {
    ManagedRange::new(Ipv4Addr::new(10, 0, 128, 0), 24, 2).unwrap()
}

fn t(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

/// Short timers, a router option, and the learning phase as asked.
fn config(learning: bool) -> NodeConfig {
    dhcp_node(
        range(),
        claim(2, 30, 2, learning),
        vec![DhcpOption {
            code: 3,
            payload: vec![10, 0, 0, 1],
        }],
    )
}

/// A node that owns one block (after three 1-second rounds).
fn node() -> Harness {
    let mut n = Harness::new(Node::new(config(false), NodeId([5; 8]), t(0), 7));
    for s in 0..=3 {
        n.handle_timeout(t(s * 1000));
    }
    assert_eq!(n.blocks().owned_count(), 1);
    while n.poll_transmit().is_some() {}
    n
}

fn replies(n: &mut Harness) -> Vec<(SocketAddrV4, Request, Vec<u8>)> {
    std::iter::from_fn(|| n.poll_dhcp_transmit())
        .map(|tx| {
            let mut asreq = tx.payload.clone();
            asreq[0] = 1; // parse our reply with the request parser
            (tx.to, Request::parse(&asreq).unwrap(), tx.payload)
        })
        .collect()
}

fn yiaddr(p: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(p[16], p[17], p[18], p[19])
}

fn option(p: &[u8], code: u8) -> Option<Vec<u8>> {
    let mut i = 240;
    while i < p.len() && p[i] != 255 {
        if p[i] == 0 {
            i += 1;
            continue;
        }
        let len = usize::from(p[i + 1]);
        if p[i] == code {
            return Some(p[i + 2..i + 2 + len].to_vec());
        }
        i += 2 + len;
    }
    None
}

fn dora(n: &mut Harness, mac: u8, now: u64) -> Ipv4Addr {
    n.handle_dhcp(t(now), 0, &message(1, mac, &[(55, &[1, 3, 6, 51, 54])]));
    let r = replies(n);
    assert_eq!(r[0].1.msg_type, MessageType::Offer);
    let ip = yiaddr(&r[0].2);
    n.handle_dhcp(
        t(now + 10),
        0,
        &message(3, mac, &[(50, &ip.octets()), (54, &SERVER.octets())]),
    );
    let r = replies(n);
    assert_eq!(r[0].1.msg_type, MessageType::Ack, "mac {mac}");
    assert_eq!(yiaddr(&r[0].2), ip);
    ip
}

#[test]
fn discover_offer_request_ack() {
    let mut n = node();
    n.handle_dhcp(t(5000), 0, &message(1, 1, &[(55, &[1, 3, 6, 51, 54])]));
    let r = replies(&mut n);
    assert_eq!(r.len(), 1);
    let (to, reply, bytes) = &r[0];
    assert_eq!(reply.msg_type, MessageType::Offer);
    assert_eq!(*to, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
    let ip = yiaddr(bytes);
    assert!(range().locate(ip).is_some());
    assert!(n.dhcp().unwrap().leases.owns(ip));
    // Options in parameter-request order, each once: 53, 54, 51, 1, then 3.
    let codes: Vec<u8> = {
        let mut v = vec![];
        let mut i = 240;
        while bytes[i] != 255 {
            v.push(bytes[i]);
            i += 2 + usize::from(bytes[i + 1]);
        }
        v
    };
    assert_eq!(codes, vec![53, 54, 51, 1, 3]);
    assert_eq!(option(bytes, 51), Some(300u32.to_be_bytes().to_vec()));
    assert_eq!(bytes.len(), 300);

    n.handle_dhcp(
        t(5010),
        0,
        &message(3, 1, &[(50, &ip.octets()), (54, &SERVER.octets())]),
    );
    let r = replies(&mut n);
    assert_eq!(r[0].1.msg_type, MessageType::Ack);
    assert_eq!(n.status(t(5010)).pools[0].leases_active, 1);
    let ev: Vec<_> = std::iter::from_fn(|| n.poll_event()).collect();
    assert!(ev.iter().any(
        |e| matches!(e, crate::node::Event::Lease(0, LeaseEvent::Leased { ip: i, .. }) if *i == ip)
    ));
}

#[test]
fn same_client_same_address_and_never_two_clients_one_address() {
    let mut n = node();
    let a = dora(&mut n, 1, 5000);
    let b = dora(&mut n, 2, 6000);
    assert_ne!(a, b);
    // DISCOVER again (reboot): same address.
    n.handle_dhcp(t(7000), 0, &message(1, 1, &[]));
    assert_eq!(yiaddr(&replies(&mut n)[0].2), a);
    // Another client asking for a's address by INIT-REBOOT is refused.
    n.handle_dhcp(t(7100), 0, &message(3, 3, &[(50, &a.octets())]));
    let r = replies(&mut n);
    assert_eq!(r[0].1.msg_type, MessageType::Nak);
    assert_eq!(
        option(&r[0].2, 54),
        Some(SERVER.octets().to_vec()),
        "NAK carries server id"
    );
    assert_eq!(r[0].0, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
}

#[test]
fn expired_lease_is_remembered_for_its_client() {
    let mut n = node();
    let a = dora(&mut n, 1, 5000);
    // Lease 300 s + 10 s slack.
    n.handle_timeout(t(5000 + 311_000));
    assert_eq!(n.status(t(316_000)).pools[0].leases_active, 0);
    // A new client does not get a's address while others are free.
    n.handle_dhcp(t(320_000), 0, &message(1, 9, &[]));
    assert_ne!(yiaddr(&replies(&mut n)[0].2), a);
    n.handle_dhcp(t(320_100), 0, &message(1, 1, &[]));
    assert_eq!(yiaddr(&replies(&mut n)[0].2), a);
}

#[test]
fn request_for_another_server_is_ignored_and_drops_our_offer() {
    let mut n = node();
    n.handle_dhcp(t(5000), 0, &message(1, 1, &[]));
    let ip = yiaddr(&replies(&mut n)[0].2);
    n.handle_dhcp(
        t(5010),
        0,
        &message(3, 1, &[(50, &ip.octets()), (54, &[10, 9, 9, 9])]),
    );
    assert!(replies(&mut n).is_empty());
    assert_eq!(
        n.dhcp().unwrap().leases.get(ip).unwrap().state,
        AddrState::Free
    );
}

#[test]
fn out_of_range_is_naked_and_renewal_goes_to_ciaddr() {
    let mut n = node();
    n.handle_dhcp(t(5000), 0, &message(3, 1, &[(50, &[192, 168, 1, 5])]));
    assert_eq!(replies(&mut n)[0].1.msg_type, MessageType::Nak);
    let a = dora(&mut n, 1, 5000);
    let mut renew = message(3, 1, &[]);
    renew[12..16].copy_from_slice(&a.octets());
    n.handle_dhcp(t(100_000), 0, &renew);
    let r = replies(&mut n);
    assert_eq!(r[0].1.msg_type, MessageType::Ack);
    assert_eq!(r[0].0, SocketAddrV4::new(a, 68));
}

#[test]
fn relayed_requests_are_answered_to_the_relay() {
    let mut n = node();
    let mut d = message(1, 1, &[(82, &[1, 3, b'a', b'b', b'c'])]);
    d[24..28].copy_from_slice(&[10, 0, 0, 2]);
    n.handle_dhcp(t(5000), 0, &d);
    let r = replies(&mut n);
    assert_eq!(r[0].0, SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 67));
    assert_eq!(option(&r[0].2, 82), Some(vec![1, 3, b'a', b'b', b'c']));
}

#[test]
fn release_and_decline() {
    let mut n = node();
    let a = dora(&mut n, 1, 5000);
    let mut rel = message(7, 1, &[(54, &SERVER.octets())]);
    rel[12..16].copy_from_slice(&a.octets());
    n.handle_dhcp(t(6000), 0, &rel);
    assert!(replies(&mut n).is_empty());
    assert_eq!(n.status(t(6000)).pools[0].leases_active, 0);
    let ev: Vec<_> = std::iter::from_fn(|| n.poll_event()).collect();
    assert!(ev.iter().any(
        |e| matches!(e, crate::node::Event::Lease(0, LeaseEvent::Released { ip, .. }) if *ip == a)
    ));

    let b = dora(&mut n, 2, 7000);
    n.handle_dhcp(
        t(8000),
        0,
        &message(4, 2, &[(50, &b.octets()), (54, &SERVER.octets())]),
    );
    assert!(matches!(
        n.dhcp().unwrap().leases.get(b).unwrap().state,
        AddrState::Declined { .. }
    ));
    // The declined address is not offered again, not even to the client that had it.
    n.handle_dhcp(t(8100), 0, &message(1, 2, &[]));
    assert_ne!(yiaddr(&replies(&mut n)[0].2), b);
}

#[test]
fn inform_gets_options_without_lease_time() {
    let mut n = node();
    let mut inf = message(8, 1, &[(55, &[3, 51])]);
    inf[12..16].copy_from_slice(&[10, 0, 5, 5]);
    n.handle_dhcp(t(5000), 0, &inf);
    let r = replies(&mut n);
    assert_eq!(r[0].1.msg_type, MessageType::Ack);
    assert_eq!(yiaddr(&r[0].2), Ipv4Addr::UNSPECIFIED);
    assert_eq!(option(&r[0].2, 51), None);
    assert_eq!(option(&r[0].2, 3), Some(vec![10, 0, 0, 1]));
    assert_eq!(r[0].0, SocketAddrV4::new(Ipv4Addr::new(10, 0, 5, 5), 68));
}

/// Feeds a peer's claim for `block` so the node knows the owner.
fn peer_claims(n: &mut Harness, block: u32, now: u64) {
    let p = Packet {
        node_id: NodeId([9; 8]),
        swarm: range().swarm(),
        message: Message::UpdateClaim(vec![ClaimEntry { block, timeout: 30 }]),
    };
    n.handle_datagram(t(now), Channel::Multicast, PEER, &p.encode().unwrap());
}

fn unicast(n: &mut Harness) -> Vec<(Ipv6Addr, Packet)> {
    std::iter::from_fn(|| n.poll_transmit())
        .filter_map(|tx| match tx.dest {
            Dest::Unicast(a) => Some((a, Packet::decode(&tx.payload).unwrap())),
            Dest::Multicast => None,
        })
        .collect()
}

fn answer(n: &mut Harness, at: u64, from: Ipv6Addr, m: Message) {
    let p = Packet {
        node_id: NodeId([9; 8]),
        swarm: n.blocks().range().swarm(),
        message: m,
    };
    n.handle_datagram(t(at), Channel::Unicast, from, &p.encode().unwrap());
}

fn renew_leases(n: &mut Harness) -> Vec<RenewPayload> {
    unicast(n)
        .into_iter()
        .map(|(_, p)| match p.message {
            Message::RenewLease(r) => r,
            m => panic!("{m:?}"),
        })
        .collect()
}

#[test]
fn roaming_request_is_forwarded_and_answered_by_the_owners_verdict() {
    let mut n = node();
    let ours = n.blocks().owned().next().unwrap();
    let theirs = (ours + 5) % 64;
    peer_claims(&mut n, theirs, 4000);
    let ip = range().address(theirs, 1);
    let rev = roaming::reversed(ip);
    let mut renew = message(3, 1, &[]);
    renew[12..16].copy_from_slice(&ip.octets());
    n.handle_dhcp(t(5000), 0, &renew);
    assert!(replies(&mut n).is_empty(), "no answer before the owner's");
    // Order unknown, the reversed reading is out of range: both forms, marked.
    let sent = renew_leases(&mut n);
    let forms: Vec<_> = sent.iter().map(|p| p.address).collect();
    assert_eq!(forms, vec![ip.octets(), rev.octets()]);
    assert!(sent.iter().all(|p| p.lease_seconds == roaming::RENEW_MARK));
    // A little-endian C owner answers the reversed form only, echoing it.
    answer(&mut n, 5001, PEER, Message::LeaseAck(sent[1]));
    let r = replies(&mut n);
    assert_eq!(r[0].1.msg_type, MessageType::Ack);
    assert_eq!(yiaddr(&r[0].2), ip);
    assert_eq!(
        n.dhcp().unwrap().orders.get(PEER),
        Some(roaming::AddrOrder::Reversed)
    );

    // Now only that form goes out; a NAK from the owner becomes a NAK.
    n.handle_dhcp(t(6000), 0, &renew);
    let sent = renew_leases(&mut n);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].address, rev.octets());
    answer(&mut n, 6001, PEER, Message::LeaseNak(sent[0]));
    assert_eq!(replies(&mut n)[0].1.msg_type, MessageType::Nak);
    // No answer at all becomes silence, and the learned order is forgotten.
    n.handle_dhcp(t(7000), 0, &renew);
    let _ = unicast(&mut n);
    n.handle_timeout(t(9500));
    assert!(replies(&mut n).is_empty());
    assert_eq!(n.dhcp().unwrap().counters.forward_timeouts, 1);
    assert_eq!(n.dhcp().unwrap().orders.get(PEER), None);

    // A ddhcp owner rewrites the mark: its lease time in the (C-ignored) field.
    n.handle_dhcp(t(10_000), 0, &renew);
    let mut ack = renew_leases(&mut n)[0];
    ack.lease_seconds = 120;
    answer(&mut n, 10_001, PEER, Message::LeaseAck(ack));
    let r = replies(&mut n);
    assert_eq!(option(&r[0].2, 51), Some(120u32.to_be_bytes().to_vec()));
    assert_eq!(
        n.dhcp().unwrap().orders.get(PEER),
        Some(roaming::AddrOrder::Marked)
    );
}

/// A node in 10.0.0.0/8 (where 10.1.2.10 reversed is 10.2.1.10, also in range) owning one
/// block.
fn slash8_node() -> Harness {
    let mut cfg = config(false);
    cfg.pools[0].range = ManagedRange::new(Ipv4Addr::new(10, 0, 0, 0), 8, 2).unwrap();
    let mut n = Harness::new(Node::new(cfg, NodeId([5; 8]), t(0), 7));
    for s in 0..=3 {
        n.handle_timeout(t(s * 1000));
    }
    while n.poll_transmit().is_some() {}
    n
}

/// [`slash8_node`], and a peer owning the block of `ip`.
fn slash8_node_with_peer_block(ip: Ipv4Addr) -> Harness {
    let mut n = slash8_node();
    let (block, _) = n.blocks().range().locate(ip).unwrap();
    let p = Packet {
        node_id: NodeId([9; 8]),
        swarm: n.blocks().range().swarm(),
        message: Message::UpdateClaim(vec![ClaimEntry { block, timeout: 30 }]),
    };
    n.handle_datagram(t(4000), Channel::Multicast, PEER, &p.encode().unwrap());
    while n.poll_transmit().is_some() {}
    n
}

#[test]
fn ambiguous_address_waits_for_a_probe_of_the_owners_byte_order() {
    let ip = Ipv4Addr::new(10, 1, 2, 10);
    let mut n = slash8_node_with_peer_block(ip);
    let range = *n.blocks().range();
    let mut renew = message(3, 1, &[]);
    renew[12..16].copy_from_slice(&ip.octets());
    n.handle_dhcp(t(5000), 0, &renew);
    // Neither form of the client's address may go out yet: only a probe, both forms of an
    // address the owner does not own, whose other reading is out of range.
    let probe = renew_leases(&mut n);
    assert_eq!(probe.len(), 2);
    assert!(probe.iter().all(|p| p.xid != 1));
    let [a, b] = probe[0].addresses();
    assert_eq!(probe[1].address, b.octets());
    assert!(range.locate(a).is_some() && range.locate(b).is_none());
    assert!(n.blocks().owner_of(range.locate(a).unwrap().0).is_none());
    // A second retransmission meanwhile sends nothing new.
    n.handle_dhcp(t(5500), 0, &renew);
    assert!(renew_leases(&mut n).is_empty());
    // A little-endian C owner refuses the reversed form; then the request goes out once,
    // in the form it reads as the client's address.
    answer(&mut n, 5600, PEER, Message::LeaseNak(probe[1]));
    assert!(
        replies(&mut n).is_empty(),
        "the probe's NAK is not the client's"
    );
    let sent = renew_leases(&mut n);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].address, [10, 2, 1, 10]);
    answer(&mut n, 5601, PEER, Message::LeaseAck(sent[0]));
    let r = replies(&mut n);
    assert_eq!(r[0].1.msg_type, MessageType::Ack);
    assert_eq!(yiaddr(&r[0].2), ip);
}

#[test]
fn owner_reads_an_ambiguous_renewal_only_when_something_decides_it() {
    let mut n = slash8_node();
    let range = *n.blocks().range();
    let d = n.dhcp_mut().unwrap();
    // Own the blocks of both readings of 10.1.2.10.
    for ip in [Ipv4Addr::new(10, 1, 2, 10), Ipv4Addr::new(10, 2, 1, 10)] {
        d.block_owned(range.locate(ip).unwrap().0, t(4000), None);
    }
    let mut chaddr = [0u8; 16];
    chaddr[..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    let c_renew = |addr: [u8; 4], xid| {
        Message::RenewLease(RenewPayload {
            address: addr,
            xid,
            lease_seconds: 0,
            chaddr,
        })
    };
    // Nothing bound, sender's order unknown: no answer, a probe of the sender instead.
    answer(&mut n, 5000, PEER, c_renew([10, 2, 1, 10], 1));
    let out = unicast(&mut n);
    assert!(
        out.iter()
            .all(|(_, p)| matches!(&p.message, Message::RenewLease(r) if r.xid != 1)),
        "{out:?}"
    );
    assert_eq!(n.dhcp().unwrap().counters.renew_unresolved, 1);
    // The sender (little-endian) refuses the reversed probe form: we learn its order.
    let probe = out
        .iter()
        .find_map(|(_, p)| match p.message {
            Message::RenewLease(r) if range.locate(Ipv4Addr::from(r.address)).is_none() => Some(r),
            _ => None,
        })
        .unwrap();
    answer(&mut n, 5001, PEER, Message::LeaseNak(probe));
    answer(&mut n, 5002, PEER, c_renew([10, 2, 1, 10], 2));
    let out = unicast(&mut n);
    let Message::LeaseAck(ack) = out[0].1.message else {
        panic!("{out:?}")
    };
    assert_eq!(ack.address, [10, 2, 1, 10], "echoed");
    let leased = n
        .dhcp()
        .unwrap()
        .leases
        .get(Ipv4Addr::new(10, 1, 2, 10))
        .unwrap();
    assert_eq!(leased.chaddr, chaddr, "read as 10.1.2.10");
    // Our own marked renewals are read in network order only.
    let marked = Message::RenewLease(RenewPayload {
        address: [10, 2, 1, 10],
        xid: 3,
        lease_seconds: roaming::RENEW_MARK,
        chaddr,
    });
    answer(
        &mut n,
        5003,
        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 7),
        marked,
    );
    let out = unicast(&mut n);
    let Message::LeaseAck(ack) = out[0].1.message else {
        panic!("{out:?}")
    };
    assert_ne!(
        ack.lease_seconds,
        roaming::RENEW_MARK,
        "the mark is not echoed"
    );
    assert!(
        n.dhcp()
            .unwrap()
            .leases
            .get(Ipv4Addr::new(10, 2, 1, 10))
            .unwrap()
            .chaddr
            == chaddr
    );
}

#[test]
fn owner_checks_the_client_of_a_forwarded_renewal() {
    let mut n = node();
    let a = dora(&mut n, 1, 5000);
    let mut chaddr = [0u8; 16];
    chaddr[..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    // The right client, address byte-reversed as a little-endian C node sends it.
    let mut p = RenewPayload::new(a, 42, chaddr);
    p.address.reverse();
    let renew = Packet {
        node_id: NodeId([9; 8]),
        swarm: range().swarm(),
        message: Message::RenewLease(p),
    };
    n.handle_datagram(t(6000), Channel::Unicast, PEER, &renew.encode().unwrap());
    let sent = unicast(&mut n);
    assert_eq!(sent[0].0, PEER);
    let Message::LeaseAck(echo) = sent[0].1.message else {
        panic!("{:?}", sent[0].1)
    };
    assert_eq!(echo.address, p.address, "echoed as received");
    // Another client for the same address: refused (ddhcpd acks it: duplicate address).
    chaddr[5] = 2;
    let other = Packet {
        node_id: NodeId([9; 8]),
        swarm: range().swarm(),
        message: Message::RenewLease(RenewPayload::new(a, 43, chaddr)),
    };
    n.handle_datagram(t(6100), Channel::Unicast, PEER, &other.encode().unwrap());
    assert!(matches!(unicast(&mut n)[0].1.message, Message::LeaseNak(_)));
    // Out of range in both byte orders: no answer.
    let far = Packet {
        node_id: NodeId([9; 8]),
        swarm: range().swarm(),
        message: Message::RenewLease(RenewPayload::new(Ipv4Addr::new(192, 168, 0, 1), 44, chaddr)),
    };
    n.handle_datagram(t(6200), Channel::Unicast, PEER, &far.encode().unwrap());
    assert!(unicast(&mut n).is_empty());
}

#[test]
fn learning_node_stays_silent_about_unknown_blocks() {
    let cfg = config(true);
    let mut n = Harness::new(Node::new(cfg, NodeId([5; 8]), t(0), 7));
    n.handle_dhcp(t(100), 0, &message(1, 1, &[]));
    n.handle_dhcp(t(200), 0, &message(3, 1, &[(50, &[10, 0, 128, 9])]));
    assert!(replies(&mut n).is_empty());
    // A known owner's address is still forwarded while learning.
    peer_claims(&mut n, 2, 300);
    n.handle_dhcp(
        t(400),
        0,
        &message(3, 1, &[(50, &range().address(2, 1).octets())]),
    );
    // Both byte orders, the peer's being unknown.
    assert_eq!(unicast(&mut n).len(), 2);
}

#[test]
fn reserved_addresses_are_never_offered() {
    let cfg = DhcpConfig {
        options: vec![DhcpOption {
            code: 6,
            payload: vec![10, 0, 128, 6],
        }],
        interface_addr: Some(Ipv4Addr::new(10, 0, 128, 1)),
    };
    let mut d = Dhcp::new(&cfg, range());
    d.block_owned(0, t(0), None);
    d.block_owned(1, t(0), None);
    d.block_owned(63, t(0), None);
    let mut handed = Vec::new();
    while let Some(ip) = d.leases.pick_free() {
        let key = ClientKey::new(None, 1, &ip.octets());
        d.leases
            .bind(ip, key, [0; 16], None, AddrState::Leased { until: t(1000) });
        handed.push(ip);
    }
    // 12 addresses minus network, broadcast, the interface address and the DNS server.
    assert_eq!(handed.len(), 8);
    // A router set at run time inside an owned block is never leased from then on.
    let router = handed[0];
    d.set_option(DhcpOption {
        code: 3,
        payload: router.octets().to_vec(),
    });
    d.leases.release(router);
    assert_eq!(d.leases.get(router).unwrap().state, AddrState::Reserved);
    assert_eq!(d.leases.pick_free(), None);
    d.remove_option(3);
    assert_eq!(d.leases.pick_free(), Some(router));
    for r in ["10.0.128.0", "10.0.128.255", "10.0.128.1", "10.0.128.6"] {
        assert!(!handed.contains(&r.parse().unwrap()), "{r} handed out");
    }
}

#[test]
fn burst_claims_several_blocks_in_one_inquire() {
    let mut n = node();
    // 40 new clients within one second.
    for mac in 0..40u8 {
        n.handle_dhcp(t(4000 + u64::from(mac)), 0, &message(1, mac, &[]));
    }
    let _ = replies(&mut n);
    n.handle_timeout(t(5000));
    let inquiries: Vec<usize> = std::iter::from_fn(|| n.poll_transmit())
        .filter_map(|tx| match Packet::decode(&tx.payload).unwrap().message {
            Message::Inquire(b) => Some(b.len()),
            _ => None,
        })
        .collect();
    assert!(
        inquiries.iter().any(|&len| len >= 5),
        "expected several blocks in one Inquire, got {inquiries:?}"
    );
}

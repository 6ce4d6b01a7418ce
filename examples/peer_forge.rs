//! A mesh member that misbehaves, for the network tests (tests/netns/auth.rs): it holds
//! the mesh key and a node key of its own, and sends UpdateClaims for blocks other nodes
//! hold, in its own name or under another node id, sealed and signed as a real node would,
//! answering the challenges of the receivers. Run inside a namespace:
//!
//! ```text
//! peer_forge IFACE MESH_KEY_FILE NODE_KEY_FILE SECS AS NETWORK/LEN BLOCK_SIZE TTL BLOCK...
//! ```
//!
//! `AS` is `self` (the node key's id) or 16 hex digits; `BLOCK_SIZE` is addresses per
//! block (2^-b). Prints its node id on the first line. Built by `cargo test` as an example,
//! so the tests always run the current code; it is not installed.

#![allow(clippy::disallowed_methods)] // a tool on real sockets and clocks, not the core

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::time::Duration;

use ddhcp::auth::{Auth, MeshKey, NodeKey, Opened};
use ddhcp::node::{Channel, Dest};
use ddhcp::wire::{MULTICAST_GROUP, MULTICAST_PORT, NodeId, Swarm, UNICAST_PORT};
use socket2::{Domain, Protocol, Socket, Type};

fn die(msg: String) -> ! {
    eprintln!("peer_forge: {msg}");
    std::process::exit(2)
}

fn socket(iface: &str, port: u16) -> std::io::Result<std::net::UdpSocket> {
    let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_only_v6(true)?;
    s.set_reuse_address(true)?;
    s.bind_device(Some(iface.as_bytes()))?;
    s.bind(&SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0)).into())?;
    s.set_read_timeout(Some(Duration::from_millis(50)))?;
    Ok(s.into())
}

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.len() < 9 {
        die(
            "usage: IFACE MESH_KEY_FILE NODE_KEY_FILE SECS AS NETWORK/LEN BLOCK_SIZE TTL BLOCK..."
                .into(),
        );
    }
    let iface = &a[0];
    let mesh = MeshKey::read(a[1].as_ref()).unwrap_or_else(|e| die(format!("{}: {e}", a[1])));
    let text = std::fs::read_to_string(&a[2]).unwrap_or_else(|e| die(format!("{}: {e}", a[2])));
    let node_key = NodeKey::parse(&text).unwrap_or_else(|e| die(format!("{}: {e}", a[2])));
    let secs: u64 = a[3]
        .parse()
        .unwrap_or_else(|_| die(format!("SECS: {}", a[3])));
    let me = node_key.id();
    let as_id: NodeId = if a[4] == "self" {
        me
    } else {
        a[4].parse().unwrap_or_else(|e| die(format!("AS: {e}")))
    };
    let (net, len) = a[5]
        .split_once('/')
        .unwrap_or_else(|| die(format!("NETWORK/LEN: {}", a[5])));
    let prefix: Ipv4Addr = net
        .parse()
        .unwrap_or_else(|_| die(format!("NETWORK: {net}")));
    let prefix_len: u8 = len.parse().unwrap_or_else(|_| die(format!("LEN: {len}")));
    let block_size: u8 = a[6]
        .parse()
        .unwrap_or_else(|_| die(format!("BLOCK_SIZE: {}", a[6])));
    let ttl: u16 = a[7]
        .parse()
        .unwrap_or_else(|_| die(format!("TTL: {}", a[7])));
    let blocks: Vec<u32> = a[8..]
        .iter()
        .map(|b| b.parse().unwrap_or_else(|_| die(format!("BLOCK: {b}"))))
        .collect();
    let swarm = Swarm {
        prefix,
        prefix_len,
        block_size,
    };
    let mut auth = Auth::new(&[mesh], false, me, swarm, rand::random())
        .unwrap_or_else(|e| die(format!("mesh key: {e}")));
    auth.set_node_key(node_key, &[]);
    println!("{me}");
    let ifindex = ddhcp_ifindex(iface);
    let mcast = socket(iface, MULTICAST_PORT).unwrap_or_else(|e| die(format!("socket: {e}")));
    let ucast = socket(iface, UNICAST_PORT).unwrap_or_else(|e| die(format!("socket: {e}")));
    let mut claim = as_id.0.to_vec();
    claim.extend_from_slice(&prefix.octets());
    claim.extend_from_slice(&[prefix_len, block_size, 1, blocks.len() as u8]);
    for b in &blocks {
        claim.extend_from_slice(&b.to_be_bytes());
        claim.extend_from_slice(&ttl.to_be_bytes());
        claim.push(0);
    }
    let start = std::time::Instant::now();
    let now = || ddhcp::time::Instant::from_millis(start.elapsed().as_millis() as u64);
    let group = SocketAddrV6::new(MULTICAST_GROUP, MULTICAST_PORT, 0, ifindex);
    let mut next = std::time::Instant::now();
    let mut buf = [0u8; 1500];
    while start.elapsed() < Duration::from_secs(secs) {
        if std::time::Instant::now() >= next {
            let mut d = claim.clone();
            auth.seal(Channel::Multicast, &mut d);
            if let Err(e) = mcast.send_to(&d, group) {
                eprintln!("peer_forge: send: {e}");
            }
            next += Duration::from_secs(1);
        }
        if let Ok((n, SocketAddr::V6(from))) = ucast.recv_from(&mut buf) {
            // Challenges are answered as a node answers them; anything else is ignored.
            if auth.open(now(), Channel::Unicast, *from.ip(), &buf[..n]) == Opened::Consumed {
                while let Some(t) = auth.poll_transmit() {
                    if let Dest::Unicast(to) = t.dest {
                        let to = SocketAddrV6::new(to, UNICAST_PORT, 0, ifindex);
                        let _ = ucast.send_to(&t.payload, to);
                    }
                }
            }
        }
    }
}

fn ddhcp_ifindex(iface: &str) -> u32 {
    let name = std::ffi::CString::new(iface).unwrap_or_else(|_| die("IFACE".into()));
    // SAFETY: a valid NUL-terminated string; the call only reads it.
    let i = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if i == 0 {
        die(format!("no interface {iface}"));
    }
    i
}

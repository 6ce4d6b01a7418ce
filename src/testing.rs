//! Builders and a harness shared by the unit tests, the simulator, the benchmarks and the
//! fuzzers, so each does not carry its own copy of "a node with short timers" or "a DHCP
//! DISCOVER from this MAC". Not part of the daemon's interface.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::ops::{Deref, DerefMut};
use std::time::Duration;

use crate::blocks::ClaimConfig;
use crate::config::DhcpOption;
use crate::dhcp::{DhcpConfig, DhcpTransmit};
use crate::node::{Answer, Event, Node, NodeConfig, Output, Transmit};
use crate::range::ManagedRange;

/// Claim timers in seconds (`-t`, `-B`), spare addresses (`-s`), learning phase (not `-L`);
/// `-n` is 300 s as ddhcpd's default.
pub fn claim(tentative: u64, block_timeout: u64, spare: u32, learning: bool) -> ClaimConfig {
    ClaimConfig {
        tentative_timeout: Duration::from_secs(tentative),
        block_timeout: Duration::from_secs(block_timeout),
        spare_leases: spare,
        needless_timeout: Duration::from_secs(300),
        learning,
    }
}

/// A DHCP service with these options and 10.0.0.1 as its interface address.
pub fn dhcp(options: Vec<DhcpOption>) -> DhcpConfig {
    DhcpConfig {
        options,
        interface_addr: Some(Ipv4Addr::new(10, 0, 0, 1)),
    }
}

/// The lease time option (51) for `secs`.
pub fn lease_time(secs: u32) -> DhcpOption {
    DhcpOption {
        code: 51,
        payload: secs.to_be_bytes().to_vec(),
    }
}

/// A single-pool node serving DHCP with `options` (see [`dhcp`]).
pub fn dhcp_node(range: ManagedRange, claim: ClaimConfig, options: Vec<DhcpOption>) -> NodeConfig {
    NodeConfig::single(range, claim, Some(dhcp(options)))
}

const COOKIE: [u8; 4] = [99, 130, 83, 99];

/// A client message of `msg_type` (option 53) from hardware address `mac` (6 bytes),
/// transaction id `xid`, client address `ciaddr`, with `options` after option 53.
pub fn client_message_from(
    msg_type: u8,
    mac: [u8; 6],
    xid: u32,
    ciaddr: Ipv4Addr,
    options: &[(u8, &[u8])],
) -> Vec<u8> {
    let mut b = vec![0u8; 240];
    b[0] = 1;
    b[1] = 1;
    b[2] = 6;
    b[4..8].copy_from_slice(&xid.to_be_bytes());
    b[12..16].copy_from_slice(&ciaddr.octets());
    b[28..34].copy_from_slice(&mac);
    b[236..240].copy_from_slice(&COOKIE);
    b.extend_from_slice(&[53, 1, msg_type]);
    for (c, d) in options {
        b.push(*c);
        b.push(d.len() as u8);
        b.extend_from_slice(d);
    }
    b.push(255);
    b
}

/// A minimal client message: hardware address `02:00:00:00:00:<mac>`, xid 0x12345678.
pub fn client_message(msg_type: u8, mac: u8, options: &[(u8, &[u8])]) -> Vec<u8> {
    client_message_from(
        msg_type,
        [2, 0, 0, 0, 0, mac],
        0x1234_5678,
        Ipv4Addr::UNSPECIFIED,
        options,
    )
}

/// A node whose one output queue is sorted by kind, for tests that look at peer traffic,
/// DHCP replies and events separately. Everything else goes to the node (it derefs).
pub struct Harness {
    pub node: Node,
    peer: VecDeque<Transmit>,
    dhcp: VecDeque<DhcpTransmit>,
    events: VecDeque<Event>,
    answers: VecDeque<(u64, Answer)>,
    host: VecDeque<(usize, crate::local::HostAction)>,
}

impl Harness {
    pub fn new(node: Node) -> Self {
        Harness {
            node,
            peer: VecDeque::new(),
            dhcp: VecDeque::new(),
            events: VecDeque::new(),
            answers: VecDeque::new(),
            host: VecDeque::new(),
        }
    }

    fn sort(&mut self) {
        while let Some(o) = self.node.poll_output() {
            match o {
                Output::Peer(t) => self.peer.push_back(t),
                Output::Dhcp { transmit, .. } => self.dhcp.push_back(transmit),
                Output::Event(e) => self.events.push_back(e),
                Output::Answer { id, answer } => self.answers.push_back((id, answer)),
                Output::Host { pool, action } => self.host.push_back((pool, action)),
            }
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.sort();
        self.peer.pop_front()
    }

    pub fn poll_dhcp_transmit(&mut self) -> Option<DhcpTransmit> {
        self.sort();
        self.dhcp.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.sort();
        self.events.pop_front()
    }

    pub fn poll_answer(&mut self) -> Option<(u64, Answer)> {
        self.sort();
        self.answers.pop_front()
    }

    pub fn poll_host(&mut self) -> Option<(usize, crate::local::HostAction)> {
        self.sort();
        self.host.pop_front()
    }
}

impl Deref for Harness {
    type Target = Node;

    fn deref(&self) -> &Node {
        &self.node
    }
}

impl DerefMut for Harness {
    fn deref_mut(&mut self) -> &mut Node {
        &mut self.node
    }
}

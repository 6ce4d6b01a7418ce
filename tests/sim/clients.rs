//! The simulated DHCP clients ([`Client`]): each sits on one node's client link, runs the
//! client state machine on virtual time and sends and receives through the simulator's
//! queue with the link's loss.

use std::net::Ipv4Addr;
use std::rc::Rc;
use std::time::Duration;

use ddhcp::testing::client_message_from;
use ddhcp::time::Instant;
use rand::RngExt;

use super::Sim;
use super::link::Kind;

/// A simulated DHCP client: DISCOVER/OFFER/REQUEST/ACK, renewal at half the lease,
/// INIT-REBOOT after roaming, back to INIT on NAK or expiry. Retransmits every 3 s.
#[derive(Clone, Debug)]
pub struct Client {
    pub mac: [u8; 6],
    /// Node whose client link it is on.
    pub node: usize,
    pub state: ClientState,
    pub ip: Option<Ipv4Addr>,
    pub until: Instant,
    renew_at: Instant,
    xid: u32,
    offered: Option<(Ipv4Addr, Ipv4Addr)>,
    pub next_action: Instant,
    pub acks: u64,
    /// NAKs received: a client that keeps its address through a takeover gets none.
    pub naks: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientState {
    Init,
    Selecting,
    Requesting,
    Bound,
    Renewing,
    Rebooting,
}

const RETRY: Duration = Duration::from_secs(3);

impl Client {
    /// A message of `msg_type` from this client, with its hardware address and current xid.
    fn message(&self, msg_type: u8, ciaddr: Ipv4Addr, opts: &[(u8, &[u8])]) -> Vec<u8> {
        client_message_from(msg_type, self.mac, self.xid, ciaddr, opts)
    }
}

/// Option `code` of a DHCP message (also what the C model parses requests with).
pub(super) fn reply_option(p: &[u8], code: u8) -> Option<&[u8]> {
    let mut i = 240;
    while i + 1 < p.len() && p[i] != 255 {
        if p[i] == 0 {
            i += 1;
            continue;
        }
        let len = usize::from(p[i + 1]);
        if p[i] == code {
            return p.get(i + 2..i + 2 + len);
        }
        i += 2 + len;
    }
    None
}

impl Sim {
    /// Adds a client on node `node`'s link; it starts at once.
    pub fn add_client(&mut self, node: usize) -> usize {
        let c = self.clients.len();
        self.clients.push(Client {
            mac: [0x02, 0xcc, 0, (c >> 16) as u8, (c >> 8) as u8, c as u8],
            node,
            state: ClientState::Init,
            ip: None,
            until: Instant::ZERO,
            renew_at: Instant::ZERO,
            xid: 0,
            offered: None,
            next_action: self.now,
            acks: 0,
            naks: 0,
        });
        c
    }

    /// Moves a client to another node's link; a bound client reboots there (INIT-REBOOT).
    pub fn roam(&mut self, c: usize, node: usize) {
        let cl = &mut self.clients[c];
        cl.node = node;
        if cl.ip.is_some() {
            cl.state = ClientState::Rebooting;
            cl.next_action = self.now;
        }
    }

    fn client_send(&mut self, c: usize, data: Vec<u8>) {
        let node = self.clients[c].node;
        let down = self.slots[node].node.is_none() && self.slots[node].cnode.is_none();
        if down || self.rng.random_bool(self.link.loss) {
            return;
        }
        self.enqueue(Duration::from_millis(1), node, Kind::ToServer, data.into());
    }

    /// Replies from node `i` reach the clients on its link with that hardware address.
    pub(super) fn deliver_to_clients(&mut self, i: usize, payload: Vec<u8>) {
        if payload.len() < 240 {
            return;
        }
        let data: Rc<[u8]> = payload.into();
        for c in 0..self.clients.len() {
            let cl = &self.clients[c];
            if cl.node != i || data[28..34] != cl.mac || self.rng.random_bool(self.link.loss) {
                continue;
            }
            self.enqueue(Duration::from_millis(1), c, Kind::ToClient, data.clone());
        }
    }

    pub(super) fn client_timer(&mut self, c: usize) {
        let now = self.now;
        let cl = &mut self.clients[c];
        if cl.ip.is_some() && now >= cl.until {
            // Lease ran out without renewal.
            cl.ip = None;
            cl.state = ClientState::Init;
        }
        if matches!(cl.state, ClientState::Bound) && now >= cl.renew_at {
            cl.state = ClientState::Renewing;
        }
        cl.xid = cl.xid.wrapping_add(1) | (c as u32) << 16;
        cl.next_action = now + RETRY;
        let cl = cl.clone();
        let msg = match cl.state {
            ClientState::Init | ClientState::Selecting | ClientState::Requesting => {
                self.clients[c].state = ClientState::Selecting;
                cl.message(1, Ipv4Addr::UNSPECIFIED, &[])
            }
            ClientState::Renewing => cl.message(3, cl.ip.expect("renewing has an address"), &[]),
            ClientState::Rebooting => cl.message(
                3,
                Ipv4Addr::UNSPECIFIED,
                &[(50, &cl.ip.expect("rebooting has an address").octets())],
            ),
            ClientState::Bound => {
                self.clients[c].next_action = cl.renew_at.min(cl.until);
                return;
            }
        };
        self.client_send(c, msg);
    }

    pub(super) fn client_receive(&mut self, c: usize, data: &[u8]) {
        let now = self.now;
        let xid = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
        if xid != self.clients[c].xid {
            return;
        }
        let yiaddr = Ipv4Addr::new(data[16], data[17], data[18], data[19]);
        let Some(&[msg_type]) = reply_option(data, 53) else {
            return;
        };
        let server = reply_option(data, 54)
            .and_then(|s| <[u8; 4]>::try_from(s).ok())
            .map(Ipv4Addr::from)
            .unwrap_or(Ipv4Addr::UNSPECIFIED);
        let lease = reply_option(data, 51)
            .and_then(|s| <[u8; 4]>::try_from(s).ok())
            .map(u32::from_be_bytes)
            .unwrap_or(0);
        let state = self.clients[c].state;
        match (msg_type, state) {
            (2, ClientState::Selecting) => {
                let cl = &mut self.clients[c];
                cl.offered = Some((yiaddr, server));
                cl.state = ClientState::Requesting;
                let msg = cl.message(
                    3,
                    Ipv4Addr::UNSPECIFIED,
                    &[(50, &yiaddr.octets()), (54, &server.octets())],
                );
                self.client_send(c, msg);
            }
            (5, ClientState::Requesting | ClientState::Renewing | ClientState::Rebooting) => {
                let cl = &mut self.clients[c];
                cl.ip = Some(yiaddr);
                cl.until = now + Duration::from_secs(u64::from(lease));
                cl.renew_at = now + Duration::from_secs(u64::from(lease / 2));
                cl.state = ClientState::Bound;
                cl.next_action = cl.renew_at;
                cl.acks += 1;
                self.check_address(c);
            }
            (6, _) => {
                let cl = &mut self.clients[c];
                cl.ip = None;
                cl.state = ClientState::Init;
                cl.next_action = now + Duration::from_millis(100);
                cl.naks += 1;
            }
            _ => {}
        }
    }

    /// Clients holding an address now.
    pub fn bound_clients(&self) -> usize {
        self.clients
            .iter()
            .filter(|c| c.ip.is_some() && c.until > self.now)
            .count()
    }
}

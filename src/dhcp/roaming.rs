//! The address field of forwarded renewals, whatever byte order the peer reads it in.
//!
//! A C ddhcpd puts the address of a RenewLease in its *host* byte order (reference §2.7):
//! reversed on little-endian routers (x86, ARM, MIPS-LE), as is on big-endian ones. Its
//! owner side reads it back the same way, answers LeaseAck if the address is in one of its
//! blocks, LeaseNak if it is in range but not its own, and nothing if it is out of range; it
//! never checks the client. So a form the owner misreads either goes unanswered or, when
//! the misread address is also in range (in a /8, 10.1.2.10 reversed is 10.2.1.10), makes
//! it acknowledge or refuse a *different* address. We therefore:
//!
//! - mark our own RenewLeases ([`RENEW_MARK`] in the `lease_seconds` field, which C sends
//!   as 0, never reads and echoes back unchanged), so ddhcp owners read them in network
//!   order only, and an answer that does not echo the mark comes from a ddhcp node;
//! - learn each C peer's order from what it sends: a RenewLease whose address falls in range
//!   one way only, or an answer that echoes one of two forms we sent;
//! - to a peer of unknown order, send both forms only when the other reading is out of
//!   range (so the peer can answer one of them at most); otherwise first send a *probe*: both
//!   forms of an address of a block the peer does not own, whose other reading is out of
//!   range. The peer refuses the form it reads correctly (a LeaseNak has no effect on a C
//!   owner) and ignores the other, and the forwarded request goes out once its order is known.
//!
//! On the owner side, an unmarked renewal readable both ways is taken in the sender's
//! learned order, else as the address bound to that client here; if neither decides, we do
//! not answer and probe the sender, so the client's retransmission is answered correctly.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::blocks::Blocks;
use crate::range::ManagedRange;
use crate::time::Instant;
use crate::wire::RenewPayload;

/// Our RenewLeases carry this in `lease_seconds` ("ddhp"): the address is in network order.
pub const RENEW_MARK: u32 = 0x6464_6870;

/// Hardware address of a probe; no DHCP client has an all-ones chaddr.
const PROBE_CHADDR: [u8; 16] = [0xff; 16];

/// Peers whose order we remember; a forged flood of senders cannot grow it further.
const MAX_PEERS: usize = 4096;

/// Probes under way at once: forged ambiguous renewals from many sources cannot make us
/// send more than two datagrams each for this many.
const MAX_PROBES: usize = 256;

/// How a peer reads the address of a renew payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddrOrder {
    /// As is: a big-endian C node.
    Network,
    /// Byte-reversed: a little-endian C node.
    Reversed,
    /// A ddhcp node: reads marked payloads in network order.
    Marked,
}

/// The other reading of an address.
pub fn reversed(ip: Ipv4Addr) -> Ipv4Addr {
    let o = ip.octets();
    Ipv4Addr::new(o[3], o[2], o[1], o[0])
}

/// What to send a peer for a forwarded request.
#[derive(Debug, PartialEq, Eq)]
pub enum Forms {
    /// These address fields, one RenewLease each.
    Send(Vec<[u8; 4]>),
    /// Its order must be learned first.
    Probe,
}

#[derive(Default)]
pub struct PeerOrders {
    orders: HashMap<Ipv6Addr, AddrOrder>,
    /// Outstanding probes by xid: the peer and the probe address.
    probes: HashMap<u32, (Ipv6Addr, Ipv4Addr, Instant)>,
    next_xid: u32,
    pub probes_sent: u64,
    pub learned: u64,
}

impl PeerOrders {
    pub fn get(&self, peer: Ipv6Addr) -> Option<AddrOrder> {
        self.orders.get(&peer).copied()
    }

    /// Records what `peer` was seen to do; true if that is news.
    pub fn learn(&mut self, peer: Ipv6Addr, order: AddrOrder) -> bool {
        if self.orders.get(&peer) == Some(&order) {
            return false;
        }
        if self.orders.len() >= MAX_PEERS && !self.orders.contains_key(&peer) {
            return false;
        }
        self.orders.insert(peer, order);
        self.learned += 1;
        true
    }

    /// Forgets a peer that stopped answering in its learned order (it may have been
    /// replaced by a node of another kind at the same address).
    pub fn forget(&mut self, peer: Ipv6Addr) {
        self.orders.remove(&peer);
    }

    /// The address fields to send `peer` for `ip`.
    pub fn forms(&self, peer: Ipv6Addr, ip: Ipv4Addr, range: &ManagedRange) -> Forms {
        let rev = reversed(ip);
        match self.get(peer) {
            Some(AddrOrder::Network | AddrOrder::Marked) => Forms::Send(vec![ip.octets()]),
            Some(AddrOrder::Reversed) => Forms::Send(vec![rev.octets()]),
            None if rev == ip => Forms::Send(vec![ip.octets()]),
            None if range.locate(rev).is_none() => Forms::Send(vec![ip.octets(), rev.octets()]),
            None => Forms::Probe,
        }
    }

    /// A probe for `peer`: two RenewLeases, unless one is already under way or no suitable
    /// address exists (then the forwarded request waits for the client to retry).
    pub fn probe(
        &mut self,
        now: Instant,
        peer: Ipv6Addr,
        blocks: &Blocks,
        range: &ManagedRange,
        timeout: std::time::Duration,
    ) -> Vec<RenewPayload> {
        // A filter and a search: the order of the visits reaches nothing.
        #[allow(clippy::disallowed_methods)]
        let busy = {
            self.probes
                .retain(|_, (_, _, at)| now.saturating_since(*at) < timeout);
            self.probes.values().any(|(p, _, _)| *p == peer)
        };
        if self.probes.len() >= MAX_PROBES || busy {
            return Vec::new();
        }
        let Some(ip) = probe_address(peer, blocks, range) else {
            return Vec::new();
        };
        self.next_xid = self.next_xid.wrapping_add(1);
        let xid = 0x5052_0000 | (self.next_xid & 0xffff);
        self.probes.insert(xid, (peer, ip, now));
        self.probes_sent += 1;
        [ip.octets(), reversed(ip).octets()]
            .into_iter()
            .map(|address| RenewPayload {
                address,
                xid,
                lease_seconds: RENEW_MARK,
                chaddr: PROBE_CHADDR,
            })
            .collect()
    }

    /// An answer to one of our probes: learns the sender's order and returns the peer, or
    /// `None` if it answers no probe.
    pub fn probe_answer(&mut self, from: Ipv6Addr, p: &RenewPayload) -> Option<Ipv6Addr> {
        if p.chaddr != PROBE_CHADDR {
            return None;
        }
        let &(peer, ip, _) = self.probes.get(&p.xid)?;
        let order = answered_order(ip, p)?;
        self.probes.remove(&p.xid);
        self.learn(from, order);
        Some(peer)
    }
}

/// The order a peer read an answered renew payload in, given the address we meant; `None`
/// when the address reads the same both ways (nothing to learn).
pub fn answered_order(ip: Ipv4Addr, p: &RenewPayload) -> Option<AddrOrder> {
    if p.lease_seconds != RENEW_MARK {
        // Rewritten, not echoed: a ddhcp node answered.
        return Some(AddrOrder::Marked);
    }
    if reversed(ip) == ip {
        return None;
    }
    if p.address == ip.octets() {
        Some(AddrOrder::Network)
    } else if p.address == reversed(ip).octets() {
        Some(AddrOrder::Reversed)
    } else {
        None
    }
}

/// An address `peer` does not own whose other reading is out of range, in one of our blocks
/// if possible (no peer with the same table owns it), else in a block the peer does not own.
fn probe_address(peer: Ipv6Addr, blocks: &Blocks, range: &ManagedRange) -> Option<Ipv4Addr> {
    let candidate = |b: u32| {
        (0..range.block_size())
            .map(|j| range.address(b, j))
            .find(|&a| range.locate(reversed(a)).is_none())
    };
    if let Some(a) = blocks.owned().find_map(candidate) {
        return Some(a);
    }
    (0..range.num_blocks().min(1024))
        .filter(|&b| blocks.owner_of(b).is_none_or(|(_, addr)| addr != peer))
        .find_map(candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(cidr: (Ipv4Addr, u8)) -> ManagedRange {
        ManagedRange::new(cidr.0, cidr.1, 2).unwrap()
    }

    const PEER: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 9);

    #[test]
    fn unknown_peer_gets_both_forms_only_when_the_other_reading_is_out_of_range() {
        let r = range((Ipv4Addr::new(10, 116, 128, 0), 17));
        let o = PeerOrders::default();
        let ip = Ipv4Addr::new(10, 116, 156, 48);
        assert_eq!(
            o.forms(PEER, ip, &r),
            Forms::Send(vec![[10, 116, 156, 48], [48, 156, 116, 10]])
        );
        // In a /8, 10.1.2.10 reversed is 10.2.1.10, also in range: probe first.
        let r8 = range((Ipv4Addr::new(10, 0, 0, 0), 8));
        assert_eq!(
            o.forms(PEER, Ipv4Addr::new(10, 1, 2, 10), &r8),
            Forms::Probe
        );
        // A palindrome reads the same both ways.
        assert_eq!(
            o.forms(PEER, Ipv4Addr::new(10, 1, 1, 10), &r8),
            Forms::Send(vec![[10, 1, 1, 10]])
        );
    }

    #[test]
    fn learned_order_decides_the_single_form() {
        let r8 = range((Ipv4Addr::new(10, 0, 0, 0), 8));
        let mut o = PeerOrders::default();
        let ip = Ipv4Addr::new(10, 1, 2, 10);
        o.learn(PEER, AddrOrder::Reversed);
        assert_eq!(o.forms(PEER, ip, &r8), Forms::Send(vec![[10, 2, 1, 10]]));
        o.learn(PEER, AddrOrder::Marked);
        assert_eq!(o.forms(PEER, ip, &r8), Forms::Send(vec![[10, 1, 2, 10]]));
        o.forget(PEER);
        assert_eq!(o.forms(PEER, ip, &r8), Forms::Probe);
    }

    #[test]
    fn answers_tell_the_order() {
        let ip = Ipv4Addr::new(10, 116, 156, 48);
        let mut p = RenewPayload::new(ip, 1, [0; 16]);
        p.lease_seconds = RENEW_MARK;
        assert_eq!(answered_order(ip, &p), Some(AddrOrder::Network));
        p.address = reversed(ip).octets();
        assert_eq!(answered_order(ip, &p), Some(AddrOrder::Reversed));
        p.lease_seconds = 300;
        assert_eq!(answered_order(ip, &p), Some(AddrOrder::Marked));
    }
}

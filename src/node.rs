//! One node: the block protocol plus peer message handling, inputs in, outputs out.
//!
//! The shell feeds datagrams and "the time is now" in and drains transmits, events and the
//! next wake-up instant, in the manner of `quinn-proto`. Nothing here touches a socket, a
//! clock or an unseeded random source, so the simulator can run hundreds of nodes in one
//! process reproducibly.

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, Ipv6Addr};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tracing::{debug, error, info};

use crate::blocks::{BlockEvent, BlockView, Blocks, ClaimConfig, Output};
use crate::dhcp::{Dhcp, DhcpConfig, DhcpTransmit, LeaseEvent};
use crate::persist::{Change, LeaseRecord, Restored};
use crate::range::ManagedRange;
use crate::stats::{Counter, Counters};
use crate::time::Instant;
use crate::wire::{self, Message, NodeId, Packet};

/// What a node needs to know about the swarm it is part of.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub range: ManagedRange,
    pub claim: ClaimConfig,
    /// `None` with `-S`: no DHCP service.
    pub dhcp: Option<DhcpConfig>,
}

/// Which socket a datagram arrived on. Like the C daemon, the multicast socket carries only
/// Inquire and UpdateClaim, the unicast socket only the renew family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    Multicast,
    Unicast,
}

/// Where a datagram goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest {
    /// `[ff02::1234]:1234` on the server interface.
    Multicast,
    /// `[addr]:1235` on the server interface.
    Unicast(Ipv6Addr),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub dest: Dest,
    pub payload: Vec<u8>,
}

/// Things that happened, for logs, hooks and the state store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    EndLearning,
    BlockClaimed {
        block: u32,
        first: Ipv4Addr,
    },
    BlockDropped {
        block: u32,
        first: Ipv4Addr,
    },
    /// A greater node id took a block we owned.
    BlockLost {
        block: u32,
        first: Ipv4Addr,
        to: NodeId,
    },
    /// Another host used our node id; we picked `new`.
    NodeIdChanged {
        old: NodeId,
        new: NodeId,
    },
    /// A DHCP allocation or release.
    Lease(LeaseEvent),
}

/// The numbers `ddhcpctl status` shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub node_id: NodeId,
    pub learning: bool,
    pub range: ManagedRange,
    pub blocks_owned: usize,
    pub leases_active: usize,
    pub peers: usize,
}

/// How fast new clients arrive, to claim blocks before they are needed: new addresses
/// handed out per claim round, over the last claim time.
#[derive(Debug, Default)]
struct Demand {
    since: Instant,
    rounds: VecDeque<u64>,
}

pub struct Node {
    cfg: NodeConfig,
    id: NodeId,
    blocks: Blocks,
    rng: StdRng,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    counters: Counters,
    dhcp: Option<Dhcp>,
    demand: Demand,
    /// Durable changes not yet handed to the store.
    changes: Vec<Change>,
    /// Leases from before a restart in blocks whose claims lapsed meanwhile, by block,
    /// until we own the block again or someone else does.
    pending_restore: HashMap<u32, Vec<LeaseRecord>>,
    /// When `pending_restore` is next checked (once per claim round, not per timer).
    next_restore_check: Instant,
}

impl Node {
    /// `seed` makes every random choice of the node reproducible; the daemon passes OS
    /// randomness, the simulator a per-node seed.
    pub fn new(cfg: NodeConfig, id: NodeId, now: Instant, seed: u64) -> Self {
        let blocks = Blocks::new(cfg.claim.clone(), cfg.range, now);
        let dhcp = cfg.dhcp.as_ref().map(|d| Dhcp::new(d, cfg.range));
        let mut node = Node {
            dhcp,
            demand: Demand {
                since: now,
                rounds: VecDeque::new(),
            },
            cfg,
            id,
            blocks,
            rng: StdRng::seed_from_u64(seed),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            counters: Counters::default(),
            changes: Vec::new(),
            pending_restore: HashMap::new(),
            next_restore_check: now,
        };
        node.drain_blocks(now);
        node
    }

    /// Takes back the state of a previous run, read from the store, right after
    /// [`Node::new`]. Blocks whose claims peers still honour are ours at once, announced now,
    /// and served from (renewals and new clients alike), learning phase or not; blocks whose
    /// claims lapsed are claimed back first once claiming is allowed, and their leases come
    /// back with them. Expired leases must already be gone.
    pub fn restore(&mut self, now: Instant, r: Restored) {
        let (announced, ttl) = r.announced.unwrap_or((Instant::ZERO, 0));
        let ttl = std::time::Duration::from_secs(u64::from(ttl));
        let with_leases: std::collections::HashSet<u32> = r
            .leases
            .iter()
            .filter_map(|l| self.cfg.range.locate(l.ip).map(|(b, _)| b))
            .collect();
        let mut owned = Vec::new();
        let mut lapsed = Vec::new();
        for &(block, since) in &r.blocks {
            if !r.clock_went_back && since.max(announced) + ttl > now {
                owned.push((block, since));
            } else if with_leases.contains(&block) {
                lapsed.push(block);
            } else {
                self.changes.push(Change::BlockGone { block });
            }
        }
        self.blocks.restore(now, &owned, &lapsed);
        for &(block, _) in &owned {
            if self.blocks.owns(block) {
                self.events.push_back(Event::BlockClaimed {
                    block,
                    first: self.cfg.range.block_first(block),
                });
            }
        }
        info!(
            valid = owned.len(),
            lapsed = lapsed.len(),
            leases = r.leases.len(),
            "state restored"
        );
        if let Some(d) = self.dhcp.as_mut() {
            d.restore_options(&r.options);
            let holds: HashMap<u32, Instant> = r.holds.iter().copied().collect();
            for &(block, since) in &owned {
                if self.blocks.owns(block) {
                    let hold = holds.get(&block).copied().filter(|&h| h > now);
                    d.restore_block(block, since, hold);
                }
            }
            for lease in d.leases.restore(r.leases) {
                match self.cfg.range.locate(lease.ip) {
                    Some((b, _)) if self.blocks.is_wanted(b) => {
                        self.pending_restore.entry(b).or_default().push(lease)
                    }
                    _ => self.changes.push(Change::LeaseGone(lease.ip)),
                }
            }
        }
        self.drain_blocks(now);
    }

    /// Durable changes since the last call, in the order they happened. The shell writes them
    /// out before anything produced since then leaves the process.
    pub fn take_changes(&mut self) -> Vec<Change> {
        if let Some(d) = self.dhcp.as_mut() {
            d.take_changes(&mut self.changes);
        }
        std::mem::take(&mut self.changes)
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    pub fn blocks(&self) -> &Blocks {
        &self.blocks
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn status(&self, now: Instant) -> Status {
        Status {
            node_id: self.id,
            learning: self.blocks.is_learning(),
            range: self.cfg.range,
            blocks_owned: self.blocks.owned_count(),
            leases_active: self.dhcp.as_ref().map_or(0, |d| d.leases.active()),
            peers: self.blocks.peer_count(now),
        }
    }

    pub fn blocks_view(&self, now: Instant) -> Vec<BlockView> {
        self.blocks.view(now, self.id)
    }

    /// A datagram from `from` on the server interface.
    pub fn handle_datagram(&mut self, now: Instant, channel: Channel, from: Ipv6Addr, data: &[u8]) {
        let (pkg, bytes) = match channel {
            Channel::Multicast => (Counter::McastRecvPkg, Counter::McastRecvByte),
            Channel::Unicast => (Counter::DirectRecvPkg, Counter::DirectRecvByte),
        };
        self.counters.inc(pkg);
        self.counters.add(bytes, data.len() as u64);
        let packet = match Packet::decode(data) {
            Ok(p) => p,
            Err(e) => {
                self.counters.inc(Counter::DropMalformed);
                debug!(%from, error = %e, "malformed peer datagram");
                return;
            }
        };
        if packet.swarm != self.cfg.range.swarm() {
            self.counters.inc(Counter::DropForeignSwarm);
            debug!(%from, swarm = ?packet.swarm, "message from another swarm ignored");
            return;
        }
        if packet.node_id == self.id {
            // Multicast loop is off, so this is another host using our id.
            self.duplicate_id(now, from);
        }
        let invalid_before = self.blocks.invalid_entries;
        match (channel, &packet.message) {
            (Channel::Multicast, Message::Inquire(blocks)) => {
                self.counters.inc(Counter::McastRecvInquire);
                self.blocks.on_inquire(now, self.id, packet.node_id, blocks);
            }
            (Channel::Multicast, Message::UpdateClaim(entries)) => {
                self.counters.inc(Counter::McastRecvUpdateClaim);
                self.blocks
                    .on_claim(now, self.id, packet.node_id, from, entries);
            }
            (Channel::Unicast, Message::RenewLease(p)) => {
                self.counters.inc(Counter::DirectRecvRenewLease);
                let answer = match self.dhcp.as_mut() {
                    Some(d) => d.handle_renew(now, from, &self.blocks, p),
                    // Without a DHCP service we own nothing: as ddhcpd, refuse what is in
                    // range and ignore the rest.
                    None => {
                        let marked = p.lease_seconds == crate::dhcp::roaming::RENEW_MARK;
                        let mut nak = *p;
                        if marked {
                            nak.lease_seconds = 0;
                        }
                        p.addresses()
                            .iter()
                            .take(if marked { 1 } else { 2 })
                            .any(|a| self.cfg.range.locate(*a).is_some())
                            .then_some(Message::LeaseNak(nak))
                    }
                };
                if let Some(m) = answer {
                    self.counters.inc(match m {
                        Message::LeaseAck(_) => Counter::DirectSendLeaseAck,
                        _ => Counter::DirectSendLeaseNak,
                    });
                    self.send(Dest::Unicast(from), m);
                }
            }
            (Channel::Unicast, Message::LeaseAck(p) | Message::LeaseNak(p)) => {
                let ack = matches!(packet.message, Message::LeaseAck(_));
                self.counters.inc(if ack {
                    Counter::DirectRecvLeaseAck
                } else {
                    Counter::DirectRecvLeaseNak
                });
                match self.dhcp.as_mut() {
                    Some(d) => d.handle_forward_answer(from, p, ack),
                    None => self.counters.inc(Counter::DropUnhandled),
                }
            }
            (_, m) => {
                self.counters.inc(Counter::DropWrongSocket);
                debug!(%from, kind = m.name(), ?channel, "message on the wrong socket ignored");
            }
        }
        let invalid = self.blocks.invalid_entries - invalid_before;
        self.counters.add(Counter::DropInvalidBlock, invalid);
        self.drain_blocks(now);
    }

    /// A datagram from a client or relay on the client interface.
    pub fn handle_dhcp(&mut self, now: Instant, data: &[u8]) {
        if let Some(d) = self.dhcp.as_mut() {
            d.handle_packet(now, &self.blocks, data);
            self.drain_blocks(now);
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(d) = self.dhcp.as_mut() {
            d.handle_timeout(now);
        }
        self.sample_demand(now);
        self.blocks.handle_timeout(now, &mut self.rng);
        self.drain_blocks(now);
        self.forget_lost_restores(now);
    }

    /// Drops leases from before a restart whose block another node owns now. Checked once
    /// per claim round, when `wanted` can have changed; expired leases wait for their
    /// block's fate (they are dropped when it comes back).
    fn forget_lost_restores(&mut self, now: Instant) {
        if self.pending_restore.is_empty() || now < self.next_restore_check {
            return;
        }
        self.next_restore_check = now + self.cfg.claim.round_interval();
        let blocks = &self.blocks;
        let changes = &mut self.changes;
        self.pending_restore.retain(|&block, leases| {
            if blocks.is_wanted(block) {
                return true;
            }
            changes.extend(leases.iter().map(|l| Change::LeaseGone(l.ip)));
            if !blocks.owns(block) {
                changes.push(Change::BlockGone { block });
            }
            false
        });
    }

    /// When [`Node::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Instant {
        let b = self.blocks.poll_timeout();
        match self.dhcp.as_ref().and_then(Dhcp::next_deadline) {
            Some(d) => b.min(d),
            None => b,
        }
    }

    pub fn poll_dhcp_transmit(&mut self) -> Option<DhcpTransmit> {
        self.dhcp.as_mut()?.poll_transmit()
    }

    pub fn dhcp(&self) -> Option<&Dhcp> {
        self.dhcp.as_ref()
    }

    pub fn dhcp_mut(&mut self) -> Option<&mut Dhcp> {
        self.dhcp.as_mut()
    }

    /// Claiming ahead: a claim takes H = 1.5·t plus up to two rounds of waiting. If new
    /// clients arriving at the rate of the busiest round of the last H would eat more than
    /// `-s` free addresses during the next H, hold 1.5 times that many free instead, so a
    /// burst does not stall for a claim round per block. Surplus blocks are given up by the
    /// `-n` rule once the burst is over.
    fn sample_demand(&mut self, now: Instant) {
        let Some(d) = self.dhcp.as_mut() else { return };
        self.blocks.set_lapse_hold(d.lease_horizon());
        let round = self.cfg.claim.round_interval();
        if now.saturating_since(self.demand.since) < round {
            return;
        }
        self.demand.since = now;
        let horizon = self.cfg.claim.tentative_timeout * 3 / 2 + round * 2;
        let window = (horizon.as_millis() / round.as_millis().max(1)).max(1) as usize;
        self.demand.rounds.push_back(d.take_demand(now, horizon));
        while self.demand.rounds.len() > window {
            self.demand.rounds.pop_front();
        }
        // Clients expected over the next H at the rate of the busiest recent round: a
        // burst counts from its first round (a mean would dilute it with the quiet rounds
        // before it), and the estimate decays only once the window has passed.
        let busiest = self.demand.rounds.iter().copied().max().unwrap_or(0);
        let expected = busiest * window as u64;
        let cap = u64::from(self.cfg.range.block_size()) * crate::blocks::MAX_CLAIMING as u64;
        let want = (expected * 3).div_ceil(2).min(cap) as u32;
        self.blocks
            .set_extra_spare(want.saturating_sub(self.cfg.claim.spare_leases));
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Picks a fresh id after another host was seen with ours: the MAC-derived part stays,
    /// the random part changes, and our blocks are re-announced under the new id.
    fn duplicate_id(&mut self, now: Instant, from: Ipv6Addr) {
        self.counters.inc(Counter::DuplicateNodeId);
        let old = self.id;
        let mut new = old;
        while new == old {
            new.0[6] = self.rng.random();
            new.0[7] = self.rng.random();
        }
        error!(%old, %new, other = %from,
               "DUPLICATE NODE ID: another host sends with our node id; switching to a new id");
        self.id = new;
        self.events.push_back(Event::NodeIdChanged { old, new });
        self.blocks.announce_all(now);
    }

    /// Turns what the block protocol produced into datagrams and events.
    fn drain_blocks(&mut self, now: Instant) {
        let mut forwards = Vec::new();
        if let Some(d) = self.dhcp.as_mut() {
            while let Some(f) = d.poll_forward() {
                forwards.push(f);
            }
            while let Some(e) = d.poll_event() {
                self.events.push_back(Event::Lease(e));
            }
        }
        for (owner, m) in forwards {
            self.counters.inc(Counter::DirectSendRenewLease);
            self.send(Dest::Unicast(owner), m);
        }
        while let Some(out) = self.blocks.poll_output() {
            let (message, counter) = match out {
                Output::Inquire(b) => (Message::Inquire(b), Counter::McastSendInquire),
                Output::Claim(e) => (Message::UpdateClaim(e), Counter::McastSendUpdateClaim),
            };
            self.counters.inc(counter);
            self.send(Dest::Multicast, message);
        }
        while let Some(ev) = self.blocks.poll_event() {
            let range = self.cfg.range;
            let ev = match ev {
                BlockEvent::EndLearning => {
                    info!(node_id = %self.id, "ready to claim blocks");
                    Event::EndLearning
                }
                BlockEvent::Claimed(block) => {
                    self.counters.inc(Counter::BlocksClaimed);
                    self.changes.push(Change::BlockOwned { block, since: now });
                    let hold = self.blocks.hold_until(block).filter(|&h| h > now);
                    if let Some(until) = hold {
                        self.changes.push(Change::BlockHold { block, until });
                    }
                    if let Some(d) = self.dhcp.as_mut() {
                        d.block_owned(block, now, hold);
                        let (live, expired): (Vec<_>, Vec<_>) = self
                            .pending_restore
                            .remove(&block)
                            .unwrap_or_default()
                            .into_iter()
                            .partition(|l| l.until > now);
                        d.leases.restore(live);
                        self.changes
                            .extend(expired.into_iter().map(|l| Change::LeaseGone(l.ip)));
                    }
                    Event::BlockClaimed {
                        block,
                        first: range.block_first(block),
                    }
                }
                BlockEvent::Dropped(block) => {
                    self.counters.inc(Counter::BlocksDropped);
                    self.changes.push(Change::BlockGone { block });
                    if let Some(d) = self.dhcp.as_mut() {
                        d.block_gone(block);
                    }
                    Event::BlockDropped {
                        block,
                        first: range.block_first(block),
                    }
                }
                BlockEvent::Lost { block, to } => {
                    self.counters.inc(Counter::BlocksLost);
                    self.changes.push(Change::BlockGone { block });
                    if let Some(d) = self.dhcp.as_mut() {
                        d.block_gone(block);
                    }
                    Event::BlockLost {
                        block,
                        first: range.block_first(block),
                        to,
                    }
                }
            };
            self.events.push_back(ev);
        }
        if let Some(at) = self.blocks.take_refreshed() {
            let ttl = self.cfg.claim.ttl();
            self.changes.push(Change::Announced { at, ttl });
        }
        // Usage changed by DHCP traffic and by blocks just owned (their reserved addresses).
        if let Some(d) = self.dhcp.as_mut() {
            for (block, used) in d.leases.take_changed() {
                self.blocks.set_usage(block, used);
            }
        }
    }

    fn send(&mut self, dest: Dest, message: Message) {
        let packet = Packet {
            node_id: self.id,
            swarm: self.cfg.range.swarm(),
            message,
        };
        // Entry lists are bounded by the block layer, so encoding cannot fail; if it ever
        // did, dropping the message is the safe choice.
        let Ok(payload) = packet.encode() else {
            error!(?packet, "message too large to encode, not sent");
            return;
        };
        let (pkg, bytes) = match dest {
            Dest::Multicast => (Counter::McastSendPkg, Counter::McastSendByte),
            Dest::Unicast(_) => (Counter::DirectSendPkg, Counter::DirectSendByte),
        };
        self.counters.inc(pkg);
        self.counters.add(bytes, payload.len() as u64);
        self.transmits.push_back(Transmit { dest, payload });
    }
}

/// A node id from the server interface's MAC and two random bytes: MAC-first keeps the
/// ordering C nodes (3eefc27, `<mac>0000`) use, the random bytes keep cloned MACs apart.
pub fn derive_node_id(mac: [u8; 6], random: [u8; 2]) -> NodeId {
    let mut id = [0u8; 8];
    id[..6].copy_from_slice(&mac);
    id[6..].copy_from_slice(&random);
    NodeId(id)
}

/// Re-exported so the shell and the simulator need not reach into `wire`.
pub use wire::{MULTICAST_GROUP, MULTICAST_PORT, UNICAST_PORT};

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::dhcp::leases::AddrState;

    fn config() -> NodeConfig {
        NodeConfig {
            range: ManagedRange::new(Ipv4Addr::new(10, 0, 0, 0), 24, 2).unwrap(),
            claim: ClaimConfig {
                tentative_timeout: Duration::from_secs(2),
                block_timeout: Duration::from_secs(30),
                spare_leases: 4,
                needless_timeout: Duration::from_secs(60),
                learning: true,
            },
            dhcp: Some(DhcpConfig {
                options: vec![],
                interface_addr: Some(Ipv4Addr::new(10, 0, 0, 1)),
            }),
        }
    }

    fn t(s: u64) -> Instant {
        Instant::from_millis(1_000_000 + s * 1000)
    }

    fn lease(ip: [u8; 4], until: Instant) -> LeaseRecord {
        let mut chaddr = [0u8; 16];
        chaddr[..6].copy_from_slice(&[2, 0, 0, 0, 0, ip[3]]);
        LeaseRecord {
            ip: Ipv4Addr::from(ip),
            until,
            declined: false,
            client: Some(crate::dhcp::leases::ClientKey::from_slice(&[
                0, 1, 2, 0, 0, 0, 0, ip[3],
            ])),
            chaddr,
            hostname: None,
        }
    }

    /// All blocks were last announced 40 s ago (lapsed, the TTL is 30 s) except block 5,
    /// taken 15 s ago (valid for 15 s more). Block 9 holds a lease, block 12 is empty.
    fn restored(clock_went_back: bool) -> Restored {
        let ago = |s| t(0) - Duration::from_secs(s);
        Restored {
            blocks: vec![(5, ago(15)), (9, ago(3600)), (12, ago(3600))],
            announced: Some((ago(40), 30)),
            leases: vec![lease([10, 0, 0, 21], t(100)), lease([10, 0, 0, 37], t(100))],
            options: vec![(6, Some(vec![10, 0, 0, 53]))],
            holds: vec![(5, t(50))],
            clock_went_back,
        }
    }

    #[test]
    fn valid_blocks_come_back_at_once_with_their_leases() {
        let mut n = Node::new(config(), NodeId([5; 8]), t(0), 1);
        n.restore(t(0), restored(false));
        assert!(n.blocks().is_learning());
        assert_eq!(n.blocks().owned().collect::<Vec<_>>(), vec![5]);
        assert!(n.blocks().is_wanted(9));
        assert!(!n.blocks().is_wanted(12));
        let d = n.dhcp().unwrap();
        let r = d.leases.get(Ipv4Addr::new(10, 0, 0, 21)).unwrap();
        assert_eq!(r.state, AddrState::Leased { until: t(100) });
        assert!(d.leases.get(Ipv4Addr::new(10, 0, 0, 37)).is_none());
        // Block 5 was taken over from a vanished owner: its other addresses stay held.
        let r = d.leases.get(Ipv4Addr::new(10, 0, 0, 22)).unwrap();
        assert_eq!(r.state, AddrState::Held { until: t(50) });
        assert_eq!(d.store().get(6), Some(&[10, 0, 0, 53][..]));
        // Announced now, learning phase or not, after the store is told.
        let changes = n.take_changes();
        assert!(changes.contains(&Change::BlockGone { block: 12 }));
        assert!(changes.contains(&Change::Announced { at: t(0), ttl: 30 }));
        assert!(
            !changes.iter().any(|c| matches!(c, Change::Lease(_))),
            "{changes:?}"
        );
        let claim = n.poll_transmit().expect("claim sent at once");
        let p = Packet::decode(&claim.payload).unwrap();
        assert!(
            matches!(p.message, Message::UpdateClaim(ref e) if e.len() == 1 && e[0].block == 5)
        );
        // Refreshed during the learning phase, so peers do not let it lapse.
        n.handle_timeout(t(8));
        assert!(n.poll_transmit().is_some());
    }

    #[test]
    fn lapsed_blocks_are_claimed_first_and_bring_their_leases_back() {
        let mut cfg = config();
        cfg.claim.learning = false;
        let mut n = Node::new(cfg, NodeId([5; 8]), t(0), 1);
        n.restore(t(0), restored(false));
        for s in 0..=4 {
            n.handle_timeout(t(s));
        }
        assert!(
            n.blocks().owns(9),
            "{:?}",
            n.blocks().owned().collect::<Vec<_>>()
        );
        let r = n
            .dhcp()
            .unwrap()
            .leases
            .get(Ipv4Addr::new(10, 0, 0, 37))
            .unwrap();
        assert_eq!(r.state, AddrState::Leased { until: t(100) });
    }

    #[test]
    fn with_the_clock_behind_no_claim_is_trusted() {
        let mut n = Node::new(config(), NodeId([5; 8]), t(0), 1);
        n.restore(t(0), restored(true));
        assert_eq!(n.blocks().owned_count(), 0);
        assert!(n.blocks().is_wanted(5) && n.blocks().is_wanted(9));
    }
}

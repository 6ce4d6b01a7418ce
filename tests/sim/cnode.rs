//! A model of the C ddhcpd for mixed-mesh simulations, written from
//! `../shared/reference/ddhcpd-reference.md` (§3 block state machine, §4 DHCP), bugs and all:
//!
//! - whole-second clock (`time()`), housekeeping every `t/2` s *and after every multicast
//!   datagram* (§3.4), skipped entirely during the learning phase;
//! - a block is owned on the housekeeping run after its third Inquire, whatever its state
//!   by then (§3.6); new blocks are picked uniformly among the free ones;
//! - every Inquire for an owned block is answered by re-announcing the 32-entry packet
//!   holding it; an Inquire turns any non-owned, non-claiming block tentative, even one a
//!   live owner claims (§3.8); an UpdateClaim overwrites whatever is recorded, and an owner
//!   yields to an equal or greater id (§3.9);
//! - the lease table of a yielded block stays as a shadow, forwarded requests create shadow
//!   tables, and a shadow whose leases are all free resets its block to free (§3.11);
//! - DHCP per the decision table of §4.4: DISCOVER takes the first free lease of the oldest
//!   block, a REQUEST for a free address of an owned block is ACKed for anybody, roaming
//!   requests are forwarded with the address in *host* byte order (§2.7), the owner side
//!   ACKs any in-block address without checking the client or changing the record (§4.6);
//! - node id: the server MAC plus `0000` (3eefc27) or all zeros (master); nothing persists.

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, Ipv6Addr};

use ddhcp::node::{Channel, Dest, Transmit};
use ddhcp::range::ManagedRange;
use ddhcp::time::Instant;
use ddhcp::wire::{ClaimEntry, Message, NodeId, Packet, RenewPayload};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::clients::reply_option;

/// Entries per UpdateClaim packet (`UPDATE_CLAIM_MAX_BLOCKS`).
const CLAIM_MAX: usize = 32;
const OFFER_TIMEOUT: u64 = 12;
const LEASE_DELTA: u64 = 10;
const PACKET_CACHE_TIMEOUT: u64 = 120;

/// Which C daemon, and on what kind of host.
#[derive(Clone, Copy, Debug)]
pub struct CConfig {
    pub range: ManagedRange,
    pub tentative: u64,
    pub block_timeout: u64,
    pub spare: u32,
    pub learning: bool,
    pub lease_time: u32,
    /// x86, ARM, MIPS-LE: the renew address goes out byte-reversed.
    pub little_endian: bool,
    /// master (fdf26dc): node id all zeros.
    pub master: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CState {
    Free,
    Tentative,
    Claimed,
    Claiming,
    Ours,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LeaseState {
    Free,
    Offered,
    Leased,
}

#[derive(Clone, Copy, Debug)]
struct Lease {
    state: LeaseState,
    chaddr: [u8; 16],
    xid: u32,
    end: u64,
}

const FREE_LEASE: Lease = Lease {
    state: LeaseState::Free,
    chaddr: [0; 16],
    xid: 0,
    end: 0,
};

#[derive(Clone, Debug)]
struct Block {
    state: CState,
    counts: u8,
    owner: NodeId,
    owner_addr: Ipv6Addr,
    timeout: u64,
    first_claimed: u64,
    leases: Option<Vec<Lease>>,
}

/// A forwarded DHCP request waiting for the owner's answer.
struct Cached {
    xid: u32,
    chaddr: [u8; 16],
    requested: Ipv4Addr,
    ciaddr: Ipv4Addr,
    expires: u64,
}

pub struct CNode {
    pub cfg: CConfig,
    pub id: NodeId,
    pub server_id: Ipv4Addr,
    blocks: Vec<Block>,
    claiming: Vec<u32>,
    learning_until: Option<u64>,
    next_housekeeping: u64,
    /// Where in each second this node's loop wakes up (its epoll timeouts run from its
    /// own start, not from the second boundary).
    phase_ms: u64,
    rng: StdRng,
    cache: Vec<Cached>,
    transmits: VecDeque<Transmit>,
    dhcp_out: VecDeque<Vec<u8>>,
    pub inquiries_sent: u64,
    /// The most Inquires any block got before it was owned or given up.
    pub max_count: u8,
    /// (block, owned now) whenever a block enters or leaves `Ours`.
    pub ownership: VecDeque<(u32, bool)>,
}

fn secs(now: Instant) -> u64 {
    now.as_millis() / 1000
}

impl CNode {
    pub fn new(cfg: CConfig, mac: [u8; 6], server_id: Ipv4Addr, now: Instant, seed: u64) -> Self {
        let mut id = [0u8; 8];
        if !cfg.master {
            id[..6].copy_from_slice(&mac);
        }
        let n = cfg.range.num_blocks();
        let now_s = secs(now);
        let learning_until = cfg.learning.then_some(now_s + cfg.block_timeout);
        CNode {
            cfg,
            id: NodeId(id),
            server_id,
            blocks: vec![
                Block {
                    state: CState::Free,
                    counts: 0,
                    owner: NodeId([0; 8]),
                    owner_addr: Ipv6Addr::UNSPECIFIED,
                    timeout: 0,
                    first_claimed: 0,
                    leases: None,
                };
                n as usize
            ],
            claiming: Vec::new(),
            learning_until,
            next_housekeeping: learning_until.unwrap_or(now_s),
            phase_ms: now.as_millis() % 1000,
            rng: StdRng::seed_from_u64(seed),
            cache: Vec::new(),
            transmits: VecDeque::new(),
            dhcp_out: VecDeque::new(),
            ownership: VecDeque::new(),
            inquiries_sent: 0,
            max_count: 0,
        }
    }

    pub fn owned(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.blocks.len() as u32).filter(|&b| self.blocks[b as usize].state == CState::Ours)
    }

    /// The owner this node records for `block`, if it shows it as claimed.
    pub fn view(&self, block: u32) -> (CState, Option<(NodeId, Ipv6Addr)>) {
        let b = &self.blocks[block as usize];
        let owner = matches!(b.state, CState::Claimed).then_some((b.owner, b.owner_addr));
        (b.state, owner)
    }

    /// Has the blocks it wants, or sees none free to claim.
    pub fn satisfied(&self) -> bool {
        let free: u32 = self
            .owned()
            .filter_map(|b| self.blocks[b as usize].leases.as_ref())
            .map(|l| l.iter().filter(|l| l.state == LeaseState::Free).count() as u32)
            .sum();
        self.learning_until.is_none()
            && self.claiming.is_empty()
            && (free >= self.cfg.spare || !self.blocks.iter().any(|b| b.state == CState::Free))
    }

    pub fn is_learning(&self) -> bool {
        self.learning_until.is_some()
    }

    pub fn poll_timeout(&self) -> Instant {
        Instant::from_millis(self.next_housekeeping * 1000 + self.phase_ms)
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_dhcp(&mut self) -> Option<Vec<u8>> {
        self.dhcp_out.pop_front()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let now_s = secs(now);
        if now_s < self.next_housekeeping {
            return;
        }
        self.next_housekeeping = now_s + (self.cfg.tentative >> 1).max(1);
        self.learning_until = None;
        self.house_keeping(now_s);
    }

    pub fn handle_datagram(&mut self, now: Instant, channel: Channel, from: Ipv6Addr, data: &[u8]) {
        let now_s = secs(now);
        let Ok(p) = Packet::decode(data) else { return };
        if p.swarm != self.cfg.range.swarm() {
            return;
        }
        match (channel, p.message) {
            (Channel::Multicast, Message::UpdateClaim(e)) => {
                self.on_claims(now_s, p.node_id, from, &e)
            }
            (Channel::Multicast, Message::Inquire(b)) => self.on_inquire(now_s, p.node_id, &b),
            (Channel::Unicast, Message::RenewLease(r)) => self.on_renew(now_s, from, r),
            (Channel::Unicast, Message::LeaseAck(r)) => self.on_answer(now_s, r, true),
            (Channel::Unicast, Message::LeaseNak(r)) => self.on_answer(now_s, r, false),
            _ => {}
        }
        // The multicast handler always asks for housekeeping (§3.4).
        if channel == Channel::Multicast {
            self.handle_timeout_forced(now_s);
        }
    }

    fn handle_timeout_forced(&mut self, now_s: u64) {
        if now_s >= self.next_housekeeping {
            self.next_housekeeping = now_s + (self.cfg.tentative >> 1).max(1);
            self.learning_until = None;
        }
        if self.learning_until.is_none() {
            self.house_keeping(now_s);
        }
    }

    fn send(&mut self, dest: Dest, message: Message) {
        let p = Packet {
            node_id: self.id,
            swarm: self.cfg.range.swarm(),
            message,
        };
        self.transmits.push_back(Transmit {
            dest,
            payload: p.encode().expect("valid"),
        });
    }

    fn set_state(&mut self, b: u32, state: CState) {
        let was = self.blocks[b as usize].state == CState::Ours;
        self.blocks[b as usize].state = state;
        let is = state == CState::Ours;
        if was != is {
            self.ownership.push_back((b, is));
        }
    }

    fn block_free(&mut self, b: u32) {
        self.set_state(b, CState::Free);
        let blk = &mut self.blocks[b as usize];
        blk.owner = NodeId([0; 8]);
        blk.leases = None;
    }

    fn house_keeping(&mut self, now: u64) {
        self.check_timeouts(now);
        let free: u32 = self
            .blocks
            .iter()
            .filter(|b| b.state == CState::Ours)
            .filter_map(|b| b.leases.as_ref())
            .map(|l| l.iter().filter(|l| l.state == LeaseState::Free).count() as u32)
            .sum();
        let bs = self.cfg.range.block_size() as i64;
        let needed = self.cfg.spare as i64 - free as i64;
        let mut blocks_needed = needed / bs;
        if needed % bs > 0 {
            blocks_needed += 1;
        }
        // Dropping unneeded blocks (-n, default 300 s) is not modelled: runs are shorter.
        if blocks_needed > 0 {
            self.claim(blocks_needed, now);
        }
        self.update_claims(now);
        self.cache.retain(|c| c.expires >= now);
    }

    fn check_timeouts(&mut self, now: u64) {
        for b in 0..self.blocks.len() as u32 {
            let blk = &self.blocks[b as usize];
            if blk.timeout < now && blk.state != CState::Free {
                self.block_free(b);
                continue;
            }
            let ours = blk.state == CState::Ours;
            let Some(leases) = self.blocks[b as usize].leases.as_mut() else {
                continue;
            };
            for l in leases.iter_mut() {
                if l.state != LeaseState::Free && l.end < now {
                    *l = FREE_LEASE;
                }
            }
            // A shadow table whose leases are all free resets its block (§3.11).
            if !ours && leases.iter().all(|l| l.state == LeaseState::Free) {
                self.block_free(b);
            }
        }
    }

    fn claim(&mut self, mut needed: i64, now: u64) {
        let list = std::mem::take(&mut self.claiming);
        for b in list {
            if self.blocks[b as usize].counts == 3 {
                // Owned whatever its state by now (§3.6).
                self.set_state(b, CState::Ours);
                let blk = &mut self.blocks[b as usize];
                blk.leases = Some(vec![FREE_LEASE; self.cfg.range.block_size() as usize]);
                blk.first_claimed = now;
                blk.owner = self.id;
                needed -= 1;
            } else if self.blocks[b as usize].state == CState::Claiming {
                self.claiming.push(b);
            }
        }
        if needed > self.claiming.len() as i64 {
            for _ in 0..needed - self.claiming.len() as i64 {
                let free: Vec<u32> = (0..self.blocks.len() as u32)
                    .filter(|&b| self.blocks[b as usize].state == CState::Free)
                    .collect();
                if free.is_empty() {
                    break;
                }
                let b = free[self.rng.random_range(0..free.len())];
                self.set_state(b, CState::Claiming);
                let blk = &mut self.blocks[b as usize];
                blk.counts = 0;
                blk.timeout = now + self.cfg.tentative;
                self.claiming.push(b);
            }
        }
        if self.claiming.is_empty() {
            return;
        }
        let list = self.claiming.clone();
        self.send(Dest::Multicast, Message::Inquire(list.clone()));
        self.inquiries_sent += 1;
        for b in list {
            self.blocks[b as usize].counts += 1;
            self.max_count = self.max_count.max(self.blocks[b as usize].counts);
        }
    }

    fn update_claims(&mut self, now: u64) {
        let threshold = now + self.cfg.block_timeout - self.cfg.block_timeout / 4;
        let ours: Vec<u32> = self.owned().collect();
        for chunk in ours.chunks(CLAIM_MAX) {
            if !chunk
                .iter()
                .any(|&b| self.blocks[b as usize].timeout < threshold)
            {
                continue;
            }
            let entries = chunk
                .iter()
                .map(|&block| ClaimEntry {
                    block,
                    timeout: self.cfg.block_timeout as u16,
                })
                .collect();
            self.send(Dest::Multicast, Message::UpdateClaim(entries));
            for &b in chunk {
                self.blocks[b as usize].timeout = now + self.cfg.block_timeout;
            }
        }
    }

    fn on_claims(&mut self, now: u64, from: NodeId, addr: Ipv6Addr, entries: &[ClaimEntry]) {
        for e in entries {
            let b = e.block;
            if b as usize >= self.blocks.len() {
                continue;
            }
            if self.blocks[b as usize].state == CState::Ours && from < self.id {
                self.blocks[b as usize].timeout = 0;
                self.update_claims(now);
            } else {
                self.set_state(b, CState::Claimed);
                let blk = &mut self.blocks[b as usize];
                blk.timeout = now + u64::from(e.timeout);
                blk.owner_addr = addr;
                blk.owner = from;
            }
        }
    }

    fn on_inquire(&mut self, now: u64, from: NodeId, blocks: &[u32]) {
        for &b in blocks {
            if b as usize >= self.blocks.len() {
                continue;
            }
            match self.blocks[b as usize].state {
                CState::Ours => {
                    self.blocks[b as usize].timeout = 0;
                    self.update_claims(now);
                }
                CState::Claiming => {
                    if from > self.id {
                        self.set_state(b, CState::Tentative);
                        self.blocks[b as usize].timeout = now + self.cfg.tentative;
                    }
                }
                _ => {
                    self.set_state(b, CState::Tentative);
                    self.blocks[b as usize].timeout = now + self.cfg.tentative;
                }
            }
        }
    }

    /// The renew address field as this host writes and reads it.
    fn host_order(&self, ip: Ipv4Addr) -> [u8; 4] {
        let mut o = ip.octets();
        if self.cfg.little_endian {
            o.reverse();
        }
        o
    }

    /// 0: in one of our blocks, 1: in range but not ours, 2: out of range
    /// (`find_lease_from_address`).
    fn find(&self, ip: Ipv4Addr) -> (u8, u32, u32) {
        match self.cfg.range.locate(ip) {
            None => (2, 0, 0),
            Some((b, j)) if self.blocks[b as usize].state == CState::Ours => (0, b, j),
            Some((b, j)) => (1, b, j),
        }
    }

    fn on_renew(&mut self, now: u64, from: Ipv6Addr, r: RenewPayload) {
        let ip = Ipv4Addr::from(self.host_order(Ipv4Addr::from(r.address)));
        let answer = match self.find(ip) {
            (0, b, j) => {
                let lt = u64::from(self.cfg.lease_time);
                if let Some(l) = self.blocks[b as usize].leases.as_mut() {
                    l[j as usize].end = now + lt + LEASE_DELTA;
                }
                Message::LeaseAck(r)
            }
            (1, _, _) => Message::LeaseNak(r),
            _ => return,
        };
        self.send(Dest::Unicast(from), answer);
    }

    fn on_answer(&mut self, now: u64, r: RenewPayload, ack: bool) {
        let Some(pos) = self
            .cache
            .iter()
            .position(|c| c.xid == r.xid && c.chaddr == r.chaddr)
        else {
            return;
        };
        let c = self.cache.remove(pos);
        if !ack {
            self.reply(6, c.xid, c.chaddr, Ipv4Addr::UNSPECIFIED, c.ciaddr);
            return;
        }
        let (found, b, j) = self.find(c.requested);
        if found != 1 {
            return;
        }
        let lt = u64::from(self.cfg.lease_time);
        if let Some(l) = self.blocks[b as usize].leases.as_mut() {
            l[j as usize] = Lease {
                state: LeaseState::Leased,
                chaddr: c.chaddr,
                xid: c.xid,
                end: now + lt + LEASE_DELTA,
            };
        }
        self.reply(5, c.xid, c.chaddr, c.requested, c.ciaddr);
    }

    /// A DHCP datagram from a client (simulated clients send well-formed ones).
    pub fn handle_dhcp(&mut self, now: Instant, data: &[u8]) {
        let now_s = secs(now);
        if data.len() < 240 {
            return;
        }
        let xid = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
        let ciaddr = Ipv4Addr::new(data[12], data[13], data[14], data[15]);
        let mut chaddr = [0u8; 16];
        chaddr.copy_from_slice(&data[28..44]);
        let Some(&[t]) = reply_option(data, 53) else {
            return;
        };
        let requested = reply_option(data, 50)
            .and_then(|o| <[u8; 4]>::try_from(o).ok())
            .map(Ipv4Addr::from);
        match t {
            1 => self.discover(now_s, xid, chaddr),
            3 => self.request(now_s, xid, chaddr, ciaddr, requested),
            7 => {
                if let (0, b, j) = self.find(ciaddr)
                    && let Some(l) = self.blocks[b as usize].leases.as_mut()
                    && l[j as usize].chaddr == chaddr
                {
                    l[j as usize] = FREE_LEASE;
                }
            }
            _ => {}
        }
    }

    fn discover(&mut self, now: u64, xid: u32, chaddr: [u8; 16]) {
        let Some(b) = self
            .owned()
            .filter(|&b| {
                self.blocks[b as usize]
                    .leases
                    .as_ref()
                    .is_some_and(|l| l.iter().any(|l| l.state == LeaseState::Free))
            })
            .min_by_key(|&b| self.blocks[b as usize].first_claimed)
        else {
            return;
        };
        let leases = self.blocks[b as usize].leases.as_mut().expect("owned");
        let j = leases
            .iter()
            .position(|l| l.state == LeaseState::Free)
            .expect("has a free lease");
        leases[j] = Lease {
            state: LeaseState::Offered,
            chaddr,
            xid,
            end: now + OFFER_TIMEOUT,
        };
        let ip = self.cfg.range.address(b, j as u32);
        self.reply(2, xid, chaddr, ip, Ipv4Addr::UNSPECIFIED);
    }

    fn request(
        &mut self,
        now: u64,
        xid: u32,
        chaddr: [u8; 16],
        ciaddr: Ipv4Addr,
        requested: Option<Ipv4Addr>,
    ) {
        let lt = u64::from(self.cfg.lease_time);
        let requested = requested.or((ciaddr != Ipv4Addr::UNSPECIFIED).then_some(ciaddr));
        let Some(ip) = requested else {
            // Case A: the offer with this xid and chaddr.
            for b in self.owned().collect::<Vec<_>>() {
                let leases = self.blocks[b as usize].leases.as_mut().expect("owned");
                if let Some(j) = leases.iter().position(|l| {
                    l.state == LeaseState::Offered && l.xid == xid && l.chaddr == chaddr
                }) {
                    leases[j].state = LeaseState::Leased;
                    leases[j].end = now + lt + LEASE_DELTA;
                    let ip = self.cfg.range.address(b, j as u32);
                    self.reply(5, xid, chaddr, ip, ciaddr);
                    return;
                }
            }
            self.reply(6, xid, chaddr, Ipv4Addr::UNSPECIFIED, ciaddr);
            return;
        };
        let Some((b, j)) = self.cfg.range.locate(ip) else {
            self.reply(6, xid, chaddr, Ipv4Addr::UNSPECIFIED, ciaddr);
            return;
        };
        match self.blocks[b as usize].state {
            CState::Claimed => {
                let owner = self.blocks[b as usize].owner_addr;
                let bs = self.cfg.range.block_size() as usize;
                let leases = self.blocks[b as usize]
                    .leases
                    .get_or_insert_with(|| vec![FREE_LEASE; bs]);
                leases[j as usize] = Lease {
                    state: LeaseState::Offered,
                    chaddr,
                    xid,
                    end: now + lt + LEASE_DELTA,
                };
                self.cache.push(Cached {
                    xid,
                    chaddr,
                    requested: ip,
                    ciaddr,
                    expires: now + PACKET_CACHE_TIMEOUT,
                });
                let payload = RenewPayload {
                    address: self.host_order(ip),
                    xid,
                    lease_seconds: 0,
                    chaddr,
                };
                self.send(Dest::Unicast(owner), Message::RenewLease(payload));
            }
            CState::Ours => {
                let leases = self.blocks[b as usize].leases.as_mut().expect("owned");
                let l = &mut leases[j as usize];
                let offered_same = l.state == LeaseState::Offered && l.xid == xid;
                if !offered_same && l.chaddr != chaddr && l.state != LeaseState::Free {
                    self.reply(6, xid, chaddr, Ipv4Addr::UNSPECIFIED, ciaddr);
                    return;
                }
                *l = Lease {
                    state: LeaseState::Leased,
                    chaddr,
                    xid,
                    end: now + lt + LEASE_DELTA,
                };
                self.reply(5, xid, chaddr, ip, ciaddr);
            }
            _ => {
                // NAK only if block 0 is ours (`block_num_owned`, §3.14 item 2).
                if self.blocks[0].state == CState::Ours {
                    self.reply(6, xid, chaddr, Ipv4Addr::UNSPECIFIED, ciaddr);
                }
            }
        }
    }

    fn reply(
        &mut self,
        msg_type: u8,
        xid: u32,
        chaddr: [u8; 16],
        yiaddr: Ipv4Addr,
        ciaddr: Ipv4Addr,
    ) {
        let mut b = vec![0u8; 240];
        b[0] = 2;
        b[1] = 1;
        b[2] = 6;
        b[4..8].copy_from_slice(&xid.to_be_bytes());
        b[12..16].copy_from_slice(&ciaddr.octets());
        b[16..20].copy_from_slice(&yiaddr.octets());
        b[28..44].copy_from_slice(&chaddr);
        b[236..240].copy_from_slice(&[99, 130, 83, 99]);
        b.extend_from_slice(&[53, 1, msg_type]);
        if msg_type != 6 {
            b.extend_from_slice(&[54, 4]);
            b.extend_from_slice(&self.server_id.octets());
            b.extend_from_slice(&[51, 4]);
            b.extend_from_slice(&self.cfg.lease_time.to_be_bytes());
        }
        b.push(255);
        self.dhcp_out.push_back(b);
    }

    /// Addresses this node has leased or offered in its own blocks, with the client.
    pub fn leases(&self) -> HashMap<Ipv4Addr, [u8; 16]> {
        let mut out = HashMap::new();
        for b in self.owned() {
            for (j, l) in self.blocks[b as usize].leases.iter().flatten().enumerate() {
                if l.state != LeaseState::Free {
                    out.insert(self.cfg.range.address(b, j as u32), l.chaddr);
                }
            }
        }
        out
    }
}

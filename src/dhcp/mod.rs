//! The DHCPv4 server, sans-IO: leases from the blocks we own, forwarding of requests for
//! other nodes' blocks to their owners, and the owner's side of such forwards.
//!
//! Decisions follow RFC 2131 where ddhcpd does not (reference §4.11): clients are looked up
//! so they keep their address, the server identifier is checked, relays are answered through
//! `giaddr`, DECLINE quarantines, NAKs carry the server identifier, and an owner checks
//! the client of a forwarded renewal against its record instead of acknowledging anything.

pub mod leases;
pub mod options;
pub mod packet;
pub mod roaming;

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4};
use std::time::Duration;

use tracing::{debug, warn};

use crate::blocks::Blocks;
use crate::config::DhcpOption;
use crate::persist::Change;
use crate::range::ManagedRange;
use crate::time::Instant;
use crate::wire::{Message, RenewPayload};
use leases::{AddrState, ClientKey, Expired, LeaseTable};
use options::OptionStore;
use packet::{MessageType, Request, build_reply};
use roaming::{AddrOrder, Forms, PeerOrders, RENEW_MARK};

/// How long an offered address is held for the client's REQUEST (ddhcpd: 12 s).
pub const OFFER_TIMEOUT: Duration = Duration::from_secs(12);
/// How long a declined address is kept out of use.
pub const DECLINE_HOLD: Duration = Duration::from_secs(600);
/// How long we wait for the owner's answer to a forwarded request. Shorter than any
/// client's retransmission interval, so a lost answer costs one retry, not a wrong reply.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
/// Forwarded requests waiting at once; more are dropped (the client retries).
pub const MAX_PENDING: usize = 4096;

/// Server-side extension of every lease beyond what the client is told, so the client's
/// renewal always arrives before our record expires (ddhcpd uses the same 10 s).
const LEASE_SLACK: Duration = Duration::from_secs(10);

/// What the DHCP service needs from the configuration.
#[derive(Clone, Debug, Default)]
pub struct DhcpConfig {
    pub options: Vec<DhcpOption>,
    /// The client interface's own IPv4 address: the default server identifier, and never
    /// handed out.
    pub interface_addr: Option<Ipv4Addr>,
}

/// Client-facing events: every allocation and release, for hooks and the audit log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseEvent {
    /// An ACK was sent (new lease, renewal, or a forwarded renewal answered by the owner).
    Leased {
        ip: Ipv4Addr,
        mac: String,
        client_id: Option<Vec<u8>>,
        hostname: Option<String>,
        seconds: u32,
        forwarded: bool,
    },
    Released {
        ip: Ipv4Addr,
        mac: String,
    },
    Expired {
        ip: Ipv4Addr,
        mac: String,
    },
    Declined {
        ip: Ipv4Addr,
        mac: String,
    },
}

/// A datagram for a client (or its relay).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DhcpTransmit {
    pub to: SocketAddrV4,
    pub payload: Vec<u8>,
}

/// A request waiting for the owner's LeaseAck / LeaseNak.
struct Pending {
    request: Request,
    ip: Ipv4Addr,
    deadline: Instant,
    owner: Ipv6Addr,
    /// False while the owner's byte order is being probed.
    sent: bool,
}

/// Counters of the DHCP path, by message and outcome.
#[derive(Clone, Debug, Default)]
pub struct DhcpCounters {
    pub recv: [u64; 9],
    pub sent: [u64; 9],
    pub malformed: u64,
    pub ignored_other_server: u64,
    pub no_free_address: u64,
    pub forwarded: u64,
    pub forward_acked: u64,
    pub forward_naked: u64,
    pub forward_timeouts: u64,
    pub forward_dropped: u64,
    pub renew_acked: u64,
    pub renew_naked: u64,
    /// Unmarked renewals readable two ways that nothing decided (not answered).
    pub renew_unresolved: u64,
    pub silent_unknown_block: u64,
}

/// The DHCP service of one node.
pub struct Dhcp {
    range: ManagedRange,
    store: OptionStore,
    interface_addr: Option<Ipv4Addr>,
    pub leases: LeaseTable,
    pending: HashMap<(u32, [u8; 16]), Pending>,
    pending_order: VecDeque<(Instant, u32, [u8; 16])>,
    transmits: VecDeque<DhcpTransmit>,
    forwards: VecDeque<(Ipv6Addr, Message)>,
    /// How each peer reads renew addresses.
    pub orders: PeerOrders,
    events: VecDeque<LeaseEvent>,
    pub counters: DhcpCounters,
    /// New clients since the demand was last sampled (for claiming ahead).
    allocations: u64,
    /// Clients we had no address for, with when they were first counted: each counts once
    /// per demand window, however often it retransmits.
    starved: HashMap<ClientKey, Instant>,
    /// Options changed at run time since the last [`Dhcp::take_changes`].
    option_changes: Vec<(u8, Option<Vec<u8>>)>,
}

/// Where a reply goes (RFC 2131 §4.1).
fn destination(req: &Request, msg_type: MessageType) -> SocketAddrV4 {
    let bcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, 68);
    if req.giaddr != Ipv4Addr::UNSPECIFIED {
        SocketAddrV4::new(req.giaddr, 67)
    } else if msg_type == MessageType::Nak {
        bcast
    } else if req.ciaddr != Ipv4Addr::UNSPECIFIED {
        SocketAddrV4::new(req.ciaddr, 68)
    } else {
        // Unicast to yiaddr would need an ARP entry for a host without an address yet;
        // broadcast reaches every client implementation.
        bcast
    }
}

impl Dhcp {
    pub fn new(cfg: &DhcpConfig, range: ManagedRange) -> Self {
        let mut d = Dhcp {
            range,
            store: OptionStore::new(&cfg.options, &range, cfg.interface_addr),
            interface_addr: cfg.interface_addr,
            leases: LeaseTable::new(range),
            pending: HashMap::new(),
            pending_order: VecDeque::new(),
            transmits: VecDeque::new(),
            forwards: VecDeque::new(),
            orders: PeerOrders::default(),
            events: VecDeque::new(),
            counters: DhcpCounters::default(),
            allocations: 0,
            starved: HashMap::new(),
            option_changes: Vec::new(),
        };
        d.refresh_reservations();
        d
    }

    pub fn store(&self) -> &OptionStore {
        &self.store
    }

    /// Whether [`Dhcp::take_demand`] has anything to count or to forget.
    pub fn demand_pending(&self) -> bool {
        self.allocations > 0 || !self.starved.is_empty()
    }

    /// New clients (served, or starved and not counted within `window`) since the last
    /// call, for claiming ahead.
    pub fn take_demand(&mut self, now: Instant, window: Duration) -> u64 {
        // A pure filter: the order of the visit reaches nothing.
        #[allow(clippy::disallowed_methods)]
        self.starved
            .retain(|_, at| now.saturating_since(*at) < window);
        std::mem::take(&mut self.allocations)
    }

    pub fn poll_transmit(&mut self) -> Option<DhcpTransmit> {
        self.transmits.pop_front()
    }

    /// Peer messages to send: `(owner address, message)`.
    pub fn poll_forward(&mut self) -> Option<(Ipv6Addr, Message)> {
        self.forwards.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<LeaseEvent> {
        self.events.pop_front()
    }

    /// The server identifier we put in replies and compare REQUESTs against.
    pub fn server_id(&self) -> Option<Ipv4Addr> {
        self.store.ipv4(options::SERVER_ID).or(self.interface_addr)
    }

    /// A block became ours: serve from it. `hold`: its previous owner vanished and its
    /// clients' leases may run until then.
    pub fn block_owned(&mut self, block: u32, now: Instant, hold: Option<Instant>) {
        self.leases.add_block(block, now, hold);
    }

    /// Sets an option at run time (already validated); reserved addresses follow it.
    pub fn set_option(&mut self, o: crate::config::DhcpOption) {
        self.option_changes.push((o.code, Some(o.payload.clone())));
        self.store.set(o);
        self.refresh_reservations();
    }

    /// Removes an option at run time; false if it was not set.
    pub fn remove_option(&mut self, code: u8) -> bool {
        let removed = self.store.remove(code);
        if removed {
            self.option_changes.push((code, None));
        }
        self.refresh_reservations();
        removed
    }

    /// Applies options changed at run time before a restart, on top of the command line's.
    pub fn restore_options(&mut self, options: &[(u8, Option<Vec<u8>>)]) {
        for (code, payload) in options {
            match payload {
                Some(p) => self.store.set(crate::config::DhcpOption {
                    code: *code,
                    payload: p.clone(),
                }),
                None => {
                    self.store.remove(*code);
                }
            }
        }
        self.refresh_reservations();
    }

    /// Serves again from a block we owned before a restart; `hold`: as for
    /// [`Dhcp::block_owned`], if the hold has not run out.
    pub fn restore_block(&mut self, block: u32, since: Instant, hold: Option<Instant>) {
        self.leases.add_block(block, since, hold);
    }

    /// Durable changes since the last call: run-time options, then bindings.
    pub fn take_changes(&mut self, out: &mut Vec<Change>) {
        for (code, payload) in self.option_changes.drain(..) {
            out.push(Change::Option { code, payload });
        }
        self.leases.take_dirty(out);
    }

    /// Reserves the addresses the options name (and our own), in blocks we own now and
    /// later.
    fn refresh_reservations(&mut self) {
        let mut reserved = self.store.reserved_addresses(&self.range);
        reserved.extend(self.interface_addr);
        for ip in self.leases.set_reserved(reserved) {
            warn!(%ip, "address named in an option is leased to a client; reserved once it is free");
        }
    }

    /// How long leases may outlive their owner's claim: our lease time plus slack (we
    /// assume the mesh uses one lease time, as Gluon configures it).
    pub fn lease_horizon(&self) -> Duration {
        self.lease_duration() + LEASE_SLACK
    }

    /// A block is no longer ours.
    pub fn block_gone(&mut self, block: u32) {
        self.leases.remove_block(block);
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        let p = self.pending_order.front().map(|&(d, _, _)| d);
        match (self.leases.next_deadline(), p) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        for e in self.leases.expire(now) {
            match e {
                Expired::Lease { ip, chaddr } => {
                    let mac = packet::mac_text(&chaddr, 6);
                    debug!(%ip, %mac, "lease expired");
                    self.events.push_back(LeaseEvent::Expired { ip, mac });
                }
                Expired::Offer { ip } => debug!(%ip, "offer expired"),
                Expired::Quarantine { ip } => debug!(%ip, "declined address usable again"),
                Expired::Hold { ip } => debug!(%ip, "held address of a vanished owner released"),
            }
        }
        while let Some(&(d, xid, chaddr)) = self.pending_order.front() {
            if d > now {
                break;
            }
            self.pending_order.pop_front();
            if self
                .pending
                .get(&(xid, chaddr))
                .is_some_and(|p| p.deadline <= now)
            {
                if let Some(p) = self.pending.remove(&(xid, chaddr)) {
                    self.orders.forget(p.owner);
                }
                self.counters.forward_timeouts += 1;
                debug!(xid, "owner did not answer a forwarded request in time");
            }
        }
    }

    fn lease_duration(&self) -> Duration {
        Duration::from_secs(u64::from(self.store.lease_time()))
    }

    /// A datagram from a client (or relay) on the client interface.
    pub fn handle_packet(&mut self, now: Instant, blocks: &Blocks, data: &[u8]) {
        let req = match Request::parse(data) {
            Ok(r) => r,
            Err(e) => {
                self.counters.malformed += 1;
                debug!(error = %e, "malformed DHCP packet");
                return;
            }
        };
        self.counters.recv[req.msg_type as usize] += 1;
        match req.msg_type {
            MessageType::Discover => self.discover(now, &req),
            MessageType::Request => self.request(now, blocks, req),
            MessageType::Release => self.release(blocks, &req),
            MessageType::Decline => self.decline(now, &req),
            MessageType::Inform => self.inform(&req),
            other => debug!(?other, "not a client message, ignored"),
        }
    }

    fn key(req: &Request) -> ClientKey {
        ClientKey::new(req.client_id.as_deref(), req.htype, req.hwaddr())
    }

    fn discover(&mut self, now: Instant, req: &Request) {
        let key = Self::key(req);
        let usable = |t: &LeaseTable, ip: Ipv4Addr| {
            t.get(ip).is_some_and(|r| {
                matches!(
                    r.state,
                    AddrState::Free | AddrState::Offered { .. } | AddrState::Leased { .. }
                ) && r.client.as_ref().is_none_or(|c| *c == key)
            })
        };
        let ip = self
            .leases
            .address_of(&key)
            .filter(|&ip| usable(&self.leases, ip))
            .or_else(|| {
                req.requested_ip.filter(|&ip| {
                    usable(&self.leases, ip)
                        && self
                            .leases
                            .get(ip)
                            .is_some_and(|r| r.state == AddrState::Free)
                })
            })
            .or_else(|| {
                let ip = self.leases.pick_free();
                // A client counted while starved is not counted again when served.
                if ip.is_some() && !self.starved.contains_key(&key) {
                    self.allocations += 1;
                }
                ip
            });
        let Some(ip) = ip else {
            // Demand too, but once per client per sample: a starved client retransmits
            // every few seconds and would otherwise inflate the figure without bound.
            self.counters.no_free_address += 1;
            if self.starved.len() < MAX_PENDING && !self.starved.contains_key(&key) {
                self.starved.insert(key, now);
                self.allocations += 1;
            }
            debug!(mac = %req.mac_text(), "no free address to offer yet");
            return;
        };
        // A client re-discovering while its lease runs keeps the lease; otherwise the
        // address is held for the offer.
        let state = match self.leases.get(ip).map(|r| r.state) {
            Some(s @ AddrState::Leased { .. }) => s,
            _ => AddrState::Offered {
                until: now + OFFER_TIMEOUT,
            },
        };
        self.leases
            .bind(ip, key, req.chaddr, req.hostname.as_deref(), state);
        self.reply(req, MessageType::Offer, ip, self.lease_duration());
    }

    fn request(&mut self, now: Instant, blocks: &Blocks, req: Request) {
        let our_id = self.server_id();
        if let Some(sid) = req.server_id
            && Some(sid) != our_id
        {
            // SELECTING with another server: drop our offer, if any, and stay silent.
            let key = Self::key(&req);
            if let Some(ip) = self.leases.address_of(&key)
                && matches!(
                    self.leases.get(ip).map(|r| r.state),
                    Some(AddrState::Offered { .. })
                )
            {
                self.leases.release(ip);
            }
            self.counters.ignored_other_server += 1;
            return;
        }
        let key = Self::key(&req);
        let wanted = req
            .requested_ip
            .or_else(|| (req.ciaddr != Ipv4Addr::UNSPECIFIED).then_some(req.ciaddr));
        let Some(ip) = wanted.or_else(|| self.leases.address_of(&key)) else {
            self.nak(&req, "no address requested");
            return;
        };
        let Some((block, _)) = self.range.locate(ip) else {
            self.nak(&req, "address outside the managed range");
            return;
        };
        if self.leases.owns(ip) {
            let r = self.leases.get(ip).expect("owned address has a record");
            let mine = r.client.as_ref() == Some(&key);
            let ok = match r.state {
                // A free address (even one remembered for a client whose lease ran out)
                // may be taken by whoever asks for it, e.g. in INIT-REBOOT; a held one
                // only this way (it is likely the vanished owner's client coming back).
                AddrState::Free | AddrState::Held { .. } => true,
                AddrState::Offered { .. } | AddrState::Leased { .. } => mine,
                AddrState::Declined { .. } | AddrState::Reserved => false,
            };
            if !ok {
                self.nak(&req, "address bound to another client");
                return;
            }
            let lease = self.lease_duration();
            self.leases.bind(
                ip,
                key,
                req.chaddr,
                req.hostname.as_deref(),
                AddrState::Leased {
                    until: now + lease + LEASE_SLACK,
                },
            );
            self.ack(&req, ip, lease, false);
            return;
        }
        if let Some((_, owner)) = blocks.owner_of(block) {
            self.forward(now, blocks, req, ip, owner);
            return;
        }
        if blocks.is_learning() || blocks.is_pending(block, now) || blocks.is_settling(now) {
            // We may simply not have heard the owner yet, or the block is passing to the
            // holder of its bindings (a takeover): the client asks again.
            self.counters.silent_unknown_block += 1;
            return;
        }
        self.nak(&req, "nobody owns this address's block");
    }

    fn forward(
        &mut self,
        now: Instant,
        blocks: &Blocks,
        req: Request,
        ip: Ipv4Addr,
        owner: Ipv6Addr,
    ) {
        let k = (req.xid, req.chaddr);
        if !self.pending.contains_key(&k) && self.pending.len() >= MAX_PENDING {
            self.counters.forward_dropped += 1;
            return;
        }
        let deadline = now + FORWARD_TIMEOUT;
        let sent = match self.orders.forms(owner, ip, &self.range) {
            Forms::Send(forms) => {
                self.send_forms(owner, &req, &forms);
                true
            }
            Forms::Probe => {
                self.send_probe(now, owner, blocks);
                false
            }
        };
        self.pending.insert(
            k,
            Pending {
                request: req,
                ip,
                deadline,
                owner,
                sent,
            },
        );
        self.pending_order.push_back((deadline, k.0, k.1));
        self.counters.forwarded += 1;
        debug!(%ip, %owner, sent, "request forwarded to the block's owner");
    }

    fn send_forms(&mut self, owner: Ipv6Addr, req: &Request, forms: &[[u8; 4]]) {
        for &address in forms {
            let payload = RenewPayload {
                address,
                xid: req.xid,
                lease_seconds: RENEW_MARK,
                chaddr: req.chaddr,
            };
            self.forwards
                .push_back((owner, Message::RenewLease(payload)));
        }
    }

    fn send_probe(&mut self, now: Instant, peer: Ipv6Addr, blocks: &Blocks) {
        for p in self
            .orders
            .probe(now, peer, blocks, &self.range, FORWARD_TIMEOUT)
        {
            debug!(%peer, "probing the byte order of a peer's renewals");
            self.forwards.push_back((peer, Message::RenewLease(p)));
        }
    }

    /// The owner's answer to one of our forwards (or probes), from `from`.
    pub fn handle_forward_answer(&mut self, from: Ipv6Addr, payload: &RenewPayload, ack: bool) {
        if let Some(peer) = self.orders.probe_answer(from, payload) {
            self.release_waiting(peer);
            return;
        }
        let Some(p) = self.pending.remove(&(payload.xid, payload.chaddr)) else {
            debug!(xid = payload.xid, "answer matches no forwarded request");
            return;
        };
        if let Some(order) = roaming::answered_order(p.ip, payload)
            && self.orders.learn(from, order)
        {
            debug!(peer = %from, ?order, "learned how a peer reads renew addresses");
        }
        if ack {
            self.counters.forward_acked += 1;
            let mut lease = self.lease_duration();
            if payload.lease_seconds > 0 && payload.lease_seconds != RENEW_MARK {
                lease = lease.min(Duration::from_secs(u64::from(payload.lease_seconds)));
            }
            self.ack(&p.request, p.ip, lease, true);
        } else {
            self.counters.forward_naked += 1;
            self.nak(&p.request, "the block's owner refused");
        }
    }

    /// Sends the forwarded requests that waited for `peer`'s byte order.
    fn release_waiting(&mut self, peer: Ipv6Addr) {
        let mut ready = Vec::new();
        #[allow(clippy::disallowed_methods)] // sorted below, before anything is sent
        for p in self.pending.values_mut() {
            if p.owner == peer && !p.sent {
                p.sent = true;
                ready.push((p.request.clone(), p.ip));
            }
        }
        // Forwards go out in address order, the same in every run.
        ready.sort_by_key(|(r, ip)| (*ip, r.chaddr));
        for (req, ip) in ready {
            if let Forms::Send(forms) = self.orders.forms(peer, ip, &self.range) {
                self.send_forms(peer, &req, &forms);
            }
        }
    }

    /// Which address a peer's RenewLease means (see [`roaming`]); `None`: answer nothing.
    fn renew_address(
        &mut self,
        now: Instant,
        from: Ipv6Addr,
        blocks: &Blocks,
        payload: &RenewPayload,
    ) -> Option<Ipv4Addr> {
        let [net, rev] = payload.addresses();
        if payload.lease_seconds == RENEW_MARK {
            return self.range.locate(net).map(|_| net);
        }
        let in_range = |a| self.range.locate(a).is_some();
        match (in_range(net), in_range(rev)) {
            (false, false) => None,
            (true, _) if net == rev => Some(net),
            (true, false) => {
                self.orders.learn(from, AddrOrder::Network);
                Some(net)
            }
            (false, true) => {
                self.orders.learn(from, AddrOrder::Reversed);
                Some(rev)
            }
            (true, true) => {
                match self.orders.get(from) {
                    Some(AddrOrder::Network | AddrOrder::Marked) => return Some(net),
                    Some(AddrOrder::Reversed) => return Some(rev),
                    None => {}
                }
                let bound = |a| {
                    self.leases.get(a).is_some_and(|r| {
                        r.chaddr == payload.chaddr
                            && matches!(
                                r.state,
                                AddrState::Offered { .. } | AddrState::Leased { .. }
                            )
                    })
                };
                match (bound(net), bound(rev)) {
                    (true, false) => Some(net),
                    (false, true) => Some(rev),
                    _ => {
                        self.counters.renew_unresolved += 1;
                        warn!(peer = %from, "renewal readable as {net} or {rev}; learning the peer's byte order first");
                        self.send_probe(now, from, blocks);
                        None
                    }
                }
            }
        }
    }

    /// A RenewLease from `from` for an address in one of our blocks. Returns the answer.
    pub fn handle_renew(
        &mut self,
        now: Instant,
        from: Ipv6Addr,
        blocks: &Blocks,
        payload: &RenewPayload,
    ) -> Option<Message> {
        let ip = self.renew_address(now, from, blocks, payload)?;
        let mut answer = *payload;
        // A marked request learns from the answer that we are a ddhcp node: a C owner
        // would echo the mark.
        if payload.lease_seconds == RENEW_MARK {
            answer.lease_seconds = 0;
        }
        if !self.leases.owns(ip) {
            let block = self.range.locate(ip).map(|(b, _)| b);
            if blocks.is_settling(now)
                || block.is_some_and(|b| blocks.owner_of(b).is_some() || blocks.is_pending(b, now))
            {
                // The sender's view is behind: the block passed to another node (or is
                // passing). It learns that from the claims; the client asks again.
                self.counters.silent_unknown_block += 1;
                return None;
            }
            self.counters.renew_naked += 1;
            return Some(Message::LeaseNak(answer));
        }
        let r = self.leases.get(ip).expect("owned");
        let same = r.chaddr == payload.chaddr;
        let ok = match r.state {
            AddrState::Free | AddrState::Held { .. } => true,
            AddrState::Offered { .. } | AddrState::Leased { .. } => same,
            AddrState::Declined { .. } | AddrState::Reserved => false,
        };
        if !ok {
            self.counters.renew_naked += 1;
            warn!(%ip, "forwarded renewal for an address bound to another client refused");
            return Some(Message::LeaseNak(answer));
        }
        let key = match (&r.client, same) {
            (Some(k), true) => k.clone(),
            _ => ClientKey::new(None, 1, &payload.chaddr[..6]),
        };
        let lease = self.lease_duration();
        self.leases.bind(
            ip,
            key,
            payload.chaddr,
            None,
            AddrState::Leased {
                until: now + lease + LEASE_SLACK,
            },
        );
        self.counters.renew_acked += 1;
        // Our extension: tell the forwarding node how long we granted (C ignores it).
        answer.lease_seconds = match self.store.lease_time() {
            RENEW_MARK => RENEW_MARK - 1,
            t => t,
        };
        Some(Message::LeaseAck(answer))
    }

    fn release(&mut self, blocks: &Blocks, req: &Request) {
        if req.server_id.is_some_and(|s| Some(s) != self.server_id()) {
            return;
        }
        let ip = req.ciaddr;
        let key = Self::key(req);
        if self.leases.owns(ip) {
            if self.leases.get(ip).and_then(|r| r.client.as_ref()) == Some(&key) {
                self.leases.release(ip);
                let mac = req.mac_text();
                debug!(%ip, %mac, "lease released");
                self.events.push_back(LeaseEvent::Released { ip, mac });
            } else {
                debug!(%ip, "RELEASE from a client that does not hold the address");
            }
        } else if let Some((b, _)) = self.range.locate(ip)
            && blocks.owner_of(b).is_some()
        {
            // The C protocol cannot carry a release (reference §2.11.1); the owner lets
            // the lease run out.
            debug!(%ip, "RELEASE for another node's block; owner keeps it until expiry");
        }
    }

    fn decline(&mut self, now: Instant, req: &Request) {
        if req.server_id.is_some_and(|s| Some(s) != self.server_id()) {
            return;
        }
        let Some(ip) = req.requested_ip else { return };
        let key = Self::key(req);
        if self.leases.owns(ip) && self.leases.get(ip).and_then(|r| r.client.as_ref()) == Some(&key)
        {
            let mac = req.mac_text();
            warn!(%ip, %mac, "client declined the address (in use by somebody else); quarantined");
            self.leases.decline(ip, now, DECLINE_HOLD);
            self.events.push_back(LeaseEvent::Declined { ip, mac });
        }
    }

    fn inform(&mut self, req: &Request) {
        self.reply(req, MessageType::Ack, Ipv4Addr::UNSPECIFIED, Duration::ZERO);
    }

    fn ack(&mut self, req: &Request, ip: Ipv4Addr, lease: Duration, forwarded: bool) {
        self.reply(req, MessageType::Ack, ip, lease);
        let mac = req.mac_text();
        let seconds = lease.as_secs() as u32;
        debug!(%ip, %mac, seconds, forwarded, "ACK");
        self.events.push_back(LeaseEvent::Leased {
            ip,
            mac,
            client_id: req.client_id.clone(),
            hostname: req.hostname.clone(),
            seconds,
            forwarded,
        });
    }

    fn nak(&mut self, req: &Request, why: &str) {
        debug!(mac = %req.mac_text(), why, "NAK");
        let sid = self.server_id().map(|a| a.octets());
        let mut opts: Vec<(u8, &[u8])> = Vec::new();
        if let Some(s) = &sid {
            opts.push((options::SERVER_ID, s));
        }
        opts.push((options::MESSAGE, why.as_bytes()));
        let payload = build_reply(req, MessageType::Nak, Ipv4Addr::UNSPECIFIED, &opts);
        self.counters.sent[MessageType::Nak as usize] += 1;
        self.transmits.push_back(DhcpTransmit {
            to: destination(req, MessageType::Nak),
            payload,
        });
    }

    /// OFFER, ACK or INFORM's ACK: server id, lease time (not for INFORM), subnet mask,
    /// then what the client asked for in its order.
    fn reply(&mut self, req: &Request, msg_type: MessageType, yiaddr: Ipv4Addr, lease: Duration) {
        let lease_bytes = (lease.as_secs() as u32).to_be_bytes();
        let sid = self.server_id().map(|a| a.octets());
        let mut opts: Vec<(u8, &[u8])> = Vec::with_capacity(8 + req.parameter_list.len());
        if let Some(s) = &sid {
            opts.push((options::SERVER_ID, s));
        }
        if yiaddr != Ipv4Addr::UNSPECIFIED {
            opts.push((options::LEASE_TIME, &lease_bytes));
        }
        if let Some(m) = self.store.get(options::SUBNET_MASK) {
            opts.push((options::SUBNET_MASK, m));
        }
        for &code in &req.parameter_list {
            if code == options::LEASE_TIME || code == options::SERVER_ID {
                continue;
            }
            if let Some(p) = self.store.get(code) {
                opts.push((code, p));
            }
        }
        let payload = build_reply(req, msg_type, yiaddr, &opts);
        self.counters.sent[msg_type as usize] += 1;
        self.transmits.push_back(DhcpTransmit {
            to: destination(req, msg_type),
            payload,
        });
    }

    /// Leases for `ddhcpctl leases`: every offered or leased address.
    pub fn lease_list(&self, now: Instant) -> Vec<(Ipv4Addr, String, &'static str, u64, u32)> {
        let mut v: Vec<_> = self
            .leases
            .iter()
            .filter_map(|(ip, block, r)| {
                let (state, until) = match r.state {
                    AddrState::Offered { until } => ("offered", until),
                    AddrState::Leased { until } => ("leased", until),
                    _ => return None,
                };
                Some((
                    ip,
                    packet::mac_text(&r.chaddr, 6),
                    state,
                    now.until(until).as_secs(),
                    block,
                ))
            })
            .collect();
        v.sort_by_key(|l| l.0);
        v
    }
}

#[cfg(test)]
mod tests;

//! One pool: a managed range, its block table and the service that hands out its addresses.
//!
//! A node runs several pools on one server link (a DHCP network here, addresses for the
//! host or for provisioning scripts there), and every pool runs the same claim engine
//! ([`Blocks`]). What differs is the *service*: it decides how many free addresses the pool
//! wants, which blocks are in use and what a forwarded renewal is answered with. The glue
//! between the two lives here, so [`crate::node::Node`] only demultiplexes.
//!
//! The service is an enum, not a trait object: the simulator and the fuzzers see every
//! service's state, and a match costs nothing on the packet path.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use rand::Rng;
use tracing::{info, warn};

use crate::blocks::{BlockEvent, BlockView, Blocks, ClaimConfig, Output as BlockOutput};
use crate::dhcp::{Dhcp, DhcpConfig, DhcpTransmit};
use crate::persist::{Change, LeaseRecord, Restored};
use crate::range::ManagedRange;
use crate::replica::BlockReplica;
use crate::stats::{Counter, Counters};
use crate::time::Instant;
use crate::wire::{ClaimEntry, Message, NodeId, RenewPayload, Swarm};

/// What a pool serves. `Local` and `Api` come with the local address mode and the
/// allocation API.
#[derive(Clone, Debug)]
pub enum ServiceConfig {
    /// DHCP clients on a client interface.
    Dhcp(DhcpConfig),
    /// Addresses for this host (`use=local`).
    Local(crate::local::LocalConfig),
    /// Addresses for provisioning scripts (`use=api`).
    Api(crate::api::ApiConfig),
    /// No service (`-S`, or a pool of another location): the pool learns the claims of
    /// its range and keeps `spare_leases` addresses' worth of blocks (zero for `-S`, as
    /// ddhcpd; the simulator uses it to exercise claiming alone).
    Passive,
}

/// One pool as the node is configured with it.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// Unique on the node; the store and the control socket know the pool by it.
    pub name: String,
    pub range: ManagedRange,
    /// Timers are the node's; `spare_leases` is the pool's own.
    pub claim: ClaimConfig,
    pub service: ServiceConfig,
    /// Only nodes of this location claim in the pool; `None`: every node.
    pub location: Option<String>,
}

impl PoolConfig {
    /// The pool `-N/-b/-c/-o` describe.
    pub fn default_pool(range: ManagedRange, claim: ClaimConfig, dhcp: Option<DhcpConfig>) -> Self {
        PoolConfig {
            name: "default".into(),
            range,
            claim,
            service: dhcp.map_or(ServiceConfig::Passive, ServiceConfig::Dhcp),
            location: None,
        }
    }

    /// `"dhcp"` or `"none"`, for `status`.
    pub fn use_name(&self) -> &'static str {
        match self.service {
            ServiceConfig::Dhcp(_) | ServiceConfig::Passive => "dhcp",
            ServiceConfig::Local(_) => "local",
            ServiceConfig::Api(_) => "api",
        }
    }
}

/// The running service of a pool.
pub enum Service {
    Dhcp(Box<Dhcp>),
    Local(Box<crate::local::Local>),
    Api(Box<crate::api::Api>),
    Passive,
}

/// What a pool produced, in order, for the node to put on its output queue.
pub(crate) enum PoolOutput {
    Peer(crate::node::Dest, Message),
    Dhcp(DhcpTransmit),
    Host(crate::local::HostAction),
    Event(crate::node::Event),
    /// A deferred answer to query `id` (an allocation that waited for room).
    Answer(u64, crate::api::ApiAnswer),
}

/// How fast new clients arrive, to claim blocks before they are needed: new addresses
/// handed out per claim round, over the last claim time.
#[derive(Debug, Default)]
struct Demand {
    since: Instant,
    rounds: VecDeque<u64>,
}

pub struct Pool {
    index: usize,
    /// This node's id (allocations record it).
    pub(crate) me: NodeId,
    cfg: PoolConfig,
    /// Whether this node may claim in the pool (its location matches).
    claims: bool,
    blocks: Blocks,
    service: Service,
    demand: Demand,
    counters: Counters,
    /// Durable changes not yet handed to the store.
    changes: Vec<Change>,
    out: Vec<PoolOutput>,
    /// Leases from before a restart in blocks whose claims lapsed meanwhile, by block,
    /// until we own the block again or someone else does.
    pending_restore: BTreeMap<u32, Vec<LeaseRecord>>,
    /// The local service's stored addresses in such blocks, likewise.
    pending_local: BTreeMap<u32, Vec<(Ipv4Addr, crate::persist::LocalHeld)>>,
    /// When `pending_restore` is next checked (once per claim round, not per timer).
    next_restore_check: Instant,
    /// When the store was last told we announced (see [`Pool::drain`]).
    announced_stored: Option<Instant>,
    /// Blocks whose owner's claim lapsed, and blocks we lost, since the node last looked
    /// (takeover and handover, docs/replication.md).
    lapsed: Vec<(u32, NodeId)>,
    lost: Vec<(u32, NodeId, Vec<Change>)>,
    /// Holds that come with bindings adopted from a replica, for when the block is ours.
    pending_hold: BTreeMap<u32, Instant>,
}

impl Pool {
    /// `location` is the node's. A pool of another location learns claims and claims
    /// nothing: its service is passive and it keeps no spare addresses.
    pub fn new(
        index: usize,
        mut cfg: PoolConfig,
        location: Option<&str>,
        me: NodeId,
        now: Instant,
    ) -> Self {
        let claims = cfg.location.as_deref().is_none_or(|l| location == Some(l));
        if !claims {
            cfg.claim.spare_leases = 0;
        }
        let service = match &cfg.service {
            ServiceConfig::Dhcp(d) if claims => Service::Dhcp(Box::new(Dhcp::new(d, cfg.range))),
            ServiceConfig::Local(l) if claims => {
                // The service says how many free addresses it wants (free_wanted).
                cfg.claim.spare_leases = 0;
                Service::Local(Box::new(crate::local::Local::new(l.clone(), cfg.range)))
            }
            ServiceConfig::Api(a) if claims => {
                cfg.claim.spare_leases = 0;
                Service::Api(Box::new(crate::api::Api::new(
                    a.clone(),
                    cfg.range,
                    &cfg.name,
                )))
            }
            _ => Service::Passive,
        };
        let mut blocks = Blocks::new(cfg.claim.clone(), cfg.range, now);
        if let Service::Local(l) = &service {
            blocks.set_excluded(l.excluded_blocks());
        }
        let mut pool = Pool {
            index,
            me,
            blocks,
            service,
            claims,
            cfg,
            demand: Demand {
                since: now,
                rounds: VecDeque::new(),
            },
            counters: Counters::default(),
            changes: Vec::new(),
            out: Vec::new(),
            pending_restore: BTreeMap::new(),
            pending_local: BTreeMap::new(),
            next_restore_check: now,
            announced_stored: None,
            lapsed: Vec::new(),
            lost: Vec::new(),
            pending_hold: BTreeMap::new(),
        };
        pool.drain(now);
        pool
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    pub fn config(&self) -> &PoolConfig {
        &self.cfg
    }

    pub fn range(&self) -> &ManagedRange {
        &self.cfg.range
    }

    pub fn swarm(&self) -> Swarm {
        self.cfg.range.swarm()
    }

    /// Whether this node claims in the pool (its location matches).
    pub fn claims(&self) -> bool {
        self.claims
    }

    pub fn blocks(&self) -> &Blocks {
        &self.blocks
    }

    pub fn service(&self) -> &Service {
        &self.service
    }

    pub fn dhcp(&self) -> Option<&Dhcp> {
        match &self.service {
            Service::Dhcp(d) => Some(d),
            _ => None,
        }
    }

    pub(crate) fn dhcp_mut(&mut self) -> Option<&mut Dhcp> {
        match &mut self.service {
            Service::Dhcp(d) => Some(d),
            _ => None,
        }
    }

    pub fn api(&self) -> Option<&crate::api::Api> {
        match &self.service {
            Service::Api(a) => Some(a),
            _ => None,
        }
    }

    pub(crate) fn api_mut(&mut self) -> Option<(&mut crate::api::Api, &mut Blocks)> {
        match &mut self.service {
            Service::Api(a) => Some((a, &mut self.blocks)),
            _ => None,
        }
    }

    pub fn local(&self) -> Option<&crate::local::Local> {
        match &self.service {
            Service::Local(l) => Some(l),
            _ => None,
        }
    }

    /// Counters of this pool's blocks (claimed, dropped, lost, invalid entries).
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn leases_active(&self) -> usize {
        self.dhcp().map_or(0, |d| d.leases.active())
    }

    pub fn blocks_view(&self, now: Instant, me: NodeId) -> Vec<BlockView> {
        self.blocks.view(now, me)
    }

    /// See [`crate::node::Node::restore`].
    pub fn restore(&mut self, now: Instant, r: Restored) {
        let range = self.cfg.range;
        let (announced, ttl) = r.announced.unwrap_or((Instant::ZERO, 0));
        let ttl = Duration::from_secs(u64::from(ttl));
        // Blocks with bindings (leases, the host's addresses, allocations) are claimed back
        // first if their claims lapsed while we were down.
        let with_leases: std::collections::HashSet<u32> = r
            .leases
            .iter()
            .map(|l| l.ip)
            .chain(r.local.iter().map(|&(ip, _)| ip))
            .chain(r.allocations.iter().map(|(ip, _)| *ip))
            .filter_map(|ip| range.locate(ip).map(|(b, _)| b))
            .collect();
        let mut owned = Vec::new();
        let mut lapsed = Vec::new();
        for &(block, since) in &r.blocks {
            if !r.clock_went_back && since.max(announced) + ttl > now {
                owned.push((block, since));
            } else if with_leases.contains(&block) && self.claims {
                lapsed.push(block);
            } else {
                self.changes.push(Change::BlockGone { block });
            }
        }
        self.blocks.restore(now, &owned, &lapsed);
        for &(block, _) in &owned {
            if self.blocks.owns(block) {
                self.out
                    .push(PoolOutput::Event(crate::node::Event::BlockClaimed {
                        pool: self.index,
                        block,
                        first: range.block_first(block),
                    }));
            }
        }
        info!(
            pool = %self.cfg.name,
            valid = owned.len(),
            lapsed = lapsed.len(),
            leases = r.leases.len(),
            local = r.local.len(),
            "state restored"
        );
        match &mut self.service {
            Service::Dhcp(d) => {
                d.restore_options(&r.options);
                let holds: HashMap<u32, Instant> = r.holds.iter().copied().collect();
                for &(block, since) in &owned {
                    if self.blocks.owns(block) {
                        let hold = holds.get(&block).copied().filter(|&h| h > now);
                        d.restore_block(block, since, hold);
                    }
                }
                for lease in d.leases.restore(r.leases) {
                    match range.locate(lease.ip) {
                        Some((b, _)) if self.blocks.is_wanted(b) => {
                            self.pending_restore.entry(b).or_default().push(lease)
                        }
                        _ => self.changes.push(Change::LeaseGone(lease.ip)),
                    }
                }
            }
            // Nothing serves the leases: they are gone; run-time options stay stored
            // for when the pool serves again.
            Service::Passive | Service::Local(_) | Service::Api(_) => {
                self.changes
                    .extend(r.leases.iter().map(|l| Change::LeaseGone(l.ip)));
            }
        }
        match &mut self.service {
            // Configured again at once, before the learning phase ends; those of blocks
            // being claimed back once they are ours.
            Service::Local(l) => {
                let (wanted, now_or_never): (Vec<_>, Vec<_>) =
                    r.local.iter().partition(|(ip, _)| {
                        range
                            .locate(*ip)
                            .is_some_and(|(b, _)| self.blocks.is_wanted(b))
                    });
                for (ip, held) in wanted {
                    if let Some((b, _)) = range.locate(ip) {
                        self.pending_local.entry(b).or_default().push((ip, held));
                    }
                }
                l.restore(now, &now_or_never, &self.blocks);
            }
            // No local service (any more, or not at this location): nothing holds them.
            Service::Dhcp(_) | Service::Passive | Service::Api(_) => self
                .changes
                .extend(r.local.iter().map(|&(ip, _)| Change::LocalGone(ip))),
        }
        match &mut self.service {
            // Pinned again at once; those of blocks another node owns now are lost.
            Service::Api(a) => {
                a.restore(now, r.allocations, r.cooling);
                for b in a.blocks_in_use() {
                    if !self.blocks.owns(b) && !self.blocks.is_wanted(b) {
                        a.block_gone(b);
                    }
                }
            }
            _ => self
                .changes
                .extend(r.allocations.iter().map(|(ip, _)| Change::AllocGone {
                    ip: *ip,
                    cooldown: None,
                })),
        }
        self.drain(now);
    }

    /// Moves the pool's durable changes, in order, to `out`.
    pub(crate) fn take_changes(&mut self, out: &mut Vec<(usize, Change)>) {
        match &mut self.service {
            Service::Dhcp(d) => d.take_changes(&mut self.changes),
            Service::Local(l) => l.take_changes(&mut self.changes),
            Service::Api(a) => a.take_changes(&mut self.changes),
            Service::Passive => {}
        }
        out.extend(self.changes.drain(..).map(|c| (self.index, c)));
    }

    pub(crate) fn take_outputs(&mut self) -> std::vec::Drain<'_, PoolOutput> {
        self.out.drain(..)
    }

    pub(crate) fn on_inquire(&mut self, now: Instant, me: NodeId, from: NodeId, blocks: &[u32]) {
        self.blocks.on_inquire(now, me, from, blocks);
        self.count_invalid();
    }

    /// What a new replica holder of our `block` needs: its bindings, as the store's records.
    pub(crate) fn block_records(&self, block: u32) -> Vec<Change> {
        match &self.service {
            Service::Dhcp(d) => d.leases.block_records(block),
            Service::Api(a) => a.block_records(block),
            Service::Passive | Service::Local(_) => Vec::new(),
        }
    }

    /// Blocks whose owner lapsed, and blocks we lost (with the winner), since the last call.
    #[allow(clippy::type_complexity)]
    pub(crate) fn take_block_news(
        &mut self,
    ) -> (Vec<(u32, NodeId)>, Vec<(u32, NodeId, Vec<Change>)>) {
        (
            std::mem::take(&mut self.lapsed),
            std::mem::take(&mut self.lost),
        )
    }

    /// Takes over `block` of a lapsed owner with the bindings we hold of it: claimed
    /// before any other block, and its bindings served again once it is ours (with the
    /// same machinery as our own bindings after a restart). False if it cannot be claimed
    /// now (another node has it or is inquiring it).
    pub(crate) fn adopt(&mut self, now: Instant, block: u32, rep: BlockReplica) -> bool {
        if self.blocks.owns(block) {
            self.merge(block, rep);
            return true;
        }
        if !self.claims || !self.blocks.want(block) {
            return false;
        }
        self.stage(now, block, rep);
        true
    }

    /// Makes `block` ours at once with `rep`'s bindings: a rebuild after a lost disk (the
    /// block was ours; `from` is the peer that took it over and is handing it back).
    pub(crate) fn take_back(
        &mut self,
        now: Instant,
        block: u32,
        rep: BlockReplica,
        from: Option<NodeId>,
    ) -> bool {
        if !self.claims {
            return false;
        }
        if self.blocks.owns(block) {
            self.merge(block, rep);
            return true;
        }
        self.stage(now, block, rep);
        if self.blocks.take_back(now, block, from) {
            true
        } else {
            self.pending_restore.remove(&block);
            self.pending_hold.remove(&block);
            if let Service::Api(a) = &mut self.service {
                a.block_gone(block);
            }
            false
        }
    }

    /// See [`Blocks::set_incumbency`].
    pub(crate) fn set_incumbency(&mut self, now: Instant, max_peer_blocks: u32, known: &[NodeId]) {
        self.blocks.set_incumbency(max_peer_blocks);
        self.blocks.seed_known(now, known);
    }

    pub(crate) fn hold_claims(&mut self, held: bool) {
        self.blocks.hold_claims(held);
    }

    pub(crate) fn hold_learning(&mut self, held: bool) {
        self.blocks.hold_learning(held);
    }

    pub(crate) fn settle_until(&mut self, until: Instant) {
        self.blocks.settle_until(until);
    }

    pub(crate) fn quarantine(&mut self, block: u32, until: Instant) {
        self.blocks.quarantine(block, until);
    }

    /// Gives `block` up at once (a rebuilding peer takes it back).
    pub(crate) fn release(&mut self, block: u32) -> bool {
        self.blocks.release(block)
    }

    /// How long bindings in another node's block may outlive its claim: the lease
    /// horizon (zero for services whose bindings do not end by themselves).
    pub(crate) fn binding_horizon(&self) -> Duration {
        match &self.service {
            Service::Dhcp(d) => d.lease_horizon(),
            _ => Duration::ZERO,
        }
    }

    /// Puts a replica's bindings where a block's restored bindings wait for the block.
    fn stage(&mut self, now: Instant, block: u32, rep: BlockReplica) {
        if let Some(h) = rep.hold.filter(|&h| h > now) {
            self.pending_hold.insert(block, h);
        }
        match &mut self.service {
            Service::Dhcp(_) => {
                let live = rep.leases.into_values().filter(|l| l.until > now);
                self.pending_restore.entry(block).or_default().extend(live);
            }
            Service::Api(a) => a.restore(
                now,
                rep.allocations.into_iter().collect(),
                rep.cooling.into_iter().collect(),
            ),
            Service::Local(_) | Service::Passive => {}
        }
    }

    /// Bindings another node made in a block we own now: each is taken unless it
    /// conflicts with one of ours. Returns the conflicts.
    pub(crate) fn merge(&mut self, block: u32, rep: BlockReplica) -> usize {
        let mut conflicts = 0;
        match &mut self.service {
            Service::Dhcp(d) => {
                for l in rep.leases.into_values() {
                    let ip = l.ip;
                    if !d.leases.adopt(l) {
                        warn!(%ip, block, "a handed-over lease conflicts with ours; ours stays");
                        conflicts += 1;
                    }
                }
            }
            Service::Api(a) => {
                for (ip, alloc) in rep.allocations {
                    if !a.adopt(ip, alloc) {
                        warn!(%ip, block, "a handed-over allocation conflicts with ours; ours stays");
                        conflicts += 1;
                    }
                }
            }
            Service::Local(_) | Service::Passive => {}
        }
        conflicts
    }

    pub(crate) fn on_claim(
        &mut self,
        now: Instant,
        me: NodeId,
        from: NodeId,
        addr: Ipv6Addr,
        entries: &[ClaimEntry],
    ) {
        self.blocks.on_claim(now, me, from, addr, entries);
        self.count_invalid();
    }

    fn count_invalid(&mut self) {
        let invalid = std::mem::take(&mut self.blocks.invalid_entries);
        self.counters.add(Counter::DropInvalidBlock, invalid);
    }

    /// A forwarded renewal for an address of this pool; the answer, if any.
    pub(crate) fn on_renew(
        &mut self,
        now: Instant,
        from: Ipv6Addr,
        p: &RenewPayload,
    ) -> Option<Message> {
        match &mut self.service {
            Service::Dhcp(d) => d.handle_renew(now, from, &self.blocks, p),
            // Without a DHCP service no lease is ours: as ddhcpd, refuse what is in range
            // and ignore the rest.
            Service::Passive | Service::Local(_) | Service::Api(_) => {
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
        }
    }

    /// The owner's answer to a renewal we forwarded; false if nothing here asked.
    pub(crate) fn on_forward_answer(
        &mut self,
        from: Ipv6Addr,
        p: &RenewPayload,
        ack: bool,
    ) -> bool {
        let Service::Dhcp(d) = &mut self.service else {
            return false;
        };
        d.handle_forward_answer(from, p, ack);
        true
    }

    pub(crate) fn handle_dhcp(&mut self, now: Instant, data: &[u8]) {
        if let Service::Dhcp(d) = &mut self.service {
            d.handle_packet(now, &self.blocks, data);
        }
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant, rng: &mut impl Rng) {
        match &mut self.service {
            Service::Dhcp(d) => d.handle_timeout(now),
            Service::Local(l) => l.handle_timeout(now, &self.blocks),
            Service::Api(a) => a.handle_timeout(now, self.me, &mut self.blocks),
            Service::Passive => {}
        }
        self.sample_demand(now);
        self.blocks.handle_timeout(now, rng);
        self.drain(now);
        self.forget_lost_restores(now);
    }

    pub(crate) fn announce_all(&mut self, now: Instant) {
        self.blocks.announce_all(now);
    }

    pub fn poll_timeout(&self) -> Instant {
        let mut b = self.blocks.poll_timeout();
        let round = self.cfg.claim.round_interval();
        // Demand is sampled once per round while there is any to sample or to decay, and
        // restored bindings are checked once per round while some wait for their block.
        let demand = match &self.service {
            Service::Dhcp(d) => d.demand_pending(),
            Service::Api(a) => a.demand_pending(),
            Service::Local(_) | Service::Passive => false,
        };
        if demand || self.demand.rounds.iter().any(|&n| n > 0) {
            b = b.min(self.demand.since + round);
        }
        let api_waiting = self
            .api()
            .is_some_and(|a| a.count() + a.cooling_count() > 0);
        if !self.pending_restore.is_empty() || !self.pending_local.is_empty() || api_waiting {
            b = b.min(self.next_restore_check);
        }
        let s = match &self.service {
            Service::Dhcp(d) => d.next_deadline(),
            Service::Local(l) => l.next_deadline(),
            Service::Api(a) => a.next_deadline(),
            Service::Passive => None,
        };
        s.map_or(b, |s| b.min(s))
    }

    /// Drops leases from before a restart whose block another node owns now. Checked once
    /// per claim round, when `wanted` can have changed; expired leases wait for their
    /// block's fate (they are dropped when it comes back).
    fn forget_lost_restores(&mut self, now: Instant) {
        let api_waiting = self
            .api()
            .is_some_and(|a| a.count() + a.cooling_count() > 0);
        if (self.pending_restore.is_empty() && self.pending_local.is_empty() && !api_waiting)
            || now < self.next_restore_check
        {
            return;
        }
        self.next_restore_check = now + self.cfg.claim.round_interval();
        let lost: Vec<u32> = self
            .pending_local
            .keys()
            .copied()
            .filter(|&b| !self.blocks.is_wanted(b) && !self.blocks.owns(b))
            .collect();
        for b in lost {
            let ips: Vec<Ipv4Addr> = self
                .pending_local
                .remove(&b)
                .unwrap_or_default()
                .into_iter()
                .map(|(ip, _)| ip)
                .collect();
            if let Service::Local(l) = &mut self.service {
                l.drop_restored(&ips);
            }
        }
        if let Service::Api(a) = &mut self.service {
            for b in a.blocks_in_use() {
                if !self.blocks.owns(b) && !self.blocks.is_wanted(b) {
                    a.block_gone(b);
                }
            }
        }
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

    /// What the service needs from the block table, sampled once per claim round.
    ///
    /// Claiming ahead: a claim takes H = 1.5·t plus up to two rounds of waiting. If new
    /// clients arriving at the rate of the busiest round of the last H would eat more than
    /// the spare target during the next H, hold 1.5 times that many free instead, so a
    /// burst does not stall for a claim round per block. Surplus blocks are given up by the
    /// `-n` rule once the burst is over.
    fn sample_demand(&mut self, now: Instant) {
        if let Service::Dhcp(d) = &self.service {
            self.blocks.set_lapse_hold(d.lease_horizon());
        }
        if !matches!(self.service, Service::Dhcp(_) | Service::Api(_)) {
            return;
        }
        let round = self.cfg.claim.round_interval();
        if now.saturating_since(self.demand.since) < round {
            return;
        }
        self.demand.since = now;
        let horizon = self.cfg.claim.tentative_timeout * 3 / 2 + round * 2;
        let window = (horizon.as_millis() / round.as_millis().max(1)).max(1) as usize;
        let new = match &mut self.service {
            Service::Dhcp(d) => d.take_demand(now, horizon),
            // Allocations made plus those waiting: the rate provisioning asks at.
            Service::Api(a) => a.take_demand(),
            _ => 0,
        };
        self.demand.rounds.push_back(new);
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
        let base = match &self.service {
            Service::Api(a) => a.config().spare,
            _ => self.cfg.claim.spare_leases,
        };
        self.blocks.set_extra_spare(want.saturating_sub(base));
    }

    /// Turns what the block protocol and the service produced into outputs and durable
    /// changes, and tells the block table what the service uses.
    pub(crate) fn drain(&mut self, now: Instant) {
        let range = self.cfg.range;
        let pool = self.index;
        if let Service::Dhcp(d) = &mut self.service {
            while let Some((owner, m)) = d.poll_forward() {
                self.out
                    .push(PoolOutput::Peer(crate::node::Dest::Unicast(owner), m));
            }
            while let Some(e) = d.poll_event() {
                self.out
                    .push(PoolOutput::Event(crate::node::Event::Lease(pool, e)));
            }
            while let Some(t) = d.poll_transmit() {
                self.out.push(PoolOutput::Dhcp(t));
            }
        }
        self.drain_local();
        while let Some(out) = self.blocks.poll_output() {
            let message = match out {
                BlockOutput::Inquire(b) => Message::Inquire(b),
                BlockOutput::Claim(e) => Message::UpdateClaim(e),
            };
            self.out
                .push(PoolOutput::Peer(crate::node::Dest::Multicast, message));
        }
        use crate::node::Event;
        let mut claimed = false;
        while let Some(ev) = self.blocks.poll_event() {
            let ev = match ev {
                BlockEvent::EndLearning => {
                    info!(pool = %self.cfg.name, "ready to claim blocks");
                    Event::EndLearning { pool }
                }
                BlockEvent::Claimed(block) => {
                    claimed = true;
                    self.counters.inc(Counter::BlocksClaimed);
                    self.changes.push(Change::BlockOwned { block, since: now });
                    let hold = self
                        .blocks
                        .hold_until(block)
                        .max(self.pending_hold.remove(&block))
                        .filter(|&h| h > now);
                    if let Some(until) = hold {
                        self.changes.push(Change::BlockHold { block, until });
                    }
                    match &mut self.service {
                        Service::Dhcp(d) => {
                            d.block_owned(block, now, hold);
                            let (live, expired): (Vec<_>, Vec<_>) = self
                                .pending_restore
                                .remove(&block)
                                .unwrap_or_default()
                                .into_iter()
                                .partition(|l| l.until > now);
                            let restored = !live.is_empty();
                            d.leases.restore(live);
                            self.changes
                                .extend(expired.into_iter().map(|l| Change::LeaseGone(l.ip)));
                            // Written again after `BlockOwned`: replica holders start the
                            // block afresh with it, and bindings adopted from a replica are
                            // not in our store yet.
                            if restored {
                                self.changes.extend(d.leases.block_records(block));
                            }
                        }
                        Service::Api(a) => {
                            self.changes.extend(a.block_records(block));
                            // Allocations taken over with the block were counted before
                            // it was ours: a block that seems unused would be given up.
                            self.blocks.set_usage(block, a.used_in(block));
                        }
                        Service::Local(_) | Service::Passive => {}
                    }
                    Event::BlockClaimed {
                        pool,
                        block,
                        first: range.block_first(block),
                    }
                }
                BlockEvent::Dropped(block) => {
                    self.counters.inc(Counter::BlocksDropped);
                    self.changes.push(Change::BlockGone { block });
                    match &mut self.service {
                        Service::Dhcp(d) => d.block_gone(block),
                        Service::Local(l) => l.block_gone(now, block),
                        Service::Api(a) => a.block_gone(block),
                        Service::Passive => {}
                    }
                    Event::BlockDropped {
                        pool,
                        block,
                        first: range.block_first(block),
                    }
                }
                BlockEvent::Lapsed { block, owner } => {
                    self.lapsed.push((block, owner));
                    continue;
                }
                BlockEvent::Contested { block, by } => {
                    self.counters.inc(Counter::BlocksContested);
                    Event::BlockContested {
                        pool,
                        block,
                        first: range.block_first(block),
                        by,
                    }
                }
                BlockEvent::Lost { block, to } => {
                    self.counters.inc(Counter::BlocksLost);
                    // Before the service forgets them: the winner may need our bindings.
                    let records = self.block_records(block);
                    self.lost.push((block, to, records));
                    self.changes.push(Change::BlockGone { block });
                    match &mut self.service {
                        Service::Dhcp(d) => d.block_gone(block),
                        Service::Local(l) => l.block_gone(now, block),
                        Service::Api(a) => a.block_gone(block),
                        Service::Passive => {}
                    }
                    Event::BlockLost {
                        pool,
                        block,
                        first: range.block_first(block),
                        to,
                    }
                }
            };
            self.out.push(PoolOutput::Event(ev));
        }
        // The store learns of every other refresh only (at most TTL/2 old): a restart
        // then trusts our claims for less long than peers do, which is safe, and an idle
        // node syncs its store half as often (flash wear, wake-ups).
        if let Some(at) = self.blocks.take_refreshed() {
            let ttl = self.cfg.claim.ttl();
            // 3/8 of the TTL: between one refresh interval (TTL/4) and two, so jitter
            // cannot make it every third.
            let half = Duration::from_millis(u64::from(ttl) * 375);
            if self
                .announced_stored
                .is_none_or(|last| at.saturating_since(last) >= half)
            {
                self.announced_stored = Some(at);
                self.changes.push(Change::Announced { at, ttl });
            }
        }
        // Usage changed by DHCP traffic and by blocks just owned (their reserved addresses).
        if let Service::Dhcp(d) = &mut self.service {
            for (block, used) in d.leases.take_changed() {
                self.blocks.set_usage(block, used);
            }
        }
        // A block just claimed can serve the local service's missing addresses now, and
        // allocations waiting for room.
        if claimed && let Service::Local(l) = &mut self.service {
            let owned: Vec<u32> = self
                .pending_local
                .keys()
                .copied()
                .filter(|&b| self.blocks.owns(b))
                .collect();
            for b in owned {
                let addrs = self.pending_local.remove(&b).unwrap_or_default();
                l.restore(now, &addrs, &self.blocks);
            }
            l.handle_timeout(now, &self.blocks);
        }
        if claimed && let Service::Api(a) = &mut self.service {
            a.handle_timeout(now, self.me, &mut self.blocks);
        }
        self.drain_local();
        self.drain_api();
    }

    /// The allocation service's answers and events, and what it uses of the block table.
    pub(crate) fn drain_api(&mut self) {
        let Service::Api(a) = &mut self.service else {
            return;
        };
        while let Some((id, answer)) = a.poll_answer() {
            self.out.push(PoolOutput::Answer(id, answer));
        }
        while let Some(e) = a.poll_event() {
            self.out
                .push(PoolOutput::Event(crate::node::Event::Api(self.index, e)));
        }
        for (block, used) in a.take_changed() {
            self.blocks.set_usage(block, used);
        }
        self.blocks.set_spare(a.free_wanted());
    }

    /// What the local service asked of the host and of the block table.
    fn drain_local(&mut self) {
        let Service::Local(l) = &mut self.service else {
            return;
        };
        while let Some(a) = l.poll_action() {
            self.out.push(PoolOutput::Host(a));
        }
        while let Some(m) = l.poll_move() {
            self.out.push(PoolOutput::Event(crate::node::Event::Local {
                pool: self.index,
                ip: m.ip,
                from: m.from,
                to: m.to,
                reason: m.reason,
            }));
        }
        while let Some((ip, state)) = l.poll_deleted() {
            self.out
                .push(PoolOutput::Event(crate::node::Event::LocalDeleted {
                    pool: self.index,
                    ip,
                    state,
                }));
        }
        for (block, used) in l.take_changed() {
            self.blocks.set_usage(block, used);
        }
        self.blocks.set_spare(l.free_wanted());
    }

    /// `mark-active` / `mark-standby`; the service then moves towards its targets.
    pub(crate) fn mark(&mut self, now: Instant, ip: Ipv4Addr, active: bool) -> Result<(), String> {
        let Service::Local(l) = &mut self.service else {
            return Err(not_local(self));
        };
        let r = l.mark(now, ip, active);
        l.handle_timeout(now, &self.blocks);
        r
    }

    /// `set-local`: new targets for the local service, which then moves towards them at
    /// once (surplus standby addresses released, missing ones reserved).
    pub(crate) fn set_local_targets(
        &mut self,
        now: Instant,
        t: crate::local::LocalTargets,
    ) -> Result<(), String> {
        let Service::Local(l) = &mut self.service else {
            return Err(not_local(self));
        };
        l.set_targets(t)?;
        info!(pool = %self.cfg.name, standby = l.config().standby, min = l.config().min,
              max_standby = l.config().max_standby,
              hysteresis_secs = l.config().timers.hysteresis.as_secs(), "local targets changed");
        l.handle_timeout(now, &self.blocks);
        Ok(())
    }

    /// Something the host did or saw, for the local service.
    pub(crate) fn handle_host(&mut self, now: Instant, ev: crate::local::HostEvent) {
        if let Service::Local(l) = &mut self.service {
            l.handle_event(now, ev, &self.blocks);
            l.handle_timeout(now, &self.blocks);
        }
    }
}

/// Why a pool has no local service to mark or change.
fn not_local(p: &Pool) -> String {
    let why = match p.cfg.service {
        ServiceConfig::Local(_) => "not of this node's location",
        ServiceConfig::Dhcp(_) | ServiceConfig::Passive => "use=dhcp",
        ServiceConfig::Api(_) => "use=api",
    };
    format!(
        "pool '{}' is not a local pool on this node ({why})",
        p.cfg.name
    )
}

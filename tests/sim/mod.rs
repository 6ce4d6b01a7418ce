//! A deterministic multi-node simulator for the sans-IO core.
//!
//! N [`Node`]s share one virtual server link. Time is virtual, every random choice (loss,
//! delay, duplication, node seeds) comes from one seeded RNG, so a seed reproduces a run
//! exactly. The link can lose, delay (which reorders) and duplicate datagrams, be split into
//! partitions that later heal, and nodes can stop and start.
//!
//! The simulator watches ownership all the time, not only at the end: every moment two
//! nodes both believe they own a block is recorded as an overlap episode with its duration.

#![allow(dead_code)]

pub mod cnode;

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::net::Ipv6Addr;
use std::rc::Rc;
use std::time::Duration;

use cnode::{CConfig, CNode, CState};
use ddhcp::blocks::ClaimConfig;
use ddhcp::local::{HostAction, HostEvent};
use ddhcp::node::{Channel, Dest, Event, Node, NodeConfig, Output, derive_node_id};
use ddhcp::range::ManagedRange;
use ddhcp::store::{PoolState, WallClock};
use ddhcp::time::Instant;
use ddhcp::wire::NodeId;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::net::Ipv4Addr;

/// How the shared link treats each datagram, independently per receiver.
#[derive(Clone, Copy, Debug)]
pub struct Link {
    pub loss: f64,
    pub duplicate: f64,
    pub delay_min: Duration,
    pub delay_max: Duration,
}

impl Link {
    /// A clean LAN-like link: 1–20 ms delay (so datagrams still reorder), no loss.
    pub fn clean() -> Self {
        Link {
            loss: 0.0,
            duplicate: 0.0,
            delay_min: Duration::from_millis(1),
            delay_max: Duration::from_millis(20),
        }
    }

    pub fn lossy(loss: f64) -> Self {
        Link {
            loss,
            duplicate: 0.02,
            delay_min: Duration::from_millis(1),
            delay_max: Duration::from_millis(200),
        }
    }
}

struct Slot {
    node: Option<Node>,
    /// A node modelled on the C daemon instead (`cfg` then only describes its swarm).
    cnode: Option<CNode>,
    c_cfg: Option<CConfig>,
    cfg: NodeConfig,
    id: NodeId,
    addr: Ipv6Addr,
    group: u32,
    sent_pkts: u64,
    sent_bytes: u64,
    /// What the node's store holds, by pool name: every change it made, applied at once
    /// (the daemon lets nothing out before its store has it, so a crash between steps loses
    /// nothing).
    durable: BTreeMap<String, PoolState>,
}

struct Delivery {
    at: Instant,
    seq: u64,
    to: usize,
    kind: Kind,
    data: Rc<[u8]>,
}

/// What a queued datagram is.
enum Kind {
    /// Peer protocol, to node `to`.
    Peer { from: Ipv6Addr, channel: Channel },
    /// DHCP from a client to node `to`.
    ToServer,
    /// DHCP from a node to client `to`.
    ToClient,
    /// The fake host of node `to` reports to its local pool `pool`.
    Host { pool: usize, ev: HostEvent },
    /// The fake host of node `to` polls socket use (every [`USE_POLL`]).
    UsePoll,
}

/// How often the fake host reports socket use, as the daemon's sock_diag poll.
pub const USE_POLL: Duration = Duration::from_secs(1);

impl PartialEq for Delivery {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Delivery {}
impl PartialOrd for Delivery {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Delivery {
    // Reversed: BinaryHeap is a max-heap and we want the earliest first.
    fn cmp(&self, o: &Self) -> Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// One stretch of time during which two or more nodes owned the same block.
#[derive(Clone, Debug)]
pub struct Overlap {
    pub block: u32,
    pub start: Instant,
    pub end: Option<Instant>,
}

/// Granularity of [`Sim::run_until_pred`].
const PRED_INTERVAL: Duration = Duration::from_millis(100);

pub struct Sim {
    pub now: Instant,
    rng: StdRng,
    pub link: Link,
    slots: Vec<Slot>,
    queue: BinaryHeap<Delivery>,
    seq: u64,
    /// Simulated DHCP clients, each attached to one node's client link.
    pub clients: Vec<Client>,
    /// Moments two clients held the same address at once.
    pub address_conflicts: Vec<String>,
    /// Current owners of each block, from the nodes' own events.
    owners: BTreeMap<u32, Vec<usize>>,
    open_overlaps: BTreeMap<u32, Instant>,
    pub overlaps: Vec<Overlap>,
    pub id_changes: u64,
    /// Sole owner of each block and since when it has been (a handover starts anew).
    pub owned_since: HashMap<u32, (usize, Instant)>,
    /// Every node that took each block, in order (consecutive repeats merged).
    pub owner_history: HashMap<u32, Vec<usize>>,
    /// The addresses of [`Sim::address_conflicts`].
    pub conflict_ips: Vec<Ipv4Addr>,
    /// The range whose ownership is watched all the time (the first node's first pool);
    /// blocks of other pools are checked from the nodes' tables.
    tracked: Option<ManagedRange>,
    /// The fake hosts: which nodes have each address configured on their interface.
    pub host_addrs: BTreeMap<Ipv4Addr, std::collections::BTreeSet<usize>>,
    /// Moments an address was configured on two hosts, or on a host while a DHCP client
    /// held it: the property local mode must never break.
    pub local_conflicts: Vec<String>,
    /// Sockets per node using its addresses (set by the scenario), with what.
    pub sockets: BTreeMap<usize, BTreeMap<Ipv4Addr, String>>,
    /// Host actions done, by kind (add, remove, probe, announce, check).
    pub host_actions: BTreeMap<&'static str, u64>,
}

/// Whether an event is about the watched range (node-wide events always are).
fn tracked(n: &Node, e: &Event, range: Option<ManagedRange>) -> bool {
    let pool = match e {
        Event::BlockClaimed { pool, .. }
        | Event::BlockDropped { pool, .. }
        | Event::BlockLost { pool, .. } => *pool,
        _ => return true,
    };
    range.is_none_or(|r| *n.pool(pool).range() == r)
}

impl Sim {
    pub fn new(seed: u64, link: Link) -> Self {
        Sim {
            now: Instant::ZERO,
            rng: StdRng::seed_from_u64(seed),
            link,
            slots: Vec::new(),
            queue: BinaryHeap::new(),
            seq: 0,
            clients: Vec::new(),
            address_conflicts: Vec::new(),
            owners: BTreeMap::new(),
            open_overlaps: BTreeMap::new(),
            overlaps: Vec::new(),
            id_changes: 0,
            owned_since: HashMap::new(),
            owner_history: HashMap::new(),
            conflict_ips: Vec::new(),
            tracked: None,
            host_addrs: BTreeMap::new(),
            local_conflicts: Vec::new(),
            sockets: BTreeMap::new(),
            host_actions: BTreeMap::new(),
        }
    }

    /// Adds and starts a node; returns its index.
    pub fn add_node(&mut self, cfg: NodeConfig) -> usize {
        let i = self.slots.len();
        let mac = [0x02, 0, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8];
        let id = derive_node_id(mac, self.rng.random());
        self.add_node_with_id(cfg, id)
    }

    /// Adds and starts a node with a given id (to stage duplicate ids).
    pub fn add_node_with_id(&mut self, cfg: NodeConfig, id: NodeId) -> usize {
        self.push_slot(cfg, id, None)
    }

    /// Adds and starts a node modelled on the C daemon (its id comes from its MAC); returns
    /// its index. `cfg` of the slot only describes the swarm.
    pub fn add_c_node(&mut self, c: CConfig) -> usize {
        let cfg = NodeConfig::single(
            c.range,
            ClaimConfig {
                tentative_timeout: Duration::from_secs(c.tentative),
                block_timeout: Duration::from_secs(c.block_timeout),
                spare_leases: c.spare,
                needless_timeout: Duration::from_secs(300),
                learning: c.learning,
            },
            None,
        );
        self.push_slot(cfg, NodeId([0; 8]), Some(c))
    }

    fn push_slot(&mut self, cfg: NodeConfig, id: NodeId, c_cfg: Option<CConfig>) -> usize {
        let i = self.slots.len();
        if self.tracked.is_none() {
            self.tracked = cfg.pools.first().map(|p| p.range);
        }
        let addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, (i >> 16) as u16, i as u16 + 1);
        self.slots.push(Slot {
            node: None,
            cnode: None,
            c_cfg,
            cfg,
            id,
            addr,
            group: 0,
            sent_pkts: 0,
            sent_bytes: 0,
            durable: BTreeMap::new(),
        });
        self.start(i);
        i
    }

    pub fn is_c(&self, i: usize) -> bool {
        self.slots[i].c_cfg.is_some()
    }

    pub fn cnode(&self, i: usize) -> Option<&CNode> {
        self.slots[i].cnode.as_ref()
    }

    /// Running C-model nodes.
    pub fn running_c(&self) -> impl Iterator<Item = (usize, &CNode)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.cnode.as_ref().map(|n| (i, n)))
    }

    pub fn addr(&self, i: usize) -> Ipv6Addr {
        self.slots[i].addr
    }

    /// Starts a stopped node as the daemon does: same id, state restored from its store
    /// (empty after [`Sim::wipe`]), learning phase as configured. A C node starts empty.
    pub fn start(&mut self, i: usize) {
        let seed = self.rng.random();
        let now = self.now;
        let slot = &mut self.slots[i];
        assert!(
            slot.node.is_none() && slot.cnode.is_none(),
            "node {i} already running"
        );
        if let Some(c) = slot.c_cfg {
            // A random locally administered MAC, as on real hosts: C ids are the MAC.
            let r: [u8; 5] = self.rng.random();
            let mac = [0x02, r[0], r[1], r[2], r[3], r[4]];
            let server = Ipv4Addr::new(10, 255, (i >> 8) as u8, i as u8);
            let n = CNode::new(c, mac, server, now, seed);
            slot.id = n.id;
            slot.cnode = Some(n);
            self.drain(i);
            return;
        }
        let mut node = Node::new(slot.cfg.clone(), slot.id, now, seed);
        // Simulated wall-clock time is core time.
        let clock = WallClock {
            core_now: now,
            wall_now_ms: now.as_millis(),
        };
        let restored = slot
            .cfg
            .pools
            .iter()
            .map(|p| {
                slot.durable
                    .get(&p.name)
                    .cloned()
                    .unwrap_or_default()
                    .into_restored(&clock)
            })
            .collect();
        node.restore(now, restored);
        slot.node = Some(node);
        self.drain(i);
        self.host_start(i);
    }

    /// The configuration a stopped node starts with next (as flags changed for a restart).
    pub fn config_mut(&mut self, i: usize) -> &mut NodeConfig {
        assert!(self.slots[i].node.is_none(), "node {i} is running");
        &mut self.slots[i].cfg
    }

    /// Deletes a stopped node's store, so its next start is a fresh one.
    pub fn wipe(&mut self, i: usize) {
        assert!(self.slots[i].node.is_none(), "node {i} is running");
        self.slots[i].durable = BTreeMap::new();
    }

    /// Stops a node at once (crash or kill): it sends nothing more.
    pub fn stop(&mut self, i: usize) {
        self.slots[i].node = None;
        self.slots[i].cnode = None;
        let blocks: Vec<u32> = self
            .owners
            .iter()
            .filter(|(_, o)| o.contains(&i))
            .map(|(&b, _)| b)
            .collect();
        for b in blocks {
            self.set_owner(b, i, false);
        }
    }

    /// Splits the link: nodes only hear nodes with the same group number.
    pub fn partition(&mut self, groups: &[&[usize]]) {
        for (g, members) in groups.iter().enumerate() {
            for &i in *members {
                self.slots[i].group = g as u32;
            }
        }
    }

    pub fn heal(&mut self) {
        for s in &mut self.slots {
            s.group = 0;
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn node(&self, i: usize) -> Option<&Node> {
        self.slots[i].node.as_ref()
    }

    /// Running nodes that have the watched range, with that pool: what the ownership checks
    /// look at (a node without the range is a stranger to it, like a C node of another
    /// network).
    pub fn watched(&self) -> impl Iterator<Item = (usize, &Node, &ddhcp::pool::Pool)> {
        let range = self.tracked;
        self.running().filter_map(move |(i, n)| {
            n.pools()
                .iter()
                .find(|p| range.is_none_or(|r| *p.range() == r))
                .map(|p| (i, n, p))
        })
    }

    pub fn running(&self) -> impl Iterator<Item = (usize, &Node)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.node.as_ref().map(|n| (i, n)))
    }

    pub fn sent_packets(&self) -> u64 {
        self.slots.iter().map(|s| s.sent_pkts).sum()
    }

    pub fn sent_bytes(&self) -> u64 {
        self.slots.iter().map(|s| s.sent_bytes).sum()
    }

    /// When the next thing of any kind happens.
    fn next_event(&self) -> Option<Instant> {
        [
            self.next_node_timer().map(|(t, _)| t),
            self.queue.peek().map(|d| d.at),
            self.clients.iter().map(|c| c.next_action).min(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn next_node_timer(&self) -> Option<(Instant, usize)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match (&s.node, &s.cnode) {
                (Some(n), _) => Some((n.poll_timeout(), i)),
                (None, Some(c)) => Some((c.poll_timeout(), i)),
                (None, None) => None,
            })
            .min()
    }

    /// Processes the next thing that happens (a delivery or a node timer), if it is not
    /// after `limit`. Returns false when nothing is due by then.
    fn step(&mut self, limit: Instant) -> bool {
        let next_client = self
            .clients
            .iter()
            .enumerate()
            .map(|(c, cl)| (cl.next_action, c))
            .min();
        if let Some((t, c)) = next_client
            && t <= limit
            && self.queue.peek().is_none_or(|d| t < d.at)
            && self.next_node_timer().is_none_or(|(nt, _)| t < nt)
        {
            self.now = self.now.max(t);
            self.client_timer(c);
            return true;
        }
        let next_timer = self.next_node_timer();
        let next_delivery = self.queue.peek().map(|d| d.at);
        match (next_timer, next_delivery) {
            (Some((t, i)), d) if d.is_none_or(|d| t < d) => {
                if t > limit {
                    return false;
                }
                self.now = self.now.max(t);
                if let Some(n) = self.slots[i].node.as_mut() {
                    n.handle_timeout(self.now);
                }
                if let Some(n) = self.slots[i].cnode.as_mut() {
                    n.handle_timeout(self.now);
                }
                self.drain(i);
            }
            (_, Some(d)) => {
                if d > limit {
                    return false;
                }
                let del = self.queue.pop().expect("peeked");
                self.now = self.now.max(del.at);
                match del.kind {
                    Kind::Peer { from, channel } => {
                        if let Some(n) = self.slots[del.to].node.as_mut() {
                            n.handle_datagram(self.now, channel, from, &del.data);
                        }
                        if let Some(n) = self.slots[del.to].cnode.as_mut() {
                            n.handle_datagram(self.now, channel, from, &del.data);
                        }
                        self.drain(del.to);
                    }
                    Kind::ToServer => {
                        if let Some(n) = self.slots[del.to].node.as_mut() {
                            n.handle_dhcp(self.now, 0, &del.data);
                        }
                        if let Some(n) = self.slots[del.to].cnode.as_mut() {
                            n.handle_dhcp(self.now, &del.data);
                        }
                        self.drain(del.to);
                    }
                    Kind::ToClient => self.client_receive(del.to, &del.data),
                    Kind::Host { pool, ev } => {
                        if let Some(n) = self.slots[del.to].node.as_mut() {
                            n.handle_host(self.now, pool, ev);
                        }
                        self.drain(del.to);
                    }
                    Kind::UsePoll => self.use_poll(del.to),
                }
            }
            _ => return false,
        }
        true
    }

    fn host_event(&mut self, i: usize, pool: usize, ev: HostEvent, after_ms: u64) {
        self.seq += 1;
        self.queue.push(Delivery {
            at: self.now + Duration::from_millis(after_ms),
            seq: self.seq,
            to: i,
            kind: Kind::Host { pool, ev },
            data: Rc::from(&[][..]),
        });
    }

    /// The fake host of node i does what its core asked, as netlink, ARP and probes would.
    fn host_action(&mut self, i: usize, pool: usize, a: HostAction) {
        let kind = match &a {
            HostAction::Add { .. } => "add",
            HostAction::Remove { .. } => "remove",
            HostAction::Announce { .. } => "announce",
            HostAction::Probe { .. } => "probe",
            HostAction::CheckUse { .. } => "check",
        };
        *self.host_actions.entry(kind).or_default() += 1;
        match a {
            HostAction::Add { ip, .. } => {
                let on = self.host_addrs.entry(ip).or_default();
                if !on.insert(i) {
                    // Already there with our tag (the shell checks it): done.
                    self.host_event(i, pool, HostEvent::Added { ip }, 1);
                    return;
                }
                if on.len() > 1 {
                    let msg = format!("{:?}: {ip} configured on nodes {on:?}", self.now);
                    self.local_conflicts.push(msg);
                }
                if self.clients.iter().any(|c| c.ip == Some(ip)) {
                    let msg = format!(
                        "{:?}: {ip} configured on node {i} while a client holds it",
                        self.now
                    );
                    self.local_conflicts.push(msg);
                }
                self.host_event(i, pool, HostEvent::Added { ip }, 2);
            }
            HostAction::Remove { ip, .. } => {
                if let Some(on) = self.host_addrs.get_mut(&ip) {
                    on.remove(&i);
                    if on.is_empty() {
                        self.host_addrs.remove(&ip);
                    }
                }
                self.host_event(i, pool, HostEvent::Removed { ip }, 2);
            }
            HostAction::Probe { ip, .. } => {
                // Two hosts with one address on one link answer each other's probes badly:
                // a probe succeeds only if no host this one can reach has the address too
                // (the halves of a partition each reach their own test target).
                let group = self.slots[i].group;
                let alone = self.host_addrs.get(&ip).is_some_and(|on| {
                    on.contains(&i) && on.iter().all(|&j| j == i || self.slots[j].group != group)
                });
                let ok = alone && !self.rng.random_bool(self.link.loss);
                self.host_event(i, pool, HostEvent::ProbeResult { ip, ok }, 5);
            }
            HostAction::CheckUse { .. } => {
                let used = self.sockets.get(&i).cloned().unwrap_or_default();
                self.host_event(i, pool, HostEvent::InUse(used), 1);
            }
            HostAction::Announce { .. } => {}
        }
    }

    /// Local pools of node i, by index.
    fn local_pools(&self, i: usize) -> Vec<usize> {
        self.slots[i].node.as_ref().map_or(Vec::new(), |n| {
            n.pools()
                .iter()
                .enumerate()
                .filter(|(_, p)| p.local().is_some())
                .map(|(k, _)| k)
                .collect()
        })
    }

    /// At start: the host reports the tagged addresses it still has (from before a crash),
    /// and socket polling begins.
    fn host_start(&mut self, i: usize) {
        let pools = self.local_pools(i);
        if pools.is_empty() {
            return;
        }
        let mine: Vec<Ipv4Addr> = self
            .host_addrs
            .iter()
            .filter(|(_, on)| on.contains(&i))
            .map(|(&ip, _)| ip)
            .collect();
        for ip in mine {
            let node = self.slots[i].node.as_ref().expect("started");
            if let Some(p) = pools
                .iter()
                .copied()
                .find(|&p| node.pool(p).range().locate(ip).is_some())
            {
                self.host_event(i, p, HostEvent::Added { ip }, 1);
            }
        }
        self.seq += 1;
        self.queue.push(Delivery {
            at: self.now + USE_POLL,
            seq: self.seq,
            to: i,
            kind: Kind::UsePoll,
            data: Rc::from(&[][..]),
        });
    }

    fn use_poll(&mut self, i: usize) {
        if self.slots[i].node.is_none() {
            return; // stopped; the next start polls again
        }
        let used = self.sockets.get(&i).cloned().unwrap_or_default();
        for p in self.local_pools(i) {
            if let Some(n) = self.slots[i].node.as_mut() {
                n.handle_host(self.now, p, HostEvent::InUse(used.clone()));
            }
        }
        self.drain(i);
        self.seq += 1;
        self.queue.push(Delivery {
            at: self.now + USE_POLL,
            seq: self.seq,
            to: i,
            kind: Kind::UsePoll,
            data: Rc::from(&[][..]),
        });
    }

    pub fn run_until(&mut self, t: Instant) {
        while self.step(t) {}
        self.now = self.now.max(t);
    }

    pub fn run_for(&mut self, d: Duration) {
        let t = self.now + d;
        self.run_until(t);
    }

    /// Runs until `done` holds (checked after every step), or `limit`. Returns the time.
    pub fn run_until_pred(
        &mut self,
        limit: Instant,
        mut done: impl FnMut(&Sim) -> bool,
    ) -> Option<Instant> {
        // Checking after every delivery would cost more than the simulation itself for
        // large swarms; every 100 ms of virtual time is precise enough for the figures.
        let mut checked: Option<Instant> = None;
        loop {
            // Also check before every quiet stretch, so a state reached just after a check
            // is seen when it is reached, not at the next event.
            let quiet_next = self
                .next_event()
                .is_none_or(|t| t.saturating_since(self.now) >= PRED_INTERVAL);
            if quiet_next || checked.is_none_or(|c| self.now.saturating_since(c) >= PRED_INTERVAL) {
                if done(self) {
                    return Some(self.now);
                }
                checked = Some(self.now);
            }
            if !self.step(limit) {
                return done(self).then_some(self.now);
            }
        }
    }

    /// Every running node has the blocks it wants (or the range is exhausted for it).
    pub fn all_satisfied(&self) -> bool {
        self.watched().all(|(_, _, p)| {
            !p.blocks().is_learning()
                && (p.blocks().blocks_needed() <= 0 || p.blocks().free_count() == 0)
        })
    }

    /// Moves a node's queued output onto the link and its events into the ownership record.
    fn drain(&mut self, i: usize) {
        let mut transmits = Vec::new();
        let mut events = Vec::new();
        let mut dhcp = Vec::new();
        let mut host = Vec::new();
        let slot = &mut self.slots[i];
        if let Some(n) = slot.node.as_mut() {
            for (p, c) in n.take_changes() {
                let name = n.pool(p).name().to_string();
                slot.durable.entry(name).or_default().apply(c);
            }
            while let Some(o) = n.poll_output() {
                match o {
                    Output::Peer(t) => transmits.push(t),
                    // Events of pools other than the tracked range are checked at the end
                    // of a run, from the nodes' tables.
                    Output::Event(e) if tracked(n, &e, self.tracked) => events.push(e),
                    Output::Event(_) => {}
                    // Simulated clients sit on the link of pool 0.
                    Output::Dhcp { pool: 0, transmit } => dhcp.push(transmit),
                    Output::Host { pool, action } => host.push((pool, action)),
                    Output::Dhcp { .. } | Output::Answer { .. } => {}
                }
            }
            slot.id = n.id();
        }
        if let Some(n) = slot.cnode.as_mut() {
            while let Some(t) = n.poll_transmit() {
                transmits.push(t);
            }
            while let Some(d) = n.poll_dhcp() {
                dhcp.push(ddhcp::dhcp::DhcpTransmit {
                    to: std::net::SocketAddrV4::new(Ipv4Addr::BROADCAST, 68),
                    payload: d,
                });
            }
            while let Some((block, owns)) = n.ownership.pop_front() {
                events.push(if owns {
                    Event::BlockClaimed {
                        pool: 0,
                        block,
                        first: Ipv4Addr::UNSPECIFIED,
                    }
                } else {
                    Event::BlockDropped {
                        pool: 0,
                        block,
                        first: Ipv4Addr::UNSPECIFIED,
                    }
                });
            }
        }
        for d in dhcp {
            self.deliver_to_clients(i, d.payload);
        }
        for (pool, a) in host {
            self.host_action(i, pool, a);
        }
        for e in events {
            match e {
                Event::BlockClaimed { block, .. } => self.set_owner(block, i, true),
                Event::BlockDropped { block, .. } | Event::BlockLost { block, .. } => {
                    self.set_owner(block, i, false)
                }
                Event::NodeIdChanged { .. } => self.id_changes += 1,
                Event::EndLearning { .. } | Event::Lease(..) | Event::Local { .. } => {}
            }
        }
        let from = self.slots[i].addr;
        let group = self.slots[i].group;
        for t in transmits {
            self.slots[i].sent_pkts += 1;
            self.slots[i].sent_bytes += t.payload.len() as u64;
            let data: Rc<[u8]> = t.payload.into();
            let (targets, channel): (Vec<usize>, Channel) = match t.dest {
                Dest::Multicast => (
                    (0..self.slots.len()).filter(|&j| j != i).collect(),
                    Channel::Multicast,
                ),
                Dest::Unicast(a) => (
                    self.slots
                        .iter()
                        .position(|s| s.addr == a)
                        .into_iter()
                        .collect(),
                    Channel::Unicast,
                ),
            };
            for j in targets {
                let down = self.slots[j].node.is_none() && self.slots[j].cnode.is_none();
                if self.slots[j].group != group || down {
                    continue;
                }
                if self.rng.random_bool(self.link.loss) {
                    continue;
                }
                let copies = if self.rng.random_bool(self.link.duplicate) {
                    2
                } else {
                    1
                };
                for _ in 0..copies {
                    let lo = self.link.delay_min.as_millis() as u64;
                    let hi = self.link.delay_max.as_millis() as u64;
                    let delay = self.rng.random_range(lo..=hi);
                    self.seq += 1;
                    self.queue.push(Delivery {
                        at: self.now + Duration::from_millis(delay),
                        seq: self.seq,
                        to: j,
                        kind: Kind::Peer { from, channel },
                        data: data.clone(),
                    });
                }
            }
        }
    }

    fn set_owner(&mut self, block: u32, i: usize, owns: bool) {
        let list = self.owners.entry(block).or_default();
        if owns {
            if !list.contains(&i) {
                list.push(i);
            }
        } else {
            list.retain(|&x| x != i);
        }
        let n = list.len();
        if owns && n == 1 {
            self.owned_since.insert(block, (i, self.now));
        }
        if owns {
            let h = self.owner_history.entry(block).or_default();
            if h.last() != Some(&i) {
                h.push(i);
            }
        }
        if n > 1 {
            self.open_overlaps.entry(block).or_insert(self.now);
        } else if let Some(start) = self.open_overlaps.remove(&block) {
            self.overlaps.push(Overlap {
                block,
                start,
                end: Some(self.now),
            });
        }
    }

    /// Overlap episodes so far, closed and still open.
    pub fn all_overlaps(&self) -> Vec<Overlap> {
        let mut v = self.overlaps.clone();
        v.extend(self.open_overlaps.iter().map(|(&block, &start)| Overlap {
            block,
            start,
            end: None,
        }));
        v
    }

    /// Owner of every owned block, Rust and C nodes alike; an error if a block has two.
    pub fn owner_map(&self) -> Result<BTreeMap<u32, usize>, String> {
        let mut owner: BTreeMap<u32, usize> = BTreeMap::new();
        let rust = self
            .watched()
            .map(|(i, _, p)| (i, p.blocks().owned().collect::<Vec<_>>()));
        let c = self
            .running_c()
            .map(|(i, n)| (i, n.owned().collect::<Vec<_>>()));
        for (i, blocks) in rust.chain(c) {
            for b in blocks {
                if let Some(prev) = owner.insert(b, i) {
                    return Err(format!("block {b} owned by nodes {prev} and {i}"));
                }
            }
        }
        Ok(owner)
    }

    /// At most one owner per block, and no running Rust node names an owner other than the
    /// real one (a view that lapsed to free is tolerated).
    pub fn check_no_wrong_owner(&self) -> Result<(), String> {
        let owner = self.owner_map()?;
        for (j, _, p) in self.watched() {
            for (&b, &i) in &owner {
                let want = (self.slots[i].id, self.slots[i].addr);
                match p.blocks().owner_of(b) {
                    Some(seen) if seen != want && i != j => {
                        return Err(format!(
                            "node {j} sees block {b} as {seen:?}, owner is node {i}"
                        ));
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// The settled-state invariants: at most one owner per block, and every running node's
    /// view of every owned block names the real owner at its real address; no running node
    /// believes a block is claimed by somebody who does not own it.
    pub fn check_agreement(&self) -> Result<(), String> {
        let owner = self.owner_map()?;
        for (j, c) in self.running_c() {
            for (&b, &i) in &owner {
                if i == j {
                    continue;
                }
                let want = (self.slots[i].id, self.slots[i].addr);
                match c.view(b) {
                    (CState::Claimed, Some(seen)) if seen == want => {}
                    // An Inquire turns a claimed block tentative on a C node (reference
                    // §3.8) until the owner's next claim; a shadow table's reset makes it
                    // free (§3.11). Neither lets the C node take it while the owner lives.
                    (CState::Tentative | CState::Free, _) => {}
                    other => {
                        return Err(format!(
                            "C node {j} sees block {b} as {other:?}, but node {i} ({}) owns it",
                            want.0
                        ));
                    }
                }
            }
        }
        for (j, n, p) in self.watched() {
            for (&b, &i) in &owner {
                if i == j {
                    continue;
                }
                let want = (self.slots[i].id, self.slots[i].addr);
                match p.blocks().owner_of(b) {
                    Some(seen) if seen == want => {}
                    other => {
                        return Err(format!(
                            "node {j} sees block {b} as {other:?}, but node {i} ({}) owns it",
                            want.0
                        ));
                    }
                }
            }
            for v in p.blocks_view(self.now, n.id()) {
                if v.owner.is_some() && v.owner != Some(n.id()) && !owner.contains_key(&v.index) {
                    return Err(format!(
                        "node {j} sees block {} claimed by {:?}, but nobody owns it",
                        v.index, v.owner
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Percentile of a sorted slice (nearest rank).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Number of seeds per scenario: `SIM_SEEDS` or the given default.
pub fn seeds(default: u64) -> u64 {
    std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

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

fn dhcp_message(c: &Client, msg_type: u8, ciaddr: Ipv4Addr, opts: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut b = vec![0u8; 240];
    b[0] = 1;
    b[1] = 1;
    b[2] = 6;
    b[4..8].copy_from_slice(&c.xid.to_be_bytes());
    b[12..16].copy_from_slice(&ciaddr.octets());
    b[28..34].copy_from_slice(&c.mac);
    b[236..240].copy_from_slice(&[99, 130, 83, 99]);
    b.extend_from_slice(&[53, 1, msg_type]);
    for (code, data) in opts {
        b.push(*code);
        b.push(data.len() as u8);
        b.extend_from_slice(data);
    }
    b.push(255);
    b
}

/// Option `code` of a DHCP message (also what the C model parses requests with).
fn reply_option(p: &[u8], code: u8) -> Option<&[u8]> {
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
        self.seq += 1;
        self.queue.push(Delivery {
            at: self.now + Duration::from_millis(1),
            seq: self.seq,
            to: node,
            kind: Kind::ToServer,
            data: data.into(),
        });
    }

    /// Replies from node `i` reach the clients on its link with that hardware address.
    fn deliver_to_clients(&mut self, i: usize, payload: Vec<u8>) {
        if payload.len() < 240 {
            return;
        }
        let data: Rc<[u8]> = payload.into();
        for c in 0..self.clients.len() {
            let cl = &self.clients[c];
            if cl.node != i || data[28..34] != cl.mac || self.rng.random_bool(self.link.loss) {
                continue;
            }
            self.seq += 1;
            self.queue.push(Delivery {
                at: self.now + Duration::from_millis(1),
                seq: self.seq,
                to: c,
                kind: Kind::ToClient,
                data: data.clone(),
            });
        }
    }

    fn client_timer(&mut self, c: usize) {
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
                dhcp_message(&cl, 1, Ipv4Addr::UNSPECIFIED, &[])
            }
            ClientState::Renewing => {
                dhcp_message(&cl, 3, cl.ip.expect("renewing has an address"), &[])
            }
            ClientState::Rebooting => dhcp_message(
                &cl,
                3,
                Ipv4Addr::UNSPECIFIED,
                &[(
                    50,
                    cl.ip.expect("rebooting has an address").octets().to_vec(),
                )],
            ),
            ClientState::Bound => {
                self.clients[c].next_action = cl.renew_at.min(cl.until);
                return;
            }
        };
        self.client_send(c, msg);
    }

    fn client_receive(&mut self, c: usize, data: &[u8]) {
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
                let msg = dhcp_message(
                    cl,
                    3,
                    Ipv4Addr::UNSPECIFIED,
                    &[
                        (50, yiaddr.octets().to_vec()),
                        (54, server.octets().to_vec()),
                    ],
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
            }
            _ => {}
        }
    }

    /// Records a conflict if another client holds the same address right now.
    fn check_address(&mut self, c: usize) {
        let Some(ip) = self.clients[c].ip else { return };
        for (o, other) in self.clients.iter().enumerate() {
            if o != c && other.ip == Some(ip) && other.until > self.now {
                self.address_conflicts.push(format!(
                    "t={:?}: clients {c} and {o} both hold {ip}",
                    self.now
                ));
                self.conflict_ips.push(ip);
            }
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

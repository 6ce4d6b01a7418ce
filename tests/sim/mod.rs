//! A deterministic multi-node simulator for the sans-IO core.
//!
//! N [`Node`]s share one virtual server link. Time is virtual, every random choice (loss,
//! delay, duplication, node seeds) comes from one seeded RNG, so a seed reproduces a run
//! exactly. The link can lose, delay (which reorders) and duplicate datagrams, be split into
//! partitions that later heal, and nodes can stop and start.
//!
//! The simulator watches ownership all the time, not only at the end: every moment two
//! nodes both believe they own a block is recorded as an overlap episode with its duration.
//!
//! [`link`] is the shared link and its queue, [`clients`] the simulated DHCP clients,
//! [`checks`] the ownership record and the checks on it, [`cnode`] the nodes modelled on
//! the C ddhcpd; this module holds [`Sim`] itself: node slots, starting and stopping,
//! partitions, and the event loop.

#![allow(dead_code)]

mod checks;
mod clients;
pub mod cnode;
mod link;

use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::net::Ipv6Addr;
use std::time::Duration;

use cnode::{CConfig, CNode};
use ddhcp::local::{HostAction, HostEvent};
use ddhcp::node::{Event, Node, NodeConfig, Output, derive_node_id};
use ddhcp::range::ManagedRange;
use ddhcp::store::{PoolState, WallClock};
use ddhcp::testing::claim;
use ddhcp::time::Instant;
use ddhcp::wire::{self, NodeId};
use link::{Delivery, Kind};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::net::Ipv4Addr;

// The simulator's types; each scenario file uses some of them.
#[allow(unused_imports)]
pub use self::{
    checks::Overlap,
    clients::{Client, ClientState},
    link::Link,
};

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
    /// A socket-use poll of this node's fake host is queued (one chain per node, also
    /// across a quick restart).
    polling: bool,
    /// Mesh keys the node starts with (`--peer-key`; empty: none).
    keys: Vec<ddhcp::auth::MeshKey>,
    /// Seed of the node key (`--node-key`, kept in its state directory across restarts).
    node_key: Option<[u8; 32]>,
}

/// How often the fake host reports socket use, as the daemon's sock_diag poll.
pub const USE_POLL: Duration = Duration::from_secs(1);

/// Granularity of [`Sim::run_until_pred`].
const PRED_INTERVAL: Duration = Duration::from_millis(100);

pub struct Sim {
    pub now: Instant,
    rng: StdRng,
    /// Loss, duplication and delay of our replication datagrams come from a stream of
    /// their own, so that adding them leaves every other datagram's fate in a seed's
    /// scenario as it was (the scenarios stay comparable across versions).
    ext_rng: StdRng,
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
    /// Datagrams of our own message types (Replicate, ReplicaAck) that reached a C node:
    /// must stay 0, C nodes are never sent them.
    pub ext_to_c: u64,
    /// Answers to [`Sim::query`], in the order they came: node, request id, answer, when.
    pub answers: Vec<(usize, u64, ddhcp::node::Answer, Instant)>,
    /// Mesh keys every node added from now on starts with (see [`Sim::set_keys`]).
    pub keys: Vec<ddhcp::auth::MeshKey>,
    /// Whether nodes added from now on have node keys (`--node-key`; needs `keys`); their
    /// ids are their keys'.
    pub node_keys: bool,
    /// Nodes with keys start in the migration mode (`--peer-key-migrate`).
    pub migrate: bool,
    /// `--max-peer-blocks` of nodes with node keys.
    pub max_peer_blocks: u32,
    /// Record every peer datagram put on the link into [`Sim::captured`] (an eavesdropper
    /// for replays).
    pub capture: bool,
    pub captured: Vec<(ddhcp::node::Dest, std::rc::Rc<[u8]>)>,
    /// `auth-failed` and `key-mismatch` events of all nodes (`holding` ones).
    pub auth_failures: u64,
    /// `BlockContested` events (node keys: claims on a held block refused for a block
    /// timeout).
    pub contested: u64,
    pub mismatch_holds: u64,
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
            ext_rng: StdRng::seed_from_u64(seed ^ 0x6578_745f_726e_6721),
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
            ext_to_c: 0,
            answers: Vec::new(),
            keys: Vec::new(),
            node_keys: false,
            migrate: false,
            max_peer_blocks: 0,
            capture: false,
            captured: Vec::new(),
            auth_failures: 0,
            contested: 0,
            mismatch_holds: 0,
        }
    }

    /// The mesh keys node `i` starts with next (it must be stopped).
    pub fn set_keys(&mut self, i: usize, keys: Vec<ddhcp::auth::MeshKey>) {
        assert!(self.slots[i].node.is_none(), "node {i} is running");
        self.slots[i].keys = keys;
    }

    /// A running node, to change it at run time as `ddhcpctl` would (key rotation).
    pub fn node_mut(&mut self, i: usize) -> Option<&mut Node> {
        self.slots[i].node.as_mut()
    }

    /// Node `i` sends `datagram` as it is, sealed and signed with its own keys: a member
    /// that holds the keys misbehaving.
    pub fn send_raw(&mut self, i: usize, dest: ddhcp::node::Dest, datagram: Vec<u8>) {
        if let Some(n) = self.slots[i].node.as_mut() {
            n.send_raw(dest, datagram);
            self.drain(i);
        }
    }

    /// A datagram from a host that is no node (an attacker at `from`): to every running
    /// node (multicast) or the one at the address, with the link's loss and delay.
    pub fn inject(&mut self, from: Ipv6Addr, dest: ddhcp::node::Dest, data: &[u8]) {
        let data: std::rc::Rc<[u8]> = data.into();
        let (targets, channel): (Vec<usize>, ddhcp::node::Channel) = match dest {
            ddhcp::node::Dest::Multicast => (
                (0..self.slots.len()).collect(),
                ddhcp::node::Channel::Multicast,
            ),
            ddhcp::node::Dest::Unicast(a) => (
                self.slots
                    .iter()
                    .position(|s| s.addr == a)
                    .into_iter()
                    .collect(),
                ddhcp::node::Channel::Unicast,
            ),
        };
        for j in targets {
            if self.slots[j].node.is_none() && self.slots[j].cnode.is_none() {
                continue;
            }
            if self.rng.random_bool(self.link.loss) {
                continue;
            }
            let lo = self.link.delay_min.as_millis() as u64;
            let hi = self.link.delay_max.as_millis() as u64;
            let delay = self.rng.random_range(lo..=hi);
            self.enqueue(
                Duration::from_millis(delay),
                j,
                Kind::Peer { from, channel },
                data.clone(),
            );
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
            claim(c.tentative, c.block_timeout, c.spare, c.learning),
            None,
        );
        self.push_slot(cfg, NodeId([0; 8]), Some(c))
    }

    fn push_slot(&mut self, cfg: NodeConfig, id: NodeId, c_cfg: Option<CConfig>) -> usize {
        let i = self.slots.len();
        let node_key: Option<[u8; 32]> =
            (self.node_keys && c_cfg.is_none()).then(|| self.rng.random());
        let id = node_key.map_or(id, |k| ddhcp::auth::NodeKey::from_seed(k).id());
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
            polling: false,
            keys: self.keys.clone(),
            node_key,
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
        // Its pins file: every node with a key it can have heard (all of them, here).
        let pins: Vec<(NodeId, [u8; 32])> = self
            .slots
            .iter()
            .filter_map(|s| s.node_key)
            .map(|k| {
                let nk = ddhcp::auth::NodeKey::from_seed(k);
                (nk.id(), *nk.public())
            })
            .collect();
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
        if !slot.keys.is_empty() {
            node.set_auth(&slot.keys, self.migrate).expect("valid keys");
        }
        if let Some(k) = slot.node_key {
            node.set_node_key(
                now,
                ddhcp::auth::NodeKey::from_seed(k),
                &pins,
                self.max_peer_blocks,
            )
            .expect("node keys need a mesh key");
        }
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
        // What the host has before the node's first adds (which come with the restore).
        let kept: Vec<Ipv4Addr> = self
            .host_addrs
            .iter()
            .filter(|(_, on)| on.contains(&i))
            .map(|(&ip, _)| ip)
            .collect();
        self.drain(i);
        self.host_start(i, kept);
    }

    /// A control request to node `i` (as `ddhcpctl` sends); its answer lands in
    /// [`Sim::answers`], now or later.
    pub fn query(&mut self, i: usize, id: u64, q: ddhcp::node::Query) {
        let now = self.now;
        if let Some(n) = self.slots[i].node.as_mut() {
            n.handle_query(now, id, q);
            self.drain(i);
        }
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

    /// The fake host of a stopped node reboots: every address on its interface is gone
    /// (its store is kept, as on a disk that survives the reboot).
    pub fn host_reboot(&mut self, i: usize) {
        assert!(self.slots[i].node.is_none(), "node {i} is running");
        self.host_addrs.retain(|_, on| {
            on.remove(&i);
            !on.is_empty()
        });
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

    /// The partition group of node `i` (0 when the link is whole).
    pub fn group(&self, i: usize) -> u32 {
        self.slots[i].group
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
                            if del.data.get(14).is_some_and(|c| {
                                [wire::command::REPLICATE, wire::command::REPLICA_ACK].contains(c)
                            }) {
                                self.ext_to_c += 1;
                            }
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
        self.enqueue(
            Duration::from_millis(after_ms),
            i,
            Kind::Host { pool, ev },
            std::rc::Rc::from(&[][..]),
        );
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

    /// At start: the host reports the tagged addresses it still has (`kept`, from before a
    /// crash), and socket polling begins.
    fn host_start(&mut self, i: usize, kept: Vec<Ipv4Addr>) {
        let pools = self.local_pools(i);
        if pools.is_empty() {
            return;
        }
        for ip in kept {
            let node = self.slots[i].node.as_ref().expect("started");
            if let Some(p) = pools
                .iter()
                .copied()
                .find(|&p| node.pool(p).range().locate(ip).is_some())
            {
                self.host_event(i, p, HostEvent::Added { ip }, 1);
            }
        }
        if !self.slots[i].polling {
            self.slots[i].polling = true;
            self.enqueue(USE_POLL, i, Kind::UsePoll, std::rc::Rc::from(&[][..]));
        }
    }

    fn use_poll(&mut self, i: usize) {
        if self.slots[i].node.is_none() {
            self.slots[i].polling = false; // stopped; the next start polls again
            return;
        }
        let used = self.sockets.get(&i).cloned().unwrap_or_default();
        for p in self.local_pools(i) {
            if let Some(n) = self.slots[i].node.as_mut() {
                n.handle_host(self.now, p, HostEvent::InUse(used.clone()));
            }
        }
        self.drain(i);
        self.enqueue(USE_POLL, i, Kind::UsePoll, std::rc::Rc::from(&[][..]));
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

    /// Moves a node's queued output onto the link and its events into the ownership record.
    fn drain(&mut self, i: usize) {
        let mut transmits = Vec::new();
        let mut events = Vec::new();
        let mut dhcp = Vec::new();
        let mut host = Vec::new();
        let mut answers = Vec::new();
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
                    Output::Answer { id, answer } => answers.push((id, answer)),
                    Output::Dhcp { .. } => {}
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
        let now = self.now;
        self.answers
            .extend(answers.into_iter().map(|(id, a)| (i, id, a, now)));
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
                Event::PeerAuthFailed { .. } => self.auth_failures += 1,
                Event::BlockContested { .. } => self.contested += 1,
                Event::KeyMismatch { holding, .. } => {
                    if holding {
                        self.mismatch_holds += 1
                    }
                }
                Event::EndLearning { .. }
                | Event::Lease(..)
                | Event::Local { .. }
                | Event::LocalDeleted { .. }
                | Event::Api(..) => {}
            }
        }
        self.send_peer(i, transmits);
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

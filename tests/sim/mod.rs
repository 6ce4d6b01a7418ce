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

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::net::Ipv6Addr;
use std::rc::Rc;
use std::time::Duration;

use ddhcp::node::{Channel, Dest, Event, Node, NodeConfig, derive_node_id};
use ddhcp::time::Instant;
use ddhcp::wire::NodeId;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

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
    cfg: NodeConfig,
    id: NodeId,
    addr: Ipv6Addr,
    group: u32,
    sent_pkts: u64,
    sent_bytes: u64,
}

struct Delivery {
    at: Instant,
    seq: u64,
    to: usize,
    from: Ipv6Addr,
    channel: Channel,
    data: Rc<[u8]>,
}

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
    /// Current owners of each block, from the nodes' own events.
    owners: HashMap<u32, Vec<usize>>,
    open_overlaps: HashMap<u32, Instant>,
    pub overlaps: Vec<Overlap>,
    pub id_changes: u64,
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
            owners: HashMap::new(),
            open_overlaps: HashMap::new(),
            overlaps: Vec::new(),
            id_changes: 0,
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
        let i = self.slots.len();
        let addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, (i >> 16) as u16, i as u16 + 1);
        self.slots.push(Slot {
            node: None,
            cfg,
            id,
            addr,
            group: 0,
            sent_pkts: 0,
            sent_bytes: 0,
        });
        self.start(i);
        i
    }

    /// Starts a stopped node, as a daemon restart without persisted leases: same id, empty
    /// table, learning phase as configured.
    pub fn start(&mut self, i: usize) {
        let seed = self.rng.random();
        let slot = &mut self.slots[i];
        assert!(slot.node.is_none(), "node {i} already running");
        slot.node = Some(Node::new(slot.cfg.clone(), slot.id, self.now, seed));
        self.drain(i);
    }

    /// Stops a node at once (crash or kill): it sends nothing more.
    pub fn stop(&mut self, i: usize) {
        self.slots[i].node = None;
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

    /// Processes the next thing that happens (a delivery or a node timer), if it is not
    /// after `limit`. Returns false when nothing is due by then.
    fn step(&mut self, limit: Instant) -> bool {
        let next_timer = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.node.as_ref().map(|n| (n.poll_timeout(), i)))
            .min();
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
                self.drain(i);
            }
            (_, Some(d)) => {
                if d > limit {
                    return false;
                }
                let del = self.queue.pop().expect("peeked");
                self.now = self.now.max(del.at);
                if let Some(n) = self.slots[del.to].node.as_mut() {
                    n.handle_datagram(self.now, del.channel, del.from, &del.data);
                    self.drain(del.to);
                }
            }
            _ => return false,
        }
        true
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
            if checked.is_none_or(|c| self.now.saturating_since(c) >= PRED_INTERVAL) {
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
        self.running().all(|(_, n)| {
            !n.blocks().is_learning()
                && (n.blocks().blocks_needed() <= 0 || n.blocks().free_count() == 0)
        })
    }

    /// Moves a node's queued output onto the link and its events into the ownership record.
    fn drain(&mut self, i: usize) {
        let mut transmits = Vec::new();
        let mut events = Vec::new();
        if let Some(n) = self.slots[i].node.as_mut() {
            while let Some(t) = n.poll_transmit() {
                transmits.push(t);
            }
            while let Some(e) = n.poll_event() {
                events.push(e);
            }
            self.slots[i].id = n.id();
        }
        for e in events {
            match e {
                Event::BlockClaimed { block, .. } => self.set_owner(block, i, true),
                Event::BlockDropped { block, .. } | Event::BlockLost { block, .. } => {
                    self.set_owner(block, i, false)
                }
                Event::NodeIdChanged { .. } => self.id_changes += 1,
                Event::EndLearning | Event::Lease(_) => {}
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
                if self.slots[j].group != group || self.slots[j].node.is_none() {
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
                        from,
                        channel,
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

    /// The settled-state invariants: at most one owner per block, and every running node's
    /// view of every owned block names the real owner at its real address; no running node
    /// believes a block is claimed by somebody who does not own it.
    pub fn check_agreement(&self) -> Result<(), String> {
        let mut owner: BTreeMap<u32, usize> = BTreeMap::new();
        for (i, n) in self.running() {
            for b in n.blocks().owned() {
                if let Some(prev) = owner.insert(b, i) {
                    return Err(format!("block {b} owned by nodes {prev} and {i}"));
                }
            }
        }
        for (j, n) in self.running() {
            for (&b, &i) in &owner {
                if i == j {
                    continue;
                }
                let want = (self.slots[i].id, self.slots[i].addr);
                match n.blocks().owner_of(b) {
                    Some(seen) if seen == want => {}
                    other => {
                        return Err(format!(
                            "node {j} sees block {b} as {other:?}, but node {i} ({}) owns it",
                            want.0
                        ));
                    }
                }
            }
            for v in n.blocks_view(self.now) {
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

//! The allocation service (IPAM): addresses of a pool's blocks handed to provisioning
//! scripts, one per owner, pinned until released.
//!
//! Why this needs no lock across nodes: an address is given only from a block this node
//! owns, and a block has one owner once the claim protocol has settled. What the service
//! keeps on top:
//!
//! * **Idempotent by owner.** The key is (pool, owner): asking again returns the address
//!   already held, so a retried script never gets a second one.
//! * **Pinned.** Every allocation (and every address cooling down) counts as used in its
//!   block, so the block table never gives the block up; refreshing it is the claim
//!   engine's usual work.
//! * **Durable before the answer.** The allocation is a change for the store; the answer
//!   comes out behind it (the node's polling contract).
//! * **Cooldown.** A released address is not handed out again for a while, so ARP caches
//!   and firewall rules forget it first.
//! * **Waiting, not failing.** With no room in owned blocks, a request waits (up to its
//!   timeout) while the demand it adds to the spare target makes the block table claim.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::time::Duration;

use crate::blocks::{BlockStateName, Blocks};
use crate::persist::Change;
use crate::range::ManagedRange;
use crate::time::Instant;
use crate::wire::NodeId;

/// What an API pool is configured with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiConfig {
    /// A released address is not handed out again before this much time.
    pub cooldown: Duration,
    /// Free addresses to keep in owned blocks, so a burst is served without a claim round.
    pub spare: u32,
    /// How long `allocate` waits for room when it gives no timeout.
    pub default_timeout: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            cooldown: Duration::from_secs(300),
            spare: 8,
            default_timeout: Duration::from_secs(10),
        }
    }
}

/// One allocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    pub owner: Box<str>,
    /// The node that made it (the replication issue moves allocations between nodes).
    pub node_id: NodeId,
    pub since: Instant,
    pub meta: BTreeMap<String, String>,
}

/// Something that happened, for hooks and audit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiEvent {
    Allocated {
        ip: Ipv4Addr,
        owner: String,
        meta: BTreeMap<String, String>,
    },
    Released {
        ip: Ipv4Addr,
        owner: String,
    },
    /// The block went to another node (a partition healed the other way): the allocation
    /// is gone here.
    Lost {
        ip: Ipv4Addr,
        owner: String,
    },
}

/// One row of `allocations` / the answer of `allocate`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocRow {
    pub ip: Ipv4Addr,
    pub pool: String,
    pub owner: String,
    pub node_id: NodeId,
    pub since_secs: u64,
    pub meta: BTreeMap<String, String>,
}

/// What `show IP` says of an address of an API pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShowRow {
    pub ip: Ipv4Addr,
    pub pool: String,
    /// `"allocated"`, `"cooldown"`, `"free"` (in a block we own), `"elsewhere"` (another
    /// node's or nobody's block).
    pub state: &'static str,
    pub allocation: Option<AllocRow>,
    pub cooldown_secs: Option<u64>,
    pub block: u32,
    /// The block's state in our table, and its owner when it is another node's.
    pub block_state: Option<BlockStateName>,
    pub block_owner: Option<NodeId>,
}

/// An answer of the service, for the node to address to its query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiAnswer {
    Allocated { row: AllocRow, created: bool },
    Refused(String),
}

#[derive(Clone, Debug)]
struct Waiter {
    id: u64,
    owner: String,
    ip: Option<Ipv4Addr>,
    meta: BTreeMap<String, String>,
    deadline: Instant,
}

pub struct Api {
    cfg: ApiConfig,
    range: ManagedRange,
    pool: String,
    allocs: BTreeMap<Ipv4Addr, Allocation>,
    /// Looked up by key only, never iterated: hash order cannot leak out.
    by_owner: HashMap<Box<str>, Ipv4Addr>,
    /// Released addresses and when they may be handed out again.
    cooling: BTreeMap<Ipv4Addr, Instant>,
    cooling_order: BTreeSet<(Instant, Ipv4Addr)>,
    /// Used addresses (allocations and cooling) per block.
    used: BTreeMap<u32, u32>,
    changed: BTreeSet<u32>,
    waiters: VecDeque<Waiter>,
    answers: VecDeque<(u64, ApiAnswer)>,
    events: VecDeque<ApiEvent>,
    changes: Vec<Change>,
    /// The block the last address was picked from (most likely to have room).
    hint: Option<u32>,
    /// Allocations made since the pool last sampled the demand (claim-ahead).
    demand: u64,
}

impl Api {
    pub fn new(cfg: ApiConfig, range: ManagedRange, pool: &str) -> Self {
        Api {
            cfg,
            range,
            pool: pool.to_string(),
            allocs: BTreeMap::new(),
            by_owner: HashMap::new(),
            cooling: BTreeMap::new(),
            cooling_order: BTreeSet::new(),
            used: BTreeMap::new(),
            changed: BTreeSet::new(),
            waiters: VecDeque::new(),
            answers: VecDeque::new(),
            events: VecDeque::new(),
            changes: Vec::new(),
            hint: None,
            demand: 0,
        }
    }

    /// Whether [`Api::take_demand`] would count anything.
    pub fn demand_pending(&self) -> bool {
        self.demand > 0 || !self.waiters.is_empty()
    }

    /// New allocations since the last call plus those waiting now: what the pool's
    /// claim-ahead extrapolates, as it does for DHCP clients.
    pub fn take_demand(&mut self) -> u64 {
        std::mem::take(&mut self.demand) + self.waiters.len() as u64
    }

    pub fn config(&self) -> &ApiConfig {
        &self.cfg
    }

    pub fn count(&self) -> usize {
        self.allocs.len()
    }

    pub fn cooling_count(&self) -> usize {
        self.cooling.len()
    }

    pub fn waiting(&self) -> usize {
        self.waiters.len()
    }

    /// Free addresses the block table should keep for us: the spare target plus one per
    /// request waiting for room.
    pub fn free_wanted(&self) -> u32 {
        self.cfg
            .spare
            .saturating_add(u32::try_from(self.waiters.len()).unwrap_or(u32::MAX))
    }

    pub fn poll_answer(&mut self) -> Option<(u64, ApiAnswer)> {
        self.answers.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<ApiEvent> {
        self.events.pop_front()
    }

    pub fn take_changes(&mut self, out: &mut Vec<Change>) {
        out.append(&mut self.changes);
    }

    /// Usage per block changed since the last call.
    pub fn take_changed(&mut self) -> Vec<(u32, u32)> {
        std::mem::take(&mut self.changed)
            .into_iter()
            .map(|b| (b, self.used.get(&b).copied().unwrap_or(0)))
            .collect()
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        let cool = self.cooling_order.first().map(|&(t, _)| t);
        let wait = self.waiters.iter().map(|w| w.deadline).min();
        [cool, wait].into_iter().flatten().min()
    }

    fn row(&self, now: Instant, ip: Ipv4Addr, a: &Allocation) -> AllocRow {
        AllocRow {
            ip,
            pool: self.pool.clone(),
            owner: a.owner.to_string(),
            node_id: a.node_id,
            since_secs: now.saturating_since(a.since).as_secs(),
            meta: a.meta.clone(),
        }
    }

    fn add_use(&mut self, ip: Ipv4Addr, delta: i32) {
        let Some((b, _)) = self.range.locate(ip) else {
            return;
        };
        let u = self.used.entry(b).or_insert(0);
        *u = u.saturating_add_signed(delta);
        if *u == 0 {
            self.used.remove(&b);
        }
        self.changed.insert(b);
    }

    /// Whether `ip` can be handed out now (in an owned block, not the range's network or
    /// broadcast address, not held, not cooling down).
    fn available(&self, ip: Ipv4Addr, blocks: &Blocks) -> bool {
        ip != self.range.prefix()
            && ip != self.range.broadcast()
            && !self.allocs.contains_key(&ip)
            && !self.cooling.contains_key(&ip)
            && self.range.locate(ip).is_some_and(|(b, _)| blocks.owns(b))
    }

    /// A free address of an owned block: the block of the last one first, then any block
    /// the usage table says has room, so a pool with a million allocations costs a block's
    /// scan per allocation and a walk over the owned blocks once per block filled.
    fn pick(&mut self, blocks: &Blocks) -> Option<Ipv4Addr> {
        let size = self.range.block_size();
        if let Some(h) = self.hint
            && blocks.owns(h)
        {
            for off in 0..size {
                let ip = self.range.address(h, off);
                if self.available(ip, blocks) {
                    return Some(ip);
                }
            }
        }
        for b in blocks.owned() {
            let used = self.used.get(&b).copied().unwrap_or(0);
            // The first and last block lose the network and broadcast address.
            if used >= size {
                continue;
            }
            for off in 0..size {
                let ip = self.range.address(b, off);
                if self.available(ip, blocks) {
                    self.hint = Some(b);
                    return Some(ip);
                }
            }
        }
        None
    }

    /// `allocate`: answered at once, or once room is claimed, or refused at `timeout`.
    #[allow(clippy::too_many_arguments)]
    pub fn allocate(
        &mut self,
        now: Instant,
        id: u64,
        me: NodeId,
        owner: String,
        ip: Option<Ipv4Addr>,
        meta: BTreeMap<String, String>,
        timeout: Option<Duration>,
        blocks: &mut Blocks,
    ) {
        if let Err(e) = check_owner(&owner).and_then(|()| check_meta(&meta)) {
            return self.answers.push_back((id, ApiAnswer::Refused(e)));
        }
        if let Some(&held) = self.by_owner.get(owner.as_str()) {
            let answer = match ip {
                Some(want) if want != held => ApiAnswer::Refused(format!(
                    "owner '{owner}' already holds {held} in pool '{}' (release it first)",
                    self.pool
                )),
                _ => ApiAnswer::Allocated {
                    row: self.row(now, held, &self.allocs[&held]),
                    created: false,
                },
            };
            return self.answers.push_back((id, answer));
        }
        if let Some(want) = ip
            && let Err(e) = self.can_have(now, want, blocks)
        {
            return self.answers.push_back((id, ApiAnswer::Refused(e)));
        }
        // Another request of this owner is already waiting: this one waits with it and
        // gets the same answer.
        let deadline = now + timeout.unwrap_or(self.cfg.default_timeout);
        self.waiters.push_back(Waiter {
            id,
            owner,
            ip,
            meta,
            deadline,
        });
        self.serve(now, me, blocks);
    }

    /// Why `ip` cannot be given (now or after a claim), if it cannot.
    fn can_have(&self, now: Instant, ip: Ipv4Addr, blocks: &mut Blocks) -> Result<(), String> {
        let Some((b, _)) = self.range.locate(ip) else {
            return Err(format!(
                "{ip} is not in pool '{}' ({})",
                self.pool, self.range
            ));
        };
        if ip == self.range.prefix() || ip == self.range.broadcast() {
            return Err(format!(
                "{ip} is the network or broadcast address of {}",
                self.range
            ));
        }
        if let Some(a) = self.allocs.get(&ip) {
            return Err(format!("{ip} is allocated to owner '{}'", a.owner));
        }
        if let Some(&until) = self.cooling.get(&ip) {
            return Err(format!(
                "{ip} was released and cools down for {} s more",
                until.saturating_since(now).as_secs()
            ));
        }
        if blocks.owns(b) {
            return Ok(());
        }
        if let Some((owner, _)) = blocks.owner_of(b) {
            return Err(format!("{ip} is in block {b}, owned by node {owner}"));
        }
        if blocks.want(b) {
            Ok(())
        } else {
            Err(format!(
                "{ip} is in block {b}, which this node cannot claim now"
            ))
        }
    }

    /// Answers what can be answered: waiters in order, each with its own address or the
    /// next free one; those past their deadline are refused.
    fn serve(&mut self, now: Instant, me: NodeId, blocks: &mut Blocks) {
        let mut still = VecDeque::new();
        while let Some(w) = self.waiters.pop_front() {
            if let Some(&held) = self.by_owner.get(w.owner.as_str()) {
                // A request of the same owner was served meanwhile.
                let answer = match w.ip {
                    Some(want) if want != held => ApiAnswer::Refused(format!(
                        "owner '{}' already holds {held} in pool '{}'",
                        w.owner, self.pool
                    )),
                    _ => ApiAnswer::Allocated {
                        row: self.row(now, held, &self.allocs[&held]),
                        created: false,
                    },
                };
                self.answers.push_back((w.id, answer));
                continue;
            }
            let got = match w.ip {
                Some(want) if self.available(want, blocks) => Some(want),
                Some(want) => {
                    // Lost to another node's claim meanwhile?
                    if let Err(e) = self.can_have(now, want, blocks) {
                        self.answers.push_back((w.id, ApiAnswer::Refused(e)));
                        continue;
                    }
                    None
                }
                None => self.pick(blocks),
            };
            match got {
                Some(ip) => {
                    let alloc = Allocation {
                        owner: w.owner.clone().into(),
                        node_id: me,
                        since: now,
                        meta: w.meta.clone(),
                    };
                    let row = self.row(now, ip, &alloc);
                    self.insert(ip, alloc.clone());
                    self.demand += 1;
                    self.changes.push(Change::Allocated { ip, alloc });
                    self.events.push_back(ApiEvent::Allocated {
                        ip,
                        owner: w.owner,
                        meta: w.meta,
                    });
                    self.answers
                        .push_back((w.id, ApiAnswer::Allocated { row, created: true }));
                }
                None if w.deadline <= now => {
                    let why = match w.ip {
                        Some(ip) => format!("{ip}: its block was not claimed in time; try again"),
                        None => format!(
                            "no free address in pool '{}' within the timeout (the pool may be full, or claims are still settling)",
                            self.pool
                        ),
                    };
                    self.answers.push_back((w.id, ApiAnswer::Refused(why)));
                }
                None => still.push_back(w),
            }
        }
        self.waiters = still;
    }

    fn insert(&mut self, ip: Ipv4Addr, a: Allocation) {
        self.by_owner.insert(a.owner.clone(), ip);
        if self.allocs.insert(ip, a).is_none() {
            self.add_use(ip, 1);
        }
    }

    fn remove(&mut self, ip: Ipv4Addr) -> Option<Allocation> {
        let a = self.allocs.remove(&ip)?;
        self.by_owner.remove(&a.owner);
        self.add_use(ip, -1);
        Some(a)
    }

    fn cool(&mut self, ip: Ipv4Addr, until: Instant) {
        if let Some(old) = self.cooling.insert(ip, until) {
            self.cooling_order.remove(&(old, ip));
        } else {
            self.add_use(ip, 1);
        }
        self.cooling_order.insert((until, ip));
    }

    /// `release IP` or `release --owner`: the address cools down, then is free again.
    pub fn release(
        &mut self,
        now: Instant,
        ip: Option<Ipv4Addr>,
        owner: Option<&str>,
    ) -> Result<Ipv4Addr, String> {
        let ip = match (ip, owner) {
            (Some(ip), _) => ip,
            (None, Some(o)) => *self
                .by_owner
                .get(o)
                .ok_or_else(|| format!("owner '{o}' holds no address in pool '{}'", self.pool))?,
            (None, None) => return Err("release needs an address or an owner".into()),
        };
        if let Some(o) = owner
            && self.allocs.get(&ip).is_some_and(|a| &*a.owner != o)
        {
            return Err(format!("{ip} is not allocated to owner '{o}'"));
        }
        let Some(a) = self.remove(ip) else {
            return Err(format!("{ip} is not allocated in pool '{}'", self.pool));
        };
        let until = now + self.cfg.cooldown;
        self.cool(ip, until);
        self.changes.push(Change::AllocGone {
            ip,
            cooldown: Some(until),
        });
        self.events.push_back(ApiEvent::Released {
            ip,
            owner: a.owner.to_string(),
        });
        Ok(ip)
    }

    pub fn handle_timeout(&mut self, now: Instant, me: NodeId, blocks: &mut Blocks) {
        while let Some(&(until, ip)) = self.cooling_order.first() {
            if until > now {
                break;
            }
            self.cooling_order.pop_first();
            self.cooling.remove(&ip);
            self.add_use(ip, -1);
        }
        self.serve(now, me, blocks);
    }

    /// The durable records of `block`'s allocations and cooling addresses, in address
    /// order (a new replica holder's copy of the block).
    pub fn block_records(&self, block: u32) -> Vec<Change> {
        let first = self.range.block_first(block);
        let last = self.range.address(block, self.range.block_size() - 1);
        let allocs = self
            .allocs
            .range(first..=last)
            .map(|(&ip, a)| Change::Allocated {
                ip,
                alloc: a.clone(),
            });
        let cooling = self
            .cooling
            .range(first..=last)
            .map(|(&ip, &until)| Change::AllocGone {
                ip,
                cooldown: Some(until),
            });
        allocs.chain(cooling).collect()
    }

    /// Our block went to another node or was given up: what we held there is gone.
    pub fn block_gone(&mut self, block: u32) {
        let first = self.range.block_first(block);
        let last = self.range.address(block, self.range.block_size() - 1);
        let ips: Vec<Ipv4Addr> = self.allocs.range(first..=last).map(|(&ip, _)| ip).collect();
        for ip in ips {
            if let Some(a) = self.remove(ip) {
                self.changes.push(Change::AllocGone { ip, cooldown: None });
                self.events.push_back(ApiEvent::Lost {
                    ip,
                    owner: a.owner.to_string(),
                });
            }
        }
        let cooling: Vec<Ipv4Addr> = self
            .cooling
            .range(first..=last)
            .map(|(&ip, _)| ip)
            .collect();
        for ip in cooling {
            if let Some(until) = self.cooling.remove(&ip) {
                self.cooling_order.remove(&(until, ip));
                self.add_use(ip, -1);
            }
        }
    }

    /// Allocations and cooling addresses from the store; `keep` says whether their block is
    /// ours (or to be claimed back).
    pub fn restore(
        &mut self,
        now: Instant,
        allocs: Vec<(Ipv4Addr, Allocation)>,
        cooling: Vec<(Ipv4Addr, Instant)>,
    ) {
        for (ip, a) in allocs {
            if self.range.locate(ip).is_some() && !self.by_owner.contains_key(&a.owner) {
                self.insert(ip, a);
            }
        }
        for (ip, until) in cooling {
            if until > now && !self.allocs.contains_key(&ip) && self.range.locate(ip).is_some() {
                self.cool(ip, until);
            }
        }
    }

    /// An allocation another node made in a block that is ours now (it held the block
    /// while we were cut off, or lost it to us in a tie-break): kept, and written, unless
    /// the address or the owner has another allocation here. False on such a conflict
    /// (ours stays).
    pub fn adopt(&mut self, ip: Ipv4Addr, a: Allocation) -> bool {
        if let Some(cur) = self.allocs.get(&ip) {
            return cur.owner == a.owner;
        }
        if self.by_owner.contains_key(&a.owner) || self.range.locate(ip).is_none() {
            return false;
        }
        if let Some(until) = self.cooling.remove(&ip) {
            self.cooling_order.remove(&(until, ip));
            self.add_use(ip, -1);
        }
        self.changes.push(Change::Allocated {
            ip,
            alloc: a.clone(),
        });
        self.insert(ip, a);
        true
    }

    /// Addresses of `block` allocated or cooling down.
    pub fn used_in(&self, block: u32) -> u32 {
        self.used.get(&block).copied().unwrap_or(0)
    }

    /// Blocks holding restored allocations (to be claimed back first if they lapsed).
    pub fn blocks_in_use(&self) -> BTreeSet<u32> {
        self.used.keys().copied().collect()
    }

    pub fn rows(&self, now: Instant, owner: Option<&str>) -> Vec<AllocRow> {
        match owner {
            Some(o) => self
                .by_owner
                .get(o)
                .map(|ip| vec![self.row(now, *ip, &self.allocs[ip])])
                .unwrap_or_default(),
            None => self
                .allocs
                .iter()
                .map(|(&ip, a)| self.row(now, ip, a))
                .collect(),
        }
    }

    pub fn show(&self, now: Instant, ip: Ipv4Addr, blocks: &Blocks, me: NodeId) -> Option<ShowRow> {
        let (b, _) = self.range.locate(ip)?;
        let allocation = self.allocs.get(&ip).map(|a| self.row(now, ip, a));
        let cooldown_secs = self
            .cooling
            .get(&ip)
            .map(|u| u.saturating_since(now).as_secs());
        let view = blocks.view(now, me);
        let bv = view.iter().find(|v| v.index == b);
        let state = if allocation.is_some() {
            "allocated"
        } else if cooldown_secs.is_some() {
            "cooldown"
        } else if blocks.owns(b) {
            "free"
        } else {
            "elsewhere"
        };
        Some(ShowRow {
            ip,
            pool: self.pool.clone(),
            state,
            allocation,
            cooldown_secs,
            block: b,
            block_state: bv.map(|v| v.state),
            block_owner: bv.and_then(|v| v.owner).filter(|&o| o != me),
        })
    }
}

/// Owner ids are the caller's keys (a VM's UUID, a host name): printable, bounded.
fn check_owner(owner: &str) -> Result<(), String> {
    if owner.is_empty() || owner.len() > 128 {
        return Err("owner: 1 to 128 characters".into());
    }
    if owner.chars().any(|c| c.is_control()) {
        return Err("owner: no control characters".into());
    }
    Ok(())
}

/// Keys and values together, in bytes: an allocation is one store record and one
/// replication record, and both have a size limit (`store::codec::MAX_BODY`).
pub const MAX_META_BYTES: usize = 512;

fn check_meta(meta: &BTreeMap<String, String>) -> Result<(), String> {
    if meta.len() > 32 {
        return Err("meta: at most 32 keys".into());
    }
    let total: usize = meta.iter().map(|(k, v)| k.len() + v.len()).sum();
    if total > MAX_META_BYTES {
        return Err(format!(
            "meta: {total} bytes of keys and values, at most {MAX_META_BYTES} in all"
        ));
    }
    for (k, v) in meta {
        if k.is_empty() || k.len() > 64 || v.len() > 256 {
            return Err(format!("meta '{k}': keys 1 to 64 bytes, values up to 256"));
        }
        if k.chars().chain(v.chars()).any(|c| c.is_control()) {
            return Err(format!("meta '{k}': no control characters"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{Answer, Node, NodeConfig, PoolConfig, Query, ServiceConfig};
    use crate::testing::{Harness, claim};

    fn t(ms: u64) -> Instant {
        Instant::from_millis(1_000_000 + ms)
    }

    /// A node alone on its link with one API pool (10.9.0.0/24, blocks of 8, cooldown 5 s).
    fn node(spare: u32) -> Harness {
        let cfg = NodeConfig {
            pools: vec![PoolConfig {
                name: "vms".into(),
                range: ManagedRange::new(Ipv4Addr::new(10, 9, 0, 0), 24, 3).unwrap(),
                claim: claim(2, 30, 0, false),
                service: ServiceConfig::Api(ApiConfig {
                    cooldown: Duration::from_secs(5),
                    spare,
                    default_timeout: Duration::from_secs(6),
                }),
                location: None,
            }],
            location: None,
            replicas: crate::replica::DEFAULT_REPLICAS,
            recover: false,
            max_replica_lag: crate::replica::DEFAULT_MAX_LAG,
            replica_sync: false,
        };
        Harness::new(Node::new(cfg, NodeId([1; 8]), t(0), 7))
    }

    fn allocate(h: &mut Harness, now: Instant, id: u64, owner: &str, ip: Option<&str>) {
        h.handle_query(
            now,
            id,
            Query::Allocate {
                pool: "vms".into(),
                owner: owner.into(),
                ip: ip.map(|s| s.parse().unwrap()),
                meta: BTreeMap::from([("env".to_string(), "test".to_string())]),
                timeout: None,
            },
        );
    }

    /// Runs the node's timers until `until`, a step at a time.
    fn run(h: &mut Harness, from: Instant, until: Instant) {
        let mut now = from;
        while now < until {
            now = (now + Duration::from_millis(100)).min(until);
            h.handle_timeout(now);
        }
    }

    fn answer(h: &mut Harness) -> Option<(u64, Answer)> {
        h.poll_answer()
    }

    #[test]
    fn waits_for_a_claim_then_is_idempotent_by_owner() {
        let mut h = node(2);
        allocate(&mut h, t(0), 1, "vm-a", None);
        assert_eq!(answer(&mut h), None, "no block yet: it waits");
        run(&mut h, t(0), t(4000));
        let Some((1, Answer::Allocated { row, created: true })) = answer(&mut h) else {
            panic!("allocated once the block was claimed");
        };
        assert_eq!(row.owner, "vm-a");
        assert_eq!(row.meta["env"], "test");
        allocate(&mut h, t(4000), 2, "vm-a", None);
        let Some((
            2,
            Answer::Allocated {
                row: again,
                created: false,
            },
        )) = answer(&mut h)
        else {
            panic!("the same owner again");
        };
        assert_eq!(again.ip, row.ip);
        allocate(&mut h, t(4000), 3, "vm-b", None);
        let Some((
            3,
            Answer::Allocated {
                row: b,
                created: true,
            },
        )) = answer(&mut h)
        else {
            panic!("a second owner, at once from the owned block");
        };
        assert_ne!(b.ip, row.ip);
        // Asking for another address for an owner who holds one is refused.
        allocate(&mut h, t(4000), 4, "vm-a", Some(&b.ip.to_string()));
        assert!(
            matches!(answer(&mut h), Some((4, Answer::Refused(e))) if e.contains("already holds"))
        );
        // The pool's blocks are pinned: they count as used.
        let p = &h.pools()[0];
        assert_eq!(p.api().unwrap().count(), 2);
    }

    #[test]
    fn a_given_address_is_refused_with_the_reason() {
        let mut h = node(0);
        allocate(&mut h, t(0), 1, "vm-a", Some("10.9.0.9"));
        run(&mut h, t(0), t(4000));
        assert!(matches!(
            answer(&mut h),
            Some((1, Answer::Allocated { .. }))
        ));
        allocate(&mut h, t(4000), 2, "vm-b", Some("10.9.0.9"));
        assert!(
            matches!(answer(&mut h), Some((2, Answer::Refused(e))) if e.contains("allocated to owner 'vm-a'"))
        );
        allocate(&mut h, t(4000), 3, "vm-b", Some("10.9.1.9"));
        assert!(
            matches!(answer(&mut h), Some((3, Answer::Refused(e))) if e.contains("not in pool"))
        );
        allocate(&mut h, t(4000), 4, "vm-b", Some("10.9.0.0"));
        assert!(matches!(answer(&mut h), Some((4, Answer::Refused(e))) if e.contains("network")));
        allocate(&mut h, t(4000), 5, "", None);
        assert!(matches!(answer(&mut h), Some((5, Answer::Refused(_)))));
    }

    #[test]
    fn released_addresses_cool_down_first() {
        let mut h = node(0);
        allocate(&mut h, t(0), 1, "vm-a", Some("10.9.0.9"));
        run(&mut h, t(0), t(4000));
        assert!(matches!(
            answer(&mut h),
            Some((1, Answer::Allocated { .. }))
        ));
        h.handle_query(
            t(4000),
            2,
            Query::Release {
                ip: None,
                pool: Some("vms".into()),
                owner: Some("vm-a".into()),
            },
        );
        assert!(matches!(answer(&mut h), Some((2, Answer::Released { .. }))));
        h.handle_query(
            t(4000),
            3,
            Query::Release {
                ip: Some("10.9.0.9".parse().unwrap()),
                pool: None,
                owner: None,
            },
        );
        assert!(
            matches!(answer(&mut h), Some((3, Answer::Refused(e))) if e.contains("not allocated"))
        );
        allocate(&mut h, t(5000), 4, "vm-b", Some("10.9.0.9"));
        assert!(
            matches!(answer(&mut h), Some((4, Answer::Refused(e))) if e.contains("cools down"))
        );
        run(&mut h, t(5000), t(9100));
        allocate(&mut h, t(9100), 5, "vm-b", Some("10.9.0.9"));
        assert!(matches!(
            answer(&mut h),
            Some((5, Answer::Allocated { created: true, .. }))
        ));
    }

    #[test]
    fn a_full_pool_refuses_at_the_timeout() {
        let mut h = node(0);
        let mut now = t(0);
        // 256 addresses less network and broadcast.
        for k in 0..254u64 {
            allocate(&mut h, now, k, &format!("vm-{k}"), None);
            run(&mut h, now, now + Duration::from_millis(500));
            now = now + Duration::from_millis(500);
        }
        run(&mut h, now, now + Duration::from_secs(10));
        now = now + Duration::from_secs(10);
        let mut ips = BTreeSet::new();
        while let Some((_, a)) = answer(&mut h) {
            let Answer::Allocated { row, .. } = a else {
                panic!("{a:?}")
            };
            assert!(ips.insert(row.ip), "{} twice", row.ip);
        }
        assert_eq!(ips.len(), 254);
        allocate(&mut h, now, 999, "one-too-many", None);
        run(&mut h, now, now + Duration::from_secs(7));
        assert!(
            matches!(answer(&mut h), Some((999, Answer::Refused(e))) if e.contains("no free address"))
        );
    }

    /// What the store would hold of `h`'s changes.
    fn stored(h: &mut Harness) -> crate::store::PoolState {
        let mut st = crate::store::PoolState::default();
        for (_, c) in h.take_changes() {
            st.apply(c);
        }
        st
    }

    /// What the store gives back at a restart at `at`.
    fn restored(st: &crate::store::PoolState, at: Instant) -> crate::persist::Restored {
        st.clone().into_restored(&crate::store::WallClock {
            core_now: at,
            wall_now_ms: at.as_millis(),
        })
    }

    fn rows(h: &mut Harness, now: Instant) -> Vec<AllocRow> {
        h.handle_query(
            now,
            77,
            Query::Allocations {
                pool: None,
                owner: None,
            },
        );
        match answer(h) {
            Some((77, Answer::Allocations(r))) => r,
            a => panic!("{a:?}"),
        }
    }

    #[test]
    fn allocations_come_back_after_a_restart_short_or_long() {
        let mut h = node(0);
        allocate(&mut h, t(0), 1, "vm-a", Some("10.9.0.9"));
        run(&mut h, t(0), t(4000));
        assert!(matches!(
            answer(&mut h),
            Some((1, Answer::Allocated { .. }))
        ));
        // Within the block TTL (30 s here): ours again at once, the allocation with it.
        // Long after: the block is claimed back first, the allocation pinned meanwhile.
        let st = stored(&mut h);
        for down in [2_000, 120_000] {
            let back = t(4000 + down);
            let r = restored(&st, back);
            let cfg = NodeConfig {
                pools: vec![h.pools()[0].config().clone()],
                location: None,
                replicas: crate::replica::DEFAULT_REPLICAS,
                recover: false,
                max_replica_lag: crate::replica::DEFAULT_MAX_LAG,
                replica_sync: false,
            };
            let mut h2 = Harness::new(Node::new(cfg, NodeId([1; 8]), back, 8));
            h2.restore(back, vec![r]);
            let got = rows(&mut h2, back);
            assert_eq!(got.len(), 1, "down {down} ms");
            assert_eq!(
                (got[0].ip.to_string().as_str(), got[0].owner.as_str()),
                ("10.9.0.9", "vm-a")
            );
            run(&mut h2, back, back + Duration::from_secs(5));
            let later = back + Duration::from_secs(5);
            assert!(
                h2.pools()[0].blocks().owns(1),
                "down {down} ms: block 1 ours again"
            );
            allocate(&mut h2, later, 2, "vm-a", None);
            assert!(
                matches!(answer(&mut h2), Some((2, Answer::Allocated { created: false, ref row })) if row.ip.to_string() == "10.9.0.9"),
                "down {down} ms: the same address, not a new one"
            );
        }
    }
}

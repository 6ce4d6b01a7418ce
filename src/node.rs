//! One node: the endpoint of the peer protocol, with its pools; inputs in, outputs out.
//!
//! The shell feeds datagrams, control queries and "the time is now" in and drains durable
//! changes, outputs and the next wake-up instant, in the manner of `quinn-proto`. Nothing
//! here touches a socket, a clock or an unseeded random source, so the simulator can run
//! hundreds of nodes in one process reproducibly.
//!
//! The node owns what is shared by its pools (node id, duplicate-id detection, counters of
//! the server link) and hands every datagram to the [`Pool`] its header names: a message
//! carries the range's prefix, prefix length and block size, and those identify the pool.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, Ipv6Addr};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tracing::{debug, error, info, warn};

use crate::auth::{Auth, AuthDrop, MeshKey, NodeKey, Opened};
use crate::blocks::{BlockView, Blocks};
use crate::config::DhcpOption;
use crate::dhcp::options::OptionStore;
use crate::dhcp::{Dhcp, DhcpTransmit, LeaseEvent};
use crate::persist::{Change, Restored};
use crate::pool::{Pool, PoolOutput};
use crate::range::ManagedRange;
use crate::replica::Replication;
use crate::stats::{Counter, Counters};
use crate::time::Instant;
use crate::wire::{self, Message, NodeId, Packet};

pub use crate::pool::{PoolConfig, ServiceConfig};

/// What a node is configured with.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// In a stable order: the index of a pool is how changes and outputs name it.
    pub pools: Vec<PoolConfig>,
    /// This node's location: it claims only in pools of this location or of none.
    pub location: Option<String>,
    /// Peers that hold a replica of each of our blocks (`--replicas`, 0 = none).
    pub replicas: usize,
    /// Rebuild from the peers (`--recover`, or a fixed node id and an empty store): claim
    /// nothing until they have handed back what they hold for us.
    pub recover: bool,
    /// `--max-replica-lag`: new API allocations are refused while a holder lags more.
    pub max_replica_lag: std::time::Duration,
    /// `--replica-sync`: an API allocation is answered once a holder acknowledged it.
    pub replica_sync: bool,
}

impl NodeConfig {
    /// A node with the one pool `-N/-b/-c/-o` describe.
    pub fn single(
        range: ManagedRange,
        claim: crate::blocks::ClaimConfig,
        dhcp: Option<crate::dhcp::DhcpConfig>,
    ) -> Self {
        NodeConfig {
            pools: vec![PoolConfig::default_pool(range, claim, dhcp)],
            location: None,
            replicas: crate::replica::DEFAULT_REPLICAS,
            recover: false,
            max_replica_lag: crate::replica::DEFAULT_MAX_LAG,
            replica_sync: false,
        }
    }
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

/// Things that happened, for logs, hooks and the audit log. `pool` is the pool's index in
/// [`NodeConfig::pools`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    EndLearning {
        pool: usize,
    },
    BlockClaimed {
        pool: usize,
        block: u32,
        first: Ipv4Addr,
    },
    BlockDropped {
        pool: usize,
        block: u32,
        first: Ipv4Addr,
    },
    /// A greater node id took a block we owned.
    BlockLost {
        pool: usize,
        block: u32,
        first: Ipv4Addr,
        to: NodeId,
    },
    /// With node keys, `by` kept claiming a block we hold for a block timeout, refused
    /// ([`crate::blocks::BlockEvent::Contested`]).
    BlockContested {
        pool: usize,
        block: u32,
        first: Ipv4Addr,
        by: NodeId,
    },
    /// Datagrams from `from` failed authentication (`reason`: `AuthDrop::as_str`); sent
    /// for the first failure of a source, and again after it was quiet a block timeout.
    /// `node` is the id its header claims, unverified.
    PeerAuthFailed {
        from: Ipv6Addr,
        node: NodeId,
        reason: &'static str,
    },
    /// Pool `pool` stopped (`holding`) or resumed claiming new blocks: it hears datagrams
    /// it cannot verify and no peer it can, so it cannot tell a free block from one a peer
    /// with another key holds.
    KeyMismatch {
        pool: usize,
        holding: bool,
    },
    /// Another host used our node id; we picked `new`.
    NodeIdChanged {
        old: NodeId,
        new: NodeId,
    },
    /// A DHCP allocation or release in a pool.
    Lease(usize, LeaseEvent),
    /// An address of a local pool moved in its life cycle (`from`/`to`: `free`,
    /// `reserved`, `standby`, `active`).
    Local {
        pool: usize,
        ip: Ipv4Addr,
        from: &'static str,
        to: &'static str,
        reason: String,
    },
    /// Someone else deleted a standby or active address of local pool `pool` from the
    /// interface (`state`: which it was); it is added again after a back-off.
    LocalDeleted {
        pool: usize,
        ip: Ipv4Addr,
        state: &'static str,
    },
    /// An allocation of API pool `pool` was made, released or lost.
    Api(usize, crate::api::ApiEvent),
}

/// A control request, as the core takes it. `pool: None` means the pool named `default`,
/// else the only pool; with several pools and none named `default` it is refused with the
/// list of pools.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Query {
    Status,
    Blocks {
        pool: Option<String>,
    },
    Leases {
        pool: Option<String>,
    },
    Options {
        pool: Option<String>,
    },
    SetOption {
        pool: Option<String>,
        option: DhcpOption,
    },
    RemoveOption {
        pool: Option<String>,
        code: u8,
    },
    LeaseTime {
        pool: Option<String>,
        secs: u32,
    },
    /// The addresses of local pools (all of them without a pool name).
    Local {
        pool: Option<String>,
    },
    /// An address of API pool `pool` for `owner`; answered when it is durable, possibly
    /// after waiting up to `timeout` for a claim.
    Allocate {
        pool: String,
        owner: String,
        ip: Option<Ipv4Addr>,
        meta: std::collections::BTreeMap<String, String>,
        timeout: Option<std::time::Duration>,
    },
    /// Gives an allocation back, by address (in any API pool) or by (pool, owner).
    Release {
        ip: Option<Ipv4Addr>,
        pool: Option<String>,
        owner: Option<String>,
    },
    Allocations {
        pool: Option<String>,
        owner: Option<String>,
    },
    Show {
        ip: Ipv4Addr,
    },
    /// A third party says `ip` (of a local pool) is in use, or no longer.
    Mark {
        ip: Ipv4Addr,
        active: bool,
    },
    /// New targets for a local pool until the daemon restarts; `None` keeps a value.
    /// `hysteresis` is in seconds.
    SetLocal {
        pool: Option<String>,
        standby: Option<u32>,
        min: Option<u32>,
        max_standby: Option<u32>,
        hysteresis: Option<u32>,
    },
}

/// One address of `ddhcpctl local`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalRow {
    pub ip: Ipv4Addr,
    pub pool: String,
    pub iface: String,
    pub state: &'static str,
    pub since_secs: u64,
    pub reason: String,
}

/// One pool in `status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolStatus {
    pub name: String,
    pub range: ManagedRange,
    /// `"dhcp"` or `"none"` (no service: `-S`, or another location's pool).
    pub use_: &'static str,
    pub location: Option<String>,
    /// Whether this node claims in it (its location matches).
    pub claims: bool,
    pub learning: bool,
    pub blocks_owned: usize,
    pub leases_active: usize,
}

/// The numbers `ddhcpctl status` shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub node_id: NodeId,
    /// Index into `pools` of the pool a command without `--pool` means, if any.
    pub default_pool: Option<usize>,
    pub pools: Vec<PoolStatus>,
    pub peers: usize,
    /// Rebuilding from the peers (`--recover`): nothing new is served yet.
    pub recovering: bool,
}

/// One lease row of `ddhcpctl leases`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRow {
    pub ip: Ipv4Addr,
    pub mac: String,
    pub state: &'static str,
    pub expires_in: u64,
    pub block: u32,
}

/// The core's answer to a [`Query`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Status(Status),
    Blocks {
        pool: String,
        node_id: NodeId,
        blocks: Vec<BlockView>,
    },
    Leases {
        pool: String,
        leases: Vec<LeaseRow>,
    },
    Options {
        pool: String,
        options: Vec<DhcpOption>,
        lease_time: u32,
    },
    Local {
        addresses: Vec<LocalRow>,
    },
    Allocated {
        row: crate::api::AllocRow,
        created: bool,
    },
    Released {
        ip: Ipv4Addr,
    },
    Allocations(Vec<crate::api::AllocRow>),
    Show(crate::api::ShowRow),
    /// A change was made (it is durable once the answer leaves, see [`Node`]).
    Done,
    Refused(String),
}

/// What the node produced, in the order it did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// A datagram for the server link.
    Peer(Transmit),
    /// A datagram for a client or relay on pool `pool`'s client interface.
    Dhcp {
        pool: usize,
        transmit: DhcpTransmit,
    },
    /// Something for the host to do for local pool `pool`; the outcome comes back through
    /// [`Node::handle_host`].
    Host {
        pool: usize,
        action: crate::local::HostAction,
    },
    Event(Event),
    /// The answer to the query with this id.
    Answer {
        id: u64,
        answer: Answer,
    },
}

/// The endpoint of the peer protocol and the pools behind it.
///
/// # Polling contract
///
/// After feeding any input (`handle_*`, `restore`), the shell
///
/// 1. calls [`Node::take_changes`] and hands the changes to the store, **then**
/// 2. drains [`Node::poll_output`] until it returns `None`, and lets each output leave the
///    process only once the store holds every change taken in step 1 (or earlier), and
/// 3. sleeps until [`Node::poll_timeout`] or the next input.
///
/// Why this order: an output may state something only a durable change makes true (a DHCP
/// ACK promises the lease; a claim announcement promises we will honour the block after a
/// crash; `set-option`'s answer promises the option survives a restart). Taking the changes
/// first, and holding outputs behind the batch that holds them, means nothing promised is
/// lost in a crash. Outputs come in the order they were produced, and the shell keeps that
/// order: a hook sees `claim` before the `lease` in that block, and a query answered after
/// a change sees it. Changes may be taken more often than outputs (a change with no output
/// yet is simply written early), never less.
pub struct Node {
    id: NodeId,
    location: Option<String>,
    pools: Vec<Pool>,
    rng: StdRng,
    out: VecDeque<Output>,
    counters: Counters,
    repl: Replication,
    /// The time of the latest input: changes taken by the shell happened then.
    now: Instant,
    /// Lapsed blocks a holder of lower rank may take over first: when we look again.
    takeovers: std::collections::BTreeSet<(Instant, usize, u32, NodeId)>,
    /// Blocks we took over, with their previous owner (handed back if it rebuilds).
    taken: std::collections::BTreeMap<(usize, u32), NodeId>,
    /// A rebuild may end once we have listened this long (we know our peers by then).
    recover_learned: Instant,
    max_lag: std::time::Duration,
    sync: bool,
    /// API answers waiting for a replica holder's acknowledgement (`--replica-sync`).
    parked: Vec<Parked>,
    auth: Auth,
    /// Sources whose datagrams failed authentication, for reports (bounded).
    rejected: std::collections::BTreeMap<Ipv6Addr, Rejected>,
    /// Per pool: the last datagram for it that failed authentication as a mismatch.
    auth_failed: Vec<Option<Instant>>,
}

/// A source of datagrams that failed authentication.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    pub node: NodeId,
    pub reason: &'static str,
    pub count: u64,
    pub first: Instant,
    pub last: Instant,
}

/// Sources remembered in [`Node::rejected`]; the longest quiet is forgotten first.
const MAX_REJECTED: usize = 256;

/// An answer to an allocation, held until a holder of its block has acknowledged it.
struct Parked {
    id: u64,
    answer: Answer,
    pool: usize,
    block: u32,
    since: Instant,
    /// Set once the allocation's change has been queued to the holders.
    targets: Option<Vec<(NodeId, u32, u64)>>,
}

impl Node {
    /// `seed` makes every random choice of the node reproducible; the daemon passes OS
    /// randomness, the simulator a per-node seed.
    pub fn new(cfg: NodeConfig, id: NodeId, now: Instant, seed: u64) -> Self {
        let pools: Vec<Pool> = cfg
            .pools
            .into_iter()
            .enumerate()
            .map(|(i, p)| Pool::new(i, p, cfg.location.as_deref(), id, now))
            .collect();
        let npools = pools.len();
        let swarm = pools.first().map_or(
            wire::Swarm {
                prefix: Ipv4Addr::UNSPECIFIED,
                prefix_len: 0,
                block_size: 0,
            },
            |p| p.swarm(),
        );
        let rng = StdRng::seed_from_u64(seed);
        // From its own generator, so that the claim choices of a seed stay what they were.
        let mut side = StdRng::seed_from_u64(seed ^ 0x7265_706c_6963_6121);
        let epoch = side.random();
        let mut repl = Replication::new(
            cfg.replicas,
            id,
            epoch,
            pools
                .iter()
                .map(|p| (p.swarm(), *p.range(), p.config().claim.block_timeout)),
        );
        let longest = pools
            .iter()
            .map(|p| p.config().claim.block_timeout)
            .max()
            .unwrap_or_default();
        let recover = cfg.recover && cfg.replicas > 0;
        if recover {
            // Long enough to hear every peer, and for each to hand a million bindings back.
            repl.start_recovery(side.random(), now + longest * 3 + RECOVER_SLACK);
        }
        let mut node = Node {
            id,
            location: cfg.location,
            pools,
            rng,
            out: VecDeque::new(),
            counters: Counters::default(),
            repl,
            now,
            takeovers: Default::default(),
            taken: Default::default(),
            recover_learned: now + longest,
            max_lag: cfg.max_replica_lag,
            sync: cfg.replica_sync && cfg.replicas > 0,
            parked: Vec::new(),
            auth: Auth::new(&[], false, id, swarm, seed).expect("no keys cannot fail"),
            rejected: Default::default(),
            auth_failed: vec![None; npools],
        };
        if cfg.replicas > 0 {
            // A silent owner's block reaches the first holder of its bindings at most this
            // long after the holder's own start (restored replicas are checked a block
            // timeout after it), and later holders a step each after that.
            for p in &mut node.pools {
                let c = &p.config().claim;
                let settle = c.block_timeout
                    + c.round_interval() * (u32::from(crate::blocks::INQUIRE_ROUNDS) + 1)
                    + takeover_step(c) * (cfg.replicas as u32 + 1);
                p.settle_until(now + settle);
            }
        }
        if recover {
            info!("rebuilding: asking the peers for what they hold for us");
            for p in &mut node.pools {
                p.hold_learning(true);
            }
        }
        for i in 0..node.pools.len() {
            node.flush_pool(i);
        }
        node
    }

    /// Takes back the state of a previous run, read from the store, right after
    /// [`Node::new`]: one [`Restored`] per pool, in the order of [`NodeConfig::pools`].
    /// Blocks whose claims peers still honour are ours at once, announced now, and served
    /// from (renewals and new clients alike), learning phase or not; blocks whose claims
    /// lapsed are claimed back first once claiming is allowed, and their leases come back
    /// with them. Expired leases must already be gone.
    pub fn restore(&mut self, now: Instant, restored: Vec<Restored>) {
        self.now = now;
        for (i, mut r) in restored.into_iter().enumerate().take(self.pools.len()) {
            self.repl
                .restore_held(now, i, std::mem::take(&mut r.replicas));
            self.pools[i].restore(now, r);
            self.flush_pool(i);
        }
    }

    /// Durable changes since the last call, in the order they happened, each with the
    /// index of its pool. See the polling contract on [`Node`].
    pub fn take_changes(&mut self) -> Vec<(usize, Change)> {
        let mut v = Vec::new();
        for p in &mut self.pools {
            p.take_changes(&mut v);
        }
        // What the store takes goes to the replica holders too, in the same order; it
        // leaves after the batch delay, through `handle_timeout`, so after the store has it.
        let mut start = 0;
        while start < v.len() {
            let pool = v[start].0;
            let end = start + v[start..].iter().take_while(|(p, _)| *p == pool).count();
            self.repl
                .on_changes(self.now, pool, v[start..end].iter().map(|(_, c)| c));
            start = end;
        }
        // What we hold for others, after our own (nobody is sent it).
        v.extend(self.repl.take_journal());
        // An allocation's change is queued now: what its answer waits for is known.
        let mut release = false;
        for p in &mut self.parked {
            if p.targets.is_none() {
                let t = self.repl.sync_targets(p.pool, p.block);
                release |= t.is_empty();
                p.targets = Some(t);
            }
        }
        if release {
            self.release_parked(self.now);
        }
        v
    }

    /// Answers parked allocations whose holder acknowledged them, re-targets those whose
    /// holders changed, and refuses those no holder acknowledged within the lag bound
    /// (the allocation stands; asking again returns it, and waits again).
    fn release_parked(&mut self, now: Instant) {
        let mut keep = Vec::with_capacity(self.parked.len());
        for mut p in std::mem::take(&mut self.parked) {
            let Some(targets) = &p.targets else {
                keep.push(p);
                continue;
            };
            let reached = if targets.is_empty() {
                Some(true)
            } else {
                self.repl.sync_reached(p.pool, targets)
            };
            match reached {
                Some(true) => self.out.push_back(Output::Answer {
                    id: p.id,
                    answer: p.answer,
                }),
                _ if now.saturating_since(p.since) > self.max_lag => {
                    let ip = match &p.answer {
                        Answer::Allocated { row, .. } => row.ip.to_string(),
                        _ => String::new(),
                    };
                    self.out.push_back(Output::Answer {
                        id: p.id,
                        answer: Answer::Refused(format!(
                            "{ip} is allocated and stored here, but no replica holder acknowledged it within {} s (--replica-sync); ask again to wait for it",
                            self.max_lag.as_secs()
                        )),
                    });
                }
                None => {
                    let t = self.repl.sync_targets(p.pool, p.block);
                    if t.is_empty() {
                        self.out.push_back(Output::Answer {
                            id: p.id,
                            answer: p.answer,
                        });
                    } else {
                        p.targets = Some(t);
                        keep.push(p);
                    }
                }
                Some(false) => keep.push(p),
            }
        }
        self.parked = keep;
    }

    /// The replication layer: holders, streams, replicas held (`ddhcpctl replicas`).
    pub fn replication(&self) -> &Replication {
        &self.repl
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn location(&self) -> Option<&str> {
        self.location.as_deref()
    }

    pub fn pools(&self) -> &[Pool] {
        &self.pools
    }

    pub fn pool(&self, i: usize) -> &Pool {
        &self.pools[i]
    }

    /// The block table of the first pool: what a single-pool node (and most tests) mean.
    pub fn blocks(&self) -> &Blocks {
        self.pools[0].blocks()
    }

    /// The DHCP service of the first pool, if it has one.
    pub fn dhcp(&self) -> Option<&Dhcp> {
        self.pools[0].dhcp()
    }

    /// For unit tests that stage a service's state directly.
    #[cfg(test)]
    pub(crate) fn dhcp_mut(&mut self) -> Option<&mut Dhcp> {
        self.pools[0].dhcp_mut()
    }

    /// Counters of the node and all its pools, summed (`ddhcpctl stats`).
    pub fn counters(&self) -> Counters {
        let mut c = self.counters.clone();
        c.add(Counter::AuthChallengeSent, self.auth.challenges_sent);
        c.add(Counter::AuthChallengeAnswered, self.auth.replies_sent);
        c.add(Counter::AuthHeld, self.auth.held);
        c.add(
            Counter::AuthSignatureVerified,
            self.auth.signatures_verified,
        );
        for p in &self.pools {
            c.add(Counter::ClaimsRefused, p.blocks().claims_refused);
            for &k in Counter::ALL {
                c.add(k, p.counters().get(k));
            }
        }
        c
    }

    /// The pool a command means: by name, or without one the pool `default`, else the
    /// only pool.
    pub fn find_pool(&self, name: Option<&str>) -> Result<usize, String> {
        match name {
            Some(n) => self
                .pools
                .iter()
                .position(|p| p.name() == n)
                .ok_or_else(|| format!("no pool named '{n}' (pools: {})", self.pool_names())),
            None => self
                .pools
                .iter()
                .position(|p| p.name() == "default")
                .or_else(|| (self.pools.len() == 1).then_some(0))
                .ok_or_else(|| {
                    format!(
                        "this node has several pools, name one with --pool (pools: {})",
                        self.pool_names()
                    )
                }),
        }
    }

    fn pool_names(&self) -> String {
        let names: Vec<&str> = self.pools.iter().map(Pool::name).collect();
        names.join(", ")
    }

    pub fn status(&self, now: Instant) -> Status {
        let mut peers = std::collections::BTreeSet::new();
        for p in &self.pools {
            peers.extend(p.blocks().live_peers(now));
        }
        Status {
            node_id: self.id,
            default_pool: self.find_pool(None).ok(),
            pools: self
                .pools
                .iter()
                .map(|p| PoolStatus {
                    name: p.name().to_string(),
                    range: *p.range(),
                    use_: p.config().use_name(),
                    location: p.config().location.clone(),
                    claims: p.claims(),
                    learning: p.blocks().is_learning(),
                    blocks_owned: p.blocks().owned_count(),
                    leases_active: p.leases_active(),
                })
                .collect(),
            peers: peers.len(),
            recovering: self.is_recovering(),
        }
    }

    /// Blocks of the first pool that are not free, as `ddhcpctl blocks` shows them.
    pub fn blocks_view(&self, now: Instant) -> Vec<BlockView> {
        self.pools[0].blocks_view(now, self.id)
    }

    /// A control query; its answer comes out of [`Node::poll_output`] with the same `id`.
    pub fn handle_query(&mut self, now: Instant, id: u64, q: Query) {
        self.now = now;
        if let Query::Allocate {
            pool,
            owner,
            ip,
            meta,
            timeout,
        } = q
        {
            return self.allocate(now, id, &pool, owner, ip, meta, timeout);
        }
        let answer = self.answer(now, q);
        self.out.push_back(Output::Answer { id, answer });
    }

    /// `allocate`: its answer comes out of the pool, now or once a claim made room.
    #[allow(clippy::too_many_arguments)]
    fn allocate(
        &mut self,
        now: Instant,
        id: u64,
        pool: &str,
        owner: String,
        ip: Option<Ipv4Addr>,
        meta: std::collections::BTreeMap<String, String>,
        timeout: Option<std::time::Duration>,
    ) {
        let i = match self.find_pool(Some(pool)) {
            Ok(i) => i,
            Err(e) => {
                let answer = Answer::Refused(e);
                return self.out.push_back(Output::Answer { id, answer });
            }
        };
        let lag = self.repl.worst_lag(i, now);
        if lag > self.max_lag {
            let answer = Answer::Refused(format!(
                "a replica holder is {:.1} s behind (--max-replica-lag {}): no new allocations until it catches up or is replaced",
                lag.as_secs_f64(),
                self.max_lag.as_secs()
            ));
            return self.out.push_back(Output::Answer { id, answer });
        }
        let me = self.id;
        let Some((api, blocks)) = self.pools[i].api_mut() else {
            let answer = Answer::Refused(no_api(&self.pools[i]));
            return self.out.push_back(Output::Answer { id, answer });
        };
        api.allocate(now, id, me, owner, ip, meta, timeout, blocks);
        self.pools[i].drain(now);
        self.flush_pool(i);
    }

    fn answer(&mut self, now: Instant, q: Query) -> Answer {
        let pool_of = |n: &Node, name: &Option<String>| n.find_pool(name.as_deref());
        let no_dhcp = |p: &Pool| Answer::Refused(no_dhcp(p));
        match q {
            Query::Status => Answer::Status(self.status(now)),
            Query::Blocks { pool } => match pool_of(self, &pool) {
                Ok(i) => Answer::Blocks {
                    pool: self.pools[i].name().to_string(),
                    node_id: self.id,
                    blocks: self.pools[i].blocks_view(now, self.id),
                },
                Err(e) => Answer::Refused(e),
            },
            Query::Leases { pool } => {
                let i = match pool_of(self, &pool) {
                    Ok(i) => i,
                    Err(e) => return Answer::Refused(e),
                };
                let p = &self.pools[i];
                let Some(d) = p.dhcp() else { return no_dhcp(p) };
                let leases = d
                    .lease_list(now)
                    .into_iter()
                    .map(|(ip, mac, state, expires_in, block)| LeaseRow {
                        ip,
                        mac,
                        state,
                        expires_in,
                        block,
                    })
                    .collect();
                Answer::Leases {
                    pool: p.name().to_string(),
                    leases,
                }
            }
            Query::Options { pool } => {
                let i = match pool_of(self, &pool) {
                    Ok(i) => i,
                    Err(e) => return Answer::Refused(e),
                };
                let p = &self.pools[i];
                let Some(d) = p.dhcp() else { return no_dhcp(p) };
                Answer::Options {
                    pool: p.name().to_string(),
                    options: d.store().iter().cloned().collect(),
                    lease_time: d.store().lease_time(),
                }
            }
            Query::SetOption { pool, option } => self.change_options(&pool, |d| {
                OptionStore::validate(&option)?;
                info!(code = option.code, "option set");
                d.set_option(option);
                Ok(())
            }),
            Query::RemoveOption { pool, code } => self.change_options(&pool, |d| {
                if !d.remove_option(code) {
                    return Err(format!("option {code} is not set"));
                }
                info!(code, "option removed");
                Ok(())
            }),
            Query::Local { pool } => {
                let pools: Vec<usize> = match pool {
                    Some(n) => match self.find_pool(Some(&n)) {
                        Ok(i) => vec![i],
                        Err(e) => return Answer::Refused(e),
                    },
                    None => (0..self.pools.len()).collect(),
                };
                let mut addresses = Vec::new();
                for i in pools {
                    let p = &self.pools[i];
                    let Some(l) = p.local() else { continue };
                    for (ip, a) in l.addresses() {
                        addresses.push(LocalRow {
                            ip,
                            pool: p.name().to_string(),
                            iface: l.config().iface.clone(),
                            state: a.state.name(),
                            since_secs: now.saturating_since(a.since).as_secs(),
                            reason: a.reason.clone(),
                        });
                    }
                }
                Answer::Local { addresses }
            }
            Query::Release { ip, pool, owner } => {
                let i = match (&pool, ip) {
                    (Some(n), _) => match self.find_pool(Some(n)) {
                        Ok(i) => i,
                        Err(e) => return Answer::Refused(e),
                    },
                    (None, Some(ip)) => match self
                        .pools
                        .iter()
                        .position(|p| p.api().is_some() && p.range().locate(ip).is_some())
                    {
                        Some(i) => i,
                        None => {
                            return Answer::Refused(format!("{ip} is in no api pool of this node"));
                        }
                    },
                    (None, None) => {
                        return Answer::Refused(
                            "release: give an address, or --pool and --owner".into(),
                        );
                    }
                };
                let Some((api, _)) = self.pools[i].api_mut() else {
                    return Answer::Refused(no_api(&self.pools[i]));
                };
                let r = api.release(now, ip, owner.as_deref());
                self.pools[i].drain(now);
                self.flush_pool(i);
                match r {
                    Ok(ip) => Answer::Released { ip },
                    Err(e) => Answer::Refused(e),
                }
            }
            Query::Allocations { pool, owner } => {
                let pools: Vec<usize> = match &pool {
                    Some(n) => match self.find_pool(Some(n)) {
                        Ok(i) if self.pools[i].api().is_some() => vec![i],
                        Ok(i) => return Answer::Refused(no_api(&self.pools[i])),
                        Err(e) => return Answer::Refused(e),
                    },
                    None => (0..self.pools.len()).collect(),
                };
                let mut rows = Vec::new();
                for i in pools {
                    if let Some(a) = self.pools[i].api() {
                        rows.extend(a.rows(now, owner.as_deref()));
                    }
                }
                Answer::Allocations(rows)
            }
            Query::Show { ip } => {
                let me = self.id;
                match self
                    .pools
                    .iter()
                    .find_map(|p| p.api().and_then(|a| a.show(now, ip, p.blocks(), me)))
                {
                    Some(row) => Answer::Show(row),
                    None => Answer::Refused(format!("{ip} is in no api pool of this node")),
                }
            }
            // Taken by handle_query before it gets here.
            Query::Allocate { .. } => Answer::Refused("allocate is answered by its pool".into()),
            Query::Mark { ip, active } => {
                let Some(i) = self
                    .pools
                    .iter()
                    .position(|p| p.range().locate(ip).is_some())
                else {
                    return Answer::Refused(format!("{ip} is in no pool of this node"));
                };
                let r = self.pools[i].mark(now, ip, active);
                self.pools[i].drain(now);
                self.flush_pool(i);
                match r {
                    Ok(()) => Answer::Done,
                    Err(e) => Answer::Refused(e),
                }
            }
            Query::SetLocal {
                pool,
                standby,
                min,
                max_standby,
                hysteresis,
            } => {
                let i = match pool_of(self, &pool) {
                    Ok(i) => i,
                    Err(e) => return Answer::Refused(e),
                };
                let t = crate::local::LocalTargets {
                    standby,
                    min,
                    max_standby,
                    hysteresis,
                };
                if t.is_empty() {
                    return Answer::Refused(
                        "set-local: nothing to change (give standby, min, max-standby or hysteresis)"
                            .into(),
                    );
                }
                let r = self.pools[i].set_local_targets(now, t);
                self.pools[i].drain(now);
                self.flush_pool(i);
                match r {
                    Ok(()) => Answer::Done,
                    Err(e) => Answer::Refused(e),
                }
            }
            Query::LeaseTime { pool, secs } => self.change_options(&pool, |d| {
                if secs == 0 {
                    return Err("a lease time of 0 seconds makes no sense".into());
                }
                d.set_option(DhcpOption {
                    code: crate::dhcp::options::LEASE_TIME,
                    payload: secs.to_be_bytes().to_vec(),
                });
                info!(secs, "lease time set");
                Ok(())
            }),
        }
    }

    fn change_options(
        &mut self,
        pool: &Option<String>,
        f: impl FnOnce(&mut Dhcp) -> Result<(), String>,
    ) -> Answer {
        let i = match self.find_pool(pool.as_deref()) {
            Ok(i) => i,
            Err(e) => return Answer::Refused(e),
        };
        let p = &mut self.pools[i];
        let refused = no_dhcp(p);
        let Some(d) = p.dhcp_mut() else {
            return Answer::Refused(refused);
        };
        match f(d) {
            Ok(()) => Answer::Done,
            Err(e) => Answer::Refused(e),
        }
    }

    /// Turns on mesh-key authentication (`--peer-key`; the first key signs) and the
    /// migration mode; right after [`Node::new`], before any datagram.
    pub fn set_auth(&mut self, keys: &[MeshKey], migrate: bool) -> Result<(), String> {
        self.auth = Auth::new(
            keys,
            migrate,
            self.id,
            self.pools[0].swarm(),
            self.rng.random(),
        )?;
        Ok(())
    }

    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    /// Peers' keys pinned since the last call (the shell persists them).
    pub fn take_new_pins(&mut self) -> Vec<(NodeId, [u8; 32])> {
        self.auth.take_new_pins()
    }

    /// Turns node keys on (`--node-key`; needs a mesh key, [`Node::set_auth`] first): our
    /// id becomes the key's, every datagram is signed, peers' signatures are required and
    /// claims on blocks their owners hold are refused unless they are genuine conflicts
    /// (each pool at most `max_peer_blocks` per peer, 0: no cap). Right after
    /// [`Node::set_auth`], before any datagram.
    pub fn set_node_key(
        &mut self,
        now: Instant,
        key: NodeKey,
        pins: &[(NodeId, [u8; 32])],
        max_peer_blocks: u32,
    ) -> Result<(), String> {
        if !self.auth.enabled() {
            return Err("node keys need a mesh key (--peer-key)".into());
        }
        let id = key.id();
        self.auth.set_node_key(key, pins);
        self.id = id;
        self.repl.set_me(id);
        let known: Vec<NodeId> = pins.iter().map(|p| p.0).filter(|&p| p != id).collect();
        for p in &mut self.pools {
            p.me = id;
            p.set_incumbency(now, max_peer_blocks, &known);
        }
        Ok(())
    }

    /// Adds a mesh key for verifying (`ddhcpctl key install`). The first key on a node
    /// without one turns authentication on in the migration mode, so that peers without
    /// the key are still heard until `key migrate off`.
    pub fn key_install(&mut self, key: &MeshKey) -> Result<(), String> {
        let first = !self.auth.enabled();
        self.auth.install(key)?;
        if first {
            self.auth.set_migrate(true);
        }
        Ok(())
    }

    pub fn key_use(&mut self, id: u16) -> Result<(), String> {
        self.auth.use_key(id)
    }

    pub fn key_remove(&mut self, id: u16) -> Result<(), String> {
        self.auth.remove(id)
    }

    pub fn set_key_migrate(&mut self, on: bool) -> Result<(), String> {
        if !self.auth.enabled() {
            return Err("no mesh key is installed".into());
        }
        self.auth.set_migrate(on);
        Ok(())
    }

    /// Names of pools that hold new claims because of a key mismatch.
    pub fn mismatch_pools(&self) -> impl Iterator<Item = &str> {
        self.pools
            .iter()
            .filter(|p| p.blocks().claims_held())
            .map(|p| p.name())
    }

    /// Sources whose datagrams failed authentication, with what failed.
    pub fn rejected(&self) -> impl Iterator<Item = (&Ipv6Addr, &Rejected)> {
        self.rejected.iter()
    }

    /// A datagram from `from` on the server interface.
    pub fn handle_datagram(&mut self, now: Instant, channel: Channel, from: Ipv6Addr, data: &[u8]) {
        let (pkg, bytes) = match channel {
            Channel::Multicast => (Counter::McastRecvPkg, Counter::McastRecvByte),
            Channel::Unicast => (Counter::DirectRecvPkg, Counter::DirectRecvByte),
        };
        self.now = now;
        self.counters.inc(pkg);
        self.counters.add(bytes, data.len() as u64);
        match self.auth.open(now, channel, from, data) {
            Opened::Plain => {
                if self.auth.enabled() {
                    self.counters.inc(Counter::AuthPlainAccepted);
                }
                self.process_datagram(now, channel, from, data);
            }
            Opened::Verified { len } => {
                self.counters.inc(Counter::AuthVerified);
                self.process_datagram(now, channel, from, &data[..len]);
            }
            Opened::Consumed => {}
            Opened::Drop(why) => self.auth_dropped(now, from, data, why),
        }
        for (channel, from, inner) in self.auth.take_released() {
            self.counters.inc(Counter::AuthReleased);
            self.process_datagram(now, channel, from, &inner);
        }
        self.flush_auth();
        if self.auth_failed.iter().any(Option::is_some) {
            // A verified peer may have been heard: a held pool may claim again.
            self.update_auth_holds(now);
        }
    }

    /// Counts what authentication dropped and reports a key mismatch: per source (log,
    /// event) and per pool (no new claims while the pool hears no peer it can verify).
    fn auth_dropped(&mut self, now: Instant, from: Ipv6Addr, data: &[u8], why: AuthDrop) {
        self.counters.inc(match why {
            AuthDrop::Unsigned | AuthDrop::UnsignedFromSigner => Counter::AuthDropUnsigned,
            AuthDrop::UnknownKey(_) => Counter::AuthDropUnknownKey,
            AuthDrop::BadMac => Counter::AuthDropBadMac,
            AuthDrop::SignedNoKey => Counter::AuthDropSignedNoKey,
            AuthDrop::Replay | AuthDrop::Stale => Counter::AuthDropReplay,
            AuthDrop::NoSignature => Counter::AuthDropNoSignature,
            AuthDrop::IdMismatch | AuthDrop::PinMismatch | AuthDrop::BadSignature => {
                Counter::AuthDropForged
            }
            AuthDrop::RateLimited => Counter::AuthDropRateLimited,
            AuthDrop::PlainCopy => Counter::AuthPlainCopy,
        });
        if matches!(
            why,
            AuthDrop::Replay | AuthDrop::Stale | AuthDrop::RateLimited | AuthDrop::PlainCopy
        ) {
            debug!(%from, reason = why.as_str(), "replayed, stale, rate-limited or plain-copy peer datagram dropped");
            return;
        }
        let node = NodeId(
            data.get(..8)
                .and_then(|d| d.try_into().ok())
                .unwrap_or_default(),
        );
        if let Some(h) = data.get(8..14) {
            let swarm = wire::Swarm {
                prefix: Ipv4Addr::new(h[0], h[1], h[2], h[3]),
                prefix_len: h[4],
                block_size: h[5],
            };
            if why.is_mismatch()
                && let Some(i) = self.pools.iter().position(|p| p.swarm() == swarm)
            {
                self.auth_failed[i] = Some(now);
            }
        }
        let quiet = self.longest_block_timeout();
        let report = match self.rejected.get_mut(&from) {
            Some(r) => {
                let again = now.saturating_since(r.last) >= quiet;
                r.count += 1;
                r.last = now;
                r.node = node;
                r.reason = why.as_str();
                again
            }
            None => {
                if self.rejected.len() >= MAX_REJECTED
                    && let Some(old) = self
                        .rejected
                        .iter()
                        .min_by_key(|(_, r)| r.last)
                        .map(|(a, _)| *a)
                {
                    self.rejected.remove(&old);
                }
                self.rejected.insert(
                    from,
                    Rejected {
                        node,
                        reason: why.as_str(),
                        count: 1,
                        first: now,
                        last: now,
                    },
                );
                true
            }
        };
        if report {
            let key = match why {
                AuthDrop::UnknownKey(id) => format!(" (key id {id})"),
                _ => String::new(),
            };
            warn!(%from, node = %node, reason = why.as_str(),
                  "peer datagram failed authentication{key}: a key mismatch or a forger; dropped");
            self.out.push_back(Output::Event(Event::PeerAuthFailed {
                from,
                node,
                reason: why.as_str(),
            }));
        }
        self.update_auth_holds(now);
    }

    /// The longest `-B` of the pools.
    pub fn longest_block_timeout(&self) -> std::time::Duration {
        self.pools
            .iter()
            .map(|p| p.config().claim.block_timeout)
            .max()
            .unwrap_or_default()
    }

    /// Holds or resumes new claims per pool: held while datagrams for it failed
    /// authentication within a block timeout and no peer it can verify holds a block.
    fn update_auth_holds(&mut self, now: Instant) {
        for i in 0..self.pools.len() {
            let timeout = self.pools[i].config().claim.block_timeout;
            let failing = self.auth_failed[i].is_some_and(|t| now.saturating_since(t) < timeout);
            let hold = failing && self.pools[i].blocks().peer_count(now) == 0;
            if !failing {
                // Also ends the wake-up poll_timeout asks for.
                self.auth_failed[i] = None;
            }
            if hold == self.pools[i].blocks().claims_held() {
                continue;
            }
            self.pools[i].hold_claims(hold);
            let name = self.pools[i].name().to_string();
            if hold {
                self.counters.inc(Counter::AuthMismatchHold);
                warn!(pool = %name,
                      "KEY MISMATCH: only datagrams we cannot verify are heard; claiming no new blocks until a verified peer is heard or they stop");
            } else {
                info!(pool = %name, "claiming new blocks again");
            }
            self.out.push_back(Output::Event(Event::KeyMismatch {
                pool: i,
                holding: hold,
            }));
            self.flush_pool(i);
        }
    }

    /// Challenge messages of the authentication layer.
    fn flush_auth(&mut self) {
        while let Some(t) = self.auth.poll_transmit() {
            self.counters.inc(Counter::DirectSendPkg);
            self.counters
                .add(Counter::DirectSendByte, t.payload.len() as u64);
            self.out.push_back(Output::Peer(t));
        }
    }

    /// One verified (or acceptable plain) datagram.
    fn process_datagram(&mut self, now: Instant, channel: Channel, from: Ipv6Addr, data: &[u8]) {
        let packet = match Packet::decode(data) {
            Ok(p) => p,
            Err(e) => {
                self.counters.inc(Counter::DropMalformed);
                debug!(%from, error = %e, "malformed peer datagram");
                return;
            }
        };
        let Some(i) = self.pools.iter().position(|p| p.swarm() == packet.swarm) else {
            self.counters.inc(Counter::DropForeignSwarm);
            debug!(%from, swarm = ?packet.swarm, "message for no pool of ours ignored");
            return;
        };
        if packet.node_id == self.id {
            // Multicast loop is off, so this is another host using our id.
            self.duplicate_id(now, from);
        }
        let me = self.id;
        let pool = &mut self.pools[i];
        match (channel, &packet.message) {
            (Channel::Multicast, Message::Inquire(blocks)) => {
                self.counters.inc(Counter::McastRecvInquire);
                pool.on_inquire(now, me, packet.node_id, blocks);
            }
            (Channel::Multicast, Message::UpdateClaim(entries)) => {
                self.counters.inc(Counter::McastRecvUpdateClaim);
                pool.on_claim(now, me, packet.node_id, from, entries);
                if wire::claim_is_marked(data) && packet.node_id != me {
                    self.repl.saw_peer(now, i, packet.node_id, from);
                }
            }
            (
                Channel::Unicast,
                Message::Replicate {
                    epoch,
                    seq,
                    records,
                },
            ) => {
                self.counters.inc(Counter::ReplRecvBatch);
                let blocks = pool.blocks();
                self.repl
                    .on_replicate(now, i, packet.node_id, from, *epoch, *seq, records, |b| {
                        blocks.owns(b)
                    });
            }
            (
                Channel::Unicast,
                Message::Handback {
                    epoch,
                    seq,
                    records,
                },
            ) => {
                self.counters.inc(Counter::ReplRecvHandback);
                self.repl
                    .on_handback(now, i, packet.node_id, from, *epoch, *seq, records);
                self.take_back_early(now);
            }
            (Channel::Unicast, Message::Recover { nonce }) => {
                self.counters.inc(Counter::ReplRecvRecover);
                let nonce = *nonce;
                self.hand_back(now, i, packet.node_id, from, nonce);
            }
            (Channel::Unicast, Message::ReplicaAck { epoch, next }) => {
                self.counters.inc(Counter::ReplRecvAck);
                self.repl.on_ack(now, i, packet.node_id, *epoch, *next);
                if !self.parked.is_empty() {
                    self.release_parked(now);
                }
            }
            (Channel::Unicast, Message::RenewLease(p)) => {
                self.counters.inc(Counter::DirectRecvRenewLease);
                if let Some(m) = pool.on_renew(now, from, p) {
                    self.send(i, Dest::Unicast(from), m);
                }
            }
            (Channel::Unicast, Message::LeaseAck(p) | Message::LeaseNak(p)) => {
                let ack = matches!(packet.message, Message::LeaseAck(_));
                self.counters.inc(if ack {
                    Counter::DirectRecvLeaseAck
                } else {
                    Counter::DirectRecvLeaseNak
                });
                if !pool.on_forward_answer(from, p, ack) {
                    self.counters.inc(Counter::DropUnhandled);
                }
            }
            (_, m) => {
                self.counters.inc(Counter::DropWrongSocket);
                debug!(%from, kind = m.name(), ?channel, "message on the wrong socket ignored");
            }
        }
        self.pools[i].drain(now);
        self.flush_pool(i);
        self.flush_repl(now);
    }

    /// A datagram from a client or relay on pool `pool`'s client interface.
    pub fn handle_dhcp(&mut self, now: Instant, pool: usize, data: &[u8]) {
        self.now = now;
        let Some(p) = self.pools.get_mut(pool) else {
            return;
        };
        p.handle_dhcp(now, data);
        p.drain(now);
        self.flush_pool(pool);
    }

    /// What the host did or saw for local pool `pool` (the answer to an
    /// [`Output::Host`], or something it noticed by itself).
    pub fn handle_host(&mut self, now: Instant, pool: usize, ev: crate::local::HostEvent) {
        self.now = now;
        let Some(p) = self.pools.get_mut(pool) else {
            return;
        };
        p.handle_host(now, ev);
        p.drain(now);
        self.flush_pool(pool);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        if self.auth_failed.iter().any(Option::is_some) {
            self.update_auth_holds(now);
        }
        // Every pool looks at its timers; each does only what is due.
        for i in 0..self.pools.len() {
            self.pools[i].handle_timeout(now, &mut self.rng);
            self.flush_pool(i);
        }
        while let Some(&(at, i, block, owner)) = self.takeovers.first() {
            if at > now {
                break;
            }
            self.takeovers.pop_first();
            // Still free: the holders ranked before us did not take it.
            let b = self.pools[i].blocks();
            match b.owner_of(block) {
                None if !b.owns(block) => self.take_over(now, i, block, owner),
                // Another holder took it: it gets what we hold of the old owner's block,
                // which it merges into its own copy (ours may be more recent).
                Some((o, _)) if o != owner => {
                    if let Some(rep) = self.repl.take_replica(i, owner, block)
                        && self.repl.is_ddhcp(i, o)
                    {
                        self.repl.handover(now, i, o, &rep.records(block));
                    }
                }
                // Its owner is back (it was only unheard), or it is ours already.
                _ => {}
            }
            self.flush_pool(i);
        }
        self.repl.handle_timeout(now);
        for (i, owner, blocks) in self.repl.take_gone() {
            // A claim of the silent owner's that never reached us (lost on the link) left
            // the block free here, and so it does not lapse: it does now.
            for block in blocks {
                let b = self.pools[i].blocks();
                if b.owner_of(block).is_none() && !b.owns(block) && !b.is_pending(block, now) {
                    self.on_lapsed(now, i, block, owner);
                }
            }
            self.flush_pool(i);
        }
        if !self.parked.is_empty() {
            self.release_parked(now);
        }
        let learned = now >= self.recover_learned;
        if self.repl.recovery_complete(now, learned) {
            self.finish_recovery(now);
        }
        self.flush_repl(now);
    }

    /// A peer's claim on `block` lapsed. If the peer is a ddhcp node, the holders of its
    /// replicas take the block over in the rendezvous order, one step apart; every other
    /// ddhcp node leaves the block alone for longer than the bindings could last
    /// (docs/replication.md, takeover).
    fn on_lapsed(&mut self, now: Instant, i: usize, block: u32, owner: NodeId) {
        let k = self.repl.replicas();
        if k == 0 || !self.repl.is_ddhcp(i, owner) || !self.pools[i].claims() {
            return;
        }
        let step = takeover_step(&self.pools[i].config().claim);
        let rank = self.repl.takeover_rank(i, block, owner);
        let empty = self.repl.replica(i, owner, block).is_some_and(|r| {
            r.bindings() == 0 && r.cooling.is_empty() && r.hold.is_none_or(|h| h <= now)
        });
        if rank.is_some() && empty {
            // Nothing of the block is bound: nothing to keep, the block is simply free. The
            // (empty) replica stays, in case the owner was only unheard for a while.
            return;
        }
        match rank {
            Some(0) => self.take_over(now, i, block, owner),
            Some(r) => {
                let at = now + step * r as u32;
                self.pools[i].quarantine(block, at);
                self.takeovers.insert((at, i, block, owner));
            }
            None => {
                let horizon = self.pools[i].binding_horizon().max(step * (k as u32 + 1));
                self.pools[i].quarantine(block, now + horizon);
            }
        }
    }

    /// Claims a silent owner's block with the bindings we hold of it, and looks again one
    /// step later: a peer's inquiry, or a lost inquiry race, can leave the block with
    /// nobody, and then we try again (until someone owns it).
    fn take_over(&mut self, now: Instant, i: usize, block: u32, owner: NodeId) {
        let b = self.pools[i].blocks();
        if b.owns(block) {
            return;
        }
        let step = takeover_step(&self.pools[i].config().claim);
        self.takeovers.insert((now + step, i, block, owner));
        if b.is_wanted(block) {
            // Our claim is under way.
            return;
        }
        // Copied, not taken: if the owner was only unheard for a while and claims the block
        // again, we are still its holder. The copy goes once the block is ours.
        let Some(rep) = self.repl.replica(i, owner, block).cloned() else {
            return;
        };
        let (leases, allocations) = (rep.leases.len(), rep.allocations.len());
        if self.pools[i].adopt(now, block, rep) {
            info!(pool = %self.pools[i].name(), block, %owner, leases, allocations,
                  "taking over a silent owner's block with its bindings");
            self.counters.inc(Counter::BlocksTakenOver);
            self.taken.insert((i, block), owner);
        }
    }

    /// A rebuilding node asks for what we hold for it: the replicas of its blocks, and the
    /// blocks we took over from it, which we give up for it to take back.
    fn hand_back(&mut self, now: Instant, i: usize, id: NodeId, addr: Ipv6Addr, nonce: u32) {
        if self.repl.replicas() == 0 || !self.repl.open_handback(now, i, id, addr, nonce) {
            return;
        }
        let mut blocks = 0;
        for (block, records) in self.repl.held_for(i, id) {
            self.repl.handback(now, i, id, block, &records);
            blocks += 1;
        }
        let ours: Vec<u32> = self
            .taken
            .iter()
            .filter(|&(&(p, _), &o)| p == i && o == id)
            .map(|(&(_, b), _)| b)
            .collect();
        for block in ours {
            self.taken.remove(&(i, block));
            if !self.pools[i].blocks().owns(block) {
                continue;
            }
            let records = self.pools[i].block_records(block);
            self.repl.handback(now, i, id, block, &records);
            // Released before the stream ends, so the owner finds it free (or ours, which
            // it may take from us) when it takes its blocks back. Until its claim is here
            // the block is in passage: we neither claim it again nor refuse its clients
            // (the quarantine ends with the owner's claim, or a block timeout if it never
            // comes).
            self.pools[i].release(block);
            let hold = self.pools[i].config().claim.block_timeout;
            self.pools[i].quarantine(block, now + hold);
            self.counters.inc(Counter::BlocksHandedBack);
            blocks += 1;
        }
        info!(pool = %self.pools[i].name(), node = %id, blocks, "handing back what we hold for a rebuilding node");
        self.repl.handback_end(now, i, id);
        self.pools[i].drain(now);
        self.flush_pool(i);
    }

    /// A peer finished handing back: the blocks it took over from us (and gave up for us
    /// just before its stream ended) and the replicas it held of blocks nobody took are
    /// ours again at once with its bindings, rather than at the end of the rebuild, so
    /// their clients are not left without a server meanwhile.
    fn take_back_early(&mut self, now: Instant) {
        for (i, from, blocks) in self.repl.take_finished() {
            let Some(pool) = self.pools.get(i) else {
                continue;
            };
            // Free, or still the sender's in our view (its release may not be here yet);
            // one a third node claims is left to the end of the rebuild.
            let released: Vec<u32> = blocks
                .into_iter()
                .filter(|&b| {
                    let bl = pool.blocks();
                    !bl.owns(b) && bl.owner_of(b).is_none_or(|(o, _)| o == from)
                })
                .collect();
            for block in released {
                let per = self.repl.take_recovered(i, block);
                let from_owner = per.contains_key(&from);
                let rep = crate::replica::merge_replicas(per.into_values());
                if from_owner && self.pools[i].take_back(now, block, rep, Some(from)) {
                    info!(pool = %self.pools[i].name(), block, %from, "taken back from the node that held it");
                }
            }
            self.pools[i].drain(now);
            self.flush_pool(i);
        }
    }

    /// The rebuild is over: every block a peer handed back is ours again with the
    /// bindings they held (the most recent of each), unless another node has it now.
    fn finish_recovery(&mut self, now: Instant) {
        let got = self.repl.finish_recovery();
        let mut blocks = 0;
        let mut bindings = 0;
        for ((i, block), per) in got {
            let Some(pool) = self.pools.get_mut(i) else {
                continue;
            };
            let owner = pool.blocks().owner_of(block).map(|(id, _)| id);
            let from = owner.filter(|o| per.contains_key(o));
            let rep = crate::replica::merge_replicas(per.into_values());
            let n = rep.bindings();
            if pool.take_back(now, block, rep, from) {
                blocks += 1;
                bindings += n;
            }
        }
        info!(blocks, bindings, "rebuild done: serving our blocks again");
        for i in 0..self.pools.len() {
            self.pools[i].hold_learning(false);
            self.pools[i].drain(now);
            self.flush_pool(i);
        }
    }

    /// Whether the node is still rebuilding its state from its peers.
    pub fn is_recovering(&self) -> bool {
        self.repl.is_recovering()
    }

    /// When [`Node::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Instant {
        self.pools
            .iter()
            .map(Pool::poll_timeout)
            .chain(self.repl.poll_timeout())
            .chain(self.takeovers.first().map(|t| t.0))
            .chain(self.auth_failed.iter().enumerate().filter_map(|(i, t)| {
                let timeout = self.pools[i].config().claim.block_timeout;
                t.map(|t| t + timeout)
            }))
            .chain(
                self.parked
                    .first()
                    .map(|p| p.since + self.max_lag + std::time::Duration::from_millis(1)),
            )
            .min()
            .unwrap_or(Instant::from_millis(u64::MAX))
    }

    /// Gives new holders the full state of the blocks they now hold, and queues what the
    /// replication layer has to send.
    fn flush_repl(&mut self, now: Instant) {
        for i in 0..self.pools.len() {
            if !self.repl.needs_rebalance(i) {
                continue;
            }
            let owned: Vec<u32> = self.pools[i].blocks().owned().collect();
            for r in self.repl.take_rebalance(now, i, owned) {
                let records = self.pools[i].block_records(r.block);
                self.repl.resync(now, i, r.block, &r.to, &records);
            }
        }
        for (i, block, rep) in self.repl.take_handed() {
            let n = self.pools[i].merge(block, rep);
            self.counters.add(Counter::BindingConflicts, n as u64);
            self.pools[i].drain(now);
            self.flush_pool(i);
        }
        let sends: Vec<_> = self.repl.take_sends().collect();
        for (pool, to, m) in sends {
            self.send(pool, Dest::Unicast(to), m);
        }
    }

    /// The next output; see the polling contract on [`Node`].
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Picks a fresh id after another host was seen with ours: the MAC-derived part stays,
    /// the random part changes, and our blocks are re-announced under the new id.
    fn duplicate_id(&mut self, now: Instant, from: Ipv6Addr) {
        self.counters.inc(Counter::DuplicateNodeId);
        if self.auth.node_key().is_some() {
            // The datagram was signed with our key: another host has our state directory.
            // A new id would not match the key; the operator must give one a new key.
            error!(id = %self.id, other = %from,
                   "DUPLICATE NODE ID: another host signs with our node key (a copied state directory?); remove its node.key");
            return;
        }
        let old = self.id;
        let mut new = old;
        while new == old {
            new.0[6] = self.rng.random();
            new.0[7] = self.rng.random();
        }
        error!(%old, %new, other = %from,
               "DUPLICATE NODE ID: another host sends with our node id; switching to a new id");
        self.id = new;
        self.repl.set_me(new);
        self.auth.set_node_id(new);
        self.out
            .push_back(Output::Event(Event::NodeIdChanged { old, new }));
        for i in 0..self.pools.len() {
            self.pools[i].me = new;
            self.pools[i].announce_all(now);
            self.pools[i].drain(now);
            self.flush_pool(i);
        }
    }

    /// Moves what pool `i` produced onto the output queue.
    fn flush_pool(&mut self, i: usize) {
        let (lapsed, lost) = self.pools[i].take_block_news();
        let now = self.now;
        for (block, owner) in lapsed {
            self.on_lapsed(now, i, block, owner);
        }
        for (_, to, records) in lost {
            if self.repl.is_ddhcp(i, to) {
                self.repl.handover(now, i, to, &records);
            }
        }
        let outs: Vec<PoolOutput> = self.pools[i].take_outputs().collect();
        for o in outs {
            match o {
                PoolOutput::Peer(dest, m) => self.send(i, dest, m),
                PoolOutput::Dhcp(t) => self.out.push_back(Output::Dhcp {
                    pool: i,
                    transmit: t,
                }),
                PoolOutput::Host(action) => self.out.push_back(Output::Host { pool: i, action }),
                PoolOutput::Event(ev) => {
                    if let Event::BlockClaimed { block, .. } = ev
                        && let Some(&owner) = self.taken.get(&(i, block))
                    {
                        // Taken over: the replica we took it with is ours now.
                        self.repl.take_replica(i, owner, block);
                    }
                    self.out.push_back(Output::Event(ev))
                }
                PoolOutput::Answer(id, a) => {
                    let answer = match a {
                        crate::api::ApiAnswer::Allocated { row, created } => {
                            Answer::Allocated { row, created }
                        }
                        crate::api::ApiAnswer::Refused(e) => Answer::Refused(e),
                    };
                    let block = match &answer {
                        Answer::Allocated { row, .. } if self.sync => {
                            self.pools[i].range().locate(row.ip).map(|(b, _)| b)
                        }
                        _ => None,
                    };
                    match block {
                        // Without ddhcp peers nobody could acknowledge: answered at once.
                        Some(block) if self.repl.peers(i).next().is_some() => {
                            self.parked.push(Parked {
                                id,
                                answer,
                                pool: i,
                                block,
                                since: self.now,
                                targets: None,
                            })
                        }
                        _ => self.out.push_back(Output::Answer { id, answer }),
                    }
                }
            }
        }
    }

    fn send(&mut self, pool: usize, dest: Dest, message: Message) {
        self.counters.inc(match &message {
            Message::Inquire(_) => Counter::McastSendInquire,
            Message::UpdateClaim(_) => Counter::McastSendUpdateClaim,
            Message::RenewLease(_) => Counter::DirectSendRenewLease,
            Message::LeaseAck(_) => Counter::DirectSendLeaseAck,
            Message::LeaseNak(_) => Counter::DirectSendLeaseNak,
            Message::Replicate { .. } => Counter::ReplSendBatch,
            Message::ReplicaAck { .. } => Counter::ReplSendAck,
            Message::Handback { .. } => Counter::ReplSendHandback,
            Message::Recover { .. } => Counter::ReplSendRecover,
        });
        let packet = Packet {
            node_id: self.id,
            swarm: self.pools[pool].swarm(),
            message,
        };
        // Entry lists are bounded by the block layer, so encoding cannot fail; if it ever
        // did, dropping the message is the safe choice.
        let Ok(mut payload) = packet.encode() else {
            error!(?packet, "message too large to encode, not sent");
            return;
        };
        // Tells ddhcp peers that we take replicas, in a byte C peers ignore.
        if self.repl.replicas() > 0 {
            wire::mark_claim(&mut payload);
        }
        self.send_raw(dest, payload);
    }

    /// Sends `payload` as this node sends every datagram: sealed and signed with its keys,
    /// whatever it says. The core uses it for what it encoded; adversary tests use it to
    /// make a member holding the keys misbehave (tests/simulation/auth.rs,
    /// examples/peer_forge.rs does the same with the library's `Auth`).
    #[doc(hidden)]
    pub fn send_raw(&mut self, dest: Dest, payload: Vec<u8>) {
        let (pkg, bytes) = match dest {
            Dest::Multicast => (Counter::McastSendPkg, Counter::McastSendByte),
            Dest::Unicast(_) => (Counter::DirectSendPkg, Counter::DirectSendByte),
        };
        let (plain, sealed) = self.auth.seal_for(dest, payload);
        for payload in [plain, sealed].into_iter().flatten() {
            self.counters.inc(pkg);
            self.counters.add(bytes, payload.len() as u64);
            self.out.push_back(Output::Peer(Transmit { dest, payload }));
        }
    }
}

/// How long a replica holder waits for the one ranked before it to take a lapsed block
/// over: one claim (a round to start, three Inquire rounds) and a round to spare.
pub fn takeover_step(c: &crate::blocks::ClaimConfig) -> std::time::Duration {
    c.round_interval() * 5
}

/// What a rebuild waits beyond three block timeouts for peers to hand back (a million
/// bindings take a few seconds on a link).
const RECOVER_SLACK: std::time::Duration = std::time::Duration::from_secs(30);

/// Why a pool answers no DHCP query.
fn no_api(p: &Pool) -> String {
    let why = match p.config().service {
        ServiceConfig::Api(_) => "not of this node's location",
        ServiceConfig::Local(_) => "use=local",
        ServiceConfig::Dhcp(_) | ServiceConfig::Passive => "use=dhcp",
    };
    format!(
        "pool '{}' is not an api pool on this node ({why})",
        p.name()
    )
}

fn no_dhcp(p: &Pool) -> String {
    let why = if !p.claims() {
        "not of this node's location"
    } else if p.local().is_some() {
        "a local pool"
    } else if p.api().is_some() {
        "an api pool"
    } else {
        "-S"
    };
    format!("pool '{}' has no DHCP service ({why})", p.name())
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
    use crate::blocks::ClaimConfig;
    use crate::dhcp::leases::AddrState;
    use crate::persist::LeaseRecord;
    use crate::testing::{claim, dhcp_node};

    fn config() -> NodeConfig {
        dhcp_node(
            ManagedRange::new(Ipv4Addr::new(10, 0, 0, 0), 24, 2).unwrap(),
            ClaimConfig {
                needless_timeout: Duration::from_secs(60),
                ..claim(2, 30, 4, true)
            },
            vec![],
        )
    }

    /// The next datagram for the server link, skipping other outputs.
    fn transmit(n: &mut Node) -> Option<Transmit> {
        while let Some(o) = n.poll_output() {
            if let Output::Peer(t) = o {
                return Some(t);
            }
        }
        None
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
            local: vec![],
            allocations: vec![],
            cooling: vec![],
            replicas: vec![],
            clock_went_back,
        }
    }

    #[test]
    fn valid_blocks_come_back_at_once_with_their_leases() {
        let mut n = Node::new(config(), NodeId([5; 8]), t(0), 1);
        n.restore(t(0), vec![restored(false)]);
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
        let changes: Vec<Change> = n.take_changes().into_iter().map(|(_, c)| c).collect();
        assert!(changes.contains(&Change::BlockGone { block: 12 }));
        assert!(changes.contains(&Change::Announced { at: t(0), ttl: 30 }));
        assert!(
            !changes.iter().any(|c| matches!(c, Change::Lease(_))),
            "{changes:?}"
        );
        let claim = transmit(&mut n).expect("claim sent at once");
        let p = Packet::decode(&claim.payload).unwrap();
        assert!(
            matches!(p.message, Message::UpdateClaim(ref e) if e.len() == 1 && e[0].block == 5)
        );
        // Refreshed during the learning phase, so peers do not let it lapse.
        n.handle_timeout(t(8));
        assert!(transmit(&mut n).is_some());
    }

    #[test]
    fn lapsed_blocks_are_claimed_first_and_bring_their_leases_back() {
        let mut cfg = config();
        cfg.pools[0].claim.learning = false;
        let mut n = Node::new(cfg, NodeId([5; 8]), t(0), 1);
        n.restore(t(0), vec![restored(false)]);
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
        n.restore(t(0), vec![restored(true)]);
        assert_eq!(n.blocks().owned_count(), 0);
        assert!(n.blocks().is_wanted(5) && n.blocks().is_wanted(9));
    }

    fn two_pools(location: Option<&str>) -> NodeConfig {
        let mut a = config().pools.remove(0);
        a.name = "a".into();
        a.claim.learning = false;
        let mut b = a.clone();
        b.name = "b".into();
        b.range = ManagedRange::new(Ipv4Addr::new(10, 1, 0, 0), 24, 3).unwrap();
        b.location = Some("rack2".into());
        NodeConfig {
            pools: vec![a, b],
            location: location.map(String::from),
            replicas: crate::replica::DEFAULT_REPLICAS,
            recover: false,
            max_replica_lag: crate::replica::DEFAULT_MAX_LAG,
            replica_sync: false,
        }
    }

    fn claim_from(range: ManagedRange, id: u8, block: u32) -> Vec<u8> {
        Packet {
            node_id: NodeId([id; 8]),
            swarm: range.swarm(),
            message: Message::UpdateClaim(vec![wire::ClaimEntry { block, timeout: 30 }]),
        }
        .encode()
        .unwrap()
    }

    #[test]
    fn datagrams_go_to_the_pool_their_header_names() {
        let mut n = Node::new(two_pools(Some("rack2")), NodeId([5; 8]), t(0), 1);
        let peer = "fe80::9".parse().unwrap();
        let b_range = *n.pool(1).range();
        n.handle_datagram(t(0), Channel::Multicast, peer, &claim_from(b_range, 9, 7));
        assert_eq!(
            n.pool(1).blocks().owner_of(7).map(|o| o.0),
            Some(NodeId([9; 8]))
        );
        assert_eq!(n.pool(0).blocks().owner_of(7), None);
        // A swarm no pool has: counted, nothing changes.
        let other = ManagedRange::new(Ipv4Addr::new(10, 2, 0, 0), 24, 2).unwrap();
        n.handle_datagram(t(0), Channel::Multicast, peer, &claim_from(other, 9, 8));
        assert_eq!(n.counters().get(Counter::DropForeignSwarm), 1);
        // Same prefix, other block size: another swarm too.
        let resized = ManagedRange::new(Ipv4Addr::new(10, 1, 0, 0), 24, 2).unwrap();
        n.handle_datagram(t(0), Channel::Multicast, peer, &claim_from(resized, 9, 9));
        assert_eq!(n.counters().get(Counter::DropForeignSwarm), 2);
        assert_eq!(n.pool(1).blocks().owner_of(9), None);
        // What we send carries each pool's own header.
        for s in 0..=4 {
            n.handle_timeout(t(s));
        }
        let mut swarms = std::collections::BTreeSet::new();
        while let Some(o) = n.poll_output() {
            if let Output::Peer(tx) = o {
                swarms.insert(Packet::decode(&tx.payload).unwrap().swarm.prefix);
            }
        }
        assert_eq!(
            swarms.into_iter().collect::<Vec<_>>(),
            vec![Ipv4Addr::new(10, 0, 0, 0), Ipv4Addr::new(10, 1, 0, 0)]
        );
        assert!(n.pool(0).blocks().owned_count() > 0 && n.pool(1).blocks().owned_count() > 0);
        let changes = n.take_changes();
        assert!(
            changes
                .iter()
                .any(|(p, c)| *p == 1 && matches!(c, Change::BlockOwned { .. }))
        );
    }

    #[test]
    fn a_pool_of_another_location_learns_and_never_claims() {
        let mut n = Node::new(two_pools(Some("rack1")), NodeId([5; 8]), t(0), 1);
        assert!(n.pool(0).claims() && !n.pool(1).claims());
        assert!(n.pool(1).dhcp().is_none());
        for s in 0..=30 {
            n.handle_timeout(t(s));
        }
        while let Some(o) = n.poll_output() {
            if let Output::Peer(tx) = o {
                let p = Packet::decode(&tx.payload).unwrap();
                assert_ne!(
                    p.swarm,
                    n.pool(1).swarm(),
                    "sent {:?} for pool b",
                    p.message
                );
            }
        }
        assert_eq!(n.pool(1).blocks().owned_count(), 0);
        let peer = "fe80::9".parse().unwrap();
        let b_range = *n.pool(1).range();
        n.handle_datagram(t(31), Channel::Multicast, peer, &claim_from(b_range, 9, 3));
        assert!(
            n.pool(1).blocks().owner_of(3).is_some(),
            "claims are still learnt"
        );
        // A node without a location claims only in pools without one.
        let n = Node::new(two_pools(None), NodeId([5; 8]), t(0), 1);
        assert!(!n.pool(1).claims());
    }

    fn ask(n: &mut Node, q: Query) -> Answer {
        n.handle_query(t(0), 7, q);
        while let Some(o) = n.poll_output() {
            if let Output::Answer { id: 7, answer } = o {
                return answer;
            }
        }
        panic!("no answer");
    }

    #[test]
    fn queries_name_their_pool_or_get_the_default() {
        let mut n = Node::new(two_pools(Some("rack1")), NodeId([5; 8]), t(0), 1);
        match ask(&mut n, Query::Blocks { pool: None }) {
            Answer::Refused(e) => assert!(e.contains("a, b"), "{e}"),
            a => panic!("{a:?}"),
        }
        match ask(
            &mut n,
            Query::Blocks {
                pool: Some("b".into()),
            },
        ) {
            Answer::Blocks { pool, .. } => assert_eq!(pool, "b"),
            a => panic!("{a:?}"),
        }
        match ask(
            &mut n,
            Query::Leases {
                pool: Some("x".into()),
            },
        ) {
            Answer::Refused(e) => assert!(e.contains("'x'") && e.contains("a, b"), "{e}"),
            a => panic!("{a:?}"),
        }
        let opt = DhcpOption {
            code: 6,
            payload: vec![10, 0, 0, 53],
        };
        let set = |pool: &str| Query::SetOption {
            pool: Some(pool.into()),
            option: opt.clone(),
        };
        assert_eq!(ask(&mut n, set("a")), Answer::Done);
        match ask(&mut n, set("b")) {
            Answer::Refused(e) => assert!(e.contains("location"), "{e}"),
            a => panic!("{a:?}"),
        }
        // The change is durable state of pool a, taken before the answer leaves.
        let changes = n.take_changes();
        assert!(
            changes
                .iter()
                .any(|(p, c)| *p == 0 && matches!(c, Change::Option { code: 6, .. }))
        );
        match ask(
            &mut n,
            Query::Options {
                pool: Some("a".into()),
            },
        ) {
            Answer::Options { options, .. } => assert!(options.contains(&opt)),
            a => panic!("{a:?}"),
        }
        // A single-pool node needs no name.
        let mut one = Node::new(config(), NodeId([5; 8]), t(0), 1);
        match ask(
            &mut one,
            Query::SetLocal {
                pool: None,
                standby: Some(1),
                min: None,
                max_standby: None,
                hysteresis: None,
            },
        ) {
            Answer::Refused(e) => {
                assert_eq!(
                    e,
                    "pool 'default' is not a local pool on this node (use=dhcp)"
                )
            }
            a => panic!("{a:?}"),
        }
        assert!(matches!(
            ask(&mut one, Query::Leases { pool: None }),
            Answer::Leases { .. }
        ));
        match ask(&mut one, Query::Status) {
            Answer::Status(s) => {
                assert_eq!(s.default_pool, Some(0));
                assert_eq!(s.pools[0].name, "default");
            }
            a => panic!("{a:?}"),
        }
    }
}

//! Replication of binding changes to peers (docs/replication.md).
//!
//! A node that dies takes its leases and allocations with it; a node whose blocks lapse
//! lets another hand the same addresses to new clients while the old ones still use them.
//! So every change of a binding in one of our blocks (lease, release, allocation, block
//! hold, the block itself) goes to `k` peers. They are chosen per block by rendezvous
//! hashing over the pool's live ddhcp peers ([`holders`]): every node that sees the same
//! peers names the same holders, with no agreement round, and a peer that comes or goes
//! moves only the blocks it ranks first for.
//!
//! Only peers known to be ddhcp nodes are sent anything: a ddhcp node marks its
//! UpdateClaims (`wire::CLAIM_MARK_DDHCP`, in a byte C nodes ignore), so C nodes are never
//! sent our message types. Transport: one ordered stream per (pool, holder), batches of
//! store record bodies (`store::codec::encode_body`, the same layout as on disk), go-back-N
//! with a window of [`WINDOW`] batches, a cumulative acknowledgement per batch received,
//! and retransmission after a timeout that doubles from [`RTO_MIN`] to [`RTO_MAX`]. Times
//! travel as milliseconds from the moment the change was queued, so no two clocks need to
//! agree; the batch delay, retransmissions and transit only make a holder's copy of a lease
//! end a little later than the owner's, never earlier.
//!
//! Nothing here waits on a holder: DHCP answers and API allocations leave as soon as the
//! node's own store holds them; what a holder has not acknowledged yet is the lag
//! ([`StreamView`]).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use crate::api::Allocation;
use crate::persist::{Change, LeaseRecord, apply_allocation};
use crate::range::ManagedRange;
use crate::store::codec;
use crate::time::Instant;
use crate::wire::{self, Message, NodeId, Swarm};

/// How many peers hold a replica of each block unless `--replicas` says otherwise.
pub const DEFAULT_REPLICAS: usize = 2;
/// `--max-replica-lag` unless given: at most this much of acknowledged allocations can be
/// lost when a node and its disk fail together (the IPAM requirement).
pub const DEFAULT_MAX_LAG: Duration = Duration::from_secs(5);
/// Changes wait this long for company before they leave, so that a burst (a claim round,
/// a pipelined provisioning run) travels in full datagrams instead of one per change.
pub const BATCH_DELAY: Duration = Duration::from_millis(10);
/// First retransmission timeout; a holder on the same link answers in well under 1 ms.
pub const RTO_MIN: Duration = Duration::from_millis(400);
/// Longest retransmission timeout: a holder that is gone is given up with its liveness
/// (the block timeout), not by this.
pub const RTO_MAX: Duration = Duration::from_secs(8);
/// Batches in flight per stream: about 19 KB, what a slow router drains at once.
pub const WINDOW: usize = 16;
/// Room for records (each with its 2-byte length) in one Replicate.
const ROOM: usize = wire::MAX_REPLICATE_DATAGRAM - wire::HEADER_LEN - wire::REPLICATE_FIXED_LEN;
/// Records per Replicate: the count field is one byte.
const MAX_RECORDS: usize = 255;

/// What a holder keeps of one block of another node: enough to answer its clients and
/// keep its allocations after a takeover.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockReplica {
    /// The owner took the block over and holds its addresses for their old clients until.
    pub hold: Option<Instant>,
    pub leases: BTreeMap<Ipv4Addr, LeaseRecord>,
    pub allocations: BTreeMap<Ipv4Addr, Allocation>,
    pub cooling: BTreeMap<Ipv4Addr, Instant>,
}

impl BlockReplica {
    /// Leases (and quarantined addresses) and allocations.
    pub fn bindings(&self) -> usize {
        self.leases.len() + self.allocations.len()
    }

    /// The records that rebuild this replica from nothing, after a `BlockOwned`.
    pub fn records(&self, block: u32) -> Vec<Change> {
        let mut v = Vec::with_capacity(1 + self.bindings() + self.cooling.len());
        if let Some(until) = self.hold {
            v.push(Change::BlockHold { block, until });
        }
        v.extend(self.leases.values().cloned().map(Change::Lease));
        v.extend(self.allocations.iter().map(|(&ip, a)| Change::Allocated {
            ip,
            alloc: a.clone(),
        }));
        v.extend(self.cooling.iter().map(|(&ip, &until)| Change::AllocGone {
            ip,
            cooldown: Some(until),
        }));
        v
    }

    /// This replica as the store read it (times in Unix milliseconds) in core time,
    /// without what ran out: the same rules as for the node's own bindings.
    pub(crate) fn restore(self, clock: &crate::store::WallClock) -> BlockReplica {
        BlockReplica {
            hold: self.hold.and_then(|t| clock.until_back(t)),
            leases: self
                .leases
                .into_iter()
                .filter_map(|(ip, l)| Some((ip, clock.lease_back(l)?)))
                .collect(),
            allocations: self
                .allocations
                .into_iter()
                .map(|(ip, a)| (ip, clock.allocation_back(a)))
                .collect(),
            cooling: self
                .cooling
                .into_iter()
                .filter_map(|(ip, t)| Some((ip, clock.until_back(t)?)))
                .collect(),
        }
    }

    /// One change of the block's (not `BlockOwned`/`BlockGone`: see [`apply_replica`]).
    fn apply(&mut self, c: Change) {
        match c {
            Change::BlockHold { until, .. } => self.hold = Some(until),
            Change::Lease(l) => {
                self.leases.insert(l.ip, l);
            }
            Change::LeaseGone(ip) => {
                self.leases.remove(&ip);
            }
            Change::Allocated { ip, alloc } => apply_allocation(
                &mut self.allocations,
                &mut self.cooling,
                ip,
                Some(alloc),
                None,
            ),
            Change::AllocGone { ip, cooldown } => {
                apply_allocation(&mut self.allocations, &mut self.cooling, ip, None, cooldown)
            }
            Change::BlockOwned { .. }
            | Change::BlockGone { .. }
            | Change::Announced { .. }
            | Change::Option { .. }
            | Change::Local { .. }
            | Change::LocalGone(_)
            | Change::Replica { .. } => {}
        }
    }
}

/// One replicated change of `block` applied to what is held of its owner's blocks: one
/// rule for the stream (`Replication::on_replicate`) and for the store's replay of it.
pub(crate) fn apply_replica(blocks: &mut BTreeMap<u32, BlockReplica>, block: u32, c: Change) {
    match c {
        Change::BlockOwned { .. } => {
            blocks.insert(block, BlockReplica::default());
        }
        Change::BlockGone { .. } => {
            blocks.remove(&block);
        }
        c => blocks.entry(block).or_default().apply(c),
    }
}

/// The block a change is about, if it is one we replicate. Local-mode addresses are not:
/// they are configured on this host, and no other node could use them.
pub fn block_of(range: &ManagedRange, c: &Change) -> Option<u32> {
    match c {
        Change::BlockOwned { block, .. }
        | Change::BlockGone { block }
        | Change::BlockHold { block, .. } => Some(*block),
        Change::Lease(LeaseRecord { ip, .. })
        | Change::LeaseGone(ip)
        | Change::Allocated { ip, .. }
        | Change::AllocGone { ip, .. } => range.locate(*ip).map(|(b, _)| b),
        Change::Announced { .. } | Change::Option { .. } | Change::Local { .. } => None,
        // Another node's block: its owner replicates it, not us.
        Change::LocalGone(_) | Change::Replica { .. } => None,
    }
}

/// The rendezvous score of `node` for `block` of the swarm: FNV-1a over the swarm's prefix
/// and length, the block (big-endian) and the node id, then the splitmix64 finaliser.
/// Fixed here rather than left to a library hasher, because every ddhcp node, of every
/// version, must compute the same (docs/protocol.md).
pub fn score(swarm: &Swarm, block: u32, node: NodeId) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes = swarm
        .prefix
        .octets()
        .into_iter()
        .chain([swarm.prefix_len])
        .chain(block.to_be_bytes())
        .chain(node.0);
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The `k` holders of `block`: the candidates other than `owner` with the highest scores,
/// best first (ties, which need equal scores of distinct ids, by the greater id).
pub fn holders(
    swarm: &Swarm,
    block: u32,
    owner: NodeId,
    candidates: impl IntoIterator<Item = NodeId>,
    k: usize,
) -> Vec<NodeId> {
    let mut ranked: Vec<(u64, NodeId)> = candidates
        .into_iter()
        .filter(|&n| n != owner)
        .map(|n| (score(swarm, block, n), n))
        .collect();
    ranked.sort_unstable_by(|a, b| b.cmp(a));
    ranked.dedup();
    ranked.into_iter().take(k).map(|(_, n)| n).collect()
}

#[derive(Clone, Copy, Debug)]
struct Peer {
    addr: Ipv6Addr,
    seen: Instant,
}

#[derive(Debug)]
struct Batch {
    seq: u32,
    records: Vec<Vec<u8>>,
    /// When the oldest of its records was queued: the lag is measured from here.
    queued: Instant,
    sent: Instant,
    rto: Duration,
}

/// Our side of the stream to one holder (or, `handback`, to a node rebuilding its state).
#[derive(Debug)]
struct OutStream {
    addr: Ipv6Addr,
    epoch: u32,
    /// A handback stream: sent as Handback, ended by a batch without records (queued as
    /// an empty record).
    handback: bool,
    /// The nonce of the Recover this handback answers, and when it last made progress.
    nonce: u32,
    progress: Instant,
    /// Records ever queued and ever acknowledged: an API answer in synchronous mode
    /// waits until a holder's acknowledged count passes what was queued with it.
    queued_total: u64,
    acked_total: u64,
    next_seq: u32,
    pending: VecDeque<(Instant, Vec<u8>)>,
    /// Bytes `pending` takes in a Replicate (each record with its length).
    pending_bytes: usize,
    flight: VecDeque<Batch>,
    /// When the pending records leave even if no datagram is full.
    flush_at: Option<Instant>,
}

impl OutStream {
    fn message(&self, seq: u32, records: Vec<Vec<u8>>) -> Message {
        let epoch = self.epoch;
        if self.handback {
            Message::Handback {
                epoch,
                seq,
                records,
            }
        } else {
            Message::Replicate {
                epoch,
                seq,
                records,
            }
        }
    }

    fn push(&mut self, now: Instant, body: &[u8]) {
        self.queued_total += 1;
        self.pending.push_back((now, body.to_vec()));
        self.pending_bytes += 2 + body.len();
        // A full datagram's worth leaves at once, anything less after the batch delay.
        let at = if self.pending_bytes >= ROOM {
            now
        } else {
            now + BATCH_DELAY
        };
        self.flush_at = Some(self.flush_at.map_or(at, |t| t.min(at)));
    }
}

/// A holder's side of the stream from one owner, and what it holds of the owner's blocks.
#[derive(Debug)]
struct InStream {
    addr: Ipv6Addr,
    /// 0 for what came back from our store: no stream of the owner's is known (epochs
    /// are never 0), so its next batch makes it start one with the full state.
    epoch: u32,
    next: u32,
    reorder: Reorder,
    last: Instant,
    blocks: BTreeMap<u32, BlockReplica>,
    /// Blocks restored from our store that the owner has not sent afresh since: it may
    /// have given them up while we were down (and told nobody but the holders it had
    /// then), so they are checked against the claims once a block timeout has passed
    /// (see `Replication::check_restored`).
    restored: BTreeSet<u32>,
}

impl InStream {
    fn new(addr: Ipv6Addr, epoch: u32, now: Instant) -> Self {
        InStream {
            addr,
            epoch,
            next: 0,
            reorder: Reorder::default(),
            last: now,
            blocks: BTreeMap::new(),
            restored: BTreeSet::new(),
        }
    }
}

/// The record that makes our store forget what we held of `origin`'s `block`.
fn forget(origin: NodeId, block: u32) -> Change {
    Change::Replica {
        origin,
        block,
        change: Box::new(Change::BlockGone { block }),
    }
}

/// The receiving side's order: batches that overtook a lost or slower one wait here for
/// it (at most a window's worth), so one loss costs one retransmission, not the window.
#[derive(Debug, Default)]
struct Reorder {
    next: u32,
    ahead: BTreeMap<u32, Vec<Vec<u8>>>,
}

impl Reorder {
    /// Batch `seq`: the batches that are now next in order (none if it is early or old).
    fn accept(&mut self, seq: u32, records: &[Vec<u8>]) -> Vec<Vec<Vec<u8>>> {
        let ahead = seq.wrapping_sub(self.next);
        if ahead == 0 {
            let mut out = vec![records.to_vec()];
            self.next = self.next.wrapping_add(1);
            while let Some(r) = self.ahead.remove(&self.next) {
                out.push(r);
                self.next = self.next.wrapping_add(1);
            }
            out
        } else {
            // A sender keeps at most a window in flight: anything further is not ours.
            if (ahead as usize) < WINDOW {
                self.ahead.entry(seq).or_insert_with(|| records.to_vec());
            }
            Vec::new()
        }
    }
}

/// One row of `ddhcpctl replicas` and of the lag metrics: a stream of ours to a holder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamView {
    pub pool: usize,
    pub peer: NodeId,
    pub addr: Ipv6Addr,
    /// Blocks of ours this peer holds.
    pub blocks: usize,
    /// Records queued or sent and not yet acknowledged.
    pub lag_records: usize,
    /// Age of the oldest of them (zero when none).
    pub lag: Duration,
    pub in_flight: usize,
}

/// One row per owner whose replicas we hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldView {
    pub pool: usize,
    pub origin: NodeId,
    pub addr: Ipv6Addr,
    pub blocks: usize,
    pub leases: usize,
    pub allocations: usize,
    /// Since the last batch from it.
    pub idle: Duration,
}

/// Counters of the replication layer (`ddhcpctl stats`, metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplStats {
    pub batches_sent: u64,
    pub records_sent: u64,
    pub bytes_sent: u64,
    pub retransmits: u64,
    pub batches_received: u64,
    pub records_applied: u64,
    pub out_of_order: u64,
    pub bad_records: u64,
    pub acks_received: u64,
}

struct PoolRepl {
    swarm: Swarm,
    range: ManagedRange,
    /// A peer is live while its last marked claim is younger than this (the block timeout).
    live_for: Duration,
    peers: BTreeMap<NodeId, Peer>,
    /// The peers by when they were last seen: the next expiry without a walk over all.
    by_seen: BTreeSet<(Instant, NodeId)>,
    /// Every id that ever sent us a marked claim: a ddhcp node, whose lapsed blocks its
    /// replica holders take over.
    known: BTreeSet<NodeId>,
    /// Holders of each block we own, as last computed.
    holders: BTreeMap<u32, Vec<NodeId>>,
    out: BTreeMap<NodeId, OutStream>,
    /// Handback streams to nodes rebuilding their state.
    back: BTreeMap<NodeId, OutStream>,
    /// When a handback to each node last began: a Recover costs one small datagram and
    /// starts a stream of everything we hold for that node, so a node gets at most one per
    /// [`HANDBACK_HOLDOFF`] (a rebuilding node asks again every second until it is served).
    handed_at: BTreeMap<NodeId, Instant>,
    held: BTreeMap<NodeId, InStream>,
    /// The peer set changed: the holders of our blocks must be computed again.
    rebalance: bool,
    /// The earliest flush or retransmission of any stream, kept up to date by every
    /// method that touches streams: `poll_timeout` is called far more often than they are.
    stream_due: Option<Instant>,
}

impl PoolRepl {
    fn update_due(&mut self) {
        let mut t: Option<Instant> = None;
        for s in self.out.values().chain(self.back.values()) {
            let retransmit = s.flight.front().map(|b| b.sent + b.rto);
            // A full window waits for an acknowledgement, not for the clock.
            let flush = s.flush_at.filter(|_| s.flight.len() < WINDOW);
            for x in retransmit.into_iter().chain(flush) {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        }
        self.stream_due = t;
    }
}

/// What a pool needs rebuilt for a holder: the full state of `block`, for `to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resync {
    pub block: u32,
    pub to: Vec<NodeId>,
}

/// The replication layer of a node: all pools.
pub struct Replication {
    k: usize,
    me: NodeId,
    /// Epoch of the next stream we open: distinct per stream, so that a holder never takes
    /// a new stream's batch 0 for a duplicate of an old stream's.
    next_epoch: u32,
    pools: Vec<PoolRepl>,
    sends: Vec<(usize, Ipv6Addr, Message)>,
    stats: ReplStats,
    /// Records that came for blocks we own (a handover): (pool, block, bindings).
    handed: Vec<(usize, u32, BlockReplica)>,
    /// Owners whose replicas we hold that went silent (pool, id): a block of theirs whose
    /// claim never reached us lapses for us with them (see [`Replication::take_gone`]).
    gone: Vec<(usize, NodeId)>,
    recovery: Option<Recovery>,
    /// Replica changes as our store takes them (`Change::Replica`), in the order applied.
    journal: Vec<(usize, Change)>,
    /// When replicas restored from our store are checked against what their owners
    /// claim (one block timeout after the restore, the longest any claim stays unheard).
    restored_check_at: Option<Instant>,
}

/// A rebuild under way: what our peers hand back to us, per pool and sender.
#[derive(Debug)]
struct Recovery {
    nonce: u32,
    /// When we give up waiting for peers that never answer.
    deadline: Instant,
    /// Peers asked, with where they are and when we ask again (`None`: their stream began).
    asked: BTreeMap<(usize, NodeId), (Ipv6Addr, Option<Instant>)>,
    /// Each sender's handback stream: its epoch and the order of its batches.
    streams: BTreeMap<(usize, NodeId), (u32, Reorder)>,
    done: BTreeSet<(usize, NodeId)>,
    /// Senders whose stream ended since [`Replication::take_finished`] last looked.
    finished: Vec<(usize, NodeId)>,
    blocks: BTreeMap<(usize, u32), BTreeMap<NodeId, BlockReplica>>,
}

/// The `next` of a ReplicaAck that says "I do not know this stream" (the holder restarted
/// and lost it): the owner opens a new one with the full state.
pub const UNKNOWN_STREAM: u32 = u32::MAX;

/// At most one handback per node this often (see `PoolRepl::handed_at`).
pub const HANDBACK_HOLDOFF: Duration = Duration::from_secs(5);

/// How often a node rebuilding its state asks a peer that has not answered yet.
pub const RECOVER_RETRY: Duration = Duration::from_secs(1);
/// A handback stream that makes no progress for this long is given up (the node that
/// asked is gone again).
const HANDBACK_IDLE: Duration = Duration::from_secs(60);

impl Replication {
    /// `pools`: each pool's swarm, range and block timeout, in the node's pool order.
    /// `epoch` comes from the node's random source, so a restarted node opens streams no
    /// holder has seen.
    pub fn new(
        k: usize,
        me: NodeId,
        epoch: u32,
        pools: impl IntoIterator<Item = (Swarm, ManagedRange, Duration)>,
    ) -> Self {
        Replication {
            k,
            me,
            next_epoch: epoch.max(1),
            pools: pools
                .into_iter()
                .map(|(swarm, range, live_for)| PoolRepl {
                    swarm,
                    range,
                    live_for,
                    peers: BTreeMap::new(),
                    by_seen: BTreeSet::new(),
                    known: BTreeSet::new(),
                    holders: BTreeMap::new(),
                    out: BTreeMap::new(),
                    back: BTreeMap::new(),
                    handed_at: BTreeMap::new(),
                    held: BTreeMap::new(),
                    rebalance: false,
                    stream_due: None,
                })
                .collect(),
            sends: Vec::new(),
            stats: ReplStats::default(),
            handed: Vec::new(),
            gone: Vec::new(),
            recovery: None,
            journal: Vec::new(),
            restored_check_at: None,
        }
    }

    pub fn replicas(&self) -> usize {
        self.k
    }

    pub fn stats(&self) -> ReplStats {
        self.stats
    }

    /// Our id changed (another host had it): holders must learn the new one from new streams.
    pub fn set_me(&mut self, me: NodeId) {
        self.me = me;
    }

    /// Takes back the replicas our store held for other nodes (`Restored::replicas`), right
    /// after the start. Their owners are ddhcp nodes (they replicated to us); we know no
    /// stream of theirs, so each sends us its full state again when it next hears from us.
    /// What an owner does not send again within a block timeout is checked then
    /// (`Replication::check_restored`).
    pub fn restore_held(
        &mut self,
        now: Instant,
        pool: usize,
        replicas: impl IntoIterator<Item = (NodeId, u32, BlockReplica)>,
    ) {
        let me = self.me;
        let Some(p) = self.pools.get_mut(pool) else {
            return;
        };
        for (origin, block, mut rep) in replicas {
            // What a store holds is not trusted to be consistent (a damaged or hand-made
            // file): a block outside the range, or a binding outside its block, is dropped
            // here rather than served in a takeover.
            if origin == me || block >= p.range.num_blocks() {
                continue;
            }
            let range = &p.range;
            let inside = |ip: &Ipv4Addr| range.locate(*ip).is_some_and(|(b, _)| b == block);
            rep.leases.retain(|ip, l| inside(ip) && l.ip == *ip);
            rep.allocations.retain(|ip, _| inside(ip));
            rep.cooling.retain(|ip, _| inside(ip));
            p.known.insert(origin);
            let s = p
                .held
                .entry(origin)
                .or_insert_with(|| InStream::new(Ipv6Addr::UNSPECIFIED, 0, now));
            s.blocks.insert(block, rep);
            s.restored.insert(block);
            let at = now + p.live_for;
            self.restored_check_at = Some(self.restored_check_at.map_or(at, |t| t.max(at)));
        }
    }

    /// Replica changes for our store since the last call (`Change::Replica`, by pool).
    pub fn take_journal(&mut self) -> Vec<(usize, Change)> {
        std::mem::take(&mut self.journal)
    }

    /// Once a block timeout after a restore: restored replicas their owners did not send
    /// again. An owner that was heard since had our greeting and re-sent what it wants us
    /// to hold; the rest it gave up while we were down, or holds elsewhere now, and is
    /// forgotten here (and asked again, if no stream of the owner's reached us at all).
    /// An owner never heard since is gone: its blocks lapse for us as for a holder that
    /// saw it go (see [`Replication::take_gone`]).
    fn check_restored(&mut self, now: Instant) {
        if self.restored_check_at.is_none_or(|t| t > now) {
            return;
        }
        self.restored_check_at = None;
        for (i, p) in self.pools.iter_mut().enumerate() {
            for (&origin, s) in p.held.iter_mut() {
                if s.restored.is_empty() {
                    continue;
                }
                let Some(peer) = p.peers.get(&origin) else {
                    self.gone.push((i, origin));
                    continue;
                };
                for block in std::mem::take(&mut s.restored) {
                    s.blocks.remove(&block);
                    self.journal.push((i, forget(origin, block)));
                }
                if s.epoch == 0 {
                    self.sends.push((
                        i,
                        peer.addr,
                        Message::ReplicaAck {
                            epoch: 0,
                            next: UNKNOWN_STREAM,
                        },
                    ));
                }
            }
        }
    }

    /// A marked UpdateClaim from `id` at `addr` in pool `pool`: a live ddhcp peer.
    pub fn saw_peer(&mut self, now: Instant, pool: usize, id: NodeId, addr: Ipv6Addr) {
        let Some(p) = self.pools.get_mut(pool) else {
            return;
        };
        p.known.insert(id);
        if let Some(r) = &mut self.recovery
            && !r.asked.contains_key(&(pool, id))
        {
            r.asked
                .insert((pool, id), (addr, Some(now + RECOVER_RETRY)));
            self.sends
                .push((pool, addr, Message::Recover { nonce: r.nonce }));
        }
        let old = p.peers.insert(id, Peer { addr, seen: now });
        if let Some(o) = old {
            p.by_seen.remove(&(o.seen, id));
        }
        p.by_seen.insert((now, id));
        match old {
            None => {
                p.rebalance = true;
                if self.k > 0 && p.held.get(&id).is_none_or(|s| s.epoch == 0) {
                    // We know no stream of its (we restarted, with or without what we
                    // held): if it thinks we do, it learns otherwise now rather than at
                    // its next change, and sends us its full state again.
                    self.sends.push((
                        pool,
                        addr,
                        Message::ReplicaAck {
                            epoch: 0,
                            next: UNKNOWN_STREAM,
                        },
                    ));
                }
            }
            Some(old) if old.addr != addr => {
                // It moved (a new link-local address): streams follow it.
                if let Some(s) = p.out.get_mut(&id) {
                    s.addr = addr;
                }
            }
            Some(_) => {}
        }
    }

    /// Live ddhcp peers of pool `pool`.
    pub fn peers(&self, pool: usize) -> impl Iterator<Item = (NodeId, Ipv6Addr)> + '_ {
        self.pools
            .get(pool)
            .into_iter()
            .flat_map(|p| p.peers.iter().map(|(&id, peer)| (id, peer.addr)))
    }

    /// The holders of `block` of pool `pool` if we own it (as last computed).
    pub fn holders_of(&self, pool: usize, block: u32) -> &[NodeId] {
        self.pools
            .get(pool)
            .and_then(|p| p.holders.get(&block))
            .map_or(&[], Vec::as_slice)
    }

    /// Our own durable changes of pool `pool`, in order, as the store takes them: each goes
    /// to the holders of its block. A `BlockOwned` computes the block's holders (and tells
    /// them to start the block afresh); a `BlockGone` tells them to forget it.
    pub fn on_changes<'a>(
        &mut self,
        now: Instant,
        pool: usize,
        changes: impl IntoIterator<Item = &'a Change>,
    ) {
        if self.k == 0 {
            return;
        }
        let me = self.me;
        let k = self.k;
        let Some(p) = self.pools.get_mut(pool) else {
            return;
        };
        for c in changes {
            let Some(block) = block_of(&p.range, c) else {
                continue;
            };
            let to = match c {
                Change::BlockOwned { .. } => {
                    let hs = holders(&p.swarm, block, me, p.peers.keys().copied(), k);
                    p.holders.insert(block, hs.clone());
                    hs
                }
                Change::BlockGone { .. } => p.holders.remove(&block).unwrap_or_default(),
                _ => match p.holders.get(&block) {
                    Some(hs) => hs.clone(),
                    None => continue,
                },
            };
            let Some(body) = record(now, c) else {
                continue;
            };
            for h in to {
                queue(p, &mut self.next_epoch, now, h, &body);
            }
        }
        p.update_due();
    }

    /// The blocks (of those we own, `owned`) whose holders changed since the peer set last
    /// changed, with the holders that need the block's full state; displaced holders that
    /// are still live are told to forget the block. The caller answers each with
    /// [`Replication::resync`].
    pub fn take_rebalance(
        &mut self,
        now: Instant,
        pool: usize,
        owned: impl IntoIterator<Item = u32>,
    ) -> Vec<Resync> {
        let (me, k) = (self.me, self.k);
        let Some(p) = self.pools.get_mut(pool) else {
            return Vec::new();
        };
        if !std::mem::take(&mut p.rebalance) || k == 0 {
            return Vec::new();
        }
        let mut out = Vec::new();
        for block in owned {
            let new = holders(&p.swarm, block, me, p.peers.keys().copied(), k);
            let old = p.holders.insert(block, new.clone()).unwrap_or_default();
            let added: Vec<NodeId> = new.iter().filter(|n| !old.contains(n)).copied().collect();
            for gone in old.iter().filter(|n| !new.contains(n)) {
                if let Some(body) = p
                    .peers
                    .contains_key(gone)
                    .then(|| record(now, &Change::BlockGone { block }))
                    .flatten()
                {
                    queue(p, &mut self.next_epoch, now, *gone, &body);
                }
            }
            if !added.is_empty() {
                out.push(Resync { block, to: added });
            }
        }
        p.update_due();
        out
    }

    /// Sends `records` (the full state of `block`, from the pool's services) to `to`, after
    /// a `BlockOwned` that makes them start the block afresh.
    pub fn resync(
        &mut self,
        now: Instant,
        pool: usize,
        block: u32,
        to: &[NodeId],
        records: &[Change],
    ) {
        let Some(p) = self.pools.get_mut(pool) else {
            return;
        };
        let start = Change::BlockOwned { block, since: now };
        let bodies: Vec<Vec<u8>> = std::iter::once(&start)
            .chain(records)
            .filter_map(|c| record(now, c))
            .collect();
        for &h in to {
            for b in &bodies {
                queue(p, &mut self.next_epoch, now, h, b);
            }
        }
        p.update_due();
    }

    /// A Replicate from `from` (id `origin`): applied if it is the next batch of its
    /// stream, and acknowledged in any case.
    // The fields of one datagram, as the node decoded them; a struct would only rename them.
    #[allow(clippy::too_many_arguments)]
    pub fn on_replicate(
        &mut self,
        now: Instant,
        pool: usize,
        origin: NodeId,
        from: Ipv6Addr,
        epoch: u32,
        seq: u32,
        records: &[Vec<u8>],
        owns: impl Fn(u32) -> bool,
    ) {
        let Some(p) = self.pools.get_mut(pool) else {
            return;
        };
        if seq != 0 && !p.held.contains_key(&origin) {
            // The middle of a stream we never saw the start of: we restarted and lost what
            // we held. The owner is told so, and starts afresh with the full state.
            self.unknown_stream(pool, from, epoch);
            return;
        }
        let s = p
            .held
            .entry(origin)
            .or_insert_with(|| InStream::new(from, epoch, now));
        s.addr = from;
        if s.epoch != epoch {
            // A new stream (the owner restarted, or lost us and came back). Only its first
            // batch starts it: a late batch of the old stream must not reset the new one.
            if seq != 0 {
                // We are on another stream of the owner's (an older one's first batch came
                // late and restarted us on it, or this one's first batch was lost before a
                // restart of ours): the owner starts this one again from its first batch.
                self.unknown_stream(pool, from, epoch);
                return;
            }
            s.epoch = epoch;
            s.next = 0;
            s.reorder = Reorder::default();
        }
        let ready = s.reorder.accept(seq, records);
        if ready.is_empty() {
            self.stats.out_of_order += 1;
        }
        s.next = s.reorder.next;
        for records in ready {
            s.last = now;
            self.stats.batches_received += 1;
            for r in &records {
                let Some((_, c)) = codec::decode_body(r, codec::Format::V2) else {
                    self.stats.bad_records += 1;
                    continue;
                };
                let c = rebase(c, now);
                let Some(block) = block_of(&p.range, &c) else {
                    self.stats.bad_records += 1;
                    continue;
                };
                self.stats.records_applied += 1;
                match &c {
                    Change::BlockOwned { .. } | Change::BlockGone { .. } => {
                        // The owner's word on the block replaces what we restored of it.
                        s.restored.remove(&block);
                    }
                    c if owns(block) => {
                        // A block that is ours too: the sender held it while we were cut
                        // off, or is about to lose it to us (or we to it). Its bindings are
                        // merged into ours, and kept as a replica as well, for the case
                        // that the tie-break gives the block to the sender.
                        match self.handed.last_mut() {
                            Some((pl, b, r)) if *pl == pool && *b == block => r.apply(c.clone()),
                            _ => {
                                let mut r = BlockReplica::default();
                                r.apply(c.clone());
                                self.handed.push((pool, block, r));
                            }
                        }
                    }
                    _ => {}
                }
                self.journal.push((
                    pool,
                    Change::Replica {
                        origin,
                        block,
                        change: Box::new(c.clone()),
                    },
                ));
                apply_replica(&mut s.blocks, block, c);
            }
        }
        self.sends.push((
            pool,
            from,
            Message::ReplicaAck {
                epoch,
                next: s.next,
            },
        ));
    }

    /// Tells the sender of a batch of stream `epoch` that we do not know that stream, so
    /// that it opens a new one with the full state.
    fn unknown_stream(&mut self, pool: usize, to: Ipv6Addr, epoch: u32) {
        self.stats.out_of_order += 1;
        self.sends.push((
            pool,
            to,
            Message::ReplicaAck {
                epoch,
                next: UNKNOWN_STREAM,
            },
        ));
    }

    /// A holder's acknowledgement: batches before `next` are done with, and the window
    /// opens for what is pending.
    pub fn on_ack(&mut self, now: Instant, pool: usize, holder: NodeId, epoch: u32, next: u32) {
        let Some(p) = self.pools.get_mut(pool) else {
            return;
        };
        if next == UNKNOWN_STREAM {
            // The holder restarted and holds nothing of ours, whatever stream we think it
            // has (it says so at once to every peer it meets): a new stream, and every
            // block it holds of ours from the start (the next rebalance sees it as a new
            // holder of them).
            self.stats.acks_received += 1;
            // Epoch 0: the holder's greeting after its start; else about one stream, which
            // must be the current one (a late answer to a stream already replaced is not).
            let current = p
                .out
                .get(&holder)
                .is_some_and(|s| epoch == 0 || s.epoch == epoch);
            if current && p.out.remove(&holder).is_some() {
                for hs in p.holders.values_mut() {
                    hs.retain(|h| *h != holder);
                }
                p.rebalance = true;
                p.update_due();
            }
            return;
        }
        let s = match p.out.get_mut(&holder) {
            Some(s) if s.epoch == epoch => s,
            _ => match p.back.get_mut(&holder) {
                Some(s) if s.epoch == epoch => s,
                _ => return,
            },
        };
        self.stats.acks_received += 1;
        s.progress = now;
        let before = s.flight.len();
        while s
            .flight
            .front()
            .is_some_and(|b| next.wrapping_sub(b.seq).wrapping_sub(1) < u32::MAX / 2)
        {
            if let Some(b) = s.flight.pop_front() {
                s.acked_total += b.records.len() as u64;
            }
        }
        if s.flight.len() < before {
            // The holder is there and taking batches: what is still in flight waits one
            // short timeout again, not the backed-off one of an earlier loss.
            for b in &mut s.flight {
                b.rto = RTO_MIN;
            }
        }
        if s.flush_at.is_some_and(|t| t <= now) {
            flush(pool, s, now, &mut self.sends, &mut self.stats);
        }
        // A handback that is wholly acknowledged is done.
        p.back
            .retain(|_, s| !(s.flight.is_empty() && s.pending.is_empty()));
        p.update_due();
    }

    /// Flushes due batches, retransmits what timed out, forgets peers that stopped
    /// claiming (and the streams to them: their blocks get new holders).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.check_restored(now);
        if let Some(r) = &mut self.recovery {
            for (&(pool, _), (addr, retry)) in r.asked.iter_mut() {
                if retry.is_some_and(|t| t <= now) {
                    *retry = Some(now + RECOVER_RETRY);
                    self.sends
                        .push((pool, *addr, Message::Recover { nonce: r.nonce }));
                }
            }
        }
        for (i, p) in self.pools.iter_mut().enumerate() {
            let mut expired = false;
            while let Some(&(seen, id)) = p.by_seen.first() {
                if now.saturating_since(seen) <= p.live_for {
                    break;
                }
                p.by_seen.pop_first();
                p.peers.remove(&id);
                expired = true;
                if p.held.get(&id).is_some_and(|h| !h.blocks.is_empty()) {
                    self.gone.push((i, id));
                }
            }
            if expired {
                p.rebalance = true;
                let peers = &p.peers;
                p.out.retain(|id, _| peers.contains_key(id));
            }
            p.back
                .retain(|_, s| now.saturating_since(s.progress) < HANDBACK_IDLE);
            for s in p.out.values_mut().chain(p.back.values_mut()) {
                if s.flight.front().is_some_and(|b| b.sent + b.rto <= now) {
                    let mut again = Vec::with_capacity(s.flight.len());
                    for b in s.flight.iter_mut() {
                        self.stats.retransmits += 1;
                        b.sent = now;
                        b.rto = (b.rto * 2).min(RTO_MAX);
                        again.push((b.seq, b.records.clone()));
                    }
                    for (seq, records) in again {
                        self.sends.push((i, s.addr, s.message(seq, records)));
                    }
                }
                if s.flush_at.is_some_and(|t| t <= now) {
                    flush(i, s, now, &mut self.sends, &mut self.stats);
                }
            }
            p.update_due();
        }
    }

    /// Whether some pool's holders must be computed again ([`Replication::take_rebalance`]).
    pub fn needs_rebalance(&self, pool: usize) -> bool {
        self.pools.get(pool).is_some_and(|p| p.rebalance)
    }

    /// When [`Replication::handle_timeout`] has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut at = |x: Instant| t = Some(t.map_or(x, |t| t.min(x)));
        for p in &self.pools {
            if let Some(&(seen, _)) = p.by_seen.first() {
                at(seen + p.live_for + Duration::from_millis(1));
            }
            if let Some(d) = p.stream_due {
                at(d);
            }
        }
        if let Some(x) = self.restored_check_at {
            at(x);
        }
        if let Some(r) = &self.recovery {
            at(r.deadline);
            for &(_, retry) in r.asked.values() {
                if let Some(x) = retry {
                    at(x);
                }
            }
        }
        t
    }

    /// Datagrams to send: (pool, peer address, message).
    pub fn take_sends(&mut self) -> std::vec::Drain<'_, (usize, Ipv6Addr, Message)> {
        self.sends.drain(..)
    }

    /// Our streams to holders, for `ddhcpctl replicas` and the lag metrics.
    pub fn streams(&self, now: Instant) -> Vec<StreamView> {
        let mut v = Vec::new();
        for (i, p) in self.pools.iter().enumerate() {
            for (&peer, s) in &p.out {
                let oldest = s
                    .flight
                    .front()
                    .map(|b| b.queued)
                    .or(s.pending.front().map(|(t, _)| *t));
                v.push(StreamView {
                    pool: i,
                    peer,
                    addr: s.addr,
                    blocks: p.holders.values().filter(|h| h.contains(&peer)).count(),
                    lag_records: s.pending.len()
                        + s.flight.iter().map(|b| b.records.len()).sum::<usize>(),
                    lag: oldest.map_or(Duration::ZERO, |t| now.saturating_since(t)),
                    in_flight: s.flight.len(),
                });
            }
        }
        v
    }

    /// The owners whose replicas we hold.
    pub fn held(&self, now: Instant) -> Vec<HeldView> {
        let mut v = Vec::new();
        for (i, p) in self.pools.iter().enumerate() {
            for (&origin, s) in &p.held {
                v.push(HeldView {
                    pool: i,
                    origin,
                    addr: s.addr,
                    blocks: s.blocks.len(),
                    leases: s.blocks.values().map(|b| b.leases.len()).sum(),
                    allocations: s.blocks.values().map(|b| b.allocations.len()).sum(),
                    idle: now.saturating_since(s.last),
                });
            }
        }
        v
    }

    /// What we hold of `origin`'s `block` in pool `pool`.
    pub fn replica(&self, pool: usize, origin: NodeId, block: u32) -> Option<&BlockReplica> {
        self.pools.get(pool)?.held.get(&origin)?.blocks.get(&block)
    }
}

impl Replication {
    /// What the current holders of our `block` must acknowledge for everything queued
    /// so far to be theirs: (holder, stream epoch, records queued).
    pub fn sync_targets(&self, pool: usize, block: u32) -> Vec<(NodeId, u32, u64)> {
        let Some(p) = self.pools.get(pool) else {
            return Vec::new();
        };
        // The first holder only: it is the one that takes the block over if we fail, so
        // its acknowledgement is the one that makes the allocation survive us.
        p.holders
            .get(&block)
            .into_iter()
            .flatten()
            .take(1)
            .filter_map(|h| p.out.get(h).map(|s| (*h, s.epoch, s.queued_total)))
            .collect()
    }

    /// Some(true) once a holder acknowledged its target; None if every target's
    /// stream is gone (the holders changed: ask [`Replication::sync_targets`] again).
    pub fn sync_reached(&self, pool: usize, targets: &[(NodeId, u32, u64)]) -> Option<bool> {
        let p = self.pools.get(pool)?;
        let mut live = false;
        for (h, epoch, target) in targets {
            if let Some(s) = p.out.get(h).filter(|s| s.epoch == *epoch) {
                if s.acked_total >= *target {
                    return Some(true);
                }
                live = true;
            }
        }
        live.then_some(false)
    }

    /// How far behind the furthest holder of pool `pool` is (zero without holders).
    pub fn worst_lag(&self, pool: usize, now: Instant) -> Duration {
        let Some(p) = self.pools.get(pool) else {
            return Duration::ZERO;
        };
        p.out
            .values()
            .filter_map(|s| {
                s.flight
                    .front()
                    .map(|b| b.queued)
                    .or(s.pending.front().map(|(t, _)| *t))
            })
            .map(|t| now.saturating_since(t))
            .max()
            .unwrap_or_default()
    }

    /// Whether `id` ever sent us a marked claim in pool `pool`: a ddhcp node.
    pub fn is_ddhcp(&self, pool: usize, id: NodeId) -> bool {
        self.pools.get(pool).is_some_and(|p| p.known.contains(&id))
    }

    /// Our place among the holders of `owner`'s `block` that take it over when its claim
    /// lapses: the rendezvous rule over the live ddhcp peers and us, without the owner. Only
    /// if we hold a replica of it: a holder without one has nothing to serve.
    pub fn takeover_rank(&self, pool: usize, block: u32, owner: NodeId) -> Option<usize> {
        let p = self.pools.get(pool)?;
        p.held.get(&owner)?.blocks.get(&block)?;
        let cands = p.peers.keys().copied().chain([self.me]);
        holders(&p.swarm, block, owner, cands, self.k.max(1))
            .iter()
            .position(|&n| n == self.me)
    }

    /// Takes what we hold of `origin`'s `block` out of the replicas (to serve it, or
    /// because another node took the block).
    pub fn take_replica(
        &mut self,
        pool: usize,
        origin: NodeId,
        block: u32,
    ) -> Option<BlockReplica> {
        let s = self.pools.get_mut(pool)?.held.get_mut(&origin)?;
        s.restored.remove(&block);
        let rep = s.blocks.remove(&block)?;
        self.journal.push((pool, forget(origin, block)));
        Some(rep)
    }

    /// We lost `block` to `to`, a ddhcp node: it gets our bindings of the block, which it
    /// merges into its own (the tie-break decides who keeps the block; the records make
    /// sure the winner knows every client the loser served).
    pub fn handover(&mut self, now: Instant, pool: usize, to: NodeId, records: &[Change]) {
        if self.k == 0 {
            return;
        }
        let Some(p) = self.pools.get_mut(pool) else {
            return;
        };
        for c in records {
            if let Some(body) = record(now, c) {
                queue(p, &mut self.next_epoch, now, to, &body);
            }
        }
        p.update_due();
    }

    /// Records that came for blocks we own, to merge: (pool, block, bindings).
    pub fn take_handed(&mut self) -> Vec<(usize, u32, BlockReplica)> {
        std::mem::take(&mut self.handed)
    }

    /// A Recover from `id` at `addr`: opens a handback stream, unless one for the same
    /// request is under way. True if the caller is to fill it ([`Replication::handback`],
    /// then [`Replication::handback_end`]).
    pub fn open_handback(
        &mut self,
        now: Instant,
        pool: usize,
        id: NodeId,
        addr: Ipv6Addr,
        nonce: u32,
    ) -> bool {
        let Some(p) = self.pools.get_mut(pool) else {
            return false;
        };
        if p.back.get(&id).is_some_and(|s| s.nonce == nonce)
            || p.handed_at
                .get(&id)
                .is_some_and(|&t| now.saturating_since(t) < HANDBACK_HOLDOFF)
        {
            return false;
        }
        p.handed_at
            .retain(|_, t| now.saturating_since(*t) < HANDBACK_HOLDOFF);
        p.handed_at.insert(id, now);
        let epoch = self.next_epoch;
        self.next_epoch = self.next_epoch.wrapping_add(1).max(1);
        p.back.insert(
            id,
            OutStream {
                addr,
                epoch,
                handback: true,
                nonce,
                progress: now,
                queued_total: 0,
                acked_total: 0,
                next_seq: 0,
                pending: VecDeque::new(),
                pending_bytes: 0,
                flight: VecDeque::new(),
                flush_at: None,
            },
        );
        true
    }

    /// What we hold of `origin`'s blocks in pool `pool`, each as a block's full state.
    /// Owners that went silent since the last call, each with the blocks we hold of it.
    pub fn take_gone(&mut self) -> Vec<(usize, NodeId, Vec<u32>)> {
        let gone = std::mem::take(&mut self.gone);
        gone.into_iter()
            .filter_map(|(pool, id)| {
                let h = self.pools.get(pool)?.held.get(&id)?;
                Some((pool, id, h.blocks.keys().copied().collect()))
            })
            .collect()
    }

    pub fn held_for(&self, pool: usize, origin: NodeId) -> Vec<(u32, Vec<Change>)> {
        self.pools
            .get(pool)
            .and_then(|p| p.held.get(&origin))
            .map(|s| s.blocks.iter().map(|(&b, r)| (b, r.records(b))).collect())
            .unwrap_or_default()
    }

    /// One block's full state for the handback stream to `to`.
    pub fn handback(
        &mut self,
        now: Instant,
        pool: usize,
        to: NodeId,
        block: u32,
        records: &[Change],
    ) {
        let Some(s) = self.pools.get_mut(pool).and_then(|p| p.back.get_mut(&to)) else {
            return;
        };
        let start = Change::BlockOwned { block, since: now };
        for c in std::iter::once(&start).chain(records) {
            if let Some(body) = record(now, c) {
                s.push(now, &body);
            }
        }
    }

    /// Ends the handback stream to `to`.
    pub fn handback_end(&mut self, now: Instant, pool: usize, to: NodeId) {
        let Some(p) = self.pools.get_mut(pool) else {
            return;
        };
        if let Some(s) = p.back.get_mut(&to) {
            s.push(now, &[]);
        }
        p.update_due();
    }

    /// Starts a rebuild: every ddhcp peer we hear in the next moments is asked for what it
    /// holds for us, until `deadline`.
    pub fn start_recovery(&mut self, nonce: u32, deadline: Instant) {
        self.recovery = Some(Recovery {
            nonce,
            deadline,
            asked: BTreeMap::new(),
            streams: BTreeMap::new(),
            done: BTreeSet::new(),
            finished: Vec::new(),
            blocks: BTreeMap::new(),
        });
    }

    pub fn is_recovering(&self) -> bool {
        self.recovery.is_some()
    }

    /// A Handback batch from `id` at `from`: applied in order, acknowledged in any case.
    #[allow(clippy::too_many_arguments)]
    pub fn on_handback(
        &mut self,
        now: Instant,
        pool: usize,
        id: NodeId,
        from: Ipv6Addr,
        epoch: u32,
        seq: u32,
        records: &[Vec<u8>],
    ) {
        let ack = |next| (pool, from, Message::ReplicaAck { epoch, next });
        let Some(r) = &mut self.recovery else {
            // Not rebuilding (any more): acknowledge all, so the sender stops.
            self.sends.push(ack(seq.wrapping_add(1)));
            return;
        };
        let Some(range) = self.pools.get(pool).map(|p| p.range) else {
            return;
        };
        if let Some(a) = r.asked.get_mut(&(pool, id)) {
            a.1 = None;
        } else {
            r.asked.insert((pool, id), (from, None));
        }
        let st = r
            .streams
            .entry((pool, id))
            .or_insert_with(|| (epoch, Reorder::default()));
        if st.0 != epoch {
            if seq != 0 {
                self.sends.push(ack(0));
                return;
            }
            *st = (epoch, Reorder::default());
            r.done.remove(&(pool, id));
            // What an earlier stream of this sender handed back is replaced by this one.
            for per in r.blocks.values_mut() {
                per.remove(&id);
            }
        }
        let ready = st.1.accept(seq, records);
        let next = st.1.next;
        for records in ready {
            if records.is_empty() && r.done.insert((pool, id)) {
                r.finished.push((pool, id));
            }
            for rec in &records {
                let Some((_, c)) = codec::decode_body(rec, codec::Format::V2) else {
                    self.stats.bad_records += 1;
                    continue;
                };
                let c = rebase(c, now);
                let Some(block) = block_of(&range, &c) else {
                    self.stats.bad_records += 1;
                    continue;
                };
                self.stats.records_applied += 1;
                let per = r.blocks.entry((pool, block)).or_default();
                match c {
                    Change::BlockOwned { .. } => {
                        per.insert(id, BlockReplica::default());
                    }
                    Change::BlockGone { .. } => {
                        per.remove(&id);
                    }
                    c => per.entry(id).or_default().apply(c),
                }
            }
        }
        self.sends.push(ack(next));
    }

    /// Handback streams that ended since the last call: (pool, sender, blocks it sent).
    pub fn take_finished(&mut self) -> Vec<(usize, NodeId, Vec<u32>)> {
        let Some(r) = &mut self.recovery else {
            return Vec::new();
        };
        std::mem::take(&mut r.finished)
            .into_iter()
            .map(|(pool, id)| {
                let blocks = r
                    .blocks
                    .iter()
                    .filter(|((p, _), per)| *p == pool && per.contains_key(&id))
                    .map(|(&(_, b), _)| b)
                    .collect();
                (pool, id, blocks)
            })
            .collect()
    }

    /// Takes what the peers handed back for one block out of the rebuild (it is taken
    /// back early).
    pub fn take_recovered(&mut self, pool: usize, block: u32) -> BTreeMap<NodeId, BlockReplica> {
        self.recovery
            .as_mut()
            .and_then(|r| r.blocks.remove(&(pool, block)))
            .unwrap_or_default()
    }

    /// Whether the rebuild can end: every peer asked has sent all it holds for us (once
    /// `learned`: we have listened long enough to know our peers), or the deadline passed.
    pub fn recovery_complete(&self, now: Instant, learned: bool) -> bool {
        let Some(r) = &self.recovery else {
            return false;
        };
        now >= r.deadline || (learned && r.asked.keys().all(|k| r.done.contains(k)))
    }

    /// Ends the rebuild: per (pool, block), what each peer handed back.
    pub fn finish_recovery(&mut self) -> BTreeMap<(usize, u32), BTreeMap<NodeId, BlockReplica>> {
        self.recovery.take().map(|r| r.blocks).unwrap_or_default()
    }
}

/// One binding per address of what several peers handed back for one block: the latest
/// lease end wins (a holder that lagged knows less, never more), allocations are unioned.
pub fn merge_replicas(reps: impl IntoIterator<Item = BlockReplica>) -> BlockReplica {
    let mut out = BlockReplica::default();
    for r in reps {
        out.hold = out.hold.max(r.hold);
        for (ip, l) in r.leases {
            match out.leases.get(&ip) {
                Some(cur) if cur.until >= l.until => {}
                _ => {
                    out.leases.insert(ip, l);
                }
            }
        }
        for (ip, a) in r.allocations {
            out.allocations.entry(ip).or_insert(a);
        }
        for (ip, t) in r.cooling {
            if !out.allocations.contains_key(&ip) {
                let e = out.cooling.entry(ip).or_insert(t);
                *e = (*e).max(t);
            }
        }
    }
    out
}

/// Queues one change for holder `h`, opening the stream if there is none.
fn queue(p: &mut PoolRepl, next_epoch: &mut u32, now: Instant, h: NodeId, body: &[u8]) {
    let Some(peer) = p.peers.get(&h) else {
        return;
    };
    let s = p.out.entry(h).or_insert_with(|| {
        let epoch = *next_epoch;
        *next_epoch = next_epoch.wrapping_add(1).max(1); // 0 is the greeting's
        OutStream {
            addr: peer.addr,
            epoch,
            handback: false,
            nonce: 0,
            progress: now,
            queued_total: 0,
            acked_total: 0,
            next_seq: 0,
            pending: VecDeque::new(),
            pending_bytes: 0,
            flight: VecDeque::new(),
            flush_at: None,
        }
    });
    s.push(now, body);
}

/// A change as a Replicate record, once for all its holders; `None` if it would not fit.
fn record(now: Instant, c: &Change) -> Option<Vec<u8>> {
    let mut body = Vec::with_capacity(64);
    codec::encode_body(
        0,
        c,
        |t| now.until(t).as_millis().try_into().unwrap_or(u64::MAX),
        &mut body,
    );
    (body.len() <= wire::MAX_REPLICA_RECORD).then_some(body)
}

/// Packs pending records into batches while the window has room.
fn flush(
    pool: usize,
    s: &mut OutStream,
    now: Instant,
    sends: &mut Vec<(usize, Ipv6Addr, Message)>,
    stats: &mut ReplStats,
) {
    while !s.pending.is_empty() && s.flight.len() < WINDOW {
        let mut room = ROOM;
        let mut records = Vec::new();
        let queued = s.pending.front().map_or(now, |(t, _)| *t);
        while let Some((_, r)) = s.pending.front() {
            if r.is_empty() {
                // The end of a handback: a batch of its own, without records.
                if records.is_empty() {
                    s.pending_bytes -= 2;
                    s.pending.pop_front();
                }
                break;
            }
            if 2 + r.len() > room || records.len() == MAX_RECORDS {
                break;
            }
            room -= 2 + r.len();
            s.pending_bytes -= 2 + r.len();
            records.push(s.pending.pop_front().expect("front exists").1);
        }
        let seq = s.next_seq;
        s.next_seq = s.next_seq.wrapping_add(1);
        stats.batches_sent += 1;
        stats.records_sent += records.len() as u64;
        stats.bytes_sent += (wire::HEADER_LEN
            + wire::REPLICATE_FIXED_LEN
            + records.iter().map(|r| 2 + r.len()).sum::<usize>())
            as u64;
        sends.push((pool, s.addr, s.message(seq, records.clone())));
        s.flight.push_back(Batch {
            seq,
            records,
            queued,
            sent: now,
            rto: RTO_MIN,
        });
    }
    s.flush_at = if s.pending.is_empty() {
        None
    } else {
        Some(now)
    };
}

/// A change as a holder keeps it: times came as milliseconds from the moment of sending.
fn rebase(c: Change, now: Instant) -> Change {
    let at = |t: Instant| now + Duration::from_millis(t.as_millis());
    match c {
        Change::BlockOwned { block, since } => Change::BlockOwned {
            block,
            since: at(since),
        },
        Change::BlockHold { block, until } => Change::BlockHold {
            block,
            until: at(until),
        },
        Change::Lease(mut l) => {
            l.until = at(l.until);
            Change::Lease(l)
        }
        Change::Allocated { ip, mut alloc } => {
            alloc.since = at(alloc.since);
            Change::Allocated { ip, alloc }
        }
        Change::AllocGone { ip, cooldown } => Change::AllocGone {
            ip,
            cooldown: cooldown.map(at),
        },
        Change::Announced { at: t, ttl } => Change::Announced { at: at(t), ttl },
        other => other,
    }
}

#[cfg(test)]
mod tests;

//! Block table and claim state machine, sans-IO (reference §3).
//!
//! Every block of the managed range is in one of five states. We move a block from `Free`
//! to `Ours` by sending three Inquire rounds, half a tentative timeout apart, and owning it on
//! the fourth round if nobody objected; we keep it by re-announcing it every quarter of the
//! block timeout. The node with the greater id wins every race.
//!
//! Where the C daemon is wrong we deliberately differ (reference §3.14), without changing
//! anything a C peer sees on the wire:
//! - a block is owned only if it is still `Claiming` when its rounds are done, never after
//!   somebody else inquired it with a greater id or claimed it meanwhile;
//! - an Inquire never overwrites the state of a block a live owner claims;
//! - among competing claims an observer keeps the greater id, so every observer ends with
//!   the owner the owners themselves agree on;
//! - rounds are paced by our timer only: peers' traffic never makes us inquire faster;
//! - free blocks are picked uniformly at random from an RNG the shell seeds properly;
//! - dropping a block announces it with TTL 0, so peers free it at once instead of after
//!   a whole block timeout (a C peer frees it on its next timeout check).
//!
//! No operation scans the whole table: free blocks live in an index for O(1) random picks,
//! deadlines in an ordered set, our own blocks in a small map.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use rand::{Rng, RngExt};
use tracing::{debug, info, warn};

use crate::range::ManagedRange;
use crate::time::Instant;
use crate::wire::{ClaimEntry, MAX_CLAIM_ENTRIES, MAX_INQUIRE_ENTRIES, NodeId};

/// Inquire rounds a block goes through before we own it (as in ddhcpd).
pub const INQUIRE_ROUNDS: u8 = 3;

/// Blocks we inquire at once. One Inquire lists at most 255; a round sends as many Inquire
/// packets as needed, so a burst of clients is not limited to 255 blocks per claim time.
pub const MAX_CLAIMING: usize = 4 * MAX_INQUIRE_ENTRIES;

/// Every Inquire for an owned block is answered at once, as a C owner does: C claimers own
/// a block after three Inquires whatever its state (reference §3.6), several of them
/// started together send those three within milliseconds (every multicast triggers their
/// housekeeping), and only a claim heard before the third one makes them back off. Even an
/// Inquire that crossed our last answer needs its own: its sender may have started, or
/// picked the block, after that answer went by (a 10 ms per-block gap lost the block to a
/// C claimer in the simulator). Answers, in packets, come from a budget: a burst of this
/// many, then [`ANSWER_RATE`] per second. C storms need a dozen; a flood of forged Inquires
/// (which can name hundreds of our blocks each) cannot make us send more than this.
pub const ANSWER_BURST: u32 = 64;
/// Sustained answers per second once the burst is spent.
pub const ANSWER_RATE: u32 = 32;

/// Timers and targets of the claim protocol (the `-t -B -s -n -L` flags).
#[derive(Clone, Debug)]
pub struct ClaimConfig {
    /// `-t`: how long a block stays tentative after somebody inquired it. Rounds are sent
    /// every half of it, as ddhcpd's housekeeping does.
    pub tentative_timeout: Duration,
    /// `-B`: TTL of our claims, and the length of the learning phase.
    pub block_timeout: Duration,
    /// `-s`: free addresses to keep ready in owned blocks.
    pub spare_leases: u32,
    /// `-n`: how long a surplus block stays unused before we give it up.
    pub needless_timeout: Duration,
    /// `!-L`: listen for one block timeout before claiming anything.
    pub learning: bool,
}

impl ClaimConfig {
    /// Interval between claim rounds: half the tentative timeout, at least one second.
    pub fn round_interval(&self) -> Duration {
        (self.tentative_timeout / 2).max(Duration::from_secs(1))
    }

    /// Interval between re-announcements of our blocks: a quarter of the TTL we announce,
    /// so three consecutive losses are survived.
    pub fn refresh_interval(&self) -> Duration {
        (self.block_timeout / 4).max(Duration::from_secs(1))
    }

    /// The TTL field of our claims, in whole seconds.
    pub fn ttl(&self) -> u16 {
        u16::try_from(self.block_timeout.as_secs()).unwrap_or(u16::MAX)
    }
}

/// What one block is to us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Free,
    /// Somebody inquired it, or we lost an inquiry race; nobody picks it until `until`.
    Tentative {
        until: Instant,
    },
    /// We are inquiring it; `rounds` Inquires have gone out.
    Claiming {
        rounds: u8,
    },
    /// Ours; details in [`Blocks::ours`].
    Ours,
    /// Owned by the peer at `peer` in [`Peers`] until `until` unless refreshed.
    Claimed {
        peer: u32,
        until: Instant,
    },
}

/// Public name of a block state, as `ddhcpctl blocks` prints it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockStateName {
    Tentative = 0,
    Claiming = 1,
    Ours = 2,
    Claimed = 3,
}

impl BlockStateName {
    pub fn as_str(self) -> &'static str {
        match self {
            BlockStateName::Tentative => "tentative",
            BlockStateName::Claiming => "claiming",
            BlockStateName::Ours => "ours",
            BlockStateName::Claimed => "claimed",
        }
    }
}

/// One row of the block table as operators see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockView {
    pub index: u32,
    pub first: Ipv4Addr,
    pub state: BlockStateName,
    pub owner: Option<NodeId>,
    /// Owner's address, for claimed blocks.
    pub owner_addr: Option<Ipv6Addr>,
    /// Seconds until the state runs out unless renewed (for our blocks: until peers forget
    /// our last announcement).
    pub expires_in: u64,
}

/// Bookkeeping for a block we own.
#[derive(Clone, Debug)]
struct OwnedBlock {
    since: Instant,
    last_announced: Instant,
    needless_since: Option<Instant>,
    /// Addresses of the block in use (leases, offers, quarantine), set by the lease layer.
    used: u32,
}

/// Something the block protocol wants sent on the server link (always multicast).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    Inquire(Vec<u32>),
    Claim(Vec<ClaimEntry>),
}

/// State changes worth a log line, a hook run or a persisted record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlockEvent {
    EndLearning,
    /// We own the block now.
    Claimed(u32),
    /// We gave the block up because it was not needed.
    Dropped(u32),
    /// A greater id claimed a block we owned.
    Lost {
        block: u32,
        to: NodeId,
    },
    /// Another node's claim ran out without a release: the owner died or was cut off.
    Lapsed {
        block: u32,
        owner: NodeId,
    },
    /// With node keys: `by` has kept claiming a block we hold, refused, for a block
    /// timeout. A member attacking, or a node that claimed it while it could not hear us
    /// and that never heard us before: then both hold it (docs/protocol.md, "What
    /// remains"), and only an operator can tell which.
    Contested {
        block: u32,
        by: NodeId,
    },
}

/// A peer as seen on the server link: an id at an address. Two C master nodes share the id
/// zero, so the address is part of the key.
#[derive(Clone, Debug)]
struct Peer {
    id: NodeId,
    addr: Ipv6Addr,
    last_seen: Instant,
    /// Blocks recorded as claimed by this peer; a peer with none may be forgotten.
    blocks: u32,
}

/// Interned peers, so a claimed block costs 4 bytes of owner reference, not 24.
#[derive(Default)]
struct Peers {
    slots: Vec<Option<Peer>>,
    index: HashMap<(NodeId, Ipv6Addr), u32>,
    vacant: Vec<u32>,
}

impl Peers {
    fn intern(&mut self, id: NodeId, addr: Ipv6Addr, now: Instant) -> u32 {
        if let Some(&slot) = self.index.get(&(id, addr)) {
            if let Some(p) = self.slots[slot as usize].as_mut() {
                p.last_seen = now;
            }
            return slot;
        }
        let peer = Peer {
            id,
            addr,
            last_seen: now,
            blocks: 0,
        };
        let slot = match self.vacant.pop() {
            Some(s) => {
                self.slots[s as usize] = Some(peer);
                s
            }
            None => {
                self.slots.push(Some(peer));
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert((id, addr), slot);
        slot
    }

    fn get(&self, slot: u32) -> &Peer {
        self.slots[slot as usize]
            .as_ref()
            .expect("block references a live peer slot")
    }

    fn adjust(&mut self, slot: u32, delta: i32) {
        if let Some(p) = self.slots[slot as usize].as_mut() {
            p.blocks = p.blocks.saturating_add_signed(delta);
        }
    }

    /// Forgets peers that own nothing and were not heard for `horizon`, so forged sender
    /// ids cannot grow the table without bound.
    fn collect(&mut self, now: Instant, horizon: Duration) {
        for (slot, entry) in self.slots.iter_mut().enumerate() {
            if let Some(p) = entry
                && p.blocks == 0
                && now.saturating_since(p.last_seen) > horizon
            {
                self.index.remove(&(p.id, p.addr));
                *entry = None;
                self.vacant.push(slot as u32);
            }
        }
    }

    fn live(&self, now: Instant, horizon: Duration) -> usize {
        self.slots
            .iter()
            .flatten()
            .filter(|p| now.saturating_since(p.last_seen) <= horizon)
            .count()
    }
}

/// The set of free blocks, with O(1) insert, remove and uniform random pick.
struct FreeSet {
    members: Vec<u32>,
    /// Position of each block in `members`, or `u32::MAX`.
    pos: Vec<u32>,
}

impl FreeSet {
    fn full(n: u32) -> Self {
        FreeSet {
            members: (0..n).collect(),
            pos: (0..n).collect(),
        }
    }

    fn insert(&mut self, b: u32) {
        if self.pos[b as usize] == u32::MAX {
            self.pos[b as usize] = self.members.len() as u32;
            self.members.push(b);
        }
    }

    fn remove(&mut self, b: u32) {
        let p = self.pos[b as usize];
        if p == u32::MAX {
            return;
        }
        let last = *self.members.last().expect("non-empty when a member exists");
        self.members.swap_remove(p as usize);
        if last != b {
            self.pos[last as usize] = p;
        }
        self.pos[b as usize] = u32::MAX;
    }

    fn pick(&self, rng: &mut impl Rng) -> Option<u32> {
        if self.members.is_empty() {
            None
        } else {
            Some(self.members[rng.random_range(0..self.members.len())])
        }
    }

    fn len(&self) -> usize {
        self.members.len()
    }
}

/// The block table plus the claim protocol driving it.
pub struct Blocks {
    cfg: ClaimConfig,
    range: ManagedRange,
    states: Vec<State>,
    free: FreeSet,
    /// Expiry of every `Tentative` and `Claimed` block.
    deadlines: BTreeSet<(Instant, u32)>,
    ours: BTreeMap<u32, OwnedBlock>,
    /// Blocks in `Claiming`, in the order we picked them.
    claiming: Vec<u32>,
    peers: Peers,
    learning_until: Option<Instant>,
    next_round: Instant,
    next_refresh: Instant,
    outputs: VecDeque<Output>,
    events: VecDeque<BlockEvent>,
    /// Entries of received messages that named a block outside the range.
    pub invalid_entries: u64,
    /// Free addresses to hold beyond `-s` because clients are arriving fast (claim-ahead).
    extra_spare: u32,
    /// Blocks whose owner's claim ran out without a release (the owner died or was cut
    /// off), with when: its clients may still hold leases from them for a while.
    lapsed: HashMap<u32, Instant>,
    /// How long after a lapse such leases may still run (the lease time).
    lapse_hold: Duration,
    /// Blocks we owned before a restart whose claims lapsed while we were down: our
    /// clients still hold leases there, so they are claimed first, whatever the demand.
    wanted: BTreeSet<u32>,
    /// When all our blocks were last announced, until the store has been told.
    refreshed: Option<Instant>,
    /// Answer budget (generic cell rate algorithm): the time at which the budget would be
    /// back to full if nothing more were sent.
    answer_tat: Instant,
    /// Answers not sent because the budget was spent (a flood, or a storm beyond reason).
    pub answers_suppressed: u64,
    /// Never claimed by this node (see [`Blocks::set_excluded`]).
    excluded: BTreeSet<u32>,
    /// Lapsed blocks left to the lapsed owner's replica holders until then
    /// ([`Blocks::quarantine`]).
    quarantined: HashMap<u32, Instant>,
    /// Blocks their owner gave up (TTL 0), and when: for a claim round their clients are
    /// not refused, the block may be passing to a node whose claim we missed.
    released: HashMap<u32, Instant>,
    /// The learning phase does not end while this is set (a rebuild is under way).
    learning_held: bool,
    /// No new claims while set (a key mismatch: we cannot hear the peers we would collide
    /// with); owned blocks are still refreshed and served.
    claims_held: bool,
    /// Until then, a block nobody owns may still be on its way to the holder of its
    /// bindings (see [`Blocks::is_settling`]).
    settling_until: Instant,
    /// Node keys are on ([`Blocks::set_incumbency`]): the incumbent keeps a block against
    /// new claims. `None`: the C tie-break (the greater id wins every conflict).
    strict: Option<Box<Incumbency>>,
    /// Claims refused under the incumbency rule or the cap of blocks per node.
    pub claims_refused: u64,
}

/// With node keys a claim can no longer be made in another node's name, so the tie-break
/// can tell a claim on a block its owner holds and refreshes (refused: it rewarded any
/// member with a greater id) from a genuine conflict, where both claimed the block while
/// they could not hear each other (settled by the greater id, as before). What decides is
/// what we heard, per block and per peer (docs/protocol.md "Incumbency").
struct Incumbency {
    /// When the current owner's claim began (as far as we know) for every block that is
    /// `Claimed`; our own blocks keep it in [`OwnedBlock::since`].
    since: HashMap<u32, Instant>,
    /// The last owner whose claim on a block ended (lapsed or lost), its claim's start, and
    /// when it ended: if that owner comes back from a silence still claiming the block,
    /// its claim is the older one.
    prev: HashMap<u32, (NodeId, Instant, Instant)>,
    /// When we heard each peer, to tell a node coming back from a silence (a healed
    /// partition) from one we have been hearing all along.
    heard: BTreeMap<NodeId, Heard>,
    /// Blocks one peer may hold in this pool (0: no cap).
    max_peer_blocks: u32,
    /// When we started listening with node keys.
    started: Instant,
    /// Refused claims on our blocks, per (block, claimant): first and last refusal of the
    /// current run and whether it was reported.
    contests: BTreeMap<(u32, NodeId), Contest>,
}

#[derive(Clone, Copy)]
struct Contest {
    first: Instant,
    last: Instant,
    reported: bool,
}

/// Contests remembered; beyond it the one refused longest ago is forgotten.
const MAX_CONTESTS: usize = 256;

#[derive(Clone, Copy)]
struct Heard {
    last: Instant,
    /// Start of the current run of datagrams without a long silence.
    since: Instant,
    /// When we heard it last before that run, if we had heard it at all.
    silent_from: Option<Instant>,
}

/// Peers whose hearing we remember; beyond it the one heard longest ago is forgotten
/// (it then counts as never heard, which never wins a conflict).
const MAX_HEARD: usize = 4096;

impl Blocks {
    pub fn new(cfg: ClaimConfig, range: ManagedRange, now: Instant) -> Self {
        let n = range.num_blocks();
        let learning_until = cfg.learning.then(|| now + cfg.block_timeout);
        let mut events = VecDeque::new();
        if learning_until.is_none() {
            events.push_back(BlockEvent::EndLearning);
        }
        Blocks {
            next_round: learning_until.unwrap_or(now),
            next_refresh: now + cfg.refresh_interval(),
            cfg,
            range,
            states: vec![State::Free; n as usize],
            free: FreeSet::full(n),
            deadlines: BTreeSet::new(),
            ours: BTreeMap::new(),
            claiming: Vec::new(),
            peers: Peers::default(),
            learning_until,
            outputs: VecDeque::new(),
            events,
            excluded: BTreeSet::new(),
            invalid_entries: 0,
            extra_spare: 0,
            lapsed: HashMap::new(),
            lapse_hold: Duration::ZERO,
            wanted: BTreeSet::new(),
            refreshed: None,
            answer_tat: now,
            answers_suppressed: 0,
            quarantined: HashMap::new(),
            released: HashMap::new(),
            learning_held: false,
            claims_held: false,
            settling_until: now,
            strict: None,
            claims_refused: 0,
        }
    }

    /// Turns the incumbency rule on (node keys: every claim is signed by its sender), with
    /// a cap of blocks per peer (0: none).
    pub fn set_incumbency(&mut self, max_peer_blocks: u32) {
        self.strict = Some(Box::new(Incumbency {
            since: HashMap::new(),
            prev: HashMap::new(),
            heard: BTreeMap::new(),
            max_peer_blocks,
            started: Instant::ZERO,
            contests: BTreeMap::new(),
        }));
    }

    /// Peers known from earlier runs (their pinned keys): when we hear one again it is
    /// back from a silence (ours), not a node never heard, so that a conflict with it is
    /// settled as after a partition rather than refused on both sides.
    /// Its silence is ours: we heard it last, as far as we know, when we started (`now`).
    pub fn seed_known(&mut self, now: Instant, ids: &[NodeId]) {
        if let Some(st) = self.strict.as_mut() {
            st.started = now;
            for &id in ids.iter().take(MAX_HEARD) {
                st.heard.entry(id).or_insert(Heard {
                    last: now,
                    since: now,
                    silent_from: Some(now),
                });
            }
        }
    }

    /// Two claims begun within this of each other raced (neither could know the other):
    /// the greater id wins, as in the C protocol. A claim is dated by when we first heard
    /// it, which a lost datagram or two puts a refresh interval or two late: so half a
    /// block timeout, and at least the tentative timeout.
    fn race_window(&self) -> Duration {
        (self.cfg.block_timeout / 2)
            .max(self.cfg.tentative_timeout)
            .max(Duration::from_secs(2))
    }

    /// A gap in a peer's datagrams longer than this is a silence; a claim it makes within
    /// this after it is heard again came back with it.
    fn silence(&self) -> Duration {
        self.cfg.block_timeout / 2
    }

    /// Notes a datagram from `from` (claims and inquiries alike).
    fn heard(&mut self, now: Instant, from: NodeId) {
        let silence = self.silence();
        let Some(st) = self.strict.as_mut() else {
            return;
        };
        match st.heard.get_mut(&from) {
            Some(h) => {
                if now.saturating_since(h.last) > silence {
                    h.silent_from = Some(h.last);
                    h.since = now;
                }
                h.last = now;
            }
            None => {
                if st.heard.len() >= MAX_HEARD
                    && let Some(old) = st
                        .heard
                        .iter()
                        .min_by_key(|(_, h)| h.last)
                        .map(|(id, _)| *id)
                {
                    st.heard.remove(&old);
                }
                st.heard.insert(
                    from,
                    Heard {
                        last: now,
                        since: now,
                        silent_from: None,
                    },
                );
            }
        }
    }

    /// When `from`'s claim on `b` began, as we record it if it wins: its continuation's
    /// start; now, if we have been hearing the claimant (we would have heard an older
    /// claim); the start of its silence if it came back with it (it cannot have claimed
    /// earlier without our hearing it); else (we have not listened long enough to know)
    /// we cannot date it, and count it as old.
    fn claim_start(&self, now: Instant, b: u32, from: NodeId) -> Instant {
        if let Some(since) = self.continued_since(b, from) {
            return since;
        }
        if self.audible(now, from) {
            return now;
        }
        // A silence that began at our own start is only our not having listened: a claim
        // heard then may be of any age.
        self.strict
            .as_ref()
            .and_then(|st| {
                let sf = st.heard.get(&from)?.silent_from?;
                (sf > st.started).then_some(sf)
            })
            .unwrap_or(Instant::ZERO)
    }

    /// Whether we have been hearing `from`, without a silence, for longer than the race
    /// window: long enough to have heard two refreshes of any claim it makes, so that a
    /// claim of it we hear first now is new, not one whose refreshes we missed.
    fn audible(&self, now: Instant, from: NodeId) -> bool {
        self.strict
            .as_ref()
            .and_then(|st| st.heard.get(&from))
            .is_some_and(|h| now.saturating_since(h.since) > self.race_window())
    }

    /// When `from`'s claim on `b` began, if it is the continuation of a claim we knew:
    /// it held `b` before a silence and the claim ended while it was silent.
    fn continued_since(&self, b: u32, from: NodeId) -> Option<Instant> {
        let st = self.strict.as_ref()?;
        let &(owner, since, ended) = st.prev.get(&b)?;
        let h = st.heard.get(&from)?;
        (owner == from && h.silent_from.is_none_or(|sf| ended >= sf)).then_some(since)
    }

    /// Whether `challenger`'s claim on `b` beats the incumbent's (`inc`, whose claim began
    /// at `inc_since`) under the incumbency rule.
    fn challenger_wins(
        &self,
        now: Instant,
        b: u32,
        inc: NodeId,
        inc_since: Instant,
        challenger: NodeId,
    ) -> bool {
        let Some(st) = self.strict.as_ref() else {
            return challenger > inc;
        };
        let w = self.race_window();
        if now.saturating_since(inc_since) <= w {
            return challenger > inc;
        }
        let Some(h) = st.heard.get(&challenger) else {
            return false;
        };
        if h.since <= inc_since {
            // We have been hearing it, without a silence, since before the incumbent's
            // claim began, and more than the race window has passed: had it claimed the
            // block before, we would have heard it. A new claim.
            return false;
        }
        match (self.continued_since(b, challenger), h.silent_from) {
            // It held the block before its silence: the older claim wins.
            (Some(c), _) if c + w < inc_since => true,
            (Some(c), _) if inc_since + w < c => false,
            (Some(_), _) => challenger > inc,
            // The incumbent held it before the challenger fell silent (we date claims late,
            // never early): the challenger's claim came later, whatever it says.
            (None, Some(sf)) if inc_since < sf => false,
            // Both claimed it while they could not hear each other: a genuine conflict.
            (None, Some(_)) => challenger > inc,
            // Never heard before it claimed a held block: we cannot tell a healed
            // partition from a member with a fresh key; the incumbent keeps it.
            (None, None) => false,
        }
    }

    /// A claim of `by` on our block `b` was refused (node keys): reported once a run of
    /// refusals without a gap of a block timeout has lasted a block timeout.
    fn note_contest(&mut self, now: Instant, b: u32, by: NodeId) {
        let timeout = self.cfg.block_timeout;
        let Some(st) = self.strict.as_mut() else {
            return;
        };
        if st.contests.len() >= MAX_CONTESTS
            && !st.contests.contains_key(&(b, by))
            && let Some(old) = st
                .contests
                .iter()
                .min_by_key(|(_, c)| c.last)
                .map(|(k, _)| *k)
        {
            st.contests.remove(&old);
        }
        let c = st.contests.entry((b, by)).or_insert(Contest {
            first: now,
            last: now,
            reported: false,
        });
        if now.saturating_since(c.last) > timeout {
            *c = Contest {
                first: now,
                last: now,
                reported: false,
            };
        }
        c.last = now;
        if !c.reported && now.saturating_since(c.first) >= timeout {
            c.reported = true;
            warn!(block = b, first = %self.range.block_first(b), claimant = %by,
                  "CONTESTED: a node keeps claiming a block we hold; refused. A member attacking, or a node that joined during a partition and holds it too (docs/protocol.md)");
            self.events
                .push_back(BlockEvent::Contested { block: b, by });
        }
    }

    /// Under the cap of blocks per peer, whether `peer` may take one more.
    fn under_cap(&self, peer: u32) -> bool {
        self.strict.as_ref().is_none_or(|st| {
            st.max_peer_blocks == 0 || self.peers.get(peer).blocks < st.max_peer_blocks
        })
    }

    /// Records that `from` now holds `b` (claimed by it at `since`).
    fn note_owner(&mut self, b: u32, since: Instant) {
        if let Some(st) = self.strict.as_mut() {
            st.since.insert(b, since);
        }
    }

    /// Records that the claim of `owner` on `b` ended now.
    fn note_ended(&mut self, now: Instant, b: u32, owner: NodeId, since: Option<Instant>) {
        if let Some(st) = self.strict.as_mut() {
            let since = st.since.remove(&b).or(since);
            if let Some(since) = since {
                st.prev.insert(b, (owner, since, now));
            }
        }
    }

    /// See [`Blocks::is_settling`]: set by the node at its start, from how long a
    /// takeover can take.
    pub fn settle_until(&mut self, until: Instant) {
        self.settling_until = until;
    }

    /// Whether we started too recently to know that a block nobody owns is really free:
    /// after a restart of the whole mesh, a silent owner's block passes to the holder of its
    /// bindings (restored from the holder's store) only a block timeout and a takeover
    /// later, and until then we heard neither the owner's claim nor its lapse. Its clients
    /// are left unanswered meanwhile, not refused.
    pub fn is_settling(&self, now: Instant) -> bool {
        now < self.settling_until
    }

    /// Leaves `block` to others until `until`: its owner lapsed, and the peers that hold
    /// its bindings take it over first (docs/replication.md, takeover). Claimed neither
    /// by picking nor on demand meanwhile; the quarantine ends early if someone claims it.
    pub fn quarantine(&mut self, block: u32, until: Instant) {
        if block < self.range.num_blocks() {
            self.quarantined.insert(block, until);
        }
    }

    pub fn is_quarantined(&self, block: u32, now: Instant) -> bool {
        self.quarantined.get(&block).is_some_and(|&t| now < t)
    }

    /// Stops (true) or resumes (false) taking blocks we do not own: a node that hears
    /// only datagrams it cannot verify does not know which blocks are free (VRRP's double
    /// master). It goes on inquiring, so that its peers hear it and report the mismatch,
    /// but no claim completes; when it resumes, claims under way start their rounds anew,
    /// since what they heard meanwhile proved nothing.
    pub fn hold_claims(&mut self, held: bool) {
        if !held && self.claims_held {
            for &b in &self.claiming {
                if let State::Claiming { rounds } = &mut self.states[b as usize] {
                    *rounds = 0;
                }
            }
        }
        self.claims_held = held;
    }

    pub fn claims_held(&self) -> bool {
        self.claims_held
    }

    /// Keeps the learning phase going (true) until released (false): a node rebuilding
    /// its state from its peers claims nothing before it knows what was its own.
    pub fn hold_learning(&mut self, held: bool) {
        self.learning_held = held;
    }

    /// Makes a free block (or one `from` claims and is handing back to us) ours at once,
    /// announced now, without an inquiry: it was ours before a lost disk, the peers still
    /// know our id as its owner or heard its holder release it. False if another node has
    /// it, or it is being claimed.
    pub fn take_back(&mut self, now: Instant, block: u32, from: Option<NodeId>) -> bool {
        let Some(&state) = self.states.get(block as usize) else {
            return false;
        };
        match state {
            State::Free | State::Tentative { .. } => {}
            State::Claimed { peer, .. } if Some(self.peers.get(peer).id) == from => {}
            State::Ours => return true,
            State::Claimed { .. } | State::Claiming { .. } => return false,
        }
        self.set_state(block, State::Ours);
        self.ours.insert(
            block,
            OwnedBlock {
                since: now,
                last_announced: now,
                needless_since: None,
                used: 0,
            },
        );
        self.wanted.remove(&block);
        self.quarantined.remove(&block);
        self.events.push_back(BlockEvent::Claimed(block));
        self.announce(now, &[block]);
        true
    }

    /// Gives `block` up at once (TTL 0), as when it is not needed: a peer that owned it
    /// before us is taking it back.
    pub fn release(&mut self, block: u32) -> bool {
        if !self.ours.contains_key(&block) {
            return false;
        }
        self.set_state(block, State::Free);
        self.outputs
            .push_back(Output::Claim(vec![ClaimEntry { block, timeout: 0 }]));
        self.events.push_back(BlockEvent::Dropped(block));
        true
    }

    /// Takes back the blocks we owned before a restart. Those whose claims are still valid
    /// in the peers' view (`owned`, with the time we got each) are ours again at once and
    /// announced now, learning phase or not; if another node took one meanwhile, the usual
    /// tie-break settles it. Those whose claims lapsed (`lapsed`) are claimed again before
    /// any other block once claiming is allowed.
    pub fn restore(&mut self, now: Instant, owned: &[(u32, Instant)], lapsed: &[u32]) {
        for &(b, since) in owned {
            if self.states.get(b as usize) != Some(&State::Free) {
                continue;
            }
            self.set_state(b, State::Ours);
            self.ours.insert(
                b,
                OwnedBlock {
                    since,
                    last_announced: now,
                    needless_since: None,
                    used: 0,
                },
            );
        }
        self.wanted.extend(
            lapsed
                .iter()
                .copied()
                .filter(|&b| b < self.range.num_blocks() && !self.ours.contains_key(&b)),
        );
        self.refresh(now);
        self.next_refresh = now + self.cfg.refresh_interval();
    }

    /// Asks for `block` to be claimed before any other (an allocation names an address in
    /// it). False if that cannot happen now: out of range, excluded, or someone else's or
    /// someone else's tentative claim.
    pub fn want(&mut self, block: u32) -> bool {
        if block >= self.range.num_blocks() || self.excluded.contains(&block) {
            return false;
        }
        match self.states[block as usize] {
            State::Ours => true,
            State::Free => {
                self.wanted.insert(block);
                true
            }
            State::Claiming { .. } => true,
            State::Tentative { .. } | State::Claimed { .. } => false,
        }
    }

    /// Whether `block` may still have bindings we do not know of: its owner's claim lapsed
    /// less than a lease ago or it was given up less than a claim round ago (it may be
    /// passing to a node whose claim we missed), it is quarantined for the holders of a lapsed owner's
    /// bindings, inquired by a peer, or wanted or being claimed by us. Its clients are not
    /// refused meanwhile (their lease may well be valid, the block's next owner may hold it);
    /// they ask again, as RFC 2131 wants of a server that knows nothing of a client.
    pub fn is_pending(&self, block: u32, now: Instant) -> bool {
        self.hold_until(block).is_some_and(|t| now < t)
            || self
                .released
                .get(&block)
                .is_some_and(|&t| now.saturating_since(t) < self.cfg.refresh_interval())
            || self.is_quarantined(block, now)
            || self.wanted.contains(&block)
            || matches!(
                self.states.get(block as usize),
                Some(State::Claiming { .. } | State::Tentative { .. })
            )
    }

    /// Whether a block we owned before a restart is still to be claimed back.
    pub fn is_wanted(&self, block: u32) -> bool {
        self.wanted.contains(&block)
    }

    /// The time of the last announcement of all our blocks, once.
    pub fn take_refreshed(&mut self) -> Option<Instant> {
        self.refreshed.take()
    }

    pub fn config(&self) -> &ClaimConfig {
        &self.cfg
    }

    pub fn range(&self) -> &ManagedRange {
        &self.range
    }

    pub fn is_learning(&self) -> bool {
        self.learning_until.is_some()
    }

    /// Blocks we own, in index order.
    pub fn owned(&self) -> impl Iterator<Item = u32> + '_ {
        self.ours.keys().copied()
    }

    pub fn owns(&self, block: u32) -> bool {
        self.ours.contains_key(&block)
    }

    pub fn owned_count(&self) -> usize {
        self.ours.len()
    }

    pub fn free_count(&self) -> usize {
        self.free.len()
    }

    /// Distinct peers heard within two block timeouts.
    pub fn peer_count(&self, now: Instant) -> usize {
        self.peers.live(now, self.cfg.block_timeout * 2)
    }

    /// Peers heard within two block timeouts, so a node can count them over its pools.
    pub fn live_peers(&self, now: Instant) -> impl Iterator<Item = (NodeId, Ipv6Addr)> + '_ {
        let horizon = self.cfg.block_timeout * 2;
        self.peers
            .slots
            .iter()
            .flatten()
            .filter(move |p| now.saturating_since(p.last_seen) <= horizon)
            .map(|p| (p.id, p.addr))
    }

    /// The owner of a block another node claims, with the address to reach it.
    pub fn owner_of(&self, block: u32) -> Option<(NodeId, Ipv6Addr)> {
        match self.states.get(block as usize)? {
            State::Claimed { peer, .. } => {
                let p = self.peers.get(*peer);
                Some((p.id, p.addr))
            }
            _ => None,
        }
    }

    /// Tells the table how many addresses of an owned block are in use; unused blocks are
    /// the ones given up when there is a surplus.
    pub fn set_usage(&mut self, block: u32, used: u32) {
        if let Some(o) = self.ours.get_mut(&block) {
            o.used = used.min(self.range.block_size());
            if o.used > 0 {
                o.needless_since = None;
            }
        }
    }

    /// Free addresses in owned blocks.
    pub fn spare(&self) -> u32 {
        let size = self.range.block_size();
        self.ours.values().map(|o| size - o.used).sum()
    }

    /// How long leases from a lapsed owner may outlive its claim: blocks are picked among
    /// those that lapsed longer ago first, and [`Blocks::hold_until`] tells the lease layer
    /// how long to keep the addresses of one that did not.
    pub fn set_lapse_hold(&mut self, hold: Duration) {
        self.lapse_hold = hold;
    }

    /// Until when the addresses of a block we just took may still be leased by clients of
    /// a previous owner that vanished (`None`: no such risk).
    pub fn hold_until(&self, block: u32) -> Option<Instant> {
        self.lapsed.get(&block).map(|&at| at + self.lapse_hold)
    }

    /// Asks for `n` more free addresses than `-s` while demand is high; see
    /// `docs/protocol.md` (claiming ahead).
    pub fn set_extra_spare(&mut self, n: u32) {
        self.extra_spare = n;
    }

    /// Replaces the spare target (`-s`) for a service whose need changes at run time (the
    /// local service: standby addresses still to configure). Unlike claiming ahead, this is
    /// the need itself and is not capped at half of what is free.
    pub fn set_spare(&mut self, n: u32) {
        self.cfg.spare_leases = n;
    }

    /// Blocks still to claim (positive) or that could be given up (negative), with the C
    /// daemon's arithmetic so both settle on the same number of blocks.
    pub fn blocks_needed(&self) -> i64 {
        let spare = i64::from(self.spare());
        let size = i64::from(self.range.block_size());
        let blocks_for = |leases_needed: i64| {
            let mut n = leases_needed / size;
            if leases_needed % size > 0 {
                n += 1;
            }
            n
        };
        let base = blocks_for(i64::from(self.cfg.spare_leases) - spare);
        let with_extra =
            blocks_for(i64::from(self.cfg.spare_leases) + i64::from(self.extra_spare) - spare);
        if with_extra <= 0 || with_extra == base {
            return with_extra;
        }
        // Claiming ahead never takes more than half of what is left, so a burst at one
        // node cannot starve the others of a small range.
        let ahead = (with_extra - base.max(0)).min(self.free.len() as i64 / 2);
        base.max(0) + ahead
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<BlockEvent> {
        self.events.pop_front()
    }

    /// The next instant [`Blocks::handle_timeout`] has work to do. A claim round is only
    /// waited for when it would do something: an idle router then wakes once per refresh
    /// (`-B`/4), as the C daemon wakes once per `t`/2, not once a second. Whatever makes a
    /// round due (a lease taken, a block lost, demand sampled) happens in a call after
    /// which the caller asks again, and a round that is overdue runs at once.
    pub fn poll_timeout(&self) -> Instant {
        let mut t = match self.learning_until {
            Some(until) => until.min(self.next_refresh),
            None if self.round_due() => self.next_round.min(self.next_refresh),
            None => self.next_refresh,
        };
        if let Some(&(d, _)) = self.deadlines.first() {
            t = t.min(d);
        }
        t
    }

    /// Whether a claim round would change anything: blocks being claimed or to reclaim,
    /// blocks to claim or to give up, or surplus marks to clear.
    fn round_due(&self) -> bool {
        !self.claiming.is_empty()
            || !self.wanted.is_empty()
            || self.blocks_needed() != 0
            || self.ours.values().any(|o| o.needless_since.is_some())
    }

    /// Runs every timer that is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant, rng: &mut impl Rng) {
        self.expire(now);
        // Before the learning check: blocks restored after a restart are ours during it.
        if now >= self.next_refresh {
            self.refresh(now);
            self.peers.collect(now, self.cfg.block_timeout * 2);
            let hold = self.lapse_hold;
            // A pure filter: the order of the visit reaches nothing.
            #[allow(clippy::disallowed_methods)]
            self.lapsed.retain(|_, at| now.saturating_since(*at) < hold);
            #[allow(clippy::disallowed_methods)]
            self.quarantined.retain(|_, until| now < *until);
            let round = self.cfg.refresh_interval();
            #[allow(clippy::disallowed_methods)]
            self.released
                .retain(|_, at| now.saturating_since(*at) < round);
            self.next_refresh = now + self.cfg.refresh_interval();
        }
        if let Some(until) = self.learning_until {
            if now < until || self.learning_held {
                return;
            }
            self.learning_until = None;
            info!("learning phase over");
            self.events.push_back(BlockEvent::EndLearning);
            self.next_round = now;
        }
        if now >= self.next_round {
            self.round(now, rng);
            let interval = self.cfg.round_interval();
            self.next_round = (self.next_round + interval).max(now);
            if self.next_round == now {
                self.next_round = now + interval;
            }
        }
    }

    /// An Inquire from `from` listing `blocks`.
    pub fn on_inquire(&mut self, now: Instant, me: NodeId, from: NodeId, blocks: &[u32]) {
        self.heard(now, from);
        let mut reassert = Vec::new();
        for &b in blocks {
            let Some(&state) = self.states.get(b as usize) else {
                self.invalid_entries += 1;
                continue;
            };
            match state {
                State::Ours => reassert.push(b),
                State::Claiming { .. } => {
                    if from > me {
                        debug!(block = b, winner = %from, "lost inquiry race");
                        self.claiming.retain(|&c| c != b);
                        self.set_state(
                            b,
                            State::Tentative {
                                until: now + self.cfg.tentative_timeout,
                            },
                        );
                    }
                }
                // A live owner answers the Inquire itself; its claim stays recorded.
                State::Claimed { .. } => {}
                State::Free => self.set_state(
                    b,
                    State::Tentative {
                        until: now + self.cfg.tentative_timeout,
                    },
                ),
                State::Tentative { until } => {
                    let new = now + self.cfg.tentative_timeout;
                    if new > until {
                        self.set_state(b, State::Tentative { until: new });
                    }
                }
            }
        }
        self.answer(now, &reassert);
    }

    /// An UpdateClaim from `from` at `addr`.
    pub fn on_claim(
        &mut self,
        now: Instant,
        me: NodeId,
        from: NodeId,
        addr: Ipv6Addr,
        entries: &[ClaimEntry],
    ) {
        self.heard(now, from);
        let strict = self.strict.is_some();
        let peer = self.peers.intern(from, addr, now);
        let mut reassert = Vec::new();
        for e in entries {
            let b = e.block;
            let Some(&state) = self.states.get(b as usize) else {
                self.invalid_entries += 1;
                continue;
            };
            let until = now + Duration::from_secs(u64::from(e.timeout));
            let claimed = State::Claimed { peer, until };
            match state {
                State::Ours => {
                    if e.timeout == 0 {
                        continue;
                    }
                    let since = self.ours[&b].since;
                    if self.challenger_wins(now, b, me, since, from) && self.under_cap(peer) {
                        warn!(block = b, first = %self.range.block_first(b), winner = %from,
                              "block taken over by a greater node id");
                        let st = self.claim_start(now, b, from);
                        self.set_state(b, claimed);
                        self.note_owner(b, st);
                        self.events
                            .push_back(BlockEvent::Lost { block: b, to: from });
                    } else {
                        if strict {
                            self.note_contest(now, b, from);
                        }
                        if strict && from > me {
                            self.claims_refused += 1;
                            // Counted, not logged at warning level: a member repeating
                            // such claims must not flood a router's log.
                            debug!(block = b, other = %from,
                                   "claim on a block we hold refused: not a conflict (docs/protocol.md, Incumbency)");
                        } else {
                            info!(block = b, other = %from, "re-asserting block against a smaller node id");
                        }
                        reassert.push(b);
                    }
                }
                State::Claiming { .. } => {
                    // An existing owner beats any inquiry, whatever the ids.
                    if e.timeout > 0 {
                        if !self.under_cap(peer) {
                            self.claims_refused += 1;
                            continue;
                        }
                        debug!(block = b, owner = %from, "block we were inquiring is claimed");
                        self.claiming.retain(|&c| c != b);
                        let st = self.claim_start(now, b, from);
                        self.set_state(b, claimed);
                        self.note_owner(b, st);
                    }
                }
                State::Claimed { peer: current, .. } => {
                    let cur = self.peers.get(current);
                    let cur_id = cur.id;
                    // The recorded owner refreshing (or releasing with TTL 0), or the same
                    // host after a node id change. With node keys, ids are what counts:
                    // an address is easily borrowed, an id no more.
                    let same_owner = if strict {
                        cur_id == from
                    } else {
                        current == peer || cur.addr == addr
                    };
                    if same_owner {
                        if e.timeout == 0 {
                            self.set_state(b, State::Free);
                            self.released.insert(b, now);
                            if let Some(st) = self.strict.as_mut() {
                                st.since.remove(&b);
                                st.prev.remove(&b);
                            }
                        } else {
                            self.set_state(b, claimed);
                        }
                    } else if e.timeout > 0 {
                        let inc_since = self
                            .strict
                            .as_ref()
                            .and_then(|st| st.since.get(&b).copied())
                            .unwrap_or(now);
                        let wins = if strict {
                            self.challenger_wins(now, b, cur_id, inc_since, from)
                                && self.under_cap(peer)
                        } else {
                            from >= cur_id
                        };
                        if wins {
                            // The greater id wins; the smaller one yields when it hears this.
                            let st = self.claim_start(now, b, from);
                            self.note_ended(now, b, cur_id, None);
                            self.set_state(b, claimed);
                            self.note_owner(b, st);
                        } else if strict {
                            self.claims_refused += 1;
                        }
                    }
                }
                State::Free | State::Tentative { .. } => {
                    if e.timeout > 0 {
                        if !self.under_cap(peer) {
                            self.claims_refused += 1;
                            continue;
                        }
                        let st = self.claim_start(now, b, from);
                        self.set_state(b, claimed);
                        self.note_owner(b, st);
                    }
                }
            }
        }
        self.answer(now, &reassert);
    }

    /// Rows for `ddhcpctl blocks`: every block that is not free. This walks the table and is
    /// meant for the control socket, not for packet handling.
    pub fn view(&self, now: Instant, me: NodeId) -> Vec<BlockView> {
        let secs = |d: Duration| d.as_secs() + u64::from(d.subsec_millis() >= 500);
        let mut rows = Vec::new();
        for (i, state) in self.states.iter().enumerate() {
            let index = i as u32;
            let (state, owner, owner_addr, expires) = match *state {
                State::Free => continue,
                State::Tentative { until } => {
                    (BlockStateName::Tentative, None, None, now.until(until))
                }
                State::Claiming { .. } => (
                    BlockStateName::Claiming,
                    None,
                    None,
                    now.until(self.next_round),
                ),
                State::Ours => {
                    let o = &self.ours[&index];
                    let until = o.last_announced + self.cfg.block_timeout;
                    (BlockStateName::Ours, Some(me), None, now.until(until))
                }
                State::Claimed { peer, until } => {
                    let p = self.peers.get(peer);
                    (
                        BlockStateName::Claimed,
                        Some(p.id),
                        Some(p.addr),
                        now.until(until),
                    )
                }
            };
            rows.push(BlockView {
                index,
                first: self.range.block_first(index),
                state,
                owner,
                owner_addr,
                expires_in: secs(expires),
            });
        }
        rows
    }

    /// Announces every owned block at once, e.g. after our node id changed.
    pub fn announce_all(&mut self, now: Instant) {
        self.refresh(now);
    }

    fn set_state(&mut self, b: u32, new: State) {
        let old = std::mem::replace(&mut self.states[b as usize], new);
        match old {
            State::Free => self.free.remove(b),
            State::Tentative { until } => {
                self.deadlines.remove(&(until, b));
            }
            State::Claimed { peer, until } => {
                self.deadlines.remove(&(until, b));
                self.peers.adjust(peer, -1);
            }
            State::Ours => {
                if !matches!(new, State::Ours) {
                    self.ours.remove(&b);
                }
            }
            State::Claiming { .. } => {}
        }
        match new {
            State::Free => self.free.insert(b),
            State::Tentative { until } => {
                self.deadlines.insert((until, b));
            }
            State::Claimed { peer, until } => {
                self.deadlines.insert((until, b));
                self.peers.adjust(peer, 1);
                self.quarantined.remove(&b);
            }
            State::Ours => {
                self.quarantined.remove(&b);
            }
            State::Claiming { .. } => {}
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(until, b)) = self.deadlines.first() {
            if until > now {
                break;
            }
            if let State::Claimed { peer, .. } = self.states[b as usize] {
                let owner = self.peers.get(peer).id;
                self.note_ended(now, b, owner, None);
                debug!(block = b, %owner, "claim expired, block free");
                if !self.lapse_hold.is_zero() {
                    self.lapsed.insert(b, now);
                }
                self.events
                    .push_back(BlockEvent::Lapsed { block: b, owner });
            }
            self.set_state(b, State::Free);
        }
    }

    /// One claim round: own blocks whose inquiries are done, pick new ones, inquire, and
    /// give up surplus blocks.
    fn round(&mut self, now: Instant, rng: &mut impl Rng) {
        let mut owned_now = Vec::new();
        let mut still = Vec::with_capacity(self.claiming.len());
        for b in std::mem::take(&mut self.claiming) {
            match self.states[b as usize] {
                State::Claiming { rounds } if rounds >= INQUIRE_ROUNDS && !self.claims_held => {
                    self.set_state(b, State::Ours);
                    self.ours.insert(
                        b,
                        OwnedBlock {
                            since: now,
                            last_announced: now,
                            needless_since: None,
                            used: 0,
                        },
                    );
                    self.wanted.remove(&b);
                    info!(block = b, first = %self.range.block_first(b), "block claimed");
                    self.events.push_back(BlockEvent::Claimed(b));
                    owned_now.push(b);
                }
                State::Claiming { .. } => still.push(b),
                _ => {}
            }
        }
        self.claiming = still;
        self.announce(now, &owned_now);
        self.claim_wanted();
        let needed = self.blocks_needed();
        if needed > 0 {
            let missing = needed - self.claiming.len() as i64;
            for _ in 0..missing.min(MAX_CLAIMING as i64) {
                if self.claiming.len() >= MAX_CLAIMING {
                    break;
                }
                let Some(b) = self.pick_cold(now, rng) else {
                    warn!("no free block left in the range");
                    break;
                };
                self.set_state(b, State::Claiming { rounds: 0 });
                self.claiming.push(b);
            }
        } else if !self.claiming.is_empty() {
            // Demand went away mid-claim: leave the blocks to others (but not ours from
            // before a restart).
            for b in std::mem::take(&mut self.claiming) {
                if self.wanted.contains(&b) {
                    self.claiming.push(b);
                } else {
                    self.set_state(b, State::Free);
                }
            }
        }
        if !self.claiming.is_empty() {
            for &b in &self.claiming {
                if let State::Claiming { rounds } = &mut self.states[b as usize] {
                    *rounds = rounds.saturating_add(1);
                }
            }
            debug!(blocks = self.claiming.len(), "inquire");
            for chunk in self.claiming.chunks(MAX_INQUIRE_ENTRIES) {
                self.outputs.push_back(Output::Inquire(chunk.to_vec()));
            }
        }

        if needed < 0 {
            self.drop_surplus(now);
        } else {
            for o in self.ours.values_mut() {
                o.needless_since = None;
            }
        }
    }

    /// Starts claiming the blocks we owned before a restart that are free; forgets those
    /// another node owns now.
    fn claim_wanted(&mut self) {
        let mut start = Vec::new();
        let mut taken = Vec::new();
        for &b in &self.wanted {
            match self.states[b as usize] {
                State::Free => start.push(b),
                State::Claimed { .. } | State::Ours => taken.push(b),
                State::Tentative { .. } | State::Claiming { .. } => {}
            }
        }
        for b in taken {
            self.wanted.remove(&b);
        }
        for b in start {
            if self.claiming.len() >= MAX_CLAIMING {
                break;
            }
            self.set_state(b, State::Claiming { rounds: 0 });
            self.claiming.push(b);
        }
    }

    /// Marks the youngest unused block needless, and gives it up once it has been needless
    /// for the `-n` time. One block at a time, so demand that comes back finds blocks ready.
    fn drop_surplus(&mut self, now: Instant) {
        let youngest = self
            .ours
            .iter()
            .filter(|(_, o)| o.used == 0)
            .max_by_key(|(_, o)| o.since)
            .map(|(&b, o)| (b, o.needless_since));
        let Some((b, marked)) = youngest else { return };
        match marked {
            None => {
                if let Some(o) = self.ours.get_mut(&b) {
                    o.needless_since = Some(now);
                }
            }
            Some(since) if now.saturating_since(since) >= self.cfg.needless_timeout => {
                info!(block = b, first = %self.range.block_first(b), "giving up unused block");
                self.set_state(b, State::Free);
                self.outputs.push_back(Output::Claim(vec![ClaimEntry {
                    block: b,
                    timeout: 0,
                }]));
                self.events.push_back(BlockEvent::Dropped(b));
            }
            Some(_) => {}
        }
    }

    /// A random free block, preferring one whose previous owner did not vanish within the
    /// lease time (a few tries; a lapsed one only if nothing else turns up).
    fn pick_cold(&self, now: Instant, rng: &mut impl Rng) -> Option<u32> {
        let mut pick = None;
        for _ in 0..8 {
            let b = self.free.pick(rng)?;
            if self.excluded.contains(&b) || self.is_quarantined(b, now) {
                continue;
            }
            let warm = self
                .lapsed
                .get(&b)
                .is_some_and(|&at| now.saturating_since(at) < self.lapse_hold);
            if !warm {
                return Some(b);
            }
            pick = Some(b);
        }
        if pick.is_none() && !(self.excluded.is_empty() && self.quarantined.is_empty()) {
            // Mostly excluded or quarantined blocks left: look at every free one.
            pick = self
                .free
                .members
                .iter()
                .copied()
                .find(|&b| !self.excluded.contains(&b) && !self.is_quarantined(b, now));
        }
        pick
    }

    /// Blocks this node never claims (wholly unmanaged ranges); it still learns and
    /// answers for them as for any block.
    pub fn set_excluded(&mut self, blocks: BTreeSet<u32>) {
        self.excluded = blocks;
    }

    fn refresh(&mut self, now: Instant) {
        let all: Vec<u32> = self.ours.keys().copied().collect();
        self.announce(now, &all);
        self.refreshed = Some(now);
    }

    /// Re-announces `blocks` in answer to somebody else's message, within the budget.
    fn answer(&mut self, now: Instant, blocks: &[u32]) {
        let interval = Duration::from_secs(1) / ANSWER_RATE;
        let limit = interval * ANSWER_BURST;
        for chunk in blocks.chunks(MAX_CLAIM_ENTRIES) {
            let tat = self.answer_tat.max(now);
            if tat.saturating_since(now) + interval > limit {
                self.answers_suppressed += 1;
                continue;
            }
            self.answer_tat = tat + interval;
            self.announce(now, chunk);
        }
    }

    fn announce(&mut self, now: Instant, blocks: &[u32]) {
        let ttl = self.cfg.ttl();
        for chunk in blocks.chunks(MAX_CLAIM_ENTRIES) {
            let entries = chunk
                .iter()
                .map(|&block| ClaimEntry {
                    block,
                    timeout: ttl,
                })
                .collect();
            for b in chunk {
                if let Some(o) = self.ours.get_mut(b) {
                    o.last_announced = now;
                }
            }
            self.outputs.push_back(Output::Claim(entries));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const ME: NodeId = NodeId([5; 8]);
    const BIG: NodeId = NodeId([9; 8]);
    const SMALL: NodeId = NodeId([1; 8]);

    fn cfg(learning: bool) -> ClaimConfig {
        ClaimConfig {
            tentative_timeout: Duration::from_secs(4),
            block_timeout: Duration::from_secs(60),
            spare_leases: 2,
            needless_timeout: Duration::from_secs(10),
            learning,
        }
    }

    fn table(learning: bool) -> Blocks {
        let range = ManagedRange::new(Ipv4Addr::new(10, 0, 0, 0), 24, 2).unwrap();
        Blocks::new(cfg(learning), range, Instant::ZERO)
    }

    fn secs(s: u64) -> Instant {
        Instant::from_millis(s * 1000)
    }

    fn addr(n: u16) -> Ipv6Addr {
        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, n)
    }

    fn drain(b: &mut Blocks) -> Vec<Output> {
        std::iter::from_fn(|| b.poll_output()).collect()
    }

    /// Lazy rounds (`round_due`): with nothing else to claim, a block we owned before a
    /// restart and want back is inquired at the next round, not only when the next refresh
    /// happens to wake the table (a quarter of the block timeout later).
    #[test]
    fn a_wanted_block_is_inquired_at_the_next_round_with_nothing_else_due() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut b = table(false);
        let t0 = secs(100);
        b.restore(t0, &[(0, secs(40))], &[5]);
        drain(&mut b);
        assert_eq!(b.blocks_needed(), 0, "the setup needs no new block");
        assert!(b.is_wanted(5));
        let round = b.cfg.round_interval();
        assert!(round < b.cfg.refresh_interval());
        let out = run_span(&mut b, t0, t0 + round, &mut rng);
        assert!(
            out.iter()
                .any(|(_, o)| matches!(o, Output::Inquire(l) if l.contains(&5))),
            "no Inquire for block 5 within a round: {out:?}"
        );
    }

    /// Runs the timers until `end`, collecting what was sent.
    fn run_until(b: &mut Blocks, end: Instant, rng: &mut StdRng) -> Vec<(Instant, Output)> {
        run_span(b, Instant::ZERO, end, rng)
    }

    /// Runs the timers from `from` (the time of a change made behind the table's back, such
    /// as a new config) to `end`: a round that fell due while nothing was to do runs at
    /// `from`, as the daemon runs an overdue timer at once.
    fn run_span(
        b: &mut Blocks,
        from: Instant,
        end: Instant,
        rng: &mut StdRng,
    ) -> Vec<(Instant, Output)> {
        let mut out = Vec::new();
        loop {
            let t = b.poll_timeout().max(from);
            if t > end {
                return out;
            }
            b.handle_timeout(t, rng);
            out.extend(drain(b).into_iter().map(|o| (t, o)));
        }
    }

    #[test]
    fn lone_node_owns_after_three_rounds() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut b = table(false);
        let out = run_until(&mut b, secs(10), &mut rng);
        let inquiries: Vec<_> = out
            .iter()
            .filter(|(_, o)| matches!(o, Output::Inquire(_)))
            .collect();
        assert_eq!(inquiries.len(), 3);
        let (t_claim, Output::Claim(entries)) = out
            .iter()
            .find(|(_, o)| matches!(o, Output::Claim(_)))
            .unwrap()
            .clone()
        else {
            unreachable!()
        };
        // Owned one round after the third inquiry: 1.5 tentative timeouts after the first.
        assert_eq!(t_claim, secs(6));
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].timeout, 60);
        assert_eq!(b.owned_count(), 1);
        assert_eq!(b.spare(), 4);
        assert_eq!(b.blocks_needed(), 0);
    }

    #[test]
    fn learning_phase_delays_claiming() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut b = table(true);
        let out = run_until(&mut b, secs(59), &mut rng);
        assert!(out.is_empty());
        assert!(b.is_learning());
        let out = run_until(&mut b, secs(60), &mut rng);
        assert!(matches!(out[0].1, Output::Inquire(_)));
        assert!(!b.is_learning());
        assert_eq!(b.poll_event(), Some(BlockEvent::EndLearning));
    }

    #[test]
    fn greater_inquirer_wins_smaller_does_not() {
        let mut rng = StdRng::seed_from_u64(2);
        let mut b = table(false);
        b.handle_timeout(secs(0), &mut rng);
        let Output::Inquire(blocks) = drain(&mut b).remove(0) else {
            panic!()
        };
        let target = blocks[0];
        b.on_inquire(secs(1), ME, SMALL, &[target]);
        assert_eq!(b.states[target as usize], State::Claiming { rounds: 1 });
        b.on_inquire(secs(1), ME, BIG, &[target]);
        assert!(matches!(b.states[target as usize], State::Tentative { .. }));
        // We move on to another block and never own the lost one.
        run_until(&mut b, secs(20), &mut rng);
        assert_eq!(b.owned_count(), 1);
        assert!(!b.owns(target));
    }

    #[test]
    fn existing_claim_beats_our_inquiry_whatever_the_ids() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut b = table(false);
        b.handle_timeout(secs(0), &mut rng);
        let Output::Inquire(blocks) = drain(&mut b).remove(0) else {
            panic!()
        };
        let target = blocks[0];
        let entry = ClaimEntry {
            block: target,
            timeout: 60,
        };
        b.on_claim(secs(1), ME, SMALL, addr(1), &[entry]);
        assert_eq!(b.owner_of(target), Some((SMALL, addr(1))));
        run_until(&mut b, secs(20), &mut rng);
        assert!(!b.owns(target));
        assert_eq!(b.owner_of(target), Some((SMALL, addr(1))));
    }

    fn owning_table(rng: &mut StdRng) -> (Blocks, u32) {
        let mut b = table(false);
        run_until(&mut b, secs(6), rng);
        let block = b.owned().next().unwrap();
        (b, block)
    }

    #[test]
    fn owner_answers_every_inquiry_within_a_budget() {
        let mut rng = StdRng::seed_from_u64(4);
        let (mut b, block) = owning_table(&mut rng);
        let claim = vec![Output::Claim(vec![ClaimEntry { block, timeout: 60 }])];
        let ms = |m: u64| secs(6) + Duration::from_millis(m);
        // C claimers ping-pong their three Inquires within milliseconds: each one is
        // answered at once, even one that crossed our last announcement.
        for m in [0, 0, 1, 2, 45] {
            b.on_inquire(ms(m), ME, BIG, &[block]);
            assert_eq!(drain(&mut b), claim, "inquiry at +{m} ms");
        }
        // A flood is bounded: the burst, then the sustained rate.
        let mut sent = 0;
        for i in 0..1000 {
            b.on_inquire(ms(100 + 10 * i), ME, BIG, &[block]);
            sent += drain(&mut b).len() as u32;
        }
        let budget = ANSWER_BURST + ANSWER_RATE * 10 + 1;
        assert!(
            sent <= budget,
            "{sent} answers to a 10 s flood, budget {budget}"
        );
        assert!(sent >= ANSWER_BURST, "{sent} answers");
        assert!(b.answers_suppressed > 0);
        assert!(b.owns(block));
    }

    #[test]
    fn claim_conflict_greater_id_wins() {
        let mut rng = StdRng::seed_from_u64(5);
        let (mut b, block) = owning_table(&mut rng);
        let e = [ClaimEntry { block, timeout: 60 }];
        b.on_claim(secs(7), ME, SMALL, addr(1), &e);
        assert!(b.owns(block));
        assert_eq!(drain(&mut b), vec![Output::Claim(e.to_vec())]);
        b.on_claim(secs(8), ME, BIG, addr(2), &e);
        assert!(!b.owns(block));
        assert_eq!(b.owner_of(block), Some((BIG, addr(2))));
        assert!(
            std::iter::from_fn(|| b.poll_event()).any(|e| e == BlockEvent::Lost { block, to: BIG })
        );
    }

    /// Keeps `who` heard every 10 s from `from` to `to` (inquiries for nothing).
    fn keep_heard(b: &mut Blocks, who: NodeId, from: u64, to: u64) {
        for s in (from..=to).step_by(10) {
            b.on_inquire(secs(s), ME, who, &[]);
        }
    }

    #[test]
    fn incumbency_refuses_a_new_claim_on_a_held_block() {
        let e = [ClaimEntry {
            block: 7,
            timeout: 60,
        }];
        // C rule: the greater id takes a block SMALL holds and refreshes.
        let mut b = table(false);
        keep_heard(&mut b, BIG, 0, 100);
        b.on_claim(secs(0), ME, SMALL, addr(1), &e);
        b.on_claim(secs(30), ME, SMALL, addr(1), &e);
        b.on_claim(secs(40), ME, BIG, addr(2), &e);
        assert_eq!(b.owner_of(7), Some((BIG, addr(2))));
        // With node keys: BIG, heard all along, claims it anew: refused.
        let mut b = table(false);
        b.set_incumbency(0);
        keep_heard(&mut b, BIG, 0, 100);
        b.on_claim(secs(0), ME, SMALL, addr(1), &e);
        b.on_claim(secs(30), ME, SMALL, addr(1), &e);
        b.on_claim(secs(40), ME, BIG, addr(2), &e);
        assert_eq!(b.owner_of(7), Some((SMALL, addr(1))));
        assert_eq!(b.claims_refused, 1);
        // Nor does borrowing the owner's address under its own id help.
        b.on_claim(secs(41), ME, BIG, addr(1), &e);
        assert_eq!(b.owner_of(7).map(|o| o.0), Some(SMALL));
        // Two claims made within the race window are a race: the greater id wins (SMALL
        // heard for a block timeout, so its claim is dated).
        let f = [ClaimEntry {
            block: 8,
            timeout: 60,
        }];
        keep_heard(&mut b, SMALL, 50, 100);
        b.on_claim(secs(100), ME, SMALL, addr(1), &f);
        b.on_claim(secs(101), ME, BIG, addr(2), &f);
        assert_eq!(b.owner_of(8).map(|o| o.0), Some(BIG));
        // A node never heard before claiming a held block is refused too.
        let mut b = table(false);
        b.set_incumbency(0);
        b.on_claim(secs(0), ME, SMALL, addr(1), &e);
        b.on_claim(secs(40), ME, BIG, addr(2), &e);
        assert_eq!(b.owner_of(7).map(|o| o.0), Some(SMALL));
    }

    #[test]
    fn incumbency_settles_a_healed_partition_by_the_older_claim_then_the_id() {
        let e = [ClaimEntry {
            block: 7,
            timeout: 60,
        }];
        // SMALL held the block before BIG fell silent: SMALL keeps it when BIG comes back
        // claiming it (BIG claimed it on the far side after it lapsed there).
        let mut b = table(false);
        b.set_incumbency(0);
        keep_heard(&mut b, BIG, 0, 20);
        b.on_claim(secs(0), ME, SMALL, addr(1), &e);
        b.on_claim(secs(100), ME, SMALL, addr(1), &e);
        b.on_claim(secs(160), ME, BIG, addr(2), &e);
        assert_eq!(b.owner_of(7).map(|o| o.0), Some(SMALL));
        // Both claimed it while they could not hear each other: the greater id wins.
        let mut b = table(false);
        b.set_incumbency(0);
        keep_heard(&mut b, BIG, 0, 20);
        keep_heard(&mut b, SMALL, 0, 150);
        b.on_claim(secs(100), ME, SMALL, addr(1), &e);
        b.on_claim(secs(150), ME, SMALL, addr(1), &e);
        b.on_claim(secs(160), ME, BIG, addr(2), &e);
        assert_eq!(b.owner_of(7).map(|o| o.0), Some(BIG));
        // The far side's view: BIG held it from before; SMALL claimed it after it lapsed
        // there; SMALL comes back: it held it first, and keeps it, as on the near side.
        let mut b = table(false);
        b.set_incumbency(0);
        b.on_claim(secs(0), ME, SMALL, addr(1), &e);
        keep_heard(&mut b, SMALL, 10, 20);
        keep_heard(&mut b, BIG, 0, 90);
        b.poll_timeout();
        let mut rng = StdRng::seed_from_u64(1);
        b.handle_timeout(secs(90), &mut rng); // SMALL's claim lapses here
        assert_eq!(b.owner_of(7), None);
        b.on_claim(secs(95), ME, BIG, addr(2), &e);
        b.on_claim(secs(160), ME, SMALL, addr(1), &e);
        assert_eq!(b.owner_of(7).map(|o| o.0), Some(SMALL));
    }

    #[test]
    fn incumbency_keeps_our_block_and_caps_blocks_per_peer() {
        let mut rng = StdRng::seed_from_u64(5);
        let (mut b, block) = owning_table(&mut rng);
        b.set_incumbency(1);
        keep_heard(&mut b, BIG, 6, 60);
        let e = [ClaimEntry { block, timeout: 60 }];
        drain(&mut b);
        b.on_claim(secs(40), ME, BIG, addr(2), &e);
        assert!(b.owns(block));
        // Refused, and our claim goes out again at once.
        assert_eq!(drain(&mut b), vec![Output::Claim(e.to_vec())]);
        // One block per peer: the second free block BIG claims is not recorded as its.
        let free: Vec<u32> = (0..64).filter(|&x| x != block).take(2).collect();
        for &f in &free {
            b.on_claim(
                secs(41),
                ME,
                BIG,
                addr(2),
                &[ClaimEntry {
                    block: f,
                    timeout: 60,
                }],
            );
        }
        assert_eq!(b.owner_of(free[0]).map(|o| o.0), Some(BIG));
        assert_eq!(b.owner_of(free[1]), None);
        assert_eq!(b.claims_refused, 2);
    }

    #[test]
    fn a_claim_on_our_block_refused_for_a_block_timeout_is_reported_once() {
        let mut rng = StdRng::seed_from_u64(5);
        let (mut b, block) = owning_table(&mut rng);
        b.set_incumbency(0);
        let e = [ClaimEntry { block, timeout: 60 }];
        let contested = |b: &mut Blocks| {
            std::iter::from_fn(|| b.poll_event())
                .filter(|e| matches!(e, BlockEvent::Contested { .. }))
                .count()
        };
        // A never-heard node claims our block every 15 s for two block timeouts (-B 60).
        for t in (40..=160).step_by(15) {
            b.on_claim(secs(t), ME, BIG, addr(2), &e);
            assert!(b.owns(block));
            let n = contested(&mut b);
            assert_eq!(n, usize::from(t == 100), "at {t} s");
        }
        // A pause longer than a block timeout starts a new run, reported again only if it
        // lasts.
        b.on_claim(secs(300), ME, BIG, addr(2), &e);
        b.on_claim(secs(330), ME, BIG, addr(2), &e);
        assert_eq!(contested(&mut b), 0);
        b.on_claim(secs(360), ME, BIG, addr(2), &e);
        assert_eq!(contested(&mut b), 1);
        // Without node keys the C rule applies and nothing is contested.
        let (mut b, block) = owning_table(&mut rng);
        b.on_claim(
            secs(40),
            ME,
            SMALL,
            addr(1),
            &[ClaimEntry { block, timeout: 60 }],
        );
        b.on_claim(
            secs(200),
            ME,
            SMALL,
            addr(1),
            &[ClaimEntry { block, timeout: 60 }],
        );
        assert_eq!(contested(&mut b), 0);
    }

    #[test]
    fn inquiry_does_not_overwrite_a_known_owner() {
        let mut b = table(false);
        let e = [ClaimEntry {
            block: 7,
            timeout: 60,
        }];
        b.on_claim(secs(0), ME, SMALL, addr(1), &e);
        b.on_inquire(secs(1), ME, BIG, &[7]);
        assert_eq!(b.owner_of(7), Some((SMALL, addr(1))));
    }

    #[test]
    fn observers_keep_the_greater_claimant() {
        let mut b = table(false);
        let e = [ClaimEntry {
            block: 7,
            timeout: 60,
        }];
        b.on_claim(secs(0), ME, BIG, addr(2), &e);
        b.on_claim(secs(1), ME, SMALL, addr(1), &e);
        assert_eq!(b.owner_of(7), Some((BIG, addr(2))));
        let mut b = table(false);
        b.on_claim(secs(0), ME, SMALL, addr(1), &e);
        b.on_claim(secs(1), ME, BIG, addr(2), &e);
        assert_eq!(b.owner_of(7), Some((BIG, addr(2))));
    }

    #[test]
    fn claims_expire_and_ttl_zero_releases() {
        let mut rng = StdRng::seed_from_u64(6);
        let mut b = table(false);
        let e = ClaimEntry {
            block: 7,
            timeout: 20,
        };
        b.on_claim(secs(0), ME, SMALL, addr(1), &[e]);
        b.handle_timeout(secs(19), &mut rng);
        assert!(b.owner_of(7).is_some());
        b.handle_timeout(secs(20), &mut rng);
        assert!(b.owner_of(7).is_none());
        b.on_claim(secs(21), ME, SMALL, addr(1), &[e]);
        assert!(b.owner_of(7).is_some());
        b.on_claim(
            secs(22),
            ME,
            SMALL,
            addr(1),
            &[ClaimEntry {
                block: 7,
                timeout: 0,
            }],
        );
        assert!(b.owner_of(7).is_none());
        assert_eq!(b.states[7], State::Free);
    }

    #[test]
    fn refresh_every_quarter_block_timeout() {
        let mut rng = StdRng::seed_from_u64(7);
        let (mut b, block) = owning_table(&mut rng);
        let out = run_until(&mut b, secs(66), &mut rng);
        let claims: Vec<Instant> = out
            .iter()
            .filter(|(_, o)| matches!(o, Output::Claim(c) if c[0].block == block))
            .map(|(t, _)| *t)
            .collect();
        assert_eq!(claims, vec![secs(15), secs(30), secs(45), secs(60)]);
    }

    #[test]
    fn surplus_block_given_up_after_needless_timeout() {
        let mut rng = StdRng::seed_from_u64(8);
        let mut b = table(false);
        b.cfg.spare_leases = 6;
        run_until(&mut b, secs(20), &mut rng);
        assert_eq!(b.owned_count(), 2);
        b.cfg.spare_leases = 1;
        let out = run_span(&mut b, secs(20), secs(40), &mut rng);
        assert_eq!(b.owned_count(), 1);
        let dropped = out
            .iter()
            .find_map(|(t, o)| match o {
                Output::Claim(c) if c[0].timeout == 0 => Some(*t),
                _ => None,
            })
            .unwrap();
        // Marked at the first round after the change, given up -n (10 s) later.
        assert!(dropped >= secs(30) && dropped <= secs(32), "{dropped:?}");
    }

    /// Lazy rounds (`round_due`): a surplus mark is cleared at the next round once the
    /// demand is back, so a later surplus waits the whole -n again.
    #[test]
    fn a_surplus_mark_is_cleared_when_demand_returns() {
        let mut rng = StdRng::seed_from_u64(8);
        let mut b = table(false);
        b.cfg.spare_leases = 6;
        run_until(&mut b, secs(20), &mut rng);
        assert_eq!(b.owned_count(), 2);
        b.cfg.spare_leases = 1;
        run_span(&mut b, secs(20), secs(24), &mut rng);
        b.cfg.spare_leases = 6;
        run_span(&mut b, secs(24), secs(28), &mut rng);
        assert_eq!(b.owned_count(), 2);
        b.cfg.spare_leases = 1;
        let out = run_span(&mut b, secs(28), secs(60), &mut rng);
        let dropped = out
            .iter()
            .find_map(|(t, o)| match o {
                Output::Claim(c) if c[0].timeout == 0 => Some(*t),
                _ => None,
            })
            .expect("the surplus block is given up");
        assert!(
            dropped >= secs(38),
            "given up at {dropped:?}, marked before 28 s"
        );
    }

    #[test]
    fn used_blocks_are_never_given_up() {
        let mut rng = StdRng::seed_from_u64(9);
        let mut b = table(false);
        b.cfg.spare_leases = 6;
        run_until(&mut b, secs(20), &mut rng);
        for block in b.owned().collect::<Vec<_>>() {
            b.set_usage(block, 1);
        }
        b.cfg.spare_leases = 0;
        run_span(&mut b, secs(20), secs(100), &mut rng);
        assert_eq!(b.owned_count(), 2);
    }

    #[test]
    fn large_demand_is_inquired_in_several_packets_per_round() {
        let range = ManagedRange::new(Ipv4Addr::new(10, 0, 0, 0), 16, 2).unwrap();
        let mut c = cfg(false);
        c.spare_leases = 4 * 600;
        let mut b = Blocks::new(c, range, Instant::ZERO);
        let mut rng = StdRng::seed_from_u64(10);
        b.handle_timeout(secs(0), &mut rng);
        let sizes: Vec<usize> = drain(&mut b)
            .into_iter()
            .map(|o| match o {
                Output::Inquire(v) => v.len(),
                Output::Claim(_) => 0,
            })
            .collect();
        assert_eq!(sizes, vec![255, 255, 90]);
        run_until(&mut b, secs(6), &mut rng);
        assert_eq!(b.owned_count(), 600);
    }

    #[test]
    fn out_of_range_entries_are_counted_and_skipped() {
        let mut b = table(false);
        b.on_inquire(secs(0), ME, BIG, &[64, 1_000_000, 3]);
        b.on_claim(
            secs(0),
            ME,
            BIG,
            addr(1),
            &[ClaimEntry {
                block: 64,
                timeout: 60,
            }],
        );
        assert_eq!(b.invalid_entries, 3);
        assert!(matches!(b.states[3], State::Tentative { .. }));
    }
}

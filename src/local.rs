//! The local address service (DynIP): addresses of this pool's blocks configured on the
//! host itself, proven reachable, and tracked by use.
//!
//! Every address moves only between adjacent states, as the DynIP design draws them:
//!
//! ```text
//! free -> reserved(adding) -> reserved(proving) -> standby <-> active
//!                                                    |
//!            free <- reserved(removing) <- reserved(checking)   (surplus, or proof failed)
//! ```
//!
//! The service is sans-IO like the rest of the core: it asks the host for things
//! ([`HostAction`]: add, announce, prove, look at use, remove) and learns what happened
//! ([`HostEvent`]). The shell does them with netlink, packet sockets and sock_diag; the
//! simulator with a fake host. An address counts as used in its block from the moment it is
//! reserved until the host confirms it is gone, so the block table never gives up (or lets
//! lapse) a block with an address configured in it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::Ipv4Addr;
use std::time::Duration;

use crate::blocks::Blocks;
use crate::persist::{Change, LocalHeld};
use crate::range::ManagedRange;
use crate::time::Instant;

/// What a local pool is configured with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalConfig {
    /// The interface the addresses are configured on.
    pub iface: String,
    /// Proven, unused addresses to keep configured.
    pub standby: u32,
    /// At least this many addresses configured (standby plus active).
    pub min: u32,
    /// Never more standby addresses than this (surplus ones are released).
    pub max_standby: u32,
    /// Where reachability is proven to; `None`: an address counts as proven once the
    /// host has it configured and announced.
    pub test_target: Option<(Ipv4Addr, Option<u16>)>,
    /// Ranges of the pool that are never configured (tracking only).
    pub unmanaged: Vec<(Ipv4Addr, u8)>,
    pub timers: LocalTimers,
}

/// How long things may take. Defaults suit a LAN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalTimers {
    /// A reserved address not proven by then goes back (removed, freed).
    pub reserve_timeout: Duration,
    /// Between two reachability probes of a reserved address.
    pub probe_interval: Duration,
    /// An active address unused this long becomes standby again.
    pub hysteresis: Duration,
    /// Standby and active addresses are announced again this often (plus jitter).
    pub announce_interval: Duration,
    /// First wait before re-adding an address someone else deleted (doubles, up to 64x).
    pub readd_backoff: Duration,
}

impl Default for LocalTimers {
    fn default() -> Self {
        LocalTimers {
            reserve_timeout: Duration::from_secs(10),
            probe_interval: Duration::from_secs(1),
            hysteresis: Duration::from_secs(30),
            announce_interval: Duration::from_secs(120),
            readd_backoff: Duration::from_secs(1),
        }
    }
}

/// What the service asks the host to do; the answer comes back as a [`HostEvent`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostAction {
    /// Configure `ip` (prefix length of the pool) on the interface, tagged as ours.
    Add { ip: Ipv4Addr, prefix_len: u8 },
    /// Remove `ip`, which we added.
    Remove { ip: Ipv4Addr, prefix_len: u8 },
    /// Gratuitous ARP for `ip`: `burst` packets.
    Announce { ip: Ipv4Addr, burst: u8 },
    /// Prove two-way reachability from `ip` to the test target.
    Probe {
        ip: Ipv4Addr,
        target: Ipv4Addr,
        port: Option<u16>,
    },
    /// Look whether `ip` is in use now (before it is released).
    CheckUse { ip: Ipv4Addr },
}

/// What the host saw or did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostEvent {
    /// `ip` is configured (after our `Add`, or found at start-up). An `Add` of an address
    /// already on the interface with our tag is answered with `Added` too (not
    /// `AddFailed`): after a restart that did not reboot the host, the addresses restored
    /// from the store are all there. Reporting one twice is harmless.
    Added {
        ip: Ipv4Addr,
    },
    /// Adding `ip` failed (e.g. another host's address, or not ours to add).
    AddFailed {
        ip: Ipv4Addr,
        reason: String,
    },
    /// `ip` is no longer configured (after our `Remove`, or deleted by someone else).
    Removed {
        ip: Ipv4Addr,
    },
    ProbeResult {
        ip: Ipv4Addr,
        ok: bool,
    },
    /// Which of our addresses sockets use now, with what (for `reason`): a full poll.
    InUse(BTreeMap<Ipv4Addr, String>),
    /// The interface went away: nothing is configured any more (it is re-added when the
    /// interface is back).
    LinkGone,
    LinkBack,
}

/// Where an address is in its life cycle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalState {
    /// Being configured, proven, checked or removed; `step` says which.
    Reserved { step: Step },
    /// Configured, proven, unused.
    Standby,
    /// In use: by a socket, or marked by a third party.
    Active { by: Use },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Adding,
    Proving,
    /// Surplus or expired: looking at use one last time before it is removed.
    Checking,
    Removing,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Use {
    Socket(String),
    Mark,
}

impl LocalState {
    pub fn name(&self) -> &'static str {
        match self {
            LocalState::Reserved { .. } => "reserved",
            LocalState::Standby => "standby",
            LocalState::Active { .. } => "active",
        }
    }
}

/// One address of the service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalAddr {
    pub state: LocalState,
    pub since: Instant,
    /// Why it is where it is, for `ddhcpctl local`.
    pub reason: String,
    /// A reserved address goes back at this instant; an unused active one becomes standby.
    deadline: Option<Instant>,
    next_probe: Option<Instant>,
    next_announce: Option<Instant>,
    /// Deleted by someone else: re-added at this instant, with this back-off.
    readd_at: Option<Instant>,
    backoff: Duration,
    /// Whether it was standby or active when someone deleted it, or before a restart
    /// (then it is reserved, being configured again).
    was: Option<Box<LocalState>>,
    /// The host has it configured (an `Added` seen since our last `Add`): a repeated
    /// `Added` (the shell's answer and its start-up dump, a notification of changed flags)
    /// changes nothing.
    configured: bool,
    /// What the store holds for it; a record is written when this changes.
    stored: Option<LocalHeld>,
}

/// A move of an address, for hooks, audit and logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalMove {
    pub ip: Ipv4Addr,
    /// `"free"`, `"reserved"`, `"standby"`, `"active"`.
    pub from: &'static str,
    pub to: &'static str,
    pub reason: String,
}

/// A run-time change of a local pool's targets (`ddhcpctl set-local`); `None` keeps the
/// current value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocalTargets {
    pub standby: Option<u32>,
    pub min: Option<u32>,
    pub max_standby: Option<u32>,
    /// Seconds, [`MIN_HYSTERESIS_SECS`] to [`MAX_HYSTERESIS_SECS`].
    pub hysteresis: Option<u32>,
}

impl LocalTargets {
    pub fn is_empty(&self) -> bool {
        *self == LocalTargets::default()
    }
}

/// Shortest hysteresis (`hysteresis=` and `set-local`): an address that lost its last
/// socket stays active at least this long.
pub const MIN_HYSTERESIS_SECS: u32 = 1;
/// Longest hysteresis: one day.
pub const MAX_HYSTERESIS_SECS: u32 = 86_400;

/// Counters of the local service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalCounters {
    pub added: u64,
    pub removed: u64,
    pub proofs_failed: u64,
    pub deleted_by_others: u64,
    pub add_failed: u64,
    /// Addresses removed because their block went to another node.
    pub lost_with_block: u64,
}

pub struct Local {
    cfg: LocalConfig,
    range: ManagedRange,
    addrs: BTreeMap<Ipv4Addr, LocalAddr>,
    /// Marks by third parties (`mark-active`), kept across socket polls.
    marked: BTreeSet<Ipv4Addr>,
    actions: VecDeque<HostAction>,
    moves: VecDeque<LocalMove>,
    /// Standby or active addresses someone else deleted (with the state they were in),
    /// for the hook: not a move, they are held and come back.
    deleted: VecDeque<(Ipv4Addr, &'static str)>,
    /// Blocks whose usage changed since the block table was last told.
    changed: BTreeSet<u32>,
    /// Durable changes not yet taken.
    changes: Vec<Change>,
    link_up: bool,
    pub counters: LocalCounters,
}

impl Local {
    pub fn new(cfg: LocalConfig, range: ManagedRange) -> Self {
        Local {
            cfg,
            range,
            addrs: BTreeMap::new(),
            marked: BTreeSet::new(),
            actions: VecDeque::new(),
            moves: VecDeque::new(),
            deleted: VecDeque::new(),
            changed: BTreeSet::new(),
            changes: Vec::new(),
            link_up: true,
            counters: LocalCounters::default(),
        }
    }

    pub fn config(&self) -> &LocalConfig {
        &self.cfg
    }

    /// Changes the targets (and the hysteresis) at run time, all or nothing: the values
    /// after the change must hold `max_standby >= standby`, each count at most the pool's
    /// size, and a hysteresis of [`MIN_HYSTERESIS_SECS`] to [`MAX_HYSTERESIS_SECS`]. The
    /// caller then runs [`Local::handle_timeout`] so the service moves to the new targets
    /// at once. A new hysteresis applies from the next time an address goes unused.
    pub fn set_targets(&mut self, t: LocalTargets) -> Result<(), String> {
        let size = 1u64 << (32 - u32::from(self.range.prefix_len()));
        for (key, v) in [
            ("standby", t.standby),
            ("min", t.min),
            ("max-standby", t.max_standby),
        ] {
            if let Some(n) = v
                && u64::from(n) > size
            {
                return Err(format!(
                    "{key}={n} is more than the {size} addresses of the pool"
                ));
            }
        }
        let standby = t.standby.unwrap_or(self.cfg.standby);
        let min = t.min.unwrap_or(self.cfg.min);
        let max_standby = t.max_standby.unwrap_or(self.cfg.max_standby);
        if max_standby < standby {
            return Err(format!(
                "max-standby ({max_standby}) would be smaller than standby ({standby}); give both"
            ));
        }
        if let Some(h) = t.hysteresis
            && !(MIN_HYSTERESIS_SECS..=MAX_HYSTERESIS_SECS).contains(&h)
        {
            return Err(format!(
                "hysteresis={h} must be between {MIN_HYSTERESIS_SECS} and {MAX_HYSTERESIS_SECS} seconds"
            ));
        }
        self.cfg.standby = standby;
        self.cfg.min = min;
        self.cfg.max_standby = max_standby;
        if let Some(h) = t.hysteresis {
            self.cfg.timers.hysteresis = Duration::from_secs(u64::from(h));
        }
        Ok(())
    }

    pub fn addresses(&self) -> impl Iterator<Item = (Ipv4Addr, &LocalAddr)> {
        self.addrs.iter().map(|(&ip, a)| (ip, a))
    }

    pub fn count(&self, f: impl Fn(&LocalState) -> bool) -> usize {
        self.addrs.values().filter(|a| f(&a.state)).count()
    }

    fn standby_count(&self) -> u32 {
        self.count(|s| matches!(s, LocalState::Standby)) as u32
    }

    fn active_count(&self) -> u32 {
        self.count(|s| matches!(s, LocalState::Active { .. })) as u32
    }

    /// Reserved on the way in (adding or proving): standby soon.
    fn coming(&self) -> u32 {
        self.count(|s| {
            matches!(
                s,
                LocalState::Reserved {
                    step: Step::Adding | Step::Proving
                }
            )
        }) as u32
    }

    /// How many standby addresses we want now.
    fn wanted_standby(&self) -> u32 {
        let floor = self.cfg.min.saturating_sub(self.active_count());
        self.cfg.standby.max(floor).min(self.cfg.max_standby)
    }

    /// Free addresses the block table should keep in owned blocks for us.
    pub fn free_wanted(&self) -> u32 {
        self.wanted_standby()
            .saturating_sub(self.standby_count() + self.coming())
    }

    pub fn poll_action(&mut self) -> Option<HostAction> {
        self.actions.pop_front()
    }

    pub fn poll_move(&mut self) -> Option<LocalMove> {
        self.moves.pop_front()
    }

    /// An address of ours someone else deleted while it was standby or active.
    pub fn poll_deleted(&mut self) -> Option<(Ipv4Addr, &'static str)> {
        self.deleted.pop_front()
    }

    /// Durable changes since the last call, in order: an address became standby or active
    /// (or moved between the two), or was freed.
    pub fn take_changes(&mut self, out: &mut Vec<Change>) {
        out.append(&mut self.changes);
    }

    /// Usage per block changed since the last call: every address we hold counts.
    pub fn take_changed(&mut self) -> Vec<(u32, u32)> {
        let changed = std::mem::take(&mut self.changed);
        changed
            .into_iter()
            .map(|b| {
                let first = self.range.block_first(b);
                let last = self.range.address(b, self.range.block_size() - 1);
                (b, self.addrs.range(first..=last).count() as u32)
            })
            .collect()
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.addrs
            .values()
            .flat_map(|a| [a.deadline, a.next_probe, a.next_announce, a.readd_at])
            .flatten()
            .min()
    }

    fn usable(&self, ip: Ipv4Addr) -> bool {
        if ip == self.range.prefix() || ip == self.range.broadcast() {
            return false;
        }
        !self.cfg.unmanaged.iter().any(|&(net, len)| {
            let mask = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len))
            };
            u32::from(ip) & mask == u32::from(net) & mask
        })
    }

    /// Blocks with no address we may configure (inside unmanaged ranges): never claimed.
    /// Only blocks the unmanaged ranges touch are looked at, so a huge pool costs nothing.
    pub fn excluded_blocks(&self) -> BTreeSet<u32> {
        let mut out = BTreeSet::new();
        for &(net, len) in &self.cfg.unmanaged {
            let mask = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len))
            };
            let first = u32::from(net) & mask;
            let last = first | !mask;
            let (lo, hi) = (
                first.max(u32::from(self.range.prefix())),
                last.min(u32::from(self.range.broadcast())),
            );
            if lo > hi {
                continue;
            }
            let (Some((b0, _)), Some((b1, _))) = (
                self.range.locate(Ipv4Addr::from(lo)),
                self.range.locate(Ipv4Addr::from(hi)),
            ) else {
                continue;
            };
            for b in b0..=b1 {
                let size = self.range.block_size();
                if (0..size).all(|off| !self.usable(self.range.address(b, off))) {
                    out.insert(b);
                }
            }
        }
        out
    }

    fn block_of(&self, ip: Ipv4Addr) -> Option<u32> {
        self.range.locate(ip).map(|(b, _)| b)
    }

    fn set(&mut self, now: Instant, ip: Ipv4Addr, state: LocalState, reason: impl Into<String>) {
        let reason = reason.into();
        let from = self.addrs.get(&ip).map_or("free", |a| a.state.name());
        let to = state.name();
        if let Some(b) = self.block_of(ip) {
            self.changed.insert(b);
        }
        let a = self.addrs.entry(ip).or_insert_with(|| LocalAddr {
            state: state.clone(),
            since: now,
            reason: String::new(),
            deadline: None,
            next_probe: None,
            next_announce: None,
            readd_at: None,
            backoff: Duration::ZERO,
            was: None,
            configured: false,
            stored: None,
        });
        if from != to {
            a.since = now;
        }
        a.state = state;
        a.reason.clone_from(&reason);
        // Standby and active (by a socket or by a mark) are what a restart configures
        // again; a reserved address keeps what was stored for it until it is freed.
        let held = match &a.state {
            LocalState::Standby => Some(LocalHeld::Standby),
            LocalState::Active { by: Use::Socket(_) } => Some(LocalHeld::Active),
            LocalState::Active { by: Use::Mark } => Some(LocalHeld::Marked),
            LocalState::Reserved { .. } => None,
        };
        if let Some(held) = held
            && a.stored != Some(held)
        {
            a.stored = Some(held);
            self.changes.push(Change::Local { ip, held });
        }
        if from != to {
            self.moves.push_back(LocalMove {
                ip,
                from,
                to,
                reason,
            });
        }
    }

    fn free(&mut self, ip: Ipv4Addr, reason: &str) {
        if let Some(a) = self.addrs.remove(&ip) {
            if let Some(b) = self.block_of(ip) {
                self.changed.insert(b);
            }
            self.marked.remove(&ip);
            if a.stored.is_some() {
                self.changes.push(Change::LocalGone(ip));
            }
            self.moves.push_back(LocalMove {
                ip,
                from: a.state.name(),
                to: "free",
                reason: reason.into(),
            });
        }
    }

    fn prefix_len(&self) -> u8 {
        self.range.prefix_len()
    }

    /// Starts the way out for `ip`: a last look at its use, then removal.
    fn release(&mut self, now: Instant, ip: Ipv4Addr, why: &str) {
        self.set(
            now,
            ip,
            LocalState::Reserved {
                step: Step::Checking,
            },
            why,
        );
        if let Some(a) = self.addrs.get_mut(&ip) {
            a.deadline = Some(now + self.cfg.timers.reserve_timeout);
            a.next_probe = None;
            a.next_announce = None;
        }
        self.actions.push_back(HostAction::CheckUse { ip });
    }

    fn remove(&mut self, now: Instant, ip: Ipv4Addr, why: &str) {
        self.set(
            now,
            ip,
            LocalState::Reserved {
                step: Step::Removing,
            },
            why,
        );
        if let Some(a) = self.addrs.get_mut(&ip) {
            a.deadline = Some(now + self.cfg.timers.reserve_timeout);
        }
        let prefix_len = self.prefix_len();
        self.actions
            .push_back(HostAction::Remove { ip, prefix_len });
    }

    /// Proven: standby, announced and re-announced from now on.
    fn proven(&mut self, now: Instant, ip: Ipv4Addr, why: &str) {
        self.set(now, ip, LocalState::Standby, why);
        let every = self.cfg.timers.announce_interval;
        if let Some(a) = self.addrs.get_mut(&ip) {
            a.deadline = None;
            a.next_probe = None;
            a.next_announce = Some(now + every);
        }
    }

    /// Runs what is due and moves towards the targets. `blocks` says which blocks we own.
    pub fn handle_timeout(&mut self, now: Instant, blocks: &Blocks) {
        let due: Vec<Ipv4Addr> = self
            .addrs
            .iter()
            .filter(|(_, a)| {
                [a.deadline, a.next_probe, a.next_announce, a.readd_at]
                    .iter()
                    .flatten()
                    .any(|&t| t <= now)
            })
            .map(|(&ip, _)| ip)
            .collect();
        for ip in due {
            self.due(now, ip);
        }
        self.converge(now, blocks);
    }

    fn due(&mut self, now: Instant, ip: Ipv4Addr) {
        let Some(a) = self.addrs.get(&ip).cloned() else {
            return;
        };
        let t = self.cfg.timers;
        if a.readd_at.is_some_and(|r| r <= now) {
            let prefix_len = self.prefix_len();
            if let Some(a) = self.addrs.get_mut(&ip) {
                a.readd_at = None;
            }
            self.actions.push_back(HostAction::Add { ip, prefix_len });
            return;
        }
        match a.state {
            LocalState::Reserved { step } if a.deadline.is_some_and(|d| d <= now) => match step {
                Step::Adding | Step::Proving => {
                    self.counters.proofs_failed += 1;
                    self.release(now, ip, "not proven in time");
                }
                // The host did not answer: look again.
                Step::Checking => self.release(now, ip, "use check timed out; asking again"),
                Step::Removing => self.remove(now, ip, "removal not confirmed; removing again"),
            },
            LocalState::Reserved {
                step: Step::Proving,
            } if a.next_probe.is_some_and(|p| p <= now) => {
                if let Some(a) = self.addrs.get_mut(&ip) {
                    a.next_probe = Some(now + t.probe_interval);
                }
                self.probe(ip);
            }
            LocalState::Active { by: Use::Socket(_) } if a.deadline.is_some_and(|d| d <= now) => {
                if let Some(a) = self.addrs.get_mut(&ip) {
                    a.deadline = None;
                }
                self.set(now, ip, LocalState::Standby, "unused for the hysteresis");
            }
            LocalState::Standby | LocalState::Active { .. }
                if a.next_announce.is_some_and(|n| n <= now) =>
            {
                // Jitter from the address, so a host's refreshes do not all go at once.
                let jitter = Duration::from_millis(u64::from(u32::from(ip) % 1000) * 5);
                if let Some(a) = self.addrs.get_mut(&ip) {
                    a.next_announce = Some(now + t.announce_interval + jitter);
                }
                self.actions
                    .push_back(HostAction::Announce { ip, burst: 1 });
            }
            _ => {}
        }
    }

    fn probe(&mut self, ip: Ipv4Addr) {
        if let Some((target, port)) = self.cfg.test_target {
            self.actions
                .push_back(HostAction::Probe { ip, target, port });
        }
    }

    /// Reserves free addresses of owned blocks for the standby we lack, and releases
    /// surplus standby ones.
    fn converge(&mut self, now: Instant, blocks: &Blocks) {
        if !self.link_up {
            return;
        }
        let mut missing = self.free_wanted();
        if missing > 0 {
            let bs = self.range.block_size();
            'blocks: for b in blocks.owned().collect::<Vec<_>>() {
                for off in 0..bs {
                    if missing == 0 {
                        break 'blocks;
                    }
                    let ip = self.range.address(b, off);
                    if self.addrs.contains_key(&ip) || !self.usable(ip) {
                        continue;
                    }
                    self.reserve(now, ip);
                    missing -= 1;
                }
            }
        }
        let surplus = self.standby_count().saturating_sub(self.wanted_standby());
        if surplus > 0 {
            // The newest standby addresses go first: the oldest are proven the longest.
            let mut standby: Vec<(Instant, Ipv4Addr)> = self
                .addrs
                .iter()
                .filter(|(_, a)| a.state == LocalState::Standby)
                .map(|(&ip, a)| (a.since, ip))
                .collect();
            standby.sort();
            for (_, ip) in standby.into_iter().rev().take(surplus as usize) {
                self.release(now, ip, "surplus standby");
            }
        }
    }

    fn reserve(&mut self, now: Instant, ip: Ipv4Addr) {
        self.set(
            now,
            ip,
            LocalState::Reserved { step: Step::Adding },
            "being configured",
        );
        if let Some(a) = self.addrs.get_mut(&ip) {
            a.deadline = Some(now + self.cfg.timers.reserve_timeout);
        }
        let prefix_len = self.prefix_len();
        self.actions.push_back(HostAction::Add { ip, prefix_len });
    }

    /// Takes back the addresses held before a restart, right after the pool's blocks are
    /// restored (`blocks`). Each one in a block that is ours is held at once, reserved and
    /// being added again (an `Add` now, learning phase or not), remembering what it was:
    /// once the host has it, an active one is active again at once and a standby one is
    /// proven again. The others (their block is not ours any more, or the address is no
    /// longer ours to configure) are dropped from the store; should the host still have one,
    /// its `Added` has it removed.
    pub fn restore(&mut self, now: Instant, addrs: &[(Ipv4Addr, LocalHeld)], blocks: &Blocks) {
        let prefix_len = self.prefix_len();
        for &(ip, held) in addrs {
            let ours = self.block_of(ip).is_some_and(|b| blocks.owns(b)) && self.usable(ip);
            if !ours || self.addrs.contains_key(&ip) {
                self.changes.push(Change::LocalGone(ip));
                continue;
            }
            let (was, what) = match held {
                LocalHeld::Standby => (LocalState::Standby, "standby"),
                LocalHeld::Active => (
                    LocalState::Active {
                        by: Use::Socket("in use before the restart".into()),
                    },
                    "active",
                ),
                LocalHeld::Marked => {
                    self.marked.insert(ip);
                    (LocalState::Active { by: Use::Mark }, "marked active")
                }
            };
            self.set(
                now,
                ip,
                LocalState::Reserved { step: Step::Adding },
                format!("{what} before the restart; being configured again"),
            );
            if let Some(a) = self.addrs.get_mut(&ip) {
                a.deadline = Some(now + self.cfg.timers.reserve_timeout);
                a.was = Some(Box::new(was));
                a.stored = Some(held);
            }
            self.actions.push_back(HostAction::Add { ip, prefix_len });
        }
    }

    /// `blocks` says which blocks are ours: a tagged address the host has in one of them
    /// (from before a restart) is taken back, any other is removed.
    pub fn handle_event(&mut self, now: Instant, ev: HostEvent, blocks: &Blocks) {
        match ev {
            HostEvent::Added { ip } => self.on_added(now, ip, blocks),
            HostEvent::AddFailed { ip, reason } => {
                self.counters.add_failed += 1;
                if self.addrs.contains_key(&ip) {
                    // Never configured: nothing to remove.
                    self.free(ip, &format!("could not be added: {reason}"));
                }
            }
            HostEvent::Removed { ip } => self.on_removed(now, ip),
            HostEvent::ProbeResult { ip, ok } => {
                let proving = matches!(
                    self.addrs.get(&ip).map(|a| &a.state),
                    Some(LocalState::Reserved {
                        step: Step::Proving
                    })
                );
                if proving && ok {
                    self.proven(now, ip, "proven: the test target answered");
                } else if proving {
                    self.counters.proofs_failed += 1;
                }
            }
            HostEvent::InUse(used) => self.on_use(now, &used),
            HostEvent::LinkGone => {
                self.link_up = false;
                for (_, a) in self.addrs.iter_mut() {
                    a.next_probe = None;
                    a.next_announce = None;
                    a.configured = false;
                }
            }
            HostEvent::LinkBack => {
                self.link_up = true;
                // Everything we hold is configured again; standby ones proven again.
                let prefix_len = self.prefix_len();
                let held: Vec<Ipv4Addr> = self.addrs.keys().copied().collect();
                for ip in held {
                    self.actions.push_back(HostAction::Add { ip, prefix_len });
                }
            }
        }
    }

    /// Stored addresses whose blocks went to another node before we could claim them back:
    /// forgotten, and removed from the host should it still have them.
    pub fn drop_restored(&mut self, ips: &[Ipv4Addr]) {
        let prefix_len = self.prefix_len();
        for &ip in ips {
            self.changes.push(Change::LocalGone(ip));
            self.actions
                .push_back(HostAction::Remove { ip, prefix_len });
        }
    }

    fn on_added(&mut self, now: Instant, ip: Ipv4Addr, blocks: &Blocks) {
        if !self.addrs.contains_key(&ip) && self.block_of(ip).is_some_and(|b| blocks.is_wanted(b)) {
            // Its block is being claimed back: the stored address is configured (taken
            // back) once it is ours, or removed if another node has it.
            return;
        }
        let Some(a) = self.addrs.get(&ip).cloned() else {
            let ours = self.block_of(ip).is_some_and(|b| blocks.owns(b)) && self.usable(ip);
            if ours {
                // Configured before a restart, in a block we still own: taken back and
                // proven again (a socket using it makes it active at the next poll).
                self.set(
                    now,
                    ip,
                    LocalState::Reserved { step: Step::Adding },
                    "found configured at start",
                );
                if let Some(x) = self.addrs.get_mut(&ip) {
                    x.deadline = Some(now + self.cfg.timers.reserve_timeout);
                }
                return self.on_added(now, ip, blocks);
            }
            // Ours by the tag, but in a block we do not own (any more): remove it.
            let prefix_len = self.prefix_len();
            self.actions
                .push_back(HostAction::Remove { ip, prefix_len });
            return;
        };
        if a.configured {
            return;
        }
        if let Some(x) = self.addrs.get_mut(&ip) {
            x.configured = true;
        }
        let t = self.cfg.timers;
        self.counters.added += 1;
        let restored = a.state == LocalState::Reserved { step: Step::Adding };
        if let Some(was) = a.was {
            if let Some(x) = self.addrs.get_mut(&ip) {
                x.was = None;
            }
            // A standby address from before a restart is proven again, as a new one is;
            // anything else is back where it was at once.
            if !(restored && *was == LocalState::Standby) {
                let every = t.announce_interval;
                if let Some(x) = self.addrs.get_mut(&ip) {
                    x.backoff = Duration::ZERO;
                    x.next_announce = Some(now + every);
                    if restored {
                        // Not the reserve timeout any more: an active address's deadline
                        // is its hysteresis, started by the first poll without a socket.
                        x.deadline = None;
                    }
                }
                self.actions
                    .push_back(HostAction::Announce { ip, burst: 3 });
                let why = if restored {
                    "configured again after a restart"
                } else {
                    "re-added after it was deleted"
                };
                self.set(now, ip, *was, why);
                return;
            }
        }
        match a.state {
            LocalState::Reserved { step: Step::Adding } => {
                self.set(
                    now,
                    ip,
                    LocalState::Reserved {
                        step: Step::Proving,
                    },
                    "configured; awaiting proof",
                );
                self.actions
                    .push_back(HostAction::Announce { ip, burst: 3 });
                if self.cfg.test_target.is_some() {
                    if let Some(x) = self.addrs.get_mut(&ip) {
                        x.next_probe = Some(now + t.probe_interval);
                    }
                    self.probe(ip);
                } else {
                    self.proven(now, ip, "configured and announced (no test target)");
                }
            }
            // After a link came back: standby ones are proven again.
            LocalState::Standby if self.cfg.test_target.is_some() => {
                self.set(
                    now,
                    ip,
                    LocalState::Reserved {
                        step: Step::Proving,
                    },
                    "configured again; awaiting proof",
                );
                if let Some(x) = self.addrs.get_mut(&ip) {
                    x.deadline = Some(now + t.reserve_timeout);
                    x.next_probe = Some(now + t.probe_interval);
                }
                self.actions
                    .push_back(HostAction::Announce { ip, burst: 3 });
                self.probe(ip);
            }
            LocalState::Standby | LocalState::Active { .. } => {
                self.actions
                    .push_back(HostAction::Announce { ip, burst: 3 });
            }
            LocalState::Reserved { .. } => {}
        }
    }

    fn on_removed(&mut self, now: Instant, ip: Ipv4Addr) {
        let Some(a) = self.addrs.get(&ip).cloned() else {
            return;
        };
        match a.state {
            LocalState::Reserved {
                step: Step::Removing | Step::Checking,
            }
            | LocalState::Reserved { step: Step::Adding } => {
                self.counters.removed += 1;
                self.free(ip, "removed from the interface");
            }
            LocalState::Reserved {
                step: Step::Proving,
            } => {
                self.counters.deleted_by_others += 1;
                self.free(ip, "deleted by someone else before it was proven");
            }
            LocalState::Standby | LocalState::Active { .. } => {
                self.counters.deleted_by_others += 1;
                if let Some(x) = self.addrs.get_mut(&ip) {
                    x.configured = false;
                }
                if !self.link_up {
                    return;
                }
                self.deleted.push_back((ip, a.state.name()));
                let backoff = if a.backoff.is_zero() {
                    self.cfg.timers.readd_backoff
                } else {
                    (a.backoff * 2).min(self.cfg.timers.readd_backoff * 64)
                };
                if let Some(x) = self.addrs.get_mut(&ip) {
                    x.was = Some(Box::new(a.state.clone()));
                    x.configured = false;
                    x.backoff = backoff;
                    x.readd_at = Some(now + backoff);
                    x.next_announce = None;
                }
                let reason = format!(
                    "deleted by someone else; re-adding in {} ms",
                    backoff.as_millis()
                );
                if let Some(x) = self.addrs.get_mut(&ip) {
                    x.reason = reason;
                }
            }
        }
    }

    fn on_use(&mut self, now: Instant, used: &BTreeMap<Ipv4Addr, String>) {
        let hysteresis = self.cfg.timers.hysteresis;
        let ips: Vec<Ipv4Addr> = self.addrs.keys().copied().collect();
        for ip in ips {
            let Some(a) = self.addrs.get(&ip).cloned() else {
                continue;
            };
            let socket = used.get(&ip);
            match (&a.state, socket) {
                (LocalState::Standby, Some(what)) => {
                    self.set(
                        now,
                        ip,
                        LocalState::Active {
                            by: Use::Socket(what.clone()),
                        },
                        format!("in use: {what}"),
                    );
                }
                (LocalState::Active { by: Use::Socket(_) }, Some(what)) => {
                    if let Some(x) = self.addrs.get_mut(&ip) {
                        x.deadline = None;
                        x.state = LocalState::Active {
                            by: Use::Socket(what.clone()),
                        };
                        x.reason = format!("in use: {what}");
                    }
                }
                (LocalState::Active { by: Use::Socket(_) }, None) => {
                    if let Some(x) = self.addrs.get_mut(&ip)
                        && x.deadline.is_none()
                    {
                        x.deadline = Some(now + hysteresis);
                        x.reason = "no socket any more; standby after the hysteresis".into();
                    }
                }
                (
                    LocalState::Reserved {
                        step: Step::Checking,
                    },
                    Some(what),
                ) => {
                    // In use after all: it stays.
                    let what = what.clone();
                    if let Some(x) = self.addrs.get_mut(&ip) {
                        x.deadline = None;
                        x.next_announce = Some(now + self.cfg.timers.announce_interval);
                    }
                    self.set(
                        now,
                        ip,
                        LocalState::Active {
                            by: Use::Socket(what.clone()),
                        },
                        format!("in use: {what} (seen before release)"),
                    );
                }
                (
                    LocalState::Reserved {
                        step: Step::Checking,
                    },
                    None,
                ) if !self.marked.contains(&ip) => {
                    self.remove(now, ip, "unused: removing");
                }
                _ => {}
            }
        }
    }

    /// `mark-active` / `mark-standby` by a third party; false if `ip` is not ours or not
    /// in a state that can move so.
    pub fn mark(&mut self, now: Instant, ip: Ipv4Addr, active: bool) -> Result<(), String> {
        let Some(a) = self.addrs.get(&ip) else {
            return Err(format!("{ip} is not an address of this pool on this node"));
        };
        match (&a.state, active) {
            (LocalState::Standby | LocalState::Active { .. }, true) => {
                self.marked.insert(ip);
                if let Some(x) = self.addrs.get_mut(&ip) {
                    x.deadline = None;
                }
                self.set(
                    now,
                    ip,
                    LocalState::Active { by: Use::Mark },
                    "marked active",
                );
                Ok(())
            }
            (LocalState::Active { .. }, false) => {
                self.marked.remove(&ip);
                self.set(now, ip, LocalState::Standby, "marked standby");
                Ok(())
            }
            (LocalState::Standby, false) => {
                self.marked.remove(&ip);
                Ok(())
            }
            (s, _) => Err(format!("{ip} is {} and cannot be marked yet", s.name())),
        }
    }

    /// Our block is gone (given up or lost to another node): nothing of it may stay
    /// configured here.
    pub fn block_gone(&mut self, now: Instant, block: u32) {
        let ips: Vec<Ipv4Addr> = self
            .addrs
            .keys()
            .copied()
            .filter(|ip| self.block_of(*ip) == Some(block))
            .collect();
        for ip in ips {
            self.counters.lost_with_block += 1;
            self.marked.remove(&ip);
            self.remove(now, ip, "its block is no longer ours");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{Node, NodeConfig, PoolConfig, ServiceConfig};
    use crate::persist::Change;
    use crate::testing::{Harness, claim};
    use crate::wire::NodeId;

    fn t(ms: u64) -> Instant {
        Instant::from_millis(1_000_000 + ms)
    }

    fn node(standby: u32, target: bool) -> Harness {
        let cfg = NodeConfig {
            pools: vec![PoolConfig {
                name: "hosts".into(),
                range: ManagedRange::new(Ipv4Addr::new(10, 5, 0, 0), 24, 3).unwrap(),
                claim: claim(2, 30, 0, false),
                service: ServiceConfig::Local(LocalConfig {
                    iface: "eth0".into(),
                    standby,
                    min: 0,
                    max_standby: standby + 1,
                    test_target: target.then_some((Ipv4Addr::new(10, 5, 0, 254), None)),
                    unmanaged: vec![(Ipv4Addr::new(10, 5, 0, 0), 25)],
                    timers: LocalTimers::default(),
                }),
                location: None,
            }],
            location: None,
            replicas: crate::replica::DEFAULT_REPLICAS,
            recover: false,
            max_replica_lag: crate::replica::DEFAULT_MAX_LAG,
            replica_sync: false,
        };
        let mut n = Harness::new(Node::new(cfg, NodeId([5; 8]), t(0), 3));
        for s in 0..=3 {
            n.handle_timeout(t(s * 1000));
        }
        assert_eq!(n.pool(0).blocks().owned_count(), 1);
        n
    }

    fn actions(n: &mut Harness) -> Vec<HostAction> {
        std::iter::from_fn(|| n.poll_host().map(|(_, a)| a)).collect()
    }

    fn state(n: &Harness, ip: Ipv4Addr) -> Option<&'static str> {
        n.pool(0)
            .local()
            .unwrap()
            .addresses()
            .find(|(a, _)| *a == ip)
            .map(|(_, a)| a.state.name())
    }

    #[test]
    fn addresses_walk_the_life_cycle_one_step_at_a_time() {
        let mut n = node(2, true);
        let adds: Vec<Ipv4Addr> = actions(&mut n)
            .into_iter()
            .filter_map(|a| match a {
                HostAction::Add { ip, prefix_len: 24 } => Some(ip),
                _ => None,
            })
            .collect();
        assert_eq!(adds.len(), 2, "two standby wanted");
        // Unmanaged 10.5.0.0/25: its blocks are never claimed, its addresses never added.
        assert!(adds.iter().all(|ip| ip.octets()[3] >= 128), "{adds:?}");
        let ip = adds[0];
        assert_eq!(state(&n, ip), Some("reserved"));
        n.handle_host(t(3100), 0, HostEvent::Added { ip });
        let a = actions(&mut n);
        assert!(a.contains(&HostAction::Announce { ip, burst: 3 }), "{a:?}");
        assert!(
            a.iter()
                .any(|x| matches!(x, HostAction::Probe { ip: p, .. } if *p == ip))
        );
        // Not proven yet: a socket on it changes nothing.
        let used = BTreeMap::from([(ip, "tcp listen :22".to_string())]);
        n.handle_host(t(3200), 0, HostEvent::InUse(used.clone()));
        assert_eq!(state(&n, ip), Some("reserved"));
        n.handle_host(t(3300), 0, HostEvent::ProbeResult { ip, ok: true });
        assert_eq!(state(&n, ip), Some("standby"));
        n.handle_host(t(3400), 0, HostEvent::InUse(used));
        assert_eq!(state(&n, ip), Some("active"));
        // Unused: active until the hysteresis has passed, then standby.
        n.handle_host(t(4000), 0, HostEvent::InUse(BTreeMap::new()));
        n.handle_timeout(t(20_000));
        assert_eq!(state(&n, ip), Some("active"));
        n.handle_timeout(t(34_100));
        assert_eq!(state(&n, ip), Some("standby"));
        let moves: Vec<(&str, &str)> = std::iter::from_fn(|| n.poll_event())
            .filter_map(|e| match e {
                crate::node::Event::Local {
                    ip: i, from, to, ..
                } if i == ip => Some((from, to)),
                _ => None,
            })
            .collect();
        assert_eq!(
            moves,
            vec![
                ("free", "reserved"),
                ("reserved", "standby"),
                ("standby", "active"),
                ("active", "standby")
            ]
        );
    }

    #[test]
    fn a_surplus_address_is_looked_at_again_before_it_goes() {
        let mut n = node(1, false);
        let ip = match actions(&mut n).as_slice() {
            [HostAction::Add { ip, .. }] => *ip,
            a => panic!("{a:?}"),
        };
        n.handle_host(t(3100), 0, HostEvent::Added { ip });
        assert_eq!(
            state(&n, ip),
            Some("standby"),
            "no test target: proven once added"
        );
        // mark-active: a third party uses it; the service adds a new standby one.
        let _ = actions(&mut n);
        n.handle_query(t(3200), 1, crate::node::Query::Mark { ip, active: true });
        assert_eq!(state(&n, ip), Some("active"));
        let new = match actions(&mut n).as_slice() {
            [HostAction::Add { ip, .. }] => *ip,
            a => panic!("{a:?}"),
        };
        n.handle_host(t(3300), 0, HostEvent::Added { ip: new });
        // Marked standby again: two standby, one too many. The newest standby one (the
        // one just marked) goes, but only after a fresh look at its use, and it stays when
        // a socket shows up.
        n.handle_query(t(3400), 2, crate::node::Query::Mark { ip, active: false });
        n.handle_timeout(t(3500));
        let a = actions(&mut n);
        assert!(a.contains(&HostAction::CheckUse { ip }), "{a:?}");
        assert!(
            !a.iter().any(|a| matches!(a, HostAction::Remove { .. })),
            "{a:?}"
        );
        assert_eq!(state(&n, new), Some("standby"));
        let used = BTreeMap::from([(ip, "udp :53".to_string())]);
        n.handle_host(t(3600), 0, HostEvent::InUse(used));
        assert_eq!(state(&n, ip), Some("active"));
        assert!(
            !actions(&mut n)
                .iter()
                .any(|a| matches!(a, HostAction::Remove { .. }))
        );
    }

    /// The local service's durable changes, without the pool's others.
    fn local_changes(n: &mut Harness) -> Vec<Change> {
        n.take_changes()
            .into_iter()
            .map(|(_, c)| c)
            .filter(|c| matches!(c, Change::Local { .. } | Change::LocalGone(_)))
            .collect()
    }

    /// A host that does at once what the node asks, with `used` as the sockets.
    fn serve(n: &mut Harness, now: Instant, used: &BTreeMap<Ipv4Addr, String>) {
        while let Some((_, a)) = n.poll_host() {
            let ev = match a {
                HostAction::Add { ip, .. } => HostEvent::Added { ip },
                HostAction::Remove { ip, .. } => HostEvent::Removed { ip },
                HostAction::CheckUse { .. } => HostEvent::InUse(used.clone()),
                HostAction::Probe { ip, .. } => HostEvent::ProbeResult { ip, ok: true },
                HostAction::Announce { .. } => continue,
            };
            n.handle_host(now, 0, ev);
        }
    }

    #[test]
    fn standby_active_marks_and_frees_are_stored_and_socket_polls_are_not() {
        let mut n = node(1, true);
        let ip = match actions(&mut n).as_slice() {
            [HostAction::Add { ip, .. }] => *ip,
            a => panic!("{a:?}"),
        };
        let held = |held| Change::Local { ip, held };
        n.handle_host(t(3100), 0, HostEvent::Added { ip });
        assert_eq!(
            local_changes(&mut n),
            vec![],
            "not stored while being proven"
        );
        n.handle_host(t(3200), 0, HostEvent::ProbeResult { ip, ok: true });
        assert_eq!(local_changes(&mut n), vec![held(LocalHeld::Standby)]);
        let none = BTreeMap::new();
        serve(&mut n, t(3200), &none);
        let used = BTreeMap::from([(ip, "tcp listen :22".to_string())]);
        n.handle_host(t(3300), 0, HostEvent::InUse(used.clone()));
        assert_eq!(state(&n, ip), Some("active"));
        // A new standby one takes its place (and is stored once proven).
        serve(&mut n, t(3300), &used);
        let other = n
            .pool(0)
            .local()
            .unwrap()
            .addresses()
            .find(|(a, s)| *a != ip && s.state == LocalState::Standby)
            .map(|(a, _)| a)
            .expect("a new standby address");
        assert_eq!(
            local_changes(&mut n),
            vec![
                held(LocalHeld::Active),
                Change::Local {
                    ip: other,
                    held: LocalHeld::Standby
                }
            ]
        );
        // Polls that change nothing write nothing, nor does the hysteresis starting.
        for k in 0..5 {
            n.handle_host(t(4300 + k * 1000), 0, HostEvent::InUse(used.clone()));
        }
        n.handle_host(t(9300), 0, HostEvent::InUse(none.clone()));
        serve(&mut n, t(9300), &none);
        assert_eq!(local_changes(&mut n), vec![]);
        n.handle_timeout(t(39_400));
        assert_eq!(local_changes(&mut n), vec![held(LocalHeld::Standby)]);
        // Now one standby too many: the newest (ip) is looked at and removed; freed, it
        // is gone from the store.
        serve(&mut n, t(39_400), &none);
        assert_eq!(state(&n, ip), None);
        assert_eq!(local_changes(&mut n), vec![Change::LocalGone(ip)]);
        // A mark is stored as such: a restart must not turn it into socket use.
        let mark = |ip, active| crate::node::Query::Mark { ip, active };
        n.handle_query(t(40_000), 1, mark(other, true));
        assert_eq!(
            local_changes(&mut n),
            vec![Change::Local {
                ip: other,
                held: LocalHeld::Marked
            }]
        );
        serve(&mut n, t(40_000), &none);
        let _ = local_changes(&mut n);
        n.handle_query(t(41_000), 2, mark(other, false));
        serve(&mut n, t(41_000), &none);
        assert_eq!(
            local_changes(&mut n),
            vec![
                Change::Local {
                    ip: other,
                    held: LocalHeld::Standby
                },
                Change::LocalGone(other)
            ],
            "marked standby, then surplus"
        );
    }

    /// A node restarted while learning, with its block's claim still honoured.
    fn restored(local: Vec<(Ipv4Addr, LocalHeld)>) -> Harness {
        let cfg = NodeConfig {
            pools: vec![PoolConfig {
                name: "hosts".into(),
                range: ManagedRange::new(Ipv4Addr::new(10, 5, 0, 0), 24, 3).unwrap(),
                claim: claim(2, 30, 0, true),
                service: ServiceConfig::Local(LocalConfig {
                    iface: "eth0".into(),
                    standby: 3,
                    min: 0,
                    max_standby: 4,
                    test_target: Some((Ipv4Addr::new(10, 5, 0, 254), None)),
                    unmanaged: vec![(Ipv4Addr::new(10, 5, 0, 0), 25)],
                    timers: LocalTimers::default(),
                }),
                location: None,
            }],
            location: None,
            replicas: crate::replica::DEFAULT_REPLICAS,
            recover: false,
            max_replica_lag: crate::replica::DEFAULT_MAX_LAG,
            replica_sync: false,
        };
        let mut n = Harness::new(Node::new(cfg, NodeId([5; 8]), t(0), 3));
        let ago = t(0) - Duration::from_secs(5);
        n.restore(
            t(0),
            vec![crate::persist::Restored {
                blocks: vec![(16, ago)],
                announced: Some((ago, 30)),
                local,
                ..Default::default()
            }],
        );
        n
    }

    #[test]
    fn a_restart_configures_stored_addresses_again_at_once() {
        let ip = |n| Ipv4Addr::new(10, 5, 0, n);
        let (active, standby, marked) = (ip(129), ip(130), ip(131));
        // Block 17 is not ours after the restart; 10.5.0.5 is unmanaged now.
        let (elsewhere, unmanaged) = (ip(137), ip(5));
        let mut n = restored(vec![
            (active, LocalHeld::Active),
            (standby, LocalHeld::Standby),
            (marked, LocalHeld::Marked),
            (elsewhere, LocalHeld::Active),
            (unmanaged, LocalHeld::Standby),
        ]);
        assert!(n.blocks().is_learning());
        let add = |ip| HostAction::Add { ip, prefix_len: 24 };
        assert_eq!(
            actions(&mut n),
            vec![add(active), add(standby), add(marked)],
            "at once, not after the learning phase or a timer"
        );
        assert_eq!(
            local_changes(&mut n),
            vec![Change::LocalGone(elsewhere), Change::LocalGone(unmanaged)]
        );
        assert_eq!(state(&n, active), Some("reserved"));
        // Held from the start: the block counts them as used.
        assert_eq!(n.pool(0).blocks().spare(), 8 - 3);
        // Active again as soon as the host has it; the duplicate report of the host's
        // start-up dump changes nothing.
        n.handle_host(t(10), 0, HostEvent::Added { ip: active });
        n.handle_host(t(11), 0, HostEvent::Added { ip: active });
        assert_eq!(state(&n, active), Some("active"));
        assert_eq!(n.pool(0).local().unwrap().counters.added, 1);
        // Standby: proven again first.
        n.handle_host(t(12), 0, HostEvent::Added { ip: standby });
        assert_eq!(state(&n, standby), Some("reserved"));
        let a = actions(&mut n);
        assert!(
            a.iter()
                .any(|x| matches!(x, HostAction::Probe { ip: p, .. } if *p == standby)),
            "{a:?}"
        );
        n.handle_host(
            t(20),
            0,
            HostEvent::ProbeResult {
                ip: standby,
                ok: true,
            },
        );
        assert_eq!(state(&n, standby), Some("standby"));
        n.handle_host(t(13), 0, HostEvent::Added { ip: marked });
        assert_eq!(state(&n, marked), Some("active"));
        assert_eq!(local_changes(&mut n), vec![], "the store has them already");
        assert!(
            n.blocks().is_learning(),
            "all of it during the learning phase"
        );
        // No socket on either: the one in use before goes standby after the hysteresis,
        // the marked one stays active until marked standby.
        n.handle_host(t(1000), 0, HostEvent::InUse(BTreeMap::new()));
        n.handle_timeout(t(31_100));
        assert_eq!(state(&n, active), Some("standby"));
        assert_eq!(state(&n, marked), Some("active"));
        n.handle_query(
            t(31_200),
            1,
            crate::node::Query::Mark {
                ip: marked,
                active: false,
            },
        );
        assert_eq!(state(&n, marked), Some("standby"));
        // The host still had the one whose block is gone: removed.
        n.handle_host(t(31_300), 0, HostEvent::Added { ip: elsewhere });
        assert!(actions(&mut n).contains(&HostAction::Remove {
            ip: elsewhere,
            prefix_len: 24
        }));
    }

    #[test]
    fn a_restored_address_the_host_cannot_take_is_freed_and_forgotten() {
        let ip = Ipv4Addr::new(10, 5, 0, 129);
        let mut n = restored(vec![(ip, LocalHeld::Active)]);
        let _ = local_changes(&mut n);
        n.handle_host(
            t(10),
            0,
            HostEvent::AddFailed {
                ip,
                reason: "10.5.0.129 is already configured on interface 3".into(),
            },
        );
        // Freed (and, as any free address, it may be picked again: then it is new, and
        // stored once proven).
        assert_eq!(local_changes(&mut n), vec![Change::LocalGone(ip)]);
        assert_eq!(n.pool(0).local().unwrap().counters.add_failed, 1);
    }

    #[test]
    fn set_local_moves_to_the_new_targets_at_once() {
        use crate::node::{Answer, Query};
        let mut n = node(2, false);
        let ips: Vec<Ipv4Addr> = actions(&mut n)
            .into_iter()
            .filter_map(|a| match a {
                HostAction::Add { ip, .. } => Some(ip),
                _ => None,
            })
            .collect();
        assert_eq!(ips.len(), 2);
        n.handle_host(t(3100), 0, HostEvent::Added { ip: ips[0] });
        n.handle_host(t(3200), 0, HostEvent::Added { ip: ips[1] });
        let _ = actions(&mut n);
        let set = |standby, max_standby, hysteresis| Query::SetLocal {
            pool: None,
            standby,
            min: None,
            max_standby,
            hysteresis,
        };
        // Refused as a whole: nothing changes.
        for (q, why) in [
            (
                set(Some(4), None, Some(5)),
                "max-standby (3) would be smaller than standby (4)",
            ),
            (
                set(Some(1), Some(999), None),
                "max-standby=999 is more than the 256 addresses",
            ),
            (
                set(Some(1), None, Some(0)),
                "hysteresis=0 must be between 1",
            ),
            (set(None, None, Some(86_401)), "hysteresis=86401"),
            (set(None, None, None), "nothing to change"),
            (
                Query::SetLocal {
                    pool: Some("x".into()),
                    standby: Some(1),
                    min: None,
                    max_standby: None,
                    hysteresis: None,
                },
                "no pool named 'x' (pools: hosts)",
            ),
        ] {
            n.handle_query(t(3300), 9, q);
            match n.poll_answer() {
                Some((9, Answer::Refused(e))) => assert!(e.contains(why), "{e}"),
                a => panic!("{a:?}"),
            }
        }
        let cfg = n.pool(0).local().unwrap().config().clone();
        assert_eq!((cfg.standby, cfg.max_standby), (2, 3));
        assert_eq!(cfg.timers.hysteresis, Duration::from_secs(30));
        assert!(actions(&mut n).is_empty());
        // Fewer standby: the newest goes at once, after a last look at its use.
        n.handle_query(t(3400), 10, set(Some(1), Some(1), Some(5)));
        assert_eq!(n.poll_answer(), Some((10, Answer::Done)));
        assert_eq!(actions(&mut n), vec![HostAction::CheckUse { ip: ips[1] }]);
        n.handle_host(t(3500), 0, HostEvent::InUse(BTreeMap::new()));
        assert_eq!(
            actions(&mut n),
            vec![HostAction::Remove {
                ip: ips[1],
                prefix_len: 24
            }]
        );
        n.handle_host(t(3600), 0, HostEvent::Removed { ip: ips[1] });
        assert_eq!(state(&n, ips[1]), None);
        // More standby: reserved at once in the block we own.
        n.handle_query(t(3700), 11, set(Some(3), Some(3), None));
        assert_eq!(n.poll_answer(), Some((11, Answer::Done)));
        let adds = actions(&mut n)
            .iter()
            .filter(|a| matches!(a, HostAction::Add { .. }))
            .count();
        assert_eq!(adds, 2);
        // The new hysteresis: unused for 5 s, standby again.
        let used = BTreeMap::from([(ips[0], "tcp listen :22".to_string())]);
        n.handle_host(t(3800), 0, HostEvent::InUse(used));
        assert_eq!(state(&n, ips[0]), Some("active"));
        n.handle_host(t(4000), 0, HostEvent::InUse(BTreeMap::new()));
        n.handle_timeout(t(8900));
        assert_eq!(state(&n, ips[0]), Some("active"));
        n.handle_timeout(t(9000));
        assert_eq!(state(&n, ips[0]), Some("standby"));
    }

    #[test]
    fn an_address_deleted_by_someone_else_comes_back_with_back_off() {
        let mut n = node(1, false);
        let ip = match actions(&mut n).as_slice() {
            [HostAction::Add { ip, .. }] => *ip,
            a => panic!("{a:?}"),
        };
        n.handle_host(t(3100), 0, HostEvent::Added { ip });
        let _ = actions(&mut n);
        n.handle_host(t(5000), 0, HostEvent::Removed { ip });
        assert_eq!(state(&n, ip), Some("standby"), "still ours");
        n.handle_timeout(t(5500));
        assert!(actions(&mut n).is_empty(), "waits for the back-off");
        n.handle_timeout(t(6000));
        assert_eq!(
            actions(&mut n),
            vec![HostAction::Add { ip, prefix_len: 24 }]
        );
        n.handle_host(t(6100), 0, HostEvent::Added { ip });
        assert_eq!(n.pool(0).local().unwrap().counters.deleted_by_others, 1);
        // A tagged address we do not hold, in a block we do not own, is removed.
        let stray = Ipv4Addr::new(10, 5, 0, 250);
        n.handle_host(t(6200), 0, HostEvent::Added { ip: stray });
        assert!(actions(&mut n).contains(&HostAction::Remove {
            ip: stray,
            prefix_len: 24
        }));
    }
}

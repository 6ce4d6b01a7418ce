//! Durable state under `--state-dir`: an append-only journal with group commit, and
//! snapshots that compaction writes in the background (the design of Kea's memfile with
//! its lease file cleanup). Why this and not an embedded database: `docs/storage.md`.
//!
//! Files in the directory:
//!
//! - `lock`: held with `flock` while a daemon runs, so two never share the state;
//! - `journal.<gen>`: [`Change`] records in the order the core made them;
//! - `snapshot.<gen>`: the state that all journals before `<gen>` add up to.
//!
//! One store holds the state of several pools (named ranges). Every file's header carries
//! the table of pools it was written for; records name their pool by its index in that
//! table. Loading reads the newest snapshot and the journals from its generation on. A
//! damaged record at the end of the newest journal is what a crash during an append leaves
//! (nothing after it was ever acknowledged, since replies wait for the sync), so the journal
//! is cut there; damage anywhere else is refused, like a pool stored with another network or
//! block size than configured.
//!
//! The pool set may change between runs. A file's table is the configuration of the daemon
//! that wrote it, and that daemon had dropped every pool its configuration lacked; so while
//! replaying, a pool missing from a file's table is dropped at that file, and a journal is
//! only appended to by a daemon with the same table (else it starts a new generation).
//! Files of format 1 (before pools: one range, no names) are read as the pool of that range,
//! and rewritten in format 2 by the next compaction.
//!
//! Writing happens on a thread of its own: the daemon appends encoded records to a shared
//! buffer, the thread writes whatever has gathered and syncs it once, and reports how far
//! the store is durable. Replies wait for that (see `daemon`), so many replies share one
//! sync and throughput does not collapse to the disk's sync rate.

#![allow(clippy::disallowed_methods)] // the shell: wall-clock time is the store's to map

pub mod codec;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::{error, info, warn};

use crate::hash::FxHashMap;
use crate::persist::{Change, LeaseRecord, LocalHeld, Restored, apply_allocation};
use crate::range::ManagedRange;
use crate::replica::{BlockReplica, apply_replica};
use crate::time::Instant;
use crate::wire::NodeId;
use codec::{FileKind, Format, Header, Pools, StoredRange, TableEntry};

/// A journal is compacted once it is larger than this and than the last snapshot, so the
/// store stays within about twice the live state plus this much.
pub const COMPACT_MIN_BYTES: u64 = 4 << 20;

/// One pool as the store knows it: the name is the key, the range is checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorePool {
    pub name: String,
    pub range: ManagedRange,
}

/// How the store is run.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    pub dir: PathBuf,
    /// The configured pools; a change's pool is its index here (see [`Store::append`]).
    pub pools: Vec<StorePool>,
    /// Sync every batch before replies go out (`--fsync on`). Off, the store survives a
    /// daemon crash (the data is in the page cache) but not a power loss.
    pub fsync: bool,
    /// `--commit-delay`: how long a batch waits for others before it is written, so that
    /// one sync covers several replies even when each packet is a batch of its own.
    pub commit_delay: Duration,
    pub compact_min_bytes: u64,
}

/// Queued bytes that end a commit delay early: the batch is big enough to be worth a sync.
const GROUP_BYTES: usize = 64 * 1024;

/// Batches closer together than this many commit delays make the writer wait for more.
const BUSY_FACTOR: u32 = 10;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "--state-dir {dir} is in use by another running ddhcpd; stop it or give this one another --state-dir"
    )]
    Locked { dir: String },
    /// A pool's state is for another range than configured: mixing them would put leases
    /// into blocks that mean other addresses. `pool` is `None` for a format-1 store whose
    /// range no configured pool has (`ours` then lists the configured ones).
    #[error("{}", mismatch_text(.dir, .pool.as_deref(), .stored, .ours))]
    Mismatch {
        dir: String,
        pool: Option<String>,
        stored: String,
        ours: String,
    },
    #[error("cannot keep the state of these pools: {why}")]
    Pools { why: String },
    #[error(
        "{file} is damaged at byte {offset} ({why}); move it out of the state directory to start without it (the leases in it are lost)"
    )]
    Corrupt {
        file: String,
        offset: u64,
        why: String,
    },
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
}

fn mismatch_text(dir: &str, pool: Option<&str>, stored: &str, ours: &str) -> String {
    let advice = "give another --state-dir or move the old state away";
    match pool {
        Some(pool) => format!(
            "--state-dir {dir} holds pool '{pool}' as {stored}, but this daemon configures it as {ours}; {advice}"
        ),
        None => format!(
            "--state-dir {dir} holds the state of {stored}, but no pool this daemon configures has that range ({ours}); {advice}"
        ),
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Maps core instants to wall-clock milliseconds and back, around one reading of both clocks.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    pub core_now: Instant,
    pub wall_now_ms: u64,
}

impl WallClock {
    pub fn now(core_now: Instant) -> Self {
        let wall_now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        WallClock {
            core_now,
            wall_now_ms,
        }
    }

    pub fn wall(&self, t: Instant) -> u64 {
        let delta = t.as_millis() as i128 - self.core_now.as_millis() as i128;
        (self.wall_now_ms as i128 + delta).clamp(0, u64::MAX as i128) as u64
    }

    pub fn core(&self, wall_ms: u64) -> Instant {
        let delta = wall_ms as i128 - self.wall_now_ms as i128;
        Instant::from_millis((self.core_now.as_millis() as i128 + delta).max(0) as u64)
    }

    /// A stored end (Unix ms) in core time, `None` once it passed: one rule for leases,
    /// holds and cooldowns, of our own blocks and of the replicas we hold.
    pub(crate) fn until_back(&self, until: Instant) -> Option<Instant> {
        (until.as_millis() > self.wall_now_ms).then(|| self.core(until.as_millis()))
    }

    /// A stored lease in core time, `None` once it ran out.
    pub(crate) fn lease_back(&self, mut l: LeaseRecord) -> Option<LeaseRecord> {
        l.until = self.until_back(l.until)?;
        Some(l)
    }

    /// A stored allocation in core time (allocations never run out).
    pub(crate) fn allocation_back(&self, mut a: crate::api::Allocation) -> crate::api::Allocation {
        a.since = self.core(a.since.as_millis());
        a
    }
}

/// The durable state, in wall-clock time (instants count from the Unix epoch): what
/// replaying the files gives, and what a snapshot holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    /// Keyed by pool name: names survive a reordered configuration, indexes would not.
    pub pools: BTreeMap<String, PoolState>,
}

impl State {
    /// Forgets bindings that ran out by `wall_ms`, in every pool.
    pub fn drop_expired(&mut self, wall_ms: u64) {
        for p in self.pools.values_mut() {
            p.drop_expired(wall_ms);
        }
    }

    /// Bindings (leases and quarantined addresses) in all pools.
    pub fn leases(&self) -> usize {
        self.pools.values().map(|p| p.leases.len()).sum()
    }

    /// Owned blocks in all pools.
    pub fn blocks(&self) -> usize {
        self.pools.values().map(|p| p.blocks.len()).sum()
    }

    /// The state of each of `pools` in core time, as the node takes it back, without what
    /// expired; a pool the store knows nothing of comes back empty. The wall clock is judged
    /// against the latest write of any pool: a clock that went back went back for all.
    pub fn into_restored(mut self, pools: &[StorePool], clock: &WallClock) -> Vec<Restored> {
        let last = self
            .pools
            .values()
            .map(PoolState::last_written)
            .max()
            .unwrap_or(0);
        let (clock, went_back) = trusted_clock(clock, last);
        pools
            .iter()
            .map(|p| {
                self.pools
                    .remove(&p.name)
                    .map_or_else(Restored::default, |s| s.restore(&clock, went_back))
            })
            .collect()
    }
}

/// The clock to restore with, and whether the wall clock reads earlier than `last_written`
/// (then it is held at that time: we assume no time passed, so leases keep at most what
/// they had left).
fn trusted_clock(clock: &WallClock, last_written: u64) -> (WallClock, bool) {
    if clock.wall_now_ms >= last_written {
        return (*clock, false);
    }
    warn!(
        behind_ms = last_written - clock.wall_now_ms,
        "the wall clock is behind the state store's last write; treating every claim as lapsed"
    );
    let held = WallClock {
        wall_now_ms: last_written,
        ..*clock
    };
    (held, true)
}

/// The durable state of one pool.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolState {
    pub blocks: BTreeMap<u32, Instant>,
    pub holds: BTreeMap<u32, Instant>,
    pub announced: Option<(Instant, u16)>,
    pub leases: FxHashMap<Ipv4Addr, LeaseRecord>,
    pub options: BTreeMap<u8, Option<Vec<u8>>>,
    /// Addresses the local service holds (standby or active).
    pub local: BTreeMap<Ipv4Addr, LocalHeld>,
    /// The allocation service's allocations, and released addresses cooling down.
    pub allocations: BTreeMap<Ipv4Addr, crate::api::Allocation>,
    pub cooling: BTreeMap<Ipv4Addr, Instant>,
    /// Replicas we hold of other nodes' blocks: origin, block, what it holds.
    pub replicas: BTreeMap<NodeId, BTreeMap<u32, BlockReplica>>,
}

impl PoolState {
    pub fn apply(&mut self, c: Change) {
        match c {
            Change::BlockOwned { block, since } => {
                self.blocks.insert(block, since);
            }
            Change::BlockGone { block } => {
                self.blocks.remove(&block);
                self.holds.remove(&block);
            }
            Change::BlockHold { block, until } => {
                self.holds.insert(block, until);
            }
            Change::Announced { at, ttl } => self.announced = Some((at, ttl)),
            Change::Lease(l) => {
                self.leases.insert(l.ip, l);
            }
            Change::LeaseGone(ip) => {
                self.leases.remove(&ip);
            }
            Change::Option { code, payload } => {
                self.options.insert(code, payload);
            }
            Change::Local { ip, held } => {
                self.local.insert(ip, held);
            }
            Change::LocalGone(ip) => {
                self.local.remove(&ip);
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
            Change::Replica {
                origin,
                block,
                change,
            } => {
                let blocks = self.replicas.entry(origin).or_default();
                apply_replica(blocks, block, *change);
                if blocks.is_empty() {
                    self.replicas.remove(&origin);
                }
            }
        }
    }

    /// Forgets bindings that ran out by `wall_ms`.
    pub fn drop_expired(&mut self, wall_ms: u64) {
        self.leases.retain(|_, l| l.until.as_millis() > wall_ms);
        self.holds.retain(|_, until| until.as_millis() > wall_ms);
        self.cooling.retain(|_, until| until.as_millis() > wall_ms);
        for r in self.replicas.values_mut().flat_map(BTreeMap::values_mut) {
            r.leases.retain(|_, l| l.until.as_millis() > wall_ms);
            r.cooling.retain(|_, until| until.as_millis() > wall_ms);
            r.hold = r.hold.filter(|until| until.as_millis() > wall_ms);
        }
    }

    /// Every record a snapshot of this state holds.
    pub fn records(&self) -> impl Iterator<Item = Change> + '_ {
        let blocks = self
            .blocks
            .iter()
            .map(|(&block, &since)| Change::BlockOwned { block, since });
        let holds = self
            .holds
            .iter()
            .map(|(&block, &until)| Change::BlockHold { block, until });
        let announced = self
            .announced
            .map(|(at, ttl)| Change::Announced { at, ttl });
        let options = self.options.iter().map(|(&code, p)| Change::Option {
            code,
            payload: p.clone(),
        });
        let leases = self.leases.values().cloned().map(Change::Lease);
        let local = self
            .local
            .iter()
            .map(|(&ip, &held)| Change::Local { ip, held });
        let allocations = self.allocations.iter().map(|(&ip, a)| Change::Allocated {
            ip,
            alloc: a.clone(),
        });
        let cooling = self.cooling.iter().map(|(&ip, &until)| Change::AllocGone {
            ip,
            cooldown: Some(until),
        });
        let replicas = self.replicas.iter().flat_map(|(&origin, blocks)| {
            blocks.iter().flat_map(move |(&block, r)| {
                // The block starts afresh, then its bindings.
                std::iter::once(Change::BlockOwned {
                    block,
                    since: Instant::ZERO,
                })
                .chain(r.records(block))
                .map(move |c| Change::Replica {
                    origin,
                    block,
                    change: Box::new(c),
                })
            })
        });
        blocks
            .chain(holds)
            .chain(announced)
            .chain(options)
            .chain(leases)
            .chain(local)
            .chain(allocations)
            .chain(cooling)
            .chain(replicas)
    }

    /// The latest wall-clock time the state mentions as "now" (last announcement, last
    /// block taken).
    fn last_written(&self) -> u64 {
        let announced = self.announced.map_or(0, |(at, _)| at.as_millis());
        let claimed = self.blocks.values().map(|t| t.as_millis()).max();
        announced.max(claimed.unwrap_or(0))
    }

    /// The state in core time, as a node of this one pool takes it back, without what
    /// expired. (For several pools, [`State::into_restored`] judges the clock once.)
    pub fn into_restored(self, clock: &WallClock) -> Restored {
        let (clock, went_back) = trusted_clock(clock, self.last_written());
        self.restore(&clock, went_back)
    }

    fn restore(self, clock: &WallClock, clock_went_back: bool) -> Restored {
        let leases: Vec<LeaseRecord> = self
            .leases
            .into_values()
            .filter_map(|l| clock.lease_back(l))
            .collect();
        Restored {
            blocks: self
                .blocks
                .into_iter()
                .map(|(b, since)| (b, clock.core(since.as_millis())))
                .collect(),
            holds: self
                .holds
                .into_iter()
                .filter_map(|(b, until)| Some((b, clock.until_back(until)?)))
                .collect(),
            announced: self
                .announced
                .map(|(at, ttl)| (clock.core(at.as_millis()), ttl)),
            leases,
            options: self.options.into_iter().collect(),
            local: self.local.into_iter().collect(),
            allocations: self
                .allocations
                .into_iter()
                .map(|(ip, a)| (ip, clock.allocation_back(a)))
                .collect(),
            cooling: self
                .cooling
                .into_iter()
                .filter_map(|(ip, until)| Some((ip, clock.until_back(until)?)))
                .collect(),
            replicas: self
                .replicas
                .into_iter()
                .flat_map(|(origin, blocks)| {
                    blocks
                        .into_iter()
                        .map(move |(block, r)| (origin, block, r.restore(clock)))
                })
                .collect(),
            clock_went_back,
        }
    }
}

/// What loading found, for the start-up log line and the benchmarks.
#[derive(Clone, Debug, Default)]
pub struct LoadInfo {
    pub files: usize,
    pub records: u64,
    pub bytes: u64,
    /// Bytes cut from the end of the newest journal (a torn write).
    pub truncated: u64,
    /// Generation of the journal to append to.
    pub journal_generation: u64,
    /// Whether that journal exists already (else it is to be created).
    pub journal_exists: bool,
    /// Size of the newest snapshot, for the compaction threshold.
    pub snapshot_bytes: u64,
    /// The newest journal was written for other pools, or in format 1: it is left as it is
    /// (its records index its own table) and the next generation is to be started.
    pub pools_changed: bool,
    /// Pools the store held that are not configured, with how many bindings each had:
    /// their state is not in the loaded [`State`].
    pub dropped: Vec<(String, usize)>,
}

fn file_name(kind: FileKind, generation: u64) -> String {
    match kind {
        FileKind::Journal => format!("journal.{generation:016x}"),
        FileKind::Snapshot => format!("snapshot.{generation:016x}"),
    }
}

/// Generations of the snapshots and journals in `dir`; removes leftovers of interrupted
/// compactions.
fn scan(dir: &Path) -> Result<(BTreeSet<u64>, BTreeSet<u64>), StoreError> {
    let mut snapshots = BTreeSet::new();
    let mut journals = BTreeSet::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".tmp") && name.starts_with("snapshot.") {
            let _ = fs::remove_file(entry.path());
            continue;
        }
        let parse = |p: &str| u64::from_str_radix(p, 16).ok();
        if let Some(g) = name.strip_prefix("snapshot.").and_then(parse) {
            snapshots.insert(g);
        } else if let Some(g) = name.strip_prefix("journal.").and_then(parse) {
            journals.insert(g);
        }
    }
    Ok((snapshots, journals))
}

/// Replays files in order, following which pools each is about.
struct Replay<'a> {
    dir: &'a Path,
    pools: &'a [StorePool],
    /// State of the named pools after the files read so far.
    named: BTreeMap<String, PoolState>,
    /// The table of the last format-2 file read.
    table: Option<Vec<TableEntry>>,
    /// State of format-1 files, which have no pool names. The first format-2 file after them
    /// was written by the daemon that migrated them, so its pool of that range is theirs;
    /// with no such file, the configured pool of that range is.
    v1: Option<(StoredRange, PoolState)>,
    /// A torn tail to cut off, once the store is known to be for our pools (a refused
    /// store is left as it is).
    cut: Option<(PathBuf, u64)>,
    info: LoadInfo,
}

impl Replay<'_> {
    /// Reads one file. With `torn_ok`, damage that an interrupted append leaves is cut off
    /// (and reported in the result); otherwise it is an error. Returns false for a journal
    /// whose header never made it to disk (created just before a crash): it holds nothing,
    /// and is to be created afresh.
    fn read_file(
        &mut self,
        path: &Path,
        kind: FileKind,
        torn_ok: bool,
    ) -> Result<bool, StoreError> {
        let data = fs::read(path).map_err(io_err(path))?;
        let corrupt = |offset: usize, why: String| StoreError::Corrupt {
            file: path.display().to_string(),
            offset: offset as u64,
            why,
        };
        let (header, start) = match Header::decode(&data) {
            Ok(h) => h,
            Err(codec::HeaderError::Short | codec::HeaderError::Crc)
                if torn_ok && codec::within_header(&data) =>
            {
                warn!(file = %path.display(), "journal without a complete header; starting it afresh");
                self.info.truncated += data.len() as u64;
                return Ok(false);
            }
            Err(e) => return Err(corrupt(0, e.to_string())),
        };
        if header.kind != kind {
            return Err(corrupt(10, "file kind does not match its name".into()));
        }
        let mut slots = self.enter(&header.pools, &corrupt)?;
        if let [only] = &mut slots[..] {
            // Room for every record being a lease, so the table never rehashes while loading.
            let more = (data.len() / 40).saturating_sub(only.leases.len());
            only.leases.reserve(more);
        }
        let format = header.format();
        let mut off = start;
        while off < data.len() {
            match codec::decode(&data[off..], format) {
                Ok((pool, change, n)) => {
                    let Some(slot) = slots.get_mut(usize::from(pool)) else {
                        let why = format!(
                            "record of pool {pool}, but the file's table has {} pools",
                            slots.len()
                        );
                        return Err(corrupt(off, why));
                    };
                    slot.apply(change);
                    self.info.records += 1;
                    off += n;
                }
                Err(e) if torn_ok && e.is_torn() && !intact_record_after(&data, off, format) => {
                    let cut = data.len() - off;
                    warn!(file = %path.display(), offset = off, bytes = cut, error = %e,
                          "torn record at the end of the journal (interrupted write); cutting it off");
                    self.cut = Some((path.to_path_buf(), off as u64));
                    self.info.truncated += cut as u64;
                    break;
                }
                Err(e) => return Err(corrupt(off, e.to_string())),
            }
        }
        if kind == FileKind::Journal {
            self.info.pools_changed = header.pools != Pools::V2(codec::table(self.pools));
        }
        self.leave(header.pools, slots);
        self.info.files += 1;
        self.info.bytes += data.len() as u64;
        Ok(true)
    }

    /// Takes out the state of the pools of a file's table, in its order.
    fn enter(
        &mut self,
        pools: &Pools,
        corrupt: &impl Fn(usize, String) -> StoreError,
    ) -> Result<Vec<PoolState>, StoreError> {
        match pools {
            Pools::V1(range) => {
                // Format 1 is never written, so no format-1 file follows a format-2 one.
                if self.table.is_some() {
                    return Err(corrupt(8, "a format-1 file after format-2 files".into()));
                }
                match self.v1.take() {
                    Some((r, st)) if r == *range => Ok(vec![st]),
                    Some((r, _)) => Err(corrupt(
                        11,
                        format!(
                            "format-1 file of {}, but the files before are of {}",
                            range.describe(),
                            r.describe()
                        ),
                    )),
                    None => Ok(vec![PoolState::default()]),
                }
            }
            Pools::V2(table) => {
                if let Some((range, st)) = self.v1.take()
                    && let Some(e) = table.iter().find(|e| e.range == range)
                {
                    self.named.insert(e.name.clone(), st);
                }
                for e in table {
                    let before = self.table.iter().flatten().find(|p| p.name == e.name);
                    if let Some(p) = before.filter(|p| p.range != e.range) {
                        let why = format!(
                            "pool '{}' is {} here but {} in the file before",
                            e.name,
                            e.range.describe(),
                            p.range.describe()
                        );
                        return Err(corrupt(codec::FIXED_LEN, why));
                    }
                }
                let slots = table
                    .iter()
                    .map(|e| self.named.remove(&e.name).unwrap_or_default())
                    .collect();
                // What this file's table lacks, the daemon that wrote it had dropped.
                self.named.clear();
                Ok(slots)
            }
        }
    }

    /// Puts back what [`Self::enter`] took out, with the file's records applied.
    fn leave(&mut self, pools: Pools, slots: Vec<PoolState>) {
        match pools {
            Pools::V1(range) => self.v1 = slots.into_iter().next().map(|s| (range, s)),
            Pools::V2(table) => {
                for (e, s) in table.iter().zip(slots) {
                    self.named.insert(e.name.clone(), s);
                }
                self.table = Some(table);
            }
        }
    }

    /// Checks what was read against the configured pools and drops the pools no longer
    /// configured.
    fn finish(mut self) -> Result<(State, LoadInfo), StoreError> {
        let dir = self.dir.display().to_string();
        let ours = |p: &StorePool| StoredRange::of(&p.range);
        if let Some((range, st)) = self.v1.take() {
            let Some(p) = self.pools.iter().find(|p| ours(p) == range) else {
                let stored = format!("{} (a store from before pools)", range.describe());
                // The range of a daemon from before pools is the pool it now calls default.
                if let Some(p) = self.pools.iter().find(|p| p.name == "default") {
                    return Err(StoreError::Mismatch {
                        dir,
                        pool: Some(p.name.clone()),
                        stored,
                        ours: ours(p).describe(),
                    });
                }
                let configured: Vec<String> = self
                    .pools
                    .iter()
                    .map(|p| format!("{}: {}", p.name, ours(p).describe()))
                    .collect();
                let configured = if configured.is_empty() {
                    "it configures none".to_string()
                } else {
                    configured.join(", ")
                };
                return Err(StoreError::Mismatch {
                    dir,
                    pool: None,
                    stored,
                    ours: configured,
                });
            };
            self.named.insert(p.name.clone(), st);
            self.table = Some(vec![TableEntry {
                name: p.name.clone(),
                range,
            }]);
        }
        for e in self.table.iter().flatten() {
            if let Some(p) = self.pools.iter().find(|p| p.name == e.name)
                && ours(p) != e.range
            {
                return Err(StoreError::Mismatch {
                    dir,
                    pool: Some(e.name.clone()),
                    stored: e.range.describe(),
                    ours: ours(p).describe(),
                });
            }
        }
        let pools = self.pools;
        let gone: Vec<String> = self
            .named
            .keys()
            .filter(|&n| !pools.iter().any(|p| p.name == *n))
            .cloned()
            .collect();
        for name in gone {
            let leases = self.named.remove(&name).map_or(0, |s| s.leases.len());
            self.info.dropped.push((name, leases));
        }
        self.named.retain(|_, s| *s != PoolState::default());
        if let Some((path, len)) = self.cut.take() {
            let f = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io_err(&path))?;
            f.set_len(len).map_err(io_err(&path))?;
            f.sync_all().map_err(io_err(&path))?;
        }
        Ok((State { pools: self.named }, self.info))
    }
}

/// A torn write damages only the end of a journal. An intact record after the damage
/// means the damage is something else (a bad sector, a bit flip), and cutting there would
/// drop acknowledged records. Tails longer than any append are treated the same way.
fn intact_record_after(data: &[u8], bad: usize, format: Format) -> bool {
    const MAX_TORN_TAIL: usize = 16 << 20;
    if data.len() - bad > MAX_TORN_TAIL {
        return true;
    }
    // A frame whose checksum holds counts, whether or not we understand its body: a record
    // of a kind a newer daemon wrote must not be cut off as if it were torn.
    (bad + 1..data.len()).any(|p| !codec::decode(&data[p..], format).is_err_and(|e| e.is_torn()))
}

/// Replays the store in `dir` for `pools`: the newest snapshot (up to generation `upto`),
/// then the journals after it. `recover`: cut a torn tail off the newest journal instead of
/// failing. Refuses a store that holds one of `pools` with another range; drops (and lists
/// in [`LoadInfo::dropped`]) the state of pools not in `pools`.
pub fn load(
    dir: &Path,
    pools: &[StorePool],
    upto: Option<u64>,
    recover: bool,
) -> Result<(State, LoadInfo), StoreError> {
    let (snapshots, journals) = scan(dir)?;
    let mut replay = Replay {
        dir,
        pools,
        named: BTreeMap::new(),
        table: None,
        v1: None,
        cut: None,
        info: LoadInfo::default(),
    };
    let snap = snapshots
        .iter()
        .rev()
        .find(|&&g| upto.is_none_or(|u| g <= u + 1))
        .copied();
    if let Some(g) = snap {
        let path = dir.join(file_name(FileKind::Snapshot, g));
        replay.read_file(&path, FileKind::Snapshot, false)?;
        replay.info.snapshot_bytes = fs::metadata(&path).map_or(0, |m| m.len());
        replay.info.journal_generation = g;
    }
    let first = snap.unwrap_or(0);
    let todo: Vec<u64> = journals
        .range(first..)
        .copied()
        .filter(|&g| upto.is_none_or(|u| g <= u))
        .collect();
    for (i, &g) in todo.iter().enumerate() {
        let last = i + 1 == todo.len();
        replay.info.journal_generation = g;
        let path = dir.join(file_name(FileKind::Journal, g));
        replay.info.journal_exists = replay.read_file(&path, FileKind::Journal, recover && last)?;
    }
    let (state, mut info) = replay.finish()?;
    if info.journal_exists && info.pools_changed {
        info.journal_generation += 1;
        info.journal_exists = false;
    } else {
        info.pools_changed = false;
    }
    Ok((state, info))
}

/// Syncs a directory, so files created or renamed in it survive a power loss.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates journal `generation` for `pools`, header synced; returns it and its size.
fn create_journal(dir: &Path, pools: &[StorePool], generation: u64) -> io::Result<(File, u64)> {
    let path = dir.join(file_name(FileKind::Journal, generation));
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)?;
    let header = Header::new(FileKind::Journal, pools, generation).encode();
    f.write_all(&header)?;
    f.sync_all()?;
    sync_dir(dir)?;
    Ok((f, header.len() as u64))
}

/// Writes the state of `pools` as snapshot `generation` (to a temporary name, synced, then
/// renamed), and returns its size. Pools of `state` not in `pools` are left out.
pub fn write_snapshot(
    dir: &Path,
    pools: &[StorePool],
    generation: u64,
    state: &State,
) -> io::Result<u64> {
    codec::check_table(&codec::table(pools))
        .map_err(|why| io::Error::new(io::ErrorKind::InvalidInput, why))?;
    let name = file_name(FileKind::Snapshot, generation);
    let tmp = dir.join(format!("{name}.tmp"));
    let f = File::create(&tmp)?;
    let mut w = io::BufWriter::with_capacity(1 << 20, f);
    let header = Header::new(FileKind::Snapshot, pools, generation).encode();
    w.write_all(&header)?;
    let mut buf = Vec::with_capacity(256);
    let mut size = header.len() as u64;
    for (i, p) in pools.iter().enumerate() {
        let Some(pool) = state.pools.get(&p.name) else {
            continue;
        };
        for c in pool.records() {
            buf.clear();
            // At most MAX_POOLS pools, checked above.
            codec::encode(i as u8, &c, |t| t.as_millis(), &mut buf);
            w.write_all(&buf)?;
            size += buf.len() as u64;
        }
    }
    let f = w.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)?;
    Ok(size)
}

/// Folds journals up to `generation` into snapshot `generation + 1` and deletes what it
/// replaces. Runs on its own thread, on files the writer no longer appends to.
fn compact(dir: &Path, pools: &[StorePool], generation: u64) -> Result<u64, StoreError> {
    let started = std::time::Instant::now();
    let (mut state, info) = load(dir, pools, Some(generation), false)?;
    state.drop_expired(WallClock::now(Instant::ZERO).wall_now_ms);
    let size = write_snapshot(dir, pools, generation + 1, &state).map_err(io_err(dir))?;
    let (snapshots, journals) = scan(dir)?;
    for g in journals.range(..=generation) {
        let _ = fs::remove_file(dir.join(file_name(FileKind::Journal, *g)));
    }
    for g in snapshots.range(..=generation) {
        let _ = fs::remove_file(dir.join(file_name(FileKind::Snapshot, *g)));
    }
    info!(
        generation = generation + 1,
        records_in = info.records,
        bytes_in = info.bytes,
        pools = state.pools.len(),
        leases = state.leases(),
        bytes_out = size,
        ms = started.elapsed().as_millis() as u64,
        "store compacted"
    );
    Ok(size)
}

/// How far the store is durable, as the writer thread reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Synced {
    /// Every batch up to this sequence number is on disk.
    pub seq: u64,
    /// Writing failed; nothing after `seq` will ever be durable.
    pub failed: bool,
}

#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    seq: u64,
    closing: bool,
}

type Shared = Arc<(Mutex<Pending>, Condvar)>;

/// What the writer has done, for metrics.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Batches written (and synced, with `--fsync on`).
    pub batches: AtomicU64,
    pub bytes: AtomicU64,
    /// Time spent writing and syncing, in microseconds.
    pub write_micros: AtomicU64,
    pub compactions: AtomicU64,
}

/// The open store: append batches, learn when they are durable.
pub struct Store {
    shared: Shared,
    pub stats: Arc<StoreStats>,
    /// How many pools the journal's table has.
    pools: usize,
    seq: u64,
    synced: tokio::sync::watch::Receiver<Synced>,
    writer: Option<JoinHandle<()>>,
    /// Held for the daemon's life: the `flock` on `dir/lock`.
    _lock: File,
}

/// Takes the directory's lock, creating the directory if needed.
fn lock(dir: &Path) -> Result<File, StoreError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let path = dir.join("lock");
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        return Err(if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            StoreError::Locked {
                dir: dir.display().to_string(),
            }
        } else {
            StoreError::Io {
                path: path.display().to_string(),
                source: e,
            }
        });
    }
    Ok(f)
}

impl Store {
    /// Locks the directory, loads what is there and starts the writer.
    pub fn open(opts: StoreOptions) -> Result<(Store, State, LoadInfo), StoreError> {
        codec::check_table(&codec::table(&opts.pools)).map_err(|why| StoreError::Pools { why })?;
        let lock = lock(&opts.dir)?;
        let (state, info) = load(&opts.dir, &opts.pools, None, true)?;
        for (pool, leases) in &info.dropped {
            warn!(pool = %pool, leases, "pool no longer configured; its state is dropped");
        }
        if info.pools_changed {
            info!(
                generation = info.journal_generation,
                "the configured pools are not those of the newest journal; starting a new one"
            );
        }
        let path = opts
            .dir
            .join(file_name(FileKind::Journal, info.journal_generation));
        let (file, size) = if info.journal_exists {
            let f = OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(io_err(&path))?;
            let size = f.metadata().map_err(io_err(&path))?.len();
            (f, size)
        } else {
            create_journal(&opts.dir, &opts.pools, info.journal_generation)
                .map_err(io_err(&path))?
        };
        let pools_len = opts.pools.len();
        let shared: Shared = Arc::default();
        let stats: Arc<StoreStats> = Arc::default();
        let (tx, rx) = tokio::sync::watch::channel(Synced::default());
        let writer = Writer {
            stats: stats.clone(),
            opts,
            file,
            generation: info.journal_generation,
            size,
            snapshot_bytes: info.snapshot_bytes,
            compactor: None,
        };
        let thread_shared = shared.clone();
        let handle = std::thread::Builder::new()
            .name("ddhcpd-store".into())
            .spawn(move || writer.run(thread_shared, tx))
            .map_err(io_err(Path::new("store writer thread")))?;
        Ok((
            Store {
                shared,
                stats,
                pools: pools_len,
                seq: 0,
                synced: rx,
                writer: Some(handle),
                _lock: lock,
            },
            state,
            info,
        ))
    }

    /// Queues changes for the writer, each with the index of its pool in
    /// [`StoreOptions::pools`]; returns the sequence number that becomes durable with them
    /// (unchanged if nothing was queued).
    pub fn append(&mut self, changes: &[(usize, Change)], clock: &WallClock) -> u64 {
        // A record of a pool outside the journal's table would make the journal unreadable;
        // losing the change is the lesser harm (and a bug to fix).
        let known = |&&(pool, _): &&(usize, Change)| pool < self.pools;
        if let Some((pool, _)) = changes.iter().find(|c| !known(c)) {
            debug_assert!(false, "change for pool {pool} of {}", self.pools);
            error!(
                pool,
                "change for a pool the store was not opened with; not stored"
            );
        }
        // A batch of nothing but Announced records is written without a sync and nothing
        // waits for it: a restart that finds an older one trusts our claims for less long
        // than peers do, which is safe. An idle node then never syncs for its refreshes,
        // and the claim that goes out with the refresh does not wait for the disk.
        let lazy = changes
            .iter()
            .all(|(_, c)| matches!(c, Change::Announced { .. }));
        let mut changes = changes.iter().filter(known).peekable();
        if changes.peek().is_none() {
            return self.seq;
        }
        let (lock, cv) = &*self.shared;
        let mut p = lock.lock().unwrap_or_else(|e| e.into_inner());
        let before = p.buf.len();
        for (pool, c) in changes {
            codec::encode(*pool as u8, c, |t| clock.wall(t), &mut p.buf);
        }
        if !lazy {
            self.seq += 1;
            p.seq = self.seq;
        }
        // The writer waits for a first byte, then (commit delay) for the batch to fill:
        // only those two moments need it woken, and a wake-up is a system call.
        if before == 0 || (before < GROUP_BYTES && p.buf.len() >= GROUP_BYTES) {
            cv.notify_one();
        }
        self.seq
    }

    /// The sequence number of the last batch appended.
    pub fn written(&self) -> u64 {
        self.seq
    }

    pub fn synced(&self) -> Synced {
        *self.synced.borrow()
    }

    /// Waits until the writer reports progress (or failure).
    pub async fn changed(&mut self) {
        if self.synced.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Waits until everything appended is durable (or failed), then stops the writer.
    pub fn close(mut self) -> Synced {
        {
            let (lock, cv) = &*self.shared;
            lock.lock().unwrap_or_else(|e| e.into_inner()).closing = true;
            cv.notify_one();
        }
        if let Some(h) = self.writer.take() {
            let _ = h.join();
        }
        *self.synced.borrow()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if self.writer.is_some() {
            let (lock, cv) = &*self.shared;
            lock.lock().unwrap_or_else(|e| e.into_inner()).closing = true;
            cv.notify_one();
        }
    }
}

struct Writer {
    stats: Arc<StoreStats>,
    opts: StoreOptions,
    file: File,
    generation: u64,
    size: u64,
    snapshot_bytes: u64,
    compactor: Option<JoinHandle<Result<u64, StoreError>>>,
}

impl Writer {
    fn run(mut self, shared: Shared, tx: tokio::sync::watch::Sender<Synced>) {
        let mut spare = Vec::new();
        let mut synced = 0;
        let mut last_woke = None;
        loop {
            let seq = {
                let (lock, cv) = &*shared;
                let mut p = lock.lock().unwrap_or_else(|e| e.into_inner());
                while p.buf.is_empty() && !p.closing {
                    p = cv.wait(p).unwrap_or_else(|e| e.into_inner());
                }
                if p.buf.is_empty() {
                    break;
                }
                // Group commit even when lightly loaded: what arrives within the delay
                // shares this write and its sync (the added latency is at most the delay).
                // Only while batches come close together: an idle node's lone batch has
                // nothing to wait for, and the wait would be one more wake-up.
                let woke = std::time::Instant::now();
                let busy = last_woke.is_some_and(|t: std::time::Instant| {
                    woke.duration_since(t) < self.opts.commit_delay * BUSY_FACTOR
                });
                last_woke = Some(woke);
                let until = woke + self.opts.commit_delay;
                while busy && !p.closing && p.buf.len() < GROUP_BYTES {
                    let left = until.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    p = cv
                        .wait_timeout(p, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                std::mem::swap(&mut p.buf, &mut spare);
                p.seq
            };
            // Nothing new to make durable (only lazy records): written, not synced, and
            // nobody is told.
            let sync = seq != synced;
            if let Err(e) = self.write(&spare, sync) {
                error!(error = %e, dir = %self.opts.dir.display(),
                       "cannot write the state store; no more replies will be sent");
                tx.send_replace(Synced {
                    seq: synced,
                    failed: true,
                });
                return;
            }
            spare.clear();
            if sync {
                synced = seq;
                tx.send_replace(Synced { seq, failed: false });
            }
            self.maybe_compact();
        }
        if let Some(c) = self.compactor.take() {
            let _ = c.join();
        }
    }

    fn write(&mut self, buf: &[u8], sync: bool) -> io::Result<()> {
        let started = std::time::Instant::now();
        self.file.write_all(buf)?;
        if sync && self.opts.fsync {
            self.file.sync_data()?;
        }
        self.size += buf.len() as u64;
        self.stats.batches.fetch_add(1, Relaxed);
        self.stats.bytes.fetch_add(buf.len() as u64, Relaxed);
        self.stats
            .write_micros
            .fetch_add(started.elapsed().as_micros() as u64, Relaxed);
        Ok(())
    }

    /// Starts a new journal and compacts the old ones in the background once the journal
    /// outgrows the live state.
    fn maybe_compact(&mut self) {
        if let Some(c) = &self.compactor {
            if !c.is_finished() {
                return;
            }
            match self.compactor.take().map(JoinHandle::join) {
                Some(Ok(Ok(size))) => {
                    self.snapshot_bytes = size;
                    self.stats.compactions.fetch_add(1, Relaxed);
                }
                Some(Ok(Err(e))) => error!(error = %e, "store compaction failed; will retry"),
                _ => error!("store compaction thread died"),
            }
        }
        if self.size < self.opts.compact_min_bytes.max(self.snapshot_bytes) {
            return;
        }
        let next = self.generation + 1;
        match create_journal(&self.opts.dir, &self.opts.pools, next) {
            Ok((f, size)) => {
                self.file = f;
                self.size = size;
            }
            Err(e) => {
                error!(error = %e, "cannot start a new journal; compaction postponed");
                return;
            }
        }
        let old = self.generation;
        self.generation = next;
        let dir = self.opts.dir.clone();
        let pools = self.opts.pools.clone();
        self.compactor = std::thread::Builder::new()
            .name("ddhcpd-compact".into())
            .spawn(move || compact(&dir, &pools, old))
            .ok();
    }
}

/// Time to load a store, for the start-up log.
pub fn describe_load(info: &LoadInfo, state: &State, took: Duration) -> String {
    format!(
        "{} pools, {} files, {} records, {} bytes, {} blocks, {} bindings in {} ms",
        state.pools.len(),
        info.files,
        info.records,
        info.bytes,
        state.blocks(),
        state.leases(),
        took.as_millis()
    )
}

#[cfg(test)]
mod tests;

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
//! Loading reads the newest snapshot and the journals from its generation on. A damaged
//! record at the end of the newest journal is what a crash during an append leaves (nothing
//! after it was ever acknowledged, since replies wait for the sync), so the journal is cut
//! there; damage anywhere else is refused, like a store of another network or block size.
//!
//! Writing happens on a thread of its own: the daemon appends encoded records to a shared
//! buffer, the thread writes whatever has gathered and syncs it once, and reports how far
//! the store is durable. Replies wait for that (see `daemon`), so many replies share one
//! sync and throughput does not collapse to the disk's sync rate.

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
use crate::persist::{Change, LeaseRecord, Restored};
use crate::range::ManagedRange;
use crate::time::Instant;
use codec::{FileKind, HEADER_LEN, Header};

/// A journal is compacted once it is larger than this and than the last snapshot, so the
/// store stays within about twice the live state plus this much.
pub const COMPACT_MIN_BYTES: u64 = 4 << 20;

/// How the store is run.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    pub dir: PathBuf,
    pub range: ManagedRange,
    /// Sync every batch before replies go out (`--fsync on`). Off, the store survives a
    /// daemon crash (the data is in the page cache) but not a power loss.
    pub fsync: bool,
    pub compact_min_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "--state-dir {dir} is in use by another running ddhcpd; stop it or give this one another --state-dir"
    )]
    Locked { dir: String },
    #[error(
        "--state-dir {dir} holds the state of {stored}, but this daemon manages {ours}; give another --state-dir or move the old state away"
    )]
    Mismatch {
        dir: String,
        stored: String,
        ours: String,
    },
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
}

/// The durable state, in wall-clock time (instants count from the Unix epoch): what
/// replaying the files gives, and what a snapshot holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    pub blocks: BTreeMap<u32, Instant>,
    pub holds: BTreeMap<u32, Instant>,
    pub announced: Option<(Instant, u16)>,
    pub leases: FxHashMap<Ipv4Addr, LeaseRecord>,
    pub options: BTreeMap<u8, Option<Vec<u8>>>,
}

impl State {
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
        }
    }

    /// Forgets bindings that ran out by `wall_ms`.
    pub fn drop_expired(&mut self, wall_ms: u64) {
        self.leases.retain(|_, l| l.until.as_millis() > wall_ms);
        self.holds.retain(|_, until| until.as_millis() > wall_ms);
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
        blocks
            .chain(holds)
            .chain(announced)
            .chain(options)
            .chain(leases)
    }

    /// The latest wall-clock time the state mentions as "now" (last announcement, last
    /// block taken).
    fn last_written(&self) -> u64 {
        let announced = self.announced.map_or(0, |(at, _)| at.as_millis());
        let claimed = self.blocks.values().map(|t| t.as_millis()).max();
        announced.max(claimed.unwrap_or(0))
    }

    /// The state in core time, as the node takes it back, without what expired.
    pub fn into_restored(self, clock: &WallClock) -> Restored {
        let last = self.last_written();
        let clock_went_back = clock.wall_now_ms < last;
        let clock = &if clock_went_back {
            warn!(
                behind_ms = last - clock.wall_now_ms,
                "the wall clock is behind the state store's last write; treating every claim as lapsed"
            );
            // Assume no time passed: leases keep at most what they had left.
            WallClock {
                wall_now_ms: last,
                ..*clock
            }
        } else {
            *clock
        };
        let leases: Vec<LeaseRecord> = self
            .leases
            .into_values()
            .filter(|l| l.until.as_millis() > clock.wall_now_ms)
            .map(|mut l| {
                l.until = clock.core(l.until.as_millis());
                l
            })
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
                .filter(|(_, until)| until.as_millis() > clock.wall_now_ms)
                .map(|(b, until)| (b, clock.core(until.as_millis())))
                .collect(),
            announced: self
                .announced
                .map(|(at, ttl)| (clock.core(at.as_millis()), ttl)),
            leases,
            options: self.options.into_iter().collect(),
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

/// Reads one file into `state`. With `torn_ok`, damage that an interrupted append leaves
/// is cut off (and reported in the result); otherwise it is an error.
fn read_file(
    path: &Path,
    kind: FileKind,
    range: &ManagedRange,
    torn_ok: bool,
    state: &mut State,
    info: &mut LoadInfo,
) -> Result<(), StoreError> {
    let data = fs::read(path).map_err(io_err(path))?;
    let corrupt = |offset: usize, why: String| StoreError::Corrupt {
        file: path.display().to_string(),
        offset: offset as u64,
        why,
    };
    let header = match Header::decode(&data) {
        Ok(h) => h,
        // A journal whose header never made it to disk: created just before a crash. (The
        // header is synced before any record is appended, so one followed by records is
        // damage, not a torn write.)
        Err(codec::HeaderError::Short | codec::HeaderError::Crc)
            if torn_ok && data.len() <= HEADER_LEN =>
        {
            warn!(file = %path.display(), "journal without a complete header; starting it afresh");
            info.truncated += data.len() as u64;
            let mut f = OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(path)
                .map_err(io_err(path))?;
            f.write_all(&Header::new(kind, range, info.journal_generation).encode())
                .and_then(|()| f.sync_all())
                .map_err(io_err(path))?;
            return Ok(());
        }
        Err(e) => return Err(corrupt(0, e.to_string())),
    };
    if header.kind != kind {
        return Err(corrupt(10, "file kind does not match its name".into()));
    }
    if !header.matches(range) {
        let dir = path.parent().unwrap_or(Path::new("."));
        return Err(StoreError::Mismatch {
            dir: dir.display().to_string(),
            stored: header.describe(),
            ours: Header::new(kind, range, 0).describe(),
        });
    }
    // Room for every record being a lease, so the table never rehashes while loading.
    state
        .leases
        .reserve((data.len() / 40).saturating_sub(state.leases.len()));
    let mut off = HEADER_LEN;
    while off < data.len() {
        match codec::decode(&data[off..]) {
            Ok((change, n)) => {
                state.apply(change);
                info.records += 1;
                off += n;
            }
            Err(e) if torn_ok && e.is_torn() && !intact_record_after(&data, off) => {
                let cut = data.len() - off;
                warn!(file = %path.display(), offset = off, bytes = cut, error = %e,
                      "torn record at the end of the journal (interrupted write); cutting it off");
                let f = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(io_err(path))?;
                f.set_len(off as u64).map_err(io_err(path))?;
                f.sync_all().map_err(io_err(path))?;
                info.truncated += cut as u64;
                break;
            }
            Err(e) => return Err(corrupt(off, e.to_string())),
        }
    }
    info.files += 1;
    info.bytes += data.len() as u64;
    Ok(())
}

/// A torn write damages only the end of a journal. An intact record after the damage
/// means the damage is something else (a bad sector, a bit flip), and cutting there would
/// drop acknowledged records. Tails longer than any append are treated the same way.
fn intact_record_after(data: &[u8], bad: usize) -> bool {
    const MAX_TORN_TAIL: usize = 16 << 20;
    if data.len() - bad > MAX_TORN_TAIL {
        return true;
    }
    (bad + 1..data.len()).any(|p| codec::decode(&data[p..]).is_ok())
}

/// Replays the store in `dir`: the newest snapshot (up to generation `upto`), then the
/// journals after it. `recover`: cut a torn tail off the newest journal instead of failing.
pub fn load(
    dir: &Path,
    range: &ManagedRange,
    upto: Option<u64>,
    recover: bool,
) -> Result<(State, LoadInfo), StoreError> {
    let (snapshots, journals) = scan(dir)?;
    let mut state = State::default();
    let mut info = LoadInfo::default();
    let snap = snapshots
        .iter()
        .rev()
        .find(|&&g| upto.is_none_or(|u| g <= u + 1))
        .copied();
    if let Some(g) = snap {
        let path = dir.join(file_name(FileKind::Snapshot, g));
        read_file(
            &path,
            FileKind::Snapshot,
            range,
            false,
            &mut state,
            &mut info,
        )?;
        info.snapshot_bytes = fs::metadata(&path).map_or(0, |m| m.len());
        info.journal_generation = g;
    }
    let first = snap.unwrap_or(0);
    let todo: Vec<u64> = journals
        .range(first..)
        .copied()
        .filter(|&g| upto.is_none_or(|u| g <= u))
        .collect();
    for (i, &g) in todo.iter().enumerate() {
        let last = i + 1 == todo.len();
        info.journal_generation = g;
        let path = dir.join(file_name(FileKind::Journal, g));
        read_file(
            &path,
            FileKind::Journal,
            range,
            recover && last,
            &mut state,
            &mut info,
        )?;
        info.journal_exists = true;
    }
    Ok((state, info))
}

/// Syncs a directory, so files created or renamed in it survive a power loss.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn create_journal(dir: &Path, range: &ManagedRange, generation: u64) -> io::Result<File> {
    let path = dir.join(file_name(FileKind::Journal, generation));
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)?;
    f.write_all(&Header::new(FileKind::Journal, range, generation).encode())?;
    f.sync_all()?;
    sync_dir(dir)?;
    Ok(f)
}

/// Writes `state` as snapshot `generation` (to a temporary name, synced, then renamed),
/// and returns its size.
pub fn write_snapshot(
    dir: &Path,
    range: &ManagedRange,
    generation: u64,
    state: &State,
) -> io::Result<u64> {
    let name = file_name(FileKind::Snapshot, generation);
    let tmp = dir.join(format!("{name}.tmp"));
    let f = File::create(&tmp)?;
    let mut w = io::BufWriter::with_capacity(1 << 20, f);
    w.write_all(&Header::new(FileKind::Snapshot, range, generation).encode())?;
    let mut buf = Vec::with_capacity(256);
    let mut size = HEADER_LEN as u64;
    for c in state.records() {
        buf.clear();
        codec::encode(&c, |t| t.as_millis(), &mut buf);
        w.write_all(&buf)?;
        size += buf.len() as u64;
    }
    let f = w.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)?;
    Ok(size)
}

/// Folds journals up to `generation` into snapshot `generation + 1` and deletes what it
/// replaces. Runs on its own thread, on files the writer no longer appends to.
fn compact(dir: &Path, range: &ManagedRange, generation: u64) -> Result<u64, StoreError> {
    let started = std::time::Instant::now();
    let (mut state, info) = load(dir, range, Some(generation), false)?;
    state.drop_expired(WallClock::now(Instant::ZERO).wall_now_ms);
    let size = write_snapshot(dir, range, generation + 1, &state).map_err(io_err(dir))?;
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
        leases = state.leases.len(),
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
        let lock = lock(&opts.dir)?;
        let (state, info) = load(&opts.dir, &opts.range, None, true)?;
        let path = opts
            .dir
            .join(file_name(FileKind::Journal, info.journal_generation));
        let file = if info.journal_exists {
            OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(io_err(&path))?
        } else {
            create_journal(&opts.dir, &opts.range, info.journal_generation)
                .map_err(io_err(&path))?
        };
        let size = file.metadata().map_err(io_err(&path))?.len();
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
                seq: 0,
                synced: rx,
                writer: Some(handle),
                _lock: lock,
            },
            state,
            info,
        ))
    }

    /// Queues changes for the writer; returns the sequence number that becomes durable
    /// with them (unchanged if `changes` is empty).
    pub fn append(&mut self, changes: &[Change], clock: &WallClock) -> u64 {
        if changes.is_empty() {
            return self.seq;
        }
        let (lock, cv) = &*self.shared;
        let mut p = lock.lock().unwrap_or_else(|e| e.into_inner());
        for c in changes {
            codec::encode(c, |t| clock.wall(t), &mut p.buf);
        }
        self.seq += 1;
        p.seq = self.seq;
        cv.notify_one();
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
                std::mem::swap(&mut p.buf, &mut spare);
                p.seq
            };
            if let Err(e) = self.write(&spare) {
                error!(error = %e, dir = %self.opts.dir.display(),
                       "cannot write the state store; no more replies will be sent");
                tx.send_replace(Synced {
                    seq: synced,
                    failed: true,
                });
                return;
            }
            spare.clear();
            synced = seq;
            tx.send_replace(Synced { seq, failed: false });
            self.maybe_compact();
        }
        if let Some(c) = self.compactor.take() {
            let _ = c.join();
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<()> {
        let started = std::time::Instant::now();
        self.file.write_all(buf)?;
        if self.opts.fsync {
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
        match create_journal(&self.opts.dir, &self.opts.range, next) {
            Ok(f) => {
                self.file = f;
                self.size = HEADER_LEN as u64;
            }
            Err(e) => {
                error!(error = %e, "cannot start a new journal; compaction postponed");
                return;
            }
        }
        let old = self.generation;
        self.generation = next;
        let dir = self.opts.dir.clone();
        let range = self.opts.range;
        self.compactor = std::thread::Builder::new()
            .name("ddhcpd-compact".into())
            .spawn(move || compact(&dir, &range, old))
            .ok();
    }
}

/// Time to load a store, for the start-up log.
pub fn describe_load(info: &LoadInfo, state: &State, took: Duration) -> String {
    format!(
        "{} files, {} records, {} bytes, {} blocks, {} bindings in {} ms",
        info.files,
        info.records,
        info.bytes,
        state.blocks.len(),
        state.leases.len(),
        took.as_millis()
    )
}

#[cfg(test)]
mod tests;

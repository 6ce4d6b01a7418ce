//! Storage-engine comparison for durable leases: an append-only journal with group commit
//! (our choice, like Kea's memfile) against an embedded B-tree database (redb).
//!
//! The choice of engine has to rest on measured numbers, not on folklore, so this program
//! measures the three things that matter for a DHCP server's lease store:
//!
//! 1. durable write throughput with 1, 64 and 512 leases per durability point (group commit:
//!    one sync per batch), with and without the sync;
//! 2. the time to reload every lease into memory at start-up, and the bytes on disk per lease;
//! 3. file growth under repeated updates of the same leases (why a journal needs compaction).
//!
//! Run it with `cargo bench --bench storage_engines`; it prints markdown tables on stdout and
//! progress on stderr. Environment variables scale it:
//!
//! * `BENCH_DIR` — where the files go (default `target/storage-bench` in the crate). It must be
//!   a real disk (not tmpfs), or the syncs measure nothing. The files are removed at the end.
//! * `BENCH_SECS` — duration of each write case (default 3). A case also stops once its file
//!   reaches 512 MiB, which bounds the disk space and dirty page cache of the unsynced cases.
//! * `BENCH_RELOAD_N` — leases in the reload store (default 1,000,000).
//! * `BENCH_AMP_N`, `BENCH_AMP_KEYS` — updates and distinct keys of the growth workload
//!   (defaults 1,000,000 and 10,000).
#![allow(clippy::disallowed_methods)] // outside the core: real clocks and OS randomness

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

const LEASES: TableDefinition<u32, &[u8]> = TableDefinition::new("leases");

/// First address of the key space (10.0.0.0).
const BASE_ADDR: u32 = 0x0A00_0000;
/// Live leases in the write-throughput cases: a /16.
const WRITE_KEYS: u32 = 1 << 16;
const BATCH_SIZES: [usize; 3] = [1, 64, 512];
/// Batch size (records per durability point) of the growth workload.
const AMP_BATCH: usize = 512;
/// Records per commit when building the reload store.
const BUILD_BATCH: usize = 1 << 16;
/// A write case stops early once its file reaches this size.
const MAX_CASE_BYTES: u64 = 512 << 20;

// ---------------------------------------------------------------------------------------------
// The lease record
// ---------------------------------------------------------------------------------------------

/// A lease as the daemon would persist it; the key is the IPv4 address.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Lease {
    expiry: u64,
    /// Client last transaction time.
    cltt: u64,
    hw_addr: [u8; 6],
    flags: u16,
    client_key: [u8; 8],
    valid_lifetime: u32,
    owner_node: u32,
}

impl Lease {
    const ENCODED_LEN: usize = 40;

    /// A deterministic lease for `addr`, varied by `seq` so that updates change the value.
    fn sample(addr: u32, seq: u64) -> Self {
        let a = addr.to_be_bytes();
        Lease {
            expiry: 1_700_000_000 + seq,
            cltt: 1_699_996_400 + seq,
            hw_addr: [0x02, 0x00, a[0], a[1], a[2], a[3]],
            flags: (seq & 0x3) as u16,
            client_key: (u64::from(addr) << 8 | (seq & 0xff)).to_le_bytes(),
            valid_lifetime: 3600,
            owner_node: addr % 7,
        }
    }

    fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut b = [0u8; Self::ENCODED_LEN];
        b[0..8].copy_from_slice(&self.expiry.to_le_bytes());
        b[8..16].copy_from_slice(&self.cltt.to_le_bytes());
        b[16..22].copy_from_slice(&self.hw_addr);
        b[22..24].copy_from_slice(&self.flags.to_le_bytes());
        b[24..32].copy_from_slice(&self.client_key);
        b[32..36].copy_from_slice(&self.valid_lifetime.to_le_bytes());
        b[36..40].copy_from_slice(&self.owner_node.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Result<Self> {
        ensure!(b.len() == Self::ENCODED_LEN, "lease of {} bytes", b.len());
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
        Ok(Lease {
            expiry: u64_at(0),
            cltt: u64_at(8),
            hw_addr: b[16..22].try_into().unwrap(),
            flags: u16::from_le_bytes([b[22], b[23]]),
            client_key: b[24..32].try_into().unwrap(),
            valid_lifetime: u32_at(32),
            owner_node: u32_at(36),
        })
    }
}

/// The `i`-th key of a workload over `n` addresses, scattered (Fibonacci hashing) so that
/// consecutive writes do not hit neighbouring B-tree leaves.
fn scattered_key(i: u64, n: u32) -> u32 {
    BASE_ADDR + ((i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % u64::from(n)) as u32
}

/// Writes leases `0..n` (sequential addresses) in batches of `batch`.
fn preload(store: &mut dyn LeaseStore, n: u32, batch: usize) -> Result<()> {
    let mut buf = Vec::with_capacity(batch);
    for addr in BASE_ADDR..BASE_ADDR + n {
        buf.push((addr, Lease::sample(addr, 0)));
        if buf.len() == batch {
            store.write_batch(&buf)?;
            buf.clear();
        }
    }
    if !buf.is_empty() {
        store.write_batch(&buf)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Engines
// ---------------------------------------------------------------------------------------------

/// A lease store open for writing.
trait LeaseStore {
    /// Persists `batch` with one durability point (if the engine is durable).
    fn write_batch(&mut self, batch: &[(u32, Lease)]) -> Result<()>;
    /// Shrinks the file to the live set.
    fn compact(&mut self) -> Result<()>;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Engine {
    /// Append-only journal; `sync` = fdatasync after every batch.
    Journal { sync: bool },
    /// redb; `durable` = `Durability::Immediate` (the default) rather than `Durability::None`.
    Redb { durable: bool },
}

impl Engine {
    const ALL: [Engine; 4] = [
        Engine::Journal { sync: true },
        Engine::Journal { sync: false },
        Engine::Redb { durable: true },
        Engine::Redb { durable: false },
    ];

    /// The engine without its durability setting.
    fn name(self) -> &'static str {
        match self {
            Engine::Journal { .. } => "journal",
            Engine::Redb { .. } => "redb",
        }
    }

    fn syncs(self) -> bool {
        matches!(
            self,
            Engine::Journal { sync: true } | Engine::Redb { durable: true }
        )
    }

    fn label(self) -> &'static str {
        match self {
            Engine::Journal { sync: true } => "journal + fdatasync",
            Engine::Journal { sync: false } => "journal, no sync",
            Engine::Redb { durable: true } => "redb, Durability::Immediate",
            Engine::Redb { durable: false } => "redb, Durability::None",
        }
    }

    fn file_name(self) -> &'static str {
        match self {
            Engine::Journal { .. } => "leases.journal",
            Engine::Redb { .. } => "leases.redb",
        }
    }

    /// Opens the store at `path` for writing, creating it if needed.
    fn open(self, path: &Path) -> Result<Box<dyn LeaseStore>> {
        Ok(match self {
            Engine::Journal { sync } => Box::new(Journal::open(path, sync)?),
            Engine::Redb { durable } => Box::new(Redb::open(path, durable)?),
        })
    }

    /// Creates an empty store at `path` (replacing any file there).
    fn create(self, path: &Path) -> Result<Box<dyn LeaseStore>> {
        remove_if_exists(path)?;
        self.open(path)
    }

    /// Opens the store at `path` and loads every lease: the start-up path of the daemon.
    fn load(self, path: &Path) -> Result<HashMap<u32, Lease>> {
        match self {
            Engine::Journal { .. } => Journal::load(path),
            Engine::Redb { .. } => Redb::load(path),
        }
    }
}

/// Append-only journal of frames `u32 len LE | u32 crc32(body) LE | body`, where
/// body = `u32 addr LE | encoded lease`. The last frame for an address wins.
struct Journal {
    path: PathBuf,
    file: File,
    sync: bool,
    buf: Vec<u8>,
}

impl Journal {
    const BODY_LEN: usize = 4 + Lease::ENCODED_LEN;
    const FRAME_LEN: usize = 8 + Self::BODY_LEN;

    fn open(path: &Path, sync: bool) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("open {}", path.display()))?;
        Ok(Journal {
            path: path.to_owned(),
            file,
            sync,
            buf: Vec::new(),
        })
    }

    fn append_frame(buf: &mut Vec<u8>, addr: u32, lease: &Lease) {
        let mut body = [0u8; Self::BODY_LEN];
        body[..4].copy_from_slice(&addr.to_le_bytes());
        body[4..].copy_from_slice(&lease.encode());
        buf.extend_from_slice(&(Self::BODY_LEN as u32).to_le_bytes());
        buf.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        buf.extend_from_slice(&body);
    }

    fn load(path: &Path) -> Result<HashMap<u32, Lease>> {
        let data = fs::read(path).with_context(|| format!("read {}", path.display()))?;
        let mut map = HashMap::new();
        let mut rest = data.as_slice();
        while !rest.is_empty() {
            ensure!(rest.len() >= 8, "truncated frame header");
            let len = u32::from_le_bytes(rest[0..4].try_into().unwrap()) as usize;
            let crc = u32::from_le_bytes(rest[4..8].try_into().unwrap());
            ensure!(rest.len() >= 8 + len, "truncated frame body");
            let body = &rest[8..8 + len];
            ensure!(crc32fast::hash(body) == crc, "CRC mismatch");
            ensure!(len == Self::BODY_LEN, "frame of {len} bytes");
            let addr = u32::from_le_bytes(body[0..4].try_into().unwrap());
            map.insert(addr, Lease::decode(&body[4..])?);
            rest = &rest[8 + len..];
        }
        Ok(map)
    }
}

impl LeaseStore for Journal {
    fn write_batch(&mut self, batch: &[(u32, Lease)]) -> Result<()> {
        self.buf.clear();
        for (addr, lease) in batch {
            Self::append_frame(&mut self.buf, *addr, lease);
        }
        self.file.write_all(&self.buf)?;
        if self.sync {
            self.file.sync_data()?; // fdatasync(2)
        }
        Ok(())
    }

    /// Rewrites the live set into a new file, syncs it and renames it over the journal.
    fn compact(&mut self) -> Result<()> {
        let live = Self::load(&self.path)?;
        let tmp = self.path.with_extension("compact");
        let mut buf = Vec::with_capacity(live.len() * Self::FRAME_LEN);
        for (addr, lease) in &live {
            Self::append_frame(&mut buf, *addr, lease);
        }
        let mut file = File::create(&tmp)?;
        file.write_all(&buf)?;
        file.sync_all()?;
        fs::rename(&tmp, &self.path)?;
        File::open(self.path.parent().unwrap())?.sync_all()?;
        self.file = Journal::open(&self.path, self.sync)?.file;
        Ok(())
    }
}

struct Redb {
    db: Database,
    durability: Durability,
}

impl Redb {
    /// Opens the database at `path`, initialising it if the file is missing or empty.
    fn open(path: &Path, durable: bool) -> Result<Self> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(LEASES)?;
        txn.commit()?;
        let durability = if durable {
            Durability::Immediate
        } else {
            Durability::None
        };
        Ok(Redb { db, durability })
    }

    fn load(path: &Path) -> Result<HashMap<u32, Lease>> {
        let db = Database::open(path)?;
        let txn = db.begin_read()?;
        let table = txn.open_table(LEASES)?;
        let mut map = HashMap::new();
        for entry in table.iter()? {
            let (addr, lease) = entry?;
            map.insert(addr.value(), Lease::decode(lease.value())?);
        }
        Ok(map)
    }
}

impl LeaseStore for Redb {
    fn write_batch(&mut self, batch: &[(u32, Lease)]) -> Result<()> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(self.durability)?;
        {
            let mut table = txn.open_table(LEASES)?;
            for (addr, lease) in batch {
                table.insert(*addr, lease.encode().as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    fn compact(&mut self) -> Result<()> {
        // Compaction may need several passes to move every page it can.
        while self.db.compact()? {}
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The three measurements
// ---------------------------------------------------------------------------------------------

struct WriteResult {
    records_per_sec: f64,
    batches_per_sec: f64,
    secs: f64,
}

/// Updates leases of a preloaded /16 for `duration` (or until the file reaches
/// `MAX_CASE_BYTES`), `batch` records per durability point.
fn bench_writes(
    engine: Engine,
    path: &Path,
    batch: usize,
    duration: Duration,
) -> Result<WriteResult> {
    let mut store = engine.create(path)?;
    preload(store.as_mut(), WRITE_KEYS, 4096)?;
    // Write back the preload (and earlier cases' leftovers) before the clock starts.
    flush_filesystem(path)?;

    let mut buf = Vec::with_capacity(batch);
    let (mut records, mut batches) = (0u64, 0u64);
    let start = Instant::now();
    while start.elapsed() < duration && (batches % 256 != 0 || file_size(path)? < MAX_CASE_BYTES) {
        buf.clear();
        buf.extend((0..batch as u64).map(|j| {
            let seq = records + j;
            let addr = scattered_key(seq, WRITE_KEYS);
            (addr, Lease::sample(addr, seq))
        }));
        store.write_batch(&buf)?;
        records += batch as u64;
        batches += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    drop(store);
    remove_if_exists(path)?;
    Ok(WriteResult {
        records_per_sec: records as f64 / secs,
        batches_per_sec: batches as f64 / secs,
        secs,
    })
}

struct ReloadResult {
    label: String,
    best: Duration,
    bytes_per_lease: f64,
}

/// Best of three open-and-load-everything runs of the store at `path`.
fn time_reload(engine: Engine, path: &Path, n: u32) -> Result<Duration> {
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let start = Instant::now();
        let map = engine.load(path)?;
        best = best.min(start.elapsed());
        ensure!(
            map.len() == n as usize,
            "loaded {} of {n} leases",
            map.len()
        );
        let probe = BASE_ADDR + n / 2;
        ensure!(
            map[&probe] == Lease::sample(probe, 0),
            "lease {probe:#x} differs"
        );
    }
    Ok(best)
}

/// Builds a store of `n` distinct leases with each durable engine and times its reload.
fn bench_reload(dir: &Path, n: u32) -> Result<Vec<ReloadResult>> {
    let mut results = Vec::new();
    for engine in [
        Engine::Journal { sync: true },
        Engine::Redb { durable: true },
    ] {
        let path = dir.join(engine.file_name());
        eprintln!("reload: building {n} leases in {}", engine.label());
        let mut store = engine.create(&path)?;
        preload(store.as_mut(), n, BUILD_BATCH)?;
        drop(store);
        let mut measure = |label: String| -> Result<()> {
            let best = time_reload(engine, &path, n)?;
            results.push(ReloadResult {
                label,
                best,
                bytes_per_lease: file_size(&path)? as f64 / f64::from(n),
            });
            Ok(())
        };
        measure(engine.name().to_owned())?;
        if let Engine::Redb { .. } = engine {
            engine.open(&path)?.compact()?;
            measure(format!("{}, after compact()", engine.name()))?;
        }
        remove_if_exists(&path)?;
    }
    Ok(results)
}

struct GrowthResult {
    label: &'static str,
    size_before: u64,
    size_after: u64,
    size_compacted: u64,
    secs: f64,
}

/// `updates` durable updates of `keys` preloaded leases, `AMP_BATCH` per sync.
fn bench_growth(engine: Engine, path: &Path, keys: u32, updates: u64) -> Result<GrowthResult> {
    let mut store = engine.create(path)?;
    preload(store.as_mut(), keys, AMP_BATCH)?;
    let size_before = file_size(path)?;
    let mut buf = Vec::with_capacity(AMP_BATCH);
    let start = Instant::now();
    let mut seq = 0;
    while seq < updates {
        buf.clear();
        let end = (seq + AMP_BATCH as u64).min(updates);
        buf.extend((seq..end).map(|s| {
            let addr = scattered_key(s, keys);
            (addr, Lease::sample(addr, s + 1))
        }));
        store.write_batch(&buf)?;
        seq = end;
    }
    let secs = start.elapsed().as_secs_f64();
    let size_after = file_size(path)?;
    store.compact()?;
    drop(store);
    let size_compacted = file_size(path)?;
    ensure!(engine.load(path)?.len() == keys as usize, "live set lost");
    remove_if_exists(path)?;
    Ok(GrowthResult {
        label: engine.name(),
        size_before,
        size_after,
        size_compacted,
        secs,
    })
}

// ---------------------------------------------------------------------------------------------
// Plumbing
// ---------------------------------------------------------------------------------------------

fn env_or<T: FromStr>(name: &str, default: T) -> Result<T> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("{name}={v:?} is not valid")),
        Err(_) => Ok(default),
    }
}

fn file_size(path: &Path) -> Result<u64> {
    Ok(fs::metadata(path)?.len())
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

/// Writes back dirty data of the file system holding `path`, so that one case's leftovers
/// are not flushed during the next case.
fn flush_filesystem(path: &Path) -> Result<()> {
    let dir = File::open(path.parent().unwrap())?;
    // SAFETY: syncfs only reads the descriptor, which `dir` keeps open for the call.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

fn human_bytes(bytes: u64) -> String {
    match bytes {
        0..0x10_0000 => format!("{:.1} KiB", bytes as f64 / 1024.0),
        _ => format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0)),
    }
}

/// Refuses tmpfs/ramfs, where fsync is a no-op and the numbers would be meaningless.
fn check_real_disk(dir: &Path) -> Result<()> {
    let c_path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())?;
    // SAFETY: `st` is plain data written by statfs; `c_path` is a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c_path.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    let magic = st.f_type as i64;
    if magic == TMPFS_MAGIC || magic == RAMFS_MAGIC {
        bail!("{} is on tmpfs/ramfs: syncs would be no-ops", dir.display());
    }
    Ok(())
}

fn main() -> Result<()> {
    let dir = match std::env::var_os("BENCH_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/storage-bench"),
    };
    let secs: f64 = env_or("BENCH_SECS", 3.0)?;
    let reload_n: u32 = env_or("BENCH_RELOAD_N", 1_000_000)?;
    let amp_n: u64 = env_or("BENCH_AMP_N", 1_000_000)?;
    let amp_keys: u32 = env_or("BENCH_AMP_KEYS", 10_000)?;
    ensure!(reload_n > 0 && amp_keys > 0, "key counts must be positive");
    fs::create_dir_all(&dir)?;
    check_real_disk(&dir)?;
    let duration = Duration::from_secs_f64(secs);

    println!("# Lease storage engines: append-only journal vs redb\n");
    println!(
        "Lease = u32 address key + {}-byte value; journal frame = {} bytes. Files in `{}`.\n",
        Lease::ENCODED_LEN,
        Journal::FRAME_LEN,
        dir.display()
    );

    println!("## Durable writes ({secs} s per case, updates of {WRITE_KEYS} live leases)\n");
    println!("| engine | batch | records/s | syncs/s (batches/s if unsynced) | run (s) |");
    println!("|---|---:|---:|---:|---:|");
    for engine in Engine::ALL {
        for batch in BATCH_SIZES {
            eprintln!("writes: {} batch {batch}", engine.label());
            let path = dir.join(engine.file_name());
            let r = bench_writes(engine, &path, batch, duration)?;
            let syncs = if engine.syncs() {
                format!("{:.0}", r.batches_per_sec)
            } else {
                format!("0 ({:.0})", r.batches_per_sec)
            };
            println!(
                "| {} | {batch} | {:.0} | {syncs} | {:.1} |",
                engine.label(),
                r.records_per_sec,
                r.secs
            );
        }
    }

    println!("\n## Reload of {reload_n} distinct leases into a HashMap (best of 3)\n");
    println!("| engine | open + load (s) | leases/s | bytes on disk per lease |");
    println!("|---|---:|---:|---:|");
    for r in bench_reload(&dir, reload_n)? {
        println!(
            "| {} | {:.3} | {:.0} | {:.1} |",
            r.label,
            r.best.as_secs_f64(),
            f64::from(reload_n) / r.best.as_secs_f64(),
            r.bytes_per_lease
        );
    }

    println!(
        "\n## File growth: {amp_n} durable updates of {amp_keys} leases, {AMP_BATCH} per sync\n"
    );
    println!(
        "| engine | size before | size after | growth per update (B) | after compaction | time (s) |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for engine in [
        Engine::Journal { sync: true },
        Engine::Redb { durable: true },
    ] {
        eprintln!("growth: {}", engine.label());
        let r = bench_growth(engine, &dir.join(engine.file_name()), amp_keys, amp_n)?;
        println!(
            "| {} | {} | {} | {:.1} | {} | {:.1} |",
            r.label,
            human_bytes(r.size_before),
            human_bytes(r.size_after),
            (r.size_after as f64 - r.size_before as f64) / amp_n as f64,
            human_bytes(r.size_compacted),
            r.secs
        );
    }

    // Only removes the directory if nothing else is in it.
    let _ = fs::remove_dir(&dir);
    Ok(())
}

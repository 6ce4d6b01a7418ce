//! How long a node takes to come back with millions of leases, how big the store is per
//! lease, and what the node's tables cost in memory: the figures behind the "5 million
//! leases reload in under 5 s" requirement (docs/benchmarks.md).
//!
//! For each size it writes a store the way the daemon does (`Store::append`, records as
//! the node emits them), then times, best of three, exactly what `ddhcpd` does at start-up:
//! `Store::open` (lock, read, check every record's CRC, replay), converting to core time,
//! and `Node::restore` (blocks owned again, every lease back in the lease table). Then it
//! compacts the journal into a snapshot as the daemon's compaction thread does (timed, with
//! the memory the replayed state takes) and times the reload from that.
//!
//! `cargo bench --bench store`. Environment: `BENCH_LEASES` (default "1000000 5000000"),
//! `BENCH_DIR` (default `target/store-bench`, must be on a real disk), `BENCH_RUNS` (3),
//! `BENCH_KEEP=1` keeps each store (as a snapshot, in `BENCH_DIR/<n>`) to start a real
//! `ddhcpd -N 10.0.0.0/9 -b 4 --state-dir BENCH_DIR/<n>` on it.
#![allow(clippy::disallowed_methods)] // outside the core: real clocks and OS randomness

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant as WallInstant};

use ddhcp::dhcp::leases::ClientKey;
use ddhcp::node::{Node, NodeConfig};
use ddhcp::persist::{Change, LeaseRecord};
use ddhcp::range::ManagedRange;
use ddhcp::store::{self, Store, StoreOptions, StorePool, WallClock};
use ddhcp::testing::{claim, dhcp_node};
use ddhcp::time::Instant;
use ddhcp::wire::NodeId;

/// As the daemon's clock: core time starts far from zero, so restored past times fit.
const NOW: Instant = Instant::from_millis(1 << 40);

fn range() -> ManagedRange {
    // 8,388,608 addresses in 524,288 blocks of 16: room for 5 M leases.
    ManagedRange::new(Ipv4Addr::new(10, 0, 0, 0), 9, 4).unwrap()
}

/// The one pool the daemon stores, as it names it.
fn pools() -> Vec<StorePool> {
    vec![StorePool {
        name: "default".into(),
        range: range(),
    }]
}

fn node_config(range: ManagedRange) -> NodeConfig {
    dhcp_node(range, claim(15, 300, 16, true), vec![])
}

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

fn store_opts(dir: &Path) -> StoreOptions {
    StoreOptions {
        dir: dir.to_path_buf(),
        pools: pools(),
        fsync: false,
        commit_delay: std::time::Duration::ZERO,
        compact_min_bytes: u64::MAX,
    }
}

/// Writes `n` leases (whole blocks of 16, one client each) and the blocks holding them.
fn generate(dir: &Path, n: u64) {
    let _ = std::fs::remove_dir_all(dir);
    let (mut s, _, _) = Store::open(store_opts(dir)).unwrap();
    let clock = WallClock::now(NOW);
    let blocks = n.div_ceil(16);
    let mut batch = Vec::with_capacity(10_000);
    for b in 0..blocks {
        batch.push((
            0,
            Change::BlockOwned {
                block: b as u32,
                since: NOW - Duration::from_secs(3600),
            },
        ));
    }
    batch.push((0, Change::Announced { at: NOW, ttl: 300 }));
    s.append(&batch, &clock);
    batch.clear();
    for i in 0..n {
        let mac = [
            2,
            0,
            (i >> 24) as u8,
            (i >> 16) as u8,
            (i >> 8) as u8,
            i as u8,
        ];
        let mut chaddr = [0u8; 16];
        chaddr[..6].copy_from_slice(&mac);
        let mut client = vec![0u8, 1];
        client.extend_from_slice(&mac);
        let client = Some(ClientKey::from_slice(&client));
        batch.push((
            0,
            Change::Lease(LeaseRecord {
                ip: Ipv4Addr::from(0x0a00_0000 + i as u32),
                until: NOW + Duration::from_secs(3600),
                declined: false,
                client,
                chaddr,
                hostname: None,
            }),
        ));
        if batch.len() == 10_000 {
            s.append(&batch, &clock);
            batch.clear();
        }
    }
    s.append(&batch, &clock);
    assert!(!s.close().failed);
}

struct Reload {
    open: Duration,
    convert: Duration,
    restore: Duration,
    leases: usize,
}

/// What `ddhcpd` does at start-up, timed in three parts.
fn reload(dir: &Path) -> Reload {
    let t0 = WallInstant::now();
    let (s, state, _) = Store::open(store_opts(dir)).unwrap();
    let t1 = WallInstant::now();
    let restored = state
        .into_restored(&pools(), &WallClock::now(NOW))
        .remove(0);
    let t2 = WallInstant::now();
    let leases = restored.leases.len();
    let mut node = Node::new(node_config(range()), NodeId([5; 8]), NOW, 1);
    node.restore(NOW, vec![restored]);
    let t3 = WallInstant::now();
    assert_eq!(node.dhcp().unwrap().leases.active(), leases);
    drop(s);
    Reload {
        open: t1 - t0,
        convert: t2 - t1,
        restore: t3 - t2,
        leases,
    }
}

fn best(dir: &Path, runs: usize) -> Reload {
    (0..runs)
        .map(|_| reload(dir))
        .min_by_key(|r| r.open + r.convert + r.restore)
        .unwrap()
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum()
}

fn row(what: &str, n: u64, bytes: u64, r: &Reload) {
    let total = r.open + r.convert + r.restore;
    println!(
        "| {n} | {what} | {:.1} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} M/s |",
        bytes as f64 / n as f64,
        r.open.as_secs_f64(),
        r.convert.as_secs_f64(),
        r.restore.as_secs_f64(),
        total.as_secs_f64(),
        r.leases as f64 / total.as_secs_f64() / 1e6,
        // The row has as many cells as the header.
    );
}

/// Memory of one node holding `n` leases: RSS with the node alive minus RSS before, and
/// the process's peak (the replayed state and the node's tables exist side by side for a
/// moment during start-up).
fn node_memory(dir: &Path) -> (u64, u64) {
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe { libc::malloc_trim(0) };
    let before = rss_kib("VmRSS:");
    let (s, state, _) = Store::open(store_opts(dir)).unwrap();
    drop(s);
    let restored = state
        .into_restored(&pools(), &WallClock::now(NOW))
        .remove(0);
    let mut node = Node::new(node_config(range()), NodeId([5; 8]), NOW, 1);
    node.restore(NOW, vec![restored]);
    // The replayed state is freed by now; hand its pages back so RSS shows the node.
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe { libc::malloc_trim(0) };
    let after = rss_kib("VmRSS:");
    let peak = rss_kib("VmHWM:");
    drop(node);
    (after.saturating_sub(before), peak)
}

/// RSS of an idle node on a /10 (no leases): the block table alone.
fn range_memory() {
    println!("\n| range | block size | blocks | node RSS (MiB) | bytes per block |");
    println!("|---|---:|---:|---:|---:|");
    for pow in [4u8, 2] {
        let r = ManagedRange::new(Ipv4Addr::new(10, 64, 0, 0), 10, pow).unwrap();
        let before = rss_kib("VmRSS:");
        let node = Node::new(node_config(r), NodeId([5; 8]), NOW, 1);
        let after = rss_kib("VmRSS:");
        let delta = after.saturating_sub(before) * 1024;
        println!(
            "| 10.64.0.0/10 | {} (-b {pow}) | {} | {:.1} | {:.1} |",
            r.block_size(),
            r.num_blocks(),
            delta as f64 / (1 << 20) as f64,
            delta as f64 / f64::from(r.num_blocks())
        );
        drop(node);
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    let root: PathBuf = std::env::var_os("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/store-bench"));
    let sizes: Vec<u64> = std::env::var("BENCH_LEASES")
        .unwrap_or_else(|_| "1000000 5000000".into())
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect();
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    range_memory();
    println!(
        "\n| leases | store form | bytes per lease | open+replay (s) | to core time (s) | Node::restore (s) | total (s) | leases/s |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|");
    let mut memory = Vec::new();
    let mut compactions = Vec::new();
    for &n in &sizes {
        let dir = root.join(format!("{n}"));
        generate(&dir, n);
        let r = best(&dir, runs);
        assert_eq!(r.leases as u64, n);
        row("journal", n, dir_bytes(&dir), &r);
        // What a compaction does (on its own thread in the daemon): replay, write a snapshot.
        // SAFETY: malloc_trim only releases free heap memory.
        unsafe { libc::malloc_trim(0) };
        let rss_before = rss_kib("VmRSS:");
        let t0 = WallInstant::now();
        let (state, info) = store::load(&dir, &pools(), None, false).unwrap();
        let rss_state = rss_kib("VmRSS:").saturating_sub(rss_before);
        store::write_snapshot(&dir, &pools(), info.journal_generation + 1, &state).unwrap();
        compactions.push((n, t0.elapsed(), rss_state));
        drop(state);
        std::fs::remove_file(dir.join(format!("journal.{:016x}", info.journal_generation)))
            .unwrap();
        let r = best(&dir, runs);
        row("snapshot", n, dir_bytes(&dir), &r);
        memory.push((n, node_memory(&dir)));
        if std::env::var_os("BENCH_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    println!("\n| leases | compaction: replay + snapshot (s) | its memory (MiB) |");
    println!("|---:|---:|---:|");
    for (n, took, kib) in compactions {
        println!(
            "| {n} | {:.2} | {:.0} |",
            took.as_secs_f64(),
            kib as f64 / 1024.0
        );
    }
    println!("\n| leases | node RSS growth (MiB) | per lease (bytes) | process peak RSS (MiB) |");
    println!("|---:|---:|---:|---:|");
    for (n, (kib, peak)) in memory {
        println!(
            "| {n} | {:.0} | {:.0} | {:.0} |",
            kib as f64 / 1024.0,
            kib as f64 * 1024.0 / n as f64,
            peak as f64 / 1024.0
        );
    }
}

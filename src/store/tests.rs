use super::*;
use crate::dhcp::leases::ClientKey;
use codec::{Format, Header, Pools, StoredRange};

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "ddhcp-store-{tag}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn pool(name: &str, a: u8, b: u8, c: u8, len: u8, pow: u8) -> StorePool {
    StorePool {
        name: name.into(),
        range: ManagedRange::new(Ipv4Addr::new(10, a, b, c), len, pow).unwrap(),
    }
}

/// 10.0.0.0/16 in blocks of 4, the pool of the single-pool tests.
fn lan() -> StorePool {
    pool("lan", 0, 0, 0, 16, 2)
}

/// 10.1.0.0/24 in blocks of 4.
fn guest() -> StorePool {
    pool("guest", 1, 0, 0, 24, 2)
}

fn opts(dir: &Path) -> StoreOptions {
    opts_with(dir, vec![lan()])
}

fn opts_with(dir: &Path, pools: Vec<StorePool>) -> StoreOptions {
    StoreOptions {
        dir: dir.to_path_buf(),
        pools,
        fsync: true,
        commit_delay: Duration::ZERO,
        compact_min_bytes: COMPACT_MIN_BYTES,
    }
}

/// Changes all of the pool at index `pool`.
fn to(pool: usize, changes: &[Change]) -> Vec<(usize, Change)> {
    changes.iter().map(|c| (pool, c.clone())).collect()
}

/// A clock at core time 1000 s and wall time 1.7e12 ms.
fn clock() -> WallClock {
    WallClock {
        core_now: Instant::from_millis(1_000_000),
        wall_now_ms: 1_700_000_000_000,
    }
}

/// A lease duration that outlives any compaction (which drops what expired by the real
/// clock): until 2103 by [`clock`].
const FOREVER: u64 = 2_500_000_000;

fn lease(n: u32, until_s: u64) -> Change {
    let mut chaddr = [0u8; 16];
    chaddr[..6].copy_from_slice(&[2, 0, 0, 0, (n >> 8) as u8, n as u8]);
    Change::Lease(LeaseRecord {
        ip: Ipv4Addr::from(0x0a00_0000 + n),
        until: Instant::from_millis(1_000_000 + until_s * 1000),
        declined: false,
        client: Some(crate::dhcp::leases::ClientKey::from_slice(&[
            0,
            1,
            2,
            0,
            0,
            0,
            (n >> 8) as u8,
            n as u8,
        ])),
        chaddr,
        hostname: None,
    })
}

fn write_all(dir: &Path, changes: &[Change]) {
    write_to(opts(dir), &to(0, changes));
}

fn write_to(opts: StoreOptions, changes: &[(usize, Change)]) {
    let (mut store, _, _) = Store::open(opts).unwrap();
    store.append(changes, &clock());
    let s = store.close();
    assert!(!s.failed);
    assert_eq!(s.seq, 1);
}

fn journal(dir: &Path) -> PathBuf {
    let (_, journals) = scan(dir).unwrap();
    dir.join(file_name(FileKind::Journal, *journals.last().unwrap()))
}

/// Folds every journal into a snapshot, as the compaction thread does.
fn compact_now(dir: &Path, pools: &[StorePool]) {
    let (_, journals) = scan(dir).unwrap();
    compact(dir, pools, *journals.last().unwrap()).unwrap();
}

/// The headers of every file in `dir`, by file name.
fn headers(dir: &Path) -> BTreeMap<String, Header> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name() != "lock")
        .map(|e| {
            let bytes = fs::read(e.path()).unwrap();
            let name = e.file_name().into_string().unwrap();
            (name, Header::decode(&bytes).unwrap().0)
        })
        .collect()
}

fn header_len(path: &Path) -> usize {
    Header::decode(&fs::read(path).unwrap()).unwrap().1
}

/// Every file's bytes but the lock's, to show that a refused store is left as it was.
fn contents(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name() != "lock")
        .map(|e| {
            (
                e.file_name().into_string().unwrap(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn state_comes_back_in_core_time() {
    let d = TempDir::new("back");
    let changes = vec![
        Change::BlockOwned {
            block: 3,
            since: Instant::from_millis(990_000),
        },
        Change::Announced {
            at: Instant::from_millis(995_000),
            ttl: 30,
        },
        lease(13, 300),
        lease(14, 300),
        Change::LeaseGone(Ipv4Addr::new(10, 0, 0, 14)),
        Change::Option {
            code: 6,
            payload: Some(vec![10, 0, 0, 1]),
        },
    ];
    write_all(&d.0, &changes);
    let (store, state, info) = Store::open(opts(&d.0)).unwrap();
    drop(store);
    assert_eq!(info.records, 6);
    assert_eq!(info.truncated, 0);
    // Read back 100 s later (wall and core clocks both moved on).
    let later = WallClock {
        core_now: Instant::from_millis(5_000),
        wall_now_ms: 1_700_000_100_000,
    };
    let r = state.into_restored(&[lan()], &later).remove(0);
    assert_eq!(r.blocks, vec![(3, Instant::ZERO)]);
    assert_eq!(r.announced, Some((Instant::ZERO, 30)));
    assert_eq!(r.leases.len(), 1);
    assert_eq!(r.leases[0].ip, Ipv4Addr::new(10, 0, 0, 13));
    assert_eq!(r.leases[0].until, Instant::from_millis(5_000 + 200_000));
    assert_eq!(r.options, vec![(6, Some(vec![10, 0, 0, 1]))]);
    // And 301 s later the lease is gone.
    let much_later = WallClock {
        core_now: Instant::from_millis(5_000),
        wall_now_ms: 1_700_000_301_000,
    };
    let (store, state, _) = Store::open(opts(&d.0)).unwrap();
    drop(store);
    assert!(
        state.into_restored(&[lan()], &much_later)[0]
            .leases
            .is_empty()
    );
}

#[test]
fn a_torn_last_record_is_cut_and_the_rest_loads() {
    let d = TempDir::new("torn");
    write_all(&d.0, &[lease(1, 300), lease(2, 300)]);
    let path = journal(&d.0);
    let good = fs::metadata(&path).unwrap().len();
    // Half of a third record, as a crash in the middle of an append leaves it.
    let mut third = Vec::new();
    codec::encode(0, &lease(3, 300), |t| t.as_millis(), &mut third);
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(&third[..third.len() / 2]).unwrap();
    drop(f);
    let (store, state, info) = Store::open(opts(&d.0)).unwrap();
    assert_eq!(state.leases(), 2);
    assert_eq!(info.truncated, third.len() as u64 / 2);
    assert_eq!(fs::metadata(&path).unwrap().len(), good);
    // Appending after the cut gives a clean journal.
    let mut store = store;
    store.append(&to(0, &[lease(4, 300)]), &clock());
    store.close();
    let (_, state, info) = Store::open(opts(&d.0)).unwrap();
    assert_eq!(state.leases(), 3);
    assert_eq!(info.truncated, 0);
}

#[test]
fn damage_followed_by_intact_records_is_refused() {
    let d = TempDir::new("corrupt");
    write_all(&d.0, &[lease(1, 300), lease(2, 300), lease(3, 300)]);
    let path = journal(&d.0);
    let mut bytes = fs::read(&path).unwrap();
    let first = header_len(&path);
    bytes[first + 12] ^= 0x40; // inside the first record
    fs::write(&path, &bytes).unwrap();
    let err = Store::open(opts(&d.0)).err().unwrap();
    assert!(matches!(err, StoreError::Corrupt { offset, .. } if offset == first as u64));
    assert!(
        err.to_string()
            .contains(&format!("is damaged at byte {first}")),
        "{err}"
    );
    // Nothing was cut.
    assert_eq!(fs::read(&path).unwrap(), bytes);
}

#[test]
fn a_store_of_another_network_or_block_size_is_refused() {
    let d = TempDir::new("mismatch");
    write_all(&d.0, &[lease(1, 300)]);
    let before = contents(&d.0);
    for other in [pool("lan", 0, 0, 0, 16, 3), pool("lan", 0, 0, 0, 17, 2)] {
        let err = Store::open(opts_with(&d.0, vec![other.clone()]))
            .err()
            .unwrap();
        assert!(
            matches!(&err, StoreError::Mismatch { pool: Some(p), .. } if p == "lan"),
            "{err}"
        );
        let ours = StoredRange::of(&other.range).describe();
        assert_eq!(
            err.to_string(),
            format!(
                "--state-dir {} holds pool 'lan' as 10.0.0.0/16 in blocks of 4 addresses (-b 2), but this daemon configures it as {ours}; give another --state-dir or move the old state away",
                d.0.display()
            )
        );
    }
    assert_eq!(contents(&d.0), before);
}

#[test]
fn one_daemon_per_state_dir() {
    let d = TempDir::new("lock");
    let (first, _, _) = Store::open(opts(&d.0)).unwrap();
    let err = Store::open(opts(&d.0)).err().unwrap();
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    first.close();
    assert!(Store::open(opts(&d.0)).is_ok());
}

/// The size of every file in `dir` but the lock, by file name.
fn sizes(dir: &Path) -> BTreeMap<String, u64> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name() != "lock")
        .map(|e| {
            let name = e.file_name().into_string().unwrap();
            (name, e.metadata().unwrap().len())
        })
        .collect()
}

/// Blocks until everything appended to `store` is durable (or writing failed): waits for
/// the writer's report, not for time to pass.
fn wait_synced(store: &mut Store) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        loop {
            let s = store.synced();
            if s.failed || s.seq >= store.written() {
                break;
            }
            store.changed().await;
        }
    });
    assert!(!store.synced().failed);
}

#[test]
fn compaction_keeps_the_store_proportional_to_live_state() {
    let d = TempDir::new("compact");
    let mut o = opts(&d.0);
    o.compact_min_bytes = 64 << 10;
    o.fsync = false;
    let (mut store, _, _) = Store::open(o.clone()).unwrap();
    // Real wall time: compaction drops what expired by the real clock.
    let clock = WallClock::now(Instant::from_millis(1_000_000));
    // 200 live leases renewed 500 times: ~100,000 records, ~4 MB of journal.
    for round in 0..500u64 {
        let batch: Vec<(usize, Change)> = (0..200).map(|n| (0, lease(n, 300 + round))).collect();
        store.append(&batch, &clock);
        // One batch per write, so the writer decides on compaction between batches, with
        // compactions running while later batches arrive.
        wait_synced(&mut store);
    }
    let written = store.stats.bytes.load(Relaxed);
    store.close();
    // Appends never wait for a compaction: a journal that passed the threshold while one
    // ran is left for the next batch to compact (closing only waits for the compaction
    // running). One more batch after reopening gets that far.
    let (mut store, _, _) = Store::open(o.clone()).unwrap();
    store.append(&to(0, &[lease(0, 300 + 499)]), &clock);
    store.close();
    let (_, state, _) = Store::open(o.clone()).unwrap();
    assert_eq!(state.leases(), 200);
    let Change::Lease(last) = lease(7, 300 + 499) else {
        unreachable!()
    };
    assert_eq!(
        state.pools["lan"].leases[&Ipv4Addr::new(10, 0, 0, 7)]
            .until
            .as_millis(),
        clock.wall(last.until)
    );
    // What is left, however the compactions fell between the batches: one snapshot of the
    // live state and the journal since, below the threshold (or it would have been rotated
    // and compacted). Which batch the journal starts at depends on those timings, so the
    // total may exceed the threshold (by at most the snapshot), never the bound
    // the store promises: twice the live state plus the threshold.
    let live = {
        let other = TempDir::new("compact-live");
        write_snapshot(&other.0, &o.pools, 1, &state).unwrap()
    };
    let files = sizes(&d.0);
    let (snapshots, journals) = scan(&d.0).unwrap();
    assert_eq!((snapshots.len(), journals.len()), (1, 1), "{files:?}");
    assert_eq!(snapshots, journals, "{files:?}");
    let g = *journals.first().unwrap();
    assert_eq!(files[&file_name(FileKind::Snapshot, g)], live, "{files:?}");
    assert!(
        files[&file_name(FileKind::Journal, g)] < o.compact_min_bytes,
        "{files:?}"
    );
    let total: u64 = files.values().sum();
    assert!(
        total <= 2 * live + o.compact_min_bytes,
        "store is {total} bytes for 200 leases ({live} bytes live): {files:?}"
    );
    // Without compaction it would hold all that was written.
    assert!(written > 40 * total, "{written} bytes written, {files:?}");
}

#[test]
fn the_batch_that_takes_the_journal_past_the_threshold_compacts_it() {
    // A store session per batch: each session's compaction is over before the next batch,
    // so which batch starts which journal is fixed. This is the end state the test above
    // sees when the compactions keep up with the batches.
    let d = TempDir::new("threshold");
    let mut o = opts(&d.0);
    o.fsync = false;
    let batch = to(0, &(0..200).map(|n| lease(n, FOREVER)).collect::<Vec<_>>());
    write_to(o.clone(), &batch);
    let header = header_len(&journal(&d.0)) as u64;
    let b = fs::metadata(journal(&d.0)).unwrap().len() - header;
    // A snapshot of the 200 leases is their records under a header of the same table.
    let live = header + b;
    // Crossed by the 8th batch of a journal.
    o.compact_min_bytes = header + 7 * b + b / 2;
    let journal_of = |g: u64| file_name(FileKind::Journal, g);
    let snapshot_of = |g: u64| file_name(FileKind::Snapshot, g);
    for k in 2..=16u64 {
        write_to(o.clone(), &batch);
        let expected: BTreeMap<String, u64> = match k {
            ..=7 => [(journal_of(0), header + k * b)].into(),
            8 => [(journal_of(1), header), (snapshot_of(1), live)].into(),
            9..=15 => [
                (journal_of(1), header + (k - 8) * b),
                (snapshot_of(1), live),
            ]
            .into(),
            _ => [(journal_of(2), header), (snapshot_of(2), live)].into(),
        };
        let files = sizes(&d.0);
        assert_eq!(files, expected, "after batch {k}");
        if k == 15 {
            // A journal just below the threshold next to the snapshot: more than the
            // threshold in all, within twice the live state plus the threshold.
            let total: u64 = files.values().sum();
            assert!(total > o.compact_min_bytes);
            assert!(total <= 2 * live + o.compact_min_bytes);
        }
    }
    let (_, state, _) = Store::open(o).unwrap();
    assert_eq!(state.leases(), 200);
}

#[test]
fn a_crash_between_snapshot_and_cleanup_loads_the_snapshot_once() {
    let d = TempDir::new("crashcompact");
    write_all(&d.0, &[lease(1, 300), lease(2, 300)]);
    // Snapshot 1 written, journal 0 not yet deleted, journal 1 with one more change.
    let (state, _) = load(&d.0, &[lan()], None, false).unwrap();
    write_snapshot(&d.0, &[lan()], 1, &state).unwrap();
    let (mut f, _) = create_journal(&d.0, &[lan()], 1).unwrap();
    let mut buf = Vec::new();
    codec::encode(
        0,
        &Change::LeaseGone(Ipv4Addr::new(10, 0, 0, 1)),
        |t| t.as_millis(),
        &mut buf,
    );
    f.write_all(&buf).unwrap();
    fs::write(d.0.join("snapshot.0000000000000002.tmp"), b"half").unwrap();
    let (store, state, info) = Store::open(opts(&d.0)).unwrap();
    drop(store);
    assert_eq!(state.leases(), 1);
    assert_eq!(info.files, 2);
    assert!(!d.0.join("snapshot.0000000000000002.tmp").exists());
}

#[test]
fn a_clock_behind_the_store_trusts_no_claim() {
    let d = TempDir::new("clockback");
    write_all(
        &d.0,
        &[
            Change::BlockOwned {
                block: 3,
                since: Instant::from_millis(990_000),
            },
            Change::Announced {
                at: Instant::from_millis(1_000_000),
                ttl: 30,
            },
            lease(13, 300),
        ],
    );
    let (store, state, _) = Store::open(opts(&d.0)).unwrap();
    drop(store);
    // A router booted with its clock a day behind.
    let behind = WallClock {
        core_now: Instant::from_millis(5_000),
        wall_now_ms: 1_700_000_000_000 - 86_400_000,
    };
    let r = state.into_restored(&[lan()], &behind).remove(0);
    assert!(r.clock_went_back);
    // The lease keeps the 300 s it had left when last written, no more.
    assert_eq!(r.leases[0].until, Instant::from_millis(5_000 + 300_000));
}

#[test]
fn a_journal_cut_inside_its_header_starts_afresh_but_a_damaged_header_is_refused() {
    let d = TempDir::new("header");
    write_all(&d.0, &[lease(1, 300)]);
    let path = journal(&d.0);
    let bytes = fs::read(&path).unwrap();
    // A crash while the journal was being created: only part of the header on disk.
    fs::write(&path, &bytes[..20]).unwrap();
    let (store, state, info) = Store::open(opts(&d.0)).unwrap();
    drop(store);
    assert!(state.pools.is_empty());
    assert_eq!(info.truncated, 20);
    let header = Header::new(FileKind::Journal, &[lan()], 0).encode();
    assert_eq!(fs::read(&path).unwrap(), header);
    // A header damaged in a journal that has records: refused, nothing changed.
    let mut bad = bytes.clone();
    bad[12] ^= 1;
    fs::write(&path, &bad).unwrap();
    let err = Store::open(opts(&d.0)).err().unwrap();
    assert!(
        matches!(err, StoreError::Corrupt { offset: 0, .. }),
        "{err}"
    );
    assert_eq!(fs::read(&path).unwrap(), bad);
}

#[test]
fn a_journal_cut_inside_its_pool_table_starts_afresh() {
    let d = TempDir::new("table");
    let pools = vec![lan(), guest()];
    write_to(opts_with(&d.0, pools.clone()), &[(1, lease(1, 300))]);
    let path = journal(&d.0);
    let bytes = fs::read(&path).unwrap();
    let len = header_len(&path);
    for cut in [codec::FIXED_LEN + 1, len - 1, len] {
        fs::write(&path, &bytes[..cut]).unwrap();
        let (store, state, info) = Store::open(opts_with(&d.0, pools.clone())).unwrap();
        drop(store);
        assert!(state.pools.is_empty(), "cut at {cut}");
        // A whole header is no torn write; the table is damaged only if its CRC is.
        let torn = if cut == len { 0 } else { cut as u64 };
        assert_eq!(info.truncated, torn, "cut at {cut}");
        assert_eq!(fs::read(&path).unwrap(), bytes[..len], "cut at {cut}");
    }
}

#[test]
fn two_pools_interleaved_come_back_each_into_its_own() {
    let d = TempDir::new("two");
    let pools = vec![lan(), guest()];
    let owned = |block| Change::BlockOwned {
        block,
        since: Instant::from_millis(990_000),
    };
    let guest_lease = |n: u32| {
        let Change::Lease(mut l) = lease(n, 300) else {
            unreachable!()
        };
        l.ip = Ipv4Addr::from(0x0a01_0000 + n);
        Change::Lease(l)
    };
    let dns = Change::Option {
        code: 6,
        payload: Some(vec![10, 1, 0, 1]),
    };
    let batches = [
        vec![
            (0, owned(1)),
            (1, owned(1)),
            (1, guest_lease(5)),
            (0, lease(5, 300)),
        ],
        vec![(1, dns.clone()), (0, lease(6, 300)), (1, owned(2))],
        vec![
            (0, Change::LeaseGone(Ipv4Addr::new(10, 0, 0, 5))),
            (1, guest_lease(6)),
        ],
    ];
    let (mut store, _, _) = Store::open(opts_with(&d.0, pools.clone())).unwrap();
    for b in &batches {
        store.append(b, &clock());
    }
    assert_eq!(store.close().seq, 3);
    let (store, state, info) = Store::open(opts_with(&d.0, pools.clone())).unwrap();
    drop(store);
    assert_eq!(info.records, 9);
    assert!(!info.pools_changed);
    assert_eq!(info.journal_generation, 0);
    let mut want = State::default();
    for (pool, c) in batches.iter().flatten() {
        let name = &pools[*pool].name;
        let mut one = c.clone();
        // The store keeps wall-clock time.
        if let Change::Lease(l) = &mut one {
            l.until = Instant::from_millis(clock().wall(l.until));
        }
        if let Change::BlockOwned { since, .. } = &mut one {
            *since = Instant::from_millis(clock().wall(*since));
        }
        want.pools.entry(name.clone()).or_default().apply(one);
    }
    assert_eq!(state, want);
    let lan_ips: BTreeSet<_> = state.pools["lan"].leases.keys().copied().collect();
    assert_eq!(lan_ips, BTreeSet::from([Ipv4Addr::new(10, 0, 0, 6)]));
    assert_eq!(state.pools["guest"].leases.len(), 2);
    assert_eq!(state.pools["guest"].blocks.len(), 2);
    assert!(state.pools["lan"].options.is_empty());
    // Restored in the order asked for; a pool without state comes back empty.
    let other = pool("other", 2, 0, 0, 24, 2);
    let r = state.into_restored(&[guest(), other, lan()], &clock());
    assert_eq!(r.len(), 3);
    assert_eq!(r[0].leases.len(), 2);
    assert_eq!(r[0].options, vec![(6, Some(vec![10, 1, 0, 1]))]);
    assert_eq!(r[1], Restored::default());
    assert_eq!(r[2].leases.len(), 1);
    assert_eq!(r[2].blocks, vec![(1, Instant::from_millis(990_000))]);
}

#[test]
fn a_pool_added_starts_empty_in_a_new_journal() {
    let d = TempDir::new("added");
    write_all(&d.0, &[lease(1, FOREVER)]);
    let old = journal(&d.0);
    let old_bytes = fs::read(&old).unwrap();
    let pools = vec![lan(), guest()];
    let (mut store, state, info) = Store::open(opts_with(&d.0, pools.clone())).unwrap();
    assert!(info.pools_changed);
    assert_eq!((info.journal_generation, info.journal_exists), (1, false));
    assert_eq!(state.leases(), 1);
    assert!(!state.pools.contains_key("guest"));
    store.append(&[(1, lease(2, FOREVER)), (0, lease(3, FOREVER))], &clock());
    store.close();
    // The old journal, written for another table, was not appended to.
    assert_eq!(fs::read(&old).unwrap(), old_bytes);
    let (store, state, info) = Store::open(opts_with(&d.0, pools.clone())).unwrap();
    drop(store);
    assert!(!info.pools_changed);
    assert_eq!((info.files, info.journal_generation), (2, 1));
    assert_eq!(state.pools["lan"].leases.len(), 2);
    assert_eq!(state.pools["guest"].leases.len(), 1);
    // Compacted, both are in one snapshot.
    compact_now(&d.0, &pools);
    let (store, again, _) = Store::open(opts_with(&d.0, pools)).unwrap();
    drop(store);
    assert_eq!(again, state);
}

#[test]
fn a_pool_removed_is_dropped_and_gone_after_compaction() {
    let d = TempDir::new("removed");
    let both = vec![lan(), guest()];
    write_to(
        opts_with(&d.0, both.clone()),
        &[
            (0, lease(1, FOREVER)),
            (1, lease(2, 300)),
            (1, lease(3, 300)),
        ],
    );
    let (mut store, state, info) = Store::open(opts(&d.0)).unwrap();
    assert_eq!(info.dropped, vec![("guest".to_string(), 2)]);
    assert!(info.pools_changed);
    assert_eq!(state.pools.keys().collect::<Vec<_>>(), ["lan"]);
    store.append(&to(0, &[lease(4, FOREVER)]), &clock());
    store.close();
    // Configured again before a compaction: what was dropped stays dropped.
    let (store, state, info) = Store::open(opts_with(&d.0, both.clone())).unwrap();
    drop(store);
    assert!(info.dropped.is_empty());
    assert!(!state.pools.contains_key("guest"));
    assert_eq!(state.pools["lan"].leases.len(), 2);
    // Another removal and a compaction: no file names the pool any more.
    let (store, _, info) = Store::open(opts(&d.0)).unwrap();
    store.close();
    assert_eq!(info.dropped, vec![("guest".to_string(), 0)]);
    compact_now(&d.0, &[lan()]);
    let files = headers(&d.0);
    assert_eq!(files.len(), 1, "{files:?}");
    for h in files.values() {
        assert_eq!(h.pools, Pools::V2(codec::table(&[lan()])));
    }
    let (_, state, _) = Store::open(opts(&d.0)).unwrap();
    assert_eq!(state.pools["lan"].leases.len(), 2);
    assert_eq!(state.pools.len(), 1);
}

#[test]
fn a_pool_removed_may_come_back_with_another_range() {
    let d = TempDir::new("readd");
    write_to(
        opts_with(&d.0, vec![lan(), guest()]),
        &[(0, lease(1, 300)), (1, lease(2, 300))],
    );
    Store::open(opts(&d.0)).unwrap().0.close();
    let moved = pool("guest", 1, 0, 0, 24, 3);
    let (store, state, info) = Store::open(opts_with(&d.0, vec![lan(), moved])).unwrap();
    drop(store);
    assert!(info.dropped.is_empty());
    assert_eq!(state.pools.keys().collect::<Vec<_>>(), ["lan"]);
}

#[test]
fn a_range_change_is_refused_naming_the_pool_and_changes_nothing() {
    let d = TempDir::new("moved");
    write_to(
        opts_with(&d.0, vec![lan(), guest()]),
        &[(0, lease(1, 300)), (1, lease(2, 300))],
    );
    // A torn tail, which a store that is ours would lose.
    let mut f = OpenOptions::new().append(true).open(journal(&d.0)).unwrap();
    f.write_all(&[9, 0, 0]).unwrap();
    drop(f);
    // Also when another pool is added and the moved one is second in the configuration.
    let moved = pool("guest", 1, 0, 0, 24, 3);
    let before = contents(&d.0);
    let other = pool("other", 2, 0, 0, 24, 2);
    let err = Store::open(opts_with(&d.0, vec![other, moved, lan()]))
        .err()
        .unwrap();
    let text = err.to_string();
    assert!(
        text.contains("holds pool 'guest' as 10.1.0.0/24 in blocks of 4 addresses (-b 2), but this daemon configures it as 10.1.0.0/24 in blocks of 8 addresses (-b 3)"),
        "{text}"
    );
    assert!(!text.contains('\n'));
    assert_eq!(contents(&d.0), before);
}

#[test]
fn reordered_pools_keep_their_state() {
    let d = TempDir::new("reorder");
    write_to(
        opts_with(&d.0, vec![lan(), guest()]),
        &[(0, lease(1, 300)), (1, lease(2, 300))],
    );
    let swapped = vec![guest(), lan()];
    let (mut store, state, info) = Store::open(opts_with(&d.0, swapped.clone())).unwrap();
    // Indexes in the old journal mean other pools now: it is not appended to.
    assert!(info.pools_changed);
    assert_eq!(state.pools["lan"].leases.len(), 1);
    store.append(&[(0, lease(3, 300)), (1, lease(4, 300))], &clock());
    store.close();
    let (store, state, _) = Store::open(opts_with(&d.0, swapped)).unwrap();
    drop(store);
    let ips = |p: &str| {
        let mut v: Vec<Ipv4Addr> = state.pools[p].leases.keys().copied().collect();
        v.sort();
        v
    };
    assert_eq!(
        ips("lan"),
        [Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 4)]
    );
    assert_eq!(
        ips("guest"),
        [Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3)]
    );
}

#[test]
fn a_torn_record_is_cut_with_several_pools_too() {
    let d = TempDir::new("torn2");
    let pools = vec![lan(), guest()];
    write_to(
        opts_with(&d.0, pools.clone()),
        &[(1, lease(1, 300)), (0, lease(2, 300))],
    );
    let path = journal(&d.0);
    let good = fs::metadata(&path).unwrap().len();
    let mut third = Vec::new();
    codec::encode(1, &lease(3, 300), |t| t.as_millis(), &mut third);
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(&third[..third.len() - 1]).unwrap();
    drop(f);
    let (store, state, info) = Store::open(opts_with(&d.0, pools)).unwrap();
    drop(store);
    assert_eq!(info.truncated, third.len() as u64 - 1);
    assert_eq!(fs::metadata(&path).unwrap().len(), good);
    assert_eq!(state.pools["guest"].leases.len(), 1);
    assert_eq!(state.pools["lan"].leases.len(), 1);
}

#[test]
fn a_record_of_a_pool_beyond_the_table_is_damage() {
    let d = TempDir::new("beyond");
    write_to(opts_with(&d.0, vec![lan(), guest()]), &[(0, lease(1, 300))]);
    let path = journal(&d.0);
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    let mut rec = Vec::new();
    codec::encode(2, &lease(2, 300), |t| t.as_millis(), &mut rec);
    f.write_all(&rec).unwrap();
    drop(f);
    let err = Store::open(opts_with(&d.0, vec![lan(), guest()]))
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("record of pool 2, but the file's table has 2 pools"),
        "{err}"
    );
}

#[test]
fn pools_a_file_cannot_name_are_refused_before_anything_is_touched() {
    let d = TempDir::new("badpools");
    let sub = d.0.join("state");
    for pools in [
        vec![lan(), lan()],
        vec![pool("", 0, 0, 0, 16, 2)],
        vec![pool(&"x".repeat(33), 0, 0, 0, 16, 2)],
    ] {
        let err = Store::open(opts_with(&sub, pools)).err().unwrap();
        assert!(matches!(err, StoreError::Pools { .. }), "{err}");
        assert!(!sub.exists());
    }
    let many: Vec<StorePool> = (0..256)
        .map(|i| pool(&format!("p{i}"), 0, 0, 0, 16, 2))
        .collect();
    assert!(write_snapshot(&d.0, &many, 1, &State::default()).is_err());
}

#[test]
fn an_append_for_an_unknown_pool_stores_nothing() {
    let d = TempDir::new("unknown");
    let (mut store, _, _) = Store::open(opts(&d.0)).unwrap();
    let seq = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        store.append(&[(1, lease(1, 300))], &clock())
    }));
    // A bug in the caller: loud in debug builds, harmless to the journal in release ones.
    if let Ok(seq) = seq {
        assert_eq!(seq, 0);
    }
    store.close();
    let (_, state, info) = Store::open(opts(&d.0)).unwrap();
    assert_eq!((info.records, state.leases()), (0, 0));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// No journal bytes panic the loader, with a valid header in front or without.
    #[test]
    fn loading_arbitrary_bytes_never_panics(
        body in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
        with_header in proptest::bool::ANY,
        v1 in proptest::bool::ANY,
    ) {
        let d = TempDir::new("prop");
        let mut bytes = Vec::new();
        if with_header {
            let header = if v1 {
                Header {
                    kind: FileKind::Journal,
                    generation: 0,
                    pools: Pools::V1(StoredRange::of(&lan().range)),
                }
            } else {
                Header::new(FileKind::Journal, &[lan(), guest()], 0)
            };
            bytes.extend_from_slice(&header.encode());
        }
        bytes.extend_from_slice(&body);
        fs::write(d.0.join(file_name(FileKind::Journal, 0)), &bytes).unwrap();
        let _ = load(&d.0, &[lan(), guest()], None, true);
        let _ = load(&d.0, &[guest()], None, false);
    }
}

// The format-1 fixtures (tests/fixtures/store-v1/README.md): written by the daemon before
// pools, for 10.0.0.0/24 in blocks of 4.

fn v1_range() -> StorePool {
    pool("lan", 0, 0, 0, 24, 2)
}

/// A copy of a fixture directory, so opening it (which starts a journal) leaves the
/// fixture as it is.
fn fixture(name: &str) -> TempDir {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/store-v1")
        .join(name);
    let d = TempDir::new(&format!("v1{name}"));
    for e in fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), d.0.join(e.file_name())).unwrap();
    }
    d
}

/// The fixtures' records, in the order they were appended.
fn v1_records() -> Vec<Change> {
    let y2100 = Instant::from_millis(4_102_444_800_000);
    let hw = |n: u8| {
        let mut a = [0u8; 16];
        a[..6].copy_from_slice(&[2, 0, 0, 0, 0, n]);
        a
    };
    vec![
        Change::BlockOwned {
            block: 0,
            since: Instant::from_millis(1_700_000_000_000),
        },
        Change::BlockOwned {
            block: 1,
            since: Instant::from_millis(1_700_000_001_000),
        },
        Change::Announced {
            at: Instant::from_millis(1_700_000_002_000),
            ttl: 300,
        },
        Change::Lease(LeaseRecord {
            ip: Ipv4Addr::new(10, 0, 0, 2),
            until: y2100,
            declined: false,
            client: Some(ClientKey::new(Some(b"laptop-id"), 1, &hw(2)[..6])),
            chaddr: hw(2),
            hostname: Some("laptop".into()),
        }),
        Change::Lease(LeaseRecord {
            ip: Ipv4Addr::new(10, 0, 0, 5),
            until: y2100,
            declined: false,
            client: Some(ClientKey::new(None, 1, &hw(5)[..6])),
            chaddr: hw(5),
            hostname: None,
        }),
        Change::BlockHold {
            block: 1,
            until: y2100,
        },
        Change::Option {
            code: 6,
            payload: Some(vec![10, 0, 0, 53]),
        },
        Change::LeaseGone(Ipv4Addr::new(10, 0, 0, 3)),
    ]
}

fn v1_state() -> PoolState {
    let mut s = PoolState::default();
    for c in v1_records() {
        s.apply(c);
    }
    s
}

#[test]
fn the_v1_journal_fixture_reads_record_for_record() {
    let d = fixture("journal");
    let bytes = fs::read(d.0.join("journal.0000000000000000")).unwrap();
    let (h, mut off) = Header::decode(&bytes).unwrap();
    assert_eq!(h.pools, Pools::V1(StoredRange::of(&v1_range().range)));
    let mut back = Vec::new();
    while off < bytes.len() {
        let (pool, c, n) = codec::decode(&bytes[off..], h.format()).unwrap();
        assert_eq!(pool, 0);
        back.push(c);
        off += n;
    }
    assert_eq!(back, v1_records());
}

#[test]
fn a_v1_store_belongs_to_the_pool_of_its_range_whatever_its_name() {
    for name in ["journal", "compacted"] {
        let d = fixture(name);
        let before = contents(&d.0);
        // `lan` second, so its index differs from the format-1 file's implicit 0.
        let pools = vec![pool("other", 0, 1, 0, 24, 2), v1_range()];
        let (store, state, info) = Store::open(opts_with(&d.0, pools.clone())).unwrap();
        drop(store);
        assert_eq!(info.records, 8, "{name}");
        assert_eq!(info.truncated, 0, "{name}");
        assert!(info.dropped.is_empty(), "{name}");
        assert!(info.pools_changed, "{name}");
        assert_eq!(state.pools.len(), 1, "{name}");
        assert_eq!(state.pools["lan"], v1_state(), "{name}");
        // The format-1 files were not written to; a format-2 journal was started after them.
        for (file, bytes) in &before {
            assert_eq!(&fs::read(d.0.join(file)).unwrap(), bytes, "{name}: {file}");
        }
        let newest = journal(&d.0);
        assert_eq!(
            Header::decode(&fs::read(&newest).unwrap()).unwrap().0.pools,
            Pools::V2(codec::table(&pools))
        );
        let r = state.into_restored(&pools, &WallClock::now(Instant::from_millis(1 << 40)));
        assert_eq!(r[0], Restored::default());
        assert_eq!(r[1].leases.len(), 2, "{name}");
        assert_eq!(r[1].holds.len(), 1, "{name}");
        assert_eq!(r[1].options, vec![(6, Some(vec![10, 0, 0, 53]))]);
    }
}

#[test]
fn a_v1_store_of_a_range_no_pool_has_is_refused() {
    let d = fixture("compacted");
    let before = contents(&d.0);
    let moved = pool("default", 0, 1, 0, 24, 2);
    let err = Store::open(opts_with(&d.0, vec![lan(), moved]))
        .err()
        .unwrap();
    assert!(
        matches!(&err, StoreError::Mismatch { pool: Some(p), .. } if p == "default"),
        "{err}"
    );
    assert!(
        err.to_string().contains("holds pool 'default' as 10.0.0.0/24 in blocks of 4 addresses (-b 2) (a store from before pools), but this daemon configures it as 10.0.1.0/24 in blocks of 4 addresses (-b 2)"),
        "{err}"
    );
    // Without a pool called default, the message names the range.
    let err = Store::open(opts_with(&d.0, vec![pool("lan", 0, 0, 0, 24, 3)]))
        .err()
        .unwrap();
    assert!(
        matches!(&err, StoreError::Mismatch { pool: None, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("holds the state of 10.0.0.0/24 in blocks of 4 addresses (-b 2) (a store from before pools), but no pool this daemon configures has that range (lan: 10.0.0.0/24 in blocks of 8 addresses (-b 3))"),
        "{err}"
    );
    assert_eq!(contents(&d.0), before);
}

#[test]
fn a_migrated_v1_store_keeps_its_state_and_sheds_format_1_at_compaction() {
    for name in ["journal", "compacted"] {
        let d = fixture(name);
        let pools = vec![pool("other", 0, 1, 0, 24, 2), v1_range()];
        let o = opts_with(&d.0, pools.clone());
        let added = Change::Lease(LeaseRecord {
            ip: Ipv4Addr::new(10, 0, 0, 9),
            until: Instant::from_millis(4_102_444_800_000),
            declined: false,
            client: None,
            chaddr: [0; 16],
            hostname: None,
        });
        let identity = WallClock {
            core_now: Instant::from_millis(1_700_000_000_000),
            wall_now_ms: 1_700_000_000_000,
        };
        let (mut store, _, _) = Store::open(o.clone()).unwrap();
        store.append(&[(1, added.clone()), (0, lease(1, 300))], &identity);
        store.close();
        let mut want = v1_state();
        want.apply(added);
        let (store, state, info) = Store::open(o.clone()).unwrap();
        drop(store);
        assert!(!info.pools_changed, "{name}");
        assert_eq!(state.pools["lan"], want, "{name}");
        assert_eq!(state.pools["other"].leases.len(), 1, "{name}");
        // After a compaction, only format-2 files are left, and they hold the same.
        compact_now(&d.0, &pools);
        let files = headers(&d.0);
        assert!(
            files.values().all(|h| h.format() == Format::V2),
            "{name}: {files:?}"
        );
        let (store, again, info) = Store::open(o.clone()).unwrap();
        drop(store);
        assert_eq!(info.files, 1, "{name}");
        // (The lease of `other` had expired by the real clock at compaction.)
        assert_eq!(again.pools["lan"], want, "{name}");
        // Named now: the state is bound to the name `lan`, not to the range, so a pool of
        // that range under another name starts empty and `lan` is dropped.
        let renamed = vec![pool("clients", 0, 0, 0, 24, 2)];
        let (_, state, info) = Store::open(opts_with(&d.0, renamed)).unwrap();
        assert!(state.pools.is_empty(), "{name}");
        assert_eq!(info.dropped.len(), 2, "{name}");
    }
}

#[test]
fn the_writer_compacts_across_pool_tables() {
    // Format 1, then format 2 for other pools, compacted by the writer as the journal grows.
    let d = fixture("journal");
    let pools = vec![v1_range(), pool("other", 0, 1, 0, 24, 2)];
    let mut o = opts_with(&d.0, pools.clone());
    o.compact_min_bytes = 1;
    let (mut store, _, info) = Store::open(o.clone()).unwrap();
    assert_eq!(info.journal_generation, 1);
    let clock = WallClock::now(Instant::from_millis(1_000_000));
    store.append(&[(1, lease(1, 300))], &clock);
    // Closing waits for the compaction the batch started.
    store.close();
    let files = headers(&d.0);
    let names: Vec<&str> = files.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["journal.0000000000000002", "snapshot.0000000000000002"]
    );
    for h in files.values() {
        assert_eq!(h.pools, Pools::V2(codec::table(&pools)));
    }
    let (_, state, info) = Store::open(o).unwrap();
    // Folded: 2 blocks, a hold, the announcement, an option, 3 leases (no LeaseGone).
    assert_eq!((info.files, info.records), (2, 8));
    assert_eq!(state.pools["lan"], v1_state());
    assert_eq!(state.pools["other"].leases.len(), 1);
}

// The local service's addresses (record kinds 8 and 9).

fn local(n: u8, held: crate::persist::LocalHeld) -> Change {
    Change::Local {
        ip: Ipv4Addr::new(10, 1, 0, n),
        held,
    }
}

#[test]
fn local_addresses_survive_the_journal_and_compaction() {
    use crate::persist::LocalHeld::{Active, Marked, Standby};
    let d = TempDir::new("local");
    let pools = vec![lan(), guest()];
    let o = opts_with(&d.0, pools.clone());
    let batches = [
        vec![
            (1, local(9, Standby)),
            (1, local(10, Standby)),
            (0, lease(3, FOREVER)),
            (1, local(11, Standby)),
        ],
        vec![
            (1, local(10, Active)),
            (1, Change::LocalGone(Ipv4Addr::new(10, 1, 0, 9))),
            (1, local(11, Marked)),
        ],
        vec![(1, local(12, Standby)), (1, local(10, Standby))],
    ];
    let (mut store, _, _) = Store::open(o.clone()).unwrap();
    for b in &batches {
        store.append(b, &clock());
    }
    store.close();
    let want = BTreeMap::from([
        (Ipv4Addr::new(10, 1, 0, 10), Standby),
        (Ipv4Addr::new(10, 1, 0, 11), Marked),
        (Ipv4Addr::new(10, 1, 0, 12), Standby),
    ]);
    let (store, state, info) = Store::open(o.clone()).unwrap();
    drop(store);
    assert_eq!(info.records, 9);
    assert_eq!(state.pools["guest"].local, want);
    assert!(state.pools["lan"].local.is_empty());
    // Compaction keeps the live ones (they do not expire), one record each.
    compact_now(&d.0, &pools);
    let (snapshots, journals) = scan(&d.0).unwrap();
    assert_eq!((snapshots.len(), journals.len()), (1, 0));
    let (store, state, info) = Store::open(o.clone()).unwrap();
    drop(store);
    assert_eq!(info.records, 1 + 3, "the lease and three addresses");
    assert_eq!(state.pools["guest"].local, want);
    let r = state.into_restored(&pools, &clock());
    assert!(r[0].local.is_empty());
    assert_eq!(r[1].local, want.into_iter().collect::<Vec<_>>());
}

/// Allocations survive the journal and compaction with owner, node, time and metadata;
/// released addresses keep their cooldown until it ends.
#[test]
fn allocations_survive_the_journal_and_compaction() {
    let d = TempDir::new("alloc");
    let pools = vec![lan(), guest()];
    let o = opts_with(&d.0, pools.clone());
    let ip = |k: u8| Ipv4Addr::new(10, 1, 0, k);
    let alloc = |owner: &str| crate::api::Allocation {
        owner: owner.into(),
        node_id: crate::wire::NodeId([7; 8]),
        since: clock().core(clock().wall_now_ms - 5_000),
        meta: [("env".to_string(), "prod".to_string())].into(),
    };
    // Beyond the real clock too, which compaction judges expiry by.
    let far = clock().core(4_000_000_000_000);
    let past = clock().core(clock().wall_now_ms - 1_000);
    let batches = [
        vec![
            (
                1,
                Change::Allocated {
                    ip: ip(9),
                    alloc: alloc("a"),
                },
            ),
            (
                1,
                Change::Allocated {
                    ip: ip(10),
                    alloc: alloc("b"),
                },
            ),
            (
                1,
                Change::Allocated {
                    ip: ip(11),
                    alloc: alloc("c"),
                },
            ),
        ],
        vec![
            (
                1,
                Change::AllocGone {
                    ip: ip(10),
                    cooldown: Some(far),
                },
            ),
            (
                1,
                Change::AllocGone {
                    ip: ip(11),
                    cooldown: Some(past),
                },
            ),
            (
                1,
                Change::AllocGone {
                    ip: ip(12),
                    cooldown: None,
                },
            ),
        ],
    ];
    let (mut store, _, _) = Store::open(o.clone()).unwrap();
    for b in &batches {
        store.append(b, &clock());
    }
    store.close();
    for compacted in [false, true] {
        if compacted {
            compact_now(&d.0, &pools);
        }
        let (store, state, _) = Store::open(o.clone()).unwrap();
        drop(store);
        let g = &state.pools["guest"];
        assert_eq!(
            g.allocations.keys().copied().collect::<Vec<_>>(),
            vec![ip(9)]
        );
        assert_eq!(&*g.allocations[&ip(9)].owner, "a");
        assert_eq!(g.allocations[&ip(9)].meta["env"], "prod");
        let r = state.into_restored(&pools, &clock());
        assert_eq!(r[1].allocations.len(), 1);
        assert_eq!(r[1].allocations[0].1.node_id, crate::wire::NodeId([7; 8]));
        // The ended cooldown is gone, the running one kept.
        assert_eq!(
            r[1].cooling.iter().map(|c| c.0).collect::<Vec<_>>(),
            vec![ip(10)]
        );
    }
}

/// A store with records a newer daemon wrote (here kind 200, which no version has) is
/// refused at start-up, naming file and offset, never read with the record skipped: the
/// state it holds would be lost silently.
#[test]
fn a_record_of_an_unknown_kind_refuses_the_store() {
    let d = TempDir::new("unknown-kind");
    write_all(&d.0, &[lease(1, FOREVER)]);
    let path = journal(&d.0);
    let mut bytes = fs::read(&path).unwrap();
    let at = bytes.len();
    let body: &[u8] = &[200, 0, 1, 2, 3, 4];
    bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    bytes.extend_from_slice(body);
    fs::write(&path, &bytes).unwrap();
    let before = contents(&d.0);
    let e = Store::open(opts(&d.0)).err().expect("refused");
    let text = e.to_string();
    assert!(
        matches!(&e, StoreError::Corrupt { offset, .. } if *offset == at as u64),
        "{text}"
    );
    assert!(
        text.contains("kind 200") && text.contains("newer ddhcpd"),
        "{text}"
    );
    assert_eq!(contents(&d.0), before, "nothing cut");
    // Damage before it does not make it a torn tail either: it is not cut off.
    bytes[at - 1] ^= 0xff;
    fs::write(&path, &bytes).unwrap();
    assert!(matches!(
        Store::open(opts(&d.0)),
        Err(StoreError::Corrupt { .. })
    ));
    assert_eq!(fs::read(&path).unwrap(), bytes);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]

    /// Whatever the order of Local and LocalGone records, over any number of batches and
    /// with a compaction anywhere, what comes back is the last state of each address.
    #[test]
    fn local_addresses_come_back_as_last_written(
        ops in proptest::collection::vec((0u8..12, 0u8..4), 1..80),
        batch in 1usize..10,
        compact_after in proptest::option::of(0usize..80),
    ) {
        use crate::persist::LocalHeld;
        let d = TempDir::new("local-prop");
        let o = opts(&d.0);
        let mut want = BTreeMap::new();
        let changes: Vec<Change> = ops
            .iter()
            .map(|&(n, op)| {
                let ip = Ipv4Addr::new(10, 0, 7, n);
                let held = match op {
                    0 => None,
                    1 => Some(LocalHeld::Standby),
                    2 => Some(LocalHeld::Active),
                    _ => Some(LocalHeld::Marked),
                };
                match held {
                    Some(held) => {
                        want.insert(ip, held);
                        Change::Local { ip, held }
                    }
                    None => {
                        want.remove(&ip);
                        Change::LocalGone(ip)
                    }
                }
            })
            .collect();
        for (k, chunk) in changes.chunks(batch).enumerate() {
            write_to(o.clone(), &to(0, chunk));
            if compact_after.is_some_and(|c| c / batch == k) {
                compact_now(&d.0, &o.pools);
            }
        }
        let (store, state, _) = Store::open(o.clone()).unwrap();
        drop(store);
        let got = state.pools.get("lan").map(|p| p.local.clone()).unwrap_or_default();
        proptest::prop_assert_eq!(&got, &want);
        let r = state.into_restored(&o.pools, &clock()).remove(0);
        proptest::prop_assert_eq!(r.local, want.into_iter().collect::<Vec<_>>());
    }
}

/// What a replica holder journals of other nodes' blocks comes back after a restart, in
/// core time and without what expired, through the journal and through a snapshot alike;
/// a block its owner said it gave up (`BlockGone`) does not.
#[test]
fn replicas_held_for_other_nodes_survive_a_restart_and_a_compaction() {
    let d = TempDir::new("replicas");
    let a = crate::wire::NodeId([0xa; 8]);
    let b = crate::wire::NodeId([0xb; 8]);
    let rep = |origin, block, c: Change| Change::Replica {
        origin,
        block,
        change: Box::new(c),
    };
    let since = Instant::from_millis(990_000);
    let alloc = crate::api::Allocation {
        owner: "vm-1".into(),
        node_id: a,
        since,
        meta: BTreeMap::from([("rack".to_string(), "b2".to_string())]),
    };
    let changes = vec![
        rep(a, 3, Change::BlockOwned { block: 3, since }),
        rep(a, 3, lease(13, FOREVER)),
        rep(a, 3, lease(14, 30)),
        rep(
            a,
            3,
            Change::Allocated {
                ip: Ipv4Addr::new(10, 0, 0, 15),
                alloc: alloc.clone(),
            },
        ),
        rep(b, 5, Change::BlockOwned { block: 5, since }),
        rep(b, 5, lease(21, FOREVER)),
        rep(b, 5, Change::BlockGone { block: 5 }),
        // Our own lease is not mixed up with them.
        lease(40, FOREVER),
    ];
    write_all(&d.0, &changes);
    let later = WallClock {
        core_now: Instant::from_millis(5_000),
        wall_now_ms: 1_700_000_100_000,
    };
    let check = |state: State| {
        let r = state.into_restored(&[lan()], &later).remove(0);
        assert_eq!(r.leases.len(), 1, "{r:?}");
        assert_eq!(r.replicas.len(), 1, "{:?}", r.replicas);
        let (origin, block, held) = &r.replicas[0];
        assert_eq!((*origin, *block), (a, 3));
        // Lease 14 ran out (30 s, read 100 s later); lease 13 has 100 s less left.
        assert_eq!(held.leases.len(), 1);
        let l = &held.leases[&Ipv4Addr::new(10, 0, 0, 13)];
        assert_eq!(
            l.until,
            Instant::from_millis(5_000 + FOREVER * 1000 - 100_000)
        );
        assert_eq!(
            held.allocations[&Ipv4Addr::new(10, 0, 0, 15)].owner,
            alloc.owner
        );
    };
    let (store, state, info) = Store::open(opts(&d.0)).unwrap();
    drop(store);
    assert_eq!(info.records, changes.len() as u64);
    check(state);
    compact_now(&d.0, &[lan()]);
    let (store, state, _) = Store::open(opts(&d.0)).unwrap();
    drop(store);
    check(state);
}

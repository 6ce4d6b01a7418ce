use super::*;

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

fn range() -> ManagedRange {
    ManagedRange::new(Ipv4Addr::new(10, 0, 0, 0), 16, 2).unwrap()
}

fn opts(dir: &Path) -> StoreOptions {
    StoreOptions {
        dir: dir.to_path_buf(),
        range: range(),
        fsync: true,
        compact_min_bytes: COMPACT_MIN_BYTES,
    }
}

/// A clock at core time 1000 s and wall time 1.7e12 ms.
fn clock() -> WallClock {
    WallClock {
        core_now: Instant::from_millis(1_000_000),
        wall_now_ms: 1_700_000_000_000,
    }
}

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
    let (mut store, _, _) = Store::open(opts(dir)).unwrap();
    store.append(changes, &clock());
    let s = store.close();
    assert!(!s.failed);
    assert_eq!(s.seq, 1);
}

fn journal(dir: &Path) -> PathBuf {
    let (_, journals) = scan(dir).unwrap();
    dir.join(file_name(FileKind::Journal, *journals.last().unwrap()))
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
    let r = state.into_restored(&later);
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
    assert!(state.into_restored(&much_later).leases.is_empty());
}

#[test]
fn a_torn_last_record_is_cut_and_the_rest_loads() {
    let d = TempDir::new("torn");
    write_all(&d.0, &[lease(1, 300), lease(2, 300)]);
    let path = journal(&d.0);
    let good = fs::metadata(&path).unwrap().len();
    // Half of a third record, as a crash in the middle of an append leaves it.
    let mut third = Vec::new();
    codec::encode(&lease(3, 300), |t| t.as_millis(), &mut third);
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(&third[..third.len() / 2]).unwrap();
    drop(f);
    let (store, state, info) = Store::open(opts(&d.0)).unwrap();
    assert_eq!(state.leases.len(), 2);
    assert_eq!(info.truncated, third.len() as u64 / 2);
    assert_eq!(fs::metadata(&path).unwrap().len(), good);
    // Appending after the cut gives a clean journal.
    let mut store = store;
    store.append(&[lease(4, 300)], &clock());
    store.close();
    let (_, state, info) = Store::open(opts(&d.0)).unwrap();
    assert_eq!(state.leases.len(), 3);
    assert_eq!(info.truncated, 0);
}

#[test]
fn damage_followed_by_intact_records_is_refused() {
    let d = TempDir::new("corrupt");
    write_all(&d.0, &[lease(1, 300), lease(2, 300), lease(3, 300)]);
    let path = journal(&d.0);
    let mut bytes = fs::read(&path).unwrap();
    bytes[HEADER_LEN + 12] ^= 0x40; // inside the first record
    fs::write(&path, &bytes).unwrap();
    let err = Store::open(opts(&d.0)).err().unwrap();
    assert!(matches!(err, StoreError::Corrupt { offset, .. } if offset == HEADER_LEN as u64));
    assert!(err.to_string().contains("is damaged at byte 32"), "{err}");
    // Nothing was cut.
    assert_eq!(fs::read(&path).unwrap(), bytes);
}

#[test]
fn a_store_of_another_network_or_block_size_is_refused() {
    let d = TempDir::new("mismatch");
    write_all(&d.0, &[lease(1, 300)]);
    let mut o = opts(&d.0);
    o.range = ManagedRange::new(Ipv4Addr::new(10, 0, 0, 0), 16, 3).unwrap();
    let err = Store::open(o).err().unwrap();
    assert!(matches!(err, StoreError::Mismatch { .. }));
    let text = err.to_string();
    assert!(
        text.contains("10.0.0.0/16 in blocks of 4 addresses (-b 2)")
            && text.contains("10.0.0.0/16 in blocks of 8 addresses (-b 3)"),
        "{text}"
    );
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
        let batch: Vec<Change> = (0..200).map(|n| lease(n, 300 + round)).collect();
        store.append(&batch, &clock);
        // Let the writer keep up, so it gets to compact between batches.
        while store.synced().seq < store.written() {
            std::thread::sleep(Duration::from_micros(100));
        }
    }
    store.close();
    let (snapshots, _) = scan(&d.0).unwrap();
    assert!(!snapshots.is_empty(), "no snapshot written");
    // On a busy machine the journal may outgrow the threshold while a compaction runs
    // (appends never wait for it); one more batch lets the writer catch up, and closing
    // waits for the compaction it starts.
    let (mut store, _, _) = Store::open(o.clone()).unwrap();
    store.append(&[lease(0, 300 + 499)], &clock);
    store.close();
    let total: u64 = fs::read_dir(&d.0)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    let (_, journals) = scan(&d.0).unwrap();
    assert!(
        total < o.compact_min_bytes,
        "store is {total} bytes for 200 leases"
    );
    assert!(journals.len() <= 1, "{journals:?}");
    let (_, state, _) = Store::open(o).unwrap();
    assert_eq!(state.leases.len(), 200);
    let Change::Lease(last) = lease(7, 300 + 499) else {
        unreachable!()
    };
    let wall = clock.wall(last.until);
    assert_eq!(
        state.leases[&Ipv4Addr::new(10, 0, 0, 7)].until.as_millis(),
        wall
    );
}

#[test]
fn a_crash_between_snapshot_and_cleanup_loads_the_snapshot_once() {
    let d = TempDir::new("crashcompact");
    write_all(&d.0, &[lease(1, 300), lease(2, 300)]);
    // Snapshot 1 written, journal 0 not yet deleted, journal 1 with one more change.
    let (state, _) = load(&d.0, &range(), None, false).unwrap();
    write_snapshot(&d.0, &range(), 1, &state).unwrap();
    let mut f = create_journal(&d.0, &range(), 1).unwrap();
    let mut buf = Vec::new();
    codec::encode(
        &Change::LeaseGone(Ipv4Addr::new(10, 0, 0, 1)),
        |t| t.as_millis(),
        &mut buf,
    );
    f.write_all(&buf).unwrap();
    fs::write(d.0.join("snapshot.0000000000000002.tmp"), b"half").unwrap();
    let (store, state, info) = Store::open(opts(&d.0)).unwrap();
    drop(store);
    assert_eq!(state.leases.len(), 1);
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
    let r = state.into_restored(&behind);
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
    assert!(state.leases.is_empty());
    assert_eq!(info.truncated, 20);
    assert_eq!(fs::metadata(&path).unwrap().len(), HEADER_LEN as u64);
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

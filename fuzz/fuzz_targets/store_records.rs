//! State store files: a journal or snapshot is read back at every start, and a damaged or
//! hostile one must not panic the daemon, nor may whatever it decodes to panic the node
//! that restores it.
//!
//! The input is a whole file: if it starts with a header, records after it are read in
//! its format as `Store::open` reads them; otherwise the input is read as records of both
//! formats (version 1 without, version 2 with a pool byte). A damaged frame is skipped one
//! byte at a time so that later frames are reached too. Records go to pools `p0`, `p1`, …
//! by their pool byte. The replayed state is converted to core time for two configured pools
//! (with the wall clock both ahead of and behind the records), and the first pool's state is
//! restored into a node on 10.0.0.0/24 in blocks of 4 with a DHCP service, which then runs
//! its timers for an hour.
#![no_main]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use ddhcp::blocks::ClaimConfig;
use ddhcp::dhcp::DhcpConfig;
use ddhcp::node::{Node, NodeConfig};
use ddhcp::range::ManagedRange;
use ddhcp::store::codec::{self, Format, Header};
use ddhcp::store::{PoolState, State, StorePool, WallClock};
use ddhcp::time::Instant;
use ddhcp::wire::NodeId;
use libfuzzer_sys::fuzz_target;

/// Replays `data` as records of `format` into `pools`, keyed by pool byte.
fn replay(data: &[u8], format: Format, pools: &mut BTreeMap<String, PoolState>) {
    let mut off = 0;
    while off < data.len() {
        match codec::decode(&data[off..], format) {
            Ok((pool, change, n)) => {
                assert!(n > 0 && off + n <= data.len());
                pools.entry(format!("p{pool}")).or_default().apply(change);
                off += n;
            }
            Err(_) => off += 1,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut state = State::default();
    match Header::decode(data) {
        Ok((header, len)) => {
            assert!(len <= data.len());
            replay(&data[len..], header.format(), &mut state.pools);
        }
        Err(_) => {
            let _ = codec::within_header(data);
            replay(data, Format::V1, &mut state.pools);
            replay(data, Format::V2, &mut state.pools);
        }
    }
    let range = ManagedRange::new(Ipv4Addr::new(10, 0, 0, 0), 24, 2).unwrap();
    let claim = ClaimConfig {
        tentative_timeout: Duration::from_secs(2),
        block_timeout: Duration::from_secs(30),
        spare_leases: 4,
        needless_timeout: Duration::from_secs(60),
        learning: data.first().is_some_and(|b| b & 1 == 1),
    };
    // Both pools of the store: p0 serves DHCP, p1 has no service.
    let mut cfg = NodeConfig::single(
        range,
        claim.clone(),
        Some(DhcpConfig {
            options: vec![],
            interface_addr: Some(Ipv4Addr::new(10, 0, 0, 1)),
        }),
    );
    cfg.pools[0].name = "p0".into();
    let mut p1 = NodeConfig::single(
        ManagedRange::new(Ipv4Addr::new(10, 0, 1, 0), 24, 2).unwrap(),
        claim,
        None,
    )
    .pools
    .remove(0);
    p1.name = "p1".into();
    cfg.pools.push(p1);
    let pools = [
        StorePool {
            name: "p0".into(),
            range,
        },
        StorePool {
            name: "p1".into(),
            range: ManagedRange::new(Ipv4Addr::new(10, 0, 1, 0), 24, 2).unwrap(),
        },
    ];
    let now = Instant::from_millis(1 << 40);
    for wall_now_ms in [0, 1_700_000_000_000, u64::MAX / 2] {
        let clock = WallClock {
            core_now: now,
            wall_now_ms,
        };
        let restored = state.clone().into_restored(&pools, &clock);
        assert_eq!(restored.len(), pools.len());
        let mut node = Node::new(cfg.clone(), NodeId([5; 8]), now, 7);
        node.restore(now, restored);
        let mut t = now;
        for _ in 0..200 {
            let next = node.poll_timeout();
            if next > now + Duration::from_secs(3600) {
                break;
            }
            t = t.max(next);
            node.handle_timeout(t);
            assert!(node.poll_timeout() > t, "timer would spin");
            while node.poll_output().is_some() {}
            let _ = node.take_changes();
        }
    }
});

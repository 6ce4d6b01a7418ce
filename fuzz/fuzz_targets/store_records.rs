//! State store files: a journal or snapshot is read back at every start, and a damaged or
//! hostile one must not panic the daemon, nor may whatever it decodes to panic the node
//! that restores it.
//!
//! The input is a file body (after the header): records are read as `Store::open` reads
//! them, skipping a byte after each damaged frame so that later frames are reached too;
//! the header decoder sees the first 32 bytes. The replayed state is converted to core time
//! (with the wall clock both ahead of and behind the records) and restored into a node on
//! 10.0.0.0/24 in blocks of 4 with a DHCP service, which then runs its timers for an hour.
#![no_main]

use std::net::Ipv4Addr;
use std::time::Duration;

use ddhcp::blocks::ClaimConfig;
use ddhcp::dhcp::DhcpConfig;
use ddhcp::node::{Node, NodeConfig};
use ddhcp::range::ManagedRange;
use ddhcp::store::codec::{self, Header};
use ddhcp::store::{State, WallClock};
use ddhcp::time::Instant;
use ddhcp::wire::NodeId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Header::decode(data);
    let mut state = State::default();
    let mut off = 0;
    while off < data.len() {
        match codec::decode(&data[off..]) {
            Ok((change, n)) => {
                assert!(n > 0 && off + n <= data.len());
                state.apply(change);
                off += n;
            }
            Err(_) => off += 1,
        }
    }
    let range = ManagedRange::new(Ipv4Addr::new(10, 0, 0, 0), 24, 2).unwrap();
    let cfg = NodeConfig {
        range,
        claim: ClaimConfig {
            tentative_timeout: Duration::from_secs(2),
            block_timeout: Duration::from_secs(30),
            spare_leases: 4,
            needless_timeout: Duration::from_secs(60),
            learning: data.first().is_some_and(|b| b & 1 == 1),
        },
        dhcp: Some(DhcpConfig {
            options: vec![],
            interface_addr: Some(Ipv4Addr::new(10, 0, 0, 1)),
        }),
    };
    let now = Instant::from_millis(1 << 40);
    for wall_now_ms in [0, 1_700_000_000_000, u64::MAX / 2] {
        let restored = state.clone().into_restored(&WallClock {
            core_now: now,
            wall_now_ms,
        });
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
            while node.poll_transmit().is_some() {}
            while node.poll_event().is_some() {}
            let _ = node.take_changes();
        }
    }
});

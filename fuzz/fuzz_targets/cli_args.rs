//! The command line: clap parsing plus `Args::validate_with`, `parse_option` and
//! `parse_range` must never panic, whatever the arguments (`--pool` values among them). A
//! configuration that validates must hold what `Config` promises (unique pool names,
//! disjoint ranges, one dhcp pool per client interface, options that pass `set-option`'s
//! checks) and be usable: a node built from each of its first two pools as the daemon does
//! (DHCP service with the pool's options when it has a client interface; ranges of at most
//! 4096 blocks, to keep runs fast) runs its timers for a while and answers a DISCOVER and a
//! REQUEST without panicking. `--config` is never read (the input could name `/dev/zero`);
//! the `config_file` target feeds file text.
//!
//! The input, read as lossy UTF-8, is split on NUL if it contains one (so arguments may hold
//! spaces), else on whitespace, and passed after "ddhcpd".
#![no_main]

use clap::Parser;
use ddhcp::config::{Args, Config, PoolUse, parse_option, parse_range};
use ddhcp::daemon::setup::{System, node_config};
use ddhcp::node::{Node, Output};
use ddhcp::time::Instant;
use ddhcp::wire::{NodeId, Packet};
use libfuzzer_sys::fuzz_target;
use std::net::Ipv4Addr;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let argv: Vec<&str> = if text.contains('\0') {
        text.split('\0').collect()
    } else {
        text.split_whitespace().collect()
    };

    let _ = parse_option("-o", &text);
    for a in &argv {
        let _ = parse_option("-o", a);
    }
    for w in argv.windows(2) {
        if let Ok(r) = parse_range(w[0], w[1]) {
            check_range(&r);
        }
    }
    if let Some((a, b)) = text.split_once('\0').or_else(|| text.split_once(' '))
        && let Ok(r) = parse_range(a, b)
    {
        check_range(&r);
    }

    let args = match Args::try_parse_from(std::iter::once("ddhcpd").chain(argv.iter().copied())) {
        Ok(a) => a,
        Err(e) => {
            let _ = ddhcp::config::one_line_clap_error(&e);
            return;
        }
    };
    let cfg = match args.validate_with(None) {
        Ok(cfg) => cfg,
        Err(e) => {
            assert!(!e.to_string().contains('\n'), "{e:?}");
            return;
        }
    };
    check_config(&cfg);
    run_node(&cfg);
});

/// A host on which every interface exists and has an address, so the configuration
/// reaches the core whole (the daemon's own setup path, `daemon::setup::node_config`).
struct AnyHost;

impl System for AnyHost {
    fn iface_exists(&self, _: &str) -> Result<(), String> {
        Ok(())
    }

    fn iface_ipv4(&self, _: &str) -> Option<Ipv4Addr> {
        Some(Ipv4Addr::new(192, 0, 2, 1))
    }
}

/// What `Config` promises about its pools.
fn check_config(cfg: &Config) {
    assert!(!cfg.pools.is_empty());
    for (i, p) in cfg.pools.iter().enumerate() {
        check_range(&p.range);
        assert!(!p.name.is_empty() && p.name.len() <= 32, "{p:?}");
        for o in &p.options {
            assert!(o.code != 0 && o.code != 255);
            // Start-up options pass the same checks as `set-option`.
            assert!(
                ddhcp::dhcp::options::OptionStore::validate(o).is_ok(),
                "{o:?}"
            );
        }
        if p.use_ != PoolUse::Dhcp {
            assert!(p.options.is_empty(), "{p:?}");
        }
        let total = 1u64 << (32 - u32::from(p.range.prefix_len()));
        assert!(u64::from(p.spare) <= total);
        for q in &cfg.pools[..i] {
            assert_ne!(p.name, q.name);
            assert!(
                q.range.locate(p.range.prefix()).is_none()
                    && p.range.locate(q.range.prefix()).is_none(),
                "{} and {} overlap",
                p.range,
                q.range
            );
            if p.use_ == PoolUse::Dhcp && q.use_ == PoolUse::Dhcp && p.iface.is_some() {
                assert_ne!(p.iface, q.iface);
            }
        }
        assert!(cfg.pool_index(Some(&p.name)) == Ok(i));
    }
    let _ = cfg.pool_index(None);
}

/// The daemon's node for the whole configuration: every pool's datagrams carry its own
/// swarm, and DHCP goes to each serving pool.
fn run_node(cfg: &Config) {
    let blocks: u64 = cfg
        .pools
        .iter()
        .map(|p| u64::from(p.range.num_blocks()))
        .sum();
    if blocks > 8192 {
        return;
    }
    let Ok(node_cfg) = node_config(cfg, &AnyHost) else {
        return; // refused at start-up (e.g. a use this release does not serve): exit 2
    };
    let id = cfg.node_id.unwrap_or(NodeId([1, 2, 3, 4, 5, 6, 7, 8]));
    let mut node = Node::new(node_cfg, id, Instant::ZERO, 7);
    let mut now = Instant::ZERO;
    for i in 0..64 {
        if i == 32 || i == 33 {
            for p in 0..node.pools().len() {
                node.handle_dhcp(now, p, &client_message(if i == 32 { 1 } else { 3 }));
            }
        }
        let t = node.poll_timeout();
        assert!(t >= now, "poll_timeout went backwards");
        now = t;
        node.handle_timeout(now);
        while let Some(o) = node.poll_output() {
            if let Output::Peer(t) = o {
                let p = Packet::decode(&t.payload).expect("node sent an undecodable datagram");
                assert!(
                    node.pools().iter().any(|q| q.swarm() == p.swarm),
                    "sent for no pool of ours"
                );
            }
        }
        let _ = node.status(now);
        let _ = node.blocks_view(now);
    }
}

fn check_range(r: &ddhcp::range::ManagedRange) {
    let n = r.num_blocks();
    assert!(n >= 1);
    let _ = r.swarm();
    let _ = (r.netmask(), r.broadcast());
    for b in [0, n / 2, n - 1] {
        let first = r.block_first(b);
        assert_eq!(
            r.locate(first),
            Some((b, 0)),
            "locate(block_first({b})) in {r:?}"
        );
        let last = r.address(b, r.block_size() - 1);
        assert_eq!(r.locate(last), Some((b, r.block_size() - 1)));
    }
}

/// A DHCP client message of type `t` (1 DISCOVER, 3 REQUEST) asking for many options.
fn client_message(t: u8) -> Vec<u8> {
    let prl: Vec<u8> = (1..=254).collect();
    // Option 57: max message size 576.
    ddhcp::testing::client_message(t, 1, &[(55, &prl), (57, &[2, 64])])
}

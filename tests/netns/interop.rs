//! Interoperability with the C ddhcpd: real C daemons (sargon/ddhcpd at `3eefc27`, the
//! commit Gluon ships, and at `fdf26dc`, master) and our `ddhcpd` in one mesh, in network
//! namespaces (the `network-test` harness): block tables agree and stay disjoint with and
//! without the learning phase, whoever starts first; clients keep their address when they
//! roam between C and Rust nodes; a client cannot take an address leased to another MAC
//! through a Rust owner; racing C claimers cannot take a Rust owner's only block; a master
//! node (id zero) gets blocks; a Rust node killed with `kill -9` comes back with its blocks
//! and its client's lease. Needs root (skips loudly otherwise, fails under CI=true).
//!
//! The C binaries:
//!
//! - `DDHCP_C_DDHCPD`: path of the `3eefc27` `ddhcpd`; its `ddhcpdctl` must be beside it.
//! - `DDHCP_C_DDHCPD_MASTER`: path of the master (`fdf26dc`) `ddhcpd`, `ddhcpdctl` beside it.
//!
//! Unset, the tests build them from the source snapshots in `../shared/interop` (next to
//! the repository) into `target/interop/<commit>/` (needs tar, gcc, make; master also
//! libnl-3-dev and pkg-config) and reuse that build. If that is impossible the test prints
//! a loud `SKIPPED` line, or fails under `CI=true`; a variable that is set but names no
//! binary fails the test everywhere.
//!
//! - `DDHCP_INTEROP_TRIALS`: trials of the racing-claimers test (default 3).
//! - `DDHCP_INTEROP_RUST_BIN_DIR`: a directory with another build's `ddhcpd` and `ddhcpctl`
//!   to run instead of this package's (e.g. an older checkout's `target/debug`).
//!
//! Run: `cargo test --test netns -- interop:: --nocapture --test-threads=1`. Every test
//! prints its figures (times to agreement, counts of passed runs). The tests of this file
//! run one at a time.

#![allow(clippy::disallowed_methods)] // tests of real processes wait on real clocks

use crate::common;
#[path = "../common/interop.rs"]
mod scaffold;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::thread;
use std::time::{Duration, Instant};

use common::daemon::{LEASE_WAIT, counter, ctl_json_ok, ctl_ok, serial};
use common::netns::{TestNet, require_netns, wait_until};
use scaffold::{
    Answer, CBin, Flavor, Kind, Mesh, Owners, St, Swarm, View, dhcp_init_reboot, mac_bytes,
    require_c, server_mac_hex,
};

const G: Kind = Kind::GLUON;
const R: Kind = Kind::Rust;

/// Namespaces and the C binaries of `flavors`, or `None` (skipped).
fn prerequisites(test: &str, flavors: &[Flavor]) -> Option<Vec<CBin>> {
    if !require_netns(test) {
        return None;
    }
    require_c(test, flavors)
}

/// One refresh round and a second: long enough for an agreement to prove it lasts.
fn settle(s: &Swarm) -> Duration {
    Duration::from_millis(u64::from(s.ttl) * 250 + 1000)
}

/// Every node's id is what its kind makes of its server MAC: 3eefc27 the MAC + 2 bytes it
/// never writes, master 8 bytes it never writes, ours MAC + 2 random bytes
/// (docs/protocol.md).
fn check_ids(m: &Mesh) {
    for i in m.all() {
        let id = m.view(i).unwrap_or_else(|e| panic!("{e}")).node_id;
        let mac = server_mac_hex(&m.net, i);
        match m.kinds[i] {
            // Bytes 6-7 (3eefc27) and all eight (master) are never written: they hold what
            // the stack held, zeros with some compilers and not with others (reference
            // §2.9; Debian's gcc of 2026-12 leaves e.g. `…6400`, and `05D20A1300000000`).
            Kind::C(Flavor::Gluon) => assert!(
                id.starts_with(&mac) && id.len() == 16,
                "{}: node id {id}, MAC {mac}",
                m.name(i)
            ),
            Kind::C(Flavor::Master) => assert_eq!(id.len(), 16, "{}: node id {id}", m.name(i)),
            Kind::Rust => assert!(
                id.starts_with(&mac) && id.len() == 16,
                "{}: node id {id}, MAC {mac}",
                m.name(i)
            ),
        }
    }
}

/// The block index of `ip` in the swarm's range.
fn block_of(s: &Swarm, ip: &str) -> u64 {
    let (base, _) = s.range.split_once('/').unwrap();
    let base = u32::from(base.parse::<Ipv4Addr>().unwrap());
    let ip = u32::from(
        ip.parse::<Ipv4Addr>()
            .unwrap_or_else(|_| panic!("not an address: {ip}")),
    );
    u64::from((ip - base) >> s.pow)
}

/// MACs Rust node i lists `ip` as leased to.
fn rust_leased_to(net: &TestNet, i: usize, ip: &str) -> Vec<String> {
    let v = ctl_json_ok(net, i, &["leases"]);
    v["leases"]
        .as_array()
        .unwrap_or_else(|| panic!("no leases in {v}"))
        .iter()
        .filter(|l| l["ip"] == ip && l["state"] == "leased")
        .map(|l| l["mac"].as_str().unwrap_or_default().to_lowercase())
        .collect()
}

/// C log lines of node i that contain any of `needles`, for the figures.
fn c_log_lines(m: &Mesh, i: usize, needles: &[&str]) -> Vec<String> {
    m.net
        .daemon_log(i)
        .lines()
        .filter(|l| needles.iter().any(|n| l.contains(n)))
        .map(str::to_owned)
        .collect()
}

// ------------------------------------------------------------ agreement ---

/// Nodes 0 and 1 run C 3eefc27, nodes 2 and 3 ours. The group named first starts, (without
/// learning) claims, then the other group joins; everybody must agree. With `learning`, all
/// run their learning phase and the second group starts 3 s after the first, so it learns
/// the first group's claims.
fn two_groups(c_first: bool, learning: bool, bins: &[CBin]) {
    let swarm = Swarm {
        ttl: if learning { 6 } else { 10 },
        ..Swarm::default()
    };
    let mut m = Mesh::new(&[G, G, R, R], 1, swarm.clone(), bins);
    let (first, second) = if c_first {
        (vec![0, 1], vec![2, 3])
    } else {
        (vec![2, 3], vec![0, 1])
    };
    let label = format!(
        "{} first, {}",
        if c_first { "C" } else { "Rust" },
        if learning { "learning phase" } else { "-L" }
    );
    let t0 = Instant::now();
    m.start_many(&first, learning);
    if learning {
        thread::sleep(Duration::from_secs(3));
    } else {
        for &i in &first {
            m.wait_owns(i, Duration::from_secs(15));
        }
    }
    let first_done = t0.elapsed();
    m.start_many(&second, learning);
    let timeout = Duration::from_secs(20 + if learning { u64::from(swarm.ttl) } else { 0 });
    let (owners, took) = m.wait_agreed(&m.all(), timeout, settle(&swarm));
    check_ids(&m);
    eprintln!(
        "[{label}] first group {} {first_done:?} after its start; agreement {took:?} after the second \
         group's start; lasted {:?}: {}",
        if learning {
            "learning; second group started"
        } else {
            "owned"
        },
        settle(&swarm),
        m.show(&owners)
    );
    drop(m);
}

#[test]
fn mixed_mesh_agrees_without_learning_phase() {
    let test = "mixed_mesh_agrees_without_learning_phase";
    let Some(bins) = prerequisites(test, &[Flavor::Gluon]) else {
        return;
    };
    let _serial = serial();
    let t = Instant::now();
    two_groups(true, false, &bins);
    two_groups(false, false, &bins);
    eprintln!("{test} took {:?}", t.elapsed());
}

#[test]
fn mixed_mesh_agrees_with_learning_phase() {
    let test = "mixed_mesh_agrees_with_learning_phase";
    let Some(bins) = prerequisites(test, &[Flavor::Gluon]) else {
        return;
    };
    let _serial = serial();
    let t = Instant::now();
    two_groups(true, true, &bins);
    two_groups(false, true, &bins);
    eprintln!("{test} took {:?}", t.elapsed());
}

#[test]
fn six_nodes_started_together_agree() {
    let test = "six_nodes_started_together_agree";
    let Some(bins) = prerequisites(test, &[Flavor::Gluon]) else {
        return;
    };
    let _serial = serial();
    let mut m = Mesh::new(&[G, R, G, R, G, R], 1, Swarm::default(), &bins);
    let t0 = Instant::now();
    m.start_many(&m.all(), false);
    let (owners, took) = m.wait_agreed(&m.all(), Duration::from_secs(30), settle(&m.swarm));
    check_ids(&m);
    eprintln!(
        "[3 C + 3 Rust, -L, co-started] agreement after {took:?}: {}",
        m.show(&owners)
    );
    // C nodes started in the same second seed rand() alike and pick the same first block.
    let collisions: usize = m
        .of_kind(Kind::is_c)
        .iter()
        .map(|&i| c_log_lines(&m, i, &["other node wins"]).len())
        .sum();
    eprintln!(
        "C nodes logged {collisions} lost inquiry ties; {test} took {:?}",
        t0.elapsed()
    );

    // Leases on our nodes are replicated among our nodes only: every stream a Rust node
    // keeps goes to another Rust node, and the C nodes still agree afterwards.
    let rust = m.of_kind(|k| !k.is_c());
    let ours: BTreeSet<String> = rust.iter().map(|&i| m.view(i).unwrap().node_id).collect();
    for &i in &rust {
        m.net.clt_start_k(i, 0, "udhcpc");
    }
    for &i in &rust {
        assert!(
            m.net.wait_lease_k(i, 0, Duration::from_secs(20)).is_some(),
            "client of {} got no lease",
            m.name(i)
        );
    }
    let mut streams = 0;
    let replicated = wait_until(Duration::from_secs(15), || {
        streams = 0;
        rust.iter().all(|&i| {
            let text = m.net.ctl(i, &["metrics"]).unwrap_or_default();
            text.lines()
                .filter(|l| l.starts_with("ddhcp_replica_lag_records{"))
                .all(|l| {
                    streams += 1;
                    let peer = l.split("peer=\"").nth(1).unwrap_or("").split('"').next();
                    peer.is_some_and(|p| ours.contains(&p.to_uppercase())) && l.ends_with(" 0")
                })
        }) && streams >= 2
    });
    assert!(
        replicated,
        "replication streams not all to Rust nodes and caught up ({streams} streams; ours {ours:?})"
    );
    m.wait_agreed(&m.all(), Duration::from_secs(30), Duration::ZERO);
    eprintln!("{streams} replication streams, all between Rust nodes; the C nodes still agree");
    for &i in &rust {
        m.net.clt_stop_k(i, 0);
    }
}

#[test]
fn master_node_gets_blocks_in_a_mixed_mesh() {
    let test = "master_node_gets_blocks_in_a_mixed_mesh";
    let Some(bins) = prerequisites(test, &[Flavor::Gluon, Flavor::Master]) else {
        return;
    };
    let _serial = serial();
    // 8 blocks for 4 nodes: ties are likely, and node id 0 loses every one of them.
    let swarm = Swarm {
        range: "10.0.128.0/27".into(),
        ..Swarm::default()
    };
    let mut m = Mesh::new(&[Kind::MASTER, G, R, R], 1, swarm, &bins);
    let t0 = Instant::now();
    m.start_many(&m.all(), false);
    let (owners, took) = m.wait_agreed(&m.all(), Duration::from_secs(30), settle(&m.swarm));
    check_ids(&m);
    assert!(!owners[&0].is_empty());
    let ties = c_log_lines(&m, 0, &["other node wins", "claims our block"]).len();
    eprintln!(
        "[master + 3eefc27 + 2 Rust, 8 blocks] agreement after {took:?}: {}; master logged {ties} lost ties/claims on \
         its blocks; {test} took {:?}",
        m.show(&owners),
        t0.elapsed()
    );
}

// -------------------------------------------------------------- roaming ---

/// One client's roaming run: kept its address or why not.
type Outcome = Result<(), String>;

#[test]
fn roaming_between_c_and_rust_nodes_keeps_the_address() {
    let test = "roaming_between_c_and_rust_nodes_keeps_the_address";
    let Some(bins) = prerequisites(test, &[Flavor::Gluon]) else {
        return;
    };
    let _serial = serial();
    const RUNS: usize = 3;
    let t0 = Instant::now();
    // Node 0 is C, node 1 ours; on each node's link client 0 runs udhcpc, client 1 dhclient.
    let mut m = Mesh::new(&[G, R], 2, Swarm::default(), &bins);
    m.start_many(&[0, 1], false);
    m.wait_agreed(&[0, 1], Duration::from_secs(20), Duration::ZERO);
    // Started with -L, so the endlearning hook has run: DEBUG is safe now and shows the
    // C side of every RenewLease.
    m.c_log_level(0, 4);
    let kinds = ["udhcpc", "dhclient"];
    // results[home][k]: the runs of client k of node `home` roaming to the other node.
    let mut results: Vec<Vec<Vec<Outcome>>> = vec![vec![Vec::new(); 2]; 2];
    for run in 0..RUNS {
        let clients: Vec<(usize, usize)> =
            (0..2).flat_map(|i| (0..2).map(move |k| (i, k))).collect();
        for &(i, k) in &clients {
            m.net.clt_start_k(i, k, kinds[k]);
        }
        let mut before = Vec::new();
        for &(i, k) in &clients {
            let ip = m.net.wait_lease_k(i, k, LEASE_WAIT).unwrap_or_else(|| {
                panic!(
                    "run {run}: client {i}.{k} got no lease:\n{}",
                    m.net.client_log_k(i, k)
                )
            });
            // From its home node's blocks.
            let b = block_of(&m.swarm, &ip);
            let v = m.view(i).unwrap();
            assert_eq!(
                v.blocks.get(&b).map(|x| &x.0),
                Some(&St::Ours),
                "run {run}: client {i}.{k}'s {ip} not from node {i}"
            );
            before.push(ip);
        }
        let hist_renews: Vec<usize> = clients
            .iter()
            .map(|&(i, k)| m.net.lease_history_k(i, k).matches(" renew ").count())
            .collect();
        // Roam every client to the other node and renew: udhcpc by SIGUSR1 (unicast
        // REQUEST with ciaddr to 10.0.0.1), dhclient by a restart without release
        // (INIT-REBOOT: broadcast REQUEST with option 50).
        let mut started = Vec::new();
        for &(i, k) in &clients {
            m.net.roam_k(i, k, 1 - i);
            started.push(Instant::now());
            if kinds[k] == "udhcpc" {
                m.net.clt_renew_k(i, k);
            } else {
                m.net.clt_stop_keep_k(i, k);
                m.net.clt_start_k(i, k, "dhclient");
            }
        }
        let mut outcome: Vec<Option<Outcome>> = vec![None; 4];
        let mut took = [Duration::ZERO; 4];
        while outcome.iter().any(Option::is_none) {
            for (n, &(i, k)) in clients.iter().enumerate() {
                if outcome[n].is_some() {
                    continue;
                }
                let now = m.net.lease_of_k(i, k);
                if kinds[k] == "udhcpc" {
                    if m.net.lease_history_k(i, k).matches(" renew ").count() > hist_renews[n] {
                        outcome[n] = Some(match now {
                            Some(ip) if ip == before[n] => Ok(()),
                            other => Err(format!("renewed to {other:?}, had {}", before[n])),
                        });
                    } else if started[n].elapsed() > Duration::from_secs(10) {
                        outcome[n] = Some(Err(format!("no renewal of {} within 10 s", before[n])));
                    }
                } else if let Some(ip) = now {
                    outcome[n] = Some(if ip == before[n] {
                        Ok(())
                    } else {
                        Err(format!(
                            "got {ip} instead of {} (INIT-REBOOT unanswered or NAKed)",
                            before[n]
                        ))
                    });
                } else if started[n].elapsed() > LEASE_WAIT {
                    outcome[n] = Some(Err(format!("no lease within {LEASE_WAIT:?}")));
                }
            }
            for (n, o) in outcome.iter().enumerate() {
                if o.is_some() && took[n].is_zero() {
                    took[n] = started[n].elapsed();
                }
            }
            thread::sleep(Duration::from_millis(50));
        }
        for (n, &(i, k)) in clients.iter().enumerate() {
            let mut o = outcome[n].take().unwrap();
            if o.is_ok() && !m.net.client_addrs_k(i, k).contains(&before[n]) {
                o = Err(format!("{} not configured after roaming", before[n]));
            }
            if o.is_ok() && i == 1 {
                // Leased by the Rust owner (node 1), still to this client.
                let to = rust_leased_to(&m.net, 1, &before[n]);
                let mac = m.net.client_mac_k(i, k);
                if to != vec![mac.clone()] {
                    o = Err(format!(
                        "owner lists {} as leased to {to:?}, client is {mac}",
                        before[n]
                    ));
                }
            }
            eprintln!(
                "run {run}: {} client {}.{k} ({}) {} -> {}: {o:?} after {:?}",
                kinds[k],
                i,
                before[n],
                m.name(i),
                m.name(1 - i),
                took[n]
            );
            results[i][k].push(o);
        }
        for &(i, k) in &clients {
            m.net.roam_k(i, k, i);
            m.net.clt_stop_k(i, k);
        }
    }
    // The C node as owner (DEBUG): how it read the RenewLeases our node forwarded. An
    // address it decodes out of range is dropped with "Unexpected return value".
    let log = m.net.daemon_log(0);
    eprintln!(
        "C node 0 got {} RenewLease(s): {} answered LeaseAck, {} LeaseNak, {} dropped as out of range",
        log.matches("ddhcp_dhcp_renewlease(...): Request for xid")
            .count(),
        log.matches("ddhcp_dhcp_renewlease(...): 0 ACK").count(),
        log.matches("ddhcp_dhcp_renewlease(...): 1 NAK").count(),
        log.matches("Unexpected return value from dhcp_rhdl_request")
            .count(),
    );
    let mut failed = Vec::new();
    for (i, per_kind) in results.iter().enumerate() {
        for (k, runs) in per_kind.iter().enumerate() {
            let ok = runs.iter().filter(|o| o.is_ok()).count();
            let line = format!(
                "{} leased by {} roaming to {}: kept its address in {ok} of {RUNS} runs",
                kinds[k],
                m.name(i),
                m.name(1 - i)
            );
            eprintln!("{line}");
            if ok < RUNS {
                failed.push(format!("{line}: {runs:?}"));
            }
        }
    }
    eprintln!("{test} took {:?}", t0.elapsed());
    assert!(
        failed.is_empty(),
        "roaming lost addresses:\n{}",
        failed.join("\n")
    );
}

// ----------------------------------------------------------- foreign MAC ---

#[test]
fn address_leased_to_another_mac_is_refused() {
    let test = "address_leased_to_another_mac_is_refused";
    let Some(bins) = prerequisites(test, &[Flavor::Gluon]) else {
        return;
    };
    let _serial = serial();
    let t0 = Instant::now();
    // C nodes 0 and 1, Rust nodes 2 and 3. Client 0 of node 0 (udhcpc) holds a C lease,
    // client 0 of node 2 one of ours; the second client host of every node sends probes.
    let mut m = Mesh::new(&[G, G, R, R], 2, Swarm::default(), &bins);
    m.start_many(&m.all(), false);
    m.wait_agreed(&m.all(), Duration::from_secs(20), Duration::ZERO);
    m.net.clt_start_k(0, 0, "udhcpc");
    m.net.clt_start_k(2, 0, "udhcpc");
    let a_c = m.net.wait_lease_k(0, 0, LEASE_WAIT).expect("C lease");
    let a_r = m.net.wait_lease_k(2, 0, LEASE_WAIT).expect("Rust lease");
    let mac_c = m.net.client_mac_k(0, 0);
    let mac_r = m.net.client_mac_k(2, 0);
    assert_eq!(
        m.view(0)
            .unwrap()
            .blocks
            .get(&block_of(&m.swarm, &a_c))
            .map(|b| b.0.clone()),
        Some(St::Ours)
    );
    assert_eq!(rust_leased_to(&m.net, 2, &a_r), vec![mac_r.clone()]);
    eprintln!(
        "{a_c} leased by {} to {mac_c}, {a_r} by {} to {mac_r}",
        m.name(0),
        m.name(2)
    );

    let probe = |via: usize, mac: &str, ip: &str| -> Answer {
        let ns = m.net.ns_client_k(via, 1);
        dhcp_init_reboot(
            &ns,
            mac_bytes(mac),
            ip.parse().unwrap(),
            Duration::from_secs(4),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    };
    let foreign = |via: usize| m.net.client_mac_k(via, 1);
    let ip_r: Ipv4Addr = a_r.parse().unwrap();

    // Ours to decide: a Rust owner refuses another MAC, whoever forwards the request.
    let mut failed = Vec::new();
    for (via, what) in [
        (1, "C requester"),
        (3, "Rust requester"),
        (2, "the Rust owner directly"),
    ] {
        let mac = foreign(via);
        let a = probe(via, &mac, &a_r);
        eprintln!(
            "{mac} asks for {a_r} (Rust owner) via {what} ({}): {a:?}",
            m.name(via)
        );
        if a == Answer::Ack(ip_r) {
            failed.push(format!(
                "{mac} was given {a_r} (leased to {mac_r}) via {what}"
            ));
        }
    }
    // Controls: the holder's own MAC gets its address through the same paths, so the
    // refusals above are refusals and not a probe that cannot work.
    for (via, what) in [(1, "C requester"), (3, "Rust requester")] {
        let a = probe(via, &mac_r, &a_r);
        eprintln!("{mac_r} (the holder) asks for {a_r} via {what}: {a:?}");
        if a != Answer::Ack(ip_r) {
            failed.push(format!(
                "the holder {mac_r} did not get {a_r} via {what}: {a:?}"
            ));
        }
    }
    assert_eq!(
        rust_leased_to(&m.net, 2, &a_r),
        vec![mac_r.clone()],
        "the Rust owner's lease changed hands"
    );

    // The C owner (informative). Observed with 3eefc27 (2026-12-01): directly, the owner
    // NAKs another MAC (dhcp.c case D); through a C requester it ACKs any MAC (reference
    // §4.6: the owner compares no chaddr on RenewLease), a C bug nothing on our side can
    // fix. Through a Rust requester: before fc346b6 (network-order RenewLease, read
    // reversed) the owner dropped every request, so holder and stranger alike got no
    // answer; since, the owner reads it and ACKs the holder and, by the same C bug, the
    // stranger. A Rust requester cannot tell (it does not know the owner's binding); what
    // it controls, and what is asserted: it grants nothing the owner did not LeaseAck.
    let ip_c: Ipv4Addr = a_c.parse().unwrap();
    for (via, what) in [
        (0, "the C owner directly"),
        (1, "C requester"),
        (3, "Rust requester"),
    ] {
        let mac = foreign(via);
        let acks = if via == 3 {
            counter(&m.net, 3, "direct.recv_leaseack")
        } else {
            0
        };
        let a = probe(via, &mac, &a_c);
        eprintln!("(informative) {mac} asks for {a_c} (C owner) via {what}: {a:?}");
        if via == 3 && a == Answer::Ack(ip_c) {
            let after = counter(&m.net, 3, "direct.recv_leaseack");
            if after <= acks {
                failed.push(format!(
                    "the Rust requester granted {a_c} to {mac} without a LeaseAck from the C owner"
                ));
            }
        }
    }
    let a = probe(3, &mac_c, &a_c);
    eprintln!(
        "(informative) the holder {mac_c} asks for {a_c} (C owner) via the Rust requester: {a:?}"
    );
    eprintln!("{test} took {:?}", t0.elapsed());
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

// -------------------------------------------------------------- racing ---

fn trials() -> usize {
    std::env::var("DDHCP_INTEROP_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(3)
}

/// Node 0 (`owner`) owns the only block of a /30 in blocks of 4; four C 3eefc27 nodes start
/// with -L within milliseconds of each other and claim. Returns in how many of `n` trials
/// the owner lost the block (at any moment of three tentative timeouts, or in the end
/// some C node does not list it as the owner's) and the per-trial lines.
fn race(owner: Kind, n: usize, bins: &[CBin]) -> (usize, Vec<String>) {
    let swarm = Swarm {
        range: "10.0.1.0/30".into(),
        ..Swarm::default()
    };
    let mut m = Mesh::new(&[owner, G, G, G, G], 1, swarm.clone(), bins);
    let claimers = [1, 2, 3, 4];
    // The worst case for the owner: every claimer's id is greater than its own (so a
    // claimer that owns the block wins the claim conflict), and they start greatest first
    // (so the C ping-pong gets one of them to three Inquires fastest).
    m.set_server_mac(0, "02:00:00:00:00:01");
    for c in claimers {
        m.set_server_mac(c, &format!("fe:00:00:00:00:{:02x}", 10 - c));
    }
    let window = Duration::from_secs(3 * u64::from(swarm.tentative));
    let mut taken = 0;
    let mut lines = Vec::new();
    for trial in 0..n {
        if !m.net.daemon_running(0) {
            // A fresh owner: new state directory, so it starts without the old block.
            m.state_dirs[0] = m.net.state_dir.join(format!("state0-{trial}"));
            m.start(0, false, &[]);
            let owned = m.wait_owns(0, Duration::from_secs(15));
            assert_eq!(owned, BTreeSet::from([0]));
        }
        let owner_id = m.view(0).unwrap().node_id;
        let logs: Vec<usize> = claimers
            .iter()
            .map(|&c| m.net.daemon_log(c).len())
            .collect();
        // Even trials start all claimers at once, odd ones 40 ms apart (all within 120 ms).
        let stagger = (trial % 2 == 1).then(|| Duration::from_millis(40));
        let t0 = Instant::now();
        for (n, &c) in claimers.iter().enumerate() {
            if let Some(d) = stagger.filter(|_| n > 0) {
                thread::sleep(d);
            }
            m.start(c, false, &[]);
        }
        let spawned = t0.elapsed();
        let mut lost_at = None;
        while t0.elapsed() < window {
            match m.view(0) {
                Ok(v) if v.owned().contains(&0) => {}
                other => {
                    lost_at.get_or_insert((t0.elapsed(), format!("{other:?}")));
                }
            }
            thread::sleep(Duration::from_millis(100));
        }
        // Then every claimer must list the block as the owner's (allow one refresh round).
        let mut last = String::new();
        let agreed = wait_until(Duration::from_secs(u64::from(swarm.ttl) / 4 + 1), || {
            let mut bad = Vec::new();
            for &c in &claimers {
                match m.view(c) {
                    Ok(v) => match v.blocks.get(&0) {
                        Some((St::Claimed, o)) if *o == owner_id => {}
                        other => bad.push(format!("{}: {other:?}", m.name(c))),
                    },
                    Err(e) => bad.push(e),
                }
            }
            if !m.view(0).is_ok_and(|v| v.owned().contains(&0)) {
                bad.push("the owner no longer owns it".into());
            }
            last = bad.join("; ");
            bad.is_empty()
        });
        let c_owned = claimers
            .iter()
            .zip(&logs)
            .filter(|&(&c, &from)| {
                m.net.daemon_log(c)[from..].contains("block 0 claimed after 3 claims")
            })
            .count();
        let lost = lost_at.is_some() || !agreed;
        if lost {
            taken += 1;
        }
        let line = format!(
            "trial {trial}: claimers {} within {spawned:?}; {} C claimer(s) logged owning block 0; {}",
            if stagger.is_some() {
                "started 40 ms apart"
            } else {
                "started at once"
            },
            c_owned,
            match (&lost_at, agreed) {
                (None, true) => format!(
                    "{} kept it, every claimer lists it as {owner_id}'s",
                    m.name(0)
                ),
                (Some((t, v)), _) => format!(
                    "{} lost it {t:?} after the claimers started ({v}); in the end: {last}",
                    m.name(0)
                ),
                (None, false) => format!("{} kept it, but in the end: {last}", m.name(0)),
            }
        );
        eprintln!("[{} owner] {line}", owner.label());
        lines.push(line);
        for &c in &claimers {
            m.kill9(c);
        }
        if lost {
            m.kill9(0);
        }
        thread::sleep(Duration::from_secs(1));
    }
    (taken, lines)
}

#[test]
fn racing_c_claimers_cannot_take_a_rust_owners_only_block() {
    let test = "racing_c_claimers_cannot_take_a_rust_owners_only_block";
    let Some(bins) = prerequisites(test, &[Flavor::Gluon]) else {
        return;
    };
    let _serial = serial();
    let n = trials();
    let t0 = Instant::now();
    let (taken, lines) = race(R, n, &bins);
    eprintln!("Rust owner: C took the block in {taken} of {n} trials");
    // Control: the same race against a C owner (informative only).
    let (c_taken, _) = race(G, n, &bins);
    eprintln!("(control) C 3eefc27 owner: C took the block in {c_taken} of {n} trials");
    eprintln!("{test} took {:?}", t0.elapsed());
    assert_eq!(
        taken,
        0,
        "C took the Rust owner's only block in {taken} of {n} trials:\n{}",
        lines.join("\n")
    );
}

// -------------------------------------------------------------- restart ---

#[test]
fn rust_node_killed_and_restarted_in_a_mixed_mesh() {
    let test = "rust_node_killed_and_restarted_in_a_mixed_mesh";
    let Some(bins) = prerequisites(test, &[Flavor::Gluon]) else {
        return;
    };
    let _serial = serial();
    let t0 = Instant::now();
    let mut m = Mesh::new(&[G, R, G, R], 1, Swarm::default(), &bins);
    m.start_many(&m.all(), false);
    m.wait_agreed(&m.all(), Duration::from_secs(20), Duration::ZERO);
    let victim = 1;
    m.net.clt_start(victim, "udhcpc");
    let ip = m
        .net
        .wait_lease(victim, LEASE_WAIT)
        .expect("lease from the Rust node");
    let mac = m.net.client_mac_k(victim, 0);
    assert_eq!(rust_leased_to(&m.net, victim, &ip), vec![mac.clone()]);
    // The lease may have made it claim another block.
    let (owners, _) = m.wait_agreed(&m.all(), Duration::from_secs(10), Duration::ZERO);
    let before = owners[&victim].clone();
    let id = m.view(victim).unwrap().node_id;
    eprintln!("before the kill: {}; client has {ip}", m.show(&owners));

    m.kill9(victim);
    thread::sleep(Duration::from_secs(3));
    // Back on its state directory, with its learning phase (as Gluon restarts it).
    let t = Instant::now();
    m.start(victim, true, &[]);
    let mut last = Err(String::new());
    let back = wait_until(Duration::from_secs(5), || {
        last = m.view(victim);
        last.as_ref().is_ok_and(|v| v.owned() == before)
    });
    let back_after = t.elapsed();
    assert!(
        back,
        "restarted node does not own {before:?} again: {last:?}"
    );
    assert_eq!(
        last.unwrap().node_id,
        id,
        "node id changed across the restart"
    );
    let others: Vec<usize> = m.all();
    let (again, took): (Owners, Duration) =
        m.wait_agreed(&others, Duration::from_secs(15), settle(&m.swarm));
    assert_eq!(
        again[&victim], before,
        "the restarted node's blocks changed"
    );
    for i in m.all().into_iter().filter(|&i| i != victim) {
        assert_eq!(again[&i], owners[&i], "{}'s blocks changed", m.name(i));
    }

    let renews = m.net.lease_history(victim).matches(" renew ").count();
    m.net.clt_renew(victim);
    let renewed = wait_until(Duration::from_secs(10), || {
        m.net.lease_history(victim).matches(" renew ").count() > renews
    });
    assert!(
        renewed,
        "client did not renew from the restarted node:\n{}",
        m.net.client_log(victim)
    );
    assert_eq!(
        m.net.lease_of(victim).as_deref(),
        Some(ip.as_str()),
        "address changed"
    );
    assert_eq!(rust_leased_to(&m.net, victim, &ip), vec![mac]);
    eprintln!(
        "restarted {} owned {before:?} again {back_after:?} after its start; mesh agreed {took:?} after that; client \
         renewed {ip}; {test} took {:?}",
        m.name(victim),
        t0.elapsed()
    );
}

// ------------------------------------------------------- migration mode ---

/// Roams client (i, 0), a udhcpc, to daemon host `to` and makes it renew (a unicast
/// REQUEST the node there forwards to the block's owner); back home afterwards.
fn roam_and_renew(m: &Mesh, i: usize, to: usize, ip: &str) -> Result<Duration, String> {
    let renews = m.net.lease_history_k(i, 0).matches(" renew ").count();
    m.net.roam_k(i, 0, to);
    let t = Instant::now();
    m.net.clt_renew_k(i, 0);
    let ok = wait_until(Duration::from_secs(10), || {
        m.net.lease_history_k(i, 0).matches(" renew ").count() > renews
    });
    let now = m.net.lease_of_k(i, 0);
    m.net.roam_k(i, 0, i);
    match (ok, now) {
        (true, Some(got)) if got == ip => Ok(t.elapsed()),
        (true, got) => Err(format!("renewed to {got:?}, had {ip}")),
        (false, _) => Err(format!("no renewal of {ip} within 10 s")),
    }
}

/// `--peer-key-migrate` with a real C ddhcpd (docs/protocol.md "C nodes and the migration
/// mode"): two of our nodes with a mesh key and node keys (the configuration a community
/// mesh would migrate to; the simulator covers the mesh key alone) and a C 3eefc27 node
/// agree on their blocks; a
/// client of the C node roams to ours and one of ours roams to the C node, both keep their
/// address (renewals forwarded plain in both directions); plain forgeries in the name of our
/// signing nodes, a release of node 0's block in node 0's name and a claim of it in node 1's
/// name, sent from a fourth host, change nothing on our nodes (and make none of them change
/// its id). Then the C node leaves and migration ends (`key migrate off`): the plain
/// forgery of issue 14 is refused and the client renews.
#[test]
fn migration_mode_mixes_a_c_node_with_keyed_nodes_and_keeps_forgers_out_of_their_names() {
    let test =
        "migration_mode_mixes_a_c_node_with_keyed_nodes_and_keeps_forgers_out_of_their_names";
    let Some(bins) = prerequisites(test, &[Flavor::Gluon]) else {
        return;
    };
    let _serial = serial();
    let t0 = Instant::now();
    // Hosts 0 and 1 ours, 2 the C node; host 3 runs no daemon and forges.
    let mut m = Mesh::new(&[R, R, G, R], 1, Swarm::default(), &bins);
    let key = crate::auth::key_file(&m.net, "k1", 0x11, 1);
    for i in 0..2 {
        m.start(
            i,
            false,
            &["--peer-key", &key, "--peer-key-migrate", "--node-key"],
        );
    }
    m.start(2, false, &[]);
    let nodes = [0, 1, 2];
    let (owners, took) = m.wait_agreed(&nodes, Duration::from_secs(30), settle(&m.swarm));
    eprintln!("agreed after {took:?}: {}", m.show(&owners));
    let ids: Vec<String> = nodes.iter().map(|&i| m.view(i).unwrap().node_id).collect();
    // Our nodes verify each other, accept the C node's plain datagrams and ignore each
    // other's plain copies quietly.
    let plain_senders = |k: &serde_json::Value| -> Vec<String> {
        k["plain_senders"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["node_id"].as_str().map(str::to_uppercase))
            .collect()
    };
    for i in 0..2 {
        // Agreement may come from plain copies before the challenge completes.
        let verified = wait_until(Duration::from_secs(10), || {
            m.net.ctl_json(i, &["keys"]).is_ok_and(|k| {
                k["verified_peers"] == 1 && plain_senders(&k) == vec![ids[2].to_uppercase()]
            }) && counter(&m.net, i, "auth.plain_copies") >= 1
        });
        let k = ctl_json_ok(&m.net, i, &["keys"]);
        assert!(verified, "{}: {k}", m.name(i));
        assert_eq!(k["migrate"], true, "{k}");
        assert!(
            k["rejected"].as_array().unwrap().is_empty(),
            "{}: nothing was forged yet: {k}",
            m.name(i)
        );
        assert!(
            counter(&m.net, i, "auth.plain_copies") >= 1,
            "{}",
            m.name(i)
        );
        assert!(
            counter(&m.net, i, "auth.plain_accepted") >= 1,
            "{}",
            m.name(i)
        );
    }
    let text = ctl_ok(&m.net, 0, &["keys"]);
    assert!(
        text.contains("migration mode") && text.contains("plain sender") && text.contains(&ids[2]),
        "ddhcpctl keys: {text}"
    );

    // Roaming across kinds: the C node's client to node 1, node 0's client to the C node.
    m.net.clt_start_k(0, 0, "udhcpc");
    m.net.clt_start_k(2, 0, "udhcpc");
    let ip0 = m
        .net
        .wait_lease_k(0, 0, LEASE_WAIT)
        .expect("client of node 0");
    let ip2 = m
        .net
        .wait_lease_k(2, 0, LEASE_WAIT)
        .expect("client of the C node");
    let block0 = block_of(&m.swarm, &ip0);
    for (i, to, ip) in [(2, 1, &ip2), (0, 2, &ip0)] {
        let r = roam_and_renew(&m, i, to, ip);
        eprintln!(
            "client of {} ({ip}) renewed through {}: {r:?}",
            m.name(i),
            m.name(to)
        );
        assert!(r.is_ok(), "{r:?}");
    }

    // Plain forgeries in our nodes' names, from host 3.
    let before: Vec<View> = (0..2).map(|i| m.view(i).unwrap()).collect();
    let unsigned: Vec<u64> = (0..2)
        .map(|i| counter(&m.net, i, "auth.drop_unsigned"))
        .collect();
    let release = crate::auth::forged_claim_as(&ids[0], block0 as u32, 0);
    let steal = crate::auth::forged_claim_as(&ids[1], block0 as u32, 60);
    for _ in 0..3 {
        crate::auth::inject(&m.net, "release.bin", &release);
        crate::auth::inject(&m.net, "steal.bin", &steal);
    }
    thread::sleep(Duration::from_secs(3));
    for i in 0..2 {
        let v = m.view(i).unwrap();
        assert_eq!(v.node_id, before[i].node_id, "{} changed its id", m.name(i));
        assert_eq!(
            v.blocks.get(&block0),
            before[i].blocks.get(&block0),
            "{}: block {block0} after the forgeries",
            m.name(i)
        );
        assert!(
            counter(&m.net, i, "auth.drop_unsigned") > unsigned[i],
            "{} refused nothing",
            m.name(i)
        );
        assert_eq!(counter(&m.net, i, "node.duplicate_id"), 0, "{}", m.name(i));
        let k = ctl_json_ok(&m.net, i, &["keys"]);
        assert!(
            k["rejected"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["reason"] == "unsigned-from-signer"),
            "{}: {k}",
            m.name(i)
        );
    }
    // What the C node made of them: it cannot tell (docs/protocol.md).
    let c = m.view(2).unwrap();
    eprintln!(
        "the C node after the forgeries sees block {block0} as {:?} (ids {ids:?})",
        c.blocks.get(&block0)
    );
    let r = roam_and_renew(&m, 0, 1, &ip0);
    assert!(r.is_ok(), "node 0's client through node 1: {r:?}");

    // The last C node leaves; migration ends on our nodes.
    m.kill9(2);
    for i in 0..2 {
        ctl_ok(&m.net, i, &["key", "migrate", "off"]);
        let k = ctl_json_ok(&m.net, i, &["keys"]);
        assert_eq!(k["migrate"], false, "{k}");
    }
    thread::sleep(Duration::from_secs(2));
    let before: Vec<View> = (0..2).map(|i| m.view(i).unwrap()).collect();
    let unsigned: Vec<u64> = (0..2)
        .map(|i| counter(&m.net, i, "auth.drop_unsigned"))
        .collect();
    let issue14 = crate::auth::forged_claim_as("FFFFFFFFFFFFFFFF", block0 as u32, 60);
    crate::auth::inject(&m.net, "issue14.bin", &issue14);
    thread::sleep(Duration::from_secs(3));
    for i in 0..2 {
        let v = m.view(i).unwrap();
        assert_eq!(
            v.blocks.get(&block0),
            before[i].blocks.get(&block0),
            "{}: block {block0} after the forged claim of FFFFFFFFFFFFFFFF",
            m.name(i)
        );
        assert!(counter(&m.net, i, "auth.drop_unsigned") > unsigned[i]);
        assert_eq!(
            ctl_json_ok(&m.net, i, &["keys"])["verified_peers"],
            1,
            "{}",
            m.name(i)
        );
    }
    let r = roam_and_renew(&m, 0, 1, &ip0);
    assert!(r.is_ok(), "after the migration: {r:?}");
    eprintln!("{test} took {:?}", t0.elapsed());
}

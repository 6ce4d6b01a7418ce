//! The `-H` hook of a real `ddhcpd`, with real DHCP clients in network namespaces: it sees
//! the lease events (endlearning, claim, lease, renewal, release) in order and its claims
//! match the blocks owned; a hanging, failing, slow or flooded hook never holds DHCP up
//! (timeouts, failures and queue overflow are counted, no zombies, SIGTERM ends a hanging
//! run too).
//! Needs root (skips loudly otherwise, fails under CI=true); the overflow test also needs
//! Kea's perfdhcp.
//!
//! The tests of this file run one at a time (they share two CPU cores with everything
//! else, and several of them measure latencies).

#![allow(clippy::disallowed_methods)] // tests of real processes wait on real clocks

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use common::daemon::{
    assert_alive, ctl_json_ok, ctl_ok, env_get, logging_hook, metric, must_lease, new_net,
    parse_metrics, renew, serial, start_node, wait_serving, write_script,
};
use common::netns::{TestNet, output_timeout, require_netns, wait_until};

/// How long a client may take to get its first lease while a bad hook is installed (from
/// just before `clt-start`, which itself waits half a second).
const FAST_LEASE: Duration = Duration::from_secs(10);

/// Starts udhcpc on client (i, k) and returns its lease and how long it took from just
/// before `clt-start`; panics if that is `limit` or more.
fn timed_lease(net: &TestNet, i: usize, k: usize, limit: Duration) -> (String, Duration) {
    let t = Instant::now();
    net.clt_start_k(i, k, "udhcpc");
    let ip = net.wait_lease_k(i, k, limit);
    let took = t.elapsed();
    match ip {
        Some(ip) => (ip, took),
        None => {
            net.dump_logs();
            panic!(
                "client {i}.{k} got no lease within {limit:?}; its log:\n{}",
                net.client_log_k(i, k)
            )
        }
    }
}

/// `hook.runs`, `hook.failures`, `hook.timeouts`, `hook.dropped` of daemon i.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HookStats {
    runs: u64,
    failures: u64,
    timeouts: u64,
    dropped: u64,
}

fn hook_stats(net: &TestNet, i: usize) -> HookStats {
    let v = ctl_json_ok(net, i, &["stats"]);
    let c = |name: &str| {
        v["counters"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("no counter {name} in {v}"))
    };
    HookStats {
        runs: c("hook.runs"),
        failures: c("hook.failures"),
        timeouts: c("hook.timeouts"),
        dropped: c("hook.dropped"),
    }
}

/// Children of a process, as (pid, state letter, comm), from /proc.
fn children(pid: u32) -> Vec<(u32, char, String)> {
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // "pid (comm) S ppid ..."; comm may contain spaces and parentheses.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let mut rest = stat[close + 1..].split_whitespace();
        let state = rest.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid = rest.next().and_then(|s| s.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push((p, state, stat[open + 1..close].to_string()));
        }
    }
    out
}

/// Watches a daemon's children: the most zombies and live children seen at once.
#[derive(Default, Debug)]
struct ChildWatch {
    samples: u32,
    max_zombies: usize,
    max_live: usize,
    worst: Vec<(u32, char, String)>,
}

impl ChildWatch {
    fn sample(&mut self, pid: u32) {
        let kids = children(pid);
        let z = kids.iter().filter(|k| k.1 == 'Z').count();
        let live = kids.len() - z;
        self.samples += 1;
        if z > self.max_zombies || live > self.max_live {
            self.worst = kids.clone();
        }
        self.max_zombies = self.max_zombies.max(z);
        self.max_live = self.max_live.max(live);
    }
}

fn block_of(spec: &str) -> (u32, u32) {
    let (first, len) = spec
        .split_once('/')
        .unwrap_or_else(|| panic!("'{spec}' is not FIRST/LEN"));
    let first: Ipv4Addr = first.parse().unwrap();
    let len: u32 = len.parse().unwrap();
    (u32::from(first), len)
}

fn block_contains(spec: &str, ip: &str) -> bool {
    let (first, len) = block_of(spec);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    let ip = u32::from(ip.parse::<Ipv4Addr>().unwrap());
    ip & mask == first
}

// ------------------------------------------------------------------------ tests ---

#[test]
fn hook_sees_events_in_order() {
    if !require_netns("hook_sees_events_in_order") {
        return;
    }
    let _serial = serial();
    let t0 = Instant::now();
    let mut net = new_net(1, 1);
    let log = net.state_dir.join("hook.log");
    let hook = logging_hook(&net, "order-hook", &log, "");
    start_node(&mut net, 0, &["-H", hook.to_str().unwrap()]);
    wait_serving(&mut net, 0, 1);
    net.clt_start_k(0, 0, "udhcpc");
    let ip = must_lease(&net, 0, 0);
    let mac = net.client_mac_k(0, 0);
    let lease_line = format!("lease {ip} {mac}");
    let read = || fs::read_to_string(&log).unwrap_or_default();
    let got_lease = wait_until(Duration::from_secs(10), || {
        read().lines().any(|l| l == lease_line)
    });
    assert!(got_lease, "hook log has no '{lease_line}':\n{}", read());
    // A renewal is a lease event too.
    renew(&net, 0, 0);
    let renewed = wait_until(Duration::from_secs(10), || {
        read().lines().filter(|l| *l == lease_line).count() == 2
    });
    assert!(
        renewed,
        "no second '{lease_line}' after a renewal:\n{}",
        read()
    );
    net.clt_stop_k(0, 0);
    let release_line = format!("release {ip} {mac}");
    let got_release = wait_until(Duration::from_secs(10), || {
        read().lines().any(|l| l == release_line)
    });
    assert!(got_release, "hook log has no '{release_line}':\n{}", read());
    // Let anything still queued run, then compare with the counters.
    let mut st = hook_stats(&net, 0);
    wait_until(Duration::from_secs(5), || {
        st = hook_stats(&net, 0);
        st.runs as usize == read().lines().count()
    });
    let text = read();
    let lines: Vec<&str> = text.lines().collect();
    eprintln!("hook log:\n{text}");
    assert_eq!(
        st.runs as usize,
        lines.len(),
        "hook.runs vs lines in the hook log: {st:?}"
    );
    assert_eq!((st.failures, st.timeouts, st.dropped), (0, 0, 0), "{st:?}");

    assert_eq!(lines.first().copied(), Some("endlearning"), "first event");
    assert_eq!(
        lines.iter().filter(|l| **l == "endlearning").count(),
        1,
        "endlearning more than once"
    );
    for l in &lines {
        let action = l.split(' ').next().unwrap_or("");
        assert!(
            ["endlearning", "claim", "lease", "release"].contains(&action),
            "unexpected hook event '{l}'"
        );
    }
    let pos = |line: &str| lines.iter().position(|l| *l == line);
    let first_claim = lines
        .iter()
        .position(|l| l.starts_with("claim "))
        .expect("no claim event");
    let lease_at = pos(&lease_line).unwrap();
    let release_at = pos(&release_line).unwrap();
    assert!(first_claim < lease_at, "first claim after the first lease");
    assert!(lease_at < release_at, "release before lease");
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("lease ")).count(),
        2,
        "a lease and a renewal expected"
    );
    let renewal_at = lines.iter().rposition(|l| *l == lease_line).unwrap();
    assert!(
        lease_at < renewal_at && renewal_at < release_at,
        "lease, renewal, release out of order"
    );
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("release ")).count(),
        1,
        "one release expected"
    );
    // The leased address lies in a block claimed before the lease; every claimed block is
    // one this node owns, in FIRST/30 form (-b 2).
    let claims: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("claim "))
        .collect();
    assert!(
        lines[..lease_at]
            .iter()
            .filter_map(|l| l.strip_prefix("claim "))
            .any(|b| block_contains(b, &ip)),
        "{ip} is in no block claimed before its lease; claims {claims:?}"
    );
    assert_eq!(
        claims.iter().collect::<BTreeSet<_>>().len(),
        claims.len(),
        "a block claimed twice: {claims:?}"
    );
    // Every block the hook heard of is owned, and the other way round (read until both
    // views agree: claiming ahead may finish a claim in between).
    let owned = || -> BTreeSet<String> {
        ctl_json_ok(&net, 0, &["blocks"])["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["state"] == "ours")
            .map(|b| format!("{}/30", b["first"].as_str().unwrap()))
            .collect()
    };
    let from_hook = || -> BTreeSet<String> {
        read()
            .lines()
            .filter_map(|l| l.strip_prefix("claim "))
            .map(str::to_owned)
            .collect()
    };
    let (mut claimed, mut ours) = (from_hook(), owned());
    wait_until(Duration::from_secs(10), || {
        ours = owned();
        claimed = from_hook();
        claimed == ours
    });
    assert_eq!(claimed, ours, "claimed blocks vs blocks owned");
    assert_alive(&mut net, 0);
    eprintln!("hook_sees_events_in_order took {:?}", t0.elapsed());
}

#[test]
fn bad_hooks_do_not_degrade_the_daemon() {
    if !require_netns("bad_hooks_do_not_degrade_the_daemon") {
        return;
    }
    let _serial = serial();
    let t0 = Instant::now();

    // (a) A hook that hangs on every call: clients still get leases at once, the hook is
    // killed after 10 s and the next event runs, and no zombies pile up.
    {
        let mut net = new_net(1, 3);
        let hook = write_script(&net, "hang-hook", "exec sleep 60\n");
        let started = Instant::now();
        start_node(&mut net, 0, &["-H", hook.to_str().unwrap()]);
        wait_serving(&mut net, 0, 1);
        let pid = net.daemon_pid(0).unwrap();
        let mut watch = ChildWatch::default();
        watch.sample(pid);
        for k in 0..3 {
            let (ip, took) = timed_lease(&net, 0, k, FAST_LEASE);
            watch.sample(pid);
            eprintln!("(a) hanging hook: client 0.{k} got {ip} in {took:?}");
        }
        let t = Instant::now();
        ctl_json_ok(&net, 0, &["status"]);
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "status took {:?} while the hook hangs",
            t.elapsed()
        );
        let mut st = hook_stats(&net, 0);
        let mut first_timeout = None;
        let moved_on = wait_until(Duration::from_secs(30), || {
            watch.sample(pid);
            st = hook_stats(&net, 0);
            if st.timeouts >= 1 && first_timeout.is_none() {
                first_timeout = Some(started.elapsed());
            }
            st.timeouts >= 1 && st.runs >= 2
        });
        assert!(
            moved_on,
            "no hook timeout / next run 30 s after the clients: {st:?}, {:?} after the start",
            started.elapsed()
        );
        // The first run (endlearning) started with the daemon; it is killed after 10 s.
        let first_timeout = first_timeout.unwrap();
        eprintln!("(a) hanging hook: first timeout counted {first_timeout:?} after the start");
        assert!(
            first_timeout >= Duration::from_millis(9500) && first_timeout < Duration::from_secs(16),
            "first hook timeout counted {first_timeout:?} after the start, expected ~10 s"
        );
        // A renewal while the second run hangs.
        let t = Instant::now();
        let env = renew(&net, 0, 0);
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "renewal took {:?} while the hook hangs",
            t.elapsed()
        );
        assert_eq!(env_get(&env, "lease"), "300");
        for _ in 0..10 {
            watch.sample(pid);
            thread::sleep(Duration::from_millis(100));
        }
        eprintln!("(a) hanging hook: {st:?}; children watch {watch:?}");
        assert_eq!(st.failures, 0, "{st:?}");
        assert!(
            watch.max_zombies <= 1,
            "zombie hook children of the daemon: {watch:?}"
        );
        assert!(
            watch.max_live <= 1,
            "more than one hook run at once (killed runs not gone?): {watch:?}"
        );
        let log = net.daemon_log(0);
        assert!(
            log.contains("hook timed out"),
            "no 'hook timed out' in the daemon log"
        );
        assert_alive(&mut net, 0);
        // SIGTERM while a run hangs: the daemon stops at once and takes the run with it.
        let hung: Vec<u32> = children(pid)
            .into_iter()
            .filter(|c| c.1 != 'Z')
            .map(|c| c.0)
            .collect();
        let t = Instant::now();
        let status = net.stop_daemon(0);
        let took = t.elapsed();
        assert!(
            took < Duration::from_secs(2) && status.is_some_and(|s| s.success()),
            "SIGTERM with a hanging hook: {status:?} after {took:?}"
        );
        let alive = |p: u32| {
            fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|st| {
                st.contains("(sleep)")
                    && !matches!(
                        st.rsplit_once(')')
                            .and_then(|r| r.1.split_whitespace().next()),
                        Some("Z" | "X")
                    )
            })
        };
        let gone = wait_until(Duration::from_secs(3), || !hung.iter().any(|&p| alive(p)));
        assert!(
            gone,
            "hook run(s) {hung:?} still running 3 s after the daemon exited"
        );
    }

    // (b) A hook that fails every time: leases as usual, failures counted.
    {
        let mut net = new_net(1, 3);
        let hook = write_script(
            &net,
            "fail-hook",
            "echo 'fail-hook: failing on purpose' >&2\nexit 1\n",
        );
        start_node(&mut net, 0, &["-H", hook.to_str().unwrap()]);
        wait_serving(&mut net, 0, 1);
        let pid = net.daemon_pid(0).unwrap();
        let mut watch = ChildWatch::default();
        for k in 0..3 {
            let (ip, took) = timed_lease(&net, 0, k, FAST_LEASE);
            watch.sample(pid);
            eprintln!("(b) failing hook: client 0.{k} got {ip} in {took:?}");
        }
        let mut st = hook_stats(&net, 0);
        // endlearning, a claim and three leases at least.
        let counted = wait_until(Duration::from_secs(10), || {
            watch.sample(pid);
            st = hook_stats(&net, 0);
            st.runs >= 5 && st.failures == st.runs
        });
        eprintln!("(b) failing hook: {st:?}; children watch {watch:?}");
        assert!(counted, "every run should count as a failure: {st:?}");
        assert_eq!((st.timeouts, st.dropped), (0, 0), "{st:?}");
        assert!(watch.max_zombies <= 1, "zombies: {watch:?}");
        let log = net.daemon_log(0);
        assert!(log.contains("hook failed"), "no 'hook failed' in the log");
        assert!(
            log.contains("fail-hook: failing on purpose"),
            "the hook's stderr did not reach the daemon's log"
        );
        assert_alive(&mut net, 0);
    }

    // (c) A slow but working hook and 20 clients at once: every client gets its lease
    // promptly although the hook lags behind; the hook still sees every lease, in order,
    // nothing dropped.
    {
        const CLIENTS: usize = 20;
        let mut net = new_net(1, CLIENTS);
        let log = net.state_dir.join("hook.log");
        let hook = logging_hook(&net, "slow-hook", &log, "sleep 0.3");
        // Blocks of 32, so claiming does not dominate the latencies measured here.
        start_node(
            &mut net,
            0,
            &["-b", "5", "-s", "2", "-H", hook.to_str().unwrap()],
        );
        wait_serving(&mut net, 0, 1);
        let pid = net.daemon_pid(0).unwrap();
        let started: Mutex<BTreeMap<usize, Instant>> = Mutex::new(BTreeMap::new());
        let t_start = Instant::now();
        let all: Vec<usize> = (0..CLIENTS).collect();
        thread::scope(|s| {
            for chunk in all.chunks(5) {
                let net = &net;
                let started = &started;
                s.spawn(move || {
                    for &k in chunk {
                        started.lock().unwrap().insert(k, Instant::now());
                        net.clt_start_k(0, k, "udhcpc");
                    }
                });
            }
        });
        let mut took: BTreeMap<usize, Duration> = BTreeMap::new();
        let mut watch = ChildWatch::default();
        wait_until(Duration::from_secs(30), || {
            watch.sample(pid);
            let st = started.lock().unwrap();
            for k in 0..CLIENTS {
                if !took.contains_key(&k) && net.lease_of_k(0, k).is_some() {
                    took.insert(k, st[&k].elapsed());
                }
            }
            took.len() == CLIENTS
        });
        let slowest = took.values().max().copied().unwrap_or_default();
        eprintln!(
            "(c) slow hook, {CLIENTS} clients: {} leased within {:?}, slowest {slowest:?}",
            took.len(),
            t_start.elapsed()
        );
        let late: Vec<String> = (0..CLIENTS)
            .filter(|k| took.get(k).is_none_or(|d| *d >= FAST_LEASE))
            .map(|k| format!("0.{k}: {:?}", took.get(&k)))
            .collect();
        if !late.is_empty() {
            net.dump_logs();
            panic!("clients slower than {FAST_LEASE:?} with a slow hook: {late:?}");
        }
        let pairs: Vec<String> = (0..CLIENTS)
            .map(|k| {
                format!(
                    "lease {} {}",
                    net.lease_of_k(0, k).unwrap(),
                    net.client_mac_k(0, k)
                )
            })
            .collect();
        let read = || fs::read_to_string(&log).unwrap_or_default();
        let all_seen = wait_until(Duration::from_secs(40), || {
            watch.sample(pid);
            let text = read();
            pairs.iter().all(|p| text.lines().any(|l| l == p))
        });
        let text = read();
        assert!(
            all_seen,
            "the hook did not see every lease within 40 s; missing {:?}; log:\n{text}",
            pairs
                .iter()
                .filter(|p| !text.lines().any(|l| l == p.as_str()))
                .collect::<Vec<_>>()
        );
        let mut st = hook_stats(&net, 0);
        wait_until(Duration::from_secs(5), || {
            st = hook_stats(&net, 0);
            st.runs as usize == read().lines().count()
        });
        eprintln!(
            "(c) slow hook: all {CLIENTS} leases in the hook log after {:?}; {st:?}; {watch:?}",
            t_start.elapsed()
        );
        assert_eq!((st.failures, st.timeouts, st.dropped), (0, 0, 0), "{st:?}");
        assert_eq!(st.runs as usize, read().lines().count(), "{st:?}");
        assert_eq!(read().lines().next(), Some("endlearning"));
        assert!(watch.max_zombies <= 1, "zombies: {watch:?}");
        assert!(watch.max_live <= 1, "hook runs at once: {watch:?}");
        assert_alive(&mut net, 0);
    }
    eprintln!(
        "bad_hooks_do_not_degrade_the_daemon took {:?}",
        t0.elapsed()
    );
}

#[test]
fn hook_queue_overflow_is_counted_and_dhcp_goes_on() {
    if !require_netns("hook_queue_overflow_is_counted_and_dhcp_goes_on") {
        return;
    }
    if Command::new("perfdhcp").arg("-v").output().is_err() {
        let ci = std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
        assert!(!ci, "perfdhcp (kea-admin) is needed in CI");
        eprintln!("SKIPPED hook_queue_overflow_is_counted_and_dhcp_goes_on: no perfdhcp");
        return;
    }
    let _serial = serial();
    let t0 = Instant::now();
    // A hook that hangs (10 s per event) and far more than 1024 leases: the queue fills,
    // further events are dropped and counted, DHCP keeps its pace.
    const CLIENTS: u32 = 1500;
    let mut net = new_net(1, 1);
    let hook = write_script(&net, "hang-hook", "exec sleep 60\n");
    start_node(
        &mut net,
        0,
        &[
            "-N",
            "10.0.128.0/17",
            "-b",
            "7",
            "-s",
            "1700",
            "-v",
            "-H",
            hook.to_str().unwrap(),
        ],
    );
    wait_serving(&mut net, 0, 12);
    let pid = net.daemon_pid(0).unwrap();
    let out = net.exec_client_ns_k(0, 0, &["ip", "addr", "add", "10.0.0.2/16", "dev", "eth0"]);
    assert!(out.status.success(), "{out:?}");
    let ns = net.ns_client_k(0, 0);
    let clients = CLIENTS.to_string();
    let t = Instant::now();
    let perf = output_timeout(
        Command::new("ip").args([
            "netns", "exec", &ns, "perfdhcp", "-4", "-l", "eth0", "-r", "300", "-R", &clients,
            "-n", &clients, "-d", "2", "-W", "300000", "10.0.0.1",
        ]),
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let perf_text = format!(
        "{}{}",
        String::from_utf8_lossy(&perf.stdout),
        String::from_utf8_lossy(&perf.stderr)
    );
    eprintln!("perfdhcp ran {:?}:\n{perf_text}", t.elapsed());
    let metrics = ctl_ok(&net, 0, &["metrics"]);
    let m = parse_metrics(&metrics);
    let acks = metric(
        &m,
        "ddhcp_dhcp_packets_sent_total{pool=\"default\",type=\"ack\"}",
        &metrics,
    ) as u64;
    let claimed = metric(
        &m,
        "ddhcp_block_events_total{pool=\"default\",event=\"claimed\"}",
        &metrics,
    ) as u64;
    assert!(
        acks > 1024 + 50,
        "only {acks} ACKs: the load did not get through, so the queue cannot overflow"
    );
    let st = hook_stats(&net, 0);
    // endlearning + claims + one event per ACK went into the queue; at most 1024 wait and
    // `runs` were taken out.
    let events = 1 + claimed + acks;
    eprintln!("{events} hook events ({acks} ACKs, {claimed} claims): {st:?}");
    assert!(st.dropped > 0, "nothing dropped: {st:?}");
    assert!(
        st.dropped + 1024 + st.runs >= events,
        "events unaccounted for: {events} events, {st:?}"
    );
    assert!(st.dropped <= events, "{st:?}");
    assert!(st.runs <= 3, "a hanging hook ran {} times", st.runs);
    assert_eq!(
        metric(&m, "ddhcp_hook_failures_total{kind=\"dropped\"}", &metrics) as u64,
        st.dropped,
        "metrics vs stats"
    );
    // Still serving at once.
    let t = Instant::now();
    ctl_json_ok(&net, 0, &["status"]);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "status took {:?}",
        t.elapsed()
    );
    let kids = children(pid);
    assert!(
        kids.iter().filter(|k| k.1 == 'Z').count() <= 1 && kids.len() <= 2,
        "children of the daemon: {kids:?}"
    );
    let warn_lines = net.daemon_log(0).matches("hook queue full").count();
    eprintln!(
        "'hook queue full' log lines: {warn_lines} for {} drops",
        st.dropped
    );
    assert_alive(&mut net, 0);
    eprintln!(
        "hook_queue_overflow_is_counted_and_dhcp_goes_on took {:?}",
        t0.elapsed()
    );
}

//! Operations features of `ddhcpd` against real daemons and real DHCP clients in network
//! namespaces: option changes over the control socket (long and ddhcpdctl short forms)
//! reach the very next ACK, and addresses set as router / DNS server at run time are never
//! leased; the `-H` hook sees every kind of lease event (lease, renewal, release, decline,
//! expire) in order, and a hanging, failing, slow or flooded hook never holds DHCP up
//! (timeouts, failures and queue overflow are counted, no zombies); `--metrics` and
//! `ddhcpctl metrics` report what happened in a format Prometheus accepts; `--audit-log`
//! writes one valid JSON line per allocation and release, hostile hostnames included.
//! Needs root (skips loudly otherwise, fails under CI=true); the overflow test also needs
//! Kea's perfdhcp.
//!
//! The tests of this file run one at a time (they share two CPU cores with everything
//! else, and several of them measure latencies).

#![allow(clippy::disallowed_methods)] // tests of real processes wait on real clocks

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use common::daemon::{
    assert_alive, ctl_json_ok, logging_hook, must_lease, new_net, serial, start_node, wait_serving,
    write_script,
};
use common::netns::{TestNet, output_timeout, require_netns, wait_until};
use serde_json::Value;

/// How long a client may take to get its first lease while a bad hook is installed (from
/// just before `clt-start`, which itself waits half a second).
const FAST_LEASE: Duration = Duration::from_secs(10);

fn ctl_ok(net: &TestNet, i: usize, args: &[&str]) -> String {
    net.ctl(i, args).unwrap_or_else(|e| {
        net.dump_logs();
        panic!("{e}")
    })
}

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

/// Makes udhcpc on client (i, k) renew now and returns what its script recorded from the
/// ACK (`lease-<name>.env`, see [`TestNet::lease_env_k`]).
fn renew(net: &TestNet, i: usize, k: usize) -> BTreeMap<String, String> {
    let env_file = net
        .state_dir
        .join(format!("lease-{}.env", net.client_name(i, k)));
    // The script rewrites the file (tmp + rename) on every bound/renew: once it is back,
    // it holds what this renewal's ACK said.
    let _ = fs::remove_file(&env_file);
    net.clt_renew_k(i, k);
    let ok = wait_until(Duration::from_secs(10), || env_file.exists());
    if !ok {
        net.dump_logs();
        panic!(
            "client {i}.{k} did not renew within 10 s; its history:\n{}\nits log:\n{}",
            net.lease_history_k(i, k),
            net.client_log_k(i, k)
        );
    }
    // Written by rename: whole once it exists.
    net.lease_env_k(i, k)
}

fn env_get<'a>(env: &'a BTreeMap<String, String>, key: &str) -> &'a str {
    env.get(key).map(String::as_str).unwrap_or("")
}

/// Writes an executable `#!/bin/sh` script `name` into the net's state dir.
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

/// Parses Prometheus text: `name{labels}` (as written) -> value.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn metric(m: &BTreeMap<String, f64>, key: &str, text: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("no metric {key} in the scrape:\n{text}"))
}

/// `curl` inside daemon host i: (HTTP status, headers, body).
fn http_get(net: &TestNet, i: usize, args: &[&str]) -> (u32, String, String) {
    let hdr = net.state_dir.join("curl-headers");
    let hdr_s = hdr.to_str().unwrap();
    let mut full = vec![
        "curl",
        "-sS",
        "--max-time",
        "5",
        "-D",
        hdr_s,
        "-w",
        "\n%{http_code}",
    ];
    full.extend_from_slice(args);
    let out = net.exec_daemon_ns(i, &full);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl {args:?} in daemon host {i} failed ({}): {}{text}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
    let headers = fs::read_to_string(&hdr).unwrap_or_default();
    (code.trim().parse().unwrap_or(0), headers, body.to_string())
}

/// Why a Prometheus server would reject a scrape of `body` served with these `headers`, if
/// it would. Prometheus picks its parser by Content-Type: `application/openmetrics-text`
/// gets the OpenMetrics parser (the body must end with `# EOF`); anything else, e.g.
/// `text/plain; version=0.0.4`, the classic text parser, which knows only the types below
/// and fails the whole scrape on any other `# TYPE` (prometheus/prometheus
/// model/textparse/promparse.go: `invalid metric type`).
fn exposition_problem(headers: &str, body: &str) -> Option<String> {
    let Some(ctype) = headers.lines().find_map(|l| {
        let l = l.to_ascii_lowercase();
        l.strip_prefix("content-type:")
            .map(|v| v.trim().to_string())
    }) else {
        return Some("no Content-Type header".into());
    };
    if ctype.starts_with("application/openmetrics-text") {
        return (!body.ends_with("# EOF\n"))
            .then(|| format!("Content-Type {ctype}, but the body does not end with # EOF"));
    }
    let bad: Vec<&str> = body
        .lines()
        .filter(|l| {
            l.strip_prefix("# TYPE ").is_some_and(|rest| {
                !matches!(
                    rest.split_whitespace().nth(1),
                    Some("counter" | "gauge" | "histogram" | "summary" | "untyped")
                )
            })
        })
        .collect();
    (!bad.is_empty()).then(|| {
        format!(
            "Content-Type {ctype} makes Prometheus use its classic text parser, which rejects \
             the whole scrape because of {bad:?}"
        )
    })
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

fn is_rfc3339_utc(t: &str) -> bool {
    // YYYY-MM-DDTHH:MM:SS[.fff…]Z
    let b = t.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| r.clone().all(|i| b.get(i).is_some_and(u8::is_ascii_digit));
    b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[b.len() - 1] == b'Z'
        && (b.len() == 20 || (b[19] == b'.' && b.len() > 21 && digits(20..b.len() - 1)))
}

/// The lines of `text` after byte offset `from` that contain `needle`.
fn lines_after(text: &str, from: usize, needle: &str) -> Vec<String> {
    text.get(from..)
        .unwrap_or("")
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

// ------------------------------------------------------------------------ tests ---

#[test]
fn options_changed_at_runtime_reach_the_next_ack() {
    if !require_netns("options_changed_at_runtime_reach_the_next_ack") {
        return;
    }
    let _serial = serial();
    let t0 = Instant::now();
    // udhcpc (renews on SIGUSR1) and dhclient (INIT-REBOOT on restart) on one node, which
    // logs at info level so the log-level change below shows.
    let mut net = new_net(1, 2);
    start_node(&mut net, 0, &["-v", "-o", "3:4:10.0.0.1"]);
    wait_serving(&mut net, 0, 1);
    net.clt_start_k(0, 0, "udhcpc");
    net.clt_start_k(0, 1, "dhclient");
    let ip_u = must_lease(&net, 0, 0);
    let ip_d = must_lease(&net, 0, 1);
    let env = net.lease_env_k(0, 0);
    assert_eq!(
        env_get(&env, "router"),
        "10.0.0.1",
        "udhcpc at start: {env:?}"
    );
    assert_eq!(env_get(&env, "lease"), "300", "udhcpc at start: {env:?}");
    let env = net.lease_env_k(0, 1);
    assert_eq!(
        env_get(&env, "router"),
        "10.0.0.1",
        "dhclient at start: {env:?}"
    );
    assert_eq!(env_get(&env, "lease"), "300", "dhclient at start: {env:?}");

    // Long forms: a new router and lease time, in the store at once ...
    assert_eq!(
        ctl_ok(&net, 0, &["set-option", "3:4:10.0.0.9"]).trim(),
        "ok"
    );
    assert_eq!(ctl_ok(&net, 0, &["lease-time", "120"]).trim(), "ok");
    let opts = ctl_json_ok(&net, 0, &["options"]);
    assert_eq!(opts["lease_time"], 120, "options: {opts}");
    let o3: Vec<&Value> = opts["options"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["code"] == 3)
        .collect();
    assert_eq!(o3.len(), 1, "option 3 once in {opts}");
    assert_eq!(o3[0]["payload"], serde_json::json!([10, 0, 0, 9]), "{opts}");
    // ... and in the very next ACK: udhcpc's renewal ...
    let env = renew(&net, 0, 0);
    assert_eq!(
        env_get(&env, "ip"),
        ip_u,
        "udhcpc's address changed: {env:?}"
    );
    assert_eq!(
        env_get(&env, "router"),
        "10.0.0.9",
        "udhcpc after set-option 3: {env:?}"
    );
    assert_eq!(
        env_get(&env, "lease"),
        "120",
        "udhcpc after lease-time 120: {env:?}"
    );
    // ... and dhclient's INIT-REBOOT after a restart that keeps its lease.
    net.clt_stop_keep_k(0, 1);
    net.clt_start_k(0, 1, "dhclient");
    assert_eq!(must_lease(&net, 0, 1), ip_d, "dhclient's address changed");
    let env = net.lease_env_k(0, 1);
    assert_eq!(
        env_get(&env, "router"),
        "10.0.0.9",
        "dhclient after set-option 3: {env:?}"
    );
    assert_eq!(
        env_get(&env, "lease"),
        "120",
        "dhclient after lease-time 120: {env:?}"
    );
    eprintln!("set-option 3 / lease-time 120 reached udhcpc's renewal and dhclient's reboot");

    // remove-option: the next ACK has no router; removing it twice is refused.
    assert_eq!(ctl_ok(&net, 0, &["remove-option", "3"]).trim(), "ok");
    let again = net.ctl(0, &["remove-option", "3"]);
    assert!(
        again.is_err(),
        "second remove-option 3 succeeded: {again:?}"
    );
    let env = renew(&net, 0, 0);
    assert_eq!(
        env_get(&env, "router"),
        "",
        "udhcpc after remove-option 3: {env:?}"
    );
    assert_eq!(env_get(&env, "lease"), "120", "{env:?}");

    // The ddhcpdctl short forms: -o, -l, -d, -r, -b, -s.
    assert_eq!(ctl_ok(&net, 0, &["-o", "6:4:10.0.0.53"]).trim(), "ok");
    assert_eq!(ctl_ok(&net, 0, &["-l", "90"]).trim(), "ok");
    let shown = ctl_ok(&net, 0, &["-d"]);
    assert!(
        shown.lines().any(|l| l.trim() == "lease time 90"),
        "-d shows no lease time 90:\n{shown}"
    );
    assert!(
        shown
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["6", "4", "10.0.0.53"]),
        "-d shows no option 6:\n{shown}"
    );
    assert!(
        !shown
            .lines()
            .any(|l| l.split_whitespace().next() == Some("3")),
        "-d still shows option 3:\n{shown}"
    );
    let env = renew(&net, 0, 0);
    assert_eq!(
        env_get(&env, "dns"),
        "10.0.0.53",
        "udhcpc after -o 6:4:10.0.0.53: {env:?}"
    );
    assert_eq!(env_get(&env, "lease"), "90", "udhcpc after -l 90: {env:?}");
    assert_eq!(ctl_ok(&net, 0, &["-r", "6"]).trim(), "ok");
    let env = renew(&net, 0, 0);
    assert_eq!(env_get(&env, "dns"), "", "udhcpc after -r 6: {env:?}");
    assert_eq!(env_get(&env, "ip"), ip_u, "{env:?}");
    let blocks = ctl_ok(&net, 0, &["-b"]);
    let status = ctl_json_ok(&net, 0, &["status"]);
    let node_id = status["node_id"].as_str().unwrap();
    assert!(
        blocks.lines().next().is_some_and(|l| l.contains(node_id))
            && blocks
                .lines()
                .any(|l| l.split_whitespace().nth(2) == Some("ours")),
        "-b output:\n{blocks}"
    );
    let stats = ctl_ok(&net, 0, &["-s"]);
    assert!(
        stats.lines().any(|l| l == "hook.runs 0"),
        "-s output has no 'hook.runs 0':\n{stats}"
    );

    // Log level at run time: the daemon started at info, so no DEBUG lines yet; `-v 4`
    // (ddhcpdctl's number for debug) makes the next ACK log one; `log-level warn` silences
    // info and debug again.
    let log = net.daemon_log(0);
    assert!(
        lines_after(&log, 0, "DEBUG").is_empty(),
        "DEBUG lines at -v:\n{}",
        lines_after(&log, 0, "DEBUG").join("\n")
    );
    assert!(
        !lines_after(&log, 0, "INFO").is_empty(),
        "no INFO lines at -v"
    );
    assert_eq!(ctl_ok(&net, 0, &["-v", "4"]).trim(), "ok");
    let mark = net.daemon_log(0).len();
    renew(&net, 0, 0);
    let mut debug_ack = Vec::new();
    wait_until(Duration::from_secs(5), || {
        debug_ack = lines_after(&net.daemon_log(0), mark, "DEBUG")
            .into_iter()
            .filter(|l| l.contains("ACK"))
            .collect();
        !debug_ack.is_empty()
    });
    assert!(
        !debug_ack.is_empty(),
        "no DEBUG ACK line after `-v 4` and a renewal; log since:\n{}",
        net.daemon_log(0).get(mark..).unwrap_or("")
    );
    assert_eq!(ctl_ok(&net, 0, &["log-level", "warn"]).trim(), "ok");
    let mark = net.daemon_log(0).len();
    renew(&net, 0, 0);
    thread::sleep(Duration::from_millis(300));
    let log = net.daemon_log(0);
    let noisy: Vec<String> = lines_after(&log, mark, "INFO")
        .into_iter()
        .chain(lines_after(&log, mark, "DEBUG"))
        .collect();
    assert!(
        noisy.is_empty(),
        "info/debug lines after `log-level warn`:\n{}",
        noisy.join("\n")
    );
    assert!(
        net.ctl(0, &["log-level", "loud"]).is_err(),
        "log-level loud accepted"
    );
    // Bad values are refused and change nothing.
    let before = ctl_json_ok(&net, 0, &["options"]);
    for bad in [
        &["set-option", "3:5:10.0.0.9"][..],
        &["set-option", "3:4:10.0.300.9"],
        &["lease-time", "0"],
        &["-o", "nonsense"],
    ] {
        let r = net.ctl(0, bad);
        assert!(r.is_err(), "{bad:?} accepted: {r:?}");
    }
    assert_eq!(
        ctl_json_ok(&net, 0, &["options"]),
        before,
        "a refused change changed the store"
    );

    assert_alive(&mut net, 0);
    eprintln!(
        "options_changed_at_runtime_reach_the_next_ack took {:?}",
        t0.elapsed()
    );
}

#[test]
fn addresses_set_at_runtime_in_options_3_and_6_are_never_leased() {
    if !require_netns("addresses_set_at_runtime_in_options_3_and_6_are_never_leased") {
        return;
    }
    let _serial = serial();
    let t0 = Instant::now();
    // docs/dhcp.md: every address in options 3, 6 and 54 is reserved in every block we
    // own; option changes apply at once. So a router or DNS server set at run time to an
    // address inside an owned block must not be leased, not even to a client asking for
    // exactly that address (udhcpc -r).
    let mut net = new_net(1, 2);
    start_node(&mut net, 0, &[]);
    wait_serving(&mut net, 0, 1);
    let owned: Vec<Ipv4Addr> = ctl_json_ok(&net, 0, &["blocks"])["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["state"] == "ours")
        .map(|b| b["first"].as_str().unwrap().parse().unwrap())
        .collect();
    let free: Vec<String> = owned
        .iter()
        .flat_map(|f| (0..4).map(move |o| Ipv4Addr::from(u32::from(*f) + o).to_string()))
        .take(2)
        .collect();
    assert_eq!(free.len(), 2, "owned blocks: {owned:?}");
    let (router, dns) = (&free[0], &free[1]);
    assert_eq!(
        ctl_ok(&net, 0, &["set-option", &format!("3:4:{router}")]).trim(),
        "ok"
    );
    assert_eq!(ctl_ok(&net, 0, &["-o", &format!("6:4:{dns}")]).trim(), "ok");
    net.clt_start_args_k(0, 0, "udhcpc", &["-r", router]);
    net.clt_start_args_k(0, 1, "udhcpc", &["-r", dns]);
    let got0 = must_lease(&net, 0, 0);
    let got1 = must_lease(&net, 0, 1);
    let env = net.lease_env_k(0, 0);
    eprintln!(
        "router {router}, dns {dns} (both in owned blocks); asking for them, client 0.0 got \
         {got0}, client 0.1 got {got1}"
    );
    assert_eq!(env_get(&env, "router"), router.as_str(), "{env:?}");
    assert_eq!(env_get(&env, "dns"), dns.as_str(), "{env:?}");
    let leased: Vec<String> = [&got0, &got1]
        .into_iter()
        .filter(|g| *g == router || *g == dns)
        .cloned()
        .collect();
    assert!(
        leased.is_empty(),
        "addresses set at run time as router ({router}) / DNS server ({dns}) inside an owned \
         block were leased: client 0.0 got {got0}, client 0.1 got {got1}"
    );
    assert_alive(&mut net, 0);
    eprintln!(
        "addresses_set_at_runtime_in_options_3_and_6_are_never_leased took {:?}",
        t0.elapsed()
    );
}

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
    let acks = metric(&m, "ddhcp_dhcp_packets_sent_total{type=\"ack\"}", &metrics) as u64;
    let claimed = metric(&m, "ddhcp_block_events_total{event=\"claimed\"}", &metrics) as u64;
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

#[test]
fn decline_and_expire_reach_hook_and_audit() {
    if !require_netns("decline_and_expire_reach_hook_and_audit") {
        return;
    }
    let _serial = serial();
    let t0 = Instant::now();
    // Client 0.1 holds address A statically; client 0.2 asks for A and checks it by ARP
    // (udhcpc -a), finds it in use and declines it. Client 0.0 takes a 2 s lease and dies
    // without releasing, so its lease expires.
    let mut net = new_net(1, 3);
    let log = net.state_dir.join("hook.log");
    let audit = net.state_dir.join("audit.jsonl");
    let hook = logging_hook(&net, "event-hook", &log, "");
    start_node(
        &mut net,
        0,
        &[
            "-H",
            hook.to_str().unwrap(),
            "--audit-log",
            audit.to_str().unwrap(),
        ],
    );
    wait_serving(&mut net, 0, 1);
    let read = || fs::read_to_string(&log).unwrap_or_default();
    let has = |line: &str| read().lines().any(|l| l == line);

    // A: a free address in a block we own.
    let blocks = ctl_json_ok(&net, 0, &["blocks"]);
    let first = blocks["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["state"] == "ours")
        .map(|b| b["first"].as_str().unwrap().parse::<Ipv4Addr>().unwrap())
        .expect("no block owned");
    let a = Ipv4Addr::from(u32::from(first) + 2).to_string();
    let out = net.exec_client_ns_k(
        0,
        1,
        &["ip", "addr", "add", &format!("{a}/16"), "dev", "eth0"],
    );
    assert!(out.status.success(), "{out:?}");
    let mac2 = net.client_mac_k(0, 2);
    net.clt_start_args_k(0, 2, "udhcpc", &["-a", "-r", &a]);
    let decline_line = format!("decline {a} {mac2}");
    let declined = wait_until(Duration::from_secs(15), || has(&decline_line));
    if !declined {
        net.dump_logs();
        panic!(
            "no '{decline_line}' in the hook log after 15 s:\n{}\nclient 0.2 log:\n{}",
            read(),
            net.client_log_k(0, 2)
        );
    }
    let b = must_lease(&net, 0, 2);
    assert_ne!(b, a, "client 0.2 got the declined address again");
    let leased_a: Vec<(String, String)> = ctl_json_ok(&net, 0, &["leases"])["leases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["ip"] == a.as_str())
        .map(|l| (l["mac"].to_string(), l["state"].to_string()))
        .collect();
    assert!(leased_a.is_empty(), "declined {a} listed: {leased_a:?}");
    eprintln!("client 0.2 declined {a} and got {b}");

    // Expiry: a 2 s lease (the record runs 10 s longer) and a client that vanishes.
    assert_eq!(ctl_ok(&net, 0, &["lease-time", "2"]).trim(), "ok");
    net.clt_start_k(0, 0, "udhcpc");
    let c = must_lease(&net, 0, 0);
    let mac0 = net.client_mac_k(0, 0);
    net.clt_stop_keep_k(0, 0);
    let expire_line = format!("expire {c} {mac0}");
    let expired = wait_until(Duration::from_secs(25), || has(&expire_line));
    assert!(expired, "no '{expire_line}' after 25 s:\n{}", read());
    eprintln!("client 0.0's 2 s lease of {c} expired");

    let text = read();
    eprintln!("hook log:\n{text}");
    let lines: Vec<&str> = text.lines().collect();
    let pos = |line: &str| {
        lines
            .iter()
            .position(|l| *l == line)
            .unwrap_or_else(|| panic!("no '{line}' in the hook log"))
    };
    assert!(pos(&format!("lease {a} {mac2}")) < pos(&decline_line));
    assert!(pos(&decline_line) < pos(&format!("lease {b} {mac2}")));
    assert!(pos(&format!("lease {c} {mac0}")) < pos(&expire_line));

    let atext = fs::read_to_string(&audit).unwrap_or_default();
    eprintln!("audit log:\n{atext}");
    let records: Vec<Value> = atext
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line ({e}): {l}")))
        .collect();
    let find = |kind: &str, ip: &str, mac: &str| {
        records
            .iter()
            .position(|r| r["kind"] == kind && r["ip"] == ip && r["mac"] == mac)
            .unwrap_or_else(|| panic!("no {kind} record for {ip} {mac} in the audit log"))
    };
    assert!(find("lease", &a, &mac2) < find("decline", &a, &mac2));
    let lease_c = find("lease", &c, &mac0);
    assert_eq!(records[lease_c]["lease_seconds"], 2, "{}", records[lease_c]);
    assert!(lease_c < find("expire", &c, &mac0));
    assert_eq!(
        records.iter().filter(|r| r["kind"] == "decline").count(),
        1,
        "decline records"
    );
    assert_eq!(
        records.iter().filter(|r| r["kind"] == "expire").count(),
        1,
        "expire records"
    );
    assert_alive(&mut net, 0);
    eprintln!(
        "decline_and_expire_reach_hook_and_audit took {:?}",
        t0.elapsed()
    );
}

#[test]
fn metrics_match_what_happened() {
    if !require_netns("metrics_match_what_happened") {
        return;
    }
    let _serial = serial();
    let t0 = Instant::now();
    let mut net = new_net(1, 3);
    start_node(&mut net, 0, &["--metrics", "127.0.0.1:9430"]);
    wait_serving(&mut net, 0, 1);
    for k in 0..3 {
        net.clt_start_k(0, k, "udhcpc");
    }
    for k in 0..3 {
        must_lease(&net, 0, k);
    }
    net.clt_stop_k(0, 2);
    let mut active = 0;
    let freed = wait_until(Duration::from_secs(10), || {
        active = ctl_json_ok(&net, 0, &["status"])["leases_active"]
            .as_u64()
            .unwrap();
        active == 2
    });
    assert!(freed, "leases_active {active} after one release");

    // Scrape until it agrees with `ddhcpctl blocks` read right after it (a claim may land
    // in between).
    let mut text = String::new();
    let mut headers = String::new();
    let mut ours = 0usize;
    let consistent = wait_until(Duration::from_secs(10), || {
        let (code, h, body) = http_get(&net, 0, &["http://127.0.0.1:9430/metrics"]);
        assert_eq!(code, 200, "GET /metrics: {h}{body}");
        text = body;
        headers = h;
        let blocks = ctl_json_ok(&net, 0, &["blocks"]);
        ours = blocks["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["state"] == "ours")
            .count();
        let m = parse_metrics(&text);
        m.get("ddhcp_blocks{state=\"ours\"}") == Some(&(ours as f64))
    });
    eprintln!("scrape:\n{text}");
    let m = parse_metrics(&text);
    let get = |k: &str| metric(&m, k, &text);
    assert!(
        consistent,
        "ddhcp_blocks{{state=\"ours\"}} never matched {ours} owned blocks"
    );
    assert_eq!(get("ddhcp_leases{state=\"leased\"}"), 2.0);
    assert_eq!(get("ddhcp_leases{state=\"offered\"}"), 0.0);
    assert!(get("ddhcp_dhcp_packets_sent_total{type=\"ack\"}") >= 3.0);
    assert!(get("ddhcp_dhcp_packets_sent_total{type=\"offer\"}") >= 3.0);
    assert!(get("ddhcp_dhcp_packets_received_total{type=\"discover\"}") >= 3.0);
    assert!(get("ddhcp_dhcp_packets_received_total{type=\"request\"}") >= 3.0);
    assert_eq!(
        get("ddhcp_dhcp_packets_received_total{type=\"release\"}"),
        1.0
    );
    assert_eq!(get("ddhcp_dhcp_packets_sent_total{type=\"nak\"}"), 0.0);
    let dropped = get("ddhcp_block_events_total{event=\"dropped\"}");
    let lost = get("ddhcp_block_events_total{event=\"lost\"}");
    assert_eq!(
        (dropped, lost),
        (0.0, 0.0),
        "no block should be given up or lost here"
    );
    assert_eq!(
        get("ddhcp_block_events_total{event=\"claimed\"}"),
        ours as f64,
        "blocks claimed vs owned"
    );
    assert!(ours >= 1);
    assert_eq!(get("ddhcp_learning"), 0.0);
    assert_eq!(get("ddhcp_hook_runs_total"), 0.0);
    assert_eq!(get("ddhcp_roaming_forwards_total{outcome=\"sent\"}"), 0.0);
    assert!(get("ddhcp_claim_rounds_total") >= 1.0);
    let version = ctl_json_ok(&net, 0, &["status"])["version"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        get(&format!("ddhcp_build_info{{version=\"{version}\"}}")),
        1.0
    );
    let leased_line = "ddhcp_leases{state=\"leased\"} 2";
    assert!(text.lines().any(|l| l == leased_line));
    let ctl_text = ctl_ok(&net, 0, &["metrics"]);
    assert!(
        ctl_text.lines().any(|l| l == leased_line),
        "ddhcpctl metrics lacks '{leased_line}':\n{ctl_text}"
    );
    let keys = |m: &BTreeMap<String, f64>| m.keys().cloned().collect::<BTreeSet<_>>();
    assert_eq!(
        keys(&parse_metrics(&ctl_text)),
        keys(&m),
        "ddhcpctl metrics and GET /metrics list different series"
    );

    let (code, _, body) = http_get(&net, 0, &["http://127.0.0.1:9430/nope"]);
    assert_eq!(code, 404, "GET /nope: {body}");
    let (code, _, body) = http_get(&net, 0, &["-X", "POST", "http://127.0.0.1:9430/metrics"]);
    assert_eq!(code, 400, "POST /metrics: {body}");
    // Not reachable from a client host.
    let out = net.exec_client_ns_k(
        0,
        0,
        &[
            "curl",
            "-sS",
            "--max-time",
            "2",
            "http://10.0.0.1:9430/metrics",
        ],
    );
    assert!(
        !out.status.success(),
        "metrics reachable from a client host"
    );
    assert_alive(&mut net, 0);
    // Last, so that everything above is checked even while this fails: a Prometheus
    // server must be able to parse the scrape in the format its Content-Type announces.
    if let Some(problem) = exposition_problem(&headers, &text) {
        panic!("GET /metrics: {problem}\nheaders:\n{headers}");
    }
    eprintln!("metrics_match_what_happened took {:?}", t0.elapsed());
}

#[test]
fn audit_log_matches_leases() {
    if !require_netns("audit_log_matches_leases") {
        return;
    }
    let _serial = serial();
    let t0 = Instant::now();
    let mut net = new_net(1, 4);
    let audit = net.state_dir.join("audit.jsonl");
    start_node(&mut net, 0, &["--audit-log", audit.to_str().unwrap()]);
    wait_serving(&mut net, 0, 1);
    // Clients 0-2 plain; client 3 sends a hostname with characters JSON must escape.
    let evil = r#"evil"na\me;$(x)"#;
    let hostname_opt = format!("hostname:{evil}");
    for k in 0..3 {
        net.clt_start_k(0, k, "udhcpc");
    }
    net.clt_start_args_k(0, 3, "udhcpc", &["-x", &hostname_opt]);
    let mut clients: BTreeMap<usize, (String, String)> = BTreeMap::new();
    for k in 0..4 {
        clients.insert(k, (must_lease(&net, 0, k), net.client_mac_k(0, k)));
    }
    let expected: BTreeSet<(String, String)> = clients.values().cloned().collect();
    let listed: BTreeSet<(String, String)> = ctl_json_ok(&net, 0, &["leases"])["leases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["state"] == "leased")
        .map(|l| {
            (
                l["ip"].as_str().unwrap().to_string(),
                l["mac"].as_str().unwrap().to_lowercase(),
            )
        })
        .collect();
    assert_eq!(listed, expected, "ddhcpctl leases vs what the clients hold");
    let (rel_ip, rel_mac) = clients[&1].clone();
    net.clt_stop_k(0, 1);
    let read = || fs::read_to_string(&audit).unwrap_or_default();
    let released = wait_until(Duration::from_secs(10), || {
        read().contains("\"kind\":\"release\"")
    });
    let text = read();
    assert!(released, "no release record after 10 s:\n{text}");
    eprintln!("audit log:\n{text}");

    let node_id = ctl_json_ok(&net, 0, &["status"])["node_id"]
        .as_str()
        .unwrap()
        .to_string();
    let records: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line ({e}): {l}")))
        .collect();
    assert!(text.ends_with('\n'));
    let mut last_time = String::new();
    for r in &records {
        let time = r["time"].as_str().unwrap_or_else(|| panic!("no time: {r}"));
        assert!(is_rfc3339_utc(time), "time not RFC 3339 UTC: {r}");
        assert!(time >= last_time.as_str(), "time went backwards at {r}");
        last_time = time.to_string();
        assert_eq!(r["node_id"], node_id.as_str(), "{r}");
        let kind = r["kind"].as_str().unwrap();
        assert!(["lease", "release"].contains(&kind), "unexpected kind: {r}");
        let mac = r["mac"].as_str().unwrap();
        assert_eq!(mac, mac.to_lowercase(), "{r}");
    }
    // A record made within the last minutes, by the wall clock.
    let now = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M"])
        .output()
        .unwrap();
    let now = String::from_utf8_lossy(&now.stdout).trim().to_string();
    assert!(
        last_time[..10] == now[..10],
        "last record at {last_time}, now {now}"
    );
    let leases: Vec<&Value> = records.iter().filter(|r| r["kind"] == "lease").collect();
    let lease_pairs: BTreeSet<(String, String)> = leases
        .iter()
        .map(|r| {
            (
                r["ip"].as_str().unwrap().to_string(),
                r["mac"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(lease_pairs, expected, "lease records vs client leases");
    for r in &leases {
        assert_eq!(r["lease_seconds"], 300, "{r}");
        assert!(r.get("forwarded").is_none(), "not roamed: {r}");
        // udhcpc sends option 61 = 01 + MAC.
        let want_id = format!("01{}", r["mac"].as_str().unwrap().replace(':', ""));
        assert_eq!(r["client_id"], want_id.as_str(), "{r}");
    }
    let releases: Vec<&Value> = records.iter().filter(|r| r["kind"] == "release").collect();
    assert_eq!(releases.len(), 1, "release records: {releases:?}");
    assert_eq!(releases[0]["ip"], rel_ip.as_str());
    assert_eq!(releases[0]["mac"], rel_mac.as_str());
    assert!(
        releases[0].get("lease_seconds").is_none(),
        "{}",
        releases[0]
    );
    let release_line = text
        .lines()
        .position(|l| l.contains("\"kind\":\"release\""))
        .unwrap();
    let lease_line = text
        .lines()
        .position(|l| l.contains("\"kind\":\"lease\"") && l.contains(&format!("\"{rel_ip}\"")))
        .unwrap();
    assert!(lease_line < release_line, "release before lease");

    // The hostile hostname: escaped in the file, exact after parsing, only on client 3.
    let (ip3, mac3) = &clients[&3];
    for r in &leases {
        if r["ip"] == ip3.as_str() {
            assert_eq!(r["mac"], mac3.as_str());
            assert_eq!(r["hostname"], evil, "hostname of client 3: {r}");
        } else {
            assert!(
                r.get("hostname").is_none(),
                "hostname on another client: {r}"
            );
        }
    }
    assert!(
        text.contains(r#""hostname":"evil\"na\\me;$(x)""#),
        "hostname not JSON-escaped as expected:\n{text}"
    );
    assert_alive(&mut net, 0);
    eprintln!("audit_log_matches_leases took {:?}", t0.elapsed());
}

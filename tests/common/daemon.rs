//! Scaffolding of the namespace tests (`tests/netns_*.rs`) on top of [`TestNet`]: the
//! binaries of this package, one test at a time, a `ddhcpd` started with the usual test
//! flags, and small checks on a running daemon.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;

use super::netns::{TestNet, wait_until};

/// How long a client may take to get its first lease.
pub const LEASE_WAIT: Duration = Duration::from_secs(20);

/// The `ddhcpd` binary of this package.
pub fn ddhcpd() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ddhcpd"))
}

/// The `ddhcpctl` binary of this package.
pub fn ddhcpctl() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ddhcpctl"))
}

/// One test at a time: `let _serial = serial();` at the start of a test.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A [`TestNet`] of `n` daemon hosts with `per_node` client hosts each, running this
/// package's binaries.
pub fn new_net(n: usize, per_node: usize) -> TestNet {
    TestNet::with_clients(n, per_node, ddhcpd(), ddhcpctl())
}

/// The flags [`start_node`] adds unless told otherwise, as (flag, value): the test range
/// in blocks of 4, short timers, `-vv`, and a /16 subnet mask (so 10.0.0.1 on client0 is
/// on-link for the clients). `-v` stands for the verbosity (`-v`, `-vv`, …), which is
/// added as the single argument `-vv`.
pub const NODE_DEFAULTS: &[(&str, &str)] = &[
    ("-N", "10.0.128.0/24"),
    ("-t", "2"),
    ("-b", "2"),
    ("-s", "4"),
    ("-B", "10"),
    ("-v", "-vv"),
    ("-o", "1:4:255.255.0.0"),
];

/// True if `extra` gives default `flag` itself: the flag (any `-v…` for `-v`; for `-o`,
/// an option 1, the subnet mask).
fn overrides(extra: &[&str], flag: &str) -> bool {
    match flag {
        "-v" => extra
            .iter()
            .any(|a| a.len() >= 2 && a.starts_with("-v") && a[1..].bytes().all(|b| b == b'v')),
        "-o" => extra
            .windows(2)
            .any(|w| w[0] == "-o" && w[1].starts_with("1:")),
        _ => extra.contains(&flag),
    }
}

/// The command line [`start_node_without`] gives `ddhcpd` on daemon host i.
pub fn node_args(net: &TestNet, i: usize, omit: &[&str], extra: &[&str]) -> Vec<String> {
    for flag in omit {
        assert!(
            NODE_DEFAULTS.iter().any(|(f, _)| f == flag),
            "{flag} is not one of the defaults of start_node"
        );
    }
    let mut args: Vec<String> = ["-i", "server0", "-c", "client0", "-L", "-C"]
        .map(String::from)
        .into();
    args.push(net.sock(i).to_str().unwrap().to_string());
    args.push("--state-dir".into());
    args.push(net.state_dir(i).to_str().unwrap().to_string());
    for &(flag, value) in NODE_DEFAULTS {
        if omit.contains(&flag) || overrides(extra, flag) {
            continue;
        }
        if flag == "-v" {
            args.push(value.into());
        } else {
            args.extend([flag.into(), value.into()]);
        }
    }
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

/// Starts `ddhcpd` on daemon host i: interfaces `server0` and `client0`, no learning
/// phase (`-L`), the control socket [`TestNet::sock`] and state directory
/// [`TestNet::state_dir`] of host i, the [`NODE_DEFAULTS`], then `extra`. A default is
/// left out when `extra` gives that flag itself (ddhcpd refuses most flags twice).
pub fn start_node(net: &mut TestNet, i: usize, extra: &[&str]) {
    start_node_without(net, i, &[], extra);
}

/// Like [`start_node`], but without the defaults named in `omit` (by flag, `-v` for the
/// verbosity), so that ddhcpd uses its own.
pub fn start_node_without(net: &mut TestNet, i: usize, omit: &[&str], extra: &[&str]) {
    let args = node_args(net, i, omit, extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    net.start_daemon(i, &args);
}

/// Polls daemon i's `status` for up to 20 s until it serves: out of learning, owning at
/// least `blocks` blocks. Whether it does, and the last answer.
pub fn poll_serving(net: &TestNet, i: usize, blocks: u64) -> (bool, Result<Value, String>) {
    let mut last = Err(String::from("not asked"));
    let ok = wait_until(Duration::from_secs(20), || {
        last = net.ctl_json(i, &["status"]);
        last.as_ref().is_ok_and(|s| {
            s["learning"] == false && s["blocks_owned"].as_u64().is_some_and(|b| b >= blocks)
        })
    });
    (ok, last)
}

/// Waits until daemon i serves (see [`poll_serving`]), with the logs and a panic if it
/// does not, and checks that the PID the harness holds is ddhcpd's own.
pub fn wait_serving(net: &mut TestNet, i: usize, blocks: u64) {
    let (ok, last) = poll_serving(net, i, blocks);
    if !ok {
        net.dump_logs();
        panic!(
            "daemon {i} does not serve (>= {blocks} blocks) after 20 s: {last:?}; running: {}",
            net.daemon_running(i)
        );
    }
    // The PID the harness gives us is the daemon's own (srv-start and `ip netns exec`
    // exec); zombie checks rely on it.
    let pid = net.daemon_pid(i).unwrap();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    assert_eq!(
        comm.trim(),
        "ddhcpd",
        "pid {pid} of daemon {i} is not ddhcpd"
    );
}

/// `ddhcpctl --json ARGS…` on node i; panics with the error.
pub fn ctl_json_ok(net: &TestNet, i: usize, args: &[&str]) -> Value {
    net.ctl_json(i, args).unwrap_or_else(|e| panic!("{e}"))
}

/// `ddhcpctl ARGS…` on node i; its output, or the logs and a panic with the error.
pub fn ctl_ok(net: &TestNet, i: usize, args: &[&str]) -> String {
    net.ctl(i, args).unwrap_or_else(|e| {
        net.dump_logs();
        panic!("{e}")
    })
}

/// Counter `name` of daemon i's `stats`.
pub fn counter(net: &TestNet, i: usize, name: &str) -> u64 {
    let v = ctl_json_ok(net, i, &["stats"]);
    v["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("node {i}: no counter {name} in {v}"))
}

/// Waits for a lease of client (i, k), with its client log in the panic message.
pub fn must_lease(net: &TestNet, i: usize, k: usize) -> String {
    net.wait_lease_k(i, k, LEASE_WAIT).unwrap_or_else(|| {
        panic!(
            "client {i}.{k} got no lease within {LEASE_WAIT:?}; its log:\n{}",
            net.client_log_k(i, k)
        )
    })
}

/// Daemon i still runs and has not logged a panic.
pub fn assert_alive(net: &mut TestNet, i: usize) {
    assert!(
        net.daemon_running(i),
        "daemon {i} exited: {:?}",
        net.daemon_exit(i)
    );
    assert!(
        !net.daemon_log(i).contains("panicked"),
        "daemon {i} logged a panic"
    );
}

/// Every daemon of the net still runs and has not logged a panic.
pub fn assert_all_alive(net: &mut TestNet) {
    for i in 0..net.n {
        assert_alive(net, i);
    }
}

/// Writes an executable shell script into the net's state dir.
pub fn write_script(net: &TestNet, name: &str, body: &str) -> PathBuf {
    let path = net.state_dir.join(name);
    fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A hook that appends its arguments as one line to `log` (then runs `then`).
pub fn logging_hook(net: &TestNet, name: &str, log: &Path, then: &str) -> PathBuf {
    let log = log.to_str().unwrap();
    assert!(!log.contains('\''));
    write_script(
        net,
        name,
        &format!("printf '%s\\n' \"$*\" >> '{log}'\n{then}\n"),
    )
}

/// Makes udhcpc on client (i, k) renew now and returns what its script recorded from the
/// ACK (`lease-<name>.env`, see [`TestNet::lease_env_k`]).
pub fn renew(net: &TestNet, i: usize, k: usize) -> BTreeMap<String, String> {
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

/// Value `key` of a client's lease environment ([`TestNet::lease_env_k`]), "" if absent.
pub fn env_get<'a>(env: &'a BTreeMap<String, String>, key: &str) -> &'a str {
    env.get(key).map(String::as_str).unwrap_or("")
}

/// Parses Prometheus text: `name{labels}` (as written) -> value.
pub fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// Series `key` of a [`parse_metrics`] result; panics with the whole scrape if absent.
pub fn metric(m: &BTreeMap<String, f64>, key: &str, text: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("no metric {key} in the scrape:\n{text}"))
}

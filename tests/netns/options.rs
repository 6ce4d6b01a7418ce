//! Options and the log level changed at run time over the control socket of a real
//! `ddhcpd`, with real DHCP clients in network namespaces: `set-option`, `lease-time`,
//! `remove-option`, `log-level` and the ddhcpdctl short forms (`-o`, `-l`, `-d`, `-r`,
//! `-b`, `-s`, `-v`) reach the very next ACK (udhcpc's renewal, dhclient's INIT-REBOOT)
//! or log line, bad values are refused and change nothing; addresses set as router / DNS
//! server at run time are never leased.
//! Needs root (skips loudly otherwise, fails under CI=true).
//!
//! The tests of this file run one at a time.

#![allow(clippy::disallowed_methods)] // tests of real processes wait on real clocks

use crate::common;

use std::net::Ipv4Addr;
use std::thread;
use std::time::{Duration, Instant};

use common::daemon::{
    assert_alive, ctl_json_ok, ctl_ok, env_get, must_lease, new_net, renew, serial, start_node,
    wait_serving,
};
use common::netns::{require_netns, wait_until};
use serde_json::Value;

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

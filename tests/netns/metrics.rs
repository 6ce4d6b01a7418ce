//! `--metrics` and `ddhcpctl metrics` of a real `ddhcpd`, with real DHCP clients in network
//! namespaces: the series match what happened (leases, packets, blocks, hook, build), both
//! list the same series, other paths and methods are refused, client hosts cannot reach
//! the endpoint, and a Prometheus server accepts the scrape in the format it announces.
//! Needs root (skips loudly otherwise, fails under CI=true).

#![allow(clippy::disallowed_methods)] // tests of real processes wait on real clocks

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::time::{Duration, Instant};

use common::daemon::{
    assert_alive, ctl_json_ok, ctl_ok, metric, must_lease, new_net, parse_metrics, serial,
    start_node, wait_serving,
};
use common::netns::{TestNet, require_netns, wait_until};

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

// ------------------------------------------------------------------------ tests ---

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
        m.get("ddhcp_blocks{pool=\"default\",state=\"ours\"}") == Some(&(ours as f64))
    });
    eprintln!("scrape:\n{text}");
    let m = parse_metrics(&text);
    let get = |k: &str| metric(&m, k, &text);
    assert!(
        consistent,
        "ddhcp_blocks{{pool=\"default\",state=\"ours\"}} never matched {ours} owned blocks"
    );
    assert_eq!(get("ddhcp_leases{pool=\"default\",state=\"leased\"}"), 2.0);
    assert_eq!(get("ddhcp_leases{pool=\"default\",state=\"offered\"}"), 0.0);
    assert!(get("ddhcp_dhcp_packets_sent_total{pool=\"default\",type=\"ack\"}") >= 3.0);
    assert!(get("ddhcp_dhcp_packets_sent_total{pool=\"default\",type=\"offer\"}") >= 3.0);
    assert!(get("ddhcp_dhcp_packets_received_total{pool=\"default\",type=\"discover\"}") >= 3.0);
    assert!(get("ddhcp_dhcp_packets_received_total{pool=\"default\",type=\"request\"}") >= 3.0);
    assert_eq!(
        get("ddhcp_dhcp_packets_received_total{pool=\"default\",type=\"release\"}"),
        1.0
    );
    assert_eq!(
        get("ddhcp_dhcp_packets_sent_total{pool=\"default\",type=\"nak\"}"),
        0.0
    );
    let dropped = get("ddhcp_block_events_total{pool=\"default\",event=\"dropped\"}");
    let lost = get("ddhcp_block_events_total{pool=\"default\",event=\"lost\"}");
    assert_eq!(
        (dropped, lost),
        (0.0, 0.0),
        "no block should be given up or lost here"
    );
    assert_eq!(
        get("ddhcp_block_events_total{pool=\"default\",event=\"claimed\"}"),
        ours as f64,
        "blocks claimed vs owned"
    );
    assert!(ours >= 1);
    assert_eq!(get("ddhcp_learning"), 0.0);
    assert_eq!(get("ddhcp_hook_runs_total"), 0.0);
    assert_eq!(
        get("ddhcp_roaming_forwards_total{pool=\"default\",outcome=\"sent\"}"),
        0.0
    );
    assert!(get("ddhcp_claim_rounds_total") >= 1.0);
    let version = ctl_json_ok(&net, 0, &["status"])["version"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        get(&format!("ddhcp_build_info{{version=\"{version}\"}}")),
        1.0
    );
    let leased_line = "ddhcp_leases{pool=\"default\",state=\"leased\"} 2";
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

//! Control-socket requests: `Request::parse` takes any bytes without panicking, and every
//! request it accepts serialises with `to_line` to a line that parses back to the same value,
//! is routed (`daemon::render::route`), and if the core answers it, a two-pool node answers
//! it with exactly one answer that renders to a valid response.
#![no_main]

use std::net::Ipv4Addr;

use ddhcp::control::{Request, Response};
use ddhcp::daemon::render::{Routed, render, route};
use ddhcp::node::{Node, NodeConfig, Output};
use ddhcp::range::ManagedRange;
use ddhcp::testing::{claim, dhcp_node};
use ddhcp::time::Instant;
use ddhcp::wire::NodeId;
use libfuzzer_sys::fuzz_target;

/// Pools `default` (DHCP), `lan` (no service) and `vms` (allocations).
fn node() -> Node {
    let mut cfg = dhcp_node(
        ManagedRange::new(Ipv4Addr::new(10, 0, 0, 0), 24, 2).unwrap(),
        claim(4, 60, 2, false),
        vec![],
    );
    let mut lan = NodeConfig::single(
        ManagedRange::new(Ipv4Addr::new(10, 1, 0, 0), 24, 2).unwrap(),
        claim(4, 60, 2, false),
        None,
    )
    .pools
    .remove(0);
    lan.name = "lan".into();
    cfg.pools.push(lan);
    let mut vms = NodeConfig::single(
        ManagedRange::new(Ipv4Addr::new(10, 2, 0, 0), 24, 2).unwrap(),
        claim(4, 60, 2, false),
        None,
    )
    .pools
    .remove(0);
    vms.name = "vms".into();
    vms.service = ddhcp::pool::ServiceConfig::Api(ddhcp::api::ApiConfig::default());
    cfg.pools.push(vms);
    Node::new(cfg, NodeId([1; 8]), Instant::ZERO, 1)
}

fuzz_target!(|data: &[u8]| {
    match Request::parse(data) {
        Ok(req) => {
            let line = req.to_line();
            assert!(
                line.ends_with('\n') && !line[..line.len() - 1].contains('\n'),
                "to_line is not one line: {line:?}"
            );
            let again = Request::parse(line.as_bytes()).unwrap_or_else(|e| {
                panic!("to_line output {line:?} of {req:?} does not parse: {e}")
            });
            assert_eq!(again, req, "parse(to_line(r)) != r for {line:?}");
            match route(req) {
                Ok(Routed::Core(q)) => {
                    let mut n = node();
                    while n.poll_output().is_some() {}
                    n.handle_query(Instant::ZERO, 42, q);
                    let mut answers: Vec<_> = Vec::new();
                    // An allocation may wait for a claim: run the clock up to its
                    // longest timeout (10 minutes), a claim round at a time.
                    let mut now = Instant::ZERO;
                    for _ in 0..400 {
                        answers.extend(std::iter::from_fn(|| n.poll_output()).filter_map(
                            |o| match o {
                                Output::Answer { id, answer } => Some((id, answer)),
                                _ => None,
                            },
                        ));
                        if !answers.is_empty() {
                            break;
                        }
                        now = now + std::time::Duration::from_secs(2);
                        n.handle_timeout(now);
                    }
                    assert_eq!(answers.len(), 1, "one query, {answers:?}");
                    assert_eq!(answers[0].0, 42);
                    let bytes = render(answers[0].1.clone()).to_bytes();
                    serde_json_roundtrip(&bytes);
                }
                Ok(Routed::Shell(_)) => {}
                Err(r) => assert!(!serde_json_roundtrip(&r.to_bytes()).ok),
            }
        }
        Err(reason) => {
            // The daemon sends the reason back; it must make a valid response.
            let bytes = Response::err(reason).to_bytes();
            let back: Response = serde_json_roundtrip(&bytes);
            assert!(!back.ok);
        }
    }
});

fn serde_json_roundtrip(bytes: &[u8]) -> Response {
    // `Response` derives Deserialize; go through the same path ddhcpctl uses.
    let text = std::str::from_utf8(bytes).expect("responses are UTF-8");
    assert!(text.ends_with('\n'));
    serde_json::from_str(text.trim_end()).expect("a response must parse back")
}

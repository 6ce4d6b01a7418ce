//! Mesh-key authentication on a real link (`--peer-key`, docs/protocol.md
//! "Authentication"): three daemons with one key and a fourth host that attacks.
//!
//! - The forged UpdateClaim of issue 14 (node id `FFFFFFFFFFFFFFFF` claiming node 0's
//!   block), sent plain and with a made-up trailer, and a replay of a claim node 0 really
//!   sent (captured on the link), change nothing: the block stays node 0's on every node
//!   and its client renews.
//! - The key is rotated across the three running nodes (install, use, remove): no block
//!   changes hands, nothing fails verification, the client renews after each step.
//! - A daemon with the wrong key is refused: the others report it (`keys`, the hook's
//!   `auth-failed`), and it claims no block, reporting a key mismatch itself.
//!
//! Needs root, `ip`, `socat` and a DHCP client (fails under CI=true when missing).

#![allow(clippy::disallowed_methods)] // tests of real processes wait on real clocks

use crate::common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::daemon::{
    counter, ctl_json_ok, ctl_ok, logging_hook, must_lease, new_net, node_args, renew, serial,
    start_node, wait_serving,
};
use common::netns::{TestNet, require_netns, wait_until};

const IDS: [&str; 3] = ["0100000000000001", "0200000000000002", "0300000000000003"];

/// Block index → owner id as node i sees it, its own under `IDS[i]`.
fn owners(net: &TestNet, i: usize) -> BTreeMap<u64, String> {
    owners_by_id(net, i, IDS[i])
}

pub(crate) fn key_file(net: &TestNet, name: &str, byte: u8, id: u16) -> String {
    let p = net.state_dir.join(name);
    std::fs::write(&p, format!("{} {id}\n", format!("{byte:02x}").repeat(32))).unwrap();
    p.to_str().unwrap().to_string()
}

/// Sends `bytes` from host 3 to the peer multicast group on its server link.
pub(crate) fn inject(net: &TestNet, name: &str, bytes: &[u8]) {
    let p = net.state_dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    let out = net.exec_daemon_ns(
        3,
        &[
            "socat",
            "-u",
            &format!("OPEN:{}", p.display()),
            "UDP6-SENDTO:[ff02::1234%server0]:1234",
        ],
    );
    assert!(out.status.success(), "socat send: {out:?}");
}

/// One datagram node `id` multicasts, received on host 3 (which runs no daemon yet).
fn capture_claim(net: &TestNet, id: &str) -> Vec<u8> {
    let want: Vec<u8> = (0..8)
        .map(|i| u8::from_str_radix(&id[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let p = net.state_dir.join("captured.bin");
    for _ in 0..20 {
        let _ = std::fs::remove_file(&p);
        let out = net.exec_daemon_ns(
            3,
            &[
                "timeout",
                "10",
                "socat",
                "-u",
                "UDP6-RECVFROM:1234,reuseaddr,ipv6-join-group=[ff02::1234]:server0",
                &format!("OPEN:{},creat,trunc", p.display()),
            ],
        );
        assert!(out.status.success(), "socat receive: {out:?}");
        let d = std::fs::read(&p).unwrap_or_default();
        if d.len() > 16 && d[..8] == want[..] && d[14] == 1 {
            return d;
        }
    }
    panic!("no UpdateClaim of {id} seen on the link");
}

/// The UpdateClaim of issue 14: node id FF…FF claims `block` for 60 s.
fn forged_claim(block: u32) -> Vec<u8> {
    forged_claim_as("FFFFFFFFFFFFFFFF", block, 60)
}

/// A plain UpdateClaim (C layout) in the name of node `id` (hex) for `block` of
/// 10.0.128.0/24 in blocks of 4, `ttl` seconds (0: a release).
pub(crate) fn forged_claim_as(id: &str, block: u32, ttl: u16) -> Vec<u8> {
    let mut d: Vec<u8> = (0..8)
        .map(|i| u8::from_str_radix(&id[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    d.extend_from_slice(&[10, 0, 128, 0, 24, 4, 1, 1]);
    d.extend_from_slice(&block.to_be_bytes());
    d.extend_from_slice(&ttl.to_be_bytes());
    d.push(0);
    d
}

fn assert_owners_unchanged(net: &TestNet, before: &[BTreeMap<u64, String>], when: &str) {
    let ids: Vec<String> = IDS.iter().map(|s| s.to_string()).collect();
    assert_owners_unchanged_by_id(net, &ids, before, when);
}

#[test]
fn mesh_key_refuses_forgery_replay_and_wrong_keys_and_rotates_without_loss() {
    if !require_netns("mesh_key_refuses_forgery_replay_and_wrong_keys_and_rotates_without_loss") {
        return;
    }
    let _guard = serial();
    let mut net = new_net(4, 1);
    let k1 = key_file(&net, "k1", 0x11, 1);
    let k2 = key_file(&net, "k2", 0x22, 2);
    let wrong = key_file(&net, "wrong", 0x33, 2);
    let log1 = net.state_dir.join("hook1.log");
    let hook1 = logging_hook(&net, "hook1.sh", &log1, "");
    let audit1 = net.state_dir.join("audit1.jsonl");
    for (i, id) in IDS.iter().enumerate() {
        // No replicas: a fixed id over an empty state directory would rebuild first.
        let mut args = vec!["--node-id", id, "--peer-key", &k1, "--replicas", "0"];
        if i == 1 {
            args.extend(["-H", hook1.to_str().unwrap()]);
            args.extend(["--audit-log", audit1.to_str().unwrap()]);
        }
        start_node(&mut net, i, &args);
    }
    for i in 0..3 {
        wait_serving(&mut net, i, 1);
    }
    net.clt_start_k(0, 0, "udhcpc");
    let ip = must_lease(&net, 0, 0);
    // Every node knows every other's blocks.
    let ok = wait_until(Duration::from_secs(20), || {
        (0..3).all(|i| owners(&net, i).len() >= 3)
    });
    assert!(
        ok,
        "owners: {:?}",
        (0..3).map(|i| owners(&net, i)).collect::<Vec<_>>()
    );
    let before: Vec<_> = (0..3).map(|i| owners(&net, i)).collect();
    let block0 = *before[0]
        .iter()
        .find(|(_, o)| *o == IDS[0])
        .expect("node 0 owns a block")
        .0;

    // Forgeries and a replay, from host 3.
    let captured = capture_claim(&net, IDS[0]);
    assert_eq!(
        (captured.len() - 16) % 7,
        32 % 7,
        "a sealed claim is the C layout plus a 32-byte trailer"
    );
    let forged = forged_claim(block0 as u32);
    inject(&net, "forged.bin", &forged);
    let mut fake_trailer = forged.clone();
    fake_trailer.extend_from_slice(&[0xdd, 1, 0, 1]);
    fake_trailer.extend_from_slice(&[0x5a; 28]);
    inject(&net, "forged-sealed.bin", &fake_trailer);
    inject(&net, "replay.bin", &captured);
    std::thread::sleep(Duration::from_secs(3));
    assert_owners_unchanged(&net, &before, "after the forgeries");
    for i in 1..3 {
        assert!(counter(&net, i, "auth.drop_unsigned") >= 1, "node {i}");
        assert!(counter(&net, i, "auth.drop_bad_mac") >= 1, "node {i}");
        assert!(counter(&net, i, "auth.drop_replay") >= 1, "node {i}");
    }
    let env = renew(&net, 0, 0);
    assert_eq!(env.get("ip").map(String::as_str), Some(ip.as_str()));
    let keys = ctl_json_ok(&net, 1, &["keys"]);
    assert_eq!(keys["enabled"], true, "{keys}");
    assert_eq!(keys["keys"][0]["peers"], 2, "{keys}");
    assert!(
        keys["rejected"].as_array().is_some_and(|r| !r.is_empty()),
        "{keys}"
    );
    let hook = std::fs::read_to_string(&log1).unwrap_or_default();
    assert!(hook.contains("auth-failed"), "hook log: {hook}");
    // The same alarms in the audit trail, for security tools.
    let audit = std::fs::read_to_string(&audit1).unwrap_or_default();
    let alarms: Vec<serde_json::Value> = audit
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|r: &serde_json::Value| r["event"] == "alarm" && r["alarm"] == "auth-failed")
        .collect();
    assert!(
        alarms
            .iter()
            .any(|r| r["args"][1] == "FFFFFFFFFFFFFFFF" && r["node_id"] == IDS[1].to_uppercase()),
        "audit log: {audit}"
    );

    // Rotation: install everywhere, use everywhere, remove everywhere.
    let bad_before: Vec<u64> = (0..3)
        .map(|i| counter(&net, i, "auth.drop_bad_mac") + counter(&net, i, "auth.drop_unknown_key"))
        .collect();
    for step in [
        vec!["key", "install", &k2],
        vec!["key", "use", "2"],
        vec!["key", "remove", "1"],
    ] {
        for i in 0..3 {
            ctl_ok(&net, i, &step);
            std::thread::sleep(Duration::from_millis(700));
        }
        std::thread::sleep(Duration::from_secs(6));
        assert_owners_unchanged(&net, &before, &format!("after {step:?}"));
        let env = renew(&net, 0, 0);
        assert_eq!(
            env.get("ip").map(String::as_str),
            Some(ip.as_str()),
            "after {step:?}"
        );
    }
    for (i, before_i) in bad_before.iter().enumerate() {
        let bad = counter(&net, i, "auth.drop_bad_mac") + counter(&net, i, "auth.drop_unknown_key");
        assert_eq!(
            bad, *before_i,
            "node {i}: datagrams failed during the rotation"
        );
        let keys = ctl_json_ok(&net, i, &["keys"]);
        assert_eq!(keys["keys"].as_array().map(Vec::len), Some(1), "{keys}");
        assert_eq!(keys["keys"][0]["id"], 2, "{keys}");
        assert_eq!(keys["keys"][0]["peers"], 2, "node {i}: {keys}");
    }

    // A node with another key under id 2, with a learning phase as in production: refused
    // by all, and it claims nothing.
    let args = node_args(
        &net,
        3,
        &[],
        &[
            "--node-id",
            "0400000000000004",
            "--peer-key",
            &wrong,
            "--replicas",
            "0",
        ],
    );
    let args: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| *a != "-L")
        .collect();
    net.start_daemon(3, &args);
    let reported = |net: &TestNet, i: usize| {
        net.ctl_json(i, &["keys"]).is_ok_and(|k| {
            k["rejected"].as_array().is_some_and(|r| {
                r.iter()
                    .any(|r| r["node_id"] == "0400000000000004" && r["reason"] == "bad-mac")
            })
        })
    };
    let ok = wait_until(Duration::from_secs(40), || {
        (0..3).all(|i| reported(&net, i))
    });
    assert!(
        ok,
        "every node should report the wrong-key node: {:?}",
        (0..3)
            .map(|i| net.ctl_json(i, &["keys"]))
            .collect::<Vec<_>>()
    );
    let k3 = ctl_json_ok(&net, 3, &["keys"]);
    assert_eq!(k3["holding"], serde_json::json!(["default"]), "{k3}");
    let s3 = ctl_json_ok(&net, 3, &["status"]);
    assert_eq!(s3["blocks_owned"], 0, "the wrong-key node claimed: {s3}");
    assert_owners_unchanged(&net, &before, "with the wrong-key node");
    let env = renew(&net, 0, 0);
    assert_eq!(env.get("ip").map(String::as_str), Some(ip.as_str()));
    let m = net.ctl(3, &["metrics"]).unwrap_or_default();
    assert!(m.contains("ddhcp_peer_key_mismatch 1"), "{m}");
}

/// The example built beside the test binaries (examples/peer_forge.rs).
fn peer_forge() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let p = dir.join("examples").join("peer_forge");
    assert!(
        p.is_file(),
        "{} not built (cargo test builds examples)",
        p.display()
    );
    p
}

/// Block index → owner id as node i sees it, its own under its own id.
fn owners_by_id(net: &TestNet, i: usize, me: &str) -> BTreeMap<u64, String> {
    let v = ctl_json_ok(net, i, &["blocks"]);
    v["blocks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| {
            let idx = b["index"].as_u64()?;
            match b["state"].as_str()? {
                "ours" => Some((idx, me.to_string())),
                "claimed" => Some((idx, b["owner"].as_str()?.to_string())),
                _ => None,
            }
        })
        .collect()
}

#[test]
fn with_node_keys_a_member_cannot_take_a_held_block() {
    if !require_netns("with_node_keys_a_member_cannot_take_a_held_block") {
        return;
    }
    let _guard = serial();
    let mut net = new_net(4, 1);
    let k1 = key_file(&net, "k1", 0x11, 1);
    let audit0 = net.state_dir.join("audit0.jsonl");
    for i in 0..3 {
        let mut args = vec!["--peer-key", &k1, "--node-key", "--replicas", "0"];
        if i == 0 {
            args.extend(["--audit-log", audit0.to_str().unwrap()]);
        }
        start_node(&mut net, i, &args);
    }
    for i in 0..3 {
        wait_serving(&mut net, i, 1);
    }
    let ids: Vec<String> = (0..3)
        .map(|i| {
            ctl_json_ok(&net, i, &["status"])["node_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    for i in 0..3 {
        let k = ctl_json_ok(&net, i, &["keys"]);
        assert_eq!(k["node_key"], true, "{k}");
        // The key was made on first start, private.
        use std::os::unix::fs::PermissionsExt;
        let key = net.state_dir(i).join("node.key");
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{} is readable by others", key.display());
    }
    net.clt_start_k(0, 0, "udhcpc");
    let ip = must_lease(&net, 0, 0);
    let ok = wait_until(Duration::from_secs(20), || {
        (0..3).all(|i| owners_by_id(&net, i, &ids[i]).len() >= 3)
    });
    assert!(ok, "blocks not known everywhere");
    // Settled: no claim younger than the race window (half of -B 10) left to resolve.
    let mut before: Vec<_> = (0..3).map(|i| owners_by_id(&net, i, &ids[i])).collect();
    for _ in 0..10 {
        std::thread::sleep(Duration::from_secs(6));
        let now: Vec<_> = (0..3).map(|i| owners_by_id(&net, i, &ids[i])).collect();
        if now == before {
            break;
        }
        before = now;
    }
    let block0 = *before[0]
        .iter()
        .find(|(_, o)| **o == ids[0])
        .expect("node 0 owns a block")
        .0;
    // A member's key whose id is greater than every node's: the C tie-break would hand it
    // any block.
    let top = ids.iter().max().unwrap().clone();
    let seed = (0u32..)
        .map(|n| {
            let mut s = [0u8; 32];
            s[..4].copy_from_slice(&n.to_be_bytes());
            s
        })
        .find(|s| ddhcp::auth::NodeKey::from_seed(*s).id().to_string() > top)
        .unwrap();
    let member = ddhcp::auth::NodeKey::from_seed(seed);
    eprintln!("nodes {ids:?}, member {}", member.id());
    let member_file = net.state_dir.join("member.key");
    std::fs::write(&member_file, member.to_file_text()).unwrap();
    let forge = peer_forge();
    let run_forge = |as_id: &str, ttl: &str, secs: &str| {
        let out = net.exec_daemon_ns(
            3,
            &[
                forge.to_str().unwrap(),
                "server0",
                &k1,
                member_file.to_str().unwrap(),
                secs,
                as_id,
                "10.0.128.0/24",
                "4",
                ttl,
                &block0.to_string(),
            ],
        );
        assert!(out.status.success(), "peer_forge: {out:?}");
    };
    // In its own name, repeatedly (it answers the challenges, so its claims are verified),
    // for longer than a block timeout (-B 10): node 0 reports the contest.
    run_forge("self", "60", "12");
    assert_owners_unchanged_by_id(&net, &ids, &before, "after the member's claims");
    for i in 0..3 {
        assert!(
            counter(&net, i, "blocks.claims_refused") >= 1,
            "node {i} refused nothing"
        );
        assert!(
            counter(&net, i, "auth.signatures_verified") >= 1,
            "node {i}"
        );
    }
    let audit = std::fs::read_to_string(&audit0).unwrap_or_default();
    let member_id = member.id().to_string();
    assert!(
        audit
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|r| r["alarm"] == "contested" && r["args"][1] == member_id.as_str()),
        "no contested alarm for the member in node 0's audit log: {audit}"
    );
    // In node 0's name: a release, then a claim; its key is not node 0's.
    run_forge(&ids[0], "0", "3");
    run_forge(&ids[0], "60", "2");
    assert_owners_unchanged_by_id(&net, &ids, &before, "after the claims in node 0's name");
    for i in 1..3 {
        assert!(counter(&net, i, "auth.drop_forged") >= 1, "node {i}");
    }
    let env = renew(&net, 0, 0);
    assert_eq!(env.get("ip").map(String::as_str), Some(ip.as_str()));
}

fn assert_owners_unchanged_by_id(
    net: &TestNet,
    ids: &[String],
    before: &[BTreeMap<u64, String>],
    when: &str,
) {
    for (i, b) in before.iter().enumerate() {
        let now = owners_by_id(net, i, &ids[i]);
        for (block, owner) in b {
            assert_eq!(
                now.get(block),
                Some(owner),
                "{when}: node {i} sees block {block} owned by {:?}, was {owner}",
                now.get(block)
            );
        }
    }
}

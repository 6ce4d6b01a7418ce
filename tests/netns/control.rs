//! The control socket of a real daemon under abuse: clients that connect and send nothing,
//! send 10 MB, or send garbage never stop other clients or the daemon. Also the socket's
//! life cycle: mode 0600, a stale file replaced, a second daemon on the same path refused.

#![allow(clippy::disallowed_methods)] // tests of real processes wait on real clocks

use crate::common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::daemon::{ddhcpd, new_net, start_node_without};
use common::netns::{TestNet, output_timeout, require_netns};

/// One daemon on the test range in blocks of 4 with short claim timers; ddhcpd's own
/// spare blocks, block timeout and log level, no options.
fn start(net: &mut TestNet) {
    start_node_without(net, 0, &["-s", "-B", "-v", "-o"], &[]);
}

fn status_within(net: &TestNet, limit: Duration) {
    let t = Instant::now();
    let v = net.ctl_json(0, &["status"]).expect("status answered");
    assert_eq!(v["learning"], false);
    assert!(t.elapsed() < limit, "status took {:?}", t.elapsed());
}

#[test]
fn control_socket_survives_abuse() {
    if !require_netns("control_socket_survives_abuse") {
        return;
    }
    let mut net = new_net(1, 1);
    start(&mut net);
    net.wait_ctl_json(0, &["status"], Duration::from_secs(5))
        .expect("daemon up");
    let sock = net.sock(0);
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // Twenty clients connect and say nothing.
    let idle: Vec<UnixStream> = (0..20)
        .map(|_| UnixStream::connect(&sock).unwrap())
        .collect();
    status_within(&net, Duration::from_secs(1));

    // One sends 10 MB without a newline: refused after 4 KiB, connection closed.
    let mut big = UnixStream::connect(&sock).unwrap();
    big.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let chunk = vec![b'x'; 64 * 1024];
    let mut sent = 0;
    while sent < 10 << 20 {
        match big.write(&chunk) {
            Ok(n) => sent += n,
            Err(_) => break, // the daemon closed on us: good
        }
    }
    let mut answer = String::new();
    big.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let _ = big.read_to_string(&mut answer);
    assert!(
        sent < 10 << 20 || answer.contains("larger than"),
        "{answer}"
    );
    status_within(&net, Duration::from_secs(1));

    // Garbage of every kind gets an error answer, never a crash.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for i in 0..300 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let len = (seed % 600) as usize;
        let mut bytes: Vec<u8> = (0..len)
            .map(|k| (seed >> (k % 56)) as u8 ^ k as u8)
            .collect();
        if i % 3 == 0 {
            bytes = format!("{{\"cmd\":\"{}\"}}", String::from_utf8_lossy(&bytes)).into_bytes();
        }
        bytes.push(b'\n');
        let mut s = UnixStream::connect(&sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let _ = s.write_all(&bytes);
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        if !reply.is_empty() {
            let v: serde_json::Value = serde_json::from_str(&reply).expect("answers are JSON");
            assert!(v["ok"].is_boolean());
        }
    }
    status_within(&net, Duration::from_secs(1));
    drop(idle);
    assert!(net.daemon_running(0), "daemon died");
    let stats = net.ctl_json(0, &["stats"]).unwrap();
    assert!(stats["counters"].is_object());

    // A second daemon on the same socket path is refused with exit code 2.
    let out = std::process::Command::new(ddhcpd())
        .args(["-i", "lo", "-S", "-N", "10.0.128.0/24", "-C"])
        .arg(&sock)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by a running daemon"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // After kill -9 the stale socket file stays; a new daemon replaces it.
    net.kill9(0);
    assert!(sock.exists());
    start(&mut net);
    net.wait_ctl_json(0, &["status"], Duration::from_secs(5))
        .expect("restarted over a stale socket");
}

/// Flag errors: exit code 2 and exactly one line naming flag, value and reason.
#[test]
fn bad_flags_exit_2_with_one_line() {
    let cases: &[(&[&str], &str)] = &[
        (&["-i", "lo", "-S", "-N", "10.0.0.0/24", "-b", "8"], "-b"),
        (&["-i", "lo", "-S", "-N", "10.0.0.1/24"], "-N"),
        (
            &["-i", "no-such-if0", "-S", "-N", "10.0.0.0/24"],
            "no-such-if0",
        ),
        (
            &["-i", "lo", "-c", "no-such-if1", "-N", "10.0.0.0/24"],
            "no-such-if1",
        ),
        (&["-i", "lo", "-S", "-N", "10.0.0.0/24", "-t", "0"], "-t"),
        (
            &["-i", "lo", "-S", "-N", "10.0.0.0/24", "-o", "3:4:1.2"],
            "-o",
        ),
        (
            &["-i", "lo", "-S", "-N", "10.0.0.0/24", "--bogus"],
            "--bogus",
        ),
        (
            &[
                "-i",
                "lo",
                "-S",
                "-N",
                "10.0.0.0/24",
                "-H",
                "/nonexistent/hook",
            ],
            "-H",
        ),
    ];
    // Pools and the config file: a missing file, a bad line, overlapping pools, an unknown
    // `use=`, and a use this release does not serve yet.
    let dir = std::env::temp_dir().join(format!("ddhcp-badcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "server-iface = \"lo\"\n[pool.a]\nnetwork = 10.0.0.0/24\n",
    )
    .unwrap();
    let missing = dir.join("missing.toml");
    let (bad, missing) = (bad.to_str().unwrap(), missing.to_str().unwrap());
    let bad_line = format!("{bad}:3");
    let pool_cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["-i", "lo", "--config", missing], "No such file"),
        (vec!["-i", "lo", "--config", bad], bad_line.as_str()),
        (
            vec![
                "-i",
                "lo",
                "-S",
                "--pool",
                "a=10.0.0.0/16",
                "--pool",
                "b=10.0.3.0/24",
            ],
            "overlap",
        ),
        (vec!["-i", "lo", "--pool", "a=10.0.0.0/24,use=ftp"], "use"),
        (
            vec![
                "-i",
                "lo",
                "--pool",
                "a=10.0.0.0/24,use=local,iface=nosuch9",
            ],
            "iface=nosuch9",
        ),
        (
            vec!["-i", "lo", "--pool", "a=10.0.0.0/24,use=api,iface=lo"],
            "an api pool has no interface",
        ),
        (
            vec![
                "-i",
                "lo",
                "--pool",
                "a=10.0.0.0/24,use=dhcp,iface=lo,cooldown=5",
            ],
            "use=api pools only",
        ),
        (
            vec!["-i", "lo", "--pool", "a=10.0.0.0/24,use=local"],
            "iface=IFACE",
        ),
    ];
    let cases: Vec<(&[&str], &str)> = cases
        .iter()
        .copied()
        .chain(pool_cases.iter().map(|(a, n)| (a.as_slice(), *n)))
        .collect();
    for (args, needle) in cases {
        // A case that is not an error after all would start a daemon: bounded, and it
        // must not touch the default state directory.
        let out = output_timeout(
            std::process::Command::new(ddhcpd())
                .args(args)
                .args(["-C", "/nonexistent-dir-for-test/ctl.sock"])
                .args(["--state-dir", "/nonexistent-dir-for-test/state"]),
            Duration::from_secs(10),
        )
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

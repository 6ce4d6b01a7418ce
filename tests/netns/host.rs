//! The host side of local address mode (`src/daemon/host`) against the real kernel: addresses
//! added, refused, removed and watched through rtnetlink, and gratuitous ARP seen by a peer.
//!
//! Each test makes its own two namespaces, `ddh<pid>x<k>a` (ours) and `…b` (the peer), joined
//! by a veth pair `eth0`–`eth0` created directly inside them, so nothing in the root namespace
//! is touched; a guard deletes both on drop, also when the test fails.
//!
//! The code under test runs *inside* namespace a: [`in_ns`] starts a thread, moves that
//! thread alone into the namespace with `setns(CLONE_NEWNET)` (allowed in a multi-threaded
//! process for network namespaces, and only the calling thread moves), and runs a
//! current-thread tokio runtime there. Sockets belong to the namespace of the thread that
//! creates them, and a current-thread runtime runs every spawned task (the netlink
//! connections) on that same thread, so everything the module opens lives in namespace a.
//! The `ip` commands that play "someone else" name their namespace with `ip -n`.

#![cfg(feature = "local")]
#![allow(clippy::disallowed_methods)] // tests of the real kernel wait on real clocks

use crate::common;

use std::fs::File;
use std::future::Future;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::netns::{output_timeout, require_netns, wait_until};
use ddhcp::daemon::host::{
    AddError, Addresses, HostEvent, IFA_PROTO_OURS, Monitor, RemoveError, Tagging, arp,
};

const CMD_TIMEOUT: Duration = Duration::from_secs(20);
const EVENT_WAIT: Duration = Duration::from_secs(5);

fn ip4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// Two namespaces joined by a veth pair, removed on drop.
struct Pair {
    ours: String,
    peer: String,
}

impl Pair {
    fn new() -> Pair {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let base = format!("ddh{}x{k}", std::process::id());
        // The guard exists before anything is created, so a failure half-way still cleans up.
        let pair = Pair {
            ours: format!("{base}a"),
            peer: format!("{base}b"),
        };
        for ns in [&pair.ours, &pair.peer] {
            run(Command::new("ip").args(["netns", "add", ns]));
            pair.ip(ns, &["link", "set", "lo", "up"]);
        }
        pair.create_veth();
        pair.ip(&pair.peer, &["link", "set", "eth0", "up"]);
        pair
    }

    /// `eth0` in ours, its peer `eth0` in the peer namespace; ours left down.
    fn create_veth(&self) {
        self.ip(
            &self.ours,
            &[
                "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &self.peer,
            ],
        );
    }

    /// `ip -n NS ARGS…`, which must succeed; its stdout.
    fn ip(&self, ns: &str, args: &[&str]) -> String {
        let out = run(Command::new("ip").arg("-n").arg(ns).args(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ip netns exec NS ARGS…`, which must succeed.
    fn exec(&self, ns: &str, args: &[&str]) -> String {
        let out = run(Command::new("ip").args(["netns", "exec", ns]).args(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn sysctl(&self, ns: &str, setting: &str) {
        self.exec(ns, &["sysctl", "-q", "-w", setting]);
    }

    /// The IPv4 addresses on `eth0` of `ns`, as `ip` prints them (`a.b.c.d/len`).
    fn addrs(&self, ns: &str) -> Vec<String> {
        self.ip(ns, &["-4", "-o", "addr", "show", "dev", "eth0"])
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                w.find(|&x| x == "inet")?;
                w.next().map(str::to_owned)
            })
            .collect()
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for ns in [&self.ours, &self.peer] {
            match output_timeout(Command::new("ip").args(["netns", "del", ns]), CMD_TIMEOUT) {
                Ok(o) if o.status.success() => {}
                Ok(o) => eprintln!(
                    "ip netns del {ns}: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
                Err(e) => eprintln!("ip netns del {ns}: {e}"),
            }
        }
    }
}

fn run(cmd: &mut Command) -> Output {
    let out = output_timeout(cmd, CMD_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs the future `f` makes on a thread inside network namespace `ns` (see the module doc).
fn in_ns<T, F, Fut>(ns: &str, f: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let path = format!("/run/netns/{ns}");
    let thread = std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        // SAFETY: a valid namespace file descriptor; setns only changes this thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        rt.block_on(f())
    });
    thread
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// The index of `eth0` as the module sees it, after checking that the module really is in
/// the test namespace (only `lo` and `eth0` there): nothing below may reach the root one.
async fn eth0(a: &Addresses) -> u32 {
    let links = a.links().await.expect("link dump");
    let names: Vec<&str> = links.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(
        names.len(),
        2,
        "not in the test namespace? links: {names:?}"
    );
    links
        .iter()
        .find(|l| l.name == "eth0")
        .map(|l| l.ifindex)
        .unwrap_or_else(|| panic!("no eth0 in {names:?}"))
}

/// Events until one matches `want`, within [`EVENT_WAIT`]; panics with what came instead.
async fn expect_event(
    mon: &mut Monitor,
    what: &str,
    want: impl Fn(&HostEvent) -> bool,
) -> HostEvent {
    let end = tokio::time::Instant::now() + EVENT_WAIT;
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout_at(end, mon.next()).await {
            Ok(Some(e)) if want(&e) => return e,
            Ok(Some(e)) => seen.push(e),
            Ok(None) => panic!("monitor ended waiting for {what}; saw {seen:?}"),
            Err(_) => panic!("no {what} within {EVENT_WAIT:?}; saw {seen:?}"),
        }
    }
}

#[test]
fn add_tags_and_refuses_what_is_not_ours() {
    if !require_netns("add_tags_and_refuses_what_is_not_ours") {
        return;
    }
    let pair = Pair::new();
    let ns = pair.ours.clone();
    pair.ip(&ns, &["link", "set", "eth0", "up"]);
    let ours = ip4("10.77.0.10");
    let foreign = ip4("10.77.0.20");

    // Ours, added by the module.
    let idx = in_ns(&ns, move || async move {
        let a = Addresses::open().expect("netlink");
        let idx = eth0(&a).await;
        assert_eq!(a.tagging(), None, "learnt only from the first add");
        a.add(idx, ours, 24).await.expect("add");
        assert_eq!(
            a.tagging(),
            Some(Tagging::Protocol),
            "this kernel keeps IFA_PROTO"
        );
        assert_eq!(a.list_ours(idx).await.unwrap(), vec![(ours, 24)]);
        idx
    });
    assert_eq!(pair.addrs(&ns), vec!["10.77.0.10/24"]);
    // iproute2 prints IFA_PROTO from 6.2 on (`proto 0x64`); older ones show nothing.
    let detail = pair.ip(&ns, &["-d", "-4", "addr", "show", "dev", "eth0"]);
    if detail.contains(" proto ") {
        assert!(
            detail.contains(&format!("proto {IFA_PROTO_OURS:#x}"))
                || detail.contains(&format!("proto {IFA_PROTO_OURS}")),
            "{detail}"
        );
    } else {
        eprintln!("(this iproute2 does not print IFA_PROTO; checked through the dump)");
    }

    // Someone else's, added by `ip`.
    pair.ip(&ns, &["addr", "add", "10.77.0.20/24", "dev", "eth0"]);
    in_ns(&ns, move || async move {
        let a = Addresses::open().expect("netlink");
        let all = a.list_all(idx).await.unwrap();
        let view: Vec<(Ipv4Addr, u8, bool)> =
            all.iter().map(|h| (h.ip, h.prefix_len, h.ours)).collect();
        assert_eq!(view, vec![(ours, 24, true), (foreign, 24, false)]);

        // The same address again, in any form, on any interface: refused.
        match a.add(idx, ours, 24).await {
            Err(AddError::Exists {
                ifindex,
                ours: true,
                ..
            }) if ifindex == idx => {}
            other => panic!("second add of ours: {other:?}"),
        }
        match a.add(idx, ours, 32).await {
            Err(AddError::Exists { ours: true, .. }) => {}
            other => panic!("ours with another prefix: {other:?}"),
        }
        match a.add(1, ours, 32).await {
            Err(AddError::Exists { ifindex, .. }) if ifindex == idx => {}
            other => panic!("ours on lo: {other:?}"),
        }
        match a.add(idx, foreign, 24).await {
            Err(AddError::Exists { ours: false, .. }) => {}
            other => panic!("add of a foreign address: {other:?}"),
        }
        match a.add(999, ip4("10.77.0.30"), 24).await {
            Err(AddError::NoSuchInterface(999)) => {}
            other => panic!("add on a missing interface: {other:?}"),
        }
        match a.add(idx, ip4("10.77.0.255"), 24).await {
            Err(AddError::Invalid { .. }) => {}
            other => panic!("add of a broadcast address: {other:?}"),
        }

        // Not ours: never removed.
        match a.remove(idx, foreign, 24).await {
            Err(RemoveError::NotOurs { .. }) => {}
            other => panic!("remove of a foreign address: {other:?}"),
        }
        match a.remove(idx, ip4("10.77.0.40"), 24).await {
            Err(RemoveError::NotFound { .. }) => {}
            other => panic!("remove of a missing address: {other:?}"),
        }
        match a.remove(idx, ours, 25).await {
            Err(RemoveError::NotFound { .. }) => {}
            other => panic!("remove with the wrong prefix: {other:?}"),
        }
    });
    assert_eq!(pair.addrs(&ns), vec!["10.77.0.10/24", "10.77.0.20/24"]);

    // Ours is the primary of 10.77.0.0/24 and the foreign one its secondary: without
    // promote_secondaries, deleting ours would delete theirs too, so it is refused.
    pair.sysctl(&ns, "net.ipv4.conf.eth0.promote_secondaries=0");
    in_ns(&ns, move || async move {
        let a = Addresses::open().expect("netlink");
        match a.remove(idx, ours, 24).await {
            Err(RemoveError::WouldTakeSecondaries { others, .. }) => {
                assert_eq!(others, vec![foreign]);
            }
            other => panic!("remove of a primary with a foreign secondary: {other:?}"),
        }
    });
    assert_eq!(pair.addrs(&ns), vec!["10.77.0.10/24", "10.77.0.20/24"]);

    // With promotion the foreign one stays, promoted, and ours goes.
    pair.sysctl(&ns, "net.ipv4.conf.eth0.promote_secondaries=1");
    in_ns(&ns, move || async move {
        let a = Addresses::open().expect("netlink");
        a.remove(idx, ours, 24).await.expect("remove ours");
        assert_eq!(a.list_ours(idx).await.unwrap(), vec![]);
        match a.remove(idx, ours, 24).await {
            Err(RemoveError::NotFound { .. }) => {}
            other => panic!("second remove: {other:?}"),
        }
    });
    assert_eq!(pair.addrs(&ns), vec!["10.77.0.20/24"]);
}

#[test]
fn label_fallback_tags_and_is_recognised() {
    if !require_netns("label_fallback_tags_and_is_recognised") {
        return;
    }
    let pair = Pair::new();
    let ns = pair.ours.clone();
    pair.ip(&ns, &["link", "set", "eth0", "up"]);
    // A label of someone else's that merely looks like an alias.
    pair.ip(
        &ns,
        &[
            "addr",
            "add",
            "10.78.0.5/32",
            "dev",
            "eth0",
            "label",
            "eth0:1",
        ],
    );
    let idx = in_ns(&ns, || async {
        // As on a kernel before 6.1, which would drop IFA_PROTO.
        let a = Addresses::open_with_tagging(Tagging::Label).expect("netlink");
        let idx = eth0(&a).await;
        a.add(idx, ip4("10.78.0.10"), 32).await.expect("add");
        a.add(idx, ip4("10.78.0.11"), 32).await.expect("add");
        assert_eq!(
            a.list_ours(idx).await.unwrap(),
            vec![(ip4("10.78.0.10"), 32), (ip4("10.78.0.11"), 32)]
        );
        // Recognised by a fresh instance, which has learnt nothing yet.
        let b = Addresses::open().expect("netlink");
        assert_eq!(b.list_ours(idx).await.unwrap().len(), 2);
        match b.remove(idx, ip4("10.78.0.5"), 32).await {
            Err(RemoveError::NotOurs { .. }) => {}
            other => panic!("remove of the foreign alias: {other:?}"),
        }
        b.remove(idx, ip4("10.78.0.10"), 32).await.expect("remove");
        idx
    });
    let shown = pair.ip(&ns, &["-4", "addr", "show", "dev", "eth0"]);
    assert!(
        shown.contains("10.78.0.11/32 scope global eth0:dd"),
        "{shown}"
    );
    assert!(
        shown.contains("10.78.0.5/32 scope global eth0:1"),
        "{shown}"
    );
    assert!(!shown.contains("10.78.0.10/"), "{shown}");
    assert!(idx > 0);
}

#[test]
fn monitor_reports_deletes_and_link_flaps() {
    if !require_netns("monitor_reports_deletes_and_link_flaps") {
        return;
    }
    let pair = Pair::new();
    let ns = pair.ours.clone();
    pair.ip(&ns, &["link", "set", "eth0", "up"]);
    let ns2 = ns.clone();
    let peer = pair.peer.clone();
    // The `ip` commands run from this (namespace) thread while the runtime waits on them;
    // their notifications queue in the socket until `next` reads them.
    let ip = move |args: &[&str]| {
        run(Command::new("ip").arg("-n").arg(&ns2).args(args));
    };
    in_ns(&ns, move || async move {
        let mut mon = Monitor::open().await.expect("monitor");
        let a = Addresses::open().expect("netlink");
        let idx = eth0(&a).await;
        let ours = ip4("10.79.0.10");

        a.add(idx, ours, 24).await.expect("add");
        expect_event(&mut mon, "our add", |e| {
            *e == HostEvent::AddressAdded {
                ifindex: idx,
                ip: ours,
                prefix_len: 24,
                ours: true,
            }
        })
        .await;

        // Someone deletes ours.
        ip(&["addr", "del", "10.79.0.10/24", "dev", "eth0"]);
        expect_event(&mut mon, "the removal of ours", |e| {
            *e == HostEvent::AddressRemoved {
                ifindex: idx,
                ip: ours,
                prefix_len: 24,
                ours: true,
            }
        })
        .await;

        // Someone adds and deletes their own.
        ip(&["addr", "add", "10.79.0.20/24", "dev", "eth0"]);
        expect_event(&mut mon, "a foreign add", |e| {
            matches!(e, HostEvent::AddressAdded { ip, ours: false, .. } if *ip == ip4("10.79.0.20"))
        })
        .await;

        // The interface goes down and up, then is deleted and re-created.
        ip(&["link", "set", "eth0", "down"]);
        expect_event(&mut mon, "link down", |e| {
            *e == HostEvent::LinkGone {
                ifindex: idx,
                name: "eth0".into(),
            }
        })
        .await;
        ip(&["link", "set", "eth0", "up"]);
        expect_event(&mut mon, "link up", |e| {
            *e == HostEvent::LinkUp {
                ifindex: idx,
                name: "eth0".into(),
            }
        })
        .await;
        ip(&["link", "del", "eth0"]);
        expect_event(&mut mon, "the foreign address going with the link", |e| {
            matches!(e, HostEvent::AddressRemoved { ip, ours: false, .. } if *ip == ip4("10.79.0.20"))
        })
        .await;
        expect_event(&mut mon, "link deleted", |e| {
            *e == HostEvent::LinkGone {
                ifindex: idx,
                name: "eth0".into(),
            }
        })
        .await;
        ip(&[
            "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &peer,
        ]);
        ip(&["link", "set", "eth0", "up"]);
        let back = expect_event(
            &mut mon,
            "link re-created",
            |e| matches!(e, HostEvent::LinkUp { name, .. } if name == "eth0"),
        )
        .await;
        let new_idx = eth0(&a).await;
        assert_eq!(
            back,
            HostEvent::LinkUp {
                ifindex: new_idx,
                name: "eth0".into()
            }
        );
        assert_ne!(new_idx, idx, "a re-created interface gets a new index");

        // And ours can be put back on it.
        a.add(new_idx, ours, 24).await.expect("re-add");
        expect_event(&mut mon, "our re-add", |e| {
            matches!(e, HostEvent::AddressAdded { ifindex, ours: true, .. } if *ifindex == new_idx)
        })
        .await;
    });
}

#[test]
fn monitor_overrun_asks_for_a_resync() {
    if !require_netns("monitor_overrun_asks_for_a_resync") {
        return;
    }
    let pair = Pair::new();
    let ns = pair.ours.clone();
    pair.ip(&ns, &["link", "set", "eth0", "up"]);
    let batch = std::env::temp_dir().join(format!("{ns}.batch"));
    let lines: String = (1..=250)
        .map(|i| format!("addr add 10.80.{}.{}/32 dev eth0\n", i / 200, 1 + i % 200))
        .collect();
    std::fs::write(&batch, lines).unwrap();
    let ns2 = ns.clone();
    let batch2 = batch.clone();
    let resynced = in_ns(&ns, move || async move {
        // The smallest buffer the kernel allows: a few notifications fill it.
        let mut mon = Monitor::open_with_receive_buffer(1).await.expect("monitor");
        // 250 notifications while this thread, the only one that reads the socket, is busy
        // running `ip`.
        run(Command::new("ip")
            .arg("-n")
            .arg(&ns2)
            .arg("-batch")
            .arg(&batch2));
        let mut seen = 0;
        let mut resync = false;
        while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(500), mon.next()).await {
            seen += 1;
            if e == HostEvent::Resync {
                resync = true;
                break;
            }
        }
        // Still listening after the overrun.
        run(Command::new("ip").args(["-n", &ns2, "addr", "add", "10.81.0.1/32", "dev", "eth0"]));
        expect_event(
            &mut mon,
            "an add after the overrun",
            |e| matches!(e, HostEvent::AddressAdded { ip, .. } if *ip == ip4("10.81.0.1")),
        )
        .await;
        (resync, seen)
    });
    let _ = std::fs::remove_file(&batch);
    assert!(
        resynced.0,
        "no Resync after 250 notifications into a tiny buffer ({} events)",
        resynced.1
    );
    assert!(
        resynced.1 < 250,
        "saw {} events: nothing was lost?",
        resynced.1
    );
}

#[test]
fn gratuitous_arp_teaches_the_peer_our_mac() {
    if !require_netns("gratuitous_arp_teaches_the_peer_our_mac") {
        return;
    }
    let pair = Pair::new();
    let ns = pair.ours.clone();
    let peer = pair.peer.clone();
    // Linux creates a neighbour entry from a gratuitous ARP only with arp_accept.
    pair.sysctl(&peer, "net.ipv4.conf.all.arp_accept=1");
    pair.sysctl(&peer, "net.ipv4.conf.eth0.arp_accept=1");
    pair.ip(&peer, &["addr", "add", "10.82.0.1/24", "dev", "eth0"]);
    pair.ip(&ns, &["link", "set", "eth0", "up"]);
    // Both ends up: the veth has carrier, frames pass.
    assert!(
        wait_until(Duration::from_secs(5), || {
            pair.ip(&ns, &["link", "show", "dev", "eth0"])
                .contains("LOWER_UP")
        }),
        "veth never got carrier"
    );
    let neigh = || {
        pair.ip(
            &peer,
            &["-4", "neigh", "show", "dev", "eth0", "to", "10.82.0.10"],
        )
    };
    assert_eq!(
        neigh().trim(),
        "",
        "the peer knows us before any announcement"
    );

    let (idx, mac) = in_ns(&ns, || async {
        let a = Addresses::open().expect("netlink");
        let idx = eth0(&a).await;
        a.add(idx, ip4("10.82.0.10"), 24).await.expect("add");
        let mac = a
            .link(idx)
            .await
            .unwrap()
            .and_then(|l| l.mac)
            .expect("eth0 has a MAC");
        (idx, mac)
    });
    // Adding the address announced nothing by itself (arp_notify is off).
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(neigh().trim(), "", "the peer learnt us from the add alone");

    in_ns(&ns, move || async move {
        let t = Instant::now();
        arp::announce(idx, mac, ip4("10.82.0.10"), 3, Duration::from_millis(100))
            .await
            .expect("announce");
        assert!(
            t.elapsed() >= Duration::from_millis(200),
            "rounds are spaced"
        );
        // Refused, not panicking, on an index that does not exist.
        assert!(
            arp::announce(999, mac, ip4("10.82.0.10"), 1, Duration::ZERO)
                .await
                .is_err()
        );
    });
    let want = mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    let mut last = String::new();
    let learnt = wait_until(Duration::from_secs(3), || {
        last = neigh();
        last.contains(&format!("lladdr {want}"))
    });
    assert!(
        learnt,
        "the peer did not learn {want} from our GARP: {last:?}"
    );
    // No ping was sent: the entry came from the announcement alone.
}

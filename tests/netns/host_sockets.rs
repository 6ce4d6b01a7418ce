//! The host side of local address mode against a real kernel: socket use read through
//! sock_diag and `/proc`, and reachability probes from a given source address.
//!
//! Each test makes its own pair of namespaces, "ours" and "peer", joined by a veth, and
//! removes them on drop (also when the test fails). The code under test runs in test threads
//! that entered a namespace with `setns(2)`: a network namespace is a per-thread property, so
//! the sockets a thread opens, the sock_diag dump it asks for and `/proc/thread-self/net` all
//! belong to the namespace it entered, while the rest of the test process stays where it was.
//! That runs the library code itself, not a copy in a child process, and needs nothing but
//! `ip` outside.

#![cfg(feature = "local")]
#![allow(clippy::disallowed_methods)] // tests of real sockets wait on real clocks

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::netns::require_netns;
use ddhcp::daemon::host::probe::{
    self, Answer, Check, IcmpKind, IcmpSocket, ProbeError, ProbeOptions,
};
use ddhcp::daemon::host::sockets::{self, Backend, Method, Proto, SocketWatcher, Use};

const OUR_DEV: &str = "vours";
const PEER_DEV: &str = "vpeer";
const A1: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 1);
const A2: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 2);
const A3: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 3);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 100);

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// Two namespaces and a veth: ours (A1, A2, A3 on `vours`) and the peer (PEER on `vpeer`).
/// Dropping it deletes both namespaces, which takes the veth with them.
struct Pair {
    ours: String,
    peer: String,
}

impl Pair {
    fn new() -> Pair {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let base = format!("ddhsk{}x{n}", std::process::id());
        let pair = Pair {
            ours: format!("{base}o"),
            peer: format!("{base}p"),
        };
        // From here on a failure still deletes what exists.
        ip(&["netns", "add", &pair.ours]);
        ip(&["netns", "add", &pair.peer]);
        ip(&[
            "link", "add", OUR_DEV, "netns", &pair.ours, "type", "veth", "peer", "name", PEER_DEV,
            "netns", &pair.peer,
        ]);
        for a in [A1, A2, A3] {
            ip(&[
                "-n",
                &pair.ours,
                "addr",
                "add",
                &format!("{a}/24"),
                "dev",
                OUR_DEV,
            ]);
        }
        ip(&[
            "-n",
            &pair.peer,
            "addr",
            "add",
            &format!("{PEER}/24"),
            "dev",
            PEER_DEV,
        ]);
        for (ns, dev) in [(&pair.ours, OUR_DEV), (&pair.peer, PEER_DEV)] {
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        pair
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for ns in [&self.ours, &self.peer] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Moves the calling thread into namespace `ns` for good; call it first thing in a thread of
/// its own.
fn enter(ns: &str) {
    let file = File::open(format!("/run/netns/{ns}")).expect("open the namespace");
    // SAFETY: a valid namespace fd; setns(2) only changes this thread's network namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
}

/// Runs `f` in a thread inside namespace `ns` and returns its result (a panic in it fails
/// the test).
fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    thread::scope(|s| {
        s.spawn(|| {
            enter(ns);
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// A TCP service (accepts and holds every connection, so that our side closes first) and a
/// UDP echo on PEER port 7, in the peer namespace, until dropped.
struct PeerServices {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl PeerServices {
    fn start(ns: &str) -> PeerServices {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let ns = ns.to_string();
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            enter(&ns);
            let tcp = TcpListener::bind((PEER, 7)).unwrap();
            tcp.set_nonblocking(true).unwrap();
            let udp = UdpSocket::bind((PEER, 7)).unwrap();
            udp.set_read_timeout(Some(Duration::from_millis(20)))
                .unwrap();
            ready_tx.send(()).unwrap();
            let mut buf = [0u8; 1500];
            let mut held = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                while let Ok((conn, _)) = tcp.accept() {
                    held.push(conn);
                }
                if let Ok((n, from)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(&buf[..n], from);
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("peer services up");
        PeerServices {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for PeerServices {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn candidates() -> BTreeSet<Ipv4Addr> {
    [A1, A2, A3].into_iter().collect()
}

/// One poll with each source; asserts that they agree and returns the answer.
fn poll_both(diag: &mut SocketWatcher, proc: &mut SocketWatcher) -> BTreeMap<Ipv4Addr, Use> {
    let d = diag.poll(&candidates()).expect("sock_diag poll");
    let p = proc.poll(&candidates()).expect("/proc poll");
    assert_eq!((d.tcp, d.udp), (Method::SockDiag, Method::SockDiag));
    assert_eq!((p.tcp, p.udp), (Method::Proc, Method::Proc));
    assert_eq!(d.uses, p.uses, "sock_diag and /proc disagree");
    d.uses
}

#[test]
fn socket_use_of_candidate_addresses() {
    if !require_netns("socket_use_of_candidate_addresses") {
        return;
    }
    let pair = Pair::new();
    let _peer = PeerServices::start(&pair.peer);
    in_ns(&pair.ours, || {
        let mut diag = SocketWatcher::new(Backend::SockDiag);
        let mut proc = SocketWatcher::new(Backend::Proc);
        let mut auto = SocketWatcher::new(Backend::Auto);
        assert!(poll_both(&mut diag, &mut proc).is_empty());

        // Wildcard sockets name no address.
        let any_tcp = TcpListener::bind("0.0.0.0:8080").unwrap();
        let any_udp = UdpSocket::bind("0.0.0.0:5353").unwrap();
        assert!(
            poll_both(&mut diag, &mut proc).is_empty(),
            "a socket on 0.0.0.0 uses no address"
        );

        // A listener bound to A1 makes it active, and only it.
        let listener = TcpListener::bind((A1, 4443)).unwrap();
        let uses = poll_both(&mut diag, &mut proc);
        assert_eq!(uses.keys().copied().collect::<Vec<_>>(), [A1]);
        assert_eq!(
            (uses[&A1].tcp_listen, uses[&A1].tcp_other, uses[&A1].udp),
            (1, 0, 0)
        );
        assert_eq!(uses[&A1].reason(), "tcp listen :4443");

        // UDP bound to A2.
        let udp = UdpSocket::bind((A2, 53)).unwrap();
        // A connection from A3 to the peer: a connected socket whose local address is ours.
        let client = {
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            s.bind(&SocketAddrV4::new(A3, 0).into()).unwrap();
            s.connect(&SocketAddrV4::new(PEER, 7).into()).unwrap();
            TcpStream::from(s)
        };
        let client_port = client.local_addr().unwrap().port();
        let uses = poll_both(&mut diag, &mut proc);
        assert_eq!(uses.keys().copied().collect::<Vec<_>>(), [A1, A2, A3]);
        assert_eq!(uses[&A2].reason(), "udp :53");
        assert_eq!(uses[&A3].tcp_other, 1);
        assert_eq!(
            uses[&A3].reason(),
            format!("tcp established :{client_port} -> {PEER}:7")
        );
        let a = auto.poll(&candidates()).unwrap();
        assert_eq!((a.tcp, a.udp), (Method::SockDiag, Method::SockDiag));
        assert_eq!(a.uses, uses);
        assert_eq!(sockets::addresses_in_use(&candidates()).unwrap(), uses);

        // A dual-stack listener on [::] accepts the peer's IPv4 connection to A2: the accepted
        // socket is IPv6 with local ::ffff:10.213.0.2, and it uses A2.
        let dual = TcpListener::bind("[::]:9000").unwrap();
        let peer_client = in_ns(&pair.peer, || TcpStream::connect((A2, 9000)).unwrap());
        let (accepted, _) = dual.accept().unwrap();
        let uses = poll_both(&mut diag, &mut proc);
        assert_eq!(
            (uses[&A2].udp, uses[&A2].tcp_other),
            (1, 1),
            "{:?}",
            uses[&A2]
        );
        drop((accepted, peer_client, dual));

        // /proc/self/net is the main thread's namespace, not this thread's: the reason the
        // fallback reads /proc/thread-self/net.
        let seen = |path: &str| {
            let text = std::fs::read_to_string(path).unwrap();
            sockets::parse_proc_net(&text, Proto::Tcp).any(|s| *s.local.ip() == A1)
        };
        assert!(seen("/proc/thread-self/net/tcp"));
        assert!(!seen("/proc/self/net/tcp"));

        // A TCP socket bound but neither listening nor connecting: sock_diag reports it on
        // kernels that know BOUND_INACTIVE (6.8+), /proc never does.
        let bound =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        bound.bind(&SocketAddrV4::new(A1, 5000).into()).unwrap();
        let d = diag.poll(&candidates()).unwrap();
        let p = proc.poll(&candidates()).unwrap();
        assert_eq!(p.uses[&A1].tcp_other, 0);
        eprintln!(
            "bound-only TCP socket on {A1}: sock_diag counts {} (kernel {}), /proc 0",
            d.uses[&A1].tcp_other,
            kernel()
        );
        if kernel_at_least(6, 8) {
            assert_eq!(d.uses[&A1].tcp_other, 1);
            assert_eq!(d.uses[&A1].reason(), "tcp listen :4443 (+1 more socket)");
        }
        drop(bound);

        // Closing returns each address to unused. The client closes first and the peer holds
        // its end open, so ours lingers in FIN_WAIT2 without a process (inode 0): no use.
        drop(listener);
        let uses = poll_both(&mut diag, &mut proc);
        assert!(!uses.contains_key(&A1), "{uses:?}");
        drop(client);
        drop(udp);
        let uses = poll_both(&mut diag, &mut proc);
        assert!(uses.is_empty(), "{uses:?}");
        let text = std::fs::read_to_string("/proc/thread-self/net/tcp").unwrap();
        let left: Vec<_> = sockets::parse_proc_net(&text, Proto::Tcp)
            .filter(|s| *s.local.ip() == A3)
            .collect();
        assert!(
            matches!(&left[..], [s] if s.inode == 0 && s.local.port() == client_port),
            "the client's end is still in the kernel, uncounted: {left:?}"
        );
        drop((any_tcp, any_udp));
    });
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn kernel_at_least(major: u32, minor: u32) -> bool {
    let k = kernel();
    let mut parts = k
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    let have = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    have >= (major, minor)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn opts(timeout_ms: u64) -> ProbeOptions {
    ProbeOptions {
        timeout: Duration::from_millis(timeout_ms),
        ..ProbeOptions::default()
    }
}

#[test]
fn probes_from_a_source_address() {
    if !require_netns("probes_from_a_source_address") {
        return;
    }
    let pair = Pair::new();
    let _peer = PeerServices::start(&pair.peer);
    let udp7 = Check::Udp {
        port: 7,
        payload: b"ddhcp probe".to_vec(),
    };
    in_ns(&pair.ours, || {
        let rt = runtime();
        let run =
            |src, check: &Check, o: &ProbeOptions| rt.block_on(probe::probe(src, PEER, check, o));

        // ICMP: a new namespace's ping_group_range is "1 0", so Auto falls back to raw.
        let r = run(A1, &Check::Icmp, &opts(2000)).unwrap();
        assert_eq!(r.answer, Answer::EchoReply(IcmpKind::Raw), "{r}");
        let dgram = ProbeOptions {
            icmp: IcmpSocket::Dgram,
            ..opts(2000)
        };
        let e = run(A1, &Check::Icmp, &dgram).unwrap_err();
        assert!(matches!(e, ProbeError::Socket(_)), "{e}");
        // Admit every group (in this namespace only): now the ping socket works, and Auto
        // takes it.
        std::fs::write("/proc/sys/net/ipv4/ping_group_range", "0 2147483647").unwrap();
        let r = run(A1, &Check::Icmp, &dgram).unwrap();
        assert_eq!(r.answer, Answer::EchoReply(IcmpKind::Dgram), "{r}");
        let r = run(A2, &Check::Icmp, &opts(2000)).unwrap();
        assert_eq!(r.answer, Answer::EchoReply(IcmpKind::Dgram), "{r}");
        let raw = ProbeOptions {
            icmp: IcmpSocket::Raw,
            device: Some(OUR_DEV.to_string()),
            ..opts(2000)
        };
        let r = run(A3, &Check::Icmp, &raw).unwrap();
        assert_eq!(r.answer, Answer::EchoReply(IcmpKind::Raw), "{r}");
        eprintln!("icmp from {A3}: {r}");

        // TCP and UDP: an answer and a refusal both prove the path.
        assert_eq!(
            run(A1, &Check::Tcp { port: 7 }, &opts(2000))
                .unwrap()
                .answer,
            Answer::TcpAccepted
        );
        assert_eq!(
            run(A1, &Check::Tcp { port: 8 }, &opts(2000))
                .unwrap()
                .answer,
            Answer::TcpRefused
        );
        let r = run(A1, &udp7, &opts(2000)).unwrap();
        assert_eq!(r.answer, Answer::UdpReply { bytes: 11 }, "{r}");
        let udp8 = Check::Udp {
            port: 8,
            payload: b"x".to_vec(),
        };
        assert_eq!(
            run(A1, &udp8, &opts(2000)).unwrap().answer,
            Answer::UdpPortUnreachable
        );

        // The source must be ours.
        let e = run(Ipv4Addr::new(10, 213, 0, 50), &Check::Icmp, &opts(500)).unwrap_err();
        assert!(matches!(e, ProbeError::Socket(_)), "{e}");

        // The peer stops answering A1 only (a blackhole route back to it): every probe from
        // A1 times out, the same probes from A2 still succeed.
        ip(&[
            "-n",
            &pair.peer,
            "route",
            "add",
            "blackhole",
            &format!("{A1}/32"),
        ]);
        for check in [Check::Icmp, Check::Tcp { port: 7 }, udp7.clone()] {
            let start = Instant::now();
            let e = run(A1, &check, &opts(1000)).unwrap_err();
            let took = start.elapsed();
            assert!(
                matches!(e, ProbeError::Timeout(_)),
                "{check:?} from {A1}: {e}"
            );
            assert!(
                took >= Duration::from_millis(1000) && took < Duration::from_secs(3),
                "{took:?}"
            );
            let r = run(A2, &check, &opts(1000)).unwrap();
            eprintln!("{check:?}: from {A1} {e} after {took:?}; from {A2} {r}");
        }
        ip(&[
            "-n",
            &pair.peer,
            "route",
            "del",
            "blackhole",
            &format!("{A1}/32"),
        ]);
        run(A1, &Check::Icmp, &opts(2000)).unwrap();

        // The peer loses its address: nothing answers from anywhere.
        ip(&[
            "-n",
            &pair.peer,
            "addr",
            "del",
            &format!("{PEER}/24"),
            "dev",
            PEER_DEV,
        ]);
        for check in [Check::Icmp, Check::Tcp { port: 7 }, udp7.clone()] {
            let e = run(A2, &check, &opts(1000)).unwrap_err();
            assert!(
                matches!(e, ProbeError::Timeout(_) | ProbeError::Unreachable(_)),
                "{check:?}: {e}"
            );
        }
    });
}

/// Poll cost with 10 000 open sockets, sock_diag against /proc. A measurement, not a check:
/// `sudo cargo test --release --test netns -- host_sockets::poll_cost --ignored --nocapture`.
#[test]
#[ignore]
fn poll_cost_with_10000_sockets() {
    if !require_netns("poll_cost_with_10000_sockets") {
        return;
    }
    raise_nofile(25_000);
    let pair = Pair::new();
    in_ns(&pair.ours, || {
        let mut keep: Vec<Box<dyn std::any::Any>> = Vec::new();
        let candidates: BTreeSet<Ipv4Addr> =
            (1..=64).map(|i| Ipv4Addr::new(10, 213, 0, i)).collect();
        let mut report = String::new();
        for target in [1_000, 10_000] {
            open_sockets(target - keep.len(), &mut keep);
            let total = proc_lines("tcp") + proc_lines("udp");
            report += &format!("{total} IPv4 sockets in the namespace:\n");
            for (name, backend) in [("sock_diag", Backend::SockDiag), ("/proc", Backend::Proc)] {
                let mut w = SocketWatcher::new(backend);
                let first = w.poll(&candidates).unwrap();
                let mut times: Vec<Duration> = (0..50)
                    .map(|_| {
                        let t = Instant::now();
                        let p = w.poll(&candidates).unwrap();
                        let d = t.elapsed();
                        assert_eq!(p.uses, first.uses);
                        d
                    })
                    .collect();
                times.sort();
                let used: u32 = first.uses.values().map(Use::sockets).sum();
                report += &format!(
                    "  {name:>9}: median {:.2} ms, min {:.2} ms, max {:.2} ms over 50 polls; {} sockets read, {used} on candidates\n",
                    ms(times[25]),
                    ms(times[0]),
                    ms(times[49]),
                    first.sockets_read,
                );
            }
        }
        let _ = writeln!(
            std::io::stderr(),
            "poll cost (kernel {}):\n{report}",
            kernel()
        );
        drop(keep);
    });
}

/// Opens `n` more sockets in the calling thread's namespace: 40 % UDP, 20 % TCP listeners,
/// 40 % the two ends of loopback connections; a quarter of the UDP sockets and listeners on
/// the candidates A1..A3, the rest on 127.0.0.1.
fn open_sockets(n: usize, keep: &mut Vec<Box<dyn std::any::Any>>) {
    let lo = Ipv4Addr::LOCALHOST;
    let addr = |i: usize| {
        if i.is_multiple_of(4) {
            [A1, A2, A3][i % 3]
        } else {
            lo
        }
    };
    for i in 0..n * 2 / 5 {
        keep.push(Box::new(UdpSocket::bind((addr(i), 0)).unwrap()));
    }
    for i in 0..n / 5 {
        keep.push(Box::new(TcpListener::bind((addr(i), 0)).unwrap()));
    }
    let server = TcpListener::bind((lo, 0)).unwrap();
    let port = server.local_addr().unwrap().port();
    for _ in 0..n / 5 {
        let c = TcpStream::connect((lo, port)).unwrap();
        let (s, _) = server.accept().unwrap();
        keep.push(Box::new(c));
        keep.push(Box::new(s));
    }
}

fn proc_lines(name: &str) -> usize {
    let mut text = String::new();
    File::open(format!("/proc/thread-self/net/{name}"))
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    text.lines().count().saturating_sub(1)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn raise_nofile(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a stack struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_cur.max(want.min(lim.rlim_max));
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
}

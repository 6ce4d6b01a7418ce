//! Which of our addresses local sockets use: the "active" test of local address mode.
//!
//! The core asks, for a set of candidate addresses (the ones it configured on the host), which
//! of them a service on this host is using, so that it never gives back an address under a live
//! socket. We answer from the kernel's socket tables, read in full on every poll:
//!
//! * **`NETLINK_SOCK_DIAG`** first. Tailscale measured it 23–46 times cheaper than `/proc` per
//!   poll (tailscale/tailscale#21256); we measured 5.8 times with 10 000 sockets, 3.4 ms
//!   against 19 ms (`docs/benchmarks.md`). The crate we use (netlink-packet-sock-diag 0.5.0)
//!   cannot send the kernel a bytecode filter, so the kernel hands us every socket of the
//!   namespace and we filter here.
//! * **`/proc/thread-self/net/{tcp,tcp6,udp,udp6}`** when sock_diag is not there (a kernel
//!   without `inet_diag`/`udp_diag`, or a seccomp profile that refuses the netlink family), per
//!   protocol: a missing `udp_diag` module alone sends only UDP to `/proc`. We read
//!   `thread-self`, not `self`: `/proc/self/net` shows the namespace of the process's main
//!   thread, which is not ours when a thread entered another namespace (the tests do).
//!
//! What counts as use, and why:
//!
//! * A socket whose *local* address is the candidate: a TCP listener or UDP socket bound to it,
//!   and a connected socket (TCP in any state but `TIME_WAIT`, connected UDP) whose source is
//!   the candidate, including one accepted by a wildcard listener, which the kernel gives the
//!   address the client connected to.
//! * IPv6 sockets count through IPv4-mapped addresses: a dual-stack server on `[::]` that
//!   accepted an IPv4 client holds `::ffff:a.b.c.d`, and that connection dies with the address.
//! * **Not** a socket bound to `0.0.0.0` (or `[::]`): it names no address, keeps working on the
//!   others when one goes, and would otherwise pin every address we ever configure. A service
//!   that must keep one address has to bind it, or be marked active by a third party.
//! * **Not** a socket no process holds (inode 0): `TIME_WAIT`, and the `FIN_WAIT`/`LAST_ACK`
//!   leftovers of a closed connection, outlive their process by up to a minute and serve
//!   nothing; counting them would only delay giving an address back. The price: a connection
//!   still waiting in a wildcard listener's accept queue counts only once it is accepted.
//! * TCP sockets that are bound but neither listening nor connecting (state `BOUND_INACTIVE`,
//!   kernel 6.8 and later) count through sock_diag: a service between `bind` and `listen` is
//!   about to use the address. `/proc/net/tcp` never lists them, so the two sources differ
//!   here and only here.
//!
//! Blind spots the caller has to know: sockets of other network namespaces (containers) are
//! invisible, as are services steered by `sk_lookup` or listening on the wildcard; and our own
//! reachability probes (`probe.rs`) show up as use while they run.
//!
//! Everything here is blocking and takes milliseconds with 10 000 sockets: the daemon calls
//! it from `spawn_blocking`, so a slow `/proc` read never stalls the packet loop, and one
//! [`SocketWatcher`] keeps its netlink socket between polls.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
};
use netlink_packet_core::{NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP, NLMSG_OVERRUN, Parseable};
use netlink_packet_sock_diag::inet::{
    ExtensionFlags, InetRequest, InetResponseHeader, SocketId, StateFlags,
};
use netlink_packet_sock_diag::{
    AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP, SOCK_DIAG_BY_FAMILY, SockDiagMessage,
};
use netlink_sys::{
    Socket as NetlinkSocket, SocketAddr as NetlinkAddr, protocols::NETLINK_SOCK_DIAG,
};
use tracing::{debug, warn};

/// The kernel's TCP states (include/net/tcp_states.h) we tell apart.
const TCP_ESTABLISHED: u8 = 1;
const TCP_SYN_SENT: u8 = 2;
const TCP_SYN_RECV: u8 = 3;
const TCP_TIME_WAIT: u8 = 6;
const TCP_CLOSE: u8 = 7;
const TCP_LISTEN: u8 = 10;
const TCP_NEW_SYN_RECV: u8 = 12;
/// A bound TCP socket that neither listens nor connects; sock_diag reports it only when asked
/// for this state (kernel 6.8+). Older kernels ignore the bit.
const TCP_BOUND_INACTIVE: u8 = 13;

/// How often one poll restarts a dump the kernel marked inconsistent (`NLM_F_DUMP_INTR`) before
/// it gives up. A dump is interrupted when the tables change under it; three in a row means a
/// host so busy that the next poll is as good a time as any.
const DUMP_TRIES: u32 = 3;

/// A dump reply larger than this would be cut (the kernel sizes dump messages to at most 32 KiB
/// and to the reader's earlier buffer); with `MSG_TRUNC` we would notice, but we never want to.
const RECV_BUFFER: usize = 64 * 1024;

/// A sock_diag dump is answered by the kernel at once; a recv blocking this long means
/// something is wrong, and the poll fails instead of holding a blocking thread forever.
const RECV_TIMEOUT: Duration = Duration::from_secs(2);

/// The transport of a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

/// One socket that uses a candidate address: the one a human `reason` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketInfo {
    pub proto: Proto,
    /// Kernel state number (TCP states; UDP is `ESTABLISHED` when connected, else `CLOSE`).
    pub state: u8,
    pub local: SocketAddrV4,
    /// `None` while unconnected.
    pub remote: Option<SocketAddrV4>,
    /// Socket inode, to find the owning process (`ss -e`, `/proc/PID/fd`); 0 when no process
    /// holds the socket (`TIME_WAIT`, orphans of closed connections, connections not accepted
    /// yet), and then it does not count.
    pub inode: u64,
}

impl SocketInfo {
    fn is_listen(&self) -> bool {
        self.proto == Proto::Tcp && self.state == TCP_LISTEN
    }

    /// Order among the sockets of one address, for the example: listeners first (that is the
    /// service), then other TCP, then UDP; ties by port and inode, so that sock_diag and /proc
    /// pick the same one.
    fn rank(&self) -> (u8, u16, u64) {
        let class = match (self.proto, self.is_listen()) {
            (Proto::Tcp, true) => 0,
            (Proto::Tcp, false) => 1,
            (Proto::Udp, _) => 2,
        };
        (class, self.local.port(), self.inode)
    }
}

impl fmt::Display for SocketInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let port = self.local.port();
        match self.proto {
            Proto::Tcp => {
                let state = match self.state {
                    TCP_LISTEN => "listen",
                    TCP_ESTABLISHED => "established",
                    TCP_SYN_SENT => "connecting",
                    TCP_SYN_RECV | TCP_NEW_SYN_RECV => "accepting",
                    TCP_BOUND_INACTIVE | TCP_CLOSE => "bound",
                    _ => "closing",
                };
                write!(f, "tcp {state} :{port}")?;
            }
            Proto::Udp => write!(f, "udp :{port}")?,
        }
        if let Some(remote) = self.remote {
            write!(f, " -> {remote}")?;
        }
        Ok(())
    }
}

/// How one candidate address is used.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Use {
    /// TCP listeners bound to the address.
    pub tcp_listen: u32,
    /// Other TCP sockets with the address as local address (connected, connecting, closing,
    /// bound only).
    pub tcp_other: u32,
    /// UDP sockets bound to the address or connected from it.
    pub udp: u32,
    /// The socket [`Use::reason`] names (listeners first).
    pub example: Option<SocketInfo>,
}

impl Use {
    pub fn sockets(&self) -> u32 {
        self.tcp_listen
            .saturating_add(self.tcp_other)
            .saturating_add(self.udp)
    }

    /// A line for `ddhcpctl local`: "tcp listen :443", "udp :53 (+2 more sockets)".
    pub fn reason(&self) -> String {
        let Some(example) = &self.example else {
            return "no socket".to_string();
        };
        match self.sockets().saturating_sub(1) {
            0 => example.to_string(),
            1 => format!("{example} (+1 more socket)"),
            n => format!("{example} (+{n} more sockets)"),
        }
    }

    fn add(&mut self, socket: &SocketInfo) {
        let counter = match (socket.proto, socket.is_listen()) {
            (Proto::Tcp, true) => &mut self.tcp_listen,
            (Proto::Tcp, false) => &mut self.tcp_other,
            (Proto::Udp, _) => &mut self.udp,
        };
        *counter = counter.saturating_add(1);
        if self
            .example
            .as_ref()
            .is_none_or(|e| socket.rank() < e.rank())
        {
            self.example = Some(socket.clone());
        }
    }
}

/// Where the socket table of one protocol was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    SockDiag,
    Proc,
}

/// What a [`SocketWatcher`] may use. `Auto` is for the daemon; the other two let tests and the
/// benchmark compare the sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// sock_diag, with `/proc` per protocol when the kernel lacks the diag module or a dump
    /// fails.
    Auto,
    SockDiag,
    Proc,
}

/// The answer of one poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Poll {
    /// The candidates in use; an absent candidate has no socket.
    pub uses: BTreeMap<Ipv4Addr, Use>,
    pub tcp: Method,
    pub udp: Method,
    /// Sockets of the namespace read (all of them, not only ours): what the poll cost.
    pub sockets_read: usize,
}

/// Polls the socket tables; keeps the netlink socket open between polls.
pub struct SocketWatcher {
    backend: Backend,
    diag: Option<Diag>,
    /// The kernel answered ENOENT (no diag handler) for this protocol: `/proc` from now on.
    tcp_diag_missing: bool,
    udp_diag_missing: bool,
}

/// One poll with a fresh watcher. A daemon polling often keeps a [`SocketWatcher`] instead.
pub fn addresses_in_use(candidates: &BTreeSet<Ipv4Addr>) -> io::Result<BTreeMap<Ipv4Addr, Use>> {
    SocketWatcher::new(Backend::Auto)
        .poll(candidates)
        .map(|p| p.uses)
}

impl SocketWatcher {
    /// Opens nothing yet: the netlink socket is opened on the first poll, in the network
    /// namespace of the thread that polls.
    pub fn new(backend: Backend) -> Self {
        SocketWatcher {
            backend,
            diag: None,
            tcp_diag_missing: false,
            udp_diag_missing: false,
        }
    }

    /// Reads every IPv4 and IPv6 TCP and UDP socket of this network namespace and reports the
    /// candidates that one of them uses (see the module documentation for what counts).
    ///
    /// An error means the answer is unknown, never "unused": with `Backend::Auto` it comes
    /// only when `/proc` failed too.
    pub fn poll(&mut self, candidates: &BTreeSet<Ipv4Addr>) -> io::Result<Poll> {
        let mut uses = BTreeMap::new();
        let mut sockets_read = 0;
        let mut sink = |socket: SocketInfo| {
            sockets_read += 1;
            if counts(&socket) && candidates.contains(socket.local.ip()) {
                uses.entry(*socket.local.ip())
                    .or_insert_with(Use::default)
                    .add(&socket);
            }
        };
        let tcp = self.read(Proto::Tcp, &mut sink)?;
        let udp = self.read(Proto::Udp, &mut sink)?;
        Ok(Poll {
            uses,
            tcp,
            udp,
            sockets_read,
        })
    }

    fn read(&mut self, proto: Proto, sink: &mut dyn FnMut(SocketInfo)) -> io::Result<Method> {
        let missing = match proto {
            Proto::Tcp => self.tcp_diag_missing,
            Proto::Udp => self.udp_diag_missing,
        };
        if self.backend == Backend::Proc || (self.backend == Backend::Auto && missing) {
            read_proc(proto, sink)?;
            return Ok(Method::Proc);
        }
        // Sockets go to a buffer first: a dump that fails half-way must not count in this poll,
        // or the /proc answer after it would count them twice.
        let mut found = Vec::new();
        match self.dump(proto, &mut found) {
            Ok(()) => {
                found.into_iter().for_each(sink);
                Ok(Method::SockDiag)
            }
            Err(e) if self.backend == Backend::SockDiag => Err(e),
            Err(e) => {
                if is_missing_diag(&e) {
                    warn!(?proto, error = %e, "sock_diag unavailable, reading /proc from now on");
                    match proto {
                        Proto::Tcp => self.tcp_diag_missing = true,
                        Proto::Udp => self.udp_diag_missing = true,
                    }
                } else {
                    debug!(?proto, error = %e, "sock_diag dump failed, reading /proc this time");
                }
                read_proc(proto, sink)?;
                Ok(Method::Proc)
            }
        }
    }

    fn dump(&mut self, proto: Proto, out: &mut Vec<SocketInfo>) -> io::Result<()> {
        let diag = match &mut self.diag {
            Some(d) => d,
            None => self.diag.insert(Diag::open()?),
        };
        let result = [AF_INET, AF_INET6]
            .into_iter()
            .try_for_each(|family| diag.dump(family, proto, out));
        if result.is_err() {
            // Whatever the socket still holds belongs to a dump we gave up on; a fresh socket
            // next time is simpler than draining it.
            self.diag = None;
        }
        result
    }
}

/// Whether a socket holds its local address (module documentation).
fn counts(socket: &SocketInfo) -> bool {
    socket.inode != 0 && !socket.local.ip().is_unspecified()
}

/// Errors that say "this kernel has no sock_diag for that", as opposed to a failed dump.
fn is_missing_diag(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ENOENT
                | libc::EPROTONOSUPPORT
                | libc::EAFNOSUPPORT
                | libc::EOPNOTSUPP
                | libc::EACCES
                | libc::EPERM
        )
    )
}

/// The IPv4 address an IPv6 socket uses, if it is a mapped one (`::ffff:a.b.c.d`); a real IPv6
/// address has nothing to do with our IPv4 candidates.
fn unmap(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    ip.to_ipv4_mapped()
}

/// A NETLINK_SOCK_DIAG socket.
struct Diag {
    socket: NetlinkSocket,
    seq: u32,
    buf: Vec<u8>,
}

/// How a batch of dump messages ended.
#[derive(Debug, PartialEq, Eq)]
enum Batch {
    /// More messages follow in the next recv.
    More,
    /// `NLMSG_DONE`: the dump is complete (the caller's `interrupted` says if consistent).
    Done,
}

impl Diag {
    fn open() -> io::Result<Diag> {
        let mut socket = NetlinkSocket::new(NETLINK_SOCK_DIAG)?;
        socket.bind_auto()?;
        socket.connect(&NetlinkAddr::new(0, 0))?;
        set_recv_timeout(&socket, RECV_TIMEOUT)?;
        Ok(Diag {
            socket,
            seq: 0,
            buf: vec![0; RECV_BUFFER],
        })
    }

    /// One family×protocol dump, restarted while the kernel reports it inconsistent.
    fn dump(&mut self, family: u8, proto: Proto, out: &mut Vec<SocketInfo>) -> io::Result<()> {
        for _ in 0..DUMP_TRIES {
            let before = out.len();
            if self.dump_once(family, proto, out)? {
                return Ok(());
            }
            // Never publish a partial or torn table.
            out.truncate(before);
            debug!(family, ?proto, "sock_diag dump interrupted, restarting it");
        }
        Err(io::Error::other(format!(
            "sock_diag dump interrupted (NLM_F_DUMP_INTR) {DUMP_TRIES} times in a row"
        )))
    }

    /// Returns false when the dump was complete but marked interrupted.
    fn dump_once(
        &mut self,
        family: u8,
        proto: Proto,
        out: &mut Vec<SocketInfo>,
    ) -> io::Result<bool> {
        self.seq = self.seq.wrapping_add(1);
        let request = request(self.seq, family, proto);
        self.socket.send(&request, 0)?;
        let mut interrupted = false;
        loop {
            let n = loop {
                match self.socket.recv(&mut &mut self.buf[..], libc::MSG_TRUNC) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    other => break other?,
                }
            };
            if n > self.buf.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("sock_diag message of {n} bytes cut to {}", self.buf.len()),
                ));
            }
            let data = self.buf.get(..n).unwrap_or_default();
            match parse_batch(data, self.seq, proto, &mut interrupted, out)? {
                Batch::More => {}
                Batch::Done => return Ok(!interrupted),
            }
        }
    }
}

fn set_recv_timeout(socket: &NetlinkSocket, timeout: Duration) -> io::Result<()> {
    // Whole seconds are fine grain enough for a safety net.
    let tv = libc::timeval {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_usec: 0,
    };
    // SAFETY: `tv` is a valid timeval that outlives the call, and its size is passed with it.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            libc::socklen_t::try_from(std::mem::size_of::<libc::timeval>()).unwrap_or(0),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The dump request for every socket of one family and protocol. TCP leaves out `TIME_WAIT`
/// (it never counts, and on a busy host it is most of the table) and asks for
/// `BOUND_INACTIVE`, which the crate has no name for.
fn request(seq: u32, family: u8, proto: Proto) -> Vec<u8> {
    let (protocol, states) = match proto {
        Proto::Tcp => (
            IPPROTO_TCP,
            StateFlags::from_bits_retain(
                StateFlags::all().bits() & !(1 << TCP_TIME_WAIT) | (1 << TCP_BOUND_INACTIVE),
            ),
        ),
        Proto::Udp => (IPPROTO_UDP, StateFlags::all()),
    };
    let socket_id = if family == AF_INET6 {
        SocketId::new_v6()
    } else {
        SocketId::new_v4()
    };
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = seq;
    let mut message = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol,
            extensions: ExtensionFlags::empty(),
            states,
            socket_id,
        })
        .into(),
    );
    message.finalize();
    // `serialize` panics on a short buffer; this one has exactly the length it asks for.
    let mut buf = vec![0; message.buffer_len()];
    message.serialize(&mut buf);
    buf
}

/// Netlink header: length u32, type u16, flags u16, seq u32, port u32 (host order).
const NLMSG_HDRLEN: usize = 16;

/// Parses one recv's worth of dump messages into `out`. Messages of another sequence number
/// (left over from a dump given up on) are skipped; a malformed message fails the dump rather
/// than being skipped, since a table with holes could call a used address unused.
fn parse_batch(
    data: &[u8],
    seq: u32,
    proto: Proto,
    interrupted: &mut bool,
    out: &mut Vec<SocketInfo>,
) -> io::Result<Batch> {
    let bad =
        |what: String| io::Error::new(io::ErrorKind::InvalidData, format!("sock_diag: {what}"));
    let mut rest = data;
    while !rest.is_empty() {
        let header = rest
            .get(..NLMSG_HDRLEN)
            .ok_or_else(|| bad(format!("{} bytes left, short of a header", rest.len())))?;
        let u32_at =
            |i: usize| u32::from_ne_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
        let len = usize::try_from(u32_at(0)).unwrap_or(usize::MAX);
        let kind = u16::from_ne_bytes([header[4], header[5]]);
        let flags = u16::from_ne_bytes([header[6], header[7]]);
        let msg_seq = u32_at(8);
        if len < NLMSG_HDRLEN || len > rest.len() {
            return Err(bad(format!(
                "message length {len} with {} bytes left",
                rest.len()
            )));
        }
        let payload = &rest[NLMSG_HDRLEN..len];
        // Messages are padded to 4 bytes; the last one may end without padding.
        let next = len.saturating_add(3) & !3;
        rest = rest.get(next..).unwrap_or_default();
        if msg_seq != seq {
            continue;
        }
        if flags & NLM_F_DUMP_INTR != 0 {
            *interrupted = true;
        }
        match kind {
            NLMSG_NOOP => {}
            NLMSG_DONE => {
                // Since Linux 4.x DONE carries the dump's error code.
                let code = read_i32(payload).unwrap_or(0);
                return if code < 0 {
                    Err(io::Error::from_raw_os_error(code.saturating_neg()))
                } else {
                    Ok(Batch::Done)
                };
            }
            NLMSG_ERROR => {
                let code = read_i32(payload).ok_or_else(|| bad("short NLMSG_ERROR".into()))?;
                // 0 would be an ack; we asked for none, and a dump is not over with it.
                if code < 0 {
                    return Err(io::Error::from_raw_os_error(code.saturating_neg()));
                }
            }
            NLMSG_OVERRUN => return Err(bad("overrun".into())),
            SOCK_DIAG_BY_FAMILY => {
                // The header only: the attributes after it are not ours to need, and a newer
                // kernel's attribute the crate does not know must not fail the poll.
                let response = InetResponseHeader::parse(payload)
                    .map_err(|e| bad(format!("response: {e}")))?;
                if let Some(socket) = socket_info(proto, &response) {
                    out.push(socket);
                }
            }
            other => return Err(bad(format!("unexpected message type {other}"))),
        }
    }
    Ok(Batch::More)
}

fn read_i32(payload: &[u8]) -> Option<i32> {
    let b = payload.get(..4)?;
    Some(i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

/// The IPv4 view of a dumped socket; `None` for a pure IPv6 one.
fn socket_info(proto: Proto, r: &InetResponseHeader) -> Option<SocketInfo> {
    let v4 = |ip: std::net::IpAddr| match ip {
        std::net::IpAddr::V4(a) => Some(a),
        std::net::IpAddr::V6(a) => unmap(a),
    };
    let id = &r.socket_id;
    let local = v4(id.source_address)?;
    let remote = v4(id.destination_address).unwrap_or(Ipv4Addr::UNSPECIFIED);
    Some(SocketInfo {
        proto,
        state: r.state,
        local: SocketAddrV4::new(local, id.source_port),
        remote: connected(remote, id.destination_port),
        inode: u64::from(r.inode),
    })
}

fn connected(ip: Ipv4Addr, port: u16) -> Option<SocketAddrV4> {
    (!ip.is_unspecified() || port != 0).then_some(SocketAddrV4::new(ip, port))
}

/// Reads the `/proc` tables of one protocol (both families) of the calling thread's network
/// namespace.
fn read_proc(proto: Proto, sink: &mut dyn FnMut(SocketInfo)) -> io::Result<()> {
    let names: [&str; 2] = match proto {
        Proto::Tcp => ["tcp", "tcp6"],
        Proto::Udp => ["udp", "udp6"],
    };
    for name in names {
        let text = match read_proc_file(name) {
            Ok(t) => t,
            // No tcp6 on a kernel without IPv6: no IPv6 sockets either.
            Err(e) if e.kind() == io::ErrorKind::NotFound && name.ends_with('6') => continue,
            Err(e) => return Err(e),
        };
        parse_proc_net(&text, proto).for_each(&mut *sink);
    }
    Ok(())
}

fn read_proc_file(name: &str) -> io::Result<String> {
    let thread = Path::new("/proc/thread-self/net").join(name);
    // /proc/thread-self appeared in Linux 3.17; before it, /proc/net is the best there is.
    let bytes = match std::fs::read(&thread) {
        Err(e)
            if e.kind() == io::ErrorKind::NotFound && !Path::new("/proc/thread-self").exists() =>
        {
            std::fs::read(Path::new("/proc/net").join(name))?
        }
        other => other?,
    };
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Parses `/proc/net/{tcp,tcp6,udp,udp6}` text. Lines that do not parse (the header, and
/// anything a future kernel or a corrupted read hands us) are skipped, never a panic:
///
/// ```text
///   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
///    1: 0500007F:01BB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 762231 1 ...
/// ```
///
/// Addresses are the kernel's 32-bit words printed in host byte order, so the bytes of each
/// word in host order are the address in network order, on any endianness.
pub fn parse_proc_net(text: &str, proto: Proto) -> impl Iterator<Item = SocketInfo> + '_ {
    text.lines()
        .filter_map(move |line| parse_proc_line(line, proto))
}

fn parse_proc_line(line: &str, proto: Proto) -> Option<SocketInfo> {
    let mut fields = line.split_whitespace();
    let slot = fields.next()?;
    if !slot.ends_with(':') {
        return None;
    }
    let local = parse_proc_addr(fields.next()?)?;
    let remote = parse_proc_addr(fields.next()?)?;
    let state = parse_hex_u8(fields.next()?)?;
    // tx:rx queue, tr:when, retrnsmt, uid, timeout, then the inode.
    let inode = fields.nth(5)?.parse::<u64>().ok()?;
    let (local_ip, local_port) = local;
    let (remote_ip, remote_port) = remote;
    Some(SocketInfo {
        proto,
        state,
        local: SocketAddrV4::new(local_ip?, local_port),
        remote: remote_ip.and_then(|ip| connected(ip, remote_port)),
        inode,
    })
}

/// `0500007F:01BB` (IPv4) or 32 hex digits and a port (IPv6). The address is `None` for an
/// IPv6 address that is not IPv4-mapped.
fn parse_proc_addr(field: &str) -> Option<(Option<Ipv4Addr>, u16)> {
    let (addr, port) = field.split_once(':')?;
    if port.len() != 4 {
        return None;
    }
    if !is_hex(port) {
        return None;
    }
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match addr.len() {
        8 => Some(Ipv4Addr::from(hex_word(addr)?.to_ne_bytes())),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_exact_mut(4).enumerate() {
                let word = hex_word(addr.get(i * 8..i * 8 + 8)?)?;
                chunk.copy_from_slice(&word.to_ne_bytes());
            }
            unmap(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some((ip, port))
}

/// Eight hex digits, strictly: `from_str_radix` alone would take a sign.
fn hex_word(s: &str) -> Option<u32> {
    (s.len() == 8 && is_hex(s)).then(|| u32::from_str_radix(s, 16).ok())?
}

fn parse_hex_u8(s: &str) -> Option<u8> {
    (s.len() == 2 && is_hex(s)).then(|| u8::from_str_radix(s, 16).ok())?
}

fn is_hex(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::Emitable;
    use netlink_packet_sock_diag::inet::InetResponseHeader;
    use std::net::IpAddr;

    /// A real /proc/net/tcp of a namespace with: a wildcard listener on :8080, a listener on
    /// 127.0.0.5:443, a client 127.0.0.1 connected to it (and its accepted end), and a second
    /// client that closed first (TIME_WAIT, inode 0).
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode                                                     
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 762238 1 0000000000facc29 100 0 0 10 0                    
   1: 0500007F:01BB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 762231 1 000000004e7319ed 100 0 0 10 0                    
   2: 0100007F:B9B2 0500007F:01BB 01 00000000:00000000 00:00000000 00000000     0        0 762232 2 00000000295e7158 20 0 0 10 -1                    
   3: 0100007F:B9B6 0500007F:01BB 06 00000000:00000000 03:0000175C 00000000     0        0 0 3 0000000023fede3d                                      
   4: 0500007F:01BB 0100007F:B9B2 01 00000000:00000000 00:00000000 00000000     0        0 762233 1 00000000a823b39b 20 0 0 10 -1                    
";

    /// The same namespace's /proc/net/udp: bound to 127.0.0.7:53, and connected to it.
    const UDP: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops            
 5309: 0700007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 762236 2 00000000c72401cf 0        
 8682: 0100007F:CD62 0700007F:0035 01 00000000:00000000 00:00000000 00000000     0        0 762237 2 00000000def70678 0        
";

    /// A real /proc/net/tcp6: a dual-stack listener on [::]:8443, an IPv4 client connected to
    /// 127.0.0.9 through it (the accepted end is IPv4-mapped), and a pure IPv6 listener on ::1.
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:20FB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 770542 1 00000000ad9b2596 100 0 0 10 0
   1: 00000000000000000000000001000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 770543 1 000000002b9094c3 100 0 0 10 0
   2: 0000000000000000FFFF00000900007F:20FB 0000000000000000FFFF00000100007F:8DE8 01 00000000:00000000 00:00000000 00000000     0        0 770545 1 00000000cb2fca6a 20 0 0 10 -1
";

    /// A real /proc/net/udp6: an IPv6 socket bound to ::ffff:127.0.0.7 port 5353.
    const UDP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
 7847: 0000000000000000FFFF00000700007F:14E9 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 770546 2 00000000f57dba11 0
";

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn uses(text: &str, proto: Proto, candidates: &[&str]) -> BTreeMap<Ipv4Addr, Use> {
        let set: BTreeSet<Ipv4Addr> = candidates.iter().map(|c| ip(c)).collect();
        let mut out = BTreeMap::new();
        for s in parse_proc_net(text, proto) {
            if counts(&s) && set.contains(s.local.ip()) {
                out.entry(*s.local.ip())
                    .or_insert_with(Use::default)
                    .add(&s);
            }
        }
        out
    }

    #[test]
    fn golden_tcp_lines() {
        let all: Vec<SocketInfo> = parse_proc_net(TCP, Proto::Tcp).collect();
        assert_eq!(
            all.len(),
            5,
            "the header is skipped, every socket line parses"
        );
        assert_eq!(
            all[1],
            SocketInfo {
                proto: Proto::Tcp,
                state: TCP_LISTEN,
                local: "127.0.0.5:443".parse().unwrap(),
                remote: None,
                inode: 762231,
            }
        );
        assert_eq!(all[2].remote, Some("127.0.0.5:443".parse().unwrap()));
        assert_eq!(all[2].local, "127.0.0.1:47538".parse().unwrap());
        assert_eq!(all[3].state, TCP_TIME_WAIT);
        assert_eq!(all[3].inode, 0);
        assert_eq!(all[0].local, "0.0.0.0:8080".parse().unwrap());
    }

    #[test]
    fn golden_uses() {
        let tcp = uses(
            TCP,
            Proto::Tcp,
            &["127.0.0.5", "127.0.0.1", "0.0.0.0", "127.0.0.2"],
        );
        let server = &tcp[&ip("127.0.0.5")];
        assert_eq!((server.tcp_listen, server.tcp_other, server.udp), (1, 1, 0));
        assert_eq!(server.reason(), "tcp listen :443 (+1 more socket)");
        // The TIME_WAIT client (inode 0) does not count; the connected one does.
        let client = &tcp[&ip("127.0.0.1")];
        assert_eq!((client.tcp_listen, client.tcp_other), (0, 1));
        assert_eq!(client.reason(), "tcp established :47538 -> 127.0.0.5:443");
        // A wildcard listener uses no address, not even when asked about 0.0.0.0.
        assert!(!tcp.contains_key(&ip("0.0.0.0")));
        assert!(!tcp.contains_key(&ip("127.0.0.2")));

        let udp = uses(UDP, Proto::Udp, &["127.0.0.7", "127.0.0.1"]);
        assert_eq!(udp[&ip("127.0.0.7")].reason(), "udp :53");
        assert_eq!(udp[&ip("127.0.0.1")].reason(), "udp :52578 -> 127.0.0.7:53");
    }

    #[test]
    fn golden_tcp6_lines_count_through_mapped_addresses() {
        let all: Vec<SocketInfo> = parse_proc_net(TCP6, Proto::Tcp).collect();
        // Neither [::] nor ::1 has an IPv4 view; the accepted end is 127.0.0.9.
        assert_eq!(all.len(), 1, "{all:?}");
        assert_eq!(all[0].local, "127.0.0.9:8443".parse().unwrap());
        assert_eq!(all[0].remote, Some("127.0.0.1:36328".parse().unwrap()));
        assert_eq!(all[0].inode, 770545);
        let u = uses(TCP6, Proto::Tcp, &["127.0.0.9"]);
        assert_eq!(u[&ip("127.0.0.9")].tcp_other, 1);
        let u = uses(UDP6, Proto::Udp, &["127.0.0.7"]);
        assert_eq!(u[&ip("127.0.0.7")].reason(), "udp :5353");
    }

    #[test]
    fn malformed_lines_are_skipped() {
        for line in [
            "",
            "0: 0100007F:0CEA",
            "   0: 0100007F:0CEA 00000000:0000 0A",
            "   0: +100007F:0CEA 00000000:0000 0A 0:0 0:0 0 0 0 5",
            "   0: 0100007F:+CEA 00000000:0000 0A 0:0 0:0 0 0 0 5",
            "   0: 0100007F:0CEA 00000000:0000 +A 0:0 0:0 0 0 0 5",
            "   0: 0100007F:0CEA 00000000:0000 0A 0:0 0:0 0 0 0 -5",
            "   0: 0100007F0CEA 00000000:0000 0A 0:0 0:0 0 0 0 5",
            "   0: 0100007F:0CEA 00000000:0000 0A 0:0 0:0 0 0 0 ",
            "   0: 0100Ã07F:0CEA 00000000:0000 0A 0:0 0:0 0 0 0 5",
            "   0: 00000000000000000000000001000000:0016 0000:0000 0A 0:0 0:0 0 0 0 5",
            "   0  0100007F:0CEA 00000000:0000 0A 0:0 0:0 0 0 0 5",
        ] {
            assert_eq!(parse_proc_net(line, Proto::Tcp).count(), 0, "{line:?}");
        }
        let good = "   0: 0100007F:0CEA 00000000:0000 0A 0:0 0:0 0 0 0 5";
        assert_eq!(parse_proc_net(good, Proto::Tcp).count(), 1);
    }

    #[test]
    fn reason_prefers_the_listener_and_counts_the_rest() {
        let mut u = Use::default();
        let sock = |proto, state, port, inode| SocketInfo {
            proto,
            state,
            local: SocketAddrV4::new(ip("10.0.0.5"), port),
            remote: None,
            inode,
        };
        assert_eq!(u.reason(), "no socket");
        u.add(&sock(Proto::Udp, TCP_CLOSE, 53, 9));
        u.add(&sock(Proto::Tcp, TCP_BOUND_INACTIVE, 22, 8));
        u.add(&sock(Proto::Tcp, TCP_LISTEN, 8443, 7));
        u.add(&sock(Proto::Tcp, TCP_LISTEN, 443, 10));
        assert_eq!(u.reason(), "tcp listen :443 (+3 more sockets)");
        assert_eq!(
            (u.tcp_listen, u.tcp_other, u.udp, u.sockets()),
            (2, 1, 1, 4)
        );
    }

    // --- netlink framing, with messages built by the crate's own emitter ---

    fn message(kind: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = NLMSG_HDRLEN + payload.len();
        let mut m = Vec::new();
        m.extend_from_slice(&u32::try_from(len).unwrap().to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&1234u32.to_ne_bytes());
        m.extend_from_slice(payload);
        while m.len() % 4 != 0 {
            m.push(0);
        }
        m
    }

    fn response(
        family: u8,
        state: u8,
        local: IpAddr,
        port: u16,
        remote: IpAddr,
        inode: u32,
    ) -> Vec<u8> {
        let header = InetResponseHeader {
            family,
            state,
            timer: None,
            socket_id: SocketId {
                source_port: port,
                destination_port: 0,
                source_address: local,
                destination_address: remote,
                interface_id: 0,
                cookie: [0; 8],
            },
            recv_queue: 0,
            send_queue: 0,
            uid: 0,
            inode,
        };
        let mut buf = vec![0; header.buffer_len()];
        header.emit(&mut buf);
        // An attribute the kernel always adds (INET_DIAG_SHUTDOWN, 1 byte): ignored.
        buf.extend_from_slice(&[5, 0, 8, 0, 0, 0, 0, 0]);
        buf
    }

    fn v4(s: &str) -> IpAddr {
        IpAddr::V4(ip(s))
    }

    #[test]
    fn a_batch_of_responses_then_done() {
        let mut data = message(
            SOCK_DIAG_BY_FAMILY,
            2,
            7,
            &response(AF_INET, TCP_LISTEN, v4("10.0.0.5"), 443, v4("0.0.0.0"), 11),
        );
        data.extend(message(
            SOCK_DIAG_BY_FAMILY,
            2,
            7,
            &response(
                AF_INET6,
                TCP_ESTABLISHED,
                IpAddr::V6(ip("10.0.0.6").to_ipv6_mapped()),
                8443,
                IpAddr::V6(ip("10.0.0.9").to_ipv6_mapped()),
                12,
            ),
        ));
        data.extend(message(
            SOCK_DIAG_BY_FAMILY,
            2,
            7,
            &response(
                AF_INET6,
                TCP_LISTEN,
                "::1".parse().unwrap(),
                22,
                "::".parse().unwrap(),
                13,
            ),
        ));
        // A leftover of an earlier dump is skipped.
        data.extend(message(NLMSG_ERROR, 0, 6, &(-libc::EIO).to_ne_bytes()));
        let mut out = Vec::new();
        let mut intr = false;
        assert_eq!(
            parse_batch(&data, 7, Proto::Tcp, &mut intr, &mut out).unwrap(),
            Batch::More
        );
        assert_eq!(out.len(), 2, "the pure IPv6 socket has no IPv4 view");
        assert_eq!(out[0].local, "10.0.0.5:443".parse().unwrap());
        assert_eq!(out[0].remote, None);
        assert_eq!(out[1].local, "10.0.0.6:8443".parse().unwrap());
        assert_eq!(out[1].remote, Some("10.0.0.9:0".parse().unwrap()));
        assert!(!intr);

        let done = message(NLMSG_DONE, 2, 7, &0i32.to_ne_bytes());
        assert_eq!(
            parse_batch(&done, 7, Proto::Tcp, &mut intr, &mut out).unwrap(),
            Batch::Done
        );
        // A DONE without a body (older kernels) ends the dump too.
        let done = message(NLMSG_DONE, 2, 7, &[]);
        assert_eq!(
            parse_batch(&done, 7, Proto::Tcp, &mut intr, &mut out).unwrap(),
            Batch::Done
        );
    }

    #[test]
    fn dump_intr_is_noticed() {
        let mut data = message(
            SOCK_DIAG_BY_FAMILY,
            2 | NLM_F_DUMP_INTR,
            1,
            &response(AF_INET, TCP_LISTEN, v4("10.0.0.5"), 443, v4("0.0.0.0"), 11),
        );
        data.extend(message(NLMSG_DONE, 2, 1, &0i32.to_ne_bytes()));
        let (mut out, mut intr) = (Vec::new(), false);
        assert_eq!(
            parse_batch(&data, 1, Proto::Tcp, &mut intr, &mut out).unwrap(),
            Batch::Done
        );
        assert!(intr);
    }

    #[test]
    fn errors_end_the_dump() {
        let (mut out, mut intr) = (Vec::new(), false);
        let enoent = message(NLMSG_ERROR, 0, 3, &(-libc::ENOENT).to_ne_bytes());
        let e = parse_batch(&enoent, 3, Proto::Udp, &mut intr, &mut out).unwrap_err();
        assert!(is_missing_diag(&e), "{e}");
        let failed_done = message(NLMSG_DONE, 2, 3, &(-libc::ENOBUFS).to_ne_bytes());
        let e = parse_batch(&failed_done, 3, Proto::Udp, &mut intr, &mut out).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOBUFS));
        assert!(!is_missing_diag(&e));
        let mut truncated = message(NLMSG_DONE, 2, 3, &0i32.to_ne_bytes());
        truncated.truncate(10);
        assert!(parse_batch(&truncated, 3, Proto::Udp, &mut intr, &mut out).is_err());
        let short = message(SOCK_DIAG_BY_FAMILY, 2, 3, &[AF_INET, 1, 0, 0]);
        assert!(parse_batch(&short, 3, Proto::Udp, &mut intr, &mut out).is_err());
        let bad_family = message(SOCK_DIAG_BY_FAMILY, 2, 3, &[0u8; 72]);
        assert!(parse_batch(&bad_family, 3, Proto::Udp, &mut intr, &mut out).is_err());
        assert!(out.is_empty());
    }

    #[test]
    fn the_request_is_what_the_kernel_expects() {
        let r = request(9, AF_INET, Proto::Tcp);
        // nlmsghdr (16) + inet_diag_req_v2 (56).
        assert_eq!(r.len(), 72);
        assert_eq!(u32::from_ne_bytes(r[0..4].try_into().unwrap()), 72);
        assert_eq!(
            u16::from_ne_bytes(r[4..6].try_into().unwrap()),
            SOCK_DIAG_BY_FAMILY
        );
        assert_eq!(
            u16::from_ne_bytes(r[6..8].try_into().unwrap()),
            NLM_F_REQUEST | NLM_F_DUMP
        );
        assert_eq!(u32::from_ne_bytes(r[8..12].try_into().unwrap()), 9);
        assert_eq!((r[16], r[17]), (AF_INET, IPPROTO_TCP));
        let states = u32::from_ne_bytes(r[20..24].try_into().unwrap());
        assert_eq!(states & (1 << TCP_TIME_WAIT), 0);
        assert_ne!(states & (1 << TCP_LISTEN), 0);
        assert_ne!(states & (1 << TCP_BOUND_INACTIVE), 0);
    }

    #[test]
    fn a_protocol_without_sock_diag_is_read_from_proc_alone() {
        // As after an ENOENT for UDP (no udp_diag module): UDP from /proc, TCP unchanged.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let lo: BTreeSet<Ipv4Addr> = [Ipv4Addr::LOCALHOST].into_iter().collect();
        let mut w = SocketWatcher::new(Backend::Auto);
        w.udp_diag_missing = true;
        let p = w.poll(&lo).unwrap();
        assert_eq!(p.udp, Method::Proc);
        if SocketWatcher::new(Backend::SockDiag).poll(&lo).is_ok() {
            assert_eq!(p.tcp, Method::SockDiag);
        }
        let u = &p.uses[&Ipv4Addr::LOCALHOST];
        assert!(u.tcp_listen >= 1 && u.udp >= 1, "{u:?}");
        drop((listener, udp));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC*") {
            let _ = parse_proc_net(&text, Proto::Tcp).count();
        }

        #[test]
        fn near_valid_lines_never_panic(
            fields in proptest::collection::vec("[0-9A-Fa-f:+\\- ]{0,40}", 0..14),
        ) {
            let line = format!("   0: {}", fields.join(" "));
            let _ = parse_proc_net(&line, Proto::Udp).count();
        }

        #[test]
        fn arbitrary_netlink_bytes_never_panic(
            data in proptest::collection::vec(proptest::num::u8::ANY, 0..400),
            seq in 0u32..3,
        ) {
            let (mut out, mut intr) = (Vec::new(), false);
            let _ = parse_batch(&data, seq, Proto::Tcp, &mut intr, &mut out);
        }

        #[test]
        fn framed_garbage_never_panics(
            kind in proptest::prop_oneof![proptest::strategy::Just(SOCK_DIAG_BY_FAMILY), 0u16..30],
            flags in proptest::num::u16::ANY,
            payload in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
        ) {
            let data = message(kind, flags, 1, &payload);
            let (mut out, mut intr) = (Vec::new(), false);
            let _ = parse_batch(&data, 1, Proto::Udp, &mut intr, &mut out);
        }
    }
}

//! The one place that speaks rtnetlink: everything leaves it as std types and ours.
//!
//! Requests and dumps go through plain (unsubscribed) connections, notifications through a
//! separate multicast one. Kept apart because netlink-proto routes a message to a pending
//! request by sequence number, and a notification carries the sequence number of whoever
//! caused it: on a shared socket a notification can land in the middle of a dump (and end
//! it early), and be lost as an event.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU8, Ordering};

use futures_channel::mpsc::UnboundedReceiver;
use futures_util::StreamExt;
use netlink_packet_core::{
    ErrorMessage, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_EXCL, NLM_F_REQUEST,
    NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressProtocol,
};
use netlink_packet_route::link::{AfSpecInet, AfSpecUnspec, LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::AsyncSocket;
use rtnetlink::{Handle, MulticastGroup};
use tokio::task::JoinHandle;

use super::{
    AddError, HostAddress, HostEvent, IFA_PROTO_OURS, LABEL_SUFFIX, LinkInfo, RemoveError, Tagging,
    network, our_label, validate,
};

/// A dump that the kernel marks inconsistent (`NLM_F_DUMP_INTR`: the table changed while it
/// was read) is never used; it is read again this many times, then the caller is told.
const DUMP_TRIES: usize = 5;

/// Receive buffer asked for on the notification socket. Capped by `net.core.rmem_max`
/// (208 KiB by default); a burst larger than the buffer is an overrun and a [`HostEvent::Resync`],
/// so bigger only means fewer full dumps.
const RECEIVE_BUFFER: usize = 1 << 20;

fn closed() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the netlink connection has closed",
    )
}

/// The errno of a netlink NACK. The kernel sends negative errnos; anything else is mapped to
/// `EIO` rather than trusted.
fn errno(e: &ErrorMessage) -> i32 {
    e.raw_code()
        .checked_neg()
        .filter(|&n| n > 0)
        .unwrap_or(libc::EIO)
}

/// A request connection and the task that drives it.
struct Connection {
    handle: Handle,
    task: JoinHandle<()>,
}

impl Connection {
    fn open() -> io::Result<Self> {
        // rtnetlink's socket registers with the reactor of the current runtime and would
        // panic without one.
        let rt = tokio::runtime::Handle::try_current()
            .map_err(|_| io::Error::other("netlink needs a tokio runtime"))?;
        let _guard = rt.enter();
        let (conn, handle, _) = rtnetlink::new_connection()?;
        let task = rt.spawn(conn);
        Ok(Connection { handle, task })
    }

    /// Sends `msg` and waits for the kernel's answer; the errno of a NACK.
    async fn ack(&self, msg: RouteNetlinkMessage, flags: u16) -> Result<(), i32> {
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        let mut resp = self.handle.clone().request(req).map_err(|_| libc::EPIPE)?;
        while let Some(m) = resp.next().await {
            if let NetlinkPayload::Error(e) = m.payload
                && e.code.is_some()
            {
                return Err(errno(&e));
            }
        }
        // netlink-proto swallows the ACK and ends the stream; it ends it the same way when
        // the connection dies, which is told apart here.
        if self.task.is_finished() {
            return Err(libc::EPIPE);
        }
        Ok(())
    }

    /// A complete, consistent dump of what `make` asks for.
    async fn dump(
        &self,
        make: impl Fn() -> RouteNetlinkMessage,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        for _ in 0..DUMP_TRIES {
            let mut req = NetlinkMessage::from(make());
            req.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
            let mut resp = self.handle.clone().request(req).map_err(|_| closed())?;
            let mut out = Vec::new();
            let mut interrupted = false;
            while let Some(m) = resp.next().await {
                if m.header.flags & NLM_F_DUMP_INTR != 0 {
                    interrupted = true;
                }
                match m.payload {
                    NetlinkPayload::InnerMessage(inner) => out.push(inner),
                    NetlinkPayload::Error(e) if e.code.is_some() => {
                        return Err(io::Error::from_raw_os_error(errno(&e)));
                    }
                    NetlinkPayload::Overrun(_) => interrupted = true,
                    _ => {}
                }
            }
            if self.task.is_finished() {
                return Err(closed());
            }
            if !interrupted {
                return Ok(out);
            }
        }
        Err(io::Error::new(
            io::ErrorKind::Interrupted,
            "netlink dump kept changing under us",
        ))
    }

    async fn ipv4_addresses(&self) -> io::Result<Vec<AddressMessage>> {
        let dump = self
            .dump(|| {
                let mut m = AddressMessage::default();
                m.header.family = AddressFamily::Inet;
                RouteNetlinkMessage::GetAddress(m)
            })
            .await?;
        Ok(dump
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) if a.header.family == AddressFamily::Inet => {
                    Some(a)
                }
                _ => None,
            })
            .collect())
    }

    async fn links(&self) -> io::Result<Vec<LinkMessage>> {
        let dump = self
            .dump(|| RouteNetlinkMessage::GetLink(LinkMessage::default()))
            .await?;
        Ok(dump
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            })
            .collect())
    }

    async fn link(&self, ifindex: u32) -> io::Result<Option<LinkMessage>> {
        if ifindex == 0 {
            return Ok(None);
        }
        let mut get = LinkMessage::default();
        get.header.index = ifindex;
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetLink(get));
        req.header.flags = NLM_F_REQUEST;
        let mut resp = self.handle.clone().request(req).map_err(|_| closed())?;
        let mut found = None;
        while let Some(m) = resp.next().await {
            match m.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l))
                    if l.header.index == ifindex =>
                {
                    found = Some(l);
                }
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    return match errno(&e) {
                        libc::ENODEV => Ok(None),
                        n => Err(io::Error::from_raw_os_error(n)),
                    };
                }
                _ => {}
            }
        }
        if found.is_none() && self.task.is_finished() {
            return Err(closed());
        }
        Ok(found)
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// --------------------------------------------------------------- decoding ---

/// The address of an IPv4 address message: `IFA_LOCAL`, which is the interface's own
/// address (`IFA_ADDRESS` is the peer's on point-to-point links).
fn local_ip(m: &AddressMessage) -> Option<Ipv4Addr> {
    let mut address = None;
    for a in &m.attributes {
        match a {
            AddressAttribute::Local(IpAddr::V4(ip)) => return Some(*ip),
            AddressAttribute::Address(IpAddr::V4(ip)) => address = Some(*ip),
            _ => {}
        }
    }
    address
}

fn label(m: &AddressMessage) -> Option<&str> {
    m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Label(l) => Some(l.as_str()),
        _ => None,
    })
}

fn has_our_protocol(m: &AddressMessage) -> bool {
    m.attributes
        .iter()
        .any(|a| matches!(a, AddressAttribute::Protocol(p) if u8::from(*p) == IFA_PROTO_OURS))
}

/// Whether the label is a candidate for ours, before the interface name is known.
fn has_label_suffix(m: &AddressMessage) -> bool {
    label(m).is_some_and(|l| l.ends_with(LABEL_SUFFIX))
}

/// Ours: tagged by protocol, or labelled [`our_label`] of the name of its interface (any
/// `:dd` label when the name is not known).
fn is_ours(m: &AddressMessage, ifname: Option<&str>) -> bool {
    has_our_protocol(m)
        || match (label(m), ifname) {
            (Some(l), Some(name)) => l == our_label(name),
            (Some(l), None) => l.ends_with(LABEL_SUFFIX),
            (None, _) => false,
        }
}

fn is_secondary(m: &AddressMessage) -> bool {
    m.header.flags.contains(AddressHeaderFlags::Secondary)
        || m.attributes
            .iter()
            .any(|a| matches!(a, AddressAttribute::Flags(f) if f.contains(AddressFlags::Secondary)))
}

fn host_address(m: &AddressMessage, ifname: Option<&str>) -> Option<HostAddress> {
    if m.header.family != AddressFamily::Inet {
        return None;
    }
    Some(HostAddress {
        ifindex: m.header.index,
        ip: local_ip(m)?,
        prefix_len: m.header.prefix_len,
        ours: is_ours(m, ifname),
    })
}

fn link_info(m: &LinkMessage) -> LinkInfo {
    let mut name = String::new();
    let mut mac = None;
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => name.clone_from(n),
            LinkAttribute::Address(bytes) => mac = <[u8; 6]>::try_from(bytes.as_slice()).ok(),
            _ => {}
        }
    }
    LinkInfo {
        ifindex: m.header.index,
        name,
        up: m.header.flags.contains(LinkFlags::Up),
        mac,
    }
}

/// `net.ipv4.conf.IFACE.promote_secondaries`, as the link dump carries it; `None` when the
/// kernel did not say (then the safe assumption is "off").
fn promotes_secondaries(m: &LinkMessage) -> Option<bool> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::AfSpecUnspec(specs) => specs.iter().find_map(|s| match s {
            AfSpecUnspec::Inet(inet) => inet.iter().find_map(|i| match i {
                AfSpecInet::DevConf(conf) => Some(conf.promote_secondaries != 0),
                _ => None,
            }),
            _ => None,
        }),
        _ => None,
    })
}

/// What an echo of a freshly added address tells about the kernel: it kept `IFA_PROTO`
/// (Linux 6.1 and later) or dropped it (older kernels ignore attributes they do not know).
fn tagging_from_echo(m: &AddressMessage) -> Tagging {
    if has_our_protocol(m) {
        Tagging::Protocol
    } else {
        Tagging::Label
    }
}

/// What the kernel release says about `IFA_PROTO`: before 6.1 the kernel accepts the
/// attribute and drops it, so labels are used from the start rather than learnt from an
/// untagged first address (which watchers would see come and go as someone else's). From
/// 6.1 on, the first add still checks the echo, for kernels built without it.
fn tagging_for_release(release: &str) -> Option<Tagging> {
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = parts.next()?.parse().ok()?;
    ((major, minor) < (6, 1)).then_some(Tagging::Label)
}

/// The `RTM_NEWADDR` that adds `ip/prefix_len` on `ifindex`, tagged as ours.
fn add_message(
    ifindex: u32,
    ip: Ipv4Addr,
    prefix_len: u8,
    tagging: Tagging,
    ifname: &str,
) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.family = AddressFamily::Inet;
    m.header.prefix_len = prefix_len;
    m.header.index = ifindex;
    m.attributes.push(AddressAttribute::Local(ip.into()));
    m.attributes.push(AddressAttribute::Address(ip.into()));
    if prefix_len < 31 {
        let brd = u32::from(ip) | (u32::MAX >> prefix_len);
        m.attributes
            .push(AddressAttribute::Broadcast(Ipv4Addr::from(brd)));
    }
    // NODAD: no duplicate address detection of the kernel's (it has none for IPv4 today;
    // ours is the claim protocol plus the core's proof). No NOPREFIXROUTE: an address that
    // ends up primary in its subnet needs the on-link route for its peers to be reachable,
    // and a secondary adds none anyway.
    m.attributes
        .push(AddressAttribute::Flags(AddressFlags::Nodad));
    match tagging {
        Tagging::Protocol => m
            .attributes
            .push(AddressAttribute::Protocol(AddressProtocol::from(
                IFA_PROTO_OURS,
            ))),
        Tagging::Label => m
            .attributes
            .push(AddressAttribute::Label(our_label(ifname))),
    }
    m
}

/// The `RTM_DELADDR` for exactly the address `found` describes: its label goes along, so that
/// the kernel does not match another address of the same ip and prefix.
fn del_message(found: &AddressMessage) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.family = AddressFamily::Inet;
    m.header.prefix_len = found.header.prefix_len;
    m.header.index = found.header.index;
    m.attributes = found
        .attributes
        .iter()
        .filter(|a| {
            matches!(
                a,
                AddressAttribute::Local(_)
                    | AddressAttribute::Address(_)
                    | AddressAttribute::Label(_)
            )
        })
        .cloned()
        .collect();
    m
}

// -------------------------------------------------------------- Addresses ---

const TAG_UNKNOWN: u8 = 0;
const TAG_PROTOCOL: u8 = 1;
const TAG_LABEL: u8 = 2;

/// Adds, removes and lists IPv4 addresses, and never touches one that is not ours.
///
/// Every method dumps afresh instead of caching: other software changes addresses behind our
/// back, and a cache would be exactly the drift the monitor's resync exists to prevent.
pub struct Addresses {
    conn: Connection,
    tagging: AtomicU8,
}

impl Addresses {
    /// Opens a netlink connection in the network namespace of the calling thread; must be
    /// called inside a tokio runtime, which drives the connection task.
    pub fn open() -> io::Result<Self> {
        let a = Addresses {
            conn: Connection::open()?,
            tagging: AtomicU8::new(TAG_UNKNOWN),
        };
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        if let Some(t) = tagging_for_release(&release) {
            a.set_tagging(t);
        }
        Ok(a)
    }

    /// Like [`open`](Self::open), but with the tagging fixed instead of learnt, so that tests
    /// can exercise the label fallback on a kernel that has `IFA_PROTO`.
    #[doc(hidden)]
    pub fn open_with_tagging(tagging: Tagging) -> io::Result<Self> {
        let a = Self::open()?;
        a.set_tagging(tagging);
        Ok(a)
    }

    /// How addresses are tagged; `None` on Linux 6.1 and later until the first add has shown
    /// that the kernel keeps `IFA_PROTO`.
    pub fn tagging(&self) -> Option<Tagging> {
        match self.tagging.load(Ordering::Relaxed) {
            TAG_PROTOCOL => Some(Tagging::Protocol),
            TAG_LABEL => Some(Tagging::Label),
            _ => None,
        }
    }

    fn set_tagging(&self, t: Tagging) {
        let v = match t {
            Tagging::Protocol => TAG_PROTOCOL,
            Tagging::Label => TAG_LABEL,
        };
        self.tagging.store(v, Ordering::Relaxed);
    }

    /// The interface `ifindex`, if it exists.
    pub async fn link(&self, ifindex: u32) -> io::Result<Option<LinkInfo>> {
        Ok(self.conn.link(ifindex).await?.as_ref().map(link_info))
    }

    /// Every interface of the namespace, by index.
    pub async fn links(&self) -> io::Result<Vec<LinkInfo>> {
        let mut v: Vec<LinkInfo> = self.conn.links().await?.iter().map(link_info).collect();
        v.sort_by_key(|l| l.ifindex);
        Ok(v)
    }

    /// Decodes a dump, looking up the names of the interfaces whose `:dd` labels need one.
    async fn classify(&self, msgs: &[AddressMessage]) -> io::Result<Vec<(HostAddress, usize)>> {
        let wanted: BTreeSet<u32> = msgs
            .iter()
            .filter(|m| has_label_suffix(m) && !has_our_protocol(m))
            .map(|m| m.header.index)
            .collect();
        let mut names = BTreeMap::new();
        for ifindex in wanted {
            if let Some(l) = self.conn.link(ifindex).await? {
                names.insert(ifindex, link_info(&l).name);
            }
        }
        let mut out: Vec<(HostAddress, usize)> = msgs
            .iter()
            .enumerate()
            .filter_map(|(i, m)| {
                let name = names.get(&m.header.index).map(String::as_str);
                host_address(m, name).map(|h| (h, i))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Every IPv4 address on the host (this namespace), ours or not.
    pub async fn list_host(&self) -> io::Result<Vec<HostAddress>> {
        let msgs = self.conn.ipv4_addresses().await?;
        Ok(self
            .classify(&msgs)
            .await?
            .into_iter()
            .map(|(h, _)| h)
            .collect())
    }

    /// Every IPv4 address on `ifindex`, ours or not.
    pub async fn list_all(&self, ifindex: u32) -> io::Result<Vec<HostAddress>> {
        let mut msgs = self.conn.ipv4_addresses().await?;
        msgs.retain(|m| m.header.index == ifindex);
        Ok(self
            .classify(&msgs)
            .await?
            .into_iter()
            .map(|(h, _)| h)
            .collect())
    }

    /// The addresses on `ifindex` that carry our tag: after a restart, those to adopt or
    /// remove.
    pub async fn list_ours(&self, ifindex: u32) -> io::Result<Vec<(Ipv4Addr, u8)>> {
        Ok(self
            .list_all(ifindex)
            .await?
            .into_iter()
            .filter(|h| h.ours)
            .map(|h| (h.ip, h.prefix_len))
            .collect())
    }

    /// Adds `ip/prefix_len` to `ifindex`, tagged as ours. Refused if `ip` is on the host
    /// already, on any interface and with any prefix: first by looking, then by the kernel
    /// (`NLM_F_EXCL`) for one added in between.
    pub async fn add(&self, ifindex: u32, ip: Ipv4Addr, prefix_len: u8) -> Result<(), AddError> {
        validate(ip, prefix_len).map_err(|why| AddError::Invalid {
            ip,
            prefix_len,
            why,
        })?;
        let link = self
            .conn
            .link(ifindex)
            .await?
            .ok_or(AddError::NoSuchInterface(ifindex))?;
        let name = link_info(&link).name;
        if let Some(e) = self.existing(ifindex, ip).await? {
            return Err(e);
        }
        let learnt = self.tagging();
        self.send_add(
            ifindex,
            ip,
            prefix_len,
            learnt.unwrap_or(Tagging::Protocol),
            &name,
        )
        .await?;
        if learnt.is_none() {
            self.learn_tagging(ifindex, ip, prefix_len, &name).await?;
        }
        Ok(())
    }

    /// `ip` as configured anywhere on the host, as the error an add would give.
    async fn existing(&self, ifindex: u32, ip: Ipv4Addr) -> io::Result<Option<AddError>> {
        let host = self.list_host().await?;
        let mut found: Vec<&HostAddress> = host.iter().filter(|h| h.ip == ip).collect();
        // Report the one on the interface asked for, if there is one there.
        found.sort_by_key(|h| h.ifindex != ifindex);
        Ok(found.first().map(|h| AddError::Exists {
            ip,
            ifindex: h.ifindex,
            ours: h.ours,
        }))
    }

    async fn send_add(
        &self,
        ifindex: u32,
        ip: Ipv4Addr,
        prefix_len: u8,
        tagging: Tagging,
        name: &str,
    ) -> Result<(), AddError> {
        let msg = add_message(ifindex, ip, prefix_len, tagging, name);
        match self
            .conn
            .ack(
                RouteNetlinkMessage::NewAddress(msg),
                NLM_F_CREATE | NLM_F_EXCL,
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(libc::EEXIST) => Err(self.existing(ifindex, ip).await?.unwrap_or(
                // Gone again already; still, it was someone else's.
                AddError::Exists {
                    ip,
                    ifindex,
                    ours: false,
                },
            )),
            Err(libc::ENODEV) => Err(AddError::NoSuchInterface(ifindex)),
            Err(n) => Err(AddError::Io(io::Error::from_raw_os_error(n))),
        }
    }

    /// After the first add: read the address back and see whether the kernel kept
    /// `IFA_PROTO`. If not, the address is untagged, so it is replaced by a labelled one at
    /// once (it is ours: the kernel's `NLM_F_EXCL` said it was not there before).
    async fn learn_tagging(
        &self,
        ifindex: u32,
        ip: Ipv4Addr,
        prefix_len: u8,
        name: &str,
    ) -> Result<(), AddError> {
        let msgs = self.conn.ipv4_addresses().await?;
        let Some(echo) = msgs.iter().find(|m| {
            m.header.index == ifindex
                && m.header.prefix_len == prefix_len
                && local_ip(m) == Some(ip)
        }) else {
            // Removed by someone before we looked; the next add learns.
            return Ok(());
        };
        let tagging = tagging_from_echo(echo);
        self.set_tagging(tagging);
        if tagging == Tagging::Label {
            tracing::info!(
                "the kernel drops IFA_PROTO (older than 6.1): our addresses are labelled {}",
                our_label(name)
            );
            match self
                .conn
                .ack(RouteNetlinkMessage::DelAddress(del_message(echo)), 0)
                .await
            {
                Ok(()) | Err(libc::EADDRNOTAVAIL) | Err(libc::ENOENT) => {}
                Err(n) => return Err(AddError::Io(io::Error::from_raw_os_error(n))),
            }
            self.send_add(ifindex, ip, prefix_len, Tagging::Label, name)
                .await?;
        }
        Ok(())
    }

    /// Removes `ip/prefix_len` from `ifindex` if, and only if, it is ours; and only it: not
    /// when the kernel would delete secondaries along with it.
    ///
    /// Between the dump that shows the address as ours and the delete, someone could remove
    /// ours and add their own with the same address and prefix; with label tagging the
    /// delete carries our label and cannot match theirs, with protocol tagging that window
    /// (microseconds) remains, as the kernel does not match `IFA_PROTO` on delete.
    pub async fn remove(
        &self,
        ifindex: u32,
        ip: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<(), RemoveError> {
        if prefix_len > 32 {
            return Err(RemoveError::Invalid {
                ip,
                prefix_len,
                why: "prefix length above 32",
            });
        }
        let not_found = RemoveError::NotFound {
            ifindex,
            ip,
            prefix_len,
        };
        let mut msgs = self.conn.ipv4_addresses().await?;
        msgs.retain(|m| m.header.index == ifindex);
        let classified = self.classify(&msgs).await?;
        let Some((target, i)) = classified
            .iter()
            .find(|(h, _)| h.ip == ip && h.prefix_len == prefix_len)
        else {
            return Err(not_found);
        };
        if !target.ours {
            return Err(RemoveError::NotOurs {
                ifindex,
                ip,
                prefix_len,
            });
        }
        let Some(found) = msgs.get(*i) else {
            return Err(not_found);
        };
        if !is_secondary(found) {
            let net = network(ip, prefix_len);
            let others: Vec<Ipv4Addr> = classified
                .iter()
                .filter(|(h, j)| {
                    h.ip != ip
                        && h.prefix_len == prefix_len
                        && network(h.ip, h.prefix_len) == net
                        && msgs.get(*j).is_some_and(is_secondary)
                })
                .map(|(h, _)| h.ip)
                .collect();
            if !others.is_empty() {
                let promotes = self
                    .conn
                    .link(ifindex)
                    .await?
                    .as_ref()
                    .and_then(promotes_secondaries)
                    .unwrap_or(false);
                if !promotes {
                    return Err(RemoveError::WouldTakeSecondaries { ip, others });
                }
            }
        }
        match self
            .conn
            .ack(RouteNetlinkMessage::DelAddress(del_message(found)), 0)
            .await
        {
            Ok(()) => Ok(()),
            Err(libc::EADDRNOTAVAIL | libc::ENOENT | libc::ENODEV) => Err(not_found),
            Err(n) => Err(RemoveError::Io(io::Error::from_raw_os_error(n))),
        }
    }
}

// ---------------------------------------------------------------- Monitor ---

/// What the monitor knows of links, to report transitions rather than every notification,
/// and to name the interface of a labelled address.
#[derive(Default)]
struct LinkTable {
    links: BTreeMap<u32, LinkInfo>,
}

impl LinkTable {
    fn seed(&mut self, links: &[LinkMessage]) {
        self.links = links
            .iter()
            .map(|l| (l.header.index, link_info(l)))
            .collect();
    }

    fn name(&self, ifindex: u32) -> Option<&str> {
        self.links.get(&ifindex).map(|l| l.name.as_str())
    }

    /// Turns one notification into events; true when notifications were lost.
    fn on_message(
        &mut self,
        msg: NetlinkMessage<RouteNetlinkMessage>,
        out: &mut VecDeque<HostEvent>,
    ) -> bool {
        let inner = match msg.payload {
            NetlinkPayload::Overrun(_) => {
                out.push_back(HostEvent::Resync);
                return true;
            }
            NetlinkPayload::InnerMessage(inner) => inner,
            _ => return false,
        };
        match inner {
            RouteNetlinkMessage::NewAddress(a) => {
                if let Some(h) = host_address(&a, self.name(a.header.index)) {
                    out.push_back(HostEvent::AddressAdded {
                        ifindex: h.ifindex,
                        ip: h.ip,
                        prefix_len: h.prefix_len,
                        ours: h.ours,
                    });
                }
            }
            RouteNetlinkMessage::DelAddress(a) => {
                if let Some(h) = host_address(&a, self.name(a.header.index)) {
                    out.push_back(HostEvent::AddressRemoved {
                        ifindex: h.ifindex,
                        ip: h.ip,
                        prefix_len: h.prefix_len,
                        ours: h.ours,
                    });
                }
            }
            RouteNetlinkMessage::NewLink(l) => {
                let mut info = link_info(&l);
                let before = self.links.get(&info.ifindex);
                if info.name.is_empty()
                    && let Some(b) = before
                {
                    info.name.clone_from(&b.name);
                }
                let was_up = before.is_some_and(|b| b.up);
                if info.up && !was_up {
                    out.push_back(HostEvent::LinkUp {
                        ifindex: info.ifindex,
                        name: info.name.clone(),
                    });
                } else if !info.up && was_up {
                    out.push_back(HostEvent::LinkGone {
                        ifindex: info.ifindex,
                        name: info.name.clone(),
                    });
                }
                self.links.insert(info.ifindex, info);
            }
            RouteNetlinkMessage::DelLink(l) => {
                let info = link_info(&l);
                let known = self.links.remove(&info.ifindex);
                let name = if info.name.is_empty() {
                    known.map(|k| k.name).unwrap_or_default()
                } else {
                    info.name
                };
                out.push_back(HostEvent::LinkGone {
                    ifindex: info.ifindex,
                    name,
                });
            }
            _ => {}
        }
        false
    }
}

type Notifications =
    UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, netlink_sys::SocketAddr)>;

/// Address and link notifications of the network namespace, as [`HostEvent`]s.
///
/// Notifications the kernel sends in a form netlink-packet-route cannot decode are dropped
/// by netlink-proto (with an error in the log) without a trace here; the caller's periodic
/// full dump, which it needs anyway for the lost-notification case, covers those too.
pub struct Monitor {
    notifications: Notifications,
    task: JoinHandle<()>,
    query: Connection,
    links: LinkTable,
    pending: VecDeque<HostEvent>,
    /// The link table is to be read afresh before the next notification is decoded. A flag
    /// rather than a dump inside the overrun branch, so that a `next` cancelled during the
    /// dump (in a `select!`) does it again instead of going on with a stale table.
    reseed: bool,
}

impl Monitor {
    /// Subscribes to link and IPv4 address notifications in the network namespace of the
    /// calling thread (inside a tokio runtime), then reads the links once so that the first
    /// notification of an up link is not taken for a transition.
    pub async fn open() -> io::Result<Self> {
        Self::open_with_receive_buffer(RECEIVE_BUFFER).await
    }

    /// Like [`open`](Self::open) with a given receive buffer: tests make it tiny to provoke
    /// an overrun.
    #[doc(hidden)]
    pub async fn open_with_receive_buffer(bytes: usize) -> io::Result<Self> {
        let rt = tokio::runtime::Handle::try_current()
            .map_err(|_| io::Error::other("netlink needs a tokio runtime"))?;
        let (mut conn, _, notifications) = {
            let _guard = rt.enter();
            rtnetlink::new_multicast_connection(&[
                MulticastGroup::Link,
                MulticastGroup::Ipv4Ifaddr,
            ])?
        };
        let size = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        conn.socket_mut().socket_mut().set_rx_buf_sz(size)?;
        let task = rt.spawn(conn);
        let query = Connection::open()?;
        let mut links = LinkTable::default();
        // Subscribed before this dump, so no change falls between the two.
        links.seed(&query.links().await?);
        Ok(Monitor {
            notifications,
            task,
            query,
            links,
            pending: VecDeque::new(),
            reseed: false,
        })
    }

    /// The next event. `None` when the notification socket has failed for good: open a new
    /// monitor and resync. Cancel-safe: no event is lost when the future is dropped.
    pub async fn next(&mut self) -> Option<HostEvent> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(e);
            }
            if self.reseed {
                // Link transitions were lost too: start again from what is there now. Should
                // the dump fail, forgetting every link makes each one reported up again when
                // the kernel next mentions it, which errs on the side of a redundant event.
                match self.query.links().await {
                    Ok(l) => self.links.seed(&l),
                    Err(e) => {
                        tracing::warn!("link dump after a netlink overrun failed: {e}");
                        self.links = LinkTable::default();
                    }
                }
                self.reseed = false;
            }
            let (msg, _) = self.notifications.next().await?;
            if self.links.on_message(msg, &mut self.pending) {
                self.reseed = true;
            }
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{NetlinkDeserializable, NetlinkHeader};
    use netlink_packet_route::link::InetDevConf;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn addr_msg(ifindex: u32, a: &str, prefix_len: u8) -> AddressMessage {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.index = ifindex;
        m.header.prefix_len = prefix_len;
        m.attributes
            .push(AddressAttribute::Address(IpAddr::V4(ip(a))));
        m.attributes
            .push(AddressAttribute::Local(IpAddr::V4(ip(a))));
        m
    }

    fn link_msg(ifindex: u32, name: &str, up: bool) -> LinkMessage {
        let mut m = LinkMessage::default();
        m.header.index = ifindex;
        if up {
            m.header.flags = LinkFlags::Up;
        }
        m.attributes.push(LinkAttribute::IfName(name.into()));
        m.attributes
            .push(LinkAttribute::Address(vec![2, 0, 0, 0, 0, 7]));
        m
    }

    fn notification(inner: RouteNetlinkMessage) -> NetlinkMessage<RouteNetlinkMessage> {
        NetlinkMessage::from(inner)
    }

    #[test]
    fn ours_by_protocol_or_label() {
        let plain = addr_msg(3, "10.0.0.5", 24);
        assert!(!is_ours(&plain, Some("eth0")));

        let mut proto = plain.clone();
        proto
            .attributes
            .push(AddressAttribute::Protocol(AddressProtocol::from(
                IFA_PROTO_OURS,
            )));
        assert!(is_ours(&proto, None));
        assert_eq!(tagging_from_echo(&proto), Tagging::Protocol);
        assert_eq!(tagging_from_echo(&plain), Tagging::Label);

        let mut other_proto = plain.clone();
        other_proto
            .attributes
            .push(AddressAttribute::Protocol(AddressProtocol::from(0x65)));
        assert!(!is_ours(&other_proto, Some("eth0")));

        let mut labelled = plain.clone();
        labelled
            .attributes
            .push(AddressAttribute::Label("eth0:dd".into()));
        assert!(is_ours(&labelled, Some("eth0")));
        assert!(is_ours(&labelled, None));
        assert!(!is_ours(&labelled, Some("eth1")));

        let mut alias = plain.clone();
        alias
            .attributes
            .push(AddressAttribute::Label("eth0:1".into()));
        assert!(!is_ours(&alias, Some("eth0")));
        assert!(!is_ours(&alias, None));
    }

    #[test]
    fn kernels_before_6_1_get_labels() {
        assert_eq!(
            tagging_for_release("5.15.0-91-generic\n"),
            Some(Tagging::Label)
        );
        assert_eq!(tagging_for_release("6.0.19"), Some(Tagging::Label));
        assert_eq!(tagging_for_release("4.19.0"), Some(Tagging::Label));
        assert_eq!(tagging_for_release("6.1.0-13-amd64"), None);
        assert_eq!(tagging_for_release("6.18.44-fc-v669"), None);
        assert_eq!(tagging_for_release("7.0"), None);
        // Unreadable: learn from the first add.
        assert_eq!(tagging_for_release(""), None);
        assert_eq!(tagging_for_release("linux"), None);
        assert_eq!(tagging_for_release("99999999999.1"), None);
    }

    #[test]
    fn add_message_carries_the_tag() {
        let m = add_message(4, ip("10.0.0.5"), 24, Tagging::Protocol, "eth0");
        assert_eq!(m.header.index, 4);
        assert_eq!(m.header.prefix_len, 24);
        assert!(has_our_protocol(&m));
        assert!(
            m.attributes
                .contains(&AddressAttribute::Broadcast(ip("10.0.0.255")))
        );
        assert!(
            m.attributes
                .contains(&AddressAttribute::Flags(AddressFlags::Nodad))
        );
        assert_eq!(label(&m), None);

        let m = add_message(4, ip("10.0.0.5"), 32, Tagging::Label, "eth0");
        assert!(!has_our_protocol(&m));
        assert_eq!(label(&m), Some("eth0:dd"));
        assert!(
            !m.attributes
                .iter()
                .any(|a| matches!(a, AddressAttribute::Broadcast(_)))
        );
        // What we add is recognised as ours by the same rules.
        assert!(is_ours(&m, Some("eth0")));
    }

    #[test]
    fn delete_matches_by_label_too() {
        let mut found = addr_msg(4, "10.0.0.5", 24);
        found
            .attributes
            .push(AddressAttribute::Label("eth0:dd".into()));
        found
            .attributes
            .push(AddressAttribute::Broadcast(ip("10.0.0.255")));
        let d = del_message(&found);
        assert_eq!(d.header.index, 4);
        assert_eq!(d.header.prefix_len, 24);
        assert_eq!(d.attributes.len(), 3);
        assert_eq!(label(&d), Some("eth0:dd"));
    }

    #[test]
    fn local_is_preferred_over_address() {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        m.attributes
            .push(AddressAttribute::Address(IpAddr::V4(ip("10.9.9.9"))));
        assert_eq!(local_ip(&m), Some(ip("10.9.9.9")));
        m.attributes
            .push(AddressAttribute::Local(IpAddr::V4(ip("10.0.0.1"))));
        assert_eq!(local_ip(&m), Some(ip("10.0.0.1")));
        // Not IPv4: not an address of ours to report.
        m.header.family = AddressFamily::Inet6;
        assert_eq!(host_address(&m, None), None);
        // No address at all.
        let mut empty = AddressMessage::default();
        empty.header.family = AddressFamily::Inet;
        assert_eq!(host_address(&empty, None), None);
    }

    #[test]
    fn secondaries_and_promotion() {
        let mut m = addr_msg(2, "10.0.0.6", 24);
        assert!(!is_secondary(&m));
        m.attributes
            .push(AddressAttribute::Flags(AddressFlags::Secondary));
        assert!(is_secondary(&m));
        let mut h = addr_msg(2, "10.0.0.7", 24);
        h.header.flags = AddressHeaderFlags::Secondary;
        assert!(is_secondary(&h));

        let mut l = link_msg(2, "eth0", true);
        assert_eq!(promotes_secondaries(&l), None);
        let mut conf = InetDevConf::default();
        conf.promote_secondaries = 1;
        l.attributes
            .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet(vec![
                AfSpecInet::DevConf(conf),
            ])]));
        assert_eq!(promotes_secondaries(&l), Some(true));
    }

    #[test]
    fn link_info_reads_name_flags_mac() {
        let info = link_info(&link_msg(5, "veth0", true));
        assert_eq!(info.ifindex, 5);
        assert_eq!(info.name, "veth0");
        assert!(info.up);
        assert_eq!(info.mac, Some([2, 0, 0, 0, 0, 7]));
        let mut odd = link_msg(6, "ip6tnl0", false);
        odd.attributes = vec![LinkAttribute::Address(vec![0; 16])];
        let info = link_info(&odd);
        assert_eq!(info.mac, None);
        assert_eq!(info.name, "");
        assert!(!info.up);
    }

    #[test]
    fn link_transitions_not_every_notification() {
        let mut t = LinkTable::default();
        t.seed(&[link_msg(1, "lo", true), link_msg(2, "eth0", true)]);
        let mut out = VecDeque::new();
        // A notification about an up link that was up: nothing.
        assert!(!t.on_message(
            notification(RouteNetlinkMessage::NewLink(link_msg(2, "eth0", true))),
            &mut out
        ));
        assert!(out.is_empty());
        // Addresses are named by the table for the label check.
        let mut a = addr_msg(2, "10.0.0.5", 24);
        a.attributes.push(AddressAttribute::Label("eth0:dd".into()));
        t.on_message(
            notification(RouteNetlinkMessage::DelAddress(a.clone())),
            &mut out,
        );
        assert_eq!(
            out.pop_front(),
            Some(HostEvent::AddressRemoved {
                ifindex: 2,
                ip: ip("10.0.0.5"),
                prefix_len: 24,
                ours: true
            })
        );
        // Deleted: gone, name from the message or the table.
        let mut del = link_msg(2, "", false);
        del.attributes.clear();
        t.on_message(notification(RouteNetlinkMessage::DelLink(del)), &mut out);
        assert_eq!(
            out.pop_front(),
            Some(HostEvent::LinkGone {
                ifindex: 2,
                name: "eth0".into()
            })
        );
        // Re-created down, then set up: one LinkUp.
        t.on_message(
            notification(RouteNetlinkMessage::NewLink(link_msg(7, "eth0", false))),
            &mut out,
        );
        assert!(out.is_empty());
        for _ in 0..2 {
            t.on_message(
                notification(RouteNetlinkMessage::NewLink(link_msg(7, "eth0", true))),
                &mut out,
            );
        }
        assert_eq!(
            out.drain(..).collect::<Vec<_>>(),
            vec![HostEvent::LinkUp {
                ifindex: 7,
                name: "eth0".into()
            }]
        );
        // Set down: gone.
        t.on_message(
            notification(RouteNetlinkMessage::NewLink(link_msg(7, "eth0", false))),
            &mut out,
        );
        assert_eq!(
            out.pop_front(),
            Some(HostEvent::LinkGone {
                ifindex: 7,
                name: "eth0".into()
            })
        );
        // An address added on the new link, with our protocol.
        let mut a = addr_msg(7, "10.0.0.9", 32);
        a.attributes
            .push(AddressAttribute::Protocol(AddressProtocol::from(
                IFA_PROTO_OURS,
            )));
        t.on_message(notification(RouteNetlinkMessage::NewAddress(a)), &mut out);
        assert_eq!(
            out.pop_front(),
            Some(HostEvent::AddressAdded {
                ifindex: 7,
                ip: ip("10.0.0.9"),
                prefix_len: 32,
                ours: true
            })
        );
    }

    #[test]
    fn overrun_is_a_resync() {
        let mut t = LinkTable::default();
        let mut out = VecDeque::new();
        let msg = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::Overrun(vec![]));
        assert!(t.on_message(msg, &mut out));
        assert_eq!(out.pop_front(), Some(HostEvent::Resync));
        // Other payloads are ignored.
        let msg = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::Noop);
        assert!(!t.on_message(msg, &mut out));
        assert!(out.is_empty());
    }

    /// Kernel messages are input: whatever netlink-packet-route makes of a fixed header and
    /// attributes of any kind and length (nested ones too, by chance), our decoding never
    /// panics and gives at most one event.
    #[test]
    fn arbitrary_notifications_never_panic() {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};
        // RTM_NEWLINK, RTM_DELLINK, RTM_NEWADDR, RTM_DELADDR.
        let kinds = prop::sample::select(vec![16u16, 17, 20, 21]);
        let nla = (0u16..64, prop::collection::vec(any::<u8>(), 0..40));
        let input = (
            kinds,
            prop::collection::vec(any::<u8>(), 16),
            prop::collection::vec(nla, 0..10),
        );
        let mut runner = TestRunner::new(Config {
            cases: 5000,
            failure_persistence: None,
            ..Config::default()
        });
        let decoded = std::cell::Cell::new(0u32);
        let events = std::cell::Cell::new(0u32);
        runner
            .run(&input, |(kind, fixed, nlas)| {
                // ifinfomsg is 16 bytes, ifaddrmsg 8; family AF_INET for the addresses.
                let mut body = if kind >= 20 {
                    let mut f = fixed[..8].to_vec();
                    f[0] = 2;
                    f
                } else {
                    fixed
                };
                for (k, value) in nlas {
                    let len = 4 + value.len();
                    body.extend_from_slice(&(len as u16).to_ne_bytes());
                    body.extend_from_slice(&k.to_ne_bytes());
                    body.extend_from_slice(&value);
                    body.resize(body.len().next_multiple_of(4), 0);
                }
                let mut header = NetlinkHeader::default();
                header.message_type = kind;
                header.length = 16 + body.len() as u32;
                if let Ok(inner) = RouteNetlinkMessage::deserialize(&header, &body) {
                    let mut t = LinkTable::default();
                    t.seed(&[link_msg(2, "eth0", true)]);
                    let mut out = VecDeque::new();
                    let msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(inner));
                    t.on_message(msg, &mut out);
                    prop_assert!(out.len() <= 1);
                    decoded.set(decoded.get() + 1);
                    events.set(events.get() + out.len() as u32);
                }
                Ok(())
            })
            .unwrap();
        // The generator reaches the decoders, not only their length checks.
        assert!(decoded.get() > 500, "{} of 5000 decoded", decoded.get());
        assert!(events.get() > 100, "{} events", events.get());
    }
}

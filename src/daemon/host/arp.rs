//! Gratuitous ARP: telling the link that an address is now at our MAC.
//!
//! Both forms go out each round, because receivers differ in which they learn from: the
//! request with sender = target (an RFC 5227 announcement) is what Linux peers with
//! `arp_accept=1` create a neighbour entry from, and some switches and older stacks update
//! their tables only from replies. Linux takes a gratuitous reply only if its target hardware
//! address equals the sender's (`arp_is_garp`), so the reply carries our MAC twice.
//!
//! Frames are built here, whole (Ethernet header included), and sent through an `AF_PACKET`
//! raw socket with protocol 0, which receives nothing, so no buffer ever fills.

use std::io;
use std::mem::size_of;
use std::net::Ipv4Addr;
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, SockAddrStorage, Socket, Type};

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IP: u16 = 0x0800;
const ARPHRD_ETHER: u16 = 1;
const ARPOP_REQUEST: u16 = 1;
const ARPOP_REPLY: u16 = 2;
const BROADCAST: [u8; 6] = [0xff; 6];

/// Ethernet's minimum frame without the FCS. ARP is 42 bytes; the padding is sent by us
/// rather than left to drivers, not all of which pad short frames.
pub const FRAME_LEN: usize = 60;

/// The two forms of gratuitous ARP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Garp {
    /// ARP request, sender and target protocol address = ours, target MAC zero.
    Request,
    /// Unsolicited ARP reply, target MAC = sender MAC = ours.
    Reply,
}

/// The broadcast Ethernet frame announcing `ip` at `mac`.
pub fn frame(kind: Garp, mac: [u8; 6], ip: Ipv4Addr) -> [u8; FRAME_LEN] {
    let (op, target_mac) = match kind {
        Garp::Request => (ARPOP_REQUEST, [0u8; 6]),
        Garp::Reply => (ARPOP_REPLY, mac),
    };
    let mut f = [0u8; FRAME_LEN];
    let ip = ip.octets();
    let fields: [&[u8]; 12] = [
        &BROADCAST,                  // destination
        &mac,                        // source
        &ETH_P_ARP.to_be_bytes(),    // EtherType
        &ARPHRD_ETHER.to_be_bytes(), // hardware type
        &ETH_P_IP.to_be_bytes(),     // protocol type
        &[6, 4],                     // hardware, protocol address lengths
        &op.to_be_bytes(),
        &mac, // sender hardware address
        &ip,  // sender protocol address
        &target_mac,
        &ip, // target protocol address
        &[], // padding: already zero
    ];
    let mut at = 0;
    for field in fields {
        let end = at + field.len();
        if let Some(dst) = f.get_mut(at..end) {
            dst.copy_from_slice(field);
        }
        at = end;
    }
    f
}

/// A send-only packet socket for gratuitous ARP on any interface of its network namespace
/// (the one of the thread that opened it).
pub struct Announcer {
    socket: Socket,
}

impl Announcer {
    /// Needs `CAP_NET_RAW`.
    pub fn open() -> io::Result<Self> {
        // Protocol 0: bound to no EtherType, so the kernel queues nothing for us to read.
        let socket = Socket::new(Domain::PACKET, Type::RAW, Some(Protocol::from(0)))?;
        // Never block the caller's task: a full transmit queue fails this round, and the
        // next refresh tries again.
        socket.set_nonblocking(true)?;
        Ok(Announcer { socket })
    }

    /// Sends one request and one reply for `ip` at `mac` on `ifindex`.
    pub fn send(&self, ifindex: u32, mac: [u8; 6], ip: Ipv4Addr) -> io::Result<()> {
        let to = link_address(ifindex)?;
        for kind in [Garp::Request, Garp::Reply] {
            let f = frame(kind, mac, ip);
            let n = self.socket.send_to(&f, &to)?;
            if n != f.len() {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "gratuitous ARP frame sent in part",
                ));
            }
        }
        Ok(())
    }
}

/// `sockaddr_ll` for a broadcast ARP frame out of `ifindex`.
fn link_address(ifindex: u32) -> io::Result<SockAddr> {
    let index = i32::try_from(ifindex)
        .ok()
        .filter(|&i| i > 0)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "invalid interface index"))?;
    let mut storage = SockAddrStorage::zeroed();
    // SAFETY: sockaddr_ll is one of the platform's sockaddr types and fits in the storage
    // (socket2 asserts that); every field is then written through a plain reference.
    let ll = unsafe { storage.view_as::<libc::sockaddr_ll>() };
    ll.sll_family = libc::AF_PACKET as libc::sa_family_t;
    ll.sll_protocol = ETH_P_ARP.to_be();
    ll.sll_ifindex = index;
    ll.sll_halen = 6;
    ll.sll_addr[..6].copy_from_slice(&BROADCAST);
    let len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: the storage holds an initialised sockaddr_ll of exactly `len` bytes.
    Ok(unsafe { SockAddr::new(storage, len) })
}

/// `count` rounds of gratuitous ARP for `ip` at `mac` on `ifindex`, `interval` apart (a burst
/// when an address becomes usable; the periodic refresh is count 1). The first failure ends
/// it: the link is most likely down, and the caller's next refresh is the retry.
pub async fn announce(
    ifindex: u32,
    mac: [u8; 6],
    ip: Ipv4Addr,
    count: u32,
    interval: Duration,
) -> io::Result<()> {
    if count == 0 {
        return Ok(());
    }
    let announcer = Announcer::open()?;
    for round in 0..count {
        if round > 0 {
            tokio::time::sleep(interval).await;
        }
        announcer.send(ifindex, mac, ip)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];

    #[test]
    fn request_golden_bytes() {
        let f = frame(Garp::Request, MAC, Ipv4Addr::new(192, 0, 2, 10));
        #[rustfmt::skip]
        let want: [u8; 42] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff,  // to everyone
            0x02, 0x11, 0x22, 0x33, 0x44, 0x55,  // from us
            0x08, 0x06,                          // ARP
            0x00, 0x01, 0x08, 0x00, 0x06, 0x04,  // Ethernet, IPv4, 6, 4
            0x00, 0x01,                          // request
            0x02, 0x11, 0x22, 0x33, 0x44, 0x55,  // sender MAC
            192, 0, 2, 10,                       // sender IP
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // target MAC: unknown
            192, 0, 2, 10,                       // target IP = sender IP
        ];
        assert_eq!(f[..42], want);
        assert_eq!(f[42..], [0u8; 18]);
    }

    #[test]
    fn reply_golden_bytes() {
        let f = frame(Garp::Reply, MAC, Ipv4Addr::new(10, 0, 128, 7));
        #[rustfmt::skip]
        let want: [u8; 42] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x02, 0x11, 0x22, 0x33, 0x44, 0x55,
            0x08, 0x06,
            0x00, 0x01, 0x08, 0x00, 0x06, 0x04,
            0x00, 0x02,                          // reply
            0x02, 0x11, 0x22, 0x33, 0x44, 0x55,
            10, 0, 128, 7,
            0x02, 0x11, 0x22, 0x33, 0x44, 0x55,  // target MAC = sender MAC
            10, 0, 128, 7,
        ];
        assert_eq!(f[..42], want);
        assert_eq!(f[42..], [0u8; 18]);
    }

    #[test]
    fn bad_interface_indexes_are_refused() {
        assert!(link_address(0).is_err());
        assert!(link_address(u32::MAX).is_err());
        assert!(link_address(1).is_ok());
    }
}

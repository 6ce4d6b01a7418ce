//! Sockets of the peer protocol on the server interface (reference §2.1).
//!
//! As ddhcpd: one socket bound to `[ff02::1234%if]:1234` that joins the group with loopback
//! off (a node never hears itself), one bound to `[::%if]:1235` for the renew family, both
//! bound to the device. Multicast goes out of the first, unicast out of the second, so the
//! source ports are what C peers expect.

use std::io;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use crate::node::{Dest, Transmit};
use crate::wire::{MULTICAST_GROUP, MULTICAST_PORT, UNICAST_PORT};

pub struct PeerSockets {
    pub multicast: UdpSocket,
    pub unicast: UdpSocket,
    ifindex: u32,
}

fn udp6(iface: &str) -> io::Result<Socket> {
    let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_only_v6(true)?;
    s.set_reuse_address(true)?;
    s.bind_device(Some(iface.as_bytes()))?;
    s.set_nonblocking(true)?;
    Ok(s)
}

impl PeerSockets {
    /// Opens both sockets on `iface`. Must run inside a tokio runtime.
    pub fn open(iface: &str, ifindex: u32) -> io::Result<Self> {
        let m = udp6(iface)?;
        m.join_multicast_v6(&MULTICAST_GROUP, ifindex)?;
        m.set_multicast_loop_v6(false)?;
        m.set_multicast_if_v6(ifindex)?;
        m.set_multicast_hops_v6(1)?;
        m.bind(
            &SocketAddr::V6(SocketAddrV6::new(
                MULTICAST_GROUP,
                MULTICAST_PORT,
                0,
                ifindex,
            ))
            .into(),
        )?;
        let u = udp6(iface)?;
        u.bind(
            &SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::UNSPECIFIED,
                UNICAST_PORT,
                0,
                ifindex,
            ))
            .into(),
        )?;
        Ok(PeerSockets {
            multicast: UdpSocket::from_std(m.into())?,
            unicast: UdpSocket::from_std(u.into())?,
            ifindex,
        })
    }

    pub async fn send(&self, t: &Transmit) -> io::Result<()> {
        match t.dest {
            Dest::Multicast => {
                let to = SocketAddrV6::new(MULTICAST_GROUP, MULTICAST_PORT, 0, self.ifindex);
                self.multicast.send_to(&t.payload, to).await?;
            }
            Dest::Unicast(addr) => {
                let to = SocketAddrV6::new(addr, UNICAST_PORT, 0, self.ifindex);
                self.unicast.send_to(&t.payload, to).await?;
            }
        }
        Ok(())
    }
}

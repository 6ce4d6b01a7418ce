//! The host side of local address mode: putting addresses on an interface, taking them off,
//! hearing when someone else does, and announcing them on the link.
//!
//! The deterministic core decides *which* address should be where; this module only carries
//! those decisions out and reports back what the kernel says, in std types and ours. Only
//! [`netlink`] sees rtnetlink, so a change of that crate's types stays in one file, and the
//! simulator's fake host needs nothing of it.
//!
//! The one rule everything here keeps: an address we did not add is never changed. Ours are
//! tagged when added ([`IFA_PROTO_OURS`], or [`our_label`] on kernels without `IFA_PROTO`),
//! so that after a restart, or next to systemd-networkd and NetworkManager, ours can still
//! be told from everyone else's.

pub mod arp;
/// The task that runs the local service's host actions and reports back.
pub mod driver;
mod netlink;
/// Two-way reachability from a given source address (ICMP echo, UDP, TCP).
pub mod probe;
/// Which of our addresses local sockets use (sock_diag, `/proc` as fallback).
pub mod sockets;

use std::io;
use std::net::Ipv4Addr;

pub use netlink::{Addresses, Monitor};

/// The `IFA_PROTO` value our addresses carry ('d'). The kernel stores it and echoes it in
/// dumps and notifications (Linux 6.1 and later); `ip -d addr` prints it as `proto 0x64`.
/// Values 1–3 are the kernel's own (loopback, RA, link-local) and 0 is "unspecified",
/// which is what every other tool leaves.
pub const IFA_PROTO_OURS: u8 = 0x64;

/// Suffix of the `IFA_LABEL` that marks ours where the kernel drops `IFA_PROTO`.
pub const LABEL_SUFFIX: &str = ":dd";

/// Longest label the kernel takes (`IFNAMSIZ` less the NUL).
const MAX_LABEL: usize = 15;

/// The label our addresses on `ifname` carry when tagged by label: `IFNAME:dd`, the name cut
/// (at a character boundary) so that the whole fits in 15 bytes. Labels starting with the
/// interface name are what `ifconfig`-era tools expect of aliases, so this looks familiar.
/// An interface renamed after the add no longer matches its label: with label tagging, its
/// addresses then look like someone else's (left alone, never removed) until re-added.
pub fn our_label(ifname: &str) -> String {
    let mut cut = ifname.len().min(MAX_LABEL - LABEL_SUFFIX.len());
    while !ifname.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{LABEL_SUFFIX}", &ifname[..cut])
}

/// How [`Addresses`] marks the addresses it adds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tagging {
    /// `IFA_PROTO` = [`IFA_PROTO_OURS`] (Linux 6.1 and later).
    Protocol,
    /// `IFA_LABEL` = [`our_label`], for older kernels, which accept `IFA_PROTO` and drop it.
    Label,
}

/// One IPv4 address configured on the host.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HostAddress {
    pub ifindex: u32,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    /// Tagged as added by us (either way of [`Tagging`]).
    pub ours: bool,
}

/// One network interface as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub ifindex: u32,
    pub name: String,
    /// Administratively up (`IFF_UP`). Carrier is not looked at: IPv4 addresses survive a
    /// lost carrier, so nothing needs redoing when it comes back.
    pub up: bool,
    /// The Ethernet address, for gratuitous ARP; `None` for links without a 6-byte one.
    pub mac: Option<[u8; 6]>,
}

/// What the host reports through a [`Monitor`].
///
/// Events are hints to act on, the dumps of [`Addresses`] are the truth: an event may come
/// twice (the kernel announces an address again when its flags change), and after
/// [`HostEvent::Resync`] some were lost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostEvent {
    /// An IPv4 address appeared (or changed) on `ifindex`.
    AddressAdded {
        ifindex: u32,
        ip: Ipv4Addr,
        prefix_len: u8,
        ours: bool,
    },
    /// An IPv4 address went away. When a link is deleted, the kernel reports each of its
    /// addresses as removed before the [`HostEvent::LinkGone`], so a re-add attempted in
    /// between fails with [`AddError::NoSuchInterface`].
    AddressRemoved {
        ifindex: u32,
        ip: Ipv4Addr,
        prefix_len: u8,
        ours: bool,
    },
    /// The link was deleted (or moved to another namespace) or set administratively down.
    /// Interfaces that are re-created come back under a new index: match them by `name`.
    LinkGone { ifindex: u32, name: String },
    /// The link is administratively up: newly created and set up, or set up again. Sent once
    /// per transition, not for every change the kernel reports on an up link.
    LinkUp { ifindex: u32, name: String },
    /// Notifications were lost (the socket's receive buffer overran, `ENOBUFS`): dump
    /// addresses and links again and act on the difference.
    Resync,
}

/// Why an address was not added.
#[derive(Debug, thiserror::Error)]
pub enum AddError {
    /// The address is already on the host (on `ifindex`), whoever put it there; `ours` says
    /// whether it carries our tag. Never added twice: a second owner on one host would make
    /// removing it take the other's away.
    #[error("{ip} is already configured on interface {ifindex}{}", if *.ours { " (by us)" } else { "" })]
    Exists {
        ip: Ipv4Addr,
        ifindex: u32,
        ours: bool,
    },
    #[error("no interface with index {0}")]
    NoSuchInterface(u32),
    #[error("invalid address {ip}/{prefix_len}: {why}")]
    Invalid {
        ip: Ipv4Addr,
        prefix_len: u8,
        why: &'static str,
    },
    #[error("netlink: {0}")]
    Io(#[from] io::Error),
}

/// Why an address was not removed.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    #[error("{ip}/{prefix_len} is not configured on interface {ifindex}")]
    NotFound {
        ifindex: u32,
        ip: Ipv4Addr,
        prefix_len: u8,
    },
    /// The address is there but without our tag: someone else added it.
    #[error("{ip}/{prefix_len} on interface {ifindex} was not added by us; left alone")]
    NotOurs {
        ifindex: u32,
        ip: Ipv4Addr,
        prefix_len: u8,
    },
    /// The address is the primary of its subnet and the interface does not promote
    /// secondaries, so the kernel would delete these with it (ours or not). Remove them first,
    /// set `net.ipv4.conf.IFACE.promote_secondaries=1`, or add addresses as /32.
    #[error("removing {ip} would make the kernel remove the secondaries {others:?} with it")]
    WouldTakeSecondaries { ip: Ipv4Addr, others: Vec<Ipv4Addr> },
    #[error("invalid address {ip}/{prefix_len}: {why}")]
    Invalid {
        ip: Ipv4Addr,
        prefix_len: u8,
        why: &'static str,
    },
    #[error("netlink: {0}")]
    Io(#[from] io::Error),
}

/// Checks what the kernel would otherwise reject with a less telling error, or take and
/// misuse (a network or broadcast address as a host address).
fn validate(ip: Ipv4Addr, prefix_len: u8) -> Result<(), &'static str> {
    if prefix_len > 32 {
        return Err("prefix length above 32");
    }
    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() {
        return Err("not a unicast host address");
    }
    if prefix_len <= 30 {
        let host_bits = u32::MAX >> prefix_len;
        let host = u32::from(ip) & host_bits;
        if host == 0 || host == host_bits {
            return Err("the network or broadcast address of its prefix");
        }
    }
    Ok(())
}

/// The subnet `ip/prefix_len` belongs to, as a number (0 for /0).
fn network(ip: Ipv4Addr, prefix_len: u8) -> u32 {
    let mask = u32::MAX
        .checked_shl(32 - u32::from(prefix_len.min(32)))
        .unwrap_or(0);
    u32::from(ip) & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_fit_the_kernel_limit() {
        assert_eq!(our_label("eth0"), "eth0:dd");
        assert_eq!(our_label("enp0s31f6"), "enp0s31f6:dd");
        assert_eq!(our_label("abcdefghijkl"), "abcdefghijkl:dd");
        assert_eq!(our_label("abcdefghijklmno"), "abcdefghijkl:dd");
        assert_eq!(our_label(""), ":dd");
        // A multi-byte character across the cut is dropped whole.
        let name = "abcdefghijkä";
        assert_eq!(name.len(), 13);
        assert_eq!(our_label(name), "abcdefghijk:dd");
        for name in ["a", "ab", "abcdefghijklmnop", "ääääääää"] {
            assert!(our_label(name).len() <= MAX_LABEL, "{name}");
        }
    }

    #[test]
    fn host_addresses_only() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert!(validate(ip("10.0.0.5"), 24).is_ok());
        assert!(validate(ip("10.0.0.5"), 32).is_ok());
        assert!(validate(ip("10.0.0.0"), 31).is_ok());
        assert!(validate(ip("10.0.0.1"), 31).is_ok());
        assert!(validate(ip("10.0.0.5"), 33).is_err());
        assert!(validate(ip("10.0.0.0"), 24).is_err());
        assert!(validate(ip("10.0.0.255"), 24).is_err());
        assert!(validate(ip("0.0.0.0"), 32).is_err());
        assert!(validate(ip("255.255.255.255"), 32).is_err());
        assert!(validate(ip("224.0.0.1"), 32).is_err());
        assert!(validate(ip("127.0.0.2"), 8).is_err());
        assert!(validate(ip("10.0.0.5"), 0).is_ok());
    }

    #[test]
    fn networks() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(network(ip("10.1.2.3"), 24), u32::from(ip("10.1.2.0")));
        assert_eq!(network(ip("10.1.2.3"), 32), u32::from(ip("10.1.2.3")));
        assert_eq!(network(ip("10.1.2.3"), 0), 0);
        assert_eq!(network(ip("10.1.2.3"), 200), u32::from(ip("10.1.2.3")));
    }
}

//! DHCPv4 packets: requests in through a zero-copy option walk, replies out through a small
//! encoder, both our own.
//!
//! A general DHCP crate costs more than it gives here: dhcproto's decoder is an option walk
//! we need 40 lines for, but it links hickory-proto, idna and the ICU normalisation tables
//! (about 200 KB of a router binary, docs/footprint.md); its encoder writes options in code
//! order, while RFC 2132 and clients with small buffers want the order of the parameter
//! request list. The tests and fuzzers still read every reply back with dhcproto, an
//! independent decoder. Replies are laid out here: the fixed BOOTP header, the magic cookie,
//! options in the order the caller gives, END, padding to the 300-byte BOOTP minimum.

use std::net::Ipv4Addr;

use std::borrow::Cow;

use super::options::*;

/// DHCP message types (option 53).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum MessageType {
    Discover = 1,
    Offer = 2,
    Request = 3,
    Decline = 4,
    Ack = 5,
    Nak = 6,
    Release = 7,
    Inform = 8,
}

impl MessageType {
    fn from_u8(v: u8) -> Option<Self> {
        use MessageType::*;
        Some(match v {
            1 => Discover,
            2 => Offer,
            3 => Request,
            4 => Decline,
            5 => Ack,
            6 => Nak,
            7 => Release,
            8 => Inform,
            _ => return None,
        })
    }
}

/// Why a datagram on port 67 was not a request we can act on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("shorter than the 240-byte BOOTP header and cookie")]
    Short,
    #[error("not a BOOTREQUEST")]
    NotRequest,
    #[error("no DHCP magic cookie")]
    NoCookie,
    #[error("no or unknown DHCP message type")]
    NoMessageType,
}

/// The parts of a client's message the server uses, owned, so a request can wait for a
/// forwarded answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub msg_type: MessageType,
    pub htype: u8,
    pub hlen: u8,
    pub hops: u8,
    pub xid: u32,
    pub flags: u16,
    pub ciaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub chaddr: [u8; 16],
    pub requested_ip: Option<Ipv4Addr>,
    pub server_id: Option<Ipv4Addr>,
    pub parameter_list: Vec<u8>,
    pub client_id: Option<Vec<u8>>,
    pub hostname: Option<String>,
    pub max_size: Option<u16>,
    pub relay_info: Option<Vec<u8>>,
}

pub const BROADCAST_FLAG: u16 = 0x8000;
const MIN_LEN: usize = 240;
const MIN_REPLY: usize = 300;
const COOKIE: [u8; 4] = [99, 130, 83, 99];

impl Request {
    /// Hardware address bytes (at most 16, whatever `hlen` claims).
    pub fn hwaddr(&self) -> &[u8] {
        &self.chaddr[..usize::from(self.hlen.min(16))]
    }

    /// `aa:bb:cc:dd:ee:ff` for logs, hooks and the lease list.
    pub fn mac_text(&self) -> String {
        mac_text(&self.chaddr, self.hlen)
    }

    pub fn broadcast(&self) -> bool {
        self.flags & BROADCAST_FLAG != 0
    }

    pub fn parse(buf: &[u8]) -> Result<Request, ParseError> {
        if buf.len() < MIN_LEN {
            return Err(ParseError::Short);
        }
        if buf[0] != 1 {
            return Err(ParseError::NotRequest);
        }
        if buf[236..240] != COOKIE {
            return Err(ParseError::NoCookie);
        }
        let ip = |o: usize| Ipv4Addr::new(buf[o], buf[o + 1], buf[o + 2], buf[o + 3]);
        let mut chaddr = [0u8; 16];
        chaddr.copy_from_slice(&buf[28..44]);
        let mut req = Request {
            msg_type: MessageType::Discover,
            htype: buf[1],
            hlen: buf[2],
            hops: buf[3],
            xid: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
            flags: u16::from_be_bytes([buf[10], buf[11]]),
            ciaddr: ip(12),
            giaddr: ip(24),
            chaddr,
            requested_ip: None,
            server_id: None,
            parameter_list: Vec::new(),
            client_id: None,
            hostname: None,
            max_size: None,
            relay_info: None,
        };
        let mut msg_type = None;
        for (code, data) in Options::new(&buf[240..]) {
            let data = &*data;
            let as_ip = || <[u8; 4]>::try_from(data).ok().map(Ipv4Addr::from);
            match code {
                MESSAGE_TYPE => msg_type = data.first().copied().and_then(MessageType::from_u8),
                REQUESTED_IP => req.requested_ip = as_ip(),
                SERVER_ID => req.server_id = as_ip(),
                PARAMETER_LIST => req.parameter_list = data.to_vec(),
                CLIENT_ID if !data.is_empty() => req.client_id = Some(data.to_vec()),
                HOSTNAME => req.hostname = Some(String::from_utf8_lossy(data).into_owned()),
                MAX_MESSAGE_SIZE => {
                    req.max_size = <[u8; 2]>::try_from(data).ok().map(u16::from_be_bytes)
                }
                RELAY_AGENT_INFO => req.relay_info = Some(data.to_vec()),
                _ => {}
            }
        }
        req.msg_type = msg_type.ok_or(ParseError::NoMessageType)?;
        Ok(req)
    }
}

const PAD: u8 = 0;
const END: u8 = 255;

/// The options after the magic cookie: PAD skipped, END or a truncated option ends the walk,
/// and adjacent parts of one option are joined (RFC 3396), exactly as dhcproto reads them
/// (a property test compares the two).
struct Options<'a> {
    rest: &'a [u8],
}

impl<'a> Options<'a> {
    fn new(rest: &'a [u8]) -> Self {
        Options { rest }
    }

    /// One code-length-data part, if the next one is whole.
    fn part(&mut self) -> Option<(u8, &'a [u8])> {
        loop {
            let (&code, tail) = self.rest.split_first()?;
            match code {
                PAD => self.rest = tail,
                END => return None,
                _ => {
                    let (&len, tail) = tail.split_first()?;
                    let data = tail.get(..usize::from(len))?;
                    self.rest = &tail[usize::from(len)..];
                    return Some((code, data));
                }
            }
        }
    }
}

impl<'a> Iterator for Options<'a> {
    type Item = (u8, Cow<'a, [u8]>);

    fn next(&mut self) -> Option<Self::Item> {
        let (code, first) = match self.part() {
            Some(p) => p,
            None => {
                self.rest = &[];
                return None;
            }
        };
        let mut data = Cow::Borrowed(first);
        while self.rest.first() == Some(&code) {
            match self.part() {
                Some((_, more)) => data.to_mut().extend_from_slice(more),
                // A truncated continuation spoils the whole option (as in dhcproto).
                None => {
                    self.rest = &[];
                    return None;
                }
            }
        }
        Some((code, data))
    }
}

pub fn mac_text(chaddr: &[u8; 16], hlen: u8) -> String {
    let n = usize::from(hlen.clamp(1, 16));
    chaddr[..n]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Builds a reply to `req`. `options` are written in the order given, each at most once
/// (later duplicates are skipped); option 53 goes first and the relay agent information
/// (RFC 3046) is echoed last. Optional options that would exceed the client's maximum
/// message size are left out.
pub fn build_reply(
    req: &Request,
    msg_type: MessageType,
    yiaddr: Ipv4Addr,
    options: &[(u8, &[u8])],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(MIN_REPLY + 64);
    out.push(2); // BOOTREPLY
    out.push(req.htype);
    out.push(req.hlen);
    out.push(0); // hops
    out.extend_from_slice(&req.xid.to_be_bytes());
    out.extend_from_slice(&[0, 0]); // secs
    let mut flags = req.flags;
    if msg_type == MessageType::Nak && req.giaddr != Ipv4Addr::UNSPECIFIED {
        // RFC 2131 §4.3.2: a relay must broadcast a NAK to the client.
        flags |= BROADCAST_FLAG;
    }
    out.extend_from_slice(&flags.to_be_bytes());
    let ciaddr = match msg_type {
        MessageType::Nak | MessageType::Offer => Ipv4Addr::UNSPECIFIED,
        _ => req.ciaddr,
    };
    out.extend_from_slice(&ciaddr.octets());
    out.extend_from_slice(&yiaddr.octets());
    out.extend_from_slice(&[0; 4]); // siaddr
    out.extend_from_slice(&req.giaddr.octets());
    out.extend_from_slice(&req.chaddr);
    out.extend_from_slice(&[0; 64 + 128]); // sname, file
    out.extend_from_slice(&COOKIE);
    out.extend_from_slice(&[MESSAGE_TYPE, 1, msg_type as u8]);

    // Room for options: the client's limit (at least the 576 every client must accept),
    // minus IP and UDP headers, minus END and the relay option we must echo.
    let limit = usize::from(req.max_size.unwrap_or(576).max(576)) - 28;
    let relay_len = req.relay_info.as_ref().map_or(0, |r| 2 + r.len().min(255));
    let mut written = [false; 256];
    written[usize::from(MESSAGE_TYPE)] = true;
    for &(code, data) in options {
        let c = usize::from(code);
        if written[c] || code == 0 || code == 255 {
            continue;
        }
        let data = &data[..data.len().min(255)];
        if out.len() + 2 + data.len() + relay_len + 1 > limit {
            continue;
        }
        written[c] = true;
        out.push(code);
        out.push(data.len() as u8);
        out.extend_from_slice(data);
    }
    if let Some(r) = &req.relay_info {
        let r = &r[..r.len().min(255)];
        out.push(RELAY_AGENT_INFO);
        out.push(r.len() as u8);
        out.extend_from_slice(r);
    }
    out.push(255);
    if out.len() < MIN_REPLY {
        out.resize(MIN_REPLY, 0);
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::Just;

    pub use crate::testing::client_message as message;

    #[test]
    fn parse_request_fields() {
        let buf = message(
            3,
            9,
            &[
                (50, &[10, 0, 0, 5]),
                (54, &[10, 0, 0, 1]),
                (55, &[1, 3, 6, 51]),
                (61, &[1, 2, 0, 0, 0, 0, 9]),
                (12, b"laptop"),
            ],
        );
        let r = Request::parse(&buf).unwrap();
        assert_eq!(r.msg_type, MessageType::Request);
        assert_eq!(r.xid, 0x1234_5678);
        assert_eq!(r.requested_ip, Some(Ipv4Addr::new(10, 0, 0, 5)));
        assert_eq!(r.server_id, Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(r.parameter_list, vec![1, 3, 6, 51]);
        assert_eq!(r.hostname.as_deref(), Some("laptop"));
        assert_eq!(r.mac_text(), "02:00:00:00:00:09");
    }

    #[test]
    fn pad_bytes_and_huge_hlen_are_harmless() {
        // The C daemon dies on 64 PADs before END (reference §4.1).
        let mut buf = message(1, 1, &[]);
        buf.pop();
        buf.extend_from_slice(&[0; 64]);
        buf.push(255);
        buf[2] = 255;
        let r = Request::parse(&buf).unwrap();
        assert_eq!(r.msg_type, MessageType::Discover);
        assert_eq!(r.hwaddr().len(), 16);
    }

    #[test]
    fn rejections() {
        assert_eq!(Request::parse(&[1; 100]), Err(ParseError::Short));
        let mut b = message(1, 1, &[]);
        b[0] = 2;
        assert_eq!(Request::parse(&b), Err(ParseError::NotRequest));
        let mut b = message(1, 1, &[]);
        b[237] = 0;
        assert_eq!(Request::parse(&b), Err(ParseError::NoCookie));
        let b = message(99, 1, &[]);
        assert_eq!(Request::parse(&b), Err(ParseError::NoMessageType));
    }

    #[test]
    fn reply_layout() {
        let req = Request::parse(&message(1, 1, &[(82, &[1, 2, 3, 4])])).unwrap();
        let r = build_reply(
            &req,
            MessageType::Offer,
            Ipv4Addr::new(10, 0, 0, 7),
            &[
                (54, &[10, 0, 0, 1]),
                (1, &[255, 255, 255, 0]),
                (54, &[9, 9, 9, 9]),
            ],
        );
        assert_eq!(r.len(), 300);
        assert_eq!(r[0], 2);
        assert_eq!(&r[16..20], &[10, 0, 0, 7]);
        assert_eq!(&r[240..243], &[53, 1, 2]);
        assert_eq!(&r[243..249], &[54, 4, 10, 0, 0, 1]);
        assert_eq!(&r[249..255], &[1, 4, 255, 255, 255, 0]);
        // The duplicate 54 is skipped, the relay option echoed, then END.
        assert_eq!(&r[255..262], &[82, 4, 1, 2, 3, 4, 255]);
        // dhcproto reads it back.
        let m = dhcproto::v4::borrowed::Message::new(&r).unwrap();
        assert_eq!(m.opts().count(), 4);
    }

    proptest::proptest! {
        /// Our option walk reads exactly what dhcproto's decoder reads, on option areas of
        /// random parts (PAD, END, truncated and repeated codes included).
        #[test]
        fn option_walk_matches_dhcproto(
            parts in proptest::collection::vec(
                (proptest::prop_oneof![Just(0u8), Just(255u8), 1u8..6, Just(53u8), proptest::num::u8::ANY],
                 proptest::collection::vec(proptest::num::u8::ANY, 0..6),
                 proptest::bool::ANY),
                0..12,
            ),
            cut in 0usize..80,
        ) {
            let mut area = Vec::new();
            for (code, data, short) in &parts {
                area.push(*code);
                if *code != 0 && *code != 255 {
                    area.push(data.len() as u8 + u8::from(*short));
                    area.extend_from_slice(data);
                }
            }
            area.truncate(area.len().saturating_sub(cut % 3));
            let mut buf = vec![0u8; 236];
            buf[0] = 1;
            buf.extend_from_slice(&COOKIE);
            buf.extend_from_slice(&area);
            let ours: Vec<(u8, Vec<u8>)> =
                Options::new(&buf[240..]).map(|(c, d)| (c, d.into_owned())).collect();
            let theirs: Vec<(u8, Vec<u8>)> = dhcproto::v4::borrowed::Message::new(&buf)
                .unwrap()
                .opts()
                .map(|o| (u8::from(o.code()), o.data().to_vec()))
                .collect();
            proptest::prop_assert_eq!(ours, theirs);
        }
    }
}

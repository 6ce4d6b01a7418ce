//! The store's file format: a fixed header, then framed records.
//!
//! ```text
//! header (32 bytes): magic "DDHCPSTO" | version u16 | kind u8 | prefix len u8 |
//!                    network u32 | block pow u8 | 3 zero bytes | generation u64 |
//!                    crc32 of the 28 bytes before u32
//! record:            body length u32 | crc32 of body u32 | body (kind u8, fields)
//! ```
//!
//! All integers little-endian, times in milliseconds since the Unix epoch. The CRC per record
//! lets a reader tell where a torn write begins; the header binds the file to one network
//! and block size, so a store cannot be mixed into another range. Written by hand, like the
//! peer protocol: a few fixed layouts do not need a serialisation framework, and the layout
//! is the compatibility contract (documented in `docs/storage.md`).

use std::net::Ipv4Addr;

use crate::dhcp::leases::ClientKey;
use crate::persist::{Change, LeaseRecord};
use crate::range::ManagedRange;
use crate::time::Instant;

pub const MAGIC: [u8; 8] = *b"DDHCPSTO";
pub const VERSION: u16 = 1;
pub const HEADER_LEN: usize = 32;
/// Bytes before each record body.
pub const FRAME_LEN: usize = 8;
/// No record body is longer (a lease with a 256-byte client key and a 255-byte hostname is
/// about 560); a longer length field means the frame is damaged.
pub const MAX_BODY: usize = 1024;

const BLOCK_OWNED: u8 = 1;
const BLOCK_GONE: u8 = 2;
const ANNOUNCED: u8 = 3;
const LEASE: u8 = 4;
const LEASE_GONE: u8 = 5;
const OPTION: u8 = 6;
const BLOCK_HOLD: u8 = 7;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    Journal = 1,
    Snapshot = 2,
}

/// What a store file says about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: FileKind,
    pub network: Ipv4Addr,
    pub prefix_len: u8,
    pub block_pow: u8,
    pub generation: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("shorter than a header")]
    Short,
    #[error("not a ddhcpd store file")]
    Magic,
    #[error("store format version {0}, this ddhcpd reads version {VERSION}")]
    Version(u16),
    #[error("header checksum mismatch")]
    Crc,
}

impl Header {
    pub fn new(kind: FileKind, range: &ManagedRange, generation: u64) -> Self {
        Header {
            kind,
            network: range.prefix(),
            prefix_len: range.prefix_len(),
            block_pow: range.block_pow(),
            generation,
        }
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..8].copy_from_slice(&MAGIC);
        h[8..10].copy_from_slice(&VERSION.to_le_bytes());
        h[10] = self.kind as u8;
        h[11] = self.prefix_len;
        h[12..16].copy_from_slice(&u32::from(self.network).to_le_bytes());
        h[16] = self.block_pow;
        h[20..28].copy_from_slice(&self.generation.to_le_bytes());
        let crc = crc32fast::hash(&h[..28]);
        h[28..32].copy_from_slice(&crc.to_le_bytes());
        h
    }

    pub fn decode(b: &[u8]) -> Result<Header, HeaderError> {
        let h = b.get(..HEADER_LEN).ok_or(HeaderError::Short)?;
        if h[..8] != MAGIC {
            return Err(HeaderError::Magic);
        }
        if crc32fast::hash(&h[..28]) != u32::from_le_bytes(h[28..32].try_into().unwrap()) {
            return Err(HeaderError::Crc);
        }
        let version = u16::from_le_bytes([h[8], h[9]]);
        if version != VERSION {
            return Err(HeaderError::Version(version));
        }
        let kind = match h[10] {
            1 => FileKind::Journal,
            2 => FileKind::Snapshot,
            _ => return Err(HeaderError::Magic),
        };
        Ok(Header {
            kind,
            prefix_len: h[11],
            network: Ipv4Addr::from(u32::from_le_bytes(h[12..16].try_into().unwrap())),
            block_pow: h[16],
            generation: u64::from_le_bytes(h[20..28].try_into().unwrap()),
        })
    }

    /// "10.0.0.0/16 in blocks of 4 addresses (-b 2)", for error messages.
    pub fn describe(&self) -> String {
        format!(
            "{}/{} in blocks of {} addresses (-b {})",
            self.network,
            self.prefix_len,
            1u32 << self.block_pow.min(31),
            self.block_pow
        )
    }

    pub fn matches(&self, range: &ManagedRange) -> bool {
        self.network == range.prefix()
            && self.prefix_len == range.prefix_len()
            && self.block_pow == range.block_pow()
    }
}

/// Appends one framed record. `wall` turns core instants into Unix milliseconds.
pub fn encode(change: &Change, wall: impl Fn(Instant) -> u64, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_LEN]);
    match change {
        Change::BlockOwned { block, since } => {
            out.push(BLOCK_OWNED);
            out.extend_from_slice(&block.to_le_bytes());
            out.extend_from_slice(&wall(*since).to_le_bytes());
        }
        Change::BlockGone { block } => {
            out.push(BLOCK_GONE);
            out.extend_from_slice(&block.to_le_bytes());
        }
        Change::BlockHold { block, until } => {
            out.push(BLOCK_HOLD);
            out.extend_from_slice(&block.to_le_bytes());
            out.extend_from_slice(&wall(*until).to_le_bytes());
        }
        Change::Announced { at, ttl } => {
            out.push(ANNOUNCED);
            out.extend_from_slice(&wall(*at).to_le_bytes());
            out.extend_from_slice(&ttl.to_le_bytes());
        }
        Change::Lease(l) => {
            out.push(LEASE);
            out.extend_from_slice(&u32::from(l.ip).to_le_bytes());
            out.extend_from_slice(&wall(l.until).to_le_bytes());
            out.push(u8::from(l.declined));
            let hw = trimmed(&l.chaddr);
            out.push(hw.len() as u8);
            out.extend_from_slice(hw);
            let client = l.client.as_ref().map_or(&[][..], |c| c.as_bytes());
            let client = &client[..client.len().min(u16::MAX as usize)];
            out.extend_from_slice(&(client.len() as u16).to_le_bytes());
            out.extend_from_slice(client);
            let host = l.hostname.as_deref().map_or(&[][..], str::as_bytes);
            let host = &host[..host.len().min(255)];
            out.push(host.len() as u8);
            out.extend_from_slice(host);
        }
        Change::LeaseGone(ip) => {
            out.push(LEASE_GONE);
            out.extend_from_slice(&u32::from(*ip).to_le_bytes());
        }
        Change::Option { code, payload } => {
            out.push(OPTION);
            out.push(*code);
            match payload {
                Some(p) => {
                    let p = &p[..p.len().min(255)];
                    out.push(1);
                    out.push(p.len() as u8);
                    out.extend_from_slice(p);
                }
                None => out.extend_from_slice(&[0, 0]),
            }
        }
    }
    let body_len = (out.len() - start - FRAME_LEN) as u32;
    let crc = crc32fast::hash(&out[start + FRAME_LEN..]);
    out[start..start + 4].copy_from_slice(&body_len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The hardware address without trailing zero padding (chaddr is 16 bytes, Ethernet uses 6).
fn trimmed(chaddr: &[u8; 16]) -> &[u8] {
    let n = chaddr.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    &chaddr[..n]
}

/// Why a frame could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("record cut short")]
    Short,
    #[error("record length {0} out of bounds")]
    Length(usize),
    #[error("record checksum mismatch")]
    Crc,
    /// The checksum holds, so the bytes are as written, yet they make no sense to us.
    #[error("record of unknown kind or layout ({0})")]
    Body(&'static str),
}

impl FrameError {
    /// Whether the damage is what an interrupted append leaves behind (as opposed to a
    /// record we cannot understand).
    pub fn is_torn(&self) -> bool {
        !matches!(self, FrameError::Body(_))
    }
}

/// Reads the record starting at `data[0]`: the change (times in Unix milliseconds, as
/// [`Instant`]s from the epoch) and the bytes it took.
pub fn decode(data: &[u8]) -> Result<(Change, usize), FrameError> {
    let frame = data.get(..FRAME_LEN).ok_or(FrameError::Short)?;
    let len = u32::from_le_bytes(frame[..4].try_into().unwrap()) as usize;
    if len == 0 || len > MAX_BODY {
        return Err(FrameError::Length(len));
    }
    let crc = u32::from_le_bytes(frame[4..8].try_into().unwrap());
    let body = data
        .get(FRAME_LEN..FRAME_LEN + len)
        .ok_or(FrameError::Short)?;
    if crc32fast::hash(body) != crc {
        return Err(FrameError::Crc);
    }
    let change = decode_body(body).ok_or(FrameError::Body("bad body"))?;
    Ok((change, FRAME_LEN + len))
}

/// A cursor over a body; `None` on running out, so no read can panic.
struct Body<'a>(&'a [u8]);

impl<'a> Body<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    }
    fn time(&mut self) -> Option<Instant> {
        self.take(8)
            .map(|b| Instant::from_millis(u64::from_le_bytes(b.try_into().unwrap())))
    }
}

fn decode_body(body: &[u8]) -> Option<Change> {
    let mut b = Body(body);
    let change = match b.u8()? {
        BLOCK_OWNED => Change::BlockOwned {
            block: b.u32()?,
            since: b.time()?,
        },
        BLOCK_GONE => Change::BlockGone { block: b.u32()? },
        BLOCK_HOLD => Change::BlockHold {
            block: b.u32()?,
            until: b.time()?,
        },
        ANNOUNCED => Change::Announced {
            at: b.time()?,
            ttl: b.u16()?,
        },
        LEASE => {
            let ip = Ipv4Addr::from(b.u32()?);
            let until = b.time()?;
            let declined = b.u8()? & 1 == 1;
            let hw_len = b.u8()? as usize;
            let mut chaddr = [0u8; 16];
            chaddr.get_mut(..hw_len)?.copy_from_slice(b.take(hw_len)?);
            let client_len = b.u16()? as usize;
            let client = b.take(client_len)?;
            let client = (!client.is_empty()).then(|| ClientKey::from_slice(client));
            let host_len = b.u8()? as usize;
            let host = b.take(host_len)?;
            let hostname = if host.is_empty() {
                None
            } else {
                Some(String::from_utf8_lossy(host).into())
            };
            Change::Lease(LeaseRecord {
                ip,
                until,
                declined,
                client,
                chaddr,
                hostname,
            })
        }
        LEASE_GONE => Change::LeaseGone(Ipv4Addr::from(b.u32()?)),
        OPTION => {
            let code = b.u8()?;
            let present = b.u8()?;
            let len = b.u8()? as usize;
            let payload = b.take(len)?;
            Change::Option {
                code,
                payload: (present == 1).then(|| payload.to_vec()),
            }
        }
        _ => return None,
    };
    b.0.is_empty().then_some(change)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease() -> Change {
        let mut chaddr = [0u8; 16];
        chaddr[..6].copy_from_slice(&[2, 0, 0, 0, 0, 7]);
        Change::Lease(LeaseRecord {
            ip: Ipv4Addr::new(10, 0, 1, 2),
            until: Instant::from_millis(1_700_000_300_000),
            declined: false,
            client: Some(ClientKey::from_slice(&[0, 1, 2, 0, 0, 0, 0, 7])),
            chaddr,
            hostname: Some("laptop".into()),
        })
    }

    fn all() -> Vec<Change> {
        vec![
            Change::BlockOwned {
                block: 7,
                since: Instant::from_millis(1_700_000_000_000),
            },
            Change::BlockGone { block: 9 },
            Change::BlockHold {
                block: 7,
                until: Instant::from_millis(1_700_000_600_000),
            },
            Change::Announced {
                at: Instant::from_millis(1_700_000_100_000),
                ttl: 300,
            },
            lease(),
            Change::LeaseGone(Ipv4Addr::new(10, 0, 1, 3)),
            Change::Option {
                code: 6,
                payload: Some(vec![10, 0, 0, 1]),
            },
            Change::Option {
                code: 3,
                payload: None,
            },
        ]
    }

    #[test]
    fn records_round_trip() {
        let mut buf = Vec::new();
        for c in all() {
            encode(&c, |t| t.as_millis(), &mut buf);
        }
        let mut off = 0;
        let mut back = Vec::new();
        while off < buf.len() {
            let (c, n) = decode(&buf[off..]).unwrap();
            back.push(c);
            off += n;
        }
        assert_eq!(back, all());
    }

    /// The layout is a compatibility contract: these bytes must keep decoding.
    #[test]
    fn golden_lease_bytes() {
        let mut buf = Vec::new();
        encode(&lease(), |t| t.as_millis(), &mut buf);
        let body: &[u8] = &[
            4, // lease
            2, 1, 0, 10, // 10.0.1.2
            0xe0, 0xfb, 0xe9, 0xcf, 0x8b, 0x01, 0, 0, // 1_700_000_300_000 ms
            0, // not declined
            6, 2, 0, 0, 0, 0, 7, // chaddr
            8, 0, 0, 1, 2, 0, 0, 0, 0, 7, // client key
            6, b'l', b'a', b'p', b't', b'o', b'p',
        ];
        assert_eq!(&buf[8..], body);
        assert_eq!(buf[..4], (body.len() as u32).to_le_bytes());
        assert_eq!(buf[4..8], crc32fast::hash(body).to_le_bytes());
    }

    #[test]
    fn every_truncation_and_bit_flip_is_detected() {
        let mut buf = Vec::new();
        encode(&lease(), |t| t.as_millis(), &mut buf);
        for cut in 0..buf.len() {
            assert!(decode(&buf[..cut]).unwrap_err().is_torn(), "cut at {cut}");
        }
        for i in 0..buf.len() * 8 {
            let mut b = buf.clone();
            b[i / 8] ^= 1 << (i % 8);
            assert!(decode(&b).is_err(), "bit {i}");
        }
    }

    proptest::proptest! {
        /// A store file is input too: no bytes may panic the reader.
        #[test]
        fn decode_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = decode(&data);
            let _ = Header::decode(&data);
        }

        /// Well-framed garbage (a valid CRC over random bytes) is refused, not misread.
        #[test]
        fn framed_garbage_never_panics(body in proptest::collection::vec(proptest::num::u8::ANY, 1..600)) {
            let mut buf = (body.len() as u32).to_le_bytes().to_vec();
            buf.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
            buf.extend_from_slice(&body);
            if let Ok((_, n)) = decode(&buf) {
                proptest::prop_assert_eq!(n, buf.len());
            }
        }
    }

    #[test]
    fn header_round_trip_and_checks() {
        let range = ManagedRange::new(Ipv4Addr::new(10, 64, 0, 0), 10, 4).unwrap();
        let h = Header::new(FileKind::Journal, &range, 42);
        let bytes = h.encode();
        assert_eq!(Header::decode(&bytes), Ok(h));
        assert!(h.matches(&range));
        assert_eq!(
            h.describe(),
            "10.64.0.0/10 in blocks of 16 addresses (-b 4)"
        );
        let mut bad = bytes;
        bad[12] ^= 1;
        assert_eq!(Header::decode(&bad), Err(HeaderError::Crc));
        assert_eq!(Header::decode(&bytes[..31]), Err(HeaderError::Short));
        assert_eq!(Header::decode(&[0u8; 32]), Err(HeaderError::Magic));
    }
}

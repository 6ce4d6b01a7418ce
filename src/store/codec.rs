//! The store's file format: a header, then framed records.
//!
//! ```text
//! header, version 2:
//!   fixed (32 bytes): magic "DDHCPSTO" | version u16 (2) | kind u8 | 1 zero byte |
//!                     table length u32 | 4 zero bytes | generation u64 |
//!                     crc32 of the 28 bytes before u32
//!   pool table:       pool count u8 | per pool: name length u8 (1-32) | name (UTF-8) |
//!                     network u32 | prefix len u8 | block pow u8
//!   table crc:        crc32 of the pool table (its "table length" bytes) u32
//! record:             body length u32 | crc32 of body u32 |
//!                     body (kind u8, pool u8 = index into the file's table, fields)
//!
//! header, version 1 (before pools; read to migrate, never written):
//!   32 bytes: magic "DDHCPSTO" | version u16 (1) | kind u8 | prefix len u8 | network u32 |
//!             block pow u8 | 3 zero bytes | generation u64 | crc32 of the 28 bytes before u32
//! record:     as in version 2, but the body has no pool byte (every record is the one range's)
//! ```
//!
//! All integers little-endian, times in milliseconds since the Unix epoch. The CRC per record
//! lets a reader tell where a torn write begins; the header binds the file to a set of named
//! pools, each with its network and block size, so a pool's state cannot be mixed into
//! another range. The table is in the header rather than in records so that a record costs
//! one byte for its pool, and a file says up front which pools it may hold. The generation
//! sits at the same offset in both versions. Written by hand, like the peer protocol: a few
//! fixed layouts do not need a serialisation framework, and the layout is the compatibility
//! contract (documented in `docs/storage.md`).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use super::StorePool;
use crate::dhcp::leases::ClientKey;
use crate::persist::{Change, LeaseRecord, LocalHeld};
use crate::range::ManagedRange;
use crate::time::Instant;

pub const MAGIC: [u8; 8] = *b"DDHCPSTO";
/// The version this code writes.
pub const VERSION: u16 = 2;
/// Length of the fixed part of a header, the whole header in version 1.
pub const FIXED_LEN: usize = 32;
/// Bytes before each record body.
pub const FRAME_LEN: usize = 8;
/// No record body is longer (a lease with a 256-byte client key and a 255-byte hostname is
/// about 560); a longer length field means the frame is damaged.
pub const MAX_BODY: usize = 1024;
/// Pools a file can name: the pool index in a record is one byte.
pub const MAX_POOLS: usize = 255;
/// Longest pool name, in bytes: names go into log lines and error messages.
pub const MAX_POOL_NAME: usize = 32;
/// Longest pool table: every pool with the longest name.
const MAX_TABLE: usize = 1 + MAX_POOLS * (1 + MAX_POOL_NAME + 6);

const BLOCK_OWNED: u8 = 1;
const BLOCK_GONE: u8 = 2;
const ANNOUNCED: u8 = 3;
const LEASE: u8 = 4;
const LEASE_GONE: u8 = 5;
const OPTION: u8 = 6;
const BLOCK_HOLD: u8 = 7;
const LOCAL: u8 = 8;
const LOCAL_GONE: u8 = 9;
const ALLOCATED: u8 = 10;
const ALLOC_GONE: u8 = 11;
/// A change of another node's block that we hold a replica of: origin id, block, and the
/// change's own body (kind, pool, fields) after them.
const REPLICA: u8 = 12;

/// Every record kind this code reads. Version 1 files hold kinds 1-7; kinds 8 and 9 came
/// with the local service and need no new version: a reader that does not know a kind
/// refuses the file (see [`FrameError::UnknownKind`]), it never skips the record.
const KINDS: [u8; 12] = [
    BLOCK_OWNED,
    BLOCK_GONE,
    ANNOUNCED,
    LEASE,
    LEASE_GONE,
    OPTION,
    BLOCK_HOLD,
    LOCAL,
    LOCAL_GONE,
    ALLOCATED,
    ALLOC_GONE,
    REPLICA,
];

/// The `held` byte of a [`LOCAL`] record.
const HELD_STANDBY: u8 = 0;
const HELD_ACTIVE: u8 = 1;
const HELD_MARKED: u8 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    Journal = 1,
    Snapshot = 2,
}

/// How a file's records are laid out, from its header's version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One range, no pool byte.
    V1,
    /// A pool byte after the kind.
    V2,
}

/// A range as a file states it. Not a [`ManagedRange`]: a file may state what no longer
/// validates, and it still has to be named in the error that refuses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredRange {
    pub network: Ipv4Addr,
    pub prefix_len: u8,
    pub block_pow: u8,
}

impl StoredRange {
    pub fn of(range: &ManagedRange) -> Self {
        StoredRange {
            network: range.prefix(),
            prefix_len: range.prefix_len(),
            block_pow: range.block_pow(),
        }
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
}

/// One pool of a file's table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableEntry {
    pub name: String,
    pub range: StoredRange,
}

/// The table a file for these pools carries, in their order (a record's pool byte is the
/// index into the configuration, so appends need no lookup).
pub fn table(pools: &[StorePool]) -> Vec<TableEntry> {
    pools
        .iter()
        .map(|p| TableEntry {
            name: p.name.clone(),
            range: StoredRange::of(&p.range),
        })
        .collect()
}

/// Why a set of pools cannot be written into a table; the reader refuses the same.
pub fn check_table(pools: &[TableEntry]) -> Result<(), String> {
    if pools.len() > MAX_POOLS {
        return Err(format!(
            "{} pools, a store file holds at most {MAX_POOLS}",
            pools.len()
        ));
    }
    let mut names = BTreeSet::new();
    for p in pools {
        if p.name.is_empty() || p.name.len() > MAX_POOL_NAME {
            return Err(format!(
                "pool name '{}' is {} bytes long, it must be 1 to {MAX_POOL_NAME}",
                p.name,
                p.name.len()
            ));
        }
        if !names.insert(p.name.as_str()) {
            return Err(format!("pool name '{}' is given twice", p.name));
        }
    }
    Ok(())
}

/// Which pools a file is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pools {
    /// A version-1 file: one range, nameless.
    V1(StoredRange),
    /// A version-2 file's table; a record's pool byte indexes it.
    V2(Vec<TableEntry>),
}

/// What a store file says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: FileKind,
    pub generation: u64,
    pub pools: Pools,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("shorter than a header")]
    Short,
    #[error("not a ddhcpd store file")]
    Magic,
    #[error("store format version {0}, this ddhcpd reads versions 1 and {VERSION}")]
    Version(u16),
    #[error("header checksum mismatch")]
    Crc,
    /// The checksum holds, yet the pool table makes no sense.
    #[error("bad pool table ({0})")]
    Table(&'static str),
}

impl Header {
    /// A header of the current version for `pools` (checked with [`check_table`]).
    pub fn new(kind: FileKind, pools: &[StorePool], generation: u64) -> Self {
        Header {
            kind,
            generation,
            pools: Pools::V2(table(pools)),
        }
    }

    pub fn format(&self) -> Format {
        match self.pools {
            Pools::V1(_) => Format::V1,
            Pools::V2(_) => Format::V2,
        }
    }

    /// The header's bytes. A table that [`check_table`] refuses is cut to what fits, so
    /// the bytes still decode; the store never writes one.
    pub fn encode(&self) -> Vec<u8> {
        let mut h = vec![0u8; FIXED_LEN];
        h[..8].copy_from_slice(&MAGIC);
        h[10] = self.kind as u8;
        h[20..28].copy_from_slice(&self.generation.to_le_bytes());
        match &self.pools {
            Pools::V1(r) => {
                h[8..10].copy_from_slice(&1u16.to_le_bytes());
                h[11] = r.prefix_len;
                h[12..16].copy_from_slice(&u32::from(r.network).to_le_bytes());
                h[16] = r.block_pow;
            }
            Pools::V2(pools) => {
                h[8..10].copy_from_slice(&VERSION.to_le_bytes());
                let pools = &pools[..pools.len().min(MAX_POOLS)];
                h.push(pools.len() as u8);
                for p in pools {
                    let mut n = p.name.len().min(MAX_POOL_NAME);
                    while !p.name.is_char_boundary(n) {
                        n -= 1;
                    }
                    h.push(n as u8);
                    h.extend_from_slice(&p.name.as_bytes()[..n]);
                    h.extend_from_slice(&u32::from(p.range.network).to_le_bytes());
                    h.push(p.range.prefix_len);
                    h.push(p.range.block_pow);
                }
                let table_len = (h.len() - FIXED_LEN) as u32;
                h[12..16].copy_from_slice(&table_len.to_le_bytes());
                let crc = crc32fast::hash(&h[FIXED_LEN..]);
                h.extend_from_slice(&crc.to_le_bytes());
            }
        }
        let crc = crc32fast::hash(&h[..28]);
        h[28..32].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Reads the header at the start of `b`; returns it and its length (where the records
    /// begin).
    pub fn decode(b: &[u8]) -> Result<(Header, usize), HeaderError> {
        let h = b.get(..FIXED_LEN).ok_or(HeaderError::Short)?;
        if h[..8] != MAGIC {
            return Err(HeaderError::Magic);
        }
        if crc32fast::hash(&h[..28]) != le32(&h[28..32]) {
            return Err(HeaderError::Crc);
        }
        let version = u16::from_le_bytes([h[8], h[9]]);
        let kind = match h[10] {
            1 => FileKind::Journal,
            2 => FileKind::Snapshot,
            _ => return Err(HeaderError::Magic),
        };
        let generation = u64::from_le_bytes(h[20..28].try_into().unwrap_or_default());
        match version {
            1 => {
                let range = StoredRange {
                    prefix_len: h[11],
                    network: Ipv4Addr::from(le32(&h[12..16])),
                    block_pow: h[16],
                };
                let header = Header {
                    kind,
                    generation,
                    pools: Pools::V1(range),
                };
                Ok((header, FIXED_LEN))
            }
            VERSION => {
                let table_len = le32(&h[12..16]) as usize;
                if !(1..=MAX_TABLE).contains(&table_len) {
                    return Err(HeaderError::Table("length out of bounds"));
                }
                let end = FIXED_LEN + table_len;
                let table = b.get(FIXED_LEN..end).ok_or(HeaderError::Short)?;
                let crc = b.get(end..end + 4).ok_or(HeaderError::Short)?;
                if crc32fast::hash(table) != le32(crc) {
                    return Err(HeaderError::Crc);
                }
                let header = Header {
                    kind,
                    generation,
                    pools: Pools::V2(decode_table(table)?),
                };
                Ok((header, end + 4))
            }
            v => Err(HeaderError::Version(v)),
        }
    }
}

/// Whether `b` can be the start of a header that a crash cut short: all of it, if a header
/// is as long as it claims. A journal's header is synced before any record is appended, so
/// a file longer than its header with a damaged header is damage, not a torn write.
pub fn within_header(b: &[u8]) -> bool {
    if b.len() <= FIXED_LEN {
        return true;
    }
    let fixed = &b[..FIXED_LEN];
    let intact_v2 = fixed[..8] == MAGIC
        && crc32fast::hash(&fixed[..28]) == le32(&fixed[28..32])
        && u16::from_le_bytes([fixed[8], fixed[9]]) == VERSION;
    intact_v2 && b.len() <= FIXED_LEN + le32(&fixed[12..16]) as usize + 4
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b.try_into().unwrap_or_default())
}

fn decode_table(table: &[u8]) -> Result<Vec<TableEntry>, HeaderError> {
    let mut b = Body(table);
    let bad = HeaderError::Table;
    let count = b.u8().ok_or(bad("no pool count"))?;
    let mut pools = Vec::with_capacity(count.into());
    for _ in 0..count {
        let n = b.u8().ok_or(bad("cut short"))? as usize;
        let name = b.take(n).ok_or(bad("cut short"))?;
        let name = std::str::from_utf8(name).map_err(|_| bad("name not UTF-8"))?;
        let network = Ipv4Addr::from(b.u32().ok_or(bad("cut short"))?);
        let prefix_len = b.u8().ok_or(bad("cut short"))?;
        let block_pow = b.u8().ok_or(bad("cut short"))?;
        if prefix_len > 32 {
            return Err(bad("prefix length over 32"));
        }
        pools.push(TableEntry {
            name: name.into(),
            range: StoredRange {
                network,
                prefix_len,
                block_pow,
            },
        });
    }
    if !b.0.is_empty() {
        return Err(bad("bytes after the last pool"));
    }
    check_table(&pools).map_err(|_| bad("pool name empty, too long or given twice"))?;
    Ok(pools)
}

/// Appends one framed record (current version) of the pool at index `pool` of the file's
/// table. `wall` turns core instants into Unix milliseconds.
pub fn encode(pool: u8, change: &Change, wall: impl Fn(Instant) -> u64, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_LEN]);
    encode_body(pool, change, wall, out);
    let body_len = (out.len() - start - FRAME_LEN) as u32;
    let crc = crc32fast::hash(&out[start + FRAME_LEN..]);
    out[start..start + 4].copy_from_slice(&body_len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Appends the body of one record (kind, pool byte, fields), without the frame. Replication
/// (`crate::replica`) sends record bodies as they are: one layout for disk and peers, so a
/// replica is stored and read back by the same code as the node's own state.
pub fn encode_body(pool: u8, change: &Change, wall: impl Fn(Instant) -> u64, out: &mut Vec<u8>) {
    let kind = |out: &mut Vec<u8>, k: u8| out.extend_from_slice(&[k, pool]);
    match change {
        Change::BlockOwned { block, since } => {
            kind(out, BLOCK_OWNED);
            out.extend_from_slice(&block.to_le_bytes());
            out.extend_from_slice(&wall(*since).to_le_bytes());
        }
        Change::BlockGone { block } => {
            kind(out, BLOCK_GONE);
            out.extend_from_slice(&block.to_le_bytes());
        }
        Change::BlockHold { block, until } => {
            kind(out, BLOCK_HOLD);
            out.extend_from_slice(&block.to_le_bytes());
            out.extend_from_slice(&wall(*until).to_le_bytes());
        }
        Change::Announced { at, ttl } => {
            kind(out, ANNOUNCED);
            out.extend_from_slice(&wall(*at).to_le_bytes());
            out.extend_from_slice(&ttl.to_le_bytes());
        }
        Change::Lease(l) => {
            kind(out, LEASE);
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
            kind(out, LEASE_GONE);
            out.extend_from_slice(&u32::from(*ip).to_le_bytes());
        }
        Change::Option { code, payload } => {
            kind(out, OPTION);
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
        Change::Local { ip, held } => {
            kind(out, LOCAL);
            out.extend_from_slice(&u32::from(*ip).to_le_bytes());
            out.push(match held {
                LocalHeld::Standby => HELD_STANDBY,
                LocalHeld::Active => HELD_ACTIVE,
                LocalHeld::Marked => HELD_MARKED,
            });
        }
        Change::LocalGone(ip) => {
            kind(out, LOCAL_GONE);
            out.extend_from_slice(&u32::from(*ip).to_le_bytes());
        }
        Change::Allocated { ip, alloc } => {
            kind(out, ALLOCATED);
            out.extend_from_slice(&u32::from(*ip).to_le_bytes());
            out.extend_from_slice(&wall(alloc.since).to_le_bytes());
            out.extend_from_slice(&alloc.node_id.0);
            // The service bounds these (owner 128, keys 64, values 256, 32 pairs); the
            // cuts only keep a record decodable whatever reaches here.
            short_str(out, &alloc.owner, 255);
            let n = alloc.meta.len().min(255);
            out.push(n as u8);
            for (k, v) in alloc.meta.iter().take(n) {
                short_str(out, k, 255);
                let v = &v.as_bytes()[..v.len().min(u16::MAX as usize)];
                out.extend_from_slice(&(v.len() as u16).to_le_bytes());
                out.extend_from_slice(v);
            }
        }
        Change::AllocGone { ip, cooldown } => {
            kind(out, ALLOC_GONE);
            out.extend_from_slice(&u32::from(*ip).to_le_bytes());
            match cooldown {
                Some(t) => {
                    out.push(1);
                    out.extend_from_slice(&wall(*t).to_le_bytes());
                }
                None => out.push(0),
            }
        }
        Change::Replica {
            origin,
            block,
            change,
        } => {
            kind(out, REPLICA);
            out.extend_from_slice(&origin.0);
            out.extend_from_slice(&block.to_le_bytes());
            encode_body(pool, change, wall, out);
        }
    }
}

/// A string of at most `max` bytes (cut at a character boundary) after its length byte.
fn short_str(out: &mut Vec<u8>, s: &str, max: usize) {
    let mut n = s.len().min(max);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    out.push(n as u8);
    out.extend_from_slice(&s.as_bytes()[..n]);
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
    /// The checksum holds and the kind is one this code does not know: written by a newer
    /// version (or by hand). Never skipped: state we cannot read would be lost silently.
    #[error("record of kind {0}, which this ddhcpd does not know (written by a newer ddhcpd?)")]
    UnknownKind(u8),
}

impl FrameError {
    /// Whether the damage is what an interrupted append leaves behind (as opposed to a
    /// record we cannot understand).
    pub fn is_torn(&self) -> bool {
        !matches!(self, FrameError::Body(_) | FrameError::UnknownKind(_))
    }
}

/// Reads the record starting at `data[0]` in a file of `format`: the index of its pool in
/// the file's table (0 in version 1), the change (times in Unix milliseconds, as
/// [`Instant`]s from the epoch) and the bytes it took. The index is not checked against the
/// table here; the caller knows the table.
pub fn decode(data: &[u8], format: Format) -> Result<(u8, Change, usize), FrameError> {
    let frame = data.get(..FRAME_LEN).ok_or(FrameError::Short)?;
    let len = le32(&frame[..4]) as usize;
    if len == 0 || len > MAX_BODY {
        return Err(FrameError::Length(len));
    }
    let crc = le32(&frame[4..8]);
    let body = data
        .get(FRAME_LEN..FRAME_LEN + len)
        .ok_or(FrameError::Short)?;
    if crc32fast::hash(body) != crc {
        return Err(FrameError::Crc);
    }
    if !KINDS.contains(&body[0]) {
        return Err(FrameError::UnknownKind(body[0]));
    }
    let (pool, change) = decode_body(body, format).ok_or(FrameError::Body("bad body"))?;
    Ok((pool, change, FRAME_LEN + len))
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
        self.take(4).map(le32)
    }
    fn time(&mut self) -> Option<Instant> {
        let b: [u8; 8] = self.take(8)?.try_into().ok()?;
        Some(Instant::from_millis(u64::from_le_bytes(b)))
    }
}

/// Reads one record body of `format` (no frame): its pool byte and the change, `None` for
/// anything that is not exactly one record of a known kind.
pub fn decode_body(body: &[u8], format: Format) -> Option<(u8, Change)> {
    let mut b = Body(body);
    let kind = b.u8()?;
    let pool = match format {
        Format::V1 => 0,
        Format::V2 => b.u8()?,
    };
    let change = match kind {
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
        LOCAL => Change::Local {
            ip: Ipv4Addr::from(b.u32()?),
            held: match b.u8()? {
                HELD_STANDBY => LocalHeld::Standby,
                HELD_ACTIVE => LocalHeld::Active,
                HELD_MARKED => LocalHeld::Marked,
                _ => return None,
            },
        },
        LOCAL_GONE => Change::LocalGone(Ipv4Addr::from(b.u32()?)),
        ALLOCATED => {
            let ip = Ipv4Addr::from(b.u32()?);
            let since = b.time()?;
            let node_id = crate::wire::NodeId(b.take(8)?.try_into().ok()?);
            let text = |b: &[u8]| std::str::from_utf8(b).ok().map(str::to_string);
            let owner_len = b.u8()? as usize;
            let owner = text(b.take(owner_len)?)?;
            let mut meta = std::collections::BTreeMap::new();
            for _ in 0..b.u8()? {
                let kl = b.u8()? as usize;
                let k = text(b.take(kl)?)?;
                let vl = b.u16()? as usize;
                let v = text(b.take(vl)?)?;
                meta.insert(k, v);
            }
            Change::Allocated {
                ip,
                alloc: crate::api::Allocation {
                    owner: owner.into(),
                    node_id,
                    since,
                    meta,
                },
            }
        }
        ALLOC_GONE => {
            let ip = Ipv4Addr::from(b.u32()?);
            let cooldown = match b.u8()? {
                0 => None,
                1 => Some(b.time()?),
                _ => return None,
            };
            Change::AllocGone { ip, cooldown }
        }
        REPLICA => {
            let origin = crate::wire::NodeId(b.take(8)?.try_into().ok()?);
            let block = b.u32()?;
            // One level only: a replica of a replica means nothing.
            if b.0.first() == Some(&REPLICA) {
                return None;
            }
            let (inner_pool, change) = decode_body(std::mem::take(&mut b.0), format)?;
            if inner_pool != pool {
                return None;
            }
            Change::Replica {
                origin,
                block,
                change: Box::new(change),
            }
        }
        _ => return None,
    };
    b.0.is_empty().then_some((pool, change))
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
            Change::Local {
                ip: Ipv4Addr::new(10, 5, 0, 130),
                held: LocalHeld::Standby,
            },
            Change::Local {
                ip: Ipv4Addr::new(10, 5, 0, 131),
                held: LocalHeld::Active,
            },
            Change::Local {
                ip: Ipv4Addr::new(10, 5, 0, 132),
                held: LocalHeld::Marked,
            },
            Change::LocalGone(Ipv4Addr::new(10, 5, 0, 130)),
            Change::Replica {
                origin: crate::wire::NodeId([1, 2, 3, 4, 5, 6, 7, 8]),
                block: 3,
                change: Box::new(lease()),
            },
            Change::Replica {
                origin: crate::wire::NodeId([9; 8]),
                block: 4,
                change: Box::new(Change::BlockGone { block: 4 }),
            },
        ]
    }

    /// A replica record is the origin, the block and the inner record's own body.
    #[test]
    fn golden_replica_bytes() {
        let c = Change::Replica {
            origin: crate::wire::NodeId([1, 2, 3, 4, 5, 6, 7, 8]),
            block: 0x0102,
            change: Box::new(Change::BlockGone { block: 0x0102 }),
        };
        let mut buf = Vec::new();
        encode_body(5, &c, |t| t.as_millis(), &mut buf);
        let body: &[u8] = &[
            12, 5, // replica, pool 5
            1, 2, 3, 4, 5, 6, 7, 8, // origin
            2, 1, 0, 0, // block 0x0102
            2, 5, 2, 1, 0, 0, // inner: block gone, pool 5, block 0x0102
        ];
        assert_eq!(buf, body);
        assert_eq!(decode_body(body, Format::V2), Some((5, c)));
        // A replica of a replica, or an inner record of another pool, is refused.
        let mut nested = body[..14].to_vec();
        nested.extend_from_slice(body);
        assert_eq!(decode_body(&nested, Format::V2), None);
        let mut other_pool = body.to_vec();
        other_pool[15] = 6;
        assert_eq!(decode_body(&other_pool, Format::V2), None);
    }

    /// The largest records the services can make still fit a store record and, wrapped as a
    /// replica, one replication datagram: an allocation with the most metadata the API
    /// takes, a lease with the longest client id and host name.
    #[test]
    fn largest_records_fit() {
        let mut meta = std::collections::BTreeMap::new();
        let per = crate::api::MAX_META_BYTES / 32;
        for i in 0..32 {
            meta.insert(format!("{i:0w$}", w = per / 2), "v".repeat(per - per / 2));
        }
        assert_eq!(
            meta.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>(),
            crate::api::MAX_META_BYTES
        );
        let alloc = Change::Allocated {
            ip: Ipv4Addr::new(10, 0, 0, 1),
            alloc: crate::api::Allocation {
                owner: "o".repeat(128).into(),
                node_id: crate::wire::NodeId([0; 8]),
                since: Instant::ZERO,
                meta,
            },
        };
        let lease = Change::Lease(LeaseRecord {
            ip: Ipv4Addr::new(10, 0, 0, 2),
            until: Instant::ZERO,
            declined: false,
            client: Some(ClientKey::from_slice(&[7; 255])),
            chaddr: [1; 16],
            hostname: Some("h".repeat(255).into()),
        });
        let room = crate::wire::MAX_REPLICATE_DATAGRAM
            - crate::wire::HEADER_LEN
            - crate::wire::REPLICATE_FIXED_LEN
            - 2;
        for c in [alloc, lease] {
            let wrapped = Change::Replica {
                origin: crate::wire::NodeId([0; 8]),
                block: 0,
                change: Box::new(c.clone()),
            };
            let mut buf = Vec::new();
            encode_body(0, &wrapped, |t| t.as_millis(), &mut buf);
            assert!(buf.len() <= MAX_BODY.min(room), "{} bytes", buf.len());
            assert_eq!(decode_body(&buf, Format::V2), Some((0, wrapped)));
        }
    }

    #[test]
    fn records_round_trip() {
        let mut buf = Vec::new();
        for (i, c) in all().iter().enumerate() {
            encode(i as u8 % 3, c, |t| t.as_millis(), &mut buf);
        }
        let mut off = 0;
        let mut back = Vec::new();
        while off < buf.len() {
            let (pool, c, n) = decode(&buf[off..], Format::V2).unwrap();
            back.push(c);
            assert_eq!(pool, (back.len() - 1) as u8 % 3);
            off += n;
        }
        assert_eq!(back, all());
    }

    /// The layout is a compatibility contract: these bytes must keep decoding.
    #[test]
    fn golden_lease_bytes() {
        let mut buf = Vec::new();
        encode(3, &lease(), |t| t.as_millis(), &mut buf);
        let body: &[u8] = &[
            4, // lease
            3, // pool 3 of the file's table
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

    /// Version 1 records (no pool byte), as the daemon before pools wrote them, still
    /// decode, into pool 0.
    #[test]
    fn golden_v1_lease_bytes() {
        let body: &[u8] = &[
            4, 2, 1, 0, 10, 0xe0, 0xfb, 0xe9, 0xcf, 0x8b, 0x01, 0, 0, 0, 6, 2, 0, 0, 0, 0, 7, 8, 0,
            0, 1, 2, 0, 0, 0, 0, 7, 6, b'l', b'a', b'p', b't', b'o', b'p',
        ];
        let mut buf = (body.len() as u32).to_le_bytes().to_vec();
        buf.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
        buf.extend_from_slice(body);
        assert_eq!(decode(&buf, Format::V1), Ok((0, lease(), buf.len())));
        // Read as version 2, the kind's first field is taken for the pool: refused.
        assert!(matches!(decode(&buf, Format::V2), Err(FrameError::Body(_))));
    }

    /// The local service's records, byte for byte (kinds 8 and 9, in version 2).
    #[test]
    fn golden_local_bytes() {
        let frame = |body: &[u8]| {
            let mut f = (body.len() as u32).to_le_bytes().to_vec();
            f.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
            f.extend_from_slice(body);
            f
        };
        let ip = Ipv4Addr::new(10, 5, 0, 131);
        let cases: [(Change, &[u8]); 4] = [
            (
                Change::Local {
                    ip,
                    held: LocalHeld::Standby,
                },
                &[8, 2, 131, 0, 5, 10, 0], // local, pool 2, 10.5.0.131, standby
            ),
            (
                Change::Local {
                    ip,
                    held: LocalHeld::Active,
                },
                &[8, 2, 131, 0, 5, 10, 1], // active (by a socket)
            ),
            (
                Change::Local {
                    ip,
                    held: LocalHeld::Marked,
                },
                &[8, 2, 131, 0, 5, 10, 2], // active by mark-active
            ),
            (Change::LocalGone(ip), &[9, 2, 131, 0, 5, 10]), // local gone
        ];
        for (c, body) in cases {
            let mut buf = Vec::new();
            encode(2, &c, |t| t.as_millis(), &mut buf);
            assert_eq!(buf, frame(body), "{c:?}");
            assert_eq!(decode(&buf, Format::V2), Ok((2, c, buf.len())));
        }
        // A held byte this code does not know is refused, not read as some state.
        let bad = frame(&[8, 2, 131, 0, 5, 10, 3]);
        assert_eq!(decode(&bad, Format::V2), Err(FrameError::Body("bad body")));
    }

    /// The allocation service's records, byte for byte (kinds 10 and 11, in version 2).
    #[test]
    fn golden_allocation_bytes() {
        let frame = |body: &[u8]| {
            let mut f = (body.len() as u32).to_le_bytes().to_vec();
            f.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
            f.extend_from_slice(body);
            f
        };
        let ip = Ipv4Addr::new(10, 9, 0, 7);
        let alloc = crate::api::Allocation {
            owner: "vm-1".into(),
            node_id: crate::wire::NodeId([1, 2, 3, 4, 5, 6, 7, 8]),
            since: Instant::from_millis(0x0102),
            meta: [("env".to_string(), "prod".to_string())].into(),
        };
        #[rustfmt::skip]
        let cases: [(Change, &[u8]); 3] = [
            (
                Change::Allocated { ip, alloc },
                &[
                    10, 1, 7, 0, 9, 10,           // allocated, pool 1, 10.9.0.7
                    2, 1, 0, 0, 0, 0, 0, 0,       // since (Unix ms)
                    1, 2, 3, 4, 5, 6, 7, 8,       // node id
                    4, b'v', b'm', b'-', b'1',    // owner
                    1,                            // one meta pair
                    3, b'e', b'n', b'v',
                    4, 0, b'p', b'r', b'o', b'd',
                ],
            ),
            (
                Change::AllocGone { ip, cooldown: Some(Instant::from_millis(0x0a0b)) },
                &[11, 1, 7, 0, 9, 10, 1, 0x0b, 0x0a, 0, 0, 0, 0, 0, 0], // released, cooling
            ),
            (
                Change::AllocGone { ip, cooldown: None },
                &[11, 1, 7, 0, 9, 10, 0], // lost with its block
            ),
        ];
        for (c, body) in cases {
            let mut buf = Vec::new();
            encode(1, &c, |t| t.as_millis(), &mut buf);
            assert_eq!(buf, frame(body), "{c:?}");
            assert_eq!(decode(&buf, Format::V2), Ok((1, c, buf.len())));
        }
        // An owner that is not UTF-8 is refused, not read as something else.
        let bad = frame(&[
            10, 1, 7, 0, 9, 10, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 1, 0xff, 0,
        ]);
        assert_eq!(decode(&bad, Format::V2), Err(FrameError::Body("bad body")));
    }

    /// A kind this code does not know (a newer daemon's) is refused by name, never skipped,
    /// and is not mistaken for a torn write.
    #[test]
    fn an_unknown_record_kind_is_refused() {
        let body: &[u8] = &[200, 0, 1, 2, 3, 4];
        let mut buf = (body.len() as u32).to_le_bytes().to_vec();
        buf.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
        buf.extend_from_slice(body);
        let e = decode(&buf, Format::V2).unwrap_err();
        assert_eq!(e, FrameError::UnknownKind(200));
        assert!(!e.is_torn());
        assert!(e.to_string().contains("newer ddhcpd"), "{e}");
        for k in KINDS {
            let mut b = buf.clone();
            b[FRAME_LEN] = k;
            let crc = crc32fast::hash(&b[FRAME_LEN..]);
            b[4..8].copy_from_slice(&crc.to_le_bytes());
            assert!(
                !matches!(decode(&b, Format::V2), Err(FrameError::UnknownKind(_))),
                "kind {k}"
            );
        }
    }

    #[test]
    fn every_truncation_and_bit_flip_is_detected() {
        let mut buf = Vec::new();
        encode(1, &lease(), |t| t.as_millis(), &mut buf);
        for cut in 0..buf.len() {
            let e = decode(&buf[..cut], Format::V2).unwrap_err();
            assert!(e.is_torn(), "cut at {cut}");
        }
        for i in 0..buf.len() * 8 {
            let mut b = buf.clone();
            b[i / 8] ^= 1 << (i % 8);
            assert!(decode(&b, Format::V2).is_err(), "bit {i}");
        }
    }

    fn pools() -> Vec<StorePool> {
        vec![
            StorePool {
                name: "lan".into(),
                range: ManagedRange::new(Ipv4Addr::new(10, 0, 0, 0), 24, 2).unwrap(),
            },
            StorePool {
                name: "gäste".into(),
                range: ManagedRange::new(Ipv4Addr::new(10, 64, 0, 0), 10, 4).unwrap(),
            },
        ]
    }

    /// The version-2 header and a record after it, byte for byte: the layout is pinned.
    #[test]
    fn golden_v2_header_and_record() {
        let h = Header::new(FileKind::Journal, &pools(), 0x0102_0304_0506_0708);
        let mut file = h.encode();
        encode(
            1,
            &Change::LeaseGone(Ipv4Addr::new(10, 64, 0, 9)),
            |t| t.as_millis(),
            &mut file,
        );
        #[rustfmt::skip]
        let want: &[u8] = &[
            // fixed part
            b'D', b'D', b'H', b'C', b'P', b'S', b'T', b'O',
            2, 0, // version 2
            1, // journal
            0,
            24, 0, 0, 0, // table length
            0, 0, 0, 0,
            8, 7, 6, 5, 4, 3, 2, 1, // generation
            0xd8, 0x2b, 0x49, 0xeb, // crc32 of the 28 bytes before
            // pool table
            2, // pools
            3, b'l', b'a', b'n', 0, 0, 0, 10, 24, 2, // lan 10.0.0.0/24 -b 2
            6, b'g', 0xc3, 0xa4, b's', b't', b'e', 0, 0, 64, 10, 10, 4, // gäste 10.64.0.0/10 -b 4
            0x52, 0x0e, 0x79, 0xc8, // crc32 of the table
            // record
            6, 0, 0, 0, // body length
            0x31, 0xf0, 0xcb, 0xb1, // crc32 of the body
            5, 1, 9, 0, 64, 10, // lease gone, pool 1, 10.64.0.9
        ];
        assert_eq!(file, want, "{file:02x?}");
        let (back, len) = Header::decode(&file).unwrap();
        assert_eq!(back, h);
        assert_eq!(len, FIXED_LEN + 24 + 4);
        let (pool, c, n) = decode(&file[len..], Format::V2).unwrap();
        assert_eq!((pool, n), (1, file.len() - len));
        assert_eq!(c, Change::LeaseGone(Ipv4Addr::new(10, 64, 0, 9)));
    }

    proptest::proptest! {
        /// A store file is input too: no bytes may panic the reader.
        #[test]
        fn decode_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = decode(&data, Format::V1);
            let _ = decode(&data, Format::V2);
            if let Ok((_, len)) = Header::decode(&data) {
                proptest::prop_assert!(len <= data.len());
            }
            let _ = within_header(&data);
        }

        /// Well-framed garbage (a valid CRC over random bytes) is refused, not misread.
        #[test]
        fn framed_garbage_never_panics(body in proptest::collection::vec(proptest::num::u8::ANY, 1..600)) {
            let mut buf = (body.len() as u32).to_le_bytes().to_vec();
            buf.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
            buf.extend_from_slice(&body);
            for format in [Format::V1, Format::V2] {
                if let Ok((_, _, n)) = decode(&buf, format) {
                    proptest::prop_assert_eq!(n, buf.len());
                }
            }
        }

        /// A header whose checksums hold over arbitrary table bytes: refused or read, never
        /// a panic, and what is read is a table the writer could have written.
        #[test]
        fn checksummed_garbage_tables_never_panic(
            table in proptest::collection::vec(proptest::num::u8::ANY, 1..400),
            kind in 1u8..3,
        ) {
            let mut h = vec![0u8; FIXED_LEN];
            h[..8].copy_from_slice(&MAGIC);
            h[8..10].copy_from_slice(&VERSION.to_le_bytes());
            h[10] = kind;
            h[12..16].copy_from_slice(&(table.len() as u32).to_le_bytes());
            let crc = crc32fast::hash(&h[..28]);
            h[28..32].copy_from_slice(&crc.to_le_bytes());
            h.extend_from_slice(&table);
            h.extend_from_slice(&crc32fast::hash(&table).to_le_bytes());
            if let Ok((header, len)) = Header::decode(&h) {
                proptest::prop_assert_eq!(len, h.len());
                let Pools::V2(t) = &header.pools else { unreachable!() };
                proptest::prop_assert_eq!(check_table(t), Ok(()));
                proptest::prop_assert_eq!(header.encode(), h);
            }
        }

        /// Every cut of a valid header is seen as a header cut short, and no other error.
        #[test]
        fn a_cut_header_is_short(cut in 0usize..64) {
            let bytes = Header::new(FileKind::Snapshot, &pools(), 7).encode();
            let cut = cut.min(bytes.len() - 1);
            proptest::prop_assert_eq!(Header::decode(&bytes[..cut]), Err(HeaderError::Short));
            proptest::prop_assert!(within_header(&bytes[..cut]));
        }
    }

    #[test]
    fn header_round_trip_and_checks() {
        let h = Header::new(FileKind::Snapshot, &pools(), 42);
        let bytes = h.encode();
        let (back, len) = Header::decode(&bytes).unwrap();
        assert_eq!((back, len), (h.clone(), bytes.len()));
        assert!(within_header(&bytes));
        let mut more = bytes.clone();
        more.push(0);
        assert!(!within_header(&more));
        assert_eq!(
            StoredRange::of(&pools()[1].range).describe(),
            "10.64.0.0/10 in blocks of 16 addresses (-b 4)"
        );
        // The fixed part and the table are each checked.
        for at in [12, FIXED_LEN + 3] {
            let mut bad = bytes.clone();
            bad[at] ^= 1;
            assert_eq!(Header::decode(&bad), Err(HeaderError::Crc), "byte {at}");
        }
        assert_eq!(Header::decode(&bytes[..31]), Err(HeaderError::Short));
        assert_eq!(Header::decode(&[0u8; 32]), Err(HeaderError::Magic));
        // No pools is a table too (a daemon with none configured).
        let empty = Header::new(FileKind::Journal, &[], 1);
        assert_eq!(Header::decode(&empty.encode()).unwrap().0, empty);
    }

    #[test]
    fn a_version_1_header_reads_as_its_one_range() {
        // The header of tests/fixtures/store-v1/journal/journal.0000000000000000.
        let v1: [u8; 32] = [
            0x44, 0x44, 0x48, 0x43, 0x50, 0x53, 0x54, 0x4f, 0x01, 0x00, 0x01, 0x18, 0x00, 0x00,
            0x00, 0x0a, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0xd5, 0xdb, 0x1f, 0x36,
        ];
        let (h, len) = Header::decode(&v1).unwrap();
        assert_eq!(len, 32);
        assert_eq!(h.format(), Format::V1);
        let range = ManagedRange::new(Ipv4Addr::new(10, 0, 0, 0), 24, 2).unwrap();
        assert_eq!(h.pools, Pools::V1(StoredRange::of(&range)));
        assert_eq!((h.kind, h.generation), (FileKind::Journal, 0));
        assert_eq!(h.encode(), v1);
        let mut future = v1;
        future[8] = 3;
        let crc = crc32fast::hash(&future[..28]);
        future[28..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(Header::decode(&future), Err(HeaderError::Version(3)));
    }

    #[test]
    fn tables_the_writer_refuses() {
        let entry = |name: &str| TableEntry {
            name: name.into(),
            range: StoredRange::of(&pools()[0].range),
        };
        assert!(check_table(&[entry("a"), entry("b")]).is_ok());
        assert!(check_table(&[entry("")]).is_err());
        assert!(check_table(&[entry(&"x".repeat(33))]).is_err());
        assert!(check_table(&[entry(&"x".repeat(32))]).is_ok());
        assert!(check_table(&[entry("a"), entry("a")]).is_err());
        let many: Vec<TableEntry> = (0..256).map(|i| entry(&format!("p{i}"))).collect();
        assert!(check_table(&many).is_err());
        assert!(check_table(&many[..255]).is_ok());
    }
}

//! The ddhcpd peer protocol, byte for byte (reference §2).
//!
//! The layout is fixed by the C daemon, so it is written by hand: a 16-byte header, then
//! 7-byte UpdateClaim entries, 4-byte Inquire entries or one 28-byte renew payload.
//! Decoding takes any byte string and returns a value or an error; it never panics and never
//! allocates more than the datagram's own size. `docs/protocol.md` lists where we deliberately
//! differ from the C daemon.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// Link-local group every node joins on the server interface.
pub const MULTICAST_GROUP: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x1234);
/// Port of Inquire and UpdateClaim traffic (source and destination).
pub const MULTICAST_PORT: u16 = 1234;
/// Port of RenewLease / LeaseAck / LeaseNak traffic (source and destination).
pub const UNICAST_PORT: u16 = 1235;

pub const HEADER_LEN: usize = 16;
pub const CLAIM_ENTRY_LEN: usize = 7;
pub const INQUIRE_ENTRY_LEN: usize = 4;
pub const RENEW_PAYLOAD_LEN: usize = 28;
/// Total size of RenewLease, LeaseAck and LeaseNak.
pub const RENEW_PACKET_LEN: usize = HEADER_LEN + RENEW_PAYLOAD_LEN;

/// Entries we put in one UpdateClaim. The C sender uses 32; the C receiver accepts up to 212
/// (its 1500-byte buffer). 155 entries make 1101 bytes, which with the 98-byte signature of
/// `--node-key` (`auth::identity::SIG_EXT_LEN`), the 32-byte trailer of `--peer-key`
/// (`auth::TRAILER_LEN`) and the IPv6 and UDP headers fits the IPv6 minimum MTU of 1280, so
/// a claim packet is never fragmented, signed or not.
pub const MAX_CLAIM_ENTRIES: usize = 155;
/// The count field is one byte.
pub const MAX_INQUIRE_ENTRIES: usize = 255;

/// Largest datagram any valid message can be (an Inquire with 255 entries).
pub const MAX_DATAGRAM: usize = HEADER_LEN + INQUIRE_ENTRY_LEN * MAX_INQUIRE_ENTRIES;

/// An 8-byte node identifier. Ordering is bytewise, as the C daemon's `memcmp`, and the
/// greater id wins every tie-break.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NodeId(pub [u8; 8]);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

impl FromStr for NodeId {
    type Err = String;

    /// Accepts the 16 hex digits `ddhcpctl` prints, optionally with `:` separators.
    fn from_str(s: &str) -> Result<Self, String> {
        let hex: String = s.chars().filter(|c| *c != ':').collect();
        if hex.len() != 16 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err("a node id is 16 hexadecimal digits".into());
        }
        let mut id = [0u8; 8];
        for (i, byte) in id.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
        }
        Ok(NodeId(id))
    }
}

/// Command byte values (header offset 14).
pub mod command {
    pub const UPDATE_CLAIM: u8 = 1;
    pub const INQUIRE: u8 = 2;
    pub const RENEW_LEASE: u8 = 16;
    pub const LEASE_ACK: u8 = 17;
    pub const LEASE_NAK: u8 = 18;
    /// Defined by the C daemon but impossible to send or receive there (reference §2.11.1).
    pub const RELEASE: u8 = 19;
    /// Ours (unicast, ddhcp nodes only): binding changes for a replica holder.
    pub const REPLICATE: u8 = 64;
    /// Ours (unicast, ddhcp nodes only): a replica holder's cumulative acknowledgement.
    pub const REPLICA_ACK: u8 = 65;
    /// Ours: what a peer holds for a node rebuilding its state (same layout as REPLICATE;
    /// acknowledged with REPLICA_ACK; a batch without records ends the stream).
    pub const HANDBACK: u8 = 66;
    /// Ours: "I lost my state; send me what you hold for my node id" (epoch: the
    /// request's nonce, then four zero bytes).
    pub const RECOVER: u8 = 67;
}

/// The value of the reserved byte of our UpdateClaim entries: "the sender is a ddhcp node
/// that holds replicas (extension version 1)". C nodes send 0 there and ignore the byte on
/// receipt (reference §2.3), so the mark costs no packet and reaches no C code path; it is
/// how a node learns which peers may be sent our own message types at all.
pub const CLAIM_MARK_DDHCP: u8 = 1;

/// Sets the mark in every entry of an encoded UpdateClaim (any other datagram is left as it
/// is).
pub fn mark_claim(datagram: &mut [u8]) {
    if datagram.len() < HEADER_LEN || datagram[14] != command::UPDATE_CLAIM {
        return;
    }
    for e in datagram[HEADER_LEN..].chunks_exact_mut(CLAIM_ENTRY_LEN) {
        e[6] = CLAIM_MARK_DDHCP;
    }
}

/// Whether a valid UpdateClaim datagram carries our mark (in its first entry; we mark all).
pub fn claim_is_marked(datagram: &[u8]) -> bool {
    datagram.len() >= HEADER_LEN + CLAIM_ENTRY_LEN
        && datagram[14] == command::UPDATE_CLAIM
        && datagram[HEADER_LEN + 6] == CLAIM_MARK_DDHCP
}

/// Bytes before the records of a Replicate message: epoch (u32), sequence number (u32).
pub const REPLICATE_FIXED_LEN: usize = 8;
/// A Replicate or Handback we send never exceeds this: with the signature of `--node-key`,
/// the 32-byte trailer of `--peer-key` and the IPv6 and UDP headers it fits the IPv6
/// minimum MTU (1280), so it is never fragmented.
pub const MAX_REPLICATE_DATAGRAM: usize = 1100;
/// What we accept: 1232 bytes, what nodes sent before the trailer existed.
pub const MAX_REPLICATE_ACCEPT: usize = 1232;
/// Size of a ReplicaAck: the header, epoch and next expected sequence number.
pub const REPLICA_ACK_LEN: usize = HEADER_LEN + 8;
/// Longest record body a Replicate carries (the store's own bound).
pub const MAX_REPLICA_RECORD: usize = 1024;

/// The fields of the header that identify which swarm (managed range) a message belongs to.
/// Messages from another swarm are dropped before they touch any state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Swarm {
    /// The `-N` address as raw bytes (network order), as the C daemon copies it.
    pub prefix: Ipv4Addr,
    pub prefix_len: u8,
    /// Addresses per block (not the exponent).
    pub block_size: u8,
}

/// One UpdateClaim entry: "I own `block` for `timeout` more seconds".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClaimEntry {
    pub block: u32,
    pub timeout: u16,
}

/// The 28-byte payload of RenewLease, LeaseAck and LeaseNak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RenewPayload {
    /// Raw bytes as found on the wire. C senders put the address here in host byte order
    /// (reversed on little-endian machines, reference §2.7); see [`RenewPayload::addresses`].
    pub address: [u8; 4],
    /// DHCP transaction id, network order on the wire.
    pub xid: u32,
    /// Always 0 as C sends it; never read by C.
    pub lease_seconds: u32,
    /// The DHCP `chaddr` field verbatim.
    pub chaddr: [u8; 16],
}

impl RenewPayload {
    /// An unmarked payload with the address in network byte order, as a big-endian C node
    /// sends it. Our own RenewLeases are built by `dhcp::roaming` (peer's order, mark).
    pub fn new(address: Ipv4Addr, xid: u32, chaddr: [u8; 16]) -> Self {
        RenewPayload {
            address: address.octets(),
            xid,
            lease_seconds: 0,
            chaddr,
        }
    }

    /// Both readings of the address field: network order (big-endian C nodes, and our
    /// marked payloads) and byte-reversed (little-endian C nodes). `dhcp::roaming` decides
    /// which one a peer meant.
    pub fn addresses(&self) -> [Ipv4Addr; 2] {
        let a = self.address;
        [Ipv4Addr::from(a), Ipv4Addr::new(a[3], a[2], a[1], a[0])]
    }
}

/// A decoded peer message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    UpdateClaim(Vec<ClaimEntry>),
    Inquire(Vec<u32>),
    RenewLease(RenewPayload),
    LeaseAck(RenewPayload),
    LeaseNak(RenewPayload),
    /// Binding changes of the sender's blocks for a replica holder: batch `seq` of the
    /// stream the sender started at `epoch`. Each record is a store record body
    /// (`store::codec::encode_body`), times in milliseconds from the moment it was queued.
    Replicate {
        epoch: u32,
        seq: u32,
        records: Vec<Vec<u8>>,
    },
    /// "I hold every batch of stream `epoch` before `next`."
    ReplicaAck {
        epoch: u32,
        next: u32,
    },
    /// What the sender holds for the receiver, which is rebuilding its state: records as
    /// in a Replicate; a batch without records is the end of the stream.
    Handback {
        epoch: u32,
        seq: u32,
        records: Vec<Vec<u8>>,
    },
    /// The sender lost its state and asks for a Handback (`nonce`: one per start).
    Recover {
        nonce: u32,
    },
}

impl Message {
    pub fn command(&self) -> u8 {
        match self {
            Message::UpdateClaim(_) => command::UPDATE_CLAIM,
            Message::Inquire(_) => command::INQUIRE,
            Message::RenewLease(_) => command::RENEW_LEASE,
            Message::LeaseAck(_) => command::LEASE_ACK,
            Message::LeaseNak(_) => command::LEASE_NAK,
            Message::Replicate { .. } => command::REPLICATE,
            Message::ReplicaAck { .. } => command::REPLICA_ACK,
            Message::Handback { .. } => command::HANDBACK,
            Message::Recover { .. } => command::RECOVER,
        }
    }

    /// A short name for logs and counters.
    pub fn name(&self) -> &'static str {
        match self {
            Message::UpdateClaim(_) => "updateclaim",
            Message::Inquire(_) => "inquire",
            Message::RenewLease(_) => "renewlease",
            Message::LeaseAck(_) => "leaseack",
            Message::LeaseNak(_) => "leasenak",
            Message::Replicate { .. } => "replicate",
            Message::ReplicaAck { .. } => "replica_ack",
            Message::Handback { .. } => "handback",
            Message::Recover { .. } => "recover",
        }
    }
}

/// A whole datagram: header plus message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub node_id: NodeId,
    pub swarm: Swarm,
    pub message: Message,
}

/// Why a datagram was not a valid message. Every variant is counted by the node.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("datagram of {0} bytes is shorter than the 16-byte header")]
    Short(usize),
    #[error("unknown command {0}")]
    UnknownCommand(u8),
    #[error("command {command} with count {count} must be {expected} bytes, got {got}")]
    Length {
        command: u8,
        count: u8,
        expected: usize,
        got: usize,
    },
    #[error("{0} entries do not fit one message")]
    TooManyEntries(usize),
    #[error("replicate message of {got} bytes does not hold exactly {count} records")]
    Records { count: u8, got: usize },
}

impl Packet {
    /// Decodes one datagram. The length must equal exactly what the command and count
    /// imply, as the C receiver checks (reference §2.5), so both implementations accept the
    /// same set of datagrams. Unlike the C daemon, a datagram shorter than the header is an
    /// error rather than a parse of stale buffer bytes.
    pub fn decode(buf: &[u8]) -> Result<Packet, DecodeError> {
        let header: &[u8; HEADER_LEN] = buf
            .get(..HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(DecodeError::Short(buf.len()))?;
        let mut node_id = [0u8; 8];
        node_id.copy_from_slice(&header[0..8]);
        let swarm = Swarm {
            prefix: Ipv4Addr::new(header[8], header[9], header[10], header[11]),
            prefix_len: header[12],
            block_size: header[13],
        };
        let cmd = header[14];
        let count = header[15];
        if matches!(
            cmd,
            command::REPLICATE | command::REPLICA_ACK | command::HANDBACK | command::RECOVER
        ) {
            return decode_ext(NodeId(node_id), swarm, cmd, count, &buf[HEADER_LEN..]);
        }
        let expected = match cmd {
            command::UPDATE_CLAIM => HEADER_LEN + CLAIM_ENTRY_LEN * usize::from(count),
            command::INQUIRE => HEADER_LEN + INQUIRE_ENTRY_LEN * usize::from(count),
            command::RENEW_LEASE | command::LEASE_ACK | command::LEASE_NAK => RENEW_PACKET_LEN,
            other => return Err(DecodeError::UnknownCommand(other)),
        };
        if buf.len() != expected {
            return Err(DecodeError::Length {
                command: cmd,
                count,
                expected,
                got: buf.len(),
            });
        }
        let body = &buf[HEADER_LEN..];
        let message = match cmd {
            command::UPDATE_CLAIM => Message::UpdateClaim(
                body.chunks_exact(CLAIM_ENTRY_LEN)
                    .map(|e| ClaimEntry {
                        block: u32::from_be_bytes([e[0], e[1], e[2], e[3]]),
                        timeout: u16::from_be_bytes([e[4], e[5]]),
                    })
                    .collect(),
            ),
            command::INQUIRE => Message::Inquire(
                body.chunks_exact(INQUIRE_ENTRY_LEN)
                    .map(|e| u32::from_be_bytes([e[0], e[1], e[2], e[3]]))
                    .collect(),
            ),
            _ => {
                let p = decode_renew(body);
                match cmd {
                    command::RENEW_LEASE => Message::RenewLease(p),
                    command::LEASE_ACK => Message::LeaseAck(p),
                    _ => Message::LeaseNak(p),
                }
            }
        };
        Ok(Packet {
            node_id: NodeId(node_id),
            swarm,
            message,
        })
    }

    /// Encodes the packet. Fails only for entry lists that the one-byte count cannot carry;
    /// callers split claims with [`MAX_CLAIM_ENTRIES`] and inquiries with
    /// [`MAX_INQUIRE_ENTRIES`].
    pub fn encode(&self) -> Result<Vec<u8>, DecodeError> {
        let (count, body_len) = match &self.message {
            Message::UpdateClaim(e) => (e.len(), CLAIM_ENTRY_LEN * e.len()),
            Message::Inquire(e) => (e.len(), INQUIRE_ENTRY_LEN * e.len()),
            Message::Replicate { records, .. } | Message::Handback { records, .. } => (
                records.len(),
                REPLICATE_FIXED_LEN + records.iter().map(|r| 2 + r.len()).sum::<usize>(),
            ),
            Message::ReplicaAck { .. } | Message::Recover { .. } => (0, 8),
            _ => (0, RENEW_PAYLOAD_LEN),
        };
        let count = u8::try_from(count).map_err(|_| DecodeError::TooManyEntries(count))?;
        if matches!(
            self.message,
            Message::Replicate { .. } | Message::Handback { .. }
        ) && HEADER_LEN + body_len > MAX_REPLICATE_DATAGRAM
        {
            return Err(DecodeError::Records {
                count,
                got: HEADER_LEN + body_len,
            });
        }
        let mut out = Vec::with_capacity(HEADER_LEN + body_len);
        out.extend_from_slice(&self.node_id.0);
        out.extend_from_slice(&self.swarm.prefix.octets());
        out.push(self.swarm.prefix_len);
        out.push(self.swarm.block_size);
        out.push(self.message.command());
        out.push(count);
        match &self.message {
            Message::UpdateClaim(entries) => {
                for e in entries {
                    out.extend_from_slice(&e.block.to_be_bytes());
                    out.extend_from_slice(&e.timeout.to_be_bytes());
                    out.push(0);
                }
            }
            Message::Inquire(blocks) => {
                for b in blocks {
                    out.extend_from_slice(&b.to_be_bytes());
                }
            }
            Message::Replicate {
                epoch,
                seq,
                records,
            }
            | Message::Handback {
                epoch,
                seq,
                records,
            } => {
                out.extend_from_slice(&epoch.to_be_bytes());
                out.extend_from_slice(&seq.to_be_bytes());
                for r in records {
                    if r.is_empty() || r.len() > MAX_REPLICA_RECORD {
                        return Err(DecodeError::Records {
                            count,
                            got: r.len(),
                        });
                    }
                    out.extend_from_slice(&(r.len() as u16).to_be_bytes());
                    out.extend_from_slice(r);
                }
            }
            Message::ReplicaAck { epoch, next } => {
                out.extend_from_slice(&epoch.to_be_bytes());
                out.extend_from_slice(&next.to_be_bytes());
            }
            Message::Recover { nonce } => {
                out.extend_from_slice(&nonce.to_be_bytes());
                out.extend_from_slice(&[0; 4]);
            }
            Message::RenewLease(p) | Message::LeaseAck(p) | Message::LeaseNak(p) => {
                out.extend_from_slice(&p.address);
                out.extend_from_slice(&p.xid.to_be_bytes());
                out.extend_from_slice(&p.lease_seconds.to_be_bytes());
                out.extend_from_slice(&p.chaddr);
            }
        }
        Ok(out)
    }
}

/// Our own message types. A Replicate holds exactly `count` records, each a big-endian
/// u16 length (1 to [`MAX_REPLICA_RECORD`]) and that many bytes, and nothing after them;
/// a ReplicaAck is exactly [`REPLICA_ACK_LEN`] bytes.
fn decode_ext(
    node_id: NodeId,
    swarm: Swarm,
    cmd: u8,
    count: u8,
    body: &[u8],
) -> Result<Packet, DecodeError> {
    let total = HEADER_LEN + body.len();
    let fixed: [u8; 8] =
        body.get(..8)
            .and_then(|b| b.try_into().ok())
            .ok_or(DecodeError::Length {
                command: cmd,
                count,
                expected: HEADER_LEN + 8,
                got: total,
            })?;
    let epoch = u32::from_be_bytes([fixed[0], fixed[1], fixed[2], fixed[3]]);
    let second = u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
    let message = if cmd == command::REPLICA_ACK || cmd == command::RECOVER {
        if total != REPLICA_ACK_LEN || count != 0 || (cmd == command::RECOVER && second != 0) {
            return Err(DecodeError::Length {
                command: cmd,
                count,
                expected: REPLICA_ACK_LEN,
                got: total,
            });
        }
        if cmd == command::RECOVER {
            Message::Recover { nonce: epoch }
        } else {
            Message::ReplicaAck {
                epoch,
                next: second,
            }
        }
    } else {
        let bad = DecodeError::Records { count, got: total };
        if total > MAX_REPLICATE_ACCEPT {
            return Err(bad);
        }
        let mut rest = &body[8..];
        let mut records = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            let (len, tail) = rest.split_at_checked(2).ok_or(bad.clone())?;
            let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
            if len == 0 || len > MAX_REPLICA_RECORD {
                return Err(bad);
            }
            let (rec, tail) = tail.split_at_checked(len).ok_or(bad.clone())?;
            records.push(rec.to_vec());
            rest = tail;
        }
        if !rest.is_empty() {
            return Err(bad);
        }
        if cmd == command::HANDBACK {
            Message::Handback {
                epoch,
                seq: second,
                records,
            }
        } else {
            Message::Replicate {
                epoch,
                seq: second,
                records,
            }
        }
    };
    Ok(Packet {
        node_id,
        swarm,
        message,
    })
}

fn decode_renew(body: &[u8]) -> RenewPayload {
    let mut chaddr = [0u8; 16];
    chaddr.copy_from_slice(&body[12..28]);
    RenewPayload {
        address: [body[0], body[1], body[2], body[3]],
        xid: u32::from_be_bytes([body[4], body[5], body[6], body[7]]),
        lease_seconds: u32::from_be_bytes([body[8], body[9], body[10], body[11]]),
        chaddr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .filter(|t| *t != "|")
            .map(|t| u8::from_str_radix(t, 16).unwrap())
            .collect()
    }

    fn swarm_17() -> Swarm {
        Swarm {
            prefix: Ipv4Addr::new(10, 0, 128, 0),
            prefix_len: 17,
            block_size: 4,
        }
    }

    /// Reference §2.4: Inquire from a master node (id zero) for block 3848.
    #[test]
    fn golden_inquire() {
        let bytes = hex("00 00 00 00 00 00 00 00 | 0a 00 80 00 | 11 | 04 | 02 | 01 | 00 00 0f 08");
        let p = Packet {
            node_id: NodeId([0; 8]),
            swarm: swarm_17(),
            message: Message::Inquire(vec![3848]),
        };
        assert_eq!(p.encode().unwrap(), bytes);
        assert_eq!(Packet::decode(&bytes).unwrap(), p);
    }

    /// Reference §2.4: UpdateClaim for block 3848 with TTL 60.
    #[test]
    fn golden_update_claim() {
        let bytes =
            hex("00 00 00 00 00 00 00 00 | 0a 00 80 00 | 11 | 04 | 01 | 01 | 00 00 0f 08 00 3c 00");
        let p = Packet {
            node_id: NodeId([0; 8]),
            swarm: swarm_17(),
            message: Message::UpdateClaim(vec![ClaimEntry {
                block: 3848,
                timeout: 60,
            }]),
        };
        assert_eq!(p.encode().unwrap(), bytes);
        assert_eq!(Packet::decode(&bytes).unwrap(), p);
    }

    /// Reference §2.4: RenewLease from a little-endian C node: the address is reversed.
    #[test]
    fn golden_renew_lease_from_little_endian_c_node() {
        let mut bytes = hex(
            "26 93 af 41 ba 5d 00 00 | 0a 00 01 00 | 1c | 04 | 10 | 00 | 01 01 00 0a | cb 16 f4 7a | 00 00 00 00 | 02 00 00 00 c0 63",
        );
        bytes.extend_from_slice(&[0; 10]);
        assert_eq!(bytes.len(), RENEW_PACKET_LEN);
        let p = Packet::decode(&bytes).unwrap();
        assert_eq!(p.node_id.to_string(), "2693AF41BA5D0000");
        assert_eq!(
            p.swarm,
            Swarm {
                prefix: Ipv4Addr::new(10, 0, 1, 0),
                prefix_len: 28,
                block_size: 4
            }
        );
        let Message::RenewLease(payload) = p.message else {
            panic!("not a RenewLease: {p:?}");
        };
        assert_eq!(payload.xid, 0xcb16f47a);
        assert_eq!(payload.chaddr[..6], [0x02, 0, 0, 0, 0xc0, 0x63]);
        assert_eq!(payload.addresses()[1], Ipv4Addr::new(10, 0, 1, 1));
        // Re-encoding gives the same bytes: answers echo the payload unchanged.
        assert_eq!(p.encode().unwrap(), bytes);
    }

    /// Reference §2.4: the LeaseNak answer is the same payload with command 0x12.
    #[test]
    fn golden_lease_nak_echo() {
        let payload = RenewPayload {
            address: [1, 1, 0, 10],
            xid: 0xcb16f47a,
            lease_seconds: 0,
            chaddr: [2, 0, 0, 0, 0xc0, 0x63, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        };
        let p = Packet {
            node_id: NodeId([0x1e, 0x50, 0xd2, 0x32, 0x4c, 0x42, 0, 0]),
            swarm: swarm_17(),
            message: Message::LeaseNak(payload),
        };
        let bytes = p.encode().unwrap();
        assert_eq!(bytes[14], 0x12);
        assert_eq!(bytes[15], 0);
        assert_eq!(&bytes[16..20], &[1, 1, 0, 10]);
        assert_eq!(Packet::decode(&bytes).unwrap(), p);
    }

    #[test]
    fn we_send_renew_address_in_network_order() {
        let p = RenewPayload::new(Ipv4Addr::new(10, 0, 1, 1), 7, [0; 16]);
        assert_eq!(p.address, [10, 0, 1, 1]);
        assert_eq!(p.addresses()[0], Ipv4Addr::new(10, 0, 1, 1));
    }

    #[test]
    fn rejects_bad_lengths_and_commands() {
        assert_eq!(Packet::decode(&[0; 10]), Err(DecodeError::Short(10)));
        let mut b = hex("00 00 00 00 00 00 00 00 0a 00 80 00 11 04 02 02 00 00 0f 08");
        assert!(matches!(
            Packet::decode(&b),
            Err(DecodeError::Length { expected: 24, .. })
        ));
        b[14] = command::RELEASE;
        assert_eq!(
            Packet::decode(&b),
            Err(DecodeError::UnknownCommand(command::RELEASE))
        );
    }

    /// Our extension, byte for byte: the layout is the compatibility contract between
    /// ddhcp versions (docs/protocol.md).
    #[test]
    fn golden_replicate_and_ack() {
        let p = Packet {
            node_id: NodeId([0x02, 0, 0, 0, 0, 0x01, 0xab, 0xcd]),
            swarm: swarm_17(),
            message: Message::Replicate {
                epoch: 0x01020304,
                seq: 7,
                records: vec![vec![2, 0, 5, 0, 0, 0], vec![0xff]],
            },
        };
        let bytes = hex(
            "02 00 00 00 00 01 ab cd | 0a 00 80 00 | 11 | 04 | 40 | 02 | \
             01 02 03 04 | 00 00 00 07 | 00 06 02 00 05 00 00 00 | 00 01 ff",
        );
        assert_eq!(p.encode().unwrap(), bytes);
        assert_eq!(Packet::decode(&bytes).unwrap(), p);
        let ack = Packet {
            message: Message::ReplicaAck { epoch: 9, next: 8 },
            ..p
        };
        let bytes = hex(
            "02 00 00 00 00 01 ab cd | 0a 00 80 00 | 11 | 04 | 41 | 00 | 00 00 00 09 | 00 00 00 08",
        );
        assert_eq!(ack.encode().unwrap(), bytes);
        assert_eq!(Packet::decode(&bytes).unwrap(), ack);
    }

    #[test]
    fn golden_handback_and_recover() {
        let p = Packet {
            node_id: NodeId([0x02, 0, 0, 0, 0, 0x01, 0xab, 0xcd]),
            swarm: swarm_17(),
            message: Message::Handback {
                epoch: 5,
                seq: 1,
                records: vec![vec![0xff]],
            },
        };
        let bytes = hex(
            "02 00 00 00 00 01 ab cd | 0a 00 80 00 | 11 | 04 | 42 | 01 | \
             00 00 00 05 | 00 00 00 01 | 00 01 ff",
        );
        assert_eq!(p.encode().unwrap(), bytes);
        assert_eq!(Packet::decode(&bytes).unwrap(), p);
        // The end of the stream: no records.
        let end = Packet {
            message: Message::Handback {
                epoch: 5,
                seq: 2,
                records: vec![],
            },
            ..p.clone()
        };
        let bytes = hex(
            "02 00 00 00 00 01 ab cd | 0a 00 80 00 | 11 | 04 | 42 | 00 | 00 00 00 05 | 00 00 00 02",
        );
        assert_eq!(end.encode().unwrap(), bytes);
        assert_eq!(Packet::decode(&bytes).unwrap(), end);
        let rec = Packet {
            message: Message::Recover { nonce: 0xa1b2c3d4 },
            ..p
        };
        let bytes = hex(
            "02 00 00 00 00 01 ab cd | 0a 00 80 00 | 11 | 04 | 43 | 00 | a1 b2 c3 d4 | 00 00 00 00",
        );
        assert_eq!(rec.encode().unwrap(), bytes);
        assert_eq!(Packet::decode(&bytes).unwrap(), rec);
        let mut bad = bytes.clone();
        bad[23] = 1;
        assert!(Packet::decode(&bad).is_err());
    }

    #[test]
    fn replicate_must_hold_exactly_its_records() {
        let good = hex(
            "02 00 00 00 00 01 ab cd 0a 00 80 00 11 04 40 01 00 00 00 01 00 00 00 00 00 02 aa bb",
        );
        assert!(Packet::decode(&good).is_ok());
        // One byte more, one less, a count too high, a zero-length record, a short fixed part.
        let mut long = good.clone();
        long.push(0);
        assert!(Packet::decode(&long).is_err());
        assert!(Packet::decode(&good[..good.len() - 1]).is_err());
        let mut count = good.clone();
        count[15] = 2;
        assert!(Packet::decode(&count).is_err());
        let mut zero = good[..24].to_vec();
        zero.extend_from_slice(&[0, 0]);
        assert!(Packet::decode(&zero).is_err());
        assert!(Packet::decode(&good[..20]).is_err());
        // An ack of any other length, or with a count.
        let ack = hex("02 00 00 00 00 01 ab cd 0a 00 80 00 11 04 41 00 00 00 00 09 00 00 00 08");
        assert!(Packet::decode(&ack).is_ok());
        assert!(Packet::decode(&ack[..23]).is_err());
        let mut counted = ack.clone();
        counted[15] = 1;
        assert!(Packet::decode(&counted).is_err());
    }

    /// The mark goes into the reserved byte of every entry and nowhere else, so a C
    /// receiver (which ignores that byte) decodes the same claims.
    #[test]
    fn claim_mark_touches_only_the_reserved_bytes() {
        let p = Packet {
            node_id: NodeId([1; 8]),
            swarm: swarm_17(),
            message: Message::UpdateClaim(vec![
                ClaimEntry {
                    block: 3,
                    timeout: 60,
                },
                ClaimEntry {
                    block: 9,
                    timeout: 60,
                },
            ]),
        };
        let plain = p.encode().unwrap();
        assert!(!claim_is_marked(&plain));
        let mut marked = plain.clone();
        mark_claim(&mut marked);
        assert!(claim_is_marked(&marked));
        let differ: Vec<usize> = (0..plain.len())
            .filter(|&i| plain[i] != marked[i])
            .collect();
        assert_eq!(differ, vec![HEADER_LEN + 6, HEADER_LEN + 13]);
        assert_eq!(Packet::decode(&marked).unwrap(), p);
        // Other messages are left alone.
        let mut inquire = Packet {
            message: Message::Inquire(vec![1]),
            ..p
        }
        .encode()
        .unwrap();
        let before = inquire.clone();
        mark_claim(&mut inquire);
        assert_eq!(inquire, before);
        assert!(!claim_is_marked(&inquire));
    }

    #[test]
    fn node_id_text() {
        let id: NodeId = "1E50D2324C420000".parse().unwrap();
        assert_eq!(id.0, [0x1e, 0x50, 0xd2, 0x32, 0x4c, 0x42, 0, 0]);
        assert_eq!(id.to_string(), "1E50D2324C420000");
        assert!("1E50".parse::<NodeId>().is_err());
        assert!("1E50D2324C42000G".parse::<NodeId>().is_err());
        assert!(NodeId([0xff; 8]) > NodeId([0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]));
    }

    #[test]
    fn max_claim_packet_fits_minimum_mtu() {
        let entries = HEADER_LEN + CLAIM_ENTRY_LEN * MAX_CLAIM_ENTRIES;
        let sealed = crate::auth::identity::SIG_EXT_LEN + crate::auth::TRAILER_LEN + 40 + 8;
        assert!(entries + sealed <= 1280);
        assert!(MAX_REPLICATE_DATAGRAM + sealed <= 1280);
        assert!(entries <= 1500);
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        fn arb_payload() -> impl Strategy<Value = RenewPayload> {
            (
                any::<[u8; 4]>(),
                any::<u32>(),
                any::<u32>(),
                any::<[u8; 16]>(),
            )
                .prop_map(|(address, xid, lease_seconds, chaddr)| RenewPayload {
                    address,
                    xid,
                    lease_seconds,
                    chaddr,
                })
        }

        fn arb_message() -> impl Strategy<Value = Message> {
            prop_oneof![
                proptest::collection::vec(
                    (any::<u32>(), any::<u16>())
                        .prop_map(|(block, timeout)| ClaimEntry { block, timeout }),
                    0..=255
                )
                .prop_map(Message::UpdateClaim),
                proptest::collection::vec(any::<u32>(), 0..=255).prop_map(Message::Inquire),
                arb_payload().prop_map(Message::RenewLease),
                arb_payload().prop_map(Message::LeaseAck),
                arb_payload().prop_map(Message::LeaseNak),
                (
                    any::<u32>(),
                    any::<u32>(),
                    proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..60), 0..16)
                )
                    .prop_map(|(epoch, seq, records)| Message::Replicate {
                        epoch,
                        seq,
                        records
                    }),
                (any::<u32>(), any::<u32>())
                    .prop_map(|(epoch, next)| Message::ReplicaAck { epoch, next }),
                (
                    any::<u32>(),
                    any::<u32>(),
                    proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..60), 0..16)
                )
                    .prop_map(|(epoch, seq, records)| Message::Handback {
                        epoch,
                        seq,
                        records
                    }),
                any::<u32>().prop_map(|nonce| Message::Recover { nonce }),
            ]
        }

        proptest! {
            #[test]
            fn round_trip(id in any::<[u8; 8]>(), prefix in any::<[u8; 4]>(), len in any::<u8>(),
                          bs in any::<u8>(), message in arb_message()) {
                let p = Packet {
                    node_id: NodeId(id),
                    swarm: Swarm { prefix: prefix.into(), prefix_len: len, block_size: bs },
                    message,
                };
                let bytes = p.encode().unwrap();
                prop_assert_eq!(Packet::decode(&bytes).unwrap(), p);
            }

            #[test]
            fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1600)) {
                if let Ok(p) = Packet::decode(&bytes) {
                    // Whatever decodes re-encodes to exactly the input, apart from the
                    // reserved claim byte, which we always send as zero.
                    let again = p.encode().unwrap();
                    prop_assert_eq!(again.len(), bytes.len());
                }
            }
        }
    }
}

//! Mesh-key authentication of peer datagrams (`--peer-key`, docs/protocol.md
//! "Authentication").
//!
//! Without it, any host on the server link can send one UpdateClaim with node id
//! `FFFFFFFFFFFFFFFF` and take every block (the tie-break rewards the greater id). With a
//! mesh key, every datagram we send carries a 32-byte trailer: key id, a per-start random
//! index, a packet counter and a truncated HMAC-SHA-256 over the datagram. The design is
//! Babel's (RFC 8967, with RFC 9467's separate multicast and unicast counters), because it
//! needs neither synchronised clocks (routers without an RTC) nor counters kept across a
//! restart (`kill -9` loses nothing that matters here):
//!
//! - A receiver remembers, per node id, the sender's index and the highest counter it
//!   accepted on each socket; a datagram whose counter is not higher is a replay.
//! - A datagram with an index it does not know (the sender's first datagram, or its first
//!   after a restart) is held, not processed, and the sender is challenged with a random
//!   nonce. Its authenticated answer names its current index and counter; only then are the
//!   held datagrams released, and only those of that index sent just before the answer, so a
//!   datagram recorded earlier (of this start or an older one) is never taken as new.
//!
//! A C ddhcpd drops any datagram of unexpected length, so it cannot read ours and we do not
//! accept its unsigned ones, except in the migration mode (`--peer-key-migrate`): then
//! multicast goes out twice (plain for the C nodes, sealed for ours) and plain datagrams are
//! accepted from node ids that have never been verified. What that mode does not protect is
//! said in docs/protocol.md.
//!
//! Like the rest of the core this is deterministic: the index and the nonces come from a
//! generator the node seeds.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::io::Read;
use std::net::Ipv6Addr;
use std::path::Path;
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use sha2::Sha256;

use crate::node::{Channel, Dest, Transmit};
use crate::time::Instant;
use crate::wire::{self, HEADER_LEN, NodeId, Swarm};

pub mod identity;
pub use identity::NodeKey;
use identity::{SIG_EXT_LEN, SigFault};

/// Signatures verified per second, at most (after a burst of [`SIG_BURST`]): Ed25519
/// signing and verifying take ~0.1 ms per datagram on x86-64 (docs/benchmarks.md), more on a
/// small router, and a member flooding signed datagrams must not take the CPU. Honest nodes
/// send a few per second.
pub const SIG_RATE: u32 = 400;
pub const SIG_BURST: u32 = 512;

/// Bytes a sealed datagram carries after the C layout.
pub const TRAILER_LEN: usize = 32;
/// First byte of the trailer.
pub const MAGIC: u8 = 0xDD;
/// Second byte: the algorithm, HMAC-SHA-256 truncated to 128 bits (RFC 4868's length).
pub const ALG_HMAC_SHA256_128: u8 = 1;
const TAG_LEN: usize = 16;

/// Command of a challenge request (ours; unicast, sealed): header, then an 8-byte nonce.
pub const CHALLENGE_REQUEST: u8 = 68;
/// Command of a challenge reply: the request's nonce echoed.
pub const CHALLENGE_REPLY: u8 = 69;
const CHALLENGE_LEN: usize = HEADER_LEN + 8;

/// A challenge not answered within this is forgotten (babeld's deadline).
pub const CHALLENGE_TIMEOUT: Duration = Duration::from_secs(30);
/// At most one challenge request per peer, and one reply per peer, this often (babeld).
pub const CHALLENGE_INTERVAL: Duration = Duration::from_millis(300);
/// Datagrams held per peer while its index is challenged; older ones are dropped first.
const MAX_HELD: usize = 8;
/// A held datagram older than this is dropped instead of released.
const HOLD_FOR: Duration = Duration::from_secs(5);
/// A held datagram is released only if the sender sent at most this many datagrams after
/// it and before its challenge reply: what an honest peer sends within a round trip, and
/// far fewer than lie between a recorded datagram and the reply to a challenge it caused.
const HOLD_WINDOW: u32 = 1024;
/// Peers remembered; the longest unheard is forgotten first (it is challenged again).
const MAX_PEERS: usize = 4096;
/// A key file larger than this is refused.
pub const MAX_KEY_FILE: u64 = 4096;

/// One mesh key: 32 secret bytes and the id that names it on the wire. `Debug` does not
/// show the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct MeshKey {
    pub id: u16,
    secret: [u8; 32],
}

impl fmt::Debug for MeshKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MeshKey(id {})", self.id)
    }
}

impl MeshKey {
    pub fn new(id: u16, secret: [u8; 32]) -> Self {
        MeshKey { id, secret }
    }

    /// The id a key file without one gets: the same on every node that has the file.
    pub fn derived_id(secret: &[u8; 32]) -> u16 {
        let mut h = <Hmac<Sha256> as KeyInit>::new_from_slice(b"ddhcp key id")
            .expect("HMAC takes keys of any length");
        h.update(secret);
        let out = h.finalize().into_bytes();
        u16::from_be_bytes([out[0], out[1]])
    }

    /// A key file's text: 64 hex digits, then optionally whitespace and the key id (a
    /// number 0-65535); nothing else but whitespace.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut words = text.split_whitespace();
        let hex = words.next().ok_or("the key file is empty")?;
        let secret = hex32(hex).ok_or_else(|| {
            format!(
                "a mesh key is 64 hexadecimal digits (32 bytes), found {} characters; make one with `head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'`",
                hex.chars().count()
            )
        })?;
        let id = match words.next() {
            Some(w) => w
                .parse::<u16>()
                .map_err(|_| format!("the key id '{w}' is not a number 0-65535"))?,
            None => Self::derived_id(&secret),
        };
        if words.next().is_some() {
            return Err("expected the key and at most a key id".into());
        }
        Ok(MeshKey { id, secret })
    }

    /// Reads and parses a key file; the error is the reason only (the caller names the
    /// flag or command and the path).
    pub fn read(path: &Path) -> Result<Self, String> {
        let file = std::fs::File::open(path).map_err(|e| format!("cannot open: {e}"))?;
        Self::parse(&key_text(file)?)
    }
}

/// 64 hex digits as 32 bytes (key files, pins).
pub fn hex32(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// The text of a key file, at most [`MAX_KEY_FILE`] bytes.
fn key_text(file: std::fs::File) -> Result<String, String> {
    let mut bytes = Vec::new();
    file.take(MAX_KEY_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_KEY_FILE {
        return Err(format!("larger than {MAX_KEY_FILE} bytes: not a key file"));
    }
    String::from_utf8(bytes).map_err(|_| "not text".to_string())
}

struct Key {
    id: u16,
    /// Keyed once: each datagram clones it instead of hashing the key pads again.
    mac: Hmac<Sha256>,
}

/// The keys a node verifies with; one of them signs. Rotation (docs/operations.md): install
/// the new key everywhere, then use it everywhere, then remove the old one.
pub struct Keyring {
    keys: Vec<Key>,
    /// Index into `keys` of the key that signs.
    signing: usize,
}

impl Keyring {
    /// The first key signs. Two keys with one id are refused.
    pub fn new(keys: &[MeshKey]) -> Result<Self, String> {
        let mut ring = Keyring {
            keys: Vec::new(),
            signing: 0,
        };
        for k in keys {
            ring.install(k)?;
        }
        if ring.keys.is_empty() {
            return Err("no key".into());
        }
        Ok(ring)
    }

    /// Adds a key for verifying only. Installing a key again is not an error.
    pub fn install(&mut self, key: &MeshKey) -> Result<(), String> {
        if let Some(k) = self.keys.iter().find(|k| k.id == key.id) {
            let same = k.mac.clone().chain_update(b"x").finalize()
                == Self::keyed(key).chain_update(b"x").finalize();
            return if same {
                Ok(())
            } else {
                Err(format!("another key with id {} is installed", key.id))
            };
        }
        self.keys.push(Key {
            id: key.id,
            mac: Self::keyed(key),
        });
        Ok(())
    }

    fn keyed(key: &MeshKey) -> Hmac<Sha256> {
        <Hmac<Sha256> as KeyInit>::new_from_slice(&key.secret)
            .expect("HMAC takes keys of any length")
    }

    /// Signs with key `id` from now on (it stays a verifying key too).
    pub fn use_key(&mut self, id: u16) -> Result<(), String> {
        let i = self.position(id)?;
        self.signing = i;
        Ok(())
    }

    /// Forgets key `id`; the signing key cannot be removed (use another first).
    pub fn remove(&mut self, id: u16) -> Result<(), String> {
        let i = self.position(id)?;
        if i == self.signing {
            return Err(format!(
                "key {id} signs; `key use` another key before removing it"
            ));
        }
        self.keys.remove(i);
        if self.signing > i {
            self.signing -= 1;
        }
        Ok(())
    }

    fn position(&self, id: u16) -> Result<usize, String> {
        self.keys.iter().position(|k| k.id == id).ok_or_else(|| {
            let ids: Vec<String> = self.keys.iter().map(|k| k.id.to_string()).collect();
            format!("no key with id {id} (installed: {})", ids.join(", "))
        })
    }

    /// Installed key ids, in order of installation.
    pub fn ids(&self) -> impl Iterator<Item = u16> + '_ {
        self.keys.iter().map(|k| k.id)
    }

    pub fn signing_id(&self) -> u16 {
        self.keys[self.signing].id
    }

    fn find(&self, id: u16) -> Option<&Key> {
        self.keys.iter().find(|k| k.id == id)
    }
}

/// Why a datagram was not accepted. Each is counted; all but [`AuthDrop::Replay`] and
/// [`AuthDrop::Stale`] are also a sign that some node is configured differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthDrop {
    /// Unsigned while we require a mesh key (a C node, a node without `--peer-key`, or a
    /// forger).
    Unsigned,
    /// Unsigned (migration mode) from a node id we have seen sign: a forgery in its name.
    UnsignedFromSigner,
    /// Signed with a key id we do not have.
    UnknownKey(u16),
    /// Signed with one of our key ids, but the MAC is wrong (another key with that id, or
    /// a changed datagram).
    BadMac,
    /// Signed, and we have no mesh key.
    SignedNoKey,
    /// A counter we already saw (or lower), or our own datagram sent back to us.
    Replay,
    /// A challenge reply we did not ask for, or too late.
    Stale,
    /// Without a node signature while we require them (`--node-key`).
    NoSignature,
    /// Signed by a key whose hash is not the datagram's node id: a member speaking in
    /// another node's name.
    IdMismatch,
    /// Another key is pinned for this node id.
    PinMismatch,
    BadSignature,
    /// More signed datagrams than [`SIG_RATE`] allows.
    RateLimited,
    /// In the migration mode, the plain copy of a datagram a signing peer also sent sealed,
    /// from the address its verified datagrams come from: expected, not a failure.
    PlainCopy,
}

impl AuthDrop {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthDrop::Unsigned => "unsigned",
            AuthDrop::UnsignedFromSigner => "unsigned-from-signer",
            AuthDrop::UnknownKey(_) => "unknown-key",
            AuthDrop::BadMac => "bad-mac",
            AuthDrop::SignedNoKey => "signed-no-key",
            AuthDrop::Replay => "replay",
            AuthDrop::Stale => "stale-challenge",
            AuthDrop::NoSignature => "no-signature",
            AuthDrop::IdMismatch => "id-mismatch",
            AuthDrop::PinMismatch => "pin-mismatch",
            AuthDrop::BadSignature => "bad-signature",
            AuthDrop::RateLimited => "rate-limited",
            AuthDrop::PlainCopy => "plain-copy",
        }
    }

    /// Whether this means a mesh-key mismatch (a node configured differently) rather than
    /// an old or repeated datagram, or a member misbehaving: those must not make us stop
    /// claiming, or a member could halt the mesh with them.
    pub fn is_mismatch(self) -> bool {
        !matches!(
            self,
            AuthDrop::Replay
                | AuthDrop::Stale
                | AuthDrop::IdMismatch
                | AuthDrop::PinMismatch
                | AuthDrop::BadSignature
                | AuthDrop::RateLimited
                | AuthDrop::UnsignedFromSigner
                | AuthDrop::PlainCopy
        )
    }
}

/// What [`Auth::open`] made of a datagram.
#[derive(Debug, PartialEq, Eq)]
pub enum Opened {
    /// Unsigned and acceptable (no mesh key, or migration mode): process it whole.
    Plain,
    /// Verified: process its first `len` bytes (the trailer cut off).
    Verified {
        len: usize,
    },
    /// Nothing to process now: a challenge message, or held until the sender's index is
    /// confirmed ([`Auth::take_released`]).
    Consumed,
    Drop(AuthDrop),
}

/// A datagram held while its sender is challenged.
struct Held {
    channel: Channel,
    from: Ipv6Addr,
    inner: Vec<u8>,
    index: u64,
    counter: u32,
    at: Instant,
}

#[derive(Default)]
struct PeerAuth {
    /// The sender's index, once confirmed by a challenge reply.
    index: Option<u64>,
    /// Highest counter accepted on each socket (multicast, unicast).
    last: [u32; 2],
    /// Our outstanding challenge: nonce, when it was made (a reply is accepted until
    /// [`CHALLENGE_TIMEOUT`] after that) and when it was last sent.
    challenge: Option<(u64, Instant, Instant)>,
    last_reply_sent: Option<Instant>,
    held: VecDeque<Held>,
    /// Last verified datagram: when, and under which key.
    seen: Instant,
    key_id: u16,
}

fn slot(c: Channel) -> usize {
    match c {
        Channel::Multicast => 0,
        Channel::Unicast => 1,
    }
}

/// Per-key use, for `ddhcpctl keys`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRow {
    pub id: u16,
    pub signing: bool,
    /// Peers whose latest verified datagram (within the window asked for) used this key.
    pub peers: usize,
}

/// The sealing and opening of peer datagrams for one node.
pub struct Auth {
    ring: Option<Keyring>,
    migrate: bool,
    me: NodeId,
    /// Header fields of our challenge messages (any of our pools: they name none).
    swarm: Swarm,
    index: u64,
    counter: u32,
    rng: StdRng,
    peers: BTreeMap<NodeId, PeerAuth>,
    /// Source addresses of verified datagrams: in migration mode, unicast to them is sealed
    /// only; to others (C nodes) it goes plain.
    signers: BTreeMap<Ipv6Addr, Instant>,
    /// In the migration mode, nodes whose plain datagrams were accepted (C nodes, or ours
    /// before their first verified datagram): source and last time, so an operator sees
    /// when the last C node is gone.
    plain_senders: BTreeMap<NodeId, (Ipv6Addr, Instant)>,
    released: Vec<(Channel, Ipv6Addr, Vec<u8>)>,
    out: VecDeque<Transmit>,
    /// Challenge requests sent, replies sent, datagrams held (the node's counters show
    /// them).
    pub challenges_sent: u64,
    pub replies_sent: u64,
    pub held: u64,
    /// `--node-key`: we sign every datagram and require peers' signatures.
    node_key: Option<NodeKey>,
    /// Public keys by node id, pinned on first use.
    pins: BTreeMap<NodeId, [u8; 32]>,
    /// Pins made since [`Auth::take_new_pins`] (the shell persists them).
    new_pins: Vec<(NodeId, [u8; 32])>,
    /// Signature budget: tokens (thousandths) and when it was last filled.
    sig_budget: Option<(u64, Instant)>,
    pub signatures_verified: u64,
}

impl Auth {
    /// `keys` empty: no authentication (plain datagrams, as the C daemon); else the first
    /// key signs.
    pub fn new(
        keys: &[MeshKey],
        migrate: bool,
        me: NodeId,
        swarm: Swarm,
        seed: u64,
    ) -> Result<Self, String> {
        let ring = if keys.is_empty() {
            None
        } else {
            Some(Keyring::new(keys)?)
        };
        let mut rng = StdRng::seed_from_u64(seed ^ 0x6d61_635f_6b65_7921);
        Ok(Auth {
            ring,
            migrate,
            me,
            swarm,
            index: rng.random(),
            counter: 0,
            rng,
            peers: BTreeMap::new(),
            signers: BTreeMap::new(),
            plain_senders: BTreeMap::new(),
            released: Vec::new(),
            out: VecDeque::new(),
            challenges_sent: 0,
            replies_sent: 0,
            held: 0,
            node_key: None,
            pins: BTreeMap::new(),
            new_pins: Vec::new(),
            sig_budget: None,
            signatures_verified: 0,
        })
    }

    /// Signs with `key` from now on and requires signatures of every peer; our node id
    /// becomes the key's. `pins` are those persisted by earlier runs.
    pub fn set_node_key(&mut self, key: NodeKey, pins: &[(NodeId, [u8; 32])]) {
        self.me = key.id();
        self.node_key = Some(key);
        for &(id, public) in pins.iter().take(MAX_PEERS) {
            self.pins.insert(id, public);
        }
    }

    pub fn node_key(&self) -> Option<&NodeKey> {
        self.node_key.as_ref()
    }

    pub fn pinned(&self) -> usize {
        self.pins.len()
    }

    /// Node ids pinned since the last call, to persist.
    pub fn take_new_pins(&mut self) -> Vec<(NodeId, [u8; 32])> {
        std::mem::take(&mut self.new_pins)
    }

    /// Takes one signature from the budget (a token bucket in thousandths of a token:
    /// time here has millisecond steps), if there is one.
    fn sig_budget(&mut self, now: Instant) -> bool {
        let full = u64::from(SIG_BURST) * 1000;
        let (tokens, at) = self.sig_budget.unwrap_or((full, now));
        let elapsed = now.saturating_since(at).as_millis() as u64;
        let tokens = (tokens + elapsed * u64::from(SIG_RATE)).min(full);
        if tokens < 1000 {
            self.sig_budget = Some((tokens, now));
            return false;
        }
        self.sig_budget = Some((tokens - 1000, now));
        true
    }

    /// Checks the node signature of a MAC-verified datagram (`body`: without the trailer)
    /// and returns the length of its C part. Without a node key of ours, a signature is
    /// still checked if present (a mesh moving to node keys), but not required.
    fn check_signature(
        &mut self,
        now: Instant,
        channel: Channel,
        body: &[u8],
        head: &[u8],
    ) -> Result<usize, AuthDrop> {
        if !identity::has_extension(body) {
            return if self.node_key.is_some() {
                Err(AuthDrop::NoSignature)
            } else {
                Ok(body.len())
            };
        }
        let len = body.len() - SIG_EXT_LEN;
        let (inner, ext) = body.split_at(len);
        let node = NodeId(
            inner[..8]
                .try_into()
                .expect("sealed datagrams have a header"),
        );
        let public: &[u8; 32] = ext[2..34].try_into().expect("extension length checked");
        if identity::node_id_of(public) != node {
            return Err(AuthDrop::IdMismatch);
        }
        if let Some(pin) = self.pins.get(&node)
            && pin != public
        {
            return Err(AuthDrop::PinMismatch);
        }
        if !self.sig_budget(now) {
            return Err(AuthDrop::RateLimited);
        }
        let signed = identity::signed_input(slot(channel) as u8, inner, head);
        let public = identity::verify(ext, node, &signed).map_err(|f| match f {
            SigFault::IdMismatch => AuthDrop::IdMismatch,
            SigFault::PinMismatch => AuthDrop::PinMismatch,
            SigFault::BadSignature => AuthDrop::BadSignature,
        })?;
        self.signatures_verified += 1;
        if !self.pins.contains_key(&node) {
            if self.pins.len() >= MAX_PEERS {
                // Ids are their keys' hashes: a pin dropped only costs the collision check.
                if let Some(&old) = self.pins.keys().next() {
                    self.pins.remove(&old);
                }
            }
            self.pins.insert(node, public);
            self.new_pins.push((node, public));
        }
        Ok(len)
    }

    pub fn enabled(&self) -> bool {
        self.ring.is_some()
    }

    pub fn migrate(&self) -> bool {
        self.migrate
    }

    pub fn set_migrate(&mut self, on: bool) {
        self.migrate = on;
    }

    pub fn set_node_id(&mut self, id: NodeId) {
        self.me = id;
    }

    pub fn keyring(&self) -> Option<&Keyring> {
        self.ring.as_ref()
    }

    /// Installs a key (the first one turns authentication on, signing with it).
    pub fn install(&mut self, key: &MeshKey) -> Result<(), String> {
        match &mut self.ring {
            Some(r) => r.install(key),
            None => {
                self.ring = Some(Keyring::new(std::slice::from_ref(key))?);
                Ok(())
            }
        }
    }

    pub fn use_key(&mut self, id: u16) -> Result<(), String> {
        self.ring
            .as_mut()
            .ok_or("no mesh key is installed")?
            .use_key(id)
    }

    pub fn remove(&mut self, id: u16) -> Result<(), String> {
        self.ring
            .as_mut()
            .ok_or("no mesh key is installed")?
            .remove(id)
    }

    /// Every installed key, with how many peers signed with it since `since`.
    pub fn key_rows(&self, since: Instant) -> Vec<KeyRow> {
        let Some(ring) = &self.ring else {
            return Vec::new();
        };
        ring.ids()
            .map(|id| KeyRow {
                id,
                signing: id == ring.signing_id(),
                peers: self
                    .peers
                    .values()
                    .filter(|p| p.index.is_some() && p.key_id == id && p.seen >= since)
                    .count(),
            })
            .collect()
    }

    /// Nodes whose plain datagrams were accepted since `since` (migration mode): id, source
    /// and last time.
    pub fn plain_senders(&self, since: Instant) -> Vec<(NodeId, Ipv6Addr, Instant)> {
        self.plain_senders
            .iter()
            .filter(|(_, (_, t))| *t >= since)
            .map(|(id, (a, t))| (*id, *a, *t))
            .collect()
    }

    fn note_plain_sender(&mut self, now: Instant, node: NodeId, from: Ipv6Addr) {
        if self.plain_senders.len() >= MAX_PEERS
            && !self.plain_senders.contains_key(&node)
            && let Some(old) = self
                .plain_senders
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(id, _)| *id)
        {
            self.plain_senders.remove(&old);
        }
        self.plain_senders.insert(node, (from, now));
    }

    /// Node ids whose index is confirmed and that were heard since `since`.
    pub fn verified_peers(&self, since: Instant) -> usize {
        self.peers
            .values()
            .filter(|p| p.index.is_some() && p.seen >= since)
            .count()
    }

    /// Whether a datagram has the shape of a sealed one (a trailer where a plain datagram
    /// of its command would have ended). Plain datagrams of the C layout never do; one of
    /// our variable-length messages could by chance, so it must also fail to decode plain.
    pub fn looks_sealed(data: &[u8]) -> bool {
        let n = data.len();
        if n < HEADER_LEN + TRAILER_LEN
            || data[n - TRAILER_LEN] != MAGIC
            || data[n - TRAILER_LEN + 1] != ALG_HMAC_SHA256_128
        {
            return false;
        }
        let body = n - TRAILER_LEN;
        Self::shape_ok(data, body)
            || (identity::has_extension(&data[..body]) && Self::shape_ok(data, body - SIG_EXT_LEN))
    }

    /// Whether a C-layout datagram of `inner` bytes (its header at the start of `data`)
    /// has the length its command and count give.
    fn shape_ok(data: &[u8], inner: usize) -> bool {
        let count = usize::from(data[15]);
        match data[14] {
            wire::command::UPDATE_CLAIM => inner == HEADER_LEN + wire::CLAIM_ENTRY_LEN * count,
            wire::command::INQUIRE => inner == HEADER_LEN + wire::INQUIRE_ENTRY_LEN * count,
            wire::command::RENEW_LEASE | wire::command::LEASE_ACK | wire::command::LEASE_NAK => {
                inner == wire::RENEW_PACKET_LEN
            }
            CHALLENGE_REQUEST | CHALLENGE_REPLY => inner == CHALLENGE_LEN,
            _ => wire::Packet::decode(data).is_err(),
        }
    }

    fn mac_input(mac: &mut Hmac<Sha256>, channel: Channel, signed: &[u8]) {
        // The socket is part of what is signed: a multicast datagram replayed as unicast
        // (which has its own counter) fails.
        mac.update(&[b'd', b'd', slot(channel) as u8]);
        mac.update(signed);
    }

    /// Appends our trailer to a datagram for `channel`. Without a mesh key, does nothing.
    pub fn seal(&mut self, channel: Channel, datagram: &mut Vec<u8>) {
        let Some(ring) = &self.ring else {
            return;
        };
        if self.counter == u32::MAX {
            // A new index, as after a restart: peers challenge it once.
            self.index = self.rng.random();
            self.counter = 0;
        }
        self.counter += 1;
        let key = &ring.keys[ring.signing];
        let mut head = [0u8; 16];
        head[0] = MAGIC;
        head[1] = ALG_HMAC_SHA256_128;
        head[2..4].copy_from_slice(&key.id.to_be_bytes());
        head[4..12].copy_from_slice(&self.index.to_be_bytes());
        head[12..16].copy_from_slice(&self.counter.to_be_bytes());
        if let Some(nk) = &self.node_key {
            let signed = identity::signed_input(slot(channel) as u8, datagram, &head);
            datagram.extend_from_slice(&nk.extension(&signed));
        }
        datagram.extend_from_slice(&head);
        let mut mac = key.mac.clone();
        Self::mac_input(&mut mac, channel, datagram);
        let tag = mac.finalize().into_bytes();
        datagram.extend_from_slice(&tag[..TAG_LEN]);
    }

    /// How a datagram for `dest` goes out: sealed, and in migration mode also plain (all
    /// multicast; unicast to a node we never verified, which may be a C node).
    pub fn seal_for(
        &mut self,
        dest: Dest,
        datagram: Vec<u8>,
    ) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
        if self.ring.is_none() {
            return (Some(datagram), None);
        }
        let (channel, plain_too) = match dest {
            Dest::Multicast => (Channel::Multicast, self.migrate),
            Dest::Unicast(a) => {
                if self.migrate && !self.signers.contains_key(&a) {
                    // A C node cannot read a sealed one; ours accept plain in this mode.
                    return (Some(datagram), None);
                }
                (Channel::Unicast, false)
            }
        };
        let plain = plain_too.then(|| datagram.clone());
        let mut sealed = datagram;
        self.seal(channel, &mut sealed);
        (plain, Some(sealed))
    }

    /// Checks a received datagram. Challenge messages are answered here, held datagrams
    /// are released into [`Auth::take_released`], and replies to send are in
    /// [`Auth::poll_transmit`].
    pub fn open(&mut self, now: Instant, channel: Channel, from: Ipv6Addr, data: &[u8]) -> Opened {
        let sealed = Self::looks_sealed(data);
        let Some(ring) = &self.ring else {
            return if sealed {
                Opened::Drop(AuthDrop::SignedNoKey)
            } else {
                Opened::Plain
            };
        };
        if !sealed {
            if !self.migrate {
                return Opened::Drop(AuthDrop::Unsigned);
            }
            let Some(node) = data.get(..8).and_then(|id| id.try_into().ok()).map(NodeId) else {
                return Opened::Plain;
            };
            // We sign everything too: a plain datagram in our name is someone else's.
            let signer =
                node == self.me || self.peers.get(&node).is_some_and(|p| p.index.is_some());
            if !signer {
                self.note_plain_sender(now, node, from);
                return Opened::Plain;
            }
            return if node != self.me && self.signers.contains_key(&from) {
                Opened::Drop(AuthDrop::PlainCopy)
            } else {
                Opened::Drop(AuthDrop::UnsignedFromSigner)
            };
        }
        let n = data.len();
        let t = &data[n - TRAILER_LEN..];
        let key_id = u16::from_be_bytes([t[2], t[3]]);
        let index = u64::from_be_bytes([t[4], t[5], t[6], t[7], t[8], t[9], t[10], t[11]]);
        let counter = u32::from_be_bytes([t[12], t[13], t[14], t[15]]);
        let Some(key) = ring.find(key_id) else {
            return Opened::Drop(AuthDrop::UnknownKey(key_id));
        };
        let mut mac = key.mac.clone();
        Self::mac_input(&mut mac, channel, &data[..n - TAG_LEN]);
        if mac.verify_truncated_left(&data[n - TAG_LEN..]).is_err() {
            return Opened::Drop(AuthDrop::BadMac);
        }
        let node = NodeId(
            data[..8]
                .try_into()
                .expect("sealed datagrams have a header"),
        );
        if node == self.me && index == self.index {
            return Opened::Drop(AuthDrop::Replay);
        }
        if !matches!(data[14], CHALLENGE_REQUEST | CHALLENGE_REPLY)
            && let Some(p) = self.peers.get(&node)
            && p.index == Some(index)
            && counter <= p.last[slot(channel)]
        {
            // Before the signature: a replay must not cost a verification.
            return Opened::Drop(AuthDrop::Replay);
        }
        let body = &data[..n - TRAILER_LEN];
        let head = &data[n - TRAILER_LEN..n - TAG_LEN];
        let len = match self.check_signature(now, channel, body, head) {
            Ok(len) => len,
            Err(d) => return Opened::Drop(d),
        };
        let inner = &data[..len];
        match inner[14] {
            CHALLENGE_REQUEST if channel == Channel::Unicast => {
                self.on_request(now, node, from, inner);
                return Opened::Consumed;
            }
            CHALLENGE_REPLY if channel == Channel::Unicast => {
                return self.on_reply(now, node, index, counter, key_id, inner);
            }
            _ => {}
        }
        self.make_room(node);
        let peer = self.peers.entry(node).or_default();
        if peer.index == Some(index) {
            if counter <= peer.last[slot(channel)] {
                return Opened::Drop(AuthDrop::Replay);
            }
            peer.last[slot(channel)] = counter;
            peer.seen = now;
            peer.key_id = key_id;
            self.signers.insert(from, now);
            return Opened::Verified { len: inner.len() };
        }
        // An index we do not know: hold the datagram and ask.
        while peer.held.len() >= MAX_HELD {
            peer.held.pop_front();
        }
        peer.held.push_back(Held {
            channel,
            from,
            inner: inner.to_vec(),
            index,
            counter,
            at: now,
        });
        self.held += 1;
        let live = peer
            .challenge
            .filter(|&(_, created, _)| now.saturating_since(created) < CHALLENGE_TIMEOUT);
        let ask = match live {
            Some((nonce, created, sent)) if now.saturating_since(sent) >= CHALLENGE_INTERVAL => {
                Some((nonce, created))
            }
            Some(_) => None,
            None => Some((self.rng.random(), now)),
        };
        if let Some((nonce, created)) = ask {
            peer.challenge = Some((nonce, created, now));
            self.challenges_sent += 1;
            self.send_challenge(CHALLENGE_REQUEST, from, nonce);
        }
        Opened::Consumed
    }

    /// Held and released datagrams, in the order to process them (each verified, the
    /// trailer cut off).
    pub fn take_released(&mut self) -> Vec<(Channel, Ipv6Addr, Vec<u8>)> {
        std::mem::take(&mut self.released)
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    fn on_request(&mut self, now: Instant, node: NodeId, from: Ipv6Addr, inner: &[u8]) {
        if inner.len() != CHALLENGE_LEN {
            return;
        }
        self.make_room(node);
        let peer = self.peers.entry(node).or_default();
        if peer
            .last_reply_sent
            .is_some_and(|t| now.saturating_since(t) < CHALLENGE_INTERVAL)
        {
            return;
        }
        peer.last_reply_sent = Some(now);
        let nonce = u64::from_be_bytes(inner[16..24].try_into().expect("length checked"));
        self.replies_sent += 1;
        self.send_challenge(CHALLENGE_REPLY, from, nonce);
    }

    fn on_reply(
        &mut self,
        now: Instant,
        node: NodeId,
        index: u64,
        counter: u32,
        key_id: u16,
        inner: &[u8],
    ) -> Opened {
        if inner.len() != CHALLENGE_LEN {
            return Opened::Drop(AuthDrop::Stale);
        }
        let nonce = u64::from_be_bytes(inner[16..24].try_into().expect("length checked"));
        let Some(peer) = self.peers.get_mut(&node) else {
            return Opened::Drop(AuthDrop::Stale);
        };
        match peer.challenge {
            Some((n, created, _))
                if n == nonce && now.saturating_since(created) < CHALLENGE_TIMEOUT => {}
            _ => return Opened::Drop(AuthDrop::Stale),
        }
        peer.challenge = None;
        peer.index = Some(index);
        peer.last = [0, 0];
        // One of ours, heard plain before it was verified: not a C node.
        self.plain_senders.remove(&node);
        peer.seen = now;
        peer.key_id = key_id;
        let mut held: Vec<Held> = peer.held.drain(..).collect();
        held.sort_by_key(|h| h.counter);
        for h in held {
            let fresh = h.index == index
                && h.counter < counter
                && counter - h.counter <= HOLD_WINDOW
                && now.saturating_since(h.at) < HOLD_FOR
                && h.counter > peer.last[slot(h.channel)];
            if fresh {
                peer.last[slot(h.channel)] = h.counter;
                self.signers.insert(h.from, now);
                self.released.push((h.channel, h.from, h.inner));
            }
        }
        // Nothing the sender sent before its reply is new to us any more.
        peer.last = [counter.max(peer.last[0]), counter];
        Opened::Consumed
    }

    fn send_challenge(&mut self, cmd: u8, to: Ipv6Addr, nonce: u64) {
        let mut d = Vec::with_capacity(CHALLENGE_LEN + TRAILER_LEN);
        d.extend_from_slice(&self.me.0);
        d.extend_from_slice(&self.swarm.prefix.octets());
        d.push(self.swarm.prefix_len);
        d.push(self.swarm.block_size);
        d.push(cmd);
        d.push(0);
        d.extend_from_slice(&nonce.to_be_bytes());
        self.seal(Channel::Unicast, &mut d);
        self.out.push_back(Transmit {
            dest: Dest::Unicast(to),
            payload: d,
        });
    }

    /// Keeps the tables bounded: a new node id beyond [`MAX_PEERS`] evicts the one heard
    /// longest ago (it is challenged again if it comes back).
    fn make_room(&mut self, node: NodeId) {
        if self.peers.len() < MAX_PEERS || self.peers.contains_key(&node) {
            return;
        }
        if let Some(old) = self
            .peers
            .iter()
            .min_by_key(|(_, p)| p.seen)
            .map(|(id, _)| *id)
        {
            self.peers.remove(&old);
        }
        if self.signers.len() >= MAX_PEERS
            && let Some(a) = self
                .signers
                .iter()
                .min_by_key(|(_, t)| **t)
                .map(|(a, _)| *a)
        {
            self.signers.remove(&a);
        }
    }
}

#[cfg(test)]
mod tests;

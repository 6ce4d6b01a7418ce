//! Node keys (`--node-key`, docs/protocol.md "Node keys"): an Ed25519 key pair per node,
//! the node id derived from its public key, and a signature on every datagram.
//!
//! A mesh key keeps outsiders out, but every member holds it, so a member could still send
//! claims in another member's name. With node keys a datagram's node id must be the hash
//! of the public key it carries, and the signature must verify: a member can speak only for
//! the ids whose secret keys it has. The id being the key's hash makes the binding
//! self-certifying; receivers also pin the key they first saw for an id (trust on first
//! use), so that even a 64-bit collision found by brute force is refused.
//!
//! The extension sits between the C layout and the mesh-key trailer:
//! `DD 02 | public key (32) | signature (64)`. The signature covers a label, the socket
//! byte, the datagram and the trailer's head (key id, index, counter), so a member cannot
//! re-wrap someone else's signed datagram under a fresh index and counter: replay
//! protection stays the mesh key's (one mechanism, no second set of counters).

use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use super::{MAGIC, hex32, key_text};
use crate::wire::NodeId;

/// Bytes the signature extension takes.
pub const SIG_EXT_LEN: usize = 2 + 32 + 64;
/// Second byte of the extension.
pub const ALG_ED25519: u8 = 2;

/// A node's key pair. `Debug` does not show the secret.
pub struct NodeKey {
    secret: SigningKey,
    public: [u8; 32],
    id: NodeId,
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeKey(id {})", self.id)
    }
}

/// The node id a public key stands for: the first 8 bytes of SHA-256 over a label and the
/// key.
pub fn node_id_of(public: &[u8; 32]) -> NodeId {
    let mut h = Sha256::new();
    h.update(b"ddhcp node id v1");
    h.update(public);
    let out = h.finalize();
    let mut id = [0u8; 8];
    id.copy_from_slice(&out[..8]);
    NodeId(id)
}

impl NodeKey {
    pub fn from_seed(seed: [u8; 32]) -> Self {
        let secret = SigningKey::from_bytes(&seed);
        let public = secret.verifying_key().to_bytes();
        NodeKey {
            id: node_id_of(&public),
            secret,
            public,
        }
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn public(&self) -> &[u8; 32] {
        &self.public
    }

    /// A key file's text: the 32-byte secret seed as 64 hex digits.
    pub fn parse(text: &str) -> Result<Self, String> {
        let hex = text.trim();
        let seed = hex32(hex).ok_or_else(|| {
            format!(
                "a node key is 64 hexadecimal digits (32 bytes), found {} characters",
                hex.chars().count()
            )
        })?;
        Ok(Self::from_seed(seed))
    }

    /// The file's text for this key.
    pub fn to_file_text(&self) -> String {
        let mut s: String = self
            .secret
            .to_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        s.push('\n');
        s
    }

    /// Reads the key file, or, if it does not exist, makes a key from `seed` and writes it
    /// (mode 0600, written to a temporary name and renamed, so a crash leaves either no
    /// file or a whole one). Returns the key and whether it was created.
    pub fn load_or_create(path: &Path, seed: [u8; 32]) -> Result<(Self, bool), String> {
        match std::fs::File::open(path) {
            Ok(file) => Ok((Self::parse(&key_text(file)?)?, false)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::from_seed(seed);
                write_private(path, &key.to_file_text())
                    .map_err(|e| format!("cannot create: {e}"))?;
                Ok((key, true))
            }
            Err(e) => Err(format!("cannot open: {e}")),
        }
    }

    /// The extension for a datagram: `signed` is what [`signed_input`] builds.
    pub fn extension(&self, signed: &[u8]) -> [u8; SIG_EXT_LEN] {
        let sig = self.secret.sign(signed).to_bytes();
        let mut ext = [0u8; SIG_EXT_LEN];
        ext[0] = MAGIC;
        ext[1] = ALG_ED25519;
        ext[2..34].copy_from_slice(&self.public);
        ext[34..].copy_from_slice(&sig);
        ext
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// What the signature covers: a label, the socket byte, the datagram (C layout) and the
/// trailer's first 16 bytes.
pub fn signed_input(slot: u8, inner: &[u8], head: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(6 + inner.len() + head.len());
    m.extend_from_slice(b"ddsig");
    m.push(slot);
    m.extend_from_slice(inner);
    m.extend_from_slice(head);
    m
}

/// Whether `body` (a verified datagram without its trailer) ends in a signature extension.
pub fn has_extension(body: &[u8]) -> bool {
    body.len() >= crate::wire::HEADER_LEN + SIG_EXT_LEN && {
        let e = &body[body.len() - SIG_EXT_LEN..];
        e[0] == MAGIC && e[1] == ALG_ED25519
    }
}

/// Why a signed datagram was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SigFault {
    /// The node id is not the hash of the key carried.
    IdMismatch,
    /// Another key was pinned for this node id.
    PinMismatch,
    BadSignature,
}

/// Checks an extension against the datagram it came with. The caller has checked
/// [`has_extension`] and the pin.
pub fn verify(ext: &[u8], node: NodeId, signed: &[u8]) -> Result<[u8; 32], SigFault> {
    let public: [u8; 32] = ext[2..34].try_into().expect("extension length checked");
    if node_id_of(&public) != node {
        return Err(SigFault::IdMismatch);
    }
    let sig: [u8; 64] = ext[34..SIG_EXT_LEN]
        .try_into()
        .expect("extension length checked");
    let key = VerifyingKey::from_bytes(&public).map_err(|_| SigFault::BadSignature)?;
    key.verify_strict(signed, &Signature::from_bytes(&sig))
        .map_err(|_| SigFault::BadSignature)?;
    Ok(public)
}

//! What the core asks to be made durable, and what it gets back after a restart.
//!
//! The core stays free of files and clocks: it emits [`Change`]s, in order, as its durable
//! state changes, and the shell (`store`) writes them out before it lets anything that
//! depends on them leave the process (a DHCP ACK, a claim announcement, a control reply).
//! After a restart the shell replays the journal into a [`Restored`] and hands it to
//! [`crate::node::Node::restore`].
//!
//! Times are core [`Instant`]s here. The store translates them to wall-clock time on the way
//! out and back on the way in, because monotonic clocks restart with the process.

use std::net::Ipv4Addr;

use crate::dhcp::leases::ClientKey;
use crate::replica::BlockReplica;
use crate::time::Instant;
use crate::wire::NodeId;

/// One change of durable state. Replaying all changes in order rebuilds the state; a later
/// change for the same block, address or option code replaces an earlier one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// We own `block` since `since`.
    BlockOwned { block: u32, since: Instant },
    /// `block` is no longer ours (given up, taken over, or never won back after a restart).
    BlockGone { block: u32 },
    /// We took `block` over from an owner that vanished: its clients may hold leases from
    /// it until `until`, so its addresses go only to clients asking for them by name.
    BlockHold { block: u32, until: Instant },
    /// Every block we own was announced at `at` with a TTL of `ttl` seconds; peers consider
    /// our claims valid until `at + ttl`.
    Announced { at: Instant, ttl: u16 },
    /// An address is bound (leased or quarantined) until the record's expiry.
    Lease(LeaseRecord),
    /// An address is free again.
    LeaseGone(Ipv4Addr),
    /// A DHCP option set (`Some`) or removed (`None`) at run time.
    Option { code: u8, payload: Option<Vec<u8>> },
    /// An address of the local service (`use=local`) is held as `held` now: configured on
    /// the host, proven, standby or active. Written when it becomes standby or active (and
    /// on every move between the two), not while it is only being added or proven.
    Local { ip: Ipv4Addr, held: LocalHeld },
    /// An address of the local service is no longer held (back to free).
    LocalGone(Ipv4Addr),
    /// An address of the allocation service (`use=api`) is allocated.
    Allocated {
        ip: Ipv4Addr,
        alloc: crate::api::Allocation,
    },
    /// An allocation is gone: released (cooling down until `cooldown`), or lost with its
    /// block (`None`).
    AllocGone {
        ip: Ipv4Addr,
        cooldown: Option<Instant>,
    },
    /// A change of `block` of another node's, `origin`, of which we hold a replica
    /// (`crate::replica`): kept in our store too, because a node and a holder of its
    /// replicas can fail together (a power cut of a rack, a mesh-wide outage), and a
    /// holder that came back empty would leave the owner's bindings with nobody.
    /// `change` is a block or binding change (`BlockOwned` starts the block afresh,
    /// `BlockGone` forgets it), never another `Replica`.
    Replica {
        origin: NodeId,
        block: u32,
        change: Box<Change>,
    },
}

/// How the local service held an address, as the store keeps it: what it is configured as
/// again at once after a restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LocalHeld {
    /// Proven and unused: proven again after a restart.
    Standby,
    /// In use by a socket: active again at once after a restart, and standby after the
    /// hysteresis if no socket uses it any more.
    Active,
    /// Active by `mark-active`: active again at once, and stays so until `mark-standby`
    /// (no socket poll can tell a third party's use).
    Marked,
}

impl LocalHeld {
    /// Active, by a socket or by a mark.
    pub fn is_active(self) -> bool {
        !matches!(self, LocalHeld::Standby)
    }
}

/// A bound address as the store keeps it. Offers are not recorded: a client whose offer is
/// forgotten simply asks again (RFC 2131 keeps offers out of stable storage too).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRecord {
    pub ip: Ipv4Addr,
    pub until: Instant,
    /// A client declined the address (it is in use by someone else); nobody gets it until
    /// `until`.
    pub declined: bool,
    /// The client (identifier or hardware address); `None` for a quarantined address.
    pub client: Option<ClientKey>,
    pub chaddr: [u8; 16],
    pub hostname: Option<Box<str>>,
}

/// Durable state read back at start-up, in core time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// Blocks we owned, with the time we got each.
    pub blocks: Vec<(u32, Instant)>,
    /// Blocks of those taken over from a vanished owner, with when their hold ends.
    pub holds: Vec<(u32, Instant)>,
    /// When we last announced all our blocks, and with which TTL (seconds).
    pub announced: Option<(Instant, u16)>,
    /// Leases and quarantined addresses that had not expired when the store was read.
    pub leases: Vec<LeaseRecord>,
    /// Options changed at run time, in the order they were changed; they apply on top of
    /// the command line's.
    pub options: Vec<(u8, Option<Vec<u8>>)>,
    /// Addresses the local service held (standby or active), in address order. They do not
    /// expire: those in blocks that are ours again are configured again at once, the
    /// others dropped.
    pub local: Vec<(Ipv4Addr, LocalHeld)>,
    /// Allocations of the allocation service; they never expire.
    pub allocations: Vec<(Ipv4Addr, crate::api::Allocation)>,
    /// Released addresses still cooling down, with until when.
    pub cooling: Vec<(Ipv4Addr, Instant)>,
    /// What we hold of other nodes' blocks as their replica holder: (origin, block, what).
    pub replicas: Vec<(NodeId, u32, BlockReplica)>,
    /// The wall clock now reads earlier than when the state was last written (a router
    /// that booted without a real-time clock and has no NTP time yet). How long we were
    /// down is unknown then, so no claim is trusted to be still valid: blocks are claimed
    /// afresh, and leases keep at most the time they had left when last written.
    pub clock_went_back: bool,
}

/// An allocation record applied to an allocation table and its cooling list: one rule for
/// the store's replay and for a replica holder's copy of a block.
pub(crate) fn apply_allocation(
    allocations: &mut std::collections::BTreeMap<Ipv4Addr, crate::api::Allocation>,
    cooling: &mut std::collections::BTreeMap<Ipv4Addr, Instant>,
    ip: Ipv4Addr,
    alloc: Option<crate::api::Allocation>,
    cooldown: Option<Instant>,
) {
    match alloc {
        Some(a) => {
            cooling.remove(&ip);
            allocations.insert(ip, a);
        }
        None => {
            allocations.remove(&ip);
            match cooldown {
                Some(until) => cooling.insert(ip, until),
                None => cooling.remove(&ip),
            };
        }
    }
}

//! The lease table of the blocks we own.
//!
//! Each owned block has one record per address. Unlike ddhcpd we look clients up (by client
//! identifier, else hardware address), so a client gets its address back while its lease or
//! its expired-but-unused record lasts, and new clients are given addresses nobody used
//! recently before ones with a remembered owner. Declined addresses are quarantined.
//! Deadlines live in an ordered set, so expiry never scans the table.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::BuildHasher;
use std::net::Ipv4Addr;
use std::time::Duration;

use crate::hash::{FxHashMap, FxHashSet};
use crate::persist::{Change, LeaseRecord};
use crate::range::ManagedRange;
use crate::time::Instant;

/// Who a lease belongs to: the client identifier (option 61) if the client sent one, else
/// its hardware type and address, as RFC 2131 §4.2 asks. Short keys (every hardware
/// address, most client identifiers) live inline: each lease holds its key twice (record
/// and client index), and a heap allocation per copy would double a lease's memory.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientKey(KeyBytes);

const INLINE_KEY: usize = 22;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum KeyBytes {
    Inline(u8, [u8; INLINE_KEY]),
    Heap(Box<[u8]>),
}

impl ClientKey {
    pub fn new(client_id: Option<&[u8]>, htype: u8, chaddr: &[u8]) -> Self {
        let mut v = Vec::with_capacity(1 + client_id.map_or(1 + chaddr.len(), <[u8]>::len));
        match client_id {
            Some(id) if !id.is_empty() => {
                v.push(1);
                v.extend_from_slice(id);
            }
            _ => {
                v.push(0);
                v.push(htype);
                v.extend_from_slice(chaddr);
            }
        }
        ClientKey::from_slice(&v)
    }

    pub fn from_slice(b: &[u8]) -> Self {
        if b.len() <= INLINE_KEY {
            let mut a = [0u8; INLINE_KEY];
            a[..b.len()].copy_from_slice(b);
            ClientKey(KeyBytes::Inline(b.len() as u8, a))
        } else {
            ClientKey(KeyBytes::Heap(b.into()))
        }
    }

    /// The key as stored (a tag byte, then the identifier or hardware type and address).
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            KeyBytes::Inline(n, a) => &a[..usize::from(*n)],
            KeyBytes::Heap(b) => b,
        }
    }
}

/// State of one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddrState {
    Free,
    Offered {
        until: Instant,
    },
    Leased {
        until: Instant,
    },
    /// A client found the address in use; nobody gets it until `until`.
    Declined {
        until: Instant,
    },
    /// Never handed out (network, broadcast, server and router addresses).
    Reserved,
    /// In a block whose previous owner vanished: its clients may still hold leases, so the
    /// address goes only to a client that asks for it by name, until `until`.
    Held {
        until: Instant,
    },
}

#[derive(Clone, Debug)]
pub struct Record {
    pub state: AddrState,
    /// The client the address is (or was last) bound to.
    pub client: Option<ClientKey>,
    /// First 16 bytes of chaddr, to check forwarded renewals, which carry only chaddr.
    pub chaddr: [u8; 16],
}

impl Record {
    fn free() -> Self {
        Record {
            state: AddrState::Free,
            client: None,
            chaddr: [0; 16],
        }
    }

    pub fn is_used(&self) -> bool {
        !matches!(self.state, AddrState::Free)
    }

    fn deadline(&self) -> Option<Instant> {
        match self.state {
            AddrState::Offered { until }
            | AddrState::Leased { until }
            | AddrState::Declined { until }
            | AddrState::Held { until } => Some(until),
            AddrState::Free | AddrState::Reserved => None,
        }
    }
}

/// Something that changed in the table by the passage of time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expired {
    Lease { ip: Ipv4Addr, chaddr: [u8; 16] },
    Offer { ip: Ipv4Addr },
    Quarantine { ip: Ipv4Addr },
    Hold { ip: Ipv4Addr },
}

struct BlockLeases {
    records: Vec<Record>,
    used: u32,
    /// When we started owning it; new clients are served from the oldest block first, so
    /// younger blocks stay empty and can be given up.
    since: Instant,
}

/// Which address each client is bound to (or was last), holding addresses only: an entry is
/// hashed and compared through the client key in its address's record, so a lease does not
/// keep its key twice (with millions of leases a key-to-address map was the largest table).
/// Keys are hashed with SipHash under a random key: clients choose them.
///
/// Invariant: an entry `ip` is filed under the hash of the client its record names; a
/// record's client changes only after its entry is removed.
#[derive(Default)]
struct ClientIndex {
    table: hashbrown::HashTable<Ipv4Addr>,
    hasher: std::hash::RandomState,
}

impl ClientIndex {
    fn hash(&self, k: &ClientKey) -> u64 {
        self.hasher.hash_one(k)
    }

    /// Removes `client`'s entry if it is `ip`.
    fn remove(&mut self, client: &ClientKey, ip: Ipv4Addr) {
        if let Ok(e) = self.table.find_entry(self.hash(client), |&x| x == ip) {
            e.remove();
        }
    }
}

/// The client the record of `ip` names.
fn client_of<'a>(
    range: &ManagedRange,
    blocks: &'a FxHashMap<u32, BlockLeases>,
    ip: Ipv4Addr,
) -> Option<&'a ClientKey> {
    let (b, off) = range.locate(ip)?;
    blocks.get(&b)?.records.get(off as usize)?.client.as_ref()
}

/// Leases of all owned blocks.
pub struct LeaseTable {
    range: ManagedRange,
    blocks: FxHashMap<u32, BlockLeases>,
    /// Owned blocks with a free address, oldest first.
    with_free: BTreeSet<(Instant, u32)>,
    by_client: ClientIndex,
    /// Hostnames clients gave, for the few records that have one.
    hostnames: FxHashMap<Ipv4Addr, Box<str>>,
    deadlines: BTreeSet<(Instant, Ipv4Addr)>,
    active: usize,
    offered: usize,
    /// Blocks whose usage changed since the last call of [`LeaseTable::take_changed`].
    changed: BTreeMap<u32, u32>,
    /// Addresses never handed out; one still bound when it became reserved is reserved
    /// as soon as its client lets go of it.
    reserved: BTreeSet<Ipv4Addr>,
    /// Addresses whose durable view (bound or not, to whom, until when) changed since the
    /// last [`LeaseTable::take_dirty`].
    dirty: FxHashSet<Ipv4Addr>,
}

/// Whether a state is kept in the store: bindings a client relies on and quarantines.
fn durable(s: AddrState) -> bool {
    matches!(s, AddrState::Leased { .. } | AddrState::Declined { .. })
}

impl LeaseTable {
    pub fn new(range: ManagedRange) -> Self {
        LeaseTable {
            range,
            blocks: FxHashMap::default(),
            with_free: BTreeSet::new(),
            by_client: ClientIndex::default(),
            hostnames: FxHashMap::default(),
            deadlines: BTreeSet::new(),
            active: 0,
            offered: 0,
            changed: BTreeMap::new(),
            reserved: BTreeSet::new(),
            dirty: FxHashSet::default(),
        }
    }

    /// Replaces the set of reserved addresses (options changed at run time). Free and held
    /// addresses of owned blocks follow at once; bound ones when they are released or
    /// expire. Returns the addresses that are still bound to a client.
    pub fn set_reserved(&mut self, addrs: impl IntoIterator<Item = Ipv4Addr>) -> Vec<Ipv4Addr> {
        let new: BTreeSet<Ipv4Addr> = addrs.into_iter().collect();
        let released: Vec<Ipv4Addr> = self.reserved.difference(&new).copied().collect();
        let wanted: Vec<Ipv4Addr> = new.iter().copied().collect();
        self.reserved = new;
        for ip in released {
            if self.get(ip).is_some_and(|r| r.state == AddrState::Reserved) {
                self.set_state(ip, AddrState::Free);
            }
        }
        let mut busy = Vec::new();
        for ip in wanted {
            match self.get(ip).map(|r| r.state) {
                Some(AddrState::Free | AddrState::Held { .. }) => {
                    self.set_state(ip, AddrState::Reserved)
                }
                Some(AddrState::Offered { .. } | AddrState::Leased { .. }) => busy.push(ip),
                _ => {}
            }
        }
        busy
    }

    /// Starts serving a newly owned block; reserved addresses are never handed out, and
    /// with `hold` the others are held until then (see [`AddrState::Held`]).
    pub fn add_block(&mut self, block: u32, now: Instant, hold: Option<Instant>) {
        let size = self.range.block_size();
        let mut records = vec![Record::free(); size as usize];
        if let Some(until) = hold.filter(|&u| u > now) {
            for (off, r) in records.iter_mut().enumerate() {
                r.state = AddrState::Held { until };
                self.deadlines
                    .insert((until, self.range.address(block, off as u32)));
            }
        }
        for &ip in &self.reserved {
            if let Some((b, off)) = self.range.locate(ip)
                && b == block
            {
                if let AddrState::Held { until } = records[off as usize].state {
                    self.deadlines.remove(&(until, ip));
                }
                records[off as usize].state = AddrState::Reserved;
            }
        }
        // Counted from the records: the same address may be reserved for several reasons.
        let used = records.iter().filter(|r| r.is_used()).count() as u32;
        if used < size {
            self.with_free.insert((now, block));
        }
        self.blocks.insert(
            block,
            BlockLeases {
                records,
                used,
                since: now,
            },
        );
        self.changed.insert(block, used);
    }

    /// Stops serving a block (dropped, or lost to a greater id); its records are forgotten.
    pub fn remove_block(&mut self, block: u32) {
        let Some(bl) = self.blocks.remove(&block) else {
            return;
        };
        self.with_free.remove(&(bl.since, block));
        for (off, r) in bl.records.iter().enumerate() {
            let ip = self.range.address(block, off as u32);
            if let Some(d) = r.deadline() {
                self.deadlines.remove(&(d, ip));
            }
            match r.state {
                AddrState::Leased { .. } => self.active -= 1,
                AddrState::Offered { .. } => self.offered -= 1,
                _ => {}
            }
            if durable(r.state) {
                self.dirty.insert(ip);
            }
            if let Some(c) = &r.client {
                self.by_client.remove(c, ip);
            }
            self.hostnames.remove(&ip);
        }
    }

    pub fn owns(&self, ip: Ipv4Addr) -> bool {
        self.range
            .locate(ip)
            .is_some_and(|(b, _)| self.blocks.contains_key(&b))
    }

    pub fn get(&self, ip: Ipv4Addr) -> Option<&Record> {
        let (b, off) = self.range.locate(ip)?;
        self.blocks.get(&b).map(|bl| &bl.records[off as usize])
    }

    /// Leased addresses.
    pub fn active(&self) -> usize {
        self.active
    }

    /// Addresses offered and not yet requested.
    pub fn offered(&self) -> usize {
        self.offered
    }

    /// The address a client holds or last held here, if it is still bound to it.
    pub fn address_of(&self, client: &ClientKey) -> Option<Ipv4Addr> {
        let (range, blocks) = (&self.range, &self.blocks);
        self.by_client
            .table
            .find(self.by_client.hash(client), |&ip| {
                client_of(range, blocks, ip) == Some(client)
            })
            .copied()
    }

    /// Whether `client` holds a lease on an address of ours other than `ip`.
    fn leased_elsewhere(&self, client: &ClientKey, ip: Ipv4Addr) -> bool {
        self.address_of(client).is_some_and(|a| {
            a != ip
                && self
                    .get(a)
                    .is_some_and(|r| matches!(r.state, AddrState::Leased { .. }))
        })
    }

    /// The hostname the client of `ip` gave, if any.
    pub fn hostname(&self, ip: Ipv4Addr) -> Option<&str> {
        self.hostnames.get(&ip).map(|h| &**h)
    }

    /// Files `ip` as `client`'s address; its record must name `client` already. Returns
    /// the address filed before, if another.
    fn index(&mut self, client: &ClientKey, ip: Ipv4Addr) -> Option<Ipv4Addr> {
        let LeaseTable {
            by_client,
            range,
            blocks,
            ..
        } = self;
        let hasher = &by_client.hasher;
        let entry = by_client.table.entry(
            hasher.hash_one(client),
            |&x| client_of(range, blocks, x) == Some(client),
            |&x| client_of(range, blocks, x).map_or(0, |k| hasher.hash_one(k)),
        );
        match entry {
            hashbrown::hash_table::Entry::Occupied(mut e) => {
                Some(std::mem::replace(e.get_mut(), ip)).filter(|&old| old != ip)
            }
            hashbrown::hash_table::Entry::Vacant(v) => {
                v.insert(ip);
                None
            }
        }
    }

    /// A free address for a new client: in the oldest block with room, the first free
    /// address no client is remembered for, else the first free one.
    pub fn pick_free(&self) -> Option<Ipv4Addr> {
        for &(_, b) in &self.with_free {
            let bl = &self.blocks[&b];
            let mut fallback = None;
            for (off, r) in bl.records.iter().enumerate() {
                if r.state == AddrState::Free {
                    if r.client.is_none() {
                        return Some(self.range.address(b, off as u32));
                    }
                    fallback.get_or_insert(off);
                }
            }
            if let Some(off) = fallback {
                return Some(self.range.address(b, off as u32));
            }
        }
        None
    }

    /// Binds `ip` to `client` in `state`, unbinding it from whoever had it before.
    pub fn bind(
        &mut self,
        ip: Ipv4Addr,
        client: ClientKey,
        chaddr: [u8; 16],
        hostname: Option<&str>,
        state: AddrState,
    ) {
        let Some((b, off)) = self.range.locate(ip) else {
            return;
        };
        let Some(bl) = self.blocks.get_mut(&b) else {
            return;
        };
        let r = &mut bl.records[off as usize];
        let old = r.state;
        if let Some(d) = r.deadline() {
            self.deadlines.remove(&(d, ip));
        }
        let prev = r.client.take();
        r.state = state;
        r.chaddr = chaddr;
        let new_deadline = r.deadline();
        if let Some(prev) = prev
            && prev != client
        {
            self.by_client.remove(&prev, ip);
        }
        if let Some(r) = self.record_mut(ip) {
            r.client = Some(client.clone());
        }
        // A client holds one address here: release its previous one if different.
        let previous = self.index(&client, ip);
        if durable(old) || durable(state) {
            self.dirty.insert(ip);
        }
        if let Some(h) = hostname {
            self.hostnames.insert(ip, h.into());
        }
        if let Some(d) = new_deadline {
            self.deadlines.insert((d, ip));
        }
        self.account(b, old, state);
        if let Some(prev_ip) = previous {
            self.release_record(prev_ip, false);
        }
    }

    /// A binding another node made in a block that is ours now (it held the block while we
    /// were cut off from it, or lost it to us in a tie-break): taken, or its end moved
    /// later, unless the address is bound to another client here. False on such a
    /// conflict (ours stays), or if the block is not ours.
    pub fn adopt(&mut self, rec: LeaseRecord) -> bool {
        let Some(r) = self.get(rec.ip) else {
            return false;
        };
        let state = if rec.declined {
            AddrState::Declined { until: rec.until }
        } else {
            AddrState::Leased { until: rec.until }
        };
        let same = r.client.is_some() && r.client == rec.client;
        if !same
            && rec
                .client
                .as_ref()
                .is_some_and(|k| self.leased_elsewhere(k, rec.ip))
        {
            // The client holds another address of ours now: that one is the truth.
            return false;
        }
        let Some(r) = self.get(rec.ip) else {
            return false;
        };
        match r.state {
            AddrState::Free | AddrState::Held { .. } | AddrState::Offered { .. } => {}
            AddrState::Leased { until } | AddrState::Declined { until } if same => {
                if rec.until <= until {
                    return true;
                }
            }
            AddrState::Declined { until } if rec.client.is_none() => {
                if rec.until > until {
                    self.set_state(rec.ip, state);
                }
                return true;
            }
            AddrState::Leased { .. } | AddrState::Declined { .. } | AddrState::Reserved => {
                return false;
            }
        }
        match rec.client {
            Some(k) => self.bind(rec.ip, k, rec.chaddr, rec.hostname.as_deref(), state),
            None => self.set_state(rec.ip, state),
        }
        true
    }

    /// Frees `ip` (RELEASE, or a client moving to another address). The client stays
    /// remembered, so it gets the same address back if nobody else took it meanwhile.
    pub fn release(&mut self, ip: Ipv4Addr) {
        self.release_record(ip, false);
    }

    /// Quarantines `ip` for `hold` after a DECLINE, unbinding its client.
    pub fn decline(&mut self, ip: Ipv4Addr, now: Instant, hold: Duration) {
        self.release_record(ip, true);
        self.set_state(ip, AddrState::Declined { until: now + hold });
    }

    fn release_record(&mut self, ip: Ipv4Addr, forget_client: bool) {
        let Some(r) = self.record_mut(ip) else { return };
        if r.state == AddrState::Reserved {
            return;
        }
        let client = if forget_client { r.client.take() } else { None };
        if let Some(c) = client {
            self.by_client.remove(&c, ip);
        }
        self.set_state(ip, AddrState::Free);
    }

    fn record_mut(&mut self, ip: Ipv4Addr) -> Option<&mut Record> {
        let (b, off) = self.range.locate(ip)?;
        self.blocks
            .get_mut(&b)
            .map(|bl| &mut bl.records[off as usize])
    }

    fn set_state(&mut self, ip: Ipv4Addr, state: AddrState) {
        let Some((b, off)) = self.range.locate(ip) else {
            return;
        };
        let Some(bl) = self.blocks.get_mut(&b) else {
            return;
        };
        let r = &mut bl.records[off as usize];
        let old = r.state;
        if let Some(d) = r.deadline() {
            self.deadlines.remove(&(d, ip));
        }
        let state = if state == AddrState::Free && self.reserved.contains(&ip) {
            AddrState::Reserved
        } else {
            state
        };
        r.state = state;
        if let Some(d) = r.deadline() {
            self.deadlines.insert((d, ip));
        }
        if durable(old) || durable(state) {
            self.dirty.insert(ip);
        }
        self.account(b, old, state);
    }

    /// The durable view of the addresses that changed since the last call, for the store.
    pub fn take_dirty(&mut self, out: &mut Vec<Change>) {
        // The Fx hash has a fixed seed, so this order is the same in every run; the records
        // are of distinct addresses, so their order within a batch means nothing.
        #[allow(clippy::disallowed_methods)]
        let dirty: Vec<Ipv4Addr> = self.dirty.drain().collect();
        for ip in dirty {
            out.push(self.durable(ip).unwrap_or(Change::LeaseGone(ip)));
        }
    }

    /// The durable record of `ip`: its lease or quarantine, `None` if it holds neither.
    fn durable(&self, ip: Ipv4Addr) -> Option<Change> {
        let (b, off) = self.range.locate(ip)?;
        let r = self.blocks.get(&b).map(|bl| &bl.records[off as usize])?;
        let (until, declined) = match r.state {
            AddrState::Leased { until } => (until, false),
            AddrState::Declined { until } => (until, true),
            _ => return None,
        };
        Some(Change::Lease(LeaseRecord {
            ip,
            until,
            declined,
            client: r.client.clone(),
            chaddr: r.chaddr,
            hostname: self.hostnames.get(&ip).cloned(),
        }))
    }

    /// The durable records of every bound address of `block`, in address order (a new
    /// replica holder's copy of the block).
    pub fn block_records(&self, block: u32) -> Vec<Change> {
        (0..self.range.block_size())
            .filter_map(|off| self.durable(self.range.address(block, off)))
            .collect()
    }

    /// Puts back bindings read from the store; returns those whose block is not ours (the
    /// caller keeps them for when it is). Millions of them come back at start-up, so the
    /// common case (a free address, a client not bound elsewhere) skips the general path:
    /// the key is moved, not cloned, nothing is marked for writing back, and the deadlines
    /// are built in one sorted pass.
    pub fn restore(&mut self, recs: Vec<LeaseRecord>) -> Vec<LeaseRecord> {
        let mut elsewhere = Vec::new();
        let mut slow = Vec::new();
        let mut deadlines = Vec::with_capacity(recs.len());
        let mut touched = Vec::new();
        let (range, blocks) = (&self.range, &self.blocks);
        let hasher = &self.by_client.hasher;
        self.by_client.table.reserve(recs.len(), |&x| {
            client_of(range, blocks, x).map_or(0, |k| hasher.hash_one(k))
        });
        for rec in recs {
            let Some((b, off)) = self.range.locate(rec.ip) else {
                continue;
            };
            let Some(bl) = self.blocks.get_mut(&b) else {
                elsewhere.push(rec);
                continue;
            };
            let r = &bl.records[off as usize];
            let hash = rec.client.as_ref().map(|k| self.by_client.hash(k));
            // The fast path files a new entry: the record must have no client yet, and the
            // client no address.
            if r.state != AddrState::Free
                || r.client.is_some()
                || rec.client.as_ref().zip(hash).is_some_and(|(k, h)| {
                    let (range, blocks) = (&self.range, &self.blocks);
                    self.by_client
                        .table
                        .find(h, |&x| client_of(range, blocks, x) == Some(k))
                        .is_some()
                })
            {
                slow.push(rec);
                continue;
            }
            let Some(bl) = self.blocks.get_mut(&b) else {
                continue;
            };
            let r = &mut bl.records[off as usize];
            r.state = if rec.declined {
                AddrState::Declined { until: rec.until }
            } else {
                self.active += 1;
                AddrState::Leased { until: rec.until }
            };
            r.chaddr = rec.chaddr;
            // Free -> bound: the block's count goes up; the free-block index and the usage
            // report follow once per block, below.
            bl.used += 1;
            r.client = rec.client;
            if let Some(h) = hash {
                // Room was reserved above, so this never rehashes.
                let (range, blocks) = (&self.range, &self.blocks);
                let hasher = &self.by_client.hasher;
                self.by_client.table.insert_unique(h, rec.ip, |&x| {
                    client_of(range, blocks, x).map_or(0, |k| hasher.hash_one(k))
                });
            }
            if let Some(h) = rec.hostname {
                self.hostnames.insert(rec.ip, h);
            }
            deadlines.push((rec.until, rec.ip));
            if touched.last() != Some(&b) {
                touched.push(b);
            }
        }
        touched.sort_unstable();
        touched.dedup();
        let size = self.range.block_size();
        for b in touched {
            let bl = &self.blocks[&b];
            if bl.used >= size {
                self.with_free.remove(&(bl.since, b));
            }
            self.changed.insert(b, bl.used);
        }
        if self.deadlines.is_empty() {
            deadlines.sort_unstable();
            self.deadlines = deadlines.into_iter().collect();
        } else {
            self.deadlines.extend(deadlines);
        }
        for rec in slow {
            // A client leased elsewhere here keeps that lease: an older copy of one of its
            // bindings (from a block taken over with a replica) does not move it.
            if rec
                .client
                .as_ref()
                .is_some_and(|k| self.leased_elsewhere(k, rec.ip))
            {
                continue;
            }
            let state = if rec.declined {
                AddrState::Declined { until: rec.until }
            } else {
                AddrState::Leased { until: rec.until }
            };
            match rec.client {
                Some(k) => self.bind(rec.ip, k, rec.chaddr, rec.hostname.as_deref(), state),
                None => self.set_state(rec.ip, state),
            }
            // What was just read from the store need not be written again.
            self.dirty.remove(&rec.ip);
        }
        elsewhere
    }

    /// Keeps the per-block counts, the free-block index and the active count in step with
    /// a state change.
    fn account(&mut self, b: u32, old: AddrState, new: AddrState) {
        let leased = |s: AddrState| matches!(s, AddrState::Leased { .. });
        self.active = self.active + usize::from(leased(new)) - usize::from(leased(old));
        let offered = |s: AddrState| matches!(s, AddrState::Offered { .. });
        self.offered = self.offered + usize::from(offered(new)) - usize::from(offered(old));
        let used = |s: AddrState| s != AddrState::Free;
        if used(old) == used(new) {
            return;
        }
        let size = self.range.block_size();
        let bl = self.blocks.get_mut(&b).expect("accounted block exists");
        let had_free = bl.used < size;
        if used(new) {
            bl.used += 1;
        } else {
            bl.used -= 1;
        }
        let has_free = bl.used < size;
        if had_free != has_free {
            if has_free {
                self.with_free.insert((bl.since, b));
            } else {
                self.with_free.remove(&(bl.since, b));
            }
        }
        self.changed.insert(b, bl.used);
    }

    /// Blocks whose number of used addresses changed, with the new number.
    pub fn take_changed(&mut self) -> BTreeMap<u32, u32> {
        std::mem::take(&mut self.changed)
    }

    /// Next instant something expires.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|&(d, _)| d)
    }

    /// Expires offers, leases and quarantines that are due.
    pub fn expire(&mut self, now: Instant) -> Vec<Expired> {
        let mut out = Vec::new();
        while let Some(&(d, ip)) = self.deadlines.first() {
            if d > now {
                break;
            }
            let Some(r) = self.get(ip) else {
                self.deadlines.remove(&(d, ip));
                continue;
            };
            out.push(match r.state {
                AddrState::Leased { .. } => Expired::Lease {
                    ip,
                    chaddr: r.chaddr,
                },
                AddrState::Offered { .. } => Expired::Offer { ip },
                AddrState::Held { .. } => Expired::Hold { ip },
                _ => Expired::Quarantine { ip },
            });
            self.set_state(ip, AddrState::Free);
        }
        out
    }

    /// Every bound record, for `ddhcpctl leases`.
    pub fn iter(&self) -> impl Iterator<Item = (Ipv4Addr, u32, &Record)> + '_ {
        // Callers that show or send the rows sort them (`Dhcp::lease_list`).
        #[allow(clippy::disallowed_methods)]
        self.blocks.iter().flat_map(move |(&b, bl)| {
            bl.records
                .iter()
                .enumerate()
                .map(move |(off, r)| (self.range.address(b, off as u32), b, r))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> LeaseTable {
        LeaseTable::new(ManagedRange::new(Ipv4Addr::new(10, 0, 0, 0), 24, 2).unwrap())
    }

    fn key(n: u8) -> ClientKey {
        ClientKey::new(None, 1, &[2, 0, 0, 0, 0, n])
    }

    fn t(s: u64) -> Instant {
        Instant::from_millis(s * 1000)
    }

    #[test]
    fn allocation_prefers_oldest_block_and_unremembered_addresses() {
        let mut l = table();
        l.set_reserved([Ipv4Addr::new(10, 0, 0, 20)]);
        l.add_block(5, t(0), None);
        l.add_block(1, t(1), None);
        let a = l.pick_free().unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 0, 0, 21));
        l.bind(
            a,
            key(1),
            [0; 16],
            None,
            AddrState::Leased { until: t(100) },
        );
        assert_eq!(l.take_changed().get(&5), Some(&2));
        assert_eq!(l.active(), 1);
        l.release(a);
        assert_eq!(l.active(), 0);
        // The released address stays remembered for client 1; others get fresh ones.
        assert_eq!(l.pick_free(), Some(Ipv4Addr::new(10, 0, 0, 22)));
        assert_eq!(l.address_of(&key(1)), Some(a));
    }

    #[test]
    fn a_client_holds_one_address() {
        let mut l = table();
        l.add_block(0, t(0), None);
        let a = Ipv4Addr::new(10, 0, 0, 1);
        let b = Ipv4Addr::new(10, 0, 0, 2);
        l.bind(
            a,
            key(1),
            [0; 16],
            None,
            AddrState::Offered { until: t(12) },
        );
        l.bind(
            b,
            key(1),
            [0; 16],
            None,
            AddrState::Leased { until: t(300) },
        );
        assert_eq!(l.get(a).unwrap().state, AddrState::Free);
        assert_eq!(l.address_of(&key(1)), Some(b));
    }

    #[test]
    fn expiry_and_quarantine() {
        let mut l = table();
        l.add_block(0, t(0), None);
        let a = Ipv4Addr::new(10, 0, 0, 1);
        l.bind(a, key(1), [7; 16], None, AddrState::Leased { until: t(10) });
        l.decline(Ipv4Addr::new(10, 0, 0, 2), t(0), Duration::from_secs(20));
        assert_eq!(l.next_deadline(), Some(t(10)));
        assert_eq!(
            l.expire(t(10)),
            vec![Expired::Lease {
                ip: a,
                chaddr: [7; 16]
            }]
        );
        assert_eq!(l.active(), 0);
        // Expired but unused: still remembered for its client.
        assert_eq!(l.address_of(&key(1)), Some(a));
        assert_eq!(l.pick_free(), Some(Ipv4Addr::new(10, 0, 0, 0)));
        assert_eq!(l.expire(t(20)).len(), 1);
        assert!(l.get(Ipv4Addr::new(10, 0, 0, 2)).unwrap().client.is_none());
    }

    #[test]
    fn reservations_change_at_run_time() {
        let mut l = table();
        l.add_block(0, t(0), None);
        let a = Ipv4Addr::new(10, 0, 0, 1);
        let b = Ipv4Addr::new(10, 0, 0, 2);
        l.bind(
            a,
            key(1),
            [0; 16],
            None,
            AddrState::Leased { until: t(100) },
        );
        assert_eq!(l.set_reserved([a, b]), vec![a]);
        assert_eq!(l.get(b).unwrap().state, AddrState::Reserved);
        assert_eq!(l.get(a).unwrap().state, AddrState::Leased { until: t(100) });
        // The bound one becomes reserved once released.
        l.release(a);
        assert_eq!(l.get(a).unwrap().state, AddrState::Reserved);
        l.set_reserved([]);
        assert_eq!(l.get(a).unwrap().state, AddrState::Free);
        assert_eq!(l.get(b).unwrap().state, AddrState::Free);
        assert_eq!(l.take_changed().get(&0), Some(&0));
    }

    #[test]
    fn full_blocks_leave_the_free_index() {
        let mut l = table();
        l.add_block(0, t(0), None);
        for i in 0..4 {
            let ip = l.pick_free().unwrap();
            l.bind(
                ip,
                key(i),
                [0; 16],
                None,
                AddrState::Leased { until: t(100) },
            );
        }
        assert_eq!(l.pick_free(), None);
        l.remove_block(0);
        assert_eq!(l.active(), 0);
        assert_eq!(l.address_of(&key(0)), None);
    }

    /// The client index against the records, after random operations: every entry is found
    /// by its record's client, no client has two entries, and every client an address is
    /// offered or leased to finds it.
    fn check_index(l: &LeaseTable) {
        let mut seen = std::collections::HashSet::new();
        for &ip in l.by_client.table.iter() {
            let k = client_of(&l.range, &l.blocks, ip).expect("indexed record names a client");
            assert_eq!(
                l.address_of(k),
                Some(ip),
                "{ip} not found by its own client"
            );
            assert!(seen.insert(k.clone()), "{k:?} indexed twice");
        }
        for (ip, _, r) in l.iter() {
            if let (AddrState::Leased { .. } | AddrState::Offered { .. }, Some(k)) =
                (r.state, &r.client)
            {
                assert_eq!(l.address_of(k), Some(ip), "bound {ip} not found by {k:?}");
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn client_index_stays_consistent(ops in proptest::collection::vec((0u8..7, 0u8..12, 0u8..24), 1..200)) {
            let mut l = table();
            l.add_block(0, t(0), None);
            l.add_block(1, t(1), None);
            let mut restored = false;
            for (i, (op, client, addr)) in ops.into_iter().enumerate() {
                // Addresses 10.0.0.0 .. 10.0.0.23: blocks 0 to 5, of which 0 and 1 (and
                // later 2) are ours.
                let ip = Ipv4Addr::new(10, 0, 0, addr);
                let now = t(2 + i as u64);
                match op {
                    0 => l.bind(ip, key(client), [client; 16], Some("h"), AddrState::Offered { until: now + Duration::from_secs(5) }),
                    1 => l.bind(ip, key(client), [client; 16], None, AddrState::Leased { until: now + Duration::from_secs(30) }),
                    2 => l.release(ip),
                    3 => l.decline(ip, now, Duration::from_secs(10)),
                    4 => { l.expire(now + Duration::from_secs(u64::from(addr))); }
                    5 => {
                        let b = u32::from(addr % 3);
                        if l.blocks.contains_key(&b) { l.remove_block(b) } else { l.add_block(b, now, None) }
                    }
                    _ if !restored => {
                        restored = true;
                        let rec = |n: u8, a: u8| LeaseRecord {
                            ip: Ipv4Addr::new(10, 0, 0, a),
                            until: now + Duration::from_secs(60),
                            declined: false,
                            client: Some(key(n)),
                            chaddr: [n; 16],
                            hostname: None,
                        };
                        l.restore(vec![rec(client, addr), rec(client.wrapping_add(1) % 12, addr / 2), rec(client, 8 + addr % 8)]);
                    }
                    _ => {}
                }
                check_index(&l);
            }
        }
    }
}

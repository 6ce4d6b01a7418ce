//! What the simulator watches and checks: the ownership record kept from the nodes'
//! events (owners, overlap episodes, owner history), the settled-state checks on the
//! nodes' tables (one owner per block, agreement), and address conflicts between clients.

use std::collections::BTreeMap;

use ddhcp::time::Instant;

use super::Sim;
use super::cnode::CState;

/// One stretch of time during which two or more nodes owned the same block.
#[derive(Clone, Debug)]
pub struct Overlap {
    pub block: u32,
    pub start: Instant,
    pub end: Option<Instant>,
}

impl Sim {
    /// Every running node has the blocks it wants (or the range is exhausted for it).
    pub fn all_satisfied(&self) -> bool {
        self.watched().all(|(_, _, p)| {
            !p.blocks().is_learning()
                && (p.blocks().blocks_needed() <= 0 || p.blocks().free_count() == 0)
        })
    }

    pub(super) fn set_owner(&mut self, block: u32, i: usize, owns: bool) {
        let list = self.owners.entry(block).or_default();
        if owns {
            if !list.contains(&i) {
                list.push(i);
            }
        } else {
            list.retain(|&x| x != i);
        }
        let n = list.len();
        if owns && n == 1 {
            self.owned_since.insert(block, (i, self.now));
        }
        if owns {
            let h = self.owner_history.entry(block).or_default();
            if h.last() != Some(&i) {
                h.push(i);
            }
        }
        if n > 1 {
            self.open_overlaps.entry(block).or_insert(self.now);
        } else if let Some(start) = self.open_overlaps.remove(&block) {
            self.overlaps.push(Overlap {
                block,
                start,
                end: Some(self.now),
            });
        }
    }

    /// Overlap episodes so far, closed and still open.
    pub fn all_overlaps(&self) -> Vec<Overlap> {
        let mut v = self.overlaps.clone();
        v.extend(self.open_overlaps.iter().map(|(&block, &start)| Overlap {
            block,
            start,
            end: None,
        }));
        v
    }

    /// Owner of every owned block, Rust and C nodes alike; an error if a block has two.
    pub fn owner_map(&self) -> Result<BTreeMap<u32, usize>, String> {
        let mut owner: BTreeMap<u32, usize> = BTreeMap::new();
        let rust = self
            .watched()
            .map(|(i, _, p)| (i, p.blocks().owned().collect::<Vec<_>>()));
        let c = self
            .running_c()
            .map(|(i, n)| (i, n.owned().collect::<Vec<_>>()));
        for (i, blocks) in rust.chain(c) {
            for b in blocks {
                if let Some(prev) = owner.insert(b, i) {
                    return Err(format!("block {b} owned by nodes {prev} and {i}"));
                }
            }
        }
        Ok(owner)
    }

    /// At most one owner per block, and no running Rust node names an owner other than the
    /// real one (a view that lapsed to free is tolerated).
    pub fn check_no_wrong_owner(&self) -> Result<(), String> {
        let owner = self.owner_map()?;
        for (j, _, p) in self.watched() {
            for (&b, &i) in &owner {
                let want = (self.slots[i].id, self.slots[i].addr);
                match p.blocks().owner_of(b) {
                    Some(seen) if seen != want && i != j => {
                        return Err(format!(
                            "node {j} sees block {b} as {seen:?}, owner is node {i}"
                        ));
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// The settled-state invariants: at most one owner per block, and every running node's
    /// view of every owned block names the real owner at its real address; no running node
    /// believes a block is claimed by somebody who does not own it.
    pub fn check_agreement(&self) -> Result<(), String> {
        let owner = self.owner_map()?;
        for (j, c) in self.running_c() {
            for (&b, &i) in &owner {
                if i == j {
                    continue;
                }
                let want = (self.slots[i].id, self.slots[i].addr);
                match c.view(b) {
                    (CState::Claimed, Some(seen)) if seen == want => {}
                    // An Inquire turns a claimed block tentative on a C node (reference
                    // §3.8) until the owner's next claim; a shadow table's reset makes it
                    // free (§3.11). Neither lets the C node take it while the owner lives.
                    (CState::Tentative | CState::Free, _) => {}
                    other => {
                        return Err(format!(
                            "C node {j} sees block {b} as {other:?}, but node {i} ({}) owns it",
                            want.0
                        ));
                    }
                }
            }
        }
        for (j, n, p) in self.watched() {
            for (&b, &i) in &owner {
                if i == j {
                    continue;
                }
                let want = (self.slots[i].id, self.slots[i].addr);
                match p.blocks().owner_of(b) {
                    Some(seen) if seen == want => {}
                    other => {
                        return Err(format!(
                            "node {j} sees block {b} as {other:?}, but node {i} ({}) owns it",
                            want.0
                        ));
                    }
                }
            }
            for v in p.blocks_view(self.now, n.id()) {
                if v.owner.is_some() && v.owner != Some(n.id()) && !owner.contains_key(&v.index) {
                    return Err(format!(
                        "node {j} sees block {} claimed by {:?}, but nobody owns it",
                        v.index, v.owner
                    ));
                }
            }
        }
        Ok(())
    }

    /// Records a conflict if another client holds the same address right now.
    pub(super) fn check_address(&mut self, c: usize) {
        let Some(ip) = self.clients[c].ip else { return };
        for (o, other) in self.clients.iter().enumerate() {
            if o != c && other.ip == Some(ip) && other.until > self.now {
                self.address_conflicts.push(format!(
                    "t={:?}: clients {c} and {o} both hold {ip}",
                    self.now
                ));
                self.conflict_ips.push(ip);
            }
        }
    }
}

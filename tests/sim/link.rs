//! The shared server link: how it treats datagrams ([`Link`]), the queue of datagrams on
//! their way ([`Delivery`]), and the fan-out of a node's peer datagrams to the nodes that
//! hear it (partitions, loss, duplication, delay).

use std::cmp::Ordering;
use std::net::Ipv6Addr;
use std::rc::Rc;
use std::time::Duration;

use ddhcp::node::{Channel, Dest, Transmit};
use ddhcp::time::Instant;
use ddhcp::wire;
use rand::RngExt;

use super::Sim;

/// How the shared link treats each datagram, independently per receiver.
#[derive(Clone, Copy, Debug)]
pub struct Link {
    pub loss: f64,
    pub duplicate: f64,
    pub delay_min: Duration,
    pub delay_max: Duration,
}

impl Link {
    /// A clean LAN-like link: 1–20 ms delay (so datagrams still reorder), no loss.
    pub fn clean() -> Self {
        Link {
            loss: 0.0,
            duplicate: 0.0,
            delay_min: Duration::from_millis(1),
            delay_max: Duration::from_millis(20),
        }
    }

    pub fn lossy(loss: f64) -> Self {
        Link {
            loss,
            duplicate: 0.02,
            delay_min: Duration::from_millis(1),
            delay_max: Duration::from_millis(200),
        }
    }
}

/// A datagram on its way: to node (or, for [`Kind::ToClient`], client) `to` at `at`;
/// `seq` orders deliveries due at the same moment.
pub(super) struct Delivery {
    pub(super) at: Instant,
    pub(super) seq: u64,
    pub(super) to: usize,
    pub(super) kind: Kind,
    pub(super) data: Rc<[u8]>,
}

/// What a queued datagram is.
pub(super) enum Kind {
    /// Peer protocol, to node `to`.
    Peer { from: Ipv6Addr, channel: Channel },
    /// DHCP from a client to node `to`.
    ToServer,
    /// DHCP from a node to client `to`.
    ToClient,
    /// The fake host of node `to` reports to its local pool `pool`.
    Host {
        pool: usize,
        ev: ddhcp::local::HostEvent,
    },
    /// The fake host of node `to` polls socket use (every [`super::USE_POLL`]).
    UsePoll,
}

impl PartialEq for Delivery {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Delivery {}
impl PartialOrd for Delivery {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Delivery {
    // Reversed: BinaryHeap is a max-heap and we want the earliest first.
    fn cmp(&self, o: &Self) -> Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

impl Sim {
    /// Queues `data` for `to` (a node, or a client for [`Kind::ToClient`]), due `delay` from
    /// now, after everything queued before for the same moment.
    pub(super) fn enqueue(&mut self, delay: Duration, to: usize, kind: Kind, data: Rc<[u8]>) {
        self.seq += 1;
        self.queue.push(Delivery {
            at: self.now + delay,
            seq: self.seq,
            to,
            kind,
            data,
        });
    }

    /// Puts node `i`'s peer datagrams on the link: to every other node (multicast) or the
    /// one at the address (unicast) that is running and in `i`'s partition, each lost,
    /// duplicated and delayed as [`Sim::link`] says.
    pub(super) fn send_peer(&mut self, i: usize, transmits: Vec<Transmit>) {
        let from = self.slots[i].addr;
        let group = self.slots[i].group;
        for t in transmits {
            self.slots[i].sent_pkts += 1;
            self.slots[i].sent_bytes += t.payload.len() as u64;
            let ext = t.payload.get(14).is_some_and(|c| {
                [wire::command::REPLICATE, wire::command::REPLICA_ACK].contains(c)
            });
            let data: Rc<[u8]> = t.payload.into();
            if self.capture {
                self.captured.push((t.dest, data.clone()));
            }
            let (targets, channel): (Vec<usize>, Channel) = match t.dest {
                Dest::Multicast => (
                    (0..self.slots.len()).filter(|&j| j != i).collect(),
                    Channel::Multicast,
                ),
                Dest::Unicast(a) => (
                    self.slots
                        .iter()
                        .position(|s| s.addr == a)
                        .into_iter()
                        .collect(),
                    Channel::Unicast,
                ),
            };
            for j in targets {
                let down = self.slots[j].node.is_none() && self.slots[j].cnode.is_none();
                if self.slots[j].group != group || down {
                    continue;
                }
                let rng = if ext {
                    &mut self.ext_rng
                } else {
                    &mut self.rng
                };
                if rng.random_bool(self.link.loss) {
                    continue;
                }
                let copies = if rng.random_bool(self.link.duplicate) {
                    2
                } else {
                    1
                };
                let lo = self.link.delay_min.as_millis() as u64;
                let hi = self.link.delay_max.as_millis() as u64;
                let delays: Vec<u64> = (0..copies).map(|_| rng.random_range(lo..=hi)).collect();
                for delay in delays {
                    self.enqueue(
                        Duration::from_millis(delay),
                        j,
                        Kind::Peer { from, channel },
                        data.clone(),
                    );
                }
            }
        }
    }
}

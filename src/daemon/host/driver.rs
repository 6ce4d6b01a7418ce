//! Carries out what the local service asks of the host, and tells it what the host did.
//!
//! One task owns the netlink connection, the notification monitor, the ARP socket and the
//! socket watcher; the main loop talks to it through two channels, so nothing here can
//! stall DHCP or peer traffic. The rules it keeps on top of the kernel modules:
//!
//! * A notification is a hint, a dump is the truth: an address reported removed is looked
//!   up again before the core hears of it, so a notification that is stale by the time it
//!   is read (ours removed, then added again) never makes the core drop a live address.
//! * A link that is gone is reported as gone before any of its addresses is reported
//!   removed (the kernel announces the addresses first), so the core holds them for the
//!   interface's return instead of freeing them.
//! * The socket poll runs on the blocking pool, one at a time; a poll that fails reports
//!   nothing ("unknown" is never "unused").

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::arp::Announcer;
use super::probe::{self, Check, ProbeOptions};
use super::sockets::{Backend, SocketWatcher};
use super::{AddError, Addresses, HostEvent as Kernel, Monitor, RemoveError};
use crate::local::{HostAction, HostEvent as Core};
use crate::range::ManagedRange;

/// How often sockets are looked at while we hold addresses (the core's hysteresis and the
/// netns tests assume about this).
pub const USE_POLL: Duration = Duration::from_secs(1);

/// Between the gratuitous ARPs of one burst (RFC 5227's ANNOUNCE_INTERVAL is 2 s; switches
/// and neighbours need only one to arrive).
const BURST_INTERVAL: Duration = Duration::from_secs(1);

/// A full look at the host (links and our addresses) this often, for what notifications
/// cannot decode or lost without an overrun.
const RESYNC_INTERVAL: Duration = Duration::from_secs(30);

/// One local pool, as the host side needs it.
#[derive(Clone, Debug)]
pub struct LocalPool {
    /// Index of the pool in the node.
    pub pool: usize,
    pub iface: String,
    pub range: ManagedRange,
}

/// The main loop's end of the host task.
pub struct HostHandle {
    actions: mpsc::UnboundedSender<(usize, HostAction)>,
    events: mpsc::UnboundedReceiver<(usize, Core)>,
    task: JoinHandle<()>,
}

impl HostHandle {
    /// Opens what the host side needs (netlink, the ARP socket) and starts the task, which
    /// first reports the tagged addresses already configured, for the core to take back or
    /// remove. Fails when the daemon lacks `CAP_NET_ADMIN` / `CAP_NET_RAW`.
    pub async fn start(pools: Vec<LocalPool>) -> io::Result<HostHandle> {
        let addrs = Addresses::open()
            .map_err(|e| io::Error::new(e.kind(), format!("netlink (addresses): {e}")))?;
        let monitor = Monitor::open()
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("netlink (notifications): {e}")))?;
        let announcer = Announcer::open().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("packet socket for gratuitous ARP (needs CAP_NET_RAW): {e}"),
            )
        })?;
        let (actions, actions_rx) = mpsc::unbounded_channel();
        let (events_tx, events) = mpsc::unbounded_channel();
        let (probe_tx, probe_rx) = mpsc::unbounded_channel();
        let mut driver = Driver {
            addrs,
            announcer: Arc::new(announcer),
            pools: pools
                .into_iter()
                .map(|p| PoolSide {
                    cfg: p,
                    link: None,
                    configured: BTreeSet::new(),
                })
                .collect(),
            events: events_tx,
            probe_tx,
            probing: BTreeSet::new(),
            watcher: Some(SocketWatcher::new(Backend::Auto)),
            check_pending: false,
            poll_errors: 0,
        };
        driver.start().await;
        let task = tokio::spawn(driver.run(actions_rx, monitor, probe_rx));
        Ok(HostHandle {
            actions,
            events,
            task,
        })
    }

    pub fn send(&self, pool: usize, action: HostAction) {
        let _ = self.actions.send((pool, action));
    }

    /// The next thing the host reports; pending forever once the task is gone.
    pub async fn recv(&mut self) -> (usize, Core) {
        match self.events.recv().await {
            Some(e) => e,
            None => std::future::pending().await,
        }
    }
}

impl Drop for HostHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The interface of a pool, while it exists and is up.
#[derive(Clone, Copy, Debug)]
struct Link {
    ifindex: u32,
    mac: Option<[u8; 6]>,
}

struct PoolSide {
    cfg: LocalPool,
    link: Option<Link>,
    /// Addresses we configured (or took back) and have not seen go.
    configured: BTreeSet<Ipv4Addr>,
}

struct Driver {
    addrs: Addresses,
    announcer: Arc<Announcer>,
    pools: Vec<PoolSide>,
    events: mpsc::UnboundedSender<(usize, Core)>,
    probe_tx: mpsc::UnboundedSender<(usize, Core)>,
    /// Addresses with a probe under way (one at a time each).
    probing: BTreeSet<Ipv4Addr>,
    /// Away on the blocking pool while a poll runs.
    watcher: Option<SocketWatcher>,
    /// A use check came while a poll ran: poll again when it is back.
    check_pending: bool,
    poll_errors: u64,
}

type PollResult = (SocketWatcher, io::Result<super::sockets::Poll>);

impl Driver {
    fn tell(&self, k: usize, ev: Core) {
        let _ = self.events.send((self.pools[k].cfg.pool, ev));
    }

    fn side(&self, pool: usize) -> Option<usize> {
        self.pools.iter().position(|p| p.cfg.pool == pool)
    }

    /// Finds the interfaces and reports the tagged addresses on them.
    async fn start(&mut self) {
        let links = self.addrs.links().await.unwrap_or_else(|e| {
            warn!(error = %e, "cannot list interfaces");
            Vec::new()
        });
        for k in 0..self.pools.len() {
            let name = self.pools[k].cfg.iface.clone();
            match links.iter().find(|l| l.name == name && l.up) {
                Some(l) => {
                    self.pools[k].link = Some(Link {
                        ifindex: l.ifindex,
                        mac: l.mac,
                    });
                    promote_secondaries(&name);
                    self.adopt(k).await;
                }
                None => {
                    warn!(iface = %name, "the local pool's interface is not there or down; waiting for it");
                    self.tell(k, Core::LinkGone);
                }
            }
        }
    }

    /// Reports the tagged addresses on pool `k`'s interface that fall in its range: the
    /// core takes back those of blocks it owns and asks to remove the others.
    async fn adopt(&mut self, k: usize) {
        let Some(link) = self.pools[k].link else {
            return;
        };
        match self.addrs.list_ours(link.ifindex).await {
            Ok(ours) => {
                for (ip, _) in ours {
                    if self.pools[k].cfg.range.locate(ip).is_some() {
                        info!(%ip, iface = %self.pools[k].cfg.iface, "found configured by us before");
                        self.pools[k].configured.insert(ip);
                        self.tell(k, Core::Added { ip });
                    } else {
                        debug!(%ip, "tagged address outside every local pool left alone");
                    }
                }
            }
            Err(e) => warn!(error = %e, "cannot list addresses"),
        }
    }

    async fn run(
        mut self,
        mut actions: mpsc::UnboundedReceiver<(usize, HostAction)>,
        mut monitor: Monitor,
        mut probes: mpsc::UnboundedReceiver<(usize, Core)>,
    ) {
        let mut poll_tick = tokio::time::interval(USE_POLL);
        poll_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut resync_tick = tokio::time::interval(RESYNC_INTERVAL);
        resync_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        resync_tick.reset();
        let mut polling: Option<JoinHandle<PollResult>> = None;
        loop {
            tokio::select! {
                a = actions.recv() => match a {
                    Some((pool, a)) => {
                        if matches!(a, HostAction::CheckUse { .. }) {
                            self.check_pending = true;
                        } else {
                            self.act(pool, a).await;
                        }
                    }
                    None => return, // the daemon stopped
                },
                ev = monitor.next() => match ev {
                    Some(ev) => self.kernel(ev).await,
                    None => {
                        warn!("netlink notifications failed; reopening and looking afresh");
                        match Monitor::open().await {
                            Ok(m) => monitor = m,
                            Err(e) => warn!(error = %e, "cannot reopen netlink notifications"),
                        }
                        self.resync().await;
                    }
                },
                Some((pool, ev)) = probes.recv() => {
                    if let Core::ProbeResult { ip, .. } = &ev {
                        self.probing.remove(ip);
                    }
                    let _ = self.events.send((pool, ev));
                }
                _ = poll_tick.tick() => self.check_pending = true,
                _ = resync_tick.tick() => self.resync().await,
                r = wait_poll(&mut polling) => {
                    polling = None;
                    self.polled(r);
                }
            }
            if self.check_pending && polling.is_none() {
                self.check_pending = false;
                polling = self.start_poll();
            }
        }
    }

    async fn act(&mut self, pool: usize, a: HostAction) {
        let Some(k) = self.side(pool) else { return };
        let iface = self.pools[k].cfg.iface.clone();
        match a {
            HostAction::Add { ip, prefix_len } => {
                // While the interface is away, the core re-adds everything when it is back.
                let Some(link) = self.pools[k].link else {
                    return;
                };
                match self.addrs.add(link.ifindex, ip, prefix_len).await {
                    Ok(()) => {
                        debug!(%ip, %iface, "address added");
                        self.pools[k].configured.insert(ip);
                        self.tell(k, Core::Added { ip });
                    }
                    Err(AddError::Exists {
                        ifindex,
                        ours: true,
                        ..
                    }) if ifindex == link.ifindex => {
                        self.pools[k].configured.insert(ip);
                        self.tell(k, Core::Added { ip });
                    }
                    Err(AddError::NoSuchInterface(_)) => self.link_gone(k),
                    Err(e) => {
                        warn!(%ip, %iface, error = %e, "address not added");
                        self.tell(
                            k,
                            Core::AddFailed {
                                ip,
                                reason: e.to_string(),
                            },
                        );
                    }
                }
            }
            HostAction::Remove { ip, prefix_len } => {
                let Some(link) = self.pools[k].link else {
                    // Gone with the interface.
                    self.pools[k].configured.remove(&ip);
                    self.tell(k, Core::Removed { ip });
                    return;
                };
                match self.addrs.remove(link.ifindex, ip, prefix_len).await {
                    Ok(()) | Err(RemoveError::NotFound { .. }) => {
                        debug!(%ip, %iface, "address removed");
                        self.pools[k].configured.remove(&ip);
                        self.tell(k, Core::Removed { ip });
                    }
                    Err(RemoveError::NotOurs { .. }) => {
                        warn!(%ip, %iface, "someone else configured this address after ours went; left alone");
                        self.pools[k].configured.remove(&ip);
                        self.tell(k, Core::Removed { ip });
                    }
                    // No answer: the core asks again when its deadline passes.
                    Err(e) => warn!(%ip, %iface, error = %e, "address not removed"),
                }
            }
            HostAction::Announce { ip, burst } => {
                let Some(Link {
                    ifindex,
                    mac: Some(mac),
                }) = self.pools[k].link
                else {
                    return;
                };
                let announcer = self.announcer.clone();
                tokio::spawn(async move {
                    for round in 0..burst {
                        if round > 0 {
                            tokio::time::sleep(BURST_INTERVAL).await;
                        }
                        if let Err(e) = announcer.send(ifindex, mac, ip) {
                            debug!(%ip, error = %e, "gratuitous ARP not sent");
                            return;
                        }
                    }
                });
            }
            HostAction::Probe { ip, target, port } => {
                if !self.probing.insert(ip) {
                    return; // the one under way answers
                }
                let check = match port {
                    Some(port) => Check::Tcp { port },
                    None => Check::Icmp,
                };
                let options = ProbeOptions {
                    device: Some(iface),
                    ..ProbeOptions::default()
                };
                let tx = self.probe_tx.clone();
                tokio::spawn(async move {
                    let ok = match probe::probe(ip, target, &check, &options).await {
                        Ok(r) => {
                            debug!(%ip, %target, "proven: {r}");
                            true
                        }
                        Err(e) => {
                            debug!(%ip, %target, error = %e, "probe failed");
                            false
                        }
                    };
                    let _ = tx.send((pool, Core::ProbeResult { ip, ok }));
                });
            }
            HostAction::CheckUse { .. } => self.check_pending = true,
        }
    }

    async fn kernel(&mut self, ev: Kernel) {
        match ev {
            Kernel::AddressRemoved { ifindex, ip, .. } => {
                let Some(k) = self.pools.iter().position(|p| {
                    p.link.is_some_and(|l| l.ifindex == ifindex) && p.configured.contains(&ip)
                }) else {
                    return;
                };
                // The kernel reports a deleted link's addresses before the link.
                match self.addrs.link(ifindex).await {
                    Ok(Some(l)) if l.up => {}
                    Ok(_) => return self.link_gone(k),
                    Err(e) => return warn!(error = %e, "cannot look at the interface"),
                }
                match self.addrs.list_ours(ifindex).await {
                    Ok(ours) if ours.iter().any(|(a, _)| *a == ip) => {} // back already
                    Ok(_) => {
                        info!(%ip, iface = %self.pools[k].cfg.iface, "our address was deleted by someone else");
                        self.pools[k].configured.remove(&ip);
                        self.tell(k, Core::Removed { ip });
                    }
                    Err(e) => warn!(error = %e, "cannot list addresses"),
                }
            }
            Kernel::LinkGone { ifindex, name } => {
                for k in 0..self.pools.len() {
                    let p = &self.pools[k];
                    if p.link.is_some_and(|l| l.ifindex == ifindex) || p.cfg.iface == name {
                        self.link_gone(k);
                    }
                }
            }
            Kernel::LinkUp { ifindex, name } => {
                for k in 0..self.pools.len() {
                    if self.pools[k].cfg.iface == name && self.pools[k].link.is_none() {
                        self.link_back(k, ifindex).await;
                    }
                }
            }
            Kernel::AddressAdded { .. } => {}
            Kernel::Resync => self.resync().await,
        }
    }

    fn link_gone(&mut self, k: usize) {
        if self.pools[k].link.take().is_some() {
            warn!(iface = %self.pools[k].cfg.iface, "the local pool's interface went away");
            self.pools[k].configured.clear();
            self.tell(k, Core::LinkGone);
        }
    }

    async fn link_back(&mut self, k: usize, ifindex: u32) {
        let mac = match self.addrs.link(ifindex).await {
            Ok(Some(l)) => l.mac,
            _ => None,
        };
        info!(iface = %self.pools[k].cfg.iface, ifindex, "the local pool's interface is back");
        self.pools[k].link = Some(Link { ifindex, mac });
        promote_secondaries(&self.pools[k].cfg.iface);
        self.tell(k, Core::LinkBack);
    }

    /// Compares what we believe with what the host has, after lost notifications and now
    /// and then.
    async fn resync(&mut self) {
        let links = match self.addrs.links().await {
            Ok(l) => l,
            Err(e) => return warn!(error = %e, "resync: cannot list interfaces"),
        };
        for k in 0..self.pools.len() {
            let name = self.pools[k].cfg.iface.clone();
            let now = links.iter().find(|l| l.name == name && l.up);
            match (self.pools[k].link, now) {
                (Some(_), None) => self.link_gone(k),
                (Some(l), Some(n)) if l.ifindex != n.ifindex => {
                    self.link_gone(k);
                    self.link_back(k, n.ifindex).await;
                }
                (None, Some(n)) => self.link_back(k, n.ifindex).await,
                _ => {}
            }
            let Some(link) = self.pools[k].link else {
                continue;
            };
            let ours: BTreeSet<Ipv4Addr> = match self.addrs.list_ours(link.ifindex).await {
                Ok(o) => o.into_iter().map(|(ip, _)| ip).collect(),
                Err(e) => {
                    warn!(error = %e, "resync: cannot list addresses");
                    continue;
                }
            };
            let lost: Vec<Ipv4Addr> = self.pools[k]
                .configured
                .difference(&ours)
                .copied()
                .collect();
            for ip in lost {
                info!(%ip, %name, "resync: our address is gone");
                self.pools[k].configured.remove(&ip);
                self.tell(k, Core::Removed { ip });
            }
        }
    }

    fn start_poll(&mut self) -> Option<JoinHandle<PollResult>> {
        let candidates: BTreeSet<Ipv4Addr> = self
            .pools
            .iter()
            .flat_map(|p| p.configured.iter().copied())
            .collect();
        if candidates.is_empty() {
            // Nothing of ours is configured: nothing can be in use.
            for k in 0..self.pools.len() {
                self.tell(k, Core::InUse(BTreeMap::new()));
            }
            return None;
        }
        let mut watcher = self.watcher.take()?;
        Some(tokio::task::spawn_blocking(move || {
            let r = watcher.poll(&candidates);
            (watcher, r)
        }))
    }

    fn polled(&mut self, r: Result<PollResult, tokio::task::JoinError>) {
        let (watcher, r) = match r {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "socket poll task failed");
                (
                    SocketWatcher::new(Backend::Auto),
                    Err(io::Error::other("poll task failed")),
                )
            }
        };
        self.watcher = Some(watcher);
        let poll = match r {
            Ok(p) => p,
            Err(e) => {
                self.poll_errors += 1;
                if self.poll_errors.is_power_of_two() {
                    warn!(error = %e, errors = self.poll_errors, "cannot read the socket tables; use unknown");
                }
                return;
            }
        };
        for k in 0..self.pools.len() {
            let used: BTreeMap<Ipv4Addr, String> = poll
                .uses
                .iter()
                .filter(|(ip, _)| {
                    self.pools[k].configured.contains(ip) && !self.probing.contains(ip)
                })
                .map(|(ip, u)| (*ip, u.reason()))
                .collect();
            self.tell(k, Core::InUse(used));
        }
    }
}

async fn wait_poll(
    polling: &mut Option<JoinHandle<PollResult>>,
) -> Result<PollResult, tokio::task::JoinError> {
    match polling {
        Some(h) => h.await,
        None => std::future::pending().await,
    }
}

/// Lets the kernel keep an interface's other addresses of a subnet when its primary goes
/// (otherwise it deletes the secondaries with it, ours and everyone else's). Only ever
/// switched on: it makes removing an address take exactly that address.
fn promote_secondaries(iface: &str) {
    if iface.contains('/') || iface == "." || iface == ".." {
        return;
    }
    let path = format!("/proc/sys/net/ipv4/conf/{iface}/promote_secondaries");
    match std::fs::read_to_string(&path) {
        Ok(v) if v.trim() == "1" => {}
        Ok(_) => match std::fs::write(&path, "1") {
            Ok(()) => {
                info!(%iface, "set net.ipv4.conf.{iface}.promote_secondaries=1, so removing one of our addresses takes no other")
            }
            Err(e) => {
                warn!(%iface, error = %e, "cannot set promote_secondaries; removing a primary address would take its secondaries")
            }
        },
        Err(e) => debug!(%iface, error = %e, "promote_secondaries not readable"),
    }
}

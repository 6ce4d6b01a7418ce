//! The tokio shell: moves bytes between sockets and the core, and nothing else.
//!
//! One task owns the [`Node`] and runs the loop: wait for a datagram, a control request,
//! the core's next deadline or shutdown; feed it in; flush what the core produced. Side
//! tasks (control connections, the hook runner) talk to it through channels.

#![allow(clippy::disallowed_methods)] // the shell owns the clocks and OS randomness

mod alarm;
#[cfg(feature = "api")]
pub mod api;
pub mod audit;
pub mod control;
pub mod dhcp_socket;
pub mod hook;
// Local address mode's host side; routers do not carry it (Cargo.toml, feature `local`).
#[cfg(feature = "local")]
pub mod host;
pub mod iface;
#[cfg(feature = "metrics")]
pub mod metrics;
pub mod peer;
pub mod render;
mod requests;
pub mod setup;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::path::Path;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::config::{Config, ConfigError};
use crate::dhcp::{DhcpTransmit, LeaseEvent};
use crate::node::{Channel, Event, Node, Output, Transmit, derive_node_id};
use crate::range::ManagedRange;
use crate::store::{Store, StoreError, StoreOptions, WallClock};
use crate::time::Instant;
use crate::wire::NodeId;
use hook::Hook;
use peer::PeerSockets;

/// How often we try to reopen the peer sockets after the server interface went away
/// (ddhcpd never does, issue #68).
const REOPEN_INTERVAL: Duration = Duration::from_secs(2);

/// DHCP datagrams handled per wake-up before replies are flushed.
const DHCP_BATCH: usize = 64;

/// Outputs waiting for the store; beyond this many the DHCP socket is not read (clients
/// retransmit), so a stalled disk cannot grow memory without bound.
const MAX_HELD: usize = 16384;

/// Why the daemon could not start. Configuration problems exit with code 2.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Control(#[from] control::BindError),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("the state store failed (see the log); stopped so nothing unsaved is acknowledged")]
    StoreFailed,
}

impl StartError {
    /// Exit code 2 for what the operator has to fix in flags or files, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Config(_) | StartError::Control(_) => 2,
            StartError::Store(e) if !matches!(e, StoreError::Io { .. }) => 2,
            _ => 1,
        }
    }
}

/// The node key in the state directory (`--node-key`).
const NODE_KEY_FILE: &str = "node.key";
/// Peers' public keys, pinned on first use: `NODEID HEX` per line, appended.
const PINS_FILE: &str = "peer-pins";

/// Pins of earlier runs. A damaged line is skipped (the id is the key's hash anyway, so a
/// lost pin costs only the collision check); the file is ours, not an operator's.
fn read_pins(path: &Path) -> Vec<(NodeId, [u8; 32])> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let mut pins = Vec::new();
    for line in text.lines() {
        let mut w = line.split_whitespace();
        let (Some(id), Some(hex)) = (w.next(), w.next()) else {
            continue;
        };
        if let (Ok(id), Some(key)) = (id.parse::<NodeId>(), crate::auth::hex32(hex)) {
            pins.push((id, key));
        }
    }
    pins
}

fn append_pins(path: &Path, pins: &[(NodeId, [u8; 32])]) {
    use std::io::Write;
    let mut text = String::new();
    for (id, key) in pins {
        text.push_str(&format!("{id} "));
        for b in key {
            text.push_str(&format!("{b:02x}"));
        }
        text.push('\n');
    }
    let r = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()));
    if let Err(e) = r {
        warn!(path = %path.display(), error = %e, "cannot persist pinned peer keys");
    }
}

/// Reads the persisted node id, or derives a new one from the MAC and stores it. A stored
/// id whose MAC part differs belongs to other hardware and is replaced.
fn node_id(cfg: &Config, mac: [u8; 6]) -> NodeId {
    if let Some(id) = cfg.node_id {
        return id;
    }
    let path = cfg.state_dir.join("node_id");
    if let Ok(text) = std::fs::read_to_string(&path)
        && let Ok(id) = text.trim().parse::<NodeId>()
        && id.0[..6] == mac
    {
        return id;
    }
    let id = derive_node_id(mac, rand::random());
    if let Err(e) = store_node_id(&path, id) {
        warn!(path = %path.display(), error = %e, "cannot persist node id; a restart will pick a new one");
    }
    id
}

fn store_node_id(path: &Path, id: NodeId) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{id}\n"))?;
    std::fs::rename(tmp, path)
}

/// Maps between the core's instants and tokio's clock. Core time starts at [`CLOCK_BASE`],
/// not zero, so times from before this process (restored from the store) are instants too.
struct Clock(tokio::time::Instant);

/// About 35 years in milliseconds.
const CLOCK_BASE: u64 = 1 << 40;

impl Clock {
    fn now(&self) -> Instant {
        Instant::from_millis(CLOCK_BASE + self.0.elapsed().as_millis() as u64)
    }

    fn tokio(&self, at: Instant) -> tokio::time::Instant {
        self.0 + Duration::from_millis(at.as_millis().saturating_sub(CLOCK_BASE))
    }
}

/// Something that may leave the process only once the store holds what it depends on.
enum Held {
    Out(Output),
    Reply(
        tokio::sync::oneshot::Sender<crate::control::Response>,
        crate::control::Response,
    ),
}

struct Daemon {
    cfg: Config,
    node: Node,
    clock: Clock,
    peers: Option<PeerSockets>,
    /// The DHCP socket of each pool that serves DHCP, by pool index.
    dhcp_socks: Vec<Option<tokio::net::UdpSocket>>,
    /// Each pool's range, by pool index (hook arguments).
    ranges: Vec<ManagedRange>,
    /// Control requests the core has not answered yet, by query id.
    waiting: HashMap<u64, tokio::sync::oneshot::Sender<crate::control::Response>>,
    next_query: u64,
    /// The DHCP socket polled first next time (round robin over pools).
    dhcp_next: usize,
    ifindex: u32,
    reopen_at: Option<tokio::time::Instant>,
    hook: Hook,
    send_errors: u64,
    set_log_level: Option<LogLevelSetter>,
    audit: audit::Audit,
    store: Option<Store>,
    /// Outputs waiting for the store, each with the batch it waits for, in order.
    held: VecDeque<(u64, Held)>,
    /// The host side of the local pools, if there are any.
    #[cfg(feature = "local")]
    host: Option<host::driver::HostHandle>,
}

/// Changes the log filter at run time (`ddhcpctl log-level`); given by the binary, which owns
/// the subscriber.
pub type LogLevelSetter = Box<dyn Fn(&str) -> Result<(), String> + Send>;

/// Turns a `log-level` argument into a tracing filter: ddhcpd's numbers (0 fatal … 4 debug),
/// level names, or a full filter directive such as `ddhcp=debug,ddhcp::audit=info`.
pub fn log_filter(level: &str) -> Result<String, String> {
    let name = match level.trim().to_ascii_lowercase().as_str() {
        "0" | "1" | "fatal" | "error" => "error",
        "2" | "warning" | "warn" => "warn",
        "3" | "info" => "info",
        "4" | "debug" => "debug",
        "5" | "trace" => "trace",
        other if other.contains('=') => return Ok(other.to_string()),
        other => {
            return Err(format!(
                "unknown log level '{other}' (use 0-5, error, warn, info, debug, trace or a filter like ddhcp=debug)"
            ));
        }
    };
    Ok(format!("ddhcp={name}"))
}

/// Runs the daemon until `shutdown` resolves.
pub async fn run(
    cfg: Config,
    shutdown: impl Future<Output = ()>,
    set_log_level: Option<LogLevelSetter>,
) -> Result<(), StartError> {
    let ifindex = iface::index(&cfg.server_iface).map_err(|e| {
        ConfigError::new(
            "-i",
            cfg.server_iface.clone(),
            format!("no such network interface ({e})"),
        )
    })?;
    let mut node_cfg = setup::node_config(&cfg, &setup::Host)?;
    if let Some(h) = &cfg.hook {
        let ok = std::fs::metadata(h)
            .map(|m| {
                m.is_file()
                    && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
            })
            .unwrap_or(false);
        if !ok {
            return Err(
                ConfigError::new("-H", h.display().to_string(), "not an executable file").into(),
            );
        }
    }
    let mac = iface::mac(&cfg.server_iface).unwrap_or_default();
    let node_key = if cfg.node_key {
        let path = cfg.state_dir.join(NODE_KEY_FILE);
        let (key, created) =
            crate::auth::NodeKey::load_or_create(&path, rand::random()).map_err(|why| {
                StartError::Config(ConfigError::new(
                    "--node-key",
                    path.display().to_string(),
                    why,
                ))
            })?;
        if created {
            info!(path = %path.display(), node_id = %key.id(), "node key created");
        }
        Some(key)
    } else {
        None
    };
    let id = match &node_key {
        Some(k) => k.id(),
        None => node_id(&cfg, mac),
    };
    let audit = audit::Audit::open(cfg.audit_log.as_deref()).map_err(|e| {
        ConfigError::new(
            "--audit-log",
            cfg.audit_log
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            format!("cannot open for appending: {e}"),
        )
    })?;
    let started = std::time::Instant::now();
    let store_pools = setup::store_pools(&node_cfg);
    let (store, state, load_info) = Store::open(StoreOptions {
        dir: cfg.state_dir.clone(),
        pools: store_pools.clone(),
        fsync: cfg.fsync,
        commit_delay: cfg.commit_delay,
        compact_min_bytes: crate::store::COMPACT_MIN_BYTES,
    })
    .map_err(|e| match e {
        // Cannot create, lock or read the directory: the flag's value is the problem.
        StoreError::Io { path, source } => StartError::Config(ConfigError::new(
            "--state-dir",
            cfg.state_dir.display().to_string(),
            format!("{path}: {source}"),
        )),
        e => StartError::Store(e),
    })?;
    let loaded = crate::store::describe_load(&load_info, &state, started.elapsed());
    // A known id over an empty state directory is a node that lost its disk: it rebuilds
    // from its peers, as with --recover (docs/replication.md).
    if cfg.node_id.is_some() && load_info.files == 0 && node_cfg.replicas > 0 && !node_cfg.recover {
        info!("--node-id with an empty state directory: rebuilding from the peers");
        node_cfg.recover = true;
    }
    let listener = control::bind(&cfg.control, cfg.control_group.as_deref())?;
    let peers = PeerSockets::open(&cfg.server_iface, ifindex)?;
    let clock = Clock(tokio::time::Instant::now());
    let now = clock.now();
    let ranges: Vec<ManagedRange> = node_cfg.pools.iter().map(|p| p.range).collect();
    let mut node = Node::new(node_cfg, id, now, rand::random());
    let keys = if cfg.peer_keys.is_empty() {
        crate::config::read_peer_keys(&cfg.peer_key_files).map_err(StartError::Config)?
    } else {
        cfg.peer_keys.clone()
    };
    node.set_auth(&keys, cfg.peer_key_migrate)
        .map_err(|why| StartError::Config(ConfigError::new("--peer-key", "", why)))?;
    if let Some(key) = node_key {
        let pins = read_pins(&cfg.state_dir.join(PINS_FILE));
        node.set_node_key(now, key, &pins, cfg.max_peer_blocks)
            .map_err(|why| StartError::Config(ConfigError::new("--node-key", "", why)))?;
        info!(
            pinned = pins.len(),
            max_peer_blocks = cfg.max_peer_blocks,
            "peer datagrams are signed with the node key"
        );
    }
    if let Some(ring) = node.auth().keyring() {
        info!(
            keys = ring.ids().count(),
            signing = ring.signing_id(),
            migrate = cfg.peer_key_migrate,
            "peer datagrams are authenticated"
        );
    }
    node.restore(now, state.into_restored(&store_pools, &WallClock::now(now)));
    // Only pools that serve DHCP here get a socket (not `-S`, not another location's).
    let mut dhcp_socks = Vec::with_capacity(ranges.len());
    for (i, spec) in cfg.pools.iter().enumerate() {
        dhcp_socks.push(match (&spec.iface, node.pool(i).dhcp()) {
            (Some(c), Some(_)) => Some(dhcp_socket::open(c).map_err(|e| {
                io::Error::new(e.kind(), format!("cannot open DHCP port 67 on {c}: {e}"))
            })?),
            _ => None,
        });
    }
    for (i, p) in node.pools().iter().enumerate() {
        info!(pool = p.name(), network = %p.range(), block_size = p.range().block_size(),
              blocks = p.range().num_blocks(), serves = dhcp_socks[i].is_some(),
              claims = p.claims(), iface = cfg.pools[i].iface.as_deref().unwrap_or("-"),
              "pool");
    }
    info!(node_id = %id, pools = ranges.len(), location = cfg.location.as_deref().unwrap_or("-"),
          learning = cfg.claim.learning, state_dir = %cfg.state_dir.display(),
          fsync = cfg.fsync, "ddhcpd started");
    info!(truncated = load_info.truncated, "state loaded: {loaded}");
    let hook = match &cfg.hook {
        Some(p) => Hook::spawn(p.clone()),
        None => Hook::none(),
    };
    let (ctl_tx, ctl_rx) = mpsc::channel(64);
    #[cfg(feature = "metrics")]
    let metrics_task = match cfg.metrics {
        Some(addr) => {
            let l = metrics::bind(addr).await.map_err(|e| {
                ConfigError::new("--metrics", addr.to_string(), format!("cannot listen: {e}"))
            })?;
            info!(%addr, "serving metrics");
            Some(tokio::spawn(metrics::serve(l, ctl_tx.clone())))
        }
        None => None,
    };
    #[cfg(not(feature = "metrics"))]
    let metrics_task: Option<tokio::task::JoinHandle<()>> = None;
    #[cfg(feature = "api")]
    let api_task = api::start(cfg.api.as_ref(), &ctl_tx).await?;
    #[cfg(not(feature = "api"))]
    let api_task: Option<tokio::task::JoinHandle<()>> = None;
    #[cfg(feature = "local")]
    let host = start_host(&cfg, &node).await?;
    let ctl_task = tokio::spawn(control::serve(listener, ctl_tx));
    let control_path = cfg.control.clone();
    let mut d = Daemon {
        cfg,
        node,
        clock,
        peers: Some(peers),
        dhcp_socks,
        ranges,
        waiting: HashMap::new(),
        next_query: 0,
        dhcp_next: 0,
        ifindex,
        reopen_at: None,
        hook,
        send_errors: 0,
        set_log_level,
        audit,
        store: Some(store),
        held: VecDeque::new(),
        #[cfg(feature = "local")]
        host,
    };
    let result = d.main_loop(ctl_rx, shutdown).await;
    ctl_task.abort();
    for t in [metrics_task, api_task].into_iter().flatten() {
        t.abort();
    }
    let _ = std::fs::remove_file(&control_path);
    if result.is_ok() {
        // What is still held goes out once the store has it.
        d.persist();
        let synced = d.store.take().map(Store::close).unwrap_or_default();
        if !synced.failed {
            d.release(synced.seq).await;
        }
    }
    info!("ddhcpd stopped");
    result
}

impl Daemon {
    async fn main_loop(
        &mut self,
        mut ctl_rx: mpsc::Receiver<control::Pending>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), StartError> {
        tokio::pin!(shutdown);
        let mut mbuf = vec![0u8; 2048];
        let mut ubuf = vec![0u8; 2048];
        let mut dbuf = vec![0u8; 4096];
        // One timer, moved only when the core's deadline moves: under load most wake-ups
        // are packets, and re-arming a timer for each would cost more than the packet.
        let alarm = alarm::Alarm::new()?;
        let mut armed = None;
        loop {
            self.flush().await;
            let deadline = self.clock.tokio(self.node.poll_timeout());
            let deadline = match self.reopen_at {
                Some(r) => deadline.min(r),
                None => deadline,
            };
            if armed != Some(deadline) {
                alarm.set(deadline.saturating_duration_since(tokio::time::Instant::now()))?;
                armed = Some(deadline);
            }
            let (m, u) = match &self.peers {
                Some(p) => (Some(&p.multicast), Some(&p.unicast)),
                None => (None, None),
            };
            let dhcp_open = self.held.len() < MAX_HELD;
            let dhcp_socks = &self.dhcp_socks;
            let dhcp_next = self.dhcp_next;
            #[cfg(feature = "local")]
            let host = self.host.as_mut();
            #[cfg(not(feature = "local"))]
            let host: Option<&mut NoHost> = None;
            let host_open = host.is_some();
            let Some(store) = self.store.as_mut() else {
                return Err(StartError::StoreFailed);
            };
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                _ = store.changed() => {
                    if store.synced().failed {
                        return Err(StartError::StoreFailed);
                    }
                }
                () = alarm.fired() => {
                    armed = None;
                    self.node.handle_timeout(self.clock.now());
                    self.maybe_reopen();
                }
                r = recv(m, &mut mbuf) => self.datagram(Channel::Multicast, r, &mbuf),
                r = recv(u, &mut ubuf) => self.datagram(Channel::Unicast, r, &ubuf),
                (pool, r) = recv_any(dhcp_socks, dhcp_next, &mut dbuf), if dhcp_open => {
                    self.dhcp_datagrams(pool, r, &mut dbuf)
                }
                Some(p) = ctl_rx.recv() => self.control(p),
                (pool, ev) = host_event(host), if host_open => {
                    self.node.handle_host(self.clock.now(), pool, ev);
                }
            }
        }
    }

    fn datagram(
        &mut self,
        channel: Channel,
        r: io::Result<(usize, std::net::SocketAddr)>,
        buf: &[u8],
    ) {
        match r {
            Ok((n, std::net::SocketAddr::V6(from))) => {
                self.node
                    .handle_datagram(self.clock.now(), channel, *from.ip(), &buf[..n]);
                let pins = self.node.take_new_pins();
                if !pins.is_empty() {
                    append_pins(&self.cfg.state_dir.join(PINS_FILE), &pins);
                }
            }
            Ok(_) => {}
            Err(e) => {
                warn!(error = %e, "receive on the server interface failed; reopening sockets");
                self.schedule_reopen();
            }
        }
    }

    /// Handles one DHCP datagram and whatever else is already queued on the socket (up to
    /// a batch), so a burst costs one wake-up, not one per packet.
    fn dhcp_datagrams(
        &mut self,
        pool: usize,
        first: io::Result<(usize, std::net::SocketAddr)>,
        buf: &mut [u8],
    ) {
        self.dhcp_next = pool + 1;
        let mut r = first;
        for _ in 0..DHCP_BATCH {
            match r {
                Ok((n, _)) => self.node.handle_dhcp(self.clock.now(), pool, &buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    warn!(error = %e, "receive on the DHCP socket failed");
                    return;
                }
            }
            let Some(Some(sock)) = self.dhcp_socks.get(pool) else {
                return;
            };
            r = sock.try_recv_from(buf);
        }
    }

    fn schedule_reopen(&mut self) {
        self.peers = None;
        if self.reopen_at.is_none() {
            self.reopen_at = Some(tokio::time::Instant::now() + REOPEN_INTERVAL);
        }
    }

    /// Reopens the peer sockets once the server interface is back (it may have been
    /// deleted and re-created with a new index).
    fn maybe_reopen(&mut self) {
        let Some(at) = self.reopen_at else { return };
        if tokio::time::Instant::now() < at {
            return;
        }
        let attempt = iface::index(&self.cfg.server_iface)
            .and_then(|idx| PeerSockets::open(&self.cfg.server_iface, idx).map(|p| (idx, p)));
        match attempt {
            Ok((idx, p)) => {
                info!(iface = %self.cfg.server_iface, ifindex = idx, "peer sockets reopened");
                self.ifindex = idx;
                self.peers = Some(p);
                self.reopen_at = None;
            }
            Err(e) => {
                warn!(iface = %self.cfg.server_iface, error = %e, "server interface still unusable");
                self.reopen_at = Some(tokio::time::Instant::now() + REOPEN_INTERVAL);
            }
        }
    }

    /// Hands the core's durable changes to the store; returns the batch that holds them
    /// (and everything before).
    fn persist(&mut self) -> u64 {
        let Some(store) = self.store.as_mut() else {
            return 0;
        };
        let changes = self.node.take_changes();
        store.append(&changes, &WallClock::now(self.clock.now()))
    }

    /// Queues what the core produced behind the changes it depends on, and lets out what
    /// the store already holds.
    async fn flush(&mut self) {
        let seq = self.persist();
        while let Some(o) = self.node.poll_output() {
            let held = match o {
                Output::Answer { id, answer } => match self.waiting.remove(&id) {
                    Some(tx) => Held::Reply(tx, render::render(answer)),
                    None => continue,
                },
                o => Held::Out(o),
            };
            self.held.push_back((seq, held));
        }
        let synced = self.store.as_ref().map_or(0, |s| s.synced().seq);
        self.release(synced).await;
    }

    /// Sends, in order, everything held for batches up to `synced`.
    async fn release(&mut self, synced: u64) {
        while self.held.front().is_some_and(|(seq, _)| *seq <= synced) {
            let Some((_, h)) = self.held.pop_front() else {
                break;
            };
            match h {
                Held::Out(Output::Peer(t)) => self.send_peer(&t).await,
                Held::Out(Output::Dhcp { pool, transmit }) => self.send_dhcp(pool, &transmit).await,
                Held::Out(Output::Event(ev)) => self.event(ev),
                Held::Out(Output::Answer { .. }) => {}
                #[cfg(feature = "local")]
                Held::Out(Output::Host { pool, action }) => {
                    if let Some(h) = &self.host {
                        h.send(pool, action);
                    }
                }
                // Without the feature setup refuses local pools: the core asks nothing.
                #[cfg(not(feature = "local"))]
                Held::Out(Output::Host { .. }) => {}
                Held::Reply(tx, r) => {
                    let _ = tx.send(r);
                }
            }
        }
    }

    async fn send_peer(&mut self, t: &Transmit) {
        let Some(p) = &self.peers else { return };
        if let Err(e) = p.send(t).await {
            self.send_errors += 1;
            if self.send_errors.is_power_of_two() {
                warn!(error = %e, errors = self.send_errors, "send on the server interface failed");
            }
            if matches!(
                e.raw_os_error(),
                Some(libc::ENODEV | libc::ENXIO | libc::EACCES | libc::EADDRNOTAVAIL)
            ) {
                self.schedule_reopen();
            }
        }
    }

    async fn send_dhcp(&self, pool: usize, t: &DhcpTransmit) {
        let Some(Some(sock)) = self.dhcp_socks.get(pool) else {
            return;
        };
        let sent = match sock.try_send_to(&t.payload, t.to.into()) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                sock.send_to(&t.payload, t.to).await.map(|_| ())
            }
            r => r.map(|_| ()),
        };
        if let Err(e) = sent {
            debug!(to = %t.to, error = %e, "DHCP reply not sent");
        }
    }

    fn event(&mut self, ev: Event) {
        let args = render::hook_args(&ev, &self.ranges);
        if args
            .first()
            .is_some_and(|a| audit::ALARMS.contains(&a.as_str()))
        {
            self.audit.alarm(self.node.id(), &args);
        }
        match ev {
            Event::NodeIdChanged { new, .. } => {
                let path = self.cfg.state_dir.join("node_id");
                if self.cfg.node_id.is_none()
                    && let Err(e) = store_node_id(&path, new)
                {
                    error!(error = %e, "cannot persist the new node id");
                }
            }
            Event::Lease(pool, l) => self.audit(pool, &l),
            Event::Api(pool, e) => {
                let name = self.node.pools().get(pool).map_or("", |p| p.name());
                self.audit.allocation(self.node.id(), name, &e);
            }
            Event::Local {
                pool,
                ip,
                from,
                to,
                reason,
            } => {
                let name = self.node.pools().get(pool).map_or("", |p| p.name());
                self.audit
                    .local(self.node.id(), name, ip, from, to, &reason);
            }
            Event::LocalDeleted { pool, ip, state } => {
                let name = self.node.pools().get(pool).map_or("", |p| p.name());
                warn!(pool = name, %ip, state, "our address was deleted by someone else; adding it again");
                self.audit.local(
                    self.node.id(),
                    name,
                    ip,
                    state,
                    state,
                    "deleted by someone else; adding it again",
                );
            }
            _ => {}
        }
        self.hook.emit(args);
    }

    /// A control request: the shell answers what is its own, the core the rest (its
    /// answer comes out as an output, behind the changes it made).
    fn control(&mut self, p: control::Pending) {
        let response = match render::route(p.request) {
            Ok(render::Routed::Core(q)) => {
                let id = self.next_query;
                self.next_query += 1;
                self.waiting.insert(id, p.reply);
                self.node.handle_query(self.clock.now(), id, q);
                return;
            }
            Ok(render::Routed::Shell(r)) => self.answer_shell(r),
            Err(r) => r,
        };
        let seq = self.persist();
        self.held.push_back((seq, Held::Reply(p.reply, response)));
    }

    /// Writes the audit record of a lease event.
    fn audit(&mut self, pool: usize, l: &LeaseEvent) {
        let name = self.node.pools().get(pool).map_or("", |p| p.name());
        self.audit.record(self.node.id(), name, l);
    }
}

/// Starts the host side if a pool here is local (and so claims here).
#[cfg(feature = "local")]
async fn start_host(
    cfg: &Config,
    node: &Node,
) -> Result<Option<host::driver::HostHandle>, StartError> {
    let pools: Vec<host::driver::LocalPool> = node
        .pools()
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            let l = p.local()?;
            Some(host::driver::LocalPool {
                pool: i,
                iface: l.config().iface.clone(),
                range: *p.range(),
            })
        })
        .collect();
    let Some(first) = pools.first() else {
        return Ok(None);
    };
    let name = cfg.pools[first.pool].name.clone();
    let iface = first.iface.clone();
    host::driver::HostHandle::start(pools)
        .await
        .map(Some)
        .map_err(|e| {
            ConfigError::new(
                "--pool",
                format!("{name},use=local,iface={iface}"),
                format!("cannot manage addresses: {e}"),
            )
            .into()
        })
}

#[cfg(not(feature = "local"))]
enum NoHost {}

#[cfg(feature = "local")]
async fn host_event(h: Option<&mut host::driver::HostHandle>) -> (usize, crate::local::HostEvent) {
    match h {
        Some(h) => h.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(not(feature = "local"))]
async fn host_event(_: Option<&mut NoHost>) -> (usize, crate::local::HostEvent) {
    std::future::pending().await
}

async fn recv(
    sock: Option<&tokio::net::UdpSocket>,
    buf: &mut [u8],
) -> io::Result<(usize, std::net::SocketAddr)> {
    match sock {
        Some(s) => s.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

/// The first datagram on any pool's DHCP socket, with the pool's index. Sockets are polled
/// from the one after the last served, so a busy pool cannot starve the others.
async fn recv_any(
    socks: &[Option<tokio::net::UdpSocket>],
    start: usize,
    buf: &mut [u8],
) -> (usize, io::Result<(usize, std::net::SocketAddr)>) {
    use std::task::Poll;
    if socks.iter().all(Option::is_none) {
        return std::future::pending().await;
    }
    std::future::poll_fn(|cx| {
        let n = socks.len();
        for i in (start..n).chain(0..start.min(n)) {
            let Some(s) = &socks[i] else { continue };
            let mut rb = tokio::io::ReadBuf::new(buf);
            if let Poll::Ready(r) = s.poll_recv_from(cx, &mut rb) {
                return Poll::Ready((i, r.map(|from| (rb.filled().len(), from))));
            }
        }
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::log_filter;

    #[test]
    fn log_levels_like_ddhcpdctl_and_tracing() {
        assert_eq!(log_filter("4").unwrap(), "ddhcp=debug");
        assert_eq!(log_filter("2").unwrap(), "ddhcp=warn");
        assert_eq!(log_filter("INFO").unwrap(), "ddhcp=info");
        assert_eq!(
            log_filter("ddhcp::audit=info").unwrap(),
            "ddhcp::audit=info"
        );
        assert!(log_filter("loud").is_err());
    }
}

//! Command-line flags, the `--config` file, and their validation.
//!
//! The short flags are ddhcpd's, so existing init scripts (Gluon's among them) work
//! unchanged. `-N/-b/-c/-o` make one pool named `default`; `--pool` and the TOML file of
//! `--config` ([`file`]) add more. Validation is pure (no system calls) apart from reading
//! the `--config` file, so it can be fuzzed ([`Args::validate_with`] takes the file's
//! text already parsed); checks against the running system (does the interface exist?)
//! happen in the daemon at start-up and use the same [`ConfigError`] so the operator always
//! gets one line naming flag (or `FILE:LINE KEY`), value and reason, and exit code 2.

use std::borrow::Cow;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::blocks::ClaimConfig;
use crate::range::ManagedRange;
use crate::wire::NodeId;

mod api;
pub mod file;
mod pool;

pub use api::{ApiSpec, ApiToken};
pub use file::ConfigFile;
pub use pool::{LocalSpec, PoolSpec, PoolUse};

/// `ddhcpd` command line.
///
/// Flags whose value may also come from the `--config` file have no clap default (so an
/// absent flag can be told from a given one); their defaults are the `DEFAULT_*` constants.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "ddhcpd",
    version,
    about = "Leaderless DHCPv4 server: nodes agree on who owns which block of a range, ddhcpd-compatible",
    disable_help_flag = true,
    disable_version_flag = true
)]
pub struct Args {
    /// Server interface: peer traffic (IPv6 link-local multicast ff02::1234 port 1234, unicast 1235)
    #[arg(short = 'i', value_name = "IFACE")]
    pub server_iface: Option<String>,
    /// Client interface: DHCP service on UDP 67 (also the default iface= of every dhcp pool)
    #[arg(short = 'c', value_name = "IFACE")]
    pub client_iface: Option<String>,
    /// No client interface (no DHCP service, no blocks claimed for it)
    #[arg(short = 'S')]
    pub no_client: bool,
    /// Managed range A.B.C.D/LEN: the pool named `default` (required unless --pool or
    /// --config give pools)
    #[arg(short = 'N', value_name = "A.B.C.D/LEN")]
    pub network: Option<String>,
    /// Block size is 2^POW addresses (also the default block= of pools) [default: 5]
    #[arg(short = 'b', value_name = "POW")]
    pub block_pow: Option<String>,
    /// Tentative timeout in seconds (claim rounds run every half of it) [default: 15]
    #[arg(short = 't', value_name = "SECS")]
    pub tentative_timeout: Option<String>,
    /// Block claim timeout in seconds: TTL announced in claims and learning-phase length
    /// [default: 60]
    #[arg(short = 'B', value_name = "SECS")]
    pub block_timeout: Option<String>,
    /// Spare leases to keep free in owned blocks (also the default spare= of pools)
    /// [default: 2]
    #[arg(short = 's', value_name = "N")]
    pub spare_leases: Option<String>,
    /// Seconds an unused surplus block is kept before it is given up [default: 300]
    #[arg(short = 'n', value_name = "SECS")]
    pub needless_timeout: Option<String>,
    /// Skip the learning phase
    #[arg(short = 'L')]
    pub no_learning: bool,
    /// Add a DHCP option CODE:LEN:P1.P2… to every dhcp pool (repeatable; bytes in decimal,
    /// 0x hex or 0 octal)
    #[arg(short = 'o', value_name = "CODE:LEN:P1.P2…")]
    pub options: Vec<String>,
    /// Managed pool (repeatable); KEYs: block=POW, use=dhcp|local|api, iface=IFACE,
    /// spare=N, location=TAG, option=CODE:LEN:P1.P2… (repeatable)
    #[arg(long = "pool", value_name = "NAME=A.B.C.D/LEN[,KEY=VALUE…]")]
    pub pools: Vec<String>,
    /// TOML file with node settings and [pool.NAME] tables; flags override its node settings
    #[arg(long = "config", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// This node's location tag
    #[arg(long = "location", value_name = "TAG")]
    pub location: Option<String>,
    /// Control socket path [default: /run/ddhcpd.sock]
    #[arg(short = 'C', value_name = "PATH")]
    pub control: Option<PathBuf>,
    /// Hook executable, run as `PATH ACTION ARGS…` without a shell
    #[arg(short = 'H', value_name = "PATH")]
    pub hook: Option<PathBuf>,
    /// Detach into the background (logs keep going to --log-file or stderr's target)
    #[arg(short = 'd')]
    pub daemonize: bool,
    /// Stay in the foreground (default)
    #[arg(short = 'D')]
    pub foreground: bool,
    /// More verbose (repeatable)
    #[arg(short = 'v', action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Directory for the node id, owned blocks, leases and run-time options (tmpfs on
    /// flash routers) [default: /var/lib/ddhcpd]
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Sync the state store before each reply (on), or only write it (off: survives a
    /// daemon crash, not a power loss) [default: on]
    #[arg(long, value_name = "on|off")]
    pub fsync: Option<String>,
    /// Let a batch of state changes wait up to MS milliseconds for others before it is
    /// written and synced, so replies share syncs (0-100) [default: 2]
    #[arg(long, value_name = "MS")]
    pub commit_delay: Option<String>,
    /// Use this node id (16 hex digits) instead of the derived, persisted one
    #[arg(long, value_name = "HEX16")]
    pub node_id: Option<String>,
    /// Append logs to this file instead of stderr (useful with -d)
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,
    /// Append one JSON line per allocation, release and alarm to this file
    #[arg(long, value_name = "PATH")]
    pub audit_log: Option<PathBuf>,
    /// Group allowed to use the control socket (mode 0660 instead of 0600)
    #[arg(long, value_name = "GROUP")]
    pub control_group: Option<String>,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<String>,
    /// Serve the HTTP JSON allocation API at http://ADDR:PORT/v1/… (needs --api-token)
    #[arg(long, value_name = "ADDR:PORT")]
    pub api: Option<String>,
    /// File with the bearer token clients of --api must send (16 or more characters)
    #[arg(long, value_name = "FILE")]
    pub api_token: Option<String>,
    /// Peers that hold a replica of each block's bindings (0 turns replication off)
    /// [default: 2]
    #[arg(long, value_name = "K")]
    pub replicas: Option<String>,
    /// Refuse new API allocations while a replica holder is more than SECS behind
    /// [default: 5]
    #[arg(long, value_name = "SECS")]
    pub max_replica_lag: Option<String>,
    /// Answer API allocations only once a replica holder has them too (on), or once our
    /// own store has them (off) [default: off]
    #[arg(long, value_name = "on|off")]
    pub replica_sync: Option<String>,
    /// Rebuild blocks and bindings from the peers' replicas before serving (after a lost
    /// state directory; give the old --node-id)
    #[arg(long)]
    pub recover: bool,
    /// Mesh key file: 64 hex digits and optionally a key id (repeatable; the first signs,
    /// all verify). Peers without it are not heard, and C ddhcpd nodes cannot join
    #[arg(long = "peer-key", value_name = "FILE")]
    pub peer_keys: Vec<String>,
    /// With --peer-key: also send and accept unsigned datagrams, while C ddhcpd nodes are
    /// still in the mesh (see docs/protocol.md for what this leaves open)
    #[arg(long)]
    pub peer_key_migrate: bool,
    /// With --peer-key: sign every datagram with this node's key (STATE_DIR/node.key, made
    /// on first start; the node id becomes its hash) and require peers' signatures, so no
    /// member can claim in another's name or take a block its owner holds
    #[arg(long)]
    pub node_key: bool,
    /// With --node-key: blocks one peer may hold in a pool; claims beyond are refused
    /// (0: no cap) [default: 0]
    #[arg(long, value_name = "N")]
    pub max_peer_blocks: Option<String>,
    /// Print version
    #[arg(short = 'V', long = "version", action = clap::ArgAction::Version)]
    pub version: Option<bool>,
    /// Print help
    #[arg(short = 'h', long = "help", action = clap::ArgAction::Help)]
    pub help: Option<bool>,
}

/// `-b` when neither the flag nor the file's `block` is given.
pub const DEFAULT_BLOCK_POW: &str = "5";
/// `-t`.
pub const DEFAULT_TENTATIVE_TIMEOUT: &str = "15";
/// `-B`.
pub const DEFAULT_BLOCK_TIMEOUT: &str = "60";
/// `-s`.
pub const DEFAULT_SPARE_LEASES: &str = "2";
/// `-n`.
pub const DEFAULT_NEEDLESS_TIMEOUT: &str = "300";
/// `-C`.
pub const DEFAULT_CONTROL: &str = "/run/ddhcpd.sock";
/// `--state-dir`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/ddhcpd";

/// A rejected value: one line for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Where the value came from: a flag (`-b`, `--pool lan.block`) or a place in the
    /// `--config` file (`ddhcpd.toml:12 pool.lan.block`).
    pub flag: Cow<'static, str>,
    pub value: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(
        flag: impl Into<Cow<'static, str>>,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        ConfigError {
            flag: flag.into(),
            value: value.into(),
            reason: reason.into(),
        }
    }
}

/// `s` with control characters (newlines among them) escaped, so it cannot break the line.
fn one_line(s: &str) -> Cow<'_, str> {
    if s.chars().any(char::is_control) {
        Cow::Owned(
            s.chars()
                .map(|c| {
                    if c.is_control() {
                        c.escape_debug().to_string()
                    } else {
                        c.to_string()
                    }
                })
                .collect(),
        )
    } else {
        Cow::Borrowed(s)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid value '{}' for {}: {}",
            one_line(&self.value),
            one_line(&self.flag),
            one_line(&self.reason)
        )
    }
}

impl std::error::Error for ConfigError {}

/// One DHCP option as given with `-o`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DhcpOption {
    pub code: u8,
    pub payload: Vec<u8>,
}

/// Most `--replicas`: each holder costs the owner one stream and a copy of every change.
pub const MAX_REPLICAS: usize = 8;
/// The longest `--commit-delay`: beyond it, clients waiting for an ACK would notice.
pub const MAX_COMMIT_DELAY_MS: u32 = 100;

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub server_iface: String,
    /// In the order given: `-N`'s `default` first, then the file's (in file order), then
    /// the `--pool` flags. Names are unique, ranges disjoint, and no two dhcp pools share a
    /// client interface.
    pub pools: Vec<PoolSpec>,
    /// `--location`: this node's location.
    pub location: Option<String>,
    /// Timers; `claim.spare_leases` is the `-s` value (each pool's own is [`PoolSpec::spare`]).
    pub claim: ClaimConfig,
    pub control: PathBuf,
    pub hook: Option<PathBuf>,
    pub daemonize: bool,
    pub verbose: u8,
    pub state_dir: PathBuf,
    pub fsync: bool,
    /// `--commit-delay`.
    pub commit_delay: std::time::Duration,
    pub node_id: Option<NodeId>,
    /// `--replicas`: holders per block, 0 for none.
    pub replicas: usize,
    /// `--max-replica-lag`.
    pub max_replica_lag: std::time::Duration,
    /// `--replica-sync`.
    pub replica_sync: bool,
    /// `--recover`.
    pub recover: bool,
    /// `--peer-key` files, in order (the first signs).
    pub peer_key_files: Vec<PathBuf>,
    /// Read by [`Args::validate`]; empty from [`Args::validate_with`], which reads no file.
    pub peer_keys: Vec<crate::auth::MeshKey>,
    /// `--peer-key-migrate`.
    pub peer_key_migrate: bool,
    /// `--node-key`.
    pub node_key: bool,
    /// `--max-peer-blocks` (0: no cap).
    pub max_peer_blocks: u32,
    pub log_file: Option<PathBuf>,
    pub audit_log: Option<PathBuf>,
    pub metrics: Option<std::net::SocketAddr>,
    /// `--api` and `--api-token`.
    pub api: Option<ApiSpec>,
    pub control_group: Option<String>,
}

impl Config {
    /// The pool a control command means: `name` if given, else `default`, else the only
    /// pool. The error lists the pool names.
    pub fn pool_index(&self, name: Option<&str>) -> Result<usize, String> {
        let names = || {
            self.pools
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match name {
            Some(n) => self
                .pools
                .iter()
                .position(|p| p.name == n)
                .ok_or_else(|| format!("no pool named '{}' (pools: {})", one_line(n), names())),
            None => {
                if let Some(i) = self.pools.iter().position(|p| p.name == "default") {
                    Ok(i)
                } else if self.pools.len() == 1 {
                    Ok(0)
                } else if self.pools.is_empty() {
                    Err("this daemon has no pools".to_string())
                } else {
                    Err(format!("give --pool NAME (pools: {})", names()))
                }
            }
        }
    }
}

/// A value as written, with the name errors give it: a flag (`-b`, `--pool lan.block`) or
/// `FILE:LINE KEY` for the `--config` file.
#[derive(Clone, Debug)]
pub(crate) struct Raw {
    pub(crate) text: String,
    pub(crate) at: Cow<'static, str>,
}

impl Raw {
    fn flag(flag: &'static str, text: impl Into<String>) -> Self {
        Raw {
            text: text.into(),
            at: Cow::Borrowed(flag),
        }
    }

    fn err(&self, reason: impl Into<String>) -> ConfigError {
        ConfigError::new(self.at.clone(), self.text.clone(), reason)
    }

    fn number<T: std::str::FromStr>(&self, what: &str) -> Result<T, ConfigError> {
        self.text
            .trim()
            .parse()
            .map_err(|_| self.err(format!("not {what}")))
    }

    fn secs_in(&self, min: u64, max: u64, why: &str) -> Result<Duration, ConfigError> {
        let n: u64 = self.number("a whole number of seconds")?;
        if n < min || n > max {
            return Err(self.err(format!("must be between {min} and {max} seconds{why}")));
        }
        Ok(Duration::from_secs(n))
    }

    fn iface(&self) -> Result<String, ConfigError> {
        check_iface_name(&self.at, &self.text)?;
        Ok(self.text.clone())
    }

    /// A DHCP option `CODE:LEN:P…` that also passes the checks of `set-option`.
    fn option(&self) -> Result<DhcpOption, ConfigError> {
        let parsed = parse_option(&self.at, &self.text)?;
        crate::dhcp::options::OptionStore::validate(&parsed).map_err(|why| self.err(why))?;
        Ok(parsed)
    }
}

/// Reads the `--peer-key` files; errors name the flag, the path and the reason, and two
/// files with one key id are refused.
pub fn read_peer_keys(paths: &[PathBuf]) -> Result<Vec<crate::auth::MeshKey>, ConfigError> {
    let mut keys: Vec<crate::auth::MeshKey> = Vec::new();
    for p in paths {
        let shown = p.display().to_string();
        let key = crate::auth::MeshKey::read(p)
            .map_err(|why| ConfigError::new("--peer-key", shown.clone(), why))?;
        if keys.iter().any(|k| k.id == key.id && *k != key) {
            return Err(ConfigError::new(
                "--peer-key",
                shown,
                format!("another key file has key id {}", key.id),
            ));
        }
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    Ok(keys)
}

/// Parses `A.B.C.D/LEN` and the block exponent into a range.
pub fn parse_range(network: &str, block_pow: &str) -> Result<ManagedRange, ConfigError> {
    range_of(&Raw::flag("-N", network), &Raw::flag("-b", block_pow))
}

/// [`parse_range`] with errors naming where each value came from.
fn range_of(network: &Raw, block_pow: &Raw) -> Result<ManagedRange, ConfigError> {
    let (addr, len) = network
        .text
        .split_once('/')
        .ok_or_else(|| network.err("expected A.B.C.D/LEN"))?;
    let prefix: Ipv4Addr = addr
        .parse()
        .map_err(|_| network.err("not an IPv4 address before the '/'"))?;
    let len: u8 = len
        .parse()
        .map_err(|_| network.err("prefix length is not a number 0-32"))?;
    if len > 32 {
        return Err(network.err("prefix length is more than 32"));
    }
    let pow: u8 = block_pow.number("a block size exponent (0-7)")?;
    ManagedRange::new(prefix, len, pow).map_err(|reason| {
        if reason.contains("network address") {
            network.err(reason)
        } else {
            block_pow.err(reason)
        }
    })
}

/// Parses one byte the way ddhcpd's `strtoul(.., 0)` does: `0x` hex, leading `0` octal,
/// else decimal. Unlike ddhcpd, values above 255 are an error, not silently truncated.
fn option_byte(s: &str) -> Option<u8> {
    let s = s.trim();
    let v = if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u32::from_str_radix(hex, 16).ok()?
    } else if s.len() > 1 && s.starts_with('0') {
        u32::from_str_radix(&s[1..], 8).ok()?
    } else {
        s.parse::<u32>().ok()?
    };
    u8::try_from(v).ok()
}

/// Parses `CODE:LEN:P1.P2…Pn` with exactly LEN payload bytes; errors name `flag`.
pub fn parse_option(flag: &str, s: &str) -> Result<DhcpOption, ConfigError> {
    let err = |why: &str| ConfigError::new(flag.to_string(), s, why.to_string());
    let mut parts = s.splitn(3, ':');
    let code: u8 = parts
        .next()
        .and_then(|c| c.trim().parse().ok())
        .ok_or_else(|| err("CODE must be a number 1-254"))?;
    if code == 0 || code == 255 {
        return Err(err("codes 0 (pad) and 255 (end) are not options"));
    }
    let len: usize = parts
        .next()
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| err("LEN must be a number 0-255"))?;
    if len > 255 {
        return Err(err("LEN must be a number 0-255"));
    }
    let payload_text = parts.next().unwrap_or("");
    let payload: Vec<u8> = if len == 0 && payload_text.trim().is_empty() {
        Vec::new()
    } else {
        payload_text
            .split('.')
            .map(option_byte)
            .collect::<Option<_>>()
            .ok_or_else(|| err("payload bytes must be numbers 0-255 separated by '.'"))?
    };
    if payload.len() != len {
        return Err(err(&format!(
            "LEN is {len} but {} payload bytes were given",
            payload.len()
        )));
    }
    Ok(DhcpOption { code, payload })
}

impl Args {
    /// Turns flags (and the `--config` file, read here) into a configuration or says which
    /// flag or file key is wrong and why.
    pub fn validate(&self) -> Result<Config, ConfigError> {
        let file = match &self.config {
            Some(path) => Some(ConfigFile::read(path)?),
            None => None,
        };
        let mut cfg = self.validate_with(file.as_ref())?;
        if let Some(api) = &mut cfg.api {
            api.token = Some(ApiToken::read(&api.token_file)?);
        }
        cfg.peer_keys = read_peer_keys(&cfg.peer_key_files)?;
        Ok(cfg)
    }

    /// [`Args::validate`] with the `--config` file already read and parsed (`None`: no
    /// file); `self.config` itself is not looked at. Makes no system calls.
    pub fn validate_with(&self, file: Option<&ConfigFile>) -> Result<Config, ConfigError> {
        let node = |key: &str| file.and_then(|f| f.node(key));
        // A flag if given, else the file's key, else the default.
        let pick = |flag: &'static str, given: Option<&String>, key: &str| -> Option<Raw> {
            given
                .map(|v| Raw::flag(flag, v.clone()))
                .or_else(|| node(key).cloned())
        };
        let or_default = |flag: &'static str, raw: Option<Raw>, default: &'static str| {
            raw.unwrap_or_else(|| Raw::flag(flag, default))
        };
        let path_pick = |given: Option<&PathBuf>, key: &str| {
            given
                .cloned()
                .or_else(|| node(key).map(|r| r.text.clone().into()))
        };

        let server_iface = pick("-i", self.server_iface.as_ref(), "server-iface")
            .ok_or_else(|| ConfigError::new("-i", "", "the server interface is required"))?
            .iface()?;
        let client_iface = pick("-c", self.client_iface.as_ref(), "client-iface");
        if let Some(c) = &client_iface {
            c.iface()?;
        }
        let tentative_timeout = or_default(
            "-t",
            pick("-t", self.tentative_timeout.as_ref(), "tentative-timeout"),
            DEFAULT_TENTATIVE_TIMEOUT,
        )
        .secs_in(2, 3600, " (claim rounds run every half of it)")?;
        let block_timeout = or_default(
            "-B",
            pick("-B", self.block_timeout.as_ref(), "block-timeout"),
            DEFAULT_BLOCK_TIMEOUT,
        )
        .secs_in(1, u64::from(u16::MAX), " (the claim TTL is a 16-bit field)")?;
        let needless_timeout = or_default(
            "-n",
            pick("-n", self.needless_timeout.as_ref(), "needless-timeout"),
            DEFAULT_NEEDLESS_TIMEOUT,
        )
        .secs_in(0, 1 << 31, "")?;
        let block = or_default(
            "-b",
            pick("-b", self.block_pow.as_ref(), "block"),
            DEFAULT_BLOCK_POW,
        );
        // Checked even if every pool gives its own block, as -b always was.
        let pow: u8 = block.number("a block size exponent (0-7)")?;
        if pow > crate::range::MAX_BLOCK_POW {
            return Err(block.err(format!(
                "block size 2^{pow} does not fit the ddhcpd wire format (largest is 2^{} = {} addresses)",
                crate::range::MAX_BLOCK_POW,
                1u32 << crate::range::MAX_BLOCK_POW
            )));
        }
        let spare = or_default(
            "-s",
            pick("-s", self.spare_leases.as_ref(), "spare"),
            DEFAULT_SPARE_LEASES,
        );
        let spare_leases: u32 = spare.number("a number of leases")?;
        let learning = if self.no_learning {
            false
        } else {
            node("learning").is_none_or(|r| r.text == "true")
        };
        // `-o` flags replace the file's `options` list as a whole.
        let option_raws: Vec<Raw> = if !self.options.is_empty() || file.is_none() {
            self.options
                .iter()
                .map(|o| Raw::flag("-o", o.clone()))
                .collect()
        } else {
            file.map(|f| f.options().to_vec()).unwrap_or_default()
        };
        let options = option_raws
            .iter()
            .map(Raw::option)
            .collect::<Result<Vec<_>, _>>()?;
        let location = pick("--location", self.location.as_ref(), "location")
            .map(|r| {
                pool::check_tag(&r)?;
                Ok::<_, ConfigError>(r.text)
            })
            .transpose()?;

        let mut raw_pools = Vec::new();
        if let Some(n) = &self.network {
            raw_pools.push(pool::RawPool::default_pool(n));
        }
        if let Some(f) = file {
            raw_pools.extend(f.pools().iter().cloned());
        }
        for p in &self.pools {
            raw_pools.push(pool::RawPool::parse_flag(p)?);
        }
        if raw_pools.is_empty() {
            return Err(ConfigError::new(
                "-N",
                "",
                "the managed range A.B.C.D/LEN is required",
            ));
        }
        let pools = pool::build_all(
            &raw_pools,
            &pool::Defaults {
                block,
                spare,
                client_iface,
                no_client: self.no_client,
                options,
            },
        )?;

        let node_id: Option<NodeId> = pick("--node-id", self.node_id.as_ref(), "node-id")
            .map(|r| {
                r.text
                    .parse()
                    .map_err(|e: String| ConfigError::new(r.at.clone(), r.text.clone(), e))
            })
            .transpose()?;
        if self.daemonize && self.foreground {
            return Err(ConfigError::new(
                "-d",
                "-D",
                "-d and -D contradict each other",
            ));
        }
        let fsync = or_default(
            "--fsync",
            pick("--fsync", self.fsync.as_ref(), "fsync"),
            "on",
        );
        let fsync = match fsync.text.as_str() {
            "on" => true,
            "off" => false,
            _ => return Err(fsync.err("must be on or off")),
        };
        let delay = or_default(
            "--commit-delay",
            pick("--commit-delay", self.commit_delay.as_ref(), "commit-delay"),
            "2",
        );
        let delay_ms: u32 = delay.number("a number of milliseconds")?;
        if delay_ms > MAX_COMMIT_DELAY_MS {
            return Err(delay.err(format!(
                "at most {MAX_COMMIT_DELAY_MS} ms (every reply waits for it)"
            )));
        }
        let metrics = pick("--metrics", self.metrics.as_ref(), "metrics")
            .map(|m| {
                if cfg!(not(feature = "metrics")) {
                    return Err(m.err("this ddhcpd was built without the metrics feature"));
                }
                m.text
                    .parse()
                    .map_err(|_| m.err("expected ADDR:PORT, e.g. 127.0.0.1:9430 or [::1]:9430"))
            })
            .transpose()?;
        let replicas = or_default(
            "--replicas",
            pick("--replicas", self.replicas.as_ref(), "replicas"),
            "2",
        );
        let replicas_raw = replicas;
        let replicas: usize = replicas_raw.number("a number of peers")?;
        if replicas > MAX_REPLICAS {
            return Err(replicas_raw.err(format!(
                "at most {MAX_REPLICAS} (every change is sent to each holder)"
            )));
        }
        let lag = or_default(
            "--max-replica-lag",
            pick(
                "--max-replica-lag",
                self.max_replica_lag.as_ref(),
                "max-replica-lag",
            ),
            "5",
        );
        let lag_secs: u32 = lag.number("a number of seconds")?;
        if lag_secs == 0 {
            return Err(lag.err("must be at least 1 second"));
        }
        let sync = or_default(
            "--replica-sync",
            pick("--replica-sync", self.replica_sync.as_ref(), "replica-sync"),
            "off",
        );
        let replica_sync = match sync.text.as_str() {
            "on" => true,
            "off" => false,
            _ => return Err(sync.err("must be on or off")),
        };
        if self.recover && replicas == 0 {
            return Err(ConfigError::new(
                "--recover",
                "",
                "needs replication (--replicas 0 keeps nothing on the peers)",
            ));
        }
        // `--peer-key` flags replace the file's `peer-key` list as a whole.
        let key_raws: Vec<Raw> = if !self.peer_keys.is_empty() || file.is_none() {
            self.peer_keys
                .iter()
                .map(|k| Raw::flag("--peer-key", k.clone()))
                .collect()
        } else {
            file.map(|f| f.peer_keys().to_vec()).unwrap_or_default()
        };
        if let Some(k) = key_raws.iter().find(|k| k.text.is_empty()) {
            return Err(k.err("expected the path of a key file"));
        }
        let peer_key_migrate = self.peer_key_migrate
            || match node("peer-key-migrate") {
                Some(r) => r.text == "true",
                None => false,
            };
        if peer_key_migrate && key_raws.is_empty() {
            return Err(ConfigError::new(
                "--peer-key-migrate",
                "",
                "needs --peer-key FILE (it relaxes what a mesh key enforces)",
            ));
        }
        let node_key = self.node_key
            || match node("node-key") {
                Some(r) => r.text == "true",
                None => false,
            };
        if node_key && key_raws.is_empty() {
            return Err(ConfigError::new(
                "--node-key",
                "",
                "needs --peer-key FILE (node signatures ride on the mesh key's replay protection)",
            ));
        }
        if node_key && let Some(id) = &node_id {
            return Err(ConfigError::new(
                "--node-id",
                id.to_string(),
                "the node id of --node-key is its key's hash; drop one of the two",
            ));
        }
        let cap_raw = or_default(
            "--max-peer-blocks",
            pick(
                "--max-peer-blocks",
                self.max_peer_blocks.as_ref(),
                "max-peer-blocks",
            ),
            "0",
        );
        let max_peer_blocks: u32 = cap_raw.number("a number of blocks")?;
        if max_peer_blocks > 0 && !node_key {
            return Err(cap_raw.err("needs --node-key (without it a claim's sender is not known)"));
        }
        let api = api::spec(
            pick("--api", self.api.as_ref(), "api"),
            pick("--api-token", self.api_token.as_ref(), "api-token"),
        )?;
        Ok(Config {
            server_iface,
            pools,
            location,
            claim: ClaimConfig {
                tentative_timeout,
                block_timeout,
                spare_leases,
                needless_timeout,
                learning,
            },
            control: path_pick(self.control.as_ref(), "control")
                .unwrap_or_else(|| DEFAULT_CONTROL.into()),
            hook: path_pick(self.hook.as_ref(), "hook"),
            daemonize: self.daemonize,
            verbose: self.verbose,
            state_dir: path_pick(self.state_dir.as_ref(), "state-dir")
                .unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
            fsync,
            commit_delay: std::time::Duration::from_millis(u64::from(delay_ms)),
            node_id,
            replicas,
            max_replica_lag: std::time::Duration::from_secs(u64::from(lag_secs)),
            replica_sync,
            recover: self.recover,
            peer_key_files: key_raws.iter().map(|k| PathBuf::from(&k.text)).collect(),
            peer_keys: Vec::new(),
            peer_key_migrate,
            node_key,
            max_peer_blocks,
            log_file: path_pick(self.log_file.as_ref(), "log-file"),
            audit_log: path_pick(self.audit_log.as_ref(), "audit-log"),
            control_group: pick(
                "--control-group",
                self.control_group.as_ref(),
                "control-group",
            )
            .map(|r| r.text),
            metrics,
            api,
        })
    }
}

fn check_iface_name(flag: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty()
        || name.len() > 15
        || name.contains(['/', '\0'])
        || name.contains(char::is_whitespace)
    {
        return Err(ConfigError::new(
            flag.to_string(),
            name,
            "not a valid interface name (1-15 characters, no '/' or spaces)",
        ));
    }
    Ok(())
}

/// Parses the command line the way the daemon does: `Ok(Some(config))` to run,
/// `Ok(None)` after printing help or version, `Err(line)` for exit code 2.
pub fn from_args<I, T>(args: I) -> Result<Option<Config>, String>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    match Args::try_parse_from(args) {
        Ok(a) => a.validate().map(Some).map_err(|e| e.to_string()),
        Err(e) => match e.kind() {
            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                print!("{e}");
                Ok(None)
            }
            _ => Err(one_line_clap_error(&e)),
        },
    }
}

/// Clap's messages span several lines; operators and scripts get the first one.
pub fn one_line_clap_error(e: &clap::Error) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or("invalid arguments");
    first.trim_start_matches("error: ").to_string()
}

#[cfg(test)]
mod tests;

//! Command-line flags and their validation.
//!
//! The short flags are ddhcpd's, so existing init scripts (Gluon's among them) work
//! unchanged. Validation is pure (no system calls), so it can be fuzzed; checks against
//! the running system (does the interface exist?) happen in the daemon at start-up and use
//! the same [`ConfigError`] so the operator always gets one line naming flag, value and
//! reason, and exit code 2.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::blocks::ClaimConfig;
use crate::range::ManagedRange;
use crate::wire::NodeId;

/// `ddhcpd` command line.
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
    /// Client interface: DHCP service on UDP 67
    #[arg(short = 'c', value_name = "IFACE")]
    pub client_iface: Option<String>,
    /// No client interface (no DHCP service, no blocks claimed for it)
    #[arg(short = 'S')]
    pub no_client: bool,
    /// Managed range A.B.C.D/LEN
    #[arg(short = 'N', value_name = "A.B.C.D/LEN")]
    pub network: Option<String>,
    /// Block size is 2^POW addresses
    #[arg(short = 'b', value_name = "POW", default_value = "5")]
    pub block_pow: String,
    /// Tentative timeout in seconds (claim rounds run every half of it)
    #[arg(short = 't', value_name = "SECS", default_value = "15")]
    pub tentative_timeout: String,
    /// Block claim timeout in seconds: TTL announced in claims and learning-phase length
    #[arg(short = 'B', value_name = "SECS", default_value = "60")]
    pub block_timeout: String,
    /// Spare leases to keep free in owned blocks
    #[arg(short = 's', value_name = "N", default_value = "2")]
    pub spare_leases: String,
    /// Seconds an unused surplus block is kept before it is given up
    #[arg(short = 'n', value_name = "SECS", default_value = "300")]
    pub needless_timeout: String,
    /// Skip the learning phase
    #[arg(short = 'L')]
    pub no_learning: bool,
    /// Add a DHCP option CODE:LEN:P1.P2… (repeatable; bytes in decimal, 0x hex or 0 octal)
    #[arg(short = 'o', value_name = "CODE:LEN:P1.P2…")]
    pub options: Vec<String>,
    /// Control socket path
    #[arg(short = 'C', value_name = "PATH", default_value = "/run/ddhcpd.sock")]
    pub control: PathBuf,
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
    /// flash routers)
    #[arg(long, value_name = "DIR", default_value = "/var/lib/ddhcpd")]
    pub state_dir: PathBuf,
    /// Sync the state store before each reply (on), or only write it (off: survives a
    /// daemon crash, not a power loss)
    #[arg(long, value_name = "on|off", default_value = "on")]
    pub fsync: String,
    /// Use this node id (16 hex digits) instead of the derived, persisted one
    #[arg(long, value_name = "HEX16")]
    pub node_id: Option<String>,
    /// Append logs to this file instead of stderr (useful with -d)
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,
    /// Append one JSON line per allocation and release to this file
    #[arg(long, value_name = "PATH")]
    pub audit_log: Option<PathBuf>,
    /// Group allowed to use the control socket (mode 0660 instead of 0600)
    #[arg(long, value_name = "GROUP")]
    pub control_group: Option<String>,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<String>,
    /// Print version
    #[arg(short = 'V', long = "version", action = clap::ArgAction::Version)]
    pub version: Option<bool>,
    /// Print help
    #[arg(short = 'h', long = "help", action = clap::ArgAction::Help)]
    pub help: Option<bool>,
}

/// A rejected flag value: one line for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub flag: &'static str,
    pub value: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(flag: &'static str, value: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            flag,
            value: value.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid value '{}' for {}: {}",
            self.value.escape_debug(),
            self.flag,
            self.reason
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

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub server_iface: String,
    pub client_iface: Option<String>,
    pub range: ManagedRange,
    pub claim: ClaimConfig,
    pub options: Vec<DhcpOption>,
    pub control: PathBuf,
    pub hook: Option<PathBuf>,
    pub daemonize: bool,
    pub verbose: u8,
    pub state_dir: PathBuf,
    pub fsync: bool,
    pub node_id: Option<NodeId>,
    pub log_file: Option<PathBuf>,
    pub audit_log: Option<PathBuf>,
    pub metrics: Option<std::net::SocketAddr>,
    pub control_group: Option<String>,
}

fn number<T: std::str::FromStr>(flag: &'static str, v: &str, what: &str) -> Result<T, ConfigError> {
    v.trim()
        .parse()
        .map_err(|_| ConfigError::new(flag, v, format!("not {what}")))
}

fn secs_in(
    flag: &'static str,
    v: &str,
    min: u64,
    max: u64,
    why: &str,
) -> Result<Duration, ConfigError> {
    let n: u64 = number(flag, v, "a whole number of seconds")?;
    if n < min || n > max {
        return Err(ConfigError::new(
            flag,
            v,
            format!("must be between {min} and {max} seconds{why}"),
        ));
    }
    Ok(Duration::from_secs(n))
}

/// Parses `A.B.C.D/LEN` and the block exponent into a range.
pub fn parse_range(network: &str, block_pow: &str) -> Result<ManagedRange, ConfigError> {
    let (addr, len) = network
        .split_once('/')
        .ok_or_else(|| ConfigError::new("-N", network, "expected A.B.C.D/LEN"))?;
    let prefix: Ipv4Addr = addr
        .parse()
        .map_err(|_| ConfigError::new("-N", network, "not an IPv4 address before the '/'"))?;
    let len: u8 = len
        .parse()
        .map_err(|_| ConfigError::new("-N", network, "prefix length is not a number 0-32"))?;
    if len > 32 {
        return Err(ConfigError::new(
            "-N",
            network,
            "prefix length is more than 32",
        ));
    }
    let pow: u8 = number("-b", block_pow, "a block size exponent (0-7)")?;
    ManagedRange::new(prefix, len, pow).map_err(|reason| {
        let flag = if reason.contains("network address") {
            "-N"
        } else {
            "-b"
        };
        let value = if flag == "-N" { network } else { block_pow };
        ConfigError::new(flag, value, reason)
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

/// Parses `CODE:LEN:P1.P2…Pn` with exactly LEN payload bytes.
pub fn parse_option(flag: &'static str, s: &str) -> Result<DhcpOption, ConfigError> {
    let err = |why: &str| ConfigError::new(flag, s, why.to_string());
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
    /// Turns flags into a configuration or says which flag is wrong and why.
    pub fn validate(&self) -> Result<Config, ConfigError> {
        let server_iface = self
            .server_iface
            .clone()
            .ok_or_else(|| ConfigError::new("-i", "", "the server interface is required"))?;
        check_iface_name("-i", &server_iface)?;
        let client_iface = if self.no_client {
            None
        } else {
            let c = self.client_iface.clone().ok_or_else(|| {
                ConfigError::new(
                    "-c",
                    "",
                    "the client interface is required (or -S for no DHCP service)",
                )
            })?;
            check_iface_name("-c", &c)?;
            Some(c)
        };
        let network = self.network.as_deref().ok_or_else(|| {
            ConfigError::new("-N", "", "the managed range A.B.C.D/LEN is required")
        })?;
        let range = parse_range(network, &self.block_pow)?;
        let tentative_timeout = secs_in(
            "-t",
            &self.tentative_timeout,
            2,
            3600,
            " (claim rounds run every half of it)",
        )?;
        let block_timeout = secs_in(
            "-B",
            &self.block_timeout,
            1,
            u64::from(u16::MAX),
            " (the claim TTL is a 16-bit field)",
        )?;
        let spare: u32 = number("-s", &self.spare_leases, "a number of leases")?;
        let block_size = range.block_size();
        let total = u64::from(range.num_blocks()) * u64::from(block_size);
        if u64::from(spare) > total {
            return Err(ConfigError::new(
                "-s",
                &self.spare_leases,
                format!("more spare leases than the {total} addresses of the range"),
            ));
        }
        let needless_timeout = secs_in("-n", &self.needless_timeout, 0, 1 << 31, "")?;
        let options = self
            .options
            .iter()
            .map(|o| {
                let parsed = parse_option("-o", o)?;
                crate::dhcp::options::OptionStore::validate(&parsed)
                    .map_err(|why| ConfigError::new("-o", o, why))?;
                Ok(parsed)
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        let node_id = self
            .node_id
            .as_deref()
            .map(|s| {
                s.parse()
                    .map_err(|e: String| ConfigError::new("--node-id", s, e))
            })
            .transpose()?;
        if self.daemonize && self.foreground {
            return Err(ConfigError::new(
                "-d",
                "-D",
                "-d and -D contradict each other",
            ));
        }
        Ok(Config {
            server_iface,
            client_iface,
            range,
            claim: ClaimConfig {
                tentative_timeout,
                block_timeout,
                // Without a client interface nobody needs addresses (as ddhcpd's -S).
                spare_leases: if self.no_client { 0 } else { spare },
                needless_timeout,
                learning: !self.no_learning,
            },
            options,
            control: self.control.clone(),
            hook: self.hook.clone(),
            daemonize: self.daemonize,
            verbose: self.verbose,
            state_dir: self.state_dir.clone(),
            fsync: match self.fsync.as_str() {
                "on" => true,
                "off" => false,
                other => {
                    return Err(ConfigError::new("--fsync", other, "must be on or off"));
                }
            },
            node_id,
            log_file: self.log_file.clone(),
            audit_log: self.audit_log.clone(),
            control_group: self.control_group.clone(),
            metrics: self
                .metrics
                .as_deref()
                .map(|m| {
                    if cfg!(not(feature = "metrics")) {
                        return Err(ConfigError::new(
                            "--metrics",
                            m,
                            "this ddhcpd was built without the metrics feature",
                        ));
                    }
                    m.parse().map_err(|_| {
                        ConfigError::new(
                            "--metrics",
                            m,
                            "expected ADDR:PORT, e.g. 127.0.0.1:9430 or [::1]:9430",
                        )
                    })
                })
                .transpose()?,
        })
    }
}

fn check_iface_name(flag: &'static str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty()
        || name.len() > 15
        || name.contains(['/', '\0'])
        || name.contains(char::is_whitespace)
    {
        return Err(ConfigError::new(
            flag,
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
mod tests {
    use super::*;

    fn parse(args: &str) -> Result<Config, String> {
        let argv = std::iter::once("ddhcpd").chain(args.split_whitespace());
        Args::try_parse_from(argv)
            .map_err(|e| one_line_clap_error(&e))?
            .validate()
            .map_err(|e| e.to_string())
    }

    #[test]
    fn gluon_command_line() {
        let c = parse("-D -s 2 -b 2 -B 300 -c local-node -i br-client -N 10.116.128.0/17 -t 15 -o 51:4:0.0.1.44 -o 54:4:10.116.0.1 -o 1:4:255.255.128.0").unwrap();
        assert_eq!(c.range.num_blocks(), 8192);
        assert_eq!(c.claim.block_timeout, Duration::from_secs(300));
        assert_eq!(c.options.len(), 3);
        assert_eq!(c.options[0].payload, vec![0, 0, 1, 44]);
        assert!(c.claim.learning);
    }

    #[test]
    fn operator_errors_name_flag_value_and_reason() {
        let base = "-i s -c c";
        let cases = [
            ("-N 10.0.0.0/24 -b 8", "-b", "wire"),
            ("-N 10.0.0.0/28 -b 5", "-b", "larger"),
            ("-N 10.0.0.1/24", "-N", "not a network"),
            ("-N 10.0.0.0", "-N", "A.B.C.D/LEN"),
            ("-N 10.0.0.0/33", "-N", "more than 32"),
            ("-N 10.0.0.0/24 -t 1", "-t", "between 2"),
            ("-N 10.0.0.0/24 -B 0", "-B", "between 1"),
            ("-N 10.0.0.0/24 -B 70000", "-B", "16-bit"),
            ("-N 10.0.0.0/24 -o 3:4:1.2.3", "-o", "LEN is 4"),
            ("-N 10.0.0.0/24 -o 3:4:1.2.3.256", "-o", "0-255"),
            ("-N 10.0.0.0/24 -s 1000", "-s", "more spare"),
            ("-N 10.0.0.0/24 --node-id xyz", "--node-id", "16 hex"),
            (
                "-N 10.0.0.0/24 --metrics localhost",
                "--metrics",
                if cfg!(feature = "metrics") {
                    "ADDR:PORT"
                } else {
                    "without the metrics feature"
                },
            ),
        ];
        for (args, flag, why) in cases {
            let e = parse(&format!("{base} {args}")).unwrap_err();
            assert!(e.contains(flag) && e.contains(why), "{args}: {e}");
            assert!(!e.contains('\n'));
        }
        let e = parse("-c c -N 10.0.0.0/24").unwrap_err();
        assert!(e.contains("-i"), "{e}");
        let e = parse("-i s -N 10.0.0.0/24").unwrap_err();
        assert!(e.contains("-c"), "{e}");
        let e = parse("-i s -S -N 10.0.0.0/24 -b x").unwrap_err();
        assert!(e.contains("-b") && e.contains("'x'"), "{e}");
        let e = parse("-i s -S -N 10.0.0.0/24 -q").unwrap_err();
        assert!(e.contains("-q"), "{e}");
    }

    #[test]
    fn option_bytes_like_strtoul() {
        let o = parse_option("-o", "3:4:0x0a.010.0.1").unwrap();
        assert_eq!(o.payload, vec![10, 8, 0, 1]);
        assert_eq!(
            parse_option("-o", "80:0:").unwrap().payload,
            Vec::<u8>::new()
        );
        assert!(parse_option("-o", "0:1:1").is_err());
        assert!(parse_option("-o", "3:1:1.2").is_err());
        assert!(parse_option("-o", "3:x:1").is_err());
    }

    #[test]
    fn no_client_needs_no_spare() {
        let c = parse("-i s -S -N 10.0.0.0/24 -s 4").unwrap();
        assert_eq!(c.claim.spare_leases, 0);
        assert!(c.client_iface.is_none());
    }
}

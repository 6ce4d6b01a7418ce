use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

fn parse(args: &str) -> Result<Config, String> {
    parse_argv(args.split_whitespace())
}

fn parse_argv<'a>(args: impl IntoIterator<Item = &'a str>) -> Result<Config, String> {
    let argv = std::iter::once("ddhcpd").chain(args);
    Args::try_parse_from(argv)
        .map_err(|e| one_line_clap_error(&e))?
        .validate()
        .map_err(|e| e.to_string())
}

/// A config file under the temp directory, removed on drop.
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new(text: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "ddhcp-config-test-{}-{}.toml",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, text).unwrap();
        TempFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(feature = "config-file")]
/// Runs `ddhcpd --config FILE ARGS…` with `text` as the file.
fn with_file(text: &str, args: &str) -> (TempFile, Result<Config, String>) {
    let f = TempFile::new(text);
    let r = parse_argv(
        ["--config", f.path()]
            .into_iter()
            .chain(args.split_whitespace()),
    );
    (f, r)
}

#[cfg(feature = "config-file")]
/// The error of `with_file`, checked to be one line naming the file, `line` and `key`.
fn file_error(text: &str, args: &str, line: usize, key: &str, why: &str) -> String {
    let (f, r) = with_file(text, args);
    let e = r.expect_err(text);
    let at = format!("{}:{line}", f.path());
    assert!(e.contains(&at), "{e:?} lacks {at}");
    assert!(e.contains(key), "{e:?} lacks {key}");
    assert!(e.contains(why), "{e:?} lacks {why}");
    assert!(!e.contains('\n'), "{e:?}");
    e
}

fn opt(code: u8, payload: &[u8]) -> DhcpOption {
    DhcpOption {
        code,
        payload: payload.to_vec(),
    }
}

#[test]
fn gluon_command_line() {
    let c = parse("-D -s 2 -b 2 -B 300 -c local-node -i br-client -N 10.116.128.0/17 -t 15 -o 51:4:0.0.1.44 -o 54:4:10.116.0.1 -o 1:4:255.255.128.0").unwrap();
    assert_eq!(c.pools.len(), 1);
    let p = &c.pools[0];
    assert_eq!(p.name, "default");
    assert_eq!(p.use_, PoolUse::Dhcp);
    assert_eq!(p.range.to_string(), "10.116.128.0/17");
    assert_eq!(p.range.num_blocks(), 8192);
    assert_eq!(p.range.block_size(), 4);
    assert_eq!(p.iface.as_deref(), Some("local-node"));
    assert_eq!(p.spare, 2);
    assert_eq!(p.location, None);
    assert_eq!(p.options.len(), 3);
    assert_eq!(p.options[0].payload, vec![0, 0, 1, 44]);
    assert_eq!(p.options[1], opt(54, &[10, 116, 0, 1]));
    assert_eq!(c.server_iface, "br-client");
    assert_eq!(c.location, None);
    assert_eq!(c.claim.block_timeout, Duration::from_secs(300));
    assert_eq!(c.claim.tentative_timeout, Duration::from_secs(15));
    assert_eq!(c.claim.needless_timeout, Duration::from_secs(300));
    assert_eq!(c.claim.spare_leases, 2);
    assert!(c.claim.learning);
    assert_eq!(c.control, PathBuf::from("/run/ddhcpd.sock"));
    assert_eq!(c.state_dir, PathBuf::from("/var/lib/ddhcpd"));
    assert!(c.fsync);
    assert_eq!(c.commit_delay, Duration::from_millis(2));
    assert!(!c.daemonize);
}

#[test]
fn defaults_without_flags() {
    let c = parse("-i s -c c -N 10.0.0.0/16").unwrap();
    let p = &c.pools[0];
    assert_eq!(p.range.block_size(), 32);
    assert_eq!(p.spare, 2);
    assert!(p.options.is_empty());
    assert_eq!(c.claim.tentative_timeout, Duration::from_secs(15));
    assert_eq!(c.claim.block_timeout, Duration::from_secs(60));
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
        ("-N 10.0.0.0/24 --fsync maybe", "--fsync", "on or off"),
        (
            "-N 10.0.0.0/24 --commit-delay 101",
            "--commit-delay",
            "at most 100",
        ),
        (
            "-N 10.0.0.0/24 --commit-delay 1ms",
            "--commit-delay",
            "milliseconds",
        ),
        (
            "-N 10.0.0.0/24 --location a;b",
            "--location",
            "location tag",
        ),
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
    assert_eq!(
        e,
        "invalid value '' for -c: the client interface is required (or -S for no DHCP service)"
    );
    let e = parse("-i s -S -N 10.0.0.0/24 -b x").unwrap_err();
    assert!(e.contains("-b") && e.contains("'x'"), "{e}");
    let e = parse("-i s -S -N 10.0.0.0/24 -q").unwrap_err();
    assert!(e.contains("-q"), "{e}");
    let e = parse("-i s -c c").unwrap_err();
    assert_eq!(
        e,
        "invalid value '' for -N: the managed range A.B.C.D/LEN is required"
    );
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
    assert_eq!(c.pools[0].spare, 0);
    assert!(c.pools[0].iface.is_none());
    assert_eq!(c.claim.spare_leases, 4);
    // -c is ignored with -S, as before.
    let c = parse("-i s -S -c c -N 10.0.0.0/24").unwrap();
    assert!(c.pools[0].iface.is_none());
}

#[test]
fn pool_flag_with_every_key() {
    let c = parse_argv([
        "-i",
        "bat0",
        "--pool",
        "lan=10.1.0.0/16,block=3,use=dhcp,iface=br-lan,spare=9,location=rack-1,option=3:4:10.1.0.1,option=6:4:10.1.0.53",
        "--location",
        "rack-1",
    ])
    .unwrap();
    assert_eq!(c.pools.len(), 1);
    let p = &c.pools[0];
    assert_eq!(p.name, "lan");
    assert_eq!(p.range.to_string(), "10.1.0.0/16");
    assert_eq!(p.range.block_size(), 8);
    assert_eq!(p.use_, PoolUse::Dhcp);
    assert_eq!(p.iface.as_deref(), Some("br-lan"));
    assert_eq!(p.spare, 9);
    assert_eq!(p.location.as_deref(), Some("rack-1"));
    assert_eq!(
        p.options,
        vec![opt(3, &[10, 1, 0, 1]), opt(6, &[10, 1, 0, 53])]
    );
    assert_eq!(c.location.as_deref(), Some("rack-1"));
    // No -N needed, no -c needed (the pool has its own interface).
    assert_eq!(c.pool_index(None), Ok(0));
}

#[test]
fn pool_flag_defaults_come_from_the_node_flags() {
    let c = parse_argv([
        "-i",
        "s",
        "-c",
        "br0",
        "-b",
        "3",
        "-s",
        "7",
        "-o",
        "3:4:1.2.3.4",
        "-o",
        "6:4:9.9.9.9",
        "--pool",
        "a=10.1.0.0/16,option=3:4:10.1.0.1,option=42:4:10.1.0.2",
        "--pool",
        "b=10.2.0.0/24,use=local,iface=eth1",
        "--pool",
        "c=10.3.0.0/24,use=api,spare=0",
    ])
    .unwrap();
    let names: Vec<_> = c.pools.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "c"]);
    let a = &c.pools[0];
    assert_eq!(a.range.block_size(), 8);
    assert_eq!(a.spare, 7);
    assert_eq!(a.use_, PoolUse::Dhcp);
    assert_eq!(a.iface.as_deref(), Some("br0"));
    // -o first, the pool's own replaces the same code and adds new ones.
    assert_eq!(
        a.options,
        vec![
            opt(3, &[10, 1, 0, 1]),
            opt(6, &[9, 9, 9, 9]),
            opt(42, &[10, 1, 0, 2])
        ]
    );
    let b = &c.pools[1];
    assert_eq!(b.use_, PoolUse::Local);
    assert_eq!(b.use_.as_str(), "local");
    assert_eq!(b.iface.as_deref(), Some("eth1"));
    assert_eq!(b.spare, 7);
    assert!(b.options.is_empty(), "-o is for dhcp pools");
    let cp = &c.pools[2];
    assert_eq!(cp.use_, PoolUse::Api);
    assert_eq!(cp.use_.as_str(), "api");
    assert_eq!(cp.iface, None);
    assert_eq!(cp.spare, 0);
    assert_eq!(PoolUse::Dhcp.as_str(), "dhcp");
    assert_eq!(c.claim.spare_leases, 7);
}

#[test]
fn default_pool_and_more_pools() {
    let c = parse_argv([
        "-i",
        "s",
        "-c",
        "br0",
        "-N",
        "10.0.0.0/24",
        "--pool",
        "guest=10.0.1.0/24,iface=br-guest",
    ])
    .unwrap();
    assert_eq!(c.pools[0].name, "default");
    assert_eq!(c.pools[0].iface.as_deref(), Some("br0"));
    assert_eq!(c.pools[1].name, "guest");
    assert_eq!(c.pools[1].iface.as_deref(), Some("br-guest"));
    // -S: dhcp pools without their own interface serve nobody.
    let c = parse_argv([
        "-i",
        "s",
        "-S",
        "--pool",
        "a=10.0.0.0/24",
        "--pool",
        "b=10.0.1.0/24,iface=br-b",
    ])
    .unwrap();
    assert_eq!(c.pools[0].iface, None);
    assert_eq!(c.pools[0].spare, 0);
    assert_eq!(c.pools[1].iface.as_deref(), Some("br-b"));
    assert_eq!(c.pools[1].spare, 2);
}

/// `--pool` errors: `(value, flag in the line, reason in the line)`.
#[test]
fn pool_flag_errors() {
    let cases = [
        ("lan", "--pool", "NAME=A.B.C.D/LEN"),
        ("=10.0.0.0/24", "--pool", "pool name"),
        ("a b=10.0.0.0/24", "--pool", "pool name"),
        (
            "a_very_long_pool_name_that_is_too_long=10.0.0.0/24",
            "--pool",
            "1-32",
        ),
        ("lan=10.0.0.1/24", "--pool lan.network", "not a network"),
        ("lan=10.0.0.0", "--pool lan.network", "A.B.C.D/LEN"),
        ("lan=10.0.0.0/24,block=8", "--pool lan.block", "wire"),
        ("lan=10.0.0.0/28,block=5", "--pool lan.block", "larger"),
        ("lan=10.0.0.0/24,block=x", "--pool lan.block", "'x'"),
        ("lan=10.0.0.0/24,use=relay", "--pool lan.use", "unknown use"),
        ("lan=10.0.0.0/24,blok=3", "--pool lan", "unknown key 'blok'"),
        ("lan=10.0.0.0/24,block", "--pool lan", "KEY=VALUE"),
        ("lan=10.0.0.0/24,,block=3", "--pool lan", "KEY=VALUE"),
        ("lan=10.0.0.0/24,block=3,block=4", "--pool lan", "twice"),
        (
            "lan=10.0.0.0/24,spare=x",
            "--pool lan.spare",
            "number of leases",
        ),
        (
            "lan=10.0.0.0/28,block=2,spare=17",
            "--pool lan.spare",
            "more spare",
        ),
        (
            "lan=10.0.0.0/24,iface=a/b",
            "--pool lan.iface",
            "interface name",
        ),
        (
            "lan=10.0.0.0/24,location=a;b",
            "--pool lan.location",
            "location tag",
        ),
        (
            "lan=10.0.0.0/24,option=3:4:1.2.3",
            "--pool lan.option",
            "LEN is 4",
        ),
        (
            "lan=10.0.0.0/24,option=53:1:1",
            "--pool lan.option",
            "protocol-managed",
        ),
        (
            "lan=10.0.0.0/24,use=local,option=3:4:1.2.3.4",
            "--pool lan.option",
            "dhcp pools only",
        ),
        (
            "lan=10.0.0.0/24,use=api,iface=eth0",
            "--pool lan.iface",
            "no interface",
        ),
    ];
    for (value, flag, why) in cases {
        let e = parse_argv(["-i", "s", "-c", "c", "--pool", value]).unwrap_err();
        assert!(
            e.contains(&format!("for {flag}")) && e.contains(why),
            "{value}: {e}"
        );
        assert!(!e.contains('\n'));
    }
    // A dhcp pool without iface needs -c; the line names -c.
    let e = parse_argv(["-i", "s", "--pool", "lan=10.0.0.0/24"]).unwrap_err();
    assert!(e.contains("for -c:") && e.contains("'lan'"), "{e}");
    // A local pool does not.
    parse_argv(["-i", "s", "--pool", "lan=10.0.0.0/24,use=local"]).unwrap();
}

#[test]
fn pools_against_each_other() {
    // Duplicate names: with -N's default, between flags.
    let e = parse_argv([
        "-i",
        "s",
        "-c",
        "c",
        "-N",
        "10.0.0.0/24",
        "--pool",
        "default=10.1.0.0/24,iface=d",
    ])
    .unwrap_err();
    assert!(
        e.contains("for --pool default") && e.contains("already used by -N"),
        "{e}"
    );
    let e = parse_argv([
        "-i",
        "s",
        "--pool",
        "a=10.0.0.0/24,iface=x",
        "--pool",
        "a=10.1.0.0/24,iface=y",
    ])
    .unwrap_err();
    assert!(e.contains("'a'") && e.contains("already used"), "{e}");
    // Overlap: both names and both CIDRs.
    let e = parse_argv([
        "-i",
        "s",
        "-c",
        "c",
        "-N",
        "10.0.0.0/16",
        "--pool",
        "small=10.0.4.0/24,iface=x",
    ])
    .unwrap_err();
    for part in [
        "--pool small.network",
        "'small'",
        "10.0.4.0/24",
        "'default'",
        "10.0.0.0/16",
        "overlaps",
    ] {
        assert!(e.contains(part), "{e} lacks {part}");
    }
    let e = parse_argv([
        "-i",
        "s",
        "-S",
        "--pool",
        "a=10.0.0.0/24",
        "--pool",
        "b=10.0.1.0/24",
        "--pool",
        "c=10.0.0.0/8,block=7,use=api",
    ])
    .unwrap_err();
    assert!(
        e.contains("'c' (10.0.0.0/8) overlaps pool 'a' (10.0.0.0/24"),
        "{e}"
    );
    // Neighbours do not overlap.
    parse_argv([
        "-i",
        "s",
        "-S",
        "--pool",
        "a=10.0.0.0/24",
        "--pool",
        "b=10.0.1.0/24",
    ])
    .unwrap();
    // Two dhcp pools on one interface, given or inherited from -c.
    let e = parse_argv([
        "-i",
        "s",
        "--pool",
        "a=10.0.0.0/24,iface=br0",
        "--pool",
        "b=10.0.1.0/24,iface=br0",
    ])
    .unwrap_err();
    assert!(
        e.contains("for --pool b.iface") && e.contains("not supported") && e.contains("'a'"),
        "{e}"
    );
    let e = parse_argv([
        "-i",
        "s",
        "-c",
        "br0",
        "-N",
        "10.0.0.0/24",
        "--pool",
        "b=10.0.1.0/24",
    ])
    .unwrap_err();
    assert!(e.contains("for -c") && e.contains("not supported"), "{e}");
    // A local pool may use the client interface of a dhcp pool.
    parse_argv([
        "-i",
        "s",
        "-c",
        "br0",
        "-N",
        "10.0.0.0/24",
        "--pool",
        "b=10.0.1.0/24,use=local,iface=br0",
    ])
    .unwrap();
}

/// Every key of the file (close to the example in docs/operations.md).
#[cfg(feature = "config-file")]
const EXAMPLE: &str = r#"server-iface = "bat0"
client-iface = "br-client"
location = "rack1"
state-dir = "/var/lib/ddhcpd"
control = "/run/ddhcpd.sock"
control-group = "ddhcp"
hook = "/usr/lib/ddhcpd/hook"
fsync = "off"
commit-delay = 0
node-id = "0123456789ABCDEF"
log-file = "/var/log/ddhcpd.log"
audit-log = "/var/log/ddhcpd-audit.log"
metrics = "127.0.0.1:9430"
tentative-timeout = 20
block-timeout = 120
needless-timeout = 600
learning = false
block = 4
spare = 3
options = ["6:4:10.0.0.53"]

[pool.clients]
network = "10.0.0.0/17"
block = 2
use = "dhcp"
iface = "client0"
spare = 4
location = "rack1"
options = ["3:4:10.0.0.1", "1:4:255.255.128.0", "6:4:10.0.0.54"]

[pool.guests]
network = "10.0.128.0/24"

[pool.servers]
network = "10.1.0.0/24"
use = "local"
iface = "eth1"

[pool.api]
network = "10.2.0.0/16"
use = "api"
spare = 0
"#;

#[cfg(feature = "config-file")]
/// [`EXAMPLE`], without `metrics` in a build without the metrics feature (same lines).
fn example() -> String {
    if cfg!(feature = "metrics") {
        EXAMPLE.to_string()
    } else {
        EXAMPLE.replace("metrics = \"127.0.0.1:9430\"", "")
    }
}

#[cfg(feature = "config-file")]
#[test]
fn file_with_every_key() {
    let (_f, r) = with_file(&example(), "");
    let c = r.unwrap();
    assert_eq!(c.server_iface, "bat0");
    assert_eq!(c.location.as_deref(), Some("rack1"));
    assert_eq!(c.state_dir, PathBuf::from("/var/lib/ddhcpd"));
    assert_eq!(c.control, PathBuf::from("/run/ddhcpd.sock"));
    assert_eq!(c.control_group.as_deref(), Some("ddhcp"));
    assert_eq!(c.hook, Some(PathBuf::from("/usr/lib/ddhcpd/hook")));
    assert!(!c.fsync);
    assert_eq!(c.commit_delay, Duration::ZERO);
    assert_eq!(
        c.node_id,
        Some("0123456789ABCDEF".parse::<NodeId>().unwrap())
    );
    assert_eq!(c.log_file, Some(PathBuf::from("/var/log/ddhcpd.log")));
    assert_eq!(
        c.audit_log,
        Some(PathBuf::from("/var/log/ddhcpd-audit.log"))
    );
    if cfg!(feature = "metrics") {
        assert_eq!(c.metrics, Some("127.0.0.1:9430".parse().unwrap()));
    }
    assert_eq!(c.claim.tentative_timeout, Duration::from_secs(20));
    assert_eq!(c.claim.block_timeout, Duration::from_secs(120));
    assert_eq!(c.claim.needless_timeout, Duration::from_secs(600));
    assert!(!c.claim.learning);
    assert_eq!(c.claim.spare_leases, 3);
    let names: Vec<_> = c.pools.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["clients", "guests", "servers", "api"], "file order");
    let p = &c.pools[0];
    assert_eq!(p.range.to_string(), "10.0.0.0/17");
    assert_eq!(p.range.block_size(), 4);
    assert_eq!(p.use_, PoolUse::Dhcp);
    assert_eq!(p.iface.as_deref(), Some("client0"));
    assert_eq!(p.spare, 4);
    assert_eq!(p.location.as_deref(), Some("rack1"));
    assert_eq!(
        p.options,
        vec![
            opt(6, &[10, 0, 0, 54]),
            opt(3, &[10, 0, 0, 1]),
            opt(1, &[255, 255, 128, 0])
        ]
    );
    let g = &c.pools[1];
    assert_eq!(g.range.block_size(), 16, "file's block");
    assert_eq!(g.spare, 3, "file's spare");
    assert_eq!(g.iface.as_deref(), Some("br-client"), "file's client-iface");
    assert_eq!(g.options, vec![opt(6, &[10, 0, 0, 53])], "file's options");
    assert_eq!(g.location, None);
    let s = &c.pools[2];
    assert_eq!(s.use_, PoolUse::Local);
    assert_eq!(s.iface.as_deref(), Some("eth1"));
    assert!(s.options.is_empty());
    let a = &c.pools[3];
    assert_eq!(a.use_, PoolUse::Api);
    assert_eq!(a.spare, 0);
    assert_eq!(c.pool_index(Some("guests")), Ok(1));
    let e = c.pool_index(None).unwrap_err();
    assert!(e.contains("clients, guests, servers, api"), "{e}");
}

#[cfg(feature = "config-file")]
#[test]
fn flags_override_the_file() {
    let (_f, r) = with_file(
        &example(),
        "-i br0 -c cl1 -b 3 -s 1 -t 30 -B 90 -n 60 --location rack9 -o 15:3:a.b -o 6:4:1.1.1.1 \
         --state-dir /tmp/s -C /tmp/c --fsync on --node-id 00000000000000AA -H /bin/true \
         --control-group wheel --log-file /tmp/l --audit-log /tmp/a --metrics 127.0.0.1:1",
    );
    // 15:3:a.b is a bad option: the error names -o, not the file.
    assert!(r.unwrap_err().contains("for -o:"));
    let (_f, r) = with_file(
        &example(),
        "-i br0 -c cl1 -b 3 -s 1 -t 30 -B 90 -n 60 --location rack9 -o 6:4:1.1.1.1 \
         --state-dir /tmp/s -C /tmp/c --fsync on --node-id 00000000000000AA -H /bin/true \
         --control-group wheel --log-file /tmp/l --audit-log /tmp/a",
    );
    let c = r.unwrap();
    assert_eq!(c.server_iface, "br0");
    assert_eq!(c.location.as_deref(), Some("rack9"));
    assert_eq!(c.claim.tentative_timeout, Duration::from_secs(30));
    assert_eq!(c.claim.block_timeout, Duration::from_secs(90));
    assert_eq!(c.claim.needless_timeout, Duration::from_secs(60));
    assert_eq!(c.claim.spare_leases, 1);
    assert!(!c.claim.learning, "the file's learning = false stays");
    assert_eq!(c.state_dir, PathBuf::from("/tmp/s"));
    assert_eq!(c.control, PathBuf::from("/tmp/c"));
    assert!(c.fsync);
    assert_eq!(
        c.node_id,
        Some("00000000000000AA".parse::<NodeId>().unwrap())
    );
    assert_eq!(c.hook, Some(PathBuf::from("/bin/true")));
    assert_eq!(c.control_group.as_deref(), Some("wheel"));
    assert_eq!(c.log_file, Some(PathBuf::from("/tmp/l")));
    assert_eq!(c.audit_log, Some(PathBuf::from("/tmp/a")));
    // Pool keys stay; what pools inherit comes from the flags.
    let g = &c.pools[1];
    assert_eq!(g.range.block_size(), 8, "-b");
    assert_eq!(g.spare, 1, "-s");
    assert_eq!(g.iface.as_deref(), Some("cl1"), "-c");
    assert_eq!(
        g.options,
        vec![opt(6, &[1, 1, 1, 1])],
        "-o replaces options"
    );
    assert_eq!(c.pools[0].range.block_size(), 4, "the pool's own block");
    assert_eq!(c.pools[0].iface.as_deref(), Some("client0"));
    // -L wins over learning = true.
    let (_f, r) = with_file(
        "learning = true\n[pool.a]\nnetwork = \"10.0.0.0/24\"\n",
        "-i s -S -L",
    );
    assert!(!r.unwrap().claim.learning);
    let (_f, r) = with_file(
        "learning = true\n[pool.a]\nnetwork = \"10.0.0.0/24\"\n",
        "-i s -S",
    );
    assert!(r.unwrap().claim.learning);
}

#[cfg(feature = "config-file")]
#[test]
fn pools_from_n_file_and_flags_merge_in_order() {
    let (f, r) = with_file(
        "[pool.b]\nnetwork = \"10.0.1.0/24\"\niface = \"cb\"\n[pool.a]\nnetwork = \"10.0.2.0/24\"\niface = \"ca\"\n",
        "-i s -c c0 -N 10.0.0.0/24 --pool z=10.0.3.0/24,iface=cz",
    );
    let c = r.unwrap();
    let names: Vec<_> = c.pools.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["default", "b", "a", "z"]);
    assert_eq!(c.pool_index(None), Ok(0), "default");
    // Same name in the file and on the command line.
    let e = parse_argv([
        "--config",
        f.path(),
        "-i",
        "s",
        "--pool",
        "a=10.0.9.0/24,iface=x",
    ])
    .unwrap_err();
    assert!(
        e.contains("for --pool a:") && e.contains(&format!("already used by {}:4", f.path())),
        "{e}"
    );
    assert!(!e.contains('\n'));
    // A file pool named default with -N.
    let (f, r) = with_file(
        "[pool.default]\nnetwork = \"10.0.1.0/24\"\niface = \"cb\"\n",
        "-i s -c c0 -N 10.0.0.0/24",
    );
    let e = r.unwrap_err();
    assert!(
        e.contains(&format!("{}:1 pool.default", f.path())) && e.contains("already used by -N"),
        "{e}"
    );
}

#[cfg(feature = "config-file")]
#[test]
fn file_errors_name_file_line_and_key() {
    let net = "[pool.lan]\nnetwork = \"10.0.0.0/24\"\n";
    // Syntax.
    let e = file_error(
        "server-iface = \"bat0\"\nblock = = 3\n",
        "-i s",
        2,
        "",
        ":2: ",
    );
    assert!(e.contains("'block = = 3'"), "{e}");
    file_error("[pool.lan\nnetwork = 1\n", "-i s", 1, "", ":1: ");
    file_error("a = \"unterminated\n", "-i s", 1, "", ":1: ");
    file_error("block = 1\nblock = 2\n", "-i s", 2, "", ":2: ");
    // Unknown keys.
    file_error("blok = 3\n", "-i s", 1, "blok", "unknown key 'blok'");
    file_error(
        &format!("{net}blok = 3\n"),
        "-i s -c c",
        3,
        "pool.lan.blok",
        "unknown key 'blok' in [pool.lan]",
    );
    file_error(
        "\"odd\\nkey\" = 3\n",
        "-i s",
        1,
        "\"odd\\nkey\"",
        "unknown key",
    );
    // Wrong types.
    file_error(
        "block = \"5\"\n",
        "-i s",
        1,
        "block",
        "expected an integer, found a string",
    );
    file_error(
        &format!("{net}spare = true\n"),
        "-i s -c c",
        3,
        "pool.lan.spare",
        "expected an integer",
    );
    file_error(
        "server-iface = 3\n",
        "",
        1,
        "server-iface",
        "expected a string",
    );
    file_error(
        "learning = \"no\"\n",
        "-i s",
        1,
        "learning",
        "true or false",
    );
    file_error(
        "options = \"6:4:1.2.3.4\"\n",
        "-i s",
        1,
        "options",
        "array of strings",
    );
    file_error(
        "options = [\n  \"6:4:1.2.3.4\",\n  6,\n]\n",
        "-i s",
        3,
        "options",
        "array of strings",
    );
    file_error("pool = 3\n", "-i s", 1, "pool", "tables [pool.NAME]");
    file_error(
        "[pool]\nlan = 3\n",
        "-i s",
        2,
        "pool.lan",
        "expected a table",
    );
    file_error(
        "[[pool]]\nnetwork = \"10.0.0.0/24\"\n",
        "-i s",
        1,
        "pool",
        "tables [pool.NAME]",
    );
    // Bad values point at the line of the value.
    file_error(
        &format!("{net}\nblock = 9\n"),
        "-i s -c c",
        4,
        "pool.lan.block",
        "wire format",
    );
    let e = file_error(
        "\n\n[pool.lan]\nnetwork = \"10.0.0.1/24\"\n",
        "-i s -c c",
        4,
        "pool.lan.network",
        "not a network",
    );
    assert!(e.starts_with("invalid value '10.0.0.1/24' for "), "{e}");
    file_error(
        &format!("{net}use = \"relay\"\n"),
        "-i s -c c",
        3,
        "pool.lan.use",
        "unknown use",
    );
    file_error(
        &format!("{net}spare = 1000\n"),
        "-i s -c c",
        3,
        "pool.lan.spare",
        "more spare",
    );
    file_error(
        &format!("{net}iface = \"a b\"\n"),
        "-i s",
        3,
        "pool.lan.iface",
        "interface name",
    );
    file_error(
        &format!("{net}location = \"\"\n"),
        "-i s -c c",
        3,
        "pool.lan.location",
        "location tag",
    );
    file_error(
        &format!("{net}options = [\"3:4:1.2.3.4\",\n  \"3:4:1.2.3\"]\n"),
        "-i s -c c",
        4,
        "pool.lan.options",
        "LEN is 4",
    );
    // -b is checked even when every pool has its own block.
    let (_f, r) = with_file(&format!("{net}block = 2\n"), "-i s -c c -b 9");
    assert!(r.unwrap_err().contains("for -b: block size 2^9"));
    file_error(
        "\n[pool.lan]\n",
        "-i s -c c",
        2,
        "pool.lan.network",
        "needs network",
    );
    file_error(
        "[pool.\"a b\"]\nnetwork = \"10.0.0.0/24\"\n",
        "-i s -c c",
        1,
        "pool.\"a b\"",
        "pool name",
    );
    // Node keys.
    file_error(
        &format!("block = 8\n{net}"),
        "-i s -c c",
        1,
        " block",
        "wire format",
    );
    file_error(
        &format!("spare = -1\n{net}"),
        "-i s -c c",
        1,
        " spare",
        "number",
    );
    file_error(
        &format!("tentative-timeout = 1\n{net}"),
        "-i s -c c",
        1,
        "tentative-timeout",
        "between 2",
    );
    file_error(
        &format!("block-timeout = 0x10000\n{net}"),
        "-i s -c c",
        1,
        "block-timeout",
        "16-bit",
    );
    file_error(
        &format!("needless-timeout = 1.5\n{net}"),
        "-i s -c c",
        1,
        "needless-timeout",
        "found a float",
    );
    file_error(
        &format!("fsync = \"yes\"\n{net}"),
        "-i s -c c",
        1,
        "fsync",
        "on or off",
    );
    file_error(
        &format!("node-id = \"x\"\n{net}"),
        "-i s -c c",
        1,
        "node-id",
        "16 hex",
    );
    file_error(
        &format!("options = [\"53:1:1\"]\n{net}"),
        "-i s -c c",
        1,
        "options",
        "protocol-managed",
    );
    file_error(
        &format!("client-iface = \"\"\n{net}"),
        "-i s",
        1,
        "client-iface",
        "interface name",
    );
    file_error(
        &format!("location = \"a b\"\n{net}"),
        "-i s -c c",
        1,
        "location",
        "tag",
    );
    // Against each other.
    let e = file_error(
        "[pool.a]\nnetwork = \"10.0.0.0/16\"\niface = \"x\"\n[pool.b]\nnetwork = \"10.0.3.0/24\"\niface = \"y\"\n",
        "-i s",
        5,
        "pool.b.network",
        "overlaps",
    );
    assert!(e.contains("10.0.0.0/16") && e.contains("'a'") && e.contains("10.0.3.0/24"));
    file_error(
        "[pool.a]\nnetwork = \"10.0.0.0/24\"\niface = \"x\"\n[pool.b]\nnetwork = \"10.0.3.0/24\"\niface = \"x\"\n",
        "-i s",
        6,
        "pool.b.iface",
        "not supported",
    );
}

#[test]
fn config_file_that_cannot_be_read() {
    let path = std::env::temp_dir().join(format!(
        "ddhcp-config-test-{}-missing.toml",
        std::process::id()
    ));
    let e = parse_argv(["-i", "s", "--config", path.to_str().unwrap()]).unwrap_err();
    assert!(
        e.contains("for --config")
            && e.contains(path.to_str().unwrap())
            && e.contains("No such file"),
        "{e}"
    );
    let dir = std::env::temp_dir();
    let e = parse_argv(["-i", "s", "--config", dir.to_str().unwrap()]).unwrap_err();
    assert!(e.contains("for --config") && e.contains("os error"), "{e}");
    assert!(!e.contains('\n'));
    // Not UTF-8.
    let f = TempFile::new("");
    std::fs::write(&f.0, b"block = 3\n\xff\n").unwrap();
    let e = parse_argv(["-i", "s", "--config", f.path()]).unwrap_err();
    assert!(
        e.contains(&format!("{}:2", f.path())) && e.contains("UTF-8"),
        "{e}"
    );
}

#[cfg(feature = "config-file")]
#[test]
fn file_alone_needs_no_n() {
    let (_f, r) = with_file("[pool.a]\nnetwork = \"10.0.0.0/24\"\n", "-i s -c c");
    let c = r.unwrap();
    assert_eq!(c.pools.len(), 1);
    assert_eq!(c.pools[0].name, "a");
    assert_eq!(c.pool_index(None), Ok(0));
    // An empty file and no -N: the -N error of today.
    let (_f, r) = with_file("", "-i s -c c");
    assert_eq!(
        r.unwrap_err(),
        "invalid value '' for -N: the managed range A.B.C.D/LEN is required"
    );
    // -i from the file; missing everywhere is today's error.
    let (_f, r) = with_file("", "-c c -N 10.0.0.0/24");
    assert!(r.unwrap_err().contains("for -i:"));
}

#[test]
fn pool_index_names_the_pools() {
    let c = parse_argv([
        "-i",
        "s",
        "-S",
        "--pool",
        "a=10.0.0.0/24",
        "--pool",
        "b=10.0.1.0/24",
    ])
    .unwrap();
    assert_eq!(c.pool_index(Some("b")), Ok(1));
    assert_eq!(c.pool_index(Some("a")), Ok(0));
    let e = c.pool_index(None).unwrap_err();
    assert!(e.contains("--pool") && e.contains("a, b"), "{e}");
    let e = c.pool_index(Some("c")).unwrap_err();
    assert!(e.contains("'c'") && e.contains("a, b"), "{e}");
    let c = parse_argv([
        "-i",
        "s",
        "-S",
        "--pool",
        "a=10.0.0.0/24",
        "-N",
        "10.0.1.0/24",
    ])
    .unwrap();
    assert_eq!(c.pools[0].name, "default");
    assert_eq!(c.pool_index(None), Ok(0));
}

#[test]
fn display_stays_one_line() {
    let e = ConfigError::new(String::from("a.toml:3 \"x\ny\""), "v\nw", "r\ns");
    let line = e.to_string();
    assert!(!line.contains('\n'), "{line}");
    assert_eq!(ConfigError::new("-b", "9", "why").flag, "-b");
}

mod never_panics {
    use super::*;
    use proptest::prelude::*;

    fn pool_text() -> impl Strategy<Value = String> {
        let item = prop_oneof![
            Just("block=".to_string()),
            Just("use=".to_string()),
            Just("iface=".to_string()),
            Just("spare=".to_string()),
            Just("location=".to_string()),
            Just("option=".to_string()),
            Just("hysteresis=".to_string()),
            Just("dhcp".to_string()),
            Just("local".to_string()),
            Just("10.0.0.0/24".to_string()),
            Just("3:4:1.2.3.4".to_string()),
            "[a-z0-9=,./:-]{0,8}",
            any::<String>(),
        ];
        prop::collection::vec(item, 0..8).prop_map(|v| v.concat())
    }

    #[cfg(feature = "config-file")]
    fn file_text() -> impl Strategy<Value = String> {
        let line = prop_oneof![
            Just("[pool.a]".to_string()),
            Just("[pool.b]".to_string()),
            Just("[[pool]]".to_string()),
            Just("network = \"10.0.0.0/24\"".to_string()),
            Just("network = \"10.0.0.0/16\"".to_string()),
            Just("block = 2".to_string()),
            Just("spare = 99999999999999999999".to_string()),
            Just("use = \"local\"".to_string()),
            Just("iface = \"x\"".to_string()),
            Just("options = [\"3:4:1.2.3.4\"]".to_string()),
            Just("server-iface = \"s\"".to_string()),
            Just("client-iface = \"c\"".to_string()),
            Just("learning = false".to_string()),
            Just("pool.c.network = \"10.9.0.0/24\"".to_string()),
            "[a-z\\-]{1,12} = [0-9\"\\[\\]a-z.]{0,10}",
            any::<String>(),
        ];
        prop::collection::vec(line, 0..12).prop_map(|v| v.join("\n"))
    }

    proptest! {
        #[test]
        fn any_pool_flag_is_a_config_or_one_line(p in pool_text()) {
            let args = Args::try_parse_from(["ddhcpd", "-i", "s", "-c", "c", "--pool", &p]);
            if let Ok(a) = args {
                match a.validate_with(None) {
                    Ok(c) => prop_assert!(!c.pools.is_empty()),
                    Err(e) => prop_assert!(!e.to_string().contains('\n')),
                }
            }
        }

        #[cfg(feature = "config-file")]
        #[test]
        fn any_file_is_a_config_or_one_line(text in file_text()) {
            match ConfigFile::parse("f.toml", &text) {
                Err(e) => {
                    let line = e.to_string();
                    prop_assert!(!line.contains('\n'), "{}", line);
                    prop_assert!(line.contains("f.toml"), "{}", line);
                }
                Ok(f) => {
                    let a = Args::try_parse_from(["ddhcpd", "-i", "s", "-c", "c"]).unwrap();
                    match a.validate_with(Some(&f)) {
                        Ok(c) => prop_assert_eq!(c.pools.len(), f.pool_names().count()),
                        Err(e) => prop_assert!(!e.to_string().contains('\n')),
                    }
                }
            }
        }
    }
}

#[cfg(not(feature = "config-file"))]
#[test]
fn without_the_feature_a_config_file_is_refused_in_one_line() {
    let f = TempFile::new("server-iface = \"bat0\"\n");
    let e = parse_argv(["-i", "s", "--config", f.path()]).unwrap_err();
    assert!(
        e.contains("--config") && e.contains("config-file feature") && !e.contains('\n'),
        "{e}"
    );
}

#[cfg(feature = "config-file")]
#[test]
fn local_keys_in_the_file() {
    let text = "server-iface = \"s\"\n[pool.h]\nnetwork = \"10.9.0.0/24\"\nuse = \"local\"\niface = \"eth0\"\nstandby = 2\nmax-standby = 4\ntest-target = \"10.9.0.254\"\nunmanaged = [\"10.9.0.240/28\"]\n";
    let (_f, r) = with_file(text, "");
    let c = r.unwrap();
    let l = c.pools[0].local.as_ref().unwrap();
    assert_eq!((l.standby, l.max_standby), (2, 4));
    assert_eq!(l.unmanaged.len(), 1);
    let bad = "server-iface = \"s\"\n[pool.h]\nnetwork = \"10.9.0.0/24\"\nuse = \"local\"\nunmanaged = [\"10.8.0.0/28\"]\n";
    file_error(bad, "", 5, "pool.h.unmanaged", "not inside");
}

#[test]
fn hysteresis_of_a_local_pool() {
    let c = parse("-i s --pool h=10.9.0.0/24,use=local,iface=eth0,hysteresis=45").unwrap();
    assert_eq!(c.pools[0].local.as_ref().unwrap().hysteresis, Some(45));
    let l = crate::daemon::setup::local_config(&c.pools[0]).unwrap();
    assert_eq!(l.timers.hysteresis, Duration::from_secs(45));
    // Without the key: the service's default.
    let c = parse("-i s --pool h=10.9.0.0/24,use=local,iface=eth0").unwrap();
    assert_eq!(c.pools[0].local.as_ref().unwrap().hysteresis, None);
    let l = crate::daemon::setup::local_config(&c.pools[0]).unwrap();
    assert_eq!(l.timers.hysteresis, Duration::from_secs(30));
    for (value, flag, why) in [
        (
            "h=10.9.0.0/24,use=local,hysteresis=0",
            "'0' for --pool h.hysteresis",
            "must be between 1 and 86400 seconds",
        ),
        (
            "h=10.9.0.0/24,use=local,hysteresis=86401",
            "'86401' for --pool h.hysteresis",
            "must be between 1 and 86400 seconds",
        ),
        (
            "h=10.9.0.0/24,use=local,hysteresis=30s",
            "'30s' for --pool h.hysteresis",
            "not a whole number of seconds",
        ),
        (
            "h=10.9.0.0/24,use=local,hysteresis=5,hysteresis=6",
            "for --pool h",
            "hysteresis is given twice",
        ),
        (
            "h=10.9.0.0/24,hysteresis=5",
            "'5' for --pool h.hysteresis",
            "use=local pools only",
        ),
        (
            "h=10.9.0.0/24,use=local,hysterisis=5",
            "for --pool h",
            "unknown key 'hysterisis' (keys: block, use, iface, spare, location, option, standby, min, max-standby, hysteresis, test-target, unmanaged, cooldown)",
        ),
    ] {
        let e = parse_argv(["-i", "s", "-c", "c", "--pool", value]).unwrap_err();
        assert!(e.contains(flag) && e.contains(why), "{value}: {e}");
        assert!(!e.contains('\n'), "{e}");
    }
}

#[cfg(feature = "config-file")]
#[test]
fn hysteresis_in_the_file() {
    let pool = "server-iface = \"s\"\n[pool.h]\nnetwork = \"10.9.0.0/24\"\nuse = \"local\"\n";
    let (_f, r) = with_file(&format!("{pool}hysteresis = 90\n"), "");
    let c = r.unwrap();
    assert_eq!(c.pools[0].local.as_ref().unwrap().hysteresis, Some(90));
    file_error(
        &format!("{pool}hysteresis = 0\n"),
        "",
        5,
        "pool.h.hysteresis",
        "must be between 1 and 86400 seconds",
    );
    file_error(
        &format!("{pool}hysteresis = \"90\"\n"),
        "",
        5,
        "pool.h.hysteresis",
        "expected an integer, found a string",
    );
    let dhcp = "server-iface = \"s\"\nclient-iface = \"c\"\n[pool.h]\nnetwork = \"10.9.0.0/24\"\nhysteresis = 5\n";
    file_error(dhcp, "", 5, "pool.h.hysteresis", "use=local pools only");
}

#[test]
fn api_flags() {
    let base = "-i s -c c -N 10.0.0.0/24";
    let good = TempFile::new("  0123456789abcdefXYZ \n");
    let short = TempFile::new("tooshort\n");
    let r = parse(&format!(
        "{base} --api 127.0.0.1:8080 --api-token {}",
        good.path()
    ));
    if cfg!(feature = "api") {
        let c = r.unwrap();
        let api = c.api.unwrap();
        assert_eq!(api.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(api.token_file, PathBuf::from(good.path()));
        assert_eq!(api.token.unwrap().as_bytes(), b"0123456789abcdefXYZ");
    } else {
        let e = r.unwrap_err();
        assert!(
            e.contains("--api:") && e.contains("without the api feature"),
            "{e}"
        );
    }
    assert!(parse(base).unwrap().api.is_none());
    let missing = format!("/nonexistent/ddhcp-token-{}", std::process::id());
    let mut cases = vec![
        (
            format!("{base} --api 127.0.0.1:8080"),
            "--api:",
            "needs --api-token",
        ),
        (
            format!("{base} --api-token {}", good.path()),
            "--api-token:",
            "without --api",
        ),
    ];
    if cfg!(feature = "api") {
        cases.extend([
            (
                format!("{base} --api localhost --api-token {}", good.path()),
                "--api:",
                "ADDR:PORT",
            ),
            (
                format!("{base} --api [::1]:80 --api-token {}", short.path()),
                "--api-token:",
                "at least 16",
            ),
            (
                format!("{base} --api [::1]:80 --api-token {missing}"),
                "--api-token:",
                "cannot open",
            ),
        ]);
    }
    for (args, flag, why) in cases {
        let e = parse(&args).unwrap_err();
        assert!(e.contains(flag) && e.contains(why), "{args}: {e}");
        assert!(!e.contains('\n'), "{e}");
    }
    // validate_with reads no file: the daemon reads the token at start-up.
    if cfg!(feature = "api") {
        let args = Args::try_parse_from(
            format!("ddhcpd {base} --api 127.0.0.1:1 --api-token {missing}").split_whitespace(),
        )
        .unwrap();
        let c = args.validate_with(None).unwrap();
        assert!(c.api.unwrap().token.is_none());
    }
}

#[cfg(all(feature = "config-file", feature = "api"))]
#[test]
fn api_keys_in_the_file() {
    let token = TempFile::new("0123456789abcdef0123\n");
    let (_f, r) = with_file(
        &format!(
            "server-iface = \"s\"\nclient-iface = \"c\"\napi = \"[::1]:8080\"\napi-token = \"{}\"\n[pool.a]\nnetwork = \"10.0.0.0/24\"\n",
            token.path()
        ),
        "",
    );
    let api = r.unwrap().api.unwrap();
    assert_eq!(api.addr, "[::1]:8080".parse().unwrap());
    assert!(api.token.is_some());
    file_error(
        "server-iface = \"s\"\nclient-iface = \"c\"\napi = \"127.0.0.1:1\"\n[pool.a]\nnetwork = \"10.0.0.0/24\"\n",
        "",
        3,
        "api",
        "needs --api-token",
    );
}

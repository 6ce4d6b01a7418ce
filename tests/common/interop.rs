//! Scaffolding of the interoperability tests (`tests/netns/interop.rs`): the C ddhcpd
//! binaries (from the environment or built from the source snapshots in
//! `../shared/interop`), mixed meshes of C and Rust nodes on one [`TestNet`], one block
//! table view for both kinds of node, the agreement check, and a one-shot DHCP REQUEST
//! sent from inside a client namespace.
//!
//! Declared by the test file itself (`#[path = "common/interop.rs"] mod interop;`), so that
//! only the interoperability tests compile it.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::daemon::{ddhcpctl, ddhcpd};
use crate::common::netns::{TestNet, output_timeout, wait_until};

// ------------------------------------------------------------ C binaries ---

/// A C ddhcpd snapshot (see `../shared/interop/README.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// `3eefc27`, the commit Gluon pins: node id = server MAC + `0000`.
    Gluon,
    /// `fdf26dc`, master: node id always zero; needs libnl-3.
    Master,
}

impl Flavor {
    pub fn commit(self) -> &'static str {
        match self {
            Flavor::Gluon => "3eefc27",
            Flavor::Master => "fdf26dc",
        }
    }
    /// The variable that names the `ddhcpd` binary of this snapshot (`ddhcpdctl` beside it).
    pub fn env_var(self) -> &'static str {
        match self {
            Flavor::Gluon => "DDHCP_C_DDHCPD",
            Flavor::Master => "DDHCP_C_DDHCPD_MASTER",
        }
    }
    fn cflags(self) -> &'static str {
        match self {
            Flavor::Gluon => "-fcommon",
            Flavor::Master => "-fcommon -I/usr/include/libnl3",
        }
    }
}

/// A C `ddhcpd` and the `ddhcpdctl` beside it.
#[derive(Clone, Debug)]
pub struct CBin {
    pub flavor: Flavor,
    pub ddhcpd: PathBuf,
    pub ddhcpdctl: PathBuf,
}

pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// The cargo target directory of the running test (`target/<profile>/deps/<test>` ->
/// `target`), or `CARGO_TARGET_DIR`.
pub fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        let d = PathBuf::from(d);
        return if d.is_absolute() {
            d
        } else {
            Path::new(env!("CARGO_MANIFEST_DIR")).join(d)
        };
    }
    let mut dir = crate::common::netns::profile_dir();
    dir.pop();
    dir
}

/// Where the source snapshots live: `../shared/interop` next to the repository.
pub fn snapshot_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/interop")
}

fn from_env(f: Flavor, value: &std::ffi::OsStr) -> Result<CBin, String> {
    let ddhcpd = PathBuf::from(value);
    let ctl = ddhcpd.with_file_name("ddhcpdctl");
    for p in [&ddhcpd, &ctl] {
        if !p.is_file() {
            return Err(format!(
                "{}={} is set, but {} does not exist",
                f.env_var(),
                ddhcpd.display(),
                p.display()
            ));
        }
    }
    Ok(CBin {
        flavor: f,
        ddhcpd,
        ddhcpdctl: ctl,
    })
}

fn run_ok(cmd: &mut Command, what: &str) -> Result<(), String> {
    let out = output_timeout(cmd, Duration::from_secs(300))?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(15).collect();
        Err(format!(
            "{what} failed ({}): {}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ))
    }
}

/// Builds snapshot `f` from `../shared/interop` into `target/interop/<commit>/` (reused if
/// already there and newer than the tarball).
fn build(f: Flavor) -> Result<CBin, String> {
    let tarball = snapshot_dir().join(format!("ddhcpd-{}.tar.gz", f.commit()));
    if !tarball.is_file() {
        return Err(format!("{} not found", tarball.display()));
    }
    let base = target_dir().join("interop");
    let dest = base.join(f.commit());
    let bin = CBin {
        flavor: f,
        ddhcpd: dest.join("ddhcpd"),
        ddhcpdctl: dest.join("ddhcpdctl"),
    };
    let tar_time = fs::metadata(&tarball).and_then(|m| m.modified()).ok();
    let fresh = |p: &Path| {
        fs::metadata(p)
            .and_then(|m| m.modified())
            .is_ok_and(|t| tar_time.is_none_or(|tt| t >= tt))
    };
    if fresh(&bin.ddhcpd) && fresh(&bin.ddhcpdctl) {
        return Ok(bin);
    }
    for (tool, arg) in [
        ("tar", "--version"),
        ("make", "--version"),
        ("gcc", "--version"),
    ] {
        if Command::new(tool).arg(arg).output().is_err() {
            return Err(format!("{tool} not found (needed to build the C ddhcpd)"));
        }
    }
    if f == Flavor::Master {
        let ok = Command::new("pkg-config")
            .args(["--exists", "libnl-3.0"])
            .status()
            .is_ok_and(|s| s.success());
        if !ok || !Path::new("/usr/include/libnl3/netlink/netlink.h").is_file() {
            return Err(
                "libnl-3 headers or pkg-config missing (apt-get install libnl-3-dev pkg-config)"
                    .into(),
            );
        }
    }
    let work = base.join(format!("build-{}-{}", f.commit(), std::process::id()));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).map_err(|e| format!("cannot create {}: {e}", work.display()))?;
    let result = (|| {
        run_ok(
            Command::new("tar")
                .arg("-xzf")
                .arg(&tarball)
                .arg("-C")
                .arg(&work),
            "tar",
        )?;
        let src = work.join(format!("ddhcpd-{}", f.commit()));
        // CFLAGS in the environment: the Makefile appends to it (`CFLAGS+=`).
        run_ok(
            Command::new("make")
                .current_dir(&src)
                .env("CFLAGS", f.cflags())
                // version.h comes from `git rev-list HEAD`: not this repository's HEAD.
                .env("GIT_DIR", work.join("no-git"))
                .env_remove("MAKEFLAGS")
                .env_remove("MFLAGS"),
            &format!("make in {}", src.display()),
        )?;
        let tmp = base.join(format!("{}.tmp-{}", f.commit(), std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).map_err(|e| e.to_string())?;
        for b in ["ddhcpd", "ddhcpdctl"] {
            fs::copy(src.join(b), tmp.join(b)).map_err(|e| format!("copy {b}: {e}"))?;
        }
        let _ = fs::remove_dir_all(&dest);
        if fs::rename(&tmp, &dest).is_err() {
            // Another test process built it at the same moment: use theirs.
            let _ = fs::remove_dir_all(&tmp);
        }
        Ok::<(), String>(())
    })();
    let _ = fs::remove_dir_all(&work);
    result?;
    if bin.ddhcpd.is_file() && bin.ddhcpdctl.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "build of {} left no binaries in {}",
            f.commit(),
            dest.display()
        ))
    }
}

/// The binaries of snapshot `f`: from its environment variable, else built (once per test
/// process) from `../shared/interop` into `target/interop/`.
pub fn c_binaries(f: Flavor) -> Result<CBin, String> {
    static GLUON: OnceLock<Result<CBin, String>> = OnceLock::new();
    static MASTER: OnceLock<Result<CBin, String>> = OnceLock::new();
    let cell = match f {
        Flavor::Gluon => &GLUON,
        Flavor::Master => &MASTER,
    };
    cell.get_or_init(|| {
        if let Some(v) = std::env::var_os(f.env_var()).filter(|v| !v.is_empty()) {
            return from_env(f, &v);
        }
        let t = Instant::now();
        let r = build(f);
        if let Ok(b) = &r {
            eprintln!(
                "C ddhcpd {}: {} ({} unset; built or reused in {:?})",
                f.commit(),
                b.ddhcpd.display(),
                f.env_var(),
                t.elapsed()
            );
        }
        r
    })
    .clone()
}

/// Call at the start of every interoperability test, after `require_netns`: the binaries of
/// every flavour in `flavors`, or `None` after a loud `SKIPPED` line. Under `CI=true` a
/// missing binary fails the test instead; a variable that is set but names no binary fails
/// it everywhere.
pub fn require_c(test: &str, flavors: &[Flavor]) -> Option<Vec<CBin>> {
    let mut out = Vec::new();
    for &f in flavors {
        match c_binaries(f) {
            Ok(b) => out.push(b),
            Err(reason) => {
                let set = std::env::var_os(f.env_var()).is_some_and(|v| !v.is_empty());
                assert!(
                    !ci() && !set,
                    "interoperability test {test} cannot run: C ddhcpd {}: {reason}",
                    f.commit()
                );
                eprintln!("SKIPPED {test}: no C ddhcpd {} ({reason})", f.commit());
                eprintln!(
                    "        (set {} or make ../shared/interop buildable; in CI this fails)",
                    f.env_var()
                );
                return None;
            }
        }
    }
    Some(out)
}

// ------------------------------------------------------------ the mesh ---

/// What runs on a daemon host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Rust,
    C(Flavor),
}

impl Kind {
    pub const GLUON: Kind = Kind::C(Flavor::Gluon);
    pub const MASTER: Kind = Kind::C(Flavor::Master);
    pub fn is_c(self) -> bool {
        matches!(self, Kind::C(_))
    }
    pub fn label(self) -> &'static str {
        match self {
            Kind::Rust => "rust",
            Kind::C(Flavor::Gluon) => "c-3eefc27",
            Kind::C(Flavor::Master) => "c-master",
        }
    }
}

/// The settings every node of a mesh shares: the swarm (range, block size) must be equal
/// for the nodes to talk at all; the timers are kept equal too.
#[derive(Clone, Debug)]
pub struct Swarm {
    pub range: String,
    pub pow: u32,
    pub tentative: u32,
    pub ttl: u32,
    pub spare: u32,
}

impl Default for Swarm {
    /// The test range of the other namespace tests: 64 blocks of 4, `-t 2 -B 10 -s 4`.
    fn default() -> Self {
        Swarm {
            range: "10.0.128.0/24".into(),
            pow: 2,
            tentative: 2,
            ttl: 10,
            spare: 4,
        }
    }
}

/// Block states, as both kinds of node report them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum St {
    Free,
    Tentative,
    Claimed,
    Claiming,
    Ours,
    Other(String),
}

/// One node's block table: its node id and, per block index, state and owner id
/// (upper-case hex, empty if none).
#[derive(Clone, Debug)]
pub struct View {
    pub node_id: String,
    pub blocks: BTreeMap<u64, (St, String)>,
}

impl View {
    pub fn owned(&self) -> BTreeSet<u64> {
        self.blocks
            .iter()
            .filter(|(_, (s, _))| *s == St::Ours)
            .map(|(&b, _)| b)
            .collect()
    }
}

/// Parses `ddhcpdctl -b` (reference §5.4): a `node id\tHEX` line, a header line
/// `index\tstate\towner…`, then `index\tstate\towner\tclaim\tleases\ttimeout` rows
/// (only blocks whose timeout lies ahead; every block during the first B seconds).
pub fn parse_c_table(text: &str) -> Result<View, String> {
    let mut node_id = None;
    let mut blocks = BTreeMap::new();
    let mut rows = false;
    for line in text.lines() {
        if let Some(id) = line.strip_prefix("node id\t") {
            node_id = Some(id.trim().to_uppercase());
            continue;
        }
        if line.starts_with("index\tstate") {
            rows = true;
            continue;
        }
        if !rows || line.trim().is_empty() || line.starts_with("blocks in use") {
            continue;
        }
        let f: Vec<&str> = line.split('\t').filter(|s| !s.is_empty()).collect();
        if f.len() != 6 {
            return Err(format!("bad ddhcpdctl -b row {line:?}"));
        }
        let idx: u64 = f[0].parse().map_err(|_| format!("bad index in {line:?}"))?;
        let st = match f[1] {
            "0" => St::Free,
            "1" => St::Tentative,
            "2" => St::Claimed,
            "3" => St::Claiming,
            "4" => St::Ours,
            s => St::Other(s.to_string()),
        };
        let owner = if f[2].bytes().all(|b| b == b'0') && st == St::Free {
            String::new()
        } else {
            f[2].to_uppercase()
        };
        blocks.insert(idx, (st, owner));
    }
    let node_id =
        node_id.ok_or_else(|| format!("no node id line in ddhcpdctl -b output:\n{text}"))?;
    if !rows {
        return Err(format!("no block table in ddhcpdctl -b output:\n{text}"));
    }
    Ok(View { node_id, blocks })
}

/// Parses `ddhcpctl --json blocks`.
pub fn parse_rust_table(v: &Value) -> Result<View, String> {
    let node_id = v["node_id"]
        .as_str()
        .ok_or_else(|| format!("no node_id in {v}"))?
        .to_uppercase();
    let mut blocks = BTreeMap::new();
    for b in v["blocks"]
        .as_array()
        .ok_or_else(|| format!("no blocks in {v}"))?
    {
        let idx = b["index"]
            .as_u64()
            .ok_or_else(|| format!("no index in {b}"))?;
        let st = match b["state"].as_str().unwrap_or_default() {
            "free" => St::Free,
            "tentative" => St::Tentative,
            "claimed" => St::Claimed,
            "claiming" => St::Claiming,
            "ours" => St::Ours,
            s => St::Other(s.to_string()),
        };
        let owner = b["owner"].as_str().unwrap_or_default().to_uppercase();
        blocks.insert(idx, (st, owner));
    }
    Ok(View { node_id, blocks })
}

/// Owned blocks per node index, as agreed by every node.
pub type Owners = BTreeMap<usize, BTreeSet<u64>>;

/// Our `ddhcpd` and `ddhcpctl`: this package's, or those in `DDHCP_INTEROP_RUST_BIN_DIR`
/// (e.g. another checkout's `target/debug`, to see a defect the tests catch in an older
/// build).
pub fn rust_binaries() -> (PathBuf, PathBuf) {
    match std::env::var_os("DDHCP_INTEROP_RUST_BIN_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            let (d, c) = (dir.join("ddhcpd"), dir.join("ddhcpctl"));
            assert!(
                d.is_file() && c.is_file(),
                "DDHCP_INTEROP_RUST_BIN_DIR={}: no ddhcpd and ddhcpctl there",
                dir.display()
            );
            (d, c)
        }
        None => (ddhcpd().to_path_buf(), ddhcpctl().to_path_buf()),
    }
}

/// A [`TestNet`] whose daemon host i runs `kinds[i]`, all with one [`Swarm`].
pub struct Mesh {
    pub net: TestNet,
    pub kinds: Vec<Kind>,
    pub swarm: Swarm,
    pub gluon: Option<CBin>,
    pub master: Option<CBin>,
    /// `--state-dir` of each Rust node (default [`TestNet::state_dir`]).
    pub state_dirs: Vec<PathBuf>,
}

impl Mesh {
    /// A net of `kinds.len()` daemon hosts with `per_node` client hosts each. `bins` must
    /// hold the binaries of every C flavour in `kinds`.
    pub fn new(kinds: &[Kind], per_node: usize, swarm: Swarm, bins: &[CBin]) -> Mesh {
        let (d, c) = rust_binaries();
        let net = TestNet::with_clients(kinds.len(), per_node, &d, &c);
        let find = |f| bins.iter().find(|b| b.flavor == f).cloned();
        let m = Mesh {
            state_dirs: (0..kinds.len()).map(|i| net.state_dir(i)).collect(),
            net,
            kinds: kinds.to_vec(),
            swarm,
            gluon: find(Flavor::Gluon),
            master: find(Flavor::Master),
        };
        for k in kinds {
            if let Kind::C(f) = k {
                assert!(m.c_bin(*f).is_some(), "no binaries given for {k:?}");
            }
        }
        m
    }

    pub fn n(&self) -> usize {
        self.kinds.len()
    }
    pub fn all(&self) -> Vec<usize> {
        (0..self.n()).collect()
    }
    pub fn of_kind(&self, pred: impl Fn(Kind) -> bool) -> Vec<usize> {
        (0..self.n()).filter(|&i| pred(self.kinds[i])).collect()
    }
    pub fn c_bin(&self, f: Flavor) -> Option<&CBin> {
        match f {
            Flavor::Gluon => self.gluon.as_ref(),
            Flavor::Master => self.master.as_ref(),
        }
    }
    /// `label#i`, e.g. `c-3eefc27#0`.
    pub fn name(&self, i: usize) -> String {
        format!("{}#{i}", self.kinds[i].label())
    }

    /// The command line of node i (without the program).
    pub fn args(&self, i: usize, learning: bool, extra: &[&str]) -> Vec<String> {
        let s = &self.swarm;
        let mut a: Vec<String> = vec![
            "-i".into(),
            "server0".into(),
            "-c".into(),
            "client0".into(),
            "-N".into(),
            s.range.clone(),
            "-b".into(),
            s.pow.to_string(),
            "-t".into(),
            s.tentative.to_string(),
            "-B".into(),
            s.ttl.to_string(),
            "-s".into(),
            s.spare.to_string(),
            "-C".into(),
            self.net.sock(i).to_str().unwrap().into(),
            // A /16 mask, so that 10.0.0.1 (client0 of every node) is on-link.
            "-o".into(),
            "1:4:255.255.0.0".into(),
        ];
        if !learning {
            a.push("-L".into());
        }
        match self.kinds[i] {
            Kind::Rust => {
                a.push("--state-dir".into());
                a.push(self.state_dirs[i].to_str().unwrap().into());
                a.push("-vv".into());
            }
            Kind::C(_) => {
                // C ddhcpd: foreground; the server identifier the Rust nodes use (its
                // default would be 10.0.128.1, nobody's address, which breaks unicast
                // renewals); `-v` is INFO. Never more at start-up: at DEBUG (`-vv`) the
                // `endlearning` hook's DEBUG line reads a missing `%s` argument and the
                // daemon dies with SIGSEGV (hook.c: hook; issue #74).
                a.push("-D".into());
                a.push("-o".into());
                a.push("54:4:10.0.0.1".into());
                a.push("-v".into());
            }
        }
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    }

    /// Starts node i (learning phase if `learning`, else `-L`) with `extra` flags.
    pub fn start(&mut self, i: usize, learning: bool, extra: &[&str]) {
        let args = self.args(i, learning, extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        match self.kinds[i] {
            Kind::Rust => self.net.start_daemon(i, &args),
            Kind::C(f) => {
                let prog = self.c_bin(f).unwrap().ddhcpd.clone();
                self.net.start_program(i, &prog, &[], &args);
            }
        }
    }

    /// Starts every node in `nodes` as fast as possible (each start only forks the
    /// harness script; the daemons come up in parallel).
    pub fn start_many(&mut self, nodes: &[usize], learning: bool) {
        for &i in nodes {
            self.start(i, learning, &[]);
        }
    }

    /// Gives `server0` of daemon host i the MAC `mac`, and with it the node id a C
    /// 3eefc27 node (MAC + `0000`) or a fresh Rust node (MAC + 2 random bytes) takes. Only
    /// before the node's first start.
    pub fn set_server_mac(&self, i: usize, mac: &str) {
        let out = self
            .net
            .exec_daemon_ns(i, &["ip", "link", "set", "server0", "address", mac]);
        assert!(
            out.status.success(),
            "cannot set server0's MAC on host {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `kill -9` node i and reaps it.
    pub fn kill9(&mut self, i: usize) {
        self.net.kill9(i);
    }

    /// `ddhcpdctl -C <sock i> ARGS…` of a C node.
    pub fn c_ctl(&self, i: usize, args: &[&str]) -> Result<String, String> {
        let Kind::C(f) = self.kinds[i] else {
            panic!("{} is not a C node", self.name(i));
        };
        let ctl = &self.c_bin(f).unwrap().ddhcpdctl;
        let out = output_timeout(
            Command::new(ctl).arg("-C").arg(self.net.sock(i)).args(args),
            Duration::from_secs(10),
        )?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        // ddhcpdctl exits 0 even when it cannot connect; it says so on stderr.
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() && !stderr.contains("can't connect") {
            Ok(stdout)
        } else {
            Err(format!(
                "ddhcpdctl {} on {} failed ({}): {stderr}{stdout}",
                args.join(" "),
                self.name(i),
                out.status
            ))
        }
    }

    /// Sets a C node's runtime log level (`ddhcpdctl -v`; 4 = DEBUG). Safe after start-up
    /// on a node started with `-L` (see [`args`](Self::args) for why not before).
    pub fn c_log_level(&self, i: usize, level: u8) {
        self.c_ctl(i, &["-v", &level.to_string()])
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Node i's block table.
    pub fn view(&self, i: usize) -> Result<View, String> {
        match self.kinds[i] {
            Kind::Rust => parse_rust_table(&self.net.ctl_json(i, &["blocks"])?),
            Kind::C(_) => parse_c_table(&self.c_ctl(i, &["-b"])?),
        }
    }

    /// Waits up to `timeout` for node i to answer on its control socket; its view.
    pub fn wait_view(&self, i: usize, timeout: Duration) -> Result<View, String> {
        let mut last = Err("not asked".to_string());
        wait_until(timeout, || {
            last = self.view(i);
            last.is_ok()
        });
        last
    }

    /// Waits until node i owns at least one block; its owned set.
    pub fn wait_owns(&mut self, i: usize, timeout: Duration) -> BTreeSet<u64> {
        let mut last = Err("not asked".to_string());
        let ok = wait_until(timeout, || {
            last = self.view(i);
            last.as_ref().is_ok_and(|v| !v.owned().is_empty())
        });
        if !ok {
            let running = self.net.daemon_running(i);
            self.net.dump_logs();
            panic!(
                "{} owns no block after {timeout:?} (running: {running}): {last:?}",
                self.name(i)
            );
        }
        last.unwrap().owned()
    }

    /// The agreement check on `nodes` (all running): every node owns at least one block;
    /// no block is owned by two nodes; every node lists every other node's blocks as
    /// claimed by that node's id; no node lists a block as claimed by a node of `nodes`
    /// that does not own it. Node ids must be distinct.
    pub fn agreed(&self, nodes: &[usize]) -> Result<Owners, String> {
        let mut views = BTreeMap::new();
        for &i in nodes {
            views.insert(
                i,
                self.view(i).map_err(|e| format!("{}: {e}", self.name(i)))?,
            );
        }
        agreement(&views, &|i| self.name(i))
    }

    /// Waits up to `timeout` for [`agreed`](Self::agreed), then checks that it still holds,
    /// with the same owners, `settle` later (after at least one refresh round). Panics with
    /// the last disagreement and the logs. Returns the owners and the time to agreement.
    pub fn wait_agreed(
        &mut self,
        nodes: &[usize],
        timeout: Duration,
        settle: Duration,
    ) -> (Owners, Duration) {
        let t0 = Instant::now();
        let mut last = Err(String::new());
        let ok = wait_until(timeout, || {
            last = self.agreed(nodes);
            last.is_ok()
        });
        let took = t0.elapsed();
        if !ok {
            self.dump_views(nodes);
            self.net.dump_logs();
            panic!("no agreement among {nodes:?} after {timeout:?}: {last:?}");
        }
        let owners = last.unwrap();
        thread::sleep(settle);
        match self.agreed(nodes) {
            Ok(again) if again == owners => {}
            other => {
                self.dump_views(nodes);
                self.net.dump_logs();
                panic!(
                    "agreement among {nodes:?} did not last {settle:?}: first {}, then {other:?}",
                    self.show(&owners)
                );
            }
        }
        for &i in nodes {
            assert!(self.net.daemon_running(i), "{} exited", self.name(i));
        }
        (owners, took)
    }

    /// `name: blocks` per node, for messages.
    pub fn show(&self, owners: &Owners) -> String {
        owners
            .iter()
            .map(|(&i, b)| format!("{}: {b:?}", self.name(i)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Prints every node's non-free table rows to stderr.
    pub fn dump_views(&self, nodes: &[usize]) {
        for &i in nodes {
            match self.view(i) {
                Ok(v) => {
                    let rows: Vec<String> = v
                        .blocks
                        .iter()
                        .filter(|(_, (s, _))| *s != St::Free)
                        .map(|(b, (s, o))| format!("{b}:{s:?}:{o}"))
                        .collect();
                    eprintln!(
                        "view of {} (id {}): {}",
                        self.name(i),
                        v.node_id,
                        rows.join(" ")
                    );
                }
                Err(e) => eprintln!("view of {}: {e}", self.name(i)),
            }
        }
    }
}

/// The agreement check of [`Mesh::agreed`] on given views.
pub fn agreement(
    views: &BTreeMap<usize, View>,
    name: &dyn Fn(usize) -> String,
) -> Result<Owners, String> {
    let mut ids: BTreeMap<&str, usize> = BTreeMap::new();
    for (&i, v) in views {
        if let Some(j) = ids.insert(v.node_id.as_str(), i) {
            return Err(format!(
                "{} and {} have the same node id {}",
                name(j),
                name(i),
                v.node_id
            ));
        }
    }
    let mut owners: Owners = BTreeMap::new();
    let mut owner_of: BTreeMap<u64, usize> = BTreeMap::new();
    for (&i, v) in views {
        let owned = v.owned();
        if owned.is_empty() {
            return Err(format!("{} owns nothing", name(i)));
        }
        for &b in &owned {
            if let Some(j) = owner_of.insert(b, i) {
                return Err(format!("block {b} owned by {} and {}", name(j), name(i)));
            }
        }
        owners.insert(i, owned);
    }
    for (&j, v) in views {
        for (&b, &i) in &owner_of {
            if i == j {
                continue;
            }
            let want = &views[&i].node_id;
            match v.blocks.get(&b) {
                Some((St::Claimed, o)) if o == want => {}
                other => {
                    return Err(format!(
                        "{} sees block {b} as {other:?}; its owner is {} ({want})",
                        name(j),
                        name(i)
                    ));
                }
            }
        }
        for (&b, (st, o)) in &v.blocks {
            if *st != St::Claimed {
                continue;
            }
            if let Some(&i) = ids.get(o.as_str())
                && owner_of.get(&b) != Some(&i)
            {
                return Err(format!(
                    "{} sees block {b} claimed by {} ({o}), which does not own it",
                    name(j),
                    name(i)
                ));
            }
        }
    }
    Ok(owners)
}

/// The MAC address of `server0` on daemon host i, upper-case hex without colons.
pub fn server_mac_hex(net: &TestNet, i: usize) -> String {
    let out = net.exec_daemon_ns(i, &["cat", "/sys/class/net/server0/address"]);
    assert!(
        out.status.success(),
        "cannot read server0's MAC on host {i}"
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .replace(':', "")
        .to_uppercase()
}

// ------------------------------------------------------------ DHCP probe ---

/// What a DHCP server answered to one REQUEST.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Ack(Ipv4Addr),
    Nak,
    /// Nothing within the time allowed.
    Silence,
    Other(String),
}

/// A MAC address as 6 bytes from `aa:bb:cc:dd:ee:ff`.
pub fn mac_bytes(mac: &str) -> [u8; 6] {
    let v: Vec<u8> = mac
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).expect("hex MAC"))
        .collect();
    v.try_into().expect("6-byte MAC")
}

/// Sends one broadcast DHCPREQUEST with option 50 = `requested` and chaddr `mac` (an
/// INIT-REBOOT: no ciaddr, no server identifier) out of `eth0` of network namespace `ns`,
/// and waits up to `wait` for the answer with its xid and chaddr. The socket is opened on
/// a thread of its own that enters `ns` (`setns`); the test process stays where it is.
/// No DHCP client may run in `ns` (port 68).
pub fn dhcp_init_reboot(
    ns: &str,
    mac: [u8; 6],
    requested: Ipv4Addr,
    wait: Duration,
) -> Result<Answer, String> {
    use dhcproto::Encodable;
    use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, OptionCode};

    static SEQ: AtomicU32 = AtomicU32::new(1);
    let xid = (std::process::id() << 16) ^ SEQ.fetch_add(1, Ordering::Relaxed) ^ 0x5a5a_0000;
    let ns = ns.to_string();
    thread::spawn(move || -> Result<Answer, String> {
        let nsf = fs::File::open(format!("/run/netns/{ns}"))
            .map_err(|e| format!("open netns {ns}: {e}"))?;
        if unsafe { libc::setns(nsf.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!("setns {ns}: {}", std::io::Error::last_os_error()));
        }
        let s = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )
        .map_err(|e| e.to_string())?;
        s.set_reuse_address(true).map_err(|e| e.to_string())?;
        s.set_broadcast(true).map_err(|e| e.to_string())?;
        s.bind_device(Some(b"eth0"))
            .map_err(|e| format!("SO_BINDTODEVICE eth0: {e}"))?;
        s.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68).into())
            .map_err(|e| format!("bind :68 in {ns}: {e}"))?;
        let sock: UdpSocket = s.into();
        let mut msg = Message::new_with_id(
            xid,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &mac,
        );
        msg.set_flags(Flags::default().set_broadcast());
        let o = msg.opts_mut();
        o.insert(DhcpOption::MessageType(MessageType::Request));
        o.insert(DhcpOption::RequestedIpAddress(requested));
        o.insert(DhcpOption::ParameterRequestList(vec![
            OptionCode::SubnetMask,
            OptionCode::Router,
        ]));
        let bytes = msg.to_vec().map_err(|e| e.to_string())?;
        sock.send_to(&bytes, SocketAddrV4::new(Ipv4Addr::BROADCAST, 67))
            .map_err(|e| format!("send in {ns}: {e}"))?;
        let end = Instant::now() + wait;
        let mut buf = [0u8; 1500];
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(Answer::Silence);
            }
            sock.set_read_timeout(Some(left))
                .map_err(|e| e.to_string())?;
            let n = match sock.recv(&mut buf) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(Answer::Silence);
                }
                Err(e) => return Err(format!("recv in {ns}: {e}")),
            };
            // Parsed by hand: C replies may repeat options 51 and 54 and lack padding.
            let Some(reply) = parse_reply(&buf[..n]) else {
                continue;
            };
            if reply.xid != xid || reply.chaddr != mac {
                continue;
            }
            return Ok(match reply.msg_type {
                Some(5) => Answer::Ack(reply.yiaddr),
                Some(6) => Answer::Nak,
                Some(3) => continue, // a REQUEST (ours or another client's)
                other => Answer::Other(format!("message type {other:?}")),
            });
        }
    })
    .join()
    .map_err(|_| "probe thread panicked".to_string())?
}

/// The fields of a DHCP reply the probe looks at.
struct Reply {
    xid: u32,
    chaddr: [u8; 6],
    yiaddr: Ipv4Addr,
    msg_type: Option<u8>,
}

/// BOOTP header fields and option 53 of `b`, if it is a BOOTREPLY with the magic cookie.
fn parse_reply(b: &[u8]) -> Option<Reply> {
    if b.len() < 240 || b[0] != 2 || b[236..240] != [99, 130, 83, 99] {
        return None;
    }
    let mut msg_type = None;
    let mut i = 240;
    while i < b.len() {
        match b[i] {
            0 => i += 1,
            255 => break,
            code => {
                let len = usize::from(*b.get(i + 1)?);
                let val = b.get(i + 2..i + 2 + len)?;
                if code == 53 && len == 1 {
                    msg_type = Some(val[0]);
                }
                i += 2 + len;
            }
        }
    }
    Some(Reply {
        xid: u32::from_be_bytes(b[4..8].try_into().ok()?),
        chaddr: b[28..34].try_into().ok()?,
        yiaddr: Ipv4Addr::new(b[16], b[17], b[18], b[19]),
        msg_type,
    })
}

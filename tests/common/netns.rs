//! Helpers for integration tests that run ddhcpd in the `network-test` namespace
//! harness (`network-test/network-test`).
//!
//! A [`TestNet`] owns one private test network (its own namespaces, bridges and
//! veths, all named after a per-instance prefix) and removes it again on drop,
//! also when the test panics.  Several `TestNet`s may exist at once, in the same
//! or in different test processes.
//!
//! ```ignore
//! mod common;
//! use common::netns::{require_netns, TestNet};
//! use std::path::Path;
//!
//! #[test]
//! fn three_nodes_claim_blocks() {
//!     if !require_netns("three_nodes_claim_blocks") {
//!         return;
//!     }
//!     let mut net = TestNet::new(
//!         3,
//!         Path::new(env!("CARGO_BIN_EXE_ddhcpd")),
//!         Path::new(env!("CARGO_BIN_EXE_ddhcpctl")),
//!     );
//!     for i in 0..3 {
//!         let sock = net.sock(i);
//!         net.start_daemon(i, &["-i", "server0", "-c", "client0", "-N", "10.0.128.0/24",
//!                               "-L", "-C", sock.to_str().unwrap()]);
//!     }
//!     let status = net.wait_ctl_json(0, &["status"], std::time::Duration::from_secs(5)).unwrap();
//!     assert_eq!(status["learning"], false);
//! }
//! ```
#![allow(dead_code)]

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// How long a single helper command (ddhcpctl, network-test) may take.
const CMD_TIMEOUT: Duration = Duration::from_secs(30);

/// Path of the `network-test` script of this crate.
pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("network-test/network-test")
}

/// Path of a binary of this package.
///
/// Prefer passing `Path::new(env!("CARGO_BIN_EXE_<name>"))` from the test
/// itself.  This function honours a run-time `CARGO_BIN_EXE_<name>` variable and
/// otherwise derives the path from the running test executable
/// (`target/<profile>/deps/<test>-<hash>` -> `target/<profile>/<name>`).
pub fn bin(name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(format!("CARGO_BIN_EXE_{name}")) {
        return PathBuf::from(p);
    }
    profile_dir().join(name)
}

/// `target/<profile>` of the running test executable (`target/<profile>/deps/<test>-<hash>`).
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe
        .parent()
        .expect("test executable has a directory")
        .to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    dir
}

/// Checks that namespace tests can run here: root, `ip` present, a network
/// namespace can be created, the script exists.  The result is cached.
pub fn prerequisites() -> Result<(), String> {
    static RESULT: OnceLock<Result<(), String>> = OnceLock::new();
    RESULT.get_or_init(check_prerequisites).clone()
}

fn check_prerequisites() -> Result<(), String> {
    let status = fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("cannot read /proc/self/status: {e}"))?;
    // "Uid:\treal\teffective\tsaved\tfs"
    let euid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .ok_or("no Uid line in /proc/self/status")?;
    if euid != "0" {
        return Err(format!("needs root (effective uid is {euid})"));
    }
    let script = script();
    if !script.is_file() {
        return Err(format!("{} not found", script.display()));
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => return Err(format!("`ip -V` failed: {}", o.status)),
        Err(e) => return Err(format!("`ip` (iproute2) not usable: {e}")),
    }
    match Command::new("bash").arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => return Err("bash not found".into()),
    }
    let name = format!("ddhcpchk{}", std::process::id());
    let add = Command::new("ip")
        .args(["netns", "add", &name])
        .output()
        .map_err(|e| format!("cannot run `ip netns add`: {e}"))?;
    if !add.status.success() {
        return Err(format!(
            "cannot create a network namespace: {}",
            String::from_utf8_lossy(&add.stderr).trim()
        ));
    }
    let _ = Command::new("ip").args(["netns", "del", &name]).output();
    Ok(())
}

/// Call at the start of every namespace test: `if !require_netns("name") { return; }`.
///
/// If the prerequisites are missing, a test never skips silently in CI (env
/// `CI` is `true` or `1`): it panics with the reason.  Elsewhere it prints a
/// loud `SKIPPED` line and returns false.
pub fn require_netns(test: &str) -> bool {
    match prerequisites() {
        Ok(()) => true,
        Err(reason) => {
            let ci = std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
            assert!(!ci, "namespace test {test} cannot run in CI: {reason}");
            eprintln!("SKIPPED {test}: {reason}");
            eprintln!("        (namespace tests need root and iproute2; in CI they fail instead)");
            false
        }
    }
}

/// Polls `f` every 50 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a command with piped stdout/stderr, killing it after `timeout`.
pub fn output_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output, String> {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {desc}: {e}"))?;
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let t_out = thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out.read_to_end(&mut b);
        b
    });
    let t_err = thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err.read_to_end(&mut b);
        b
    });
    let end = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < end => thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{desc} did not finish within {timeout:?}"));
            }
            Err(e) => return Err(format!("waiting for {desc}: {e}")),
        }
    };
    Ok(Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    })
}

static NEXT_NET: AtomicUsize = AtomicUsize::new(0);

/// One private test network made by `network-test net-init`: `n` daemon hosts
/// (namespaces `<prefix>d<i>`, interfaces `server0` and `client0` =
/// 10.0.0.1/16) on a shared server bridge, each with its own client link
/// and `per_node` client hosts on it (interface `eth0`).  Removed on drop.
///
/// Client host `(i, k)` is "client k of daemon host i"; its network-test id is
/// `i.k` and its name `i` (k = 0) or `i`x`k`, as in namespace `<prefix>c<name>`
/// and lease file `lease-<name>`.  The methods without `_k` address client
/// `(i, 0)`.
pub struct TestNet {
    /// `NT_PREFIX` of this net; every namespace name starts with it.
    pub prefix: String,
    /// `NT_STATE_DIR` of this net (logs, sockets, lease files).
    pub state_dir: PathBuf,
    /// Number of daemon hosts.
    pub n: usize,
    /// Client hosts per daemon host (on its client link at the start).
    pub per_node: usize,
    /// The daemon started on host i (its PID is the ddhcpd PID).
    pub daemons: Vec<Option<Child>>,
    pub ddhcpd: PathBuf,
    pub ddhcpctl: PathBuf,
}

impl TestNet {
    /// Creates a net with `n` daemon hosts and one client host each.  Panics if
    /// that fails.
    pub fn new(n: usize, ddhcpd: &Path, ddhcpctl: &Path) -> TestNet {
        Self::try_new(n, ddhcpd, ddhcpctl).unwrap_or_else(|e| panic!("TestNet::new({n}): {e}"))
    }

    /// Creates a net with `n` daemon hosts and `per_node` client hosts on each
    /// one's client link.  Panics if that fails.
    pub fn with_clients(n: usize, per_node: usize, ddhcpd: &Path, ddhcpctl: &Path) -> TestNet {
        Self::try_with_clients(n, per_node, ddhcpd, ddhcpctl)
            .unwrap_or_else(|e| panic!("TestNet::with_clients({n}, {per_node}): {e}"))
    }

    pub fn try_new(n: usize, ddhcpd: &Path, ddhcpctl: &Path) -> Result<TestNet, String> {
        Self::try_with_clients(n, 1, ddhcpd, ddhcpctl)
    }

    pub fn try_with_clients(
        n: usize,
        per_node: usize,
        ddhcpd: &Path,
        ddhcpctl: &Path,
    ) -> Result<TestNet, String> {
        prerequisites()?;
        // Creating a client host takes a few tens of milliseconds.
        let init_timeout = CMD_TIMEOUT + Duration::from_millis(200) * (n * per_node) as u32;
        let mut last_err = String::new();
        for _ in 0..5 {
            let k = NEXT_NET.fetch_add(1, Ordering::Relaxed);
            let prefix = format!("t{:x}n{k}", std::process::id());
            let state_dir = std::env::temp_dir().join(format!("ddhcp-{prefix}"));
            let net = TestNet {
                prefix,
                state_dir,
                n,
                per_node,
                daemons: (0..n).map(|_| None).collect(),
                ddhcpd: ddhcpd.to_path_buf(),
                ddhcpctl: ddhcpctl.to_path_buf(),
            };
            let out = output_timeout(
                net.script_cmd()
                    .args(["net-init", &n.to_string(), &per_node.to_string()]),
                init_timeout,
            )?;
            if out.status.success() {
                return Ok(net);
            }
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            let exists = stderr.contains("already exists") || stderr.contains("not empty");
            last_err = format!(
                "network-test net-init {n} {per_node} (NT_PREFIX={}) failed ({}): {}{}",
                net.prefix,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                stderr
            );
            if exists {
                // Someone else's (stale) net: leave it alone, try another prefix.
                std::mem::forget(net);
                continue;
            }
            return Err(last_err); // drop runs net-stop on what is left
        }
        Err(last_err)
    }

    /// A `network-test` command with this net's environment.
    pub fn script_cmd(&self) -> Command {
        let mut c = Command::new(script());
        c.env("NT_PREFIX", &self.prefix)
            .env("NT_STATE_DIR", &self.state_dir);
        c
    }

    /// Runs `network-test ARGS…` for this net; stdout on success.
    pub fn nt(&self, args: &[&str]) -> Result<String, String> {
        let out = output_timeout(self.script_cmd().args(args), CMD_TIMEOUT)?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "network-test {} failed ({}): {}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    // ------------------------------------------------------------ names ---

    pub fn ns_hub(&self) -> String {
        format!("{}hub", self.prefix)
    }
    pub fn ns_daemon(&self, i: usize) -> String {
        format!("{}d{i}", self.prefix)
    }
    pub fn ns_client(&self, i: usize) -> String {
        self.ns_client_k(i, 0)
    }
    /// Namespace of client host (i, k).
    pub fn ns_client_k(&self, i: usize, k: usize) -> String {
        format!("{}c{}", self.prefix, self.client_name(i, k))
    }
    /// Name of client host (i, k) in namespace, port and file names: `i`, or
    /// `i`x`k` for k > 0.
    pub fn client_name(&self, i: usize, k: usize) -> String {
        assert!(
            i < self.n && k < self.per_node,
            "client ({i}, {k}) out of range ({} x {})",
            self.n,
            self.per_node
        );
        if k == 0 {
            i.to_string()
        } else {
            format!("{i}x{k}")
        }
    }
    /// network-test client id of client host (i, k): `i.k`.
    pub fn client_id(&self, i: usize, k: usize) -> String {
        let _ = self.client_name(i, k); // range check
        format!("{i}.{k}")
    }
    /// Every client host `(i, k)`, node by node.
    pub fn clients(&self) -> Vec<(usize, usize)> {
        (0..self.n)
            .flat_map(|i| (0..self.per_node).map(move |k| (i, k)))
            .collect()
    }
    /// Control socket path for daemon i: `$state/ctl<i>.sock`.
    pub fn sock(&self, i: usize) -> PathBuf {
        self.state_dir.join(format!("ctl{i}.sock"))
    }
    /// State directory for daemon i (`--state-dir`): `$state/state<i>`.
    /// Not created here.
    pub fn state_dir(&self, i: usize) -> PathBuf {
        self.state_dir.join(format!("state{i}"))
    }
    /// Log of daemon i (stdout and stderr): `$state/ddhcpd<i>.log`.
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.state_dir.join(format!("ddhcpd{i}.log"))
    }
    pub fn daemon_log(&self, i: usize) -> String {
        fs::read_to_string(self.log_path(i)).unwrap_or_default()
    }

    // ---------------------------------------------------------- daemons ---

    /// Starts `ddhcpd ARGS…` in daemon host i (`network-test srv-start`).
    /// Output goes to [`log_path`](Self::log_path) (appended).
    pub fn start_daemon(&mut self, i: usize, args: &[&str]) {
        self.start_daemon_wrapped(i, &[], args);
    }

    /// Like [`start_daemon`](Self::start_daemon), but runs `WRAPPER… ddhcpd ARGS…`, e.g.
    /// `prlimit --fsize=65536 --` for a daemon with a file size limit. The wrapper must
    /// exec ddhcpd, so that the PID the harness holds stays the daemon's.
    pub fn start_daemon_wrapped(&mut self, i: usize, wrapper: &[&str], args: &[&str]) {
        let program = self.ddhcpd.clone();
        self.start_program(i, &program, wrapper, args);
    }

    /// Like [`start_daemon_wrapped`](Self::start_daemon_wrapped), but runs `program`
    /// instead of this net's `ddhcpd` (e.g. the C ddhcpd in the interoperability tests).
    /// It is held, signalled, and killed on drop exactly like a `ddhcpd` of ours; `program`
    /// must not fork into the background, so that the PID the harness holds stays its own.
    pub fn start_program(&mut self, i: usize, program: &Path, wrapper: &[&str], args: &[&str]) {
        assert!(i < self.n, "daemon index {i} out of range 0..{}", self.n);
        assert!(!self.daemon_running(i), "daemon {i} is already running");
        if let Some(mut old) = self.daemons[i].take() {
            let _ = old.wait();
        }
        let mut log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.log_path(i).display()));
        {
            use std::io::Write;
            let _ = writeln!(
                log,
                "=== start_daemon {i}: {}{} {}",
                wrapper.iter().map(|w| format!("{w} ")).collect::<String>(),
                program.display(),
                args.join(" ")
            );
        }
        let log2 = log.try_clone().expect("clone log file");
        let child = self
            .script_cmd()
            .arg("srv-start")
            .arg(i.to_string())
            .args(wrapper)
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start daemon {i}: {e}"));
        self.daemons[i] = Some(child);
    }

    /// PID of daemon i, if one was started (it may have exited).
    pub fn daemon_pid(&self, i: usize) -> Option<u32> {
        self.daemons.get(i)?.as_ref().map(Child::id)
    }

    /// True while daemon i runs.
    pub fn daemon_running(&mut self, i: usize) -> bool {
        match self.daemons.get_mut(i).and_then(Option::as_mut) {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Exit status of daemon i if it has exited.
    pub fn daemon_exit(&mut self, i: usize) -> Option<ExitStatus> {
        self.daemons.get_mut(i)?.as_mut()?.try_wait().ok().flatten()
    }

    /// Sends `signal` ("TERM", "KILL", "HUP", "SIGUSR1", …) to daemon i.
    /// Panics if daemon i is not running.  Does not wait; see
    /// [`wait_daemon`](Self::wait_daemon).
    pub fn kill_daemon(&mut self, i: usize, signal: &str) {
        self.signal_daemon(i, signal)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Like [`kill_daemon`](Self::kill_daemon), but an error instead of a panic.
    pub fn signal_daemon(&mut self, i: usize, signal: &str) -> Result<(), String> {
        let pid = self
            .daemon_pid(i)
            .ok_or_else(|| format!("daemon {i} was never started"))?;
        // try_wait reaps an exited daemon, so its PID is never signalled after
        // it might have been reused.
        if !self.daemon_running(i) {
            return Err(format!("daemon {i} (pid {pid}) is not running"));
        }
        let sig = signal.trim_start_matches("SIG");
        let st = Command::new("kill")
            .args(["-s", sig, &pid.to_string()])
            .status()
            .map_err(|e| format!("cannot run kill: {e}"))?;
        if st.success() {
            Ok(())
        } else {
            Err(format!("kill -s {sig} {pid} failed ({st})"))
        }
    }

    /// `kill -9` daemon i and reaps it, so that it can be started again at once. A
    /// SIGKILL takes effect only when the process leaves the kernel: a daemon inside an
    /// fsync on a busy CI disk can take seconds, so this waits up to 30 s and, if the
    /// process is still there, panics with its kernel state (what it waits in).
    pub fn kill9(&mut self, i: usize) {
        let pid = self.daemon_pid(i);
        self.kill_daemon(i, "KILL");
        if self.wait_daemon(i, Duration::from_secs(30)).is_none() {
            let proc_file = |f: &str| {
                pid.and_then(|p| fs::read_to_string(format!("/proc/{p}/{f}")).ok())
                    .unwrap_or_default()
            };
            let state = proc_file("status")
                .lines()
                .find(|l| l.starts_with("State:"))
                .unwrap_or("State: ?")
                .to_string();
            panic!(
                "daemon {i} (pid {pid:?}) did not die within 30 s of SIGKILL: {state}, wchan {}",
                proc_file("wchan")
            );
        }
    }

    /// Waits up to `timeout` for daemon i to exit; its status if it did.
    pub fn wait_daemon(&mut self, i: usize, timeout: Duration) -> Option<ExitStatus> {
        let mut status = None;
        wait_until(timeout, || {
            status = self.daemon_exit(i);
            status.is_some()
        });
        status
    }

    /// SIGTERM, up to 5 s, then SIGKILL.  Returns the exit status.
    pub fn stop_daemon(&mut self, i: usize) -> Option<ExitStatus> {
        if self.signal_daemon(i, "TERM").is_ok()
            && let Some(s) = self.wait_daemon(i, Duration::from_secs(5))
        {
            return Some(s);
        }
        let c = self.daemons.get_mut(i)?.as_mut()?;
        let _ = c.kill();
        c.wait().ok()
    }

    // -------------------------------------------------------------- ctl ---

    fn ctl_output(&self, i: usize, json: bool, args: &[&str]) -> Result<String, String> {
        let mut cmd = Command::new(&self.ddhcpctl);
        cmd.arg("-C").arg(self.sock(i));
        if json {
            cmd.arg("--json");
        }
        cmd.args(args);
        let out = output_timeout(&mut cmd, CMD_TIMEOUT)?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(format!(
                "ddhcpctl {}{} on node {i} failed ({}): {}{}",
                if json { "--json " } else { "" },
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr),
                stdout
            ))
        }
    }

    /// `ddhcpctl -C <sock i> ARGS…` (human output).
    pub fn ctl(&self, i: usize, args: &[&str]) -> Result<String, String> {
        self.ctl_output(i, false, args)
    }

    /// `ddhcpctl -C <sock i> --json ARGS…`, parsed.
    pub fn ctl_json(&self, i: usize, args: &[&str]) -> Result<serde_json::Value, String> {
        let text = self.ctl_output(i, true, args)?;
        serde_json::from_str(&text).map_err(|e| {
            format!(
                "ddhcpctl --json {} on node {i}: bad JSON ({e}): {text}",
                args.join(" ")
            )
        })
    }

    /// Retries [`ctl_json`](Self::ctl_json) until it succeeds (e.g. until the
    /// control socket exists) or `timeout` passes; the last error otherwise.
    pub fn wait_ctl_json(
        &self,
        i: usize,
        args: &[&str],
        timeout: Duration,
    ) -> Result<serde_json::Value, String> {
        let mut last = Err(String::from("not tried"));
        wait_until(timeout, || {
            last = self.ctl_json(i, args);
            last.is_ok()
        });
        last
    }

    // ---------------------------------------------------------- clients ---

    /// Starts a DHCP client ("udhcpc", "dhclient" or "dhcpcd") on client host i.
    pub fn clt_start(&self, i: usize, client: &str) {
        self.clt_start_args_k(i, 0, client, &[]);
    }

    /// Like [`clt_start`](Self::clt_start), with extra arguments for the client
    /// (e.g. `&["-r", "10.0.128.9"]` for udhcpc).
    pub fn clt_start_args(&self, i: usize, client: &str, extra: &[&str]) {
        self.clt_start_args_k(i, 0, client, extra);
    }

    /// Starts a DHCP client on client host (i, k).
    pub fn clt_start_k(&self, i: usize, k: usize, client: &str) {
        self.clt_start_args_k(i, k, client, &[]);
    }

    /// Like [`clt_start_k`](Self::clt_start_k), with extra client arguments.
    pub fn clt_start_args_k(&self, i: usize, k: usize, client: &str, extra: &[&str]) {
        let id = self.client_id(i, k);
        let mut args = vec!["clt-start", &id, client];
        args.extend_from_slice(extra);
        self.nt(&args).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Releases (where the client supports it) and stops client i.
    pub fn clt_stop(&self, i: usize) {
        self.clt_stop_k(i, 0);
    }

    /// Releases (where the client supports it) and stops client (i, k).
    pub fn clt_stop_k(&self, i: usize, k: usize) {
        self.nt(&["clt-stop", &self.client_id(i, k)])
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Stops client (i, k) without releasing its lease (`clt-stop -k`): a
    /// dhclient or dhcpcd started again does INIT-REBOOT with it.
    pub fn clt_stop_keep_k(&self, i: usize, k: usize) {
        self.nt(&["clt-stop", "-k", &self.client_id(i, k)])
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Makes client i renew now (udhcpc and dhcpcd only).
    pub fn clt_renew(&self, i: usize) {
        self.clt_renew_k(i, 0);
    }

    /// Makes client (i, k) renew now (udhcpc and dhcpcd only).
    pub fn clt_renew_k(&self, i: usize, k: usize) {
        self.nt(&["clt-renew", &self.client_id(i, k)])
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Moves client host `c`'s link to daemon host `i`'s client link.
    pub fn roam(&self, c: usize, i: usize) {
        self.roam_k(c, 0, i);
    }

    /// Moves client host (c, k)'s link to daemon host `i`'s client link.
    pub fn roam_k(&self, c: usize, k: usize, i: usize) {
        self.nt(&["roam", &self.client_id(c, k), &i.to_string()])
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// The address client i holds (first word of `$state/lease-<i>`), if any.
    pub fn lease_of(&self, i: usize) -> Option<String> {
        self.lease_of_k(i, 0)
    }

    /// The address client (i, k) holds (first word of `$state/lease-<name>`).
    pub fn lease_of_k(&self, i: usize, k: usize) -> Option<String> {
        let name = self.client_name(i, k);
        let text = fs::read_to_string(self.state_dir.join(format!("lease-{name}"))).ok()?;
        text.split_whitespace().next().map(str::to_owned)
    }

    /// Waits up to `timeout` for client i to hold a lease.
    pub fn wait_lease(&self, i: usize, timeout: Duration) -> Option<String> {
        self.wait_lease_k(i, 0, timeout)
    }

    /// Waits up to `timeout` for client (i, k) to hold a lease.
    pub fn wait_lease_k(&self, i: usize, k: usize, timeout: Duration) -> Option<String> {
        let mut lease = None;
        wait_until(timeout, || {
            lease = self.lease_of_k(i, k);
            lease.is_some()
        });
        lease
    }

    /// What client (i, k)'s hook recorded about its lease (`$state/lease-<name>.env`:
    /// `ip`, `subnet`, `router`, `lease`, `server`, `client`, `dns`); empty while it holds
    /// no lease.
    pub fn lease_env_k(&self, i: usize, k: usize) -> std::collections::BTreeMap<String, String> {
        let name = self.client_name(i, k);
        fs::read_to_string(self.state_dir.join(format!("lease-{name}.env")))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// History of client i's hook calls (`$state/lease-<i>.log`).
    pub fn lease_history(&self, i: usize) -> String {
        self.lease_history_k(i, 0)
    }

    /// History of client (i, k)'s hook calls (`$state/lease-<name>.log`).
    pub fn lease_history_k(&self, i: usize, k: usize) -> String {
        let name = self.client_name(i, k);
        fs::read_to_string(self.state_dir.join(format!("lease-{name}.log"))).unwrap_or_default()
    }

    /// Log of the DHCP client on host i (whichever was started last).
    pub fn client_log(&self, i: usize) -> String {
        self.client_log_k(i, 0)
    }

    /// Log of the DHCP client on host (i, k) (whichever was started last).
    pub fn client_log_k(&self, i: usize, k: usize) -> String {
        let dir = self
            .state_dir
            .join(format!("clt{}", self.client_name(i, k)));
        let kind = fs::read_to_string(dir.join("kind")).unwrap_or_default();
        fs::read_to_string(dir.join(format!("{}.log", kind.trim()))).unwrap_or_default()
    }

    /// MAC address of `eth0` in client host (i, k), lower case (`aa:bb:…`).
    pub fn client_mac_k(&self, i: usize, k: usize) -> String {
        let out = self.exec_client_ns_k(i, k, &["cat", "/sys/class/net/eth0/address"]);
        assert!(
            out.status.success(),
            "cannot read the MAC of client ({i}, {k}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_lowercase()
    }

    /// IPv4 addresses (without prefix length) configured on `eth0` of client
    /// host (i, k).
    pub fn client_addrs_k(&self, i: usize, k: usize) -> Vec<String> {
        let out = self.exec_client_ns_k(i, k, &["ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                w.find(|&x| x == "inet")?;
                w.next()?.split('/').next().map(str::to_owned)
            })
            .collect()
    }

    // ------------------------------------------------- run in a namespace ---

    pub fn ns_exec(ns: &str, args: &[&str]) -> Output {
        output_timeout(
            Command::new("ip").args(["netns", "exec", ns]).args(args),
            CMD_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }
    /// Runs a command inside daemon host i.
    pub fn exec_daemon_ns(&self, i: usize, args: &[&str]) -> Output {
        Self::ns_exec(&self.ns_daemon(i), args)
    }
    /// Runs a command inside client host i.
    pub fn exec_client_ns(&self, i: usize, args: &[&str]) -> Output {
        Self::ns_exec(&self.ns_client(i), args)
    }
    /// Runs a command inside client host (i, k).
    pub fn exec_client_ns_k(&self, i: usize, k: usize, args: &[&str]) -> Output {
        Self::ns_exec(&self.ns_client_k(i, k), args)
    }
    /// Runs a command inside the hub namespace (bridges br-srv, br-clt<i>).
    pub fn exec_hub(&self, args: &[&str]) -> Output {
        Self::ns_exec(&self.ns_hub(), args)
    }

    /// Prints the tail of every daemon log and every client's hook history and
    /// log to stderr (done by `Drop` when the test panics).
    pub fn dump_logs(&self) {
        for i in 0..self.n {
            let log = self.daemon_log(i);
            if !log.is_empty() {
                let lines: Vec<&str> = log.lines().collect();
                let from = lines.len().saturating_sub(60);
                eprintln!(
                    "----- {} (last {} lines) -----",
                    self.log_path(i).display(),
                    lines.len() - from
                );
                for l in &lines[from..] {
                    eprintln!("{l}");
                }
            }
        }
        for (i, k) in self.clients() {
            let hist = self.lease_history_k(i, k);
            if !hist.is_empty() {
                eprintln!("----- client {i}.{k} lease history -----\n{hist}");
            }
            let log = self.client_log_k(i, k);
            if !log.is_empty() {
                let lines: Vec<&str> = log.lines().collect();
                let from = lines.len().saturating_sub(15);
                eprintln!(
                    "----- client {i}.{k} log (last {} lines) -----",
                    lines.len() - from
                );
                for l in &lines[from..] {
                    eprintln!("{l}");
                }
            }
        }
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        for c in self.daemons.iter_mut().flatten() {
            if let Ok(None) = c.try_wait() {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
        if thread::panicking() {
            eprintln!("===== TestNet {} failed; logs follow =====", self.prefix);
            self.dump_logs();
        }
        match output_timeout(self.script_cmd().arg("net-stop"), CMD_TIMEOUT) {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "TestNet {}: net-stop failed ({}): {}",
                self.prefix,
                o.status,
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("TestNet {}: net-stop: {e}", self.prefix),
        }
    }
}

//! `ddhcpd`: flags -> validated config -> daemon.

use std::process::ExitCode;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::prelude::*;

fn level(verbose: u8) -> &'static str {
    // ddhcpd's default is WARNING; each -v adds a level.
    match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    }
}

/// Writes each log event as one syslog message (facility daemon).
struct Syslog;

impl Syslog {
    fn open() -> Self {
        // SAFETY: the identity is a static C string that lives for the whole program.
        unsafe { libc::openlog(c"ddhcpd".as_ptr(), libc::LOG_PID, libc::LOG_DAEMON) };
        Syslog
    }
}

/// One event's text, sent on drop (the formatter may write an event in pieces).
struct SyslogLine {
    buf: Vec<u8>,
    priority: libc::c_int,
}

impl std::io::Write for SyslogLine {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for SyslogLine {
    fn drop(&mut self) {
        let text: Vec<u8> = self.buf.iter().copied().filter(|&b| b != 0).collect();
        let text = String::from_utf8_lossy(&text);
        if let Ok(c) = std::ffi::CString::new(text.trim_end()) {
            // SAFETY: both strings are valid and NUL-terminated; "%s" keeps the message
            // from being read as a format.
            unsafe { libc::syslog(self.priority, c"%s".as_ptr(), c.as_ptr()) };
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Syslog {
    type Writer = SyslogLine;

    fn make_writer(&'a self) -> SyslogLine {
        SyslogLine {
            buf: Vec::new(),
            priority: libc::LOG_INFO,
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> SyslogLine {
        let priority = match *meta.level() {
            tracing::Level::ERROR => libc::LOG_ERR,
            tracing::Level::WARN => libc::LOG_WARNING,
            tracing::Level::INFO => libc::LOG_INFO,
            _ => libc::LOG_DEBUG,
        };
        SyslogLine {
            buf: Vec::new(),
            priority,
        }
    }
}

fn main() -> ExitCode {
    // A file size limit (ulimit -f) must show as a write error the store handles (log it,
    // stop acknowledging, exit), not kill the daemon with SIGXFSZ mid-append.
    // SAFETY: setting a signal's disposition to "ignore" before any thread exists.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    let mut cfg = match ddhcp::config::from_args(std::env::args_os()) {
        Ok(Some(cfg)) => cfg,
        Ok(None) => return ExitCode::SUCCESS,
        Err(line) => {
            eprintln!("ddhcpd: {line}");
            return ExitCode::from(2);
        }
    };
    // `target=level` directives (RUST_LOG, `ddhcpctl log-level`), without span filters: an
    // EnvFilter would link a regex engine, a sixth of a router binary (docs/footprint.md).
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse::<Targets>().ok())
        .unwrap_or_else(|| {
            Targets::new().with_target(
                "ddhcp",
                level(cfg.verbose)
                    .parse::<tracing_subscriber::filter::LevelFilter>()
                    .expect("a level"),
            )
        });
    let logs_to_stderr = cfg.log_file.is_none() && !cfg.daemonize;
    let (writer, ansi) = match &cfg.log_file {
        Some(path) => {
            let file = match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                Ok(f) => f,
                Err(e) => {
                    eprintln!(
                        "ddhcpd: invalid value '{}' for --log-file: {e}",
                        path.display()
                    );
                    return ExitCode::from(2);
                }
            };
            (BoxMakeWriter::new(std::sync::Mutex::new(file)), false)
        }
        // Detached without a log file: stderr goes to /dev/null, so log to syslog
        // (ddhcpd's -d loses every message).
        None if cfg.daemonize => (BoxMakeWriter::new(Syslog::open()), false),
        None => (
            BoxMakeWriter::new(std::io::stderr),
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
        ),
    };
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(ansi)
                .with_writer(writer),
        )
        .init();
    let set_log_level: ddhcp::daemon::LogLevelSetter = Box::new(move |f: &str| {
        let filter = f
            .parse::<Targets>()
            .map_err(|e| format!("bad filter '{f}': {e}"))?;
        handle.reload(filter).map_err(|e| e.to_string())
    });
    if cfg.daemonize {
        // daemon(3) changes to "/": relative paths must be resolved first.
        if let Ok(cwd) = std::env::current_dir() {
            let abs = |p: &mut std::path::PathBuf| {
                if p.is_relative() {
                    *p = cwd.join(&*p);
                }
            };
            abs(&mut cfg.control);
            abs(&mut cfg.state_dir);
            cfg.hook.as_mut().map(abs);
            cfg.audit_log.as_mut().map(abs);
        }
        // Before the runtime exists: fork() and threads do not mix. Logs go to --log-file
        // or syslog, so stdio can be closed.
        // SAFETY: no other threads exist yet.
        if unsafe { libc::daemon(0, 0) } != 0 {
            eprintln!("ddhcpd: cannot detach: {}", std::io::Error::last_os_error());
            return ExitCode::FAILURE;
        }
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ddhcpd: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        let shutdown = async {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int), Ok(_hup)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
                signal(SignalKind::hangup()),
            ) else {
                return std::future::pending().await;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        };
        ddhcp::daemon::run(cfg, shutdown, Some(set_log_level)).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // With a log file or after -d the log target gets it too; on stderr once is
            // enough (operators and scripts expect exactly one line).
            if !logs_to_stderr {
                tracing::error!("cannot start: {e}");
            }
            eprintln!("ddhcpd: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

//! Runs the `-H` hook for events, without a shell and off the hot path.
//!
//! Events go into a bounded queue that one task works through in order, so a hook sees
//! events in the order they happened. Each run has a time limit after which the child is
//! killed and reaped; a full queue drops the event (counted and logged) instead of slowing
//! the daemon down. Arguments are passed as separate argv entries and never interpreted.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{debug, warn};

/// Longest a single hook run may take before it is killed.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// Events waiting for the hook beyond this are dropped.
pub const HOOK_QUEUE: usize = 1024;

#[derive(Default, Debug)]
pub struct HookStats {
    pub runs: AtomicU64,
    pub failures: AtomicU64,
    pub timeouts: AtomicU64,
    pub dropped: AtomicU64,
}

/// Handle the daemon uses to queue hook runs.
#[derive(Clone)]
pub struct Hook {
    tx: Option<mpsc::Sender<Vec<String>>>,
    pub stats: Arc<HookStats>,
}

impl Hook {
    /// A hook that does nothing (no `-H`).
    pub fn none() -> Self {
        Hook {
            tx: None,
            stats: Arc::default(),
        }
    }

    /// Starts the runner task for `path`. Must run inside a tokio runtime.
    pub fn spawn(path: PathBuf) -> Self {
        let (tx, mut rx) = mpsc::channel::<Vec<String>>(HOOK_QUEUE);
        let stats: Arc<HookStats> = Arc::default();
        let s = stats.clone();
        tokio::spawn(async move {
            while let Some(args) = rx.recv().await {
                run_one(&path, &args, &s).await;
            }
        });
        Hook {
            tx: Some(tx),
            stats,
        }
    }

    /// Queues `ACTION ARGS…`; never waits.
    pub fn emit(&self, args: Vec<String>) {
        let Some(tx) = &self.tx else { return };
        if tx.try_send(args).is_err() {
            let n = self.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                warn!(dropped = n, "hook queue full, events dropped");
            }
        }
    }
}

async fn run_one(path: &PathBuf, args: &[String], stats: &HookStats) {
    stats.runs.fetch_add(1, Ordering::Relaxed);
    let child = tokio::process::Command::new(path)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            stats.failures.fetch_add(1, Ordering::Relaxed);
            warn!(hook = %path.display(), error = %e, "cannot run hook");
            return;
        }
    };
    match tokio::time::timeout(HOOK_TIMEOUT, child.wait()).await {
        Ok(Ok(status)) if status.success() => debug!(?args, "hook ran"),
        Ok(Ok(status)) => {
            stats.failures.fetch_add(1, Ordering::Relaxed);
            warn!(?args, %status, "hook failed");
        }
        Ok(Err(e)) => {
            stats.failures.fetch_add(1, Ordering::Relaxed);
            warn!(?args, error = %e, "hook wait failed");
        }
        Err(_) => {
            stats.timeouts.fetch_add(1, Ordering::Relaxed);
            warn!(?args, "hook timed out, killed");
            let _ = child.kill().await;
        }
    }
}

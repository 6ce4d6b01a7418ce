//! The control socket server.
//!
//! Each connection gets its own task that reads one bounded request (size and time limited),
//! hands it to the main loop through a channel and writes the answer back. The main loop
//! owns all state and answers between packets, so control traffic never races protocol
//! state and a stuck client can only stall its own task.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::{debug, warn};

use crate::control::{MAX_REQUEST, REQUEST_TIMEOUT, Request, Response};

/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 64;

/// A request travelling to the main loop, with the way back.
pub struct Pending {
    pub request: Request,
    pub reply: oneshot::Sender<Response>,
}

/// Why the control socket could not be set up; the daemon reports these as start-up errors.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("control socket {0} is in use by a running daemon")]
    InUse(PathBuf),
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("cannot create control socket {0}: {1}")]
    Io(PathBuf, io::Error),
    #[error("invalid value '{0}' for --control-group: no such group")]
    NoGroup(String),
}

/// Binds the socket at `path`, replacing a stale one from a crashed run but never a live
/// daemon's. The socket is made accessible to its owner only, or also to `group`.
pub fn bind(path: &Path, group: Option<&str>) -> Result<UnixListener, BindError> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(BindError::NotASocket(path.into()));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(BindError::InUse(path.into()));
        }
        std::fs::remove_file(path).map_err(|e| BindError::Io(path.into(), e))?;
    }
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(|e| BindError::Io(path.into(), e))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| BindError::Io(path.into(), e))?;
    let mode = match group {
        Some(g) => {
            let gid = group_id(g).ok_or_else(|| BindError::NoGroup(g.to_string()))?;
            std::os::unix::fs::chown(path, None, Some(gid))
                .map_err(|e| BindError::Io(path.into(), e))?;
            0o660
        }
        None => 0o600,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| BindError::Io(path.into(), e))?;
    Ok(listener)
}

/// Looks a group up by name or number.
fn group_id(name: &str) -> Option<u32> {
    if let Ok(n) = name.parse() {
        return Some(n);
    }
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: getgrnam returns a pointer into static storage or null; we read one field
    // at once, before any other call could overwrite it.
    unsafe {
        let g = libc::getgrnam(c.as_ptr());
        (!g.is_null()).then(|| (*g).gr_gid)
    }
}

/// Accepts connections until the listener fails; requests go to `to_main`.
pub async fn serve(listener: UnixListener, to_main: mpsc::Sender<Pending>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let to_main = to_main.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, to_main).await {
                debug!(error = %e, "control connection ended with an error");
            }
            drop(permit);
        });
    }
}

async fn connection(mut stream: UnixStream, to_main: mpsc::Sender<Pending>) -> io::Result<()> {
    let response = match read_request(&mut stream).await {
        Ok(bytes) => match Request::parse(&bytes) {
            Ok(request) => {
                let (reply, answer) = oneshot::channel();
                if to_main.send(Pending { request, reply }).await.is_err() {
                    Response::err("daemon is shutting down")
                } else {
                    answer
                        .await
                        .unwrap_or_else(|_| Response::err("daemon is shutting down"))
                }
            }
            Err(e) => Response::err(e),
        },
        Err(e) => Response::err(e),
    };
    tokio::time::timeout(REQUEST_TIMEOUT, stream.write_all(&response.to_bytes()))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    stream.shutdown().await
}

/// Reads up to a newline or EOF, within the size and time limits.
async fn read_request(stream: &mut UnixStream) -> Result<Vec<u8>, String> {
    let mut buf = Vec::with_capacity(256);
    let read = async {
        let mut chunk = [0u8; 512];
        loop {
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|e| format!("read failed: {e}"))?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.len() > MAX_REQUEST {
                return Err(format!("request larger than {MAX_REQUEST} bytes"));
            }
            if chunk[..n].contains(&b'\n') {
                return Ok(());
            }
        }
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, read).await {
        Ok(Ok(())) => Ok(buf),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!(
            "no complete request within {} s",
            REQUEST_TIMEOUT.as_secs()
        )),
    }
}

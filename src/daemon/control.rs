//! The control socket server.
//!
//! Each connection gets its own task that reads one bounded request (size and time limited),
//! hands it to the main loop through a channel and writes the answer back. The main loop
//! owns all state and answers between packets, so control traffic never races protocol
//! state and a stuck client can only stall its own task.
//!
//! A pipelined connection (first line [`crate::control::PIPELINE_START`], protocol in [`crate::control`])
//! runs a reader and a writer in its task: the reader hands each request to the main loop
//! as soon as its line is complete and queues the way back in a FIFO; the writer awaits the
//! answers in that order. A semaphore of [`MAX_IN_FLIGHT`] permits, one held per queued
//! request until its answer is written, bounds what one connection can make the daemon
//! hold: without a permit the reader reads no further.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tracing::{debug, warn};

use crate::control::{
    MAX_IN_FLIGHT, MAX_REQUEST, PIPELINE_IDLE, REQUEST_TIMEOUT, Request, Response,
    is_pipeline_start,
};

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
    serve_with(listener, to_main, Limits::default()).await
}

/// What bounds a pipelined connection; [`Limits::default`] is the protocol's
/// ([`MAX_IN_FLIGHT`], [`PIPELINE_IDLE`]), tests shorten them.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_in_flight: usize,
    pub idle: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_in_flight: MAX_IN_FLIGHT,
            idle: PIPELINE_IDLE,
        }
    }
}

/// [`serve`] with other limits for pipelined connections.
pub async fn serve_with(listener: UnixListener, to_main: mpsc::Sender<Pending>, limits: Limits) {
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
            if let Err(e) = connection(stream, to_main, limits).await {
                debug!(error = %e, "control connection ended with an error");
            }
            drop(permit);
        });
    }
}

async fn connection(
    mut stream: UnixStream,
    to_main: mpsc::Sender<Pending>,
    limits: Limits,
) -> io::Result<()> {
    let first = read_request(&mut stream).await;
    if let Ok(bytes) = &first {
        let (line, rest) = match bytes.iter().position(|&b| b == b'\n') {
            Some(i) => (&bytes[..i], &bytes[i + 1..]),
            None => (&bytes[..], &[][..]),
        };
        if is_pipeline_start(line) {
            let rest = rest.to_vec();
            return pipelined(stream, rest, to_main, limits).await;
        }
    }
    let response = match first {
        Ok(bytes) => match Request::parse(&bytes) {
            Ok(request) => ask(&to_main, request).await,
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

const SHUTTING_DOWN: &str = "daemon is shutting down";

/// One request to the main loop and its answer.
pub(crate) async fn ask(to_main: &mpsc::Sender<Pending>, request: Request) -> Response {
    match sent(to_main, request).await {
        Ok(answer) => answer
            .await
            .unwrap_or_else(|_| Response::err(SHUTTING_DOWN)),
        Err(r) => r,
    }
}

/// Hands `request` to the main loop; the way its answer comes back.
async fn sent(
    to_main: &mpsc::Sender<Pending>,
    request: Request,
) -> Result<oneshot::Receiver<Response>, Response> {
    let (reply, answer) = oneshot::channel();
    to_main
        .send(Pending { request, reply })
        .await
        .map_err(|_| Response::err(SHUTTING_DOWN))?;
    Ok(answer)
}

/// An answer in the FIFO of a pipelined connection: known at once (a refused line) or
/// coming from the main loop. The permit is held until the answer is written.
struct Slot {
    answer: Result<oneshot::Receiver<Response>, Response>,
    _permit: OwnedSemaphorePermit,
}

/// Serves a pipelined connection; `rest` is what was read after its first line.
async fn pipelined(
    mut stream: UnixStream,
    rest: Vec<u8>,
    to_main: mpsc::Sender<Pending>,
    limits: Limits,
) -> io::Result<()> {
    let (rd, mut wr) = stream.split();
    let ack = Response::ok(serde_json::json!({ "pipeline": true }));
    write_within(&mut wr, &ack.to_bytes(), REQUEST_TIMEOUT).await?;
    let permits = Arc::new(Semaphore::new(limits.max_in_flight.max(1)));
    let (fifo, mut answers) = mpsc::unbounded_channel::<Slot>();
    let reader = read_pipeline(Lines::new(rd, rest), &to_main, permits, fifo, limits);
    let writer = async move {
        while let Some(slot) = answers.recv().await {
            let response = match slot.answer {
                Ok(answer) => answer
                    .await
                    .unwrap_or_else(|_| Response::err(SHUTTING_DOWN)),
                Err(r) => r,
            };
            write_within(&mut wr, &response.to_bytes(), limits.idle).await?;
        }
        wr.shutdown().await
    };
    tokio::pin!(reader, writer);
    // The writer ends first only on an error (the reader holds the FIFO's sender): then the
    // connection is over. After the reader, the writer drains what is queued.
    tokio::select! {
        r = &mut writer => return r,
        () = &mut reader => {}
    }
    writer.await
}

/// Reads the requests of a pipelined connection until EOF, an error, or idleness, and
/// queues their answers in order. The FIFO is unbounded but never holds more slots than
/// there are permits.
async fn read_pipeline<R: AsyncRead + Unpin>(
    mut lines: Lines<R>,
    to_main: &mpsc::Sender<Pending>,
    permits: Arc<Semaphore>,
    fifo: mpsc::UnboundedSender<Slot>,
    limits: Limits,
) {
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let line = loop {
            match tokio::time::timeout(limits.idle, lines.next()).await {
                Ok(line) => break line,
                // Idle, unless answers are outstanding (a slow allocation is not the
                // client's idleness).
                Err(_) if permits.available_permits() + 1 < limits.max_in_flight.max(1) => {}
                Err(_) => {
                    debug!("pipelined control connection idle; closing");
                    return;
                }
            }
        };
        let answer = match line {
            Ok(Some(Line::Request(bytes))) => {
                if bytes.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                if is_pipeline_start(&bytes) {
                    Err(Response::err("this connection is already pipelined"))
                } else {
                    match Request::parse(&bytes) {
                        Ok(request) => sent(to_main, request).await,
                        Err(e) => Err(Response::err(e)),
                    }
                }
            }
            Ok(Some(Line::TooLong)) => Err(Response::err(format!(
                "request larger than {MAX_REQUEST} bytes"
            ))),
            Ok(None) => return,
            Err(e) => {
                debug!(error = %e, "pipelined control connection read failed");
                return;
            }
        };
        let slot = Slot {
            answer,
            _permit: permit,
        };
        if fifo.send(slot).is_err() {
            return;
        }
    }
}

async fn write_within<W: AsyncWrite + Unpin>(
    w: &mut W,
    bytes: &[u8],
    limit: Duration,
) -> io::Result<()> {
    tokio::time::timeout(limit, w.write_all(bytes))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}

/// A line of a pipelined connection, without its newline.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    Request(Vec<u8>),
    /// More than [`MAX_REQUEST`] bytes before the newline (they were skipped).
    TooLong,
}

/// Splits a stream into lines of at most [`MAX_REQUEST`] bytes, holding at most about
/// that much. [`Lines::next`] is cancel safe: what was read stays in the buffer.
struct Lines<R> {
    rd: R,
    buf: Vec<u8>,
    /// In a line that is too long: skipping to its newline.
    skipping: bool,
    eof: bool,
}

/// Bytes asked for per read.
const READ_CHUNK: usize = 4096;

impl<R: AsyncRead + Unpin> Lines<R> {
    fn new(rd: R, buffered: Vec<u8>) -> Self {
        Lines {
            rd,
            buf: buffered,
            skipping: false,
            eof: false,
        }
    }

    /// The next line; `None` at the end. The last line may lack its newline.
    async fn next(&mut self) -> io::Result<Option<Line>> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=i).collect();
                line.pop();
                if std::mem::take(&mut self.skipping) || line.len() > MAX_REQUEST {
                    return Ok(Some(Line::TooLong));
                }
                return Ok(Some(Line::Request(line)));
            }
            if self.buf.len() > MAX_REQUEST {
                self.skipping = true;
                self.buf.clear();
            }
            if self.eof {
                if std::mem::take(&mut self.skipping) {
                    return Ok(Some(Line::TooLong));
                }
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Ok(Some(Line::Request(std::mem::take(&mut self.buf))));
            }
            self.buf.reserve(READ_CHUNK);
            if self.rd.read_buf(&mut self.buf).await? == 0 {
                self.eof = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use serde_json::json;

    use super::*;
    use crate::control::{PIPELINE_START, pipeline};

    /// A socket path of its own under the temp directory, removed on drop.
    struct Sock(PathBuf);

    impl Sock {
        fn new() -> Self {
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "ddhcp-ctl-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            Sock(dir.join("ctl.sock"))
        }
    }

    impl Drop for Sock {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(self.0.parent().unwrap());
        }
    }

    /// Binds a control socket served with `limits`; the main loop's end of the channel.
    fn start(sock: &Sock, limits: Limits) -> mpsc::Receiver<Pending> {
        let listener = bind(&sock.0, None).unwrap();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(serve_with(listener, tx, limits));
        rx
    }

    /// What the fake main loop answers: the request back.
    fn echo(r: &Request) -> Response {
        Response::ok(json!({ "req": r }))
    }

    fn secs(r: &Response) -> u64 {
        r.result.as_ref().unwrap()["req"]["secs"].as_u64().unwrap()
    }

    fn lease_times(n: u32) -> impl Iterator<Item = Request> {
        (0..n).map(|secs| Request::LeaseTime { secs, pool: None })
    }

    /// Runs a blocking client off the runtime's threads.
    async fn client<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        tokio::task::spawn_blocking(f).await.unwrap()
    }

    /// Writes `bytes`, closes the write side, returns every line the daemon sent.
    fn raw(path: &std::path::Path, bytes: Vec<u8>) -> Vec<String> {
        let mut s = std::os::unix::net::UnixStream::connect(path).unwrap();
        s.write_all(&bytes).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        BufReader::new(s).lines().map(Result::unwrap).collect()
    }

    fn response(line: &str) -> Response {
        serde_json::from_str(line).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn answers_keep_request_order_when_the_loop_answers_out_of_order() {
        let sock = Sock::new();
        let mut rx = start(&sock, Limits::default());
        let path = sock.0.clone();
        let done = tokio::spawn(client(move || pipeline(&path, lease_times(100))));
        // All 100 reach the loop before any is answered: they are in flight together.
        let mut held = Vec::new();
        while held.len() < 100 {
            held.push(rx.recv().await.unwrap());
        }
        for (i, p) in held.into_iter().enumerate().rev() {
            assert_eq!(p.request, lease_times(100).nth(i).unwrap());
            let r = echo(&p.request);
            p.reply.send(r).unwrap();
            if i % 10 == 0 {
                tokio::task::yield_now().await;
            }
        }
        let answers = done.await.unwrap().unwrap();
        assert_eq!(answers.len(), 100);
        for (i, a) in answers.iter().enumerate() {
            assert!(a.ok, "{a:?}");
            assert_eq!(secs(a), i as u64);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_lines_get_an_error_in_their_place() {
        let sock = Sock::new();
        let mut rx = start(&sock, Limits::default());
        tokio::spawn(async move {
            while let Some(p) = rx.recv().await {
                let _ = p.reply.send(echo(&p.request));
            }
        });
        let mut input = format!("{PIPELINE_START}\n").into_bytes();
        input.extend_from_slice(b"{\"cmd\":\"lease-time\",\"secs\":1}\n");
        input.extend_from_slice(b"status please\n");
        input.extend(std::iter::repeat_n(b'x', MAX_REQUEST + 1));
        input.extend_from_slice(b"\n");
        // Exactly MAX_REQUEST bytes is allowed (and here malformed, answered as such).
        input.extend(std::iter::repeat_n(b' ', MAX_REQUEST - 1));
        input.extend_from_slice(b"x\n");
        input.extend_from_slice(b"\n   \n");
        input.extend_from_slice(b"{\"cmd\":\"lease-time\",\"secs\":2}\n");
        // Far larger than the buffer: skipped in pieces.
        input.extend(std::iter::repeat_n(b'{', 100_000));
        input.extend_from_slice(b"\n");
        input.extend_from_slice(PIPELINE_START.as_bytes());
        input.extend_from_slice(b"\n{\"cmd\":\"lease-time\",\"secs\":3}");
        let path = sock.0.clone();
        let lines = client(move || raw(&path, input)).await;
        let r: Vec<Response> = lines.iter().map(|l| response(l)).collect();
        assert_eq!(r.len(), 9, "{lines:#?}");
        assert_eq!(r[0].result, Some(json!({"pipeline": true})));
        assert_eq!(secs(&r[1]), 1);
        assert!(
            r[2].error.as_deref().unwrap().contains("malformed"),
            "{r:?}"
        );
        assert_eq!(
            r[3].error.as_deref(),
            Some("request larger than 4096 bytes")
        );
        assert!(
            r[4].error.as_deref().unwrap().contains("malformed"),
            "{r:?}"
        );
        assert_eq!(secs(&r[5]), 2);
        assert_eq!(r[6].error, r[3].error);
        assert!(r[7].error.as_deref().unwrap().contains("already pipelined"));
        assert_eq!(secs(&r[8]), 3, "a last line without newline is a request");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn in_flight_requests_are_bounded() {
        let sock = Sock::new();
        let limits = Limits {
            max_in_flight: 8,
            idle: Duration::from_secs(10),
        };
        let mut rx = start(&sock, limits);
        let path = sock.0.clone();
        let done = tokio::spawn(client(move || pipeline(&path, lease_times(200))));
        // Holds what arrives until nothing more comes for a while, then answers it all.
        let mut most = 0;
        let mut answered = 0;
        while answered < 200 {
            let mut held = vec![rx.recv().await.unwrap()];
            while let Ok(Some(p)) =
                tokio::time::timeout(Duration::from_millis(100), rx.recv()).await
            {
                held.push(p);
            }
            most = most.max(held.len());
            answered += held.len();
            for p in held {
                let r = echo(&p.request);
                p.reply.send(r).unwrap();
            }
        }
        assert!(
            most <= 8,
            "{most} requests of one connection at the loop at once"
        );
        assert!(most >= 2, "requests are pipelined (at most {most} at once)");
        let answers = done.await.unwrap().unwrap();
        let got: Vec<u64> = answers.iter().map(secs).collect();
        assert_eq!(got, (0..200).collect::<Vec<_>>());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_pipeline_is_closed_but_not_while_an_answer_is_due() {
        let sock = Sock::new();
        let limits = Limits {
            max_in_flight: 4,
            idle: Duration::from_millis(300),
        };
        let mut rx = start(&sock, limits);
        tokio::spawn(async move {
            while let Some(p) = rx.recv().await {
                // Slower than the idle limit.
                tokio::time::sleep(Duration::from_millis(900)).await;
                let _ = p.reply.send(echo(&p.request));
            }
        });
        let path = sock.0.clone();
        let (lines, waited) = client(move || {
            let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
            s.write_all(format!("{PIPELINE_START}\n").as_bytes())
                .unwrap();
            s.write_all(b"{\"cmd\":\"lease-time\",\"secs\":7}\n")
                .unwrap();
            let t = std::time::Instant::now();
            // The write side stays open: the daemon closes, after the answer.
            let mut text = String::new();
            s.read_to_string(&mut text).unwrap();
            (text, t.elapsed())
        })
        .await;
        let lines: Vec<&str> = lines.lines().collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(secs(&response(lines[1])), 7);
        assert!(waited >= Duration::from_millis(900), "{waited:?}");
        assert!(waited < Duration::from_secs(5), "{waited:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_shot_connections_as_before() {
        let sock = Sock::new();
        let mut rx = start(&sock, Limits::default());
        tokio::spawn(async move {
            while let Some(p) = rx.recv().await {
                let _ = p.reply.send(echo(&p.request));
            }
        });
        for (input, want) in [
            // ddhcpctl: a line, then the write side closed.
            (
                &b"{\"cmd\":\"status\"}\n"[..],
                Some(json!({"req": {"cmd": "status"}})),
            ),
            // No newline, EOF ends it.
            (
                b"{\"cmd\":\"stats\"}",
                Some(json!({"req": {"cmd": "stats"}})),
            ),
            (b"nonsense", None),
            // A pipeline line is only that as the first line; later lines of a one-shot
            // request are not read as requests.
            (b"{\"cmd\":\"status\"}\n{\"cmd\":\"pipeline\"}\n", None),
        ] {
            let path = sock.0.clone();
            let lines = client(move || raw(&path, input.to_vec())).await;
            assert_eq!(lines.len(), 1, "{lines:?}");
            let r = response(&lines[0]);
            assert_eq!(r.ok, want.is_some(), "{r:?}");
            assert_eq!(r.result, want);
        }
        // The C ddhcpdctl style: request written, answer read, write side never closed.
        let path = sock.0.clone();
        let text = client(move || {
            let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
            s.write_all(b"{\"cmd\":\"blocks\"}\n").unwrap();
            let mut text = String::new();
            s.read_to_string(&mut text).unwrap();
            text
        })
        .await;
        assert_eq!(
            response(text.trim()).result,
            Some(json!({"req": {"cmd": "blocks"}}))
        );
    }
}

//! The HTTP JSON API server (`--api ADDR:PORT`, off by default; docs/openapi.yaml).
//!
//! hyper's HTTP/1.1 server with keep-alive, so a provisioning script can reuse one
//! connection. Each request goes through [`crate::http::to_request`] (auth, route, body:
//! pure) and, if that yields a control request, to the main loop exactly as a request of
//! the control socket would ([`super::control::Pending`]); the answer comes back once the
//! store holds what it depends on, and [`crate::http::answer`] maps it to a status and body.
//! The token is checked before the body is read, so a client without it costs a header
//! parse and nothing reaches the main loop.
//!
//! Bounds: [`crate::http::MAX_BODY`] per body (413), a header read timeout (which also
//! closes idle keep-alive connections), a body read timeout, at most
//! [`Limits::max_connections`] connections (more wait in the kernel's backlog).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request as HttpReq, Response as HttpResp, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::StartError;
use super::control::{Pending, ask};
use crate::config::{ApiSpec, ApiToken, ConfigError};
use crate::http::{self, HttpError, HttpRequest, MAX_BODY};

/// What bounds the server; [`Limits::default`] is what `--api` runs with.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once.
    pub max_connections: usize,
    /// A request's head (and, on a kept-alive connection, the next request) must arrive
    /// within this time.
    pub header_timeout: Duration,
    /// A request's body must arrive within this time.
    pub body_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 256,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
        }
    }
}

/// Binds `--api` and starts serving; `None` without `--api`. The token is the one read
/// with the configuration, else read now.
pub async fn start(
    spec: Option<&ApiSpec>,
    to_main: &mpsc::Sender<Pending>,
) -> Result<Option<JoinHandle<()>>, StartError> {
    let Some(spec) = spec else {
        return Ok(None);
    };
    let token = match &spec.token {
        Some(t) => t.clone(),
        None => ApiToken::read(&spec.token_file)?,
    };
    let listener = TcpListener::bind(spec.addr).await.map_err(|e| {
        ConfigError::new(
            "--api",
            spec.addr.to_string(),
            format!("cannot listen: {e}"),
        )
    })?;
    info!(addr = %spec.addr, "serving the HTTP API");
    Ok(Some(tokio::spawn(serve(
        listener,
        token,
        to_main.clone(),
        Limits::default(),
    ))))
}

/// Serves until the listener fails.
pub async fn serve(
    listener: TcpListener,
    token: ApiToken,
    to_main: mpsc::Sender<Pending>,
    limits: Limits,
) {
    let token = Arc::new(token);
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true)
        .max_headers(64)
        .max_buf_size(16 * 1024);
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "API accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let token = token.clone();
        let to_main = to_main.clone();
        let conn = http.serve_connection(
            TokioIo::new(stream),
            service_fn(move |req| {
                let token = token.clone();
                let to_main = to_main.clone();
                async move { Ok::<_, Infallible>(handle(req, &token, &to_main, limits).await) }
            }),
        );
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "API connection ended with an error");
            }
            drop(permit);
        });
    }
}

async fn handle(
    req: HttpReq<Incoming>,
    token: &ApiToken,
    to_main: &mpsc::Sender<Pending>,
    limits: Limits,
) -> HttpResp<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let headers: Vec<(&str, &[u8])> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_bytes()))
        .collect();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // The token first: nothing of an unauthorised request is read further (so if it has
    // a body, the connection cannot carry another request).
    if !http::authorized(&headers, token.as_bytes()) {
        let mut r = refusal(&HttpError::unauthorized());
        if declared != Some(0)
            && (declared.is_some() || parts.headers.contains_key(header::TRANSFER_ENCODING))
        {
            close(&mut r);
        }
        return r;
    }
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return too_large();
    }
    let bytes =
        match tokio::time::timeout(limits.body_timeout, Limited::new(body, MAX_BODY).collect())
            .await
        {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => return too_large(),
            Ok(Err(e)) => {
                return refusal(&HttpError::new(400, format!("cannot read the body: {e}")));
            }
            Err(_) => {
                let mut r = refusal(&HttpError::new(408, "the body did not arrive in time"));
                close(&mut r);
                return r;
            }
        };
    let request = HttpRequest {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query(),
        headers: &headers,
        body: &bytes,
    };
    match http::to_request(&request, token.as_bytes()) {
        Ok(request) => {
            let response = ask(to_main, request).await;
            let (status, body) = http::answer(&response);
            json(status, body)
        }
        Err(e) => refusal(&e),
    }
}

fn too_large() -> HttpResp<Full<Bytes>> {
    let mut r = refusal(&HttpError::too_large());
    // The rest of the body is not read: the connection cannot carry another request.
    close(&mut r);
    r
}

fn close(r: &mut HttpResp<Full<Bytes>>) {
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
}

fn refusal(e: &HttpError) -> HttpResp<Full<Bytes>> {
    let mut r = json(e.status, e.body());
    if e.status == 401 {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    if let Some(allow) = e.allow {
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allow));
    }
    r
}

fn json(status: u16, body: Vec<u8>) -> HttpResp<Full<Bytes>> {
    let mut r = HttpResp::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

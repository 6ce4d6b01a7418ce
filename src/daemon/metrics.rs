//! Prometheus metrics over HTTP (`--metrics ADDR:PORT`, off by default).
//!
//! The node's counters live in the core as plain integers; at each scrape the main loop
//! copies them into a fresh prometheus-client registry and encodes it, so the packet path
//! never touches atomics or labels. The HTTP side is a minimal HTTP/1.1 responder: one
//! bounded request per connection, `GET /metrics` only.

use std::net::SocketAddr;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::control::Pending;
use crate::control::Request;

type Labels = Vec<(String, String)>;

fn owned(labels: &[(&str, &str)]) -> Labels {
    labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Builds the metric families one scrape at a time.
pub struct Scrape {
    registry: Registry,
}

impl Default for Scrape {
    fn default() -> Self {
        Self::new()
    }
}

impl Scrape {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ddhcp");
        registry.register(
            "build",
            "Version of this daemon",
            Info::new(vec![(
                "version".to_string(),
                env!("CARGO_PKG_VERSION").to_string(),
            )]),
        );
        Scrape { registry }
    }

    /// A counter family with one label; `values` are `(label value, count)`.
    pub fn counters(&mut self, name: &str, help: &str, label: &str, values: &[(&str, u64)]) {
        let rows: Vec<_> = values
            .iter()
            .map(|(v, n)| (vec![(label, *v)], *n))
            .collect();
        self.counter_rows(name, help, &rows);
    }

    /// A counter family whose rows carry label sets of their own (per-pool rows carry
    /// `pool`, node-wide ones do not).
    pub fn counter_rows(&mut self, name: &str, help: &str, rows: &[(Vec<(&str, &str)>, u64)]) {
        let family = Family::<Labels, Counter>::default();
        for (labels, n) in rows {
            family.get_or_create(&owned(labels)).inc_by(*n);
        }
        self.registry.register(name, help, family);
    }

    pub fn counter(&mut self, name: &str, help: &str, n: u64) {
        let c = Counter::<u64>::default();
        c.inc_by(n);
        self.registry.register(name, help, c);
    }

    pub fn gauges(&mut self, name: &str, help: &str, label: &str, values: &[(&str, i64)]) {
        let rows: Vec<_> = values
            .iter()
            .map(|(v, n)| (vec![(label, *v)], *n))
            .collect();
        self.gauge_rows(name, help, &rows);
    }

    pub fn gauge_rows(&mut self, name: &str, help: &str, rows: &[(Vec<(&str, &str)>, i64)]) {
        let family = Family::<Labels, Gauge>::default();
        for (labels, n) in rows {
            family.get_or_create(&owned(labels)).set(*n);
        }
        self.registry.register(name, help, family);
    }

    pub fn gauge(&mut self, name: &str, help: &str, n: i64) {
        let g = Gauge::<i64>::default();
        g.set(n);
        self.registry.register(name, help, g);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

const MAX_HEAD: usize = 8192;
/// Scrapes served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 16;
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves scrapes until the listener fails; the text comes from the main loop.
pub async fn serve(listener: TcpListener, to_main: mpsc::Sender<Pending>) {
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let to_main = to_main.clone();
        tokio::spawn(async move {
            if let Err(e) = tokio::time::timeout(IO_TIMEOUT * 2, scrape(stream, to_main)).await {
                debug!(%peer, error = %e, "metrics connection timed out");
            }
            drop(permit);
        });
    }
}

async fn scrape(mut stream: TcpStream, to_main: mpsc::Sender<Pending>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
        match tokio::time::timeout(IO_TIMEOUT, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => head.extend_from_slice(&buf[..n]),
        }
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (status, body) = match (parts.next(), parts.next()) {
        (Some("GET"), Some("/metrics")) => {
            let (reply, answer) = oneshot::channel();
            let text = if to_main
                .send(Pending {
                    request: Request::Metrics,
                    reply,
                })
                .await
                .is_ok()
            {
                answer
                    .await
                    .ok()
                    .and_then(|r| r.result)
                    .and_then(|v| v["text"].as_str().map(str::to_string))
            } else {
                None
            };
            match text {
                Some(t) => ("200 OK", t),
                None => ("503 Service Unavailable", "shutting down\n".to_string()),
            }
        }
        (Some("GET"), Some(_)) => ("404 Not Found", "try /metrics\n".to_string()),
        _ => ("400 Bad Request", "bad request\n".to_string()),
    };
    // prometheus-client writes OpenMetrics (info metrics, `# EOF`); declaring the classic
    // text format would make Prometheus reject the scrape.
    let content_type = if status.starts_with("200") {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Binds the metrics listener; the address was validated at start-up.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

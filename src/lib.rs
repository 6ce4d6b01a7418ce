//! ddhcp: a leaderless IPv4 address allocation daemon, wire-compatible with ddhcpd.
//!
//! The protocol lives in a deterministic core ([`node`], [`blocks`], [`wire`]) that takes
//! inputs and returns outputs without touching sockets or clocks; [`daemon`] is the thin tokio
//! shell around it. See `docs/architecture.md`.

pub mod api;
pub mod auth;
pub mod blocks;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dhcp;
pub mod hash;
/// The HTTP JSON API's routing, as pure functions (the server is `daemon::api`).
#[cfg(feature = "api")]
pub mod http;
pub mod local;
pub mod node;
pub mod persist;
pub mod pool;
pub mod range;
pub mod replica;
pub mod stats;
pub mod store;
#[doc(hidden)]
pub mod testing;
pub mod time;
pub mod wire;

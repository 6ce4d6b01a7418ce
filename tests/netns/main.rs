//! The network-namespace tests: real daemons, DHCP clients, the C ddhcpd and the kernel,
//! in namespaces of their own, in one test binary (linked once). Most take
//! `common::daemon::serial()`: one at a time, their timers are short.
//!
//! Run one group by its module: `cargo test --test netns -- interop::`.

#[path = "../common/mod.rs"]
mod common;

mod api;
mod audit;
mod auth;
mod blocks;
mod conflict;
mod control;
mod dhcp;
mod hook;
mod host;
mod host_sockets;
mod interop;
mod local;
mod metrics;
mod options;
mod pools;
mod replica;
mod restart;

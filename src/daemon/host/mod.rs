//! The host side of local address mode (issue 10): what the deterministic core cannot do
//! itself and must ask the shell, kept in small modules so that the simulator can put fakes
//! in their place.
//!
//! * [`sockets`]: which of our addresses local sockets use (sock_diag, `/proc` as fallback).
//! * [`probe`]: two-way reachability from a given source address (ICMP echo, UDP, TCP).

pub mod probe;
pub mod sockets;

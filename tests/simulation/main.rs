//! The simulator's properties (docs/simulation.md), over many seeds (`SIM_SEEDS`), in one
//! test binary. Run one group by its module:
//! `cargo test --release --test simulation -- mixed:: --nocapture`.

#[path = "../sim/mod.rs"]
mod sim;

mod auth;
mod consensus;
mod local;
mod mixed;
mod pools;
mod replica;

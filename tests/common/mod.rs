//! Shared helpers of the integration tests.

// Helpers of tests that drive real processes on real clocks.
#![allow(clippy::disallowed_methods)]

pub mod daemon;
pub mod netns;

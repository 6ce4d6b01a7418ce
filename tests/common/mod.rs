//! Shared helpers of the integration tests.

pub mod daemon;
pub mod netns;

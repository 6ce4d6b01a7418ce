//! Monotonic time as the deterministic core sees it.
//!
//! The core never reads a clock: the shell (or the simulator) passes "now" in. Using our own
//! type instead of `std::time::Instant` lets the simulator create instants freely and keeps
//! wall-clock steps (NTP on routers without an RTC) from ever reaching protocol timers, which
//! the C daemon's use of `time()` suffers from (reference §3.14.9).

use std::fmt;
use std::ops::{Add, Sub};
use std::time::Duration;

/// Milliseconds since an arbitrary origin chosen by whoever drives the core.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant(u64);

impl Instant {
    /// The origin; the simulator starts here, the daemon maps its start-up to it.
    pub const ZERO: Instant = Instant(0);

    pub const fn from_millis(ms: u64) -> Self {
        Instant(ms)
    }

    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// Time elapsed since `earlier`, zero if `earlier` is in the future.
    pub fn saturating_since(self, earlier: Instant) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    /// Time left until `later`, zero if it has passed.
    pub fn until(self, later: Instant) -> Duration {
        later.saturating_since(self)
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        Instant(
            self.0
                .saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        )
    }
}

impl Sub<Duration> for Instant {
    type Output = Instant;
    fn sub(self, d: Duration) -> Instant {
        Instant(
            self.0
                .saturating_sub(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        )
    }
}

impl fmt::Debug for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t+{}.{:03}s", self.0 / 1000, self.0 % 1000)
    }
}

//! The main loop's one timer, a `timerfd` in the reactor.
//!
//! tokio's timer wheel wakes a sleeping runtime at the boundary of the wheel slot that
//! holds the deadline (4.096 s, then 64 ms, then 1 ms slots), so a deadline 7 s away
//! costs three wake-ups where it needs one. On a router the idle wake-ups are the cost
//! (docs/footprint.md): a timerfd armed at the deadline itself wakes exactly once.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use tokio::io::unix::AsyncFd;

pub struct Alarm {
    fd: AsyncFd<OwnedFd>,
}

impl Alarm {
    pub fn new() -> io::Result<Alarm> {
        // SAFETY: plain system call; the descriptor is owned below.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: the descriptor is owned by the AsyncFd and closed only when it is.
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }?;
        Ok(Alarm { fd })
    }

    /// Arms the alarm `after` from now (replacing any earlier setting); a zero or past
    /// deadline fires at once.
    pub fn set(&self, after: Duration) -> io::Result<()> {
        // A zero it_value disarms a timerfd: the soonest is one nanosecond.
        let after = after.max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            // time_t and c_long are 32 bits on some targets: 68 years is far enough.
            it_value: libc::timespec {
                tv_sec: after.as_secs().min(i32::MAX as u64) as _,
                tv_nsec: after.subsec_nanos() as _,
            },
        };
        // SAFETY: a valid timerfd and a valid itimerspec; the old value is not asked for.
        let r =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits until the alarm fires. Cancel-safe: an expiry not yet read stays readable.
    pub async fn fired(&self) {
        loop {
            let Ok(mut guard) = self.fd.readable().await else {
                // The reactor is gone (shutting down): never fire.
                std::future::pending::<()>().await;
                return;
            };
            let mut count = [0u8; 8];
            // SAFETY: reads 8 bytes into a buffer of 8 from a descriptor we own.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    count.as_mut_ptr().cast::<libc::c_void>(),
                    count.len(),
                )
            };
            // Not readable until it fires again (edge-triggered: clear, or spin).
            guard.clear_ready();
            // Otherwise EAGAIN: re-armed since it became readable, which clears it.
            if n == 8 {
                return;
            }
        }
    }
}

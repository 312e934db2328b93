//! Time, injectable so that expiry, renewal and the circuit breaker can be tested without sleeping.
//!
//! One [`Clock`] gives both readings sessile needs: wall-clock milliseconds for deadlines that are
//! stored (every store, Redis's `PEXPIREAT` included, understands them) and a monotonic
//! [`Instant`] for durations measured in memory (the circuit breaker's windows and waits). A
//! [`ManualClock`] moves both together, so a test injects one clock, once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub type UnixMillis = u64;

/// A source of time.
pub trait Clock: Send + Sync + 'static {
    /// Now, in milliseconds since the Unix epoch.
    fn now_ms(&self) -> UnixMillis;

    /// Now, on a clock that never goes backwards.
    fn instant(&self) -> Instant;
}

/// The system's clocks.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> UnixMillis {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as UnixMillis)
    }

    fn instant(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told to: for tests of expiry, renewal and the circuit breaker.
///
/// Its wall-clock and monotonic readings move together: [`advance`](Self::advance) moves both.
#[derive(Debug)]
pub struct ManualClock {
    start_ms: UnixMillis,
    base: Instant,
    offset_ns: AtomicU64,
}

impl ManualClock {
    /// A clock reading `start` milliseconds since the epoch.
    pub fn new(start: UnixMillis) -> Self {
        Self {
            start_ms: start,
            base: Instant::now(),
            offset_ns: AtomicU64::new(0),
        }
    }

    /// A clock starting at the current system time.
    pub fn starting_now() -> Self {
        Self::new(SystemClock.now_ms())
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let ns = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.offset_ns.fetch_add(ns, Ordering::SeqCst);
    }

    fn offset(&self) -> Duration {
        Duration::from_nanos(self.offset_ns.load(Ordering::SeqCst))
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> UnixMillis {
        self.start_ms + self.offset().as_millis() as UnixMillis
    }

    fn instant(&self) -> Instant {
        self.base + self.offset()
    }
}

impl<C: Clock + ?Sized> Clock for std::sync::Arc<C> {
    fn now_ms(&self) -> UnixMillis {
        (**self).now_ms()
    }

    fn instant(&self) -> Instant {
        (**self).instant()
    }
}

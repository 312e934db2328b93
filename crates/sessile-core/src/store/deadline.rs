//! The deadline of the store calls a caller makes: set by the session layer around each call, read
//! by a store that bounds its own work by it.

use std::future::Future;
use std::time::{Duration, Instant};

tokio::task_local! {
    static CURRENT: Deadline;
}

/// When the store calls made within [`scope`](Self::scope) must have answered, on tokio's clock
/// (which is the system's monotonic clock unless a test pauses it).
///
/// The session layer runs every store call within one. A store that
/// [keeps deadlines](super::SessionStore::keeps_deadlines) reads it with
/// [`current`](Self::current) and answers [`StoreError::Timeout`](super::StoreError::Timeout) by
/// then; the Redis store hands the time left to fred as each command's timeout, so that a command
/// still queued when it passes (during a reconnect, say) is dropped rather than sent later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    at: Instant,
    budget: Duration,
}

impl Deadline {
    /// `budget` from `start`.
    pub fn starting(start: Instant, budget: Duration) -> Self {
        Self {
            at: start + budget,
            budget,
        }
    }

    /// `budget` from now.
    pub fn after(budget: Duration) -> Self {
        Self::starting(now(), budget)
    }

    /// The instant by which the calls must have answered.
    pub fn at(&self) -> Instant {
        self.at
    }

    /// How long the calls were given in all (what a timeout error reports).
    pub fn budget(&self) -> Duration {
        self.budget
    }

    /// The time left; zero once the deadline has passed.
    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(now())
    }

    /// Runs `future` with this deadline current (for every poll, on whichever thread).
    pub fn scope<F: Future>(self, future: F) -> impl Future<Output = F::Output> {
        CURRENT.scope(self, future)
    }

    /// The deadline of the innermost [`scope`](Self::scope) being run, if any.
    pub fn current() -> Option<Self> {
        CURRENT.try_with(|d| *d).ok()
    }
}

/// Now on tokio's clock, which a test with paused time moves (the clock of the timers a store
/// sets from the time left: fred's command timeouts); the system's monotonic clock otherwise.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_scope_makes_its_deadline_current_and_nests() {
        assert_eq!(Deadline::current(), None);
        let outer = Deadline::after(Duration::from_secs(5));
        let inner = Deadline::after(Duration::from_millis(5));
        outer
            .scope(async move {
                assert_eq!(Deadline::current(), Some(outer));
                // Across an await point, and in a scope within it.
                tokio::task::yield_now().await;
                inner
                    .scope(async move { assert_eq!(Deadline::current(), Some(inner)) })
                    .await;
                assert_eq!(Deadline::current(), Some(outer));
            })
            .await;
        assert_eq!(Deadline::current(), None);
        assert!(inner.remaining() <= Duration::from_millis(5));
    }
}

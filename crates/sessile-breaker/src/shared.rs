//! A breaker shared between tasks: the state machine behind a mutex, a clock, and an observer.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sessile_core::clock::{Clock, SystemClock};

use crate::future::Guarded;
use crate::machine::{Breaker, Permit, Rejected, State, Transition};
use crate::{Config, ConfigError};

/// The `sessile_breaker_state` gauge's value: 0 closed, 1 half-open, 2 open.
fn state_level(state: State) -> f64 {
    match state {
        State::Closed | State::ForcedClosed => 0.0,
        State::HalfOpen => 1.0,
        State::Open | State::ForcedOpen => 2.0,
    }
}

/// Told about what a breaker does. Every method has a no-op default; `()` observes nothing.
/// Calls happen after the breaker's lock is released, so an observer may take its time.
pub trait Observer: Send + Sync + 'static {
    /// The breaker changed state.
    fn on_transition(&self, _breaker: &str, _transition: Transition) {}
    /// The breaker was built, in `state` (closed): lets a gauge show it before any transition.
    fn on_created(&self, _breaker: &str, _state: State) {}
    /// A call finished.
    fn on_call(&self, _breaker: &str, _failed: bool, _elapsed: Duration) {}
    /// A call was rejected.
    fn on_rejected(&self, _breaker: &str, _rejected: Rejected) {}
}

impl Observer for () {}

/// Reports through the `metrics` facade and `tracing`:
///
/// * `sessile_breaker_state{breaker}`: 0 closed, 1 half-open, 2 open (forced states count as
///   open/closed);
/// * `sessile_breaker_transitions_total{breaker, from, to}`;
/// * `sessile_breaker_calls_total{breaker, outcome}` and `sessile_breaker_rejected_total{breaker}`;
/// * a `warn` event when a breaker opens, `info` when it closes.
#[derive(Debug, Clone, Copy, Default)]
pub struct MetricsObserver;

impl Observer for MetricsObserver {
    fn on_created(&self, breaker: &str, state: State) {
        metrics::gauge!("sessile_breaker_state", "breaker" => breaker.to_owned())
            .set(state_level(state));
    }

    fn on_transition(&self, breaker: &str, t: Transition) {
        metrics::gauge!("sessile_breaker_state", "breaker" => breaker.to_owned())
            .set(state_level(t.to));
        metrics::counter!(
            "sessile_breaker_transitions_total",
            "breaker" => breaker.to_owned(),
            "from" => t.from.as_str(),
            "to" => t.to.as_str()
        )
        .increment(1);
        match t.to {
            State::Open | State::ForcedOpen => {
                tracing::warn!(
                    breaker,
                    from = t.from.as_str(),
                    to = t.to.as_str(),
                    "circuit breaker opened"
                );
            }
            _ => tracing::info!(
                breaker,
                from = t.from.as_str(),
                to = t.to.as_str(),
                "circuit breaker changed state"
            ),
        }
    }

    fn on_call(&self, breaker: &str, failed: bool, _elapsed: Duration) {
        let outcome = if failed { "failure" } else { "success" };
        metrics::counter!("sessile_breaker_calls_total", "breaker" => breaker.to_owned(), "outcome" => outcome)
            .increment(1);
    }

    fn on_rejected(&self, breaker: &str, _rejected: Rejected) {
        metrics::counter!("sessile_breaker_rejected_total", "breaker" => breaker.to_owned())
            .increment(1);
    }
}

/// A breaker that many tasks share; clones share it too. This is also the operator's handle:
/// read the [`state`](Self::state), [`force_open`](Self::force_open),
/// [`force_closed`](Self::force_closed), [`reset`](Self::reset).
#[derive(Clone)]
pub struct SharedBreaker {
    inner: Arc<Inner>,
}

struct Inner {
    name: Box<str>,
    // A std mutex: the critical section is a few comparisons and never awaits.
    machine: Mutex<Breaker>,
    clock: Arc<dyn Clock>,
    origin: Instant,
    observer: Arc<dyn Observer>,
}

impl std::fmt::Debug for SharedBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedBreaker")
            .field("name", &self.inner.name)
            .field("state", &self.state())
            .finish()
    }
}

/// Configures a [`SharedBreaker`].
#[must_use]
pub struct SharedBreakerBuilder {
    name: String,
    config: Config,
    clock: Arc<dyn Clock>,
    observer: Arc<dyn Observer>,
    seed: Option<u64>,
}

impl SharedBreakerBuilder {
    /// Settings (default [`Config::default`]).
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }
    /// Clock (default [`SystemClock`]).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }
    /// Observer (default [`MetricsObserver`]).
    pub fn observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = observer;
        self
    }
    /// Jitter seed (default: from the clock and the name, so breakers differ).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }
    /// Builds the breaker, closed.
    pub fn build(self) -> Result<SharedBreaker, ConfigError> {
        let seed = self.seed.unwrap_or_else(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            self.name
                .bytes()
                .fold(t, |h, b| h.rotate_left(5) ^ u64::from(b))
        });
        let origin = self.clock.instant();
        let breaker = SharedBreaker {
            inner: Arc::new(Inner {
                machine: Mutex::new(Breaker::new(self.config, seed)?),
                name: self.name.into(),
                clock: self.clock,
                origin,
                observer: self.observer,
            }),
        };
        let inner = &breaker.inner;
        inner.observer.on_created(&inner.name, breaker.state());
        Ok(breaker)
    }
}

impl SharedBreaker {
    /// Starts configuring a breaker called `name` (used in metrics and logs).
    pub fn builder(name: impl Into<String>) -> SharedBreakerBuilder {
        SharedBreakerBuilder {
            name: name.into(),
            config: Config::default(),
            clock: Arc::new(SystemClock),
            observer: Arc::new(MetricsObserver),
            seed: None,
        }
    }

    /// The breaker's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    fn now(&self) -> Duration {
        self.inner
            .clock
            .instant()
            .saturating_duration_since(self.inner.origin)
    }

    fn machine(&self) -> MutexGuard<'_, Breaker> {
        // Every method of `Breaker` leaves it consistent before it could panic.
        self.inner.machine.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self, t: Option<Transition>) {
        if let Some(t) = t {
            self.inner.observer.on_transition(&self.inner.name, t);
        }
    }

    /// Asks to make a call: a [`Guard`] that records the call's outcome, and settles it if the
    /// call is dropped first (see [`Breaker::abandon`](crate::Breaker::abandon)), so a permit can
    /// never leak.
    pub fn enter(&self) -> Result<Guard, Rejected> {
        self.acquire().map(|permit| Guard {
            breaker: self.clone(),
            permit: Some(permit),
        })
    }

    /// Runs `future` under a permit, classifying its result with `classifier`; rejected without
    /// creating the future when the breaker is open.
    pub fn call<F, T, E, C>(
        &self,
        future: impl FnOnce() -> F,
        classifier: C,
    ) -> Result<Guarded<F, C>, Rejected>
    where
        F: std::future::Future<Output = Result<T, E>>,
        C: crate::Classify<T, E>,
    {
        let guard = self.enter()?;
        Ok(Guarded::new(future(), guard, classifier))
    }

    /// Asks to make a call. The permit must be handed back with [`record`](Self::record) or
    /// [`abandon`](Self::abandon); [`enter`](Self::enter) does that by itself.
    pub fn acquire(&self) -> Result<Permit, Rejected> {
        let now = self.now();
        let (result, t) = self.machine().try_acquire(now);
        self.notify(t);
        if let Err(r) = result {
            self.inner.observer.on_rejected(&self.inner.name, r);
        }
        result
    }

    /// Records a call's outcome.
    pub fn record(&self, permit: Permit, failed: bool) {
        let now = self.now();
        let t = self.machine().record(permit, failed, now);
        let elapsed = now.saturating_sub(permit.started);
        self.inner
            .observer
            .on_call(&self.inner.name, failed, elapsed);
        self.notify(t);
    }

    /// Gives back the permit of a call that ended without an outcome.
    pub fn abandon(&self, permit: Permit) {
        let now = self.now();
        let t = self.machine().abandon(permit, now);
        self.notify(t);
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.machine().state()
    }

    /// Holds the breaker open.
    pub fn force_open(&self) {
        let t = self.machine().force_open();
        self.notify(t);
    }

    /// Holds the breaker closed.
    pub fn force_closed(&self) {
        let t = self.machine().force_closed();
        self.notify(t);
    }

    /// Back to automatic, closed, with an empty window.
    pub fn reset(&self) {
        let t = self.machine().reset();
        self.notify(t);
    }
}

/// A permit in use: record the call's outcome with [`record`](Self::record); dropped without it
/// (the caller's future was dropped: a client that went away, an outer timeout), it gives the
/// permit back through [`SharedBreaker::abandon`].
#[must_use = "a guard settles its permit when dropped; record the outcome first"]
pub struct Guard {
    breaker: SharedBreaker,
    permit: Option<Permit>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("breaker", &self.breaker.inner.name)
            .finish_non_exhaustive()
    }
}

impl Guard {
    /// Records the call's outcome.
    pub fn record(mut self, failed: bool) {
        if let Some(permit) = self.permit.take() {
            self.breaker.record(permit, failed);
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.breaker.abandon(permit);
        }
    }
}

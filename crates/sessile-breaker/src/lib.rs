//! A circuit breaker for tower services, and for anything else.
//!
//! The state machine ([`Breaker`]) is plain data with time passed in: closed, open, half-open
//! (plus forced states for operators); a sliding window by call count or time buckets with memory
//! fixed at construction; failure-rate and slow-call-rate thresholds; a minimum number of calls;
//! a limited number of half-open probes; an open wait that grows exponentially, with jitter,
//! while the backend keeps failing.
//!
//! [`SharedBreaker`] puts it behind a mutex with a [`Clock`] (sessile's one clock, from
//! `sessile-core`: a test's [`ManualClock`] drives sessions and breaker alike) and an [`Observer`] (the default,
//! [`MetricsObserver`], reports through `metrics` and `tracing`). It is also the operator's
//! handle. [`CircuitBreakerLayer`] puts it around any tower service.
//!
//! ```
//! use std::time::Duration;
//! use sessile_breaker::{CircuitBreakerLayer, Config, SharedBreaker, Window};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let breaker = SharedBreaker::builder("backend")
//!     .config(Config {
//!         window: Window::Time { buckets: 10, bucket: Duration::from_secs(1) },
//!         ..Config::default()
//!     })
//!     .build()
//!     .expect("valid settings");
//! let svc = ServiceBuilder::new()
//!     .layer(CircuitBreakerLayer::new(breaker.clone()))
//!     .service(service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x * 2) }));
//! assert_eq!(svc.oneshot(21).await.expect("closed breaker lets it through"), 42);
//! # }
//! ```
//!
//! An open breaker rejects in `call` with [`BreakerError::Rejected`], never by withholding
//! readiness: axum treats services as always ready.

mod classify;
mod config;
mod future;
mod layer;
mod machine;
mod service;
mod shared;
mod window;

pub use classify::{Classify, ErrorIsFailure};
pub use config::{
    Config, ConfigError, DEFAULT_BACKOFF, DEFAULT_FAILURE_RATE, DEFAULT_HALF_OPEN_PROBES,
    DEFAULT_JITTER, DEFAULT_MAX_OPEN_WAIT, DEFAULT_MINIMUM_CALLS, DEFAULT_OPEN_WAIT,
    DEFAULT_PROBE_TIMEOUT, DEFAULT_SLOW_CALL_DURATION, DEFAULT_SLOW_CALL_RATE,
    DEFAULT_WINDOW_CALLS, MAX_WAIT, Window,
};
pub use future::{Guarded, ResponseFuture};
pub use layer::CircuitBreakerLayer;
pub use machine::{Breaker, Permit, Rejected, State, Transition};
pub use service::CircuitBreaker;
pub use sessile_core::clock::{Clock, ManualClock, SystemClock};
pub use shared::{Guard, MetricsObserver, Observer, SharedBreaker, SharedBreakerBuilder};
pub use window::Totals;

/// The error of a [`CircuitBreaker`] service: rejected by the breaker, or the inner service's own.
#[derive(Debug, thiserror::Error)]
pub enum BreakerError<E> {
    /// The breaker is open; the inner service was not called.
    #[error(transparent)]
    Rejected(Rejected),
    /// The inner service failed.
    #[error("the service behind the circuit breaker failed")]
    Inner(#[source] E),
}

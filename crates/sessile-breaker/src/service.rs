use std::task::{Context, Poll};

use tower_service::Service;

use crate::future::ResponseFuture;
use crate::{BreakerError, Classify, SharedBreaker};

/// A service behind a circuit breaker. See [`CircuitBreakerLayer`](crate::CircuitBreakerLayer).
///
/// An open breaker rejects in `call`, with [`BreakerError::Rejected`], never in `poll_ready`:
/// axum and most tower stacks treat services as always ready, and a rejection is an answer the
/// caller can act on at once.
#[derive(Debug, Clone)]
pub struct CircuitBreaker<S, C> {
    inner: S,
    breaker: SharedBreaker,
    classifier: C,
}

impl<S, C> CircuitBreaker<S, C> {
    /// Wraps `inner`.
    pub fn new(inner: S, breaker: SharedBreaker, classifier: C) -> Self {
        Self {
            inner,
            breaker,
            classifier,
        }
    }

    /// The shared breaker.
    pub fn breaker(&self) -> &SharedBreaker {
        &self.breaker
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, C, Req> Service<Req> for CircuitBreaker<S, C>
where
    S: Service<Req>,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BreakerError<S::Error>;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(BreakerError::Inner)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let classifier = self.classifier.clone();
        match self.breaker.call(|| self.inner.call(req), classifier) {
            Ok(guarded) => ResponseFuture::running(guarded),
            Err(rejected) => ResponseFuture::rejected(rejected),
        }
    }
}

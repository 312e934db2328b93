use tower_layer::Layer;

use crate::{CircuitBreaker, ErrorIsFailure, SharedBreaker};

/// Wraps a service in a circuit breaker.
///
/// Clones share one breaker, so every copy of the service (axum clones services per request)
/// counts into the same window.
#[derive(Debug, Clone)]
pub struct CircuitBreakerLayer<C = ErrorIsFailure> {
    breaker: SharedBreaker,
    classifier: C,
}

impl CircuitBreakerLayer {
    /// A layer around `breaker` that counts every `Err` as a failure.
    pub fn new(breaker: SharedBreaker) -> Self {
        Self {
            breaker,
            classifier: ErrorIsFailure,
        }
    }
}

impl<C> CircuitBreakerLayer<C> {
    /// Uses another failure classifier (a closure `Fn(&Result<T, E>) -> bool` works).
    pub fn with_classifier<C2>(self, classifier: C2) -> CircuitBreakerLayer<C2> {
        CircuitBreakerLayer {
            breaker: self.breaker,
            classifier,
        }
    }

    /// The shared breaker: read its state or force it from here.
    pub fn breaker(&self) -> &SharedBreaker {
        &self.breaker
    }
}

impl<S, C: Clone> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreaker<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker::new(inner, self.breaker.clone(), self.classifier.clone())
    }
}

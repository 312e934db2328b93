use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use crate::machine::Rejected;
use crate::shared::Guard;
use crate::{BreakerError, Classify};

pin_project! {
    /// A future run under a breaker [`Guard`]: when it completes, its result is classified and
    /// recorded; if it is dropped first, the guard gives the permit back. The one implementation
    /// of acquire / call / classify / record, shared by [`CircuitBreaker`](crate::CircuitBreaker)
    /// and any caller of [`SharedBreaker::call`](crate::SharedBreaker::call).
    pub struct Guarded<F, C> {
        #[pin]
        future: F,
        guard: Option<Guard>,
        classifier: C,
    }
}

impl<F, C> Guarded<F, C> {
    /// Runs `future` under `guard`.
    pub fn new(future: F, guard: Guard, classifier: C) -> Self {
        Self {
            future,
            guard: Some(guard),
            classifier,
        }
    }
}

impl<F, C, T, E> Future for Guarded<F, C>
where
    F: Future<Output = Result<T, E>>,
    C: Classify<T, E>,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.future.poll(cx));
        if let Some(guard) = this.guard.take() {
            guard.record(this.classifier.is_failure(&result));
        }
        Poll::Ready(result)
    }
}

pin_project! {
    /// Response future of [`CircuitBreaker`](crate::CircuitBreaker).
    pub struct ResponseFuture<F, C> {
        #[pin]
        kind: Kind<F, C>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, C> {
        Rejected { rejected: Option<Rejected> },
        Running {
            #[pin]
            future: Guarded<F, C>,
        },
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn running(future: Guarded<F, C>) -> Self {
        Self {
            kind: Kind::Running { future },
        }
    }

    pub(crate) fn rejected(rejected: Rejected) -> Self {
        Self {
            kind: Kind::Rejected {
                rejected: Some(rejected),
            },
        }
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    C: Classify<T, E>,
{
    type Output = Result<T, BreakerError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Rejected { rejected } => Poll::Ready(Err(BreakerError::Rejected(
                rejected.take().expect("polled after completion"),
            ))),
            KindProj::Running { future } => {
                Poll::Ready(ready!(future.poll(cx)).map_err(BreakerError::Inner))
            }
        }
    }
}

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use crate::machine::{Permit, Rejected};
use crate::{BreakerError, Classify, SharedBreaker};

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
            future: F,
            permit: Option<Permit>,
            breaker: SharedBreaker,
            classifier: C,
        },
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn running(
        future: F,
        permit: Permit,
        breaker: SharedBreaker,
        classifier: C,
    ) -> Self {
        Self {
            kind: Kind::Running {
                future,
                permit: Some(permit),
                breaker,
                classifier,
            },
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
            KindProj::Running {
                future,
                permit,
                breaker,
                classifier,
            } => {
                let result = ready!(future.poll(cx));
                if let Some(permit) = permit.take() {
                    breaker.record(permit, classifier.is_failure(&result));
                }
                Poll::Ready(result.map_err(BreakerError::Inner))
            }
        }
    }
}

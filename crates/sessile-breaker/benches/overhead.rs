//! Overhead of the breaker per call in the closed state: the state machine alone, a tower service
//! with and without the layer, and two threads sharing one breaker. Two baselines measured in
//! the same run give the figures a scale that does not depend on the machine: one clock read and
//! one uncontended mutex lock/unlock (a call through the breaker does two of each).
#![allow(missing_docs)] // criterion's macros generate undocumented functions

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use sessile_breaker::{CircuitBreakerLayer, SharedBreaker};
use tower::{Layer, Service, service_fn};

fn breaker() -> SharedBreaker {
    SharedBreaker::builder("bench")
        .observer(Arc::new(()))
        .seed(1)
        .build()
        .expect("valid")
}

/// Calls an always-ready service and polls its future once (it completes at once).
fn call<S: Service<u64, Response = u64>>(svc: &mut S, x: u64) -> u64 {
    let mut cx = Context::from_waker(Waker::noop());
    let fut = pin!(svc.call(x));
    match fut.poll(&mut cx) {
        Poll::Ready(Ok(v)) => v,
        _ => unreachable!("the bench service is immediate and infallible"),
    }
}

fn closed(c: &mut Criterion) {
    c.bench_function("baseline/instant_now", |bench| {
        bench.iter(|| black_box(Instant::now()))
    });
    let m = std::sync::Mutex::new(0u64);
    c.bench_function("baseline/mutex_lock_unlock", |bench| {
        bench.iter(|| *m.lock().expect("lock") += 1);
    });

    let b = breaker();
    c.bench_function("closed/acquire_and_record", |bench| {
        bench.iter(|| {
            let permit = b.acquire().expect("closed");
            b.record(black_box(permit), false);
        });
    });

    let inner = service_fn(|x: u64| async move { Ok::<_, std::convert::Infallible>(x + 1) });
    let mut bare = inner;
    c.bench_function("tower/bare_service", |bench| {
        bench.iter(|| call(&mut bare, black_box(1)));
    });
    let mut wrapped = CircuitBreakerLayer::new(breaker()).layer(inner);
    c.bench_function("tower/with_breaker", |bench| {
        bench.iter(|| call(&mut wrapped, black_box(1)));
    });

    c.bench_function("closed/two_threads_one_breaker", |bench| {
        bench.iter_custom(|iters| {
            let b = breaker();
            let start = Instant::now();
            std::thread::scope(|s| {
                for _ in 0..2 {
                    let b = b.clone();
                    s.spawn(move || {
                        for _ in 0..iters {
                            let permit = b.acquire().expect("closed");
                            b.record(black_box(permit), false);
                        }
                    });
                }
            });
            // Time per call: both threads made `iters` calls in this wall time.
            start.elapsed() / 2
        });
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    targets = closed
}
criterion_main!(benches);

//! The breaker as a tower layer.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sessile_breaker::{
    BreakerError, CircuitBreakerLayer, Config, ManualClock, Observer, SharedBreaker, State,
    Transition, Window,
};
use tower::{Layer, Service, ServiceExt, service_fn};

#[derive(Default)]
struct Recorder(Mutex<Vec<Transition>>);

impl Observer for Recorder {
    fn on_transition(&self, _: &str, t: Transition) {
        self.0.lock().expect("lock").push(t);
    }
}

struct Fixture {
    breaker: SharedBreaker,
    clock: Arc<ManualClock>,
    calls: Arc<AtomicU32>,
    failing: Arc<AtomicBool>,
    seen: Arc<Recorder>,
}

fn fixture() -> Fixture {
    let clock = Arc::new(ManualClock::starting_now());
    let seen = Arc::new(Recorder::default());
    let breaker = SharedBreaker::builder("test")
        .config(Config {
            window: Window::Count(10),
            minimum_calls: 5,
            half_open_probes: 2,
            jitter: 0.0,
            ..Config::default()
        })
        .clock(clock.clone())
        .observer(seen.clone())
        .seed(7)
        .build()
        .expect("valid");
    Fixture {
        breaker,
        clock,
        calls: Arc::default(),
        failing: Arc::default(),
        seen,
    }
}

impl Fixture {
    fn service(
        &self,
    ) -> impl Service<u32, Response = u32, Error = BreakerError<std::io::Error>> + Clone {
        let (calls, failing) = (self.calls.clone(), self.failing.clone());
        let inner = service_fn(move |x: u32| {
            let (calls, failing) = (calls.clone(), failing.clone());
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                if failing.load(Ordering::SeqCst) {
                    Err(std::io::Error::other("backend down"))
                } else {
                    Ok(x)
                }
            }
        });
        CircuitBreakerLayer::new(self.breaker.clone()).layer(inner)
    }
}

#[tokio::test]
async fn open_breaker_rejects_in_call_without_calling_inner() {
    let f = fixture();
    let svc = f.service();
    f.failing.store(true, Ordering::SeqCst);
    for _ in 0..5 {
        let err = svc.clone().oneshot(1).await.expect_err("backend down");
        assert!(matches!(err, BreakerError::Inner(_)));
    }
    assert_eq!(f.breaker.state(), State::Open);
    let before = f.calls.load(Ordering::SeqCst);
    let mut ready = svc.clone();
    // Still ready: the breaker answers in `call`.
    std::future::poll_fn(|cx| ready.poll_ready(cx))
        .await
        .expect("ready while open");
    for _ in 0..20 {
        match ready.call(1).await {
            Err(BreakerError::Rejected(r)) => assert!(r.retry_after <= Duration::from_secs(1)),
            other => panic!("expected a rejection, got {other:?}"),
        }
    }
    assert_eq!(
        f.calls.load(Ordering::SeqCst),
        before,
        "inner never called while open"
    );
}

#[tokio::test]
async fn after_the_wait_probes_close_it_and_observers_see_every_step() {
    let f = fixture();
    let svc = f.service();
    f.failing.store(true, Ordering::SeqCst);
    for _ in 0..5 {
        let _ = svc.clone().oneshot(1).await;
    }
    f.failing.store(false, Ordering::SeqCst);
    f.clock.advance(Duration::from_millis(1_001));
    assert_eq!(svc.clone().oneshot(7).await.expect("probe"), 7);
    assert_eq!(f.breaker.state(), State::HalfOpen);
    assert_eq!(svc.clone().oneshot(8).await.expect("probe"), 8);
    assert_eq!(f.breaker.state(), State::Closed);
    let seen: Vec<_> = f
        .seen
        .0
        .lock()
        .expect("lock")
        .iter()
        .map(|t| t.to)
        .collect();
    assert_eq!(seen, vec![State::Open, State::HalfOpen, State::Closed]);
}

#[tokio::test]
async fn a_closure_decides_what_counts_as_failure() {
    let f = fixture();
    let inner = service_fn(|x: u32| async move {
        if x == 404 {
            Err(std::io::Error::from(std::io::ErrorKind::NotFound))
        } else {
            Ok(x)
        }
    });
    // "Not found" is an answer, not a broken backend.
    let svc = CircuitBreakerLayer::new(f.breaker.clone())
        .with_classifier(|r: &Result<u32, std::io::Error>| {
            r.as_ref()
                .is_err_and(|e| e.kind() != std::io::ErrorKind::NotFound)
        })
        .layer(inner);
    for _ in 0..50 {
        assert!(svc.clone().oneshot(404).await.is_err());
    }
    assert_eq!(f.breaker.state(), State::Closed);
}

#[tokio::test]
async fn operators_force_it_through_the_handle() {
    let f = fixture();
    let svc = f.service();
    f.breaker.force_open();
    assert!(matches!(
        svc.clone().oneshot(1).await,
        Err(BreakerError::Rejected(_))
    ));
    f.breaker.reset();
    assert_eq!(svc.clone().oneshot(1).await.expect("closed again"), 1);
}

/// A service whose calls never answer while `hang` is set.
fn hanging(
    f: &Fixture,
    hang: Arc<AtomicBool>,
) -> impl Service<u32, Response = u32, Error = BreakerError<std::io::Error>> + Clone {
    let calls = f.calls.clone();
    let inner = service_fn(move |x: u32| {
        let (calls, hang) = (calls.clone(), hang.clone());
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            if hang.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            Ok::<_, std::io::Error>(x)
        }
    });
    CircuitBreakerLayer::new(f.breaker.clone()).layer(inner)
}

#[tokio::test]
async fn dropping_every_half_open_probe_does_not_wedge_the_breaker() {
    // Before permits were guards, a probe whose future was dropped (its caller went away) kept
    // its half-open slot forever: with every probe dropped the breaker rejected every call until
    // an operator reset it.
    let f = fixture();
    let hang = Arc::new(AtomicBool::new(false));
    let svc = hanging(&f, hang.clone());
    f.breaker.force_open();
    f.breaker.reset();
    let failing = f.service();
    f.failing.store(true, Ordering::SeqCst);
    for _ in 0..5 {
        let _ = failing.clone().oneshot(1).await;
    }
    assert_eq!(f.breaker.state(), State::Open);
    f.clock.advance(Duration::from_millis(1_001));
    hang.store(true, Ordering::SeqCst);
    // Both probes start, hang, and are dropped by callers that give up.
    for _ in 0..2 {
        let probe = svc.clone().oneshot(1);
        assert!(
            tokio::time::timeout(Duration::from_millis(5), probe)
                .await
                .is_err(),
            "the probe hangs"
        );
    }
    assert_eq!(f.breaker.state(), State::HalfOpen);
    // The backend heals: the next calls are probes again, and close the breaker.
    hang.store(false, Ordering::SeqCst);
    assert_eq!(svc.clone().oneshot(7).await.expect("probe"), 7);
    assert_eq!(svc.clone().oneshot(8).await.expect("probe"), 8);
    assert_eq!(f.breaker.state(), State::Closed);
}

#[tokio::test]
async fn probes_that_never_answer_are_given_back_after_the_probe_timeout() {
    let f = fixture();
    let failing = f.service();
    f.failing.store(true, Ordering::SeqCst);
    for _ in 0..5 {
        let _ = failing.clone().oneshot(1).await;
    }
    f.clock.advance(Duration::from_millis(1_001));
    // Two probes are out and never answer (held, not dropped).
    let held: Vec<_> = (0..2)
        .map(|_| f.breaker.acquire().expect("a probe"))
        .collect();
    assert!(f.breaker.acquire().is_err(), "both slots taken");
    f.clock.advance(sessile_breaker::DEFAULT_PROBE_TIMEOUT);
    f.failing.store(false, Ordering::SeqCst);
    assert_eq!(failing.clone().oneshot(7).await.expect("probe"), 7);
    assert_eq!(failing.clone().oneshot(8).await.expect("probe"), 8);
    assert_eq!(f.breaker.state(), State::Closed);
    // A late answer from a given-back probe is harmless.
    for p in held {
        f.breaker.record(p, true);
    }
    assert_eq!(f.breaker.state(), State::Closed);
}

#[tokio::test]
async fn a_call_dropped_after_the_slow_threshold_counts_as_slow() {
    // An outer timeout that always fires first must not blind the breaker.
    let f = fixture();
    // Dropped fast: a client that went away says nothing about the backend.
    for _ in 0..20 {
        drop(f.breaker.enter().expect("closed"));
    }
    assert_eq!(f.breaker.state(), State::Closed);
    // Dropped after 300 ms (over the 250 ms slow threshold): the minimum of 5 calls, all slow.
    for _ in 0..5 {
        let guard = f.breaker.enter().expect("closed");
        f.clock.advance(Duration::from_millis(300));
        drop(guard);
    }
    assert_eq!(f.breaker.state(), State::Open, "5 slow calls of 5");
}

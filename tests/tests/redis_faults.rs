//! Fault injection against real `redis-server` processes: killed, frozen with SIGSTOP, restarted.
//! The session layer runs with its circuit breaker and a store deadline; these tests check that no
//! request outlives the deadline by more than a small margin, that an open breaker keeps every
//! request off Redis, that the breaker closes again by itself, and that no degraded request ever
//! changes a stored record.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::{get, post};
use http::{Method, StatusCode};
use sessile::breaker::{Config, Observer, SharedBreaker, State, Transition, Window};
use sessile::{DegradedMode, KeyRing, SaveError, Session, SessionManagerLayer, SessionStore};
use sessile_redis::RedisStore;
use sessile_tests::redis::RedisServer;
use sessile_tests::{Hook, Hooked, Reply, send};

const NAME: &str = "sid";
/// The layer's deadline per store call in these tests.
const DEADLINE: Duration = Duration::from_millis(200);
/// What a request may take beyond the deadline: the handler, the HTTP plumbing, and a debug
/// build's slowness on a loaded two-core machine.
const MARGIN: Duration = Duration::from_millis(300);
/// A permit granted just before the breaker opened may reach the store a moment after: on a
/// loaded two-core machine the thread can be descheduled between the two.
const GRACE: Duration = Duration::from_millis(50);

/// When each store call started: the calls that reached Redis.
#[derive(Default, Clone)]
struct Stamps(Arc<Mutex<Vec<Instant>>>);

impl Hook for Stamps {
    async fn before(&self, _op: &'static str) -> Result<(), sessile::StoreError> {
        self.0.lock().expect("lock").push(Instant::now());
        Ok(())
    }
}

#[derive(Default)]
struct Transitions(Mutex<Vec<(Instant, Transition)>>);

impl Observer for Transitions {
    fn on_transition(&self, _: &str, t: Transition) {
        self.0.lock().expect("lock").push((Instant::now(), t));
    }
}

impl Transitions {
    fn states(&self) -> Vec<State> {
        self.0
            .lock()
            .expect("lock")
            .iter()
            .map(|(_, t)| t.to)
            .collect()
    }
    fn first(&self, to: State) -> Option<Instant> {
        self.0
            .lock()
            .expect("lock")
            .iter()
            .find(|(_, t)| t.to == to)
            .map(|(at, _)| *at)
    }

    /// The periods the breaker was open, up to `end`.
    fn open_periods(&self, end: Instant) -> Vec<(Instant, Instant)> {
        let log = self.0.lock().expect("lock");
        log.iter()
            .enumerate()
            .filter(|(_, (_, t))| t.to == State::Open)
            .map(|(i, (at, _))| (*at, log.get(i + 1).map_or(end, |(next, _)| *next)))
            .collect()
    }
}

struct Rig {
    app: Router,
    store: RedisStore,
    breaker: SharedBreaker,
    seen: Arc<Transitions>,
    calls: Stamps,
}

async fn rig(server: &RedisServer) -> Rig {
    let store = RedisStore::builder(server.url())
        .command_timeout(Duration::from_millis(500))
        .connect()
        .await
        .expect("connect");
    let seen = Arc::new(Transitions::default());
    let breaker = SharedBreaker::builder("faults")
        .config(Config {
            window: Window::Count(20),
            minimum_calls: 10,
            half_open_probes: 2,
            open_wait: Duration::from_millis(500),
            max_open_wait: Duration::from_secs(2),
            ..Config::default()
        })
        .observer(seen.clone())
        .build()
        .expect("breaker");
    let calls = Stamps::default();
    let stamped = Hooked::with_hook(store.clone(), calls.clone());
    let layer = SessionManagerLayer::builder(stamped, KeyRing::new(1, &[5; 32]).expect("keys"))
        .cookie_name(NAME)
        .store_timeout(DEADLINE)
        .degraded_mode(DegradedMode::Ephemeral)
        .circuit_breaker(breaker.clone())
        .build()
        .expect("layer");
    let app = Router::new()
        .route(
            "/read",
            get(|s: Session| async move {
                let n: u64 = s.get("n").ok().flatten().unwrap_or(0);
                format!("{n} {}", if s.is_degraded() { "degraded" } else { "ok" })
            }),
        )
        .route(
            "/set/{n}",
            post(
                |s: Session, axum::extract::Path(n): axum::extract::Path<u64>| async move {
                    s.insert("n", &n)
                },
            ),
        )
        .layer(layer);
    Rig {
        app,
        store,
        breaker,
        seen,
        calls,
    }
}

impl Rig {
    async fn go(&self, method: Method, uri: &str, token: Option<&str>) -> Reply {
        let cookie = token.map(|t| format!("{NAME}={t}"));
        send(&self.app, method, uri, cookie.as_deref(), None).await
    }

    /// `n` sessions holding 1, 2, ... n.
    async fn sessions(&self, n: u64) -> Vec<String> {
        let mut tokens = Vec::new();
        for i in 1..=n {
            let r = self.go(Method::POST, &format!("/set/{i}"), None).await;
            tokens.push(r.cookie_value(NAME).expect("cookie"));
        }
        tokens
    }
}

struct Sample {
    at: Instant,
    latency: Duration,
    status: StatusCode,
}

/// Eight clients read their sessions in a loop for `total`; `fault` runs once after `fault_at`.
async fn load(
    rig: &Arc<Rig>,
    tokens: &[String],
    total: Duration,
    fault_at: Duration,
    fault: impl FnOnce(),
) -> Vec<Sample> {
    let start = Instant::now();
    let clients: Vec<_> = tokens
        .iter()
        .take(8)
        .cloned()
        .map(|token| {
            let rig = Arc::clone(rig);
            tokio::spawn(async move {
                let mut samples = Vec::new();
                // Bounded by time and by count.
                while start.elapsed() < total && samples.len() < 100_000 {
                    let at = Instant::now();
                    let r = rig.go(Method::GET, "/read", Some(&token)).await;
                    samples.push(Sample {
                        at,
                        latency: at.elapsed(),
                        status: r.status,
                    });
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                samples
            })
        })
        .collect();
    tokio::time::sleep(fault_at).await;
    fault();
    let mut all = Vec::new();
    for c in clients {
        all.extend(c.await.expect("client"));
    }
    all
}

/// The checks every outage must pass.
fn check_outage(rig: &Rig, samples: &[Sample]) {
    let worst = samples.iter().map(|s| s.latency).max().expect("samples");
    assert!(worst <= DEADLINE + MARGIN, "a request took {worst:?}");
    assert!(
        samples.iter().all(|s| s.status == StatusCode::OK),
        "ephemeral mode never fails"
    );
    // While the breaker is open, no store call starts: only half-open probes reach Redis, and
    // they start in half-open periods, which these are not.
    let end = Instant::now();
    let periods = rig.seen.open_periods(end);
    assert!(!periods.is_empty(), "the breaker opened");
    let calls = rig.calls.0.lock().expect("lock").clone();
    let during_open = calls
        .iter()
        .filter(|t| {
            periods
                .iter()
                .any(|(from, to)| **t > *from + GRACE && **t < *to)
        })
        .count();
    let open_time: Duration = periods
        .iter()
        .map(|(f, t)| t.saturating_duration_since(*f))
        .sum();
    let served_open = samples
        .iter()
        .filter(|s| periods.iter().any(|(from, to)| s.at > *from && s.at < *to))
        .count();
    eprintln!(
        "{} requests, worst {worst:?}; breaker open for {open_time:?} in {} periods, serving \
         {served_open} requests with {during_open} store calls; transitions {:?}",
        samples.len(),
        periods.len(),
        rig.seen.states()
    );
    assert_eq!(
        during_open, 0,
        "store calls started while the breaker was open"
    );
    assert!(
        served_open > 0,
        "requests were served while the breaker was open"
    );
}

/// Eight clients load the server's rig for 3 s; `fault` strikes the server after 500 ms; every
/// request must finish within its deadline and the open breaker must keep calls away.
async fn outage_under_load(server: &mut RedisServer, fault: impl FnOnce(&mut RedisServer)) {
    let rig = Arc::new(rig(server).await);
    let tokens = rig.sessions(8).await;
    let samples = load(
        &rig,
        &tokens,
        Duration::from_secs(3),
        Duration::from_millis(500),
        || fault(server),
    )
    .await;
    server.resume();
    check_outage(&rig, &samples);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_under_load_opens_the_breaker_and_no_request_hangs() {
    outage_under_load(&mut RedisServer::start(), RedisServer::kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_frozen_with_sigstop_opens_the_breaker_and_no_request_hangs() {
    outage_under_load(&mut RedisServer::start(), |s| s.pause()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_the_breaker_probes_and_closes_and_sessions_are_intact() {
    // Persistence on, so the restarted server has the data written before the outage.
    let mut server = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let rig = Arc::new(rig(&server).await);
    let tokens = rig.sessions(8).await;
    let before = records(&rig).await;
    let samples = load(
        &rig,
        &tokens,
        Duration::from_secs(2),
        Duration::from_millis(300),
        || {
            server.kill();
        },
    )
    .await;
    check_outage(&rig, &samples);

    server.restart();
    // Reads go on; within a bounded time the breaker half-opens, probes and closes.
    let deadline = Instant::now() + Duration::from_secs(15);
    while rig.breaker.state() != State::Closed || rig.seen.first(State::HalfOpen).is_none() {
        assert!(
            Instant::now() < deadline,
            "breaker did not close: {:?}",
            rig.seen.states()
        );
        rig.go(Method::GET, "/read", Some(&tokens[0])).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let states = rig.seen.states();
    let tail: Vec<_> = states.iter().rev().take(2).rev().copied().collect();
    assert_eq!(tail, vec![State::HalfOpen, State::Closed], "{states:?}");
    for (i, token) in tokens.iter().enumerate() {
        let r = rig.go(Method::GET, "/read", Some(token)).await;
        assert_eq!(r.body, format!("{} ok", i + 1));
    }
    assert_eq!(
        records(&rig).await,
        before,
        "every session survived the outage unchanged"
    );
}

/// Every session record in Redis, as loaded by the store: the ground truth.
async fn records(rig: &Rig) -> Vec<sessile::record::Record> {
    use fred::prelude::*;
    // After a restart, some pool clients may still be reconnecting.
    rig.store
        .pool()
        .wait_for_connect()
        .await
        .expect("pool reconnects");
    let keys: Vec<String> = rig
        .store
        .pool()
        .next()
        .custom(fred::cmd!("KEYS"), vec!["sessile:*:s:*"])
        .await
        .expect("keys");
    let mut out = Vec::new();
    for key in keys {
        let hex = key.rsplit(':').next().expect("id");
        let id = sessile::SessionId::from_hex(hex).expect("hex id");
        out.push(rig.store.load(id).await.expect("load").expect("present"));
    }
    out.sort_by_key(|r| r.id);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_degraded_request_ever_changes_a_stored_record() {
    let server = RedisServer::start();
    let rig = Arc::new(rig(&server).await);
    let tokens = rig.sessions(8).await;
    let before = records(&rig).await;
    server.pause();
    for (i, token) in tokens.iter().enumerate() {
        let r = rig
            .go(Method::POST, &format!("/set/{}", 100 + i), Some(token))
            .await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(
            matches!(
                r.save_failed.as_deref(),
                Some(SaveError::Degraded | SaveError::Store(_))
            ),
            "{:?}",
            r.save_failed
        );
        assert!(r.set_cookie(NAME).is_none(), "the cookie is never replaced");
    }
    // New visitors during the outage get no cookie pointing at nothing.
    let r = rig.go(Method::POST, "/set/7", None).await;
    assert!(r.set_cookie(NAME).is_none());
    server.resume();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = rig.go(Method::GET, "/read", Some(&tokens[0])).await;
        if r.body == "1 ok" {
            break;
        }
        assert!(Instant::now() < deadline, "no recovery: {}", r.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        records(&rig).await,
        before,
        "records are exactly as before the outage"
    );
}

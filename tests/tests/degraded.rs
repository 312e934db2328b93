//! The layer when the store cannot be reached: the breaker, the three degraded modes, and how
//! failed saves are reported. Faults are injected into a memory store; the same behaviour against
//! real Redis processes is in `sessile-redis`'s fault tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use http::{Method, StatusCode, header};
use sessile::breaker::{Config, ManualClock, SharedBreaker, State, Window};
use sessile::{DegradedMode, KeyRing, MemoryStore, SaveError, Session, SessionManagerLayer};
use sessile_tests::{CountingStore, FaultyStore, Reply, send};

const NAME: &str = "sid";

struct Fixture {
    app: Router,
    store: CountingStore<FaultyStore<MemoryStore>>,
    breaker: SharedBreaker,
    clock: Arc<ManualClock>,
    handled: Arc<AtomicU32>,
}

/// A breaker on a manual clock, without jitter, opening after `minimum_calls`.
fn breaker(
    clock: &Arc<ManualClock>,
    window: u32,
    minimum_calls: u32,
    probes: u32,
) -> SharedBreaker {
    SharedBreaker::builder("test_store")
        .config(Config {
            window: Window::Count(window),
            minimum_calls,
            half_open_probes: probes,
            jitter: 0.0,
            ..Config::default()
        })
        .clock(clock.clone())
        .seed(3)
        .build()
        .expect("breaker")
}

fn fixture(mode: DegradedMode) -> Fixture {
    let clock = Arc::new(ManualClock::starting_now());
    let breaker = breaker(&clock, 20, 5, 1);
    let store = CountingStore::new(FaultyStore::new(MemoryStore::new()));
    let layer =
        SessionManagerLayer::builder(store.clone(), KeyRing::new(1, &[8; 32]).expect("keys"))
            .cookie_name(NAME)
            .degraded_mode(mode)
            .circuit_breaker(breaker.clone())
            .build()
            .expect("layer");
    let handled = Arc::new(AtomicU32::new(0));
    let count = |h: &Arc<AtomicU32>| {
        let h = Arc::clone(h);
        move || {
            h.fetch_add(1, Ordering::SeqCst);
        }
    };
    let (on_read, on_write) = (count(&handled), count(&handled));
    let app = Router::new()
        .route(
            "/read",
            get(move |s: Session| async move {
                on_read();
                let name = s
                    .get::<String>("name")
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| "-".into());
                format!("{name} degraded={}", s.is_degraded())
            }),
        )
        .route(
            "/write",
            post(move |s: Session| async move {
                on_write();
                s.insert("name", "changed").map(|()| "ok")
            }),
        )
        .route(
            "/login",
            post(|s: Session| async move { s.insert("name", "ann") }),
        )
        .route("/logout", post(|s: Session| async move { s.destroy() }))
        .layer(layer);
    Fixture {
        app,
        store,
        breaker,
        clock,
        handled,
    }
}

impl Fixture {
    async fn go(&self, method: Method, uri: &str, token: Option<&str>) -> Reply {
        let cookie = token.map(|t| format!("{NAME}={t}"));
        send(&self.app, method, uri, cookie.as_deref(), None).await
    }

    async fn session(&self) -> String {
        self.go(Method::POST, "/login", None)
            .await
            .cookie_value(NAME)
            .expect("cookie")
    }

    fn outage(&self, on: bool) {
        self.store.inner().fail_loads(on);
        self.store.inner().fail_writes(on);
    }
}

#[tokio::test]
async fn fail_closed_answers_503_without_running_the_handler() {
    let f = fixture(DegradedMode::FailClosed);
    let token = f.session().await;
    f.outage(true);
    let r = f.go(Method::GET, "/read", Some(&token)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers.contains_key(header::RETRY_AFTER));
    assert!(r.set_cookie(NAME).is_none());
    assert_eq!(f.handled.load(Ordering::SeqCst), 0, "handler not run");
}

#[tokio::test]
async fn the_breaker_opens_and_then_the_store_is_not_called_until_it_probes() {
    let f = fixture(DegradedMode::FailClosed);
    let token = f.session().await;
    f.outage(true);
    for _ in 0..5 {
        f.go(Method::GET, "/read", Some(&token)).await;
    }
    assert_eq!(f.breaker.state(), State::Open);
    f.store.reset();
    for _ in 0..50 {
        let r = f.go(Method::GET, "/read", Some(&token)).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            r.headers[header::RETRY_AFTER],
            "1",
            "the breaker's own wait"
        );
    }
    assert_eq!(
        f.store.total(),
        0,
        "an open breaker keeps requests off the store"
    );

    // The store is back; after the open wait one probe goes through and closes the breaker.
    f.outage(false);
    f.clock.advance(Duration::from_millis(1_100));
    let r = f.go(Method::GET, "/read", Some(&token)).await;
    assert_eq!(r.body, "ann degraded=false");
    assert_eq!(f.breaker.state(), State::Closed);
}

#[tokio::test]
async fn ephemeral_mode_runs_the_handler_on_an_empty_degraded_session_and_writes_nothing() {
    let f = fixture(DegradedMode::Ephemeral);
    let token = f.session().await;
    f.outage(true);
    let r = f.go(Method::GET, "/read", Some(&token)).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::OK, "- degraded=true")
    );
    let r = f.go(Method::POST, "/write", Some(&token)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(matches!(
        r.save_failed.as_deref(),
        Some(SaveError::Degraded)
    ));
    assert!(r.set_cookie(NAME).is_none(), "the user's cookie is kept");
    f.outage(false);
    f.clock.advance(Duration::from_secs(60));
    assert_eq!(
        f.go(Method::GET, "/read", Some(&token)).await.body,
        "ann degraded=false",
        "the real record is untouched"
    );
}

#[tokio::test]
async fn recent_copy_serves_the_last_copy_and_refuses_writes() {
    let f = fixture(DegradedMode::RecentCopy);
    let token = f.session().await;
    let unseen = {
        // A session this instance has never loaded or written has no copy here.
        let other = fixture(DegradedMode::RecentCopy);
        let t = other.session().await;
        drop(other);
        t
    };
    assert_eq!(
        f.go(Method::GET, "/read", Some(&token)).await.body,
        "ann degraded=false"
    );
    f.outage(true);
    let r = f.go(Method::GET, "/read", Some(&token)).await;
    assert_eq!(r.body, "ann degraded=true", "served from the local copy");
    let r = f.go(Method::POST, "/write", Some(&token)).await;
    assert!(matches!(
        r.save_failed.as_deref(),
        Some(SaveError::Degraded)
    ));
    let r = f.go(Method::GET, "/read", Some(&unseen)).await;
    assert_eq!(
        r.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "no copy: fail closed"
    );
    f.outage(false);
    f.clock.advance(Duration::from_secs(60));
    assert_eq!(
        f.go(Method::GET, "/read", Some(&token)).await.body,
        "ann degraded=false"
    );
}

#[tokio::test]
async fn a_save_error_hook_can_change_the_answer() {
    let store = FaultyStore::new(MemoryStore::new());
    let layer =
        SessionManagerLayer::builder(store.clone(), KeyRing::new(1, &[8; 32]).expect("keys"))
            .cookie_name(NAME)
            .on_save_error(|error, parts| {
                if !matches!(error, SaveError::Ended) {
                    parts.status = StatusCode::SERVICE_UNAVAILABLE;
                    parts
                        .headers
                        .insert("x-session-error", error.to_string().parse().expect("ascii"));
                }
            })
            .build()
            .expect("layer");
    let app = Router::new()
        .route(
            "/login",
            post(|s: Session| async move { s.insert("name", "ann") }),
        )
        .layer(layer);
    store.fail_writes(true);
    let r = send(&app, Method::POST, "/login", None, None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers.contains_key("x-session-error"));
    assert!(r.save_failed.is_some(), "still attached for outer layers");
}

#[tokio::test(start_paused = true)]
async fn a_hung_store_costs_the_deadline_until_the_breaker_opens_then_nothing() {
    let f = fixture(DegradedMode::Ephemeral);
    let token = f.session().await;
    f.store.inner().hang(true);
    // Until the breaker has seen enough timeouts, each request costs exactly one store deadline.
    let mut waited = 0;
    while f.breaker.state() != State::Open {
        assert!(waited < 10, "the breaker never opened");
        let started = tokio::time::Instant::now();
        let r = f.go(Method::GET, "/read", Some(&token)).await;
        assert_eq!(r.body, "- degraded=true");
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(500),
            "one store deadline"
        );
        waited += 1;
    }
    assert!(
        waited >= 4,
        "the minimum number of calls is respected ({waited})"
    );
    let started = tokio::time::Instant::now();
    for _ in 0..20 {
        f.go(Method::GET, "/read", Some(&token)).await;
    }
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "open breaker: no request waits"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_give_up_during_half_open_do_not_keep_the_breaker_open() {
    // The store hangs; clients give up (their request futures are dropped) before the store
    // deadline, so the half-open probes never answer. Before permits were guards, those probes
    // held their slots forever and every session route answered 503 until an operator reset.
    let clock = Arc::new(ManualClock::starting_now());
    let breaker = breaker(&clock, 10, 3, 2);
    let store = FaultyStore::new(MemoryStore::new());
    let layer =
        SessionManagerLayer::builder(store.clone(), KeyRing::new(1, &[8; 32]).expect("keys"))
            .cookie_name(NAME)
            .store_timeout(Duration::from_millis(200))
            .circuit_breaker(breaker.clone())
            .build()
            .expect("layer");
    let app = sessile_tests::routes(Arc::default()).layer(layer);
    let token = send(&app, Method::POST, "/set/ann", None, None)
        .await
        .cookie_value(NAME)
        .expect("cookie");
    let cookie = format!("{NAME}={token}");
    store.hang(true);
    for _ in 0..3 {
        let r = send(&app, Method::GET, "/read", Some(&cookie), None).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "deadline");
    }
    assert_eq!(breaker.state(), State::Open);
    clock.advance(Duration::from_millis(1_001));
    // The probes: each reaches the store (it hangs), then its client gives up, well before the
    // 200 ms store deadline: the request future is dropped mid-call.
    for _ in 0..2 {
        let hung = store.hung().notified();
        tokio::pin!(hung);
        hung.as_mut().enable();
        let client = tokio::spawn({
            let (app, cookie) = (app.clone(), cookie.clone());
            async move { send(&app, Method::GET, "/read", Some(&cookie), None).await }
        });
        hung.await;
        client.abort();
        assert!(
            client.await.is_err_and(|e| e.is_cancelled()),
            "the client gave up"
        );
    }
    assert_eq!(breaker.state(), State::HalfOpen);
    store.hang(false);
    for _ in 0..3 {
        let r = send(&app, Method::GET, "/read", Some(&cookie), None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(r.body, "ann");
    }
    assert_eq!(breaker.state(), State::Closed);
}

/// Two instances over one store: A serves recent copies during outages, B is elsewhere.
fn cached_pair() -> (Router, Router, FaultyStore<MemoryStore>) {
    let store = FaultyStore::new(MemoryStore::new());
    let app = |mode| {
        let layer =
            SessionManagerLayer::builder(store.clone(), KeyRing::new(1, &[8; 32]).expect("keys"))
                .cookie_name(NAME)
                .degraded_mode(mode)
                .build()
                .expect("layer");
        sessile_tests::routes(Arc::default()).layer(layer)
    };
    (
        app(DegradedMode::RecentCopy),
        app(DegradedMode::FailClosed),
        store,
    )
}

#[tokio::test]
async fn a_recent_copy_does_not_outlive_a_logout_this_instance_has_seen() {
    let (a, b, store) = cached_pair();
    let get = |app: &Router, uri: &'static str, token: &str| {
        let (app, cookie) = (app.clone(), format!("{NAME}={token}"));
        async move { send(&app, Method::GET, uri, Some(&cookie), None).await }
    };
    let token = send(&a, Method::POST, "/set/ann", None, None)
        .await
        .cookie_value(NAME)
        .expect("cookie");
    assert_eq!(get(&a, "/read", &token).await.body, "ann", "A keeps a copy");
    let cookie = format!("{NAME}={token}");
    send(&b, Method::POST, "/logout", Some(&cookie), None).await;
    // A sees the logout: the store no longer has the session.
    assert_eq!(get(&a, "/read", &token).await.body, "-");
    store.fail_loads(true);
    let r = get(&a, "/read", &token).await;
    assert_eq!(
        r.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "the logged-out copy was served: {}",
        r.body
    );
}

#[tokio::test]
async fn log_out_everywhere_drops_the_users_recent_copies() {
    let (a, _b, store) = cached_pair();
    let login = || async {
        send(&a, Method::POST, "/login/alice", None, None)
            .await
            .cookie_value(NAME)
            .expect("cookie")
    };
    let (one, two) = (login().await, login().await);
    let cookie = |t: &str| format!("{NAME}={t}");
    assert_eq!(
        send(&a, Method::GET, "/whoami", Some(&cookie(&two)), None)
            .await
            .body,
        "alice",
        "A keeps a copy of the second session"
    );
    let r = send(
        &a,
        Method::POST,
        "/logout-everywhere",
        Some(&cookie(&one)),
        None,
    )
    .await;
    assert_eq!(r.body, "2");
    store.fail_loads(true);
    let r = send(&a, Method::GET, "/whoami", Some(&cookie(&two)), None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
}

#[tokio::test]
async fn a_logout_that_could_not_be_saved_keeps_the_cookie() {
    let f = fixture(DegradedMode::FailClosed);
    let token = f.session().await;
    f.store.inner().fail_writes(true);
    let r = f.go(Method::POST, "/logout", Some(&token)).await;
    assert!(
        r.set_cookie(NAME).is_none(),
        "the session lives on: keep the cookie"
    );
    assert!(
        matches!(r.save_failed.as_deref(), Some(SaveError::Store(_))),
        "{:?}",
        r.save_failed
    );
    f.store.inner().fail_writes(false);
    let r = f.go(Method::GET, "/read", Some(&token)).await;
    assert_eq!(r.body, "ann degraded=false");
}

#[test]
fn only_a_store_that_can_fail_gets_the_default_breaker() {
    let keys = || KeyRing::new(1, &[8; 32]).expect("keys");
    let built = |l: Result<SessionManagerLayer, _>| l.expect("layer");
    // In this process's memory: nothing for a breaker to see.
    let memory = built(SessionManagerLayer::builder(MemoryStore::new(), keys()).build());
    assert!(memory.breaker().is_none());
    let shared = built(SessionManagerLayer::builder(Arc::new(MemoryStore::new()), keys()).build());
    assert!(shared.breaker().is_none());
    // A wrapper that can fail (as any store behind a connection) gets one.
    let faulty =
        built(SessionManagerLayer::builder(FaultyStore::new(MemoryStore::new()), keys()).build());
    assert_eq!(
        faulty.breaker().map(SharedBreaker::name),
        Some(sessile::STORE_BREAKER_NAME)
    );
    // One given explicitly applies to any store.
    let given = SharedBreaker::builder("mine").build().expect("breaker");
    let chosen = built(
        SessionManagerLayer::builder(MemoryStore::new(), keys())
            .circuit_breaker(given)
            .build(),
    );
    assert_eq!(chosen.breaker().map(SharedBreaker::name), Some("mine"));
}

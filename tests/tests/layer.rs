//! The session layer over HTTP: laziness, cookies, concurrency, logout, rotation, expiry.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{Method, Request, StatusCode, header};
use sessile::clock::ManualClock;
use sessile::{Hint, KeyRing, MemoryStore, Session, SessionManagerLayer};
use sessile_tests::{CountingStore, FaultyStore, Gate, Reply, routes, send};

const NAME: &str = "sid";
const T0: u64 = 1_700_000_000_000;
const MIN: Duration = Duration::from_secs(60);

fn keys() -> KeyRing {
    KeyRing::new(1, &[1; 32]).expect("keys")
}

struct Fixture {
    app: Router,
    store: CountingStore<FaultyStore<MemoryStore>>,
    memory: MemoryStore,
    clock: Arc<ManualClock>,
    gate: Arc<Gate>,
}

fn fixture() -> Fixture {
    fixture_with(keys(), |b| b)
}

fn fixture_with(
    keys: KeyRing,
    tweak: impl FnOnce(sessile::SessionManagerBuilder) -> sessile::SessionManagerBuilder,
) -> Fixture {
    let clock = Arc::new(ManualClock::new(T0));
    let memory = MemoryStore::builder().clock(clock.clone()).build();
    let store = CountingStore::new(FaultyStore::new(memory.clone()));
    let layer = tweak(
        SessionManagerLayer::builder(store.clone(), keys)
            .cookie_name(NAME)
            // No `.clock(..)`: the layer adopts the store's clock.
            .node_hint(Hint::new("node-a").expect("hint")),
    )
    .build()
    .expect("valid config");
    let gate = Arc::new(Gate::default());
    Fixture {
        app: routes(Arc::clone(&gate)).layer(layer),
        store,
        memory,
        clock,
        gate,
    }
}

impl Fixture {
    async fn get(&self, uri: &str, token: Option<&str>) -> Reply {
        let cookie = token.map(|t| format!("{NAME}={t}"));
        send(&self.app, Method::GET, uri, cookie.as_deref(), None).await
    }
    async fn post(&self, uri: &str, token: Option<&str>) -> Reply {
        let cookie = token.map(|t| format!("{NAME}={t}"));
        send(&self.app, Method::POST, uri, cookie.as_deref(), None).await
    }
    /// Creates a session holding `name = v` and returns its token.
    async fn session(&self, v: &str) -> String {
        let r = self.post(&format!("/set/{v}"), None).await;
        assert_eq!(r.status, StatusCode::OK);
        r.cookie_value(NAME).expect("new session sets a cookie")
    }
}

/// The clock injected into the store, once, drives the layer's expiry and its default circuit
/// breaker too: after the store fails enough loads the breaker opens, and moving the manual clock
/// past the open wait (no real time passes) lets the next request through.
#[tokio::test]
async fn one_clock_drives_the_store_the_layer_and_its_default_breaker() {
    let f = fixture();
    let token = f.session("ann").await;
    f.store.inner().fail_loads(true);
    let mut refused = 0;
    for _ in 0..20 {
        if f.get("/read", Some(&token)).await.status == StatusCode::SERVICE_UNAVAILABLE {
            refused += 1;
        }
    }
    assert_eq!(refused, 20);
    f.store.inner().fail_loads(false);
    f.store.reset();
    let r = f.get("/read", Some(&token)).await;
    assert_eq!(
        r.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "the breaker is open"
    );
    assert_eq!(f.store.count("load"), 0, "an open breaker calls nothing");
    // The default open wait is 1 s with at most 20% jitter.
    f.clock.advance(Duration::from_secs(2));
    let r = f.get("/read", Some(&token)).await;
    assert_eq!(r.status, StatusCode::OK, "the breaker let a probe through");
    assert_eq!(r.body, "ann");
}

#[tokio::test]
async fn untouched_request_makes_no_store_call_and_sets_no_cookie() {
    let f = fixture();
    let token = f.session("ann").await;
    f.store.reset();
    for cookie in [None, Some(token.as_str()), Some("garbage")] {
        let r = f.get("/none", cookie).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.set_cookie(NAME).is_none());
        assert!(r.headers.get(header::VARY).is_none());
    }
    assert_eq!(f.store.total(), 0);
}

#[tokio::test]
async fn garbage_or_tampered_cookie_is_a_fresh_session_without_store_lookup() {
    let f = fixture();
    let token = f.session("ann").await;
    let mut tampered = token.clone().into_bytes();
    let last = tampered.len() - 5;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).expect("ascii");
    let forged_hint = format!("node-b{}", &token[token.find('.').expect("dot")..]);
    f.store.reset();

    for bad in [
        "",
        "x",
        "node-a.AAAA",
        tampered.as_str(),
        forged_hint.as_str(),
    ] {
        let r = f.get("/read", Some(bad)).await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (StatusCode::OK, "-"),
            "{bad:?}"
        );
        assert!(
            r.set_cookie(NAME).is_none(),
            "read-only new session stores nothing"
        );
    }
    assert_eq!(f.store.total(), 0, "no store call for any bad cookie");

    let r = f.post("/set/eve", Some(&tampered)).await;
    let fresh = r.cookie_value(NAME).expect("new cookie");
    assert_ne!(fresh, token);
    assert_eq!((f.store.count("create"), f.store.total()), (1, 1));
    assert_eq!(
        f.get("/read", Some(&token)).await.body,
        "ann",
        "real session untouched"
    );
}

#[tokio::test]
async fn new_session_cookie_has_secure_defaults_and_cache_headers() {
    let f = fixture();
    let r = f.post("/set/ann", None).await;
    let set = r.set_cookie(NAME).expect("cookie");
    for attr in [
        "HttpOnly",
        "Secure",
        "SameSite=Lax",
        "Path=/",
        "Max-Age=1800",
    ] {
        assert!(set.contains(attr), "{attr} missing from {set}");
    }
    let token = r.cookie_value(NAME).expect("value");
    assert!(token.starts_with("node-a."), "{token}");
    assert!(token.len() <= 100, "{} chars", token.len());
    assert_eq!(r.headers[header::CACHE_CONTROL], "no-store");
    assert_eq!(r.headers[header::VARY], "cookie");
    assert_eq!(f.store.count("create"), 1);
}

#[tokio::test]
async fn reading_a_session_loads_once_and_sends_no_cookie() {
    let f = fixture();
    let token = f.session("ann").await;
    f.store.reset();
    let r = f.get("/read", Some(&token)).await;
    assert_eq!(r.body, "ann");
    assert!(r.set_cookie(NAME).is_none());
    assert!(r.headers.get(header::CACHE_CONTROL).is_none());
    assert_eq!(r.headers[header::VARY], "cookie");
    assert_eq!((f.store.count("load"), f.store.total()), (1, 1));
}

#[tokio::test]
async fn read_only_request_without_session_creates_nothing() {
    let f = fixture();
    let r = f.get("/read", None).await;
    assert!(r.set_cookie(NAME).is_none());
    assert_eq!(f.store.total(), 0);
    assert!(f.memory.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_clients_times_two_hundred_increments_end_at_3200() {
    let f = Arc::new(fixture());
    let token = Arc::new(f.session("ann").await);
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (f, token) = (Arc::clone(&f), Arc::clone(&token));
            tokio::spawn(async move {
                for _ in 0..200 {
                    let r = f.post("/incr", Some(&token)).await;
                    assert_eq!(r.status, StatusCode::OK);
                    assert!(r.save_failed.is_none(), "{:?}", r.save_failed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("client");
    }
    assert_eq!(f.get("/n", Some(&token)).await.body, "3200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_to_different_keys_merge() {
    let f = Arc::new(fixture());
    let token = Arc::new(f.session("ann").await);
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let (f, token) = (Arc::clone(&f), Arc::clone(&token));
            tokio::spawn(async move { f.post(&format!("/put/k{i}"), Some(&token)).await })
        })
        .collect();
    for t in tasks {
        assert!(t.await.expect("task").save_failed.is_none());
    }
    let keys = f.get("/keys", Some(&token)).await.body;
    assert_eq!(keys, "k0,k1,k2,k3,k4,k5,k6,k7,name");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_cannot_be_undone_by_a_request_in_flight() {
    let f = Arc::new(fixture());
    let token = f.session("ann").await;
    let slow = {
        let (f, token) = (Arc::clone(&f), token.clone());
        tokio::spawn(async move { f.post("/slow-incr", Some(&token)).await })
    };
    // The slow request has loaded the session and is inside its handler.
    f.gate.entered.notified().await;
    let out = f.post("/logout", Some(&token)).await;
    assert_eq!(
        out.cookie_value(NAME).as_deref(),
        Some(""),
        "logout removes the cookie"
    );
    f.gate.release.notify_one();
    let r = slow.await.expect("slow request");

    assert!(
        matches!(r.save_failed.as_deref(), Some(sessile::SaveError::Ended)),
        "{:?}",
        r.save_failed
    );
    assert_eq!(
        r.cookie_value(NAME).as_deref(),
        Some(""),
        "no live cookie handed out"
    );
    assert!(f.memory.is_empty(), "the session stayed gone");
    let after = f.get("/read", Some(&token)).await;
    assert_eq!(after.body, "-");
}

#[tokio::test]
async fn cycle_id_moves_the_data_and_kills_the_old_token() {
    let f = fixture();
    let old = f.session("ann").await;
    f.store.reset();
    let r = f.post("/login/ann", Some(&old)).await;
    let new = r.cookie_value(NAME).expect("rotated cookie");
    assert_ne!(new, old);
    assert_eq!(
        (f.store.count("rotate"), f.store.total()),
        (1, 2),
        "load + rotate"
    );
    assert_eq!(f.get("/read", Some(&new)).await.body, "ann");
    assert_eq!(f.get("/read", Some(&old)).await.body, "-");
    // The record, and the marker that tells in-flight requests the old id was rotated.
    assert_eq!(f.memory.len(), 2);
}

/// Every login gives a new id, also when the same user logs in again on a logged-in session: a
/// re-authentication is a privilege boundary too.
#[tokio::test]
async fn logging_in_again_as_the_same_user_rotates_the_id() {
    let f = fixture();
    let anon = f.session("ann").await;
    let first = f
        .post("/login/alice", Some(&anon))
        .await
        .cookie_value(NAME)
        .expect("login rotates");
    f.store.reset();
    let second = f
        .post("/login/alice", Some(&first))
        .await
        .cookie_value(NAME)
        .expect("a second login rotates too");
    assert_ne!(second, first);
    assert_eq!(f.store.count("rotate"), 1);
    assert_eq!(f.get("/read", Some(&first)).await.body, "-");
    assert_eq!(f.get("/whoami", Some(&second)).await.body, "alice");
}

#[tokio::test]
async fn destroy_everywhere_ends_every_session_of_the_user() {
    let f = fixture();
    let laptop = f
        .post("/login/ann", None)
        .await
        .cookie_value(NAME)
        .expect("cookie");
    let phone = f
        .post("/login/ann", None)
        .await
        .cookie_value(NAME)
        .expect("cookie");
    let other = f
        .post("/login/bob", None)
        .await
        .cookie_value(NAME)
        .expect("cookie");
    let r = f.post("/logout-everywhere", Some(&phone)).await;
    assert_eq!(r.body, "2");
    assert_eq!(r.cookie_value(NAME).as_deref(), Some(""));
    assert_eq!(f.get("/read", Some(&laptop)).await.body, "-");
    assert_eq!(f.memory.len(), 1, "bob's session stays");
    assert!(f.get("/keys", Some(&other)).await.body.contains("user"));
}

#[tokio::test]
async fn idle_sessions_expire() {
    let f = fixture();
    let token = f.session("ann").await;
    f.clock.advance(29 * MIN);
    assert_eq!(f.get("/read", Some(&token)).await.body, "ann");
    // That read renewed the idle deadline: 29 more minutes are fine, 31 are not.
    f.clock.advance(29 * MIN);
    assert_eq!(f.get("/read", Some(&token)).await.body, "ann");
    f.clock.advance(31 * MIN);
    let r = f.get("/read", Some(&token)).await;
    assert_eq!(r.body, "-");
    assert_eq!(
        r.cookie_value(NAME).as_deref(),
        Some(""),
        "dead cookie removed"
    );
}

#[tokio::test]
async fn absolute_lifetime_ends_even_an_active_session() {
    let f = fixture_with(keys(), |b| {
        b.absolute_timeout(Duration::from_secs(2 * 3600))
    });
    let token = f.session("ann").await;
    for _ in 0..5 {
        f.clock.advance(20 * MIN);
        assert_eq!(f.get("/read", Some(&token)).await.body, "ann");
    }
    f.clock.advance(20 * MIN);
    assert_eq!(f.get("/read", Some(&token)).await.body, "-");
}

#[tokio::test]
async fn reads_renew_the_deadline_only_after_a_quarter_of_it() {
    let f = fixture();
    let token = f.session("ann").await;
    f.store.reset();
    f.clock.advance(MIN);
    let r = f.get("/read", Some(&token)).await;
    assert!(r.set_cookie(NAME).is_none());
    assert_eq!(f.store.count("touch"), 0);

    f.clock.advance(7 * MIN);
    let r = f.get("/read", Some(&token)).await;
    assert_eq!(f.store.count("touch"), 1);
    let set = r.set_cookie(NAME).expect("cookie expiry moved");
    assert!(set.contains("Max-Age=1800"), "{set}");
    let renewed = r.cookie_value(NAME).expect("value");

    f.clock.advance(MIN);
    let r = f.get("/read", Some(&renewed)).await;
    assert!(r.set_cookie(NAME).is_none());
    assert_eq!(f.store.count("touch"), 1);
    assert_eq!(f.store.count("save"), 0, "reads never rewrite the record");
}

#[tokio::test]
async fn nothing_is_saved_after_a_server_error() {
    let f = fixture();
    let token = f.session("ann").await;
    f.store.reset();
    let r = f.post("/fail", Some(&token)).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(r.set_cookie(NAME).is_none());
    assert_eq!(f.store.count("save"), 0);
    assert_eq!(f.get("/read", Some(&token)).await.body, "ann");

    let saving = fixture_with(keys(), |b| b.save_on_server_error(true));
    let token = saving.session("ann").await;
    saving.post("/fail", Some(&token)).await;
    assert_eq!(
        saving.get("/read", Some(&token)).await.body,
        "from a failing handler"
    );
}

#[tokio::test]
async fn key_rotation_reseals_old_tokens_and_a_dropped_key_logs_out() {
    let old_keys = keys();
    let f = fixture_with(old_keys.clone(), |b| b);
    let token = f.session("ann").await;

    // Same store, a new layer whose ring has a newer primary key.
    let rotated = old_keys.clone().with_key(2, &[2; 32]).expect("ring");
    let layer = SessionManagerLayer::builder(f.store.clone(), rotated.clone())
        .cookie_name(NAME)
        .build()
        .expect("layer");
    let app = routes(Arc::clone(&f.gate)).layer(layer);
    let cookie = format!("{NAME}={token}");
    let r = send(&app, Method::GET, "/read", Some(&cookie), None).await;
    assert_eq!(r.body, "ann");
    let resealed = r.cookie_value(NAME).expect("re-sealed with the new key");
    assert_ne!(resealed, token);

    let dropped = rotated.without_key(1).expect("ring");
    let layer = SessionManagerLayer::builder(f.store.clone(), dropped)
        .cookie_name(NAME)
        .build()
        .expect("layer");
    let app = routes(Arc::clone(&f.gate)).layer(layer);
    let stale = send(&app, Method::GET, "/read", Some(&cookie), None).await;
    assert_eq!(stale.body, "-");
    let fresh = send(
        &app,
        Method::GET,
        "/read",
        Some(&format!("{NAME}={resealed}")),
        None,
    )
    .await;
    assert_eq!(fresh.body, "ann");
}

#[tokio::test]
async fn oversized_payload_is_a_413_and_nothing_is_stored() {
    let f = fixture();
    let token = f.session("ann").await;
    let r = f.post("/big", Some(&token)).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(r.body.contains("limit of 16384"), "{}", r.body);
    assert_eq!(f.get("/keys", Some(&token)).await.body, "name");
}

#[tokio::test]
async fn failed_save_is_reported_and_the_response_kept() {
    let f = fixture();
    let token = f.session("ann").await;
    f.store_faults().fail_writes(true);
    let r = f.post("/set/bob", Some(&token)).await;
    assert_eq!(r.status, StatusCode::OK, "the handler's response is kept");
    assert!(r.set_cookie(NAME).is_none());
    // The store was called and did not answer, so whether the write landed is unknown (the
    // layer asked, and the store could not answer that either): reported as such, never retried.
    assert!(matches!(
        r.save_failed.as_deref(),
        Some(sessile::SaveError::Unknown(
            sessile::StoreError::Unavailable(_)
        ))
    ));
    let r = f.post("/set/new", None).await;
    assert!(
        r.set_cookie(NAME).is_none(),
        "no cookie for a session that was not stored"
    );
    assert!(r.save_failed.is_some());
    f.store_faults().fail_writes(false);
    assert_eq!(f.get("/read", Some(&token)).await.body, "ann");
}

#[tokio::test]
async fn failed_load_is_a_503_and_writes_nothing() {
    let f = fixture();
    let token = f.session("ann").await;
    f.store_faults().fail_loads(true);
    f.store.reset();
    let r = f.post("/set/bob", Some(&token)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers[header::RETRY_AFTER], "1");
    assert!(r.set_cookie(NAME).is_none());
    assert_eq!(f.store.total(), 1, "only the failed load");
    f.store_faults().fail_loads(false);
    assert_eq!(f.get("/read", Some(&token)).await.body, "ann");
}

#[tokio::test(start_paused = true)]
async fn a_hung_store_costs_one_deadline_not_forever() {
    let f = fixture_with(keys(), |b| b.store_timeout(Duration::from_millis(250)));
    let token = f.session("ann").await;
    f.store_faults().hang(true);
    let started = tokio::time::Instant::now();
    let r = f.get("/read", Some(&token)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(started.elapsed(), Duration::from_millis(250));
}

#[tokio::test]
async fn config_mistakes_are_typed_errors() {
    let build = |tweak: fn(sessile::SessionManagerBuilder) -> sessile::SessionManagerBuilder| {
        tweak(SessionManagerLayer::builder(MemoryStore::new(), keys())).build()
    };
    use sessile::ConfigError as E;
    // Longer than a store remembers write outcomes: a landed write could be written again.
    assert!(matches!(
        build(|b| b.store_timeout(Duration::from_secs(120))),
        Err(E::StoreTimeout { .. })
    ));
    assert!(matches!(
        build(|b| b.cookie_name("__Host-sid").cookie_path("/app")),
        Err(E::Cookie(_))
    ));
    assert!(matches!(
        build(|b| b.cookie_name("__Host-sid").secure(false)),
        Err(E::Cookie(_))
    ));
    assert!(matches!(
        build(|b| b.cookie_name("bad name")),
        Err(E::Token(_))
    ));
    assert!(matches!(
        build(|b| b.idle_timeout(Duration::ZERO)),
        Err(E::Zero(_))
    ));
    assert!(matches!(
        build(|b| b
            .idle_timeout(Duration::from_secs(10))
            .absolute_timeout(Duration::from_secs(5))),
        Err(E::IdleExceedsAbsolute { .. })
    ));
    assert!(matches!(
        build(|b| b.renew_fraction(1.5)),
        Err(E::RenewFraction(_))
    ));
    assert!(build(|b| b.cookie_name("__Host-sid")).is_ok());
}

#[tokio::test]
async fn session_extractor_without_the_layer_explains_the_fix() {
    let app: Router = Router::new().route("/", get(|_s: Session| async { "unreachable" }));
    let r = send(&app, Method::GET, "/", None, None).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(r.body.contains("SessionManagerLayer"), "{}", r.body);
}

impl Fixture {
    fn store_faults(&self) -> &FaultyStore<MemoryStore> {
        self.store.inner()
    }
}

#[tokio::test]
async fn the_test_wrappers_count_and_fail_what_they_are_told() {
    use sessile::SessionStore as _;
    let store = CountingStore::new(FaultyStore::new(MemoryStore::new()));
    let id = sessile::SessionId::random();
    assert!(store.load(id).await.expect("load").is_none());
    store.inner().fail_loads(true);
    assert!(store.load(id).await.is_err());
    assert!(store.destroy(id).await.is_ok(), "writes still work");
    assert_eq!(
        (store.count("load"), store.count("destroy"), store.total()),
        (2, 1, 3)
    );
}

/// Two layers (two app instances) over one memory store, each with its own gate.
fn two_layers(renew: f64) -> ([Router; 2], [Arc<Gate>; 2], MemoryStore) {
    let memory = MemoryStore::new();
    let app = |node: &str| {
        let layer = SessionManagerLayer::builder(memory.clone(), keys())
            .cookie_name(NAME)
            .node_hint(Hint::new(node).expect("hint"))
            .renew_fraction(renew)
            .build()
            .expect("layer");
        let gate = Arc::new(Gate::default());
        (routes(Arc::clone(&gate)).layer(layer), gate)
    };
    let ((a, ga), (b, gb)) = (app("node-a"), app("node-b"));
    ([a, b], [ga, gb], memory)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_survives_responses_of_requests_made_before_it() {
    let (apps, gates, _memory) = two_layers(0.0);
    // Same instance, then the login on the other one.
    sessile_tests::races::login_survives_late_responses(&apps[..1], &gates[..1], NAME).await;
    sessile_tests::races::login_survives_late_responses(&apps, &gates, NAME).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_out_everywhere_ends_sessions_rotating_on_two_instances() {
    let (apps, _gates, _memory) = two_layers(0.25);
    let race = sessile_tests::races::logout_everywhere_beats_rotation(apps, NAME, 100).await;
    eprintln!("memory store: {race:?}");
    assert_eq!(race.survivors, 0, "{race:?}");
}

#[tokio::test]
async fn operations_that_change_nothing_cost_no_save() {
    let f = fixture();
    let token = f.session("ann").await;
    f.store.reset();
    // The same value again; then removing an absent key and an update to an equal value.
    for uri in ["/set/ann", "/unchanged"] {
        let r = f.post(uri, Some(&token)).await;
        assert_eq!(r.status, StatusCode::OK, "{uri}: {}", r.body);
        assert!(r.save_failed.is_none());
    }
    assert_eq!(f.store.count("save"), 0, "nothing changed, nothing saved");
    let r = f.post("/put/flag", Some(&token)).await;
    assert!(r.save_failed.is_none());
    assert_eq!(f.store.count("save"), 1, "a real change is saved");
}

#[tokio::test]
async fn tenants_sharing_a_store_and_keys_stay_apart() {
    let memory = MemoryStore::new();
    let store = CountingStore::new(memory.clone());
    let app = |tenant: &str| {
        let layer = SessionManagerLayer::builder(store.clone(), keys())
            .cookie_name(NAME)
            .tenant(tenant)
            .build()
            .expect("layer");
        routes(Arc::default()).layer(layer)
    };
    let (acme, globex) = (app("acme"), app("globex"));
    sessile_tests::races::tenants_are_isolated(&acme, &globex, NAME).await;
    // The other tenant's token never reached the store.
    let token = send(&acme, Method::POST, "/set/x", None, None)
        .await
        .cookie_value(NAME)
        .expect("cookie");
    store.reset();
    let cookie = format!("{NAME}={token}");
    send(&globex, Method::GET, "/read", Some(&cookie), None).await;
    assert_eq!(store.count("load"), 0);
    assert!(
        SessionManagerLayer::builder(memory, keys())
            .tenant("a:b")
            .build()
            .is_err()
    );
}

#[tokio::test]
async fn only_the_first_few_session_cookies_are_tried() {
    let f = fixture();
    let token = f.session("ann").await;
    // Well-formed tokens that fail the AEAD: the real one with one character changed. Not the
    // last one: base64's last character may carry padding bits, and changing only those leaves
    // the bytes (and the token) as they were.
    let at = token.len() - 5;
    let was = token.as_bytes()[at];
    let mut forged = token.clone();
    forged.replace_range(at..=at, if was == b'A' { "B" } else { "A" });
    let with = |n: usize, junk: &str| {
        let mut c = vec![format!("{NAME}={junk}"); n];
        c.push(format!("{NAME}={token}"));
        c.join("; ")
    };
    let read = |cookie: String| {
        let app = f.app.clone();
        async move {
            send(&app, Method::GET, "/read", Some(&cookie), None)
                .await
                .body
        }
    };
    let max = sessile::MAX_SESSION_COOKIES;
    assert_eq!(read(with(max - 1, &forged)).await, "ann");
    // Past the bound no more AEAD opens are made, whatever follows: a flood of cookies costs a
    // few, not one per cookie.
    assert_eq!(read(with(max, &forged)).await, "-");
    assert_eq!(read(with(500, &forged)).await, "-");
    // Junk that is not even a token costs a length check and does not count.
    assert_eq!(read(with(500, "garbage")).await, "ann");
}

/// Log lines written while `run` runs, as text.
fn logs_of(run: impl FnOnce()) -> String {
    logs_with(tracing_subscriber::fmt::format::FmtSpan::NONE, run)
}

/// Log lines written while `run` runs, with a line for each span event in `spans`.
fn logs_with(spans: tracing_subscriber::fmt::format::FmtSpan, run: impl FnOnce()) -> String {
    #[derive(Clone, Default)]
    struct Buffer(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_span_events(spans)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, run);
    let bytes = buffer.0.lock().expect("lock").clone();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Store calls are traced with OpenTelemetry's database attributes and a redacted session id.
#[test]
fn store_spans_carry_the_database_attributes() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let logs = logs_with(tracing_subscriber::fmt::format::FmtSpan::CLOSE, || {
        rt.block_on(async {
            let f = fixture();
            let token = f.session("ann").await;
            assert_eq!(f.get("/read", Some(&token)).await.body, "ann");
        });
    });
    let load = logs
        .lines()
        .find(|l| l.contains("sessile.store") && l.contains("db.operation.name=\"load\""))
        .unwrap_or_else(|| panic!("no load span in:\n{logs}"));
    assert!(load.contains("db.system.name=\"memory\""), "{load}");
    assert!(load.contains("outcome=\"ok\""), "{load}");
    assert!(load.contains("session="), "{load}");
}

#[test]
fn session_values_never_reach_the_logs() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let logs = logs_of(|| {
        rt.block_on(async {
            let f = fixture();
            let token = f.session("hunter2-secret").await;
            let cookie = format!("{NAME}={token}");
            // Reading the value as the wrong type: a 500, logged.
            let r = send(&f.app, Method::GET, "/name-as-map", Some(&cookie), None).await;
            assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
            assert!(!r.body.contains("hunter2"), "nor the response: {}", r.body);
            // A save that fails.
            f.store_faults().fail_writes(true);
            send(
                &f.app,
                Method::POST,
                "/set/another-secret",
                Some(&cookie),
                None,
            )
            .await;
        });
    });
    assert!(logs.contains("session error"), "{logs}");
    assert!(logs.contains("session changes not saved"), "{logs}");
    assert!(
        !logs.contains("hunter2"),
        "a session value reached the logs:\n{logs}"
    );
    assert!(!logs.contains("another-secret"), "{logs}");
}

#[tokio::test]
async fn a_browser_that_lost_its_login_response_can_log_in_again() {
    let f = fixture();
    let old = f.session("ann").await;
    let lost = f.post("/login/alice", Some(&old)).await;
    assert!(lost.cookie_value(NAME).is_some());
    // The browser never saw that response and still sends the pre-login cookie.
    let again = f.post("/login/alice", Some(&old)).await;
    assert!(again.save_failed.is_none(), "{:?}", again.save_failed);
    let token = again.cookie_value(NAME).expect("a new session");
    assert_eq!(f.get("/whoami", Some(&token)).await.body, "alice");
    // A plain write with the pre-login cookie still does not create a session.
    let write = f.post("/set/x", Some(&old)).await;
    assert!(write.cookie_value(NAME).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_that_loaded_before_a_login_does_not_end_the_new_session() {
    let f = Arc::new(fixture());
    let old = f.session("ann").await;
    let logout = {
        let (f, old) = (Arc::clone(&f), old.clone());
        tokio::spawn(async move { f.post("/slow-logout", Some(&old)).await })
    };
    f.gate.entered.notified().await;
    let new = f
        .post("/login/alice", Some(&old))
        .await
        .cookie_value(NAME)
        .expect("logged in");
    f.gate.release.notify_one();
    let logout = logout.await.expect("logout");
    assert!(
        logout.set_cookie(NAME).is_none(),
        "the late logout removed the login's cookie"
    );
    assert!(matches!(
        logout.save_failed.as_deref(),
        Some(sessile::SaveError::Rotated)
    ));
    assert_eq!(f.get("/whoami", Some(&new)).await.body, "alice");
}

#[tokio::test]
async fn a_record_of_another_tenant_does_not_load_even_with_a_token_that_opens() {
    // The token binds the tenant, so this only happens when a store mixes records up (or one is
    // written by hand): the load checks the record's tenant as well.
    use sessile::SessionStore as _;
    let memory = MemoryStore::new();
    let layer = SessionManagerLayer::builder(memory.clone(), keys())
        .cookie_name(NAME)
        .tenant("acme")
        .build()
        .expect("layer");
    let app = routes(Arc::default()).layer(layer);
    let codec = sessile_token::TokenCodec::new(keys(), NAME)
        .and_then(|c| c.with_context("acme"))
        .expect("codec");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    for (tenant, expected) in [("acme", "ann"), ("globex", "-")] {
        let mut record = sessile_conformance::record(None, 1);
        record.meta.tenant = Some(tenant.into());
        record
            .data
            .insert("name".into(), rmp_serde::to_vec("ann").expect("encode"));
        memory
            .create(&record, sessile::store::WriteId::random())
            .await
            .expect("create");
        let token = codec.seal(
            &sessile_token::Claims {
                session_id: *record.id.as_bytes(),
                issued_at: (now / 1000) as u32,
            },
            &Hint::new("node-a").expect("hint"),
        );
        let cookie = format!("{NAME}={token}");
        let r = send(&app, Method::GET, "/read", Some(&cookie), None).await;
        assert_eq!(r.body, expected, "a record of tenant {tenant}");
    }
}

/// Two instances with affinity hints over one store, and the layer of each.
fn pinned_pair(re_pin: bool) -> ([Router; 2], CountingStore<MemoryStore>) {
    let store = CountingStore::new(MemoryStore::new());
    let app = |node: &str| {
        let layer = SessionManagerLayer::builder(store.clone(), keys())
            .cookie_name(NAME)
            .hint_source(sessile::AffinityHints::new(node).expect("node id"))
            .re_pin(re_pin)
            .build()
            .expect("layer");
        routes(Arc::new(Gate::default())).layer(layer)
    };
    ([app("node-a"), app("node-b")], store)
}

fn hint_node(token: &str) -> String {
    sessile_affinity::RouteHint::from_cookie(token)
        .expect("an affinity hint")
        .node
        .to_owned()
}

/// A session made on A, whose request the edge sent to B (A down, draining or full): B's
/// response re-issues the cookie with B's hint, for the same session and route key, once; B's
/// next requests carry it and re-issue nothing. Writes re-pin as well as reads.
#[tokio::test]
async fn a_rerouted_session_is_re_pinned_once() {
    let (apps, store) = pinned_pair(true);
    let a = send(&apps[0], Method::POST, "/incr", None, None).await;
    let token_a = a.cookie_value(NAME).expect("a session");
    assert_eq!(hint_node(&token_a), "node-a");
    let key = sessile_affinity::RouteHint::from_cookie(&token_a)
        .expect("hint")
        .key;

    // A read on B: the session is served, and its cookie now names B.
    let b = send(
        &apps[1],
        Method::GET,
        "/n",
        Some(&format!("{NAME}={token_a}")),
        None,
    )
    .await;
    assert_eq!(b.body, "1");
    let token_b = b.cookie_value(NAME).expect("re-pinned");
    assert_eq!(hint_node(&token_b), "node-b");
    assert_eq!(
        sessile_affinity::RouteHint::from_cookie(&token_b).map(|h| h.key),
        Some(key),
        "the route key stays"
    );
    assert_eq!(store.count("touch"), 1, "the store confirmed the id first");
    // Once: B's next requests carry B's hint.
    let again = send(
        &apps[1],
        Method::GET,
        "/n",
        Some(&format!("{NAME}={token_b}")),
        None,
    )
    .await;
    assert_eq!((again.body.as_str(), again.set_cookie(NAME)), ("1", None));

    // A write on A with B's cookie moves it back, with the write.
    let w = send(
        &apps[0],
        Method::POST,
        "/incr",
        Some(&format!("{NAME}={token_b}")),
        None,
    )
    .await;
    assert_eq!(w.body, "2");
    assert_eq!(
        hint_node(&w.cookie_value(NAME).expect("re-pinned")),
        "node-a"
    );
}

#[tokio::test]
async fn re_pinning_can_be_turned_off() {
    let (apps, store) = pinned_pair(false);
    let token = send(&apps[0], Method::POST, "/incr", None, None)
        .await
        .cookie_value(NAME)
        .expect("a session");
    let b = send(
        &apps[1],
        Method::GET,
        "/n",
        Some(&format!("{NAME}={token}")),
        None,
    )
    .await;
    assert_eq!((b.body.as_str(), b.set_cookie(NAME)), ("1", None));
    assert_eq!(store.count("touch"), 0);
}

/// The edge says why a request is not on its hinted node: `down` re-pins the session here;
/// `overload` (its node was only at its load bound) leaves the cookie as it is, so that the
/// session goes back when the burst passes.
#[tokio::test]
async fn a_session_rerouted_only_for_overload_is_not_re_pinned() {
    let (apps, _store) = pinned_pair(true);
    let token = send(&apps[0], Method::POST, "/incr", None, None)
        .await
        .cookie_value(NAME)
        .expect("a session");
    let on_b = |why: &'static str| {
        http::Request::get("/n")
            .header(header::COOKIE, format!("{NAME}={token}"))
            .header(sessile::REROUTE_HEADER, why)
            .body(axum::body::Body::empty())
            .expect("request")
    };
    let r = sessile_tests::send_request(&apps[1], on_b("overload")).await;
    assert_eq!((r.body.as_str(), r.set_cookie(NAME)), ("1", None));
    let r = sessile_tests::send_request(&apps[1], on_b("down")).await;
    assert_eq!(
        hint_node(&r.cookie_value(NAME).expect("re-pinned")),
        "node-b"
    );
}

#[tokio::test]
async fn the_token_is_found_in_any_of_several_cookie_headers() {
    // HTTP/2 clients may split cookies over several `Cookie` fields; the layer keeps them all.
    let f = fixture();
    let token = f.session("ann").await;
    for before in [0, 1, 2] {
        let mut req = Request::builder().method(Method::GET).uri("/read");
        for i in 0..before {
            req = req.header(header::COOKIE, format!("other{i}=x"));
        }
        req = req.header(header::COOKIE, format!("{NAME}={token}"));
        let r =
            sessile_tests::send_request(&f.app, req.body(Body::empty()).expect("request")).await;
        assert_eq!(r.body, "ann", "after {before} other Cookie fields");
    }
}

/// A service inside the session layer may hold something in its response future until that
/// future is dropped (tower's `ConcurrencyLimit` holds its permit so), or in the service itself.
/// The layer lets go of both as soon as the inner future completes: not after the save's store
/// round trip, which may take up to the store deadline. (Both an earlier named future, which kept
/// the finished inner future, and the boxed `async` block before it, which kept the service
/// clone, held them through the save.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inner_response_future_is_dropped_before_the_save() {
    struct Holding<F> {
        inner: std::pin::Pin<Box<F>>,
        _held: Arc<()>,
    }
    impl<F: std::future::Future> std::future::Future for Holding<F> {
        type Output = F::Output;
        fn poll(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<F::Output> {
            self.inner.as_mut().poll(cx)
        }
    }
    use tower::{Layer as _, ServiceExt as _};
    let store = FaultyStore::new(MemoryStore::new());
    let layer = SessionManagerLayer::builder(store.clone(), keys())
        .cookie_name(NAME)
        .store_timeout(Duration::from_secs(5))
        .build()
        .expect("layer");
    let held = Arc::new(());
    let router = routes(Arc::default());
    let app = layer.layer(tower::service_fn({
        let held = Arc::clone(&held);
        move |req| Holding {
            inner: Box::pin(router.clone().oneshot(req)),
            _held: Arc::clone(&held),
        }
    }));
    store.hang(true);
    let hung = store.hung().notified();
    tokio::pin!(hung);
    hung.as_mut().enable();
    let request = tokio::spawn(
        app.oneshot(
            Request::post("/set/ann")
                .body(Body::empty())
                .expect("request"),
        ),
    );
    // The handler is done; the save hangs in the store.
    hung.await;
    assert_eq!(
        Arc::strong_count(&held),
        1,
        "the inner service or its response future is still held during the save"
    );
    request.abort();
}

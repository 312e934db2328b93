//! The login example end to end over HTTP: log in, count, log out, log out everywhere, CSRF.

use axum::Router;
use http::{Method, StatusCode, header};
use sessile::{Hint, KeyRing};
use sessile_login_example::{AppConfig, app};
use sessile_testkit::redis::RedisServer;
use sessile_tests::{Reply, send};

/// A browser: the session cookie and the login form's CSRF cookie, updated from every response.
struct Browser<'a> {
    app: &'a Router,
    token: Option<String>,
    login_csrf: Option<String>,
}

const LOGIN_CSRF: &str = "__Host-login-csrf";

impl<'a> Browser<'a> {
    fn new(app: &'a Router) -> Self {
        Self {
            app,
            token: None,
            login_csrf: None,
        }
    }

    async fn go(&mut self, method: Method, uri: &str, form: Option<&str>) -> Reply {
        let cookies: Vec<String> = [("sid", &self.token), (LOGIN_CSRF, &self.login_csrf)]
            .iter()
            .filter_map(|(n, v)| v.as_ref().map(|v| format!("{n}={v}")))
            .collect();
        let cookie = (!cookies.is_empty()).then(|| cookies.join("; "));
        let reply = send(self.app, method, uri, cookie.as_deref(), form).await;
        if let Some(v) = reply.cookie_value("sid") {
            self.token = (!v.is_empty()).then_some(v);
        }
        if let Some(v) = reply.cookie_value(LOGIN_CSRF) {
            self.login_csrf = (!v.is_empty()).then_some(v);
        }
        reply
    }

    async fn get(&mut self, uri: &str) -> Reply {
        self.go(Method::GET, uri, None).await
    }

    async fn post(&mut self, uri: &str, form: &str) -> Reply {
        self.go(Method::POST, uri, Some(form)).await
    }

    /// The CSRF token from the forms of the page at `uri`.
    async fn csrf(&mut self, uri: &str) -> String {
        let body = self.get(uri).await.body;
        let start = body
            .find("name=\"csrf\" value=\"")
            .expect("page has a CSRF field")
            + 19;
        body[start..start + 64].to_owned()
    }

    async fn log_in(&mut self, user: &str, password: &str) -> Reply {
        let csrf = self.csrf("/login").await;
        self.post(
            "/login",
            &format!("username={user}&password={password}&csrf={csrf}"),
        )
        .await
    }
}

fn location(r: &Reply) -> &str {
    r.headers[header::LOCATION].to_str().expect("ascii")
}

async fn demo_app() -> Router {
    app_on(None).await
}

async fn app_on(redis_url: Option<String>) -> Router {
    app(AppConfig {
        keys: KeyRing::new(1, &[3; 32]).expect("keys"),
        node: Hint::new("node-7").expect("hint"),
        redis_url,
        degraded: sessile::DegradedMode::FailClosed,
    })
    .await
    .expect("app")
}

#[tokio::test]
async fn log_in_count_and_log_out() {
    let app = demo_app().await;
    let mut b = Browser::new(&app);

    let r = b.get("/profile").await;
    assert_eq!((r.status, location(&r)), (StatusCode::SEE_OTHER, "/login"));

    let wrong = b.log_in("alice", "nope").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.body.contains("Wrong user name or password"));

    assert!(b.token.is_none(), "the login form stores no session");
    let r = b.log_in("alice", "wonderland").await;
    assert_eq!(
        (r.status, location(&r)),
        (StatusCode::SEE_OTHER, "/profile")
    );
    let logged_in = b.token.clone().expect("logged in");
    assert!(b.login_csrf.is_none(), "the login form's cookie is dropped");

    let profile = b.get("/profile").await;
    assert!(profile.body.contains("<td>alice</td>"), "{}", profile.body);
    assert!(profile.body.contains("<td>node-7</td>"));
    assert!(profile.body.contains("<th>Counter</th><td>0</td>"));

    for _ in 0..2 {
        let csrf = b.csrf("/profile").await;
        let r = b.post("/counter", &format!("csrf={csrf}")).await;
        assert_eq!(r.status, StatusCode::SEE_OTHER);
    }
    assert!(
        b.get("/profile")
            .await
            .body
            .contains("<th>Counter</th><td>2</td>")
    );

    let csrf = b.csrf("/profile").await;
    let r = b.post("/logout", &format!("csrf={csrf}")).await;
    assert_eq!((r.status, location(&r)), (StatusCode::SEE_OTHER, "/"));
    assert!(b.token.is_none(), "logout removed the cookie");

    // Replaying the old cookie does not get back in.
    let mut replay = Browser::new(&app);
    replay.token = Some(logged_in);
    let r = replay.get("/profile").await;
    assert_eq!(location(&r), "/login");
}

#[tokio::test]
async fn forms_without_the_csrf_token_are_refused() {
    let app = demo_app().await;
    let mut b = Browser::new(&app);
    b.log_in("bob", "builder").await;
    let r = b.post("/counter", "csrf=forged").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = b.post("/logout", "csrf=").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(
        b.get("/profile")
            .await
            .body
            .contains("<th>Counter</th><td>0</td>")
    );

    let mut fresh = Browser::new(&app);
    let r = fresh
        .post("/login", "username=bob&password=builder&csrf=x")
        .await;
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "no login without the form's token"
    );
}

#[tokio::test]
async fn log_out_everywhere_ends_the_other_devices() {
    let app = demo_app().await;
    log_out_everywhere_on(&app, &app).await;
}

#[tokio::test]
async fn on_redis_two_instances_share_sessions_and_log_out_everywhere() {
    let server = RedisServer::start();
    let a = app_on(Some(server.url())).await;
    let b = app_on(Some(server.url())).await;
    // Logged in on instance a, the counter works on instance b.
    let mut browser = Browser::new(&a);
    browser.log_in("alice", "wonderland").await;
    browser.app = &b;
    let csrf = browser.csrf("/profile").await;
    browser.post("/counter", &format!("csrf={csrf}")).await;
    browser.app = &a;
    assert!(
        browser
            .get("/profile")
            .await
            .body
            .contains("<th>Counter</th><td>1</td>")
    );
    log_out_everywhere_on(&a, &b).await;
    let records = server.records("sessile:*:s:*");
    assert_eq!(records.len(), 1, "only bob's session is left: {records:?}");
}

/// Alice on two devices (one per instance), bob on a third; alice logs out everywhere.
async fn log_out_everywhere_on(a: &Router, b: &Router) {
    let mut laptop = Browser::new(a);
    let mut phone = Browser::new(b);
    let mut other = Browser::new(a);
    laptop.log_in("alice", "wonderland").await;
    phone.log_in("alice", "wonderland").await;
    other.log_in("bob", "builder").await;

    let csrf = phone.csrf("/profile").await;
    let r = phone
        .post("/logout-everywhere", &format!("csrf={csrf}"))
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(location(&laptop.get("/profile").await), "/login");
    assert_eq!(location(&phone.get("/profile").await), "/login");
    assert!(other.get("/profile").await.body.contains("<td>bob</td>"));
}

#[tokio::test]
async fn health_check_needs_no_session() {
    let app = demo_app().await;
    let r = send(&app, Method::GET, "/healthz", None, None).await;
    assert_eq!(r.body, "ok");
    assert!(r.set_cookie("sid").is_none());
}

/// The example's routes and pages over `store`.
fn app_over(store: impl sessile::SessionStore) -> Router {
    let layer =
        sessile::SessionManagerLayer::builder(store, KeyRing::new(1, &[3; 32]).expect("keys"))
            .build()
            .expect("layer");
    sessile_login_example::with_sessions(sessile_login_example::routes("node-7"), layer)
}

#[tokio::test]
async fn a_logout_that_could_not_be_saved_says_so_and_can_be_retried() {
    let store = sessile_testkit::FaultyStore::new(sessile::MemoryStore::new());
    let app = app_over(store.clone());
    let mut b = Browser::new(&app);
    b.log_in("alice", "wonderland").await;
    let csrf = b.csrf("/profile").await;
    let token = b.token.clone().expect("logged in");
    store.fail_writes(true);
    let r = b.post("/logout", &format!("csrf={csrf}")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.body.contains("could not be saved"), "{}", r.body);
    assert!(
        r.set_cookie("sid").is_none(),
        "the cookie stays: the session still lives"
    );
    assert_eq!(b.token.as_deref(), Some(token.as_str()));
    store.fail_writes(false);
    assert!(b.get("/profile").await.body.contains("<td>alice</td>"));
    let r = b.post("/logout", &format!("csrf={csrf}")).await;
    assert_eq!((r.status, location(&r)), (StatusCode::SEE_OTHER, "/"));
    assert!(b.token.is_none(), "the retry logged out");
}

fn counted_app() -> (Router, sessile_testkit::CountingStore<sessile::MemoryStore>) {
    let store = sessile_testkit::CountingStore::new(sessile::MemoryStore::new());
    (app_over(store.clone()), store)
}

#[tokio::test]
async fn a_flood_of_login_form_visits_stores_nothing() {
    let (app, store) = counted_app();
    for _ in 0..200 {
        let r = send(&app, Method::GET, "/login", None, None).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.set_cookie("sid").is_none());
        assert!(r.set_cookie(LOGIN_CSRF).is_some());
    }
    assert_eq!(store.total(), 0, "not one store call");
    assert_eq!(store.inner().len(), 0);
    // A forged form without the matching cookie is refused.
    let mut b = Browser::new(&app);
    let csrf = b.csrf("/login").await;
    b.login_csrf = Some("0".repeat(64));
    let r = b
        .post(
            "/login",
            &format!("username=alice&password=wonderland&csrf={csrf}"),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn password_guessing_is_throttled_per_user_name() {
    let (app, _store) = counted_app();
    let mut b = Browser::new(&app);
    for _ in 0..sessile_login_example::MAX_FAILURES_PER_USER {
        assert_eq!(
            b.log_in("alice", "guess").await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    let r = b.log_in("alice", "guess").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers[header::RETRY_AFTER], "60");
    // Even the right password waits out the window: guessing it must not pay off.
    let r = b.log_in("alice", "wonderland").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    // Another user is not locked out by alice's attacker.
    let r = Browser::new(&app).log_in("bob", "builder").await;
    assert_eq!(
        (r.status, location(&r)),
        (StatusCode::SEE_OTHER, "/profile")
    );
}

#[tokio::test]
async fn empty_csrf_tokens_and_huge_user_names_are_refused_cheaply() {
    let (app, _store) = counted_app();
    let mut b = Browser::new(&app);
    b.login_csrf = Some(String::new());
    let r = b
        .post("/login", "username=alice&password=wonderland&csrf=")
        .await;
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "an empty token matches nothing"
    );
    let mut b = Browser::new(&app);
    let csrf = b.csrf("/login").await;
    let name = "a".repeat(sessile_login_example::MAX_USER_NAME + 1);
    let r = b
        .post("/login", &format!("username={name}&password=x&csrf={csrf}"))
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

/// The metrics page shows, in the Prometheus text format, the store's latency as a histogram with
/// the example's buckets, the sessions created, and token rejections, after a login and a
/// garbage cookie.
#[tokio::test]
async fn the_metrics_page_shows_store_latency_sessions_and_rejected_tokens() {
    let app = demo_app().await;
    let mut b = Browser::new(&app);
    let r = b.log_in("bob", "builder").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let mut garbage = Browser::new(&app);
    garbage.token = Some("node-7.garbage".into());
    garbage.get("/profile").await;

    let page = send(
        &sessile_login_example::metrics_routes(),
        Method::GET,
        "/metrics",
        None,
        None,
    )
    .await;
    assert_eq!(page.status, StatusCode::OK);
    let text = page.body;
    for line in [
        "# TYPE sessile_store_op_seconds histogram",
        "sessile_store_op_seconds_bucket{op=\"create\",le=\"0.0001\"}",
        "sessile_store_op_seconds_bucket{op=\"create\",le=\"10\"}",
        "sessile_store_op_seconds_count{op=\"create\"}",
        "sessile_store_ops_total{op=\"create\",outcome=\"ok\"}",
        "sessile_sessions_created_total",
        "sessile_tokens_rejected_total{reason=\"malformed\"}",
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
    // Ids and tokens never become labels.
    assert!(!text.contains("garbage"));
}

/// The operator's status page shows this instance's figures in a browser: the breaker state in
/// words, the headline counters, store latency per operation and the session counters, without
/// histogram buckets.
#[tokio::test]
async fn the_status_page_shows_the_breaker_and_the_counters() {
    let app = demo_app().await;
    let mut b = Browser::new(&app);
    assert_eq!(
        b.log_in("bob", "builder").await.status,
        StatusCode::SEE_OTHER
    );
    let page = send(
        &sessile_login_example::metrics_routes(),
        Method::GET,
        "/status",
        None,
        None,
    )
    .await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body.contains(
            "Store circuit breaker: <strong>none (sessions are kept in this process)</strong>"
        ),
        "{}",
        page.body
    );
    assert!(page.body.contains("sessile_sessions_created_total"));
    assert!(
        page.body
            .contains("sessile_store_op_seconds_count{op=&quot;create&quot;}")
    );
    assert!(!page.body.contains("_bucket{"));
    // The headline and the latency table, read from the same figures.
    assert!(
        page.body.contains("<td>Sessions created</td><td>"),
        "{}",
        page.body
    );
    let create = page
        .body
        .find("<td>create</td>")
        .expect("a latency row for create");
    assert!(page.body[create..].contains("<td>&le; "), "{}", page.body);
}

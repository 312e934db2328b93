//! The login example: HTML pages for logging in, a per-session counter, logout, and logout on
//! every device, on sessile with the embedded memory store, or on Redis when given a URL.
//!
//! The login form stores nothing per visitor: its CSRF token is a double-submit `__Host-` cookie
//! (so a flood of visitors costs no memory). The forms of a logged-in session carry a CSRF token
//! kept in the session. Tokens are compared in constant time; the session id is cycled on login;
//! passwords are Argon2id hashes checked off the async runtime, a bounded number at a time, and
//! wrong guesses are throttled per user name and per client address (429 with `Retry-After`).

mod telemetry;

pub use telemetry::{STORE_LATENCY_BUCKETS, metrics_handle, metrics_routes};

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::Router;
use axum::extract::{Form, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use rand::RngCore;
use serde::Deserialize;
use sessile::{
    DegradedMode, Hint, KeyRing, MemoryStore, SaveError, Session, SessionError, SessionManagerLayer,
};
use sessile_redis::RedisStore;
use subtle::ConstantTimeEq;

/// Session key of the CSRF token.
const CSRF: &str = "csrf";
/// Session key of the counter.
const COUNTER: &str = "counter";

/// Demo accounts. Only their Argon2id hashes are kept in memory (see [`USERS`]).
const DEMO_USERS: &[(&str, &str)] = &[("alice", "wonderland"), ("bob", "builder")];

/// User name -> Argon2id PHC string, hashed once at first use with a random salt.
static USERS: LazyLock<HashMap<&'static str, String>> = LazyLock::new(|| {
    DEMO_USERS
        .iter()
        .map(|(user, password)| (*user, hash_password(password)))
        .collect()
});

/// Verified against when the user name is unknown, so a wrong name costs as long as a wrong
/// password and response times do not reveal which accounts exist.
static DUMMY_HASH: LazyLock<String> = LazyLock::new(|| hash_password("not a real password"));

fn hash_password(password: &str) -> String {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).expect("16 bytes is a valid salt");
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("Argon2 with default parameters hashes any password")
        .to_string()
}

/// Password checks running at once, at most: each takes tens of milliseconds of a core, so a
/// flood of logins queues here instead of filling the blocking pool.
const MAX_CONCURRENT_HASHES: usize = 4;

/// How long a login waits for a hashing slot before it is told to come back (503).
const HASH_QUEUE_WAIT: Duration = Duration::from_secs(2);

static HASHING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_CONCURRENT_HASHES);

/// Wrong passwords allowed per user name, and per client address, in one [`THROTTLE_WINDOW`].
pub const MAX_FAILURES_PER_USER: u32 = 5;
/// See [`MAX_FAILURES_PER_USER`].
pub const MAX_FAILURES_PER_ADDRESS: u32 = 20;
/// The window of the login throttle, from a user name's (or address's) first wrong password.
pub const THROTTLE_WINDOW: Duration = Duration::from_secs(60);

/// Counts wrong passwords per user name and per client address, bounded in memory.
#[derive(Clone)]
struct Throttle {
    failures: moka::sync::Cache<String, Arc<std::sync::atomic::AtomicU32>>,
}

impl Throttle {
    fn new() -> Self {
        Self {
            failures: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(THROTTLE_WINDOW)
                .build(),
        }
    }

    fn keys(user: &str, addr: Option<std::net::IpAddr>) -> [(String, u32); 2] {
        // An IPv6 client usually has a whole /64: count it as one address.
        let addr = match addr {
            Some(std::net::IpAddr::V6(v6)) => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
            Some(v4) => v4.to_string(),
            None => "unknown".to_owned(),
        };
        [
            (format!("user:{user}"), MAX_FAILURES_PER_USER),
            (format!("addr:{addr}"), MAX_FAILURES_PER_ADDRESS),
        ]
    }

    fn blocked(&self, user: &str, addr: Option<std::net::IpAddr>) -> bool {
        Self::keys(user, addr).iter().any(|(k, max)| {
            self.failures
                .get(k)
                .is_some_and(|n| n.load(std::sync::atomic::Ordering::Relaxed) >= *max)
        })
    }

    fn failed(&self, user: &str, addr: Option<std::net::IpAddr>) {
        for (k, _) in Self::keys(user, addr) {
            self.failures
                .get_with(k, Arc::default)
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// The client's address, when the server was started with connect info.
struct ClientAddr(Option<std::net::IpAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

/// A hashing slot, or `None` when every slot stayed busy for [`HASH_QUEUE_WAIT`].
async fn hashing_slot() -> Option<tokio::sync::SemaphorePermit<'static>> {
    tokio::time::timeout(HASH_QUEUE_WAIT, HASHING.acquire())
        .await
        .ok()?
        .ok()
}

/// Checks a password on a blocking thread (Argon2 takes tens of milliseconds by design), holding
/// `slot` until the hash is done: a client that goes away does not free the slot early.
async fn verify_with(
    slot: tokio::sync::SemaphorePermit<'static>,
    user: &str,
    password: String,
) -> bool {
    let known = USERS.get(user).cloned();
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let phc = known.as_deref().unwrap_or(&DUMMY_HASH);
        let ok = PasswordHash::new(phc)
            .map(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false);
        ok && known.is_some()
    })
    .await
    .unwrap_or(false)
}

/// [`verify_with`] on a slot from [`hashing_slot`]; `None` when none came free.
#[cfg(test)]
async fn verify_password(user: &str, password: String) -> Option<bool> {
    let slot = hashing_slot().await?;
    Some(verify_with(slot, user, password).await)
}

/// Longest user name accepted: longer ones are refused before any hashing or throttling, so a
/// flood of huge names cannot fill the throttle's memory.
pub const MAX_USER_NAME: usize = 64;

/// What the app needs to start.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// Keys for the session tokens.
    pub keys: KeyRing,
    /// This instance's routing hint.
    pub node: Hint,
    /// Redis URL (`redis://`, `redis-sentinel://`, `redis-cluster://`); `None` for the memory store.
    pub redis_url: Option<String>,
    /// What to do while the store is unreachable.
    pub degraded: DegradedMode,
}

#[derive(Clone)]
struct AppState {
    node: Arc<str>,
    throttle: Throttle,
}

/// Builds the app: on Redis when `redis_url` is set (connecting now, so a bad URL or an
/// unreachable server fails here with a typed error), else on the in-memory store.
pub async fn app(config: AppConfig) -> Result<Router, Box<dyn std::error::Error + Send + Sync>> {
    // Before the layer exists, so that no metric is recorded into the void.
    metrics_handle();
    let builder = match &config.redis_url {
        Some(url) => SessionManagerLayer::builder(RedisStore::connect(url).await?, config.keys),
        // Bounded, so that a flood of new visitors cannot exhaust memory (oldest sessions go
        // first when it is full).
        None => SessionManagerLayer::builder(
            MemoryStore::builder().capacity(MEMORY_CAPACITY).build(),
            config.keys,
        ),
    };
    // Hints an edge can route on (`<route key>-<node>`): see docs/affinity.md.
    let sessions = builder
        .hint_source(sessile::AffinityHints::new(config.node.as_str())?)
        .degraded_mode(config.degraded)
        .build()?;
    Ok(with_sessions(routes(config.node.as_str()), sessions))
}

/// Sessions kept by the embedded store at most.
pub const MEMORY_CAPACITY: usize = 100_000;

/// Wraps `routes` in `sessions` and in the page that reports a change that could not be saved.
pub fn with_sessions(routes: Router, sessions: SessionManagerLayer) -> Router {
    routes
        .layer(sessions)
        .layer(axum::middleware::map_response(save_failure_page))
}

/// A change that could not be saved must not look like success: the form answers 503 with a page
/// that says what happened, and the user can try again (a logout that failed leaves the user
/// logged in, with the cookie, so trying again works). A session that ended meanwhile (a logout
/// elsewhere) is not an error.
async fn save_failure_page(res: Response) -> Response {
    let Some(failed) = res.extensions().get::<sessile::SaveFailed>() else {
        return res;
    };
    let message = match **failed {
        // A session that ended meanwhile (a logout elsewhere) is not an error.
        SaveError::Ended => return res,
        // A login moved the session while this request ran: its change (a logout, say) named
        // the old id and did not happen.
        SaveError::Rotated => {
            "Your session was renewed (a login) while this was on its way, so it was not done. \
             Please go back, reload and try again."
        }
        // The store's reply was lost: the change happened once or not at all.
        SaveError::Unknown(_) => {
            "The session store did not confirm your change: it may or may not have been saved. \
             Please reload to check before trying again."
        }
        _ => {
            "Your change could not be saved: the session store is not answering. Nothing was \
             changed; please go back and try again."
        }
    };
    let mut page = (
        StatusCode::SERVICE_UNAVAILABLE,
        [(axum::http::header::RETRY_AFTER, "1")],
        page(
            "Not saved",
            &format!("<p class=\"error\">{message}</p><p><a href=\"/\">Home</a></p>"),
        ),
    )
        .into_response();
    // Keep the session's own headers (Set-Cookie, Vary, Cache-Control).
    for name in [
        axum::http::header::SET_COOKIE,
        axum::http::header::VARY,
        axum::http::header::CACHE_CONTROL,
    ] {
        for v in res.headers().get_all(&name) {
            page.headers_mut().append(&name, v.clone());
        }
    }
    page
}

/// The routes, without the session layer (so tests can wrap them in their own).
pub fn routes(node: &str) -> Router {
    Router::new()
        .route("/", get(home))
        .route("/login", get(login_form).post(login))
        .route("/profile", get(profile))
        .route("/counter", post(increment))
        .route("/logout", post(logout))
        .route("/logout-everywhere", post(logout_everywhere))
        .route("/healthz", get(|| async { "ok" }))
        .layer(axum::middleware::map_response_with_state(
            Arc::<str>::from(node),
            |axum::extract::State(node): axum::extract::State<Arc<str>>,
             mut res: Response| async move {
                // Which instance answered: for the affinity tests and for operators.
                if let Ok(v) = axum::http::HeaderValue::from_str(&node) {
                    res.headers_mut().insert("x-served-by", v);
                }
                res
            },
        ))
        .with_state(AppState {
            node: node.into(),
            throttle: Throttle::new(),
        })
}

/// Errors a page can end in.
#[derive(Debug)]
enum AppError {
    Session(SessionError),
    Csrf,
    NotLoggedIn,
    Throttled,
    Busy,
}

impl From<SessionError> for AppError {
    fn from(e: SessionError) -> Self {
        Self::Session(e)
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        match self {
            Self::Session(e) => e.into_response(),
            Self::Csrf => (
                StatusCode::FORBIDDEN,
                page("Forbidden", "<p>The form expired or did not come from this site. Go back, reload and try again.</p>"),
            )
                .into_response(),
            Self::NotLoggedIn => Redirect::to("/login").into_response(),
            Self::Throttled => (
                StatusCode::TOO_MANY_REQUESTS,
                [(axum::http::header::RETRY_AFTER, THROTTLE_WINDOW.as_secs().to_string())],
                page("Too many attempts", "<p>Too many wrong passwords. Wait a minute and try again.</p>"),
            )
                .into_response(),
            Self::Busy => (
                StatusCode::SERVICE_UNAVAILABLE,
                [(axum::http::header::RETRY_AFTER, "1".to_owned())],
                page("Busy", "<p>Too many logins at once. Try again in a moment.</p>"),
            )
                .into_response(),
        }
    }
}

type PageResult = Result<Response, AppError>;

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

#[derive(Deserialize)]
struct LoginForm {
    username: String,
    password: String,
    csrf: String,
}

/// 32 random bytes, hex.
fn random_token() -> String {
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    raw.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The session's CSRF token, made on first use.
fn csrf_token(session: &Session) -> Result<String, SessionError> {
    if let Some(token) = session.get::<String>(CSRF)? {
        return Ok(token);
    }
    let token = random_token();
    session.insert(CSRF, &token)?;
    Ok(token)
}

/// The login form's CSRF cookie. `__Host-`: only this origin, over HTTPS (or localhost), can set
/// it, so a sibling domain cannot plant a value to match a forged form.
const LOGIN_CSRF_COOKIE: &str = "__Host-login-csrf";

/// The login form's CSRF token as the request's cookie carries it.
fn login_csrf_cookie(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split(';'))
        .find_map(|c| {
            let (name, value) = c.trim().split_once('=')?;
            (name == LOGIN_CSRF_COOKIE).then(|| value.to_owned())
        })
}

fn set_login_csrf(token: &str, max_age: u64) -> (axum::http::HeaderName, String) {
    (
        axum::http::header::SET_COOKIE,
        format!(
            "{LOGIN_CSRF_COOKIE}={token}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={max_age}"
        ),
    )
}

fn check_csrf(session: &Session, sent: &str) -> Result<(), AppError> {
    let expected = session.get::<String>(CSRF)?.ok_or(AppError::Csrf)?;
    if bool::from(expected.as_bytes().ct_eq(sent.as_bytes())) {
        Ok(())
    } else {
        Err(AppError::Csrf)
    }
}

fn logged_in(session: &Session) -> Result<String, AppError> {
    session.user_id().ok_or(AppError::NotLoggedIn)
}

async fn home(session: Session) -> PageResult {
    if session.user_id().is_some() {
        return Ok(Redirect::to("/profile").into_response());
    }
    Ok(page(
        "sessile demo",
        "<p>You are not logged in.</p><p><a href=\"/login\">Log in</a></p>",
    )
    .into_response())
}

/// The login form: nothing is stored for an anonymous visitor. The CSRF token goes into a cookie
/// and into the form, and the login compares the two (double submit).
async fn login_form() -> Response {
    let token = random_token();
    ([set_login_csrf(&token, 3600)], login_page(&token, None)).into_response()
}

fn login_page(csrf: &str, error: Option<&str>) -> Html<String> {
    let error = error.map_or(String::new(), |e| {
        format!("<p class=\"error\">{}</p>", escape(e))
    });
    page(
        "Log in",
        &format!(
            "{error}<form method=\"post\" action=\"/login\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <label>User <input name=\"username\" autocomplete=\"username\"></label>\
             <label>Password <input name=\"password\" type=\"password\" autocomplete=\"current-password\"></label>\
             <button>Log in</button></form>\
             <p>Demo users: alice / wonderland, bob / builder.</p>",
            csrf = escape(csrf),
        ),
    )
}

async fn login(
    session: Session,
    State(state): State<AppState>,
    ClientAddr(addr): ClientAddr,
    headers: axum::http::HeaderMap,
    Form(form): Form<LoginForm>,
) -> PageResult {
    let cookie = login_csrf_cookie(&headers).ok_or(AppError::Csrf)?;
    if cookie.len() != 64 || !bool::from(cookie.as_bytes().ct_eq(form.csrf.as_bytes())) {
        return Err(AppError::Csrf);
    }
    let wrong = || {
        let page = login_page(&form.csrf, Some("Wrong user name or password."));
        Ok((StatusCode::UNAUTHORIZED, page).into_response())
    };
    if form.username.len() > MAX_USER_NAME {
        return wrong();
    }
    if state.throttle.blocked(&form.username, addr) {
        return Err(AppError::Throttled);
    }
    let slot = hashing_slot().await.ok_or(AppError::Busy)?;
    // Checked again with the slot in hand: guesses that queued together all passed the first
    // check, and at most `MAX_CONCURRENT_HASHES` of them may pass this one.
    if state.throttle.blocked(&form.username, addr) {
        return Err(AppError::Throttled);
    }
    if !verify_with(slot, &form.username, form.password.clone()).await {
        state.throttle.failed(&form.username, addr);
        return wrong();
    }
    // Records the user and gives the session a new id: the pre-login id (which an attacker might
    // have planted) dies here.
    session.log_in(&form.username);
    session.remove(CSRF);
    csrf_token(&session)?;
    Ok(([set_login_csrf("", 0)], Redirect::to("/profile")).into_response())
}

async fn profile(session: Session, State(state): State<AppState>) -> PageResult {
    let user = logged_in(&session)?;
    let csrf = csrf_token(&session)?;
    let counter = session.get::<u64>(COUNTER)?.unwrap_or(0);
    let info = session.info();
    let now = SystemTime::now();
    let facts = [
        ("User", escape(&user)),
        ("Session id", session.id_redacted().unwrap_or_default()),
        (
            "Created",
            info.as_ref().map_or("-".into(), |i| ago(now, i.created_at)),
        ),
        (
            "Expires if idle",
            info.as_ref()
                .map_or("-".into(), |i| until(now, i.idle_deadline)),
        ),
        (
            "Expires at the latest",
            info.as_ref()
                .map_or("-".into(), |i| until(now, i.absolute_deadline)),
        ),
        (
            "Routing hint",
            escape(info.as_ref().map_or("", |i| i.hint.as_str())),
        ),
        ("Served by node", escape(&state.node)),
        ("Counter", counter.to_string()),
        (
            "Store",
            if session.is_degraded() {
                "unreachable: showing a recent copy, changes are not saved".into()
            } else {
                "ok".into()
            },
        ),
    ];
    let rows: String = facts
        .iter()
        .map(|(k, v)| format!("<tr><th>{k}</th><td>{v}</td></tr>"))
        .collect();
    let form = |action: &str, label: &str| {
        format!(
            "<form method=\"post\" action=\"{action}\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"><button>{label}</button></form>",
            escape(&csrf)
        )
    };
    Ok(page(
        "Profile",
        &format!(
            "<table>{rows}</table>{}{}{}",
            form("/counter", "Increment counter"),
            form("/logout", "Log out"),
            form("/logout-everywhere", "Log out everywhere"),
        ),
    )
    .into_response())
}

async fn increment(session: Session, Form(form): Form<CsrfForm>) -> PageResult {
    check_csrf(&session, &form.csrf)?;
    logged_in(&session)?;
    session.update(COUNTER, |n: Option<u64>| n.unwrap_or(0) + 1)?;
    Ok(Redirect::to("/profile").into_response())
}

async fn logout(session: Session, Form(form): Form<CsrfForm>) -> PageResult {
    check_csrf(&session, &form.csrf)?;
    session.destroy();
    Ok(Redirect::to("/").into_response())
}

async fn logout_everywhere(session: Session, Form(form): Form<CsrfForm>) -> PageResult {
    check_csrf(&session, &form.csrf)?;
    logged_in(&session)?;
    let ended = session.destroy_everywhere().await?;
    tracing::info!(ended, "logged out everywhere");
    Ok(Redirect::to("/").into_response())
}

fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\
         <style>body{{font-family:sans-serif;max-width:40em;margin:2em auto}}th{{text-align:left;padding-right:1em}}\
         form{{margin:.5em 0}}label{{display:block;margin:.3em 0}}.error{{color:#b00}}</style></head>\
         <body><h1>{title}</h1>{body}</body></html>"
    ))
}

/// Escapes text for HTML element content and quoted attribute values.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn human(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    let mins = ms / 60_000;
    match mins {
        0 => format!("{} s", ms / 1000),
        m if m < 120 => format!("{m} min"),
        m => format!("{} h {} min", m / 60, m % 60),
    }
}

fn ago(now: SystemTime, t: SystemTime) -> String {
    format!("{} ago", human(now.duration_since(t).unwrap_or_default()))
}

fn until(now: SystemTime, t: SystemTime) -> String {
    format!("in {}", human(t.duration_since(now).unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_neutralises_markup() {
        assert_eq!(
            escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[tokio::test]
    async fn only_the_right_password_verifies() {
        assert_eq!(
            verify_password("alice", "wonderland".into()).await,
            Some(true)
        );
        assert_eq!(
            verify_password("alice", "builder".into()).await,
            Some(false)
        );
        assert_eq!(
            verify_password("mallory", "wonderland".into()).await,
            Some(false)
        );
    }
}

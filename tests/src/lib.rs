//! Support for sessile's integration tests: store wrappers that count or fail operations, and a
//! minimal HTTP client that drives a `Router` in-process with a cookie.

pub mod proxy;
pub mod races;
pub mod redis;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::Path;
use axum::routing::{get, post};
use http::{HeaderMap, Method, Request, StatusCode, header};
use sessile::clock::UnixMillis;
use sessile::record::Record;
use sessile::store::{Settled, WriteId};
use sessile::{SaveFailed, Session, SessionError, SessionId, SessionStore, StoreError};
use tokio::sync::Notify;
use tower::ServiceExt as _;

/// A store wrapped with a hook that runs before every operation and may fail it.
///
/// [`CountingStore`] and [`FaultyStore`] are the two hooks the tests use. `Hooked` derefs to its
/// hook, so `store.count("load")` and `store.fail_writes(true)` read naturally.
#[derive(Clone)]
pub struct Hooked<S, H> {
    inner: S,
    hook: H,
}

/// Runs before each store operation.
pub trait Hook: Send + Sync + 'static {
    /// Called with the operation's name; an error is returned instead of calling the store.
    fn before(&self, op: &'static str) -> impl Future<Output = Result<(), StoreError>> + Send;
}

impl<S, H> Hooked<S, H> {
    /// Wraps `inner` with any hook.
    pub fn with_hook(inner: S, hook: H) -> Self {
        Self { inner, hook }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S, H> std::ops::Deref for Hooked<S, H> {
    type Target = H;
    fn deref(&self) -> &H {
        &self.hook
    }
}

impl<S: SessionStore, H: Hook> SessionStore for Hooked<S, H> {
    async fn load(&self, id: SessionId) -> Result<Option<Record>, StoreError> {
        self.hook.before("load").await?;
        self.inner.load(id).await
    }
    async fn create(&self, record: &Record, write: WriteId) -> Result<(), StoreError> {
        self.hook.before("create").await?;
        self.inner.create(record, write).await
    }
    async fn save(&self, record: &Record, expected: u64, write: WriteId) -> Result<(), StoreError> {
        self.hook.before("save").await?;
        self.inner.save(record, expected, write).await
    }
    async fn touch(&self, id: SessionId, deadline: UnixMillis) -> Result<(), StoreError> {
        self.hook.before("touch").await?;
        self.inner.touch(id, deadline).await
    }
    async fn rotate(
        &self,
        old: SessionId,
        record: &Record,
        expected: u64,
        write: WriteId,
    ) -> Result<(), StoreError> {
        self.hook.before("rotate").await?;
        self.inner.rotate(old, record, expected, write).await
    }
    async fn settle(
        &self,
        old: SessionId,
        new: SessionId,
        expected: u64,
        write: WriteId,
    ) -> Result<Settled, StoreError> {
        self.hook.before("settle").await?;
        self.inner.settle(old, new, expected, write).await
    }
    async fn destroy(&self, id: SessionId) -> Result<(), StoreError> {
        self.hook.before("destroy").await?;
        self.inner.destroy(id).await
    }
    async fn destroy_user(&self, tenant: Option<&str>, user: &str) -> Result<u64, StoreError> {
        self.hook.before("destroy_user").await?;
        self.inner.destroy_user(tenant, user).await
    }
}

/// Counts calls per operation.
#[derive(Clone, Default)]
pub struct Counter {
    counts: Arc<Mutex<HashMap<&'static str, u64>>>,
}

/// A store that counts its calls.
pub type CountingStore<S> = Hooked<S, Counter>;

impl<S> Hooked<S, Counter> {
    /// Wraps `inner`, counting from zero.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            hook: Counter::default(),
        }
    }
}

impl Counter {
    /// Calls of `op` so far.
    pub fn count(&self, op: &str) -> u64 {
        self.counts
            .lock()
            .expect("lock")
            .get(op)
            .copied()
            .unwrap_or(0)
    }

    /// Calls of every operation so far.
    pub fn total(&self) -> u64 {
        self.counts.lock().expect("lock").values().sum()
    }

    /// Forgets the counts.
    pub fn reset(&self) {
        self.counts.lock().expect("lock").clear();
    }
}

impl Hook for Counter {
    async fn before(&self, op: &'static str) -> Result<(), StoreError> {
        *self.counts.lock().expect("lock").entry(op).or_default() += 1;
        Ok(())
    }
}

/// Switchable faults: failing writes, failing loads, or hanging like a paused server.
#[derive(Clone, Default)]
pub struct Faults {
    fail_writes: Arc<AtomicBool>,
    fail_loads: Arc<AtomicBool>,
    hang: Arc<AtomicBool>,
    hung: Arc<Notify>,
}

/// A store whose operations can be made to fail or hang.
pub type FaultyStore<S> = Hooked<S, Faults>;

impl<S> Hooked<S, Faults> {
    /// Wraps `inner` with every fault off.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            hook: Faults::default(),
        }
    }
}

#[derive(Debug)]
struct Injected;
impl std::fmt::Display for Injected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("injected fault")
    }
}
impl std::error::Error for Injected {}

impl Faults {
    /// Makes writes (everything but load) fail as unavailable.
    pub fn fail_writes(&self, on: bool) {
        self.fail_writes.store(on, Ordering::SeqCst);
    }
    /// Makes loads fail as unavailable.
    pub fn fail_loads(&self, on: bool) {
        self.fail_loads.store(on, Ordering::SeqCst);
    }
    /// Makes every operation wait forever (a paused server).
    pub fn hang(&self, on: bool) {
        self.hang.store(on, Ordering::SeqCst);
    }

    /// Woken (`notify_waiters`) whenever an operation starts to hang: register with
    /// `Notified::enable` before starting the operation.
    pub fn hung(&self) -> &Notify {
        &self.hung
    }
}

impl Hook for Faults {
    async fn before(&self, op: &'static str) -> Result<(), StoreError> {
        if self.hang.load(Ordering::SeqCst) {
            self.hung.notify_waiters();
            std::future::pending::<()>().await;
        }
        let flag = if op == "load" {
            &self.fail_loads
        } else {
            &self.fail_writes
        };
        if flag.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable(Box::new(Injected)));
        }
        Ok(())
    }
}

/// What a test needs from a response.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body as text.
    pub body: String,
    /// The save error the layer attached, if any.
    pub save_failed: Option<SaveFailed>,
}

impl Reply {
    /// The `Set-Cookie` header for `name`, if any.
    pub fn set_cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with(&format!("{name}=")))
            .map(str::to_owned)
    }

    /// The cookie value set for `name` (empty for a removal).
    pub fn cookie_value(&self, name: &str) -> Option<String> {
        let set = self.set_cookie(name)?;
        let first = set.split(';').next()?;
        Some(first[name.len() + 1..].to_owned())
    }
}

/// A browser's cookie jar for one cookie: applies each response's `Set-Cookie` in the order the
/// responses arrive, as a browser does.
#[derive(Debug, Clone, Default)]
pub struct Jar {
    /// The cookie's value, if the jar holds one.
    pub value: Option<String>,
}

impl Jar {
    /// Applies `reply`'s `Set-Cookie` for `name`, if any: an empty value removes the cookie.
    pub fn apply(&mut self, reply: &Reply, name: &str) {
        match reply.cookie_value(name) {
            Some(v) if v.is_empty() => self.value = None,
            Some(v) => self.value = Some(v),
            None => {}
        }
    }
}

/// Sends one request to `app` with an optional cookie header and form body.
pub async fn send(
    app: &Router,
    method: Method,
    uri: &str,
    cookie: Option<&str>,
    form: Option<&str>,
) -> Reply {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(c) = cookie {
        req = req.header(header::COOKIE, c);
    }
    let body = match form {
        Some(f) => {
            req = req.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
            Body::from(f.to_owned())
        }
        None => Body::empty(),
    };
    let res = app
        .clone()
        .oneshot(req.body(body).expect("request"))
        .await
        .expect("router is infallible");
    let status = res.status();
    let save_failed = res.extensions().get::<SaveFailed>().cloned();
    let headers = res.headers().clone();
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .expect("body");
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
        save_failed,
    }
}

/// Lets a test hold a request inside its handler: the handler signals `entered`, then waits
/// for `release`.
#[derive(Default)]
pub struct Gate {
    /// Signalled when a gated handler has loaded its session.
    pub entered: Notify,
    /// Signal to let the gated handler finish.
    pub release: Notify,
    /// The same pair for the gated read (`/slow-read`).
    pub read_entered: Notify,
    /// Signal to let the gated read finish.
    pub read_release: Notify,
}

/// The routes the integration tests drive: read, set, update, login (cycle), logout, failures.
pub fn routes(gate: Arc<Gate>) -> Router {
    Router::new()
        .route("/none", get(|| async { "ok" }))
        .route(
            "/read",
            get(|s: Session| async move {
                Ok::<_, SessionError>(s.get::<String>("name")?.unwrap_or_else(|| "-".into()))
            }),
        )
        .route(
            "/set/{v}",
            post(|s: Session, Path(v): Path<String>| async move { s.insert("name", &v) }),
        )
        .route(
            "/put/{k}",
            post(|s: Session, Path(k): Path<String>| async move { s.insert(&k, &true) }),
        )
        .route("/keys", get(|s: Session| async move { s.keys().join(",") }))
        .route(
            "/whoami",
            get(|s: Session| async move { s.user_id().unwrap_or_else(|| "-".into()) }),
        )
        .route("/cycle", post(|s: Session| async move { s.cycle_id() }))
        .route(
            "/name-as-map",
            // A string read as a map: serde's error message quotes the stored value.
            get(|s: Session| async move {
                s.get::<HashMap<String, u64>>("name")
                    .map(|n| format!("{n:?}"))
            }),
        )
        .route(
            "/unchanged",
            post(|s: Session| async move {
                s.remove("absent");
                s.update("name", |v: Option<String>| v.unwrap_or_default())?;
                Ok::<_, SessionError>("ok")
            }),
        )
        .route(
            "/incr",
            post(|s: Session| async move {
                s.update("n", |n: Option<u64>| n.unwrap_or(0) + 1)
                    .map(|n| n.to_string())
            }),
        )
        .route(
            "/n",
            get(|s: Session| async move {
                Ok::<_, SessionError>(s.get::<u64>("n")?.unwrap_or(0).to_string())
            }),
        )
        .route(
            "/login/{user}",
            post(|s: Session, Path(user): Path<String>| async move {
                s.cycle_id();
                s.set_user_id(Some(&user));
                s.insert("user", &user)
            }),
        )
        .route("/logout", post(|s: Session| async move { s.destroy() }))
        .route("/slow-logout", {
            let gate = Arc::clone(&gate);
            post(move |s: Session| {
                let gate = Arc::clone(&gate);
                async move {
                    gate.entered.notify_one();
                    gate.release.notified().await;
                    s.destroy();
                }
            })
        })
        .route(
            "/logout-everywhere",
            post(|s: Session| async move { s.destroy_everywhere().await.map(|n| n.to_string()) }),
        )
        .route(
            "/fail",
            post(|s: Session| async move {
                s.insert("name", "from a failing handler")?;
                Ok::<_, SessionError>(StatusCode::INTERNAL_SERVER_ERROR)
            }),
        )
        .route(
            "/big",
            post(|s: Session| async move { s.insert("blob", &"x".repeat(20_000)) }),
        )
        .route("/slow-read", {
            let gate = Arc::clone(&gate);
            get(move |s: Session| {
                let gate = Arc::clone(&gate);
                async move {
                    gate.read_entered.notify_one();
                    gate.read_release.notified().await;
                    Ok::<_, SessionError>(s.get::<String>("name")?.unwrap_or_else(|| "-".into()))
                }
            })
        })
        .route(
            "/slow-incr",
            post(move |s: Session| {
                let gate = Arc::clone(&gate);
                async move {
                    gate.entered.notify_one();
                    gate.release.notified().await;
                    s.update("n", |n: Option<u64>| n.unwrap_or(0) + 1)
                        .map(|n| n.to_string())
                }
            }),
        )
}

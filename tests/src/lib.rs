//! Support for sessile's HTTP-level integration tests: a minimal client that drives a `Router`
//! in-process with a browser's cookie jar, the routes the tests call, and the races every store
//! must survive. The store wrappers and the Redis harness are in `sessile-testkit`.

pub mod races;

pub use sessile_testkit::{
    CountingStore, FaultyStore, Hook, Hooked, ManualInvalidations, proxy, redis,
};

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::Path;
use axum::routing::{get, post};
use http::{HeaderMap, Method, Request, StatusCode, header};
use sessile::{SaveFailed, Session, SessionError};
use tokio::sync::Notify;
use tower::ServiceExt as _;

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
    send_request(app, req.body(body).expect("request")).await
}

/// Sends a request built by the test.
pub async fn send_request(app: &Router, req: Request<Body>) -> Reply {
    let res = app
        .clone()
        .oneshot(req)
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
                s.log_in(&user);
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

/// How long `cache` went on serving its copy of `id`, polled without sleeping; fails after a
/// second (far above the invalidation delays measured, far below the default max age).
pub async fn until_dropped<S: sessile::store::invalidation::PublishesInvalidations>(
    cache: &sessile::store::CachedStore<S>,
    id: &sessile::SessionId,
) -> std::time::Duration {
    let start = std::time::Instant::now();
    while cache.serves(id) {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(1),
            "still served after {:?}",
            start.elapsed()
        );
        tokio::task::yield_now().await;
    }
    start.elapsed()
}

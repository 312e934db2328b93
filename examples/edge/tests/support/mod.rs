//! Shared by the edge router's tests and the proxy recipes' tests: app instances on runtimes of
//! their own (so that a kill closes every connection), and a browser-like client.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Path as UrlPath;
use axum::routing::{get, post};
use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use sessile::{AffinityHints, KeyRing, Session, SessionManagerLayer};
use sessile_affinity::RouteHint;
use sessile_redis::RedisStore;

/// One app instance, on a runtime of its own so that killing it closes its every connection.
pub struct Instance {
    pub node: String,
    pub addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Instance {
    pub fn start(node: &str, redis: &str, prefix: &str) -> Self {
        Self::start_holding(
            node,
            redis,
            prefix,
            Arc::new(tokio::sync::Semaphore::new(0)),
        )
    }

    /// As [`start`](Self::start), with `GET /hold` waiting for a permit of `hold` (shared by the
    /// instances, added by the test) before it answers.
    pub fn start_holding(
        node: &str,
        redis: &str,
        prefix: &str,
        hold: Arc<tokio::sync::Semaphore>,
    ) -> Self {
        let (node_owned, redis, prefix) = (node.to_owned(), redis.to_owned(), prefix.to_owned());
        let (runtime, addr) = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            let addr = runtime.block_on(async move {
                let store = RedisStore::builder(redis)
                    .prefix(prefix)
                    .connect()
                    .await
                    .expect("connect");
                let layer =
                    SessionManagerLayer::builder(store, KeyRing::new(1, &[9; 32]).expect("k"))
                        .hint_source(AffinityHints::new(&node_owned).expect("node id"))
                        .build()
                        .expect("layer");
                let app = app(&node_owned, hold).layer(layer);
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                let addr = listener.local_addr().expect("addr");
                tokio::spawn(async move { axum::serve(listener, app).await });
                addr
            });
            (runtime, addr)
        })
        .join()
        .expect("instance thread");
        Self {
            node: node.to_owned(),
            addr,
            runtime: Some(runtime),
        }
    }

    /// Stops it at once: listener and connections close.
    pub fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }

    pub fn line(&self, state: &str) -> String {
        format!("{} {} {state}\n", self.node, self.addr)
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The app: log in, who am I, a counter, an echo, a health check, and `GET /hold` (waits for a
/// permit of `hold`, at most 10 s, then answers who am I); every answer says which node.
pub fn app(node: &str, hold: Arc<tokio::sync::Semaphore>) -> Router {
    let node: Arc<str> = node.into();
    Router::new()
        .route(
            "/hold",
            get(move |s: Session| {
                let hold = hold.clone();
                async move {
                    // Bounded: a failing test does not hold the instance for ever.
                    let permit =
                        tokio::time::timeout(Duration::from_secs(10), hold.acquire_owned()).await;
                    if let Ok(Ok(permit)) = permit {
                        permit.forget();
                    }
                    s.user_id().unwrap_or_else(|| "-".into())
                }
            }),
        )
        .route(
            "/login/{user}",
            post(|s: Session, UrlPath(user): UrlPath<String>| async move {
                s.log_in(&user);
                "ok"
            }),
        )
        .route(
            "/whoami",
            get(|s: Session| async move { s.user_id().unwrap_or_else(|| "-".into()) }),
        )
        .route(
            "/incr",
            post(|s: Session| async move {
                s.update("n", |n: Option<u64>| n.unwrap_or(0) + 1)
                    .map(|n| n.to_string())
            }),
        )
        .route("/echo", post(|body: Bytes| async move { body }))
        .route("/healthz", get(|| async { "ok" }))
        .layer(axum::middleware::map_response(
            move |mut res: axum::response::Response| {
                let node = node.clone();
                async move {
                    res.headers_mut()
                        .insert("x-node", node.parse().expect("header value"));
                    res
                }
            },
        ))
}

/// A browser: one cookie jar, requests through the edge.
pub struct User {
    client: Client<HttpConnector, Full<Bytes>>,
    edge: SocketAddr,
    pub cookie: Option<String>,
}

pub struct Answer {
    pub status: StatusCode,
    pub node: String,
    pub body: Bytes,
    pub set_cookie: Option<String>,
}

impl User {
    pub fn new(edge: SocketAddr) -> Self {
        Self {
            client: Client::builder(hyper_util::rt::TokioExecutor::new()).build_http(),
            edge,
            cookie: None,
        }
    }

    pub async fn send(&mut self, method: Method, path: &str, body: Bytes) -> Answer {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.edge));
        if let Some(c) = &self.cookie {
            req = req.header(header::COOKIE, format!("sid={c}"));
        }
        let call = self
            .client
            .request(req.body(Full::new(body)).expect("request"));
        let res = tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .expect("the edge answers in time")
            .unwrap_or_else(|e| {
                panic!(
                    "{path} (cookie {:?}): {e:?}",
                    self.cookie.as_deref().and_then(|c| c.get(..20))
                )
            });
        let status = res.status();
        let node = res
            .headers()
            .get("x-node")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let set_cookie = res
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| v.strip_prefix("sid="))
            .map(|v| v.split(';').next().unwrap_or("").to_owned());
        if let Some(v) = &set_cookie {
            self.cookie = (!v.is_empty()).then(|| v.clone());
        }
        let body = res.into_body().collect().await.expect("body").to_bytes();
        Answer {
            status,
            node,
            body,
            set_cookie,
        }
    }

    pub async fn get(&mut self, path: &str) -> Answer {
        self.send(Method::GET, path, Bytes::new()).await
    }

    pub async fn post(&mut self, path: &str) -> Answer {
        self.send(Method::POST, path, Bytes::new()).await
    }

    /// The node the cookie's hint names.
    pub fn pinned(&self) -> String {
        let c = self.cookie.as_deref().expect("a session");
        RouteHint::from_cookie(c).expect("a hint").node.to_owned()
    }
}

/// The table text listing instances `listed`, those in `draining` as draining.
pub fn table(instances: &[Instance], listed: &[usize], draining: &[usize]) -> String {
    listed
        .iter()
        .map(|i| {
            instances[*i].line(if draining.contains(i) {
                "draining"
            } else {
                "healthy"
            })
        })
        .collect()
}

/// Polls `cond` (no fixed sleep) until it holds, for at most 10 s.
pub async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < Duration::from_secs(10), "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Logs `n` users in through `front`, named `<tag><i>`; each session is pinned where it was made.
pub async fn log_in(front: SocketAddr, tag: &str, n: usize) -> Vec<User> {
    let mut users = Vec::new();
    for i in 0..n {
        let mut u = User::new(front);
        let r = u.post(&format!("/login/{tag}{i}")).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        assert_eq!(
            u.pinned(),
            r.node,
            "the session is pinned where it was made"
        );
        users.push(u);
    }
    users
}

/// 20 requests for each of `users`: how many reached the node their hint names.
pub async fn sticky_share(users: &mut [User]) -> (usize, usize) {
    let (mut sticky, mut total) = (0, 0);
    for u in users.iter_mut() {
        for _ in 0..20 {
            let r = u.post("/incr").await;
            assert_eq!(r.status, StatusCode::OK);
            total += 1;
            sticky += usize::from(r.node == u.pinned());
        }
    }
    (sticky, total)
}

/// After `killed`'s instance died: every user is still logged in, served elsewhere; `killed`'s
/// users get a cookie naming their new node, and stay there. Returns where they went.
pub async fn moved_and_re_pinned(
    users: &mut [User],
    killed: &str,
) -> std::collections::BTreeMap<String, usize> {
    let mut moved_to = std::collections::BTreeMap::new();
    for (i, u) in users.iter_mut().enumerate() {
        let before = u.pinned();
        let r = u.get("/whoami").await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        assert_eq!(r.body, format!("u{i}"), "still logged in");
        assert_ne!(r.node, killed);
        if before == killed {
            assert!(r.set_cookie.is_some(), "re-pinned");
            assert_eq!(
                u.pinned(),
                r.node,
                "the new hint names the node that served"
            );
            *moved_to.entry(r.node.clone()).or_insert(0) += 1;
        } else {
            assert_eq!(r.node, before, "the others' users stay where they were");
            assert!(r.set_cookie.is_none());
        }
        let again = u.get("/whoami").await;
        assert_eq!(
            (again.node.as_str(), again.set_cookie),
            (r.node.as_str(), None)
        );
    }
    moved_to
}

//! The edge router in front of three app instances on one real Redis: sessions stay on their
//! instance; a killed instance's users move, stay logged in and are re-pinned; a draining
//! instance gets no new sessions but keeps its own; instances added through the table file or the
//! Redis key get new sessions without a restart; bodies go through whole.

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
use sessile::{AffinityHints, KeyRing, Session, SessionError, SessionManagerLayer};
use sessile_affinity::{NodeState, NodeTable, RouteHint};
use sessile_edge_example::{Control, Edge, EdgeConfig, serve, sources, spawn_health_checks};
use sessile_redis::RedisStore;
use sessile_testkit::redis::{RedisServer, unique_prefix};

/// One app instance, on a runtime of its own so that killing it closes its every connection.
struct Instance {
    node: String,
    addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Instance {
    fn start(node: &str, redis: &str, prefix: &str) -> Self {
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
                let layer = SessionManagerLayer::builder(store, KeyRing::new(1, &[9; 32]).expect("k"))
                    .hint_source(AffinityHints::new(&node_owned).expect("node id"))
                    .build()
                    .expect("layer");
                let app = app(&node_owned).layer(layer);
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
    fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }

    fn line(&self, state: &str) -> String {
        format!("{} {} {state}\n", self.node, self.addr)
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The app: log in, who am I, a counter, an echo, a health check; every answer says which node.
fn app(node: &str) -> Router {
    let node: Arc<str> = node.into();
    Router::new()
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
struct User {
    client: Client<HttpConnector, Full<Bytes>>,
    edge: SocketAddr,
    cookie: Option<String>,
}

struct Answer {
    status: StatusCode,
    node: String,
    body: Bytes,
    set_cookie: Option<String>,
}

impl User {
    fn new(edge: SocketAddr) -> Self {
        Self {
            client: Client::builder(hyper_util::rt::TokioExecutor::new()).build_http(),
            edge,
            cookie: None,
        }
    }

    async fn send(&mut self, method: Method, path: &str, body: Bytes) -> Answer {
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
            .expect("response");
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

    async fn get(&mut self, path: &str) -> Answer {
        self.send(Method::GET, path, Bytes::new()).await
    }

    async fn post(&mut self, path: &str) -> Answer {
        self.send(Method::POST, path, Bytes::new()).await
    }

    /// The node the cookie's hint names.
    fn pinned(&self) -> String {
        let c = self.cookie.as_deref().expect("a session");
        RouteHint::from_cookie(c).expect("a hint").node.to_owned()
    }
}

/// Three instances on one Redis, an edge in front (health checks every 100 ms), its control.
struct Rig {
    _redis: RedisServer,
    instances: Vec<Instance>,
    edge: SocketAddr,
    control: Arc<Control>,
    _tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn config() -> EdgeConfig {
    EdgeConfig {
        health_interval: Duration::from_millis(100),
        health_timeout: Duration::from_millis(300),
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_secs(5),
        ..EdgeConfig::default()
    }
}

impl Rig {
    /// Starts three instances; the edge's table lists those `listed` says (by index).
    async fn start(listed: &[usize]) -> Self {
        let redis = RedisServer::start();
        let prefix = unique_prefix();
        let instances: Vec<Instance> = ["node-a", "node-b", "node-c"]
            .iter()
            .map(|n| Instance::start(n, &redis.url(), &prefix))
            .collect();
        let table = table(&instances, listed, &[]);
        let config = config();
        let control = Control::new(NodeTable::parse(&table).expect("table"), &config);
        let health = spawn_health_checks(control.clone(), &config);
        let edge = Edge::new(control.clone(), config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(serve(listener, edge, std::future::pending()));
        Self {
            _redis: redis,
            instances,
            edge: addr,
            control,
            _tasks: vec![health, server],
        }
    }

    /// Logs `n` users in through the edge, named `<tag><i>`.
    async fn log_in(&self, tag: &str, n: usize) -> Vec<User> {
        let mut users = Vec::new();
        for i in 0..n {
            let mut u = User::new(self.edge);
            let r = u.post(&format!("/login/{tag}{i}")).await;
            assert_eq!(r.status, StatusCode::OK);
            assert_eq!(u.pinned(), r.node, "the session is pinned where it was made");
            users.push(u);
        }
        users
    }
}

/// The table text listing instances `listed`, those in `draining` as draining.
fn table(instances: &[Instance], listed: &[usize], draining: &[usize]) -> String {
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
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < Duration::from_secs(10), "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_stay_on_their_instance() {
    let rig = Rig::start(&[0, 1, 2]).await;
    let mut users = rig.log_in("u", 30).await;
    let mut per_node = std::collections::BTreeMap::new();
    let (mut sticky, mut total) = (0, 0);
    for u in &mut users {
        *per_node.entry(u.pinned()).or_insert(0) += 1;
        for _ in 0..20 {
            let r = u.post("/incr").await;
            assert_eq!(r.status, StatusCode::OK);
            total += 1;
            sticky += usize::from(r.node == u.pinned());
        }
    }
    eprintln!("sessions per node {per_node:?}; {sticky} of {total} requests on the hinted node");
    assert_eq!(per_node.len(), 3, "new sessions spread over the nodes");
    assert!(sticky * 100 >= total * 99, "{sticky} of {total}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instances_users_move_stay_logged_in_and_are_re_pinned() {
    let mut rig = Rig::start(&[0, 1, 2]).await;
    let mut users = rig.log_in("u", 30).await;
    rig.instances[1].kill();
    let mut moved_to = std::collections::BTreeMap::new();
    for (i, u) in users.iter_mut().enumerate() {
        let before = u.pinned();
        let r = u.get("/whoami").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, format!("u{i}"), "still logged in");
        assert_ne!(r.node, "node-b");
        if before == "node-b" {
            assert!(r.set_cookie.is_some(), "re-pinned");
            assert_eq!(u.pinned(), r.node, "the new hint names the node that served");
            *moved_to.entry(r.node.clone()).or_insert(0) += 1;
        } else {
            assert_eq!(r.node, before, "the others' users stay where they were");
            assert!(r.set_cookie.is_none());
        }
        // And it stays there.
        let again = u.get("/whoami").await;
        assert_eq!((again.node.as_str(), again.set_cookie), (r.node.as_str(), None));
    }
    eprintln!("node-b's users moved to {moved_to:?}");
    assert!(!rig.control.is_up("node-b"));
    assert!(moved_to.values().sum::<usize>() >= 3, "node-b held sessions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_instance_keeps_its_sessions_and_gets_no_new_ones() {
    let rig = Rig::start(&[0, 1, 2]).await;
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("nodes");
    std::fs::write(&file, table(&rig.instances, &[0, 1, 2], &[])).expect("write");
    let _watch = sources::watch_file(file.clone(), rig.control.clone(), Duration::from_millis(50));
    let mut old = rig.log_in("old", 30).await;

    std::fs::write(&file, table(&rig.instances, &[0, 1, 2], &[2])).expect("write");
    until("the drain is seen", || {
        rig.control
            .configured()
            .get("node-c")
            .is_some_and(|n| n.state == NodeState::Draining)
    })
    .await;
    let new = rig.log_in("new", 30).await;
    assert!(
        new.iter().all(|u| u.pinned() != "node-c"),
        "a new session on the draining node"
    );
    let mut kept = 0;
    for u in old.iter_mut().filter(|u| u.pinned() == "node-c") {
        let r = u.post("/incr").await;
        assert_eq!((r.status, r.node.as_str()), (StatusCode::OK, "node-c"));
        kept += 1;
    }
    assert!(kept > 0, "node-c held sessions before the drain");
}

async fn lands_on_node_c(rig: &Rig) {
    let before = rig.log_in("before", 20).await;
    assert!(before.iter().all(|u| u.pinned() != "node-c"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_added_to_the_file_gets_new_sessions() {
    let rig = Rig::start(&[0, 1]).await;
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("nodes");
    std::fs::write(&file, table(&rig.instances, &[0, 1], &[])).expect("write");
    let _watch = sources::watch_file(file.clone(), rig.control.clone(), Duration::from_millis(50));
    lands_on_node_c(&rig).await;
    std::fs::write(&file, table(&rig.instances, &[0, 1, 2], &[])).expect("write");
    added(&rig).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_announced_through_redis_gets_new_sessions() {
    let rig = Rig::start(&[0, 1]).await;
    let redis = RedisServer::start();
    let key = "edge:nodes";
    redis.cli(&["SET", key, &table(&rig.instances, &[0, 1], &[])]);
    // A long resync: only the announcement can bring the change in time.
    let _watch = sources::watch_redis(
        &redis.url(),
        key.into(),
        rig.control.clone(),
        Duration::from_secs(3600),
    )
    .await
    .expect("watch");
    lands_on_node_c(&rig).await;
    redis.cli(&["SET", key, &table(&rig.instances, &[0, 1, 2], &[])]);
    redis.cli(&["PUBLISH", key, "changed"]);
    added(&rig).await;
}

async fn added(rig: &Rig) {
    until("the new table is seen", || {
        rig.control.configured().nodes().len() == 3
    })
    .await;
    let after = rig.log_in("after", 30).await;
    let on_c = after.iter().filter(|u| u.pinned() == "node-c").count();
    eprintln!("{on_c} of 30 new sessions on the added node");
    assert!(on_c >= 3, "{on_c}");
}

/// A body of 1 MiB each way, and a bad table refused with the old one kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_go_through_whole_and_a_bad_table_changes_nothing() {
    let rig = Rig::start(&[0, 1, 2]).await;
    let mut u = User::new(rig.edge);
    let body: Bytes = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    let r = u.send(Method::POST, "/echo", body.clone()).await;
    assert_eq!((r.status, r.body.len()), (StatusCode::OK, body.len()));
    assert!(r.body == body);

    let before = rig.control.configured();
    for bad in ["node-a 127.0.0.1:1 sick\n", "node-a\n", "a 1:1\na 1:2\n"] {
        assert!(sources::apply(&rig.control, bad, "test").is_err(), "{bad:?}");
        assert_eq!(rig.control.configured(), before, "the old table stays");
    }
}

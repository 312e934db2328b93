//! Two app instances (two routers, each with its own store and connection pool) on one real
//! `redis-server`: no lost updates, final logout, TTL on every key, late saves of expired sessions.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use http::{Method, StatusCode};
use sessile::{Hint, KeyRing, SaveError, SessionManagerLayer};
use sessile_redis::RedisStore;
use sessile_tests::redis::{RedisServer, unique_prefix};
use sessile_tests::{CountingStore, Gate, Reply, routes, send};
use tokio::task::JoinHandle;

const NAME: &str = "sid";

struct Cluster {
    apps: [Router; 2],
    stores: [CountingStore<RedisStore>; 2],
    gates: [Arc<Gate>; 2],
    prefix: String,
    server: RedisServer,
}

async fn instance(
    url: &str,
    prefix: &str,
    node: &str,
    renew: f64,
) -> (Router, Arc<Gate>, CountingStore<RedisStore>) {
    let store = RedisStore::builder(url)
        .prefix(prefix)
        .connect()
        .await
        .expect("connect");
    let store = CountingStore::new(store);
    let layer =
        SessionManagerLayer::builder(store.clone(), KeyRing::new(1, &[4; 32]).expect("keys"))
            .cookie_name(NAME)
            .node_hint(Hint::new(node).expect("hint"))
            .renew_fraction(renew)
            .build()
            .expect("layer");
    let gate = Arc::new(Gate::default());
    (routes(Arc::clone(&gate)).layer(layer), gate, store)
}

async fn two_instances(renew: f64) -> Cluster {
    let server = RedisServer::start();
    let prefix = unique_prefix();
    let (a, ga, sa) = instance(&server.url(), &prefix, "node-a", renew).await;
    let (b, gb, sb) = instance(&server.url(), &prefix, "node-b", renew).await;
    Cluster {
        apps: [a, b],
        stores: [sa, sb],
        gates: [ga, gb],
        prefix,
        server,
    }
}

impl Cluster {
    async fn go(&self, on: usize, method: Method, uri: &str, token: Option<&str>) -> Reply {
        let cookie = token.map(|t| format!("{NAME}={t}"));
        send(&self.apps[on], method, uri, cookie.as_deref(), None).await
    }

    /// A new session on instance `on`, holding `name = ann`; returns its token.
    async fn session(&self, on: usize) -> String {
        self.go(on, Method::POST, "/set/ann", None)
            .await
            .cookie_value(NAME)
            .expect("a new session sets a cookie")
    }

    /// Starts an increment on instance `on` and returns once its handler holds the loaded
    /// session; it finishes when `gates[on].release` is notified.
    async fn held_increment(self: &Arc<Self>, on: usize, token: &str) -> JoinHandle<Reply> {
        let (c, token) = (Arc::clone(self), token.to_owned());
        let slow =
            tokio::spawn(async move { c.go(on, Method::POST, "/slow-incr", Some(&token)).await });
        self.gates[on].entered.notified().await;
        slow
    }

    /// Session records, without rotation markers.
    fn records(&self) -> Vec<String> {
        self.server.records(&format!("{}:*:s:*", self.prefix))
    }

    fn keys(&self, kind: &str) -> Vec<String> {
        let pattern = format!("{}:*:{kind}:*", self.prefix);
        self.server
            .cli(&["--scan", "--pattern", &pattern])
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_clients_over_two_instances_end_at_exactly_3200() {
    let c = Arc::new(two_instances(0.25).await);
    let token = Arc::new(c.session(0).await);
    let clients: Vec<_> = (0..16)
        .map(|i| {
            let (c, token) = (Arc::clone(&c), Arc::clone(&token));
            tokio::spawn(async move {
                for k in 0..200 {
                    let r = c.go((i + k) % 2, Method::POST, "/incr", Some(&token)).await;
                    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
                    assert!(r.save_failed.is_none(), "{:?}", r.save_failed);
                }
            })
        })
        .collect();
    for client in clients {
        client.await.expect("client");
    }
    for on in 0..2 {
        assert_eq!(c.go(on, Method::GET, "/n", Some(&token)).await.body, "3200");
    }
    let saves: u64 = c.stores.iter().map(|s| s.count("save")).sum();
    let loads: u64 = c.stores.iter().map(|s| s.count("load")).sum();
    // Every successful increment is one save; the rest were conflicts, each followed by a reload.
    assert!(saves >= 3200);
    eprintln!(
        "3200 increments: {saves} save attempts ({} conflicts), {loads} loads",
        saves - 3200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_on_one_instance_beats_a_save_on_the_other() {
    let c = Arc::new(two_instances(0.25).await);
    let token = c.session(0).await;
    let slow = c.held_increment(1, &token).await;
    let out = c.go(0, Method::POST, "/logout", Some(&token)).await;
    assert_eq!(out.cookie_value(NAME).as_deref(), Some(""));
    c.gates[1].release.notify_one();
    let r = slow.await.expect("slow request");
    assert!(
        matches!(r.save_failed.as_deref(), Some(SaveError::Ended)),
        "{:?}",
        r.save_failed
    );
    assert_eq!(r.cookie_value(NAME).as_deref(), Some(""));
    assert!(
        c.keys("s").is_empty(),
        "the session stayed gone: {:?}",
        c.keys("s")
    );
    assert_eq!(c.go(1, Method::GET, "/read", Some(&token)).await.body, "-");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_saved_late_is_reported_not_dropped_silently() {
    let c = Arc::new(two_instances(0.25).await);
    let token = c.session(0).await;
    let slow = c.held_increment(0, &token).await;
    // The session expires while the handler runs: Redis drops the key at its deadline.
    let keys = c.keys("s");
    assert_eq!(keys.len(), 1);
    c.server.cli(&["pexpire", &keys[0], "1"]);
    tokio::time::sleep(Duration::from_millis(20)).await;
    c.gates[0].release.notify_one();
    let r = slow.await.expect("slow request");
    assert!(
        matches!(r.save_failed.as_deref(), Some(SaveError::Ended)),
        "{:?}",
        r.save_failed
    );
    assert_eq!(
        r.cookie_value(NAME).as_deref(),
        Some(""),
        "no cookie for a dead session"
    );
    assert!(c.keys("s").is_empty(), "the late save did not recreate it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_written_has_a_ttl() {
    // Renew on every read, so touches run too.
    let c = two_instances(0.0).await;
    let mut tokens = Vec::new();
    for (i, user) in ["ann", "ann", "bob", "cid"].iter().enumerate() {
        let anon = c
            .go(i % 2, Method::POST, "/set/x", None)
            .await
            .cookie_value(NAME)
            .expect("cookie");
        let r = c
            .go(
                (i + 1) % 2,
                Method::POST,
                &format!("/login/{user}"),
                Some(&anon),
            )
            .await;
        tokens.push(r.cookie_value(NAME).expect("rotated"));
    }
    for t in &tokens {
        c.go(0, Method::POST, "/incr", Some(t)).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        c.go(1, Method::GET, "/read", Some(t)).await;
    }
    c.go(0, Method::POST, "/logout", Some(&tokens[3])).await;
    let sessions = c.records();
    let indexes = c.keys("i");
    assert_eq!(sessions.len(), 3, "{sessions:?}");
    assert_eq!(indexes.len(), 3, "one index per user: {indexes:?}");
    // Every key, rotation markers included.
    for key in c.keys("s").iter().chain(&indexes) {
        let ttl: i64 = c.server.cli(&["pttl", key]).trim().parse().expect("pttl");
        assert!(ttl > 0, "{key} has no TTL ({ttl})");
    }
    // Log ann out everywhere: both her sessions go, her index too.
    let r = c
        .go(1, Method::POST, "/logout-everywhere", Some(&tokens[0]))
        .await;
    assert_eq!(r.body, "2");
    assert_eq!(c.records().len(), 1);
    let all = c
        .server
        .cli(&["--scan", "--pattern", &format!("{}:*", c.prefix)]);
    for key in all.lines() {
        let ttl: i64 = c.server.cli(&["pttl", key]).trim().parse().expect("pttl");
        assert!(ttl > 0, "{key} has no TTL ({ttl})");
    }
}

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
    // One per user still logged in: cid's only session logged out, which emptied (and so
    // deleted) cid's index.
    assert_eq!(indexes.len(), 2, "one index per user: {indexes:?}");
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

/// Instance A, talking to a fresh Redis through a proxy that can lose or delay replies: its app,
/// gate, counted store and the proxy; and the server, for instances connected directly.
struct Proxied {
    app: Router,
    gate: Arc<Gate>,
    store: CountingStore<RedisStore>,
    proxy: sessile_tests::proxy::Proxy,
    prefix: String,
    server: RedisServer,
}

async fn behind_proxy(pool_size: usize, store_timeout: Duration) -> Proxied {
    let server = RedisServer::start();
    let prefix = unique_prefix();
    let proxy = sessile_tests::proxy::Proxy::start(([127, 0, 0, 1], server.port()).into()).await;
    let store = RedisStore::builder(format!("redis://{}", proxy.addr()))
        .prefix(&prefix)
        .pool_size(pool_size)
        .connect()
        .await
        .expect("connect through the proxy");
    let store = CountingStore::new(store);
    let layer =
        SessionManagerLayer::builder(store.clone(), KeyRing::new(1, &[4; 32]).expect("keys"))
            .cookie_name(NAME)
            .node_hint(Hint::new("node-a").expect("hint"))
            .store_timeout(store_timeout)
            .build()
            .expect("layer");
    let gate = Arc::new(Gate::default());
    Proxied {
        app: routes(Arc::clone(&gate)).layer(layer),
        gate,
        store,
        proxy,
        prefix,
        server,
    }
}

impl Proxied {
    /// Starts an increment on A and returns once its handler holds the loaded session.
    async fn held_increment(&self, cookie: &str) -> JoinHandle<Reply> {
        let (app, cookie) = (self.app.clone(), cookie.to_owned());
        let held = tokio::spawn(async move {
            send(&app, Method::POST, "/slow-incr", Some(&cookie), None).await
        });
        self.gate.entered.notified().await;
        held
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_whose_reply_was_lost_is_settled_not_replayed() {
    // Instance A talks to Redis through a proxy that loses the reply to A's save and holds A's
    // reconnect until instance B has saved too. Before write ids were recorded per write, fred
    // re-sent A's save after the reconnect, the script saw B's write and answered "conflict", and
    // A replayed its increment on a record that already held it: 3 instead of 2.
    // Long enough to wait out the held reconnect; the test releases it within milliseconds.
    let a = behind_proxy(1, Duration::from_secs(10)).await;
    let (app_b, _gate_b, _store_b) = instance(&a.server.url(), &a.prefix, "node-b", 0.25).await;

    let token = send(&app_b, Method::POST, "/set/ann", None, None)
        .await
        .cookie_value(NAME)
        .expect("a session");
    let cookie = format!("{NAME}={token}");
    let held = a.held_increment(&cookie).await;
    a.proxy.lose_next_reply();
    a.gate.release.notify_one();
    a.proxy.reply_lost().await;
    // A's save ran on the server; A does not know. B increments meanwhile.
    let b = send(&app_b, Method::POST, "/incr", Some(&cookie), None).await;
    assert!(b.save_failed.is_none(), "{:?}", b.save_failed);
    assert_eq!(b.body, "2", "B saw A's increment");
    a.proxy.release();
    let reply = held.await.expect("A's request");
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        reply.save_failed.is_none(),
        "A's save landed and must not be reported failed: {:?}",
        reply.save_failed
    );
    // fred re-sends the save after the reconnect (its retry path does not keep the single
    // attempt the store asks for), and the re-sent script finds its write id marked as landed;
    // had the reply's loss reached the layer, it would have settled. Either way: no replay.
    eprintln!(
        "instance A: {} save, {} settle, {} load",
        a.store.count("save"),
        a.store.count("settle"),
        a.store.count("load")
    );
    assert_eq!(
        (a.store.count("save"), a.store.count("load")),
        (1, 1),
        "A's increment was not replayed"
    );
    let n = send(&app_b, Method::GET, "/n", Some(&cookie), None).await;
    assert_eq!(n.body, "2", "two increments, each applied once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_survives_responses_of_requests_made_before_it() {
    let c = two_instances(0.0).await;
    sessile_tests::races::login_survives_late_responses(&c.apps, &c.gates, NAME).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_out_everywhere_ends_sessions_rotating_on_two_instances() {
    let c = two_instances(0.25).await;
    let race =
        sessile_tests::races::logout_everywhere_beats_rotation(c.apps.clone(), NAME, 100).await;
    eprintln!("standalone Redis: {race:?}");
    assert_eq!(race.survivors, 0, "{race:?}");
    assert!(c.records().is_empty(), "{:?}", c.records());
}

/// Durations (µs) of every command in the slow log.
async fn slowlog_us(pool: &fred::clients::Pool) -> Vec<i64> {
    use fred::prelude::*;
    use fred::types::{ClusterHash, CustomCommand, Value};
    let cmd = CustomCommand::new_static("SLOWLOG", ClusterHash::Random, false);
    let entries: Value = pool
        .next()
        .custom(cmd, vec![Value::from("GET"), Value::from(-1)])
        .await
        .expect("slowlog");
    let Value::Array(entries) = entries else {
        return vec![];
    };
    entries
        .into_iter()
        .filter_map(|e| match e {
            Value::Array(fields) => fields.get(2).and_then(|d| d.as_i64()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_user_index_stays_bounded_and_log_out_everywhere_never_blocks_redis() {
    use fred::prelude::*;
    use fred::types::{ClusterHash, CustomCommand, Value};
    let c = two_instances(0.25).await;
    let mut tokens = Vec::new();
    for i in 0..10 {
        let r = c.go(i % 2, Method::POST, "/login/alice", None).await;
        tokens.push(r.cookie_value(NAME).expect("logged in"));
    }
    // 100 000 ids of alice's sessions that died long ago, as an unpruned index would hold.
    let store = c.stores[0].inner();
    let index = store.index_key(None, "alice");
    let pool = store.pool();
    let zadd = CustomCommand::new_static("ZADD", ClusterHash::FirstKey, false);
    for chunk in 0..100 {
        let mut args = vec![Value::from(index.as_str())];
        for i in 0..1_000u64 {
            args.push(Value::Integer(1_000 + (chunk * 1_000 + i) as i64));
            args.push(Value::from(format!("{:032x}", chunk * 1_000 + i)));
        }
        let _: i64 = pool.next().custom(zadd.clone(), args).await.expect("zadd");
    }
    let zcard = || {
        c.server
            .cli(&["zcard", &index])
            .trim()
            .parse::<u64>()
            .expect("zcard")
    };
    assert_eq!(zcard(), 100_010);
    // Log every command from here on, to find the longest.
    c.server
        .cli(&["config", "set", "slowlog-max-len", "1000000"]);
    c.server
        .cli(&["config", "set", "slowlog-log-slower-than", "0"]);
    c.server.cli(&["slowlog", "reset"]);

    let r = c.go(0, Method::POST, "/login/alice", None).await;
    tokens.push(r.cookie_value(NAME).expect("logged in"));
    // The live sessions and the new one; nothing ended within the last absolute lifetime.
    assert_eq!(zcard(), 11, "the index holds the live sessions only");

    // A logout takes its id out of the index.
    c.go(0, Method::POST, "/logout", Some(&tokens[10])).await;
    assert_eq!(zcard(), 10, "a logout removes its id from the index");
    let r = c
        .go(1, Method::POST, "/logout-everywhere", Some(&tokens[0]))
        .await;
    assert_eq!(r.body, "10");
    assert!(c.records().is_empty(), "{:?}", c.records());
    let durations = slowlog_us(pool).await;
    let longest = durations.iter().copied().max().unwrap_or(0);
    eprintln!(
        "index: 100 010 -> 11 members after one login; {} commands, longest {longest} µs",
        durations.len()
    );
    assert!(!durations.is_empty(), "the slow log recorded the commands");
    assert!(longest < 10_000, "a command ran {longest} µs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_sharing_a_store_and_keys_stay_apart() {
    let server = RedisServer::start();
    let store = RedisStore::builder(server.url())
        .prefix(unique_prefix())
        .connect()
        .await
        .expect("connect");
    let app = |tenant: &str| {
        let layer =
            SessionManagerLayer::builder(store.clone(), KeyRing::new(1, &[4; 32]).expect("keys"))
                .cookie_name(NAME)
                .tenant(tenant)
                .build()
                .expect("layer");
        routes(Arc::default()).layer(layer)
    };
    sessile_tests::races::tenants_are_isolated(&app("acme"), &app("globex"), NAME).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_whose_reply_comes_after_the_deadline_is_settled_as_saved() {
    // The reply to A's save is held past A's store deadline (the save ran on the server). The
    // layer must not report a failure for a write that landed: it asks the store (on another
    // pool connection), learns the write landed, and reports success. Before write settlement
    // the request was told the save failed (a timeout).
    let a = behind_proxy(2, Duration::from_millis(300)).await;
    let token = send(&a.app, Method::POST, "/set/ann", None, None)
        .await
        .cookie_value(NAME)
        .expect("a session");
    let cookie = format!("{NAME}={token}");
    let held = a.held_increment(&cookie).await;
    a.proxy.delay_next_reply(Duration::from_millis(1_000));
    a.gate.release.notify_one();
    let reply = held.await.expect("A's request");
    assert!(
        reply.save_failed.is_none(),
        "the save landed; it must not be reported failed: {:?}",
        reply.save_failed
    );
    assert_eq!(a.store.count("settle"), 1, "the outcome was asked for");
    assert_eq!(
        (a.store.count("save"), a.store.count("load")),
        (1, 1),
        "and not replayed"
    );
    // Read through an instance connected to Redis directly (A's delayed connection is still
    // waiting for the held reply).
    let (app_b, _gate_b, _store_b) = instance(&a.server.url(), &a.prefix, "node-b", 0.25).await;
    let n = send(&app_b, Method::GET, "/n", Some(&cookie), None).await;
    assert_eq!(n.body, "1", "applied exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_given_up_on_while_disconnected_never_lands_later() {
    // A's only connection to Redis goes down just before A saves an increment, and its reconnect
    // is held past A's deadline: the save waits in fred's queue, the layer gives up on it and
    // settles (the settle waits too, and gives up), and the request learns that the outcome is
    // unknown. The layer wraps A's store (a counting wrapper), so its own timer ends the call;
    // the Redis store below still sees the layer's deadline, a little earlier, and fred drops
    // both commands unsent. Before the layer made its deadline current for the store, fred sent
    // both once the connection was back, and the increment landed after A's request had ended.
    let a = behind_proxy(1, Duration::from_millis(300)).await;
    let (app_b, _gate_b, _store_b) = instance(&a.server.url(), &a.prefix, "node-b", 0.25).await;
    let cookie = |token: String| format!("{NAME}={token}");
    let session = |app: &Router| {
        let app = app.clone();
        async move {
            send(&app, Method::POST, "/set/ann", None, None)
                .await
                .cookie_value(NAME)
                .map(cookie)
                .expect("a session")
        }
    };
    let (held_on, other) = (session(&a.app).await, session(&app_b).await);
    let held = a.held_increment(&held_on).await;
    // A read on A loses its reply: A's connection closes, and the proxy holds the reconnect.
    a.proxy.lose_next_reply();
    let lost = send(&a.app, Method::GET, "/n", Some(&other), None).await;
    assert_eq!(lost.status, StatusCode::SERVICE_UNAVAILABLE);
    a.proxy.reply_lost().await;
    a.gate.release.notify_one();
    let reply = held.await.expect("A's request");
    assert!(
        matches!(
            reply.save_failed.as_ref().map(|f| &*f.0),
            Some(SaveError::Unknown(_))
        ),
        "neither the save nor its settle could reach Redis: {:?}",
        reply.save_failed
    );
    // The connection comes back; whatever fred still holds for A is sent before A's next read.
    a.proxy.release();
    let started = std::time::Instant::now();
    while send(&a.app, Method::GET, "/n", Some(&other), None)
        .await
        .status
        != StatusCode::OK
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "A never reconnected"
        );
    }
    let n = send(&app_b, Method::GET, "/n", Some(&held_on), None).await;
    assert_eq!(
        n.body, "0",
        "the increment A gave up on landed after its request ended"
    );
}

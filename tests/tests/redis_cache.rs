//! The cache tier in front of real `redis-server` processes: two or three instances, each with its
//! own cache and connections, on one Redis. A change, a rotation or a logout on one stops the
//! others serving their copies within the invalidation delay; an emptied database, a restarted
//! Redis and a lagged stream flush them; and the usual promises hold with the cache on.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use sessile::store::invalidation::Invalidation;
use sessile::store::{CachedStore, WriteId};
use sessile::{Hint, KeyRing, SessionManagerLayer, SessionStore, StoreError};
use sessile_redis::RedisStore;
use sessile_tests::redis::{RedisServer, TestRedis, unique_prefix};
use sessile_tests::{CountingStore, Gate, Hook, Hooked, routes, send, until_dropped};

async fn redis(url: &str, prefix: &str) -> RedisStore {
    RedisStore::builder(url)
        .prefix(prefix)
        .connect()
        .await
        .expect("connect")
}

async fn cached(url: &str, prefix: &str) -> CachedStore<RedisStore> {
    let cache = CachedStore::new(redis(url, prefix).await)
        .await
        .expect("cache");
    assert!(!cache.is_paused(), "the stream works once built");
    cache
}

sessile_conformance::store_conformance!(|| async {
    let server = TestRedis::from_env_or_start();
    let store = cached(&server.url(), &unique_prefix()).await;
    (store, server)
});

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// A change, then a logout, of one session on A, each while B holds a copy: B stops serving it
/// within the invalidation delay and then reads the new state; 100 rounds give p50/p99.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_and_a_logout_on_one_instance_stop_the_other_serving_its_copy() {
    let server = RedisServer::start();
    let prefix = unique_prefix();
    let (a, b) = (
        cached(&server.url(), &prefix).await,
        cached(&server.url(), &prefix).await,
    );
    let mut delays = Vec::new();
    for n in 0..100 {
        let r = sessile_conformance::record(Some("ann"), n);
        a.create(&r, WriteId::random()).await.expect("create");
        assert_eq!(b.load(r.id).await.expect("load"), Some(r.clone()));
        assert!(b.serves(&r.id), "B caches what it read");
        assert_eq!(b.load(r.id).await.expect("hit").map(|r| r.version), Some(1));

        let mut next = r.clone();
        next.version = 2;
        next.data.insert("theme".into(), b"light".to_vec());
        a.save(&next, 1, WriteId::random()).await.expect("save");
        delays.push(until_dropped(&b, &r.id).await);
        assert_eq!(b.load(r.id).await.expect("reload"), Some(next.clone()));
        assert!(b.serves(&r.id));

        a.destroy(r.id).await.expect("logout");
        delays.push(until_dropped(&b, &r.id).await);
        assert_eq!(b.load(r.id).await.expect("after logout"), None);
    }
    delays.sort();
    let (p50, p99) = (percentile(&delays, 0.5), percentile(&delays, 0.99));
    eprintln!(
        "invalidation delay over {} changes and logouts: p50 {p50:?}, p99 {p99:?}, max {:?}",
        delays.len(),
        delays[delays.len() - 1]
    );
}

/// A login on A (rotating the id) while B and C hold copies of the pre-login session: both stop
/// serving it, and read the old id as rotated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_on_one_instance_retires_the_old_id_on_the_others() {
    let server = RedisServer::start();
    let prefix = unique_prefix();
    let mut caches = Vec::new();
    for _ in 0..3 {
        caches.push(cached(&server.url(), &prefix).await);
    }
    let r = sessile_conformance::record(None, 1);
    caches[0]
        .create(&r, WriteId::random())
        .await
        .expect("create");
    for c in &caches[1..] {
        c.load(r.id).await.expect("load");
        assert!(c.serves(&r.id));
    }
    let mut rotated = r.clone();
    rotated.id = sessile::SessionId::random_for_user(Some("ann"));
    rotated.version = 2;
    rotated.meta.user_id = Some("ann".into());
    caches[0]
        .rotate(r.id, &rotated, 1, WriteId::random())
        .await
        .expect("rotate");
    for c in &caches[1..] {
        until_dropped(c, &r.id).await;
        assert!(matches!(c.load(r.id).await, Err(StoreError::Rotated)));
        assert_eq!(
            c.load(rotated.id).await.expect("new id"),
            Some(rotated.clone())
        );
    }
}

/// `FLUSHALL` empties Redis: the caches drop everything (the heartbeat finds its marker gone)
/// and read the sessions as missing, not their old copies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_database_flushes_every_cache() {
    let server = RedisServer::start();
    let prefix = unique_prefix();
    let (a, b) = (
        cached(&server.url(), &prefix).await,
        cached(&server.url(), &prefix).await,
    );
    let r = sessile_conformance::record(None, 1);
    a.create(&r, WriteId::random()).await.expect("create");
    b.load(r.id).await.expect("load");
    assert!(a.serves(&r.id) && b.serves(&r.id));
    let flushes = (a.stats().flushes, b.stats().flushes);
    server.cli(&["FLUSHALL"]);
    // Within a heartbeat or two (200 ms each); the bound asserted is far above.
    for c in [&a, &b] {
        until_flushed(c, &r.id).await;
        assert_eq!(c.load(r.id).await.expect("load"), None);
    }
    assert!(a.stats().flushes > flushes.0 && b.stats().flushes > flushes.1);
}

async fn until_flushed(c: &CachedStore<RedisStore>, id: &sessile::SessionId) {
    let start = Instant::now();
    while c.serves(id) {
        assert!(start.elapsed() < Duration::from_secs(2), "never flushed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Redis killed and started again, empty: while it is down nothing is served from the caches,
/// and once it is back they serve what Redis holds (nothing), not their copies; then they cache
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_redis_leaves_no_stale_copy_and_the_cache_recovers() {
    let mut server = RedisServer::start();
    let prefix = unique_prefix();
    let b = cached(&server.url(), &prefix).await;
    let r = sessile_conformance::record(None, 1);
    b.create(&r, WriteId::random()).await.expect("create");
    assert!(b.serves(&r.id));
    server.kill();
    until_flushed(&b, &r.id).await;
    server.restart();
    let start = Instant::now();
    loop {
        match b.load(r.id).await {
            Ok(found) => {
                assert_eq!(found, None, "the restarted Redis is empty");
                break;
            }
            Err(e) => assert!(
                start.elapsed() < Duration::from_secs(10),
                "Redis not back: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The cache resumes: a new session is served from it again.
    let r2 = sessile_conformance::record(None, 2);
    let start = Instant::now();
    loop {
        if b.create(&r2, WriteId::random()).await.is_ok() || b.serves(&r2.id) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no create");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let start = Instant::now();
    while !(b.load(r2.id).await.is_ok() && b.serves(&r2.id)) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the cache never resumed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// 16 clients x 200 increments of one session over two instances, each with its cache: exactly
/// 3200, and most loads served from the caches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_clients_over_two_cached_instances_end_at_exactly_3200() {
    let server = RedisServer::start();
    let prefix = unique_prefix();
    let mut apps = Vec::new();
    let mut stores = Vec::new();
    for node in ["node-a", "node-b"] {
        let cache = CachedStore::new(CountingStore::new(redis(&server.url(), &prefix).await))
            .await
            .expect("cache");
        stores.push(cache.clone());
        let layer = SessionManagerLayer::builder(cache, KeyRing::new(1, &[4; 32]).expect("keys"))
            .cookie_name("sid")
            .node_hint(Hint::new(node).expect("hint"))
            .build()
            .expect("layer");
        apps.push(routes(Arc::new(Gate::default())).layer(layer));
    }
    let apps = Arc::new(apps);
    let token = send(&apps[0], Method::POST, "/set/ann", None, None)
        .await
        .cookie_value("sid")
        .expect("a session");
    let cookie = Arc::new(format!("sid={token}"));
    let clients: Vec<_> = (0..16)
        .map(|i| {
            let (apps, cookie) = (apps.clone(), cookie.clone());
            tokio::spawn(async move {
                for k in 0..200 {
                    let app = &apps[(i + k) % 2];
                    let r = send(app, Method::POST, "/incr", Some(&cookie), None).await;
                    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
                    assert!(r.save_failed.is_none(), "{:?}", r.save_failed);
                }
            })
        })
        .collect();
    for client in clients {
        client.await.expect("client");
    }
    for app in apps.iter() {
        let r = send(app, Method::GET, "/n", Some(&cookie), None).await;
        assert_eq!(r.body, "3200");
    }
    let (hits, misses): (u64, u64) = stores
        .iter()
        .map(|s| (s.stats().hits, s.stats().misses))
        .fold((0, 0), |(h, m), (a, b)| (h + a, m + b));
    let redis_loads: u64 = stores.iter().map(|s| s.store().count("load")).sum();
    eprintln!(
        "3200 increments with caches: {hits} hits, {misses} misses, {redis_loads} Redis loads"
    );
    assert!(redis_loads <= misses, "every Redis load is a miss");
}

/// Holds the invalidation stream's task on the first event after [`arm`](Stall::arm) until
/// [`release`](Stall::release): a consumer that fell behind.
#[derive(Clone, Default)]
struct Stall {
    armed: Arc<AtomicBool>,
    held: Arc<tokio::sync::Notify>,
    released: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
}

impl Stall {
    fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }
    fn release(&self) {
        let (lock, wake) = &*self.released;
        *lock.lock().expect("lock") = true;
        wake.notify_all();
    }
}

impl Hook for Stall {
    async fn before(&self, _op: &'static str) -> Result<(), StoreError> {
        Ok(())
    }
    fn invalidation(&self, _event: &Invalidation) {
        if self.armed.swap(false, Ordering::SeqCst) {
            self.held.notify_one();
            // The worker's other tasks (the connection's reader among them) move to another
            // thread meanwhile.
            tokio::task::block_in_place(|| {
                let (lock, wake) = &*self.released;
                let released = lock.lock().expect("lock");
                // Bounded: a test that fails before releasing does not hold the task for ever.
                let _ = wake.wait_timeout_while(released, Duration::from_secs(10), |r| !*r);
            });
        }
    }
}

/// B's stream falls behind (its task is held while 20 000 messages arrive, five times the room
/// of its queue), and the change of a session B holds a copy of is among the messages lost: B
/// flushes, and serves the new state, not its copy. The heartbeat and the max age are set long,
/// so that only the lag can be what drops the copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lagged_stream_flushes_the_cache() {
    let server = RedisServer::start();
    let prefix = unique_prefix();
    let a = cached(&server.url(), &prefix).await;
    let stall = Stall::default();
    let store = RedisStore::builder(server.url())
        .prefix(&prefix)
        .invalidation_heartbeat(Duration::from_secs(5))
        .connect()
        .await
        .expect("connect");
    let b = CachedStore::builder(Hooked::with_hook(store, stall.clone()))
        .max_age(Duration::from_secs(60))
        .build()
        .await
        .expect("cache");
    assert!(!b.is_paused());

    let (s, t) = (
        sessile_conformance::record(None, 1),
        sessile_conformance::record(None, 2),
    );
    for r in [&s, &t] {
        a.create(r, WriteId::random()).await.expect("create");
    }
    assert_eq!(b.load(s.id).await.expect("load"), Some(s.clone()));
    assert!(b.serves(&s.id));
    let flushes = b.stats().flushes;

    // B's stream task is held on T's change...
    stall.arm();
    let held = stall.held.notified();
    let mut t2 = t.clone();
    t2.version = 2;
    a.save(&t2, 1, WriteId::random()).await.expect("save T");
    tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("B's stream task is held");
    // ...while S changes and 20 000 other messages follow.
    let mut s2 = s.clone();
    s2.version = 2;
    s2.data.insert("theme".into(), b"light".to_vec());
    a.save(&s2, 1, WriteId::random()).await.expect("save S");
    let channel = format!("{prefix}:inv");
    server.cli(&[
        "EVAL",
        "for i = 1, 20000 do redis.call('PUBLISH', KEYS[1], 'noise') end",
        "1",
        &channel,
    ]);
    // Released once Redis has sent them all (no pub/sub client has output queued) and the
    // subscribers' connections have read them (nothing left in their sockets).
    let start = Instant::now();
    while !delivered(&server) {
        assert!(start.elapsed() < Duration::from_secs(10), "never delivered");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stall.release();

    until_dropped(&b, &s.id).await;
    assert!(b.stats().flushes > flushes, "the lag flushed the cache");
    assert_eq!(b.load(s.id).await.expect("reload"), Some(s2));
}

/// Whether every pub/sub client of `server` has been sent all its output and has read it: Redis
/// holds none for it, and its socket (found by its port in `/proc/net/tcp`) has nothing unread.
fn delivered(server: &RedisServer) -> bool {
    let clients = server.cli(&["CLIENT", "LIST", "TYPE", "pubsub"]);
    let tcp = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    clients.lines().all(|client| {
        let port = client
            .split(' ')
            .find_map(|f| f.strip_prefix("addr="))
            .and_then(|a| a.rsplit_once(':'))
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .expect("a client address");
        let unread = tcp.lines().skip(1).find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local_port = f.get(1)?.rsplit_once(':')?.1;
            (u16::from_str_radix(local_port, 16).ok()? == port)
                .then(|| u64::from_str_radix(f.get(4)?.rsplit_once(':')?.1, 16).ok())
                .flatten()
        });
        client.contains(" omem=0 ") && unread == Some(0)
    })
}

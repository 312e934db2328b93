//! The Redis store through Sentinel: a primary, a replica and three `redis-sentinel` processes.
//! The primary is killed; the Sentinels promote the replica and the store follows them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use sessile::{KeyRing, SessionManagerLayer};
use sessile_redis::RedisStore;
use sessile_tests::redis::{RedisSentinels, RedisServer, unique_prefix};
use sessile_tests::{Gate, routes, send};

const NAME: &str = "sid";

/// Replication offset of a primary, and the offset its replica has acknowledged.
fn offsets(primary: &RedisServer) -> (u64, Option<u64>) {
    let info = primary.cli(&["info", "replication"]);
    let master = info
        .lines()
        .find_map(|l| l.strip_prefix("master_repl_offset:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let replica = info
        .lines()
        .find(|l| l.starts_with("slave0:"))
        .and_then(|l| l.split(',').find_map(|kv| kv.strip_prefix("offset=")))
        .and_then(|v| v.trim().parse().ok());
    (master, replica)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_follows_a_sentinel_failover() {
    let mut group = RedisSentinels::start();
    let replica_port = group.servers[1].port();
    let store = RedisStore::builder(group.url())
        .prefix(unique_prefix())
        .connect()
        .await
        .expect("connect through the Sentinels");
    let layer = SessionManagerLayer::builder(store, KeyRing::new(1, &[6; 32]).expect("keys"))
        .cookie_name(NAME)
        .build()
        .expect("layer");
    let app = routes(Arc::new(Gate::default())).layer(layer);
    let cookie = |t: &str| format!("{NAME}={t}");

    let mut tokens = Vec::new();
    for _ in 0..100 {
        let r = send(&app, Method::POST, "/incr", None, None).await;
        assert_eq!(r.status, StatusCode::OK);
        tokens.push(r.cookie_value(NAME).expect("a session"));
    }
    // Only what reached the replica can survive the primary: wait for it to catch up.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (master, replica) = offsets(&group.servers[0]);
        if replica == Some(master) {
            break;
        }
        assert!(Instant::now() < deadline, "the replica never caught up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    group.servers[0].kill();
    let killed = Instant::now();
    // Writes at a steady pace (one every 20 ms) until one is saved again; bounded in time.
    let (mut failed, mut attempts) = (0u32, 0u32);
    loop {
        attempts += 1;
        let r = send(&app, Method::POST, "/incr", Some(&cookie(&tokens[0])), None).await;
        if r.status == StatusCode::OK && r.save_failed.is_none() {
            break;
        }
        failed += 1;
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "the store did not serve again within a minute ({failed} of {attempts} writes failed)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let serving_after = killed.elapsed();
    assert_eq!(
        group.primary_port(),
        Some(replica_port),
        "the Sentinels promoted the replica"
    );

    let mut lost = 0;
    for (i, t) in tokens.iter().enumerate() {
        let n = send(&app, Method::GET, "/n", Some(&cookie(t)), None)
            .await
            .body;
        let expected = if i == 0 { "2" } else { "1" };
        lost += usize::from(n != expected);
    }
    eprintln!(
        "Sentinel failover: serving again {:.1} s after the primary was killed; {failed} of \
         {attempts} writes failed during the switch; {lost} of 100 sessions lost",
        serving_after.as_secs_f64()
    );
    assert_eq!(lost, 0, "replicated sessions survive the failover");
}

/// The cache tier through a Sentinel failover: B holds a copy of a session when the primary is
/// killed; A changes the session on the promoted replica; B never serves its old copy after A's
/// write, and its cache resumes on the new primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_serves_no_old_copy_after_a_sentinel_failover() {
    use sessile::SessionStore as _;
    use sessile::store::{CachedStore, WriteId};

    let mut group = RedisSentinels::start();
    let prefix = unique_prefix();
    let mut caches = Vec::new();
    for _ in 0..2 {
        let store = RedisStore::builder(group.url())
            .prefix(&prefix)
            .connect()
            .await
            .expect("connect through the Sentinels");
        let cache = CachedStore::new(store).await.expect("cache");
        assert!(!cache.is_paused(), "the stream works once built");
        caches.push(cache);
    }
    let (a, b) = (&caches[0], &caches[1]);
    let r = sessile_conformance::record(None, 1);
    a.create(&r, WriteId::random()).await.expect("create");
    assert_eq!(b.load(r.id).await.expect("load"), Some(r.clone()));
    assert!(b.serves(&r.id));
    let deadline = Instant::now() + Duration::from_secs(10);
    while offsets(&group.servers[0]).1 != Some(offsets(&group.servers[0]).0) {
        assert!(Instant::now() < deadline, "the replica never caught up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    group.servers[0].kill();
    let killed = Instant::now();
    let mut next = r.clone();
    next.version = 2;
    next.data.insert("theme".into(), b"light".to_vec());
    // A writes at a steady pace until the promoted replica takes the write; bounded in time. One
    // write id: a write re-sent after an unknown outcome is applied once.
    let write = WriteId::random();
    while a.save(&next, 1, write).await.is_err() {
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "no write within a minute of the kill"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // From A's write on, B reads the new state (from Redis or a fresh copy), never its old copy.
    let start = Instant::now();
    loop {
        match b.load(r.id).await {
            Ok(found) => {
                assert_eq!(found, Some(next.clone()), "B served its old copy");
                if b.serves(&r.id) {
                    break;
                }
            }
            Err(e) => assert!(start.elapsed() < Duration::from_secs(30), "B: {e}"),
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "B's cache did not resume on the new primary"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "cache through a Sentinel failover: A wrote {:.1} s after the kill; B cached again {:.1} s \
         after that",
        (start - killed).as_secs_f64(),
        start.elapsed().as_secs_f64()
    );
}

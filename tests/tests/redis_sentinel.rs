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

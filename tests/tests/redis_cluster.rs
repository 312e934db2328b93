//! The HTTP-level race on a Redis Cluster: log out everywhere while the user's sessions rotate on
//! two instances.

use std::sync::Arc;

use sessile_redis::RedisStore;
use sessile_testkit::redis::{RedisCluster, unique_prefix};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_out_everywhere_ends_sessions_rotating_on_two_instances() {
    let cluster = RedisCluster::start();
    let prefix = unique_prefix();
    let mut apps = Vec::new();
    for node in ["node-a", "node-b"] {
        let store = RedisStore::builder(cluster.url())
            .prefix(&prefix)
            .connect()
            .await
            .expect("connect to the cluster");
        let layer = sessile::SessionManagerLayer::builder(
            store,
            sessile::KeyRing::new(1, &[4; 32]).expect("keys"),
        )
        .cookie_name("sid")
        .node_hint(sessile::Hint::new(node).expect("hint"))
        .build()
        .expect("layer");
        let gate = Arc::new(sessile_tests::Gate::default());
        apps.push(sessile_tests::routes(gate).layer(layer));
    }
    let apps: [axum::Router; 2] = apps.try_into().expect("two apps");
    let race = sessile_tests::races::logout_everywhere_beats_rotation(apps, "sid", 100).await;
    eprintln!("Redis Cluster: {race:?}");
    assert_eq!(race.survivors, 0, "{race:?}");
}

/// The cache tier on a Cluster: 30 sessions spread over the slots of the three primaries; a
/// change and a logout of each on A stop B serving its copy, and B then reads what A wrote. The
/// scripts publish from whichever node holds the key; the Cluster carries the message to B's
/// subscriber, connected to one node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caches_on_a_cluster_stop_serving_what_another_instance_changed() {
    use sessile::SessionStore as _;
    use sessile::store::{CachedStore, WriteId};

    let mut cluster = RedisCluster::start();
    let prefix = unique_prefix();
    let mut caches = Vec::new();
    for _ in 0..2 {
        // A slower heartbeat than the default: six redis-servers and the other tests share two
        // cores, and a heartbeat 600 ms late (three default periods) pauses the cache, which is
        // not what this test is about.
        let store = RedisStore::builder(cluster.url())
            .prefix(&prefix)
            .invalidation_heartbeat(std::time::Duration::from_secs(1))
            .connect()
            .await
            .expect("connect to the cluster");
        // Building waits for the stream's first heartbeat up to the copies' maximum age (3 s by
        // default): under the whole suite one of three heartbeats in a row can come late. A
        // longer age gives it time; invalidations below must still arrive within a second.
        let cache = CachedStore::builder(store)
            .max_age(std::time::Duration::from_secs(10))
            .build()
            .await
            .expect("cache");
        assert!(!cache.is_paused(), "the stream works once built");
        caches.push(cache);
    }
    let (a, b) = (&caches[0], &caches[1]);
    let records: Vec<_> = (0..30)
        .map(|n| sessile_conformance::record(None, n))
        .collect();
    for r in &records {
        a.create(r, WriteId::random()).await.expect("create");
        assert_eq!(b.load(r.id).await.expect("load"), Some(r.clone()));
        assert!(b.serves(&r.id));
    }
    let holding = cluster
        .nodes()
        .iter()
        .filter(|n| n.cli(&["info", "replication"]).contains("role:master"))
        .filter(|n| n.cli(&["dbsize"]).trim().parse::<u64>().unwrap_or(0) > 0)
        .count();
    assert_eq!(holding, 3, "the sessions are spread over every primary");
    for r in &records {
        let mut next = r.clone();
        next.version = 2;
        next.data.insert("theme".into(), b"light".to_vec());
        a.save(&next, 1, WriteId::random()).await.expect("save");
        sessile_tests::until_dropped(b, &r.id).await;
        assert_eq!(b.load(r.id).await.expect("reload"), Some(next));
        a.destroy(r.id).await.expect("logout");
        sessile_tests::until_dropped(b, &r.id).await;
        assert_eq!(b.load(r.id).await.expect("after logout"), None);
    }
}

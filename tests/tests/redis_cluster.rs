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

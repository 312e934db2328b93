//! The Redis store on a real Redis Cluster of three primaries with one replica each.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sessile_core::record::Record;
use sessile_core::store::WriteId;
use sessile_core::{SessionId, SessionStore};
use sessile_redis::RedisStore;
use sessile_testkit::redis::{RedisCluster, RedisServer, unique_prefix};

async fn store(cluster: &RedisCluster, prefix: &str) -> RedisStore {
    RedisStore::builder(cluster.url())
        .prefix(prefix)
        .connect()
        .await
        .expect("connect to the cluster")
}

fn slot(key: &str) -> u16 {
    fred::util::redis_keyslot(key.as_bytes())
}

/// A record of `user` with an id in the user's partition, as the layer makes them.
fn user_record(user: &str, n: u64) -> Record {
    let mut r = sessile_conformance::record(Some(user), n);
    r.id = SessionId::random_for_user(Some(user));
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_passes_the_conformance_suite() {
    let cluster = RedisCluster::start();
    sessile_conformance::run_all(|| {
        let prefix = unique_prefix();
        let cluster = &cluster;
        async move { store(cluster, &prefix).await }
    })
    .await;
}

/// Replication offset of a primary, and the offset its replica has acknowledged.
fn offsets(primary: &RedisServer) -> (u64, Option<u64>) {
    let info = primary.cli(&["info", "replication"]);
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let master = field("master_repl_offset:").unwrap_or(0);
    let replica = info
        .lines()
        .find(|l| l.starts_with("slave0:"))
        .and_then(|l| l.split(',').find_map(|kv| kv.strip_prefix("offset=")))
        .and_then(|v| v.parse().ok());
    (master, replica)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_keys_share_a_slot_and_survive_a_primary_failover() {
    let mut cluster = RedisCluster::start();
    let prefix = unique_prefix();
    let store = Arc::new(store(&cluster, &prefix).await);

    // Alice's sessions, created as the layer creates them, plus her index: one slot.
    let alice: Vec<Record> = (0..5).map(|i| user_record("alice", i)).collect();
    for r in &alice {
        store.create(r, WriteId::random()).await.expect("create");
    }
    let index = store.index_key(Some("t1"), "alice");
    let alice_slot = slot(&index);
    for r in &alice {
        assert_eq!(slot(&store.record_key(&r.id)), alice_slot);
    }
    // A rotation into alice's partition from an anonymous session in another slot (a login).
    let anon = sessile_conformance::record(None, 9);
    store
        .create(&anon, WriteId::random())
        .await
        .expect("create");
    assert_ne!(
        slot(&store.record_key(&anon.id)),
        alice_slot,
        "random partition"
    );
    let mut logged_in = anon.clone();
    logged_in.id = SessionId::random_for_user(Some("alice"));
    logged_in.version = 2;
    logged_in.meta.user_id = Some("alice".into());
    store
        .rotate(anon.id, &logged_in, 1, WriteId::random())
        .await
        .expect("cross-slot rotate");
    assert!(matches!(
        store.load(anon.id).await,
        Err(sessile_core::StoreError::Rotated)
    ));
    assert_eq!(slot(&store.record_key(&logged_in.id)), alice_slot);

    // Many users' sessions, spread over every primary, written before the fault.
    let before: Vec<Record> = (0..300)
        .map(|i| user_record(&format!("user{i}"), i))
        .collect();
    for r in &before {
        store.create(r, WriteId::random()).await.expect("create");
    }

    // Wait until the primary serving alice's slot has replicated everything written so far.
    let victim = cluster.primary_of_slot(alice_slot);
    let (target, _) = offsets(&cluster.nodes()[victim]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while offsets(&cluster.nodes()[victim]).1.unwrap_or(0) < target {
        assert!(Instant::now() < deadline, "replica did not catch up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Light load during the fault: one writer creating a session every 20 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (store, stop, ok, failed) = (store.clone(), stop.clone(), ok.clone(), failed.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) && i < 5_000 {
                let r = user_record(&format!("load{i}"), i);
                let res = tokio::time::timeout(
                    Duration::from_secs(3),
                    store.create(&r, WriteId::random()),
                )
                .await;
                let counter = if matches!(res, Ok(Ok(()))) {
                    &ok
                } else {
                    &failed
                };
                counter.fetch_add(1, Ordering::SeqCst);
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed_at = Instant::now();
    cluster.nodes()[victim].kill();

    // The replica takes over; the cluster is whole again.
    tokio::task::block_in_place(|| cluster.wait_healthy(Duration::from_secs(30)));
    let healed = killed_at.elapsed();

    // Reads through the store work again (fred follows the new topology), bounded in time.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if store.load(alice[0].id).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "store did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recovered = killed_at.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    load.await.expect("load task");

    let mut lost = 0;
    for r in before.iter().chain(&alice).chain([&logged_in]) {
        if store
            .load(r.id)
            .await
            .expect("load after failover")
            .is_none()
        {
            lost += 1;
        }
    }
    eprintln!(
        "failover: cluster healthy after {healed:?}, store serving after {recovered:?}; \
         light load: {} writes ok, {} failed during the fault; \
         {lost} of {} replicated sessions lost",
        ok.load(Ordering::SeqCst),
        failed.load(Ordering::SeqCst),
        before.len() + alice.len() + 1,
    );
    assert_eq!(
        lost, 0,
        "sessions replicated before the kill must survive it"
    );
    assert_eq!(
        store
            .destroy_user(Some("t1"), "alice")
            .await
            .expect("destroy_user"),
        6
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_slot_rotation_settled_as_not_applied_never_lands() {
    // Across slots a rotation is two writes: the new record, then the old one's marker. If the
    // first is still on its way when the layer settles the rotation, it must be fenced in its own
    // slot too, or it lands later as a session nobody holds.
    let cluster = RedisCluster::start();
    let store = store(&cluster, &unique_prefix()).await;
    let anon = sessile_conformance::record(None, 1);
    store
        .create(&anon, WriteId::random())
        .await
        .expect("create");
    let mut logged_in = anon.clone();
    logged_in.id = SessionId::random_for_user(Some("alice"));
    logged_in.version = 2;
    logged_in.meta.user_id = Some("alice".into());
    assert_ne!(
        slot(&store.record_key(&anon.id)),
        slot(&store.record_key(&logged_in.id))
    );
    let write = WriteId::random();
    assert_eq!(
        store
            .settle(anon.id, logged_in.id, 1, write)
            .await
            .expect("settle"),
        sessile_core::store::Settled::NotApplied
    );
    // The rotation's first step arrives late.
    assert!(store.create(&logged_in, write).await.is_err());
    assert!(store.load(logged_in.id).await.expect("load").is_none());
    assert!(store.load(anon.id).await.expect("load").is_some());
}

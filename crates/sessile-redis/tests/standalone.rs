//! The Redis store against a real standalone `redis-server` (or `REDIS_URL`).

use std::time::{Duration, Instant};

use fred::prelude::*;
use sessile_core::store::{Settled, WriteId};
use sessile_core::{SessionId, SessionStore, StoreError};
use sessile_redis::{RedisStore, RedisStoreError};
use sessile_testkit::redis::{RedisServer, TestRedis, unique_prefix};

async fn store_on(url: &str) -> RedisStore {
    RedisStore::builder(url)
        .prefix(unique_prefix())
        .connect()
        .await
        .expect("connect")
}

sessile_conformance::store_conformance!(|| async {
    let server = TestRedis::from_env_or_start();
    let store = store_on(&server.url()).await;
    (store, server)
});

#[tokio::test]
async fn bad_urls_and_settings_are_typed_errors() {
    // Nothing here may reach a real server: every URL fails before connecting.
    assert!(matches!(
        RedisStore::connect("http://127.0.0.1:1").await,
        Err(RedisStoreError::BadConfig(_))
    ));
    assert!(matches!(
        RedisStore::connect("rediss://127.0.0.1:1").await,
        Err(RedisStoreError::BadConfig(_))
    ));
    assert!(matches!(
        RedisStore::connect("redis://127.0.0.1:notaport").await,
        Err(RedisStoreError::BadUrl(_))
    ));
    assert!(matches!(
        RedisStore::builder("redis://127.0.0.1:1")
            .prefix("a{b")
            .connect()
            .await,
        Err(RedisStoreError::BadConfig(_))
    ));
    assert!(matches!(
        RedisStore::builder("redis://127.0.0.1:1")
            .pool_size(0)
            .connect()
            .await,
        Err(RedisStoreError::BadConfig(_))
    ));
    // Longer than a write id is remembered: a late re-send could not be recognised.
    assert!(matches!(
        RedisStore::builder("redis://127.0.0.1:1")
            .command_timeout(Duration::from_secs(30))
            .connect()
            .await,
        Err(RedisStoreError::BadConfig(_))
    ));
}

#[tokio::test]
async fn an_unreachable_server_fails_at_start_within_the_connect_timeout() {
    // A port with nothing listening: a server that was started and killed. Sentinel and Cluster
    // URLs must parse too, and fail the same way (nothing listens on port 1 or 2 of loopback).
    let mut server = RedisServer::start();
    let standalone = server.url();
    server.kill();
    for url in [
        standalone.as_str(),
        "redis-sentinel://127.0.0.1:1/0?sentinelServiceName=sessions",
        "redis-cluster://127.0.0.1:1?node=127.0.0.1:2",
    ] {
        let started = Instant::now();
        let result = RedisStore::builder(url)
            .connect_timeout(Duration::from_millis(500))
            .connect()
            .await;
        assert!(
            matches!(
                result,
                Err(RedisStoreError::Unreachable(_) | RedisStoreError::Connect(_))
            ),
            "{url}: {result:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{url}: {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn scripts_are_reloaded_after_a_script_flush() {
    let server = RedisServer::start();
    let store = store_on(&server.url()).await;
    let r = sessile_conformance::record(None, 1);
    store.create(&r, WriteId::random()).await.expect("create");
    assert!(server.cli(&["script", "flush"]).contains("OK"));
    let mut next = r.clone();
    next.version = 2;
    store
        .save(&next, 1, WriteId::random())
        .await
        .expect("save after NOSCRIPT reload");
    assert_eq!(
        store
            .load(r.id)
            .await
            .expect("load")
            .expect("present")
            .version,
        2
    );
}

#[tokio::test]
async fn a_corrupt_record_is_a_typed_error() {
    let server = RedisServer::start();
    let store = store_on(&server.url()).await;
    // A body that does not decode, a value cut inside its header or its user, a foreign value,
    // and a key of another type (that one was "unavailable", which counts against the breaker).
    type Cut = fn(&[u8]) -> Vec<u8>;
    let cuts: [Cut; 4] = [
        |raw| [&raw[..27 + 6], b"not a record"].concat(),
        |raw| raw[..20].to_vec(),
        |raw| raw[..29].to_vec(),
        |_| b"{\"user\":\"alice\"}".to_vec(),
    ];
    for (n, cut) in cuts.iter().enumerate() {
        let r = sessile_conformance::record(Some("alice"), 1);
        store.create(&r, WriteId::random()).await.expect("create");
        let key = store.record_key(&r.id);
        let raw: Vec<u8> = store.pool().next().get(&key).await.expect("get");
        let _: () = store
            .pool()
            .next()
            .set(&key, cut(&raw), None, None, false)
            .await
            .expect("set");
        let loaded = store.load(r.id).await;
        assert!(
            matches!(loaded, Err(StoreError::Corrupt(_))),
            "{n}: {loaded:?}"
        );
    }
    // A key of another type, and a record cut inside its header: every operation answers
    // "corrupt" before it writes anything (no claimed write id), and a logout deletes it.
    for junk in ["hash", "short"] {
        let r = sessile_conformance::record(None, 1);
        let key = store.record_key(&r.id);
        if junk == "hash" {
            let _: () = store
                .pool()
                .next()
                .hset(&key, ("v", "1"))
                .await
                .expect("hset");
        } else {
            let _: () = store
                .pool()
                .next()
                .set(&key, "R123", None, None, false)
                .await
                .expect("set");
        }
        let corrupt = |r: Result<(), StoreError>| matches!(r, Err(StoreError::Corrupt(_)));
        let loaded = store.load(r.id).await;
        assert!(
            matches!(loaded, Err(StoreError::Corrupt(_))),
            "{junk}: {loaded:?}"
        );
        let write = WriteId::random();
        let saved = store.save(&r, 1, write).await;
        assert!(corrupt(saved), "{junk}: save");
        assert_eq!(
            store.settle(r.id, r.id, 1, write).await.expect("settle"),
            Settled::NotApplied,
            "{junk}: nothing was claimed"
        );
        let mut next = sessile_conformance::record(None, 1);
        next.version = 2;
        assert!(
            corrupt(store.rotate(r.id, &next, 1, WriteId::random()).await),
            "{junk}: rotate"
        );
        assert!(corrupt(store.touch(r.id, 1).await), "{junk}: touch");
        store.destroy(r.id).await.expect("a logout deletes it");
        assert_eq!(server.cli(&["exists", &key]).trim(), "0", "{junk}");
    }
    assert!(
        store
            .load(SessionId::random())
            .await
            .expect("load")
            .is_none()
    );
}

#[tokio::test]
async fn a_paused_server_costs_a_deadline_and_recovers_when_resumed() {
    let server = RedisServer::start();
    let store = store_on(&server.url()).await;
    let r = sessile_conformance::record(None, 1);
    store.create(&r, WriteId::random()).await.expect("create");

    server.pause();
    let started = Instant::now();
    let stalled = tokio::time::timeout(Duration::from_millis(300), store.load(r.id)).await;
    assert!(stalled.is_err(), "a frozen server cannot answer");
    assert!(started.elapsed() < Duration::from_secs(1));

    server.resume();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match store.load(r.id).await {
            Ok(Some(loaded)) => {
                assert_eq!(loaded, r, "nothing changed while paused");
                break;
            }
            other => assert!(Instant::now() < deadline, "no recovery: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_store_reconnects_by_itself_after_a_restart() {
    let mut server = RedisServer::start();
    let store = store_on(&server.url()).await;
    store
        .create(&sessile_conformance::record(None, 1), WriteId::random())
        .await
        .expect("create");
    server.kill();
    assert!(
        store.load(SessionId::random()).await.is_err(),
        "server is down"
    );
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    let r = sessile_conformance::record(None, 2);
    while store.create(&r, WriteId::random()).await.is_err() {
        assert!(Instant::now() < deadline, "no reconnect within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(store.load(r.id).await.expect("load").expect("present"), r);
}

#[tokio::test]
async fn a_users_index_and_generation_live_as_long_as_the_latest_session() {
    let server = RedisServer::start();
    let store = store_on(&server.url()).await;
    let pexpiretime = |key: &str| -> u64 {
        server
            .cli(&["pexpiretime", key])
            .trim()
            .parse()
            .expect("pexpiretime")
    };
    let create = async |r: &sessile_core::record::Record| {
        store.create(r, WriteId::random()).await.expect("create");
    };
    let mut first = sessile_conformance::record(Some("alice"), 1);
    first.meta.absolute_deadline += 60_000;
    create(&first).await;
    let index = store.index_key(Some("t1"), "alice");
    assert_eq!(pexpiretime(&index), first.meta.absolute_deadline);
    // A later session pushes the index out; an earlier one does not pull it in.
    let mut later = sessile_conformance::record(Some("alice"), 1);
    later.meta.absolute_deadline = first.meta.absolute_deadline + 60_000;
    create(&later).await;
    assert_eq!(pexpiretime(&index), later.meta.absolute_deadline);
    let earlier = sessile_conformance::record(Some("alice"), 1);
    create(&earlier).await;
    assert_eq!(pexpiretime(&index), later.meta.absolute_deadline);
    // After a log-out-everywhere began, the generation lives as long as the index, and is pushed
    // out with it.
    let generation = index.replacen(":i:", ":g:", 1);
    let _: i64 = store.pool().next().incr(&generation).await.expect("incr");
    let _: bool = store
        .pool()
        .next()
        .pexpire_at(&generation, later.meta.absolute_deadline as i64, None)
        .await
        .expect("pexpireat");
    let mut racer = sessile_conformance::record(Some("alice"), 1);
    racer.meta.absolute_deadline = later.meta.absolute_deadline + 60_000;
    create(&racer).await;
    assert_eq!(pexpiretime(&index), racer.meta.absolute_deadline);
    assert_eq!(pexpiretime(&generation), racer.meta.absolute_deadline);
}

/// A script that fails after it claimed its write id (here the user's index is a key of another
/// type, after the record was written) is reported as unavailable, not as an answer: the layer
/// then settles it and learns that it was applied.
#[tokio::test]
async fn a_write_that_fails_after_landing_settles_as_applied() {
    let server = RedisServer::start();
    let store = store_on(&server.url()).await;
    let r = sessile_conformance::record(Some("mallory"), 1);
    let index = store.index_key(Some("t1"), "mallory");
    let _: () = store
        .pool()
        .next()
        .set(&index, "not an index", None, None, false)
        .await
        .expect("set");
    let write = WriteId::random();
    let created = store.create(&r, write).await;
    assert!(
        matches!(created, Err(ref e) if e.is_ambiguous()),
        "{created:?}"
    );
    assert_eq!(
        store.settle(r.id, r.id, 0, write).await.expect("settle"),
        Settled::Applied
    );
    assert_eq!(store.load(r.id).await.expect("load"), Some(r.clone()));
}

/// A call that runs out of its caller's deadline while its connection is down is dropped from
/// fred's queue, not sent once the connection is back: here a save, which would otherwise land
/// after its caller (the session layer, whose own timer dropped the call) had given up on it and
/// perhaps settled it as not applied. Before the store handed the deadline to fred, fred's own
/// timeout (2 s) was dropped with the call and never marked the command, and the save landed
/// after the reconnect: version 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_that_ran_out_of_its_deadline_while_disconnected_is_never_sent() {
    let server = RedisServer::start();
    let proxy = sessile_testkit::proxy::Proxy::start(([127, 0, 0, 1], server.port()).into()).await;
    let store = RedisStore::builder(format!("redis://{}", proxy.addr()))
        .prefix(unique_prefix())
        .pool_size(1)
        .connect()
        .await
        .expect("connect through the proxy");
    let r = sessile_conformance::record(None, 1);
    store.create(&r, WriteId::random()).await.expect("create");

    // The caller as the session layer is for a store it wraps: a deadline current, and a timer
    // of its own, a little later, that drops the call when it fires.
    async fn call<T>(f: impl Future<Output = T>) -> Result<T, tokio::time::error::Elapsed> {
        let budget = Duration::from_millis(300);
        let deadline = sessile_core::store::Deadline::after(budget - Duration::from_millis(10));
        tokio::time::timeout(budget, deadline.scope(f)).await
    }
    // The connection goes down (the reply to this read is lost) and stays down: the proxy holds
    // the reconnect.
    proxy.lose_next_reply();
    let lost = call(store.load(SessionId::random())).await;
    assert!(
        !matches!(lost, Ok(Ok(_))),
        "the read's reply was lost: {lost:?}"
    );
    proxy.reply_lost().await;

    let mut next = r.clone();
    next.version = 2;
    let save = call(store.save(&next, 1, WriteId::random())).await;
    assert!(
        matches!(save, Ok(Err(StoreError::Timeout(_)))),
        "no connection: the store answers with a timeout, by the deadline: {save:?}"
    );
    // The connection comes back; fred sends what is still queued, in order, before this read.
    proxy.release();
    let started = Instant::now();
    let loaded = loop {
        if let Ok(Some(loaded)) = store.load(r.id).await {
            break loaded;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no reconnect");
    };
    assert_eq!(
        loaded.version, 1,
        "the save that ran out of time landed later"
    );
}

/// A copy of a create (sent again by a client, or arriving late) changes nothing once the create
/// ran: not while the session lives, and not after it ended, whether or not the create was
/// settled. A create that claimed no write id of its own, and recognised a copy by its record
/// alone, was tried for its Redis time (about 12% of a login's) and dropped: a copy arriving after
/// a logout wrote the session back, and a log-out-everywhere that deleted the record before a
/// lost reply was settled made the create look not applied, so the layer created it again under
/// the new generation, out of the logout's reach.
#[tokio::test]
async fn a_copy_of_a_create_never_brings_its_session_back() {
    let server = RedisServer::start();
    let store = store_on(&server.url()).await;
    // Answered at once, then ended: a copy arriving later does nothing.
    let r = sessile_conformance::record(Some("ann"), 1);
    let w = WriteId::random();
    store.create(&r, w).await.expect("create");
    store
        .create(&r, w)
        .await
        .expect("a copy of a create that ran is done");
    assert_eq!(store.load(r.id).await.expect("load"), Some(r.clone()));
    store.destroy(r.id).await.expect("destroy");
    store
        .create(&r, w)
        .await
        .expect("a copy of a create that ran is done");
    assert_eq!(store.load(r.id).await.expect("load"), None, "resurrected");
    // Its reply lost, and the session ended before the settle: still applied.
    let r = sessile_conformance::record(Some("bob"), 1);
    let w = WriteId::random();
    store.create(&r, w).await.expect("create");
    assert_eq!(
        store
            .destroy_user(Some("t1"), "bob")
            .await
            .expect("log out everywhere"),
        1
    );
    assert_eq!(
        store.settle(r.id, r.id, 0, w).await.expect("settle"),
        Settled::Applied,
        "a create that landed, reported not applied, would be made again"
    );
    store
        .create(&r, w)
        .await
        .expect("a copy of a create that ran is done");
    assert_eq!(store.load(r.id).await.expect("load"), None, "resurrected");
}

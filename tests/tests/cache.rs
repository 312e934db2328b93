//! The cache tier's interleavings, made one at a time: a store whose invalidations the test sends
//! by hand, and a hook that holds a load in the middle of its call. (The same cache against real
//! Redis instances is in `redis_cache.rs`.)

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sessile::clock::{Clock, ManualClock};
use sessile::record::Record;
use sessile::store::invalidation::{FlushCause, Invalidation};
use sessile::store::{CachedStore, CachedStoreBuilder, WriteId};
use sessile::{MemoryStore, SessionStore, StoreError};
use sessile_tests::{Hook, Hooked, ManualInvalidations};
use tokio::sync::Notify;

/// Holds the next load (or save, `armed_save`), once armed, until released; or the next load's
/// reply after the store read (`armed_reply`, with `reply_reached` and `reply_release`); counts
/// loads.
#[derive(Clone, Default)]
struct HoldLoad {
    armed: Arc<AtomicBool>,
    armed_save: Arc<AtomicBool>,
    armed_reply: Arc<AtomicBool>,
    reply_reached: Arc<Notify>,
    reply_release: Arc<Notify>,
    /// Holds the next save after it was applied (with `reply_reached` and `reply_release`).
    armed_saved: Arc<AtomicBool>,
    /// Holds the next destroy before it is applied (with `reached` and `release`).
    armed_destroy: Arc<AtomicBool>,
    reached: Arc<Notify>,
    release: Arc<Notify>,
    loads: Arc<std::sync::atomic::AtomicU64>,
}

impl Hook for HoldLoad {
    async fn before(&self, op: &'static str) -> Result<(), StoreError> {
        if op == "load" {
            self.loads.fetch_add(1, Ordering::SeqCst);
            if self.armed.swap(false, Ordering::SeqCst) {
                self.reached.notify_one();
                self.release.notified().await;
            }
        }
        let held = match op {
            "save" => &self.armed_save,
            "destroy" => &self.armed_destroy,
            _ => return Ok(()),
        };
        if held.swap(false, Ordering::SeqCst) {
            self.reached.notify_one();
            self.release.notified().await;
        }
        Ok(())
    }

    async fn after(&self, op: &'static str) {
        let armed = match op {
            "load" => &self.armed_reply,
            "save" => &self.armed_saved,
            _ => return,
        };
        if armed.swap(false, Ordering::SeqCst) {
            self.reply_reached.notify_one();
            self.reply_release.notified().await;
        }
    }
}

type Inner = ManualInvalidations<Hooked<MemoryStore, HoldLoad>>;

async fn cache_with(clock: Option<Arc<ManualClock>>) -> (CachedStore<Inner>, Inner, HoldLoad) {
    cache_built(clock, |b| b).await
}

async fn cache_built(
    clock: Option<Arc<ManualClock>>,
    tweak: impl FnOnce(CachedStoreBuilder<Inner>) -> CachedStoreBuilder<Inner>,
) -> (CachedStore<Inner>, Inner, HoldLoad) {
    let mut memory = MemoryStore::builder();
    if let Some(clock) = clock {
        memory = memory.clock(clock);
    }
    let hold = HoldLoad::default();
    let inner = ManualInvalidations::new(Hooked::with_hook(memory.build(), hold.clone()));
    let cache = tweak(CachedStore::builder(inner.clone()).max_age(Duration::from_secs(3)))
        .build()
        .await
        .expect("cache");
    (cache, inner, hold)
}

/// Starts this instance's save of the version after `r`'s (its `theme` changed) and returns
/// once the save has begun (its key is stale) and waits before the store applies it: the new
/// version and the save's task.
async fn held_save(
    cache: &CachedStore<Inner>,
    hold: &HoldLoad,
    r: &Record,
    theme: &str,
) -> (Record, tokio::task::JoinHandle<Result<(), StoreError>>) {
    let mut next = r.clone();
    next.version = r.version + 1;
    next.data.insert("theme".into(), theme.as_bytes().to_vec());
    hold.armed_save.store(true, Ordering::SeqCst);
    let saving = {
        let (cache, next, expected) = (cache.clone(), next.clone(), r.version);
        tokio::spawn(async move { cache.save(&next, expected, WriteId::random()).await })
    };
    hold.reached.notified().await;
    (next, saving)
}

/// Another instance's write (or this one's, echoed) of `version` of `id`.
fn changed(id: sessile::SessionId, version: u64) -> Invalidation {
    Invalidation::Changed {
        id,
        version: Some(version),
        at: None,
    }
}

async fn cache() -> (CachedStore<Inner>, Inner, HoldLoad) {
    cache_with(None).await
}

/// The reply of a load that was in flight when an invalidation of its key came in may be older
/// than the change: it is returned to its caller but never served from the cache.
#[tokio::test]
async fn a_load_that_raced_an_invalidation_is_not_cached() {
    let (cache, inner, hold) = cache().await;
    let r = sessile_conformance::record(None, 1);
    inner.create(&r, WriteId::random()).await.expect("create");

    hold.armed.store(true, Ordering::SeqCst);
    let loading = {
        let cache = cache.clone();
        tokio::spawn(async move { cache.load(r.id).await })
    };
    hold.reached.notified().await;
    // Another instance wrote version 2, and its invalidation overtakes the reply on its way.
    inner.emit(changed(r.id, 2));
    hold.release.notify_one();
    let got = loading.await.expect("task").expect("load");
    assert_eq!(got.map(|r| r.version), Some(1));
    assert!(
        !cache.serves(&r.id),
        "a copy older than the invalidation is served"
    );
}

/// Ten loads of one missing session at once: one store call, and all ten get the record.
#[tokio::test]
async fn concurrent_misses_of_one_session_make_one_store_call() {
    let (cache, inner, hold) = cache().await;
    let r = sessile_conformance::record(None, 1);
    inner.create(&r, WriteId::random()).await.expect("create");
    hold.armed.store(true, Ordering::SeqCst);
    let loads: Vec<_> = (0..10)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.load(r.id).await })
        })
        .collect();
    hold.reached.notified().await;
    // On this single-threaded runtime one yield lets every other load run up to where it waits.
    tokio::task::yield_now().await;
    hold.release.notify_one();
    for load in loads {
        assert_eq!(load.await.expect("task").expect("load"), Some(r.clone()));
    }
    assert_eq!(hold.loads.load(Ordering::SeqCst), 1);
    assert_eq!(cache.stats().misses, 10);
}

/// This instance's own save comes back as an invalidation of the version it wrote: the copy
/// stays. A newer version written elsewhere drops it.
#[tokio::test]
async fn an_own_write_coming_back_keeps_the_copy_and_a_newer_one_drops_it() {
    let (cache, inner, hold) = cache().await;
    let r = sessile_conformance::record(None, 1);
    cache.create(&r, WriteId::random()).await.expect("create");
    let mut next = r.clone();
    next.version = 2;
    cache.save(&next, 1, WriteId::random()).await.expect("save");
    assert!(cache.serves(&r.id));
    inner.emit(changed(r.id, 2));
    assert!(cache.serves(&r.id), "its own write dropped the copy");
    assert_eq!(cache.load(r.id).await.expect("hit"), Some(next.clone()));
    assert_eq!(
        hold.loads.load(Ordering::SeqCst),
        0,
        "served from the cache"
    );
    inner.emit(changed(r.id, 3));
    assert!(!cache.serves(&r.id));
}

/// A touch moves the deadline of the local copy and drops nothing.
#[tokio::test]
async fn a_touch_updates_the_copy_and_keeps_it() {
    let (cache, _inner, hold) = cache().await;
    let r = sessile_conformance::record(None, 1);
    cache.create(&r, WriteId::random()).await.expect("create");
    let later = r.idle_deadline + 60_000;
    cache.touch(r.id, later).await.expect("touch");
    let got = cache.load(r.id).await.expect("load").expect("found");
    assert_eq!(got.idle_deadline, later);
    assert_eq!(
        hold.loads.load(Ordering::SeqCst),
        0,
        "served from the cache"
    );
}

/// While the stream is paused nothing is served or cached; after it resumes, copies made before
/// are gone and new ones are served.
#[tokio::test]
async fn a_paused_stream_serves_nothing_and_a_resume_starts_afresh() {
    let (cache, inner, hold) = cache().await;
    let r = sessile_conformance::record(None, 1);
    cache.create(&r, WriteId::random()).await.expect("create");
    assert!(cache.serves(&r.id));
    inner.emit(Invalidation::Paused(FlushCause::Lost));
    assert!(!cache.serves(&r.id));
    cache.load(r.id).await.expect("load");
    assert!(!cache.serves(&r.id), "cached while paused");
    assert_eq!(hold.loads.load(Ordering::SeqCst), 1);
    inner.emit(Invalidation::Resumed);
    cache.load(r.id).await.expect("load");
    assert!(cache.serves(&r.id));
}

/// A lagged stream, an emptied database, a topology change, a reconnect: each drops every copy.
#[tokio::test]
async fn every_flush_cause_drops_every_copy() {
    let (cache, inner, _hold) = cache().await;
    for cause in [
        FlushCause::Lagged,
        FlushCause::Flushall,
        FlushCause::Topology,
        FlushCause::Reconnect,
    ] {
        let records: Vec<_> = (0..3)
            .map(|n| sessile_conformance::record(None, n))
            .collect();
        for r in &records {
            cache.create(r, WriteId::random()).await.expect("create");
            assert!(cache.serves(&r.id));
        }
        inner.emit(Invalidation::Flush(cause));
        for r in &records {
            assert!(!cache.serves(&r.id), "{cause:?}");
        }
    }
    assert_eq!(cache.stats().flushes, 4);
}

/// No copy outlives the max age, whatever the stream says (here: nothing).
#[tokio::test]
async fn no_copy_is_served_after_the_max_age() {
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let (cache, _inner, _hold) = cache_with(Some(clock.clone())).await;
    let mut r = sessile_conformance::record(None, 1);
    r.idle_deadline = Clock::now_ms(clock.as_ref()) + 3_600_000;
    r.meta.absolute_deadline = r.idle_deadline;
    cache.create(&r, WriteId::random()).await.expect("create");
    clock.advance(Duration::from_millis(2_999));
    assert!(cache.serves(&r.id));
    clock.advance(Duration::from_millis(1));
    assert!(!cache.serves(&r.id), "served at the max age");
}

/// Redis sends a write's invalidation before the write's reply. This instance's own save, echoed
/// while still in flight, is cached when its reply comes (no reload after every write); the same
/// version made by another instance instead (this save then fails) leaves nothing cached.
#[tokio::test]
async fn an_own_save_echoed_before_its_reply_is_cached() {
    let (cache, inner, hold) = cache().await;
    let r = sessile_conformance::record(None, 1);
    cache.create(&r, WriteId::random()).await.expect("create");
    assert!(cache.serves(&r.id));
    let (next, saving) = held_save(&cache, &hold, &r, "light").await;
    inner.emit(changed(r.id, 2));
    assert!(!cache.serves(&r.id), "the old copy went with the echo");
    hold.release.notify_one();
    saving.await.expect("task").expect("save");
    assert!(cache.serves(&r.id), "the written copy is cached");
    let loads = hold.loads.load(Ordering::SeqCst);
    assert_eq!(cache.load(r.id).await.expect("hit"), Some(next.clone()));
    assert_eq!(
        hold.loads.load(Ordering::SeqCst),
        loads,
        "served from the cache"
    );

    // Version 3 is made elsewhere while this instance's save of version 3 is in flight.
    let mut theirs = next.clone();
    theirs.version = 3;
    theirs.data.insert("theme".into(), b"theirs".to_vec());
    let (_mine, saving) = held_save(&cache, &hold, &next, "mine").await;
    inner
        .save(&theirs, 2, WriteId::random())
        .await
        .expect("theirs");
    inner.emit(changed(r.id, 3));
    hold.release.notify_one();
    assert!(matches!(
        saving.await.expect("task"),
        Err(StoreError::Conflict)
    ));
    assert!(!cache.serves(&r.id), "nothing cached after the conflict");
    assert_eq!(cache.load(r.id).await.expect("load"), Some(theirs));
}

/// From the adversarial review: this instance's save of version 2 is in flight when the epoch
/// moves (a local "log out everywhere"); a load reads version 1 from the store, and its reply is
/// late; the save's own invalidation comes, then its reply, then the load's reply. Version 1
/// must not be served. (The first version of the own-write rule dropped the old copy without
/// moving the generation, and the late reply was served.)
#[tokio::test]
async fn a_late_load_reply_after_an_own_save_is_not_served() {
    let (cache, inner, hold) = cache().await;
    let r = sessile_conformance::record(None, 1);
    cache.create(&r, WriteId::random()).await.expect("create");
    let (_next, saving) = held_save(&cache, &hold, &r, "light").await;
    cache
        .destroy_user(None, "nobody")
        .await
        .expect("log out everywhere");

    hold.armed_reply.store(true, Ordering::SeqCst);
    let loading = {
        let cache = cache.clone();
        tokio::spawn(async move { cache.load(r.id).await })
    };
    hold.reply_reached.notified().await;
    inner.emit(changed(r.id, 2));
    hold.release.notify_one();
    saving.await.expect("task").expect("save");
    hold.reply_release.notify_one();
    assert_eq!(
        loading
            .await
            .expect("task")
            .expect("load")
            .map(|r| r.version),
        Some(1),
        "the late reply goes to its caller"
    );
    assert_eq!(
        cache.load(r.id).await.expect("load").map(|r| r.version),
        Some(2),
        "version 1 served from the cache"
    );
}

/// From the adversarial review: a request re-pinned here (its cookie names node-a) queues behind
/// another writer of its session, reloads it from this instance's cache, and finds its change
/// already there (nothing to write), while another instance has rotated the id (a login) and
/// the invalidation has not come yet. It must not issue a cookie for the rotated id on a cached
/// copy's word: the store confirms the id first (and says it was rotated).
#[tokio::test]
async fn a_re_pin_after_an_unchanged_reload_asks_the_store() {
    use http::Method;
    use sessile::{AffinityHints, KeyRing, SessionManagerLayer};

    let (cache, inner, hold) = cache().await;
    let keys = || KeyRing::new(1, &[7; 32]).expect("keys");
    fn node(store: impl SessionStore, name: &str, keys: KeyRing) -> axum::Router {
        let layer = SessionManagerLayer::builder(store, keys)
            .hint_source(AffinityHints::new(name).expect("node id"))
            .build()
            .expect("layer");
        sessile_tests::routes(Arc::new(sessile_tests::Gate::default())).layer(layer)
    }
    let (a, b) = (
        node(inner.clone(), "node-a", keys()),
        node(cache.clone(), "node-b", keys()),
    );
    let made = sessile_tests::send(&a, Method::POST, "/set/x", None, None).await;
    let cookie = format!("sid={}", made.cookie_value("sid").expect("a session"));
    let id = {
        let token = made.cookie_value("sid").expect("token");
        let codec = sessile_token::TokenCodec::new(keys(), "sid").expect("codec");
        sessile::SessionId::from_bytes(codec.open(&token).expect("opens").claims.session_id)
    };

    // Request 1 on B writes `y`; its save is held before it is applied, holding B's commit lock.
    hold.armed_save.store(true, Ordering::SeqCst);
    let first = {
        let (b, cookie) = (b.clone(), cookie.clone());
        tokio::spawn(async move {
            sessile_tests::send(&b, Method::POST, "/set/y", Some(&cookie), None).await
        })
    };
    hold.reached.notified().await;
    // Request 2 on B writes `y` too: it loads, then queues behind request 1 (this runtime has
    // one thread: it runs until it waits for the lock).
    let second = {
        let (b, cookie) = (b.clone(), cookie.clone());
        tokio::spawn(async move {
            sessile_tests::send(&b, Method::POST, "/set/y", Some(&cookie), None).await
        })
    };
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    // Request 1's save is applied; before its reply, another instance logs the session in (a
    // rotation), and its invalidation does not reach B in time.
    hold.armed_saved.store(true, Ordering::SeqCst);
    hold.release.notify_one();
    hold.reply_reached.notified().await;
    let mut rotated = inner.load(id).await.expect("load").expect("the session");
    let expected = rotated.version;
    rotated.id = sessile::SessionId::random_for_user(Some("ann"));
    rotated.version += 1;
    rotated.meta.user_id = Some("ann".into());
    inner
        .rotate(id, &rotated, expected, WriteId::random())
        .await
        .expect("rotate");
    hold.reply_release.notify_one();
    first.await.expect("request 1");
    let second = second.await.expect("request 2");
    assert_eq!(second.status, http::StatusCode::OK);
    assert_eq!(
        second.set_cookie("sid"),
        None,
        "a cookie for the rotated id, on the cache's word"
    );
}

/// A session, and this instance's logout of it held before it is applied, while a load caches
/// the session.
async fn copy_cached_during_a_logout(
    cache: &CachedStore<Inner>,
    hold: &HoldLoad,
) -> (
    sessile::record::Record,
    tokio::task::JoinHandle<Result<(), StoreError>>,
) {
    let r = sessile_conformance::record(None, 1);
    cache.create(&r, WriteId::random()).await.expect("create");
    hold.armed_destroy.store(true, Ordering::SeqCst);
    let logout = {
        let cache = cache.clone();
        tokio::spawn(async move { cache.destroy(r.id).await })
    };
    hold.reached.notified().await;
    assert_eq!(cache.load(r.id).await.expect("load"), Some(r.clone()));
    assert!(cache.serves(&r.id), "cached while the logout is in flight");
    (r, logout)
}

/// From the second review: a load made while this instance's logout of the session is in
/// flight reads the session (the logout has not landed) and caches it; the logout returns. From
/// then on this instance must not serve the session, whether or not the logout's own
/// invalidation has come yet (here it never comes).
#[tokio::test]
async fn a_copy_cached_during_an_own_logout_is_gone_when_it_returns() {
    let (cache, _inner, hold) = cache().await;
    let (r, logout) = copy_cached_during_a_logout(&cache, &hold).await;
    hold.release.notify_one();
    logout.await.expect("task").expect("logout");
    assert!(
        !cache.serves(&r.id),
        "served after this instance's logout returned"
    );
    assert_eq!(cache.load(r.id).await.expect("load"), None);
}

/// From the adversarial review: a load that read before this instance's write landed, still in
/// flight when the write was answered, must not answer a read that began after the answer,
/// whether the written copy is in the cache or not (here the cache holds nothing: evicted at
/// once). The write's invalidation has not come yet.
#[tokio::test]
async fn a_read_after_an_own_write_never_joins_an_older_load() {
    let (cache, _inner, hold) = cache_built(None, |b| b.max_entries(0)).await;
    let r = sessile_conformance::record(None, 1);
    cache.create(&r, WriteId::random()).await.expect("create");
    // The write has begun (its key is stale) and waits before it is applied.
    let (_next, saving) = held_save(&cache, &hold, &r, "light").await;
    // A load reads version 1 and waits with its reply.
    hold.armed_reply.store(true, Ordering::SeqCst);
    let loading = {
        let cache = cache.clone();
        tokio::spawn(async move { cache.load(r.id).await })
    };
    hold.reply_reached.notified().await;
    // The write lands and is answered.
    hold.release.notify_one();
    saving.await.expect("task").expect("save");
    // A read after that answer, while the old load is still in flight.
    let after = {
        let cache = cache.clone();
        tokio::spawn(async move { cache.load(r.id).await })
    };
    tokio::task::yield_now().await;
    hold.reply_release.notify_one();
    let _ = loading.await.expect("task");
    assert_eq!(
        after.await.expect("task").expect("load").map(|r| r.version),
        Some(2),
        "a read that began after the write was answered got the version before it"
    );
}

/// From the adversarial review: a logout abandoned mid-call (the request went away) may still
/// land, so no copy cached while it was in flight is served after it was abandoned.
#[tokio::test]
async fn a_copy_cached_during_an_abandoned_logout_is_not_served() {
    let (cache, _inner, hold) = cache().await;
    let (r, logout) = copy_cached_during_a_logout(&cache, &hold).await;
    logout.abort();
    assert!(logout.await.expect_err("aborted").is_cancelled());
    assert!(
        !cache.serves(&r.id),
        "served after this instance's logout was abandoned"
    );
}

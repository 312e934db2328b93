//! The conformance suite for [`sessile_core::SessionStore`] implementations.
//!
//! Every store must pass it. Invoke the macro in a test file with an async factory returning a
//! fresh, empty store and a guard that must live as long as the store (a server process, say; `()`
//! when there is none). Each case becomes its own `#[tokio::test]` on a multi-threaded runtime:
//!
//! ```ignore
//! sessile_conformance::store_conformance!(|| async { (sessile::MemoryStore::new(), ()) });
//! ```
//!
//! Where a fresh backend per case is too costly (a Redis Cluster), [`run_all`] runs every case in
//! one test, each on a fresh store from the factory.
//!
//! Records are made with deadlines relative to the system clock, so the store under test must use
//! the system clock (a Redis server does).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sessile_core::record::{Metadata, Payload, Record};
use sessile_core::store::{Settled, WriteId};
use sessile_core::{SessionId, SessionStore, StoreError};

/// Calls `$m!({ extra tokens } case, case, ...)` with every case: the one list both entry points
/// use.
#[doc(hidden)]
#[macro_export]
macro_rules! __for_each_case {
    ($m:path { $($extra:tt)* }) => {
        $m!(
            { $($extra)* }
            create_then_load_round_trips,
            create_refuses_an_existing_id,
            save_is_compare_and_set,
            save_never_creates,
            destroy_is_final,
            rotate_moves_the_record_atomically,
            touch_moves_the_deadline_only,
            expired_records_are_gone,
            destroy_user_ends_only_that_users_sessions,
            a_save_that_changes_the_user_moves_the_session_between_users,
            concurrent_increments_are_never_lost,
            destroy_beats_concurrent_saves,
            oversized_records_are_refused,
            settle_tells_whether_a_write_was_applied,
            destroy_user_catches_sessions_rotating_meanwhile,
            destroy_user_is_per_tenant,
        );
    };
}

/// One `#[tokio::test]` per case, each on a store from the factory.
#[doc(hidden)]
#[macro_export]
macro_rules! __tests {
    ({ $factory:expr } $($case:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (store, _guard) = ($factory)().await;
                $crate::$case(::std::sync::Arc::new(store)).await;
            }
        )*
    };
}

/// Expands to one `#[tokio::test]` per conformance case, in a module named `conformance`.
#[macro_export]
macro_rules! store_conformance {
    ($factory:expr) => {
        mod conformance {
            use super::*;
            $crate::__for_each_case!($crate::__tests { $factory });
        }
    };
}

/// Runs every case in order, each on a fresh store from `make`.
pub async fn run_all<S, F, Fut>(mut make: F)
where
    S: SessionStore,
    F: FnMut() -> Fut,
    Fut: Future<Output = S>,
{
    macro_rules! run {
        ({} $($case:ident),* $(,)?) => {
            $( $case(Arc::new(make().await)).await; )*
        };
    }
    __for_each_case!(run {});
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A record that lives for an hour, with `counter = n` and an optional user.
pub fn record(user: Option<&str>, n: u64) -> Record {
    let now = now_ms();
    let mut data = Payload::default();
    data.insert("counter".into(), n.to_be_bytes().to_vec());
    data.insert("theme".into(), b"dark".to_vec());
    Record {
        id: SessionId::random(),
        version: 1,
        idle_deadline: now + 3_600_000,
        meta: Metadata {
            created_at: now,
            absolute_deadline: now + 7_200_000,
            user_id: user.map(str::to_owned),
            tenant: Some("t1".into()),
            hint: "node-1".into(),
        },
        data,
    }
}

fn counter(r: &Record) -> u64 {
    let bytes = r.data.get("counter").expect("counter present");
    u64::from_be_bytes(bytes.try_into().expect("8 bytes"))
}

fn with_counter(r: &Record, n: u64) -> Record {
    let mut next = r.clone();
    next.version = r.version + 1;
    next.data.insert("counter".into(), n.to_be_bytes().to_vec());
    next
}

async fn must_load<S: SessionStore>(store: &S, id: SessionId) -> Record {
    store
        .load(id)
        .await
        .expect("load succeeds")
        .expect("record present")
}

async fn absent<S: SessionStore>(store: &S, id: SessionId) -> bool {
    store.load(id).await.expect("load succeeds").is_none()
}

/// What was created is what loads.
pub async fn create_then_load_round_trips<S: SessionStore>(store: Arc<S>) {
    let r = record(Some("alice"), 5);
    store.create(&r, WriteId::random()).await.expect("create");
    assert_eq!(must_load(&*store, r.id).await, r);
    assert!(absent(&*store, SessionId::random()).await);
}

/// `create` never overwrites.
pub async fn create_refuses_an_existing_id<S: SessionStore>(store: Arc<S>) {
    let r = record(None, 1);
    store.create(&r, WriteId::random()).await.expect("create");
    let mut other = record(None, 2);
    other.id = r.id;
    assert!(matches!(
        store.create(&other, WriteId::random()).await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(counter(&must_load(&*store, r.id).await), 1);
}

/// A save with the stored version wins; a stale one is a conflict and changes nothing.
pub async fn save_is_compare_and_set<S: SessionStore>(store: Arc<S>) {
    let r = record(None, 1);
    store.create(&r, WriteId::random()).await.expect("create");
    let v2 = with_counter(&r, 2);
    store
        .save(&v2, 1, WriteId::random())
        .await
        .expect("save at version 1");
    let loaded = must_load(&*store, r.id).await;
    assert_eq!((loaded.version, counter(&loaded)), (2, 2));

    let stale = with_counter(&r, 99);
    assert!(matches!(
        store.save(&stale, 1, WriteId::random()).await,
        Err(StoreError::Conflict)
    ));
    let loaded = must_load(&*store, r.id).await;
    assert_eq!((loaded.version, counter(&loaded)), (2, 2));
}

/// `save` on a missing record is `NotFound` and does not create it.
pub async fn save_never_creates<S: SessionStore>(store: Arc<S>) {
    let r = record(None, 1);
    assert!(matches!(
        store.save(&with_counter(&r, 2), 1, WriteId::random()).await,
        Err(StoreError::NotFound)
    ));
    assert!(absent(&*store, r.id).await);
}

/// After `destroy`, nothing with the old version can bring the record back.
pub async fn destroy_is_final<S: SessionStore>(store: Arc<S>) {
    let r = record(None, 1);
    store.create(&r, WriteId::random()).await.expect("create");
    store.destroy(r.id).await.expect("destroy");
    assert!(absent(&*store, r.id).await);
    assert!(matches!(
        store.save(&with_counter(&r, 2), 1, WriteId::random()).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.touch(r.id, now_ms() + 60_000).await,
        Err(StoreError::NotFound)
    ));
    assert!(absent(&*store, r.id).await);
    store.destroy(r.id).await.expect("destroying twice is fine");
}

/// `rotate` moves the data to the new id in one step; the old id is gone; a stale rotate does
/// nothing.
pub async fn rotate_moves_the_record_atomically<S: SessionStore>(store: Arc<S>) {
    let r = record(Some("alice"), 7);
    store.create(&r, WriteId::random()).await.expect("create");
    let mut moved = with_counter(&r, 8);
    moved.id = SessionId::random();

    let mut stale = moved.clone();
    stale.id = SessionId::random();
    assert!(matches!(
        store.rotate(r.id, &stale, 5, WriteId::random()).await,
        Err(StoreError::Conflict)
    ));
    assert!(absent(&*store, stale.id).await);
    assert_eq!(must_load(&*store, r.id).await, r);

    store
        .rotate(r.id, &moved, 1, WriteId::random())
        .await
        .expect("rotate");
    assert!(matches!(store.load(r.id).await, Err(StoreError::Rotated)));
    let loaded = must_load(&*store, moved.id).await;
    assert_eq!((loaded.version, counter(&loaded)), (2, 8));
    assert_eq!(loaded.meta.user_id.as_deref(), Some("alice"));

    // A request still holding the old id cannot save, touch or rotate it back; it is told the
    // session moved (not that it ended), so it can leave the browser's new cookie alone.
    assert!(matches!(
        store.save(&with_counter(&r, 9), 1, WriteId::random()).await,
        Err(StoreError::Rotated)
    ));
    assert!(matches!(
        store.touch(r.id, now_ms() + 60_000).await,
        Err(StoreError::Rotated)
    ));
    let mut again = with_counter(&r, 9);
    again.id = SessionId::random();
    assert!(matches!(
        store.rotate(r.id, &again, 1, WriteId::random()).await,
        Err(StoreError::Rotated)
    ));
    assert!(absent(&*store, again.id).await);
    // A logout that named the old id does not end the session the login made.
    assert!(matches!(
        store.destroy(r.id).await,
        Err(StoreError::Rotated)
    ));
    assert_eq!(counter(&must_load(&*store, moved.id).await), 8);
}

/// `touch` moves the idle deadline and nothing else.
pub async fn touch_moves_the_deadline_only<S: SessionStore>(store: Arc<S>) {
    let r = record(None, 3);
    store.create(&r, WriteId::random()).await.expect("create");
    let later = r.idle_deadline + 60_000;
    store.touch(r.id, later).await.expect("touch");
    let loaded = must_load(&*store, r.id).await;
    assert_eq!(loaded.idle_deadline, later);
    assert_eq!(loaded.version, r.version);
    assert_eq!(loaded.data, r.data);
    assert!(matches!(
        store.touch(SessionId::random(), later).await,
        Err(StoreError::NotFound)
    ));
}

/// A record past its deadline is not loaded, saved or touched.
pub async fn expired_records_are_gone<S: SessionStore>(store: Arc<S>) {
    let mut r = record(None, 1);
    r.idle_deadline = now_ms().saturating_sub(1_000);
    // Creating an already-expired record may be refused or accepted; either way it is gone.
    let _ = store.create(&r, WriteId::random()).await;
    assert!(absent(&*store, r.id).await);
    assert!(matches!(
        store.save(&with_counter(&r, 2), 1, WriteId::random()).await,
        Err(StoreError::NotFound)
    ));

    // A live record whose touch moves its deadline into the past expires too.
    let live = record(None, 1);
    store
        .create(&live, WriteId::random())
        .await
        .expect("create");
    store
        .touch(live.id, now_ms().saturating_sub(1))
        .await
        .expect("touch");
    assert!(absent(&*store, live.id).await);
}

/// "Log out everywhere" ends that user's sessions and no one else's.
pub async fn destroy_user_ends_only_that_users_sessions<S: SessionStore>(store: Arc<S>) {
    let alice: Vec<Record> = (0..3).map(|i| record(Some("alice"), i)).collect();
    let bob = record(Some("bob"), 9);
    let anon = record(None, 9);
    for r in alice.iter().chain([&bob, &anon]) {
        store.create(r, WriteId::random()).await.expect("create");
    }
    // One of alice's sessions moved to another id: the moved one must be found.
    let mut moved = with_counter(&alice[0], 1);
    moved.id = SessionId::random();
    store
        .rotate(alice[0].id, &moved, 1, WriteId::random())
        .await
        .expect("rotate");

    assert_eq!(
        store
            .destroy_user(Some("t1"), "alice")
            .await
            .expect("destroy_user"),
        3
    );
    for id in [alice[1].id, alice[2].id, moved.id] {
        assert!(absent(&*store, id).await);
    }
    assert!(!absent(&*store, bob.id).await);
    assert!(!absent(&*store, anon.id).await);
    assert_eq!(
        store
            .destroy_user(Some("t1"), "alice")
            .await
            .expect("again"),
        0
    );
    assert_eq!(
        store
            .destroy_user(Some("t1"), "nobody")
            .await
            .expect("nobody"),
        0
    );
}

/// The user index follows saves that change or clear the user.
pub async fn a_save_that_changes_the_user_moves_the_session_between_users<S: SessionStore>(
    store: Arc<S>,
) {
    let r = record(Some("alice"), 1);
    store.create(&r, WriteId::random()).await.expect("create");
    let mut bobs = with_counter(&r, 2);
    bobs.meta.user_id = Some("bob".into());
    store.save(&bobs, 1, WriteId::random()).await.expect("save");
    assert_eq!(
        store
            .destroy_user(Some("t1"), "alice")
            .await
            .expect("alice"),
        0
    );
    assert!(
        !absent(&*store, r.id).await,
        "alice's logout spares what is now bob's"
    );
    let mut nobody = with_counter(&bobs, 3);
    nobody.meta.user_id = None;
    store
        .save(&nobody, 2, WriteId::random())
        .await
        .expect("save");
    assert_eq!(must_load(&*store, r.id).await.meta.user_id, None);
    assert_eq!(store.destroy_user(Some("t1"), "bob").await.expect("bob"), 0);
    assert!(!absent(&*store, r.id).await, "no longer bob's either");
    let mut carols = with_counter(&nobody, 4);
    carols.meta.user_id = Some("carol".into());
    store
        .save(&carols, 3, WriteId::random())
        .await
        .expect("save");
    assert_eq!(
        store
            .destroy_user(Some("t1"), "carol")
            .await
            .expect("carol"),
        1
    );
    assert!(absent(&*store, r.id).await);
}

/// 16 tasks x 200 increments of one record by load / compare-and-set / retry: none is lost.
pub async fn concurrent_increments_are_never_lost<S: SessionStore>(store: Arc<S>) {
    const TASKS: u64 = 16;
    const EACH: u64 = 200;
    let r = record(None, 0);
    store.create(&r, WriteId::random()).await.expect("create");
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for _ in 0..EACH {
                    // Bounded: each attempt either wins or sees a newer version.
                    for attempt in 0.. {
                        assert!(attempt < 10_000, "no progress");
                        let cur = must_load(&*store, r.id).await;
                        match store
                            .save(
                                &with_counter(&cur, counter(&cur) + 1),
                                cur.version,
                                WriteId::random(),
                            )
                            .await
                        {
                            Ok(()) => break,
                            Err(StoreError::Conflict) => tokio::task::yield_now().await,
                            Err(e) => panic!("unexpected {e:?}"),
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    let end = must_load(&*store, r.id).await;
    assert_eq!(counter(&end), TASKS * EACH);
    assert_eq!(end.version, 1 + TASKS * EACH);
}

/// Saves racing a destroy either land before it or fail with `NotFound`; afterwards the record is
/// gone for good.
pub async fn destroy_beats_concurrent_saves<S: SessionStore>(store: Arc<S>) {
    let r = record(None, 0);
    store.create(&r, WriteId::random()).await.expect("create");
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                while tokio::time::Instant::now() < deadline {
                    let Some(cur) = store.load(r.id).await.expect("load") else {
                        return;
                    };
                    match store
                        .save(
                            &with_counter(&cur, counter(&cur) + 1),
                            cur.version,
                            WriteId::random(),
                        )
                        .await
                    {
                        Ok(()) | Err(StoreError::Conflict) => tokio::task::yield_now().await,
                        Err(StoreError::NotFound) => return,
                        Err(e) => panic!("unexpected {e:?}"),
                    }
                }
                panic!("writer never saw the destroy");
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    store.destroy(r.id).await.expect("destroy");
    for w in writers {
        w.await.expect("writer");
    }
    assert!(absent(&*store, r.id).await);
}

/// A record over the store's limit is refused with `TooLarge`, and the old one stays.
pub async fn oversized_records_are_refused<S: SessionStore>(store: Arc<S>) {
    let r = record(None, 1);
    store.create(&r, WriteId::random()).await.expect("create");
    let mut big = with_counter(&r, 2);
    big.data.insert(
        "blob".into(),
        vec![7; sessile_core::store::DEFAULT_MAX_RECORD_BYTES + 1],
    );
    assert!(matches!(
        store.save(&big, 1, WriteId::random()).await,
        Err(StoreError::TooLarge { .. })
    ));
    let mut fresh = big.clone();
    fresh.id = SessionId::random();
    fresh.version = 1;
    assert!(matches!(
        store.create(&fresh, WriteId::random()).await,
        Err(StoreError::TooLarge { .. })
    ));
    assert_eq!(must_load(&*store, r.id).await, r);
    assert!(absent(&*store, fresh.id).await);
}

/// After a lost reply, `settle` tells an applied write from one that was not, and a write it
/// reports as not applied can no longer land.
pub async fn settle_tells_whether_a_write_was_applied<S: SessionStore>(store: Arc<S>) {
    let r = record(None, 1);
    let created = WriteId::random();
    store.create(&r, created).await.expect("create");
    let id = r.id;
    assert_eq!(
        store.settle(id, id, 0, created).await.expect("settle"),
        Settled::Applied
    );

    let saved = WriteId::random();
    let v2 = with_counter(&r, 2);
    store.save(&v2, 1, saved).await.expect("save");
    assert_eq!(
        store.settle(id, id, 1, saved).await.expect("settle"),
        Settled::Applied
    );
    // A write that lost the race for version 2 was not applied.
    let lost = WriteId::random();
    assert!(matches!(
        store.save(&with_counter(&r, 7), 1, lost).await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(
        store.settle(id, id, 1, lost).await.expect("settle"),
        Settled::NotApplied
    );

    // A write still on its way when it is settled: reported not applied, and refused on arrival.
    let late = WriteId::random();
    assert_eq!(
        store.settle(id, id, 2, late).await.expect("settle"),
        Settled::NotApplied
    );
    assert!(store.save(&with_counter(&v2, 3), 2, late).await.is_err());
    assert_eq!(counter(&must_load(&*store, id).await), 2);
    // The record itself is not blocked: a new write goes through.
    store
        .save(&with_counter(&v2, 3), 2, WriteId::random())
        .await
        .expect("a fresh write is accepted");

    // Rotations settle on both ids.
    let mut moved = with_counter(&must_load(&*store, id).await, 4);
    moved.id = SessionId::random();
    let rotated = WriteId::random();
    store.rotate(id, &moved, 3, rotated).await.expect("rotate");
    assert_eq!(
        store
            .settle(id, moved.id, 3, rotated)
            .await
            .expect("settle"),
        Settled::Applied
    );
    let mut other = with_counter(&moved, 5);
    other.id = SessionId::random();
    let never = WriteId::random();
    assert_eq!(
        store
            .settle(moved.id, other.id, 4, never)
            .await
            .expect("settle"),
        Settled::NotApplied
    );
    assert!(store.rotate(moved.id, &other, 4, never).await.is_err());
    assert!(absent(&*store, other.id).await);
    assert_eq!(counter(&must_load(&*store, moved.id).await), 4);

    // A create that never arrived is fenced too.
    let ghost = record(None, 1);
    let unsent = WriteId::random();
    assert_eq!(
        store
            .settle(ghost.id, ghost.id, 0, unsent)
            .await
            .expect("settle"),
        Settled::NotApplied
    );
    assert!(store.create(&ghost, unsent).await.is_err());
    assert!(absent(&*store, ghost.id).await);
}

/// Sessions of one user that rotate in a loop while the user is logged out everywhere: when
/// `destroy_user` returns, none of them, nor any id they rotated to, loads, and every later
/// rotation fails.
pub async fn destroy_user_catches_sessions_rotating_meanwhile<S: SessionStore>(store: Arc<S>) {
    const SESSIONS: usize = 20;
    let user = "rotating-user";
    let mut first = Vec::new();
    for i in 0..SESSIONS {
        let mut r = record(Some(user), i as u64);
        r.id = SessionId::random_for_user(Some(user));
        store.create(&r, WriteId::random()).await.expect("create");
        first.push(r);
    }
    let started = Arc::new(tokio::sync::Barrier::new(SESSIONS + 1));
    let rotators: Vec<_> = first
        .into_iter()
        .map(|mut cur| {
            let (store, started) = (Arc::clone(&store), Arc::clone(&started));
            tokio::spawn(async move {
                let mut rotations = 0u32;
                started.wait().await;
                // Bounded: the destroy ends every loop within a few rounds (a few dozen rotations
                // happen before it starts); one that keeps rotating has escaped it.
                for _ in 0..2_000 {
                    let mut next = with_counter(&cur, counter(&cur) + 1);
                    next.id = SessionId::random_for_user(Some(user));
                    match store
                        .rotate(cur.id, &next, cur.version, WriteId::random())
                        .await
                    {
                        Ok(()) => {
                            cur = next;
                            rotations += 1;
                        }
                        Err(StoreError::NotFound | StoreError::Rotated) => {
                            return (cur.id, rotations);
                        }
                        Err(e) => panic!("unexpected {e:?}"),
                    }
                }
                panic!("rotation never stopped: the session escaped the logout");
            })
        })
        .collect();
    started.wait().await;
    tokio::task::yield_now().await;
    store
        .destroy_user(Some("t1"), user)
        .await
        .expect("destroy_user");
    // Whatever each rotator holds now, and anything it gets to, must be dead.
    let mut survivors = 0;
    let mut rotations = 0;
    for r in rotators {
        let (last, n) = r.await.expect("rotator");
        rotations += n;
        survivors += usize::from(store.load(last).await.ok().flatten().is_some());
    }
    assert_eq!(
        survivors, 0,
        "sessions survived log-out-everywhere ({rotations} rotations)"
    );
    assert_eq!(
        store.destroy_user(Some("t1"), user).await.expect("again"),
        0
    );
}

/// The same user id in two tenants is two users: logging one out everywhere spares the other.
pub async fn destroy_user_is_per_tenant<S: SessionStore>(store: Arc<S>) {
    let mut here = record(Some("alice"), 1);
    here.id = SessionId::random_for_user(Some("alice"));
    let mut there = record(Some("alice"), 2);
    there.id = SessionId::random_for_user(Some("alice"));
    there.meta.tenant = Some("t2".into());
    let mut nowhere = record(Some("alice"), 3);
    nowhere.id = SessionId::random_for_user(Some("alice"));
    nowhere.meta.tenant = None;
    for r in [&here, &there, &nowhere] {
        store.create(r, WriteId::random()).await.expect("create");
    }
    assert_eq!(
        store.destroy_user(Some("t2"), "alice").await.expect("t2"),
        1
    );
    assert!(absent(&*store, there.id).await);
    assert!(!absent(&*store, here.id).await, "t1's alice stays");
    assert!(
        !absent(&*store, nowhere.id).await,
        "the untenanted alice stays"
    );
    assert_eq!(store.destroy_user(None, "alice").await.expect("none"), 1);
    assert!(!absent(&*store, here.id).await);
    assert_eq!(
        store.destroy_user(Some("t1"), "alice").await.expect("t1"),
        1
    );
    assert!(absent(&*store, here.id).await);
}

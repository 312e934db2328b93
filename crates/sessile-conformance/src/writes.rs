//! Writes: concurrency, size limits, and settling writes whose reply was lost.

use super::*;

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

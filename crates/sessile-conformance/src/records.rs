//! Single-record rules: create, compare-and-set, rotation, touch, expiry.

use super::*;

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

//! Users: log out everywhere, users changing, rotations racing a log-out-everywhere, tenants.

use super::*;

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

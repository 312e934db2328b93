//! The memory store's own tests (the conformance suite runs in `tests/memory_conformance.rs`).

use super::inner::lock;
use super::*;
use crate::clock::ManualClock;
use crate::record::{Metadata, Payload};

const T0: UnixMillis = 1_000_000;

fn record(now: UnixMillis, ttl: u64) -> Record {
    Record {
        id: SessionId::random(),
        version: 1,
        idle_deadline: now + ttl,
        meta: Metadata {
            created_at: now,
            absolute_deadline: now + 10 * ttl,
            user_id: None,
            tenant: None,
            hint: String::new(),
        },
        data: Payload::default(),
    }
}

fn users(s: &MemoryStore) -> usize {
    s.inner.users.iter().map(|u| lock(u).len()).sum()
}

fn store(clock: &Arc<ManualClock>, capacity: Option<usize>) -> MemoryStore {
    let mut b = MemoryStore::builder()
        .clock(clock.clone())
        .sweep_interval(None);
    if let Some(c) = capacity {
        b = b.capacity(c);
    }
    b.build()
}

#[tokio::test]
async fn capacity_bounds_memory_under_a_flood_of_new_sessions() {
    let clock = Arc::new(ManualClock::new(T0));
    let s = store(&clock, Some(640));
    let mut ids = Vec::new();
    for _ in 0..10_000 {
        let r = record(T0, 60_000);
        ids.push(r.id);
        s.create(&r, WriteId::random()).await.expect("create");
    }
    assert!(s.len() <= 640, "{} sessions held", s.len());
    // Oldest-created go first: the newest sessions are all still there.
    for id in &ids[ids.len() - 100..] {
        assert!(s.load(*id).await.expect("load").is_some());
    }
    let queued = lock(&s.inner.order).len();
    assert!(
        queued <= 2 * 640 + 64,
        "eviction queue stays bounded: {queued}"
    );
}

#[tokio::test]
async fn no_live_session_is_evicted_while_the_store_has_room() {
    // Logged-in users' ids share their first two bytes (the user's partition). Sharding by
    // those bytes put all of one user's sessions in one shard holding 1/64 of the capacity,
    // so another user's session was evicted with the store nearly empty.
    let clock = Arc::new(ManualClock::new(T0));
    let s = store(&clock, Some(6_400));
    let mut victim = record(T0, 60_000);
    victim.id = SessionId::random_for_user(Some("bob"));
    victim.meta.user_id = Some("bob".into());
    s.create(&victim, WriteId::random()).await.expect("create");
    let mut ids = vec![victim.id];
    // 90% of the capacity, most of them one user's.
    for i in 0..5_759 {
        let mut r = record(T0, 60_000);
        let user = if i % 10 == 0 {
            format!("u{i}")
        } else {
            "alice".into()
        };
        r.id = SessionId::random_for_user(Some(&user));
        r.meta.user_id = Some(user);
        s.create(&r, WriteId::random()).await.expect("create");
        ids.push(r.id);
    }
    assert_eq!(s.len(), 5_760);
    let mut evicted = 0;
    for id in &ids {
        evicted += usize::from(s.load(*id).await.expect("load").is_none());
    }
    assert_eq!(evicted, 0, "sessions evicted below 90% of capacity");
    // Past capacity the bound holds, oldest first.
    for _ in 0..1_000 {
        s.create(&record(T0, 60_000), WriteId::random())
            .await
            .expect("create");
    }
    assert!(s.len() <= 6_400, "{} held", s.len());
    assert!(
        s.load(victim.id).await.expect("load").is_none(),
        "oldest went first"
    );
}

#[tokio::test]
async fn a_full_store_drops_expired_sessions_before_an_old_live_one() {
    let clock = Arc::new(ManualClock::new(T0));
    let s = store(&clock, Some(100));
    // The oldest session stays active; the 99 after it go idle and expire.
    let active = record(T0, 60_000);
    s.create(&active, WriteId::random()).await.expect("create");
    for _ in 0..99 {
        s.create(&record(T0, 1_000), WriteId::random())
            .await
            .expect("create");
    }
    clock.advance(Duration::from_secs(2));
    s.touch(active.id, T0 + 120_000).await.expect("touch");
    s.create(&record(T0 + 2_000, 60_000), WriteId::random())
        .await
        .expect("create");
    assert!(
        s.load(active.id).await.expect("load").is_some(),
        "the one live session was evicted while 99 expired ones held the room"
    );
    assert_eq!(s.len(), 2);
}

#[tokio::test]
async fn a_full_store_evicts_the_oldest_first_expired_or_not() {
    let clock = Arc::new(ManualClock::new(T0));
    let s = store(&clock, Some(SHARDS));
    let old = record(T0, 1_000);
    s.create(&old, WriteId::random()).await.expect("create");
    clock.advance(Duration::from_secs(2));
    let live: Vec<Record> = (0..SHARDS * 4)
        .map(|_| record(T0 + 2_000, 60_000))
        .collect();
    for r in &live {
        s.create(r, WriteId::random()).await.expect("create");
    }
    assert!(s.len() <= SHARDS);
    assert!(s.load(old.id).await.expect("load").is_none());
}

#[tokio::test]
async fn purge_drops_only_expired_records() {
    let clock = Arc::new(ManualClock::new(T0));
    let s = store(&clock, None);
    let short = record(T0, 1_000);
    let long = record(T0, 60_000);
    s.create(&short, WriteId::random()).await.expect("create");
    s.create(&long, WriteId::random()).await.expect("create");
    assert_eq!(s.purge_expired(), 0);
    clock.advance(Duration::from_secs(1));
    assert_eq!(s.purge_expired(), 1);
    assert_eq!(s.len(), 1);
    assert!(s.load(long.id).await.expect("load").is_some());
}

#[tokio::test(start_paused = true)]
async fn background_sweep_runs_and_stops_with_the_store() {
    let clock = Arc::new(ManualClock::new(T0));
    let s = MemoryStore::builder()
        .clock(clock.clone())
        .sweep_interval(Some(Duration::from_millis(10)))
        .build();
    for _ in 0..200 {
        s.create(&record(T0, 1_000), WriteId::random())
            .await
            .expect("create");
    }
    clock.advance(Duration::from_secs(5));
    // One shard per tick: after a full round every shard was swept.
    tokio::time::sleep(Duration::from_millis(10 * (SHARDS as u64 + 2))).await;
    assert_eq!(s.len(), 0);
    let weak = Arc::downgrade(&s.inner);
    drop(s);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        weak.upgrade().is_none(),
        "the sweeper does not keep the store alive"
    );
}

#[tokio::test]
async fn destroying_one_user_spares_another_in_the_same_bucket() {
    // Two user ids whose buckets in the user index collide (16 bits: a collision turns up within
    // a few hundred names).
    let clock = Arc::new(ManualClock::new(T0));
    let s = store(&clock, None);
    let mut seen = HashMap::new();
    let (a, b) = (0..100_000)
        .map(|i| format!("user{i}"))
        .find_map(|u| {
            let p = s.inner.user_bucket(&u);
            seen.insert(p, u.clone()).map(|other| (other, u))
        })
        .expect("a collision among 100 000 names");
    let (mut ra, mut rb) = (record(T0, 60_000), record(T0, 60_000));
    ra.meta.user_id = Some(a.clone());
    rb.meta.user_id = Some(b.clone());
    s.create(&ra, WriteId::random()).await.expect("create");
    s.create(&rb, WriteId::random()).await.expect("create");
    assert_eq!(s.destroy_user(None, &a).await.expect("destroy"), 1);
    assert!(s.load(ra.id).await.expect("load").is_none());
    assert!(s.load(rb.id).await.expect("load").is_some());
    assert_eq!(s.destroy_user(None, &b).await.expect("destroy"), 1);
    assert_eq!(users(&s), 0);
}

#[tokio::test]
async fn user_index_forgets_sessions_that_are_gone() {
    let clock = Arc::new(ManualClock::new(T0));
    let s = store(&clock, None);
    let mut r = record(T0, 1_000);
    r.meta.user_id = Some("ann".into());
    s.create(&r, WriteId::random()).await.expect("create");
    assert_eq!(users(&s), 1);
    clock.advance(Duration::from_secs(2));
    s.purge_expired();
    assert_eq!(users(&s), 0);
}

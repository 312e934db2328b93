//! The embedded default store.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use super::{DEFAULT_MAX_RECORD_BYTES, SessionStore, StoreError, encode_record};
use crate::SessionId;
use crate::clock::{Clock, SystemClock, UnixMillis};
use crate::record::Record;

/// Number of independently locked shards. A power of two well above the core count keeps two
/// requests from waiting on each other unless they share a shard; ids are random, so the first
/// byte spreads them evenly.
const SHARDS: usize = 64;

/// How often the background sweeper wakes; each wake sweeps one shard, so every record is looked at
/// once per `SHARDS * DEFAULT_SWEEP_INTERVAL` (about a minute). Expired records are also dropped
/// whenever they are read, so the sweep only bounds memory, never correctness.
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// An in-process session store: fast, bounded, and shared by every clone.
///
/// Records are kept encoded (the same bytes a network store would hold) in 64 maps, each
/// behind a `std::sync::Mutex`: critical sections are a hash lookup and a copy, never an `.await`,
/// so a blocking mutex is cheaper than an async one.
///
/// * Expired records vanish on read and are swept in the background (when built inside a tokio
///   runtime; otherwise only on read and through [`MemoryStore::purge_expired`]).
/// * With a [capacity](MemoryStoreBuilder::capacity), creating a session in a full shard first
///   drops that shard's expired records and then evicts its oldest-created ones, so memory stays
///   bounded under a flood of new sessions.
/// * Sessions are lost when the process exits and are not shared between instances: use the Redis
///   store for that.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    shards: Box<[Mutex<Shard>]>,
    clock: Arc<dyn Clock>,
    per_shard_capacity: Option<usize>,
    max_record_bytes: usize,
    /// User partition (16 bits of the user id's hash, see [`SessionId::user_partition`]) ->
    /// sessions that had a user of that partition when last written. Keying by partition rather
    /// than by user id costs about 16 bytes per session instead of a map entry and two
    /// allocations per user (some 100 bytes). Entries go stale when sessions expire or change
    /// user, and a partition holds several users: `destroy_user` checks each record's user, and
    /// the sweeper prunes.
    /// A set per partition, so indexing stays O(1) however many sessions one user has.
    users: Mutex<HashMap<u16, HashSet<SessionId>>>,
}

#[derive(Default)]
struct Shard {
    map: HashMap<SessionId, Entry>,
    /// Creation order, kept only when a capacity is set: the eviction queue. May hold ids that are
    /// already gone; it is compacted when it grows past twice the map.
    order: VecDeque<SessionId>,
}

struct Entry {
    version: u64,
    idle_deadline: UnixMillis,
    body: Box<[u8]>,
}

/// Configures a [`MemoryStore`].
#[must_use]
pub struct MemoryStoreBuilder {
    capacity: Option<usize>,
    clock: Arc<dyn Clock>,
    sweep_interval: Option<Duration>,
    max_record_bytes: usize,
}

impl Default for MemoryStoreBuilder {
    fn default() -> Self {
        Self {
            capacity: None,
            clock: Arc::new(SystemClock),
            sweep_interval: Some(DEFAULT_SWEEP_INTERVAL),
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
        }
    }
}

impl MemoryStoreBuilder {
    /// Bounds the number of sessions (approximately: the bound is split evenly across shards).
    pub fn capacity(mut self, sessions: usize) -> Self {
        self.capacity = Some(sessions.max(1));
        self
    }

    /// The clock deadlines are checked against. Use the same clock as the session layer.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// How often the background sweeper runs; `None` turns it off.
    pub fn sweep_interval(mut self, every: Option<Duration>) -> Self {
        self.sweep_interval = every.filter(|d| !d.is_zero());
        self
    }

    /// Largest encoded record accepted (default [`DEFAULT_MAX_RECORD_BYTES`]).
    pub fn max_record_bytes(mut self, bytes: usize) -> Self {
        self.max_record_bytes = bytes;
        self
    }

    /// Builds the store, starting the sweeper if a tokio runtime is running.
    pub fn build(self) -> MemoryStore {
        let inner = Arc::new(Inner {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            clock: self.clock,
            per_shard_capacity: self.capacity.map(|c| c.div_ceil(SHARDS)),
            max_record_bytes: self.max_record_bytes,
            users: Mutex::default(),
        });
        if let (Some(every), Ok(rt)) = (self.sweep_interval, tokio::runtime::Handle::try_current())
        {
            rt.spawn(sweep(Arc::downgrade(&inner), every));
        }
        MemoryStore { inner }
    }
}

/// Sweeps one shard per tick; ends when the store is dropped (it holds only a `Weak`).
async fn sweep(store: Weak<Inner>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next = 0;
    loop {
        tick.tick().await;
        let Some(inner) = store.upgrade() else { return };
        let now = inner.clock.now_ms();
        inner.purge_shard(next, now);
        next = (next + 1) % SHARDS;
        if next == 0 {
            inner.prune_users();
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("sessions", &self.len())
            .field("per_shard_capacity", &self.inner.per_shard_capacity)
            .finish()
    }
}

impl MemoryStore {
    /// A store with no capacity bound, the system clock and the background sweeper.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// Configures a store.
    pub fn builder() -> MemoryStoreBuilder {
        MemoryStoreBuilder::default()
    }

    /// Records held, expired or not.
    pub fn len(&self) -> usize {
        self.inner.shards.iter().map(|s| lock(s).map.len()).sum()
    }

    /// Whether no records are held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every expired record now; returns how many.
    pub fn purge_expired(&self) -> usize {
        let now = self.inner.clock.now_ms();
        let dropped = (0..SHARDS).map(|i| self.inner.purge_shard(i, now)).sum();
        self.inner.prune_users();
        dropped
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a shard lock cannot leave a half-written entry (each write is one
    // `insert`/`remove`), so a poisoned lock is safe to keep using.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn shard_of(id: &SessionId) -> usize {
    id.as_bytes()[0] as usize % SHARDS
}

impl Inner {
    fn shard(&self, id: &SessionId) -> MutexGuard<'_, Shard> {
        lock(&self.shards[shard_of(id)])
    }

    fn entry(&self, record: &Record) -> Result<Entry, StoreError> {
        Ok(Entry {
            version: record.version,
            idle_deadline: record.expires_at(),
            body: encode_record(record, self.max_record_bytes)?.into_boxed_slice(),
        })
    }

    fn purge_shard(&self, shard: usize, now: UnixMillis) -> usize {
        let mut s = lock(&self.shards[shard]);
        let before = s.map.len();
        s.map.retain(|_, e| e.idle_deadline > now);
        let dropped = before - s.map.len();
        s.compact_order();
        dropped
    }

    fn prune_users(&self) {
        let mut users = lock(&self.users);
        users.retain(|_, ids| {
            ids.retain(|id| self.shard(id).map.contains_key(id));
            !ids.is_empty()
        });
    }

    fn index_user(&self, record: &Record) {
        if let Some(user) = &record.meta.user_id {
            let mut users = lock(&self.users);
            users
                .entry(SessionId::user_partition(user))
                .or_default()
                .insert(record.id);
        }
    }

    /// The body of `rotate`, with the shards locked; `new_shard` is `None` when both ids share one.
    #[allow(clippy::too_many_arguments)]
    fn rotate_locked(
        &self,
        old_shard: &mut Shard,
        mut new_shard: Option<&mut Shard>,
        old: SessionId,
        new: SessionId,
        entry: Entry,
        expected: u64,
        now: UnixMillis,
    ) -> Result<(), StoreError> {
        old_shard.check(&old, expected, now)?;
        let taken = match new_shard.as_deref_mut() {
            Some(s) => s.live(&new, now).is_some(),
            None => old_shard.live(&new, now).is_some(),
        };
        if taken {
            return Err(StoreError::Conflict);
        }
        old_shard.map.remove(&old);
        self.insert_new(new_shard.unwrap_or(old_shard), new, entry, now);
        Ok(())
    }

    /// Inserts a new entry into a locked shard, evicting to make room if a capacity is set.
    fn insert_new(&self, shard: &mut Shard, id: SessionId, entry: Entry, now: UnixMillis) {
        if let Some(cap) = self.per_shard_capacity {
            if shard.map.len() >= cap {
                shard.map.retain(|_, e| e.idle_deadline > now);
            }
            while shard.map.len() >= cap {
                let Some(victim) = shard.order.pop_front() else {
                    break;
                };
                if shard.map.remove(&victim).is_some() {
                    metrics::counter!("sessile_memory_evictions_total").increment(1);
                }
            }
            shard.order.push_back(id);
            shard.compact_order();
        }
        shard.map.insert(id, entry);
    }
}

impl Shard {
    fn compact_order(&mut self) {
        if !self.order.is_empty() && self.order.len() > 2 * self.map.len() + 16 {
            let map = &self.map;
            self.order.retain(|id| map.contains_key(id));
        }
    }

    /// The live entry for `id`, dropping it if it has expired.
    fn live(&mut self, id: &SessionId, now: UnixMillis) -> Option<&mut Entry> {
        if self.map.get(id).is_some_and(|e| e.idle_deadline <= now) {
            self.map.remove(id);
        }
        self.map.get_mut(id)
    }

    /// Checks that `id` is live at `expected` version.
    fn check(&mut self, id: &SessionId, expected: u64, now: UnixMillis) -> Result<(), StoreError> {
        match self.live(id, now) {
            None => Err(StoreError::NotFound),
            Some(e) if e.version != expected => Err(StoreError::Conflict),
            Some(_) => Ok(()),
        }
    }
}

impl SessionStore for MemoryStore {
    async fn load(&self, id: SessionId) -> Result<Option<Record>, StoreError> {
        let now = self.inner.clock.now_ms();
        let mut shard = self.inner.shard(&id);
        let Some(e) = shard.live(&id, now) else {
            return Ok(None);
        };
        Record::decode(id, e.version, e.idle_deadline, &e.body)
            .map(Some)
            .map_err(StoreError::Corrupt)
    }

    async fn create(&self, record: &Record) -> Result<(), StoreError> {
        let entry = self.inner.entry(record)?;
        let now = self.inner.clock.now_ms();
        {
            let mut shard = self.inner.shard(&record.id);
            if shard.live(&record.id, now).is_some() {
                return Err(StoreError::Conflict);
            }
            self.inner.insert_new(&mut shard, record.id, entry, now);
        }
        self.inner.index_user(record);
        Ok(())
    }

    async fn save(&self, record: &Record, expected_version: u64) -> Result<(), StoreError> {
        let entry = self.inner.entry(record)?;
        let now = self.inner.clock.now_ms();
        {
            let mut shard = self.inner.shard(&record.id);
            shard.check(&record.id, expected_version, now)?;
            shard.map.insert(record.id, entry);
        }
        self.inner.index_user(record);
        Ok(())
    }

    async fn touch(&self, id: SessionId, idle_deadline: UnixMillis) -> Result<(), StoreError> {
        let now = self.inner.clock.now_ms();
        let mut shard = self.inner.shard(&id);
        let e = shard.live(&id, now).ok_or(StoreError::NotFound)?;
        e.idle_deadline = idle_deadline;
        Ok(())
    }

    async fn rotate(
        &self,
        old: SessionId,
        record: &Record,
        expected_version: u64,
    ) -> Result<(), StoreError> {
        let entry = self.inner.entry(record)?;
        let now = self.inner.clock.now_ms();
        let (a, b) = (shard_of(&old), shard_of(&record.id));
        {
            // Lock both shards, lower index first, so two rotations can never deadlock.
            let mut lo = lock(&self.inner.shards[a.min(b)]);
            let mut hi = (a != b).then(|| lock(&self.inner.shards[a.max(b)]));
            let (old_shard, new_shard) = match hi.as_deref_mut() {
                None => (&mut *lo, None),
                Some(h) if a < b => (&mut *lo, Some(h)),
                Some(h) => (h, Some(&mut *lo)),
            };
            self.inner.rotate_locked(
                old_shard,
                new_shard,
                old,
                record.id,
                entry,
                expected_version,
                now,
            )?;
        }
        self.inner.index_user(record);
        Ok(())
    }

    async fn destroy(&self, id: SessionId) -> Result<(), StoreError> {
        self.inner.shard(&id).map.remove(&id);
        Ok(())
    }

    async fn destroy_user(&self, user_id: &str) -> Result<u64, StoreError> {
        let partition = SessionId::user_partition(user_id);
        // Lock order: the index, then shards (as everywhere else).
        let mut users = lock(&self.inner.users);
        let Some(ids) = users.get_mut(&partition) else {
            return Ok(0);
        };
        let mut destroyed = 0;
        ids.retain(|id| {
            let mut shard = self.inner.shard(id);
            let Some(e) = shard.map.get(id) else {
                return false;
            };
            // The partition holds other users' sessions too: delete only this user's.
            let owner = Record::decode(*id, e.version, e.idle_deadline, &e.body)
                .ok()
                .and_then(|r| r.meta.user_id);
            match owner.as_deref() {
                Some(u) if u == user_id => {
                    shard.map.remove(id);
                    destroyed += 1;
                    false
                }
                Some(_) => true,
                None => false,
            }
        });
        if ids.is_empty() {
            users.remove(&partition);
        }
        Ok(destroyed)
    }
}

#[cfg(test)]
mod tests {
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
            s.create(&r).await.expect("create");
        }
        assert!(s.len() <= 640, "{} sessions held", s.len());
        // Oldest-created go first: the newest sessions are all still there.
        for id in &ids[ids.len() - 100..] {
            assert!(s.load(*id).await.expect("load").is_some());
        }
        let queued: usize = s.inner.shards.iter().map(|sh| lock(sh).order.len()).sum();
        assert!(
            queued <= 2 * 640 + 16 * SHARDS,
            "eviction queue stays bounded: {queued}"
        );
    }

    #[tokio::test]
    async fn full_shards_drop_expired_sessions_before_live_ones() {
        let clock = Arc::new(ManualClock::new(T0));
        let s = store(&clock, Some(SHARDS));
        let old = record(T0, 1_000);
        s.create(&old).await.expect("create");
        clock.advance(Duration::from_secs(2));
        let live: Vec<Record> = (0..SHARDS * 4)
            .map(|_| record(T0 + 2_000, 60_000))
            .collect();
        for r in &live {
            s.create(r).await.expect("create");
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
        s.create(&short).await.expect("create");
        s.create(&long).await.expect("create");
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
            s.create(&record(T0, 1_000)).await.expect("create");
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
    async fn destroying_one_user_spares_another_in_the_same_partition() {
        // Two user ids whose partitions collide (16 bits: a collision turns up within a few
        // hundred names).
        let mut seen = HashMap::new();
        let (a, b) = (0..100_000)
            .map(|i| format!("user{i}"))
            .find_map(|u| {
                let p = SessionId::user_partition(&u);
                seen.insert(p, u.clone()).map(|other| (other, u))
            })
            .expect("a collision among 100 000 names");
        let clock = Arc::new(ManualClock::new(T0));
        let s = store(&clock, None);
        let (mut ra, mut rb) = (record(T0, 60_000), record(T0, 60_000));
        ra.meta.user_id = Some(a.clone());
        rb.meta.user_id = Some(b.clone());
        s.create(&ra).await.expect("create");
        s.create(&rb).await.expect("create");
        assert_eq!(s.destroy_user(&a).await.expect("destroy"), 1);
        assert!(s.load(ra.id).await.expect("load").is_none());
        assert!(s.load(rb.id).await.expect("load").is_some());
        assert_eq!(s.destroy_user(&b).await.expect("destroy"), 1);
        assert!(lock(&s.inner.users).is_empty());
    }

    #[tokio::test]
    async fn user_index_forgets_sessions_that_are_gone() {
        let clock = Arc::new(ManualClock::new(T0));
        let s = store(&clock, None);
        let mut r = record(T0, 1_000);
        r.meta.user_id = Some("ann".into());
        s.create(&r).await.expect("create");
        assert_eq!(lock(&s.inner.users).len(), 1);
        clock.advance(Duration::from_secs(2));
        s.purge_expired();
        assert!(lock(&s.inner.users).is_empty());
    }
}

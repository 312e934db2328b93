//! The embedded default store.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use super::{
    DEFAULT_MAX_RECORD_BYTES, ROTATED_MARKER_TTL_MS, SessionStore, Settled, StoreError, WriteId,
    encode_record,
};
use crate::SessionId;
use crate::clock::{Clock, SystemClock, UnixMillis};
use crate::record::{Metadata, Record};

/// Number of independently locked shards. A power of two well above the core count keeps two
/// requests from waiting on each other unless they share a shard.
const SHARDS: usize = 64;

/// Stripes of the user index, each locked on its own: a user's writes and "log out everywhere"
/// serialise on the user's stripe only.
const USER_STRIPES: usize = 64;

/// How often the background sweeper wakes; each wake sweeps one shard, so every record is looked at
/// once per `SHARDS * DEFAULT_SWEEP_INTERVAL` (about a minute). Expired records are also dropped
/// whenever they are read, so the sweep only bounds memory, never correctness.
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// An in-process session store: fast, bounded, and shared by every clone.
///
/// Records are kept encoded (the same bytes a network store would hold) in 64 maps, each
/// behind a `std::sync::Mutex`: critical sections are a hash lookup and a copy, never an `.await`,
/// so a blocking mutex is cheaper than an async one. Records are spread over the maps by a hash
/// of the whole id, so one user's sessions (whose ids share a partition) do not crowd one map.
///
/// * Expired records vanish on read and are swept in the background (when built inside a tokio
///   runtime; otherwise only on read and through [`MemoryStore::purge_expired`]).
/// * With a [capacity](MemoryStoreBuilder::capacity), creating a session in a full store first
///   drops expired records (sweeping every shard at most once a second) and then evicts the
///   oldest-created ones, so memory stays bounded under a flood of new sessions, and no live
///   session is evicted while the store holds fewer than its capacity.
/// * Every operation finishes in one step under a lock, so a write is never half applied and its
///   outcome is never in doubt; [`settle`](SessionStore::settle) still answers from the last
///   write id each record keeps.
/// * "Log out everywhere" runs under the user's index stripe, which every write of a user's
///   session also holds: it is atomic with respect to that user's logins and rotations.
/// * Sessions are lost when the process exits and are not shared between instances: use the Redis
///   store for that.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    shards: Box<[Mutex<Shard>]>,
    clock: Arc<dyn Clock>,
    capacity: Option<usize>,
    /// Entries held in all shards (records and rotation markers, expired or not).
    len: AtomicUsize,
    max_record_bytes: usize,
    /// User partition (16 bits of the user id's hash, see [`SessionId::user_partition`]) ->
    /// sessions that had a user of that partition when last written, in stripes by partition.
    /// Keying by partition rather than by user id costs about 16 bytes per session instead of a
    /// map entry and two allocations per user (some 100 bytes). Entries go stale when sessions
    /// expire or change user, and a partition holds several users: `destroy_user` checks each
    /// record's user, and the sweeper prunes. A set per partition keeps indexing O(1) however many
    /// sessions one user has.
    ///
    /// Lock order: a user stripe, then shards (lower index first).
    users: Box<[Mutex<UserStripe>]>,
    /// Writes that `settle` declared not applied, until when they stay refused. A write here
    /// cannot really be in flight (every operation finishes in one step), but a caller may
    /// still hold it: the store keeps the promise `settle` makes.
    fences: Mutex<HashMap<WriteId, UnixMillis>>,
    /// Whether `fences` may be non-empty: writes skip its lock when it is not.
    any_fences: std::sync::atomic::AtomicBool,
    /// Creation order, kept only when a capacity is set: the eviction queue, oldest first. It may
    /// hold ids that are already gone; it is compacted when it grows past twice the store. Locked
    /// alone, never while a shard is held.
    order: Mutex<VecDeque<SessionId>>,
    /// When a full store last swept every shard for expired entries.
    last_full_sweep: std::sync::atomic::AtomicU64,
}

/// A full store sweeps all its shards for expired entries before evicting a live one, at most
/// this often (a sweep of 100 000 entries takes about a millisecond).
const FULL_SWEEP_EVERY_MS: u64 = 1_000;

#[derive(Default)]
struct Shard {
    map: HashMap<SessionId, Entry>,
}

enum Entry {
    Live {
        version: u64,
        idle_deadline: UnixMillis,
        /// The write that made this version.
        write: WriteId,
        body: Box<[u8]>,
    },
    /// Left under an id that `rotate` moved away from, until `until`.
    Rotated {
        until: UnixMillis,
        to: SessionId,
        write: WriteId,
    },
}

impl Entry {
    fn deadline(&self) -> UnixMillis {
        match self {
            Self::Live { idle_deadline, .. } => *idle_deadline,
            Self::Rotated { until, .. } => *until,
        }
    }
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
    /// Bounds the number of sessions (approximately: concurrent creations may overshoot it by a
    /// few, and rotation markers count as entries while they last).
    pub fn capacity(mut self, sessions: usize) -> Self {
        self.capacity = Some(sessions.max(1));
        self
    }

    /// The clock deadlines are checked against (default the system clock). A session layer over
    /// this store adopts it, so a test injects its clock here, once.
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
            capacity: self.capacity,
            len: AtomicUsize::new(0),
            max_record_bytes: self.max_record_bytes,
            users: (0..USER_STRIPES).map(|_| Mutex::default()).collect(),
            fences: Mutex::default(),
            any_fences: std::sync::atomic::AtomicBool::new(false),
            order: Mutex::default(),
            last_full_sweep: std::sync::atomic::AtomicU64::new(0),
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
            inner.prune_fences(now);
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
            .field("capacity", &self.inner.capacity)
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

    /// Entries held (records and rotation markers), expired or not.
    pub fn len(&self) -> usize {
        self.inner.len.load(Ordering::Relaxed)
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
    // A panic while holding a lock cannot leave a half-written entry (each write is one
    // `insert`/`remove`), so a poisoned lock is safe to keep using.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The shard of an id: a hash of all its bytes. (Not the first bytes: a logged-in user's ids share
/// their first two, the user's partition, and would all land in one shard.)
fn shard_of(id: &SessionId) -> usize {
    let x = u128::from_le_bytes(*id.as_bytes());
    let folded = (x as u64) ^ ((x >> 64) as u64);
    // Fibonacci hashing: the top bits of the product mix every input bit.
    (folded.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - SHARDS.trailing_zeros())) as usize
}

fn stripe_of(partition: u16) -> usize {
    usize::from(partition) % USER_STRIPES
}

/// The tenant and user of an encoded body, decoding the metadata only.
fn owner(body: &[u8]) -> Option<(Option<String>, String)> {
    let (_, rest) = body.split_first()?;
    let (meta, _): (Metadata, serde::de::IgnoredAny) = rmp_serde::from_slice(rest).ok()?;
    Some((meta.tenant, meta.user_id?))
}

/// One stripe of the user index: user partition -> sessions.
type UserStripe = HashMap<u16, HashSet<SessionId>>;

/// The held user stripe of a write, if the record has a user: index the record under it.
type UserGuard<'a> = Option<(u16, MutexGuard<'a, UserStripe>)>;

impl Inner {
    fn shard(&self, id: &SessionId) -> MutexGuard<'_, Shard> {
        lock(&self.shards[shard_of(id)])
    }

    /// Locks the user stripe of `record`'s user, if it has one. Taken before any shard.
    fn user_guard(&self, record: &Record) -> UserGuard<'_> {
        let user = record.meta.user_id.as_deref()?;
        let partition = SessionId::user_partition(user);
        Some((partition, lock(&self.users[stripe_of(partition)])))
    }

    fn entry(&self, record: &Record, write: WriteId) -> Result<Entry, StoreError> {
        if self.any_fences.load(Ordering::Acquire) && lock(&self.fences).contains_key(&write) {
            return Err(StoreError::Conflict);
        }
        Ok(Entry::Live {
            version: record.version,
            idle_deadline: record.expires_at(),
            write,
            body: encode_record(record, self.max_record_bytes)?.into_boxed_slice(),
        })
    }

    fn purge_shard(&self, shard: usize, now: UnixMillis) -> usize {
        let mut s = lock(&self.shards[shard]);
        self.retain(&mut s, |e| e.deadline() > now)
    }

    /// Keeps the entries for which `keep` holds; returns how many were dropped.
    fn retain(&self, shard: &mut Shard, mut keep: impl FnMut(&Entry) -> bool) -> usize {
        let before = shard.map.len();
        shard.map.retain(|_, e| keep(e));
        let dropped = before - shard.map.len();
        self.len.fetch_sub(dropped, Ordering::Relaxed);
        dropped
    }

    fn remove(&self, shard: &mut Shard, id: &SessionId) -> Option<Entry> {
        let e = shard.map.remove(id)?;
        self.len.fetch_sub(1, Ordering::Relaxed);
        Some(e)
    }

    /// Inserts or replaces an entry, keeping the count.
    fn put(&self, shard: &mut Shard, id: SessionId, entry: Entry) {
        if shard.map.insert(id, entry).is_none() {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn fence(&self, write: WriteId, now: UnixMillis) {
        lock(&self.fences).insert(write, now + ROTATED_MARKER_TTL_MS);
        self.any_fences.store(true, Ordering::Release);
    }

    fn prune_fences(&self, now: UnixMillis) {
        let mut fences = lock(&self.fences);
        fences.retain(|_, until| *until > now);
        self.any_fences.store(!fences.is_empty(), Ordering::Release);
    }

    fn prune_users(&self) {
        for stripe in self.users.iter() {
            let mut users = lock(stripe);
            users.retain(|_, ids| {
                ids.retain(|id| matches!(self.shard(id).map.get(id), Some(Entry::Live { .. })));
                !ids.is_empty()
            });
        }
    }

    /// The entry for `id` if it is a live record, dropping it if it has expired.
    fn live<'s>(
        &self,
        shard: &'s mut Shard,
        id: &SessionId,
        now: UnixMillis,
    ) -> Option<&'s mut Entry> {
        if shard.map.get(id).is_some_and(|e| e.deadline() <= now) {
            self.remove(shard, id);
        }
        shard.map.get_mut(id)
    }

    /// Checks that `id` is a live record at `expected` version.
    fn check(
        &self,
        shard: &mut Shard,
        id: &SessionId,
        expected: u64,
        now: UnixMillis,
    ) -> Result<(), StoreError> {
        match self.live(shard, id, now) {
            None => Err(StoreError::NotFound),
            Some(Entry::Rotated { .. }) => Err(StoreError::Rotated),
            Some(Entry::Live { version, .. }) if *version != expected => Err(StoreError::Conflict),
            Some(Entry::Live { .. }) => Ok(()),
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
        write: WriteId,
        now: UnixMillis,
    ) -> Result<(), StoreError> {
        self.check(old_shard, &old, expected, now)?;
        let taken = match new_shard.as_deref_mut() {
            Some(s) => self.live(s, &new, now).is_some(),
            None => self.live(old_shard, &new, now).is_some(),
        };
        if taken {
            return Err(StoreError::Conflict);
        }
        let marker = Entry::Rotated {
            until: now + ROTATED_MARKER_TTL_MS,
            to: new,
            write,
        };
        self.put(old_shard, old, marker);
        self.put(new_shard.unwrap_or(old_shard), new, entry);
        Ok(())
    }

    /// Before a new id is stored: while the store is full, drops expired entries (sweeping every
    /// shard at most once per [`FULL_SWEEP_EVERY_MS`]), then evicts the oldest-created live ones.
    /// Called with no shard held (the victim may be in any shard).
    fn make_room(&self, now: UnixMillis) {
        let Some(cap) = self.capacity else { return };
        if self.len.load(Ordering::Relaxed) >= cap {
            let last = self.last_full_sweep.load(Ordering::Relaxed);
            if now.saturating_sub(last) >= FULL_SWEEP_EVERY_MS
                && self
                    .last_full_sweep
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                for shard in 0..SHARDS {
                    self.purge_shard(shard, now);
                }
            }
        }
        while self.len.load(Ordering::Relaxed) >= cap {
            let Some(victim) = lock(&self.order).pop_front() else {
                return;
            };
            let mut shard = self.shard(&victim);
            if self.remove(&mut shard, &victim).is_some() {
                metrics::counter!("sessile_memory_evictions_total").increment(1);
            }
        }
    }

    /// After a new id was stored: queue it for eviction.
    fn created(&self, id: SessionId) {
        if self.capacity.is_none() {
            return;
        }
        let mut order = lock(&self.order);
        order.push_back(id);
        let held = self.len.load(Ordering::Relaxed);
        if order.len() > 2 * held + 64 {
            order.retain(|id| self.shard(id).map.contains_key(id));
        }
    }
}

fn index(guard: &mut UserGuard<'_>, id: SessionId) {
    if let Some((partition, users)) = guard {
        users.entry(*partition).or_default().insert(id);
    }
}

impl SessionStore for MemoryStore {
    fn clock(&self) -> Option<Arc<dyn Clock>> {
        Some(Arc::clone(&self.inner.clock))
    }

    async fn load(&self, id: SessionId) -> Result<Option<Record>, StoreError> {
        let now = self.inner.clock.now_ms();
        let mut shard = self.inner.shard(&id);
        match self.inner.live(&mut shard, &id, now) {
            None => Ok(None),
            Some(Entry::Rotated { .. }) => Err(StoreError::Rotated),
            Some(Entry::Live {
                version,
                idle_deadline,
                body,
                ..
            }) => Record::decode(id, *version, *idle_deadline, body)
                .map(Some)
                .map_err(StoreError::Corrupt),
        }
    }

    async fn create(&self, record: &Record, write: WriteId) -> Result<(), StoreError> {
        let entry = self.inner.entry(record, write)?;
        let now = self.inner.clock.now_ms();
        self.inner.make_room(now);
        let mut users = self.inner.user_guard(record);
        {
            let mut shard = self.inner.shard(&record.id);
            if self.inner.live(&mut shard, &record.id, now).is_some() {
                return Err(StoreError::Conflict);
            }
            self.inner.put(&mut shard, record.id, entry);
        }
        index(&mut users, record.id);
        drop(users);
        self.inner.created(record.id);
        Ok(())
    }

    async fn save(
        &self,
        record: &Record,
        expected_version: u64,
        write: WriteId,
    ) -> Result<(), StoreError> {
        let entry = self.inner.entry(record, write)?;
        let now = self.inner.clock.now_ms();
        let mut users = self.inner.user_guard(record);
        let mut shard = self.inner.shard(&record.id);
        self.inner
            .check(&mut shard, &record.id, expected_version, now)?;
        self.inner.put(&mut shard, record.id, entry);
        index(&mut users, record.id);
        Ok(())
    }

    async fn touch(&self, id: SessionId, idle_deadline: UnixMillis) -> Result<(), StoreError> {
        let now = self.inner.clock.now_ms();
        let mut shard = self.inner.shard(&id);
        match self.inner.live(&mut shard, &id, now) {
            None => Err(StoreError::NotFound),
            Some(Entry::Rotated { .. }) => Err(StoreError::Rotated),
            Some(Entry::Live {
                idle_deadline: d, ..
            }) => {
                *d = idle_deadline;
                Ok(())
            }
        }
    }

    async fn rotate(
        &self,
        old: SessionId,
        record: &Record,
        expected_version: u64,
        write: WriteId,
    ) -> Result<(), StoreError> {
        let entry = self.inner.entry(record, write)?;
        let now = self.inner.clock.now_ms();
        self.inner.make_room(now);
        let mut users = self.inner.user_guard(record);
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
                write,
                now,
            )?;
        }
        index(&mut users, record.id);
        drop(users);
        self.inner.created(record.id);
        Ok(())
    }

    /// Each record keeps only its last write id, so a write followed by others is `Unknown`.
    async fn settle(
        &self,
        old: SessionId,
        new: SessionId,
        expected_version: u64,
        write: WriteId,
    ) -> Result<Settled, StoreError> {
        let now = self.inner.clock.now_ms();
        let settled = {
            let shard = self.inner.shard(&old);
            match shard.map.get(&old) {
                // A rotation: the old id's marker names the write that moved it.
                Some(Entry::Rotated { to, write: w, .. }) if *to == new && *w == write => {
                    Settled::Applied
                }
                Some(Entry::Live { write: w, .. }) if old == new && *w == write => Settled::Applied,
                Some(Entry::Live { version, .. })
                    if old == new && *version > expected_version + 1 =>
                {
                    Settled::Unknown
                }
                _ => Settled::NotApplied,
            }
        };
        if settled == Settled::NotApplied {
            self.inner.fence(write, now);
        }
        Ok(settled)
    }

    async fn destroy(&self, id: SessionId) -> Result<(), StoreError> {
        let now = self.inner.clock.now_ms();
        let mut shard = self.inner.shard(&id);
        if let Some(Entry::Rotated { .. }) = self.inner.live(&mut shard, &id, now) {
            return Err(StoreError::Rotated);
        }
        self.inner.remove(&mut shard, &id);
        Ok(())
    }

    async fn destroy_user(&self, tenant: Option<&str>, user_id: &str) -> Result<u64, StoreError> {
        let partition = SessionId::user_partition(user_id);
        // Held throughout: every write of this user's sessions waits for it, so the deletion is
        // atomic with respect to them; a rotation that comes after finds its record gone.
        let mut users = lock(&self.inner.users[stripe_of(partition)]);
        let Some(ids) = users.get_mut(&partition) else {
            return Ok(0);
        };
        let mut destroyed = 0;
        ids.retain(|id| {
            let mut shard = self.inner.shard(id);
            let Some(Entry::Live { body, .. }) = shard.map.get(id) else {
                return false;
            };
            // The partition holds other users' sessions too (and other tenants'): delete only
            // this user's.
            match owner(body) {
                Some((t, u)) if u == user_id && t.as_deref() == tenant => {
                    self.inner.remove(&mut shard, id);
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
}

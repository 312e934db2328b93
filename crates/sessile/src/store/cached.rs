//! [`CachedStore`]: a coherent local cache in front of a store that publishes invalidations (the
//! Redis store), so that a read of a recent session costs no round trip.
//!
//! # How it stays coherent
//!
//! - **Reads** are served from a bounded [moka](https://docs.rs/moka) cache while the entry is
//!   valid: made in the current *epoch* (every flush starts a new one), at the current
//!   *generation* of its key's stripe (every invalidation of a key bumps its stripe), younger than
//!   the max age, and not past the record's own deadlines. Each entry remembers the epoch and
//!   generation read *before* the store call that produced it, so a copy whose load raced an
//!   invalidation is never served, whichever of the reply and the invalidation arrived first.
//! - **Misses** of one session at once make one store call (single flight); a caller that was
//!   waiting on it does its own call if an invalidation came in meanwhile.
//! - **Writes** go through to the store (its compare-and-set decides), then the written record
//!   replaces the cached copy unless a newer version is there already; a write that fails, whose
//!   outcome is unknown, or that is dropped mid-call, makes its keys stale, and so does a destroy
//!   or a rotation (for the old id) that succeeds.
//! - **Invalidations** (every write, from any instance) move their key's generation and drop the
//!   copy, unless it is already at that version (this instance's own write, answered): that one
//!   is carried to the new generation. A write's result is cached at a generation moved once
//!   more when its answer comes, so that no load begun before the answer is served, or joined
//!   by a read, afterwards (even if the written copy is evicted at once).
//! - **Touches** (the idle deadline only) update the local copy and send no invalidation: another
//!   instance's copy with the earlier deadline only expires early and reloads.
//! - **Flushes**: on a reconnect, a lagged or silent stream, an emptied database or a cluster
//!   topology change, the whole cache is dropped; while the stream is paused nothing is cached.
//! - **The bound**: no copy is served after the max age (default [`DEFAULT_MAX_AGE`]), even if
//!   its invalidation was lost.
//! - **Log out everywhere** on this instance drops the whole local cache (other instances drop
//!   the user's sessions one by one as their invalidations arrive).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use sessile_core::invalidation::{
    FlushCause, Invalidation, InvalidationSink, Listening, PublishesInvalidations,
};
use tokio::sync::OnceCell;

use super::{SessionStore, Settled, StoreError, WriteId};
use crate::SessionId;
use crate::clock::{Clock, SystemClock, UnixMillis};
use crate::record::Record;

/// How long a cached copy may be served at most, whatever the invalidations say: the hard bound
/// on serving a copy whose invalidation was lost.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(3);

/// How many sessions the cache holds by default.
pub const DEFAULT_MAX_ENTRIES: u64 = 100_000;

/// Stripes of key generations: an invalidation of one key also fails the few other cached keys
/// of its stripe (they reload once), for 128 KiB of counters.
const STRIPES: usize = 16384;

/// Locks that make looking at a key's copy and putting another one step.
const KEY_LOCKS: usize = 1024;

/// The hasher of the cache's maps. Ids are random and made by the server (a client cannot choose
/// one: tokens are sealed), so the standard maps' SipHash, there against chosen keys, would only
/// cost time; foldhash is keyed per process all the same.
type IdHash = foldhash::fast::RandomState;

/// Configures a [`CachedStore`].
#[derive(Debug)]
pub struct CachedStoreBuilder<S> {
    store: S,
    max_age: Duration,
    max_entries: u64,
}

impl<S: PublishesInvalidations> CachedStoreBuilder<S> {
    /// The longest a copy is served (default [`DEFAULT_MAX_AGE`]); at least a millisecond.
    pub fn max_age(mut self, d: Duration) -> Self {
        self.max_age = d.max(Duration::from_millis(1));
        self
    }

    /// How many sessions the cache holds at most (default [`DEFAULT_MAX_ENTRIES`]); the least
    /// recently used go first.
    pub fn max_entries(mut self, n: u64) -> Self {
        self.max_entries = n;
        self
    }

    /// Starts listening to the store's invalidations and returns the cache once the stream proves
    /// it works (the store's first heartbeat), or after the max age; until then, reads go to the
    /// store.
    pub async fn build(self) -> Result<CachedStore<S>, StoreError> {
        let clock = self.store.clock().unwrap_or_else(|| Arc::new(SystemClock));
        let shared = Arc::new(Shared {
            cache: moka::sync::Cache::builder()
                .max_capacity(self.max_entries)
                .time_to_live(self.max_age)
                .eviction_listener(|_, _, cause| {
                    if cause == moka::notification::RemovalCause::Expired {
                        metrics::counter!("sessile_cache_invalidations_total", "cause" => "max_age")
                            .increment(1);
                    }
                })
                .build_with_hasher(IdHash::default()),
            stripes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            key_locks: (0..KEY_LOCKS).map(|_| Mutex::new(())).collect(),
            epoch: AtomicU64::new(0),
            paused: AtomicBool::new(true),
            flights: Mutex::new(HashMap::default()),
            writing: Mutex::new(()),
            max_age: self.max_age,
            clock,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            resumed: tokio::sync::Notify::new(),
            store: self.store,
        });
        let weak: Weak<Shared<S>> = Arc::downgrade(&shared);
        let sink: InvalidationSink = Arc::new(move |event| {
            if let Some(shared) = weak.upgrade() {
                shared.invalidate(event);
            }
        });
        let listening = {
            // Registered before listening, so that a resume right away is not missed.
            let resumed = shared.resumed.notified();
            let listening = shared.store.listen(sink).await?;
            if shared.paused.load(Ordering::Acquire) {
                // Serving from the cache starts with the stream's first heartbeat; wait for it a
                // little, so that a new instance is warm from its first requests.
                let _ = tokio::time::timeout(self.max_age, resumed).await;
            }
            listening
        };
        Ok(CachedStore {
            shared,
            _listening: Arc::new(listening),
        })
    }
}

/// A store with a coherent local cache in front (see the [module docs](self)). Cloning is cheap
/// and shares the cache.
pub struct CachedStore<S> {
    shared: Arc<Shared<S>>,
    _listening: Arc<Listening>,
}

impl<S> Clone for CachedStore<S> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            _listening: self._listening.clone(),
        }
    }
}

impl<S> std::fmt::Debug for CachedStore<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedStore")
            .field("entries", &self.shared.cache.entry_count())
            .field("max_age", &self.shared.max_age)
            .finish_non_exhaustive()
    }
}

/// What the cache has done since it was built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Loads served from the cache.
    pub hits: u64,
    /// Loads that went to the store.
    pub misses: u64,
    /// Copies held now (approximate: moka counts lazily).
    pub entries: u64,
    /// Times the whole cache was dropped (a reconnect, a lagged or silent stream, an emptied
    /// database, a topology change).
    pub flushes: u64,
}

impl<S: PublishesInvalidations> CachedStore<S> {
    /// Starts configuring a cache in front of `store`.
    pub fn builder(store: S) -> CachedStoreBuilder<S> {
        CachedStoreBuilder {
            store,
            max_age: DEFAULT_MAX_AGE,
            max_entries: DEFAULT_MAX_ENTRIES,
        }
    }

    /// A cache with every default in front of `store`.
    pub async fn new(store: S) -> Result<Self, StoreError> {
        Self::builder(store).build().await
    }

    /// The store behind the cache.
    pub fn store(&self) -> &S {
        &self.shared.store
    }

    /// Hits, misses and entries so far.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.shared.hits.load(Ordering::Relaxed),
            misses: self.shared.misses.load(Ordering::Relaxed),
            entries: self.shared.cache.entry_count(),
            flushes: self.shared.flushes.load(Ordering::Relaxed),
        }
    }

    /// Whether a load of `id` would be served from the cache now.
    pub fn serves(&self, id: &SessionId) -> bool {
        self.shared.cached(id).is_some()
    }

    /// Whether the cache is paused (its invalidation stream is not known to work): every load
    /// goes to the store.
    pub fn is_paused(&self) -> bool {
        self.shared.paused.load(Ordering::Acquire)
    }
}

struct Shared<S> {
    store: S,
    cache: moka::sync::Cache<SessionId, Arc<Entry>, IdHash>,
    stripes: Box<[AtomicU64]>,
    key_locks: Box<[Mutex<()>]>,
    epoch: AtomicU64,
    paused: AtomicBool,
    /// Loads in flight, one per session.
    flights: Mutex<HashMap<SessionId, Arc<OnceCell<Loaded>>, IdHash>>,
    /// Held while a write's result is cached and while an invalidation is handled, so that each
    /// is wholly before or wholly after the other.
    writing: Mutex<()>,
    max_age: Duration,
    clock: Arc<dyn Clock>,
    hits: AtomicU64,
    misses: AtomicU64,
    /// Whole-cache flushes (any cause), and pauses.
    flushes: AtomicU64,
    resumed: tokio::sync::Notify,
}

struct Entry {
    record: Record,
    /// The epoch read before the store call that produced the record.
    epoch: u64,
    /// The stripe generation read before that call; an invalidation that finds this very version
    /// (this instance's own write) carries the copy to the new generation in place.
    generation: AtomicU64,
    born: Instant,
}

impl Entry {
    fn new(record: Record, stamp: Stamp, born: Instant) -> Self {
        Self {
            record,
            epoch: stamp.epoch,
            generation: AtomicU64::new(stamp.generation),
            born,
        }
    }
}

/// Where the cache stood when a store call began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    generation: u64,
    epoch: u64,
    paused: bool,
}

/// A write in flight. Dropped before it was marked done (it failed, or the caller gave up
/// mid-call and the outcome is unknown), its keys go stale.
struct Writing<'a, S> {
    shared: &'a Shared<S>,
    ids: &'a [SessionId],
    done: bool,
}

impl<S> Drop for Writing<'_, S> {
    fn drop(&mut self) {
        if !self.done {
            self.ids.iter().for_each(|id| self.shared.drop_key(id));
        }
    }
}

/// Ends a load's flight when its caller is done with it or dropped mid-call (so that a cancelled
/// load leaves nothing behind); a newer flight of the same session is left alone.
struct Flight<'a> {
    flights: &'a Mutex<HashMap<SessionId, Arc<OnceCell<Loaded>>, IdHash>>,
    id: SessionId,
    cell: &'a Arc<OnceCell<Loaded>>,
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        // Done, or nobody else holds it (the map and this caller): a caller that gives up while
        // others wait leaves the flight to them.
        let over = self.cell.initialized() || Arc::strong_count(self.cell) <= 2;
        if over
            && flights
                .get(&self.id)
                .is_some_and(|c| Arc::ptr_eq(c, self.cell))
        {
            flights.remove(&self.id);
        }
    }
}

/// A finished load, with the stamp it began at.
type Loaded = (Option<Record>, Stamp);

impl<S> Shared<S> {
    fn stripe(&self, id: &SessionId) -> &AtomicU64 {
        let b = id.as_bytes();
        let n = usize::from(u16::from_le_bytes([b[14], b[15]]));
        &self.stripes[n % STRIPES]
    }

    /// The lock every put of a copy of `id` takes, so that looking at the copy held and putting
    /// another is one step.
    fn key_lock(&self, id: &SessionId) -> std::sync::MutexGuard<'_, ()> {
        let b = id.as_bytes();
        let n = usize::from(u16::from_le_bytes([b[12], b[13]]));
        self.key_locks[n % KEY_LOCKS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Makes every copy of `id` (cached or on its way into the cache) stale: none is served from
    /// here on.
    fn make_stale(&self, id: &SessionId) {
        self.stripe(id).fetch_add(1, Ordering::AcqRel);
    }

    /// [`make_stale`](Self::make_stale), and drops the copy.
    fn drop_key(&self, id: &SessionId) {
        self.make_stale(id);
        self.cache.invalidate(id);
    }
}

impl<S: PublishesInvalidations> Shared<S> {
    fn stamp(&self, id: &SessionId) -> Stamp {
        Stamp {
            // The pause flag first: a resume bumps the epoch before it clears the flag, so a
            // stamp that reads "not paused" also reads the epoch of the resume or a later one.
            paused: self.paused.load(Ordering::Acquire),
            epoch: self.epoch.load(Ordering::Acquire),
            generation: self.stripe(id).load(Ordering::Acquire),
        }
    }

    /// The copy of `id`, if one may be served now.
    fn cached(&self, id: &SessionId) -> Option<Arc<Entry>> {
        let entry = self.cache.get(id)?;
        let now = self.stamp(id);
        if self.clock.instant().saturating_duration_since(entry.born) >= self.max_age {
            // Before moka's own expiry (by another clock) drops it.
            metrics::counter!("sessile_cache_invalidations_total", "cause" => "max_age")
                .increment(1);
            self.cache.invalidate(id);
            return None;
        }
        let fresh = !now.paused
            && entry.epoch == now.epoch
            && entry.generation.load(Ordering::Acquire) == now.generation
            && !entry.record.is_expired(self.clock.now_ms());
        fresh.then_some(entry)
    }

    /// Caches `record` as read or written by a store call that began at `stamp`, unless the
    /// cache paused since, or it holds a newer version of the same epoch.
    fn insert(&self, record: &Record, stamp: Stamp) {
        if stamp.paused {
            return;
        }
        let entry = Arc::new(Entry::new(record.clone(), stamp, self.clock.instant()));
        // Look and put under the key's lock, which every put of a copy takes: no other copy can
        // come in between. (Removals need no lock: a stale copy is never served anyway.)
        let _key = self.key_lock(&record.id);
        if let Some(old) = self.cache.get(&record.id)
            && old.epoch == stamp.epoch
            && old.record.version > record.version
        {
            return;
        }
        self.cache.insert(record.id, entry);
    }

    fn flush(&self, cause: FlushCause) {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.cache.invalidate_all();
        metrics::counter!("sessile_cache_invalidations_total", "cause" => cause.as_str())
            .increment(1);
    }

    fn invalidate(&self, event: Invalidation) {
        match event {
            Invalidation::Changed { id, version, at } => {
                if let Some(at) = at {
                    let delay = self.clock.now_ms().saturating_sub(at);
                    metrics::histogram!("sessile_cache_invalidation_delay_seconds")
                        .record(delay as f64 / 1000.0);
                }
                metrics::counter!("sessile_cache_invalidations_total", "cause" => "key")
                    .increment(1);
                let Some(v) = version else {
                    self.drop_key(&id);
                    return self.entries_gauge();
                };
                // Every load of the key begun before this point is refused from here on.
                let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
                let generation = self.stripe(&id).fetch_add(1, Ordering::AcqRel) + 1;
                let current = self.epoch.load(Ordering::Acquire);
                // A copy at version `v` or newer that could be served until now (this instance's
                // own write, answered already) stays, at the new generation. Any other copy goes:
                // one already out of date must not be brought back.
                // In place: moving the generation of the very copy found, under the key's lock
                // (no copy is put meanwhile).
                let _key = self.key_lock(&id);
                match self.cache.get(&id) {
                    Some(old)
                        if old.epoch == current
                            && old.generation.load(Ordering::Acquire) + 1 == generation
                            && old.record.version >= v =>
                    {
                        old.generation.store(generation, Ordering::Release);
                    }
                    Some(_) => self.cache.invalidate(&id),
                    None => {}
                }
            }
            Invalidation::Flush(cause) => self.flush(cause),
            Invalidation::Paused(cause) => {
                self.paused.store(true, Ordering::Release);
                self.flush(cause);
            }
            Invalidation::Resumed => {
                self.epoch.fetch_add(1, Ordering::AcqRel);
                self.cache.invalidate_all();
                self.paused.store(false, Ordering::Release);
                self.resumed.notify_waiters();
            }
        }
        self.entries_gauge();
    }

    fn entries_gauge(&self) {
        metrics::gauge!("sessile_cache_entries").set(self.cache.entry_count() as f64);
    }

    async fn load(&self, id: SessionId) -> Result<Option<Record>, StoreError> {
        if let Some(entry) = self.cached(&id) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("sessile_cache_hits_total").increment(1);
            return Ok(Some(entry.record.clone()));
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("sessile_cache_misses_total").increment(1);
        // A caller that joined a load begun before an invalidation it may have asked after
        // starts a new one; after a few such rounds (a key invalidated all the time) it reads
        // alone.
        for _ in 0..3 {
            let asked = self.stamp(&id);
            let cell = self
                .flights
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(id)
                .or_default()
                .clone();
            let flight = Flight {
                flights: &self.flights,
                id,
                cell: &cell,
            };
            let result = cell
                .get_or_try_init(|| async {
                    let stamp = self.stamp(&id);
                    let loaded = self.store.load(id).await?;
                    if let Some(record) = &loaded {
                        self.insert(record, stamp);
                    }
                    Ok::<_, StoreError>((loaded, stamp))
                })
                .await
                .cloned();
            drop(flight);
            let (loaded, began) = result?;
            if (began.epoch, began.generation) == (asked.epoch, asked.generation) {
                metrics::gauge!("sessile_cache_entries").set(self.cache.entry_count() as f64);
                return Ok(loaded);
            }
        }
        self.store.load(id).await
    }

    /// Runs a write of `ids`: every copy of them goes stale first, and the write's result is
    /// cached (`keep`) when it succeeds; on any failure the copies are dropped again.
    async fn write<T>(
        &self,
        ids: &[SessionId],
        keep: Option<&Record>,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        // Stale before the call: a load in flight, whatever it brings back, is not served, and
        // neither is the copy held now (the write's result replaces it, or a failure drops it).
        for id in ids {
            self.make_stale(id);
        }
        let stamp = keep.map(|r| self.stamp(&r.id));
        let mut writing = Writing {
            shared: self,
            ids,
            done: false,
        };
        // Failed: the guard drops every copy as the error goes back.
        let value = call.await?;
        writing.done = true;
        // The other ids (a destroy's, a rotation's old one) are gone: a load that read them
        // before the write landed and was cached meanwhile must not outlive the reply.
        for id in ids.iter().filter(|id| keep.is_none_or(|r| r.id != **id)) {
            self.drop_key(id);
        }
        if let (Some(record), Some(stamp)) = (keep, stamp) {
            // The key's generation moves once more as the answer comes: a load begun before it
            // (it may have read the version before this write) is neither served nor joined by a
            // read from here on, even if this copy is evicted at once. Under the lock
            // invalidations take: the write's own invalidation was handled wholly before (this
            // generation is newer still) or will be wholly after (it finds this copy, at the
            // generation just before its own, and keeps it).
            let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
            let generation = self.stripe(&record.id).fetch_add(1, Ordering::AcqRel) + 1;
            self.insert(
                record,
                Stamp {
                    generation,
                    ..stamp
                },
            );
        }
        Ok(value)
    }
}

impl<S: PublishesInvalidations> SessionStore for CachedStore<S> {
    async fn load(&self, id: SessionId) -> Result<Option<Record>, StoreError> {
        self.shared.load(id).await
    }

    async fn create(&self, record: &Record, write: WriteId) -> Result<(), StoreError> {
        let s = &self.shared;
        s.write(&[record.id], Some(record), s.store.create(record, write))
            .await
    }

    async fn save(
        &self,
        record: &Record,
        expected_version: u64,
        write: WriteId,
    ) -> Result<(), StoreError> {
        let s = &self.shared;
        let call = s.store.save(record, expected_version, write);
        s.write(&[record.id], Some(record), call).await
    }

    /// Moves the idle deadline in the store, and of the local copy; sends no invalidation.
    async fn touch(&self, id: SessionId, idle_deadline: UnixMillis) -> Result<(), StoreError> {
        let s = &self.shared;
        let before = s.cached(&id);
        let result = s.store.touch(id, idle_deadline).await;
        match (&result, before) {
            (Ok(()), Some(entry)) => {
                let mut record = entry.record.clone();
                record.idle_deadline = idle_deadline;
                // Only over the very copy read before: anything newer stays. Its generation is
                // read under the key's lock, where an invalidation may just have moved it.
                let _key = s.key_lock(&id);
                if s.cache
                    .get(&id)
                    .is_some_and(|old| Arc::ptr_eq(&old, &entry))
                {
                    let touched = Arc::new(Entry {
                        record,
                        epoch: entry.epoch,
                        generation: AtomicU64::new(entry.generation.load(Ordering::Acquire)),
                        born: entry.born,
                    });
                    s.cache.insert(id, touched);
                }
            }
            (Ok(()), None) => {}
            (Err(_), _) => s.drop_key(&id),
        }
        result
    }

    async fn rotate(
        &self,
        old: SessionId,
        record: &Record,
        expected_version: u64,
        write: WriteId,
    ) -> Result<(), StoreError> {
        let s = &self.shared;
        let call = s.store.rotate(old, record, expected_version, write);
        s.write(&[old, record.id], Some(record), call).await
    }

    async fn settle(
        &self,
        old: SessionId,
        new: SessionId,
        expected_version: u64,
        write: WriteId,
    ) -> Result<Settled, StoreError> {
        let s = &self.shared;
        let call = s.store.settle(old, new, expected_version, write);
        s.write(&[old, new], None, call).await
    }

    async fn destroy(&self, id: SessionId) -> Result<(), StoreError> {
        let s = &self.shared;
        s.write(&[id], None, s.store.destroy(id)).await
    }

    /// Ends the user's sessions in the store, then drops this instance's whole cache (the store
    /// does not say which ids it ended until their invalidations arrive).
    async fn destroy_user(&self, tenant: Option<&str>, user_id: &str) -> Result<u64, StoreError> {
        let s = &self.shared;
        let result = s.store.destroy_user(tenant, user_id).await;
        s.epoch.fetch_add(1, Ordering::AcqRel);
        s.cache.invalidate_all();
        result
    }

    fn clock(&self) -> Option<Arc<dyn Clock>> {
        self.shared.store.clock()
    }

    fn system_name(&self) -> &'static str {
        self.shared.store.system_name()
    }
}

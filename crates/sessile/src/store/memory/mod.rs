//! The embedded default store.

mod inner;
mod ops;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
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
use inner::UserStripe;

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
    /// User bucket (16 bits of the user id's hash, [`Inner::user_bucket`]) -> sessions that had a
    /// user of that bucket when last written, in stripes by bucket.
    /// Keying by partition rather than by user id costs about 16 bytes per session instead of a
    /// map entry and two allocations per user (some 100 bytes). Entries go stale when sessions
    /// expire or change user, and a partition holds several users: `destroy_user` checks each
    /// record's user, and the sweeper prunes. A set per partition keeps indexing O(1) however many
    /// sessions one user has.
    ///
    /// Lock order: a user stripe, then shards (lower index first).
    users: Box<[Mutex<UserStripe>]>,
    /// Hashes user ids to their bucket. The index lives only in this process, so its hash need
    /// not be stable across processes, as the SHA-256 of [`SessionId::user_partition`] must be (it
    /// names Redis keys): a keyed foldhash costs some 20 instructions where SHA-256 cost 3 400,
    /// once per write of a logged-in session.
    user_hasher: foldhash::fast::RandomState,
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
        /// Shared with the records loaded from it: a load copies no bytes. (An `Arc<[u8]>`, not
        /// a `Bytes`: 16 bytes here and one allocation, where a shared `Bytes` takes 32 and two.)
        body: Arc<[u8]>,
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
            user_hasher: foldhash::fast::RandomState::default(),
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

//! The memory store's machinery: locks, shards, the user index, eviction and sweeping.

use std::collections::HashSet;

use super::*;

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock cannot leave a half-written entry (each write is one
    // `insert`/`remove`), so a poisoned lock is safe to keep using.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The shard of an id: a hash of all its bytes. (Not the first bytes: a logged-in user's ids share
/// their first two, the user's partition, and would all land in one shard.)
pub(super) fn shard_of(id: &SessionId) -> usize {
    let x = u128::from_le_bytes(*id.as_bytes());
    let folded = (x as u64) ^ ((x >> 64) as u64);
    // Fibonacci hashing: the top bits of the product mix every input bit.
    (folded.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - SHARDS.trailing_zeros())) as usize
}

pub(super) fn stripe_of(bucket: u16) -> usize {
    usize::from(bucket) % USER_STRIPES
}

/// The tenant and user of an encoded body, decoding the metadata only.
pub(super) fn owner(body: &[u8]) -> Option<(Option<String>, String)> {
    let (_, rest) = body.split_first()?;
    let (meta, _): (Metadata, serde::de::IgnoredAny) = rmp_serde::from_slice(rest).ok()?;
    Some((meta.tenant, meta.user_id?))
}

/// One stripe of the user index: user bucket -> sessions.
pub(super) type UserStripe = HashMap<u16, HashSet<SessionId>>;

/// The held user stripe of a write, if the record has a user: index the record under it.
pub(super) type UserGuard<'a> = Option<(u16, MutexGuard<'a, UserStripe>)>;

impl Inner {
    /// The user index's bucket of `user`.
    pub(super) fn user_bucket(&self, user: &str) -> u16 {
        use std::hash::BuildHasher as _;
        (self.user_hasher.hash_one(user) >> 48) as u16
    }

    pub(super) fn shard(&self, id: &SessionId) -> MutexGuard<'_, Shard> {
        lock(&self.shards[shard_of(id)])
    }

    /// Locks the user stripe of `record`'s user, if it has one. Taken before any shard.
    pub(super) fn user_guard(&self, record: &Record) -> UserGuard<'_> {
        let user = record.meta.user_id.as_deref()?;
        let bucket = self.user_bucket(user);
        Some((bucket, lock(&self.users[stripe_of(bucket)])))
    }

    pub(super) fn entry(&self, record: &Record, write: WriteId) -> Result<Entry, StoreError> {
        if self.any_fences.load(Ordering::Acquire) && lock(&self.fences).contains_key(&write) {
            return Err(StoreError::Conflict);
        }
        Ok(Entry::Live {
            version: record.version,
            idle_deadline: record.expires_at(),
            write,
            body: encode_record(record, self.max_record_bytes)?.into(),
        })
    }

    pub(super) fn purge_shard(&self, shard: usize, now: UnixMillis) -> usize {
        let mut s = lock(&self.shards[shard]);
        self.retain(&mut s, |e| e.deadline() > now)
    }

    /// Keeps the entries for which `keep` holds; returns how many were dropped.
    pub(super) fn retain(&self, shard: &mut Shard, mut keep: impl FnMut(&Entry) -> bool) -> usize {
        let before = shard.map.len();
        shard.map.retain(|_, e| keep(e));
        let dropped = before - shard.map.len();
        self.len.fetch_sub(dropped, Ordering::Relaxed);
        dropped
    }

    pub(super) fn remove(&self, shard: &mut Shard, id: &SessionId) -> Option<Entry> {
        let e = shard.map.remove(id)?;
        self.len.fetch_sub(1, Ordering::Relaxed);
        Some(e)
    }

    /// Inserts or replaces an entry, keeping the count.
    pub(super) fn put(&self, shard: &mut Shard, id: SessionId, entry: Entry) {
        if shard.map.insert(id, entry).is_none() {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(super) fn fence(&self, write: WriteId, now: UnixMillis) {
        lock(&self.fences).insert(write, now + ROTATED_MARKER_TTL_MS);
        self.any_fences.store(true, Ordering::Release);
    }

    pub(super) fn prune_fences(&self, now: UnixMillis) {
        let mut fences = lock(&self.fences);
        fences.retain(|_, until| *until > now);
        self.any_fences.store(!fences.is_empty(), Ordering::Release);
    }

    pub(super) fn prune_users(&self) {
        for stripe in self.users.iter() {
            let mut users = lock(stripe);
            users.retain(|_, ids| {
                ids.retain(|id| matches!(self.shard(id).map.get(id), Some(Entry::Live { .. })));
                !ids.is_empty()
            });
        }
    }

    /// The entry for `id` if it is a live record, dropping it if it has expired.
    pub(super) fn live<'s>(
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
    pub(super) fn check(
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
    pub(super) fn rotate_locked(
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
    pub(super) fn make_room(&self, now: UnixMillis) {
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
    pub(super) fn created(&self, id: SessionId) {
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

pub(super) fn index(guard: &mut UserGuard<'_>, id: SessionId) {
    if let Some((bucket, users)) = guard {
        users.entry(*bucket).or_default().insert(id);
    }
}

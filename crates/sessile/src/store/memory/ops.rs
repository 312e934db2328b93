//! The memory store's [`SessionStore`] operations, each one step under its locks.

use super::inner::*;
use super::*;

impl SessionStore for MemoryStore {
    fn clock(&self) -> Option<Arc<dyn Clock>> {
        Some(Arc::clone(&self.inner.clock))
    }

    fn system_name(&self) -> &'static str {
        "memory"
    }

    fn in_process(&self) -> bool {
        true
    }

    /// Every call completes when first polled (its locks are held for a few steps and never
    /// across an await), so no call can outlast a deadline: the layer needs no timer around it.
    fn keeps_deadlines(&self) -> bool {
        true
    }

    async fn load(&self, id: SessionId) -> Result<Option<Record>, StoreError> {
        let now = self.inner.clock.now_ms();
        let (version, idle_deadline, body) = {
            let mut shard = self.inner.shard(&id);
            match self.inner.live(&mut shard, &id, now) {
                None => return Ok(None),
                Some(Entry::Rotated { .. }) => return Err(StoreError::Rotated),
                Some(Entry::Live {
                    version,
                    idle_deadline,
                    body,
                    ..
                }) => (*version, *idle_deadline, Arc::clone(body)),
            }
        };
        // Decoded after the shard's lock is released; the payload reads the shared bytes.
        Record::decode_shared(id, version, idle_deadline, bytes::Bytes::from_owner(body))
            .map(Some)
            .map_err(StoreError::Corrupt)
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
        let bucket = self.inner.user_bucket(user_id);
        // Held throughout: every write of this user's sessions waits for it, so the deletion is
        // atomic with respect to them; a rotation that comes after finds its record gone.
        let mut users = lock(&self.inner.users[stripe_of(bucket)]);
        let Some(ids) = users.get_mut(&bucket) else {
            return Ok(0);
        };
        let mut destroyed = 0;
        ids.retain(|id| {
            let mut shard = self.inner.shard(id);
            let Some(Entry::Live { body, .. }) = shard.map.get(id) else {
                return false;
            };
            // The bucket holds other users' sessions too (and other tenants'): delete only
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
            users.remove(&bucket);
        }
        Ok(destroyed)
    }
}

//! Recent copies of records, served read-only by [`DegradedMode::RecentCopy`] while the
//! store cannot be reached. ("Recent copy" is the one name of this idea throughout: the degraded
//! mode, this type, the builder's `recent_copies` and the `DEFAULT_RECENT_*` settings.)
//!
//! [`DegradedMode::RecentCopy`]: crate::config::DegradedMode::RecentCopy

use std::sync::Arc;
use std::time::Duration;

use crate::SessionId;
use crate::clock::UnixMillis;
use crate::record::Record;

/// A bounded cache (moka: concurrent, size- and age-bounded eviction) of the records this
/// instance has loaded or written. It is not coherent with other instances, which is why it is
/// only ever read when the store cannot be, and only for a short time after each copy was made.
pub(crate) struct RecentCopies {
    cache: moka::sync::Cache<SessionId, Arc<Record>>,
}

impl RecentCopies {
    pub(crate) fn new(capacity: u64, max_age: Duration) -> Self {
        Self {
            cache: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(max_age)
                .build(),
        }
    }

    pub(crate) fn remember(&self, record: &Record) {
        let mut copy = record.clone();
        // A copy kept for up to a minute must not pin the buffer its bytes were read from.
        copy.data.unshare();
        self.cache.insert(record.id, Arc::new(copy));
    }

    pub(crate) fn forget(&self, id: &SessionId) {
        self.cache.invalidate(id);
    }

    pub(crate) fn touched(&self, id: &SessionId, idle_deadline: UnixMillis) {
        if let Some(old) = self.cache.get(id) {
            let mut r = (*old).clone();
            r.idle_deadline = idle_deadline;
            self.cache.insert(*id, Arc::new(r));
        }
    }

    /// Drops the copies of `user`'s sessions (this layer has one tenant, so every copy is its).
    pub(crate) fn forget_user(&self, user: &str) {
        for (id, record) in &self.cache {
            if record.meta.user_id.as_deref() == Some(user) {
                self.cache.invalidate(&*id);
            }
        }
    }

    pub(crate) fn get(&self, id: &SessionId) -> Option<Arc<Record>> {
        self.cache.get(id)
    }
}

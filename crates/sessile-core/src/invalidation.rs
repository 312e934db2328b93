//! Invalidations: how a shared store tells a local cache in front of it that copies it handed
//! out are stale.
//!
//! A store that implements [`PublishesInvalidations`] calls a sink for every change another
//! client made to a record (or could have made), and for every event after which it cannot vouch
//! for what it did not see: a lost connection, a lagged or silent stream, a flush of the whole
//! database, a change of cluster topology. The cache tier drops what it must on each.

use std::future::Future;
use std::sync::Arc;

use crate::clock::UnixMillis;
use crate::{SessionId, SessionStore, StoreError};

/// What a store reports to the caches in front of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalidation {
    /// Record `id` was written: its version is now `version`, or it is gone (`None`: destroyed,
    /// rotated away, logged out everywhere). Copies older than `version` are stale.
    Changed {
        /// The record.
        id: SessionId,
        /// Its new version, `None` when it no longer exists under `id`.
        version: Option<u64>,
        /// When the change was made, by the store's clock, if the store says: for the
        /// invalidation delay.
        at: Option<UnixMillis>,
    },
    /// Every copy may be stale; the stream itself still works.
    Flush(FlushCause),
    /// Every copy may be stale, and changes may go unreported until [`Invalidation::Resumed`]:
    /// do not cache until then.
    Paused(FlushCause),
    /// The stream works again (after a [`Invalidation::Paused`]); every copy made before this
    /// may be stale.
    Resumed,
}

/// Why everything was invalidated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushCause {
    /// A connection to the store was lost and made again: what was sent meanwhile is lost.
    Reconnect,
    /// The listener fell behind the stream and missed messages.
    Lagged,
    /// The stream's own heartbeat did not come back in time: it may be silently broken.
    Lost,
    /// The store was emptied (`FLUSHALL`, `FLUSHDB`) or failed over to a copy without it.
    Flushall,
    /// The cluster's topology changed.
    Topology,
}

impl FlushCause {
    /// A short, stable name for metrics labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reconnect => "reconnect",
            Self::Lagged => "lag",
            Self::Lost => "lost",
            Self::Flushall => "flush",
            Self::Topology => "topology",
        }
    }
}

/// Where a store delivers invalidations: called on the store's own tasks, so it must be quick
/// and must not block.
pub type InvalidationSink = Arc<dyn Fn(Invalidation) + Send + Sync>;

/// Keeps a store's invalidation stream running; dropping it stops the stream's tasks and closes
/// its connections.
pub struct Listening {
    _guard: Box<dyn Send + Sync>,
}

impl Listening {
    /// Wraps whatever keeps the stream alive (task handles, connections) and stops it on drop.
    pub fn new(guard: impl Send + Sync + 'static) -> Self {
        Self {
            _guard: Box::new(guard),
        }
    }
}

impl std::fmt::Debug for Listening {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Listening")
    }
}

/// A store that tells local caches when their copies go stale.
///
/// The contract, which a cache in front of the store relies on for coherence:
/// - every write through the store that changes or removes a record is reported as
///   [`Invalidation::Changed`] to every listener, after it is applied and soon after (the
///   invalidation delay); a write that only moves the idle deadline (`touch`) need not be, since
///   a cached copy with an earlier deadline only expires early;
/// - an event after which a listener may have missed a change is reported as a
///   [`Invalidation::Flush`] or [`Invalidation::Paused`] before any later change.
pub trait PublishesInvalidations: SessionStore {
    /// Starts delivering invalidations to `sink`; they flow from when this returns until the
    /// [`Listening`] is dropped.
    fn listen(
        &self,
        sink: InvalidationSink,
    ) -> impl Future<Output = Result<Listening, StoreError>> + Send;
}

impl<S: PublishesInvalidations> PublishesInvalidations for Arc<S> {
    async fn listen(&self, sink: InvalidationSink) -> Result<Listening, StoreError> {
        (**self).listen(sink).await
    }
}

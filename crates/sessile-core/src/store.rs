//! The storage interface: the [`SessionStore`] trait, its errors, and the rules every store keeps.
//!
//! A store keeps [`Record`]s by [`SessionId`]. It is deliberately small: the session layer decides
//! *what* to write and when; the store only makes each operation atomic.
//!
//! | operation | succeeds when | otherwise |
//! |---|---|---|
//! | [`load`](SessionStore::load) | always | `Ok(None)` if missing or expired |
//! | [`create`](SessionStore::create) | the id is unused | [`StoreError::Conflict`] |
//! | [`save`](SessionStore::save) | the stored version equals `expected_version` | `Conflict`, or `NotFound` if gone |
//! | [`touch`](SessionStore::touch) | the record exists | `NotFound` |
//! | [`rotate`](SessionStore::rotate) | as `save`, on the old id | `Conflict` / `NotFound`; nothing changes |
//! | [`settle`](SessionStore::settle) | the store answers | see [`Settled`] |
//! | [`destroy`](SessionStore::destroy) | always (idempotent) | |
//! | [`destroy_user`](SessionStore::destroy_user) | always | |
//!
//! `save` and `rotate` never create a record: a session that was destroyed, rotated away or expired
//! stays gone, whatever requests were still in flight with it. That is what makes logout final.
//!
//! # Rotated ids
//!
//! `rotate` leaves a short-lived marker under the old id ([`ROTATED_MARKER_TTL`]): for that long,
//! `load`, `save`, `touch` and `rotate` of the old id answer [`StoreError::Rotated`] instead of
//! `NotFound`. The layer uses the difference to leave the browser's cookie alone for requests that
//! were in flight during a login (their responses may reach the browser after the login's), while a
//! logged-out or expired session's cookie is removed.
//!
//! # Exactly once
//!
//! Every write (`create`, `save`, `rotate`) carries a fresh random [`WriteId`]. A store must never
//! apply one write twice, and must be able to tell afterwards whether a write was applied: when a
//! reply is lost (a dropped connection, a deadline that fired first), the layer calls
//! [`settle`](SessionStore::settle), which answers from the record's recent write ids and makes
//! sure a write it reports as not applied can never land later. So a write whose outcome was
//! unclear is never replayed blindly, and an `update` is applied exactly once.
//!
//! A store must remember a write's outcome for longer than two store deadlines (the layer settles
//! within one deadline of giving up on a write, and accepts no deadline over
//! [`MAX_STORE_TIMEOUT`]), and must recognise a copy of a write
//! that its client re-sends on its own after a connection drops (fred does).
//!
//! Every store must pass the `sessile-conformance` suite.
//!
#![doc = include_str!("custom_store.md")]

use std::error::Error as StdError;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use crate::SessionId;
use crate::clock::{Clock, UnixMillis};
use crate::record::{CodecError, Record};

mod deadline;

pub use deadline::Deadline;

/// How long the marker left under a rotated-away id lasts, in milliseconds: longer than any
/// request that was in flight when the session was rotated. After it, the old id is simply gone.
pub const ROTATED_MARKER_TTL_MS: u64 = 60_000;

/// Longest deadline the session layer puts on one store call. A write whose reply is lost is
/// settled after at most one deadline, and again within one more; a store must remember a write's
/// outcome for longer than both (the Redis store: a minute), or a write that landed could be taken
/// for one that did not and be written again.
pub const MAX_STORE_TIMEOUT: Duration = Duration::from_secs(10);

/// [`ROTATED_MARKER_TTL_MS`] as a duration.
pub const ROTATED_MARKER_TTL: Duration = Duration::from_millis(ROTATED_MARKER_TTL_MS);

/// Identifies one write (`create`, `save` or `rotate`) so that its outcome can be learned after its
/// reply was lost. Make a fresh one for every call: a store takes a write id it already holds as
/// proof that the write was applied.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct WriteId([u8; 8]);

impl WriteId {
    /// A fresh random write id (64 bits: one record holds only a few at a time).
    pub fn random() -> Self {
        use rand::Rng as _;
        Self(rand::rng().random())
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 8] {
        &self.0
    }

    /// Wraps raw bytes.
    pub const fn from_bytes(bytes: [u8; 8]) -> Self {
        Self(bytes)
    }
}

impl std::fmt::Debug for WriteId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WriteId({:016x})", u64::from_be_bytes(self.0))
    }
}

/// What [`SessionStore::settle`] learned about a write whose reply was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// The write was applied (once).
    Applied,
    /// The write was not applied, and now never will be: the store fenced it off, so a copy of it
    /// still on its way is refused. Writing again (with a new [`WriteId`]) is safe.
    NotApplied,
    /// The store cannot tell any more (the record has moved on by more writes than it remembers).
    /// The write was applied once or not at all.
    Unknown,
}

/// Largest encoded record a store accepts unless configured otherwise: 1 MiB, which is far beyond
/// what belongs in a session and well under Redis's limits.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1 << 20;

/// Encodes a record's body for storage, refusing it when larger than `limit` bytes.
pub fn encode_record(record: &Record, limit: usize) -> Result<Vec<u8>, StoreError> {
    let mut body = Vec::with_capacity(record.encoded_size_hint());
    encode_record_into(record, limit, &mut body)?;
    Ok(body)
}

/// [`encode_record`], appended to `out` (a store that sends the body among other bytes writes it
/// in place). On an error, `out` may hold part of the body.
pub fn encode_record_into(
    record: &Record,
    limit: usize,
    out: &mut Vec<u8>,
) -> Result<(), StoreError> {
    let start = out.len();
    record.encode_body_into(out).map_err(StoreError::Corrupt)?;
    let size = out.len() - start;
    if size > limit {
        return Err(StoreError::TooLarge { size, limit });
    }
    Ok(())
}

/// Why a store operation failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The record does not exist (never did, expired, or destroyed).
    #[error("session record not found")]
    NotFound,
    /// The record was moved to a new id by `rotate` (a login) within the last
    /// [`ROTATED_MARKER_TTL`]: this id no longer works, but the session goes on under its new one.
    #[error("session record was rotated to a new id")]
    Rotated,
    /// The record's version is not the expected one (or, for `create`, the id is taken).
    #[error("session record version conflict")]
    Conflict,
    /// The operation did not finish within its deadline.
    #[error("session store operation timed out after {0:?}")]
    Timeout(Duration),
    /// The store could not be reached or refused the operation.
    #[error("session store is unavailable")]
    Unavailable(#[source] Box<dyn StdError + Send + Sync>),
    /// A stored record could not be decoded.
    #[error("stored session record is corrupt")]
    Corrupt(#[source] CodecError),
    /// The store's circuit breaker is open: the store was not called.
    #[error("session store not called: its circuit breaker is open (retry after {retry_after:?})")]
    Rejected {
        /// When the breaker will let a probe through.
        retry_after: Duration,
    },
    /// The encoded record is larger than the store accepts.
    #[error("session record is {size} bytes, over the store's limit of {limit}")]
    TooLarge {
        /// Encoded size.
        size: usize,
        /// The limit.
        limit: usize,
    },
}

impl StoreError {
    /// A short, stable name for metrics labels and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::Rotated => "rotated",
            Self::Conflict => "conflict",
            Self::Timeout(_) => "timeout",
            Self::Unavailable(_) => "unavailable",
            Self::Corrupt(_) => "corrupt",
            Self::TooLarge { .. } => "too_large",
            Self::Rejected { .. } => "rejected",
        }
    }

    /// Whether the error says the store is not answering (timeout, unavailable, breaker open),
    /// as opposed to an answer about the record. These are what the circuit breaker counts and
    /// what the degraded modes cover.
    pub fn is_unavailability(&self) -> bool {
        matches!(
            self,
            Self::Timeout(_) | Self::Unavailable(_) | Self::Rejected { .. }
        )
    }

    /// Whether a write that failed this way may still have been applied (or may still be
    /// applied later): the store was called, and no answer about the record came back.
    pub fn is_ambiguous(&self) -> bool {
        matches!(self, Self::Timeout(_) | Self::Unavailable(_))
    }
}

/// Where sessions live.
///
/// Implementations write `async fn` in their `impl` blocks; the futures must be `Send`. The session
/// layer puts a deadline on every call, so a store need not time out on its own (but a network store
/// should still bound its own queues; see [`keeps_deadlines`](Self::keeps_deadlines)).
pub trait SessionStore: Send + Sync + 'static {
    /// Reads a record; `Ok(None)` if it is missing or expired.
    fn load(
        &self,
        id: SessionId,
    ) -> impl Future<Output = Result<Option<Record>, StoreError>> + Send;

    /// Stores a new record; [`StoreError::Conflict`] if the id exists.
    fn create(
        &self,
        record: &Record,
        write: WriteId,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Replaces a record if its stored version is `expected_version`. `record.version` is the new
    /// version (the layer sets it to `expected_version + 1`). Never creates a record.
    fn save(
        &self,
        record: &Record,
        expected_version: u64,
        write: WriteId,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Moves the idle deadline (and so the time to live) without changing the version.
    fn touch(
        &self,
        id: SessionId,
        idle_deadline: UnixMillis,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// In one atomic step: checks `old`'s version is `expected_version`, replaces `old` with a
    /// marker (see [Rotated ids](self#rotated-ids)), and stores `record` under its (new) id.
    fn rotate(
        &self,
        old: SessionId,
        record: &Record,
        expected_version: u64,
        write: WriteId,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Learns whether the write `write` was applied, after its reply was lost; if it was not,
    /// makes sure it never will be. `old` and `new` are the ids the write named (the same for
    /// `create` and `save`) and `expected_version` the version it expected (0 for `create`).
    fn settle(
        &self,
        old: SessionId,
        new: SessionId,
        expected_version: u64,
        write: WriteId,
    ) -> impl Future<Output = Result<Settled, StoreError>> + Send;

    /// Deletes a record. Deleting a missing record is not an error; an id that `rotate` moved away
    /// from answers [`StoreError::Rotated`] and nothing is deleted (a logout that named the
    /// pre-login id must not end the session the login made).
    fn destroy(&self, id: SessionId) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Deletes every session whose `user_id` is `user_id`; returns how many were deleted.
    ///
    /// When it returns, no session of the user that existed when it was called still loads, nor
    /// any id such a session was rotated to meanwhile: a rotation that races it either lands
    /// before it (and its new id is deleted too) or fails.
    ///
    /// Only the sessions of `user_id` within `tenant` (the record's `meta.tenant`): the same user
    /// id in another tenant is another user.
    fn destroy_user(
        &self,
        tenant: Option<&str>,
        user_id: &str,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// The clock this store keeps time by, if it keeps its own: the session layer adopts it, so
    /// one clock injected into a store (a [`ManualClock`](crate::clock::ManualClock) in a test)
    /// drives the store, the layer and its circuit breaker alike. The default, `None`, suits a
    /// store whose server keeps time (Redis expires keys by its own clock); the layer then uses
    /// the system clock.
    fn clock(&self) -> Option<Arc<dyn Clock>> {
        None
    }

    /// What kind of store this is, for traces: the session layer's store spans carry it as
    /// `db.system.name` (OpenTelemetry's attribute; `"redis"` for Redis). The default is
    /// `"other"`.
    fn system_name(&self) -> &'static str {
        "other"
    }

    /// Whether the store answers from this process's memory, so that it is never unreachable,
    /// and never slow the way a server is: the session layer then builds no default circuit
    /// breaker for it (one given with `circuit_breaker` still applies). The default, `false`,
    /// is right for any store behind a connection, and for any wrapper: a wrapper that can fail
    /// does not forward this.
    fn in_process(&self) -> bool {
        false
    }

    /// Whether every call answers by the [`Deadline`] current when it was made (with
    /// [`StoreError::Timeout`] if need be), and leaves nothing queued that could still reach the
    /// store after it. The session layer then sets no timer of its own around the store's calls
    /// (it still makes its deadline current). The default, `false`, makes the layer bound every
    /// call with its own timer, which is right for any store that does not read the deadline, and
    /// for any wrapper: a wrapper that can wait on its own does not forward this.
    ///
    /// A store behind a connection should read the deadline even when it answers `false` here: a
    /// call the layer gave up on is dropped, and a command it left in a client's queue could
    /// otherwise be sent long after, when the layer has already settled the write it carried.
    fn keeps_deadlines(&self) -> bool {
        false
    }
}

impl<S: SessionStore> SessionStore for Arc<S> {
    async fn load(&self, id: SessionId) -> Result<Option<Record>, StoreError> {
        (**self).load(id).await
    }
    async fn create(&self, record: &Record, write: WriteId) -> Result<(), StoreError> {
        (**self).create(record, write).await
    }
    async fn save(
        &self,
        record: &Record,
        expected_version: u64,
        write: WriteId,
    ) -> Result<(), StoreError> {
        (**self).save(record, expected_version, write).await
    }
    async fn touch(&self, id: SessionId, idle_deadline: UnixMillis) -> Result<(), StoreError> {
        (**self).touch(id, idle_deadline).await
    }
    async fn rotate(
        &self,
        old: SessionId,
        record: &Record,
        expected_version: u64,
        write: WriteId,
    ) -> Result<(), StoreError> {
        (**self).rotate(old, record, expected_version, write).await
    }
    async fn settle(
        &self,
        old: SessionId,
        new: SessionId,
        expected_version: u64,
        write: WriteId,
    ) -> Result<Settled, StoreError> {
        (**self).settle(old, new, expected_version, write).await
    }
    async fn destroy(&self, id: SessionId) -> Result<(), StoreError> {
        (**self).destroy(id).await
    }
    async fn destroy_user(&self, tenant: Option<&str>, user_id: &str) -> Result<u64, StoreError> {
        (**self).destroy_user(tenant, user_id).await
    }
    fn clock(&self) -> Option<Arc<dyn Clock>> {
        (**self).clock()
    }
    fn system_name(&self) -> &'static str {
        (**self).system_name()
    }
    fn in_process(&self) -> bool {
        (**self).in_process()
    }
    fn keeps_deadlines(&self) -> bool {
        (**self).keeps_deadlines()
    }
}

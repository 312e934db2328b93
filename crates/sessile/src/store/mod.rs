//! The storage interface, and the stores that ship with the core crate.
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
//! | [`destroy`](SessionStore::destroy) | always (idempotent) | |
//! | [`destroy_user`](SessionStore::destroy_user) | always | |
//!
//! `save` and `rotate` never create a record: a session that was destroyed, rotated away or expired
//! stays gone, whatever requests were still in flight with it. That is what makes logout final.
//!
//! Every store must pass the `sessile-conformance` suite.

mod memory;

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use thiserror::Error;

pub use memory::{DEFAULT_SWEEP_INTERVAL, MemoryStore, MemoryStoreBuilder};

use crate::SessionId;
use crate::clock::UnixMillis;
use crate::record::{CodecError, Record};

/// Largest encoded record a store accepts unless configured otherwise: 1 MiB, which is far beyond
/// what belongs in a session and well under Redis's limits.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1 << 20;

/// Encodes a record's body for storage, refusing it when larger than `limit` bytes.
pub fn encode_record(record: &Record, limit: usize) -> Result<Vec<u8>, StoreError> {
    let body = record.encode_body().map_err(StoreError::Corrupt)?;
    if body.len() > limit {
        return Err(StoreError::TooLarge {
            size: body.len(),
            limit,
        });
    }
    Ok(body)
}

/// Why a store operation failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The record does not exist (never did, expired, destroyed or rotated away).
    #[error("session record not found")]
    NotFound,
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
}

/// Where sessions live.
///
/// Implementations write `async fn` in their `impl` blocks; the futures must be `Send`. The session
/// layer puts a deadline on every call, so a store need not time out on its own (but a network store
/// should still bound its own queues).
pub trait SessionStore: Send + Sync + 'static {
    /// Reads a record; `Ok(None)` if it is missing or expired.
    fn load(
        &self,
        id: SessionId,
    ) -> impl Future<Output = Result<Option<Record>, StoreError>> + Send;

    /// Stores a new record; [`StoreError::Conflict`] if the id exists.
    fn create(&self, record: &Record) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Replaces a record if its stored version is `expected_version`. `record.version` is the new
    /// version (the layer sets it to `expected_version + 1`). Never creates a record.
    fn save(
        &self,
        record: &Record,
        expected_version: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Moves the idle deadline (and so the time to live) without changing the version.
    fn touch(
        &self,
        id: SessionId,
        idle_deadline: UnixMillis,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// In one atomic step: checks `old`'s version is `expected_version`, deletes `old`, and stores
    /// `record` under its (new) id.
    fn rotate(
        &self,
        old: SessionId,
        record: &Record,
        expected_version: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Deletes a record. Deleting a missing record is not an error.
    fn destroy(&self, id: SessionId) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Deletes every session whose `user_id` is `user_id`; returns how many were deleted.
    fn destroy_user(&self, user_id: &str) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

/// A boxed, sendable future.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Object-safe mirror of [`SessionStore`], so the layer and the `Session` handle need no store type
/// parameter. One allocation per store call is noise next to the call itself.
pub(crate) trait DynStore: Send + Sync + 'static {
    fn load(&self, id: SessionId) -> BoxFuture<'_, Result<Option<Record>, StoreError>>;
    fn create<'a>(&'a self, record: &'a Record) -> BoxFuture<'a, Result<(), StoreError>>;
    fn save<'a>(
        &'a self,
        record: &'a Record,
        expected: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    fn touch(
        &self,
        id: SessionId,
        idle_deadline: UnixMillis,
    ) -> BoxFuture<'_, Result<(), StoreError>>;
    fn rotate<'a>(
        &'a self,
        old: SessionId,
        record: &'a Record,
        expected: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    fn destroy(&self, id: SessionId) -> BoxFuture<'_, Result<(), StoreError>>;
    fn destroy_user<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, Result<u64, StoreError>>;
}

impl<S: SessionStore> DynStore for S {
    fn load(&self, id: SessionId) -> BoxFuture<'_, Result<Option<Record>, StoreError>> {
        Box::pin(SessionStore::load(self, id))
    }
    fn create<'a>(&'a self, record: &'a Record) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(SessionStore::create(self, record))
    }
    fn save<'a>(
        &'a self,
        record: &'a Record,
        expected: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(SessionStore::save(self, record, expected))
    }
    fn touch(
        &self,
        id: SessionId,
        idle_deadline: UnixMillis,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(SessionStore::touch(self, id, idle_deadline))
    }
    fn rotate<'a>(
        &'a self,
        old: SessionId,
        record: &'a Record,
        expected: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(SessionStore::rotate(self, old, record, expected))
    }
    fn destroy(&self, id: SessionId) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(SessionStore::destroy(self, id))
    }
    fn destroy_user<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(SessionStore::destroy_user(self, user_id))
    }
}

impl<S: SessionStore> SessionStore for std::sync::Arc<S> {
    async fn load(&self, id: SessionId) -> Result<Option<Record>, StoreError> {
        (**self).load(id).await
    }
    async fn create(&self, record: &Record) -> Result<(), StoreError> {
        (**self).create(record).await
    }
    async fn save(&self, record: &Record, expected_version: u64) -> Result<(), StoreError> {
        (**self).save(record, expected_version).await
    }
    async fn touch(&self, id: SessionId, idle_deadline: UnixMillis) -> Result<(), StoreError> {
        (**self).touch(id, idle_deadline).await
    }
    async fn rotate(
        &self,
        old: SessionId,
        record: &Record,
        expected_version: u64,
    ) -> Result<(), StoreError> {
        (**self).rotate(old, record, expected_version).await
    }
    async fn destroy(&self, id: SessionId) -> Result<(), StoreError> {
        (**self).destroy(id).await
    }
    async fn destroy_user(&self, user_id: &str) -> Result<u64, StoreError> {
        (**self).destroy_user(user_id).await
    }
}

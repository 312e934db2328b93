//! Where sessions live: the [`SessionStore`] trait (from `sessile-core`, re-exported here whole)
//! and [`MemoryStore`], the embedded default.
//!
//! The Redis store is the `sessile-redis` crate. To write a store of your own, depend on
//! `sessile-core` alone, implement [`SessionStore`], and run the `sessile-conformance` suite
//! against it; see the [example](sessile_core::store#a-store-of-your-own).

pub mod cached;
mod memory;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub use cached::{
    CacheStats, CachedStore, CachedStoreBuilder, DEFAULT_MAX_AGE, DEFAULT_MAX_ENTRIES,
};
pub use memory::{DEFAULT_SWEEP_INTERVAL, MemoryStore, MemoryStoreBuilder};
pub use sessile_core::invalidation;
pub use sessile_core::store::*;

use crate::SessionId;
use crate::clock::{Clock, UnixMillis};
use crate::record::Record;

/// A boxed, sendable future.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Object-safe mirror of [`SessionStore`], so the layer and the `Session` handle need no store type
/// parameter. One allocation per store call is noise next to the call itself.
pub(crate) trait DynStore: Send + Sync + 'static {
    fn load(&self, id: SessionId) -> BoxFuture<'_, Result<Option<Record>, StoreError>>;
    fn create<'a>(
        &'a self,
        record: &'a Record,
        write: WriteId,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    fn save<'a>(
        &'a self,
        record: &'a Record,
        expected: u64,
        write: WriteId,
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
        write: WriteId,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    fn settle(
        &self,
        old: SessionId,
        new: SessionId,
        expected: u64,
        write: WriteId,
    ) -> BoxFuture<'_, Result<Settled, StoreError>>;
    fn destroy(&self, id: SessionId) -> BoxFuture<'_, Result<(), StoreError>>;
    fn destroy_user<'a>(
        &'a self,
        tenant: Option<&'a str>,
        user_id: &'a str,
    ) -> BoxFuture<'a, Result<u64, StoreError>>;
    fn clock(&self) -> Option<Arc<dyn Clock>>;
    fn system_name(&self) -> &'static str;
    fn in_process(&self) -> bool;
    fn keeps_deadlines(&self) -> bool;
}

impl<S: SessionStore> DynStore for S {
    fn load(&self, id: SessionId) -> BoxFuture<'_, Result<Option<Record>, StoreError>> {
        Box::pin(SessionStore::load(self, id))
    }
    fn create<'a>(
        &'a self,
        record: &'a Record,
        write: WriteId,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(SessionStore::create(self, record, write))
    }
    fn save<'a>(
        &'a self,
        record: &'a Record,
        expected: u64,
        write: WriteId,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(SessionStore::save(self, record, expected, write))
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
        write: WriteId,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(SessionStore::rotate(self, old, record, expected, write))
    }
    fn settle(
        &self,
        old: SessionId,
        new: SessionId,
        expected: u64,
        write: WriteId,
    ) -> BoxFuture<'_, Result<Settled, StoreError>> {
        Box::pin(SessionStore::settle(self, old, new, expected, write))
    }
    fn destroy(&self, id: SessionId) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(SessionStore::destroy(self, id))
    }
    fn destroy_user<'a>(
        &'a self,
        tenant: Option<&'a str>,
        user_id: &'a str,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(SessionStore::destroy_user(self, tenant, user_id))
    }
    fn clock(&self) -> Option<Arc<dyn Clock>> {
        SessionStore::clock(self)
    }
    fn system_name(&self) -> &'static str {
        SessionStore::system_name(self)
    }
    fn in_process(&self) -> bool {
        SessionStore::in_process(self)
    }
    fn keeps_deadlines(&self) -> bool {
        SessionStore::keeps_deadlines(self)
    }
}

//! Test support for sessile stores, reusable outside this workspace's tests (the benchmark
//! depends on it): store wrappers that count or fail operations ([`Hooked`]), real `redis-server`
//! processes, Clusters and Sentinel groups on loopback ([`redis`]), and a TCP proxy that loses or
//! delays replies on purpose ([`proxy`]).
//!
//! It depends on `sessile-core` only: no session layer, no HTTP.

pub mod proxy;
pub mod redis;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use sessile_core::clock::{Clock, UnixMillis};
use sessile_core::invalidation::{
    Invalidation, InvalidationSink, Listening, PublishesInvalidations,
};
use sessile_core::record::Record;
use sessile_core::store::{Settled, WriteId};
use sessile_core::{SessionId, SessionStore, StoreError};
use tokio::sync::Notify;

/// A store wrapped with a hook that runs before every operation and may fail it.
///
/// [`CountingStore`] and [`FaultyStore`] are the two hooks the tests use. `Hooked` derefs to its
/// hook, so `store.count("load")` and `store.fail_writes(true)` read naturally.
#[derive(Clone)]
pub struct Hooked<S, H> {
    inner: S,
    hook: H,
}

/// Runs before each store operation.
pub trait Hook: Send + Sync + 'static {
    /// Called with the operation's name; an error is returned instead of calling the store.
    fn before(&self, op: &'static str) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Runs after each store operation, before its result is returned (a reply on its way).
    fn after(&self, _op: &'static str) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Called with every event of the wrapped store's invalidation stream before the listener
    /// hears it, on the stream's own task: a hook that blocks here is a consumer that fell behind.
    fn invalidation(&self, _event: &Invalidation) {}
}

impl<S, H> Hooked<S, H> {
    /// Wraps `inner` with any hook.
    pub fn with_hook(inner: S, hook: H) -> Self {
        Self { inner, hook }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S, H> std::ops::Deref for Hooked<S, H> {
    type Target = H;
    fn deref(&self) -> &H {
        &self.hook
    }
}

impl<S, H: Hook> Hooked<S, H> {
    /// Runs `call` between the hook's `before` (which may fail it) and `after`.
    async fn around<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.hook.before(op).await?;
        let result = call.await;
        self.hook.after(op).await;
        result
    }
}

impl<S: SessionStore, H: Hook> SessionStore for Hooked<S, H> {
    async fn load(&self, id: SessionId) -> Result<Option<Record>, StoreError> {
        self.around("load", self.inner.load(id)).await
    }
    async fn create(&self, record: &Record, write: WriteId) -> Result<(), StoreError> {
        self.around("create", self.inner.create(record, write))
            .await
    }
    async fn save(&self, record: &Record, expected: u64, write: WriteId) -> Result<(), StoreError> {
        self.around("save", self.inner.save(record, expected, write))
            .await
    }
    async fn touch(&self, id: SessionId, deadline: UnixMillis) -> Result<(), StoreError> {
        self.around("touch", self.inner.touch(id, deadline)).await
    }
    async fn rotate(
        &self,
        old: SessionId,
        record: &Record,
        expected: u64,
        write: WriteId,
    ) -> Result<(), StoreError> {
        self.around("rotate", self.inner.rotate(old, record, expected, write))
            .await
    }
    async fn settle(
        &self,
        old: SessionId,
        new: SessionId,
        expected: u64,
        write: WriteId,
    ) -> Result<Settled, StoreError> {
        self.around("settle", self.inner.settle(old, new, expected, write))
            .await
    }
    async fn destroy(&self, id: SessionId) -> Result<(), StoreError> {
        self.around("destroy", self.inner.destroy(id)).await
    }
    async fn destroy_user(&self, tenant: Option<&str>, user: &str) -> Result<u64, StoreError> {
        self.around("destroy_user", self.inner.destroy_user(tenant, user))
            .await
    }
    fn clock(&self) -> Option<Arc<dyn Clock>> {
        self.inner.clock()
    }
    fn system_name(&self) -> &'static str {
        self.inner.system_name()
    }
}

/// Counts calls per operation.
#[derive(Clone, Default)]
pub struct Counter {
    counts: Arc<Mutex<HashMap<&'static str, u64>>>,
}

/// A store that counts its calls.
pub type CountingStore<S> = Hooked<S, Counter>;

impl<S> Hooked<S, Counter> {
    /// Wraps `inner`, counting from zero.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            hook: Counter::default(),
        }
    }
}

impl Counter {
    /// Calls of `op` so far.
    pub fn count(&self, op: &str) -> u64 {
        self.counts
            .lock()
            .expect("lock")
            .get(op)
            .copied()
            .unwrap_or(0)
    }

    /// Calls of every operation so far.
    pub fn total(&self) -> u64 {
        self.counts.lock().expect("lock").values().sum()
    }

    /// Forgets the counts.
    pub fn reset(&self) {
        self.counts.lock().expect("lock").clear();
    }
}

impl Hook for Counter {
    async fn before(&self, op: &'static str) -> Result<(), StoreError> {
        *self.counts.lock().expect("lock").entry(op).or_default() += 1;
        Ok(())
    }
}

/// Switchable faults: failing writes, failing loads, or hanging like a paused server.
#[derive(Clone, Default)]
pub struct Faults {
    fail_writes: Arc<AtomicBool>,
    fail_loads: Arc<AtomicBool>,
    hang: Arc<AtomicBool>,
    hung: Arc<Notify>,
}

/// A store whose operations can be made to fail or hang.
pub type FaultyStore<S> = Hooked<S, Faults>;

impl<S> Hooked<S, Faults> {
    /// Wraps `inner` with every fault off.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            hook: Faults::default(),
        }
    }
}

#[derive(Debug)]
struct Injected;
impl std::fmt::Display for Injected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("injected fault")
    }
}
impl std::error::Error for Injected {}

impl Faults {
    /// Makes writes (everything but load) fail as unavailable.
    pub fn fail_writes(&self, on: bool) {
        self.fail_writes.store(on, Ordering::SeqCst);
    }
    /// Makes loads fail as unavailable.
    pub fn fail_loads(&self, on: bool) {
        self.fail_loads.store(on, Ordering::SeqCst);
    }
    /// Makes every operation wait forever (a paused server).
    pub fn hang(&self, on: bool) {
        self.hang.store(on, Ordering::SeqCst);
    }

    /// Woken (`notify_waiters`) whenever an operation starts to hang: register with
    /// `Notified::enable` before starting the operation.
    pub fn hung(&self) -> &Notify {
        &self.hung
    }
}

impl Hook for Faults {
    async fn before(&self, op: &'static str) -> Result<(), StoreError> {
        if self.hang.load(Ordering::SeqCst) {
            self.hung.notify_waiters();
            std::future::pending::<()>().await;
        }
        let flag = if op == "load" {
            &self.fail_loads
        } else {
            &self.fail_writes
        };
        if flag.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable(Box::new(Injected)));
        }
        Ok(())
    }
}

impl<S: PublishesInvalidations, H: Hook + Clone> PublishesInvalidations for Hooked<S, H> {
    async fn listen(&self, sink: InvalidationSink) -> Result<Listening, StoreError> {
        let hook = self.hook.clone();
        self.inner
            .listen(Arc::new(move |event| {
                hook.invalidation(&event);
                sink(event);
            }))
            .await
    }
}

/// A store whose invalidations the test sends by hand ([`emit`](Self::emit)), for unit tests of
/// a cache in front of it. `listen` reports [`Invalidation::Resumed`] at once.
#[derive(Clone)]
pub struct ManualInvalidations<S> {
    inner: S,
    sink: Arc<std::sync::Mutex<Option<InvalidationSink>>>,
}

impl<S> ManualInvalidations<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            sink: Arc::default(),
        }
    }

    /// Delivers `event` to the listener, as the store's stream would.
    pub fn emit(&self, event: Invalidation) {
        let sink = self.sink.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(sink) = sink {
            sink(event);
        }
    }
}

impl<S: SessionStore> SessionStore for ManualInvalidations<S> {
    async fn load(&self, id: SessionId) -> Result<Option<Record>, StoreError> {
        self.inner.load(id).await
    }
    async fn create(&self, record: &Record, write: WriteId) -> Result<(), StoreError> {
        self.inner.create(record, write).await
    }
    async fn save(&self, record: &Record, expected: u64, write: WriteId) -> Result<(), StoreError> {
        self.inner.save(record, expected, write).await
    }
    async fn touch(&self, id: SessionId, deadline: UnixMillis) -> Result<(), StoreError> {
        self.inner.touch(id, deadline).await
    }
    async fn rotate(
        &self,
        old: SessionId,
        record: &Record,
        expected: u64,
        write: WriteId,
    ) -> Result<(), StoreError> {
        self.inner.rotate(old, record, expected, write).await
    }
    async fn settle(
        &self,
        old: SessionId,
        new: SessionId,
        expected: u64,
        write: WriteId,
    ) -> Result<Settled, StoreError> {
        self.inner.settle(old, new, expected, write).await
    }
    async fn destroy(&self, id: SessionId) -> Result<(), StoreError> {
        self.inner.destroy(id).await
    }
    async fn destroy_user(&self, tenant: Option<&str>, user: &str) -> Result<u64, StoreError> {
        self.inner.destroy_user(tenant, user).await
    }
    fn clock(&self) -> Option<Arc<dyn Clock>> {
        self.inner.clock()
    }
    fn system_name(&self) -> &'static str {
        self.inner.system_name()
    }
}

impl<S: SessionStore> PublishesInvalidations for ManualInvalidations<S> {
    async fn listen(&self, sink: InvalidationSink) -> Result<Listening, StoreError> {
        sink(Invalidation::Resumed);
        *self.sink.lock().unwrap_or_else(|e| e.into_inner()) = Some(sink);
        Ok(Listening::new(()))
    }
}

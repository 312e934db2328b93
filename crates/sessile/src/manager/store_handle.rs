use std::sync::Arc;
use std::time::{Duration, Instant};

use sessile_breaker::SharedBreaker;
use tracing::Instrument as _;

use crate::SessionId;
use crate::clock::UnixMillis;
use crate::record::Record;
use crate::store::{BoxFuture, DynStore, StoreError};

/// The store as the layer sees it: every call passes the circuit breaker (if any), gets a
/// deadline, a trace span and metrics.
pub(crate) struct StoreHandle {
    store: Arc<dyn DynStore>,
    timeout: Duration,
    breaker: Option<SharedBreaker>,
}

impl StoreHandle {
    pub(crate) fn new(
        store: Arc<dyn DynStore>,
        timeout: Duration,
        breaker: Option<SharedBreaker>,
    ) -> Self {
        Self {
            store,
            timeout,
            breaker,
        }
    }

    pub(crate) fn breaker(&self) -> Option<&SharedBreaker> {
        self.breaker.as_ref()
    }

    async fn run<T>(
        &self,
        op: &'static str,
        session: Option<SessionId>,
        call: BoxFuture<'_, Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        // `session` is the redacted Display form: never the full id.
        let span = tracing::debug_span!(
            "sessile.store",
            op,
            session = session.map(tracing::field::display),
            outcome = tracing::field::Empty,
        );
        let permit = match self.breaker.as_ref().map(SharedBreaker::acquire) {
            Some(Err(rejected)) => {
                // Open: answer now, without touching the store.
                span.record("outcome", "rejected");
                metrics::counter!("sessile_store_ops_total", "op" => op, "outcome" => "rejected")
                    .increment(1);
                return Err(StoreError::Rejected {
                    retry_after: rejected.retry_after,
                });
            }
            Some(Ok(permit)) => Some(permit),
            None => None,
        };
        let started = Instant::now();
        let result = match tokio::time::timeout(self.timeout, call)
            .instrument(span.clone())
            .await
        {
            Ok(r) => r,
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        };
        if let (Some(breaker), Some(permit)) = (&self.breaker, permit) {
            // Only "the store did not answer" counts against it; not-found, conflicts and the
            // like are answers.
            let failed = result
                .as_ref()
                .err()
                .is_some_and(StoreError::is_unavailability);
            breaker.record(permit, failed);
        }
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.kind(),
        };
        span.record("outcome", outcome);
        metrics::histogram!("sessile_store_op_seconds", "op" => op)
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("sessile_store_ops_total", "op" => op, "outcome" => outcome).increment(1);
        result
    }

    pub(crate) async fn load(&self, id: SessionId) -> Result<Option<Record>, StoreError> {
        self.run("load", Some(id), self.store.load(id)).await
    }

    pub(crate) async fn create(&self, record: &Record) -> Result<(), StoreError> {
        self.run("create", Some(record.id), self.store.create(record))
            .await
    }

    pub(crate) async fn save(&self, record: &Record, expected: u64) -> Result<(), StoreError> {
        self.run("save", Some(record.id), self.store.save(record, expected))
            .await
    }

    pub(crate) async fn touch(
        &self,
        id: SessionId,
        deadline: UnixMillis,
    ) -> Result<(), StoreError> {
        self.run("touch", Some(id), self.store.touch(id, deadline))
            .await
    }

    pub(crate) async fn rotate(
        &self,
        old: SessionId,
        record: &Record,
        expected: u64,
    ) -> Result<(), StoreError> {
        self.run(
            "rotate",
            Some(old),
            self.store.rotate(old, record, expected),
        )
        .await
    }

    pub(crate) async fn destroy(&self, id: SessionId) -> Result<(), StoreError> {
        self.run("destroy", Some(id), self.store.destroy(id)).await
    }

    pub(crate) async fn destroy_user(&self, user: &str) -> Result<u64, StoreError> {
        self.run("destroy_user", None, self.store.destroy_user(user))
            .await
    }
}

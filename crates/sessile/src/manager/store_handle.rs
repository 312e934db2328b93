use std::sync::Arc;
use std::time::Duration;

use metrics::{Key, Label, Level, Metadata};
use sessile_breaker::SharedBreaker;
use tracing::Instrument as _;

use crate::SessionId;
use crate::clock::UnixMillis;
use crate::record::Record;
use crate::store::{BoxFuture, Deadline, DynStore, Settled, StoreError, WriteId};

/// How much earlier than the layer's own timer the deadline falls that a store which does not keep
/// deadlines is shown (at most a quarter of the budget; see `run_with`). Several timer ticks
/// (tokio's are a millisecond), so that the store's own timeout fires first.
const DEADLINE_GRACE: Duration = Duration::from_millis(10);

/// A store operation, as spans, logs and metrics name it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Op {
    Load,
    Create,
    Save,
    Touch,
    Rotate,
    Settle,
    Destroy,
    DestroyUser,
}

impl Op {
    fn as_str(self) -> &'static str {
        OP_LABELS[self as usize][0].value()
    }
}

/// How a store call ended, as the `outcome` label says it: `ok`, or the error's kind.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Ok,
    NotFound,
    Rotated,
    Conflict,
    Timeout,
    Unavailable,
    Corrupt,
    TooLarge,
    Rejected,
}

impl Outcome {
    fn of<T>(result: &Result<T, StoreError>) -> Self {
        match result {
            Ok(_) => Self::Ok,
            Err(StoreError::NotFound) => Self::NotFound,
            Err(StoreError::Rotated) => Self::Rotated,
            Err(StoreError::Conflict) => Self::Conflict,
            Err(StoreError::Timeout(_)) => Self::Timeout,
            Err(StoreError::Unavailable(_)) => Self::Unavailable,
            Err(StoreError::Corrupt(_)) => Self::Corrupt,
            Err(StoreError::TooLarge { .. }) => Self::TooLarge,
            Err(StoreError::Rejected { .. }) => Self::Rejected,
            // A kind this build does not know yet (the error is non-exhaustive).
            Err(_) => Self::Unavailable,
        }
    }

    fn as_str(self) -> &'static str {
        OP_OUTCOME_LABELS[0][self as usize][1].value()
    }
}

const OP_SECONDS: &str = "sessile_store_op_seconds";
const OPS_TOTAL: &str = "sessile_store_ops_total";
static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// The static label tables: every operation (in the order of [`Op`]), and every operation and
/// outcome (in the order of [`Op`] and [`Outcome`]).
/// And the metric keys made of them, built (and hashed) at compile time.
macro_rules! label_tables {
    ($($i:literal $op:literal),*) => {
        static OP_LABELS: [[Label; 1]; 8] = [$([Label::from_static_parts("op", $op)]),*];
        static OP_OUTCOME_LABELS: [[[Label; 2]; 9]; 8] = [$(label_tables!(@row $op)),*];
        static OP_SECONDS_KEYS: [Key; 8] =
            [$(Key::from_static_parts(OP_SECONDS, &OP_LABELS[$i])),*];
        static OPS_TOTAL_KEYS: [[Key; 9]; 8] = [$(label_tables!(@keys $i)),*];
    };
    (@row $op:literal) => {
        label_tables!(@cells $op; "ok", "not_found", "rotated", "conflict", "timeout",
            "unavailable", "corrupt", "too_large", "rejected")
    };
    (@cells $op:literal; $($out:literal),*) => {
        [$([Label::from_static_parts("op", $op), Label::from_static_parts("outcome", $out)]),*]
    };
    (@keys $i:literal) => {
        label_tables!(@key_cells $i; 0, 1, 2, 3, 4, 5, 6, 7, 8)
    };
    (@key_cells $i:literal; $($o:literal),*) => {
        [$(Key::from_static_parts(OPS_TOTAL, &OP_OUTCOME_LABELS[$i][$o])),*]
    };
}

label_tables!(
    0 "load",
    1 "create",
    2 "save",
    3 "touch",
    4 "rotate",
    5 "settle",
    6 "destroy",
    7 "destroy_user"
);

/// `sessile_store_ops_total{op, outcome}`.
fn ops_counter(op: Op, outcome: Outcome) -> metrics::Counter {
    let key = &OPS_TOTAL_KEYS[op as usize][outcome as usize];
    metrics::with_recorder(|r| r.register_counter(key, &METADATA))
}

/// Who keeps a store call's deadline.
#[derive(Debug, Clone, Copy)]
enum Bound {
    /// The store, by the deadline the layer makes current.
    Store,
    /// The layer's own timer (and the store is shown the deadline too, a little earlier).
    Layer,
}

/// Why a write did not take effect.
#[derive(Debug)]
pub(crate) enum WriteError {
    /// The store answered: not applied.
    Failed(StoreError),
    /// The reply was lost, and `settle` established that the write was not applied and now never
    /// will be: writing again is safe.
    NotApplied(StoreError),
    /// The reply was lost and the outcome could not be learned: applied once or not at all.
    Unknown(StoreError),
}

/// The store as the layer sees it: every call passes the circuit breaker (if any), gets a
/// deadline, a trace span and metrics.
pub(crate) struct StoreHandle {
    store: Arc<dyn DynStore>,
    /// `db.system.name` of the store spans.
    system: &'static str,
    timeout: Duration,
    /// Who keeps each call's deadline.
    bound: Bound,
    breaker: Option<SharedBreaker>,
}

impl StoreHandle {
    pub(crate) fn new(
        store: Arc<dyn DynStore>,
        timeout: Duration,
        breaker: Option<SharedBreaker>,
    ) -> Self {
        Self {
            system: store.system_name(),
            bound: if store.keeps_deadlines() {
                Bound::Store
            } else {
                Bound::Layer
            },
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
        op: Op,
        session: Option<SessionId>,
        call: BoxFuture<'_, Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.run_with(op, session, call, self.breaker.as_ref())
            .await
    }

    async fn run_with<T>(
        &self,
        op: Op,
        session: Option<SessionId>,
        call: BoxFuture<'_, Result<T, StoreError>>,
        breaker: Option<&SharedBreaker>,
    ) -> Result<T, StoreError> {
        // `session` is the redacted Display form: never the full id.
        // OpenTelemetry's database attributes, as tracing users expect them.
        let span = tracing::debug_span!(
            "sessile.store",
            db.system.name = self.system,
            db.operation.name = op.as_str(),
            session = session.map(tracing::field::display),
            outcome = tracing::field::Empty,
        );
        // One reading of the clock for the deadline, the timer and the latency histogram. tokio's
        // clock, so that a test with paused time moves the timer.
        let started = tokio::time::Instant::now();
        let budget = self.timeout;
        let bound = self.bound;
        let call = async move {
            match bound {
                // The deadline is current for the store, which answers by then by itself.
                Bound::Store => {
                    Deadline::starting(started.into_std(), budget)
                        .scope(call)
                        .await
                }
                // Any other store is shown a deadline a little before our timer fires: one that
                // reads it (a wrapper around one that keeps deadlines) times its commands out
                // first, so that its client drops them rather than sending them after we gave up.
                Bound::Layer => {
                    let shown = budget - DEADLINE_GRACE.min(budget / 4);
                    let call = Deadline::starting(started.into_std(), shown).scope(call);
                    match tokio::time::timeout_at(started + budget, call).await {
                        Ok(r) => r,
                        Err(_) => Err(StoreError::Timeout(budget)),
                    }
                }
            }
        };
        // Only "the store did not answer" counts against the breaker; not-found, conflicts and
        // the like are answers. The guard inside `Guarded` settles the permit even if this
        // future is dropped (a client that went away, an outer timeout).
        let unavailable =
            |r: &Result<T, StoreError>| r.as_ref().err().is_some_and(StoreError::is_unavailability);
        let result = match breaker {
            None => call.instrument(span.clone()).await,
            Some(breaker) => match breaker.call(|| call, unavailable) {
                Ok(guarded) => guarded.instrument(span.clone()).await,
                Err(rejected) => {
                    // Open: answer now, without touching the store.
                    span.record("outcome", "rejected");
                    ops_counter(op, Outcome::Rejected).increment(1);
                    return Err(StoreError::Rejected {
                        retry_after: rejected.retry_after,
                    });
                }
            },
        };
        let outcome = Outcome::of(&result);
        span.record("outcome", outcome.as_str());
        // Keys built at compile time: no allocation or hashing per call.
        metrics::with_recorder(|r| r.register_histogram(&OP_SECONDS_KEYS[op as usize], &METADATA))
            .record(started.elapsed().as_secs_f64());
        ops_counter(op, outcome).increment(1);
        result
    }

    pub(crate) async fn load(&self, id: SessionId) -> Result<Option<Record>, StoreError> {
        self.run(Op::Load, Some(id), self.store.load(id)).await
    }

    /// Runs a write; if its outcome is unclear (a timeout, a dropped connection, this layer's
    /// deadline), asks the store whether it was applied instead of guessing. A write is therefore
    /// never reported failed when it landed, and never replayed when it may have landed.
    async fn write<'a>(
        &'a self,
        op: Op,
        (old, new, expected): (SessionId, SessionId, u64),
        call: impl FnOnce(WriteId) -> BoxFuture<'a, Result<(), StoreError>>,
    ) -> Result<(), WriteError> {
        let write = WriteId::random();
        let error = match self.run(op, Some(new), call(write)).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_ambiguous() => e,
            Err(e) => return Err(WriteError::Failed(e)),
        };
        // Not subject to the breaker: the write that just failed may well have opened it, and an
        // unsettled write could still land later. One call per unclear write, with its deadline.
        let settled = self
            .run_with(
                Op::Settle,
                Some(new),
                self.store.settle(old, new, expected, write),
                None,
            )
            .await;
        let outcome = match &settled {
            Ok(Settled::Applied) => "applied",
            Ok(Settled::NotApplied) => "not_applied",
            Ok(Settled::Unknown) | Err(_) => "unknown",
        };
        metrics::counter!("sessile_writes_settled_total", "op" => op.as_str(), "outcome" => outcome)
            .increment(1);
        tracing::warn!(op = op.as_str(), outcome, error = %error, "session write outcome was unclear; settled");
        match settled {
            Ok(Settled::Applied) => Ok(()),
            Ok(Settled::NotApplied) => Err(WriteError::NotApplied(error)),
            Ok(Settled::Unknown) | Err(_) => Err(WriteError::Unknown(error)),
        }
    }

    pub(crate) async fn create(&self, record: &Record) -> Result<(), WriteError> {
        self.write(Op::Create, (record.id, record.id, 0), |w| {
            self.store.create(record, w)
        })
        .await
    }

    pub(crate) async fn save(&self, record: &Record, expected: u64) -> Result<(), WriteError> {
        self.write(Op::Save, (record.id, record.id, expected), |w| {
            self.store.save(record, expected, w)
        })
        .await
    }

    pub(crate) async fn touch(
        &self,
        id: SessionId,
        deadline: UnixMillis,
    ) -> Result<(), StoreError> {
        self.run(Op::Touch, Some(id), self.store.touch(id, deadline))
            .await
    }

    pub(crate) async fn rotate(
        &self,
        old: SessionId,
        record: &Record,
        expected: u64,
    ) -> Result<(), WriteError> {
        self.write(Op::Rotate, (old, record.id, expected), |w| {
            self.store.rotate(old, record, expected, w)
        })
        .await
    }

    pub(crate) async fn destroy(&self, id: SessionId) -> Result<(), StoreError> {
        self.run(Op::Destroy, Some(id), self.store.destroy(id))
            .await
    }

    pub(crate) async fn destroy_user(
        &self,
        tenant: Option<&str>,
        user: &str,
    ) -> Result<u64, StoreError> {
        self.run(Op::DestroyUser, None, self.store.destroy_user(tenant, user))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_static_labels_name_what_the_errors_and_operations_say() {
        let errors = [
            StoreError::NotFound,
            StoreError::Rotated,
            StoreError::Conflict,
            StoreError::Timeout(Duration::from_millis(1)),
            StoreError::Unavailable("down".into()),
            StoreError::Corrupt(crate::record::CodecError::Layout),
            StoreError::TooLarge { size: 2, limit: 1 },
            StoreError::Rejected {
                retry_after: Duration::from_secs(1),
            },
        ];
        for e in errors {
            let kind = e.kind();
            assert_eq!(Outcome::of::<()>(&Err(e)).as_str(), kind);
        }
        assert_eq!(Outcome::of(&Ok(())).as_str(), "ok");
        let ops = [
            (Op::Load, "load"),
            (Op::Create, "create"),
            (Op::Save, "save"),
            (Op::Touch, "touch"),
            (Op::Rotate, "rotate"),
            (Op::Settle, "settle"),
            (Op::Destroy, "destroy"),
            (Op::DestroyUser, "destroy_user"),
        ];
        for (op, name) in ops {
            assert_eq!(op.as_str(), name);
            for row in &OP_OUTCOME_LABELS[op as usize] {
                assert_eq!(row[0].value(), name);
            }
            // The prebuilt keys: the same names and labels, the same hashes as keys built now.
            let i = op as usize;
            let seconds = &OP_SECONDS_KEYS[i];
            assert_eq!(seconds, &Key::from_static_parts(OP_SECONDS, &OP_LABELS[i]));
            assert_eq!(
                seconds.get_hash(),
                Key::from_static_parts(OP_SECONDS, &OP_LABELS[i]).get_hash()
            );
            for (o, key) in OPS_TOTAL_KEYS[i].iter().enumerate() {
                let now = Key::from_static_parts(OPS_TOTAL, &OP_OUTCOME_LABELS[i][o]);
                assert_eq!((key, key.get_hash()), (&now, now.get_hash()));
            }
        }
    }
}

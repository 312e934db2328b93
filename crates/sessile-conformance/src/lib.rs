//! The conformance suite for [`sessile_core::SessionStore`] implementations.
//!
//! Every store must pass it. Invoke the macro in a test file with an async factory returning a
//! fresh, empty store and a guard that must live as long as the store (a server process, say; `()`
//! when there is none). Each case becomes its own `#[tokio::test]` on a multi-threaded runtime:
//!
//! ```ignore
//! sessile_conformance::store_conformance!(|| async { (sessile::MemoryStore::new(), ()) });
//! ```
//!
//! Where a fresh backend per case is too costly (a Redis Cluster), [`run_all`] runs every case in
//! one test, each on a fresh store from the factory.
//!
//! Records are made with deadlines relative to the system clock, so the store under test must use
//! the system clock (a Redis server does).

mod records;
mod users;
mod writes;

pub use records::*;
pub use users::*;
pub use writes::*;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sessile_core::record::{Metadata, Payload, Record};
use sessile_core::store::{Settled, WriteId};
use sessile_core::{SessionId, SessionStore, StoreError};

/// Calls `$m!({ extra tokens } case, case, ...)` with every case: the one list both entry points
/// use.
#[doc(hidden)]
#[macro_export]
macro_rules! __for_each_case {
    ($m:path { $($extra:tt)* }) => {
        $m!(
            { $($extra)* }
            create_then_load_round_trips,
            create_refuses_an_existing_id,
            save_is_compare_and_set,
            save_never_creates,
            destroy_is_final,
            rotate_moves_the_record_atomically,
            touch_moves_the_deadline_only,
            expired_records_are_gone,
            destroy_user_ends_only_that_users_sessions,
            a_save_that_changes_the_user_moves_the_session_between_users,
            concurrent_increments_are_never_lost,
            destroy_beats_concurrent_saves,
            oversized_records_are_refused,
            settle_tells_whether_a_write_was_applied,
            destroy_user_catches_sessions_rotating_meanwhile,
            destroy_user_is_per_tenant,
        );
    };
}

/// One `#[tokio::test]` per case, each on a store from the factory.
#[doc(hidden)]
#[macro_export]
macro_rules! __tests {
    ({ $factory:expr } $($case:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (store, _guard) = ($factory)().await;
                $crate::$case(::std::sync::Arc::new(store)).await;
            }
        )*
    };
}

/// Expands to one `#[tokio::test]` per conformance case, in a module named `conformance`.
#[macro_export]
macro_rules! store_conformance {
    ($factory:expr) => {
        mod conformance {
            use super::*;
            $crate::__for_each_case!($crate::__tests { $factory });
        }
    };
}

/// Runs every case in order, each on a fresh store from `make`.
pub async fn run_all<S, F, Fut>(mut make: F)
where
    S: SessionStore,
    F: FnMut() -> Fut,
    Fut: Future<Output = S>,
{
    macro_rules! run {
        ({} $($case:ident),* $(,)?) => {
            $( $case(Arc::new(make().await)).await; )*
        };
    }
    __for_each_case!(run {});
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A record that lives for an hour, with `counter = n` and an optional user.
pub fn record(user: Option<&str>, n: u64) -> Record {
    let now = now_ms();
    let mut data = Payload::default();
    data.insert("counter".into(), n.to_be_bytes().to_vec());
    data.insert("theme".into(), b"dark".to_vec());
    Record {
        id: SessionId::random(),
        version: 1,
        idle_deadline: now + 3_600_000,
        meta: Metadata {
            created_at: now,
            absolute_deadline: now + 7_200_000,
            user_id: user.map(str::to_owned),
            tenant: Some("t1".into()),
            hint: "node-1".into(),
        },
        data,
    }
}

fn counter(r: &Record) -> u64 {
    let bytes = r.data.get("counter").expect("counter present");
    u64::from_be_bytes(bytes.try_into().expect("8 bytes"))
}

fn with_counter(r: &Record, n: u64) -> Record {
    let mut next = r.clone();
    next.version = r.version + 1;
    next.data.insert("counter".into(), n.to_be_bytes().to_vec());
    next
}

async fn must_load<S: SessionStore>(store: &S, id: SessionId) -> Record {
    store
        .load(id)
        .await
        .expect("load succeeds")
        .expect("record present")
}

async fn absent<S: SessionStore>(store: &S, id: SessionId) -> bool {
    store.load(id).await.expect("load succeeds").is_none()
}

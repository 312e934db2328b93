//! The contract between sessile's session layer and the stores that keep sessions.
//!
//! A store implementer needs this crate and nothing else: the session id ([`SessionId`]), the
//! record and its codec ([`record`]), the [`SessionStore`] trait with its errors and its
//! exactly-once rules ([`store`]), and the [`Clock`] both sides keep time by. The
//! session layer itself (cookies, tokens, the circuit breaker, axum) is in the `sessile` crate,
//! which re-exports everything here.
//!
//! Every store must pass the `sessile-conformance` suite.

pub mod clock;
mod id;
pub mod invalidation;
mod payload;
pub mod record;
pub mod store;

pub use clock::Clock;
pub use id::{SessionId, push_hex, push_hex_bytes};
pub use store::{SessionStore, StoreError};

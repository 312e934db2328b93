#![doc = include_str!("../../../README.md")]
//!
//! ## What happens per request
//!
//! 1. The layer keeps the request's `Cookie` headers and puts a lazy session handle into the
//!    request extensions. Nothing is parsed, opened or loaded yet.
//! 2. The handler extracts [`Session`]; only then is the cookie's token opened with the key ring
//!    (a token that does not open is "no session", so garbage cookies cost no store call) and the
//!    record loaded. Handlers that do not ask for the session cost no cryptography, no store call,
//!    and get no `Set-Cookie`.
//! 3. After the handler, the layer writes only what changed: `create` for a new session, a
//!    compare-and-set `save` for changes (replaying the request's operations on a conflict), an
//!    atomic `rotate` after [`Session::cycle_id`], a `destroy` after [`Session::destroy`], or, for a
//!    read-only request, at most a throttled `touch`.
//! 4. `Set-Cookie` is sent only when the token changes or the cookie's expiry must move; such
//!    responses get `Cache-Control: no-store`, and every response that used the session gets
//!    `Vary: Cookie`.
//!
//! ## Failure
//!
//! Every store call has a deadline and passes a circuit breaker ([`breaker`]; on by default). When
//! the record cannot be loaded because the store is unreachable, the [`DegradedMode`] decides:
//! reject with 503 and `Retry-After` (the default), serve a recent local copy read-only, or run the
//! handler on an empty session; the latter two are flagged ([`Session::is_degraded`]) and never
//! written, so a stand-in never overwrites the real record or the user's cookie. If changes cannot
//! be saved, the response goes out as the handler made it, without a new cookie, carrying
//! [`SaveFailed`] in its extensions (and through the
//! [`on_save_error`](SessionManagerBuilder::on_save_error) hook, if set); the failure is logged and
//! counted.
//!
//! ## Security
//!
//! * Session ids are 128 bits, made only by the server, of which at least 112 are random (a
//!   logged-in user's ids share a 16-bit partition); clients hold a sealed token.
//! * Cookies default to `Secure; HttpOnly; SameSite=Lax; Path=/`. Prefer a `__Host-` name.
//! * [`Session::log_in`] gives the session a new id, which prevents fixation; [`Session::destroy`] on logout is final even
//!   against requests still in flight.
//! * Ids and tokens never appear in full in logs or `Debug` output.

pub mod config;
mod error;
mod extract;
mod hint;
mod manager;
mod session;
pub mod store;

pub use sessile_core::{clock, record};

pub use config::DegradedMode;
pub use error::{ConfigError, SaveError, SaveFailed, SessionError, SessionRejection};
pub use hint::{AffinityHints, HintSource};
pub use manager::{
    MAX_SESSION_COOKIES, REROUTE_HEADER, RePin, RePinHook, ResponseFuture, STORE_BREAKER_NAME,
    SaveErrorHook, SessionManager, SessionManagerBuilder, SessionManagerLayer,
};
pub use sessile_breaker as breaker;
pub use sessile_core::SessionId;
pub use sessile_token::{Hint, KeyRing};
pub use session::{Session, SessionInfo};
pub use store::{MemoryStore, SessionStore, StoreError};

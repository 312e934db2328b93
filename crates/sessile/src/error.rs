//! Every error type of the session layer, and how each becomes an HTTP response.

use std::sync::Arc;
use std::time::Duration;

use axum_core::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header::RETRY_AFTER};
use sessile_token::TokenConfigError;
use thiserror::Error;

use crate::store::StoreError;

/// An error from the typed session API.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SessionError {
    /// A value could not be serialized.
    #[error("value for session key {key:?} could not be serialized")]
    Serialize {
        /// The key.
        key: String,
        /// Why.
        #[source]
        source: rmp_serde::encode::Error,
    },
    /// A stored value is not of the requested type.
    #[error("value under session key {key:?} is not of the requested type")]
    Deserialize {
        /// The key.
        key: String,
        /// Why.
        #[source]
        source: rmp_serde::decode::Error,
    },
    /// The change would take the payload over the configured limit; it was not applied.
    #[error("session payload would be {size} bytes, over the limit of {limit}")]
    PayloadTooLarge {
        /// Size the payload would have had.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The operation needs a logged-in user ([`Session::log_in`](crate::Session::log_in)) and there
    /// is none.
    #[error("the session has no user id")]
    NoUser,
    /// The store failed.
    #[error("session store operation failed")]
    Store(#[source] StoreError),
}

/// Why the changes a request made to its session were not saved.
///
/// The layer never turns this into a silent empty response: the handler's response goes out as it
/// was (without a new cookie), and the error is logged, counted, and attached to the response's
/// extensions as [`SaveFailed`] for an outer layer to act on.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SaveError {
    /// The store failed (timeout, unavailable, corrupt record, too large).
    #[error("session store failed while saving")]
    Store(#[source] StoreError),
    /// Replaying this request's operations on a newer version of the record failed.
    #[error("session changes could not be replayed on the current record")]
    Replay(#[source] SessionError),
    /// The record kept changing under this request.
    #[error("session changed concurrently on {attempts} attempts; changes not saved")]
    Contended {
        /// Attempts made.
        attempts: u32,
    },
    /// The store could not be reached when the session was loaded, so the handler worked on a
    /// degraded stand-in; its changes were not written, on purpose, so that a stand-in never
    /// overwrites the real record.
    #[error("session store unreachable: changes to the degraded session were not saved")]
    Degraded,
    /// The session was destroyed or expired while the request ran. Its changes were discarded on
    /// purpose: a logout is final. The response removes the cookie.
    #[error("session ended while the request ran; its changes were discarded")]
    Ended,
    /// The session was given a new id (a login, [`Session::cycle_id`](crate::Session::cycle_id))
    /// by another request while this one ran with the old id. Its changes were discarded (a
    /// request made before a login must not write into the logged-in session), and the response
    /// leaves the browser's cookie alone, so it cannot undo the login when it arrives late.
    #[error("session was given a new id while the request ran; its changes were discarded")]
    Rotated,
    /// The store's reply to the write was lost and whether the write was applied could not be
    /// learned. It was applied once or not at all, never twice; the cookie is left as it was.
    #[error("session save outcome unknown: applied once or not at all")]
    Unknown(#[source] StoreError),
}

impl SaveError {
    /// A short, stable name for metrics labels and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Store(e) => e.kind(),
            Self::Replay(_) => "replay",
            Self::Contended { .. } => "contended",
            Self::Degraded => "degraded",
            Self::Ended => "ended",
            Self::Rotated => "rotated",
            Self::Unknown(_) => "unknown",
        }
    }
}

/// Response extension present when a request's session changes were not saved.
#[derive(Debug, Clone)]
pub struct SaveFailed(pub Arc<SaveError>);

impl std::ops::Deref for SaveFailed {
    type Target = SaveError;
    fn deref(&self) -> &SaveError {
        &self.0
    }
}

/// A setting is out of range or contradicts another.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The cookie name or key ring is not usable for tokens.
    #[error("token settings are invalid")]
    Token(#[from] TokenConfigError),
    /// A duration that must be positive is zero.
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    /// The idle timeout is longer than the absolute lifetime.
    #[error("idle timeout ({idle:?}) must not exceed the absolute lifetime ({absolute:?})")]
    IdleExceedsAbsolute {
        /// Idle timeout.
        idle: Duration,
        /// Absolute lifetime.
        absolute: Duration,
    },
    /// The renewal fraction is not within `0.0..=1.0`.
    #[error("renew fraction must be between 0.0 and 1.0, got {0}")]
    RenewFraction(f64),
    /// Cookie attributes that browsers reject: a `__Host-` or `__Secure-` name without the
    /// attributes its prefix demands, or `SameSite=None` without `Secure`.
    #[error("cookie attributes browsers would reject: {0}")]
    Cookie(&'static str),
    /// The store deadline is longer than [`MAX_STORE_TIMEOUT`](crate::config::MAX_STORE_TIMEOUT).
    #[error("store timeout must be at most {max:?}, got {got:?}")]
    StoreTimeout {
        /// The maximum.
        max: Duration,
        /// The value given.
        got: Duration,
    },
    /// The tenant is not 1-64 visible ASCII characters without `:`, `{` or `}` (it is bound into
    /// tokens and store keys).
    #[error("tenant must be 1-64 visible ASCII characters without ':', '{{' or '}}'")]
    Tenant,
}

/// Why the [`Session`](crate::Session) extractor (or [`Session::from_extensions`](crate::Session::from_extensions)) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionRejection {
    /// No `SessionManagerLayer` wraps this route.
    #[error(
        "the Session extractor needs SessionManagerLayer: add `.layer(session_layer)` to the Router"
    )]
    MissingLayer,
    /// The session could not be loaded from the store.
    #[error("the session store is unavailable; try again shortly")]
    Unavailable(#[source] Arc<StoreError>),
}

impl SessionRejection {
    /// The status an HTTP response should carry: 500 for a missing layer (a server bug), 503 when
    /// the store cannot be read.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingLayer => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// How long a client should wait before trying again (`Retry-After`), for a 503: when an open
    /// circuit breaker will let a probe through, at least one second.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::MissingLayer => None,
            Self::Unavailable(error) => Some(match **error {
                StoreError::Rejected { retry_after } => retry_after.max(Duration::from_secs(1)),
                _ => Duration::from_secs(RETRY_AFTER_SECS),
            }),
        }
    }
}

/// `Retry-After` sent with a 503 when the store cannot be read: long enough for a reconnect,
/// short enough that a user pressing reload is served as soon as it is back.
const RETRY_AFTER_SECS: u64 = 1;

impl IntoResponse for SessionRejection {
    /// A missing layer is a server bug (500, logged); an unreachable store is a 503 whose
    /// `Retry-After` says when an open circuit breaker will try again (at least one second).
    fn into_response(self) -> Response {
        if matches!(self, Self::MissingLayer) {
            tracing::error!("{self}");
        }
        let mut res = (self.status(), self.to_string()).into_response();
        if let Some(retry) = self.retry_after() {
            let secs = retry
                .as_secs()
                .saturating_add(u64::from(retry.subsec_nanos() > 0));
            res.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        res
    }
}

impl IntoResponse for SessionError {
    /// Lets handlers use `?` on the session API. Store trouble is a 503 with `Retry-After`; a
    /// value of the wrong type is a server bug (500, logged); an oversized payload is 413; a
    /// session without a user where one is needed is 401.
    fn into_response(self) -> Response {
        let status = match &self {
            Self::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::NoUser => StatusCode::UNAUTHORIZED,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            tracing::error!(error = %loggable(&self), "session error");
        }
        let mut res = (status, self.to_string()).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            res.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        res
    }
}

/// An error as a log line may show it: its own message, then its causes up to the first that may
/// quote session data. serde's messages quote the values they reject (`invalid type: string
/// "..."`), so neither a (de)serialization error nor a record codec error is followed; the
/// store's own causes (a refused connection, a timeout) are.
pub(crate) fn loggable(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        if e.is::<rmp_serde::decode::Error>()
            || e.is::<rmp_serde::encode::Error>()
            || e.is::<crate::record::CodecError>()
            || e.is::<SessionError>()
        {
            break;
        }
        line.push_str(": ");
        line.push_str(&e.to_string());
        cause = e.source();
    }
    line
}

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
    /// The operation needs a logged-in user (`set_user_id`) and there is none.
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

/// Response extension present when a request's session changes were not saved.
#[derive(Debug, Clone)]
pub struct SaveFailed(pub std::sync::Arc<SaveError>);

impl std::ops::Deref for SaveFailed {
    type Target = SaveError;
    fn deref(&self) -> &SaveError {
        &self.0
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

use std::sync::Arc;

use axum_core::extract::FromRequestParts;
use axum_core::response::{IntoResponse, Response};
use http::request::Parts;
use http::{HeaderValue, StatusCode, header::RETRY_AFTER};

use crate::Session;
use crate::manager::service::SessionHandle;
use crate::store::StoreError;

/// Why the [`Session`] extractor failed.
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

/// `Retry-After` sent with a 503 when the store cannot be read: long enough for a reconnect,
/// short enough that a user pressing reload is served as soon as it is back.
const RETRY_AFTER_SECS: &str = "1";

impl IntoResponse for SessionRejection {
    fn into_response(self) -> Response {
        match self {
            Self::MissingLayer => {
                tracing::error!("{self}");
                (StatusCode::INTERNAL_SERVER_ERROR, self.to_string()).into_response()
            }
            Self::Unavailable(ref error) => {
                // An open breaker knows when it will try again; say so, in whole seconds.
                let retry = match **error {
                    StoreError::Rejected { retry_after } => {
                        HeaderValue::from(retry_after.as_secs_f64().ceil().max(1.0) as u64)
                    }
                    _ => HeaderValue::from_static(RETRY_AFTER_SECS),
                };
                let mut res = (StatusCode::SERVICE_UNAVAILABLE, self.to_string()).into_response();
                res.headers_mut().insert(RETRY_AFTER, retry);
                res
            }
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Session {
    type Rejection = SessionRejection;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let handle = parts
            .extensions
            .get::<SessionHandle>()
            .cloned()
            .ok_or(SessionRejection::MissingLayer)?;
        handle
            .0
            .ensure_loaded()
            .await
            .map_err(SessionRejection::Unavailable)?;
        Ok(Session(handle.0))
    }
}

impl IntoResponse for crate::SessionError {
    /// Lets handlers use `?` on the session API. Store trouble is a 503 with `Retry-After`; a
    /// value of the wrong type is a server bug (500, logged); an oversized payload is 413; a
    /// session without a user where one is needed is 401.
    fn into_response(self) -> Response {
        use crate::SessionError as E;
        let status = match &self {
            E::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            E::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            E::NoUser => StatusCode::UNAUTHORIZED,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            tracing::error!(error = %crate::error::loggable(&self), "session error");
        }
        let mut res = (status, self.to_string()).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            res.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECS));
        }
        res
    }
}

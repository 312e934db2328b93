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
            Self::Unavailable(_) => {
                let mut res = (StatusCode::SERVICE_UNAVAILABLE, self.to_string()).into_response();
                res.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECS));
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

//! Getting the request's [`Session`]: the axum extractor, and the same for any tower service.

use axum_core::extract::FromRequestParts;
use http::request::Parts;

use crate::Session;
use crate::error::SessionRejection;
use crate::manager::SessionHandle;

impl Session {
    /// The request's session, from the extensions the session layer put into the request: how a
    /// plain tower service (or any code that holds the request) gets it. The record is loaded
    /// here, once per request; later calls return the same session.
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use http::{Request, Response};
    /// use sessile::{KeyRing, MemoryStore, Session, SessionManagerLayer};
    /// use tower::{ServiceBuilder, ServiceExt, service_fn};
    ///
    /// async fn handle(req: Request<String>) -> Result<Response<String>, Infallible> {
    ///     let session = match Session::from_extensions(req.extensions()).await {
    ///         Ok(session) => session,
    ///         // 500 without the layer; 503 when the store is down (add `Retry-After`).
    ///         Err(rejection) => {
    ///             let mut res = Response::new(rejection.to_string());
    ///             *res.status_mut() = rejection.status();
    ///             return Ok(res);
    ///         }
    ///     };
    ///     let n = session.update("hits", |n: Option<u64>| n.unwrap_or(0) + 1).unwrap_or(0);
    ///     Ok(Response::new(format!("hit {n}")))
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let layer = SessionManagerLayer::builder(MemoryStore::new(), KeyRing::random(1)).build()?;
    /// let svc = ServiceBuilder::new().layer(layer).service(service_fn(handle));
    /// let res = svc.oneshot(Request::new(String::new())).await?;
    /// assert_eq!(res.body(), "hit 1");
    /// assert!(res.headers().contains_key(http::header::SET_COOKIE));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`SessionRejection::MissingLayer`] when no session layer wraps the service;
    /// [`SessionRejection::Unavailable`] when the store could not be read and the
    /// [`DegradedMode`](crate::DegradedMode) does not serve a stand-in.
    pub async fn from_extensions(extensions: &http::Extensions) -> Result<Self, SessionRejection> {
        let handle = extensions
            .get::<SessionHandle>()
            .ok_or(SessionRejection::MissingLayer)?;
        handle
            .0
            .ensure_loaded()
            .await
            .map_err(SessionRejection::Unavailable)?;
        Ok(Session(handle.0.clone()))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Session {
    type Rejection = SessionRejection;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Session::from_extensions(&parts.extensions).await
    }
}

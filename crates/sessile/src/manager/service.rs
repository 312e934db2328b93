//! The tower service: puts the lazy session handle into the request, runs the inner service,
//! then saves what the handler changed and sets the cookie.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::Shared;
use super::cookie;
use super::request::{Cookies, RequestSession};
use crate::error::SaveFailed;

/// The service built by [`SessionManagerLayer`](super::SessionManagerLayer).
///
/// Per request it puts a lazy session handle (holding the request's `Cookie` headers) into the
/// request extensions, runs the inner service, and then saves what the handler changed. The token
/// is opened, and the record loaded, only if the handler extracts the session; a token that fails
/// to open is simply no session.
#[derive(Clone)]
pub struct SessionManager<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> std::fmt::Debug for SessionManager<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionManager").finish_non_exhaustive()
    }
}

impl<S> SessionManager<S> {
    pub(crate) fn from_shared(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// The handle the layer puts into request extensions; the `Session` extractor takes it from there.
#[derive(Clone)]
pub(crate) struct SessionHandle(pub(crate) Arc<RequestSession>);

pin_project! {
    /// Response future of [`SessionManager`]: the inner service's future, then, when the request
    /// changed its session or renewal is due, the save (boxed: most requests only read, and
    /// finish without it). The inner future is dropped as soon as it completes, before the save.
    pub struct ResponseFuture<F, B> {
        #[pin]
        state: State<F, B>,
    }
}

pin_project! {
    #[project = StateProj]
    #[project_replace = StateReplace]
    enum State<F, B> {
        Inner {
            #[pin]
            future: F,
            session: Arc<RequestSession>,
        },
        Saving {
            future: Pin<Box<dyn Future<Output = Response<B>> + Send>>,
        },
        Done,
    }
}

impl<F, B> std::fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            State::Inner { .. } => "inner",
            State::Saving { .. } => "saving",
            State::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Send + 'static,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Inner { future, .. } => {
                    let res = ready!(future.poll(cx));
                    let StateReplace::Inner { session, .. } =
                        state.as_mut().project_replace(State::Done)
                    else {
                        unreachable!("the state was Inner");
                    };
                    let mut res = res?;
                    if !session.loaded.initialized() {
                        // The handler never asked for the session: nothing to save, no cookie.
                        return Poll::Ready(Ok(res));
                    }
                    cookie::vary_on_cookie(res.headers_mut());
                    if session.committed_without_store(res.status()) {
                        return Poll::Ready(Ok(res));
                    }
                    let future = Box::pin(async move {
                        finish(&session, &mut res).await;
                        res
                    });
                    state.set(State::Saving { future });
                }
                StateProj::Saving { future } => {
                    let res = ready!(future.as_mut().poll(cx));
                    state.set(State::Done);
                    return Poll::Ready(Ok(res));
                }
                StateProj::Done => panic!("ResponseFuture polled after completion"),
            }
        }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SessionManager<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        // Only the headers are kept (a reference-count bump each); parsing and opening the token
        // wait until a handler asks for the session.
        let cookies = Cookies::from_headers(req.headers());
        let reroute = req.headers().get(super::REROUTE_HEADER).cloned();
        let session = Arc::new(RequestSession::new(
            Arc::clone(&self.shared),
            cookies,
            reroute,
        ));
        req.extensions_mut()
            .insert(SessionHandle(Arc::clone(&session)));
        // The clone that was polled ready is the one that must be called.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture {
            state: State::Inner {
                future: inner.call(req),
                session,
            },
        }
    }
}

async fn finish<B>(session: &RequestSession, res: &mut Response<B>) {
    let commit = session.commit(res.status()).await;
    if let Some(error) = commit.error {
        metrics::counter!("sessile_save_failures_total", "kind" => error.kind()).increment(1);
        tracing::warn!(
            kind = error.kind(),
            error = %crate::error::loggable(&error),
            "session changes not saved"
        );
        let error = Arc::new(error);
        if let Some(hook) = &session.shared.on_save_error {
            apply_hook(hook.as_ref(), &error, res);
        }
        res.extensions_mut().insert(SaveFailed(error));
    }
    cookie::write(
        &session.shared.config.cookie,
        commit.cookie,
        res.headers_mut(),
    );
}

/// Lends the response's head to the hook as `Parts` (the body stays where it is: it need not be
/// `Default`), then takes the changes back.
fn apply_hook<B>(
    hook: &(dyn Fn(&crate::SaveError, &mut http::response::Parts) + Send + Sync),
    error: &crate::SaveError,
    res: &mut Response<B>,
) {
    let (mut parts, ()) = Response::new(()).into_parts();
    parts.status = res.status();
    parts.version = res.version();
    parts.headers = std::mem::take(res.headers_mut());
    parts.extensions = std::mem::take(res.extensions_mut());
    hook(error, &mut parts);
    *res.status_mut() = parts.status;
    *res.version_mut() = parts.version;
    *res.headers_mut() = parts.headers;
    *res.extensions_mut() = parts.extensions;
}

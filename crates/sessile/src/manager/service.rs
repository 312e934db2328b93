use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use cookie::Cookie;
use http::header::{CACHE_CONTROL, COOKIE, SET_COOKIE, VARY};
use http::{HeaderMap, HeaderValue, Request, Response};
use tower_service::Service;

use super::Shared;
use super::commit::CookieAction;
use crate::SessionId;
use crate::error::SaveFailed;
use crate::session::{Incoming, RequestSession};

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

/// Response future of [`SessionManager`].
pub type ResponseFuture<B, E> = Pin<Box<dyn Future<Output = Result<Response<B>, E>> + Send>>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SessionManager<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        // Only the headers are kept (a reference-count bump each); parsing and opening the token
        // wait until a handler asks for the session.
        let cookies = req.headers().get_all(COOKIE).iter().cloned().collect();
        let session = Arc::new(RequestSession::new(Arc::clone(&self.shared), cookies));
        req.extensions_mut()
            .insert(SessionHandle(Arc::clone(&session)));
        // The clone that was polled ready is the one that must be called.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let mut res = inner.call(req).await?;
            finish(&session, &mut res).await;
            Ok(res)
        })
    }
}

/// Session cookies of one request whose token reaches the AEAD: a browser sends one (two while an
/// old path or domain lingers), so a request with dozens is an attack on the AEAD, and the rest
/// are ignored. Cookies that are not even well-formed tokens cost a length check and do not count,
/// so junk planted beside the real cookie cannot push it out. (A sibling domain that plants
/// well-formed tokens can: a `__Host-` cookie name rules that out.)
pub const MAX_SESSION_COOKIES: usize = 4;

/// The first of the request's session cookies whose token opens, among the first
/// [`MAX_SESSION_COOKIES`] that reach the AEAD.
pub(crate) fn read_token(shared: &Shared, cookies: &[HeaderValue]) -> Option<Incoming> {
    let name = shared.codec.cookie_name();
    let mut tried = 0;
    for header in cookies {
        let Ok(header) = header.to_str() else {
            continue;
        };
        for cookie in Cookie::split_parse(header).flatten() {
            if cookie.name() != name {
                continue;
            }
            if tried == MAX_SESSION_COOKIES {
                metrics::counter!("sessile_tokens_rejected_total", "reason" => "too_many")
                    .increment(1);
                return None;
            }
            let opened = shared.codec.open(cookie.value());
            if matches!(opened, Ok(_) | Err(sessile_token::TokenError::Invalid)) {
                tried += 1;
            }
            match opened {
                Ok(opened) => {
                    return Some(Incoming {
                        id: SessionId::from_bytes(opened.claims.session_id),
                        issued_at: opened.claims.issued_at,
                        sealed_with_primary: opened.sealed_with_primary,
                    });
                }
                Err(e) => {
                    // A bad token is "no session": it never reaches the store.
                    let reason = match e {
                        sessile_token::TokenError::UnknownKey(_) => "unknown_key",
                        sessile_token::TokenError::Invalid => "invalid",
                        _ => "malformed",
                    };
                    metrics::counter!("sessile_tokens_rejected_total", "reason" => reason)
                        .increment(1);
                    tracing::debug!(reason, "session cookie rejected");
                }
            }
        }
    }
    None
}

async fn finish<B>(session: &RequestSession, res: &mut Response<B>) {
    if !session.loaded.initialized() {
        // The handler never asked for the session: nothing to save, no cookie to send.
        return;
    }
    // The response was built from session state, so shared caches must key it on the cookie.
    append_vary_cookie(res.headers_mut());
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
    let cookie = match commit.cookie {
        CookieAction::Keep => return,
        CookieAction::Set { token, max_age } => session.shared.set_cookie(token, max_age),
        CookieAction::Remove => session.shared.removal_cookie(),
    };
    let headers = res.headers_mut();
    match HeaderValue::try_from(cookie) {
        Ok(v) => {
            headers.append(SET_COOKIE, v);
        }
        Err(e) => tracing::error!(error = %e, "session cookie is not a valid header value"),
    }
    // A response that sets a session cookie must never be stored by a shared cache.
    let cacheable = headers.get(CACHE_CONTROL).is_none_or(|v| {
        v.to_str()
            .map_or(true, |s| !s.contains("no-store") && !s.contains("private"))
    });
    if cacheable {
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
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

fn append_vary_cookie(headers: &mut HeaderMap) {
    let already = headers.get_all(VARY).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("cookie") || t.trim() == "*")
        })
    });
    if !already {
        headers.append(VARY, HeaderValue::from_static("cookie"));
    }
}

impl Shared {
    fn base_cookie(&self, value: String) -> Cookie<'static> {
        let c = &self.config.cookie;
        let mut cookie = Cookie::build((c.name.clone(), value))
            .path(c.path.clone())
            .secure(c.secure)
            .http_only(c.http_only)
            .same_site(c.same_site)
            .build();
        if let Some(domain) = &c.domain {
            cookie.set_domain(domain.clone());
        }
        cookie
    }

    fn set_cookie(&self, token: String, max_age: Option<u64>) -> String {
        let mut cookie = self.base_cookie(token);
        if let Some(secs) = max_age {
            cookie.set_max_age(cookie::time::Duration::seconds(
                secs.min(i64::MAX as u64) as i64
            ));
        }
        cookie.to_string()
    }

    fn removal_cookie(&self) -> String {
        let mut cookie = self.base_cookie(String::new());
        cookie.make_removal();
        cookie.to_string()
    }
}

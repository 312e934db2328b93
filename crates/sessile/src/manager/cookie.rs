//! The session cookie: its attributes and their rules, reading the token from a request's
//! `Cookie` headers, and writing `Set-Cookie` with the `Vary` and `Cache-Control` that must go
//! with it.

use cookie::{Cookie, SameSite};
use http::header::{CACHE_CONTROL, SET_COOKIE, VARY};
use http::{HeaderMap, HeaderValue};
use sessile_token::OpenError;

use super::Shared;
use super::request::Incoming;
use crate::SessionId;
use crate::config::DEFAULT_COOKIE_NAME;
use crate::error::ConfigError;

/// Session cookies of one request whose token reaches the AEAD: a browser sends one (two while an
/// old path or domain lingers), so a request with dozens is an attack on the AEAD, and the rest
/// are ignored. Cookies that are not even well-formed tokens cost a length check and do not count,
/// so junk planted beside the real cookie cannot push it out. (A sibling domain that plants
/// well-formed tokens can: a `__Host-` cookie name rules that out.)
pub const MAX_SESSION_COOKIES: usize = 4;

/// Cookie attributes.
#[derive(Debug, Clone)]
pub(crate) struct CookieConfig {
    pub(crate) name: String,
    pub(crate) path: String,
    pub(crate) domain: Option<String>,
    pub(crate) secure: bool,
    pub(crate) http_only: bool,
    pub(crate) same_site: SameSite,
    pub(crate) persistent: bool,
}

impl Default for CookieConfig {
    fn default() -> Self {
        Self {
            name: DEFAULT_COOKIE_NAME.into(),
            path: "/".into(),
            domain: None,
            secure: true,
            http_only: true,
            same_site: SameSite::Lax,
            persistent: true,
        }
    }
}

impl CookieConfig {
    /// Refuses attributes that browsers reject or that defeat the cookie's name prefix.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let rule = if self.name.starts_with("__Host-") && !self.secure {
            Some("__Host- cookies must be Secure")
        } else if self.name.starts_with("__Host-") && self.path != "/" {
            Some("__Host- cookies must have Path=/")
        } else if self.name.starts_with("__Host-") && self.domain.is_some() {
            Some("__Host- cookies must not set Domain")
        } else if self.name.starts_with("__Secure-") && !self.secure {
            Some("__Secure- cookies must be Secure")
        } else if self.same_site == SameSite::None && !self.secure {
            Some("SameSite=None cookies must be Secure")
        } else {
            None
        };
        rule.map_or(Ok(()), |rule| Err(ConfigError::Cookie(rule)))
    }

    fn build(&self, value: String) -> Cookie<'static> {
        let mut cookie = Cookie::build((self.name.clone(), value))
            .path(self.path.clone())
            .secure(self.secure)
            .http_only(self.http_only)
            .same_site(self.same_site)
            .build();
        if let Some(domain) = &self.domain {
            cookie.set_domain(domain.clone());
        }
        cookie
    }
}

/// What the response's `Set-Cookie` should do.
#[derive(Debug, Default)]
pub(crate) enum CookieAction {
    /// Leave the browser's cookie as it is.
    #[default]
    Keep,
    /// Send this token, with this `Max-Age` in seconds (`None`: a browser-session cookie).
    Set { token: String, max_age: Option<u64> },
    /// Tell the browser to drop the cookie.
    Remove,
}

/// The first of the request's session cookies whose token opens, among the first
/// [`MAX_SESSION_COOKIES`] that reach the AEAD.
pub(crate) fn read_token(
    shared: &Shared,
    cookies: &[HeaderValue],
    reroute: Option<&str>,
) -> Option<Incoming> {
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
            if matches!(opened, Ok(_) | Err(OpenError::Invalid)) {
                tried += 1;
            }
            match opened {
                Ok(opened) => {
                    let id = SessionId::from_bytes(opened.claims.session_id);
                    return Some(Incoming {
                        id,
                        issued_at: opened.claims.issued_at,
                        sealed_with_primary: opened.sealed_with_primary,
                        re_pin: shared.re_pin.as_ref().is_some_and(|decide| {
                            !shared.hints.matches(&id, opened.hint)
                                && decide(&super::RePin {
                                    from: opened.hint,
                                    to: shared.hints.hint_for(&id).as_str(),
                                    reroute,
                                })
                        }),
                    });
                }
                Err(e) => {
                    // A bad token is "no session": it never reaches the store.
                    let reason = match e {
                        OpenError::UnknownKey(_) => "unknown_key",
                        OpenError::Invalid => "invalid",
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

/// The response was built from session state: shared caches must key it on the cookie.
pub(crate) fn vary_on_cookie(headers: &mut HeaderMap) {
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

/// Adds the `Set-Cookie` that `action` asks for, and makes sure no shared cache stores a response
/// that carries one.
pub(crate) fn write(config: &CookieConfig, action: CookieAction, headers: &mut HeaderMap) {
    let cookie = match action {
        CookieAction::Keep => return,
        CookieAction::Set { token, max_age } => {
            let mut cookie = config.build(token);
            if let Some(secs) = max_age {
                let secs = i64::try_from(secs).unwrap_or(i64::MAX);
                cookie.set_max_age(cookie::time::Duration::seconds(secs));
            }
            cookie
        }
        CookieAction::Remove => {
            let mut cookie = config.build(String::new());
            cookie.make_removal();
            cookie
        }
    };
    match HeaderValue::try_from(cookie.to_string()) {
        Ok(v) => {
            headers.append(SET_COOKIE, v);
        }
        Err(e) => tracing::error!(error = %e, "session cookie is not a valid header value"),
    }
    let cacheable = headers.get(CACHE_CONTROL).is_none_or(|v| {
        v.to_str()
            .map_or(true, |s| !s.contains("no-store") && !s.contains("private"))
    });
    if cacheable {
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

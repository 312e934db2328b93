//! Settings of the session layer, validated once when the layer is built.

use std::time::Duration;

use cookie::SameSite;
use sessile_token::TokenError;
use thiserror::Error;

/// Default cookie name. Short, because it is sent with every request.
pub const DEFAULT_COOKIE_NAME: &str = "sid";

/// Default idle timeout: a session nobody uses for this long expires. Thirty minutes is the upper
/// end of OWASP's advice for applications that hold anything of value.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Default absolute lifetime: however active, a session ends after this long and the user logs in
/// again. Bounds the damage of a stolen cookie.
pub const DEFAULT_ABSOLUTE_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// Default renewal fraction: a read-only request extends the idle deadline only once this fraction
/// of the idle timeout has passed since the last extension. With 30 minutes that is at most one
/// store write every 7.5 minutes per active session, and a session never expires more than 7.5
/// minutes earlier than a rewrite-on-every-request policy would allow.
pub const DEFAULT_RENEW_FRACTION: f64 = 0.25;

/// Default deadline for one store operation. A healthy Redis on the same network answers in well
/// under a millisecond; 500 ms bounds the tail without failing requests during a short hiccup.
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_millis(500);

pub use sessile_core::store::MAX_STORE_TIMEOUT;

/// Default payload limit (keys plus encoded values). Sessions are for identity and small state;
/// 16 KiB leaves room for that and refuses accidental blobs early, with a clear error.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 16 * 1024;

/// Default number of save attempts when the record changed underneath (version conflict). Each
/// attempt reloads and replays, with a short random pause growing with the attempt, so even a few
/// dozen writers on one session converge.
pub const DEFAULT_MAX_SAVE_ATTEMPTS: u32 = 32;

/// How many recently seen records [`DegradedMode::CachedReadOnly`] keeps per instance.
pub const DEFAULT_FALLBACK_CAPACITY: u64 = 10_000;

/// How old a kept copy may be and still be served by [`DegradedMode::CachedReadOnly`]. Short,
/// because a copy does not learn of a logout on another instance: this bounds how long such a
/// session can still be read during an outage.
pub const DEFAULT_FALLBACK_TTL: Duration = Duration::from_secs(60);

/// What the layer does when the store cannot be reached (it timed out, failed, or its circuit
/// breaker is open) while loading a session.
///
/// In no mode is a stored record, or the user's cookie, overwritten by a degraded session: a
/// degraded request's changes are never written, and the layer reports them as
/// [`SaveError::Degraded`](crate::SaveError::Degraded).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum DegradedMode {
    /// Answer 503 with `Retry-After`; the handler is not run. The default: nothing can go wrong
    /// silently.
    #[default]
    FailClosed,
    /// Serve this instance's recent copy of the record read-only, flagged
    /// [degraded](crate::Session::is_degraded); with no copy, fail closed. Copies are kept for at
    /// most the fallback TTL.
    CachedReadOnly,
    /// Run the handler with an empty session flagged [degraded](crate::Session::is_degraded).
    /// Good for pages that work logged out.
    Ephemeral,
}

impl DegradedMode {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::FailClosed => "fail_closed",
            Self::CachedReadOnly => "cached_read_only",
            Self::Ephemeral => "ephemeral",
        }
    }
}

/// A setting is out of range or contradicts another.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The cookie name or key ring is not usable for tokens.
    #[error("token settings are invalid")]
    Token(#[from] TokenError),
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
    /// A `__Host-` or `__Secure-` cookie name with attributes browsers would reject.
    #[error("cookie prefix rule broken: {0}")]
    CookiePrefix(&'static str),
    /// The store deadline is longer than [`MAX_STORE_TIMEOUT`].
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

/// Everything the layer needs to know besides the store, keys, hint source and clock.
#[derive(Debug, Clone)]
pub(crate) struct SessionConfig {
    pub(crate) cookie: CookieConfig,
    pub(crate) idle_timeout: Duration,
    pub(crate) absolute_timeout: Duration,
    pub(crate) renew_fraction: f64,
    pub(crate) store_timeout: Duration,
    pub(crate) max_payload_bytes: usize,
    pub(crate) max_save_attempts: u32,
    pub(crate) save_on_server_error: bool,
    pub(crate) tenant: Option<String>,
    pub(crate) degraded_mode: DegradedMode,
    pub(crate) fallback_capacity: u64,
    pub(crate) fallback_ttl: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            cookie: CookieConfig::default(),
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            absolute_timeout: DEFAULT_ABSOLUTE_TIMEOUT,
            renew_fraction: DEFAULT_RENEW_FRACTION,
            store_timeout: DEFAULT_STORE_TIMEOUT,
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            max_save_attempts: DEFAULT_MAX_SAVE_ATTEMPTS,
            save_on_server_error: false,
            tenant: None,
            degraded_mode: DegradedMode::default(),
            fallback_capacity: DEFAULT_FALLBACK_CAPACITY,
            fallback_ttl: DEFAULT_FALLBACK_TTL,
        }
    }
}

impl SessionConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        for (name, d) in [
            ("idle timeout", self.idle_timeout),
            ("absolute timeout", self.absolute_timeout),
            ("store timeout", self.store_timeout),
            ("fallback TTL", self.fallback_ttl),
        ] {
            if d.is_zero() {
                return Err(ConfigError::Zero(name));
            }
        }
        if self.store_timeout > MAX_STORE_TIMEOUT {
            return Err(ConfigError::StoreTimeout {
                max: MAX_STORE_TIMEOUT,
                got: self.store_timeout,
            });
        }
        if self.max_save_attempts == 0 {
            return Err(ConfigError::Zero("max save attempts"));
        }
        if self.max_payload_bytes == 0 {
            return Err(ConfigError::Zero("max payload bytes"));
        }
        if self.idle_timeout > self.absolute_timeout {
            return Err(ConfigError::IdleExceedsAbsolute {
                idle: self.idle_timeout,
                absolute: self.absolute_timeout,
            });
        }
        if !(0.0..=1.0).contains(&self.renew_fraction) {
            return Err(ConfigError::RenewFraction(self.renew_fraction));
        }
        if self
            .tenant
            .as_deref()
            .is_some_and(|t| !crate::record::valid_tenant(t))
        {
            return Err(ConfigError::Tenant);
        }
        let c = &self.cookie;
        if c.name.starts_with("__Host-") {
            if !c.secure {
                return Err(ConfigError::CookiePrefix("__Host- cookies must be Secure"));
            }
            if c.path != "/" {
                return Err(ConfigError::CookiePrefix(
                    "__Host- cookies must have Path=/",
                ));
            }
            if c.domain.is_some() {
                return Err(ConfigError::CookiePrefix(
                    "__Host- cookies must not set Domain",
                ));
            }
        }
        if c.name.starts_with("__Secure-") && !c.secure {
            return Err(ConfigError::CookiePrefix(
                "__Secure- cookies must be Secure",
            ));
        }
        if c.same_site == SameSite::None && !c.secure {
            return Err(ConfigError::CookiePrefix(
                "SameSite=None cookies must be Secure",
            ));
        }
        Ok(())
    }
}

//! Settings of the session layer, validated once when the layer is built.

use std::time::Duration;

pub use crate::error::ConfigError;
use crate::manager::CookieConfig;

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

/// How many recently seen records [`DegradedMode::RecentCopy`] keeps per instance.
pub const DEFAULT_RECENT_COPIES: u64 = 10_000;

/// How old a kept copy may be and still be served by [`DegradedMode::RecentCopy`]. Short,
/// because a copy does not learn of a logout on another instance: this bounds how long such a
/// session can still be read during an outage.
pub const DEFAULT_RECENT_COPY_MAX_AGE: Duration = Duration::from_secs(60);

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
    /// [degraded](crate::Session::is_degraded); with no copy, fail closed. Copies are served for
    /// at most [`DEFAULT_RECENT_COPY_MAX_AGE`] after they were made (see
    /// [`recent_copies`](crate::SessionManagerBuilder::recent_copies)).
    RecentCopy,
    /// Run the handler with an empty session flagged [degraded](crate::Session::is_degraded).
    /// Good for pages that work logged out.
    Ephemeral,
}

impl DegradedMode {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::FailClosed => "fail_closed",
            Self::RecentCopy => "recent_copy",
            Self::Ephemeral => "ephemeral",
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
    pub(crate) recent_copies_capacity: u64,
    pub(crate) recent_copy_max_age: Duration,
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
            recent_copies_capacity: DEFAULT_RECENT_COPIES,
            recent_copy_max_age: DEFAULT_RECENT_COPY_MAX_AGE,
        }
    }
}

impl SessionConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        for (name, d) in [
            ("idle timeout", self.idle_timeout),
            ("absolute timeout", self.absolute_timeout),
            ("store timeout", self.store_timeout),
            ("recent copy max age", self.recent_copy_max_age),
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
        self.cookie.validate()
    }
}

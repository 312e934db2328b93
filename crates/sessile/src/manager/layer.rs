use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use cookie::SameSite;
use sessile_token::{Hint, KeyRing, TokenCodec};
use tower_layer::Layer;

use sessile_breaker::SharedBreaker;

use super::shared::{RePinHook, commit_stripes};
use super::{RecentCopies, SessionManager, Shared, StoreHandle};
use crate::clock::{Clock, SystemClock};
use crate::config::{DegradedMode, SessionConfig};
use crate::error::ConfigError;
use crate::error::SaveError;
use crate::hint::HintSource;
use crate::store::SessionStore;

/// Adds sessions to every request of the wrapped service.
///
/// Built with [`SessionManagerLayer::builder`]; cloning is cheap (one `Arc`).
#[derive(Clone)]
pub struct SessionManagerLayer {
    shared: Arc<Shared>,
}

impl fmt::Debug for SessionManagerLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionManagerLayer")
            .field("config", &self.shared.config)
            .field("keys", self.shared.codec.keys())
            .finish_non_exhaustive()
    }
}

impl SessionManagerLayer {
    /// Starts configuring a layer over `store`, sealing tokens with `keys`.
    pub fn builder(store: impl SessionStore, keys: KeyRing) -> SessionManagerBuilder {
        SessionManagerBuilder {
            store: Arc::new(store),
            keys,
            config: SessionConfig::default(),
            hints: Arc::new(Hint::empty()),
            re_pin: Some(Arc::new(|p: &super::RePin<'_>| p.by_default())),
            clock: None,
            breaker: BreakerChoice::Default,
            on_save_error: None,
        }
    }

    pub(crate) fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    /// The circuit breaker guarding the store, if any: read its state or force it from here.
    pub fn breaker(&self) -> Option<&SharedBreaker> {
        self.shared.store.breaker()
    }
}

/// Name of the default store breaker, in metrics and logs.
pub const STORE_BREAKER_NAME: &str = "session_store";

enum BreakerChoice {
    Default,
    Custom(SharedBreaker),
    Off,
}

impl<S> Layer<S> for SessionManagerLayer {
    type Service = SessionManager<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SessionManager::from_shared(inner, Arc::clone(&self.shared))
    }
}

/// Configures a [`SessionManagerLayer`]. Every setting has a documented default (see
/// [`crate::config`]); [`build`](Self::build) checks them together.
///
/// # Security
///
/// The defaults are the safe ones: `Secure`, `HttpOnly`, `SameSite=Lax`, `Path=/`, a 30-minute idle
/// timeout and a 24-hour absolute lifetime, no save after a 5xx. A `__Host-` cookie name is
/// recommended in production (it stops subdomains from planting a session cookie); `build` refuses
/// the attributes browsers would reject with it. Turning `secure` off is only for plain-HTTP
/// development.
#[must_use]
pub struct SessionManagerBuilder {
    store: Arc<dyn crate::store::DynStore>,
    keys: KeyRing,
    config: SessionConfig,
    hints: Arc<dyn HintSource>,
    clock: Option<Arc<dyn Clock>>,
    breaker: BreakerChoice,
    on_save_error: Option<super::SaveErrorHook>,
    re_pin: Option<RePinHook>,
}

impl fmt::Debug for SessionManagerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionManagerBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl SessionManagerBuilder {
    /// Cookie name (default [`crate::config::DEFAULT_COOKIE_NAME`]). It is bound into every token.
    pub fn cookie_name(mut self, name: impl Into<String>) -> Self {
        self.config.cookie.name = name.into();
        self
    }

    /// Cookie `Path` (default `/`).
    pub fn cookie_path(mut self, path: impl Into<String>) -> Self {
        self.config.cookie.path = path.into();
        self
    }

    /// Cookie `Domain` (default none: host-only).
    pub fn cookie_domain(mut self, domain: impl Into<String>) -> Self {
        self.config.cookie.domain = Some(domain.into());
        self
    }

    /// Cookie `Secure` attribute (default on).
    pub fn secure(mut self, on: bool) -> Self {
        self.config.cookie.secure = on;
        self
    }

    /// Cookie `HttpOnly` attribute (default on).
    pub fn http_only(mut self, on: bool) -> Self {
        self.config.cookie.http_only = on;
        self
    }

    /// Cookie `SameSite` attribute (default `Lax`).
    pub fn same_site(mut self, same_site: SameSite) -> Self {
        self.config.cookie.same_site = same_site;
        self
    }

    /// Whether the cookie carries `Max-Age` (default on, following the idle deadline). Off gives a
    /// browser-session cookie; deadlines are enforced on the server either way.
    pub fn persistent_cookie(mut self, on: bool) -> Self {
        self.config.cookie.persistent = on;
        self
    }

    /// Idle timeout (default [`crate::config::DEFAULT_IDLE_TIMEOUT`]).
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.config.idle_timeout = d;
        self
    }

    /// Absolute lifetime (default [`crate::config::DEFAULT_ABSOLUTE_TIMEOUT`]); restarts when the
    /// id is cycled (login).
    pub fn absolute_timeout(mut self, d: Duration) -> Self {
        self.config.absolute_timeout = d;
        self
    }

    /// Fraction of the idle timeout that must pass before a read-only request extends the idle
    /// deadline (default [`crate::config::DEFAULT_RENEW_FRACTION`]); `0.0` extends on every request.
    pub fn renew_fraction(mut self, f: f64) -> Self {
        self.config.renew_fraction = f;
        self
    }

    /// Deadline for each store operation (default [`crate::config::DEFAULT_STORE_TIMEOUT`]).
    pub fn store_timeout(mut self, d: Duration) -> Self {
        self.config.store_timeout = d;
        self
    }

    /// Payload limit in bytes (default [`crate::config::DEFAULT_MAX_PAYLOAD_BYTES`]).
    pub fn max_payload_bytes(mut self, n: usize) -> Self {
        self.config.max_payload_bytes = n;
        self
    }

    /// Save attempts on version conflicts (default [`crate::config::DEFAULT_MAX_SAVE_ATTEMPTS`]).
    pub fn max_save_attempts(mut self, n: u32) -> Self {
        self.config.max_save_attempts = n;
        self
    }

    /// Whether to save after a 5xx response (default off: a failing handler may have left the
    /// session half-changed).
    pub fn save_on_server_error(mut self, on: bool) -> Self {
        self.config.save_on_server_error = on;
        self
    }

    /// Tenant recorded in new sessions' metadata.
    ///
    /// The tenant is bound into every token (a token issued for one tenant never opens under
    /// another, even with the same keys), checked on every load, and scopes "log out
    /// everywhere" to the tenant's users.
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.config.tenant = Some(tenant.into());
        self
    }

    /// A fixed routing hint (this node's id) for new sessions. Default: the empty hint.
    pub fn node_hint(mut self, hint: Hint) -> Self {
        self.hints = Arc::new(hint);
        self
    }

    /// Chooses routing hints per session (overrides [`node_hint`](Self::node_hint)); for an
    /// edge that routes on hints, [`AffinityHints`](crate::AffinityHints).
    pub fn hint_source(mut self, source: impl HintSource) -> Self {
        self.hints = Arc::new(source);
        self
    }

    /// Whether a session whose cookie names another node (the edge rerouted the request: that
    /// node is down or gone) gets its cookie re-issued with this node's hint, so that its next
    /// requests stay here, where it is now warm. Default: on, except when the edge says (in
    /// [`REROUTE_HEADER`](crate::REROUTE_HEADER)) that the hinted node was only at its load bound.
    /// Each re-issue costs one store touch, once per move; turn it off when nothing routes on the
    /// hint (round robin would move sessions all the time). Counted in
    /// `sessile_affinity_repins_total`.
    pub fn re_pin(mut self, on: bool) -> Self {
        self.re_pin = on.then(|| -> RePinHook { Arc::new(|p: &super::RePin<'_>| p.by_default()) });
        self
    }

    /// Re-pins only when `decide` says so (see [`re_pin`](Self::re_pin) and
    /// [`RePin::by_default`](crate::RePin::by_default)).
    pub fn re_pin_when(
        mut self,
        decide: impl Fn(&super::RePin<'_>) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.re_pin = Some(Arc::new(decide));
        self
    }

    /// What to do when the store cannot be reached (default [`DegradedMode::FailClosed`]).
    pub fn degraded_mode(mut self, mode: DegradedMode) -> Self {
        self.config.degraded_mode = mode;
        self
    }

    /// Size and age bounds of the copies [`DegradedMode::RecentCopy`] serves (defaults
    /// [`crate::config::DEFAULT_RECENT_COPIES`], [`crate::config::DEFAULT_RECENT_COPY_MAX_AGE`]).
    pub fn recent_copies(mut self, capacity: u64, max_age: Duration) -> Self {
        self.config.recent_copies_capacity = capacity;
        self.config.recent_copy_max_age = max_age;
        self
    }

    /// The circuit breaker that guards the store. By default the layer builds one named
    /// [`STORE_BREAKER_NAME`] with `sessile_breaker`'s default settings, except for a store that
    /// answers from this process's memory ([`SessionStore::in_process`], the
    /// [`MemoryStore`](crate::MemoryStore)), which needs none. Only timeouts and
    /// unavailability count as failures; answers such as "not found" or "conflict" do not.
    pub fn circuit_breaker(mut self, breaker: SharedBreaker) -> Self {
        self.breaker = BreakerChoice::Custom(breaker);
        self
    }

    /// No circuit breaker: every request tries the store (each still bounded by the store
    /// timeout).
    pub fn without_circuit_breaker(mut self) -> Self {
        self.breaker = BreakerChoice::Off;
        self
    }

    /// Called when a request's session changes could not be saved, with the error and the
    /// response's head, so the application can change the answer. Without a hook the response
    /// goes out as the handler made it (without a new cookie), and the error is logged, counted
    /// and attached as [`SaveFailed`](crate::SaveFailed).
    pub fn on_save_error(
        mut self,
        hook: impl Fn(&SaveError, &mut http::response::Parts) + Send + Sync + 'static,
    ) -> Self {
        self.on_save_error = Some(Arc::new(hook));
        self
    }

    /// The clock of the layer and its default circuit breaker. Default: the store's clock (see
    /// [`SessionStore::clock`]; the [`MemoryStore`](crate::MemoryStore)'s is set with
    /// [`MemoryStoreBuilder::clock`](crate::store::MemoryStoreBuilder::clock)), or the system
    /// clock for a store that keeps none. A test injects its clock into the store, once; set
    /// one here only for a store that keeps no clock of its own.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Validates the settings and builds the layer.
    pub fn build(self) -> Result<SessionManagerLayer, ConfigError> {
        self.config.validate()?;
        let mut codec = TokenCodec::new(self.keys, &self.config.cookie.name)?;
        if let Some(tenant) = &self.config.tenant {
            // A token issued for one tenant never opens under another.
            codec = codec.with_context(tenant)?;
        }
        let clock = self
            .clock
            .or_else(|| self.store.clock())
            .unwrap_or_else(|| Arc::new(SystemClock));
        let breaker = match self.breaker {
            // A store in this process's memory has no outage for a breaker to see.
            BreakerChoice::Default if self.store.in_process() => None,
            // A probe that has not answered within the store deadline never will: the deadline
            // ended it. So half-open slots come back after that long.
            BreakerChoice::Default => Some(
                SharedBreaker::builder(STORE_BREAKER_NAME)
                    .clock(Arc::clone(&clock))
                    .config(sessile_breaker::Config {
                        probe_timeout: self.config.store_timeout.min(sessile_breaker::MAX_WAIT),
                        ..sessile_breaker::Config::default()
                    })
                    .build()
                    .expect("the default breaker settings are valid"),
            ),
            BreakerChoice::Custom(b) => Some(b),
            BreakerChoice::Off => None,
        };
        let recent_copies = (self.config.degraded_mode == DegradedMode::RecentCopy).then(|| {
            RecentCopies::new(
                self.config.recent_copies_capacity,
                self.config.recent_copy_max_age,
            )
        });
        Ok(SessionManagerLayer {
            shared: Arc::new(Shared {
                store: StoreHandle::new(self.store, self.config.store_timeout, breaker),
                codec,
                config: self.config,
                hints: self.hints,
                clock,
                commit_locks: commit_stripes(),
                recent_copies,
                on_save_error: self.on_save_error,
                re_pin: self.re_pin,
            }),
        })
    }
}

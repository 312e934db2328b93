//! A request's session state: the token it carried, the record it loaded (once, lazily), the
//! changes the handler made (kept as operations, for replay), and what happens when the store
//! cannot be reached (the degraded modes).

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::OnceCell;

use super::Shared;
use crate::SessionId;
use crate::clock::UnixMillis;
use crate::config::DegradedMode;
use crate::error::SessionError;
use crate::record::{Metadata, Payload, Record};
use crate::store::StoreError;

/// A valid token's claims, read from the request cookie before the handler runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Incoming {
    pub(crate) id: SessionId,
    pub(crate) issued_at: u32,
    pub(crate) sealed_with_primary: bool,
    /// The token's hint names another node than this one would give the session: re-issue it
    /// with this node's hint (the request was rerouted here).
    pub(crate) re_pin: bool,
}

/// What the loaded record looked like, minus its payload (which lives in [`State::data`]).
#[derive(Debug, Clone)]
pub(crate) struct Base {
    pub(crate) id: SessionId,
    pub(crate) version: u64,
    pub(crate) idle_deadline: UnixMillis,
    pub(crate) meta: Metadata,
}

/// A closure from `update`, erased to bytes so it can be replayed on a fresher record.
/// It is given the key (which the operation keeps: the closure need not own a copy) and the
/// encoded value under it.
pub(crate) type UpdateFn =
    dyn Fn(&str, Option<&[u8]>) -> Result<Vec<u8>, SessionError> + Send + Sync;

/// One change a request made. Kept in order so that, on a version conflict, the same changes can be
/// applied again to the record another request just saved.
#[derive(Clone)]
pub(crate) enum Op {
    Insert(String, Vec<u8>),
    Remove(String),
    Update(String, Arc<UpdateFn>),
    Clear,
    SetUser(Option<String>),
}

impl Op {
    /// Applies the operation, enforcing the payload limit; returns whether anything changed.
    pub(crate) fn apply(
        &self,
        data: &mut Payload,
        user: &mut Option<String>,
        limit: usize,
    ) -> Result<bool, SessionError> {
        match self {
            Self::Insert(k, v) => put(data, k, v.clone(), limit),
            Self::Remove(k) => Ok(data.remove(k).is_some()),
            Self::Update(k, f) => {
                let new = f(k, data.get(k))?;
                put(data, k, new, limit)
            }
            Self::Clear => {
                let changed = !data.is_empty();
                data.clear();
                Ok(changed)
            }
            Self::SetUser(u) => {
                let changed = user != u;
                user.clone_from(u);
                Ok(changed)
            }
        }
    }
}

/// Stores `value` under `key` unless it is already there; returns whether anything changed.
pub(crate) fn put(
    data: &mut Payload,
    key: &str,
    value: Vec<u8>,
    limit: usize,
) -> Result<bool, SessionError> {
    data.set_within(key, value, limit)
        .map_err(|size| SessionError::PayloadTooLarge { size, limit })
}

/// The mutable part of a request's session.
#[derive(Default)]
pub(crate) struct State {
    /// The stored record this request works on; `None` for a new session.
    pub(crate) base: Option<Base>,
    /// Working copy of the payload, with `ops` applied.
    pub(crate) data: Payload,
    /// Working copy of the user id, with `ops` applied.
    pub(crate) user_id: Option<String>,
    /// Every operation, in order, for replay on a fresher record; operations that changed nothing
    /// are kept too, so that replay gives each key its last writer.
    pub(crate) ops: Vec<Op>,
    /// Some operation changed the working copy. A request whose operations all changed nothing
    /// (removing an absent key, writing an equal value) saves nothing.
    pub(crate) dirty: bool,
    /// The cookie's session was given a new id by another request (a login) shortly before this
    /// one loaded it: this request works on an empty session that is never stored, and its
    /// response leaves the cookie alone.
    pub(crate) moved: bool,
    /// `cycle_id` was called on a stored session.
    pub(crate) cycle: bool,
    /// `destroy` ended this stored session during the request.
    pub(crate) ended: Option<SessionId>,
    /// The store could not be reached: this session is a read-only copy or an empty stand-in,
    /// and nothing of it will be written.
    pub(crate) degraded: bool,
}

/// A request's `Cookie` headers, unparsed: nearly always at most one, kept without an allocation.
pub(crate) enum Cookies {
    One(Option<http::HeaderValue>),
    Many(Vec<http::HeaderValue>),
}

impl Cookies {
    pub(crate) fn from_headers(headers: &http::HeaderMap) -> Self {
        let mut all = headers.get_all(http::header::COOKIE).iter();
        let Some(first) = all.next() else {
            return Self::One(None);
        };
        match all.next() {
            None => Self::One(Some(first.clone())),
            Some(second) => {
                let mut many = vec![first.clone(), second.clone()];
                many.extend(all.cloned());
                Self::Many(many)
            }
        }
    }

    pub(crate) fn as_slice(&self) -> &[http::HeaderValue] {
        match self {
            Self::One(one) => one.as_slice(),
            Self::Many(many) => many,
        }
    }
}

/// The layer's per-request state, shared by the service and every `Session` clone.
pub(crate) struct RequestSession {
    pub(crate) shared: Arc<Shared>,
    /// The request's `Cookie` headers, kept unparsed: the token is only opened when the handler
    /// asks for the session, so requests that never do (assets, health checks) pay nothing.
    cookies: Cookies,
    /// The edge's [`REROUTE_HEADER`](super::REROUTE_HEADER), if any.
    reroute: Option<http::HeaderValue>,
    incoming: std::sync::OnceLock<Option<Incoming>>,
    /// Set once the handler first asks for the session; holds the load error, if any.
    pub(crate) loaded: OnceCell<Result<(), Arc<StoreError>>>,
    pub(crate) state: Mutex<State>,
}

impl RequestSession {
    pub(crate) fn new(
        shared: Arc<Shared>,
        cookies: Cookies,
        reroute: Option<http::HeaderValue>,
    ) -> Self {
        Self {
            shared,
            cookies,
            reroute,
            incoming: std::sync::OnceLock::new(),
            loaded: OnceCell::new(),
            state: Mutex::default(),
        }
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        // Every write to `State` is a single assignment or push, so a panic elsewhere cannot leave
        // it half-changed; recovering from poisoning is safe.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Loads the record the cookie points to, once per request.
    pub(crate) async fn ensure_loaded(&self) -> Result<(), Arc<StoreError>> {
        self.loaded
            .get_or_init(|| async {
                let Some(incoming) = self.incoming() else {
                    return Ok(());
                };
                let record = match self.shared.store.load(incoming.id).await {
                    Ok(record) => record,
                    Err(StoreError::Corrupt(e)) => {
                        // Unreadable is permanent: answer as for a missing session (a new one
                        // starts) rather than fail every request of this user. The record is
                        // left alone; it expires by itself.
                        tracing::error!(error = %e, session = %incoming.id, "stored session is corrupt; starting a new one");
                        metrics::counter!("sessile_corrupt_records_total").increment(1);
                        None
                    }
                    Err(StoreError::Rotated) => {
                        self.state().moved = true;
                        None
                    }
                    Err(e) if e.is_unavailability() => return self.degrade(incoming.id, e),
                    Err(e) => return Err(Arc::new(e)),
                };
                let now = self.shared.clock.now_ms();
                // Another tenant's record is not this tenant's session, whatever the token said.
                let tenant = self.shared.config.tenant.as_deref();
                let record = record.filter(|r| {
                    r.id == incoming.id && !r.is_expired(now) && r.meta.tenant.as_deref() == tenant
                });
                if let Some(copies) = &self.shared.recent_copies {
                    match &record {
                        Some(r) => copies.remember(r),
                        // The store says the session is gone (or moved): a copy must not bring it
                        // back during an outage.
                        None => copies.forget(&incoming.id),
                    }
                }
                if let Some(r) = record {
                    self.adopt(r);
                }
                Ok(())
            })
            .await
            .clone()
    }
}

impl RequestSession {
    /// The valid token the request carried, opened on first use.
    pub(crate) fn incoming(&self) -> Option<Incoming> {
        *self.incoming.get_or_init(|| {
            let reroute = self.reroute.as_ref().and_then(|v| v.to_str().ok());
            super::cookie::read_token(&self.shared, self.cookies.as_slice(), reroute)
        })
    }

    /// Makes `r` the request's session.
    fn adopt(&self, r: Record) {
        let mut st = self.state();
        st.user_id.clone_from(&r.meta.user_id);
        st.data = r.data;
        st.base = Some(Base {
            id: r.id,
            version: r.version,
            idle_deadline: r.idle_deadline,
            meta: r.meta,
        });
    }

    /// The store could not be reached while loading `id`: apply the degraded mode.
    fn degrade(&self, id: SessionId, error: StoreError) -> Result<(), Arc<StoreError>> {
        let mode = self.shared.config.degraded_mode;
        let now = self.shared.clock.now_ms();
        let served = match mode {
            DegradedMode::FailClosed => false,
            DegradedMode::Ephemeral => true,
            DegradedMode::RecentCopy => {
                let copy = self.shared.recent_copies.as_ref().and_then(|c| c.get(&id));
                match copy.filter(|r| !r.is_expired(now)) {
                    Some(r) => {
                        self.adopt((*r).clone());
                        true
                    }
                    None => false,
                }
            }
        };
        let outcome = if served { "served" } else { "refused" };
        metrics::counter!("sessile_degraded_requests_total", "mode" => mode.as_str(), "outcome" => outcome)
            .increment(1);
        tracing::warn!(error = %crate::error::loggable(&error), mode = mode.as_str(), outcome, "session store unreachable");
        if served {
            self.state().degraded = true;
            Ok(())
        } else {
            Err(Arc::new(error))
        }
    }
}

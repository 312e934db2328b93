//! The per-request session handle and its typed API.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::OnceCell;

use crate::SessionId;
use crate::clock::UnixMillis;
use crate::config::DegradedMode;
use crate::error::SessionError;
use crate::manager::Shared;
use crate::record::{Metadata, Payload};
use crate::store::StoreError;

/// A valid token's claims, read from the request cookie before the handler runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Incoming {
    pub(crate) id: SessionId,
    pub(crate) issued_at: u32,
    pub(crate) sealed_with_primary: bool,
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
pub(crate) type UpdateFn = dyn Fn(Option<&[u8]>) -> Result<Vec<u8>, SessionError> + Send + Sync;

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
                let new = f(data.get(k))?;
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
fn put(data: &mut Payload, key: &str, value: Vec<u8>, limit: usize) -> Result<bool, SessionError> {
    if data.get(key) == Some(value.as_slice()) {
        return Ok(false);
    }
    let size = data.size_with(key, value.len());
    if size > limit {
        return Err(SessionError::PayloadTooLarge { size, limit });
    }
    data.insert(key.to_owned(), value);
    Ok(true)
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

/// The layer's per-request state, shared by the service and every `Session` clone.
pub(crate) struct RequestSession {
    pub(crate) shared: Arc<Shared>,
    /// The request's `Cookie` headers, kept unparsed: the token is only opened when the handler
    /// asks for the session, so requests that never do (assets, health checks) pay nothing.
    cookies: Vec<http::HeaderValue>,
    incoming: std::sync::OnceLock<Option<Incoming>>,
    /// Set once the handler first asks for the session; holds the load error, if any.
    pub(crate) loaded: OnceCell<Result<(), Arc<StoreError>>>,
    pub(crate) state: Mutex<State>,
}

impl RequestSession {
    pub(crate) fn new(shared: Arc<Shared>, cookies: Vec<http::HeaderValue>) -> Self {
        Self {
            shared,
            cookies,
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
                if let Some(copies) = &self.shared.fallback {
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
        *self
            .incoming
            .get_or_init(|| crate::manager::read_token(&self.shared, &self.cookies))
    }

    /// Makes `r` the request's session.
    fn adopt(&self, r: crate::record::Record) {
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
            DegradedMode::CachedReadOnly => {
                let copy = self.shared.fallback.as_ref().and_then(|c| c.get(&id));
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

/// The session of the current request: the axum extractor and the typed API.
///
/// Extracting `Session` loads the record (once per request; handlers that do not extract it cost no
/// store call). After that, every method is synchronous and works on the request's copy; the layer
/// saves the changes when the handler's response is ready.
///
/// ```
/// use axum::{Router, routing::get};
/// use sessile::Session;
///
/// async fn visits(session: Session) -> Result<String, sessile::SessionError> {
///     // An atomic read-modify-write, even with concurrent requests on other nodes.
///     let n = session.update("visits", |n: Option<u64>| n.unwrap_or(0) + 1)?;
///     Ok(format!("visit number {n}"))
/// }
///
/// let app: Router = Router::new().route("/", get(visits));
/// ```
///
/// # Concurrency
///
/// The layer saves with a compare-and-set on the record's version. If another request saved first,
/// it reloads the record and replays this request's operations on it, in order:
///
/// * [`update`](Session::update) closures run again on the fresh value, so `update` is an atomic
///   read-modify-write across requests and nodes;
/// * [`insert`](Session::insert) and [`remove`](Session::remove) are last-writer-wins per key;
///   changes to different keys always merge.
///
/// A value the handler read may therefore differ from what ends up stored; the stored result is
/// the one a serial execution would give.
#[derive(Clone)]
pub struct Session(pub(crate) Arc<RequestSession>);

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.0.state();
        f.debug_struct("Session")
            .field("id", &st.base.as_ref().map(|b| b.id))
            .field("keys", &st.data.len())
            .field("pending_ops", &st.ops.len())
            .finish()
    }
}

impl Session {
    fn limit(&self) -> usize {
        self.0.shared.config.max_payload_bytes
    }

    /// Reads and deserializes the value under `key`.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, SessionError> {
        self.0
            .state()
            .data
            .get(key)
            .map(|bytes| decode(key, bytes))
            .transpose()
    }

    /// Serializes and stores `value` under `key`.
    pub fn insert<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<(), SessionError> {
        let bytes = encode(key, value)?;
        self.apply(Op::Insert(key.to_owned(), bytes))
    }

    /// Atomically replaces the value under `key` with `f(current)`, returning the new value.
    ///
    /// `f` may run again when the layer saves, on a newer value written by a concurrent request, so
    /// it must be a pure function of its input.
    pub fn update<T, F>(&self, key: &str, f: F) -> Result<T, SessionError>
    where
        T: Serialize + DeserializeOwned,
        F: Fn(Option<T>) -> T + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        let typed = Arc::clone(&f);
        let owned_key = key.to_owned();
        let erased: Arc<UpdateFn> = Arc::new(move |old: Option<&[u8]>| {
            let old = old.map(|b| decode::<T>(&owned_key, b)).transpose()?;
            encode(&owned_key, &typed(old))
        });
        let mut st = self.0.state();
        let old = st.data.get(key).map(|b| decode::<T>(key, b)).transpose()?;
        let new = f(old);
        let bytes = encode(key, &new)?;
        let State {
            data, ops, dirty, ..
        } = &mut *st;
        *dirty |= put(data, key, bytes, self.limit())?;
        ops.push(Op::Update(key.to_owned(), erased));
        Ok(new)
    }

    /// Removes the value under `key`; returns whether there was one.
    pub fn remove(&self, key: &str) -> bool {
        let mut st = self.0.state();
        let had = st.data.remove(key).is_some();
        st.dirty |= had;
        st.ops.push(Op::Remove(key.to_owned()));
        had
    }

    /// Removes every value (the session itself, its id and user stay).
    pub fn clear(&self) {
        let mut st = self.0.state();
        st.dirty |= !st.data.is_empty();
        st.data.clear();
        st.ops.push(Op::Clear);
    }

    /// Sets (or clears) the user this session belongs to, for "log out everywhere".
    ///
    /// Changing the user of a stored session also cycles its id (as [`cycle_id`](Self::cycle_id)):
    /// a change of identity is a change of privilege, and the new id lands in the user's
    /// partition, next to the user's other sessions.
    pub fn set_user_id(&self, user: Option<&str>) {
        {
            let mut st = self.0.state();
            if st.base.is_some() && st.user_id.as_deref() != user {
                st.cycle = true;
            }
        }
        let op = Op::SetUser(user.map(str::to_owned));
        // Setting a user cannot fail.
        let _ = self.apply(op);
    }

    /// The user this session belongs to.
    pub fn user_id(&self) -> Option<String> {
        self.0.state().user_id.clone()
    }

    /// Gives the session a new id when the response is saved (call on login or any privilege
    /// change). The old id stops working and the new one holds the data, in one store operation.
    /// On a session that is not stored yet it does nothing: that one gets a fresh id anyway.
    pub fn cycle_id(&self) {
        let mut st = self.0.state();
        if st.base.is_some() {
            st.cycle = true;
        }
    }

    /// Ends the session (logout). The record is deleted when the response is saved, and no request
    /// still in flight with it can bring it back. Anything inserted afterwards in this request starts
    /// a new session.
    pub fn destroy(&self) {
        let mut st = self.0.state();
        if let Some(base) = st.base.take() {
            st.ended = Some(base.id);
        }
        st.data.clear();
        st.user_id = None;
        st.ops.clear();
        st.dirty = false;
        st.cycle = false;
    }

    /// Ends every session of this session's user, on every device, now; and this one when the
    /// response is saved. Returns how many stored sessions were deleted.
    pub async fn destroy_everywhere(&self) -> Result<u64, SessionError> {
        let user = self.user_id().ok_or(SessionError::NoUser)?;
        let n = self
            .0
            .shared
            .store
            .destroy_user(self.0.shared.config.tenant.as_deref(), &user)
            .await
            .map_err(SessionError::Store)?;
        if let Some(copies) = &self.0.shared.fallback {
            copies.forget_user(&user);
        }
        self.destroy();
        Ok(n)
    }

    /// Whether the store could not be reached and this session is a stand-in: a read-only recent
    /// copy ([`DegradedMode::CachedReadOnly`]) or empty ([`DegradedMode::Ephemeral`]). Changes to
    /// a degraded session are not saved; they are reported as
    /// [`SaveError::Degraded`](crate::SaveError::Degraded).
    pub fn is_degraded(&self) -> bool {
        self.0.state().degraded
    }

    /// Whether the session is not stored yet (no valid cookie, or its record is gone).
    pub fn is_new(&self) -> bool {
        self.0.state().base.is_none()
    }

    /// A redacted form of the session id (first four hex digits), for display and logs.
    pub fn id_redacted(&self) -> Option<String> {
        self.0.state().base.as_ref().map(|b| b.id.to_string())
    }

    /// When the session was created (milliseconds since the Unix epoch).
    pub fn created_at(&self) -> Option<UnixMillis> {
        self.0.state().base.as_ref().map(|b| b.meta.created_at)
    }

    /// When the session expires if idle, as last stored.
    pub fn idle_deadline(&self) -> Option<UnixMillis> {
        self.0.state().base.as_ref().map(|b| b.idle_deadline)
    }

    /// When the session expires regardless of activity.
    pub fn absolute_deadline(&self) -> Option<UnixMillis> {
        self.0
            .state()
            .base
            .as_ref()
            .map(|b| b.meta.absolute_deadline)
    }

    /// The routing hint the session was stamped with.
    pub fn hint(&self) -> Option<String> {
        self.0.state().base.as_ref().map(|b| b.meta.hint.clone())
    }

    /// Keys present in the payload.
    pub fn keys(&self) -> Vec<String> {
        self.0
            .state()
            .data
            .iter()
            .map(|(k, _)| k.to_owned())
            .collect()
    }

    fn apply(&self, op: Op) -> Result<(), SessionError> {
        let limit = self.limit();
        let mut st = self.0.state();
        let State {
            data,
            user_id,
            ops,
            dirty,
            ..
        } = &mut *st;
        *dirty |= op.apply(data, user_id, limit)?;
        ops.push(op);
        Ok(())
    }
}

fn encode<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<Vec<u8>, SessionError> {
    rmp_serde::to_vec(value).map_err(|source| SessionError::Serialize {
        key: key.to_owned(),
        source,
    })
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, SessionError> {
    rmp_serde::from_slice(bytes).map_err(|source| SessionError::Deserialize {
        key: key.to_owned(),
        source,
    })
}

//! [`Session`]: the public, typed API of the current request's session.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::clock::UnixMillis;
use crate::error::SessionError;
use crate::manager::request::{Op, RequestSession, State, UpdateFn, put};

/// The session of the current request: the axum extractor and the typed API.
///
/// Extracting `Session` loads the record (once per request; handlers that do not extract it cost no
/// store call). After that, every method is synchronous and works on the request's copy; the layer
/// saves the changes when the handler's response is ready. Outside axum, take it from the
/// request's extensions with [`Session::from_extensions`].
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
///
/// # Unit tests of handlers
///
/// [`Session::new`] makes a session outside any request, so a handler can be called directly:
///
/// ```
/// use sessile::{MemoryStore, Session};
///
/// async fn add_to_cart(session: Session, item: String) -> Result<usize, sessile::SessionError> {
///     let cart = session.update("cart", move |cart: Option<Vec<String>>| {
///         let mut cart = cart.unwrap_or_default();
///         cart.push(item.clone());
///         cart
///     })?;
///     Ok(cart.len())
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let session = Session::new(MemoryStore::new());
/// assert_eq!(add_to_cart(session.clone(), "tea".into()).await.unwrap(), 1);
/// assert_eq!(add_to_cart(session.clone(), "milk".into()).await.unwrap(), 2);
/// assert_eq!(session.get::<Vec<String>>("cart").unwrap().unwrap(), ["tea", "milk"]);
/// # }
/// ```
#[derive(Clone)]
pub struct Session(pub(crate) Arc<RequestSession>);

/// Facts about a stored session, from [`Session::info`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionInfo {
    /// When the session was created (a login restarts it: a new id is a new session identity).
    pub created_at: SystemTime,
    /// When the session expires if nobody uses it, as last stored.
    pub idle_deadline: SystemTime,
    /// When the session expires however active it is.
    pub absolute_deadline: SystemTime,
    /// The routing hint the session was stamped with (empty when none).
    pub hint: String,
}

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
    /// A new, empty session outside any request, over `store`, with the layer's default settings:
    /// for unit tests of handlers (see [Unit tests of handlers](Session#unit-tests-of-handlers)).
    /// Nothing is saved: there is no response to save it with.
    pub fn new(store: impl crate::SessionStore) -> Self {
        Self(crate::manager::detached(store))
    }

    fn limit(&self) -> usize {
        self.0.shared.config.max_payload_bytes
    }

    /// Reads and deserializes the value under `key`; `Ok(None)` when there is none.
    ///
    /// ```
    /// # let session = sessile::Session::new(sessile::MemoryStore::new());
    /// session.insert("theme", "dark")?;
    /// assert_eq!(session.get::<String>("theme")?.as_deref(), Some("dark"));
    /// assert_eq!(session.get::<String>("missing")?, None);
    /// # Ok::<(), sessile::SessionError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`SessionError::Deserialize`] when the stored value is not a `T`.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, SessionError> {
        self.0
            .state()
            .data
            .get(key)
            .map(|bytes| decode(key, bytes))
            .transpose()
    }

    /// Serializes and stores `value` under `key` (last writer wins against concurrent requests).
    ///
    /// ```
    /// # let session = sessile::Session::new(sessile::MemoryStore::new());
    /// session.insert("cart", &vec!["tea", "milk"])?;
    /// # Ok::<(), sessile::SessionError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`SessionError::Serialize`] when `value` cannot be serialized;
    /// [`SessionError::PayloadTooLarge`] when it would take the payload over the limit (nothing
    /// changes then).
    pub fn insert<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<(), SessionError> {
        let bytes = encode(key, value)?;
        {
            let mut st = self.0.state();
            if st.base.is_none() {
                // A session that is not stored yet is created, never replayed: no operation to
                // keep, and the value moves in without a copy.
                let State { data, dirty, .. } = &mut *st;
                *dirty |= put(data, key, bytes, self.limit())?;
                return Ok(());
            }
        }
        self.apply(Op::Insert(key.to_owned(), bytes))
    }

    /// Atomically replaces the value under `key` with `f(current)`, returning the new value.
    ///
    /// When another request (on this instance or another) saved the session first, the layer
    /// reloads it and runs `f` again on the fresher value before saving, so the update is applied
    /// exactly once to what is stored, as in a serial execution. That is why `f` is `Fn` (it may
    /// run more than once), `Send + Sync + 'static` (it runs after the handler returned, when the
    /// response is saved), and must be a pure function of its input. Capture what it needs by
    /// value with `move`:
    ///
    /// ```
    /// # let session = sessile::Session::new(sessile::MemoryStore::new());
    /// let amount: u64 = 5; // say, from the request
    /// let total = session.update("points", move |p: Option<u64>| p.unwrap_or(0) + amount)?;
    /// assert_eq!(total, 5);
    /// # Ok::<(), sessile::SessionError>(())
    /// ```
    ///
    /// A captured `String` or `Vec` is cloned inside `f` (`item.clone()`), since `f` may run again.
    ///
    /// # Errors
    ///
    /// [`SessionError::Deserialize`] when the current value is not a `T`;
    /// [`SessionError::Serialize`] or [`SessionError::PayloadTooLarge`] for the new value. A
    /// failure when `f` is run again at save time is reported as
    /// [`SaveError::Replay`](crate::SaveError::Replay).
    pub fn update<T, F>(&self, key: &str, f: F) -> Result<T, SessionError>
    where
        T: Serialize + DeserializeOwned,
        F: Fn(Option<T>) -> T + Send + Sync + 'static,
    {
        let mut st = self.0.state();
        let old = st.data.get(key).map(|b| decode::<T>(key, b)).transpose()?;
        let new = f(old);
        let bytes = encode(key, &new)?;
        let State {
            base,
            data,
            ops,
            dirty,
            ..
        } = &mut *st;
        *dirty |= put(data, key, bytes, self.limit())?;
        if base.is_some() {
            // Kept for a replay on a fresher record (a session not stored yet is never replayed).
            let erased: Arc<UpdateFn> = Arc::new(move |key: &str, old: Option<&[u8]>| {
                let old = old.map(|b| decode::<T>(key, b)).transpose()?;
                encode(key, &f(old))
            });
            ops.push(Op::Update(key.to_owned(), erased));
        }
        Ok(new)
    }

    /// Removes the value under `key`; returns whether there was one.
    ///
    /// ```
    /// # let session = sessile::Session::new(sessile::MemoryStore::new());
    /// session.insert("flash", "saved")?;
    /// assert!(session.remove("flash"));
    /// assert!(!session.remove("flash"));
    /// # Ok::<(), sessile::SessionError>(())
    /// ```
    pub fn remove(&self, key: &str) -> bool {
        let mut st = self.0.state();
        let had = st.data.remove(key).is_some();
        st.dirty |= had;
        st.ops.push(Op::Remove(key.to_owned()));
        had
    }

    /// Removes every value; the session itself, its id and its user stay.
    ///
    /// ```
    /// # let session = sessile::Session::new(sessile::MemoryStore::new());
    /// session.insert("a", &1)?;
    /// session.clear();
    /// assert!(session.keys().is_empty());
    /// # Ok::<(), sessile::SessionError>(())
    /// ```
    pub fn clear(&self) {
        let mut st = self.0.state();
        st.dirty |= !st.data.is_empty();
        st.data.clear();
        st.ops.push(Op::Clear);
    }

    /// Logs `user` in: records the user (for [`destroy_everywhere`](Self::destroy_everywhere))
    /// and gives a stored session a new id when the response is saved, as
    /// [`cycle_id`](Self::cycle_id) does, so an id an attacker planted before the login is worth
    /// nothing after it (session fixation). It always does, even when `user` is already logged
    /// in: every successful authentication gets a fresh id. The data stays; the new id lands in
    /// the user's partition, next to the user's other sessions.
    ///
    /// ```
    /// # let session = sessile::Session::new(sessile::MemoryStore::new());
    /// // After checking the password:
    /// session.log_in("alice");
    /// assert_eq!(session.user_id().as_deref(), Some("alice"));
    /// ```
    pub fn log_in(&self, user: &str) {
        self.set_user(Some(user));
        self.cycle_id();
    }

    /// Logs the user out but keeps the session and its data, under a new id (as for a login). To
    /// end the session, [`destroy`](Self::destroy) it instead.
    ///
    /// ```
    /// # let session = sessile::Session::new(sessile::MemoryStore::new());
    /// session.log_in("alice");
    /// session.log_out();
    /// assert_eq!(session.user_id(), None);
    /// ```
    pub fn log_out(&self) {
        self.set_user(None);
        self.cycle_id();
    }

    fn set_user(&self, user: Option<&str>) {
        // Setting a user cannot fail.
        let _ = self.apply(Op::SetUser(user.map(str::to_owned)));
    }

    /// The logged-in user, if any.
    ///
    /// ```
    /// # let session = sessile::Session::new(sessile::MemoryStore::new());
    /// assert_eq!(session.user_id(), None);
    /// ```
    pub fn user_id(&self) -> Option<String> {
        self.0.state().user_id.clone()
    }

    /// Gives the session a new id when the response is saved, for a privilege change other than a
    /// login ([`log_in`](Self::log_in) does this itself). The old id stops working and the new
    /// one holds the data, in one store operation. On a session that is not stored yet it does
    /// nothing: that one gets a fresh id anyway.
    ///
    /// ```
    /// # let session = sessile::Session::new(sessile::MemoryStore::new());
    /// session.insert("role", "admin")?;
    /// session.cycle_id();
    /// # Ok::<(), sessile::SessionError>(())
    /// ```
    pub fn cycle_id(&self) {
        let mut st = self.0.state();
        if st.base.is_some() {
            st.cycle = true;
        }
    }

    /// Ends the session (log out). The record is deleted when the response is saved, and no
    /// request still in flight with it can bring it back. Anything inserted afterwards in this
    /// request starts a new session.
    ///
    /// ```
    /// # let session = sessile::Session::new(sessile::MemoryStore::new());
    /// session.log_in("alice");
    /// session.destroy();
    /// assert_eq!(session.user_id(), None);
    /// assert!(session.is_new());
    /// ```
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

    /// Ends every session of this session's user, on every device and instance, now; and this
    /// one when the response is saved. Returns how many stored sessions were deleted.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), sessile::SessionError> {
    /// # let session = sessile::Session::new(sessile::MemoryStore::new());
    /// session.log_in("alice");
    /// let ended = session.destroy_everywhere().await?;
    /// assert_eq!(ended, 0); // this test session was never stored
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`SessionError::NoUser`] when nobody is logged in; [`SessionError::Store`] when the store
    /// failed (then some of the user's sessions may still live: call it again).
    pub async fn destroy_everywhere(&self) -> Result<u64, SessionError> {
        let user = self.user_id().ok_or(SessionError::NoUser)?;
        let shared = &self.0.shared;
        let n = shared
            .store
            .destroy_user(shared.config.tenant.as_deref(), &user)
            .await
            .map_err(SessionError::Store)?;
        if let Some(copies) = &shared.recent_copies {
            copies.forget_user(&user);
        }
        self.destroy();
        Ok(n)
    }

    /// Whether the store could not be reached and this session is a stand-in: a read-only recent
    /// copy ([`DegradedMode::RecentCopy`](crate::DegradedMode::RecentCopy)) or empty
    /// ([`DegradedMode::Ephemeral`](crate::DegradedMode::Ephemeral)). Changes to a degraded
    /// session are not saved; they are reported as
    /// [`SaveError::Degraded`](crate::SaveError::Degraded).
    ///
    /// ```
    /// # let session = sessile::Session::new(sessile::MemoryStore::new());
    /// assert!(!session.is_degraded());
    /// ```
    pub fn is_degraded(&self) -> bool {
        self.0.state().degraded
    }

    /// Whether the session is not stored yet (no valid cookie, or its record is gone).
    ///
    /// ```
    /// # let session = sessile::Session::new(sessile::MemoryStore::new());
    /// assert!(session.is_new());
    /// ```
    pub fn is_new(&self) -> bool {
        self.0.state().base.is_none()
    }

    /// A redacted form of the session id (its first four hex digits), for display and logs;
    /// `None` for a session not stored yet.
    ///
    /// ```
    /// # let session = sessile::Session::new(sessile::MemoryStore::new());
    /// assert_eq!(session.id_redacted(), None);
    /// ```
    pub fn id_redacted(&self) -> Option<String> {
        self.0.state().base.as_ref().map(|b| b.id.to_string())
    }

    /// When the session was created and expires, and its routing hint; `None` for a session not
    /// stored yet.
    ///
    /// ```
    /// # let session = sessile::Session::new(sessile::MemoryStore::new());
    /// if let Some(info) = session.info() {
    ///     println!("expires at {:?} unless used", info.idle_deadline);
    /// }
    /// ```
    pub fn info(&self) -> Option<SessionInfo> {
        let st = self.0.state();
        let base = st.base.as_ref()?;
        Some(SessionInfo {
            created_at: system_time(base.meta.created_at),
            idle_deadline: system_time(base.idle_deadline),
            absolute_deadline: system_time(base.meta.absolute_deadline),
            hint: base.meta.hint.clone(),
        })
    }

    /// The keys present in the payload.
    ///
    /// ```
    /// # let session = sessile::Session::new(sessile::MemoryStore::new());
    /// session.insert("a", &1)?;
    /// assert_eq!(session.keys(), ["a"]);
    /// # Ok::<(), sessile::SessionError>(())
    /// ```
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

fn system_time(ms: UnixMillis) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
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

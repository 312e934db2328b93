//! What every request of one layer shares, behind one `Arc`.

use std::sync::Arc;

use sessile_token::{KeyRing, TokenCodec};

use super::{RecentCopies, StoreHandle};
use crate::clock::Clock;
use crate::config::SessionConfig;
use crate::error::SaveError;
use crate::hint::HintSource;
use crate::manager::request::RequestSession;

/// Stripes of the per-session commit lock. Two sessions share a stripe with probability
/// 1/4096, which costs them at most one store round trip of waiting; 4096 small mutexes are
/// about 200 KiB per layer.
const COMMIT_STRIPES: usize = 4096;

/// Called with a request's save error and its response's head, before the response leaves: the
/// application's chance to change the status or headers (say, to a 503 and a message).
pub type SaveErrorHook = Arc<dyn Fn(&SaveError, &mut http::response::Parts) + Send + Sync>;

/// Everything requests share: built once by the layer.
pub(crate) struct Shared {
    pub(crate) store: StoreHandle,
    pub(crate) codec: TokenCodec,
    pub(crate) config: SessionConfig,
    pub(crate) hints: Arc<dyn HintSource>,
    pub(crate) clock: Arc<dyn Clock>,
    /// Serialises the writing commits of one session within this instance.
    ///
    /// Compare-and-set alone is correct but not fair: with k writers racing on one session each
    /// attempt wins with probability about 1/k, so under a burst some requests exhaust their
    /// attempts. Queueing the writers of this instance (a tokio mutex is FIFO) leaves only one per
    /// instance in the race, so a retry wins about 1/instances of the time.
    pub(crate) commit_locks: Box<[tokio::sync::Mutex<()>]>,
    /// Recent copies, kept only for [`DegradedMode::RecentCopy`](crate::config::DegradedMode).
    pub(crate) recent_copies: Option<RecentCopies>,
    pub(crate) on_save_error: Option<SaveErrorHook>,
    /// Decides whether a session whose token names another node is re-issued with this node's
    /// hint (`None`: never).
    pub(crate) re_pin: Option<RePinHook>,
}

/// Decides whether to re-issue a cookie whose hint names another node with this node's hint.
pub type RePinHook = Arc<dyn Fn(&RePin<'_>) -> bool + Send + Sync>;

/// The request header an edge sets on a request it did not send to the hinted node, saying why:
/// `down` (that node is down or unknown: the session should move) or `overload` (that node is
/// at its load bound: this request only). The edge router in `examples/edge` sets it.
pub const REROUTE_HEADER: &str = "x-sessile-reroute";

/// A session served away from the node its cookie names.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct RePin<'a> {
    /// The hint in the request's cookie.
    pub from: &'a str,
    /// This node's hint for the session.
    pub to: &'a str,
    /// The request's [`REROUTE_HEADER`], if any.
    pub reroute: Option<&'a str>,
}

impl RePin<'_> {
    /// The default decision: re-pin, unless the edge said the hinted node was only at its load
    /// bound (the session should go back when the burst passes).
    pub fn by_default(&self) -> bool {
        self.reroute != Some("overload")
    }
}

pub(crate) fn commit_stripes() -> Box<[tokio::sync::Mutex<()>]> {
    (0..COMMIT_STRIPES)
        .map(|_| tokio::sync::Mutex::new(()))
        .collect()
}

impl Shared {
    pub(crate) fn commit_lock(&self, id: &crate::SessionId) -> &tokio::sync::Mutex<()> {
        let b = id.as_bytes();
        // Bytes 2.. are random in every id (0..2 are the partition, shared by a user's sessions).
        let n = usize::from(u16::from_le_bytes([b[2], b[3]]));
        &self.commit_locks[n % COMMIT_STRIPES]
    }
}

/// A loaded, empty request session outside any request, over `store`, with the default settings:
/// what [`Session::new`](crate::Session::new) hands to unit tests of handlers.
pub(crate) fn detached(store: impl crate::SessionStore) -> Arc<RequestSession> {
    let layer = super::SessionManagerLayer::builder(store, KeyRing::random(1))
        .without_circuit_breaker()
        .build()
        .expect("the default settings are valid");
    let session = RequestSession::new(layer.shared(), super::request::Cookies::One(None), None);
    let _ = session.loaded.set(Ok(()));
    Arc::new(session)
}

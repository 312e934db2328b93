//! Where the routing hint of a new session comes from.

use sessile_affinity::{RouteHint, route_key};
use sessile_token::Hint;

use crate::SessionId;

/// Chooses the routing hint stamped into a new session's token (and record).
///
/// The default is a fixed hint (this node's id, set with
/// [`SessionManagerBuilder::node_hint`](crate::SessionManagerBuilder::node_hint)). An affinity
/// component can supply its own, for example hashing the id onto a partition. A closure
/// `Fn(&SessionId) -> Hint` is a `HintSource`.
pub trait HintSource: Send + Sync + 'static {
    /// The hint for a session about to be created or rotated to `id`.
    fn hint_for(&self, id: &SessionId) -> Hint;
}

/// Hints for a node that an affinity-aware edge routes on: `<route key>-<node id>` (see
/// [`sessile_affinity::RouteHint`]), where the route key is a stable number derived from the
/// session id, which the edge hashes when the node cannot take the request.
///
/// ```
/// let hints = sessile::AffinityHints::new("node-a").unwrap();
/// # let _ = sessile::SessionManagerLayer::builder(sessile::MemoryStore::new(), sessile::KeyRing::random(1))
/// #     .hint_source(hints);
/// ```
#[derive(Debug, Clone)]
pub struct AffinityHints {
    node: Box<str>,
}

impl AffinityHints {
    /// Hints naming `node`: 1 to 23 characters of `[A-Za-z0-9_-]`.
    pub fn new(node: &str) -> Result<Self, sessile_token::TokenConfigError> {
        let probe = RouteHint { key: 0, node };
        if RouteHint::parse(&probe.to_string()) != Some(probe) {
            return Err(sessile_token::TokenConfigError::BadHint {
                max: sessile_token::MAX_HINT_LEN,
            });
        }
        Ok(Self { node: node.into() })
    }
}

impl HintSource for AffinityHints {
    fn hint_for(&self, id: &SessionId) -> Hint {
        let hint = RouteHint {
            key: route_key(id.as_bytes()),
            node: &self.node,
        };
        Hint::new(&hint.to_string()).unwrap_or_default()
    }
}

impl HintSource for Hint {
    fn hint_for(&self, _: &SessionId) -> Hint {
        self.clone()
    }
}

impl<F> HintSource for F
where
    F: Fn(&SessionId) -> Hint + Send + Sync + 'static,
{
    fn hint_for(&self, id: &SessionId) -> Hint {
        self(id)
    }
}

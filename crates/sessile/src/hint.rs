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

    /// Whether a token's `hint` is what this source gives `id`, or this source gives no hint
    /// (then nothing is re-pinned). Asked on every request with a session cookie: override it
    /// where [`hint_for`](Self::hint_for) allocates.
    fn matches(&self, id: &SessionId, hint: &str) -> bool {
        let own = self.hint_for(id);
        own.is_empty() || own.as_str() == hint
    }
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

    fn matches(&self, id: &SessionId, hint: &str) -> bool {
        RouteHint::parse(hint)
            .is_some_and(|h| h.node == &*self.node && h.key == route_key(id.as_bytes()))
    }
}

impl HintSource for Hint {
    fn hint_for(&self, _: &SessionId) -> Hint {
        self.clone()
    }

    fn matches(&self, _: &SessionId, hint: &str) -> bool {
        self.is_empty() || self.as_str() == hint
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `matches` (asked on every request, without allocating) agrees with `hint_for`.
    #[test]
    fn affinity_hints_match_exactly_their_own_hint() {
        let a = AffinityHints::new("node-a").expect("node id");
        let (id, other) = (SessionId::random(), SessionId::random());
        let own = a.hint_for(&id);
        assert!(a.matches(&id, own.as_str()));
        assert!(
            !a.matches(&other, own.as_str()),
            "another session's route key"
        );
        let b = AffinityHints::new("node-b").expect("node id");
        assert!(!a.matches(&id, b.hint_for(&id).as_str()), "another node");
        for garbage in ["", "node-a", "zzzzzzzz-node-a"] {
            assert!(!a.matches(&id, garbage), "{garbage:?}");
        }
        // A fixed hint; the empty hint re-pins nothing.
        let fixed = Hint::new("node-a").expect("hint");
        assert!(fixed.matches(&id, "node-a") && !fixed.matches(&id, "node-b"));
        assert!(Hint::empty().matches(&id, "node-b"));
    }
}

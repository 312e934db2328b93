//! Where the routing hint of a new session comes from.

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

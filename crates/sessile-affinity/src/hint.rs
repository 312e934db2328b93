//! The routing hint's shape: `<route key>-<node id>`.

use std::fmt;

use crate::hash::hash64;

/// Longest hint the token carries (sessile-token's `MAX_HINT_LEN`).
const MAX_HINT_LEN: usize = 32;
/// Hex digits of the route key.
const KEY_DIGITS: usize = 8;
/// Longest node id that fits a hint with its route key.
pub(crate) const MAX_NODE_ID_LEN: usize = MAX_HINT_LEN - KEY_DIGITS - 1;

/// A parsed routing hint: the session's route key and the node that holds it warm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteHint<'a> {
    /// Stable per session: what the fallback hashes.
    pub key: u32,
    /// The node the session was last served by.
    pub node: &'a str,
}

impl<'a> RouteHint<'a> {
    /// Parses a hint (the part of the cookie before the first `.`; see
    /// [`from_cookie`](Self::from_cookie)). `None` for anything else, the empty hint included.
    pub fn parse(hint: &'a str) -> Option<Self> {
        let (key, node) = hint.split_at_checked(KEY_DIGITS)?;
        let node = node.strip_prefix('-')?;
        if !key.bytes().all(|b| b.is_ascii_hexdigit()) || !valid_node_id(node) {
            return None;
        }
        Some(Self {
            key: u32::from_str_radix(key, 16).ok()?,
            node,
        })
    }

    /// Reads the hint of a sessile cookie value (`<hint>.<sealed>`), without keys.
    pub fn from_cookie(value: &'a str) -> Option<Self> {
        let (hint, _) = value.split_once('.')?;
        Self::parse(hint)
    }
}

impl fmt::Display for RouteHint<'_> {
    /// The hint as the token carries it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}-{}", self.key, self.node)
    }
}

/// The route key of a session: 32 bits of a hash of its id. Not secret (it is in the clear in
/// the cookie) and of no use in guessing the id: a fixed hash of 128 random bits, cut to 32.
pub fn route_key(session_id: &[u8]) -> u32 {
    (hash64(0x5e55_11e0_a771_0001, session_id) >> 32) as u32
}

/// A node id fits a hint: 1 to 23 characters of `[A-Za-z0-9_-]`.
pub(crate) fn valid_node_id(id: &str) -> bool {
    (1..=MAX_NODE_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_other_shapes() {
        let h = RouteHint {
            key: 0x00c0_ffee,
            node: "node-a",
        };
        let text = h.to_string();
        assert_eq!(text, "00c0ffee-node-a");
        assert_eq!(RouteHint::parse(&text), Some(h));
        assert_eq!(
            RouteHint::from_cookie("00c0ffee-node-a.AbCdEf_sealed"),
            Some(h)
        );
        for bad in [
            "",
            "node-a",
            "00c0ffee",
            "00c0ffee-",
            "00c0ffeg-node-a",
            "00c0ffee_node-a",
            "00c0ffee-node.a",
            "00c0ffee-node a",
            "00c0ffee-abcdefghijklmnopqrstuvwx",
            "é0c0ffee-node-a",
        ] {
            assert_eq!(RouteHint::parse(bad), None, "{bad:?}");
        }
        assert_eq!(
            RouteHint::from_cookie("00c0ffee-node-a"),
            None,
            "no sealed part"
        );
    }

    #[test]
    fn route_keys_are_stable_and_spread() {
        assert_eq!(route_key(&[7; 16]), route_key(&[7; 16]));
        let keys: std::collections::HashSet<u32> =
            (0u16..1000).map(|i| route_key(&i.to_le_bytes())).collect();
        assert_eq!(keys.len(), 1000);
    }
}

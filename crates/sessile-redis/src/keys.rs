//! Key layout.
//!
//! ```text
//! <prefix>:[<tenant>:]{<partition>}:s:<session id hex>   session record (hash)
//! <prefix>:[<tenant>:]{<partition>}:i:<user id>          user index (sorted set of session id
//!                                                         hex, scored by absolute deadline)
//! <prefix>:[<tenant>:]{<partition>}:g:<user id>          user generation (integer)
//! <prefix>:[<tenant>:]{<partition>}:w:<write id hex>     a write's outcome, for a minute
//! ```
//!
//! `{<partition>}` is the Redis Cluster hash tag: four hex digits of the session id's partition,
//! which for a logged-in user's sessions is the user's partition (see
//! [`sessile::SessionId::partition`]). So a user's records and index share one slot, and a script
//! can touch them together.

use sessile::SessionId;
use sessile::store::WriteId;

#[derive(Debug, Clone)]
pub(crate) struct KeySpace {
    base: String,
}

impl KeySpace {
    pub(crate) fn new(prefix: &str, tenant: Option<&str>) -> Self {
        let mut base = format!("{prefix}:");
        if let Some(t) = tenant {
            base.push_str(t);
            base.push(':');
        }
        Self { base }
    }

    pub(crate) fn record(&self, id: &SessionId) -> String {
        format!("{}{{{:04x}}}:s:{}", self.base, id.partition(), id.to_hex())
    }

    /// The key that records the outcome of one write, in the slot of `id`'s record.
    pub(crate) fn write(&self, id: &SessionId, write: WriteId) -> String {
        let w = u64::from_be_bytes(*write.as_bytes());
        format!("{}{{{:04x}}}:w:{w:016x}", self.base, id.partition())
    }

    pub(crate) fn index(&self, user: &str) -> String {
        self.user_key("i", user)
    }

    pub(crate) fn generation(&self, user: &str) -> String {
        self.user_key("g", user)
    }

    fn user_key(&self, kind: &str, user: &str) -> String {
        format!(
            "{}{{{:04x}}}:{kind}:{user}",
            self.base,
            SessionId::user_partition(user)
        )
    }

    /// The session id a record key names, for keys read back from an index.
    pub(crate) fn record_for_hex(&self, hex: &str) -> Option<String> {
        SessionId::from_hex(hex).map(|id| self.record(&id))
    }
}

/// Whether a prefix or tenant can be used in keys: no hash-tag braces, no separators, not empty.
pub(crate) fn valid_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'{' | b'}' | b':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_users_records_and_index_share_a_hash_slot() {
        let keys = KeySpace::new("sessile", Some("acme"));
        let index = keys.index("alice");
        assert!(index.starts_with("sessile:acme:{2bd8}:i:alice"), "{index}");
        assert_eq!(keys.generation("alice"), "sessile:acme:{2bd8}:g:alice");
        for _ in 0..10 {
            let id = SessionId::random_for_user(Some("alice"));
            let record = keys.record(&id);
            assert_eq!(
                fred::util::redis_keyslot(record.as_bytes()),
                fred::util::redis_keyslot(index.as_bytes()),
                "{record} vs {index}"
            );
        }
        let id = SessionId::random();
        assert_eq!(keys.record_for_hex(&id.to_hex()), Some(keys.record(&id)));
        assert_eq!(keys.record_for_hex("nope"), None);
    }

    #[test]
    fn braces_and_separators_are_not_valid_key_parts() {
        assert!(valid_part("sessile"));
        for bad in ["", "a{b", "a}b", "a:b", "a b"] {
            assert!(!valid_part(bad), "{bad:?}");
        }
    }
}

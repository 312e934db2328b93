//! Key layout.
//!
//! ```text
//! <prefix>:[<tenant>:]{<partition>}:s:<session id hex>   session record (string: header, user, body)
//! <prefix>:[<tenant>:]{<partition>}:i:<user key>         user index (sorted set of session id
//!                                                         hex, scored by absolute deadline)
//! <prefix>:[<tenant>:]{<partition>}:g:<user key>         user generation (integer)
//!
//! The user key is `<session tenant>:<user id>` (`:<user id>` without one; see
//! `sessile_core::record::user_key`), so that each tenant's users are their own; the partition is the
//! user id's alone.
//! <prefix>:[<tenant>:]{<partition>}:w:<write id hex>     a write's outcome, for a minute
//! <prefix>:[<tenant>:]inv-marker                          present while the database was not
//!                                                         emptied (see the cache tier)
//! <prefix>:[<tenant>:]inv                                 (a channel) invalidations
//! ```
//!
//! `{<partition>}` is the Redis Cluster hash tag: four hex digits of the session id's partition,
//! which for a logged-in user's sessions is the user's partition (see
//! [`sessile_core::SessionId::partition`]). So a user's records and index share one slot, and a script
//! can touch them together.

use sessile_core::store::WriteId;
use sessile_core::{SessionId, push_hex_bytes};

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
        self.key(id.partition(), "s", id.as_bytes())
    }

    /// The key that records the outcome of one write, in the slot of `id`'s record.
    pub(crate) fn write(&self, id: &SessionId, write: WriteId) -> String {
        self.key(id.partition(), "w", write.as_bytes())
    }

    /// [`record`](Self::record), appended to `out`.
    pub(crate) fn push_record(&self, out: &mut Vec<u8>, id: &SessionId) {
        self.push_key(out, id.partition(), "s", id.as_bytes());
    }

    /// [`write`](Self::write), appended to `out`.
    pub(crate) fn push_write(&self, out: &mut Vec<u8>, id: &SessionId, write: WriteId) {
        self.push_key(out, id.partition(), "w", write.as_bytes());
    }

    /// `<base>{<partition>}:<kind>:<hex>`, built without `fmt`.
    fn key(&self, partition: u16, kind: &str, name: &[u8]) -> String {
        let mut key = Vec::with_capacity(self.base.len() + 10 + kind.len() + 2 * name.len());
        self.push_key(&mut key, partition, kind, name);
        // The base is a `String`, the rest ASCII.
        String::from_utf8(key).unwrap_or_default()
    }

    fn push_key(&self, out: &mut Vec<u8>, partition: u16, kind: &str, name: &[u8]) {
        out.extend_from_slice(self.base.as_bytes());
        out.push(b'{');
        push_hex_bytes(out, &partition.to_be_bytes());
        out.extend_from_slice(b"}:");
        out.extend_from_slice(kind.as_bytes());
        out.push(b':');
        push_hex_bytes(out, name);
    }

    /// The channel the scripts publish invalidations on.
    pub(crate) fn channel(&self) -> String {
        format!("{}inv", self.base)
    }

    /// The key whose absence tells the invalidation listeners that the database was emptied.
    pub(crate) fn cache_marker(&self) -> String {
        format!("{}inv-marker", self.base)
    }

    /// The index of `user` within `tenant`.
    pub(crate) fn index(&self, tenant: Option<&str>, user: &str) -> String {
        self.user_key(SessionId::user_partition(user), "i", tenant, user)
    }

    /// The index and the generation of `user` within `tenant`, hashing the user once.
    pub(crate) fn user_keys(&self, tenant: Option<&str>, user: &str) -> [String; 2] {
        let partition = SessionId::user_partition(user);
        ["i", "g"].map(|kind| self.user_key(partition, kind, tenant, user))
    }

    /// In the partition of the user id alone (where the layer puts the user's sessions), named by
    /// the user's key within the tenant.
    fn user_key(&self, partition: u16, kind: &str, tenant: Option<&str>, user: &str) -> String {
        let mut key = Vec::with_capacity(
            self.base.len() + 10 + kind.len() + tenant.map_or(0, str::len) + user.len(),
        );
        self.push_key(&mut key, partition, kind, b"");
        sessile_core::record::push_user_key(&mut key, tenant, user);
        // The base and the user key are `str`s, the rest ASCII.
        String::from_utf8(key).unwrap_or_default()
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
        let index = keys.index(None, "alice");
        assert_eq!(index, "sessile:acme:{2bd8}:i::alice");
        assert_eq!(
            keys.user_keys(Some("t"), "alice"),
            [
                "sessile:acme:{2bd8}:i:t:alice",
                "sessile:acme:{2bd8}:g:t:alice"
            ]
        );
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
        // Pinned: stored keys must keep their names across deploys.
        let id = SessionId::from_bytes([0xab; 16]);
        assert_eq!(
            keys.record(&id),
            format!("sessile:acme:{{abab}}:s:{}", "ab".repeat(16))
        );
        let write = WriteId::from_bytes([1, 2, 3, 4, 5, 6, 7, 0xff]);
        assert_eq!(
            keys.write(&id, write),
            "sessile:acme:{abab}:w:01020304050607ff"
        );
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

use std::fmt;

use rand::Rng;

/// A session id: 128 bits from a cryptographically secure generator.
///
/// Ids are only ever made here, never taken from a client (a cookie carries a sealed id that only
/// this server could have made), so session fixation is not possible.
///
/// `Debug` and `Display` show only the first four hex digits: ids never reach logs in full. Stores
/// that need the whole id (for a key) use [`SessionId::to_hex`] or [`SessionId::as_bytes`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId([u8; 16]);

impl SessionId {
    /// A fresh random id. `ThreadRng` is a CSPRNG (ChaCha12, reseeded from the OS).
    pub fn random() -> Self {
        Self(rand::rng().random())
    }

    /// A fresh id in `user`'s partition (see [`SessionId::partition`]), or in a random one.
    ///
    /// The first two bytes are the partition; the other 112 bits are random, which keeps ids
    /// unguessable (and clients never see ids anyway: tokens are sealed).
    pub fn random_for_user(user: Option<&str>) -> Self {
        let mut id = Self::random();
        if let Some(user) = user {
            id.0[..2].copy_from_slice(&Self::user_partition(user).to_be_bytes());
        }
        id
    }

    /// The id's partition: its first two bytes.
    ///
    /// Sessions of one user share a partition (the layer makes their ids with
    /// [`SessionId::random_for_user`]), so a store can keep all of a user's keys together, for
    /// example in one Redis Cluster hash slot.
    pub fn partition(&self) -> u16 {
        u16::from_be_bytes([self.0[0], self.0[1]])
    }

    /// The partition of `user`'s sessions: the first two bytes of SHA-256 of the user id. Stable
    /// across processes and versions, since stores lay out keys with it.
    pub fn user_partition(user: &str) -> u16 {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(user.as_bytes());
        u16::from_be_bytes([digest[0], digest[1]])
    }

    /// Wraps raw bytes, as found in an opened token or a store key.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The full id as 32 lowercase hex digits, for store keys. Never log this.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(32);
        push_hex(&mut s, &self.0);
        s
    }

    /// Parses [`SessionId::to_hex`] output.
    pub fn from_hex(hex: &str) -> Option<Self> {
        if hex.len() != 32 {
            return None;
        }
        let mut out = [0u8; 16];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Self(out))
    }
}

/// Appends `bytes` as lowercase hex digits: what stores use to name keys, without going through
/// `fmt` for every byte.
pub fn push_hex(out: &mut String, bytes: &[u8]) {
    out.reserve(2 * bytes.len());
    out.extend(hex_digits(bytes).map(char::from));
}

/// [`push_hex`], onto bytes.
pub fn push_hex_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.reserve(2 * bytes.len());
    out.extend(hex_digits(bytes));
}

fn hex_digits(bytes: &[u8]) -> impl Iterator<Item = u8> + '_ {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    bytes
        .iter()
        .flat_map(|&b| [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 0xf)]])
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}{:02x}…", self.0[0], self.0[1])
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_redacted_when_formatted() {
        let id = SessionId::from_bytes([0xab; 16]);
        assert_eq!(format!("{id}"), "abab…");
        assert_eq!(format!("{id:?}"), "SessionId(abab…)");
        assert_eq!(id.to_hex().len(), 32);
    }

    #[test]
    fn user_sessions_share_a_partition_and_stay_random() {
        let a = SessionId::random_for_user(Some("alice"));
        let b = SessionId::random_for_user(Some("alice"));
        assert_eq!(a.partition(), b.partition());
        assert_eq!(a.partition(), SessionId::user_partition("alice"));
        assert_ne!(a, b);
        assert_ne!(
            SessionId::user_partition("alice"),
            SessionId::user_partition("bob")
        );
        // Pinned: stores lay out keys with this value, so it must never change.
        assert_eq!(SessionId::user_partition("alice"), 0x2bd8);
    }

    #[test]
    fn hex_round_trips_and_rejects_garbage() {
        let id = SessionId::random();
        assert_eq!(SessionId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(SessionId::from_hex("zz"), None);
        assert_eq!(SessionId::from_hex(&"g".repeat(32)), None);
        assert_ne!(SessionId::random(), SessionId::random());
    }
}

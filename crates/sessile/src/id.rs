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
        use std::fmt::Write as _;
        let mut s = String::with_capacity(32);
        for b in self.0 {
            let _ = write!(s, "{b:02x}");
        }
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
    fn hex_round_trips_and_rejects_garbage() {
        let id = SessionId::random();
        assert_eq!(SessionId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(SessionId::from_hex("zz"), None);
        assert_eq!(SessionId::from_hex(&"g".repeat(32)), None);
        assert_ne!(SessionId::random(), SessionId::random());
    }
}

use std::fmt;

use aes_gcm_siv::Aes128GcmSiv;
use chacha20poly1305::{KeyInit, XChaCha20Poly1305};
use hkdf::Hkdf;
use rand::RngCore;
use sha2::Sha256;

use crate::TokenConfigError;

/// Identifies one key of a [`KeyRing`]. It travels in every token (unencrypted, authenticated) so the
/// opener knows which key to try. Ids may be reused once no ring holds the old key any more.
pub type KeyId = u8;

/// Shortest accepted master secret, in bytes (256 bits).
pub const MIN_SECRET_LEN: usize = 32;

/// HKDF salt: fixed and public, it only separates this use of a secret from any other.
const HKDF_SALT: &[u8] = b"sessile-token/hkdf-salt/v1";
/// HKDF info prefixes, one per cipher so that one secret never keys two algorithms; the key id is
/// appended so each id gets its own key even from one secret.
const HKDF_INFO: &[u8] = b"sessile-token/xchacha20poly1305/key-id:";
const HKDF_INFO_V2: &[u8] = b"sessile-token/aes128gcmsiv/key-id:";

/// The ciphers of one key: format 2 seals and opens with AES-128-GCM-SIV; format 1 tokens
/// (XChaCha20-Poly1305) still open.
#[derive(Clone)]
pub(crate) struct Ciphers {
    pub(crate) v1: XChaCha20Poly1305,
    pub(crate) v2: Aes128GcmSiv,
}

/// The keys a [`crate::TokenCodec`] seals and opens with.
///
/// The most recently added key is the *primary*: it seals every new token. All keys open tokens.
/// See the crate docs for the rotation procedure.
#[derive(Clone)]
pub struct KeyRing {
    /// Oldest first; the last entry is the primary. A handful of keys at most, so a linear scan by id
    /// beats any map.
    keys: Vec<(KeyId, Ciphers)>,
}

impl KeyRing {
    /// A ring with one key, derived from `secret` (at least [`MIN_SECRET_LEN`] bytes).
    pub fn new(id: KeyId, secret: &[u8]) -> Result<Self, TokenConfigError> {
        Ok(Self {
            keys: vec![(id, derive(id, secret)?)],
        })
    }

    /// A ring with one key from a fresh random secret.
    ///
    /// For development only: tokens die with the process and are not shared between instances.
    pub fn random(id: KeyId) -> Self {
        let mut secret = zeroize::Zeroizing::new([0u8; MIN_SECRET_LEN]);
        rand::rng().fill_bytes(secret.as_mut());
        Self::new(id, secret.as_ref()).expect("a 32-byte secret is long enough")
    }

    /// Adds a key that becomes the primary (the one new tokens are sealed with).
    pub fn with_key(mut self, id: KeyId, secret: &[u8]) -> Result<Self, TokenConfigError> {
        if self.keys.iter().any(|(k, _)| *k == id) {
            return Err(TokenConfigError::DuplicateKeyId(id));
        }
        self.keys.push((id, derive(id, secret)?));
        Ok(self)
    }

    /// Removes a key. Tokens sealed with it stop opening. Removing the last key is refused, since a
    /// ring must be able to seal.
    pub fn without_key(mut self, id: KeyId) -> Result<Self, TokenConfigError> {
        if self.keys.len() == 1 && self.keys[0].0 == id {
            return Err(TokenConfigError::BadKeySpec(
                "a key ring needs at least one key",
            ));
        }
        self.keys.retain(|(k, _)| *k != id);
        Ok(self)
    }

    /// Parses `"<id>:<hex secret>,<id>:<hex secret>,..."`, oldest first, newest (primary) last.
    ///
    /// This is the form the example app reads from its environment; whitespace around entries is
    /// ignored.
    pub fn parse(spec: &str) -> Result<Self, TokenConfigError> {
        let mut ring: Option<Self> = None;
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (id, hex) = entry.split_once(':').ok_or(TokenConfigError::BadKeySpec(
                "each entry must be <id>:<hex secret>",
            ))?;
            let id: KeyId = id.trim().parse().map_err(|_| {
                TokenConfigError::BadKeySpec("key id must be a number from 0 to 255")
            })?;
            let secret = decode_hex(hex.trim()).map(zeroize::Zeroizing::new).ok_or(
                TokenConfigError::BadKeySpec("secret must be an even number of hex digits"),
            )?;
            ring = Some(match ring {
                None => Self::new(id, &secret)?,
                Some(r) => r.with_key(id, &secret)?,
            });
        }
        ring.ok_or(TokenConfigError::BadKeySpec("no keys given"))
    }

    /// Id of the key new tokens are sealed with.
    pub fn primary_id(&self) -> KeyId {
        self.primary().0
    }

    /// Ids of all keys, oldest first.
    pub fn ids(&self) -> impl Iterator<Item = KeyId> + '_ {
        self.keys.iter().map(|(id, _)| *id)
    }

    pub(crate) fn primary(&self) -> &(KeyId, Ciphers) {
        self.keys.last().expect("a key ring is never empty")
    }

    pub(crate) fn get(&self, id: KeyId) -> Option<&Ciphers> {
        self.keys.iter().find(|(k, _)| *k == id).map(|(_, c)| c)
    }
}

impl fmt::Debug for KeyRing {
    // Never print key material; ids are enough to debug a rotation.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("ids", &self.ids().collect::<Vec<_>>())
            .field("primary", &self.primary_id())
            .finish()
    }
}

fn derive(id: KeyId, secret: &[u8]) -> Result<Ciphers, TokenConfigError> {
    if secret.len() < MIN_SECRET_LEN {
        return Err(TokenConfigError::WeakSecret {
            len: secret.len(),
            min: MIN_SECRET_LEN,
        });
    }
    let hk = Hkdf::<Sha256>::new(Some(HKDF_SALT), secret);
    // The derived keys live on in the ciphers (which wipe them when dropped); wipe these copies.
    let expand = |prefix: &[u8], okm: &mut [u8]| {
        let mut info = [0u8; 64];
        info[..prefix.len()].copy_from_slice(prefix);
        info[prefix.len()] = id;
        hk.expand(&info[..=prefix.len()], okm)
            .expect("16 or 32 bytes is a valid HKDF-SHA256 output length");
    };
    let mut v1 = zeroize::Zeroizing::new([0u8; 32]);
    expand(HKDF_INFO, v1.as_mut());
    let mut v2 = zeroize::Zeroizing::new([0u8; 16]);
    expand(HKDF_INFO_V2, v2.as_mut());
    Ok(Ciphers {
        v1: XChaCha20Poly1305::new(&(*v1).into()),
        v2: Aes128GcmSiv::new(&(*v2).into()),
    })
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_secrets_are_refused() {
        assert_eq!(
            KeyRing::new(1, &[0; 31]).err(),
            Some(TokenConfigError::WeakSecret { len: 31, min: 32 })
        );
    }

    #[test]
    fn newest_key_is_primary_and_duplicates_are_refused() {
        let ring = KeyRing::new(1, &[1; 32])
            .and_then(|r| r.with_key(2, &[2; 32]))
            .expect("valid ring");
        assert_eq!(ring.primary_id(), 2);
        assert_eq!(
            ring.clone().with_key(1, &[3; 32]).err(),
            Some(TokenConfigError::DuplicateKeyId(1))
        );
        let ring = ring.without_key(2).expect("one key left");
        assert_eq!(ring.primary_id(), 1);
        assert!(ring.without_key(1).is_err());
    }

    #[test]
    fn parse_reads_oldest_first() {
        let a = "11".repeat(32);
        let b = "22".repeat(32);
        let ring = KeyRing::parse(&format!(" 3:{a} , 9:{b} ")).expect("valid spec");
        assert_eq!(ring.ids().collect::<Vec<_>>(), vec![3, 9]);
        assert_eq!(ring.primary_id(), 9);
        assert!(KeyRing::parse("").is_err());
        assert!(KeyRing::parse("1:zz").is_err());
        assert!(KeyRing::parse("x:00").is_err());
        assert!(KeyRing::parse("300:00").is_err());
        assert!(matches!(
            KeyRing::parse("1:0011"),
            Err(TokenConfigError::WeakSecret { .. })
        ));
    }

    #[test]
    fn debug_output_has_no_key_material() {
        let ring = KeyRing::new(5, &[0xAB; 32]).expect("valid ring");
        let shown = format!("{ring:?}");
        assert!(shown.contains("primary: 5"), "{shown}");
        assert!(!shown.to_lowercase().contains("ab, ab"), "{shown}");
    }
}

use aes_gcm_siv::aead::{AeadInPlace, generic_array::GenericArray};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;

use crate::hint::is_valid_hint;
use crate::{Hint, KeyId, KeyRing, MAX_HINT_LEN, OpenError, TokenConfigError};

/// Format byte written first in every sealed part by [`TokenCodec::seal`]; bumped when the layout
/// changes. Tokens of format 1 still open.
pub const TOKEN_FORMAT_VERSION: u8 = 2;

/// Longest cookie name a codec accepts; it is bound into every token as associated data.
const MAX_COOKIE_NAME_LEN: usize = 64;

/// One layout of the sealed part, before base64:
///
/// ```text
///   [0]   format version          [1]  key id
///   nonce (random)                then the ciphertext of session id (16) | issued_at (u32, BE)
///   then the tag (16)
/// ```
///
/// Format 2 is AES-128-GCM-SIV with a 96-bit nonce (50 bytes, 67 characters); format 1 was
/// XChaCha20-Poly1305 with a 192-bit nonce (62 bytes, 83 characters).
struct Layout {
    version: u8,
    nonce_len: usize,
}

const V1: Layout = Layout {
    version: 1,
    nonce_len: 24,
};
const V2: Layout = Layout {
    version: 2,
    nonce_len: 12,
};

const HEADER_LEN: usize = 2;
const PLAIN_LEN: usize = 16 + 4;
const TAG_LEN: usize = 16;
/// The longest sealed part (format 1).
const SEALED_MAX: usize = HEADER_LEN + 24 + PLAIN_LEN + TAG_LEN;

impl Layout {
    const fn cipher_at(&self) -> usize {
        HEADER_LEN + self.nonce_len
    }
    const fn tag_at(&self) -> usize {
        self.cipher_at() + PLAIN_LEN
    }
    const fn sealed_len(&self) -> usize {
        self.tag_at() + TAG_LEN
    }
    /// base64url without padding of the sealed part.
    const fn encoded_len(&self) -> usize {
        (self.sealed_len() * 4).div_ceil(3)
    }
}

/// Longest context (tenant) a codec accepts; it is bound into every token as associated data.
pub const MAX_CONTEXT_LEN: usize = 64;
/// Associated data: name length, name, hint length, hint, [context length, context,] header.
const AAD_MAX: usize =
    1 + MAX_COOKIE_NAME_LEN + 1 + MAX_HINT_LEN + 1 + MAX_CONTEXT_LEN + HEADER_LEN;

/// What a token proves once opened: which session, and when the token was issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claims {
    /// The 128-bit session id.
    pub session_id: [u8; 16],
    /// When this token was sealed, in seconds since the Unix epoch. The session layer uses it to
    /// know when the cookie's own expiry needs moving.
    pub issued_at: u32,
}

/// A successfully opened token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened<'a> {
    /// The authenticated claims.
    pub claims: Claims,
    /// The routing hint, authenticated.
    pub hint: &'a str,
    /// The key that sealed the token.
    pub key_id: KeyId,
    /// Whether the token was sealed in the current format with the ring's primary key; if not,
    /// it should be re-sealed.
    pub sealed_with_primary: bool,
}

/// Seals and opens tokens for one cookie name with one key ring.
#[derive(Clone, Debug)]
pub struct TokenCodec {
    keys: KeyRing,
    cookie_name: Box<str>,
    context: Box<str>,
}

impl TokenCodec {
    /// A codec for tokens carried in the cookie called `cookie_name`.
    pub fn new(keys: KeyRing, cookie_name: &str) -> Result<Self, TokenConfigError> {
        if !is_valid_cookie_name(cookie_name) {
            return Err(TokenConfigError::BadCookieName {
                max: MAX_COOKIE_NAME_LEN,
            });
        }
        Ok(Self {
            keys,
            cookie_name: cookie_name.into(),
            context: "".into(),
        })
    }

    /// Binds `context` (a tenant, say) into every token, as associated data: a token sealed under
    /// one context never opens under another, or under none. Tokens of a codec without a context
    /// are exactly those of earlier versions.
    pub fn with_context(mut self, context: &str) -> Result<Self, TokenConfigError> {
        if context.is_empty()
            || context.len() > MAX_CONTEXT_LEN
            || !context.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(TokenConfigError::BadContext {
                max: MAX_CONTEXT_LEN,
            });
        }
        self.context = context.into();
        Ok(self)
    }

    /// The key ring.
    pub fn keys(&self) -> &KeyRing {
        &self.keys
    }

    /// The cookie name bound into every token.
    pub fn cookie_name(&self) -> &str {
        &self.cookie_name
    }

    /// Seals `claims` with the primary key, binding `hint` and the cookie name.
    pub fn seal(&self, claims: &Claims, hint: &Hint) -> String {
        let mut nonce = [0u8; 12];
        // ThreadRng is a CSPRNG (ChaCha, reseeded from the OS); it avoids a syscall per token.
        rand::rng().fill_bytes(&mut nonce);
        self.seal_with_nonce(claims, hint, &nonce)
    }

    /// [`seal`](Self::seal) with a given nonce: for the fixed test vectors only. With GCM-SIV a
    /// repeated nonce reveals only that two tokens sealed the same claims, never a key.
    fn seal_with_nonce(&self, claims: &Claims, hint: &Hint, nonce: &[u8; 12]) -> String {
        let (key_id, ciphers) = self.keys.primary();
        self.seal_as(&V2, &ciphers.v2, *key_id, claims, hint, nonce)
    }

    fn seal_as<A: AeadInPlace>(
        &self,
        layout: &Layout,
        aead: &A,
        key_id: KeyId,
        claims: &Claims,
        hint: &Hint,
        nonce: &[u8],
    ) -> String {
        let (cipher_at, tag_at) = (layout.cipher_at(), layout.tag_at());
        let mut raw = [0u8; SEALED_MAX];
        let buf = &mut raw[..layout.sealed_len()];
        buf[0] = layout.version;
        buf[1] = key_id;
        buf[HEADER_LEN..cipher_at].copy_from_slice(nonce);
        buf[cipher_at..cipher_at + 16].copy_from_slice(&claims.session_id);
        buf[cipher_at + 16..tag_at].copy_from_slice(&claims.issued_at.to_be_bytes());

        let mut aad = [0u8; AAD_MAX];
        let aad = self.aad(&mut aad, hint.as_str(), [buf[0], buf[1]]);
        let tag = aead
            .encrypt_in_place_detached(
                GenericArray::from_slice(nonce),
                aad,
                &mut buf[cipher_at..tag_at],
            )
            .expect("the AEAD seals 20 bytes without error");
        buf[tag_at..].copy_from_slice(&tag);

        let mut out = String::with_capacity(hint.as_str().len() + 1 + layout.encoded_len());
        out.push_str(hint.as_str());
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(buf, &mut out);
        out
    }

    /// Opens a token of either format. Every failure is an [`OpenError`]; nothing here panics on
    /// any input.
    pub fn open<'t>(&self, token: &'t str) -> Result<Opened<'t>, OpenError> {
        let (hint, sealed) = token.split_once('.').ok_or(OpenError::Malformed)?;
        let layout = if sealed.len() == V2.encoded_len() {
            &V2
        } else if sealed.len() == V1.encoded_len() {
            &V1
        } else {
            return Err(OpenError::Malformed);
        };
        if !is_valid_hint(hint) {
            return Err(OpenError::Malformed);
        }
        // Decoding may need room for up to two bytes more before it knows the last is partial.
        let mut raw = [0u8; SEALED_MAX + 3];
        let n = URL_SAFE_NO_PAD
            .decode_slice(sealed, &mut raw)
            .map_err(|_| OpenError::Malformed)?;
        if n != layout.sealed_len() {
            return Err(OpenError::Malformed);
        }
        let buf = &mut raw[..n];
        if buf[0] != layout.version {
            return Err(OpenError::UnsupportedVersion(buf[0]));
        }
        let key_id = buf[1];
        let ciphers = self.keys.get(key_id).ok_or(OpenError::UnknownKey(key_id))?;

        let mut aad = [0u8; AAD_MAX];
        let aad = self.aad(&mut aad, hint, [buf[0], buf[1]]);
        let (head, rest) = buf.split_at_mut(layout.cipher_at());
        let (cipher, tag) = rest.split_at_mut(PLAIN_LEN);
        let nonce = &head[HEADER_LEN..];
        let opened = if layout.version == V2.version {
            open_in_place(&ciphers.v2, nonce, aad, cipher, tag)
        } else {
            open_in_place(&ciphers.v1, nonce, aad, cipher, tag)
        };
        opened.map_err(|_| OpenError::Invalid)?;

        let mut session_id = [0u8; 16];
        session_id.copy_from_slice(&cipher[..16]);
        let mut issued = [0u8; 4];
        issued.copy_from_slice(&cipher[16..]);
        Ok(Opened {
            claims: Claims {
                session_id,
                issued_at: u32::from_be_bytes(issued),
            },
            hint,
            key_id,
            // A format-1 token is re-sealed (in format 2) as if its key were old.
            sealed_with_primary: key_id == self.keys.primary_id() && layout.version == V2.version,
        })
    }

    /// Length-prefixed cookie name, hint and (when set) context, then the header: unambiguous, so
    /// no two different (name, hint, context) triples produce the same associated data. Without a
    /// context the bytes are those of codecs that had none.
    fn aad<'b>(&self, out: &'b mut [u8; AAD_MAX], hint: &str, header: [u8; 2]) -> &'b [u8] {
        let name = self.cookie_name.as_bytes();
        let context = self.context.as_bytes();
        let parts: &[&[u8]] = if context.is_empty() {
            &[name, hint.as_bytes()]
        } else {
            &[name, hint.as_bytes(), context]
        };
        let mut at = 0;
        for part in parts {
            // Every length is bounded (64, 32, 64) by validation, so it fits in one byte.
            out[at] = part.len() as u8;
            out[at + 1..at + 1 + part.len()].copy_from_slice(part);
            at += 1 + part.len();
        }
        out[at..at + HEADER_LEN].copy_from_slice(&header);
        &out[..at + HEADER_LEN]
    }
}

fn open_in_place<A: AeadInPlace>(
    aead: &A,
    nonce: &[u8],
    aad: &[u8],
    cipher: &mut [u8],
    tag: &[u8],
) -> Result<(), aes_gcm_siv::aead::Error> {
    aead.decrypt_in_place_detached(
        GenericArray::from_slice(nonce),
        aad,
        cipher,
        GenericArray::from_slice(tag),
    )
}

/// Reads the routing hint of a token without any key. The result is *not* authenticated: use it to
/// route, never to decide anything that matters for security. Returns `None` when the token has no
/// well-formed hint.
pub fn hint_of(token: &str) -> Option<&str> {
    let (hint, _) = token.split_once('.')?;
    is_valid_hint(hint).then_some(hint)
}

fn is_valid_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_COOKIE_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn codec(name: &str) -> TokenCodec {
        TokenCodec::new(KeyRing::new(1, &[9; 32]).expect("ring"), name).expect("codec")
    }

    fn claims(id: [u8; 16], t: u32) -> Claims {
        Claims {
            session_id: id,
            issued_at: t,
        }
    }

    #[test]
    fn token_is_under_a_hundred_characters() {
        let c = codec("__Host-session");
        let t = c.seal(&claims([1; 16], 5), &Hint::new("node-12").expect("hint"));
        assert_eq!(V2.encoded_len(), 67);
        assert_eq!(t.len(), "node-12.".len() + 67);
        let longest = c.seal(
            &claims([1; 16], 5),
            &Hint::new(&"h".repeat(32)).expect("hint"),
        );
        assert_eq!(longest.len(), 100);
    }

    #[test]
    fn two_seals_of_the_same_claims_differ() {
        let c = codec("id");
        let h = Hint::empty();
        assert_ne!(
            c.seal(&claims([1; 16], 5), &h),
            c.seal(&claims([1; 16], 5), &h)
        );
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let c = codec("id");
        for bad in [
            "",
            ".",
            "..",
            "abc",
            "a.b",
            "é.é",
            &"A".repeat(5000),
            "x.\u{0}",
        ] {
            assert!(c.open(bad).is_err(), "{bad:?}");
        }
        let good = c.seal(&claims([3; 16], 7), &Hint::empty());
        let mut raw = URL_SAFE_NO_PAD.decode(&good[1..]).expect("base64");
        raw[0] = 9;
        let wrong_version = format!(".{}", URL_SAFE_NO_PAD.encode(&raw));
        assert_eq!(
            c.open(&wrong_version),
            Err(OpenError::UnsupportedVersion(9))
        );
    }

    #[test]
    fn formats_are_pinned_by_known_answer_vectors() {
        // Tokens sealed with a fixed key, nonce and claims. If an assertion fails, the wire format
        // changed and tokens in browsers would stop opening: add a format (a new version byte) and
        // keep reading the old ones instead.
        let codec =
            TokenCodec::new(KeyRing::new(7, &[0x42; 32]).expect("keys"), "sid").expect("codec");
        let tenant = codec.clone().with_context("acme").expect("context");
        let claims = Claims {
            session_id: *b"0123456789abcdef",
            issued_at: 1_700_000_000,
        };
        let hint = Hint::new("node-1").expect("hint");

        // Format 2 (AES-128-GCM-SIV), what `seal` makes.
        let nonce: [u8; 12] = std::array::from_fn(|i| i as u8);
        assert_eq!(codec.seal_with_nonce(&claims, &hint, &nonce), PLAIN_V2);
        assert_eq!(tenant.seal_with_nonce(&claims, &hint, &nonce), TENANT_V2);
        for (c, token) in [(&codec, PLAIN_V2), (&tenant, TENANT_V2)] {
            let opened = c.open(token).expect("opens");
            assert_eq!(opened.claims, claims);
            assert!(opened.sealed_with_primary);
        }

        // Format 1 (XChaCha20-Poly1305), as the first release sealed it: still opens, and is
        // marked for re-sealing in the current format.
        let (key_id, ciphers) = codec.keys.primary();
        let nonce: [u8; 24] = std::array::from_fn(|i| i as u8);
        let v1 = |c: &TokenCodec| c.seal_as(&V1, &ciphers.v1, *key_id, &claims, &hint, &nonce);
        assert_eq!(v1(&codec), PLAIN_V1);
        assert_eq!(v1(&tenant), TENANT_V1);
        for (c, token) in [(&codec, PLAIN_V1), (&tenant, TENANT_V1)] {
            let opened = c.open(token).expect("opens");
            assert_eq!(opened.claims, claims);
            assert!(!opened.sealed_with_primary, "format 1 is re-sealed");
        }
        assert!(matches!(tenant.open(PLAIN_V1), Err(OpenError::Invalid)));
        assert!(matches!(codec.open(TENANT_V2), Err(OpenError::Invalid)));
    }

    const PLAIN_V1: &str = "node-1.AQcAAQIDBAUGBwgJCgsMDQ4PEBESExQVFhd5Rret2-AlahL1jzNJs15rjBhlGCZIgdP0x7tZvMospHcKHms";
    const TENANT_V1: &str = "node-1.AQcAAQIDBAUGBwgJCgsMDQ4PEBESExQVFhd5Rret2-AlahL1jzNJs15rjBhlGNMcfPy-gBUCRLoGSJFV9BU";
    const PLAIN_V2: &str =
        "node-1.AgcAAQIDBAUGBwgJCgt1HNUor82t5Hl0bjqTlX5WNfS6pModeu2sJuqnnFUgydEEKz8";
    const TENANT_V2: &str =
        "node-1.AgcAAQIDBAUGBwgJCgvp_3cfrNsDd7JVLo_jBl2OJacVxZprnXUiB-11W0oXLmIj_3Q";

    #[test]
    fn a_token_of_one_context_opens_under_no_other() {
        let keys = KeyRing::new(1, &[9; 32]).expect("keys");
        let plain = TokenCodec::new(keys.clone(), "sid").expect("codec");
        let acme = plain.clone().with_context("acme").expect("context");
        let globex = plain.clone().with_context("globex").expect("context");
        let claims = Claims {
            session_id: [3; 16],
            issued_at: 7,
        };
        let hint = Hint::new("n1").expect("hint");
        let token = acme.seal(&claims, &hint);
        assert_eq!(acme.open(&token).expect("opens").claims, claims);
        assert!(matches!(globex.open(&token), Err(OpenError::Invalid)));
        assert!(matches!(plain.open(&token), Err(OpenError::Invalid)));
        let untenanted = plain.seal(&claims, &hint);
        assert!(matches!(acme.open(&untenanted), Err(OpenError::Invalid)));
        for bad in ["", "a b", &"x".repeat(65)] {
            assert!(plain.clone().with_context(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bad_cookie_names_are_refused() {
        let ring = KeyRing::new(1, &[9; 32]).expect("ring");
        for bad in ["", "a b", "a;b", "a=b", &"n".repeat(65)] {
            assert!(TokenCodec::new(ring.clone(), bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn old_key_opens_and_dropped_key_does_not() {
        let old = KeyRing::new(1, &[1; 32]).expect("ring");
        let rotated = old.clone().with_key(2, &[2; 32]).expect("ring");
        let dropped = rotated.clone().without_key(1).expect("ring");
        let t_old = TokenCodec::new(old, "id")
            .expect("c")
            .seal(&claims([5; 16], 1), &Hint::empty());

        let opened_rotated = TokenCodec::new(rotated, "id").expect("c");
        let o = opened_rotated.open(&t_old).expect("old key still in ring");
        assert_eq!((o.key_id, o.sealed_with_primary), (1, false));
        let fresh = opened_rotated.seal(&o.claims, &Hint::empty());
        assert!(
            opened_rotated
                .open(&fresh)
                .expect("opens")
                .sealed_with_primary
        );

        let opened_dropped = TokenCodec::new(dropped, "id").expect("c");
        assert_eq!(opened_dropped.open(&t_old), Err(OpenError::UnknownKey(1)));
    }

    #[test]
    fn same_id_with_another_secret_fails_authentication() {
        let a = TokenCodec::new(KeyRing::new(1, &[1; 32]).expect("r"), "id").expect("c");
        let b = TokenCodec::new(KeyRing::new(1, &[2; 32]).expect("r"), "id").expect("c");
        let t = a.seal(&claims([5; 16], 1), &Hint::empty());
        assert_eq!(b.open(&t), Err(OpenError::Invalid));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn round_trip(id in any::<[u8; 16]>(), t in any::<u32>(), hint in "[A-Za-z0-9_-]{0,32}") {
            let c = codec("sid");
            let token = c.seal(&claims(id, t), &Hint::new(&hint).expect("valid"));
            let opened = c.open(&token).expect("opens");
            prop_assert_eq!(opened.claims, claims(id, t));
            prop_assert_eq!(opened.hint, hint.as_str());
            prop_assert_eq!(hint_of(&token), Some(hint.as_str()));
        }

        #[test]
        fn every_single_bit_flip_is_rejected(id in any::<[u8; 16]>(), hint in "[a-z0-9-]{0,8}") {
            let c = codec("sid");
            let token = c.seal(&claims(id, 77), &Hint::new(&hint).expect("valid"));
            let bytes = token.as_bytes();
            for i in 0..bytes.len() {
                for bit in 0..8 {
                    let mut flipped = bytes.to_vec();
                    flipped[i] ^= 1 << bit;
                    // A flip that breaks UTF-8 cannot even be handed to `open` as text.
                    if let Ok(s) = String::from_utf8(flipped) {
                        prop_assert!(c.open(&s).is_err(), "flip of bit {} in byte {} accepted", bit, i);
                    }
                }
            }
        }

        #[test]
        fn every_truncation_is_rejected(id in any::<[u8; 16]>()) {
            let c = codec("sid");
            let token = c.seal(&claims(id, 1), &Hint::new("n1").expect("valid"));
            for len in 0..token.len() {
                prop_assert!(c.open(&token[..len]).is_err(), "prefix of {} accepted", len);
            }
            let mut longer = token.clone();
            longer.push('A');
            prop_assert!(c.open(&longer).is_err());
        }

        #[test]
        fn hint_or_cookie_name_swap_is_rejected(id in any::<[u8; 16]>(), other in "[a-z]{1,8}") {
            let c = codec("sid");
            let token = c.seal(&claims(id, 1), &Hint::new("node-a").expect("valid"));
            let (_, sealed) = token.split_once('.').expect("dot");
            let swapped = format!("{other}.{sealed}");
            prop_assert_eq!(c.open(&swapped), Err(OpenError::Invalid));
            let other_cookie = codec(&format!("x{other}"));
            prop_assert_eq!(other_cookie.open(&token), Err(OpenError::Invalid));
        }
    }
}

//! Sealed session tokens for `sessile`.
//!
//! A token is what the session cookie carries. It has two parts joined by a dot:
//!
//! ```text
//! <hint>.<sealed>
//! node-7.AQF3l0...   (about 90 characters with a short hint)
//! ```
//!
//! * `hint` is the routing hint: the node or partition that owns the session. It is plain text so an
//!   edge proxy (nginx, HAProxy, Envoy) can route on it with no keys, using
//!   [`hint_of`].
//! * `sealed` is URL-safe base64 (no padding) of `version | key id | nonce | ciphertext | tag`, an
//!   XChaCha20-Poly1305 seal of the session id and the issue time. The cookie name, the hint and the
//!   header bytes are bound as associated data, so a token moved to another cookie, or given another
//!   hint, fails to open.
//!
//! The crate has no async runtime or web framework dependency, so an edge router can use it alone.
//!
//! ```
//! use sessile_token::{Claims, Hint, KeyRing, TokenCodec};
//!
//! let keys = KeyRing::new(1, &[7u8; 32])?;
//! let codec = TokenCodec::new(keys, "id")?;
//! let claims = Claims { session_id: [42; 16], issued_at: 1_700_000_000 };
//! let token = codec.seal(&claims, &Hint::new("node-1")?);
//! assert!(token.len() <= 100);
//! assert_eq!(sessile_token::hint_of(&token), Some("node-1"));
//!
//! let opened = codec.open(&token)?;
//! assert_eq!(opened.claims, claims);
//! assert_eq!(opened.hint, "node-1");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Key rotation
//!
//! A [`KeyRing`] holds several keys; it seals with the newest and opens with any of them. To rotate
//! without logging anybody out:
//!
//! 1. add the new key as the newest in every instance's ring and deploy; tokens sealed with the old
//!    key still open, and the session layer re-seals them with the new key the next time it sees them;
//! 2. after at least one absolute session lifetime, drop the old key and deploy again. Tokens that
//!    still carry it now open to [`OpenError::UnknownKey`], which the session layer treats as "no
//!    session".
//!
//! # Performance
//!
//! A token is 20 bytes of plaintext, so the AEAD's per-call set-up is most of its cost. The
//! `chacha20` and `poly1305` crates pick AVX2 backends at run time, whose set-up is the larger. In
//! a default build (what an application gets, and what this workspace measures: it sets no build
//! flags) seal and open take 2.25 µs each, 22x one SHA-256 of 64 bytes in the same criterion run
//! (`cargo bench -p sessile-token`). Those crates' documented `chacha20_force_soft` and
//! `poly1305_force_soft` cfgs select the portable backends and brought both to 0.33-0.57 µs on the
//! same machine, for an application that sets them in its own build.
//!
//! # Security
//!
//! * Master secrets must be at least [`MIN_SECRET_LEN`] bytes of high-entropy random data. Each key is
//!   derived from its secret with HKDF-SHA256 and the key id, so one secret is never used directly.
//! * Nonces are 24 random bytes from a cryptographically secure generator: XChaCha20's nonce is large
//!   enough that random nonces do not collide at any realistic volume.
//! * The hint is authenticated but not secret: do not put anything private in it.
//! * Anything that fails to open is a typed [`OpenError`], never a panic.

mod codec;
mod error;
mod hint;
mod keys;

pub use codec::{Claims, MAX_CONTEXT_LEN, Opened, TOKEN_FORMAT_VERSION, TokenCodec, hint_of};
pub use error::{OpenError, TokenConfigError};
pub use hint::{Hint, MAX_HINT_LEN};
pub use keys::{KeyId, KeyRing, MIN_SECRET_LEN};

//! Sealed session tokens for `sessile`.
//!
//! A token is what the session cookie carries. It has two parts joined by a dot:
//!
//! ```text
//! <hint>.<sealed>
//! node-7.AgF3l0...   (74 characters with this hint)
//! ```
//!
//! * `hint` is the routing hint: the node or partition that owns the session. It is plain text so an
//!   edge proxy (nginx, HAProxy, Envoy) can route on it with no keys, using
//!   [`hint_of`].
//! * `sealed` is URL-safe base64 (no padding) of `version | key id | nonce | ciphertext | tag`, an
//!   AES-128-GCM-SIV seal of the session id and the issue time. The cookie name, the hint and the
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
//! # Format and performance
//!
//! Format 2, what [`TokenCodec::seal`] makes, is AES-128-GCM-SIV (RFC 8452) with a random 96-bit
//! nonce: 50 bytes, 67 characters after the hint. Format 1 (XChaCha20-Poly1305, 83 characters)
//! still opens, and the session layer re-seals such a token in format 2 the next time it sees it
//! ([`Opened::sealed_with_primary`] is false for it).
//!
//! A token is 20 bytes of plaintext, so per-call set-up is most of an AEAD's cost. The choice was
//! measured in a default build (what an application gets: the workspace sets no build flags), on
//! one machine in one criterion run, against one SHA-256 of 64 bytes (81 ns):
//!
//! | candidate | seal (AEAD only) | ratio |
//! |---|---|---|
//! | XChaCha20-Poly1305 (format 1; AVX2 backends chosen at run time) | 1.79 µs | 22x |
//! | AES-256-GCM-SIV | 480 ns | 5.8x |
//! | AES-128-GCM-SIV (format 2) | 309 ns | 3.8x |
//! | AES-256-GCM (96-bit random nonce: unsafe past about 2^32 tokens per key) | 158 ns | 1.9x |
//!
//! Whole tokens with format 2 (`cargo bench -p sessile-token`, same run as the baseline): seal
//! 407 ns (5.0x), open 369 ns (4.5x); with AES-256-GCM-SIV they were 543 and 524 ns (6.9x and
//! 6.7x), over the budget of 6x. The AES and POLYVAL backends (AES-NI, CLMUL) are detected at run
//! time; the cipher of each key is built once, when the key ring is, and kept.
//!
//! # Security
//!
//! * Master secrets must be at least [`MIN_SECRET_LEN`] bytes of high-entropy random data. Each key is
//!   derived from its secret with HKDF-SHA256, the key id and the cipher's name, so one secret is
//!   never used directly, nor for two algorithms.
//! * Nonces are 12 random bytes from a cryptographically secure generator. GCM-SIV is
//!   nonce-misuse-resistant: should two tokens ever share a nonce (expected after about 2^48
//!   tokens under one key), it reveals only whether their claims are equal, never a key or a
//!   plaintext, so the nonce is safe at any volume.
//! * 128-bit keys: ample for tokens whose keys rotate (see above); the master secret stays 256 bits.
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

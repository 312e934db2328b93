use thiserror::Error;

/// Why a token did not open.
///
/// To a session layer every variant means the same thing: there is no session. They are kept apart
/// for metrics and debugging.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The token does not have the shape of a sealed token (length, separator, alphabet).
    #[error("token is malformed")]
    Malformed,
    /// The token was sealed by a newer or older format this build does not read.
    #[error("token format version {0} is not supported")]
    UnsupportedVersion(u8),
    /// The token names a key id that is not in the ring (for example a dropped key).
    #[error("token was sealed with key id {0}, which is not in the key ring")]
    UnknownKey(u8),
    /// Authentication failed: tampered bytes, a changed hint, a different cookie name or a wrong key.
    #[error("token failed authentication")]
    Invalid,
}

/// A key ring, hint, cookie name or context that cannot be used for tokens: a configuration
/// mistake, found when the codec or the key ring is built.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum TokenConfigError {
    /// A key secret is shorter than [`crate::MIN_SECRET_LEN`] bytes.
    #[error("key secret is {len} bytes; at least {min} bytes of random data are required")]
    WeakSecret {
        /// Length of the rejected secret.
        len: usize,
        /// Minimum length.
        min: usize,
    },
    /// The same key id was added twice to one ring.
    #[error("key id {0} is already in the key ring")]
    DuplicateKeyId(u8),
    /// A key ring description could not be parsed.
    #[error("key ring description is invalid: {0}")]
    BadKeySpec(&'static str),
    /// A hint is too long or uses characters outside `[A-Za-z0-9_-]`.
    #[error("routing hint must be at most {max} characters of [A-Za-z0-9_-]")]
    BadHint {
        /// Maximum hint length.
        max: usize,
    },
    /// A cookie name is empty, too long or not a valid cookie name token.
    #[error("cookie name must be 1 to {max} visible ASCII characters without separators")]
    BadCookieName {
        /// Maximum cookie name length.
        max: usize,
    },
    /// A codec context (tenant) is empty, too long or not visible ASCII.
    #[error("token context must be 1 to {max} visible ASCII characters")]
    BadContext {
        /// Maximum context length.
        max: usize,
    },
}

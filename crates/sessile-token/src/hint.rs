use std::fmt;

use crate::TokenConfigError;

/// Longest routing hint, in bytes. Keeps the cookie value near 100 characters.
pub const MAX_HINT_LEN: usize = 32;

/// A routing hint: the node or partition that owns a session.
///
/// At most [`MAX_HINT_LEN`] characters of `[A-Za-z0-9_-]`, so it never needs escaping in a cookie,
/// a header or a proxy's configuration language, and it never contains the `.` that ends it.
/// The empty hint means "no preference".
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Hint(Box<str>);

impl Hint {
    /// Validates and wraps a hint.
    pub fn new(hint: &str) -> Result<Self, TokenConfigError> {
        if is_valid_hint(hint) {
            Ok(Self(hint.into()))
        } else {
            Err(TokenConfigError::BadHint { max: MAX_HINT_LEN })
        }
    }

    /// The empty hint.
    pub fn empty() -> Self {
        Self::default()
    }

    /// The hint as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is the empty hint.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

pub(crate) fn is_valid_hint(hint: &str) -> bool {
    hint.len() <= MAX_HINT_LEN
        && hint
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl fmt::Debug for Hint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Hint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Hint {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for Hint {
    type Error = TokenConfigError;
    fn try_from(value: &str) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hint_accepts_node_names_and_rejects_separators() {
        assert!(Hint::new("node-1_a").is_ok());
        assert!(Hint::new("").is_ok());
        assert!(Hint::new("a.b").is_err());
        assert!(Hint::new("a b").is_err());
        assert!(Hint::new(&"x".repeat(MAX_HINT_LEN + 1)).is_err());
        assert!(Hint::new(&"x".repeat(MAX_HINT_LEN)).is_ok());
    }
}

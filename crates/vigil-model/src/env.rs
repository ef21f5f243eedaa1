//! Environment (tenant) identifiers.

use std::fmt;
use std::sync::Arc;

/// The name of an environment (tenant): 1–64 characters of `[A-Za-z0-9_.-]`.
///
/// Every series belongs to exactly one environment; an environment never sees another's data.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EnvId(Arc<str>);

/// Why a string is not a valid environment name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvIdError {
    /// The name is empty.
    #[error("environment name is empty")]
    Empty,
    /// The name is longer than 64 bytes.
    #[error("environment name is {len} bytes long; the maximum is 64")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The name holds a character outside `[A-Za-z0-9_.-]`.
    #[error(
        "environment name {name:?} holds {ch:?}; only letters, digits, '_', '-' and '.' are allowed"
    )]
    BadChar {
        /// The offending name.
        name: String,
        /// The first offending character.
        ch: char,
    },
}

impl EnvId {
    /// The environment used when a call names none.
    pub const DEFAULT: &'static str = "default";

    /// Validates and wraps `name`.
    pub fn new(name: &str) -> Result<Self, EnvIdError> {
        if name.is_empty() {
            return Err(EnvIdError::Empty);
        }
        if name.len() > 64 {
            return Err(EnvIdError::TooLong { len: name.len() });
        }
        if let Some(ch) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
        {
            return Err(EnvIdError::BadChar {
                name: name.to_string(),
                ch,
            });
        }
        Ok(Self(Arc::from(name)))
    }

    /// The `default` environment.
    pub fn default_env() -> Self {
        Self(Arc::from(Self::DEFAULT))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for EnvId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EnvId({})", &*self.0)
    }
}

impl fmt::Display for EnvId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_usual_names() {
        for n in ["prod", "staging-eu", "cust_42", "a.b", "default"] {
            assert_eq!(EnvId::new(n).unwrap().as_str(), n);
        }
    }

    #[test]
    fn rejects_bad_names() {
        assert_eq!(EnvId::new(""), Err(EnvIdError::Empty));
        assert!(matches!(
            EnvId::new(&"x".repeat(65)),
            Err(EnvIdError::TooLong { len: 65 })
        ));
        assert!(matches!(
            EnvId::new("a b"),
            Err(EnvIdError::BadChar { ch: ' ', .. })
        ));
        assert!(matches!(EnvId::new("é"), Err(EnvIdError::BadChar { .. })));
    }
}

//! Label matchers (`=`, `!=`, `=~`, `!~`) with Prometheus semantics: regular expressions are
//! fully anchored, and a missing label matches as the empty string.

use std::fmt;

use regex::Regex;

/// The matching operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MatchOp {
    /// `=`: equal.
    Eq,
    /// `!=`: not equal.
    Ne,
    /// `=~`: matches the anchored regular expression.
    Re,
    /// `!~`: does not match the anchored regular expression.
    Nre,
}

impl MatchOp {
    /// The operator as PromQL writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            MatchOp::Eq => "=",
            MatchOp::Ne => "!=",
            MatchOp::Re => "=~",
            MatchOp::Nre => "!~",
        }
    }
}

/// A label matcher.
#[derive(Clone)]
pub struct Matcher {
    /// The operator.
    pub op: MatchOp,
    /// The label name.
    pub name: String,
    /// The value or the (unanchored, as written) regular expression.
    pub value: String,
    re: Option<Regex>,
}

/// A matcher that cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MatcherError {
    /// The regular expression does not compile.
    #[error("invalid regular expression {pattern:?} for label {name:?}: {reason}")]
    BadRegex {
        /// The label name.
        name: String,
        /// The pattern as written.
        pattern: String,
        /// What the regex engine said.
        reason: String,
    },
}

impl Matcher {
    /// Builds a matcher; regular expressions are anchored at both ends as in Prometheus.
    pub fn new(op: MatchOp, name: &str, value: &str) -> Result<Self, MatcherError> {
        let re = match op {
            MatchOp::Re | MatchOp::Nre => Some(
                regex::RegexBuilder::new(&format!("^(?s:{value})$"))
                    .size_limit(1 << 22)
                    .build()
                    .map_err(|e| MatcherError::BadRegex {
                        name: name.to_string(),
                        pattern: value.to_string(),
                        reason: e.to_string(),
                    })?,
            ),
            _ => None,
        };
        Ok(Self {
            op,
            name: name.to_string(),
            value: value.to_string(),
            re,
        })
    }

    /// `name="value"`.
    pub fn eq(name: &str, value: &str) -> Self {
        Self {
            op: MatchOp::Eq,
            name: name.to_string(),
            value: value.to_string(),
            re: None,
        }
    }

    /// Whether `value` (the empty string for a missing label) satisfies the matcher.
    pub fn matches(&self, value: &str) -> bool {
        match self.op {
            MatchOp::Eq => value == self.value,
            MatchOp::Ne => value != self.value,
            MatchOp::Re => self.re.as_ref().is_some_and(|r| r.is_match(value)),
            MatchOp::Nre => !self.re.as_ref().is_some_and(|r| r.is_match(value)),
        }
    }

    /// Whether the matcher accepts a series that lacks the label entirely.
    pub fn matches_empty(&self) -> bool {
        self.matches("")
    }

    /// For `=~` with a plain alternation of literals (`a|b|c`), the literals; lets an index
    /// answer the matcher by lookups instead of scanning every value.
    pub fn literal_alternatives(&self) -> Option<Vec<&str>> {
        if self.op != MatchOp::Re {
            return None;
        }
        let special = |c: char| "\\.+*?()[]{}^$".contains(c);
        if self.value.is_empty() || self.value.chars().any(special) {
            return None;
        }
        Some(self.value.split('|').collect())
    }
}

impl fmt::Debug for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{:?}", self.name, self.op.as_str(), self.value)
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl PartialEq for Matcher {
    fn eq(&self, o: &Self) -> bool {
        self.op == o.op && self.name == o.name && self.value == o.value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regex_is_anchored() {
        let m = Matcher::new(MatchOp::Re, "job", "no").unwrap();
        assert!(m.matches("no"));
        assert!(!m.matches("node"));
        let m = Matcher::new(MatchOp::Re, "job", "no.*").unwrap();
        assert!(m.matches("node"));
        assert!(!m.matches("a-node"));
        let m = Matcher::new(MatchOp::Nre, "job", "a|b").unwrap();
        assert!(m.matches("ab"));
        assert!(!m.matches("b"));
    }

    #[test]
    fn missing_label_is_empty_string() {
        assert!(
            Matcher::new(MatchOp::Re, "x", ".*")
                .unwrap()
                .matches_empty()
        );
        assert!(
            !Matcher::new(MatchOp::Re, "x", ".+")
                .unwrap()
                .matches_empty()
        );
        assert!(Matcher::new(MatchOp::Ne, "x", "a").unwrap().matches_empty());
        assert!(Matcher::eq("x", "").matches_empty());
    }

    #[test]
    fn bad_regex_is_an_error_naming_the_label() {
        let e = Matcher::new(MatchOp::Re, "job", "(").unwrap_err();
        assert!(e.to_string().contains("job"), "{e}");
    }

    #[test]
    fn literal_alternatives_only_for_plain_literals() {
        let m = Matcher::new(MatchOp::Re, "z", "a|b|c").unwrap();
        assert_eq!(m.literal_alternatives(), Some(vec!["a", "b", "c"]));
        let m = Matcher::new(MatchOp::Re, "z", "a.*").unwrap();
        assert_eq!(m.literal_alternatives(), None);
    }
}

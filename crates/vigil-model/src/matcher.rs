//! Label matchers (`=`, `!=`, `=~`, `!~`) with Prometheus semantics: regular expressions are
//! fully anchored, and a missing label matches as the empty string.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

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
    /// Text every value the regular expression matches starts with (may be empty): most
    /// values of a label are turned down by comparing it, without running the regex.
    prefix: Box<str>,
}

/// The literal text every match of the anchored `pattern` starts with: its leading plain
/// characters (less the last one when a `?`, `*` or `{` makes it optional); empty when the
/// pattern has an alternation anywhere (`a|b` need not start with `a`) or starts otherwise.
fn required_prefix(pattern: &str) -> &str {
    if pattern.contains('|') {
        return "";
    }
    let special = |c: char| "\\.+*?()[]{}^$|".contains(c);
    let end = pattern.find(special).unwrap_or(pattern.len());
    let lit = &pattern[..end];
    match pattern[end..].chars().next() {
        Some('?' | '*' | '{') => lit.char_indices().last().map_or("", |(i, _)| &lit[..i]),
        _ => lit,
    }
}

/// Compiled regular expressions by pattern, so a dashboard's queries, asked again and again,
/// do not compile the same ones each time (building a regex's automata costs far more than
/// matching a few thousand label values with it). Emptied when full.
static COMPILED: Mutex<Option<HashMap<String, Regex>>> = Mutex::new(None);

/// At most this many patterns are kept in [`COMPILED`].
const COMPILED_MAX: usize = 512;

/// Only regexes that compile within this size are kept, so what [`COMPILED`] holds stays
/// small (a few tens of MB at most) whatever patterns callers send.
const KEPT_SIZE_LIMIT: usize = 1 << 16;

/// Any regex must compile within this size.
const SIZE_LIMIT: usize = 1 << 22;

/// `pattern` compiled anchored at both ends, from [`COMPILED`] when it was compiled before.
fn compiled(pattern: &str) -> Result<Regex, regex::Error> {
    // A poisoned lock only means another thread panicked mid-insert: the map is still whole.
    let cache = || COMPILED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(re) = cache().as_ref().and_then(|m| m.get(pattern)) {
        return Ok(re.clone());
    }
    // Compiled without the lock held: other queries' lookups do not wait for it.
    let build = |limit| {
        regex::RegexBuilder::new(&format!("^(?s:{pattern})$"))
            .size_limit(limit)
            .build()
    };
    let Ok(re) = build(KEPT_SIZE_LIMIT) else {
        // Too large to keep (or not a regex: then this says why).
        return build(SIZE_LIMIT);
    };
    let mut cache = cache();
    let map = cache.get_or_insert_with(HashMap::new);
    if map.len() >= COMPILED_MAX {
        map.clear();
    }
    map.insert(pattern.to_string(), re.clone());
    Ok(re)
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
            MatchOp::Re | MatchOp::Nre => {
                Some(compiled(value).map_err(|e| MatcherError::BadRegex {
                    name: name.to_string(),
                    pattern: value.to_string(),
                    reason: e.to_string(),
                })?)
            }
            _ => None,
        };
        let prefix = if re.is_some() {
            required_prefix(value).into()
        } else {
            "".into()
        };
        Ok(Self {
            op,
            name: name.to_string(),
            value: value.to_string(),
            re,
            prefix,
        })
    }

    /// `name="value"`.
    pub fn eq(name: &str, value: &str) -> Self {
        Self {
            op: MatchOp::Eq,
            name: name.to_string(),
            value: value.to_string(),
            re: None,
            prefix: "".into(),
        }
    }

    /// Whether `value` (the empty string for a missing label) satisfies the matcher.
    pub fn matches(&self, value: &str) -> bool {
        match self.op {
            MatchOp::Eq => value == self.value,
            MatchOp::Ne => value != self.value,
            MatchOp::Re => self.regex_matches(value),
            MatchOp::Nre => !self.regex_matches(value),
        }
    }

    fn regex_matches(&self, value: &str) -> bool {
        value.starts_with(&*self.prefix) && self.re.as_ref().is_some_and(|r| r.is_match(value))
    }

    /// Text every value a `=~` / `!~` matcher's regex matches starts with (empty when there
    /// is none, and for the other operators).
    pub fn required_prefix(&self) -> &str {
        &self.prefix
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
    fn compiled_patterns_are_kept_boundedly_and_match_as_fresh_ones() {
        for round in 0..2 {
            for i in 0..COMPILED_MAX + 50 {
                let m = Matcher::new(MatchOp::Re, "a", &format!("x{i}|y.*")).unwrap();
                assert!(m.matches(&format!("x{i}")), "round {round}, pattern {i}");
                assert!(m.matches("yes"));
                assert!(!m.matches(&format!("x{i}z")));
                let len = COMPILED.lock().unwrap().as_ref().map_or(0, HashMap::len);
                assert!(len <= COMPILED_MAX, "{len} patterns kept");
            }
        }
        let e = Matcher::new(MatchOp::Re, "a", "(").unwrap_err();
        assert!(e.to_string().contains("invalid regular expression"), "{e}");
        // A large regex still works, but is not kept.
        let big = "[a-z]{1500}";
        let m = Matcher::new(MatchOp::Re, "a", big).unwrap();
        assert!(m.matches(&"q".repeat(1500)));
        assert!(!m.matches(&"q".repeat(1499)));
        let kept = COMPILED
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(|c| c.contains_key(big));
        assert!(!kept, "a regex over the kept size limit was kept");
    }

    #[test]
    fn regex_prefixes_are_required_text_only() {
        for (pattern, prefix) in [
            ("agent-00[0-4].*", "agent-00"),
            ("node", "node"),
            ("nodes?", "node"),
            ("ab*c", "a"),
            ("ab+c", "ab"),
            ("ab{0,2}", "a"),
            ("ab(cd)?", "ab"),
            ("ab$", "ab"),
            ("é?x", ""),
            ("aé*", "a"),
            ("a|b", ""),
            ("ab(c|d)", ""),
            ("(?i)ab", ""),
            (".*x", ""),
            ("\\.x", ""),
            ("", ""),
        ] {
            assert_eq!(required_prefix(pattern), prefix, "{pattern}");
        }
    }

    proptest::proptest! {
        /// With or without its prefix check, a matcher accepts the same values as the
        /// anchored regular expression alone.
        #[test]
        fn prefix_check_never_changes_an_answer(
            pattern in "[ab.?*+|()\\[\\]{}0-2,é-]{0,8}",
            values in proptest::collection::vec("[abé.-]{0,6}", 0..12),
        ) {
            let Ok(m) = Matcher::new(MatchOp::Re, "x", &pattern) else {
                return Ok(());
            };
            let plain = Regex::new(&format!("^(?s:{pattern})$")).unwrap();
            let n = Matcher::new(MatchOp::Nre, "x", &pattern).unwrap();
            for v in values {
                proptest::prop_assert_eq!(m.matches(&v), plain.is_match(&v), "{} {}", pattern, v);
                proptest::prop_assert_eq!(n.matches(&v), !plain.is_match(&v));
            }
        }
    }

    #[test]
    fn literal_alternatives_only_for_plain_literals() {
        let m = Matcher::new(MatchOp::Re, "z", "a|b|c").unwrap();
        assert_eq!(m.literal_alternatives(), Some(vec!["a", "b", "c"]));
        let m = Matcher::new(MatchOp::Re, "z", "a.*").unwrap();
        assert_eq!(m.literal_alternatives(), None);
    }
}

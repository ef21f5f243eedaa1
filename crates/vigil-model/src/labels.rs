//! Label sets.

use std::fmt;
use std::sync::Arc;

/// The label that holds a series' metric name.
pub const METRIC_NAME: &str = "__name__";

/// An immutable, shared string (`Arc<str>`): cloning it copies a pointer, so a store can hand
/// out label sets built from its interned symbols without copying text.
/// Comparisons short-cut on pointer equality (interned strings share one allocation).
#[derive(Clone, Default)]
pub struct LabelStr(Arc<str>);

impl PartialEq for LabelStr {
    #[inline]
    fn eq(&self, o: &Self) -> bool {
        Arc::ptr_eq(&self.0, &o.0) || *self.0 == *o.0
    }
}

impl Eq for LabelStr {}

impl PartialOrd for LabelStr {
    #[inline]
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

impl Ord for LabelStr {
    #[inline]
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        if Arc::ptr_eq(&self.0, &o.0) {
            std::cmp::Ordering::Equal
        } else {
            self.0.cmp(&o.0)
        }
    }
}

impl std::hash::Hash for LabelStr {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.0.hash(h)
    }
}

impl LabelStr {
    /// The text.
    #[inline]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for LabelStr {
    type Target = str;
    #[inline]
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for LabelStr {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for LabelStr {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for LabelStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for LabelStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for LabelStr {
    fn from(s: &str) -> Self {
        Self(Arc::from(s))
    }
}

impl From<&&str> for LabelStr {
    fn from(s: &&str) -> Self {
        Self(Arc::from(*s))
    }
}

impl From<String> for LabelStr {
    fn from(s: String) -> Self {
        Self(Arc::from(s))
    }
}

impl From<&String> for LabelStr {
    fn from(s: &String) -> Self {
        Self(Arc::from(s.as_str()))
    }
}

impl From<Arc<str>> for LabelStr {
    fn from(s: Arc<str>) -> Self {
        Self(s)
    }
}

impl PartialEq<str> for LabelStr {
    fn eq(&self, o: &str) -> bool {
        &*self.0 == o
    }
}

impl PartialEq<&str> for LabelStr {
    fn eq(&self, o: &&str) -> bool {
        &*self.0 == *o
    }
}

impl PartialEq<String> for LabelStr {
    fn eq(&self, o: &String) -> bool {
        &*self.0 == o.as_str()
    }
}

impl PartialEq<LabelStr> for String {
    fn eq(&self, o: &LabelStr) -> bool {
        self.as_str() == &*o.0
    }
}

impl PartialEq<LabelStr> for &str {
    fn eq(&self, o: &LabelStr) -> bool {
        *self == &*o.0
    }
}

/// One label: a name and a value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Label {
    /// The label name.
    pub name: LabelStr,
    /// The label value.
    pub value: LabelStr,
}

/// A set of labels sorted by name, without duplicate names and without empty values (an empty
/// value means "absent", as in Prometheus).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Labels(Vec<Label>);

impl Labels {
    /// An empty label set.
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// Builds a label set from pairs: sorts by name, drops empty values, and keeps the last of
    /// duplicate names. Use [`crate::LabelLimits::validate`] to reject duplicates instead.
    pub fn from_pairs<N: Into<LabelStr>, V: Into<LabelStr>>(
        pairs: impl IntoIterator<Item = (N, V)>,
    ) -> Self {
        let mut v: Vec<Label> = pairs
            .into_iter()
            .map(|(n, v)| Label {
                name: n.into(),
                value: v.into(),
            })
            .collect();
        Self::normalize(&mut v);
        Self(v)
    }

    /// Wraps labels as given. The caller promises they are sorted by name, unique and without
    /// empty values (as the store produces them); decoders of untrusted input use this and then
    /// [`crate::LabelLimits::validate`], which reports any broken promise.
    pub fn from_sorted(v: Vec<Label>) -> Self {
        Self(v)
    }

    /// Wraps labels in any order: sorts and normalizes them like [`Labels::from_pairs`].
    pub fn from_vec(mut v: Vec<Label>) -> Self {
        Self::normalize(&mut v);
        Self(v)
    }

    fn normalize(v: &mut Vec<Label>) {
        v.retain(|l| !l.value.is_empty());
        // Stable sort keeps insertion order among equal names; keep the last one.
        v.sort_by(|a, b| a.name.cmp(&b.name));
        let mut out: Vec<Label> = Vec::with_capacity(v.len());
        for l in v.drain(..) {
            match out.last_mut() {
                Some(last) if last.name == l.name => *last = l,
                _ => out.push(l),
            }
        }
        *v = out;
    }

    /// The value of label `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .binary_search_by(|l| l.name.as_str().cmp(name))
            .ok()
            .map(|i| self.0[i].value.as_str())
    }

    /// The metric name (`__name__`), if present.
    pub fn metric_name(&self) -> Option<&str> {
        self.get(METRIC_NAME)
    }

    /// Sets (or, with an empty value, removes) label `name`.
    pub fn set(&mut self, name: &str, value: &str) {
        match self.0.binary_search_by(|l| l.name.as_str().cmp(name)) {
            Ok(i) if value.is_empty() => {
                self.0.remove(i);
            }
            Ok(i) => self.0[i].value = value.into(),
            Err(_) if value.is_empty() => {}
            Err(i) => self.0.insert(
                i,
                Label {
                    name: name.into(),
                    value: value.into(),
                },
            ),
        }
    }

    /// Removes label `name` if present.
    pub fn remove(&mut self, name: &str) {
        self.set(name, "");
    }

    /// The labels in name order.
    pub fn iter(&self) -> std::slice::Iter<'_, Label> {
        self.0.iter()
    }

    /// Number of labels.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no labels.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The labels as a slice.
    pub fn as_slice(&self) -> &[Label] {
        &self.0
    }

    /// Consumes the set, returning its labels.
    pub fn into_vec(self) -> Vec<Label> {
        self.0
    }

    /// A stable 64-bit hash of the label set (FNV-1a over names and values with separators);
    /// the same on every platform and across versions, so it may be persisted.
    pub fn stable_hash(&self) -> u64 {
        hash_pairs(self.0.iter().map(|l| (l.name.as_str(), l.value.as_str())))
    }
}

/// The stable hash of [`Labels::stable_hash`] computed over borrowed pairs in name order.
pub fn hash_pairs<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    let mut eat = |b: &[u8]| {
        for &x in b {
            h ^= x as u64;
            h = h.wrapping_mul(PRIME);
        }
    };
    for (n, v) in pairs {
        eat(n.as_bytes());
        eat(&[0xff]);
        eat(v.as_bytes());
        eat(&[0xfe]);
    }
    h
}

impl<'a> IntoIterator for &'a Labels {
    type Item = &'a Label;
    type IntoIter = std::slice::Iter<'a, Label>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl fmt::Display for Labels {
    /// Prometheus' text form: `name{a="b", c="d"}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(n) = self.metric_name() {
            f.write_str(n)?;
        }
        f.write_str("{")?;
        let mut first = true;
        for l in self.0.iter().filter(|l| l.name != METRIC_NAME) {
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            write!(f, "{}={:?}", l.name, l.value)?;
        }
        f.write_str("}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_pairs_sorts_drops_empty_and_keeps_last_duplicate() {
        let l = Labels::from_pairs([("b", "1"), ("a", "2"), ("c", ""), ("b", "3")]);
        let names: Vec<_> = l
            .iter()
            .map(|l| (l.name.as_str(), l.value.as_str()))
            .collect();
        assert_eq!(names, vec![("a", "2"), ("b", "3")]);
    }

    #[test]
    fn set_and_remove_keep_order() {
        let mut l = Labels::from_pairs([("__name__", "up")]);
        l.set("job", "node");
        l.set("env", "prod");
        assert_eq!(l.to_string(), r#"up{env="prod", job="node"}"#);
        l.remove("env");
        assert_eq!(l.get("env"), None);
        l.set("job", "");
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn stable_hash_distinguishes_boundaries() {
        let a = Labels::from_pairs([("ab", "c")]);
        let b = Labels::from_pairs([("a", "bc")]);
        assert_ne!(a.stable_hash(), b.stable_hash());
        assert_eq!(
            a.stable_hash(),
            Labels::from_pairs([("ab", "c")]).stable_hash()
        );
    }
}

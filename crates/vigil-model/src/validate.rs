//! Validation of label sets against Prometheus' naming rules and configurable limits.

use crate::labels::{Labels, METRIC_NAME};

/// Limits applied to every series' labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabelLimits {
    /// Maximum number of labels, `__name__` included.
    pub max_labels: usize,
    /// Maximum label name length in bytes.
    pub max_name_len: usize,
    /// Maximum label value length in bytes.
    pub max_value_len: usize,
}

impl Default for LabelLimits {
    fn default() -> Self {
        Self {
            max_labels: 40,
            max_name_len: 256,
            max_value_len: 2048,
        }
    }
}

/// Why a label set was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    /// No `__name__` label.
    #[error("series has no metric name (__name__ label)")]
    MissingMetricName,
    /// The metric name does not match `[a-zA-Z_:][a-zA-Z0-9_:]*`.
    #[error("invalid metric name {name:?}: must match [a-zA-Z_:][a-zA-Z0-9_:]*")]
    InvalidMetricName {
        /// The name.
        name: String,
    },
    /// A label name does not match `[a-zA-Z_][a-zA-Z0-9_]*`.
    #[error("invalid label name {name:?}: must match [a-zA-Z_][a-zA-Z0-9_]*")]
    InvalidLabelName {
        /// The name.
        name: String,
    },
    /// The same label name appears twice.
    #[error("duplicate label name {name:?}")]
    DuplicateLabelName {
        /// The name.
        name: String,
    },
    /// Labels are not sorted by name.
    #[error("labels are not sorted by name at {name:?}")]
    Unsorted {
        /// The first out-of-order name.
        name: String,
    },
    /// Too many labels.
    #[error("series has {count} labels; the limit is {limit}")]
    TooManyLabels {
        /// How many.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A label name is too long.
    #[error("label name {name:?}… is {len} bytes; the limit is {limit}")]
    NameTooLong {
        /// The first 32 bytes of the name.
        name: String,
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A label value is too long.
    #[error("value of label {name:?} is {len} bytes; the limit is {limit}")]
    ValueTooLong {
        /// The label name.
        name: String,
        /// The value's length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A label value is empty (an empty value means "absent"; drop the label instead).
    #[error("label {name:?} has an empty value")]
    EmptyValue {
        /// The label name.
        name: String,
    },
}

/// Whether `s` is a valid Prometheus label name.
pub fn is_valid_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && NAME_CLASS[b[0] as usize] & FIRST != 0
        && b[1..].iter().all(|&c| NAME_CLASS[c as usize] & REST != 0)
}

/// Whether `s` is a valid Prometheus metric name.
pub fn is_valid_metric_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && NAME_CLASS[b[0] as usize] & (FIRST | COLON) != 0
        && b[1..]
            .iter()
            .all(|&c| NAME_CLASS[c as usize] & (REST | COLON) != 0)
}

const FIRST: u8 = 1;
const REST: u8 = 2;
const COLON: u8 = 4;

/// Byte classes for names: one table lookup per byte on the ingest path.
static NAME_CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        if c.is_ascii_alphabetic() || c == b'_' {
            t[i] = FIRST | REST;
        } else if c.is_ascii_digit() {
            t[i] = REST;
        } else if c == b':' {
            t[i] = COLON;
        }
        i += 1;
    }
    t
};

fn prefix(s: &str, n: usize) -> String {
    let mut end = n.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

impl LabelLimits {
    /// Checks a label set: metric name present and valid, names valid, sorted and unique,
    /// values non-empty, and the configured limits. Strings are already UTF-8 by type.
    pub fn validate(&self, labels: &Labels) -> Result<(), LabelError> {
        self.validate_pairs(labels.iter().map(|l| (l.name.as_str(), l.value.as_str())))
    }

    /// [`LabelLimits::validate`] over borrowed (name, value) pairs in their stored order,
    /// without allocating (decoders call it once per series on the hot path).
    pub fn validate_pairs<'a>(
        &self,
        pairs: impl Iterator<Item = (&'a str, &'a str)>,
    ) -> Result<(), LabelError> {
        let mut prev: Option<&str> = None;
        let mut has_name = false;
        let mut count = 0usize;
        for (name, value) in pairs {
            count += 1;
            if count > self.max_labels {
                return Err(LabelError::TooManyLabels {
                    count: count.max(self.max_labels + 1),
                    limit: self.max_labels,
                });
            }
            if name.len() > self.max_name_len {
                return Err(LabelError::NameTooLong {
                    name: prefix(name, 32),
                    len: name.len(),
                    limit: self.max_name_len,
                });
            }
            if value.len() > self.max_value_len {
                return Err(LabelError::ValueTooLong {
                    name: name.to_string(),
                    len: value.len(),
                    limit: self.max_value_len,
                });
            }
            if name == METRIC_NAME {
                has_name = true;
                if !is_valid_metric_name(value) {
                    return Err(LabelError::InvalidMetricName {
                        name: value.to_string(),
                    });
                }
            } else if !is_valid_label_name(name) {
                return Err(LabelError::InvalidLabelName {
                    name: name.to_string(),
                });
            }
            if value.is_empty() {
                return Err(LabelError::EmptyValue {
                    name: name.to_string(),
                });
            }
            if let Some(p) = prev {
                if p == name {
                    return Err(LabelError::DuplicateLabelName {
                        name: name.to_string(),
                    });
                }
                if p > name {
                    return Err(LabelError::Unsorted {
                        name: name.to_string(),
                    });
                }
            }
            prev = Some(name);
        }
        if !has_name {
            return Err(LabelError::MissingMetricName);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::Label;

    fn raw(pairs: &[(&str, &str)]) -> Labels {
        Labels::from_sorted(
            pairs
                .iter()
                .map(|(n, v)| Label {
                    name: n.into(),
                    value: v.into(),
                })
                .collect(),
        )
    }

    #[test]
    fn accepts_a_normal_series() {
        let l = Labels::from_pairs([("__name__", "node_load1"), ("instance", "a:9100")]);
        assert_eq!(LabelLimits::default().validate(&l), Ok(()));
    }

    #[test]
    fn rejects_each_rule_with_a_named_reason() {
        let lim = LabelLimits::default();
        assert_eq!(
            lim.validate(&Labels::from_pairs([("job", "x")])),
            Err(LabelError::MissingMetricName)
        );
        assert!(matches!(
            lim.validate(&Labels::from_pairs([("__name__", "1up")])),
            Err(LabelError::InvalidMetricName { .. })
        ));
        assert!(matches!(
            lim.validate(&Labels::from_pairs([("__name__", "up"), ("bad-name", "x")])),
            Err(LabelError::InvalidLabelName { name }) if name == "bad-name"
        ));
        let small = LabelLimits {
            max_labels: 2,
            max_name_len: 8,
            max_value_len: 4,
        };
        assert!(matches!(
            small.validate(&Labels::from_pairs([
                ("__name__", "up"),
                ("a", "1"),
                ("b", "2")
            ])),
            Err(LabelError::TooManyLabels { count: 3, limit: 2 })
        ));
        assert!(matches!(
            small.validate(&Labels::from_pairs([
                ("__name__", "up"),
                ("abcdefghij", "1")
            ])),
            Err(LabelError::NameTooLong { .. })
        ));
        assert!(matches!(
            small.validate(&Labels::from_pairs([("__name__", "up"), ("a", "12345")])),
            Err(LabelError::ValueTooLong { .. })
        ));
    }

    #[test]
    fn rejects_unsorted_duplicate_and_empty() {
        let lim = LabelLimits::default();
        assert!(matches!(
            lim.validate(&raw(&[("__name__", "up"), ("a", "1"), ("a", "2")])),
            Err(LabelError::DuplicateLabelName { .. })
        ));
        assert!(matches!(
            lim.validate(&raw(&[("b", "1"), ("__name__", "up")])),
            Err(LabelError::Unsorted { .. })
        ));
        assert!(matches!(
            lim.validate(&raw(&[("__name__", "up"), ("a", "")])),
            Err(LabelError::EmptyValue { .. })
        ));
    }

    #[test]
    fn name_rules() {
        assert!(is_valid_label_name("_a1"));
        assert!(!is_valid_label_name("a:b"));
        assert!(!is_valid_label_name(""));
        assert!(is_valid_metric_name("a:b_c"));
        assert!(!is_valid_metric_name("a-b"));
    }
}

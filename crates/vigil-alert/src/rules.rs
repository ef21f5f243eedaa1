//! PromQL rule groups at run time: alerting rules with their active alerts, recording rules
//! whose results go back to the store, evaluated in order at the group's interval.

use std::collections::BTreeMap;
use std::time::Instant;

use hashbrown::HashMap;
use serde::Serialize;
use vigil_promql::{Engine, Expr, Storage, Value as PValue};

use crate::alert::{Alert, AlertState, LabelMap, Transition, fingerprint};
use crate::rulefile::{ALERT_TEMPLATE_VARS, RuleGroupSpec, RuleSpec};
use crate::template::{Template, Value as TValue};

/// How long a resolved alert is kept so that its resolution is notified (Prometheus: 15 m).
pub const RESOLVED_RETENTION_MS: i64 = 15 * 60_000;

/// Health of a rule after its last evaluation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleHealth {
    /// Not evaluated yet.
    Unknown,
    /// Last evaluation succeeded.
    Ok,
    /// Last evaluation failed.
    Err,
}

/// Evaluation bookkeeping shared by both kinds of rule.
#[derive(Debug, Clone)]
pub struct RuleStatus {
    /// Health.
    pub health: RuleHealth,
    /// The last error, if any.
    pub last_error: Option<String>,
    /// When it was last evaluated (ms).
    pub last_eval: Option<i64>,
    /// How long that took (s).
    pub eval_seconds: f64,
}

impl Default for RuleStatus {
    fn default() -> Self {
        Self {
            health: RuleHealth::Unknown,
            last_error: None,
            last_eval: None,
            eval_seconds: 0.0,
        }
    }
}

/// A compiled alerting rule and its active alerts.
#[derive(Debug)]
pub struct AlertingRule {
    /// As written.
    pub spec: RuleSpec,
    /// `alert:`.
    pub name: String,
    expr: Expr,
    labels: Vec<(String, Template)>,
    annotations: Vec<(String, Template)>,
    /// Active alerts by fingerprint.
    pub active: HashMap<u64, Alert>,
    /// Evaluation status.
    pub status: RuleStatus,
}

/// A compiled recording rule.
#[derive(Debug)]
pub struct RecordingRule {
    /// As written.
    pub spec: RuleSpec,
    /// `record:`.
    pub name: String,
    expr: Expr,
    /// Evaluation status.
    pub status: RuleStatus,
}

/// Either kind.
#[derive(Debug)]
pub enum Rule {
    /// Alerting rule.
    Alerting(AlertingRule),
    /// Recording rule.
    Recording(RecordingRule),
}

/// A group at run time.
#[derive(Debug)]
pub struct RuleGroup {
    /// Environment it evaluates in.
    pub env: String,
    /// Where it came from (file path or API namespace).
    pub file: String,
    /// As written.
    pub spec: RuleGroupSpec,
    /// Evaluation interval (ms).
    pub interval_ms: i64,
    /// The rules, in order.
    pub rules: Vec<Rule>,
    /// Last evaluation time (ms) and duration (s).
    pub last_eval: Option<i64>,
    /// Duration of the last evaluation (s).
    pub last_eval_seconds: f64,
}

/// What one evaluation produced.
#[derive(Debug, Default)]
pub struct EvalOutput {
    /// Alerts that changed (became pending, fired, resolved) or whose annotations changed.
    pub changed: Vec<(Alert, Transition)>,
    /// Alerts forgotten (pending alerts that cleared, resolved ones past retention).
    pub removed: Vec<Alert>,
    /// Samples recorded, in rule order: (labels incl. `__name__`, value).
    pub recorded: usize,
}

/// Where recording rules write their results (the next rule in the group must see them).
pub trait RecordSink {
    /// Writes `samples` at `ts` into `env`.
    fn write(&mut self, env: &str, ts: i64, samples: &[(LabelMap, f64)]) -> Result<(), String>;
}

type Templates = Vec<(String, Template)>;
type Compiled = (Expr, Templates, Templates);

fn compile(name: &str, spec: &RuleSpec) -> Result<Compiled, String> {
    let expr = vigil_promql::parse(&spec.expr).map_err(|e| e.to_string())?;
    let tmpl = |m: &BTreeMap<String, String>| -> Result<Templates, String> {
        m.iter()
            .map(|(k, v)| {
                Template::parse(&format!("__alert_{name}_{k}"), v, ALERT_TEMPLATE_VARS)
                    .map(|t| (k.clone(), t))
                    .map_err(|e| e.to_string())
            })
            .collect()
    };
    Ok((expr, tmpl(&spec.labels)?, tmpl(&spec.annotations)?))
}

impl RuleGroup {
    /// Compiles a validated group spec; `default_interval_ms` applies when it names none.
    pub fn new(
        env: &str,
        file: &str,
        spec: RuleGroupSpec,
        default_interval_ms: i64,
    ) -> Result<Self, String> {
        let mut rules = Vec::with_capacity(spec.rules.len());
        for r in &spec.rules {
            if let Some(a) = &r.alert {
                let (expr, labels, annotations) = compile(a, r)?;
                rules.push(Rule::Alerting(AlertingRule {
                    spec: r.clone(),
                    name: a.clone(),
                    expr,
                    labels,
                    annotations,
                    active: HashMap::new(),
                    status: RuleStatus::default(),
                }));
            } else if let Some(n) = &r.record {
                let (expr, _, _) = compile(n, r)?;
                rules.push(Rule::Recording(RecordingRule {
                    spec: r.clone(),
                    name: n.clone(),
                    expr,
                    status: RuleStatus::default(),
                }));
            }
        }
        let interval_ms = spec
            .interval
            .map(|d| d.ms())
            .filter(|&d| d > 0)
            .unwrap_or(default_interval_ms);
        Ok(Self {
            env: env.to_string(),
            file: file.to_string(),
            spec,
            interval_ms,
            rules,
            last_eval: None,
            last_eval_seconds: 0.0,
        })
    }

    /// The source tag of alerts from `rule` in this group.
    pub fn source(&self, rule: &str) -> String {
        format!("rule:{}/{}/{}", self.file, self.spec.name, rule)
    }

    /// Puts back alerts persisted before a restart (matched by source), so `for` keeps
    /// counting from when the condition really started.
    pub fn restore(&mut self, alerts: &[Alert]) {
        let sources: Vec<(usize, String)> = self
            .rules
            .iter()
            .enumerate()
            .filter_map(|(i, r)| match r {
                Rule::Alerting(a) => Some((i, self.source(&a.name))),
                Rule::Recording(_) => None,
            })
            .collect();
        for a in alerts {
            if let Some((i, _)) = sources.iter().find(|(_, s)| *s == a.source)
                && let Rule::Alerting(r) = &mut self.rules[*i]
            {
                r.active.insert(a.fingerprint, a.clone());
            }
        }
    }

    /// Takes over the active alerts of the group it replaces (same file, group and rule).
    pub fn inherit(&mut self, old: &mut RuleGroup) {
        for r in &mut self.rules {
            if let Rule::Alerting(new) = r {
                for o in &mut old.rules {
                    if let Rule::Alerting(o) = o
                        && o.name == new.name
                        && o.spec.expr == new.spec.expr
                    {
                        new.active = std::mem::take(&mut o.active);
                        new.status = o.status.clone();
                    }
                }
            }
        }
    }

    /// Evaluates every rule at `ts`, in order.
    pub fn eval(
        &mut self,
        engine: &Engine,
        storage: &dyn Storage,
        sink: &mut dyn RecordSink,
        ts: i64,
    ) -> EvalOutput {
        let started = Instant::now();
        let offset = self.spec.query_offset.map(|d| d.ms()).unwrap_or(0);
        let at = ts - offset;
        let limit = self.spec.limit;
        let mut out = EvalOutput::default();
        let env = self.env.clone();
        let sources: Vec<String> = self
            .rules
            .iter()
            .map(|r| match r {
                Rule::Alerting(a) => self.source(&a.name),
                Rule::Recording(_) => String::new(),
            })
            .collect();
        for (ri, rule) in self.rules.iter_mut().enumerate() {
            let t0 = Instant::now();
            match rule {
                Rule::Recording(r) => {
                    let res = engine
                        .instant_expr(storage, &r.expr, at)
                        .map_err(|e| e.to_string())
                        .and_then(|v| record_samples(&r.name, &r.spec.labels, v))
                        .and_then(|s| {
                            if limit > 0 && s.len() > limit {
                                return Err(format!(
                                    "exceeded limit of {limit} with {} series",
                                    s.len()
                                ));
                            }
                            sink.write(&env, ts, &s)?;
                            Ok(s.len())
                        });
                    r.status.last_eval = Some(ts);
                    r.status.eval_seconds = t0.elapsed().as_secs_f64();
                    match res {
                        Ok(n) => {
                            out.recorded += n;
                            r.status.health = RuleHealth::Ok;
                            r.status.last_error = None;
                        }
                        Err(e) => {
                            r.status.health = RuleHealth::Err;
                            r.status.last_error = Some(e);
                        }
                    }
                }
                Rule::Alerting(r) => {
                    let res = engine
                        .instant_expr(storage, &r.expr, at)
                        .map_err(|e| e.to_string());
                    r.status.last_eval = Some(ts);
                    let q = |query: &str| -> Result<Vec<TValue>, String> {
                        match engine.instant(storage, query, at) {
                            Ok(PValue::Vector(v)) => Ok(v
                                .iter()
                                .map(|s| sample_value(&labels_of(&s.metric, true), s.v))
                                .collect()),
                            Ok(PValue::Scalar(f)) => Ok(vec![sample_value(&LabelMap::new(), f)]),
                            Ok(_) => {
                                Err("query in a template must return a vector or scalar".into())
                            }
                            Err(e) => Err(e.to_string()),
                        }
                    };
                    match res.and_then(|v| r.apply(&env, &sources[ri], v, ts, limit, &q, &mut out))
                    {
                        Ok(()) => {
                            r.status.health = RuleHealth::Ok;
                            r.status.last_error = None;
                        }
                        Err(e) => {
                            r.status.health = RuleHealth::Err;
                            r.status.last_error = Some(e);
                        }
                    }
                    r.status.eval_seconds = t0.elapsed().as_secs_f64();
                }
            }
        }
        self.last_eval = Some(ts);
        self.last_eval_seconds = started.elapsed().as_secs_f64();
        out
    }
}

fn labels_of(m: &vigil_model::Labels, keep_name: bool) -> LabelMap {
    m.iter()
        .filter(|l| keep_name || l.name.as_str() != "__name__")
        .map(|l| (l.name.as_str().to_string(), l.value.as_str().to_string()))
        .collect()
}

fn sample_value(labels: &LabelMap, v: f64) -> TValue {
    TValue::Map(
        [
            (
                "Labels".to_string(),
                TValue::str_map(labels.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
            ),
            ("Value".to_string(), TValue::Num(v)),
        ]
        .into_iter()
        .collect(),
    )
}

fn record_samples(
    name: &str,
    extra: &BTreeMap<String, String>,
    v: PValue,
) -> Result<Vec<(LabelMap, f64)>, String> {
    let mut out = Vec::new();
    match v {
        PValue::Vector(v) => {
            for s in v {
                let mut l = labels_of(&s.metric, false);
                for (k, val) in extra {
                    if val.is_empty() {
                        l.remove(k);
                    } else {
                        l.insert(k.clone(), val.clone());
                    }
                }
                l.insert("__name__".into(), name.to_string());
                out.push((l, s.v));
            }
        }
        PValue::Scalar(f) => {
            let mut l: LabelMap = extra
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            l.insert("__name__".into(), name.to_string());
            out.push((l, f));
        }
        _ => return Err("rule result is not a vector or scalar".into()),
    }
    let mut seen = hashbrown::HashSet::with_capacity(out.len());
    for (l, _) in &out {
        if !seen.insert(fingerprint(l)) {
            return Err(
                "vector contains metrics with the same labelset after applying rule labels".into(),
            );
        }
    }
    Ok(out)
}

/// Renders a rule's templates for one sample.
pub fn expand(
    tmpls: &[(String, Template)],
    labels: &LabelMap,
    value: f64,
    query: Option<crate::template::QueryFn<'_>>,
) -> LabelMap {
    let lv = TValue::str_map(labels.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let dot = TValue::Map(
        [
            ("Labels".to_string(), lv.clone()),
            ("ExternalLabels".to_string(), TValue::Map(BTreeMap::new())),
            ("ExternalURL".to_string(), TValue::Str(String::new())),
            ("Value".to_string(), TValue::Num(value)),
        ]
        .into_iter()
        .collect(),
    );
    let vars = [
        ("$labels", lv),
        ("$value", TValue::Num(value)),
        ("$externalLabels", TValue::Map(BTreeMap::new())),
        ("$externalURL", TValue::Str(String::new())),
    ];
    tmpls
        .iter()
        .map(|(k, t)| {
            let v = t
                .execute(&dot, &vars, query)
                .unwrap_or_else(|e| format!("<error expanding template: {e}>"));
            (k.clone(), v)
        })
        .collect()
}

impl AlertingRule {
    #[allow(clippy::too_many_arguments)]
    fn apply(
        &mut self,
        env: &str,
        source: &str,
        v: PValue,
        ts: i64,
        limit: usize,
        q: crate::template::QueryFn<'_>,
        out: &mut EvalOutput,
    ) -> Result<(), String> {
        let samples: Vec<(LabelMap, f64)> = match v {
            PValue::Vector(v) => v
                .iter()
                .map(|s| (labels_of(&s.metric, true), s.v))
                .collect(),
            PValue::Scalar(f) => vec![(LabelMap::new(), f)],
            _ => return Err("alerting rule result is not a vector or scalar".into()),
        };
        let for_ms = self.spec.for_.map(|d| d.ms()).unwrap_or(0);
        let keep_ms = self.spec.keep_firing_for.map(|d| d.ms()).unwrap_or(0);
        let mut seen: HashMap<u64, ()> = HashMap::with_capacity(samples.len());
        let mut fresh = Vec::with_capacity(samples.len());
        for (sl, value) in &samples {
            let mut labels = sl.clone();
            labels.remove("__name__");
            for (k, val) in expand(&self.labels, sl, *value, Some(q)) {
                if val.is_empty() {
                    labels.remove(&k);
                } else {
                    labels.insert(k, val);
                }
            }
            labels.insert("alertname".into(), self.name.clone());
            let annotations = expand(&self.annotations, sl, *value, Some(q));
            let proto = Alert::new(env, labels, source.to_string(), *value, ts);
            if seen.insert(proto.fingerprint, ()).is_some() {
                return Err(
                    "vector contains metrics with the same labelset after applying alert labels"
                        .into(),
                );
            }
            fresh.push((proto, annotations));
        }
        if limit > 0 && fresh.len() > limit {
            // Prometheus: over the limit, the rule's alerts are all dropped and it errs.
            for (_, a) in self.active.drain() {
                out.removed.push(a);
            }
            return Err(format!(
                "exceeded limit of {limit} with {} alerts",
                fresh.len()
            ));
        }
        for (proto, annotations) in fresh {
            let fp = proto.fingerprint;
            let value = proto.value;
            let a = self.active.entry(fp).or_insert_with(|| {
                let mut p = proto;
                p.state = AlertState::Inactive; // so the first observation starts an episode
                p
            });
            let changed_ann = a.annotations != annotations;
            a.annotations = annotations;
            let t = a.observe_active(ts, value, for_ms);
            if t != Transition::None || (changed_ann && a.state == AlertState::Firing) {
                out.changed.push((a.clone(), t));
            }
        }
        let mut gone = Vec::new();
        for (fp, a) in self.active.iter_mut() {
            if seen.contains_key(fp) {
                continue;
            }
            if a.state == AlertState::Inactive {
                if a.resolved_at
                    .is_some_and(|r| ts - r > RESOLVED_RETENTION_MS)
                {
                    gone.push(*fp);
                }
                continue;
            }
            let (t, forget) = a.observe_inactive(ts, keep_ms);
            if t != Transition::None {
                out.changed.push((a.clone(), t));
            }
            if forget {
                gone.push(*fp);
            }
        }
        for fp in gone {
            if let Some(a) = self.active.remove(&fp) {
                out.removed.push(a);
            }
        }
        Ok(())
    }
}

/// The `ALERTS` and `ALERTS_FOR_STATE` samples for the pending and firing alerts in `alerts`.
pub fn alerts_series<'a>(alerts: impl Iterator<Item = &'a Alert>) -> Vec<(LabelMap, f64)> {
    let mut out = Vec::new();
    for a in alerts {
        if a.state == AlertState::Inactive {
            continue;
        }
        let mut l = a.labels.clone();
        l.remove(crate::alert::ENV_LABEL);
        let mut f = l.clone();
        l.insert("__name__".into(), "ALERTS".into());
        l.insert("alertstate".into(), a.state.as_str().into());
        out.push((l, 1.0));
        f.insert("__name__".into(), "ALERTS_FOR_STATE".into());
        out.push((f, a.active_at as f64 / 1000.0));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rulefile::RuleFile;
    use std::cell::RefCell;
    use vigil_model::{Labels, Matcher};
    use vigil_promql::{EngineOptions, StoredSeries};

    /// Series whose value is whatever the test sets, at every timestamp.
    struct Fixed(RefCell<Vec<(Labels, f64)>>);

    impl Storage for Fixed {
        fn select(
            &self,
            ms: &[Matcher],
            mint: i64,
            maxt: i64,
            _budget: usize,
        ) -> vigil_promql::Result<Vec<StoredSeries>> {
            Ok(self
                .0
                .borrow()
                .iter()
                .filter(|(l, _)| ms.iter().all(|m| m.matches(l.get(&m.name).unwrap_or(""))))
                .map(|(l, v)| StoredSeries {
                    labels: l.clone(),
                    samples: (mint.div_euclid(1000)..=maxt.div_euclid(1000))
                        .map(|s| (s * 1000, *v))
                        .filter(|(t, _)| *t >= mint && *t <= maxt)
                        .collect(),
                })
                .collect())
        }
    }

    /// One recorded write: environment, timestamp, samples.
    type Written = (String, i64, Vec<(LabelMap, f64)>);

    #[derive(Default)]
    struct Sink(Vec<Written>);

    impl RecordSink for Sink {
        fn write(&mut self, env: &str, ts: i64, samples: &[(LabelMap, f64)]) -> Result<(), String> {
            self.0.push((env.into(), ts, samples.to_vec()));
            Ok(())
        }
    }

    fn series(pairs: &[(&str, &str)], v: f64) -> (Labels, f64) {
        (Labels::from_pairs(pairs.iter().map(|(a, b)| (*a, *b))), v)
    }

    fn group(yaml: &str) -> RuleGroup {
        let f = RuleFile::parse(yaml).unwrap();
        RuleGroup::new("prod", "f.yml", f.groups[0].clone(), 15_000).unwrap()
    }

    const RULES: &str = r#"
groups:
  - name: g
    rules:
      - record: job:temp:max
        expr: max by (job) (temp)
      - alert: Hot
        expr: temp > 80
        for: 30s
        keep_firing_for: 20s
        labels: {severity: "{{ if gt $value 90.0 }}critical{{ else }}warning{{ end }}"}
        annotations: {summary: "{{ $labels.host }} at {{ $value }}"}
"#;

    #[test]
    fn recording_then_alert_pending_firing_keep_firing_resolved() {
        let engine = Engine::new(EngineOptions::default());
        let st = Fixed(RefCell::new(vec![series(
            &[("__name__", "temp"), ("host", "h1"), ("job", "db")],
            95.0,
        )]));
        let mut sink = Sink::default();
        let mut g = group(RULES);
        let out = g.eval(&engine, &st, &mut sink, 100_000);
        assert_eq!(sink.0.len(), 1);
        assert_eq!(sink.0[0].2[0].0["__name__"], "job:temp:max");
        assert_eq!(out.changed.len(), 1);
        assert_eq!(out.changed[0].1, Transition::Pending);
        let a = &out.changed[0].0;
        assert_eq!(a.labels["severity"], "critical");
        assert_eq!(a.annotations["summary"], "h1 at 95");
        assert_eq!(a.source, "rule:f.yml/g/Hot");
        // for: 30 s.
        assert!(g.eval(&engine, &st, &mut sink, 115_000).changed.is_empty());
        let out = g.eval(&engine, &st, &mut sink, 130_000);
        assert_eq!(out.changed[0].1, Transition::Fired);
        // Condition gone: kept firing for 20 s, then resolved.
        st.0.borrow_mut()[0].1 = 50.0;
        assert!(g.eval(&engine, &st, &mut sink, 145_000).changed.is_empty());
        let out = g.eval(&engine, &st, &mut sink, 165_000);
        assert_eq!(out.changed[0].1, Transition::Resolved);
        assert_eq!(out.changed[0].0.resolved_at, Some(165_000));
        // ALERTS series only for pending/firing alerts.
        if let Rule::Alerting(r) = &g.rules[1] {
            assert!(alerts_series(r.active.values()).is_empty());
        }
    }

    #[test]
    fn restored_alerts_keep_their_active_time() {
        let engine = Engine::new(EngineOptions::default());
        let st = Fixed(RefCell::new(vec![series(
            &[("__name__", "temp"), ("host", "h1"), ("job", "db")],
            85.0,
        )]));
        let mut sink = Sink::default();
        let mut g = group(RULES);
        let first = g.eval(&engine, &st, &mut sink, 100_000).changed[0]
            .0
            .clone();
        // "Restart": a new group with the saved alert; 30 s after the original start it fires.
        let mut g2 = group(RULES);
        g2.restore(std::slice::from_ref(&first));
        let out = g2.eval(&engine, &st, &mut sink, 130_000);
        assert_eq!(out.changed[0].1, Transition::Fired);
        assert_eq!(out.changed[0].0.active_at, 100_000);
    }

    #[test]
    fn limits_and_duplicate_label_sets_are_rule_errors() {
        let engine = Engine::new(EngineOptions::default());
        let st = Fixed(RefCell::new(vec![
            series(&[("__name__", "temp"), ("host", "h1")], 95.0),
            series(&[("__name__", "temp"), ("host", "h2")], 95.0),
        ]));
        let mut sink = Sink::default();
        let mut g = group(
            "groups:\n- name: g\n  limit: 1\n  rules:\n  - alert: Hot\n    expr: temp > 80\n",
        );
        g.eval(&engine, &st, &mut sink, 1_000);
        let Rule::Alerting(r) = &g.rules[0] else {
            panic!()
        };
        assert_eq!(r.status.health, RuleHealth::Err);
        assert!(
            r.status
                .last_error
                .as_ref()
                .unwrap()
                .contains("exceeded limit of 1")
        );
        let mut g = group(
            "groups:\n- name: g\n  rules:\n  - alert: Hot\n    expr: temp > 80\n    labels: {host: same}\n",
        );
        g.eval(&engine, &st, &mut sink, 1_000);
        let Rule::Alerting(r) = &g.rules[0] else {
            panic!()
        };
        assert!(
            r.status
                .last_error
                .as_ref()
                .unwrap()
                .contains("same labelset")
        );
        let mut g = group(
            "groups:\n- name: g\n  rules:\n  - record: x\n    expr: temp\n    labels: {host: same}\n",
        );
        g.eval(&engine, &st, &mut sink, 1_000);
        let Rule::Recording(r) = &g.rules[0] else {
            panic!()
        };
        assert_eq!(r.status.health, RuleHealth::Err);
    }
}

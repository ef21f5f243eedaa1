//! Prometheus rule files, accepted unchanged, and their validation (what `promtool check
//! rules` reports: structure, unknown fields, PromQL, durations, label names, templates).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use vigil_model::{is_valid_label_name, is_valid_metric_name};

use crate::duration::PromDuration;
use crate::template::Template;

/// Variables Prometheus predeclares for alert label and annotation templates.
pub const ALERT_TEMPLATE_VARS: &[&str] = &["$labels", "$value", "$externalLabels", "$externalURL"];

/// A rule file: `groups:`.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    /// The groups, evaluated independently.
    #[serde(default)]
    pub groups: Vec<RuleGroupSpec>,
}

/// One group of rules, evaluated in order every `interval`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleGroupSpec {
    /// Unique within the file.
    pub name: String,
    /// Evaluation interval (default: the server's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<PromDuration>,
    /// Evaluate as of this long ago (lets late samples arrive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_offset: Option<PromDuration>,
    /// Most alerts an alerting rule and series a recording rule may produce; 0 = no limit.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub limit: usize,
    /// The rules.
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// An alerting or a recording rule as written.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Recording rule: the metric name to write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    /// Alerting rule: the alert's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert: Option<String>,
    /// The PromQL expression.
    #[serde(default)]
    pub expr: String,
    /// How long the expression must hold before the alert fires.
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub for_: Option<PromDuration>,
    /// How long the alert keeps firing after the expression stops holding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_firing_for: Option<PromDuration>,
    /// Labels added (templated for alerts).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations (alerts only; templated).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Everything wrong with a rule file, each naming the group and rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct RuleFileErrors(pub Vec<String>);

impl RuleFile {
    /// Parses YAML and validates it; all problems are reported at once.
    pub fn parse(yaml: &str) -> Result<Self, RuleFileErrors> {
        let file: RuleFile = if yaml.trim().is_empty() {
            RuleFile::default()
        } else {
            serde_norway::from_str(yaml).map_err(|e| RuleFileErrors(vec![e.to_string()]))?
        };
        let errs = file.validate();
        if errs.is_empty() {
            Ok(file)
        } else {
            Err(RuleFileErrors(errs))
        }
    }

    /// Problems in the file (empty when it is valid).
    pub fn validate(&self) -> Vec<String> {
        let mut errs = Vec::new();
        let mut names = std::collections::HashSet::new();
        for g in &self.groups {
            if g.name.is_empty() {
                errs.push("group name must not be empty".into());
            } else if !names.insert(g.name.as_str()) {
                errs.push(format!(
                    "{:?}: group name repeated in the same file",
                    g.name
                ));
            }
            for (i, r) in g.rules.iter().enumerate() {
                for e in r.validate() {
                    let what = r.alert.as_deref().or(r.record.as_deref()).unwrap_or("");
                    errs.push(format!(
                        "group {:?}, rule {} ({what:?}): {e}",
                        g.name,
                        i + 1
                    ));
                }
            }
        }
        errs
    }

    /// Numbers of groups, alerting rules and recording rules.
    pub fn counts(&self) -> (usize, usize, usize) {
        let rules = self.groups.iter().flat_map(|g| &g.rules);
        let alerts = rules.clone().filter(|r| r.alert.is_some()).count();
        let records = rules.filter(|r| r.record.is_some()).count();
        (self.groups.len(), alerts, records)
    }
}

impl RuleSpec {
    /// Problems in one rule.
    pub fn validate(&self) -> Vec<String> {
        let mut errs = Vec::new();
        match (&self.record, &self.alert) {
            (Some(_), Some(_)) => errs.push("only one of 'record' and 'alert' must be set".into()),
            (None, None) => errs.push("one of 'record' or 'alert' must be set".into()),
            (Some(r), None) if r.is_empty() => {
                errs.push("one of 'record' or 'alert' must be set".into())
            }
            (None, Some(a)) if a.is_empty() => {
                errs.push("one of 'record' or 'alert' must be set".into())
            }
            _ => {}
        }
        if self.expr.trim().is_empty() {
            errs.push("field 'expr' must be set in rule".into());
        } else if let Err(e) = vigil_promql::parse(&self.expr) {
            errs.push(format!("could not parse expression: {e}"));
        }
        if let Some(r) = &self.record {
            if !r.is_empty() && !is_valid_metric_name(r) {
                errs.push(format!("invalid recording rule name: {r}"));
            }
            if !self.annotations.is_empty() {
                errs.push("invalid field 'annotations' in recording rule".into());
            }
            if self.for_.is_some() {
                errs.push("invalid field 'for' in recording rule".into());
            }
            if self.keep_firing_for.is_some() {
                errs.push("invalid field 'keep_firing_for' in recording rule".into());
            }
        }
        for (k, v) in &self.labels {
            if !is_valid_label_name(k) || k == "__name__" {
                errs.push(format!("invalid label name: {k}"));
            }
            if self.alert.is_some()
                && let Err(e) = Template::parse(&format!("__alert_{k}"), v, ALERT_TEMPLATE_VARS)
            {
                errs.push(format!("label {k:?}: {e}"));
            }
        }
        for (k, v) in &self.annotations {
            if !is_valid_label_name(k) {
                errs.push(format!("invalid annotation name: {k}"));
            }
            if let Err(e) = Template::parse(&format!("__alert_{k}"), v, ALERT_TEMPLATE_VARS) {
                errs.push(format!("annotation {k:?}: {e}"));
            }
        }
        errs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
groups:
  - name: node
    interval: 30s
    rules:
      - record: instance:node_cpu:rate5m
        expr: sum without (cpu, mode) (rate(node_cpu_seconds_total{mode!="idle"}[5m]))
        labels:
          team: infra
      - alert: HighCPU
        expr: instance:node_cpu:rate5m > 0.9
        for: 10m
        keep_firing_for: 5m
        labels:
          severity: "{{ if gt $value 0.95 }}critical{{ else }}warning{{ end }}"
        annotations:
          summary: "CPU on {{ $labels.instance }} at {{ $value | humanizePercentage }}"
"#;

    #[test]
    fn parses_a_real_shaped_file() {
        let f = RuleFile::parse(GOOD).unwrap();
        assert_eq!(f.counts(), (1, 1, 1));
        assert_eq!(f.groups[0].interval, Some(PromDuration(30_000)));
        assert_eq!(f.groups[0].rules[1].for_, Some(PromDuration(600_000)));
    }

    #[test]
    fn reports_every_problem() {
        let bad = r#"
groups:
  - name: a
    rules:
      - alert: X
        record: y
        expr: up
      - record: "bad name"
        expr: sum(
        annotations: {a: b}
      - alert: Z
        expr: up == 0
        labels: {"0bad": x}
        annotations: {summary: "{{ nosuch $value }}"}
  - name: a
"#;
        let e = RuleFile::parse(bad).unwrap_err().0;
        let all = e.join("\n");
        for want in [
            "only one of 'record' and 'alert'",
            "invalid recording rule name",
            "could not parse expression",
            "invalid field 'annotations'",
            "invalid label name: 0bad",
            "not defined",
            "group name repeated",
        ] {
            assert!(all.contains(want), "missing {want:?} in\n{all}");
        }
    }

    #[test]
    fn unknown_fields_and_bad_durations_are_errors() {
        assert!(
            RuleFile::parse(
                "groups:\n- name: a\n  rules:\n  - alert: A\n    expr: up\n    fore: 5m\n"
            )
            .is_err()
        );
        assert!(RuleFile::parse("groups:\n- name: a\n  interval: 5\n  rules: []\n").is_err());
        assert!(RuleFile::parse("nope: 1\n").is_err());
        assert!(RuleFile::parse("").unwrap().groups.is_empty());
    }
}

//! Notification routing in Alertmanager's configuration format (`route`, `receivers`,
//! `inhibit_rules`, `time_intervals`, `global`), extended with Vigil's `escalation_policies`
//! (and a route's `escalation_policy`) and an `alertmanager_configs` receiver that forwards to
//! a real Alertmanager.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use vigil_model::{MatchOp, Matcher};

use crate::alert::LabelMap;
use crate::duration::PromDuration;

/// The whole notification configuration.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// Defaults for receivers.
    #[serde(default)]
    pub global: Global,
    /// The routing tree.
    #[serde(default)]
    pub route: Option<RouteSpec>,
    /// Where notifications go.
    #[serde(default)]
    pub receivers: Vec<Receiver>,
    /// Inhibition rules.
    #[serde(default)]
    pub inhibit_rules: Vec<InhibitRuleSpec>,
    /// Named time intervals (for `mute_time_intervals` / `active_time_intervals`).
    #[serde(default)]
    pub time_intervals: Vec<NamedTimeInterval>,
    /// Alertmanager's older name for `time_intervals`.
    #[serde(default)]
    pub mute_time_intervals: Vec<NamedTimeInterval>,
    /// Vigil: escalation policies.
    #[serde(default)]
    pub escalation_policies: Vec<EscalationPolicy>,
    /// Accepted for compatibility; Vigil renders its own templates inline.
    #[serde(default)]
    pub templates: Vec<String>,
}

/// `global:`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Global {
    /// Accepted for compatibility (alerts resolve explicitly in Vigil).
    #[serde(default)]
    pub resolve_timeout: Option<PromDuration>,
    /// Default sender.
    #[serde(default)]
    pub smtp_from: Option<String>,
    /// Default SMTP server `host:port`.
    #[serde(default)]
    pub smtp_smarthost: Option<String>,
    /// Default SMTP user.
    #[serde(default)]
    pub smtp_auth_username: Option<String>,
    /// Default SMTP password.
    #[serde(default)]
    pub smtp_auth_password: Option<String>,
    /// Default STARTTLS requirement (Alertmanager default: true).
    #[serde(default)]
    pub smtp_require_tls: Option<bool>,
    /// Accepted for compatibility.
    #[serde(default)]
    pub smtp_hello: Option<String>,
    /// Default Slack webhook URL.
    #[serde(default)]
    pub slack_api_url: Option<String>,
}

/// A route as written.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Receiver (inherited).
    #[serde(default)]
    pub receiver: Option<String>,
    /// Grouping labels; `['...']` groups by all labels.
    #[serde(default)]
    pub group_by: Option<Vec<String>>,
    /// Keep matching siblings after this route matched.
    #[serde(default, rename = "continue")]
    pub continue_: bool,
    /// Matchers in Alertmanager's string syntax (`severity=~"crit|warn"`).
    #[serde(default)]
    pub matchers: Vec<String>,
    /// Legacy equality matchers.
    #[serde(default, rename = "match")]
    pub match_: BTreeMap<String, String>,
    /// Legacy regex matchers.
    #[serde(default)]
    pub match_re: BTreeMap<String, String>,
    /// Wait before the first notification of a new group (default 30 s).
    #[serde(default)]
    pub group_wait: Option<PromDuration>,
    /// Wait between notifications about a changed group (default 5 m).
    #[serde(default)]
    pub group_interval: Option<PromDuration>,
    /// Re-send an unchanged firing group after this long (default 4 h).
    #[serde(default)]
    pub repeat_interval: Option<PromDuration>,
    /// No notifications while any of these intervals is active.
    #[serde(default)]
    pub mute_time_intervals: Vec<String>,
    /// Notifications only while one of these intervals is active.
    #[serde(default)]
    pub active_time_intervals: Vec<String>,
    /// Vigil: escalation policy applied to this route's alerts.
    #[serde(default)]
    pub escalation_policy: Option<String>,
    /// Vigil: a new firing alert joining an already-notified group is notified after this
    /// wait instead of at the group's next `group_interval` (unset: Alertmanager's behaviour).
    #[serde(default)]
    pub new_alert_wait: Option<PromDuration>,
    /// Child routes.
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
}

/// A receiver and its channels.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Receiver {
    /// Unique name.
    pub name: String,
    /// Generic webhooks.
    #[serde(default)]
    pub webhook_configs: Vec<WebhookConfig>,
    /// Slack incoming webhooks.
    #[serde(default)]
    pub slack_configs: Vec<SlackConfig>,
    /// E-mail.
    #[serde(default)]
    pub email_configs: Vec<EmailConfig>,
    /// Vigil: forwarding to an Alertmanager (API v2).
    #[serde(default)]
    pub alertmanager_configs: Vec<AlertmanagerConfig>,
}

/// `webhook_configs` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Endpoint.
    pub url: String,
    /// Notify resolutions too (default true).
    #[serde(default = "yes")]
    pub send_resolved: bool,
    /// Most alerts per payload (0 = all).
    #[serde(default)]
    pub max_alerts: usize,
    /// Vigil: `alertmanager` (webhook v4, default) or `vigil` (adds acknowledgement and
    /// escalation fields).
    #[serde(default)]
    pub format: Option<String>,
    /// Per-request timeout (default 10 s).
    #[serde(default)]
    pub timeout: Option<PromDuration>,
    /// Extra HTTP headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn yes() -> bool {
    true
}

/// `slack_configs` entry.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    /// Incoming-webhook URL (default: global `slack_api_url`).
    #[serde(default)]
    pub api_url: Option<String>,
    /// Channel override.
    #[serde(default)]
    pub channel: Option<String>,
    /// User name override.
    #[serde(default)]
    pub username: Option<String>,
    /// Title template.
    #[serde(default)]
    pub title: Option<String>,
    /// Text template.
    #[serde(default)]
    pub text: Option<String>,
    /// Attachment colour template.
    #[serde(default)]
    pub color: Option<String>,
    /// Notify resolutions too (Alertmanager default: false).
    #[serde(default)]
    pub send_resolved: bool,
}

/// `email_configs` entry.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// Recipient(s), comma separated.
    pub to: String,
    /// Sender (default: global `smtp_from`).
    #[serde(default)]
    pub from: Option<String>,
    /// `host:port` (default: global `smtp_smarthost`).
    #[serde(default)]
    pub smarthost: Option<String>,
    /// SMTP user.
    #[serde(default)]
    pub auth_username: Option<String>,
    /// SMTP password.
    #[serde(default)]
    pub auth_password: Option<String>,
    /// Require STARTTLS (default: global, else true). Port 465 uses implicit TLS.
    #[serde(default)]
    pub require_tls: Option<bool>,
    /// Extra headers (`Subject` overrides the default subject template).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// HTML body template.
    #[serde(default)]
    pub html: Option<String>,
    /// Text body template.
    #[serde(default)]
    pub text: Option<String>,
    /// Notify resolutions too (Alertmanager default: false).
    #[serde(default)]
    pub send_resolved: bool,
    /// TLS settings for STARTTLS and implicit TLS.
    #[serde(default)]
    pub tls_config: Option<TlsConfig>,
    /// Vigil: speak TLS from the first byte (default: only on port 465).
    #[serde(default)]
    pub implicit_tls: Option<bool>,
}

/// Alertmanager's `tls_config` (the parts that apply to an SMTP client).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// CA certificate (PEM) to trust in addition to the public roots.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Name to verify instead of the smarthost's host.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Accept any certificate (testing only).
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// Vigil's `alertmanager_configs` entry: forward to an Alertmanager's API v2.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertmanagerConfig {
    /// Base URL, e.g. `http://127.0.0.1:9093`.
    pub url: String,
    /// Send resolutions (with `endsAt`) too (default true).
    #[serde(default = "yes")]
    pub send_resolved: bool,
}

/// An inhibition rule as written.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct InhibitRuleSpec {
    /// Matchers the muting (source) alert must satisfy.
    #[serde(default)]
    pub source_matchers: Vec<String>,
    /// Matchers the muted (target) alerts must satisfy.
    #[serde(default)]
    pub target_matchers: Vec<String>,
    /// Legacy forms.
    #[serde(default)]
    pub source_match: BTreeMap<String, String>,
    /// Legacy forms.
    #[serde(default)]
    pub source_match_re: BTreeMap<String, String>,
    /// Legacy forms.
    #[serde(default)]
    pub target_match: BTreeMap<String, String>,
    /// Legacy forms.
    #[serde(default)]
    pub target_match_re: BTreeMap<String, String>,
    /// Labels that must be equal in source and target.
    #[serde(default)]
    pub equal: Vec<String>,
}

/// `time_intervals` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedTimeInterval {
    /// Name routes refer to.
    pub name: String,
    /// Any of these matching makes the interval active.
    #[serde(default)]
    pub time_intervals: Vec<TimeInterval>,
}

/// One time interval (UTC): every given field must match.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TimeInterval {
    /// `start_time`/`end_time` as `HH:MM`.
    #[serde(default)]
    pub times: Vec<TimeRange>,
    /// `monday`, `monday:friday`.
    #[serde(default)]
    pub weekdays: Vec<String>,
    /// `1`, `1:5`, `-1` (last day).
    #[serde(default)]
    pub days_of_month: Vec<String>,
    /// `january`, `1:3`.
    #[serde(default)]
    pub months: Vec<String>,
    /// `2026`, `2026:2027`.
    #[serde(default)]
    pub years: Vec<String>,
    /// Only `UTC` (or absent) is supported.
    #[serde(default)]
    pub location: Option<String>,
}

/// A time-of-day range.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeRange {
    /// `HH:MM`, inclusive.
    pub start_time: String,
    /// `HH:MM`, exclusive.
    pub end_time: String,
}

/// Vigil: an escalation policy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscalationPolicy {
    /// Name routes refer to.
    pub name: String,
    /// Ordered levels; level 0 is notified first.
    pub levels: Vec<EscalationLevel>,
    /// Re-notify the last level this often while the alert stays unacknowledged (default:
    /// no repeat beyond the route's `repeat_interval`).
    #[serde(default)]
    pub repeat_last_level: Option<PromDuration>,
}

/// One level.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscalationLevel {
    /// Time after the previous level (after firing, for level 0) before this level is
    /// notified, if nobody acknowledged.
    #[serde(default)]
    pub delay: PromDuration,
    /// Receivers of this level.
    pub receivers: Vec<String>,
}

/// Parses Alertmanager's matcher syntax: `name="value"`, `name=~"re"`, `name!=value`,
/// optionally wrapped in `{…}` with several comma-separated matchers.
pub fn parse_matchers(s: &str) -> Result<Vec<Matcher>, String> {
    let t = s.trim();
    let t = t
        .strip_prefix('{')
        .and_then(|x| x.strip_suffix('}'))
        .unwrap_or(t);
    let mut out = Vec::new();
    let mut rest = t.trim();
    while !rest.is_empty() {
        let name_end = rest
            .find(['=', '!'])
            .ok_or_else(|| format!("bad matcher {s:?}: no operator"))?;
        let name = rest[..name_end].trim().trim_matches('"');
        let after = &rest[name_end..];
        let (op, n) = if after.starts_with("=~") {
            (MatchOp::Re, 2)
        } else if after.starts_with("!~") {
            (MatchOp::Nre, 2)
        } else if after.starts_with("!=") {
            (MatchOp::Ne, 2)
        } else if after.starts_with('=') {
            (MatchOp::Eq, 1)
        } else {
            return Err(format!("bad matcher {s:?}: unknown operator"));
        };
        if name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || c == '_') {
            return Err(format!("bad matcher {s:?}: invalid label name {name:?}"));
        }
        let v = after[n..].trim_start();
        let (value, consumed) = if let Some(q) = v.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = q.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some((_, 'n')) => out.push('\n'),
                        Some((_, e)) => out.push(e),
                        None => break,
                    },
                    '"' => {
                        end = Some(i);
                        break;
                    }
                    c => out.push(c),
                }
            }
            let end = end.ok_or_else(|| format!("bad matcher {s:?}: unterminated quote"))?;
            (out, 1 + end + 1)
        } else {
            let end = v.find(',').unwrap_or(v.len());
            (v[..end].trim().to_string(), end)
        };
        out.push(Matcher::new(op, name, &value).map_err(|e| format!("bad matcher {s:?}: {e}"))?);
        rest = v[consumed..].trim_start();
        if let Some(r) = rest.strip_prefix(',') {
            rest = r.trim_start();
        } else if !rest.is_empty() {
            return Err(format!("bad matcher {s:?}: unexpected {rest:?}"));
        }
    }
    Ok(out)
}

/// Whether all matchers accept the labels (a missing label is the empty string).
pub fn matches(ms: &[Matcher], labels: &LabelMap) -> bool {
    ms.iter()
        .all(|m| m.matches(labels.get(&m.name).map(String::as_str).unwrap_or("")))
}

/// Compiles a list of matcher strings plus the legacy maps.
pub fn compile_matchers(
    strings: &[String],
    eq: &BTreeMap<String, String>,
    re: &BTreeMap<String, String>,
) -> Result<Vec<Matcher>, String> {
    let mut out = Vec::new();
    for s in strings {
        out.extend(parse_matchers(s)?);
    }
    for (k, v) in eq {
        out.push(Matcher::eq(k, v));
    }
    for (k, v) in re {
        out.push(Matcher::new(MatchOp::Re, k, v).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

impl NotifyConfig {
    /// Parses YAML and checks references (receivers, policies, intervals) and matchers.
    pub fn parse(yaml: &str) -> Result<Self, String> {
        let c: NotifyConfig = serde_norway::from_str(yaml).map_err(|e| e.to_string())?;
        c.check()?;
        Ok(c)
    }

    /// The configuration used when none is given: every alert goes to a receiver with no
    /// channels (visible in the API, notified nowhere), grouped by `alertname`, and a zone
    /// partition inhibits the failures of agents in that zone.
    pub fn default_config() -> Self {
        NotifyConfig {
            route: Some(RouteSpec {
                receiver: Some("default".into()),
                group_by: Some(vec!["alertname".into(), crate::alert::ENV_LABEL.into()]),
                ..Default::default()
            }),
            receivers: vec![Receiver {
                name: "default".into(),
                ..Default::default()
            }],
            inhibit_rules: vec![default_partition_inhibit()],
            ..Default::default()
        }
    }

    /// Checks cross references; the error names what is wrong.
    pub fn check(&self) -> Result<(), String> {
        let route = self.route.as_ref().ok_or("no route provided in config")?;
        if route.receiver.is_none() {
            return Err("root route must specify a default receiver".into());
        }
        if !route.matchers.is_empty() || !route.match_.is_empty() || !route.match_re.is_empty() {
            return Err("root route must not have any matchers".into());
        }
        let mut names = std::collections::HashSet::new();
        for r in &self.receivers {
            if !names.insert(r.name.as_str()) {
                return Err(format!(
                    "notification config name {:?} is not unique",
                    r.name
                ));
            }
            for w in &r.webhook_configs {
                check_url(&w.url, "webhook_configs url")?;
                if let Some(f) = &w.format
                    && f != "alertmanager"
                    && f != "vigil"
                {
                    return Err(format!(
                        "webhook format {f:?} is not one of alertmanager, vigil"
                    ));
                }
            }
            for s in &r.slack_configs {
                let url = s
                    .api_url
                    .clone()
                    .or_else(|| self.global.slack_api_url.clone());
                check_url(
                    url.as_deref().ok_or(format!(
                        "receiver {:?}: no Slack api_url set either inline or globally",
                        r.name
                    ))?,
                    "slack api_url",
                )?;
            }
            for e in &r.email_configs {
                if e.to.trim().is_empty() {
                    return Err(format!(
                        "receiver {:?}: missing to address in email config",
                        r.name
                    ));
                }
                if e.smarthost.is_none() && self.global.smtp_smarthost.is_none() {
                    return Err(format!(
                        "receiver {:?}: no global SMTP smarthost set",
                        r.name
                    ));
                }
                if e.from.is_none() && self.global.smtp_from.is_none() {
                    return Err(format!("receiver {:?}: no global SMTP from set", r.name));
                }
                if let Some(ca) = e.tls_config.as_ref().and_then(|t| t.ca_file.as_ref())
                    && std::fs::metadata(ca).is_err()
                {
                    return Err(format!(
                        "receiver {:?}: tls_config ca_file {ca:?} cannot be read",
                        r.name
                    ));
                }
            }
            for a in &r.alertmanager_configs {
                check_url(&a.url, "alertmanager_configs url")?;
            }
        }
        let intervals: std::collections::HashSet<&str> = self
            .time_intervals
            .iter()
            .chain(&self.mute_time_intervals)
            .map(|t| t.name.as_str())
            .collect();
        for t in self.time_intervals.iter().chain(&self.mute_time_intervals) {
            for i in &t.time_intervals {
                crate::timeint::check(i).map_err(|e| format!("time interval {:?}: {e}", t.name))?;
            }
        }
        let mut policies = std::collections::HashSet::new();
        for p in &self.escalation_policies {
            if !policies.insert(p.name.as_str()) {
                return Err(format!("escalation policy {:?} is defined twice", p.name));
            }
            if p.levels.is_empty() {
                return Err(format!("escalation policy {:?} has no levels", p.name));
            }
            for l in &p.levels {
                for r in &l.receivers {
                    if !names.contains(r.as_str()) {
                        return Err(format!(
                            "escalation policy {:?}: undefined receiver {r:?}",
                            p.name
                        ));
                    }
                }
            }
        }
        fn walk(
            r: &RouteSpec,
            names: &std::collections::HashSet<&str>,
            policies: &std::collections::HashSet<&str>,
            intervals: &std::collections::HashSet<&str>,
        ) -> Result<(), String> {
            if let Some(rc) = &r.receiver
                && !names.contains(rc.as_str())
            {
                return Err(format!("undefined receiver {rc:?} used in route"));
            }
            if let Some(p) = &r.escalation_policy
                && !policies.contains(p.as_str())
            {
                return Err(format!("undefined escalation policy {p:?} used in route"));
            }
            for t in r.mute_time_intervals.iter().chain(&r.active_time_intervals) {
                if !intervals.contains(t.as_str()) {
                    return Err(format!("undefined time interval {t:?} used in route"));
                }
            }
            compile_matchers(&r.matchers, &r.match_, &r.match_re)?;
            if let Some(g) = &r.group_by
                && g.iter().any(|l| l == "...")
                && g.len() > 1
            {
                return Err(
                    "cannot have wildcard group_by (`...`) and other labels at the same time"
                        .into(),
                );
            }
            for c in &r.routes {
                walk(c, names, policies, intervals)?;
            }
            Ok(())
        }
        walk(route, &names, &policies, &intervals)?;
        for i in &self.inhibit_rules {
            compile_matchers(&i.source_matchers, &i.source_match, &i.source_match_re)?;
            compile_matchers(&i.target_matchers, &i.target_match, &i.target_match_re)?;
        }
        Ok(())
    }
}

/// A zone partition mutes the failures of agents in the same zone and environment.
pub fn default_partition_inhibit() -> InhibitRuleSpec {
    InhibitRuleSpec {
        source_matchers: vec!["alertname=\"ZonePartitionSuspected\"".into()],
        target_matchers: vec!["alertname=~\"AgentFailed|AgentUnreachable\"".into()],
        equal: vec!["zone".into(), crate::alert::ENV_LABEL.into()],
        ..Default::default()
    }
}

fn check_url(u: &str, what: &str) -> Result<(), String> {
    if u.starts_with("http://") || u.starts_with("https://") {
        Ok(())
    } else {
        Err(format!("{what} {u:?} is not an http(s) URL"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matcher_syntax() {
        let m = parse_matchers(r#"severity=~"critical|warning""#).unwrap();
        assert_eq!(m.len(), 1);
        assert!(m[0].matches("critical") && !m[0].matches("info"));
        let m = parse_matchers(r#"{team="db", env!=dev}"#).unwrap();
        assert_eq!(m.len(), 2);
        assert!(parse_matchers("noop").is_err());
        assert!(parse_matchers(r#"a="unterminated"#).is_err());
        assert!(parse_matchers(r#"a=~"(""#).is_err());
    }

    #[test]
    fn alertmanager_config_parses_and_checks_references() {
        let y = r##"
global:
  smtp_smarthost: 127.0.0.1:2525
  smtp_from: vigil@example.org
route:
  receiver: ops
  group_by: [alertname, zone]
  group_wait: 0s
  routes:
    - matchers: ['severity="critical"']
      receiver: pager
      escalation_policy: critical
      continue: true
receivers:
  - name: ops
    webhook_configs: [{url: "http://127.0.0.1:1/hook"}]
  - name: pager
    email_configs: [{to: oncall@example.org}]
  - name: boss
    slack_configs: [{api_url: "http://127.0.0.1:1/slack", channel: "#ops"}]
escalation_policies:
  - name: critical
    levels:
      - {receivers: [pager]}
      - {delay: 5m, receivers: [boss]}
inhibit_rules:
  - source_matchers: ['severity="critical"']
    target_matchers: ['severity="warning"']
    equal: [zone]
"##;
        let c = NotifyConfig::parse(y).unwrap();
        assert_eq!(
            c.escalation_policies[0].levels[1].delay,
            PromDuration(300_000)
        );
        let broken = y.replace("receiver: pager", "receiver: nobody");
        assert!(
            NotifyConfig::parse(&broken)
                .unwrap_err()
                .contains("undefined receiver \"nobody\"")
        );
        let broken = y.replace("escalation_policy: critical", "escalation_policy: x");
        assert!(
            NotifyConfig::parse(&broken)
                .unwrap_err()
                .contains("escalation policy")
        );
        let broken = y.replace("group_wait: 0s", "group_wait: soon");
        assert!(NotifyConfig::parse(&broken).is_err());
        let broken = y.replace("pagerx", "").replace(
            "  - name: boss\n",
            "  - name: boss\n    pagerduty_configs: []\n",
        );
        assert!(
            NotifyConfig::parse(&broken)
                .unwrap_err()
                .contains("pagerduty_configs")
        );
        NotifyConfig::default_config().check().unwrap();
    }
}

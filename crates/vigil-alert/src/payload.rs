//! What each channel sends for a [`Notification`]: Alertmanager's webhook v4 JSON (optionally
//! with Vigil's acknowledgement and escalation fields), a Slack incoming-webhook message, an
//! e-mail subject and body, and the alert list Alertmanager's API v2 takes.

use serde_json::{Value as J, json};

use crate::alert::{ENV_LABEL, LabelMap};
use crate::config::{EmailConfig, SlackConfig};
use crate::dispatch::{Notification, NotifiedAlert};
use crate::template::{Template, Value as T, civil_from_days};

/// Milliseconds since the epoch as RFC 3339 UTC with milliseconds.
pub fn rfc3339(ms: i64) -> String {
    let (y, mo, d) = civil_from_days(ms.div_euclid(86_400_000));
    let r = ms.rem_euclid(86_400_000);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        r / 3_600_000,
        r / 60_000 % 60,
        r / 1000 % 60,
        r % 1000
    )
}

/// Alertmanager's zero time, used as `endsAt` of firing alerts in webhooks.
pub const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

fn starts(a: &NotifiedAlert) -> i64 {
    a.alert.fired_at.unwrap_or(a.alert.active_at)
}

fn ends(a: &NotifiedAlert) -> Option<i64> {
    (a.status == "resolved").then(|| a.alert.resolved_at.unwrap_or(a.alert.active_at))
}

fn fp_hex(fp: u64) -> String {
    format!("{fp:016x}")
}

/// Alertmanager's webhook payload (version 4). `vigil` adds a `vigil` object with the
/// escalation level and each alert's acknowledgement and value.
pub fn webhook(n: &Notification, external_url: &str, max_alerts: usize, vigil: bool) -> J {
    let total = n.alerts.len();
    let shown = if max_alerts > 0 {
        &n.alerts[..total.min(max_alerts)]
    } else {
        &n.alerts[..]
    };
    let alerts: Vec<J> = shown
        .iter()
        .map(|a| {
            let mut o = json!({
                "status": a.status,
                "labels": a.alert.labels,
                "annotations": a.alert.annotations,
                "startsAt": rfc3339(starts(a)),
                "endsAt": ends(a).map(rfc3339).unwrap_or_else(|| ZERO_TIME.into()),
                "generatorURL": generator_url(external_url, a),
                "fingerprint": fp_hex(a.alert.fingerprint),
            });
            if vigil {
                o["vigil"] = json!({
                    "environment": a.alert.env,
                    "source": a.alert.source,
                    "value": finite(a.alert.value),
                    "acknowledgedBy": a.ack.as_ref().map(|k| k.by.clone()),
                    "acknowledgedAt": a.ack.as_ref().map(|k| rfc3339(k.at)),
                });
            }
            o
        })
        .collect();
    let mut body = json!({
        "version": "4",
        "groupKey": n.group_key,
        "truncatedAlerts": total - shown.len(),
        "status": n.status,
        "receiver": n.receiver,
        "groupLabels": n.group_labels,
        "commonLabels": n.common_labels(),
        "commonAnnotations": n.common_annotations(),
        "externalURL": external_url,
        "alerts": alerts,
    });
    if vigil {
        body["vigil"] = json!({
            "escalationPolicy": n.escalation_policy,
            "escalationLevel": n.escalation_level,
            "createdAt": rfc3339(n.created_at),
        });
    }
    body
}

fn finite(v: f64) -> J {
    serde_json::Number::from_f64(v)
        .map(J::Number)
        .unwrap_or(J::Null)
}

fn generator_url(external_url: &str, a: &NotifiedAlert) -> String {
    let env = a
        .alert
        .labels
        .get(ENV_LABEL)
        .map(String::as_str)
        .unwrap_or("");
    format!(
        "{external_url}/api/telemetry/admin/alerts/{}?env={env}",
        fp_hex(a.alert.fingerprint)
    )
}

/// The alert list for Alertmanager's `POST /api/v2/alerts`.
pub fn alertmanager_v2(n: &Notification, external_url: &str, send_resolved: bool) -> J {
    J::Array(
        n.alerts
            .iter()
            .filter(|a| send_resolved || a.status == "firing")
            .map(|a| {
                let mut o = json!({
                    "labels": a.alert.labels,
                    "annotations": a.alert.annotations,
                    "startsAt": rfc3339(starts(a)),
                    "generatorURL": generator_url(external_url, a),
                });
                if let Some(e) = ends(a) {
                    o["endsAt"] = J::String(rfc3339(e));
                }
                o
            })
            .collect(),
    )
}

/// The notification as template data (`.Status`, `.Alerts`, `.CommonLabels`, …), as
/// Alertmanager's templates see it.
pub fn template_data(n: &Notification, external_url: &str) -> T {
    let map = |m: &LabelMap| T::str_map(m.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let alerts = n
        .alerts
        .iter()
        .map(|a| {
            T::Map(
                [
                    ("Status".to_string(), T::Str(a.status.clone())),
                    ("Labels".to_string(), map(&a.alert.labels)),
                    ("Annotations".to_string(), map(&a.alert.annotations)),
                    ("StartsAt".to_string(), T::Str(rfc3339(starts(a)))),
                    (
                        "EndsAt".to_string(),
                        T::Str(ends(a).map(rfc3339).unwrap_or_else(|| ZERO_TIME.into())),
                    ),
                    (
                        "GeneratorURL".to_string(),
                        T::Str(generator_url(external_url, a)),
                    ),
                    (
                        "Fingerprint".to_string(),
                        T::Str(fp_hex(a.alert.fingerprint)),
                    ),
                ]
                .into_iter()
                .collect(),
            )
        })
        .collect();
    T::Map(
        [
            ("Status".to_string(), T::Str(n.status.clone())),
            ("Receiver".to_string(), T::Str(n.receiver.clone())),
            ("GroupLabels".to_string(), map(&n.group_labels)),
            ("CommonLabels".to_string(), map(&n.common_labels())),
            (
                "CommonAnnotations".to_string(),
                map(&n.common_annotations()),
            ),
            ("ExternalURL".to_string(), T::Str(external_url.to_string())),
            ("Alerts".to_string(), T::List(alerts)),
        ]
        .into_iter()
        .collect(),
    )
}

/// Renders a notification template; errors are reported in the text rather than dropping
/// the notification.
pub fn render(name: &str, src: &str, data: &T) -> String {
    match Template::parse(name, src, &[]).and_then(|t| t.execute(data, &[], None)) {
        Ok(s) => s,
        Err(e) => format!("<template error: {e}>"),
    }
}

/// Checks a notification template parses.
pub fn check_template(name: &str, src: &str) -> Result<(), String> {
    Template::parse(name, src, &[])
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Alertmanager's default title: `[FIRING:2] HighCPU (zone="eu")`.
pub fn default_title(n: &Notification) -> String {
    let firing = n.alerts.iter().filter(|a| a.status == "firing").count();
    let mut s = if n.status == "firing" {
        format!("[FIRING:{firing}]")
    } else {
        "[RESOLVED]".to_string()
    };
    let gl: Vec<String> = n
        .group_labels
        .iter()
        .filter(|(k, _)| k.as_str() != "alertname")
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect();
    let name = n
        .group_labels
        .get("alertname")
        .cloned()
        .or_else(|| n.common_labels().get("alertname").cloned());
    if let Some(name) = name {
        s.push(' ');
        s.push_str(&name);
    }
    if !gl.is_empty() {
        s.push_str(&format!(" ({})", gl.join(" ")));
    }
    if let Some(l) = n.escalation_level {
        s.push_str(&format!(" — escalation level {}", l + 1));
    }
    s
}

/// A plain-text listing of the alerts.
pub fn default_text(n: &Notification) -> String {
    let mut s = String::new();
    for a in &n.alerts {
        let summary = a
            .alert
            .annotations
            .get("summary")
            .or_else(|| a.alert.annotations.get("description"))
            .cloned()
            .unwrap_or_default();
        let labels: Vec<String> = a
            .alert
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        s.push_str(&format!(
            "[{}] {} {}\n  labels: {}\n  since: {}\n",
            a.status.to_uppercase(),
            a.alert
                .labels
                .get("alertname")
                .map(String::as_str)
                .unwrap_or(""),
            summary,
            labels.join(", "),
            rfc3339(starts(a))
        ));
        if let Some(k) = &a.ack {
            s.push_str(&format!(
                "  acknowledged by {} at {}\n",
                k.by,
                rfc3339(k.at)
            ));
        }
    }
    s
}

/// A Slack incoming-webhook message.
pub fn slack(n: &Notification, c: &SlackConfig, external_url: &str) -> J {
    let data = template_data(n, external_url);
    let title = c
        .title
        .as_deref()
        .map(|t| render("slack.title", t, &data))
        .unwrap_or_else(|| default_title(n));
    let text = c
        .text
        .as_deref()
        .map(|t| render("slack.text", t, &data))
        .unwrap_or_else(|| default_text(n));
    let color = c
        .color
        .as_deref()
        .map(|t| render("slack.color", t, &data))
        .unwrap_or_else(|| {
            if n.status == "firing" {
                "danger"
            } else {
                "good"
            }
            .into()
        });
    let mut body = json!({
        "text": title,
        "attachments": [{"title": title, "text": text, "color": color, "fallback": title, "mrkdwn_in": ["text"]}],
    });
    if let Some(ch) = &c.channel {
        body["channel"] = J::String(ch.clone());
    }
    if let Some(u) = &c.username {
        body["username"] = J::String(u.clone());
    }
    body
}

/// Subject, plain-text body and optional HTML body of an e-mail.
pub fn email(
    n: &Notification,
    c: &EmailConfig,
    external_url: &str,
) -> (String, String, Option<String>) {
    let data = template_data(n, external_url);
    let subject = c
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("subject"))
        .map(|(_, v)| render("email.subject", v, &data))
        .unwrap_or_else(|| default_title(n));
    let text = c
        .text
        .as_deref()
        .map(|t| render("email.text", t, &data))
        .unwrap_or_else(|| default_text(n));
    let html = c.html.as_deref().map(|t| render("email.html", t, &data));
    (subject, text, html)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::{Alert, AlertState, fingerprint};

    fn notification() -> Notification {
        let mut l: LabelMap = [
            ("alertname", "HighCPU"),
            ("zone", "eu"),
            (ENV_LABEL, "prod"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        let a = Alert {
            fingerprint: fingerprint(&l),
            env: "prod".into(),
            labels: l.clone(),
            annotations: [("summary".to_string(), "cpu high".to_string())]
                .into_iter()
                .collect(),
            state: AlertState::Firing,
            value: 97.5,
            active_at: 1_700_000_000_000,
            fired_at: Some(1_700_000_060_000),
            resolved_at: None,
            keep_firing_since: None,
            source: "threshold:r1".into(),
        };
        l.retain(|k, _| k == "alertname");
        Notification {
            receiver: "ops".into(),
            group_key: "root:alertname=\"HighCPU\",".into(),
            group_labels: l,
            status: "firing".into(),
            alerts: vec![NotifiedAlert {
                alert: a,
                status: "firing".into(),
                ack: None,
            }],
            escalation_level: None,
            escalation_policy: None,
            created_at: 1_700_000_061_000,
        }
    }

    #[test]
    fn webhook_v4_shape() {
        let n = notification();
        let j = webhook(&n, "http://vigil:9700", 0, false);
        assert_eq!(j["version"], "4");
        assert_eq!(j["status"], "firing");
        assert_eq!(j["alerts"][0]["startsAt"], "2023-11-14T22:14:20.000Z");
        assert_eq!(j["alerts"][0]["endsAt"], ZERO_TIME);
        assert_eq!(j["commonLabels"]["zone"], "eu");
        assert_eq!(j["truncatedAlerts"], 0);
        assert!(j.get("vigil").is_none());
        let v = webhook(&n, "", 0, true);
        assert_eq!(v["alerts"][0]["vigil"]["value"], 97.5);
    }

    #[test]
    fn slack_and_email_defaults_and_templates() {
        let n = notification();
        let s = slack(
            &n,
            &SlackConfig {
                channel: Some("#ops".into()),
                ..Default::default()
            },
            "",
        );
        assert_eq!(s["text"], "[FIRING:1] HighCPU");
        assert_eq!(s["channel"], "#ops");
        let s = slack(
            &n,
            &SlackConfig {
                title: Some("{{ .Status | toUpper }} {{ .CommonLabels.zone }}".into()),
                text: Some("{{ range .Alerts }}{{ .Annotations.summary }}{{ end }}".into()),
                ..Default::default()
            },
            "",
        );
        assert_eq!(s["attachments"][0]["title"], "FIRING eu");
        assert_eq!(s["attachments"][0]["text"], "cpu high");
        let (subj, body, html) = email(
            &n,
            &EmailConfig {
                to: "a@b".into(),
                ..Default::default()
            },
            "",
        );
        assert_eq!(subj, "[FIRING:1] HighCPU");
        assert!(body.contains("cpu high") && html.is_none());
        let am = alertmanager_v2(&n, "", true);
        assert_eq!(am[0]["labels"]["alertname"], "HighCPU");
        assert!(am[0].get("endsAt").is_none());
    }
}

//! Recovery actions: when an agent matching a rule turns failed (or, optionally, recovered),
//! call an HTTP endpoint, with a timeout and retries with exponential backoff; every outcome is
//! recorded in the agent's history (`kind = "recovery"`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;

use crate::config::{ConfigError, parse_duration};
use crate::health::{Fleet, StreamEvent};

/// `[[health.recovery]]` as written in the configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RecoveryConfig {
    /// Environment (`*` for all).
    #[serde(default = "star")]
    pub env: String,
    /// Only agents of this zone.
    #[serde(default)]
    pub zone: Option<String>,
    /// Only agents carrying all these labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// States that trigger it: `failed` and/or `recovered` (default `["failed"]`).
    #[serde(default = "failed_only")]
    pub on: Vec<String>,
    /// HTTP method (default POST).
    #[serde(default = "post")]
    pub method: String,
    /// URL; `{agent_id}`, `{zone}`, `{env}`, `{state}` are replaced.
    pub url: String,
    /// Extra headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Body template with the same placeholders (plus `{at_ms}`); default a JSON object of them.
    #[serde(default)]
    pub body: Option<String>,
    /// Per-attempt timeout (default `5s`).
    #[serde(default = "five_s")]
    pub timeout: String,
    /// Retries after the first attempt (default 3).
    #[serde(default = "three")]
    pub retries: u32,
    /// First backoff (default `1s`), doubled each retry up to `max_backoff` (default `30s`).
    #[serde(default = "one_s")]
    pub backoff: String,
    /// Backoff cap.
    #[serde(default = "thirty_s")]
    pub max_backoff: String,
}

fn star() -> String {
    "*".into()
}
fn failed_only() -> Vec<String> {
    vec!["failed".into()]
}
fn post() -> String {
    "POST".into()
}
fn five_s() -> String {
    "5s".into()
}
fn one_s() -> String {
    "1s".into()
}
fn thirty_s() -> String {
    "30s".into()
}
fn three() -> u32 {
    3
}

/// A checked rule.
#[derive(Debug, Clone)]
pub struct Rule {
    cfg: RecoveryConfig,
    method: reqwest::Method,
    timeout: Duration,
    backoff: Duration,
    max_backoff: Duration,
}

impl RecoveryConfig {
    /// Checks the rule; errors name the key (`[[health.recovery]][i].field`).
    pub fn check(&self, i: usize) -> Result<Rule, ConfigError> {
        let key = |f: &str| format!("[[health.recovery]][{i}].{f}");
        let bad = |f: &str, r: String| ConfigError {
            key: key(f),
            reason: r,
        };
        let d = |f: &str, v: &str| {
            parse_duration(v).ok_or_else(|| bad(f, format!("{v:?} is not a duration like 5s")))
        };
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(bad(
                "url",
                format!("{:?} must start with http:// or https://", self.url),
            ));
        }
        if self.on.is_empty() || self.on.iter().any(|s| s != "failed" && s != "recovered") {
            return Err(bad("on", "use \"failed\" and/or \"recovered\"".into()));
        }
        let method = reqwest::Method::from_bytes(self.method.to_uppercase().as_bytes())
            .map_err(|_| bad("method", format!("{:?} is not an HTTP method", self.method)))?;
        if self.retries > 20 {
            return Err(bad("retries", "at most 20".into()));
        }
        Ok(Rule {
            cfg: self.clone(),
            method,
            timeout: d("timeout", &self.timeout)?,
            backoff: d("backoff", &self.backoff)?,
            max_backoff: d("max_backoff", &self.max_backoff)?,
        })
    }
}

fn fill(t: &str, ev: &StreamEvent, state: &str) -> String {
    t.replace("{agent_id}", &ev.record.agent_id)
        .replace("{zone}", &ev.zone)
        .replace("{env}", &ev.env)
        .replace("{state}", state)
        .replace("{at_ms}", &ev.record.at_ms.to_string())
}

/// Watches the fleet's events and runs matching rules until the fleet is dropped.
pub fn spawn(fleet: Arc<Fleet>, rules: Vec<Rule>) -> Option<tokio::task::JoinHandle<()>> {
    if rules.is_empty() {
        return None;
    }
    let client = reqwest::Client::builder().build().ok()?;
    let mut rx = fleet.subscribe();
    Some(tokio::spawn(async move {
        loop {
            let ev = match rx.recv().await {
                Ok(ev) => ev,
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(
                        missed = n,
                        "Recovery actions fell behind the event stream; some were not run."
                    );
                    continue;
                }
                Err(RecvError::Closed) => return,
            };
            if ev.record.kind != "state" {
                continue;
            }
            let Some(to) = ev.record.to_state.clone() else {
                continue;
            };
            for rule in &rules {
                let c = &rule.cfg;
                if !(c.env == "*" || c.env == ev.env)
                    || !c.on.contains(&to)
                    || c.zone.as_ref().is_some_and(|z| *z != ev.zone)
                {
                    continue;
                }
                if !c.labels.is_empty() {
                    let ok = fleet.get(&ev.env).is_some_and(|f| {
                        let f = f.lock();
                        f.index(&ev.record.agent_id).is_some_and(|i| {
                            let l = &f.info[i as usize].labels;
                            c.labels.iter().all(|(k, v)| l.get(k) == Some(v))
                        })
                    });
                    if !ok {
                        continue;
                    }
                }
                let (client, rule, ev, fleet, to) = (
                    client.clone(),
                    rule.clone(),
                    ev.clone(),
                    fleet.clone(),
                    to.clone(),
                );
                tokio::spawn(async move {
                    let detail = run(&client, &rule, &ev, &to).await;
                    fleet.record_recovery(&ev.env, &ev.record.agent_id, detail);
                });
            }
        }
    }))
}

/// One action with retries; returns what happened, for the history.
async fn run(client: &reqwest::Client, rule: &Rule, ev: &StreamEvent, state: &str) -> String {
    let c = &rule.cfg;
    let url = fill(&c.url, ev, state);
    let body = match &c.body {
        Some(t) => fill(t, ev, state),
        None => serde_json::json!({
            "agent_id": ev.record.agent_id, "zone": ev.zone, "env": ev.env,
            "state": state, "at_ms": ev.record.at_ms,
        })
        .to_string(),
    };
    let mut backoff = rule.backoff;
    let mut last = String::new();
    for attempt in 1..=c.retries + 1 {
        let mut req = client
            .request(rule.method.clone(), &url)
            .timeout(rule.timeout)
            .header("content-type", "application/json")
            .body(body.clone());
        for (k, v) in &c.headers {
            req = req.header(k, fill(v, ev, state));
        }
        match req.send().await {
            Ok(r) if r.status().is_success() => {
                return format!(
                    "{} {url}: {} after {attempt} attempt(s)",
                    c.method,
                    r.status().as_u16()
                );
            }
            Ok(r) => last = format!("HTTP {}", r.status().as_u16()),
            Err(e) => {
                last = if e.is_timeout() {
                    format!("timed out after {:?}", rule.timeout)
                } else {
                    e.to_string()
                }
            }
        }
        if attempt <= c.retries {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(rule.max_backoff);
        }
    }
    format!(
        "{} {url}: failed after {} attempt(s): {last}",
        c.method,
        c.retries + 1
    )
}

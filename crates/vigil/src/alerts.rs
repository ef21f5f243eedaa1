//! `vigil rules check`, `vigil silence …` and `vigil alerts …`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use serde_json::{Value, json};

pub use crate::client::Conn;

/// JSON calls to the admin API.
trait ConnCall {
    /// `method path` with an optional JSON body; the JSON answer, or the API's error message.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value>;
}

/// Rule files.
#[derive(Subcommand, Debug)]
pub enum RulesCmd {
    /// Validate Prometheus rule files like `promtool check rules` (exit 1 on any problem).
    Check {
        /// Rule files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

impl ConnCall for Conn {
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let b = body.map(|v| v.to_string()).unwrap_or_default();
        let r = crate::client::request(
            method,
            &self.url,
            path,
            "application/json",
            &b,
            &self.headers()?,
            60,
        )?;
        let text = String::from_utf8_lossy(&r.body).to_string();
        if !(200..300).contains(&r.status) {
            let msg = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                .unwrap_or(text);
            bail!("{method} {path}: HTTP {}: {msg}", r.status);
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text)
            .with_context(|| format!("{method} {path}: response is not JSON"))
    }
}

/// Silences.
#[derive(Subcommand, Debug)]
pub enum SilenceCmd {
    /// Create a silence: `vigil silence add 'alertname="AgentFailed"' 'zone=~"eu-.*"' --duration 2h --comment "…"`.
    Add {
        #[command(flatten)]
        conn: Conn,
        /// Matchers in Alertmanager syntax (name="v", name!="v", name=~"re", name!~"re").
        #[arg(required = true)]
        matchers: Vec<String>,
        /// How long, from now (e.g. 30m, 2h, 1d).
        #[arg(long, default_value = "1h")]
        duration: String,
        /// Why.
        #[arg(long)]
        comment: String,
        /// Author [default: the token's subject].
        #[arg(long)]
        author: Option<String>,
    },
    /// List silences.
    List {
        #[command(flatten)]
        conn: Conn,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Expire a silence now.
    Expire {
        #[command(flatten)]
        conn: Conn,
        /// Silence id.
        id: String,
    },
}

/// Alerts.
#[derive(Subcommand, Debug)]
pub enum AlertsCmd {
    /// List alerts (pending, firing, recently resolved).
    List {
        #[command(flatten)]
        conn: Conn,
        /// Only this state: pending, firing, inactive.
        #[arg(long)]
        state: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Acknowledge a firing alert (stops its escalation).
    Ack {
        #[command(flatten)]
        conn: Conn,
        /// Fingerprint (from `vigil alerts list`).
        fingerprint: String,
    },
}

/// `vigil rules …`
pub fn rules(cmd: RulesCmd) -> Result<()> {
    match cmd {
        RulesCmd::Check { files } => {
            let mut failed = 0;
            for f in &files {
                println!("Checking {}", f.display());
                let text = match std::fs::read_to_string(f) {
                    Ok(t) => t,
                    Err(e) => {
                        println!("  FAILED:\n{}: {e}", f.display());
                        failed += 1;
                        continue;
                    }
                };
                match vigil_alert::RuleFile::parse(&text) {
                    Ok(rf) => {
                        let (_, a, r) = rf.counts();
                        println!(
                            "  SUCCESS: {} rules found ({a} alerting, {r} recording)",
                            a + r
                        );
                    }
                    Err(e) => {
                        println!("  FAILED:");
                        for x in e.0 {
                            println!("{}: {x}", f.display());
                        }
                        failed += 1;
                    }
                }
                println!();
            }
            if failed > 0 {
                bail!("{failed} of {} rule files have problems", files.len());
            }
            Ok(())
        }
    }
}

fn matcher_json(s: &str) -> Result<Vec<Value>> {
    let ms = vigil_alert::config::parse_matchers(s).map_err(anyhow::Error::msg)?;
    Ok(ms
        .iter()
        .map(|m| {
            let (is_regex, is_equal) = match m.op {
                vigil_model::MatchOp::Eq => (false, true),
                vigil_model::MatchOp::Ne => (false, false),
                vigil_model::MatchOp::Re => (true, true),
                vigil_model::MatchOp::Nre => (true, false),
            };
            json!({"name": m.name, "value": m.value, "isRegex": is_regex, "isEqual": is_equal})
        })
        .collect())
}

/// `vigil silence …`
pub fn silence(cmd: SilenceCmd) -> Result<()> {
    match cmd {
        SilenceCmd::Add {
            conn,
            matchers,
            duration,
            comment,
            author,
        } => {
            let d = vigil_server::config::parse_duration(&duration).with_context(|| {
                format!("--duration {duration:?}: use a duration like 30m, 2h, 1d")
            })?;
            let mut ms = Vec::new();
            for m in &matchers {
                ms.extend(matcher_json(m).with_context(|| format!("matcher {m:?}"))?);
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_millis() as i64;
            let body = json!({
                "matchers": ms,
                "startsAt": vigil_alert::payload::rfc3339(now),
                "endsAt": vigil_alert::payload::rfc3339(now + d.as_millis() as i64),
                "createdBy": author.unwrap_or_default(),
                "comment": comment,
            });
            let r = conn.call("POST", "/api/telemetry/admin/silences", Some(&body))?;
            println!("{}", r["silenceID"].as_str().unwrap_or_default());
        }
        SilenceCmd::List { conn, json } => {
            let r = conn.call("GET", "/api/telemetry/admin/silences", None)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
                return Ok(());
            }
            println!(
                "{:<17} {:<8} {:<25} {:<14} matchers / comment",
                "id", "state", "ends", "by"
            );
            for s in r.as_array().into_iter().flatten() {
                let ms: Vec<String> = s["matchers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|m| {
                        let op = match (m["isRegex"].as_bool(), m["isEqual"].as_bool()) {
                            (Some(true), Some(false)) => "!~",
                            (Some(true), _) => "=~",
                            (_, Some(false)) => "!=",
                            _ => "=",
                        };
                        format!(
                            "{}{op}{:?}",
                            m["name"].as_str().unwrap_or(""),
                            m["value"].as_str().unwrap_or("")
                        )
                    })
                    .collect();
                println!(
                    "{:<17} {:<8} {:<25} {:<14} {{{}}} {}",
                    s["id"].as_str().unwrap_or(""),
                    s["status"]["state"].as_str().unwrap_or(""),
                    s["endsAt"].as_str().unwrap_or(""),
                    s["createdBy"].as_str().unwrap_or(""),
                    ms.join(","),
                    s["comment"].as_str().unwrap_or("")
                );
            }
        }
        SilenceCmd::Expire { conn, id } => {
            conn.call(
                "DELETE",
                &format!("/api/telemetry/admin/silences/{id}"),
                None,
            )?;
            println!("expired {id}");
        }
    }
    Ok(())
}

/// `vigil alerts …`
pub fn alerts(cmd: AlertsCmd) -> Result<()> {
    match cmd {
        AlertsCmd::List { conn, state, json } => {
            let path = match &state {
                Some(s) => format!("/api/telemetry/admin/alerts?state={s}"),
                None => "/api/telemetry/admin/alerts".into(),
            };
            let r = conn.call("GET", &path, None)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
                return Ok(());
            }
            println!(
                "{:<17} {:<9} {:<25} {:<12} labels",
                "fingerprint", "state", "since", "acked by"
            );
            for a in r["alerts"].as_array().into_iter().flatten() {
                let labels: Vec<String> = a["labels"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                    .collect();
                println!(
                    "{:<17} {:<9} {:<25} {:<12} {}",
                    a["fingerprint"].as_str().unwrap_or(""),
                    a["state"].as_str().unwrap_or(""),
                    a["activeAt"].as_str().unwrap_or(""),
                    a["acknowledgedBy"].as_str().unwrap_or("-"),
                    labels.join(", ")
                );
            }
        }
        AlertsCmd::Ack { conn, fingerprint } => {
            let r = conn.call(
                "POST",
                &format!("/api/telemetry/admin/alerts/{fingerprint}/ack"),
                None,
            )?;
            println!(
                "acknowledged {} by {}",
                r["fingerprint"].as_str().unwrap_or(&fingerprint),
                r["acknowledgedBy"].as_str().unwrap_or("")
            );
        }
    }
    Ok(())
}

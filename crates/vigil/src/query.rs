//! `vigil query '<expr>'`: runs PromQL against a running server and prints a table or JSON.

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::Value;

use crate::client;

/// Arguments of `vigil query`.
#[derive(Args, Debug)]
pub struct QueryArgs {
    /// The PromQL expression.
    pub expr: String,
    #[command(flatten)]
    pub conn: crate::client::Conn,
    /// Evaluation time (Unix seconds or RFC 3339) [default: now].
    #[arg(long)]
    pub time: Option<String>,
    /// Range query over the last DURATION (e.g. 1h), ending at --end or now.
    #[arg(long)]
    pub range: Option<String>,
    /// Range start (Unix seconds or RFC 3339); with --end instead of --range.
    #[arg(long)]
    pub start: Option<String>,
    /// Range end [default: now].
    #[arg(long)]
    pub end: Option<String>,
    /// Range step (e.g. 15s) [default: range / 60, at least 1s].
    #[arg(long)]
    pub step: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn time_arg(name: &str, v: &str) -> Result<i64> {
    vigil_promql::parse_time(v)
        .with_context(|| format!("--{name} {v:?}: expected Unix seconds or RFC 3339"))
}

fn secs(ms: i64) -> String {
    format!("{}", ms as f64 / 1000.0)
}

/// Formats Unix milliseconds as RFC 3339 UTC.
fn rfc3339(ms: i64) -> String {
    let s = ms.div_euclid(1000);
    let frac = ms.rem_euclid(1000);
    let days = s.div_euclid(86_400);
    let sod = s.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let (h, mi, se) = (sod / 3600, (sod % 3600) / 60, sod % 60);
    if frac == 0 {
        format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{se:02}Z")
    } else {
        format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{se:02}.{frac:03}Z")
    }
}

fn labels_str(m: &Value) -> String {
    let Some(obj) = m.as_object() else {
        return "{}".into();
    };
    let name = obj.get("__name__").and_then(Value::as_str).unwrap_or("");
    let rest: Vec<String> = obj
        .iter()
        .filter(|(k, _)| k.as_str() != "__name__")
        .map(|(k, v)| format!("{k}={}", serde_json::to_string(v).unwrap_or_default()))
        .collect();
    format!("{name}{{{}}}", rest.join(", "))
}

fn point(p: &Value) -> (String, String) {
    let t = p.get(0).and_then(Value::as_f64).unwrap_or(0.0);
    let v = p.get(1).and_then(Value::as_str).unwrap_or("").to_string();
    (rfc3339((t * 1000.0).round() as i64), v)
}

fn print_table(data: &Value) -> Result<()> {
    let kind = data["resultType"].as_str().unwrap_or("");
    let result = &data["result"];
    match kind {
        "scalar" | "string" => {
            let (t, v) = point(result);
            println!("{:<24}  VALUE\n{t:<24}  {v}", "TIME");
        }
        "vector" => {
            let rows: Vec<(String, String)> = result
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|s| (labels_str(&s["metric"]), point(&s["value"]).1))
                        .collect()
                })
                .unwrap_or_default();
            let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(6).max(6);
            println!("{:<w$}  VALUE", "SERIES");
            for (l, v) in &rows {
                println!("{l:<w$}  {v}");
            }
            println!("({} series)", rows.len());
        }
        "matrix" => {
            let series = result.as_array().cloned().unwrap_or_default();
            let key = if series.first().is_some_and(|s| s.get("values").is_some()) {
                "values"
            } else {
                "value"
            };
            println!("{:<24}  VALUE", "TIME");
            for s in &series {
                println!("{}", labels_str(&s["metric"]));
                for p in s[key].as_array().into_iter().flatten() {
                    let (t, v) = point(p);
                    println!("  {t:<22}  {v}");
                }
            }
            println!("({} series)", series.len());
        }
        other => bail!("unexpected resultType {other:?}"),
    }
    Ok(())
}

/// Runs `vigil query`.
pub fn run(a: QueryArgs) -> Result<()> {
    let headers = a.conn.headers()?;
    let ranged = a.range.is_some() || a.start.is_some();
    let (path, form) = if ranged {
        let end = match &a.end {
            Some(e) => time_arg("end", e)?,
            None => now_ms(),
        };
        let start = match (&a.start, &a.range) {
            (Some(s), None) => time_arg("start", s)?,
            (None, Some(r)) => {
                let d = vigil_promql::parse_duration(r)
                    .with_context(|| format!("--range {r:?}: expected a duration like 1h"))?;
                end - d
            }
            _ => bail!("give either --range or --start, not both"),
        };
        if end < start {
            bail!("the range ends before it starts");
        }
        let step = match &a.step {
            Some(s) => vigil_promql::parse_duration(s)
                .with_context(|| format!("--step {s:?}: expected a duration like 15s"))?,
            None => ((end - start) / 60).max(1000),
        };
        (
            "/api/v1/query_range",
            vec![
                ("query", a.expr.clone()),
                ("start", secs(start)),
                ("end", secs(end)),
                ("step", secs(step)),
            ],
        )
    } else {
        let mut f = vec![("query", a.expr.clone())];
        if let Some(t) = &a.time {
            f.push(("time", secs(time_arg("time", t)?)));
        }
        ("/api/v1/query", f)
    };
    let resp = client::post_form(&a.conn.url, path, &form, &headers)?;
    let body: Value = serde_json::from_slice(&resp.body).with_context(|| {
        format!(
            "HTTP {}: not JSON: {}",
            resp.status,
            String::from_utf8_lossy(&resp.body)
        )
    })?;
    if body["status"] != "success" {
        let msg = body["error"]
            .as_str()
            .map(str::to_string)
            .or_else(|| body["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| body.to_string());
        let kind = body["errorType"]
            .as_str()
            .or_else(|| body["error"]["code"].as_str())
            .unwrap_or("error");
        bail!("HTTP {} ({kind}): {msg}", resp.status);
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(());
    }
    // Prometheus' non-fatal annotations go to stderr, so the table stays clean.
    for key in ["warnings", "infos"] {
        for note in body[key].as_array().into_iter().flatten() {
            eprintln!("{}", note.as_str().unwrap_or_default());
        }
    }
    print_table(&body["data"])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_867_200_500), "2026-11-28T12:00:00.500Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn labels_render_name_first() {
        let v = serde_json::json!({"__name__": "up", "job": "a"});
        assert_eq!(labels_str(&v), "up{job=\"a\"}");
        assert_eq!(labels_str(&serde_json::json!({})), "{}");
    }
}

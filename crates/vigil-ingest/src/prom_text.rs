//! Prometheus text exposition format (`/api/v1/import/prometheus`), timestamps optional.
//!
//! `metric_name{label="value",…} value [timestamp_ms]`; `# HELP` / `# TYPE` and other comments
//! are skipped. Label values use the exposition escapes `\\`, `\"` and `\n`. Values accept
//! Go's float syntax including `NaN`, `+Inf`, `-Inf`.

use vigil_tsdb::WriteBatch;

use crate::{DecodeError, Limits, Summary};

fn err(line: usize, reason: impl Into<String>) -> DecodeError {
    DecodeError::Line {
        line,
        reason: reason.into(),
    }
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "NaN" | "nan" => Some(f64::NAN),
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        _ => {
            let v: f64 = s.parse().ok()?;
            // Rust accepts "infinity"/"nan" spellings the exposition format does not.
            if !v.is_finite() { None } else { Some(v) }
        }
    }
}

/// Decodes an exposition-format body; lines without a timestamp get `now_ms`.
pub fn decode(
    body: &[u8],
    now_ms: i64,
    extra: &[(&str, &str)],
    limits: &Limits,
    batch: &mut WriteBatch,
) -> Result<Summary, DecodeError> {
    limits.check_body(body.len())?;
    let text = std::str::from_utf8(body).map_err(|_| err(0, "body is not valid UTF-8"))?;
    let mut sum = Summary::default();
    let mut val = String::new();
    for (i, raw) in text.lines().enumerate() {
        let ln = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line
            .find(['{', ' ', '\t'])
            .ok_or_else(|| err(ln, "missing value"))?;
        let name = &line[..name_end];
        if name.is_empty() {
            return Err(err(ln, "missing metric name"));
        }
        batch.push_label("__name__", name);
        let mut rest = &line[name_end..];
        if let Some(r) = rest.strip_prefix('{') {
            let mut r = r;
            loop {
                r = r.trim_start_matches([' ', ',']);
                if let Some(after) = r.strip_prefix('}') {
                    rest = after;
                    break;
                }
                let eq = r.find('=').ok_or_else(|| err(ln, "label without '='"))?;
                let lname = r[..eq].trim();
                let after = r[eq + 1..].trim_start();
                let body = after
                    .strip_prefix('"')
                    .ok_or_else(|| err(ln, format!("value of label {lname:?} is not quoted")))?;
                val.clear();
                let mut chars = body.char_indices();
                let mut end = None;
                while let Some((j, c)) = chars.next() {
                    match c {
                        '\\' => match chars.next() {
                            Some((_, 'n')) => val.push('\n'),
                            Some((_, '\\')) => val.push('\\'),
                            Some((_, '"')) => val.push('"'),
                            Some((_, o)) => {
                                return Err(err(
                                    ln,
                                    format!("bad escape \\{o} in label {lname:?}"),
                                ));
                            }
                            None => return Err(err(ln, "unterminated label value")),
                        },
                        '"' => {
                            end = Some(j);
                            break;
                        }
                        c => val.push(c),
                    }
                }
                let end =
                    end.ok_or_else(|| err(ln, format!("unterminated value of label {lname:?}")))?;
                batch.push_label(lname, &val);
                r = &body[end + 1..];
            }
        }
        for (k, v) in extra {
            batch.push_label(k, v);
        }
        let mut parts = rest.split_whitespace();
        let v = parts.next().ok_or_else(|| err(ln, "missing value"))?;
        let value = parse_value(v).ok_or_else(|| err(ln, format!("bad value {v:?}")))?;
        let ts = match parts.next() {
            Some(t) => t
                .parse::<i64>()
                .map_err(|_| err(ln, format!("bad timestamp {t:?}")))?,
            None => now_ms,
        };
        if parts.next().is_some() {
            return Err(err(ln, "unexpected text after the timestamp"));
        }
        batch.push_sample(ts, value);
        batch
            .finish_series(&limits.labels)
            .map_err(|e| err(ln, e.to_string()))?;
        sum.series += 1;
        sum.samples += 1;
        limits.check_samples(sum.samples)?;
    }
    Ok(sum)
}

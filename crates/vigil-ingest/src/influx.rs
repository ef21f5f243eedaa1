//! Influx line protocol (v1 `/write`, v2 `/api/v2/write`).
//!
//! `measurement[,tag=value…] field=value[,field=value…] [timestamp]` per line. Each field
//! becomes a series named `<measurement>_<field>` (or `<measurement>` for a field called
//! `value`), with the tags as labels, as Prometheus' and VictoriaMetrics' Influx endpoints do.
//! Integers (`12i`, `12u`), floats and booleans (`t`/`true`/`f`/`false` → 1/0) are accepted;
//! strings are refused with the field named. Backslash escapes follow the spec: in measurements
//! `\,` and `\ `, in tag keys/values and field keys also `\=`. Names are sanitised to
//! Prometheus rules (invalid characters become `_`).

use vigil_tsdb::WriteBatch;

use crate::{DecodeError, Limits, Summary};

/// Timestamp precision of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// Nanoseconds (the default).
    Ns,
    /// Microseconds.
    Us,
    /// Milliseconds.
    Ms,
    /// Seconds.
    S,
}

impl Precision {
    /// Parses `ns`, `u`/`us`, `ms`, `s` (and v1's `n`, `h` and `m` are refused).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "" | "ns" | "n" => Precision::Ns,
            "u" | "us" | "µ" => Precision::Us,
            "ms" => Precision::Ms,
            "s" => Precision::S,
            _ => return None,
        })
    }

    fn to_ms(self, v: i64) -> i64 {
        match self {
            Precision::Ns => v.div_euclid(1_000_000),
            Precision::Us => v.div_euclid(1_000),
            Precision::Ms => v,
            Precision::S => v.saturating_mul(1000),
        }
    }
}

fn line_err(line: usize, reason: impl Into<String>) -> DecodeError {
    DecodeError::Line {
        line,
        reason: reason.into(),
    }
}

/// Splits at the first unescaped byte in `stops` (outside double quotes when `quotes`).
fn split_unescaped<'a>(s: &'a str, stops: &[u8], quotes: bool) -> (&'a str, Option<(u8, &'a str)>) {
    let b = s.as_bytes();
    let mut i = 0;
    let mut in_q = false;
    while i < b.len() {
        let c = b[i];
        if c == b'\\' {
            i += 2;
            continue;
        }
        if quotes && c == b'"' {
            in_q = !in_q;
        } else if !in_q && stops.contains(&c) {
            return (&s[..i], Some((c, &s[i + 1..])));
        }
        i += 1;
    }
    (s, None)
}

fn unescape(s: &str, out: &mut String) {
    out.clear();
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\\'
            && let Some(&n) = it.peek()
            && matches!(n, ',' | ' ' | '=' | '\\' | '"')
        {
            out.push(n);
            it.next();
            continue;
        }
        out.push(c);
    }
}

fn sanitize(s: &str, out: &mut String, metric: bool) {
    let start = out.len();
    for (i, c) in s.chars().enumerate() {
        let ok = c.is_ascii_alphanumeric() || c == '_' || (metric && c == ':');
        let ok = ok && !(i == 0 && c.is_ascii_digit());
        out.push(if ok { c } else { '_' });
    }
    if out.len() == start {
        out.push('_');
    }
}

fn parse_field_value(v: &str) -> Result<f64, String> {
    if v.is_empty() {
        return Err("empty field value".into());
    }
    if v.starts_with('"') {
        return Err("string fields cannot be stored as samples".into());
    }
    match v {
        "t" | "T" | "true" | "True" | "TRUE" => return Ok(1.0),
        "f" | "F" | "false" | "False" | "FALSE" => return Ok(0.0),
        _ => {}
    }
    if let Some(i) = v.strip_suffix('i') {
        return i
            .parse::<i64>()
            .map(|x| x as f64)
            .map_err(|_| format!("bad integer {v:?}"));
    }
    if let Some(u) = v.strip_suffix('u') {
        return u
            .parse::<u64>()
            .map(|x| x as f64)
            .map_err(|_| format!("bad unsigned integer {v:?}"));
    }
    let f: f64 = v.parse().map_err(|_| format!("bad float {v:?}"))?;
    if v.eq_ignore_ascii_case("nan") || v.to_ascii_lowercase().contains("inf") {
        return Err(format!("bad float {v:?}"));
    }
    Ok(f)
}

/// Decodes a line-protocol body. `extra` labels (e.g. `db` for v1, `bucket`/`org` for v2) are
/// added to every series; `now_ms` stamps lines without a timestamp.
pub fn decode(
    body: &[u8],
    precision: Precision,
    extra: &[(&str, &str)],
    now_ms: i64,
    limits: &Limits,
    batch: &mut WriteBatch,
) -> Result<Summary, DecodeError> {
    limits.check_body(body.len())?;
    let text = std::str::from_utf8(body)
        .map_err(|e| line_err(line_of(body, e.valid_up_to()), "not valid UTF-8"))?;
    let mut sum = Summary::default();
    let (mut meas, mut tmp, mut name) = (String::new(), String::new(), String::new());
    let mut tags: Vec<(String, String)> = Vec::new();
    for (ln, raw) in text.lines().enumerate() {
        let ln = ln + 1;
        let line = raw.trim_matches(|c| c == ' ' || c == '\t' || c == '\r');
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series_key, rest) = split_unescaped(line, b" ", false);
        let rest = rest
            .map(|r| r.1.trim_start())
            .ok_or_else(|| line_err(ln, "missing fields"))?;
        let (fields, ts) = split_unescaped(rest, b" ", true);
        let ts = ts.map(|t| t.1.trim()).filter(|t| !t.is_empty());
        let ts_ms = match ts {
            Some(t) => precision.to_ms(
                t.parse::<i64>()
                    .map_err(|_| line_err(ln, format!("bad timestamp {t:?}")))?,
            ),
            None => now_ms,
        };
        // Measurement and tags.
        let (m, mut tagrest) = split_unescaped(series_key, b",", false);
        if m.is_empty() {
            return Err(line_err(ln, "empty measurement"));
        }
        unescape(m, &mut tmp);
        meas.clear();
        sanitize(&tmp, &mut meas, true);
        tags.clear();
        while let Some((_, r)) = tagrest {
            let (kv, next) = split_unescaped(r, b",", false);
            tagrest = next;
            let (k, v) = split_unescaped(kv, b"=", false);
            let v = v
                .map(|x| x.1)
                .ok_or_else(|| line_err(ln, format!("tag {k:?} has no '='")))?;
            if k.is_empty() || v.is_empty() {
                return Err(line_err(ln, format!("empty tag key or value in {kv:?}")));
            }
            let mut key = String::new();
            unescape(k, &mut tmp);
            sanitize(&tmp, &mut key, false);
            let mut val = String::new();
            unescape(v, &mut val);
            tags.push((key, val));
        }
        // Fields.
        let mut frest = Some((b',', fields));
        let mut nfields = 0;
        while let Some((_, r)) = frest {
            let (kv, next) = split_unescaped(r, b",", true);
            frest = next;
            let (k, v) = split_unescaped(kv, b"=", false);
            let v = v
                .map(|x| x.1)
                .ok_or_else(|| line_err(ln, format!("field {k:?} has no '='")))?;
            if k.is_empty() {
                return Err(line_err(ln, "empty field key"));
            }
            let value =
                parse_field_value(v).map_err(|e| line_err(ln, format!("field {k:?}: {e}")))?;
            unescape(k, &mut tmp);
            name.clear();
            name.push_str(&meas);
            if tmp != "value" {
                name.push('_');
                sanitize(&tmp, &mut name, true);
            }
            batch.push_label("__name__", &name);
            for (k, v) in &tags {
                batch.push_label(k, v);
            }
            for (k, v) in extra {
                if !tags.iter().any(|t| t.0 == *k) {
                    batch.push_label(k, v);
                }
            }
            batch.push_sample(ts_ms, value);
            batch
                .finish_series(&limits.labels)
                .map_err(|e| line_err(ln, e.to_string()))?;
            nfields += 1;
            sum.series += 1;
            limits.check_expansion(batch)?;
            sum.samples += 1;
        }
        if nfields == 0 {
            return Err(line_err(ln, "no fields"));
        }
        limits.check_samples(sum.samples)?;
    }
    Ok(sum)
}

fn line_of(body: &[u8], off: usize) -> usize {
    body[..off.min(body.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

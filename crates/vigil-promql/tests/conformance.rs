//! Runs Prometheus' PromQL test scripts (`.test` files) against Vigil's engine over Vigil's
//! store. The corpus folder is `VIGIL_PROMQL_CORPUS` (default `../shared/testdata/promql`
//! relative to the workspace). Prints a pass/fail/skip table per file; fails if any case that
//! is not skipped (native histograms, experimental features) fails.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use promql_parser::parser::{Expr, VectorMatchCardinality};
use vigil_model::{EnvId, Labels, ManualClock, stale_marker};
use vigil_promql::storage::TsdbStorage;
use vigil_promql::{Annotations, Engine, EngineOptions, Value, parse_duration};
use vigil_tsdb::{Db, Options, WriteBatch};

/// `VIGIL_PROMQL_CORPUS`, else `../shared/testdata/promql` beside the workspace (looked up
/// from each ancestor of the crate, so a clone in another folder still finds it).
fn corpus_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("VIGIL_PROMQL_CORPUS") {
        return PathBuf::from(p);
    }
    let default = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata/promql");
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|a| a.join("shared/testdata/promql"))
        .find(|p| p.is_dir())
        .unwrap_or(default)
}

// ---------------------------------------------------------------- script parsing

/// Parses a Go-style quoted string starting at `s[0] == '"'`; returns (value, bytes consumed).
fn parse_quoted(s: &str) -> Option<(String, usize)> {
    let b = s.as_bytes();
    let q = b[0];
    let mut out: Vec<u8> = Vec::new();
    let mut i = 1;
    while i < b.len() {
        let c = b[i];
        if c == q {
            return Some((String::from_utf8(out).ok()?, i + 1));
        }
        if c == b'\\' {
            i += 1;
            let e = *b.get(i)?;
            match e {
                b'n' => out.push(b'\n'),
                b't' => out.push(b'\t'),
                b'r' => out.push(b'\r'),
                b'\\' => out.push(b'\\'),
                b'"' => out.push(b'"'),
                b'\'' => out.push(b'\''),
                b'x' => {
                    let h = u8::from_str_radix(s.get(i + 1..i + 3)?, 16).ok()?;
                    out.push(h);
                    i += 2;
                }
                b'u' => {
                    let cp = u32::from_str_radix(s.get(i + 1..i + 5)?, 16).ok()?;
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(char::from_u32(cp)?.encode_utf8(&mut buf).as_bytes());
                    i += 4;
                }
                _ => return None,
            }
            i += 1;
            continue;
        }
        out.push(c);
        i += 1;
    }
    None
}

/// Parses `name{a="b", ...}` (or `{...}`) at the start of `s`; returns labels and the rest.
fn parse_series(s: &str) -> Option<(Labels, &str)> {
    let s = s.trim_start();
    let mut pairs: Vec<(String, String)> = Vec::new();
    let name_end = s
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(s.len());
    if name_end > 0 {
        pairs.push(("__name__".into(), s[..name_end].to_string()));
    }
    let mut rest = &s[name_end..];
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        loop {
            rest = rest.trim_start();
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            if let Some(r) = rest.strip_prefix(',') {
                rest = r;
                continue;
            }
            let (name, r) = if rest.starts_with('"') {
                let (n, used) = parse_quoted(rest)?;
                (n, &rest[used..])
            } else {
                let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_'))?;
                (rest[..end].to_string(), &rest[end..])
            };
            let r = r.trim_start();
            if let Some(r) = r.strip_prefix('=') {
                let r = r.trim_start();
                let (v, used) = parse_quoted(r)?;
                pairs.push((name, v));
                rest = &r[used..];
            } else {
                // A quoted metric name inside the braces.
                pairs.push(("__name__".into(), name));
                rest = r;
            }
        }
    }
    Some((Labels::from_pairs(pairs), rest))
}

#[derive(Debug, Clone, Copy)]
enum Point {
    Missing,
    Value(f64),
}

fn parse_number(s: &str) -> Option<f64> {
    match s {
        "Inf" | "+Inf" | "inf" | "+inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        "NaN" | "nan" => Some(f64::NAN),
        "stale" => Some(stale_marker()),
        _ => s.parse().ok(),
    }
}

/// Expands the value notation: `1+2x3`, `1-1x2`, `5x2`, `_`, `_x3`, `stale`, numbers.
fn parse_points(s: &str) -> Option<Vec<Point>> {
    let mut out = Vec::new();
    for tok in s.split_whitespace() {
        if tok == "_" {
            out.push(Point::Missing);
            continue;
        }
        if let Some(n) = tok.strip_prefix("_x") {
            let n: usize = n.parse().ok()?;
            out.extend(std::iter::repeat_n(Point::Missing, n));
            continue;
        }
        if let Some(v) = parse_number(tok) {
            out.push(Point::Value(v));
            continue;
        }
        let xpos = tok.rfind('x')?;
        let (head, times) = (&tok[..xpos], &tok[xpos + 1..]);
        let n: usize = times.parse().ok()?;
        // Split head into start and increment at a sign that is not leading or an exponent's.
        let hb = head.as_bytes();
        let mut split = None;
        for i in 1..hb.len() {
            if (hb[i] == b'+' || hb[i] == b'-') && !matches!(hb[i - 1], b'e' | b'E') {
                split = Some(i);
            }
        }
        match split {
            None => {
                let v = parse_number(head)?;
                out.extend(std::iter::repeat_n(Point::Value(v), n + 1));
            }
            Some(i) => {
                let start = parse_number(&head[..i])?;
                let inc = parse_number(&head[i..])?;
                for k in 0..=n {
                    out.push(Point::Value(start + inc * k as f64));
                }
            }
        }
    }
    Some(out)
}

fn parse_at(s: &str) -> Option<i64> {
    parse_duration(s)
}

// ---------------------------------------------------------------- running

#[derive(Default, Debug, Clone)]
struct Tally {
    pass: usize,
    fail: usize,
    skip: usize,
    /// Cases whose expected warnings / infos were checked.
    annotated: usize,
}

/// An expected annotation: the exact message, or a pattern it must match (`expect warn`
/// without either matches any).
#[derive(Debug, Clone)]
enum Expect {
    Msg(String),
    Regex(String),
}

/// What an eval expects of its warnings and infos (`expect warn|info|no_warn|no_info`,
/// `eval_warn`, `eval_info`), checked as Prometheus' own test runner does.
#[derive(Debug, Default)]
struct AnnotationExpect {
    some_warning: bool,
    some_info: bool,
    warn: Vec<Expect>,
    info: Vec<Expect>,
    no_warn: bool,
    no_info: bool,
}

impl AnnotationExpect {
    fn any(&self) -> bool {
        self.some_warning
            || self.some_info
            || !self.warn.is_empty()
            || !self.info.is_empty()
            || self.no_warn
            || self.no_info
    }

    fn check(&self, got: &Annotations) -> Result<(), String> {
        if self.some_warning && got.warnings.is_empty() {
            return Err("expected warnings, got none".into());
        }
        if self.some_info && got.infos.is_empty() {
            return Err("expected infos, got none".into());
        }
        let matches = |e: &Expect, s: &str| match e {
            Expect::Msg(m) => m == s,
            Expect::Regex(r) => regex::Regex::new(r).is_ok_and(|re| re.is_match(s)),
        };
        for (kind, want, have) in [
            ("warning", &self.warn, &got.warnings),
            ("info", &self.info, &got.infos),
        ] {
            if want.is_empty() {
                continue;
            }
            for e in want {
                if !have.iter().any(|s| matches(e, s)) {
                    return Err(format!("expected {kind} {e:?}, got {have:?}"));
                }
            }
            for s in have {
                if !want.iter().any(|e| matches(e, s)) {
                    return Err(format!("unexpected {kind} {s:?}"));
                }
            }
        }
        if self.no_warn && !got.warnings.is_empty() {
            return Err(format!("unexpected warnings {:?}", got.warnings));
        }
        if self.no_info && !got.infos.is_empty() {
            return Err(format!("unexpected infos {:?}", got.infos));
        }
        Ok(())
    }
}

struct Ctx {
    engine: Engine,
    db: Option<Db>,
    dir: Option<tempfile::TempDir>,
    /// Series loaded with native-histogram points (not stored: Vigil stores floats).
    histogram_series: Vec<Labels>,
}

impl Ctx {
    fn open(&mut self) {
        if let Some(db) = self.db.take() {
            db.close().expect("close store");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = Options {
            clock: Arc::new(ManualClock::new(0)),
            retention: Duration::from_secs(100 * 365 * 86_400),
            ooo_window: Duration::from_secs(100 * 365 * 86_400),
            block_ranges: vec![Duration::from_secs(200 * 365 * 86_400)],
            maintenance_interval: None,
            ..Options::default()
        };
        self.db = Some(Db::open(dir.path(), opts).expect("open store"));
        self.dir = Some(dir);
        self.histogram_series.clear();
    }
}

fn experimental(e: &Expr) -> Option<String> {
    match e {
        Expr::Call(c) => {
            let supported = [
                "double_exponential_smoothing",
                "mad_over_time",
                "ts_of_min_over_time",
                "ts_of_max_over_time",
                "ts_of_first_over_time",
                "ts_of_last_over_time",
                "sort_by_label",
                "sort_by_label_desc",
                "first_over_time",
            ];
            if c.func.experimental && !supported.contains(&c.func.name) {
                return Some(format!("experimental function {}()", c.func.name));
            }
            c.args.args.iter().find_map(|a| experimental(a))
        }
        Expr::Aggregate(a) => {
            let op = a.op.to_string().to_lowercase();
            if op == "limit_ratio" {
                return Some("experimental aggregation limit_ratio".into());
            }
            a.param
                .as_deref()
                .and_then(experimental)
                .or_else(|| experimental(&a.expr))
        }
        Expr::Binary(b) => {
            if let Some(m) = &b.modifier
                && (m.fill_values.lhs.is_some() || m.fill_values.rhs.is_some())
            {
                return Some("experimental fill() modifier".into());
            }
            let _ = VectorMatchCardinality::OneToOne;
            experimental(&b.lhs).or_else(|| experimental(&b.rhs))
        }
        Expr::Paren(p) => experimental(&p.expr),
        Expr::Unary(u) => experimental(&u.expr),
        Expr::Subquery(s) => experimental(&s.expr),
        _ => None,
    }
}

/// Whether any selector of `e` matches one of `series`.
fn reads_any(e: &Expr, series: &[Labels]) -> bool {
    if series.is_empty() {
        return false;
    }
    let sel = |vs: &promql_parser::parser::VectorSelector| {
        let mut ms: Vec<vigil_model::Matcher> = Vec::new();
        if let Some(n) = &vs.name {
            ms.push(vigil_model::Matcher::eq("__name__", n));
        }
        for m in &vs.matchers.matchers {
            use promql_parser::label::MatchOp as P;
            let op = match m.op {
                P::Equal => vigil_model::MatchOp::Eq,
                P::NotEqual => vigil_model::MatchOp::Ne,
                P::Re(_) => vigil_model::MatchOp::Re,
                P::NotRe(_) => vigil_model::MatchOp::Nre,
            };
            match vigil_model::Matcher::new(op, &m.name, &m.value) {
                Ok(m) => ms.push(m),
                Err(_) => return false,
            }
        }
        series
            .iter()
            .any(|l| ms.iter().all(|m| m.matches(l.get(&m.name).unwrap_or(""))))
    };
    match e {
        Expr::VectorSelector(vs) => sel(vs),
        Expr::MatrixSelector(m) => sel(&m.vs),
        Expr::Call(c) => c.args.args.iter().any(|a| reads_any(a, series)),
        Expr::Aggregate(a) => {
            a.param.as_deref().is_some_and(|p| reads_any(p, series)) || reads_any(&a.expr, series)
        }
        Expr::Binary(b) => reads_any(&b.lhs, series) || reads_any(&b.rhs, series),
        Expr::Paren(p) => reads_any(&p.expr, series),
        Expr::Unary(u) => reads_any(&u.expr, series),
        Expr::Subquery(s) => reads_any(&s.expr, series),
        _ => false,
    }
}

fn almost_equal(a: f64, b: f64) -> bool {
    if a.is_nan() && b.is_nan() {
        return true;
    }
    if a == b {
        return true;
    }
    let eps = 1e-6;
    let abs_sum = a.abs() + b.abs();
    let diff = (a - b).abs();
    if a == 0.0 || b == 0.0 || abs_sum < f64::MIN_POSITIVE {
        return diff < eps * f64::MIN_POSITIVE;
    }
    diff / abs_sum.min(f64::MAX) < eps
}

struct Eval {
    line: usize,
    text: String,
    range: Option<(i64, i64, i64)>,
    at: i64,
    expr: String,
    expect_fail: Option<(bool, String)>, // (is_regex, pattern)
    ordered: bool,
    string: Option<String>,
    range_vector: Option<(i64, i64, i64)>,
    annotations: AnnotationExpect,
    results: Vec<String>,
}

fn check(ctx: &Ctx, ev: &Eval) -> Result<(), String> {
    let db = ctx.db.as_ref().expect("store open");
    let st = TsdbStorage::new(db, "default");
    let outcome = match ev.range {
        Some((s, e, step)) => ctx
            .engine
            .range_annotated(&st, &ev.expr, s, e, step)
            .map(|(m, a)| (Value::Matrix(m), a)),
        None => ctx.engine.instant_annotated(&st, &ev.expr, ev.at),
    };
    let outcome = match outcome {
        Ok((v, notes)) => {
            ev.annotations.check(&notes)?;
            Ok(v)
        }
        Err(e) => Err(e),
    };
    if let Some((is_re, pat)) = &ev.expect_fail {
        return match outcome {
            Ok(v) => Err(format!("expected an error, got {v:?}")),
            Err(e) => {
                let msg = e.to_string();
                if pat.is_empty() {
                    Ok(())
                } else if *is_re {
                    let re = regex::Regex::new(pat).map_err(|e| e.to_string())?;
                    if re.is_match(&msg) {
                        Ok(())
                    } else {
                        Err(format!("error {msg:?} does not match /{pat}/"))
                    }
                } else if msg == *pat {
                    Ok(())
                } else {
                    Err(format!("error {msg:?}, expected {pat:?}"))
                }
            }
        };
    }
    let v = outcome.map_err(|e| format!("unexpected error: {e}"))?;
    if let Some(s) = &ev.string {
        return match v {
            Value::String(got) if &got == s => Ok(()),
            other => Err(format!("expected string {s:?}, got {other:?}")),
        };
    }
    // Expected series.
    let mut expected: Vec<(Labels, Vec<Point>)> = Vec::new();
    let mut expected_scalar: Option<f64> = None;
    for r in &ev.results {
        let r = r.trim();
        if r.starts_with('{')
            || r.starts_with(|c: char| c.is_alphabetic() || c == '_')
                && parse_number(r.split_whitespace().next().unwrap_or("")).is_none()
        {
            let (l, rest) = parse_series(r).ok_or_else(|| format!("bad expected line {r:?}"))?;
            let pts = parse_points(rest).ok_or_else(|| format!("bad expected values {rest:?}"))?;
            expected.push((l, pts));
        } else {
            expected_scalar = Some(parse_number(r).ok_or_else(|| format!("bad scalar {r:?}"))?);
        }
    }
    match v {
        Value::Scalar(x) => {
            let want = expected_scalar
                .ok_or_else(|| format!("got scalar {x}, expected {} series", expected.len()))?;
            if almost_equal(x, want) {
                Ok(())
            } else {
                Err(format!("scalar {x}, expected {want}"))
            }
        }
        Value::String(s) => Err(format!("unexpected string {s:?}")),
        Value::Vector(vec) => {
            if ev.range_vector.is_some() {
                return Err("expected a range vector, got an instant vector".into());
            }
            if vec.len() != expected.len() {
                return Err(format!(
                    "got {} samples, expected {}: {:?}",
                    vec.len(),
                    expected.len(),
                    vec.iter()
                        .map(|s| format!("{} {}", vigil_promql::DisplayLabels(&s.metric), s.v))
                        .collect::<Vec<_>>()
                ));
            }
            for (i, (l, pts)) in expected.iter().enumerate() {
                let want = match pts.as_slice() {
                    [Point::Value(v)] => *v,
                    _ => return Err(format!("expected line for {l:?} must hold one value")),
                };
                let got = if ev.ordered {
                    let s = &vec[i];
                    if *s.metric != *l {
                        return Err(format!(
                            "order: position {i} has {}, expected {}",
                            vigil_promql::DisplayLabels(&s.metric),
                            vigil_promql::DisplayLabels(l)
                        ));
                    }
                    s.v
                } else {
                    vec.iter()
                        .find(|s| *s.metric == *l)
                        .ok_or_else(|| {
                            format!(
                                "missing {} in {:?}",
                                vigil_promql::DisplayLabels(l),
                                vec.iter()
                                    .map(|s| vigil_promql::DisplayLabels(&s.metric).to_string())
                                    .collect::<Vec<_>>()
                            )
                        })?
                        .v
                };
                if !almost_equal(got, want) {
                    return Err(format!(
                        "{}: got {got}, expected {want}",
                        vigil_promql::DisplayLabels(l)
                    ));
                }
            }
            Ok(())
        }
        Value::Matrix(m) => {
            let (start, step) = match (ev.range, ev.range_vector) {
                (Some((s, _, st)), _) => (s, st),
                (None, Some((s, _, st))) => (s, st),
                (None, None) => return Err("got a range vector, expected an instant vector".into()),
            };
            if m.len() != expected.len() {
                return Err(format!(
                    "got {} series, expected {}: {:?}",
                    m.len(),
                    expected.len(),
                    m.iter()
                        .map(|s| format!(
                            "{} {:?}",
                            vigil_promql::DisplayLabels(&s.metric),
                            s.points
                        ))
                        .collect::<Vec<_>>()
                ));
            }
            for (l, pts) in &expected {
                let s = m
                    .iter()
                    .find(|s| *s.metric == *l)
                    .ok_or_else(|| format!("missing series {}", vigil_promql::DisplayLabels(l)))?;
                let want: Vec<(i64, f64)> = pts
                    .iter()
                    .enumerate()
                    .filter_map(|(i, p)| match p {
                        Point::Value(v) => Some((start + i as i64 * step, *v)),
                        Point::Missing => None,
                    })
                    .collect();
                let same = want.len() == s.points.len()
                    && want
                        .iter()
                        .zip(&s.points)
                        .all(|(a, b)| a.0 == b.0 && almost_equal(a.1, b.1));
                if !same {
                    return Err(format!(
                        "{}: got {:?}, expected {:?}",
                        vigil_promql::DisplayLabels(l),
                        s.points,
                        want
                    ));
                }
            }
            Ok(())
        }
    }
}

fn run_file(path: &Path, failures: &mut Vec<String>, skips: &mut BTreeMap<String, usize>) -> Tally {
    let text = std::fs::read_to_string(path).expect("read corpus file");
    let fname = path.file_name().unwrap().to_string_lossy().to_string();
    let lines: Vec<&str> = text.lines().collect();
    let mut ctx = Ctx {
        engine: Engine::new(EngineOptions::default()),
        db: None,
        dir: None,
        histogram_series: Vec::new(),
    };
    ctx.open();
    let mut tally = Tally::default();
    let mut i = 0;
    let indented = |l: &str| l.starts_with(' ') || l.starts_with('\t');
    while i < lines.len() {
        let line = lines[i];
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            i += 1;
            continue;
        }
        let lineno = i + 1;
        if t == "clear" {
            ctx.open();
            i += 1;
            continue;
        }
        if let Some(rest) = t.strip_prefix("load") {
            let nhcb = rest.starts_with("_with_nhcb");
            let interval = rest.trim_start_matches("_with_nhcb").trim();
            let interval = parse_duration(interval).expect("load interval");
            i += 1;
            let db = ctx.db.as_ref().unwrap();
            let mut block: BTreeMap<Labels, BTreeMap<i64, f64>> = BTreeMap::new();
            while i < lines.len() && indented(lines[i]) && !lines[i].trim().is_empty() {
                let l = lines[i].trim();
                i += 1;
                if l.starts_with('#') {
                    continue;
                }
                if l.contains("{{") {
                    if let Some((labels, _)) = parse_series(l) {
                        ctx.histogram_series.push(labels);
                    }
                    continue;
                }
                let (labels, rest) =
                    parse_series(l).unwrap_or_else(|| panic!("{fname}:{}: bad series {l:?}", i));
                if nhcb
                    && let Some(base) = labels.metric_name().and_then(|n| n.strip_suffix("_bucket"))
                {
                    // load_with_nhcb also synthesises a native histogram named after the base.
                    let mut h = labels.clone();
                    h.remove("le");
                    h.set("__name__", base);
                    ctx.histogram_series.push(h);
                }
                let pts = parse_points(rest)
                    .unwrap_or_else(|| panic!("{fname}:{}: bad points {rest:?}", i));
                // A series defined twice in one block: the later definition wins per timestamp,
                // as in Prometheus' test loader.
                let entry = block.entry(labels).or_default();
                for (k, p) in pts.iter().enumerate() {
                    if let Point::Value(v) = p {
                        entry.insert(k as i64 * interval, *v);
                    }
                }
            }
            for (labels, pts) in block {
                let mut b = WriteBatch::new(EnvId::default_env());
                for lab in labels.iter() {
                    b.push_label(&lab.name, &lab.value);
                }
                for (t, v) in pts {
                    b.push_sample(t, v);
                }
                b.finish_series(&db.options().label_limits)
                    .unwrap_or_else(|e| panic!("{fname}:{lineno}: labels of {labels:?}: {e}"));
                let out = db
                    .write(&b)
                    .unwrap_or_else(|e| panic!("{fname}:{lineno}: write {e}"));
                assert_eq!(
                    out.rejected_total(),
                    0,
                    "{fname}:{lineno}: store rejected samples of {labels:?}"
                );
            }
            continue;
        }
        if t.starts_with("eval") {
            let (cmd, rest) = t.split_once(' ').unwrap_or((t, ""));
            let mut ev = Eval {
                line: lineno,
                text: t.to_string(),
                range: None,
                at: 0,
                expr: String::new(),
                expect_fail: (cmd == "eval_fail").then(|| (false, String::new())),
                ordered: cmd == "eval_ordered",
                string: None,
                range_vector: None,
                annotations: AnnotationExpect {
                    some_warning: cmd == "eval_warn",
                    some_info: cmd == "eval_info",
                    ..Default::default()
                },
                results: Vec::new(),
            };
            let toks: Vec<&str> = rest.splitn(2, ' ').collect();
            if toks[0] == "instant" {
                // instant at <time> <expr>
                let r = toks[1].trim_start().strip_prefix("at ").expect("at");
                let (at, expr) = r.trim_start().split_once(' ').expect("expr");
                ev.at = parse_at(at).expect("eval time");
                ev.expr = expr.trim().to_string();
            } else {
                // range from <a> to <b> step <s> <expr>
                let parts: Vec<&str> = toks[1].splitn(7, ' ').collect();
                let s = parse_at(parts[1]).expect("from");
                let e = parse_at(parts[3]).expect("to");
                let st = parse_at(parts[5]).expect("step");
                ev.range = Some((s, e, st));
                ev.expr = parts[6].trim().to_string();
            }
            i += 1;
            while i < lines.len() && indented(lines[i]) && !lines[i].trim().is_empty() {
                let l = lines[i].trim();
                i += 1;
                if l.starts_with('#') {
                    continue;
                }
                if let Some(x) = l.strip_prefix("expect ") {
                    let x = x.trim();
                    if let Some(f) = x.strip_prefix("fail") {
                        let f = f.trim();
                        ev.expect_fail = Some(if let Some(m) = f.strip_prefix("msg:") {
                            (false, m.trim().to_string())
                        } else if let Some(m) = f.strip_prefix("regex:") {
                            (true, m.trim().to_string())
                        } else {
                            (false, String::new())
                        });
                    } else if x == "ordered" {
                        ev.ordered = true;
                    } else if let Some(s) = x.strip_prefix("string") {
                        ev.string = Some(parse_quoted(s.trim()).map(|p| p.0).unwrap_or_default());
                    } else if let Some(r) = x.strip_prefix("range vector") {
                        let p: Vec<&str> = r.split_whitespace().collect();
                        ev.range_vector = Some((
                            parse_at(p[1]).expect("from"),
                            parse_at(p[3]).expect("to"),
                            parse_at(p[5]).expect("step"),
                        ));
                    } else {
                        let (kind, pat) = x.split_once(' ').unwrap_or((x, ""));
                        let pat = pat.trim();
                        let e = if let Some(m) = pat.strip_prefix("msg:") {
                            Some(Expect::Msg(m.trim().to_string()))
                        } else if let Some(r) = pat.strip_prefix("regex:") {
                            Some(Expect::Regex(r.trim().to_string()))
                        } else {
                            assert!(pat.is_empty(), "{fname}:{lineno}: bad expect {l:?}");
                            None
                        };
                        let a = &mut ev.annotations;
                        match (kind, e) {
                            ("warn", Some(e)) => a.warn.push(e),
                            ("warn", None) => a.warn.push(Expect::Regex(String::new())),
                            ("info", Some(e)) => a.info.push(e),
                            ("info", None) => a.info.push(Expect::Regex(String::new())),
                            ("no_warn", None) => a.no_warn = true,
                            ("no_info", None) => a.no_info = true,
                            _ => panic!("{fname}:{lineno}: unknown expect {l:?}"),
                        }
                    }
                    continue;
                }
                ev.results.push(l.to_string());
            }
            // Skips.
            let mut skip: Option<String> = None;
            if ev.results.iter().any(|r| r.contains("{{")) {
                skip = Some("native histogram in expected result".into());
            } else if let Ok(e) = promql_parser::parser::parse(&ev.expr) {
                if let Some(r) = experimental(&e) {
                    skip = Some(r);
                } else if reads_any(&e, &ctx.histogram_series) {
                    skip = Some("selects native-histogram series".into());
                }
            }
            if let Some(r) = skip {
                tally.skip += 1;
                *skips.entry(format!("{fname}: {r}")).or_default() += 1;
                continue;
            }
            if ev.annotations.any() {
                tally.annotated += 1;
            }
            match check(&ctx, &ev) {
                Ok(()) => tally.pass += 1,
                Err(why) => {
                    tally.fail += 1;
                    failures.push(format!("{fname}:{}: {}\n    {}", ev.line, ev.text, why));
                }
            }
            continue;
        }
        panic!("{fname}:{lineno}: unknown command {t:?}");
    }
    if let Some(db) = ctx.db.take() {
        db.close().expect("close");
    }
    tally
}

#[test]
fn prometheus_conformance_corpus() {
    let dir = corpus_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus folder {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "test"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .test files in {}", dir.display());
    let only = std::env::var("VIGIL_PROMQL_ONLY").ok();
    let mut failures = Vec::new();
    let mut skips = BTreeMap::new();
    let mut total = Tally::default();
    println!(
        "{:<28} {:>6} {:>6} {:>6} {:>12}",
        "file", "pass", "fail", "skip", "annotated"
    );
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        if only.as_deref().is_some_and(|o| !name.contains(o)) {
            continue;
        }
        let t = run_file(f, &mut failures, &mut skips);
        println!(
            "{name:<28} {:>6} {:>6} {:>6} {:>12}",
            t.pass, t.fail, t.skip, t.annotated
        );
        total.pass += t.pass;
        total.fail += t.fail;
        total.skip += t.skip;
        total.annotated += t.annotated;
    }
    println!(
        "{:<28} {:>6} {:>6} {:>6} {:>12}",
        "TOTAL", total.pass, total.fail, total.skip, total.annotated
    );
    println!("\nskipped, by reason:");
    for (r, n) in &skips {
        println!("  {n:>4}  {r}");
    }
    if !failures.is_empty() {
        println!("\nfailures:");
        for f in &failures {
            println!("{f}");
        }
    }
    assert!(
        failures.is_empty(),
        "{} conformance cases failed",
        failures.len()
    );
    assert!(total.pass > 0, "nothing ran");
}

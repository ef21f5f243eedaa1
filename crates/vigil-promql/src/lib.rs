//! PromQL evaluation with Prometheus 3 semantics for float samples.
//!
//! The parser is GreptimeTeam's `promql-parser`; this crate evaluates its AST over any
//! [`Storage`] (Vigil's store implements it in [`storage`]). Evaluation is step-wise: every
//! selector's samples are loaded once for the whole query range (bounded by
//! [`EngineOptions::max_samples`]), then each step finds its window by binary search, so no
//! step re-scans a series. Metric names are dropped with Prometheus 3's delayed name removal:
//! a sample carries a "drop name" mark until the end of the query, so `label_replace` can still
//! read `__name__` after `rate`.

mod aggregate;
mod annotations;
mod binary;
mod eval;
mod functions;
mod parse_time;
mod rollup;
pub mod storage;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

pub use annotations::Annotations;
pub use eval::{Matrix, MatrixSeries, Sample, Value, selector_matchers};
pub use parse_time::{parse_duration, parse_time};
pub use promql_parser::parser::Expr;
use vigil_model::{Labels, Matcher};
pub use vigil_tsdb::{CounterRun, RollupFields, RollupPoint};

/// Values of a range function by group of an aggregation's labels, groups in order of
/// first appearance (see [`Storage::select_map_grouped`]).
pub type Grouped = Vec<(Labels, Vec<f64>)>;

/// Builds a [`Grouped`]: values added under their labels, groups in order of first addition.
#[derive(Default)]
pub(crate) struct GroupMerge {
    pub(crate) groups: Grouped,
    index: hashbrown::HashMap<Labels, usize>,
}

impl GroupMerge {
    /// Appends `vals` to group `l` (a new group last; an empty new group is not made).
    pub(crate) fn add(&mut self, l: Labels, vals: impl IntoIterator<Item = f64>) {
        match self.index.get(&l) {
            Some(&g) => self.groups[g].1.extend(vals),
            None => {
                let vals: Vec<f64> = vals.into_iter().collect();
                if !vals.is_empty() {
                    self.index.insert(l.clone(), self.groups.len());
                    self.groups.push((l, vals));
                }
            }
        }
    }
}

/// Why a query failed. The variants map onto Prometheus' API error types.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The query text does not parse (`bad_data`).
    #[error("{0}")]
    Parse(String),
    /// The query is well-formed but cannot be evaluated as asked (`bad_data`).
    #[error("{0}")]
    BadData(String),
    /// Evaluation failed (`execution`), e.g. many-to-many matching.
    #[error("{0}")]
    Execution(String),
    /// The query would load more samples than allowed (`execution`).
    #[error(
        "query processing would load too many samples into memory in query execution (limit {0})"
    )]
    TooManySamples(usize),
    /// The query ran longer than the timeout (`timeout`).
    #[error("query timed out in {0}")]
    Timeout(&'static str),
    /// Too many queries run at once (`unavailable`).
    #[error("too many concurrent queries (limit {0})")]
    TooManyQueries(usize),
    /// Reading the store failed (`internal`).
    #[error("storage: {0}")]
    Storage(String),
}

impl Error {
    /// Prometheus' `errorType` for this error.
    pub fn error_type(&self) -> &'static str {
        match self {
            Error::Parse(_) | Error::BadData(_) => "bad_data",
            Error::Execution(_) | Error::TooManySamples(_) => "execution",
            Error::Timeout(_) => "timeout",
            Error::TooManyQueries(_) => "unavailable",
            Error::Storage(_) => "internal",
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One series read from storage: labels and samples in time order (stale markers included).
#[derive(Debug, Clone)]
pub struct StoredSeries {
    /// The series' labels, `__name__` included.
    pub labels: Labels,
    /// `(timestamp ms, value)` in ascending time order.
    pub samples: Vec<(i64, f64)>,
}

/// Where the engine reads series from.
pub trait Storage {
    /// Series matching all `matchers` with their samples in `[mint, maxt]` (ms, inclusive).
    /// `budget` is how many more samples the query may load; return
    /// [`Error::TooManySamples`] rather than exceed it by much.
    fn select(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
        budget: usize,
    ) -> Result<Vec<StoredSeries>>;

    /// The newest sample in `[mint, maxt]` of each series matching `matchers` (a stale
    /// marker included): all an instant selector evaluated at `maxt` looks at. Storage that
    /// keeps each series' newest sample at hand answers without decoding.
    fn select_latest(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
        budget: usize,
    ) -> Result<Vec<StoredSeries>> {
        let mut v = self.select(matchers, mint, maxt, budget)?;
        for s in &mut v {
            let n = s.samples.len();
            s.samples.drain(..n.saturating_sub(1));
        }
        Ok(v)
    }

    /// Calls `f` with each matching series' samples in `[mint, maxt]`, one series at a time
    /// in a reused buffer, and keeps the labels of each series — only those named in
    /// `opts.keep`, when given — with the value `f` returns (series for which it returns
    /// `None` are left out). How an instant query's range function reads its selector without
    /// holding every series' samples at once. With `opts.counter_runs`, a series whose range
    /// holds no counter reset may be passed as a [`CounterRun`] instead of its samples. Over
    /// `budget` samples in all: [`Error::TooManySamples`]. The default selects, then maps.
    fn select_map(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
        budget: usize,
        opts: MapOptions<'_>,
        f: &MapFn<'_>,
    ) -> Result<Vec<(Labels, f64)>> {
        let mut out = Vec::new();
        for mut s in self.select(matchers, mint, maxt, budget)? {
            if let Some(v) = f(SeriesWindow::Samples(&mut s.samples)) {
                out.push((project(s.labels, opts.keep), v));
            }
        }
        Ok(out)
    }

    /// Like [`select_map`](Self::select_map) for a range query: `f` gets each series' samples
    /// in `[mint, maxt]` (it may change them) and returns its value at every step, if any.
    /// The default selects, then maps.
    fn select_map_steps(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
        budget: usize,
        keep: Option<&[String]>,
        f: &StepsFn<'_>,
    ) -> Result<Vec<(Labels, Vec<Option<f64>>)>> {
        let mut out = Vec::new();
        for mut s in self.select(matchers, mint, maxt, budget)? {
            if let Some(v) = f(&mut s.samples) {
                out.push((project(s.labels, keep), v));
            }
        }
        Ok(out)
    }

    /// Like [`select_map`](Self::select_map) with `opts.keep` set, for an aggregation `by`
    /// those labels: each series' value is added to its group's list instead of returned
    /// with its labels. Groups come in order of their first series, values in series order
    /// (the order `select_map` would return them), groups without a value left out. The
    /// default maps, then groups.
    fn select_map_grouped(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
        budget: usize,
        opts: MapOptions<'_>,
        f: &MapFn<'_>,
    ) -> Result<Grouped> {
        let mut out = GroupMerge::default();
        for (l, v) in self.select_map(matchers, mint, maxt, budget, opts, f)? {
            out.add(l, [v]);
        }
        Ok(out.groups)
    }

    /// How far rollups at `resolution_ms` can stand in for raw samples: every sample before
    /// the returned time is counted in exactly one rollup point whose bucket `(end − res, end]`
    /// lies before it. `None` (the default) when the storage keeps no usable rollups.
    fn rollup_cover(&self, _resolution_ms: i64) -> Option<i64> {
        None
    }

    /// [`rollup_cover`](Self::rollup_cover) for readers that need the points' edges
    /// ([`RollupPoint::first`], [`RollupPoint::last_ts`], [`RollupPoint::resets`],
    /// [`RollupPoint::stale_end`]). `None` by default.
    fn rollup_edge_cover(&self, _resolution_ms: i64) -> Option<i64> {
        None
    }

    /// The cover of [`rollup_cover`](Self::rollup_cover) (with `edges`:
    /// [`rollup_edge_cover`](Self::rollup_edge_cover)) and whether no rollup point holds a
    /// sample at or after it: then the bucket the cover cuts holds exactly its samples before
    /// the cover and is read with raw samples from the cover on. The default says not.
    fn rollup_boundary(&self, resolution_ms: i64, edges: bool) -> Option<(i64, bool)> {
        let cover = if edges {
            self.rollup_edge_cover(resolution_ms)
        } else {
            self.rollup_cover(resolution_ms)
        };
        cover.map(|c| (c, false))
    }

    /// A range query's per-series values read partly from rollups: `f` gets each series'
    /// rollup points at `resolution_ms` with bucket ends in `[buckets.0, buckets.1]` and its
    /// raw samples (staleness markers included) in `[raw.0, raw.1]` (either may be empty) and
    /// returns its value at every step, if any; only the points' `fields` need be read.
    /// Labels are cut down to `keep` when given;
    /// points and samples read count against `budget`. The default selects rollups and raw
    /// samples and joins them by labels.
    #[allow(clippy::too_many_arguments)]
    fn select_rollup_steps(
        &self,
        matchers: &[Matcher],
        resolution_ms: i64,
        fields: RollupFields,
        buckets: (i64, i64),
        raw: (i64, i64),
        budget: usize,
        keep: Option<&[String]>,
        f: &RollupStepsFn<'_>,
    ) -> Result<Vec<(Labels, Vec<Option<f64>>)>> {
        let points = self.select_rollups(matchers, buckets.0, buckets.1, resolution_ms, fields)?;
        let mut read: usize = points.iter().map(|(_, p)| p.len()).sum();
        if read > budget {
            return Err(Error::TooManySamples(budget));
        }
        let mut samples: hashbrown::HashMap<Labels, Vec<(i64, f64)>> = hashbrown::HashMap::new();
        if raw.0 <= raw.1 {
            for s in self.select(matchers, raw.0, raw.1, budget - read)? {
                read += s.samples.len();
                samples.insert(s.labels, s.samples);
            }
            if read > budget {
                return Err(Error::TooManySamples(budget));
            }
        }
        let mut series: Vec<RollupSeries> = points
            .into_iter()
            .map(|(l, p)| {
                let buf = samples.remove(&l).unwrap_or_default();
                (l, p, buf)
            })
            .collect();
        series.extend(samples.into_iter().map(|(l, buf)| (l, Vec::new(), buf)));
        // Many series: their steps are computed on several threads, joined in order.
        let run = |part: &mut [RollupSeries]| {
            part.iter_mut()
                .map(|(_, p, buf)| f(p, buf))
                .collect::<Vec<_>>()
        };
        let workers = vigil_tsdb::cores().min(4).min(series.len() / 256).max(1);
        let per = series.len().div_ceil(workers).max(1);
        let values: Vec<Option<Vec<Option<f64>>>> = if workers <= 1 {
            run(&mut series)
        } else {
            std::thread::scope(|sc| {
                let handles: Vec<_> = series
                    .chunks_mut(per)
                    .map(|part| sc.spawn(move || run(part)))
                    .collect();
                let mut all = Vec::new();
                for h in handles {
                    all.extend(h.join().map_err(|_| {
                        Error::Execution("a rollup step worker thread panicked".into())
                    })?);
                }
                Ok::<_, Error>(all)
            })?
        };
        Ok(series
            .into_iter()
            .zip(values)
            .filter_map(|((l, _, _), v)| Some((project(l, keep), v?)))
            .collect())
    }

    /// Rollup points at `resolution_ms` of the series matching `matchers`, with bucket ends
    /// in `[mint, maxt]`, sorted by time; only their `fields` need be filled in. Only called
    /// after [`Storage::rollup_cover`] said rollups are usable.
    fn select_rollups(
        &self,
        _matchers: &[Matcher],
        _mint: i64,
        _maxt: i64,
        _resolution_ms: i64,
        _fields: RollupFields,
    ) -> Result<Vec<(Labels, Vec<RollupPoint>)>> {
        Ok(Vec::new())
    }
}

/// `labels` cut down to the names in `keep`, when given.
fn project(labels: Labels, keep: Option<&[String]>) -> Labels {
    match keep {
        None => labels,
        Some(k) => Labels::from_sorted(
            labels
                .into_vec()
                .into_iter()
                .filter(|l| k.iter().any(|n| n == l.name.as_str()))
                .collect(),
        ),
    }
}

/// A per-series function for [`Storage::select_map_steps`]: given the series' samples (which
/// it may change), its value at every step of the query, if it has any.
pub type StepsFn<'a> = dyn Fn(&mut Vec<(i64, f64)>) -> Option<Vec<Option<f64>>> + Sync + 'a;

/// A series' labels, rollup points and raw samples, joined for a rollup step table.
type RollupSeries = (Labels, Vec<RollupPoint>, Vec<(i64, f64)>);

/// A per-series function for [`Storage::select_rollup_steps`]: given the series' rollup
/// points and raw samples (which it may change), its value at every step, if any.
pub type RollupStepsFn<'a> =
    dyn Fn(&[RollupPoint], &mut Vec<(i64, f64)>) -> Option<Vec<Option<f64>>> + Sync + 'a;

/// A per-series function for [`Storage::select_map`]: given the series' samples (which it may
/// change), its value, if any.
pub type MapFn<'a> = dyn Fn(SeriesWindow<'_>) -> Option<f64> + Sync + 'a;

/// What [`Storage::select_map`] hands its function for one series.
#[derive(Debug)]
pub enum SeriesWindow<'a> {
    /// The samples in the range, in time order (the function may change them).
    Samples(&'a mut Vec<(i64, f64)>),
    /// The range holds no counter reset, NaN or staleness marker: its first and last sample
    /// and how many there are (only when asked for with `MapOptions::counter_runs`).
    Run(CounterRun),
}

/// How [`Storage::select_map`] reads.
#[derive(Debug, Clone, Copy, Default)]
pub struct MapOptions<'a> {
    /// Only these labels of each series are needed (`None`: all).
    pub keep: Option<&'a [String]>,
    /// The function accepts [`SeriesWindow::Run`].
    pub counter_runs: bool,
}

/// Engine limits and defaults.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// How far back an instant selector looks for a sample (Prometheus default 5 m).
    pub lookback_delta: Duration,
    /// Most samples one query may load (Prometheus default 50,000,000).
    pub max_samples: usize,
    /// Longest a query may run.
    pub timeout: Duration,
    /// Most queries evaluated at once; further ones are refused.
    pub max_concurrent: usize,
    /// Step of subqueries written without one (`x[1h:]`), Prometheus default 1 m.
    pub default_subquery_step: Duration,
    /// Most points a range query may return per series (Prometheus: 11,000).
    pub max_points_per_series: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            lookback_delta: Duration::from_secs(300),
            max_samples: 50_000_000,
            timeout: Duration::from_secs(120),
            max_concurrent: 20,
            default_subquery_step: Duration::from_secs(60),
            max_points_per_series: 11_000,
        }
    }
}

/// Evaluates PromQL queries. Cheap to share; holds the options, a concurrency gate and the
/// recently parsed queries.
#[derive(Debug, Default)]
pub struct Engine {
    opts: EngineOptions,
    running: AtomicUsize,
    /// Parsed queries by their text: dashboards send the same queries on every refresh, and
    /// parsing is a tenth of a small query's time. Only successful parses of queries up to
    /// [`PARSE_CACHE_MAX_LEN`] bytes are kept; emptied when it holds [`PARSE_CACHE_ENTRIES`].
    parsed: std::sync::Mutex<std::collections::HashMap<Box<str>, Arc<Expr>>>,
}

/// Most queries [`Engine`] keeps parsed.
const PARSE_CACHE_ENTRIES: usize = 512;
/// Longest query text [`Engine`] keeps parsed (longer ones are parsed every time).
const PARSE_CACHE_MAX_LEN: usize = 4096;

/// Parses a query, mapping the parser's message to [`Error::Parse`].
pub fn parse(query: &str) -> Result<Expr> {
    if query.len() > 64 * 1024 {
        return Err(Error::Parse(format!(
            "parse error: query is {} bytes long, more than the 65536 accepted",
            query.len()
        )));
    }
    check_byte_escapes(query)?;
    promql_parser::parser::parse(query).map_err(|e| Error::Parse(parse_message(query, &e)))
}

/// Go's PromQL lexer turns `"\xff"` into a raw byte, giving a string that is not UTF-8 (and
/// so an invalid label name or value). Rust strings cannot hold that; refuse it up front
/// instead of silently reading it as a different character.
fn check_byte_escapes(query: &str) -> Result<()> {
    let b = query.as_bytes();
    let mut i = 0;
    let mut quote: Option<u8> = None;
    while i < b.len() {
        let c = b[i];
        match quote {
            None if c == b'"' || c == b'\'' || c == b'`' => quote = Some(c),
            None if c == b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            None => {}
            Some(q) if c == q => quote = None,
            Some(b'`') => {}
            Some(_) if c == b'\\' => {
                if b.get(i + 1) == Some(&b'x') {
                    let hex = query.get(i + 2..i + 4).unwrap_or("");
                    if u8::from_str_radix(hex, 16).is_ok_and(|v| v >= 0x80) {
                        return Err(Error::Parse(format!(
                            "parse error: invalid UTF-8 in string literal: escape \\x{hex} is a raw byte"
                        )));
                    }
                }
                i += 1;
            }
            Some(_) => {}
        }
        i += 1;
    }
    Ok(())
}

/// Prometheus writes parse errors as `LINE:COL: parse error: ...`. The parser crate gives the
/// message without a position, so find one: the end of input for truncated queries, the
/// unmatched parenthesis, or the first token after which no valid query can continue (the
/// shortest prefix the parser rejects outright, found by bisection: viability of a prefix is
/// monotonic for an LR grammar).
fn parse_message(query: &str, msg: &str) -> String {
    let msg = msg.trim();
    if query.trim().is_empty() {
        return "1:1: parse error: empty query".to_string();
    }
    let msg = msg.strip_prefix("parse error: ").unwrap_or(msg);
    let pos = if msg.contains("unexpected end of input") {
        Some(query.trim_end().len())
    } else if msg.contains("unclosed left parenthesis") {
        unmatched_paren(query)
    } else if truncation(msg) {
        None
    } else {
        first_bad_token(query)
    };
    match pos {
        Some(p) => format!("{}: parse error: {msg}", line_col(query, p)),
        None => format!("parse error: {msg}"),
    }
}

fn line_col(q: &str, byte: usize) -> String {
    let before = &q[..byte.min(q.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("{line}:{col}")
}

fn unmatched_paren(q: &str) -> Option<usize> {
    let mut stack = Vec::new();
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in q.char_indices() {
        if let Some(qc) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' && qc != '`' {
                escaped = true;
            } else if c == qc {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' | '`' => quote = Some(c),
            '(' => stack.push(i),
            ')' => {
                stack.pop();
            }
            _ => {}
        }
    }
    stack.first().copied()
}

/// Errors that only say the query stopped too early.
fn truncation(msg: &str) -> bool {
    msg.contains("end of input") || msg.contains("unclosed") || msg.contains("unterminated")
}

/// Coarse token ends: runs of word characters, quoted strings, operators, single punctuation.
fn token_spans(q: &str) -> Vec<(usize, usize)> {
    let b = q.as_bytes();
    let word =
        |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':' || c == b'.' || c >= 0x80;
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        if word(c) {
            while i < b.len() && word(b[i]) {
                i += 1;
            }
        } else if c == b'"' || c == b'\'' || c == b'`' {
            i += 1;
            while i < b.len() && b[i] != c {
                if b[i] == b'\\' && c != b'`' {
                    i += 1;
                }
                i += 1;
            }
            i = (i + 1).min(b.len());
        } else if i + 1 < b.len()
            && matches!(&b[i..i + 2], b"==" | b"!=" | b"=~" | b"!~" | b">=" | b"<=")
        {
            i += 2;
        } else {
            i += 1;
        }
        while !q.is_char_boundary(i) {
            i += 1;
        }
        out.push((start, i));
    }
    out
}

/// Where a generic parse failure is: the token after the longest prefix that parses as a
/// whole query, or the end of input when that token is the last one.
fn first_bad_token(q: &str) -> Option<usize> {
    let spans = token_spans(q);
    if spans.len() > 512 {
        return None;
    }
    // A stray closing parenthesis is the error wherever it is.
    let mut depth = 0i32;
    for &(s, e) in &spans {
        match &q[s..e] {
            "(" => depth += 1,
            ")" => {
                depth -= 1;
                if depth < 0 {
                    return Some(s);
                }
            }
            _ => {}
        }
    }
    let mut good: Option<usize> = None;
    for (k, &(_, e)) in spans.iter().enumerate() {
        if promql_parser::parser::parse(&q[..e]).is_ok() {
            good = Some(k);
        }
    }
    let next = good.map_or(0, |k| k + 1);
    let (s, e) = *spans.get(next)?;
    let operand = q[s..e]
        .bytes()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'"' || c == b'\'');
    if next + 1 == spans.len() && !operand {
        // A trailing operator or opening bracket: the query just stops too early.
        Some(q.trim_end().len())
    } else {
        Some(s)
    }
}

struct RunningGuard<'a>(&'a AtomicUsize);

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Engine {
    /// An engine with these options.
    pub fn new(opts: EngineOptions) -> Self {
        Self {
            opts,
            running: AtomicUsize::new(0),
            parsed: Default::default(),
        }
    }

    /// [`parse`], answered from the engine's cache of recently parsed queries when it can be
    /// (the parse of a text never changes). Errors are not kept.
    pub fn parse(&self, query: &str) -> Result<Arc<Expr>> {
        let cache = || self.parsed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = cache().get(query) {
            return Ok(e.clone());
        }
        let expr = Arc::new(parse(query)?);
        if query.len() <= PARSE_CACHE_MAX_LEN {
            let mut c = cache();
            if c.len() >= PARSE_CACHE_ENTRIES {
                c.clear();
            }
            c.insert(query.into(), expr.clone());
        }
        Ok(expr)
    }

    /// The options in force.
    pub fn options(&self) -> &EngineOptions {
        &self.opts
    }

    fn admit(&self) -> Result<RunningGuard<'_>> {
        let prev = self.running.fetch_add(1, Ordering::AcqRel);
        let guard = RunningGuard(&self.running);
        if prev >= self.opts.max_concurrent {
            return Err(Error::TooManyQueries(self.opts.max_concurrent));
        }
        Ok(guard)
    }

    /// Evaluates `query` at `time_ms`.
    pub fn instant(&self, storage: &dyn Storage, query: &str, time_ms: i64) -> Result<Value> {
        Ok(self.instant_annotated(storage, query, time_ms)?.0)
    }

    /// Evaluates `query` at `time_ms`, with the warnings and infos Prometheus would report
    /// (positions in `query` included).
    pub fn instant_annotated(
        &self,
        storage: &dyn Storage,
        query: &str,
        time_ms: i64,
    ) -> Result<(Value, Annotations)> {
        let expr = self.parse(query)?;
        self.run_instant(storage, &expr, Some(query), time_ms)
    }

    /// Evaluates a parsed expression at `time_ms`.
    pub fn instant_expr(&self, storage: &dyn Storage, expr: &Expr, time_ms: i64) -> Result<Value> {
        Ok(self.run_instant(storage, expr, None, time_ms)?.0)
    }

    fn run_instant(
        &self,
        storage: &dyn Storage,
        expr: &Expr,
        text: Option<&str>,
        time_ms: i64,
    ) -> Result<(Value, Annotations)> {
        let _g = self.admit()?;
        let mut ev = eval::Evaluator::new(storage, &self.opts, time_ms, time_ms, 0)?;
        ev.prepare(expr)?;
        let out = ev.instant(expr, time_ms);
        let notes = std::mem::take(&mut ev.annotations);
        ev.release();
        Ok((out?, notes.finish(expr, text)))
    }

    /// Evaluates `query` at every step from `start_ms` to `end_ms`; the result is a matrix.
    pub fn range(
        &self,
        storage: &dyn Storage,
        query: &str,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
    ) -> Result<Matrix> {
        Ok(self
            .range_annotated(storage, query, start_ms, end_ms, step_ms)?
            .0)
    }

    /// [`range`](Self::range) with the warnings and infos Prometheus would report.
    pub fn range_annotated(
        &self,
        storage: &dyn Storage,
        query: &str,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
    ) -> Result<(Matrix, Annotations)> {
        let expr = self.parse(query)?;
        self.run_range(storage, &expr, Some(query), start_ms, end_ms, step_ms)
    }

    /// Evaluates a parsed expression over a range.
    pub fn range_expr(
        &self,
        storage: &dyn Storage,
        expr: &Expr,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
    ) -> Result<Matrix> {
        Ok(self
            .run_range(storage, expr, None, start_ms, end_ms, step_ms)?
            .0)
    }

    fn run_range(
        &self,
        storage: &dyn Storage,
        expr: &Expr,
        text: Option<&str>,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
    ) -> Result<(Matrix, Annotations)> {
        if step_ms <= 0 {
            return Err(Error::BadData(
                "zero or negative query resolution step widths are not accepted. Try a positive integer".into(),
            ));
        }
        if end_ms < start_ms {
            return Err(Error::BadData(
                "end timestamp must not be before start time".into(),
            ));
        }
        let points = (end_ms.saturating_sub(start_ms) / step_ms).saturating_add(1);
        if points as usize > self.opts.max_points_per_series {
            return Err(Error::BadData(format!(
                "exceeded maximum resolution of {} points per timeseries. Try decreasing the query resolution (?step=XX)",
                self.opts.max_points_per_series
            )));
        }
        match expr.value_type() {
            promql_parser::parser::value::ValueType::Vector
            | promql_parser::parser::value::ValueType::Scalar => {}
            other => {
                return Err(Error::BadData(format!(
                    "invalid expression type \"{}\" for range query, must be Scalar or instant Vector",
                    type_name(other)
                )));
            }
        }
        let _g = self.admit()?;
        let mut ev = eval::Evaluator::new(storage, &self.opts, start_ms, end_ms, step_ms)?;
        ev.prepare(expr)?;
        let out = ev.range(expr);
        let notes = std::mem::take(&mut ev.annotations);
        ev.release();
        Ok((out?, notes.finish(expr, text)))
    }
}

pub(crate) fn type_name(t: promql_parser::parser::value::ValueType) -> &'static str {
    use promql_parser::parser::value::ValueType;
    match t {
        ValueType::Vector => "vector",
        ValueType::Scalar => "scalar",
        ValueType::Matrix => "range vector",
        ValueType::String => "string",
    }
}

/// Formats a float the way Prometheus' API does (Go's `strconv.FormatFloat(v, 'f', -1, 64)`).
pub fn format_value(v: f64) -> String {
    let mut out = String::new();
    push_value(&mut out, v);
    out
}

/// Appends [`format_value`]'s text for `v` to `out` without allocating: the shortest decimal
/// form that reads back as `v`, never in exponent notation (Go's `FormatFloat(v, 'f', -1, 64)`,
/// which is also what `{v}` prints). The usual values ([`short_value`]'s) are written with
/// integer arithmetic; others through a shortest-digits formatter several times faster than
/// `{v}`, which remains the fallback for the magnitudes it would write with an exponent.
pub fn push_value(out: &mut String, v: f64) {
    use std::fmt::Write as _;
    let mut buf = [0u8; SHORT_VALUE_MAX];
    if let Some(n) = short_value(v, &mut buf) {
        out.push_str(std::str::from_utf8(&buf[..n]).unwrap_or_default());
        return;
    }
    let mut b = zmij::Buffer::new();
    let s = b.format_finite(v);
    if s.contains('e') {
        let _ = write!(out, "{v}");
    } else {
        // Whole numbers come out as `1000000000000000.0`; `{v}` has no `.0`.
        out.push_str(s.strip_suffix(".0").unwrap_or(s));
    }
}

/// The most bytes [`short_value`] writes.
pub const SHORT_VALUE_MAX: usize = 24;

/// Writes [`format_value`]'s text for the values a monitoring system mostly holds at the
/// start of `buf`, with integer arithmetic only, and returns its length (the text is ASCII):
/// `NaN`, `±Inf`, whole numbers below 10¹⁵ and numbers below 10⁹ with at most three decimals (`0.45`, `-12.5`). `None` for any other value
/// (`-0`, `0.1 + 0.2`, `1e-7`), which [`push_value`] formats in full.
pub fn short_value(v: f64, buf: &mut [u8; SHORT_VALUE_MAX]) -> Option<usize> {
    let text: &[u8] = if v.is_nan() {
        b"NaN"
    } else if v == f64::INFINITY {
        b"+Inf"
    } else if v == f64::NEG_INFINITY {
        b"-Inf"
    } else {
        let a = v.abs();
        let neg = v.is_sign_negative();
        // Through `i64`, not `u64`: the signed conversions are single instructions.
        let (m, k) = if a < 1e15 && (a as i64) as f64 == a {
            if a == 0.0 && neg {
                return None;
            }
            (a as i64 as u64, 0)
        } else {
            short_decimal(a)?
        };
        return Some(decimal_into(buf, neg, m, k));
    };
    buf[..text.len()].copy_from_slice(text);
    Some(text.len())
}

/// Writes `m × 10^-k` (`-` first when `neg`) with exactly `k` decimals, `k` at most 3, at the
/// start of `buf` (room for 24 bytes), and returns the length: `(12345, 2)` is `123.45`,
/// `(5, 0)` is `5`. The digit writer behind [`short_value`] and the API's sample times.
pub fn decimal_into(buf: &mut [u8], neg: bool, m: u64, k: u32) -> usize {
    let mut n = 0;
    if neg {
        buf[0] = b'-';
        n = 1;
    }
    // One arm per `k`, so each division is by a constant (a multiply), not a `div`.
    let (int, f) = match k {
        0 => (m, 0),
        1 => (m / 10, m % 10),
        2 => (m / 100, m % 100),
        _ => (m / 1000, m % 1000),
    };
    n += digits_into(&mut buf[n..], int);
    if k > 0 {
        buf[n] = b'.';
        let frac = &mut buf[n + 1..=n + k as usize];
        let mut f = f;
        for d in frac.iter_mut().rev() {
            *d = b'0' + (f % 10) as u8;
            f /= 10;
        }
        n += 1 + k as usize;
    }
    n
}

/// `"00" "01" … "99"`: two decimal digits per lookup.
const DIGIT_PAIRS: &[u8; 200] = b"\
0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

/// Writes the decimal digits of `x` at the start of `buf` and returns how many: the count
/// comes first (one `ilog10`), then the digits are written in place from the right, four at
/// a time (each block split in two pairs, so the divisions of a block do not wait on each
/// other), with no intermediate buffer and no copy.
fn digits_into(buf: &mut [u8], mut x: u64) -> usize {
    let len = x.checked_ilog10().map_or(1, |l| l as usize + 1);
    let out = &mut buf[..len];
    let mut i = len;
    while x >= 10_000 {
        let block = (x % 10_000) as usize;
        x /= 10_000;
        let (hi, lo) = (block / 100 * 2, block % 100 * 2);
        out[i - 4..i - 2].copy_from_slice(&DIGIT_PAIRS[hi..hi + 2]);
        out[i - 2..i].copy_from_slice(&DIGIT_PAIRS[lo..lo + 2]);
        i -= 4;
    }
    let x = x as usize;
    if x >= 100 {
        let lo = x % 100 * 2;
        out[i - 2..i].copy_from_slice(&DIGIT_PAIRS[lo..lo + 2]);
        i -= 2;
        let hi = x / 100;
        if hi >= 10 {
            out[i - 2..i].copy_from_slice(&DIGIT_PAIRS[hi * 2..hi * 2 + 2]);
        } else {
            out[i - 1] = b'0' + hi as u8;
        }
    } else if x >= 10 {
        out[i - 2..i].copy_from_slice(&DIGIT_PAIRS[x * 2..x * 2 + 2]);
    } else {
        out[i - 1] = b'0' + x as u8;
    }
    len
}

/// A non-integer `a ≥ 0` as `m × 10^-k` with the fewest decimals `k` in 1..=3, when that
/// decimal reads back as exactly `a`. Below 10⁹ a float's spacing is under 10⁻³, so at most
/// one 3-decimal number reads back as `a`, and a shorter decimal that does is that same
/// number with trailing zeros (the same rational, so the same correctly rounded float): one
/// test at `k = 3`, then the zeros dropped, gives the text Go's shortest formatting writes.
fn short_decimal(a: f64) -> Option<(u64, u32)> {
    // NaN passes this test but no decimal reads back as it.
    if a >= 1e9 {
        return None;
    }
    // Truncating `x + 0.5` rounds (no libm call, unlike `round`); a decimal that reads back
    // as `a` lies far closer to `a · 1000` than ½, so ties cannot matter.
    let m = (a * 1000.0 + 0.5) as i64;
    // Both operands are exact, so the division is the correctly rounded value of the decimal,
    // which is what parsing the decimal yields.
    if m as f64 / 1000.0 != a {
        return None;
    }
    let m = m as u64;
    Some(if m.is_multiple_of(1000) {
        (m / 1000, 0)
    } else if m.is_multiple_of(100) {
        (m / 100, 1)
    } else if m.is_multiple_of(10) {
        (m / 10, 2)
    } else {
        (m, 3)
    })
}

/// Labels shared between samples of the same series across steps.
pub type Metric = Arc<Labels>;

/// Displays labels as `name{a="b"}` as Prometheus does in messages.
pub struct DisplayLabels<'a>(pub &'a Labels);

impl fmt::Display for DisplayLabels<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, l) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}={:?}", l.name, l.value)?;
        }
        f.write_str("}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(q: &str) -> String {
        parse(q).unwrap_err().to_string()
    }

    /// The short-decimal fast path writes what a shortest-digits formatter writes, on
    /// decimals up to the 10⁹ edge, on their float neighbours and on arbitrary bits.
    #[test]
    fn short_decimals_format_as_shortest_digits() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut fast = 0;
        for i in 0..200_000u64 {
            let r = next();
            let v = match i % 4 {
                0 => (r % 1_000_000_000_000) as f64 / [10.0, 100.0, 1000.0][(r >> 60) as usize % 3],
                1 => {
                    f64::from_bits(((r % 2_000_000_000) as f64 / 1000.0).to_bits() + (r >> 62) - 1)
                }
                2 => f64::from_bits(r),
                _ => (r % 100_000) as f64 / 1000.0 - 50.0,
            };
            if !v.is_finite() || v.abs() >= 1e15 {
                continue;
            }
            let v = if r & 1 == 1 { -v } else { v };
            if short_value(v, &mut [0; SHORT_VALUE_MAX]).is_none() {
                continue;
            }
            fast += 1;
            // Where the fast path answers only one decimal of its length reads back as `v`,
            // so any shortest-digits formatter agrees with it (ties aside, which need more).
            assert_eq!(
                format_value(v),
                format!("{v}"),
                "{v:e} ({:#x})",
                v.to_bits()
            );
        }
        assert!(fast > 50_000, "the fast path ran only {fast} times");
        for (v, s) in [
            (0.45, "0.45"),
            (-12.5, "-12.5"),
            (0.001, "0.001"),
            (999999999.999, "999999999.999"),
            (0.1 + 0.2, "0.30000000000000004"),
            (-0.0, "-0"),
            (0.0, "0"),
            (-3.0, "-3"),
            (999999999999999.0, "999999999999999"),
            (1e15, "1000000000000000"),
            (f64::NAN, "NaN"),
            (f64::NEG_INFINITY, "-Inf"),
            (f64::INFINITY, "+Inf"),
            (1e-7, "0.0000001"),
        ] {
            assert_eq!(format_value(v), s);
        }
    }

    /// The digit writer agrees with `to_string` at every length, at both ends of each length
    /// and on arbitrary values, and `decimal_into` places the point and zero padding.
    #[test]
    fn digits_are_written_as_to_string_writes_them() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut cases = vec![0, u64::MAX];
        for p in 1..20 {
            let t = 10u64.pow(p);
            cases.extend([t - 1, t, t + 1]);
        }
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            cases.push(x >> (x % 64));
        }
        let mut b = [0u8; 24];
        for v in cases {
            let n = digits_into(&mut b, v);
            assert_eq!(std::str::from_utf8(&b[..n]).unwrap(), v.to_string());
        }
        for (neg, m, k, s) in [
            (false, 5, 2, "0.05"),
            (true, 12345, 3, "-12.345"),
            (false, 0, 0, "0"),
            (false, 1_700_000_000_500, 3, "1700000000.500"),
            (true, 7, 1, "-0.7"),
        ] {
            let n = decimal_into(&mut b, neg, m, k);
            assert_eq!(std::str::from_utf8(&b[..n]).unwrap(), s);
        }
    }

    /// The engine's parse cache answers what a fresh parse answers, keeps no errors, and
    /// stays within its bound.
    #[test]
    fn cached_parses_are_fresh_parses() {
        let e = Engine::default();
        for q in [
            "up",
            "sum by (job) (rate(x[5m]))",
            "a + on(b) group_left c",
            "up",
        ] {
            let cached = e.parse(q).unwrap();
            assert_eq!(
                format!("{:?}", *cached),
                format!("{:?}", parse(q).unwrap()),
                "{q}"
            );
        }
        assert!(Arc::ptr_eq(
            &e.parse("up").unwrap(),
            &e.parse("up").unwrap()
        ));
        for _ in 0..2 {
            assert_eq!(
                e.parse("sum(").unwrap_err().to_string(),
                "1:4: parse error: unclosed left parenthesis"
            );
        }
        assert!(
            !e.parsed.lock().unwrap().contains_key("sum("),
            "an error was kept"
        );
        for i in 0..PARSE_CACHE_ENTRIES * 2 + 7 {
            e.parse(&format!("up{{i=\"{i}\"}}")).unwrap();
        }
        let long = format!("up{{a=\"{}\"}}", "x".repeat(PARSE_CACHE_MAX_LEN));
        e.parse(&long).unwrap();
        let c = e.parsed.lock().unwrap();
        assert!(c.len() <= PARSE_CACHE_ENTRIES, "{} entries", c.len());
        assert!(!c.contains_key(long.as_str()));
    }

    struct Empty;
    impl Storage for Empty {
        fn select(&self, _: &[Matcher], _: i64, _: i64, _: usize) -> Result<Vec<StoredSeries>> {
            Ok(Vec::new())
        }
    }

    #[test]
    fn extreme_times_are_errors_or_empty_not_overflows() {
        let e = Engine::default();
        let lim = 9_200_000_000_000_000_000i64;
        assert!(e.range(&Empty, "up", -lim, lim, 1).is_err());
        for q in [
            "up offset 10000y",
            "up @ 100 offset -10000y",
            "max_over_time(up[10000y:1y])",
        ] {
            match e.instant(&Empty, q, -lim) {
                Ok(Value::Vector(v)) => assert!(v.is_empty(), "{q}"),
                Ok(other) => panic!("{q}: {other:?}"),
                Err(err) => assert!(!err.to_string().is_empty()),
            }
        }
    }

    #[test]
    fn parse_errors_carry_positions() {
        assert_eq!(err("sum("), "1:4: parse error: unclosed left parenthesis");
        assert!(
            err("foo{").starts_with("1:5: parse error: unexpected end of input"),
            "{}",
            err("foo{")
        );
        assert!(
            err("foo bar").starts_with("1:5: parse error:"),
            "{}",
            err("foo bar")
        );
        assert!(
            err("1 + ) 2").starts_with("1:5: parse error:"),
            "{}",
            err("1 + ) 2")
        );
        assert!(err("").contains("empty query"));
        assert!(err("x{a=\"\\xff\"}").contains("invalid UTF-8"));
        assert!(parse("sum by (job) (rate(x[5m]))").is_ok());
    }
}

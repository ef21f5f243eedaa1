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
mod binary;
mod eval;
mod functions;
mod parse_time;
pub mod storage;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

pub use eval::{Matrix, MatrixSeries, Sample, Value};
pub use parse_time::{parse_duration, parse_time};
pub use promql_parser::parser::Expr;
use vigil_model::{Labels, Matcher};

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

/// Evaluates PromQL queries. Cheap to share; holds the options and a concurrency gate.
#[derive(Debug, Default)]
pub struct Engine {
    opts: EngineOptions,
    running: AtomicUsize,
}

/// Parses a query, mapping the parser's message to [`Error::Parse`].
pub fn parse(query: &str) -> Result<Expr> {
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

/// Prometheus prefixes parse errors with "1:5: parse error: ..."; the parser crate gives the
/// message only, sometimes with a position. Keep its text and prefix a clear label.
fn parse_message(query: &str, msg: &str) -> String {
    let msg = msg.trim();
    if query.trim().is_empty() {
        return "parse error: empty query".to_string();
    }
    if msg.starts_with("parse error") {
        msg.to_string()
    } else {
        format!("parse error: {msg}")
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
        }
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
        let expr = parse(query)?;
        self.instant_expr(storage, &expr, time_ms)
    }

    /// Evaluates a parsed expression at `time_ms`.
    pub fn instant_expr(&self, storage: &dyn Storage, expr: &Expr, time_ms: i64) -> Result<Value> {
        let _g = self.admit()?;
        let mut ev = eval::Evaluator::new(storage, &self.opts, time_ms, time_ms, 0)?;
        ev.prepare(expr)?;
        ev.instant(expr, time_ms)
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
        let expr = parse(query)?;
        self.range_expr(storage, &expr, start_ms, end_ms, step_ms)
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
        let points = (end_ms - start_ms) / step_ms + 1;
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
        ev.range(expr)
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
    if v.is_nan() {
        "NaN".to_string()
    } else if v == f64::INFINITY {
        "+Inf".to_string()
    } else if v == f64::NEG_INFINITY {
        "-Inf".to_string()
    } else {
        format!("{v}")
    }
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

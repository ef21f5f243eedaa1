//! The evaluator: selector loading, step-wise evaluation, result assembly.

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use hashbrown::HashMap;
use promql_parser::label::MatchOp as PMatchOp;
use promql_parser::parser::{
    AtModifier, Expr, LabelModifier, MatrixSelector, Offset, SubqueryExpr, VectorSelector,
};
use vigil_model::{Labels, METRIC_NAME, MatchOp, Matcher, is_stale_marker};

use crate::{EngineOptions, Error, Metric, Result, Storage};

/// One element of an instant vector.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The series' labels.
    pub metric: Metric,
    /// The sample's timestamp (ms): the stored sample's own time when it comes straight from a
    /// selector (for `timestamp()`), else the evaluation time.
    pub t: i64,
    /// The value.
    pub v: f64,
    /// Whether `__name__` is to be dropped at the end of evaluation (delayed name removal).
    pub drop_name: bool,
}

/// One series of a range vector or of a range query's result.
#[derive(Debug, Clone)]
pub struct MatrixSeries {
    /// The series' labels.
    pub metric: Metric,
    /// `(timestamp ms, value)` in time order.
    pub points: Vec<(i64, f64)>,
    /// Whether `__name__` is to be dropped at the end of evaluation.
    pub drop_name: bool,
}

/// A range vector.
pub type Matrix = Vec<MatrixSeries>;

/// The value of an expression.
#[derive(Debug, Clone)]
pub enum Value {
    /// A scalar.
    Scalar(f64),
    /// A string.
    String(String),
    /// An instant vector.
    Vector(Vec<Sample>),
    /// A range vector.
    Matrix(Matrix),
}

/// A selector's series, loaded once per query.
pub(crate) struct Loaded {
    pub metric: Metric,
    pub points: Vec<(i64, f64)>,
}

pub(crate) fn ms(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

pub(crate) fn offset_ms(o: &Option<Offset>) -> i64 {
    match o {
        None => 0,
        Some(Offset::Pos(d)) => ms(*d),
        Some(Offset::Neg(d)) => -ms(*d),
    }
}

fn system_time_ms(t: &SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => ms(d),
        Err(e) => -ms(e.duration()),
    }
}

pub(crate) fn unwrap_parens(mut e: &Expr) -> &Expr {
    while let Expr::Paren(p) = e {
        e = &p.expr;
    }
    e
}

/// Whether `e` calls function `name` anywhere.
fn calls(e: &Expr, name: &str) -> bool {
    match e {
        Expr::Call(c) => c.func.name == name || c.args.args.iter().any(|a| calls(a, name)),
        Expr::Aggregate(a) => {
            a.param.as_ref().is_some_and(|p| calls(p, name)) || calls(&a.expr, name)
        }
        Expr::Unary(u) => calls(&u.expr, name),
        Expr::Binary(b) => calls(&b.lhs, name) || calls(&b.rhs, name),
        Expr::Paren(p) => calls(&p.expr, name),
        Expr::Subquery(s) => calls(&s.expr, name),
        _ => false,
    }
}

/// The one metric name every series of `vs` has, when its matchers fix it.
pub(crate) fn fixed_name(vs: &VectorSelector) -> Option<&str> {
    if let Some(n) = &vs.name {
        return Some(n);
    }
    if !vs.matchers.or_matchers.is_empty() {
        return None;
    }
    vs.matchers
        .matchers
        .iter()
        .find(|m| m.name == "__name__" && matches!(m.op, promql_parser::label::MatchOp::Equal))
        .map(|m| m.value.as_str())
}

/// Converts a parsed selector into store matchers (the metric name becomes `__name__=`).
pub fn selector_matchers(vs: &VectorSelector) -> Result<Vec<Matcher>> {
    if !vs.matchers.or_matchers.is_empty() {
        return Err(Error::BadData(
            "\"or\" inside label matchers is not supported".into(),
        ));
    }
    let mut out = Vec::with_capacity(vs.matchers.matchers.len() + 1);
    if let Some(name) = &vs.name {
        out.push(Matcher::eq(METRIC_NAME, name));
    }
    for m in &vs.matchers.matchers {
        let op = match m.op {
            PMatchOp::Equal => MatchOp::Eq,
            PMatchOp::NotEqual => MatchOp::Ne,
            PMatchOp::Re(_) => MatchOp::Re,
            PMatchOp::NotRe(_) => MatchOp::Nre,
        };
        out.push(Matcher::new(op, &m.name, &m.value).map_err(|e| Error::BadData(e.to_string()))?);
    }
    Ok(out)
}

pub(crate) struct Evaluator<'a> {
    st: &'a dyn Storage,
    pub(crate) opts: &'a EngineOptions,
    /// Query start and end (for `@ start()` / `@ end()`), ms.
    pub(crate) start: i64,
    pub(crate) end: i64,
    pub(crate) step: i64,
    pub(crate) lookback: i64,
    data: HashMap<usize, Vec<Loaded>>,
    /// Rollup points of selectors read partly from rollups (see `rollup.rs`), by selector.
    rollups: HashMap<usize, crate::rollup::RollupLoad>,
    /// Selectors read only when their range function is evaluated (`Storage::select_map`),
    /// by selector: matchers and time range.
    deferred: HashMap<usize, Deferred>,
    /// Samples loaded so far (prepared selectors and deferred reads), for `max_samples`.
    loaded_samples: Cell<usize>,
    /// In a range query, a deferred selector's function values at every step, per series,
    /// computed on the first step (see `stream_steps`).
    pub(crate) step_values: RefCell<HashMap<usize, Arc<StepTable>>>,
    /// Rollup table plans of deferred selectors, by selector (see `rollup::table_plan`).
    pub(crate) table_plans: RefCell<HashMap<(usize, bool), Option<crate::rollup::TablePlan>>>,
    /// Range-query aggregations reduced straight from their input's step table, by node
    /// (`None`: not applicable).
    pub(crate) table_groups:
        RefCell<HashMap<usize, Option<std::rc::Rc<crate::aggregate::TableGroups>>>>,
    deadline: Instant,
    ticks: Cell<u32>,
    /// Whether instant selectors of a range query may be streamed (not when the query reads
    /// sample timestamps: `timestamp()`).
    stream_selectors: bool,
    /// Warnings and infos raised so far.
    pub(crate) annotations: crate::annotations::Collector,
    /// The selector (address) whose range function an aggregation asked to be read grouped
    /// by its `by` labels (0: none), and what that read left: whether the function keeps the
    /// metric name, and each group's values (see `aggregate.rs`).
    pub(crate) group_request: Cell<usize>,
    pub(crate) grouped: RefCell<Option<(bool, crate::Grouped)>>,
}

/// Aggregations whose result carries only their `by` labels (so their input needs no others).
pub(crate) const PROJECTABLE: [&str; 9] = [
    "avg", "count", "group", "max", "min", "quantile", "stddev", "stdvar", "sum",
];

/// A streamed range function's values at every step of a range query, per series.
pub(crate) type StepTable = Vec<(Metric, Vec<Option<f64>>)>;

/// Passes one series' step values on while they fit the query's sample budget.
pub(crate) type HeldFn<'a> = dyn Fn(Vec<Option<f64>>) -> Option<Vec<Option<f64>>> + Sync + 'a;

/// A range selector read when its function is evaluated: matchers, time range, and the
/// only labels its series need (`None`: all).
type Deferred = (Vec<Matcher>, i64, i64, Option<Vec<String>>);

struct Plan<'e> {
    vs: &'e VectorSelector,
    mint: i64,
    maxt: i64,
    matrix: bool,
    /// An instant selector read at one time only (`maxt`): its newest sample is enough.
    latest: bool,
    /// A range selector only ever read by a function rollups can answer, at the query's own
    /// steps (not inside a subquery).
    rollup: Option<(&'e MatrixSelector, &'static str)>,
    /// A range selector only ever read by a range function at one instant: it is streamed
    /// through the function when that is evaluated, not loaded.
    stream: bool,
    /// The only labels a streamed selector's series need (an aggregation `by` them).
    keep: Option<Vec<String>>,
}

impl<'a> Evaluator<'a> {
    pub(crate) fn new(
        st: &'a dyn Storage,
        opts: &'a EngineOptions,
        start: i64,
        end: i64,
        step: i64,
    ) -> Result<Self> {
        Ok(Self {
            st,
            opts,
            start,
            end,
            step,
            lookback: ms(opts.lookback_delta).max(1),
            data: HashMap::new(),
            rollups: HashMap::new(),
            deferred: HashMap::new(),
            loaded_samples: Cell::new(0),
            step_values: RefCell::new(HashMap::new()),
            table_plans: RefCell::new(HashMap::new()),
            table_groups: RefCell::new(HashMap::new()),
            deadline: Instant::now() + opts.timeout,
            ticks: Cell::new(0),
            stream_selectors: false,
            annotations: Default::default(),
            group_request: Cell::new(0),
            grouped: RefCell::new(None),
        })
    }

    /// Checks the timeout every so often.
    pub(crate) fn tick(&self) -> Result<()> {
        let n = self.ticks.get().wrapping_add(1);
        self.ticks.set(n);
        if n.is_multiple_of(64) && Instant::now() > self.deadline {
            return Err(Error::Timeout("expression evaluation"));
        }
        Ok(())
    }

    pub(crate) fn at_ms(&self, at: &Option<AtModifier>) -> Option<i64> {
        match at {
            None => None,
            Some(AtModifier::Start) => Some(self.start),
            Some(AtModifier::End) => Some(self.end),
            Some(AtModifier::At(t)) => Some(system_time_ms(t)),
        }
    }

    /// The time a selector or subquery with these modifiers reads at, for evaluation time `t`.
    pub(crate) fn ref_time(&self, at: &Option<AtModifier>, off: &Option<Offset>, t: i64) -> i64 {
        self.at_ms(at).unwrap_or(t).saturating_sub(offset_ms(off))
    }

    /// Collects every selector with the time range it is read over; `top` is false inside
    /// subqueries (evaluated at their own steps).
    fn plan<'e>(&self, e: &'e Expr, s: i64, en: i64, top: bool, out: &mut Vec<Plan<'e>>) {
        match e {
            Expr::VectorSelector(vs) => {
                let (lo, hi) = self.window(&vs.at, &vs.offset, s, en);
                out.push(Plan {
                    vs,
                    mint: lo.saturating_sub(self.lookback).saturating_add(1),
                    maxt: hi,
                    matrix: false,
                    latest: lo == hi,
                    rollup: None,
                    // In a range query, read once into a per-step table (`selector_steps`).
                    stream: top && lo != hi && self.stream_selectors,
                    keep: None,
                });
            }
            Expr::MatrixSelector(m) => {
                let (lo, hi) = self.window(&m.vs.at, &m.vs.offset, s, en);
                out.push(Plan {
                    vs: &m.vs,
                    mint: lo.saturating_sub(ms(m.range)).saturating_add(1),
                    maxt: hi,
                    matrix: true,
                    latest: false,
                    rollup: None,
                    stream: false,
                    keep: None,
                });
            }
            Expr::Subquery(sq) => {
                let (lo, hi) = self.window(&sq.at, &sq.offset, s, en);
                self.plan(&sq.expr, lo.saturating_sub(ms(sq.range)), hi, false, out);
            }
            Expr::Aggregate(a) => {
                if let Some(p) = &a.param {
                    self.plan(p, s, en, top, out);
                }
                let before = out.len();
                self.plan(&a.expr, s, en, top, out);
                // `sum by (zone) (rate(x[5m]))` streamed: only `zone` of each series is ever
                // looked at, so only it is read.
                if let Some(LabelModifier::Include(by)) = &a.modifier
                    && PROJECTABLE.contains(&a.op.to_string().to_lowercase().as_str())
                    && let Expr::Call(c) = unwrap_parens(&a.expr)
                    && let [arg] = c.args.args.as_slice()
                    && let Expr::MatrixSelector(m) = unwrap_parens(arg)
                    && out.len() == before + 1
                    && out[before].stream
                    && std::ptr::eq(out[before].vs, &m.vs)
                {
                    let mut keep = by.labels.clone();
                    // `rate` / `increase` check the names of the series they read.
                    if matches!(c.func.name, "rate" | "increase") && fixed_name(&m.vs).is_none() {
                        keep.push("__name__".into());
                    }
                    out[before].keep = Some(keep);
                }
                // `quantile by (zone) (0.9, x)` in a range query, `x` streamed: only `zone`.
                if let Some(LabelModifier::Include(by)) = &a.modifier
                    && PROJECTABLE.contains(&a.op.to_string().to_lowercase().as_str())
                    && let Expr::VectorSelector(vs) = unwrap_parens(&a.expr)
                    && out.len() == before + 1
                    && out[before].stream
                    && std::ptr::eq(out[before].vs, vs)
                {
                    out[before].keep = Some(by.labels.clone());
                }
            }
            Expr::Unary(u) => self.plan(&u.expr, s, en, top, out),
            Expr::Binary(b) => {
                self.plan(&b.lhs, s, en, top, out);
                self.plan(&b.rhs, s, en, top, out);
            }
            Expr::Paren(p) => self.plan(&p.expr, s, en, top, out),
            Expr::Call(c) => {
                if let ([arg], true) = (
                    c.args.args.as_slice(),
                    top && crate::rollup::FUNCS.contains(&c.func.name),
                ) && let Expr::MatrixSelector(m) = unwrap_parens(arg)
                {
                    let before = out.len();
                    self.plan(arg, s, en, top, out);
                    if let Some(p) = out.get_mut(before) {
                        p.rollup = Some((m, c.func.name));
                        p.stream = true;
                    }
                    return;
                }
                if let [arg] = c.args.args.as_slice()
                    && top
                    && crate::functions::STREAMABLE.contains(&c.func.name)
                    && let Expr::MatrixSelector(_) = unwrap_parens(arg)
                {
                    let before = out.len();
                    self.plan(arg, s, en, top, out);
                    if let Some(p) = out.get_mut(before) {
                        p.stream = true;
                    }
                    return;
                }
                for a in &c.args.args {
                    self.plan(a, s, en, top, out);
                }
            }
            Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
        }
    }

    fn window(&self, at: &Option<AtModifier>, off: &Option<Offset>, s: i64, en: i64) -> (i64, i64) {
        let o = offset_ms(off);
        match self.at_ms(at) {
            Some(a) => (a.saturating_sub(o), a.saturating_sub(o)),
            None => (s.saturating_sub(o), en.saturating_sub(o)),
        }
    }

    /// Loads every selector's samples for the whole evaluation.
    pub(crate) fn prepare(&mut self, e: &Expr) -> Result<()> {
        self.stream_selectors = self.start != self.end && self.step > 0 && !calls(e, "timestamp");
        let mut plans = Vec::new();
        self.plan(e, self.start, self.end, true, &mut plans);
        let mut loaded_samples = 0usize;
        for p in plans {
            if Instant::now() > self.deadline {
                return Err(Error::Timeout("query preparation"));
            }
            let matchers = selector_matchers(p.vs)?;
            if p.mint > p.maxt {
                self.data.insert(p.vs as *const _ as usize, Vec::new());
                continue;
            }
            let budget = self.opts.max_samples.saturating_sub(loaded_samples);
            let max = self.opts.max_samples;
            if let Some((m, func)) = p.rollup
                && self.table_plan(&m.vs, ms(m.range), false).is_none()
            {
                let split = self
                    .load_split(m, func, &matchers, budget)
                    .map_err(|e| match e {
                        Error::TooManySamples(_) => Error::TooManySamples(max),
                        e => e,
                    })?;
                if let Some((series, rl, n)) = split {
                    loaded_samples += n;
                    self.data.insert(p.vs as *const _ as usize, series);
                    self.rollups.insert(p.vs as *const _ as usize, rl);
                    continue;
                }
            }
            if p.stream {
                self.deferred.insert(
                    p.vs as *const _ as usize,
                    (matchers, p.mint, p.maxt, p.keep),
                );
                continue;
            }
            let series = if p.latest {
                self.st.select_latest(&matchers, p.mint, p.maxt, budget)
            } else {
                self.st.select(&matchers, p.mint, p.maxt, budget)
            };
            let series = series.map_err(|e| match e {
                Error::TooManySamples(_) => Error::TooManySamples(max),
                e => e,
            })?;
            let mut out = Vec::with_capacity(series.len());
            for mut s in series {
                if p.matrix {
                    s.samples.retain(|&(_, v)| !is_stale_marker(v));
                }
                loaded_samples += s.samples.len();
                if loaded_samples > self.opts.max_samples {
                    return Err(Error::TooManySamples(self.opts.max_samples));
                }
                if s.samples.is_empty() {
                    continue;
                }
                out.push(Loaded {
                    metric: Arc::new(s.labels),
                    points: s.samples,
                });
            }
            self.data.insert(p.vs as *const _ as usize, out);
        }
        self.loaded_samples.set(loaded_samples);
        Ok(())
    }

    /// Frees the loaded series. A large load (hundreds of thousands of allocations) is freed
    /// on a short-lived thread so the caller gets its answer without waiting for it.
    pub(crate) fn release(self) {
        let series: usize = self.data.values().map(|v| v.len()).sum();
        if series < 50_000 {
            return;
        }
        let data = self.data;
        // Should the thread not start, the closure and the data are dropped right here.
        let _ = std::thread::Builder::new()
            .name("vigil-query-free".into())
            .spawn(move || drop(data));
    }

    /// Streams a deferred range selector through `f` at one instant (see `Plan::stream`),
    /// staleness markers dropped; `counter_runs`: `f` takes counter runs too. `None` when the
    /// selector was loaded instead.
    pub(crate) fn stream_selector(
        &self,
        vs: &VectorSelector,
        counter_runs: bool,
        f: &crate::MapFn<'_>,
    ) -> Option<Result<Vec<(Labels, f64)>>> {
        self.stream_with(vs, counter_runs, f, |m, lo, hi, budget, opts, f| {
            self.st.select_map(m, lo, hi, budget, opts, f)
        })
    }

    /// [`stream_selector`](Self::stream_selector) grouped by the selector's kept labels
    /// (`Storage::select_map_grouped`).
    pub(crate) fn stream_selector_grouped(
        &self,
        vs: &VectorSelector,
        counter_runs: bool,
        f: &crate::MapFn<'_>,
    ) -> Option<Result<crate::Grouped>> {
        self.stream_with(vs, counter_runs, f, |m, lo, hi, budget, opts, f| {
            self.st.select_map_grouped(m, lo, hi, budget, opts, f)
        })
    }

    #[allow(clippy::type_complexity)]
    fn stream_with<T>(
        &self,
        vs: &VectorSelector,
        counter_runs: bool,
        f: &crate::MapFn<'_>,
        read: impl FnOnce(
            &[Matcher],
            i64,
            i64,
            usize,
            crate::MapOptions<'_>,
            &crate::MapFn<'_>,
        ) -> Result<T>,
    ) -> Option<Result<T>> {
        let (matchers, mint, maxt, keep) = self.deferred.get(&(vs as *const _ as usize))?;
        let max = self.opts.max_samples;
        let budget = max.saturating_sub(self.loaded_samples.get());
        let unstale = |w: crate::SeriesWindow<'_>| match w {
            crate::SeriesWindow::Samples(buf) => {
                buf.retain(|&(_, v)| !is_stale_marker(v));
                f(crate::SeriesWindow::Samples(buf))
            }
            run => f(run),
        };
        let opts = crate::MapOptions {
            keep: keep.as_deref(),
            counter_runs,
        };
        Some(
            read(matchers, *mint, *maxt, budget, opts, &unstale).map_err(|e| match e {
                Error::TooManySamples(_) => Error::TooManySamples(max),
                e => e,
            }),
        )
    }

    /// Whether `vs` is read when its function is evaluated (streamed), not loaded up front.
    pub(crate) fn is_deferred(&self, vs: &VectorSelector) -> bool {
        self.deferred.contains_key(&(vs as *const _ as usize))
    }

    /// Whether `vs` is streamed and read with only some labels (an aggregation's `by`).
    pub(crate) fn projected(&self, vs: &VectorSelector) -> bool {
        matches!(
            self.deferred.get(&(vs as *const _ as usize)),
            Some((_, _, _, Some(_)))
        )
    }

    /// In a range query, a deferred range selector's function values at every step (`f`
    /// gets each series' samples, staleness markers dropped), computed once on the first step
    /// and kept; `None` when the selector was loaded instead.
    pub(crate) fn stream_steps(
        &self,
        vs: &VectorSelector,
        f: &crate::StepsFn<'_>,
    ) -> Option<Result<Arc<StepTable>>> {
        self.steps_table(vs, true, f)
    }

    /// A streamed instant selector's value at every step of a range query: each series'
    /// newest sample within the lookback before the step, unless a staleness marker.
    fn selector_steps(&self, vs: &VectorSelector) -> Option<Result<Arc<StepTable>>> {
        if !self.deferred.contains_key(&(vs as *const _ as usize)) || self.step <= 0 {
            return None;
        }
        if let Some(t) = self.rollup_steps(vs, self.lookback, crate::rollup::StepKind::Latest) {
            return Some(t);
        }
        let (start, step, lookback) = (self.start, self.step, self.lookback);
        let steps = (self.end - start) / step + 1;
        let off = offset_ms(&vs.offset);
        let g = |buf: &mut Vec<(i64, f64)>| -> Option<Vec<Option<f64>>> {
            let mut any = false;
            let mut j = 0;
            let vals = (0..steps)
                .map(|k| {
                    let r = (start + k * step).saturating_sub(off);
                    while j < buf.len() && buf[j].0 <= r {
                        j += 1;
                    }
                    let (ts, v) = *buf.get(j.checked_sub(1)?)?;
                    if ts <= r.saturating_sub(lookback) || is_stale_marker(v) {
                        return None;
                    }
                    any = true;
                    Some(v)
                })
                .collect();
            any.then_some(vals)
        };
        self.steps_table(vs, false, &g)
    }

    fn steps_table(
        &self,
        vs: &VectorSelector,
        drop_stale: bool,
        f: &crate::StepsFn<'_>,
    ) -> Option<Result<Arc<StepTable>>> {
        self.table_with(vs, |matchers, mint, maxt, budget, keep, held| {
            let unstale = |buf: &mut Vec<(i64, f64)>| {
                if drop_stale {
                    buf.retain(|&(_, v)| !is_stale_marker(v));
                }
                held(f(buf)?)
            };
            self.st
                .select_map_steps(matchers, mint, maxt, budget, keep, &unstale)
        })
    }

    /// A deferred selector's step table, made once by `read` (given the selector's matchers,
    /// time range, sample budget, kept labels, and a check each series' values pass through:
    /// they count against the budget like loaded samples) and kept for the other steps.
    pub(crate) fn table_with(
        &self,
        vs: &VectorSelector,
        read: impl FnOnce(
            &[Matcher],
            i64,
            i64,
            usize,
            Option<&[String]>,
            &HeldFn<'_>,
        ) -> Result<Vec<(Labels, Vec<Option<f64>>)>>,
    ) -> Option<Result<Arc<StepTable>>> {
        let key = vs as *const _ as usize;
        let (matchers, mint, maxt, keep) = self.deferred.get(&key)?;
        if let Some(t) = self.step_values.borrow().get(&key) {
            return Some(Ok(t.clone()));
        }
        let max = self.opts.max_samples;
        let budget = max.saturating_sub(self.loaded_samples.get());
        let held = std::sync::atomic::AtomicUsize::new(0);
        let count = |vals: Vec<Option<f64>>| {
            let n = held.fetch_add(vals.len(), std::sync::atomic::Ordering::Relaxed);
            (n + vals.len() <= budget).then_some(vals)
        };
        let found = match read(matchers, *mint, *maxt, budget, keep.as_deref(), &count) {
            Ok(v) => v,
            Err(Error::TooManySamples(_)) => return Some(Err(Error::TooManySamples(max))),
            Err(e) => return Some(Err(e)),
        };
        if held.into_inner() > budget {
            return Some(Err(Error::TooManySamples(max)));
        }
        let table: Arc<StepTable> =
            Arc::new(found.into_iter().map(|(l, v)| (Arc::new(l), v)).collect());
        self.step_values.borrow_mut().insert(key, table.clone());
        Some(Ok(table))
    }

    /// A step table's samples at step time `t` of this range query.
    pub(crate) fn step_vector(&self, table: &StepTable, t: i64, drop_name: bool) -> Vec<Sample> {
        let k = ((t - self.start) / self.step) as usize;
        table
            .iter()
            .filter_map(|(metric, vals)| {
                vals.get(k).copied().flatten().map(|v| Sample {
                    metric: metric.clone(),
                    t,
                    v,
                    drop_name,
                })
            })
            .collect()
    }

    pub(crate) fn storage(&self) -> &'a dyn Storage {
        self.st
    }

    /// The rollup points of a selector read partly from rollups.
    pub(crate) fn rollups_of(&self, vs: &VectorSelector) -> Option<&crate::rollup::RollupLoad> {
        self.rollups.get(&(vs as *const _ as usize))
    }

    pub(crate) fn loaded(&self, vs: &VectorSelector) -> &[Loaded] {
        self.data
            .get(&(vs as *const _ as usize))
            .map(|v| v.as_slice())
            .unwrap_or(&[])
    }

    /// Evaluates at one instant and finishes the value (names dropped, duplicates refused).
    pub(crate) fn instant(&self, e: &Expr, t: i64) -> Result<Value> {
        match self.eval(e, t)? {
            Value::Vector(v) => Ok(Value::Vector(finish_vector(v)?)),
            Value::Matrix(m) => Ok(Value::Matrix(finish_matrix(m)?)),
            other => Ok(other),
        }
    }

    /// Evaluates at every step and assembles the series.
    pub(crate) fn range(&self, e: &Expr) -> Result<crate::Matrix> {
        if let Some(m) = self.range_from_table(e)? {
            let mut out = finish_matrix(m)?;
            out.sort_by(|a, b| a.metric.cmp(&b.metric));
            return Ok(out);
        }
        let mut out: Matrix = Vec::new();
        let mut by_ptr: HashMap<(usize, bool), usize> = HashMap::new();
        let mut by_labels: HashMap<(Metric, bool), usize> = HashMap::new();
        let mut t = self.start;
        while t <= self.end {
            if Instant::now() > self.deadline {
                return Err(Error::Timeout("range evaluation"));
            }
            match self.eval(e, t)? {
                Value::Scalar(v) => {
                    if out.is_empty() {
                        out.push(MatrixSeries {
                            metric: Arc::new(Labels::new()),
                            points: Vec::new(),
                            drop_name: false,
                        });
                    }
                    out[0].points.push((t, v));
                }
                Value::Vector(vec) => {
                    for s in vec {
                        let pk = (Arc::as_ptr(&s.metric) as usize, s.drop_name);
                        let idx = match by_ptr.get(&pk) {
                            Some(&i) => i,
                            None => {
                                let i = *by_labels
                                    .entry((s.metric.clone(), s.drop_name))
                                    .or_insert_with(|| {
                                        out.push(MatrixSeries {
                                            metric: s.metric.clone(),
                                            points: Vec::new(),
                                            drop_name: s.drop_name,
                                        });
                                        out.len() - 1
                                    });
                                // Keep the Arc alive in `out` so the pointer cannot be reused.
                                if Arc::ptr_eq(&out[i].metric, &s.metric) {
                                    by_ptr.insert(pk, i);
                                }
                                i
                            }
                        };
                        out[idx].points.push((t, s.v));
                    }
                }
                Value::Matrix(_) | Value::String(_) => {
                    return Err(Error::BadData(
                        "range queries must return a scalar or an instant vector".into(),
                    ));
                }
            }
            t = match t.checked_add(self.step) {
                Some(n) => n,
                None => break,
            };
        }
        let mut out = finish_matrix(out)?;
        out.sort_by(|a, b| a.metric.cmp(&b.metric));
        Ok(out)
    }

    /// A range query that is one streamed selector, or one streamed range function of a
    /// selector, is its step table: the series are built from the table's rows at once
    /// instead of step by step. `None` for anything else (evaluated step by step).
    fn range_from_table(&self, e: &Expr) -> Result<Option<Matrix>> {
        if self.step <= 0 || self.end <= self.start {
            return Ok(None);
        }
        let (vs, drop_name) = match unwrap_parens(e) {
            Expr::VectorSelector(vs) => (vs, false),
            Expr::Call(c) => {
                let [arg] = c.args.args.as_slice() else {
                    return Ok(None);
                };
                let Expr::MatrixSelector(m) = unwrap_parens(arg) else {
                    return Ok(None);
                };
                if !self.is_deferred(&m.vs) {
                    return Ok(None);
                }
                // The first step makes the table (and raises any annotation); its samples
                // tell whether the function keeps the metric name.
                let Value::Vector(first) = self.eval(e, self.start)? else {
                    return Ok(None);
                };
                let Some(s) = first.first() else {
                    return Ok(None);
                };
                (&m.vs, s.drop_name)
            }
            _ => return Ok(None),
        };
        if !self.is_deferred(vs) {
            return Ok(None);
        }
        let table = match unwrap_parens(e) {
            Expr::VectorSelector(vs) => match self.selector_steps(vs) {
                Some(t) => t?,
                None => return Ok(None),
            },
            _ => match self.step_values.borrow().get(&(vs as *const _ as usize)) {
                Some(t) => t.clone(),
                None => return Ok(None),
            },
        };
        let (start, step) = (self.start, self.step);
        Ok(Some(
            table
                .iter()
                .filter_map(|(metric, vals)| {
                    let points: Vec<(i64, f64)> = vals
                        .iter()
                        .enumerate()
                        .filter_map(|(k, v)| v.map(|v| (start + k as i64 * step, v)))
                        .collect();
                    (!points.is_empty()).then(|| MatrixSeries {
                        metric: metric.clone(),
                        points,
                        drop_name,
                    })
                })
                .collect(),
        ))
    }

    pub(crate) fn eval(&self, e: &Expr, t: i64) -> Result<Value> {
        self.tick()?;
        match e {
            Expr::NumberLiteral(n) => Ok(Value::Scalar(n.val)),
            Expr::StringLiteral(s) => Ok(Value::String(s.val.clone())),
            Expr::Paren(p) => self.eval(&p.expr, t),
            Expr::Unary(u) => match self.eval(&u.expr, t)? {
                Value::Scalar(v) => Ok(Value::Scalar(-v)),
                Value::Vector(mut v) => {
                    for s in &mut v {
                        s.v = -s.v;
                        s.t = t;
                        s.drop_name = true;
                    }
                    Ok(Value::Vector(v))
                }
                _ => Err(Error::BadData(
                    "unary expression only allowed on expressions of type scalar or instant vector"
                        .into(),
                )),
            },
            Expr::VectorSelector(vs) => Ok(Value::Vector(self.eval_selector(vs, t)?)),
            Expr::MatrixSelector(m) => {
                let r = self.ref_time(&m.vs.at, &m.vs.offset, t);
                let lo = r.saturating_sub(ms(m.range));
                let mut out = Vec::new();
                for s in self.loaded(&m.vs) {
                    let w = window(&s.points, lo, r);
                    if !w.is_empty() {
                        out.push(MatrixSeries {
                            metric: s.metric.clone(),
                            points: w.to_vec(),
                            drop_name: false,
                        });
                    }
                }
                Ok(Value::Matrix(out))
            }
            Expr::Subquery(sq) => Ok(Value::Matrix(self.eval_subquery(sq, t)?)),
            Expr::Call(c) => self.eval_call(c, t),
            Expr::Aggregate(a) => self.eval_aggregate(a, t),
            Expr::Binary(b) => self.eval_binary(b, t),
            Expr::Extension(_) => Err(Error::BadData(
                "extension expressions are not supported".into(),
            )),
        }
    }

    pub(crate) fn eval_selector(&self, vs: &VectorSelector, t: i64) -> Result<Vec<Sample>> {
        if let Some(table) = self.selector_steps(vs) {
            return Ok(self.step_vector(table?.as_ref(), t, false));
        }
        let r = self.ref_time(&vs.at, &vs.offset, t);
        let lo = r.saturating_sub(self.lookback);
        let data = self.loaded(vs);
        let mut out = Vec::with_capacity(data.len());
        for s in data {
            let i = s.points.partition_point(|p| p.0 <= r);
            if i == 0 {
                continue;
            }
            let (ts, v) = s.points[i - 1];
            if ts <= lo || is_stale_marker(v) {
                continue;
            }
            out.push(Sample {
                metric: s.metric.clone(),
                t: ts,
                v,
                drop_name: false,
            });
        }
        Ok(out)
    }

    pub(crate) fn eval_subquery(&self, sq: &SubqueryExpr, t: i64) -> Result<Matrix> {
        let step = sq
            .step
            .map(ms)
            .unwrap_or_else(|| ms(self.opts.default_subquery_step))
            .max(1);
        let r = self.ref_time(&sq.at, &sq.offset, t);
        let lo = r.saturating_sub(ms(sq.range));
        let mut ts = lo.div_euclid(step) * step;
        if ts <= lo {
            ts = ts.saturating_add(step);
        }
        let mut out: Matrix = Vec::new();
        let mut index: HashMap<(Metric, bool), usize> = HashMap::new();
        while ts <= r {
            match self.eval(&sq.expr, ts)? {
                Value::Scalar(v) => {
                    let i = *index
                        .entry((Arc::new(Labels::new()), false))
                        .or_insert_with(|| {
                            out.push(MatrixSeries {
                                metric: Arc::new(Labels::new()),
                                points: Vec::new(),
                                drop_name: false,
                            });
                            out.len() - 1
                        });
                    out[i].points.push((ts, v));
                }
                Value::Vector(v) => {
                    for s in v {
                        let i =
                            *index
                                .entry((s.metric.clone(), s.drop_name))
                                .or_insert_with(|| {
                                    out.push(MatrixSeries {
                                        metric: s.metric.clone(),
                                        points: Vec::new(),
                                        drop_name: s.drop_name,
                                    });
                                    out.len() - 1
                                });
                        out[i].points.push((ts, s.v));
                    }
                }
                _ => {
                    return Err(Error::BadData(
                        "subquery is only allowed on instant vector".into(),
                    ));
                }
            }
            ts = match ts.checked_add(step) {
                Some(n) => n,
                None => break,
            };
        }
        Ok(out)
    }
}

/// The samples in the left-open window (lo, hi].
pub(crate) fn window(points: &[(i64, f64)], lo: i64, hi: i64) -> &[(i64, f64)] {
    let a = points.partition_point(|p| p.0 <= lo);
    let b = points.partition_point(|p| p.0 <= hi);
    if a >= b { &[] } else { &points[a..b] }
}

/// Removes marked names and refuses duplicate label sets.
pub(crate) fn finish_vector(mut v: Vec<Sample>) -> Result<Vec<Sample>> {
    let mut any = false;
    for s in &mut v {
        if s.drop_name && s.metric.get(METRIC_NAME).is_some() {
            let mut l = (*s.metric).clone();
            l.remove(METRIC_NAME);
            s.metric = Arc::new(l);
            any = true;
        }
        s.drop_name = false;
    }
    if any || v.len() > 1 {
        let mut seen: hashbrown::HashSet<&Labels> = hashbrown::HashSet::with_capacity(v.len());
        for s in &v {
            if !seen.insert(&s.metric) {
                return Err(Error::Execution(
                    "vector cannot contain metrics with the same labelset".into(),
                ));
            }
        }
    }
    Ok(v)
}

pub(crate) fn finish_matrix(m: Matrix) -> Result<Matrix> {
    // Series whose labels coincide once names are dropped merge into one, as long as they
    // never hold a point at the same time (Prometheus' delayed name removal).
    let mut out: Matrix = Vec::with_capacity(m.len());
    let mut index: HashMap<Metric, usize> = HashMap::with_capacity(m.len());
    for mut s in m {
        if s.drop_name && s.metric.get(METRIC_NAME).is_some() {
            let mut l = (*s.metric).clone();
            l.remove(METRIC_NAME);
            s.metric = Arc::new(l);
        }
        s.drop_name = false;
        match index.get(&s.metric) {
            None => {
                index.insert(s.metric.clone(), out.len());
                out.push(s);
            }
            Some(&i) => {
                let target = &mut out[i].points;
                target.extend(s.points);
                target.sort_by_key(|p| p.0);
                if target.windows(2).any(|w| w[0].0 == w[1].0) {
                    return Err(Error::Execution(
                        "vector cannot contain metrics with the same labelset".into(),
                    ));
                }
            }
        }
    }
    Ok(out)
}

//! Function calls: range-vector functions over windows, instant-vector math, label and date
//! functions, classic `histogram_quantile`.

use std::sync::Arc;

use hashbrown::HashMap;
use promql_parser::parser::{Call, Expr};
use vigil_model::{Labels, METRIC_NAME, is_valid_label_name};

use crate::annotations::{self, Kind};
use crate::eval::{Evaluator, Sample, Value, ms, selector_matchers, unwrap_parens};
use crate::{CounterRun, Error, Metric, Result};

/// Neumaier-compensated summation step, as Prometheus' `kahanSumInc`.
/// Range functions of one range-vector argument evaluated by `over_time`: at a single instant
/// their selector is streamed through them instead of loaded.
pub(crate) const STREAMABLE: [&str; 23] = [
    "avg_over_time",
    "changes",
    "count_over_time",
    "delta",
    "deriv",
    "first_over_time",
    "idelta",
    "increase",
    "irate",
    "last_over_time",
    "mad_over_time",
    "max_over_time",
    "min_over_time",
    "present_over_time",
    "rate",
    "resets",
    "stddev_over_time",
    "stdvar_over_time",
    "sum_over_time",
    "ts_of_first_over_time",
    "ts_of_last_over_time",
    "ts_of_max_over_time",
    "ts_of_min_over_time",
];

pub(crate) fn kahan_inc(inc: f64, sum: f64, c: f64) -> (f64, f64) {
    let t = sum + inc;
    let c = if t.is_infinite() {
        0.0
    } else if sum.abs() >= inc.abs() {
        c + ((sum - t) + inc)
    } else {
        c + ((inc - t) + sum)
    };
    (t, c)
}

/// Go's `math.Min`: NaN wins.
pub(crate) fn go_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if a == 0.0 && b == 0.0 {
        if a.is_sign_negative() { a } else { b }
    } else if a < b {
        a
    } else {
        b
    }
}

/// Go's `math.Max`: NaN wins.
pub(crate) fn go_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if a == 0.0 && b == 0.0 {
        if a.is_sign_positive() { a } else { b }
    } else if a > b {
        a
    } else {
        b
    }
}

/// Prometheus' quantile over a set of values (reordered in place): the values of ranks
/// ⌊q·(n−1)⌋ and the one above, NaN ranking lowest, interpolated linearly. The two ranks are
/// found by selection (O(n)), not by sorting: it is the same pair of values.
pub(crate) fn quantile(q: f64, values: &mut [f64]) -> f64 {
    if values.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    let order = |a: &f64, b: &f64| match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        _ => a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal),
    };
    let n = values.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0) as usize;
    let weight = rank - rank.floor();
    let (_, lo, above) = values.select_nth_unstable_by(lower, order);
    let lo = *lo;
    // The next rank is the smallest value above (ties with `lo` included).
    let hi = above
        .iter()
        .copied()
        .reduce(|m, v| if order(&v, &m).is_lt() { v } else { m })
        .unwrap_or(lo);
    lo * (1.0 - weight) + hi * weight
}

/// How many counter resets (a value below the one before) a series has before a position,
/// for positions that mostly move forward (sliding windows): O(1) amortised per query.
#[derive(Default)]
struct ResetCount {
    pos: usize,
    count: usize,
}

impl ResetCount {
    /// Resets at positions `1..x` of `buf`.
    fn at(&mut self, buf: &[(i64, f64)], x: usize) -> usize {
        if x < self.pos {
            *self = Self::default();
        }
        while self.pos < x {
            if self.pos >= 1 && buf[self.pos].1 < buf[self.pos - 1].1 {
                self.count += 1;
            }
            self.pos += 1;
        }
        self.count
    }
}

/// A range function computed from a counter run: `(run, window start, window end)`.
type RunFn<'a> = dyn Fn(&CounterRun, i64, i64) -> Option<f64> + Sync + 'a;

fn extrapolated_rate(w: &[(i64, f64)], lo: i64, hi: i64, counter: bool, rate: bool) -> Option<f64> {
    if w.len() < 2 {
        return None;
    }
    let run = CounterRun {
        first: w[0],
        last: w[w.len() - 1],
        samples: w.len(),
    };
    let mut result = run.last.1 - run.first.1;
    if counter {
        let mut prev = run.first.1;
        for &(_, v) in &w[1..] {
            if v < prev {
                result += prev;
            }
            prev = v;
        }
    }
    extrapolate(&run, result, lo, hi, counter, rate)
}

/// Prometheus' extrapolation of `result` (the change over the samples of `run`, resets
/// corrected) to the window `(lo, hi]`.
pub(crate) fn extrapolate(
    run: &CounterRun,
    result: f64,
    lo: i64,
    hi: i64,
    counter: bool,
    rate: bool,
) -> Option<f64> {
    if run.samples < 2 {
        return None;
    }
    let n1 = (run.samples - 1) as f64;
    let ((first_t, first_v), (last_t, _)) = (run.first, run.last);
    let mut to_start = (first_t - lo) as f64 / 1000.0;
    let mut to_end = (hi - last_t) as f64 / 1000.0;
    let sampled = (last_t - first_t) as f64 / 1000.0;
    let avg = sampled / n1;
    let threshold = avg * 1.1;
    let mut interval = sampled;
    if to_start >= threshold {
        to_start = avg / 2.0;
    }
    if counter && result > 0.0 && first_v >= 0.0 {
        let to_zero = sampled * (first_v / result);
        if to_zero < to_start {
            to_start = to_zero;
        }
    }
    interval += to_start;
    if to_end >= threshold {
        to_end = avg / 2.0;
    }
    interval += to_end;
    let mut factor = interval / sampled;
    if rate {
        factor /= (hi - lo) as f64 / 1000.0;
    }
    Some(result * factor)
}

fn instant_delta(w: &[(i64, f64)], rate: bool) -> Option<f64> {
    if w.len() < 2 {
        return None;
    }
    let (pt, pv) = w[w.len() - 2];
    let (lt, lv) = w[w.len() - 1];
    let mut d = lv - pv;
    if rate && lv < pv {
        d = lv;
    }
    let dt = lt - pt;
    if dt == 0 {
        return None;
    }
    if rate {
        d /= dt as f64 / 1000.0;
    }
    Some(d)
}

pub(crate) fn linear_regression(w: &[(i64, f64)], intercept_t: i64) -> (f64, f64) {
    let (mut n, mut sx, mut cx, mut sy, mut cy) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let (mut sxy, mut cxy, mut sx2, mut cx2) = (0.0, 0.0, 0.0, 0.0);
    let init_y = w[0].1;
    let mut const_y = true;
    for (i, &(t, v)) in w.iter().enumerate() {
        if const_y && i > 0 && v != init_y {
            const_y = false;
        }
        n += 1.0;
        let x = (t - intercept_t) as f64 / 1000.0;
        (sx, cx) = kahan_inc(x, sx, cx);
        (sy, cy) = kahan_inc(v, sy, cy);
        (sxy, cxy) = kahan_inc(x * v, sxy, cxy);
        (sx2, cx2) = kahan_inc(x * x, sx2, cx2);
    }
    if const_y {
        if init_y.is_infinite() {
            return (f64::NAN, f64::NAN);
        }
        return (0.0, init_y);
    }
    sx += cx;
    sy += cy;
    sxy += cxy;
    sx2 += cx2;
    let cov = sxy - sx * sy / n;
    let var = sx2 - sx * sx / n;
    let slope = cov / var;
    (slope, sy / n - slope * sx / n)
}

pub(crate) fn kahan_avg(values: impl Iterator<Item = f64>) -> f64 {
    let (mut sum, mut mean, mut count, mut c) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    let mut incremental = false;
    for f in values {
        count += 1.0;
        if !incremental {
            let (ns, nc) = kahan_inc(f, sum, c);
            if count == 1.0 || !ns.is_infinite() {
                sum = ns;
                c = nc;
                continue;
            }
            incremental = true;
            mean = sum / (count - 1.0);
            c /= count - 1.0;
        }
        if mean.is_infinite() {
            if f.is_infinite() && (mean > 0.0) == (f > 0.0) {
                continue;
            }
            if !f.is_infinite() && !f.is_nan() {
                continue;
            }
        }
        let corrected = mean + c;
        (mean, c) = kahan_inc(f / count - corrected / count, mean, c);
    }
    if incremental {
        mean + c
    } else {
        sum / count + c / count
    }
}

fn variance(w: &[(i64, f64)]) -> f64 {
    let (mut count, mut mean, mut cmean, mut aux, mut caux) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for &(_, v) in w {
        count += 1.0;
        let delta = v - (mean + cmean);
        (mean, cmean) = kahan_inc(delta / count, mean, cmean);
        (aux, caux) = kahan_inc(delta * (v - (mean + cmean)), aux, caux);
    }
    (aux + caux) / count
}

fn des(w: &[(i64, f64)], sf: f64, tf: f64) -> Option<f64> {
    if w.len() < 2 {
        return None;
    }
    let mut s0 = 0.0;
    let mut s1 = w[0].1;
    let mut b = w[1].1 - w[0].1;
    for (i, p) in w.iter().enumerate().skip(1) {
        let x = sf * p.1;
        if i > 1 {
            b = tf * (s1 - s0) + (1.0 - tf) * b;
        }
        let y = (1.0 - sf) * (s1 + b);
        s0 = s1;
        s1 = x + y;
    }
    Some(s1)
}

/// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
pub(crate) fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn date_part(name: &str, secs: f64) -> f64 {
    let s = secs as i64; // Go's int64(f) truncates toward zero.
    let days = s.div_euclid(86_400);
    let sod = s.rem_euclid(86_400);
    let (y, m, d) = civil(days);
    let month_days = [
        31,
        if is_leap(y) { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    match name {
        "year" => y as f64,
        "month" => m as f64,
        "day_of_month" => d as f64,
        "day_of_week" => (days + 4).rem_euclid(7) as f64,
        "day_of_year" => (month_days[..(m as usize - 1)].iter().sum::<i64>() + d as i64) as f64,
        "days_in_month" => month_days[m as usize - 1] as f64,
        "hour" => (sod / 3600) as f64,
        "minute" => ((sod % 3600) / 60) as f64,
        _ => f64::NAN,
    }
}

fn simple(name: &str, v: f64) -> Option<f64> {
    Some(match name {
        "abs" => v.abs(),
        "ceil" => v.ceil(),
        "floor" => v.floor(),
        "exp" => v.exp(),
        "sqrt" => v.sqrt(),
        "ln" => v.ln(),
        "log2" => v.log2(),
        "log10" => v.log10(),
        "sgn" => {
            if v < 0.0 {
                -1.0
            } else if v > 0.0 {
                1.0
            } else {
                v
            }
        }
        "sin" => v.sin(),
        "cos" => v.cos(),
        "tan" => v.tan(),
        "asin" => v.asin(),
        "acos" => v.acos(),
        "atan" => v.atan(),
        "sinh" => v.sinh(),
        "cosh" => v.cosh(),
        "tanh" => v.tanh(),
        "asinh" => v.asinh(),
        "acosh" => v.acosh(),
        "atanh" => v.atanh(),
        "deg" => v * 180.0 / std::f64::consts::PI,
        "rad" => v * std::f64::consts::PI / 180.0,
        _ => return None,
    })
}

/// Functions that read native histograms only: on float samples they return nothing.
const NATIVE_ONLY: &[&str] = &[
    "histogram_count",
    "histogram_sum",
    "histogram_avg",
    "histogram_stddev",
    "histogram_stdvar",
];

/// Series per worker below which a range function runs on the calling thread.
const PARALLEL_SERIES: usize = 20_000;

/// Runs `run` over `0..n` cut into contiguous ranges, on up to 4 cores when each gets at least
/// `min_per_worker` items (the calling thread takes the first range); results in order.
pub(crate) fn par_ranges<T: Send>(
    n: usize,
    min_per_worker: usize,
    run: impl Fn(std::ops::Range<usize>) -> Vec<T> + Sync,
) -> Result<Vec<T>> {
    let workers = vigil_tsdb::cores()
        .min(4)
        .min(n / min_per_worker.max(1))
        .max(1);
    if workers <= 1 {
        return Ok(run(0..n));
    }
    let per = n.div_ceil(workers);
    let run = &run;
    let parts: Vec<std::thread::Result<Vec<T>>> = std::thread::scope(|sc| {
        let handles: Vec<_> = (per..n)
            .step_by(per)
            .map(|a| sc.spawn(move || run(a..(a + per).min(n))))
            .collect();
        let first = run(0..per);
        std::iter::once(Ok(first))
            .chain(handles.into_iter().map(|h| h.join()))
            .collect()
    });
    let mut out = Vec::with_capacity(n);
    for p in parts {
        out.extend(p.map_err(|_| Error::Execution("a worker thread panicked".into()))?);
    }
    Ok(out)
}

impl Evaluator<'_> {
    fn scalar_arg(&self, e: &Expr, t: i64) -> Result<f64> {
        match self.eval(e, t)? {
            Value::Scalar(v) => Ok(v),
            _ => Err(Error::BadData("expected a scalar argument".into())),
        }
    }

    fn vector_arg(&self, e: &Expr, t: i64) -> Result<Vec<Sample>> {
        match self.eval(e, t)? {
            Value::Vector(v) => Ok(v),
            _ => Err(Error::BadData("expected an instant vector argument".into())),
        }
    }

    fn string_arg(e: &Expr) -> Result<String> {
        match unwrap_parens(e) {
            Expr::StringLiteral(s) => Ok(s.val.clone()),
            _ => Err(Error::BadData("expected a string argument".into())),
        }
    }

    /// Calls `f` with each series' window of the range-vector argument.
    fn windows(
        &self,
        arg: &Expr,
        t: i64,
        mut f: impl FnMut(&Metric, bool, &[(i64, f64)], i64, i64),
    ) -> Result<()> {
        match unwrap_parens(arg) {
            Expr::MatrixSelector(m) => {
                let r = self.ref_time(&m.vs.at, &m.vs.offset, t);
                let lo = r.saturating_sub(ms(m.range));
                for s in self.loaded(&m.vs) {
                    let w = crate::eval::window(&s.points, lo, r);
                    if !w.is_empty() {
                        f(&s.metric, false, w, lo, r);
                    }
                }
                Ok(())
            }
            Expr::Subquery(sq) => {
                let r = self.ref_time(&sq.at, &sq.offset, t);
                let lo = r.saturating_sub(ms(sq.range));
                for s in self.eval_subquery(sq, t)? {
                    if !s.points.is_empty() {
                        f(&s.metric, s.drop_name, &s.points, lo, r);
                    }
                }
                Ok(())
            }
            _ => Err(Error::BadData("expected a range vector argument".into())),
        }
    }

    fn over_time(
        &self,
        arg: &Expr,
        t: i64,
        keep_name: bool,
        f: impl Fn(&[(i64, f64)], i64, i64) -> Option<f64> + Sync,
    ) -> Result<Value> {
        self.over_time_runs(arg, t, keep_name, f, None)
    }

    /// [`over_time`](Self::over_time) for a function that can also be computed from a
    /// [`CounterRun`](crate::CounterRun) (`rate`, `increase`): streamed series without resets
    /// then need not be decoded.
    fn over_time_runs(
        &self,
        arg: &Expr,
        t: i64,
        keep_name: bool,
        f: impl Fn(&[(i64, f64)], i64, i64) -> Option<f64> + Sync,
        run_f: Option<&RunFn<'_>>,
    ) -> Result<Value> {
        // Streamed in a range query: each series decoded once into a reused buffer and its
        // value computed for every step at once (on the first step; kept for the others).
        if let Expr::MatrixSelector(m) = unwrap_parens(arg)
            && self.start != self.end
            && self.step > 0
        {
            let range = ms(m.range);
            let (start, step) = (self.start, self.step);
            let steps = (self.end - start) / step + 1;
            // Only run when the table is made (once per query), so no per-step work here.
            let (at, off) = (self.at_ms(&m.vs.at), crate::eval::offset_ms(&m.vs.offset));
            let g = |buf: &mut Vec<(i64, f64)>| -> Option<Vec<Option<f64>>> {
                let mut any = false;
                // For `rate`/`increase`: counter resets before a position, counted as the
                // windows slide, so a window without one is a counter run (O(1), no scan).
                let (mut before_a, mut before_b) = (ResetCount::default(), ResetCount::default());
                let vals = (0..steps)
                    .map(|k| {
                        let r = at.unwrap_or(start + k * step).saturating_sub(off);
                        let lo = r.saturating_sub(range);
                        let a = buf.partition_point(|p| p.0 <= lo);
                        let b = buf.partition_point(|p| p.0 <= r);
                        let v = if a >= b {
                            None
                        } else if let Some(rf) = run_f
                            && before_b.at(buf, b) == before_a.at(buf, a + 1)
                        {
                            let run = CounterRun {
                                first: buf[a],
                                last: buf[b - 1],
                                samples: b - a,
                            };
                            rf(&run, lo, r)
                        } else {
                            f(&buf[a..b], lo, r)
                        };
                        any |= v.is_some();
                        v
                    })
                    .collect();
                any.then_some(vals)
            };
            if let Some(table) = self.stream_steps(&m.vs, &g) {
                return Ok(Value::Vector(self.step_vector(
                    table?.as_ref(),
                    t,
                    !keep_name,
                )));
            }
        }
        // Streamed: each series decoded into a reused buffer and reduced right away.
        if let Expr::MatrixSelector(m) = unwrap_parens(arg) {
            let r = self.ref_time(&m.vs.at, &m.vs.offset, t);
            let lo = r.saturating_sub(ms(m.range));
            let g = |w: crate::SeriesWindow<'_>| match w {
                crate::SeriesWindow::Samples(buf) => {
                    let w = crate::eval::window(buf, lo, r);
                    if w.is_empty() { None } else { f(w, lo, r) }
                }
                crate::SeriesWindow::Run(run) => run_f.and_then(|rf| rf(&run, lo, r)),
            };
            // An aggregation `by` some labels asked for this selector's values by group.
            if self.group_request.get() == annotations::node(&m.vs)
                && let Some(found) = self.stream_selector_grouped(&m.vs, run_f.is_some(), &g)
            {
                *self.grouped.borrow_mut() = Some((keep_name, found?));
                return Ok(Value::Vector(Vec::new()));
            }
            if let Some(found) = self.stream_selector(&m.vs, run_f.is_some(), &g) {
                return Ok(Value::Vector(
                    found?
                        .into_iter()
                        .map(|(labels, v)| Sample {
                            metric: Arc::new(labels),
                            t,
                            v,
                            drop_name: !keep_name,
                        })
                        .collect(),
                ));
            }
        }
        // Straight from a selector: no window copies; many series are split over the cores.
        if let Expr::MatrixSelector(m) = unwrap_parens(arg) {
            let data = self.loaded(&m.vs);
            let r = self.ref_time(&m.vs.at, &m.vs.offset, t);
            let lo = r.saturating_sub(ms(m.range));
            let out = par_ranges(data.len(), PARALLEL_SERIES, |part| {
                let mut out = Vec::with_capacity(part.len());
                for s in &data[part] {
                    let w = crate::eval::window(&s.points, lo, r);
                    if w.is_empty() {
                        continue;
                    }
                    if let Some(v) = f(w, lo, r) {
                        out.push(Sample {
                            metric: s.metric.clone(),
                            t,
                            v,
                            drop_name: !keep_name,
                        });
                    }
                }
                out
            })?;
            return Ok(Value::Vector(out));
        }
        let mut out = Vec::new();
        self.windows(arg, t, |m, drop, w, lo, hi| {
            if let Some(v) = f(w, lo, hi) {
                out.push(Sample {
                    metric: m.clone(),
                    t,
                    v,
                    drop_name: drop || !keep_name,
                });
            }
        })?;
        Ok(Value::Vector(out))
    }

    pub(crate) fn eval_call(&self, c: &Call, t: i64) -> Result<Value> {
        let name = c.func.name;
        let args = &c.args.args;
        let arg = |i: usize| -> Result<&Expr> {
            args.get(i)
                .map(|b| b.as_ref())
                .ok_or_else(|| Error::BadData(format!("missing argument {i} of {name}()")))
        };
        // A range query's windows on rollup bucket boundaries: read as a table from rollups.
        if let Some(kind) = crate::rollup::StepKind::of(name)
            && let [a] = args.as_slice()
            && let Expr::MatrixSelector(m) = unwrap_parens(a)
            && let Some(table) = self.rollup_steps(&m.vs, ms(m.range), kind)
        {
            let keep_name = name == "last_over_time";
            let v = Value::Vector(self.step_vector(table?.as_ref(), t, !keep_name));
            if matches!(name, "rate" | "increase") {
                self.check_counter_names(a, &v);
            }
            return Ok(v);
        }
        if crate::rollup::FUNCS.contains(&name)
            && let Some(v) = self.over_rollups(name, arg(0)?, t)?
        {
            return Ok(v);
        }
        match name {
            "rate" | "increase" => {
                let rate = name == "rate";
                let from_run = |r: &CounterRun, lo, hi| {
                    extrapolate(r, r.last.1 - r.first.1, lo, hi, true, rate)
                };
                let v = self.over_time_runs(
                    arg(0)?,
                    t,
                    false,
                    |w, lo, hi| extrapolated_rate(w, lo, hi, true, rate),
                    Some(&from_run),
                )?;
                self.check_counter_names(arg(0)?, &v);
                Ok(v)
            }
            "delta" => self.over_time(arg(0)?, t, false, |w, lo, hi| {
                extrapolated_rate(w, lo, hi, false, false)
            }),
            "irate" => self.over_time(arg(0)?, t, false, |w, _, _| instant_delta(w, true)),
            "idelta" => self.over_time(arg(0)?, t, false, |w, _, _| instant_delta(w, false)),
            "deriv" => self.over_time(arg(0)?, t, false, |w, _, _| {
                (w.len() >= 2).then(|| linear_regression(w, w[0].0).0)
            }),
            "predict_linear" => {
                let d = self.scalar_arg(arg(1)?, t)?;
                self.over_time(arg(0)?, t, false, |w, _, _| {
                    (w.len() >= 2).then(|| {
                        let (slope, icpt) = linear_regression(w, t);
                        slope * d + icpt
                    })
                })
            }
            "resets" => self.over_time(arg(0)?, t, false, |w, _, _| {
                Some(w.windows(2).filter(|p| p[1].1 < p[0].1).count() as f64)
            }),
            "changes" => self.over_time(arg(0)?, t, false, |w, _, _| {
                Some(
                    w.windows(2)
                        .filter(|p| p[1].1 != p[0].1 && !(p[1].1.is_nan() && p[0].1.is_nan()))
                        .count() as f64,
                )
            }),
            "avg_over_time" => self.over_time(arg(0)?, t, false, |w, _, _| {
                Some(kahan_avg(w.iter().map(|p| p.1)))
            }),
            "sum_over_time" => self.over_time(arg(0)?, t, false, |w, _, _| {
                let (mut s, mut c) = (0.0, 0.0);
                for &(_, v) in w {
                    (s, c) = kahan_inc(v, s, c);
                }
                Some(s + c)
            }),
            "count_over_time" => self.over_time(arg(0)?, t, false, |w, _, _| Some(w.len() as f64)),
            "min_over_time" => self.over_time(arg(0)?, t, false, |w, _, _| {
                let mut m = w[0].1;
                for &(_, v) in &w[1..] {
                    if v < m || m.is_nan() {
                        m = v;
                    }
                }
                Some(m)
            }),
            "max_over_time" => self.over_time(arg(0)?, t, false, |w, _, _| {
                let mut m = w[0].1;
                for &(_, v) in &w[1..] {
                    if v > m || m.is_nan() {
                        m = v;
                    }
                }
                Some(m)
            }),
            "last_over_time" => self.over_time(arg(0)?, t, true, |w, _, _| w.last().map(|p| p.1)),
            "first_over_time" => self.over_time(arg(0)?, t, true, |w, _, _| w.first().map(|p| p.1)),
            "present_over_time" => self.over_time(arg(0)?, t, false, |_, _, _| Some(1.0)),
            "stdvar_over_time" => self.over_time(arg(0)?, t, false, |w, _, _| Some(variance(w))),
            "stddev_over_time" => {
                self.over_time(arg(0)?, t, false, |w, _, _| Some(variance(w).sqrt()))
            }
            "mad_over_time" => self.over_time(arg(0)?, t, false, |w, _, _| {
                if w.iter().any(|p| p.1.is_nan()) {
                    return Some(f64::NAN);
                }
                let mut vals: Vec<f64> = w.iter().map(|p| p.1).collect();
                let median = quantile(0.5, &mut vals);
                let mut dev: Vec<f64> = vals.iter().map(|v| (v - median).abs()).collect();
                Some(quantile(0.5, &mut dev))
            }),
            "ts_of_min_over_time" | "ts_of_max_over_time" => {
                let max = name == "ts_of_max_over_time";
                self.over_time(arg(0)?, t, false, |w, _, _| {
                    let (mut bt, mut bv) = w[0];
                    for &(pt, v) in &w[1..] {
                        let better = if max { v >= bv } else { v <= bv };
                        if better || bv.is_nan() {
                            (bt, bv) = (pt, v);
                        }
                    }
                    Some(bt as f64 / 1000.0)
                })
            }
            "ts_of_last_over_time" => self.over_time(arg(0)?, t, false, |w, _, _| {
                w.last().map(|p| p.0 as f64 / 1000.0)
            }),
            "ts_of_first_over_time" => self.over_time(arg(0)?, t, false, |w, _, _| {
                w.first().map(|p| p.0 as f64 / 1000.0)
            }),
            "quantile_over_time" => {
                let q = self.scalar_arg(arg(0)?, t)?;
                self.annotations.check_quantile(q, arg(0)?);
                self.over_time(arg(1)?, t, false, |w, _, _| {
                    let mut vals: Vec<f64> = w.iter().map(|p| p.1).collect();
                    Some(quantile(q, &mut vals))
                })
            }
            "double_exponential_smoothing" | "holt_winters" => {
                let sf = self.scalar_arg(arg(1)?, t)?;
                let tf = self.scalar_arg(arg(2)?, t)?;
                if sf <= 0.0 || sf >= 1.0 || sf.is_nan() {
                    return Err(Error::Execution(format!(
                        "invalid smoothing factor. Expected: 0 < sf < 1, got: {sf:.6}"
                    )));
                }
                if tf <= 0.0 || tf >= 1.0 || tf.is_nan() {
                    return Err(Error::Execution(format!(
                        "invalid trend factor. Expected: 0 < tf < 1, got: {tf:.6}"
                    )));
                }
                self.over_time(arg(0)?, t, false, |w, _, _| des(w, sf, tf))
            }
            "absent_over_time" => {
                let mut any = false;
                self.windows(arg(0)?, t, |_, _, _, _, _| any = true)?;
                Ok(Value::Vector(if any {
                    Vec::new()
                } else {
                    vec![self.absent_sample(arg(0)?, t)?]
                }))
            }
            "absent" => {
                let v = self.vector_arg(arg(0)?, t)?;
                Ok(Value::Vector(if v.is_empty() {
                    vec![self.absent_sample(arg(0)?, t)?]
                } else {
                    Vec::new()
                }))
            }
            "time" => Ok(Value::Scalar(t as f64 / 1000.0)),
            "pi" => Ok(Value::Scalar(std::f64::consts::PI)),
            "vector" => {
                let v = self.scalar_arg(arg(0)?, t)?;
                Ok(Value::Vector(vec![Sample {
                    metric: Arc::new(Labels::new()),
                    t,
                    v,
                    drop_name: false,
                }]))
            }
            "scalar" => {
                let v = self.vector_arg(arg(0)?, t)?;
                Ok(Value::Scalar(if v.len() == 1 { v[0].v } else { f64::NAN }))
            }
            "timestamp" => {
                let mut v = self.vector_arg(arg(0)?, t)?;
                for s in &mut v {
                    s.v = s.t as f64 / 1000.0;
                    s.t = t;
                    s.drop_name = true;
                }
                Ok(Value::Vector(v))
            }
            "sort" | "sort_desc" => {
                self.sort_in_range(c);
                let mut v = self.vector_arg(arg(0)?, t)?;
                let desc = name == "sort_desc";
                v.sort_by(|a, b| {
                    use std::cmp::Ordering::*;
                    match (a.v.is_nan(), b.v.is_nan()) {
                        (true, true) => Equal,
                        (true, false) => Greater,
                        (false, true) => Less,
                        _ if desc => b.v.partial_cmp(&a.v).unwrap_or(Equal),
                        _ => a.v.partial_cmp(&b.v).unwrap_or(Equal),
                    }
                });
                Ok(Value::Vector(v))
            }
            "sort_by_label" | "sort_by_label_desc" => {
                self.sort_in_range(c);
                let mut v = self.vector_arg(arg(0)?, t)?;
                let mut names = Vec::new();
                for a in &args[1..] {
                    names.push(Self::string_arg(a)?);
                }
                let desc = name == "sort_by_label_desc";
                v.sort_by(|a, b| {
                    let mut ord = std::cmp::Ordering::Equal;
                    for n in &names {
                        ord = natural_cmp(
                            a.metric.get(n).unwrap_or(""),
                            b.metric.get(n).unwrap_or(""),
                        );
                        if ord.is_ne() {
                            break;
                        }
                    }
                    if ord.is_eq() {
                        ord = a.metric.cmp(&b.metric);
                    }
                    if desc { ord.reverse() } else { ord }
                });
                Ok(Value::Vector(v))
            }
            "clamp" | "clamp_min" | "clamp_max" => {
                let mut v = self.vector_arg(arg(0)?, t)?;
                let (lo, hi) = match name {
                    "clamp" => (self.scalar_arg(arg(1)?, t)?, self.scalar_arg(arg(2)?, t)?),
                    "clamp_min" => (self.scalar_arg(arg(1)?, t)?, f64::INFINITY),
                    _ => (f64::NEG_INFINITY, self.scalar_arg(arg(1)?, t)?),
                };
                if name == "clamp" && hi < lo {
                    return Ok(Value::Vector(Vec::new()));
                }
                for s in &mut v {
                    s.v = match name {
                        "clamp" => go_max(lo, go_min(hi, s.v)),
                        "clamp_min" => go_max(s.v, lo),
                        _ => go_min(s.v, hi),
                    };
                    s.t = t;
                    s.drop_name = true;
                }
                Ok(Value::Vector(v))
            }
            "round" => {
                let mut v = self.vector_arg(arg(0)?, t)?;
                let to = match args.get(1) {
                    Some(a) => self.scalar_arg(a, t)?,
                    None => 1.0,
                };
                let inv = 1.0 / to;
                for s in &mut v {
                    s.v = (s.v * inv + 0.5).floor() / inv;
                    s.t = t;
                    s.drop_name = true;
                }
                Ok(Value::Vector(v))
            }
            "year" | "month" | "day_of_month" | "day_of_week" | "day_of_year" | "days_in_month"
            | "hour" | "minute" => {
                if args.is_empty() {
                    return Ok(Value::Vector(vec![Sample {
                        metric: Arc::new(Labels::new()),
                        t,
                        v: date_part(name, (t / 1000) as f64),
                        drop_name: false,
                    }]));
                }
                let mut v = self.vector_arg(arg(0)?, t)?;
                for s in &mut v {
                    s.v = date_part(name, s.v);
                    s.t = t;
                    s.drop_name = true;
                }
                Ok(Value::Vector(v))
            }
            "label_replace" => self.label_replace(args, t),
            "label_join" => self.label_join(args, t),
            "histogram_quantile" => {
                let q = self.scalar_arg(arg(0)?, t)?;
                self.annotations.check_quantile(q, arg(0)?);
                let v = self.vector_arg(arg(1)?, t)?;
                let notes = &self.annotations;
                let at = annotations::node::<Expr>(arg(1)?);
                Ok(Value::Vector(self.classic_histograms(
                    v,
                    t,
                    arg(1)?,
                    |b, name| {
                        let (v, fixed) = bucket_quantile(q, b);
                        if let Some(m) = fixed {
                            notes.add_monotonicity(
                                monotonicity_message(name),
                                at,
                                annotations::Monotonicity { t, ..m },
                            );
                        }
                        v
                    },
                )))
            }
            "histogram_fraction" => {
                let lo = self.scalar_arg(arg(0)?, t)?;
                let hi = self.scalar_arg(arg(1)?, t)?;
                let v = self.vector_arg(arg(2)?, t)?;
                Ok(Value::Vector(self.classic_histograms(
                    v,
                    t,
                    arg(2)?,
                    |b, _| bucket_fraction(lo, hi, b),
                )))
            }
            n if NATIVE_ONLY.contains(&n) => {
                // Evaluate the arguments (errors still surface); float samples yield nothing.
                for a in args {
                    self.eval(a, t)?;
                }
                Ok(Value::Vector(Vec::new()))
            }
            n => {
                let mut v = self.vector_arg(arg(0)?, t)?;
                if simple(n, 0.0).is_none() {
                    return Err(Error::BadData(format!("function \"{n}\" is not supported")));
                }
                for s in &mut v {
                    s.v = simple(n, s.v).unwrap_or(f64::NAN);
                    s.t = t;
                    s.drop_name = true;
                }
                Ok(Value::Vector(v))
            }
        }
    }

    /// The sample `absent()` returns: labels from the selector's equality matchers.
    fn absent_sample(&self, arg: &Expr, t: i64) -> Result<Sample> {
        let vs = match unwrap_parens(arg) {
            Expr::VectorSelector(vs) => Some(vs),
            Expr::MatrixSelector(m) => Some(&m.vs),
            _ => None,
        };
        let mut labels = Labels::new();
        if let Some(vs) = vs {
            let ms = selector_matchers(vs)?;
            let mut seen: HashMap<&str, usize> = HashMap::new();
            for m in &ms {
                *seen.entry(m.name.as_str()).or_default() += 1;
            }
            for m in &ms {
                if m.name != METRIC_NAME
                    && m.op == vigil_model::MatchOp::Eq
                    && seen.get(m.name.as_str()) == Some(&1)
                {
                    labels.set(&m.name, &m.value);
                }
            }
        }
        Ok(Sample {
            metric: Arc::new(labels),
            t,
            v: 1.0,
            drop_name: false,
        })
    }

    fn label_replace(&self, args: &[Box<Expr>], t: i64) -> Result<Value> {
        if args.len() != 5 {
            return Err(Error::BadData("label_replace() takes 5 arguments".into()));
        }
        let dst = Self::string_arg(&args[1])?;
        let repl = Self::string_arg(&args[2])?;
        let src = Self::string_arg(&args[3])?;
        let re_s = Self::string_arg(&args[4])?;
        let re = regex::Regex::new(&format!("^(?s:{re_s})$")).map_err(|_| {
            Error::Execution(format!(
                "invalid regular expression in label_replace(): {re_s}"
            ))
        })?;
        if !valid_label_name(&dst) {
            return Err(Error::Execution(format!(
                "invalid destination label name in label_replace(): {dst}"
            )));
        }
        let mut v = self.vector_arg(&args[0], t)?;
        for s in &mut v {
            let sv = s.metric.get(&src).unwrap_or("");
            if let Some(caps) = re.captures(sv) {
                let mut res = String::new();
                caps.expand(&repl, &mut res);
                let mut l = (*s.metric).clone();
                l.set(&dst, &res);
                s.metric = Arc::new(l);
                if dst == METRIC_NAME {
                    s.drop_name = false;
                }
            }
        }
        Ok(Value::Vector(v))
    }

    fn label_join(&self, args: &[Box<Expr>], t: i64) -> Result<Value> {
        if args.len() < 3 {
            return Err(Error::BadData(
                "label_join() takes at least 3 arguments".into(),
            ));
        }
        let dst = Self::string_arg(&args[1])?;
        let sep = Self::string_arg(&args[2])?;
        let mut srcs = Vec::new();
        for a in &args[3..] {
            let s = Self::string_arg(a)?;
            if !valid_label_name(&s) {
                return Err(Error::Execution(format!(
                    "invalid source label name in label_join(): {s}"
                )));
            }
            srcs.push(s);
        }
        if !valid_label_name(&dst) {
            return Err(Error::Execution(format!(
                "invalid destination label name in label_join(): {dst}"
            )));
        }
        let mut v = self.vector_arg(&args[0], t)?;
        for s in &mut v {
            let joined = srcs
                .iter()
                .map(|n| s.metric.get(n).unwrap_or(""))
                .collect::<Vec<_>>()
                .join(&sep);
            let mut l = (*s.metric).clone();
            l.set(&dst, &joined);
            s.metric = Arc::new(l);
            if dst == METRIC_NAME {
                s.drop_name = false;
            }
        }
        Ok(Value::Vector(v))
    }
}

/// Prometheus 3 accepts any non-empty UTF-8 label name; names outside the legacy charset are
/// still valid. Reject only the empty name and control characters.
fn valid_label_name(s: &str) -> bool {
    is_valid_label_name(s) || (!s.is_empty() && !s.chars().any(char::is_control))
}

/// Natural ordering: digit runs compare numerically.
fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let (mut ai, mut bi) = (a.char_indices().peekable(), b.char_indices().peekable());
    loop {
        match (ai.peek().copied(), bi.peek().copied()) {
            (None, None) => return std::cmp::Ordering::Equal,
            (None, _) => return std::cmp::Ordering::Less,
            (_, None) => return std::cmp::Ordering::Greater,
            (Some((_, ca)), Some((_, cb))) if ca.is_ascii_digit() && cb.is_ascii_digit() => {
                let mut na = String::new();
                while let Some(&(_, c)) = ai.peek().filter(|(_, c)| c.is_ascii_digit()) {
                    na.push(c);
                    ai.next();
                }
                let mut nb = String::new();
                while let Some(&(_, c)) = bi.peek().filter(|(_, c)| c.is_ascii_digit()) {
                    nb.push(c);
                    bi.next();
                }
                let (ta, tb) = (na.trim_start_matches('0'), nb.trim_start_matches('0'));
                let ord = ta.len().cmp(&tb.len()).then(ta.cmp(tb));
                if ord.is_ne() {
                    return ord;
                }
            }
            (Some((_, ca)), Some((_, cb))) => {
                if ca != cb {
                    return ca.cmp(&cb);
                }
                ai.next();
                bi.next();
            }
        }
    }
}

/// The forced-monotonicity info's message for histogram `name` (empty: no name).
fn monotonicity_message(name: &str) -> String {
    let mut m = String::from(
        "input to histogram_quantile needed to be fixed for monotonicity (see https://prometheus.io/docs/prometheus/latest/querying/functions/#histogram_quantile)",
    );
    if !name.is_empty() {
        m.push_str(&format!(" for metric name {name:?}"));
    }
    m
}

/// Whether a metric name is a counter's by Prometheus' naming convention.
fn counter_name(n: &str) -> bool {
    ["_total", "_sum", "_count", "_bucket"]
        .iter()
        .any(|s| n.ends_with(s))
}

impl Evaluator<'_> {
    /// "metric might not be a counter" for each metric name among `rate`'s / `increase`'s
    /// results that does not end like a counter's (`arg`: the range argument).
    fn check_counter_names(&self, arg: &Expr, v: &Value) {
        let Value::Vector(v) = v else { return };
        // Read grouped for an aggregation: the groups' labels carry the names.
        let grouped = self.grouped.borrow();
        let names: Vec<&str> = match grouped.as_ref() {
            Some((_, groups)) if v.is_empty() => groups
                .iter()
                .map(|(l, _)| l.metric_name().unwrap_or(""))
                .collect(),
            _ => Vec::new(),
        };
        if v.is_empty() && names.is_empty() {
            return;
        }
        let raise = |n: &str| {
            if !n.is_empty() && !counter_name(n) {
                self.annotations.add(
                    Kind::Info,
                    format!(
                        "metric might not be a counter, name does not end in _total/_sum/_count/_bucket: {n:?}"
                    ),
                    annotations::node(arg),
                );
            }
        };
        // One name for every series: checked once.
        if let Expr::MatrixSelector(m) = unwrap_parens(arg)
            && let Some(n) = crate::eval::fixed_name(&m.vs)
        {
            raise(n);
            return;
        }
        let mut seen: Option<&str> = None;
        let all = v
            .iter()
            .map(|s| s.metric.metric_name().unwrap_or(""))
            .chain(names.iter().copied());
        for n in all {
            if seen != Some(n) {
                raise(n);
                seen = Some(n);
            }
        }
    }

    /// "sort is ineffective for range queries" when `c` (a sort) runs in a range query.
    fn sort_in_range(&self, c: &Call) {
        if self.start != self.end {
            self.annotations.add(
                Kind::Warning,
                "sort is ineffective for range queries since results are always ordered by labels"
                    .into(),
                annotations::node(c),
            );
        }
    }

    /// Classic-bucket histogram functions: groups `le` buckets by their other labels (the
    /// metric name included until the end of the query, so two histograms differing only by
    /// name collide there, as in Prometheus) and applies `f` to each group (with the
    /// histogram's metric name). A sample without a valid `le` is skipped with a warning
    /// about `arg`.
    fn classic_histograms(
        &self,
        v: Vec<Sample>,
        t: i64,
        arg: &Expr,
        mut f: impl FnMut(&mut [(f64, f64)], &str) -> f64,
    ) -> Vec<Sample> {
        let mut groups: HashMap<Labels, Vec<(f64, f64)>> = HashMap::new();
        let mut order: Vec<Labels> = Vec::new();
        for s in v {
            let le = s.metric.get("le").unwrap_or("");
            let Some(ub) = parse_le(le) else {
                let mut m =
                    format!("bucket label \"le\" is missing or has a malformed value of {le:?}");
                if let Some(n) = s.metric.metric_name().filter(|n| !n.is_empty()) {
                    m.push_str(&format!(" for metric name {n:?}"));
                }
                self.annotations
                    .add(Kind::Warning, m, annotations::node(arg));
                continue;
            };
            let mut key = (*s.metric).clone();
            key.remove("le");
            let e = groups.entry(key.clone()).or_insert_with(|| {
                order.push(key);
                Vec::new()
            });
            e.push((ub, s.v));
        }
        let mut out = Vec::with_capacity(order.len());
        for key in order {
            let mut buckets = groups.remove(&key).unwrap_or_default();
            let v = f(&mut buckets, key.metric_name().unwrap_or(""));
            out.push(Sample {
                metric: Arc::new(key),
                t,
                v,
                drop_name: true,
            });
        }
        out
    }
}

fn parse_le(s: &str) -> Option<f64> {
    match s.trim() {
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        other => other.parse().ok(),
    }
}

fn almost_equal(a: f64, b: f64, eps: f64) -> bool {
    const MIN_NORMAL: f64 = f64::MIN_POSITIVE;
    if a == b {
        return true;
    }
    let abs_sum = a.abs() + b.abs();
    let diff = (a - b).abs();
    if a == 0.0 || b == 0.0 || abs_sum < MIN_NORMAL {
        return diff < eps * MIN_NORMAL;
    }
    diff / abs_sum.min(f64::MAX) < eps
}

/// Cumulative buckets made monotonic, and where that had to force decreasing counts up.
type PreparedBuckets = (Vec<(f64, f64)>, Option<annotations::Monotonicity>);

/// Sorts, coalesces and makes cumulative counts monotonic; `None` without a `+Inf` bucket.
/// Also says where decreasing counts had to be forced up (not mere rounding noise): the
/// lowest and highest bucket fixed and the largest decrease.
fn prepare_buckets(buckets: &mut [(f64, f64)]) -> Option<PreparedBuckets> {
    buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    match buckets.last() {
        Some(b) if b.0 == f64::INFINITY => {}
        _ => return None,
    }
    // Coalesce equal upper bounds.
    let mut co: Vec<(f64, f64)> = Vec::with_capacity(buckets.len());
    for &(ub, c) in buckets.iter() {
        match co.last_mut() {
            Some(last) if last.0 == ub => last.1 += c,
            _ => co.push((ub, c)),
        }
    }
    // Monotonicity: ignore tiny deltas and decreases.
    let mut fixed: Option<annotations::Monotonicity> = None;
    let mut prev = co[0].1;
    for b in co.iter_mut().skip(1) {
        let curr = b.1;
        if curr == prev {
            continue;
        }
        if almost_equal(prev, curr, 1e-12) {
            b.1 = prev;
            continue;
        }
        if curr < prev {
            b.1 = prev;
            let m = fixed.get_or_insert(annotations::Monotonicity {
                t: 0,
                min_bucket: f64::INFINITY,
                max_bucket: f64::NEG_INFINITY,
                max_diff: 0.0,
            });
            m.min_bucket = m.min_bucket.min(b.0);
            m.max_bucket = m.max_bucket.max(b.0);
            m.max_diff = m.max_diff.max(prev - curr);
            continue;
        }
        prev = curr;
    }
    Some((co, fixed))
}

/// The fraction of observations between `lower` and `upper`, interpolating linearly inside
/// finite buckets (the first bucket starts at 0 when its upper bound is positive).
fn bucket_fraction(lower: f64, upper: f64, buckets: &mut [(f64, f64)]) -> f64 {
    let Some((co, _)) = prepare_buckets(buckets) else {
        return f64::NAN;
    };
    let total = co[co.len() - 1].1;
    if total == 0.0 || lower.is_nan() || upper.is_nan() {
        return f64::NAN;
    }
    if lower >= upper {
        return 0.0;
    }
    let mut sum = 0.0;
    let mut prev_cum = 0.0;
    for (i, &(ub, cum)) in co.iter().enumerate() {
        let lb = if i == 0 {
            if ub > 0.0 { 0.0 } else { f64::NEG_INFINITY }
        } else {
            co[i - 1].0
        };
        let count = cum - prev_cum;
        prev_cum = cum;
        if ub <= lower || lb >= upper {
            continue;
        }
        if lower <= lb && upper >= ub {
            sum += count;
        } else if ub == f64::INFINITY || lb == f64::NEG_INFINITY {
            // No interpolation in an infinitely wide bucket: it counts whole when the range
            // reaches its infinite end, else not at all.
            if (ub == f64::INFINITY && upper == f64::INFINITY)
                || (lb == f64::NEG_INFINITY && lower == f64::NEG_INFINITY)
            {
                sum += count;
            }
        } else {
            let a = lower.max(lb);
            let b = upper.min(ub);
            sum += count * (b - a) / (ub - lb);
        }
    }
    sum / total
}

/// The `q` quantile of classic buckets, and where counts had to be forced monotonic.
pub(crate) fn bucket_quantile(
    q: f64,
    buckets: &mut [(f64, f64)],
) -> (f64, Option<annotations::Monotonicity>) {
    if q.is_nan() {
        return (f64::NAN, None);
    }
    if q < 0.0 {
        return (f64::NEG_INFINITY, None);
    }
    if q > 1.0 {
        return (f64::INFINITY, None);
    }
    let Some((co, fixed)) = prepare_buckets(buckets) else {
        return (f64::NAN, None);
    };
    if co.len() < 2 {
        return (f64::NAN, fixed);
    }
    let observations = co[co.len() - 1].1;
    if observations == 0.0 {
        return (f64::NAN, fixed);
    }
    let mut rank = q * observations;
    let b = co[..co.len() - 1].partition_point(|x| x.1 < rank);
    if b == co.len() - 1 {
        return (co[co.len() - 2].0, fixed);
    }
    if b == 0 && co[0].0 <= 0.0 {
        return (co[0].0, fixed);
    }
    let (mut start, end, mut count) = (0.0, co[b].0, co[b].1);
    if b > 0 {
        start = co[b - 1].0;
        count -= co[b - 1].1;
        rank -= co[b - 1].1;
    }
    (start + (end - start) * (rank / count), fixed)
}

#[cfg(test)]
mod tests {
    use super::{par_ranges, quantile};

    /// The quantile by sorting, as Prometheus computes it.
    fn sorted_quantile(q: f64, values: &[f64]) -> f64 {
        let mut v = values.to_vec();
        v.sort_by(|a, b| match (a.is_nan(), b.is_nan()) {
            (true, true) => std::cmp::Ordering::Equal,
            (true, false) => std::cmp::Ordering::Less,
            (false, true) => std::cmp::Ordering::Greater,
            _ => a.partial_cmp(b).unwrap(),
        });
        let n = v.len() as f64;
        let rank = q * (n - 1.0);
        let lower = rank.floor().max(0.0);
        let upper = (lower + 1.0).min(n - 1.0);
        let weight = rank - rank.floor();
        v[lower as usize] * (1.0 - weight) + v[upper as usize] * weight
    }

    #[test]
    fn quantile_by_selection_equals_quantile_by_sorting() {
        // A small deterministic generator: values from a pool with ties, NaN and infinities.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let pool = [
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            0.0,
            -0.0,
            1.0,
            1.0,
            -2.5,
            1e300,
            7.25,
        ];
        for case in 0..20_000 {
            let n = 1 + (next() % 40) as usize;
            let vals: Vec<f64> = (0..n)
                .map(|_| match next() % 3 {
                    0 => pool[(next() % pool.len() as u64) as usize],
                    _ => (next() % 1000) as f64 / 7.0 - 50.0,
                })
                .collect();
            let q = match case % 5 {
                0 => 0.0,
                1 => 1.0,
                2 => 0.5,
                _ => (next() % 10_001) as f64 / 10_000.0,
            };
            let want = sorted_quantile(q, &vals);
            let got = quantile(q, &mut vals.clone());
            assert!(
                want.to_bits() == got.to_bits() || (want.is_nan() && got.is_nan()) || want == got,
                "q = {q}, values {vals:?}: {got} != {want}"
            );
        }
        assert!(quantile(0.5, &mut []).is_nan());
        assert_eq!(quantile(-1.0, &mut [1.0]), f64::NEG_INFINITY);
        assert_eq!(quantile(2.0, &mut [1.0]), f64::INFINITY);
    }

    #[test]
    fn parallel_ranges_cover_every_item_once_in_order() {
        for n in [0, 1, 255, 256, 511, 512, 1000, 1023, 4097] {
            let got = par_ranges(n, 256, |r| r.map(|i| i * 3).collect()).unwrap();
            assert_eq!(got, (0..n).map(|i| i * 3).collect::<Vec<_>>(), "n = {n}");
        }
    }
}

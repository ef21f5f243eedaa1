//! Answering `*_over_time` from the store's 5 m / 1 h rollups where that gives the raw answer.
//!
//! A rollup point holds min, max, sum, count and last of the samples in `(end − res, end]`,
//! the same left-open shape as a PromQL range window. A window `(lo, r]` is cut into a raw
//! head `(lo, A]`, whole buckets `(A, B]` and a raw tail `(B, r]`, where `A` is `lo` rounded
//! up and `B` is `r` rounded down to the resolution (and kept before the point where the
//! store's rollups stop holding every sample). `min`, `max`, `count`, `last` and `present`
//! of the pieces are exactly those of the raw window; `sum` and `avg` add bucket sums
//! instead of samples, so they agree up to floating-point rounding. Only the head and tail
//! are decoded from raw chunks — for windows aligned to the resolution (as Grafana aligns
//! range queries) there is no head, and the tail is the part the rollups do not cover yet.

use std::hash::BuildHasher;

use promql_parser::parser::{Expr, MatrixSelector, VectorSelector};
use vigil_model::{Labels, Matcher, is_stale_marker};
use vigil_tsdb::{RollupFields, RollupPoint};

use crate::eval::{Evaluator, Loaded, ms, offset_ms, unwrap_parens, window};
use crate::functions::kahan_inc;
use crate::{Error, Result, Sample, StoredSeries, Value};

/// The range functions rollups can answer.
pub(crate) const FUNCS: [&str; 7] = [
    "avg_over_time",
    "count_over_time",
    "last_over_time",
    "max_over_time",
    "min_over_time",
    "present_over_time",
    "sum_over_time",
];

/// Rollup resolutions, coarsest first (ms).
const RESOLUTIONS: [i64; 2] = [3_600_000, 300_000];

/// Scrape interval assumed when weighing raw samples against rollup points (ms).
const ASSUMED_INTERVAL_MS: i64 = 10_000;

/// How one range selector's windows are read: which raw intervals, which buckets.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Split {
    /// Rollup resolution, ms.
    pub res: i64,
    /// The newest bucket end read from the rollups.
    pub last_whole: i64,
    /// Raw samples after this time complete the bucket ending at `last_whole`.
    pub raw_after: i64,
    /// Raw intervals to load, `(after, upto]`, oldest first, disjoint.
    pub raw: Vec<(i64, i64)>,
    /// Bucket ends to load, `(after, upto]`.
    pub buckets: (i64, i64),
}

fn floor_to(t: i64, res: i64) -> i64 {
    t.div_euclid(res) * res
}

fn ceil_to(t: i64, res: i64) -> i64 {
    match t.rem_euclid(res) {
        0 => t,
        r => t.saturating_sub(r).saturating_add(res),
    }
}

/// The newest bucket end to read and the time after which raw samples are read, for rollups
/// holding every sample before `cover`: the last whole bucket and its end; at a `clean`
/// boundary (no rollup point holds a sample from `cover` on) the bucket `cover` cuts, read
/// with the raw samples from `cover` on.
fn edge((cover, clean): (i64, bool), res: i64) -> (i64, i64) {
    if clean {
        (ceil_to(cover, res), cover - 1)
    } else {
        let w = floor_to(cover - 1, res);
        (w, w)
    }
}

/// Plans reading windows `(r − range, r]` for `r` = `first`, `first + step`, …, `last`
/// (`step` 0: one window) from rollups at `res` that hold every sample before `cover`.
/// `None` when some window would get no whole bucket or raw reading would save nothing.
pub(crate) fn plan_split(
    first: i64,
    last: i64,
    step: i64,
    range: i64,
    res: i64,
    cover: (i64, bool),
) -> Option<Split> {
    if range < 2 * res || last < first || cover.0 == i64::MIN {
        return None;
    }
    let (last_whole, raw_after) = edge(cover, res);
    let b = |r: i64| floor_to(r, res).min(last_whole);
    let (lo_first, lo_last) = (first.checked_sub(range)?, last.checked_sub(range)?);
    // Windows only move forward: if the first has no whole bucket, none has. Later windows
    // without one (past the cover) are read from the raw tail alone.
    if ceil_to(lo_first, res) >= b(first) {
        return None;
    }
    let steps_aligned = first == last || step % res == 0;
    let mut raw = Vec::new();
    if !(steps_aligned && lo_first % res == 0) {
        raw.push((lo_first, ceil_to(lo_last, res)));
    }
    let tail_from = match if steps_aligned && first % res == 0 {
        last_whole.min(floor_to(last, res))
    } else {
        b(first)
    } {
        // The bucket the cover cuts is read up to the cover; raw samples from there.
        t if t == last_whole => raw_after,
        t => t,
    };
    if tail_from < last {
        if let Some(&(_, head_end)) = raw.first()
            && head_end > tail_from
        {
            return None;
        }
        raw.push((tail_from, last));
    }
    let raw_len: i64 = raw.iter().map(|(a, b)| b - a).sum();
    if raw_len.saturating_mul(2) > last - lo_first {
        return None;
    }
    Some(Split {
        res,
        last_whole,
        raw_after,
        raw,
        buckets: (ceil_to(lo_first, res), b(last)),
    })
}

/// What reading `raw_ms` of raw samples and the buckets ending in `buckets` costs, counting
/// raw samples at one per [`ASSUMED_INTERVAL_MS`] and [`POINT_COST`] per rollup point.
fn read_cost(raw_ms: i64, buckets: (i64, i64), res: i64) -> i64 {
    raw_ms / ASSUMED_INTERVAL_MS + POINT_COST * ((buckets.1 - buckets.0) / res)
}

/// What reading and combining one rollup point costs against one raw sample: a point is
/// eleven numbers, decoded column by column, assembled and sorted.
const POINT_COST: i64 = 3;

/// The cheaper split over the resolutions the storage can serve, by [`read_cost`].
pub(crate) fn choose_split(
    first: i64,
    last: i64,
    step: i64,
    range: i64,
    cover: impl Fn(i64) -> Option<(i64, bool)>,
) -> Option<Split> {
    RESOLUTIONS
        .iter()
        .filter(|&&res| range >= 2 * res)
        .filter_map(|&res| plan_split(first, last, step, range, res, cover(res)?))
        .min_by_key(|s| read_cost(s.raw.iter().map(|(a, b)| b - a).sum(), s.buckets, s.res))
}

/// How a range query's windows are read as a table (see [`table_plan`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct TablePlan {
    /// Rollup resolution, ms.
    pub res: i64,
    /// The newest bucket end read from the rollups.
    pub last_whole: i64,
    /// Raw samples after this time complete the bucket ending at `last_whole`.
    pub raw_after: i64,
    /// Bucket ends read, `[from, to]`.
    pub buckets: (i64, i64),
    /// Raw samples read, `[from, to]` (empty when `from > to`).
    pub raw: (i64, i64),
}

/// Plans a range query's windows `(r − range, r]`, `r` = `first + k·step` for `k` below
/// `steps`, as whole rollup buckets up to the rollups' cover and raw samples after it. Only
/// for windows on bucket boundaries (`first`, `step` and `range` multiples of the
/// resolution — Grafana aligns range queries to their step), so that no raw head is needed;
/// `None` when no resolution fits or the rollups would save too little.
pub(crate) fn table_plan(
    first: i64,
    steps: i64,
    step: i64,
    range: i64,
    resolutions: &[i64],
    cover: impl Fn(i64) -> Option<(i64, bool)>,
) -> Option<TablePlan> {
    let last = first.checked_add(steps.checked_sub(1)?.checked_mul(step)?)?;
    let lo_first = first.checked_sub(range)?;
    resolutions
        .iter()
        .filter(|&&res| {
            range >= res && range % res == 0 && step % res == 0 && first.rem_euclid(res) == 0
        })
        .filter_map(|&res| {
            let c = cover(res)?;
            c.0.checked_sub(1)?;
            let (last_whole, raw_after) = edge(c, res);
            if last_whole <= lo_first {
                return None;
            }
            let raw_from = lo_first.max(raw_after);
            let raw_len = last.saturating_sub(raw_from).max(0);
            if raw_len.saturating_mul(2) > last - lo_first {
                return None;
            }
            Some(TablePlan {
                res,
                last_whole,
                raw_after,
                buckets: (lo_first + 1, last.min(last_whole)),
                raw: (raw_from + 1, last),
            })
        })
        .min_by_key(|p| read_cost((p.raw.1 - p.raw.0 + 1).max(0), p.buckets, p.res))
}

/// What a rollup table computes for each window.
#[derive(Debug, Clone, Copy)]
pub(crate) enum StepKind<'a> {
    /// One of [`FUNCS`].
    Over(&'a str),
    /// `rate` / `increase` (`counter`), `delta`.
    Change { counter: bool, rate: bool },
    /// An instant selector: the newest sample in the window unless a staleness marker.
    Latest,
}

impl StepKind<'_> {
    /// The table kind for function `name`, if rollups can answer it.
    pub(crate) fn of(name: &str) -> Option<StepKind<'_>> {
        match name {
            "rate" => Some(StepKind::Change {
                counter: true,
                rate: true,
            }),
            "increase" => Some(StepKind::Change {
                counter: true,
                rate: false,
            }),
            "delta" => Some(StepKind::Change {
                counter: false,
                rate: false,
            }),
            f if FUNCS.contains(&f) => Some(StepKind::Over(f)),
            _ => None,
        }
    }

    /// Whether the kind needs the points' edges.
    pub(crate) fn needs_edges(&self) -> bool {
        !matches!(self, StepKind::Over(_))
    }
}

/// The rollup values `kind` reads (time and count always come).
pub(crate) fn fields_of(kind: &StepKind<'_>) -> RollupFields {
    match kind {
        StepKind::Over("avg_over_time" | "sum_over_time") => RollupFields::SUM,
        StepKind::Over("max_over_time") => RollupFields::MAX,
        StepKind::Over("min_over_time") => RollupFields::MIN,
        StepKind::Over("last_over_time") => RollupFields::LAST,
        StepKind::Over(_) => RollupFields::NONE,
        StepKind::Change { .. } => RollupFields::FIRST
            .with(RollupFields::LAST)
            .with(RollupFields::LAST_TS)
            .with(RollupFields::RESETS),
        StepKind::Latest => RollupFields::LAST.with(RollupFields::STALE),
    }
}

/// First and last sample, count and reset correction of a window, gathered from raw
/// samples and whole buckets in time order: what `rate`, `increase` and `delta` need.
#[derive(Default)]
struct Change {
    first: (i64, f64),
    last: (i64, f64),
    samples: usize,
    resets: f64,
}

impl Change {
    fn sample(&mut self, t: i64, v: f64) {
        if self.samples == 0 {
            self.first = (t, v);
        } else if v < self.last.1 {
            self.resets += self.last.1;
        }
        self.last = (t, v);
        self.samples += 1;
    }

    fn bucket(&mut self, p: &RollupPoint) {
        if p.count == 0 {
            return;
        }
        if self.samples == 0 {
            self.first = (p.first_ts, p.first);
        } else if p.first < self.last.1 {
            self.resets += self.last.1;
        }
        self.resets += p.resets;
        self.last = (p.last_ts, p.last);
        self.samples += p.count as usize;
    }

    fn value(&self, counter: bool, rate: bool, lo: i64, hi: i64) -> Option<f64> {
        let run = vigil_tsdb::CounterRun {
            first: self.first,
            last: self.last,
            samples: self.samples,
        };
        let mut result = self.last.1 - self.first.1;
        if counter {
            result += self.resets;
        }
        crate::functions::extrapolate(&run, result, lo, hi, counter, rate)
    }
}

/// One series' values at every step of a [`TablePlan`]: `pts` its rollup points, `raw` its
/// raw samples (staleness markers included), both in time order. `None` when it has none.
#[allow(clippy::too_many_arguments)]
pub(crate) fn step_values(
    kind: StepKind<'_>,
    plan: &TablePlan,
    first: i64,
    step: i64,
    steps: i64,
    range: i64,
    pts: &[RollupPoint],
    raw: &[(i64, f64)],
) -> Option<Vec<Option<f64>>> {
    let mut any = false;
    // Windows only move forward: four cursors, each advanced past what the window excludes.
    let (mut b_lo, mut b_hi, mut r_lo, mut r_hi) = (0usize, 0usize, 0usize, 0usize);
    let vals = (0..steps)
        .map(|k| {
            let r = first + k * step;
            let lo = r - range;
            let (bucket_hi, raw_lo) = (r.min(plan.last_whole), lo.max(plan.raw_after));
            while b_lo < pts.len() && pts[b_lo].ts_ms <= lo {
                b_lo += 1;
            }
            b_hi = b_hi.max(b_lo);
            while b_hi < pts.len() && pts[b_hi].ts_ms <= bucket_hi {
                b_hi += 1;
            }
            while r_lo < raw.len() && raw[r_lo].0 <= raw_lo {
                r_lo += 1;
            }
            r_hi = r_hi.max(r_lo);
            while r_hi < raw.len() && raw[r_hi].0 <= r {
                r_hi += 1;
            }
            let (buckets, samples) = (&pts[b_lo..b_hi], &raw[r_lo..r_hi]);
            let live = samples.iter().filter(|s| !is_stale_marker(s.1));
            let v = match kind {
                StepKind::Over(func) => {
                    let mut acc = Acc::new(func);
                    for p in buckets.iter().filter(|p| p.count > 0) {
                        acc.part(u64::from(p.count), p.sum, p.min, p.max, p.last);
                    }
                    acc.values(live.map(|&(_, v)| v));
                    acc.value()
                }
                StepKind::Change { counter, rate } => {
                    let mut c = Change::default();
                    for p in buckets {
                        c.bucket(p);
                    }
                    for &(t, v) in live {
                        c.sample(t, v);
                    }
                    c.value(counter, rate, lo, r)
                }
                // The newest sample is the newest raw one, else the newest bucket's last.
                StepKind::Latest => match (samples.last(), buckets.last()) {
                    (Some(&(_, v)), _) => (!is_stale_marker(v)).then_some(v),
                    (None, Some(p)) => (p.count > 0 && !p.stale_end).then_some(p.last),
                    _ => None,
                },
            };
            any |= v.is_some();
            v
        })
        .collect();
    any.then_some(vals)
}

/// A series while it is gathered: labels, raw samples of its first raw piece, of the later
/// ones, rollup points.
type Merged = (Labels, Vec<(i64, f64)>, Vec<(i64, f64)>, Vec<RollupPoint>);

/// One selector's rollup points and later raw samples, parallel to its loaded raw series
/// (which hold the first raw piece read: the window's head, or its tail when it has none).
pub(crate) struct RollupLoad {
    pub res: i64,
    pub last_whole: i64,
    pub raw_after: i64,
    pub range: i64,
    pub points: Vec<Vec<RollupPoint>>,
    /// Raw samples after the first piece's (the tail after a head): kept apart, not
    /// appended, which would copy the first piece into a larger buffer.
    pub later: Vec<Vec<(i64, f64)>>,
}

/// Which of [`Acc`]'s running values a function reads: only that one is kept up per sample.
#[derive(Clone, Copy, PartialEq)]
enum Want {
    Sum,
    Min,
    Max,
    /// Count and last only (they are always kept).
    Neither,
}

/// Running combination of raw samples and whole buckets, in time order, for one of [`FUNCS`].
struct Acc<'f> {
    func: &'f str,
    want: Want,
    count: u64,
    sum: f64,
    comp: f64,
    min: Option<f64>,
    max: Option<f64>,
    last: f64,
}

impl<'f> Acc<'f> {
    fn new(func: &'f str) -> Self {
        let want = match func {
            "avg_over_time" | "sum_over_time" => Want::Sum,
            "min_over_time" => Want::Min,
            "max_over_time" => Want::Max,
            _ => Want::Neither,
        };
        Acc {
            func,
            want,
            count: 0,
            sum: 0.0,
            comp: 0.0,
            min: None,
            max: None,
            last: 0.0,
        }
    }

    /// Adds a whole bucket: its count, sum, min, max and last.
    fn part(&mut self, count: u64, sum: f64, min: f64, max: f64, last: f64) {
        self.count += count;
        self.last = last;
        match self.want {
            Want::Sum => (self.sum, self.comp) = kahan_inc(sum, self.sum, self.comp),
            Want::Min => self.min(min),
            Want::Max => self.max(max),
            Want::Neither => {}
        }
    }

    /// `min_over_time`'s rule: NaN only while nothing else was seen.
    fn min(&mut self, v: f64) {
        self.min = Some(
            self.min
                .map_or(v, |m| if v < m || m.is_nan() { v } else { m }),
        );
    }

    fn max(&mut self, v: f64) {
        self.max = Some(
            self.max
                .map_or(v, |m| if v > m || m.is_nan() { v } else { m }),
        );
    }

    /// Adds raw sample values, in time order. One loop per kind, so the choice stays out of
    /// the per-sample loop (calling `part` per sample measured ~8 % slower on a day-long avg).
    fn values(&mut self, vs: impl Iterator<Item = f64>) {
        match self.want {
            Want::Sum => {
                for v in vs {
                    self.count += 1;
                    self.last = v;
                    (self.sum, self.comp) = kahan_inc(v, self.sum, self.comp);
                }
            }
            Want::Min => vs.for_each(|v| {
                self.count += 1;
                self.last = v;
                self.min(v);
            }),
            Want::Max => vs.for_each(|v| {
                self.count += 1;
                self.last = v;
                self.max(v);
            }),
            Want::Neither => vs.for_each(|v| {
                self.count += 1;
                self.last = v;
            }),
        }
    }

    fn samples(&mut self, w: &[(i64, f64)]) {
        self.values(w.iter().map(|&(_, v)| v));
    }

    fn value(&self) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        Some(match self.func {
            "avg_over_time" => (self.sum + self.comp) / self.count as f64,
            "count_over_time" => self.count as f64,
            "last_over_time" => self.last,
            "max_over_time" => self.max?,
            "min_over_time" => self.min?,
            "present_over_time" => 1.0,
            _ => self.sum + self.comp,
        })
    }
}

impl Evaluator<'_> {
    /// Loads a range selector evaluated by one of [`FUNCS`] from rollups plus the raw samples
    /// they do not cover: the series, their rollups and the samples and points loaded.
    /// `None` when rollups would not help (nothing is loaded then).
    pub(crate) fn load_split(
        &self,
        m: &MatrixSelector,
        func: &str,
        matchers: &[Matcher],
        budget: usize,
    ) -> Result<Option<(Vec<Loaded>, RollupLoad, usize)>> {
        let range = ms(m.range);
        let o = offset_ms(&m.vs.offset);
        let (first, last, step) = match self.at_ms(&m.vs.at) {
            Some(a) => (a.saturating_sub(o), a.saturating_sub(o), 0),
            None if self.step <= 0 || self.end <= self.start => (
                self.start.saturating_sub(o),
                self.start.saturating_sub(o),
                0,
            ),
            None => {
                let n = (self.end - self.start) / self.step;
                let first = self.start.saturating_sub(o);
                (first, first.saturating_add(n * self.step), self.step)
            }
        };
        let st = self.storage();
        let Some(split) = choose_split(first, last, step, range, |res| {
            st.rollup_boundary(res, false)
        }) else {
            return Ok(None);
        };
        let (after, upto) = split.buckets;
        let fields = fields_of(&StepKind::of(func).unwrap_or(StepKind::Over(func)));
        let mut read = 0usize;
        let raws = split
            .raw
            .iter()
            .map(|&(after, upto)| {
                let got = st.select(matchers, after + 1, upto, budget.saturating_sub(read))?;
                read += got.iter().map(|s| s.samples.len()).sum::<usize>();
                Ok(got)
            })
            .collect::<Result<Vec<_>>>()?;
        let rollups = st.select_rollups(matchers, after + 1, upto, split.res, fields)?;
        // Series are matched up by their labels, hashed once and never cloned.
        let hasher = hashbrown::DefaultHashBuilder::default();
        let mut index: hashbrown::HashTable<usize> = hashbrown::HashTable::new();
        let mut series: Vec<Merged> = Vec::new();
        // The series' place in `series`, added (without samples or points) if new.
        let mut slot = |labels: Labels, series: &mut Vec<Merged>| -> usize {
            let h = hasher.hash_one(&labels);
            if let Some(&i) = index.find(h, |&i| series[i].0 == labels) {
                return i;
            }
            series.push((labels, Vec::new(), Vec::new(), Vec::new()));
            index.insert_unique(h, series.len() - 1, |&i| hasher.hash_one(&series[i].0));
            series.len() - 1
        };
        let mut loaded = 0usize;
        let over = |n: usize| -> Result<()> {
            if n > budget {
                return Err(Error::TooManySamples(budget));
            }
            Ok(())
        };
        for got in raws {
            for StoredSeries {
                labels,
                mut samples,
            } in got
            {
                samples.retain(|&(_, v)| !is_stale_marker(v));
                loaded += samples.len();
                over(loaded)?;
                let i = slot(labels, &mut series);
                let (_, first, later, _) = &mut series[i];
                // Raw pieces come oldest first, each taken as it is.
                if first.is_empty() {
                    *first = samples;
                } else if later.is_empty() {
                    *later = samples;
                } else {
                    later.extend_from_slice(&samples);
                }
            }
        }
        for (labels, pts) in rollups {
            loaded += pts.len();
            over(loaded)?;
            let i = slot(labels, &mut series);
            series[i].3 = pts;
        }
        let mut data = Vec::with_capacity(series.len());
        let mut points = Vec::with_capacity(series.len());
        let mut later = Vec::with_capacity(series.len());
        for (labels, first, more, pts) in series {
            if first.is_empty() && pts.is_empty() {
                continue;
            }
            data.push(Loaded {
                metric: std::sync::Arc::new(labels),
                points: first,
            });
            points.push(pts);
            later.push(more);
        }
        let rl = RollupLoad {
            res: split.res,
            last_whole: split.last_whole,
            raw_after: split.raw_after,
            range,
            points,
            later,
        };
        Ok(Some((data, rl, loaded)))
    }

    /// The rollup table plan (see [`table_plan`]) for windows of `range` over selector `vs`
    /// at this range query's steps; `None` in instant queries, with `@`, or when no plan fits.
    pub(crate) fn table_plan(
        &self,
        vs: &VectorSelector,
        range: i64,
        edges: bool,
    ) -> Option<TablePlan> {
        let key = (vs as *const VectorSelector as usize, edges);
        if let Some(p) = self.table_plans.borrow().get(&key) {
            return *p;
        }
        let plan = (self.step > 0 && self.end > self.start && vs.at.is_none())
            .then(|| {
                let first = self.start.checked_sub(offset_ms(&vs.offset))?;
                let steps = (self.end - self.start) / self.step + 1;
                let st = self.storage();
                table_plan(first, steps, self.step, range, &RESOLUTIONS, |res| {
                    st.rollup_boundary(res, edges)
                })
            })
            .flatten();
        self.table_plans.borrow_mut().insert(key, plan);
        plan
    }

    /// A deferred selector's values at every step of this range query, computed as `kind`
    /// over windows of `range` from rollups and the raw samples after them; `None` when the
    /// selector is not deferred or no rollup table plan fits (see [`table_plan`]).
    pub(crate) fn rollup_steps(
        &self,
        vs: &VectorSelector,
        range: i64,
        kind: StepKind<'_>,
    ) -> Option<Result<std::sync::Arc<crate::eval::StepTable>>> {
        if !self.is_deferred(vs) {
            return None;
        }
        let plan = self.table_plan(vs, range, kind.needs_edges())?;
        let first = self.start - offset_ms(&vs.offset);
        let (step, steps) = (self.step, (self.end - self.start) / self.step + 1);
        let st = self.storage();
        self.table_with(vs, |matchers, _, _, budget, keep, held| {
            let f = |pts: &[RollupPoint], raw: &mut Vec<(i64, f64)>| {
                held(step_values(
                    kind, &plan, first, step, steps, range, pts, raw,
                )?)
            };
            let fields = fields_of(&kind);
            st.select_rollup_steps(
                matchers,
                plan.res,
                fields,
                plan.buckets,
                plan.raw,
                budget,
                keep,
                &f,
            )
        })
    }

    /// Evaluates `func` (one of [`FUNCS`]) at `t` when its argument was loaded with
    /// rollups; `None` when it was not.
    pub(crate) fn over_rollups(&self, func: &str, arg: &Expr, t: i64) -> Result<Option<Value>> {
        let Expr::MatrixSelector(m) = unwrap_parens(arg) else {
            return Ok(None);
        };
        let Some(rl) = self.rollups_of(&m.vs) else {
            return Ok(None);
        };
        let r = self.ref_time(&m.vs.at, &m.vs.offset, t);
        let lo = r.saturating_sub(rl.range);
        // Windows past the rollups' cover (a >= b) lie wholly in the loaded raw tail.
        let (a, b) = match (ceil_to(lo, rl.res), floor_to(r, rl.res).min(rl.last_whole)) {
            (a, b) if a < b => (a, b),
            _ => (r, r),
        };
        let keep_name = func == "last_over_time";
        let loaded = self.loaded(&m.vs);
        // Each series is independent: many are split over the cores.
        let out = crate::functions::par_ranges(loaded.len(), 128, |part| {
            let mut out = Vec::with_capacity(part.len());
            let series = loaded[part.clone()].iter().zip(&rl.points[part.clone()]);
            for ((s, pts), later) in series.zip(&rl.later[part]) {
                let mut acc = Acc::new(func);
                // Raw samples in (from, to], from both pieces, in time order.
                let raw = |acc: &mut Acc, from: i64, to: i64| {
                    acc.samples(window(&s.points, from, to));
                    acc.samples(window(later, from, to));
                };
                raw(&mut acc, lo, a);
                let from = pts.partition_point(|p| p.ts_ms <= a);
                let to = pts.partition_point(|p| p.ts_ms <= b);
                for p in pts[from..to.max(from)].iter().filter(|p| p.count > 0) {
                    acc.part(u64::from(p.count), p.sum, p.min, p.max, p.last);
                }
                // After the bucket the cover cuts, raw samples from the cover on.
                let raw_lo = if b == rl.last_whole && a < b {
                    rl.raw_after
                } else {
                    b
                };
                raw(&mut acc, raw_lo, r);
                if let Some(v) = acc.value() {
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
        Ok(Some(Value::Vector(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M5: i64 = 300_000;
    const H: i64 = 3_600_000;
    const DAY: i64 = 24 * H;

    #[test]
    fn an_aligned_instant_window_reads_only_the_uncovered_tail() {
        let cover = 10 * DAY + 2 * H;
        let r = 10 * DAY + 5 * H;
        let s = plan_split(r, r, 0, DAY, H, (cover, false)).unwrap();
        assert_eq!(s.raw, vec![(10 * DAY + H, r)]);
        assert_eq!(s.buckets, (9 * DAY + 5 * H, 10 * DAY + H));
        assert_eq!(s.last_whole, 10 * DAY + H);
    }

    #[test]
    fn a_clean_cover_reads_the_bucket_it_cuts_and_raw_samples_from_it() {
        let cover = 10 * DAY + 2 * H;
        let r = 10 * DAY + 5 * H;
        let s = plan_split(r, r, 0, DAY, H, (cover, true)).unwrap();
        assert_eq!((s.last_whole, s.raw_after), (cover, cover - 1));
        assert_eq!(s.raw, vec![(cover - 1, r)]);
        assert_eq!(s.buckets, (9 * DAY + 5 * H, cover));
        // Unaligned: the bucket ending after the cover holds the samples before it.
        let s = plan_split(r, r, 0, DAY, H, (cover + 60_000, true)).unwrap();
        assert_eq!((s.last_whole, s.raw_after), (cover + H, cover + 59_999));
        let t = table_plan(DAY, 24, H, H, &RESOLUTIONS, |_| Some((cover, true))).unwrap();
        assert_eq!((t.last_whole, t.raw_after), (cover, cover - 1));
        assert_eq!(t.raw, (cover, DAY + 23 * H));
    }

    #[test]
    fn an_unaligned_window_reads_a_raw_head_and_tail() {
        let cover = 10 * DAY;
        let r = 10 * DAY + 5 * H + 123_456;
        let s = plan_split(r, r, 0, DAY, M5, (cover, false)).unwrap();
        let lo = r - DAY;
        assert_eq!(s.raw, vec![(lo, ceil_to(lo, M5)), (10 * DAY - M5, r)]);
        assert_eq!(s.buckets, (ceil_to(lo, M5), 10 * DAY - M5));
    }

    #[test]
    fn no_split_when_it_would_not_pay_or_has_no_whole_bucket() {
        // Range shorter than two buckets.
        assert_eq!(plan_split(DAY, DAY, 0, H, H, (DAY, false)), None);
        // Rollups end before the newest window's first whole bucket.
        assert_eq!(
            plan_split(10 * DAY, 10 * DAY, 0, 6 * H, M5, (9 * DAY, false)),
            None
        );
        // Unaligned steps: heads and tails cover everything.
        assert_eq!(
            plan_split(DAY + 7, 2 * DAY + 7, 60_000, H, M5, (3 * DAY, false)),
            None
        );
        // No rollups at all.
        assert_eq!(plan_split(DAY, DAY, 0, 6 * H, M5, (i64::MIN, false)), None);
    }

    #[test]
    fn aligned_range_query_steps_read_raw_only_past_the_cover() {
        let cover = 20 * H + 30 * 60_000;
        let s = plan_split(2 * H, 24 * H, H, H, M5, (cover, false)).unwrap();
        assert_eq!(s.raw, vec![(20 * H + 25 * 60_000, 24 * H)]);
        assert_eq!(s.buckets, (H, 20 * H + 25 * 60_000));
        // Both resolutions cover every window: the coarser one reads fewer points.
        let c = choose_split(2 * H, 24 * H, H, 2 * H, |_| Some((30 * H, false))).unwrap();
        assert_eq!((c.res, c.raw.len()), (H, 0));
        // Where the 1 h rollups stop hours earlier, 5 m reads fewer raw samples.
        let cover = |res: i64| Some((if res == H { 16 * H } else { 20 * H }, false));
        let c = choose_split(2 * H, 24 * H, H, 2 * H, cover).unwrap();
        assert_eq!(c.res, M5);
        // A day-long window off the hour reads up to an hour of raw head and 23 points of
        // 1 h rather than minutes of raw head and 287 points of 5 m (a point costs more).
        let r = 10 * DAY + 5 * H + 59 * 60_000;
        let c = choose_split(r, r, 0, DAY, |_| Some((10 * DAY + 3 * H, false))).unwrap();
        assert_eq!((c.res, c.raw[0]), (H, (r - DAY, 9 * DAY + 6 * H)));
    }

    #[test]
    fn parts_combine_like_the_raw_functions() {
        let raw = [(1, 3.0), (2, f64::NAN), (3, -1.0)];
        let value = |func| {
            let mut acc = Acc::new(func);
            acc.samples(&raw[..1]);
            acc.part(1, f64::NAN, f64::NAN, f64::NAN, f64::NAN);
            acc.samples(&raw[2..]);
            acc.value()
        };
        assert_eq!(value("count_over_time"), Some(3.0));
        assert_eq!(value("max_over_time"), Some(3.0));
        assert_eq!(value("min_over_time"), Some(-1.0));
        assert_eq!(value("last_over_time"), Some(-1.0));
        assert_eq!(value("present_over_time"), Some(1.0));
        assert!(value("sum_over_time").unwrap().is_nan());
        assert!(value("avg_over_time").unwrap().is_nan());
        for func in FUNCS {
            assert_eq!(Acc::new(func).value(), None, "{func}");
        }
        // NaN first: min and max take the next number.
        let mut acc = Acc::new("min_over_time");
        acc.values([f64::NAN, 2.0, 5.0].into_iter());
        assert_eq!(acc.value(), Some(2.0));
        let mut acc = Acc::new("max_over_time");
        acc.values([f64::NAN, 2.0, 5.0].into_iter());
        assert_eq!(acc.value(), Some(5.0));
        let mut acc = Acc::new("avg_over_time");
        acc.values([1e16, 1.0, -1e16, 1.0].into_iter());
        assert_eq!(acc.value(), Some(0.5));
    }
}

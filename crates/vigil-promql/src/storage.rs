//! [`Storage`](crate::Storage) over Vigil's store, scoped to one environment.

use std::sync::atomic::{AtomicUsize, Ordering};

use vigil_model::{Labels, Matcher};
use vigil_tsdb::{Db, Groups, RollupFields, RollupPoint, SeriesPart};

use crate::{CounterRun, Error, MapFn, MapOptions, Result, SeriesWindow, StepsFn, StoredSeries};

/// Reads one environment of a [`Db`].
pub struct TsdbStorage<'a> {
    db: &'a Db,
    env: &'a str,
}

impl<'a> TsdbStorage<'a> {
    /// A storage view of `env` in `db`.
    pub fn new(db: &'a Db, env: &'a str) -> Self {
        Self { db, env }
    }
}

impl crate::Storage for TsdbStorage<'_> {
    fn rollup_cover(&self, resolution_ms: i64) -> Option<i64> {
        self.db
            .querier(self.env, i64::MIN, i64::MAX)
            .rollup_cover(resolution_ms)
    }

    fn rollup_boundary(&self, resolution_ms: i64, edges: bool) -> Option<(i64, bool)> {
        self.db
            .querier(self.env, i64::MIN, i64::MAX)
            .rollup_boundary(resolution_ms, edges)
    }

    fn rollup_edge_cover(&self, resolution_ms: i64) -> Option<i64> {
        self.db
            .querier(self.env, i64::MIN, i64::MAX)
            .rollup_edge_cover(resolution_ms)
    }

    fn select_rollups(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
        resolution_ms: i64,
        fields: RollupFields,
    ) -> Result<Vec<(Labels, Vec<RollupPoint>)>> {
        self.db
            .querier(self.env, mint, maxt)
            .select_rollup_fields(matchers, resolution_ms, fields)
            .map_err(|e| Error::Storage(e.to_string()))
    }

    fn select_latest(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
        budget: usize,
    ) -> Result<Vec<StoredSeries>> {
        let found = self
            .db
            .querier(self.env, mint, maxt)
            .latest(matchers)
            .map_err(|e| Error::Storage(e.to_string()))?;
        if found.len() > budget {
            return Err(Error::TooManySamples(found.len()));
        }
        Ok(found
            .into_iter()
            .map(|(labels, t, v)| StoredSeries {
                labels,
                samples: vec![(t, v)],
            })
            .collect())
    }

    fn select(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
        budget: usize,
    ) -> Result<Vec<StoredSeries>> {
        let decoded = AtomicUsize::new(0);
        self.each_part(matchers, mint, maxt, None, |mut part| {
            let mut out = Vec::with_capacity(part.size_hint().1.unwrap_or(0));
            // Series of one selection tend to hold alike numbers of samples: sized after the
            // previous one, most buffers never grow (growing copies them).
            let mut hint = 0;
            loop {
                let mut samples = Vec::with_capacity(hint);
                let Some((labels, _)) = read(&mut part, &mut samples, false, &decoded, budget)?
                else {
                    return Ok(out);
                };
                hint = samples.len();
                out.push(StoredSeries { labels, samples });
            }
        })
    }

    fn select_map(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
        budget: usize,
        opts: MapOptions<'_>,
        f: &MapFn<'_>,
    ) -> Result<Vec<(Labels, f64)>> {
        self.map_series(matchers, mint, maxt, budget, opts, f)
    }

    fn select_map_grouped(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
        budget: usize,
        opts: MapOptions<'_>,
        f: &MapFn<'_>,
    ) -> Result<crate::Grouped> {
        let Some(keep) = opts.keep else {
            return Err(Error::BadData(
                "grouped read without grouping labels".into(),
            ));
        };
        let q = self.db.querier(self.env, mint, maxt);
        let parts = q
            .select_parts_grouped(matchers, readers())
            .map_err(|e| Error::Storage(e.to_string()))?;
        let decoded = AtomicUsize::new(0);
        let per_part = |mut part: SeriesPart| -> Result<(Vec<Labels>, Vec<Vec<f64>>)> {
            let mut groups = Groups::new(keep);
            let mut values: Vec<Vec<f64>> = Vec::new();
            let mut buf = Vec::new();
            loop {
                buf.clear();
                let Some(next) = part.read_next_grouped(&mut buf, opts.counter_runs, &mut groups)
                else {
                    return Ok((groups.into_labels(), values));
                };
                let (g, run) = next.map_err(|e| Error::Storage(e.to_string()))?;
                count_decoded(&decoded, run.map_or(buf.len(), |r| r.samples), budget)?;
                let window = match run {
                    Some(r) => SeriesWindow::Run(r),
                    None => SeriesWindow::Samples(&mut buf),
                };
                if let Some(v) = f(window) {
                    if values.len() <= g {
                        values.resize_with(g + 1, Vec::new);
                    }
                    values[g].push(v);
                }
            }
        };
        // Merged in part order: the order the ungrouped read would give.
        let mut out = crate::GroupMerge::default();
        for r in run_parts(parts, work_ms(&q, mint, maxt), per_part) {
            let (labels, values) = r?;
            for (l, vals) in labels.into_iter().zip(values) {
                out.add(l, vals);
            }
        }
        Ok(out.groups)
    }

    fn select_map_steps(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
        budget: usize,
        keep: Option<&[String]>,
        f: &StepsFn<'_>,
    ) -> Result<Vec<(Labels, Vec<Option<f64>>)>> {
        let opts = MapOptions {
            keep,
            counter_runs: false,
        };
        self.map_series(matchers, mint, maxt, budget, opts, |w| match w {
            SeriesWindow::Samples(buf) => f(buf),
            SeriesWindow::Run(_) => None,
        })
    }
}

impl TsdbStorage<'_> {
    /// `select_map` for any per-series result.
    fn map_series<T: Send>(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
        budget: usize,
        opts: MapOptions<'_>,
        f: impl Fn(SeriesWindow<'_>) -> Option<T> + Sync,
    ) -> Result<Vec<(Labels, T)>> {
        let decoded = AtomicUsize::new(0);
        self.each_part(matchers, mint, maxt, opts.keep, |mut part| {
            let mut out = Vec::with_capacity(part.size_hint().1.unwrap_or(0));
            let mut buf = Vec::new();
            loop {
                buf.clear();
                let Some((labels, run)) =
                    read(&mut part, &mut buf, opts.counter_runs, &decoded, budget)?
                else {
                    return Ok(out);
                };
                let window = match run {
                    Some(r) => SeriesWindow::Run(r),
                    None => SeriesWindow::Samples(&mut buf),
                };
                if let Some(v) = f(window) {
                    out.push((labels, v));
                }
            }
        })
    }
}

/// Reads the part's next series into `buf` (empty on entry) — or as a counter run, when
/// `runs` allows — counting its samples against the query's budget: its labels and run, or
/// `None` when the part is done.
fn read(
    part: &mut SeriesPart,
    buf: &mut Vec<(i64, f64)>,
    runs: bool,
    decoded: &AtomicUsize,
    budget: usize,
) -> Result<Option<(Labels, Option<CounterRun>)>> {
    let Some(next) = part.read_next_run(buf, runs) else {
        return Ok(None);
    };
    let (labels, run) = next.map_err(|e| Error::Storage(e.to_string()))?;
    count_decoded(decoded, run.map_or(buf.len(), |r| r.samples), budget)?;
    Ok(Some((labels, run)))
}

/// Adds `n` samples to the query's decoded count; an error past `budget`.
fn count_decoded(decoded: &AtomicUsize, n: usize, budget: usize) -> Result<()> {
    let total = decoded.fetch_add(n, Ordering::Relaxed) + n;
    if total > budget {
        return Err(Error::TooManySamples(total));
    }
    Ok(())
}

impl TsdbStorage<'_> {
    /// Runs `per_part` over the selection cut for reader threads: resolved and decoded on up
    /// to 4 threads when there is enough work (each series is independent; head series are
    /// resolved by the reader that decodes them), and the parts' results concatenated.
    fn each_part<T: Send>(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
        keep: Option<&[String]>,
        per_part: impl Fn(SeriesPart) -> Result<Vec<T>> + Sync,
    ) -> Result<Vec<T>> {
        let q = self.db.querier(self.env, mint, maxt);
        let parts = q
            .select_parts_keeping(matchers, readers(), keep)
            .map_err(|e| Error::Storage(e.to_string()))?;
        let series: usize = parts.iter().map(|p| p.size_hint().1.unwrap_or(0)).sum();
        let mut out = Vec::with_capacity(series);
        for r in run_parts(parts, work_ms(&q, mint, maxt), per_part) {
            out.extend(r?);
        }
        Ok(out)
    }
}

/// Reader threads for one selection: the cores, at most 4.
fn readers() -> usize {
    vigil_tsdb::cores().min(4)
}

/// How much reading a series of `[mint, maxt]` costs, in milliseconds of head samples: the
/// span, but at least 40 minutes when block chunks are decoded (their set-up costs as much
/// whatever part of a chunk is read).
fn work_ms(q: &vigil_tsdb::Querier, mint: i64, maxt: i64) -> i64 {
    let span = maxt.saturating_sub(mint);
    if q.reads_blocks() {
        span.max(40 * 60_000)
    } else {
        span
    }
}

/// Runs `per_part` over each part, on a thread each when there is enough work (each series
/// is independent), results in part order. `span_ms`: the time range read (see [`work_ms`]).
fn run_parts<T: Send>(
    parts: Vec<SeriesPart>,
    span_ms: i64,
    per_part: impl Fn(SeriesPart) -> Result<T> + Sync,
) -> Vec<Result<T>> {
    let series: usize = parts.iter().map(|p| p.size_hint().1.unwrap_or(0)).sum();
    // A thread is not worth it for a few hundred series of a few minutes each; a long range
    // makes each series worth more.
    let per_series = usize::try_from(span_ms / 300_000).unwrap_or(0).max(1);
    if parts.len() <= 1 || series.saturating_mul(per_series) < 512 {
        return parts.into_iter().map(&per_part).collect();
    }
    let per_part = &per_part;
    std::thread::scope(|sc| {
        let handles: Vec<_> = parts
            .into_iter()
            .map(|p| sc.spawn(move || per_part(p)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Storage("decoder thread panicked".into())))
            })
            .collect()
    })
}

//! [`Storage`](crate::Storage) over Vigil's store, scoped to one environment.

use std::sync::atomic::{AtomicUsize, Ordering};

use vigil_model::{Labels, Matcher};
use vigil_tsdb::{Db, RollupPoint, SeriesPart};

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

    fn select_rollups(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
        resolution_ms: i64,
    ) -> Result<Vec<(Labels, Vec<RollupPoint>)>> {
        self.db
            .querier(self.env, mint, maxt)
            .select_rollups(matchers, resolution_ms)
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
            loop {
                let mut samples = Vec::new();
                let Some((labels, _)) = read(&mut part, &mut samples, false, &decoded, budget)?
                else {
                    return Ok(out);
                };
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
    let n = run.map_or(buf.len(), |r| r.samples);
    let total = decoded.fetch_add(n, Ordering::Relaxed) + n;
    if total > budget {
        return Err(Error::TooManySamples(total));
    }
    Ok(Some((labels, run)))
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
        let max_workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(4);
        let parts = q
            .select_parts_keeping(matchers, max_workers, keep)
            .map_err(|e| Error::Storage(e.to_string()))?;
        let series: usize = parts.iter().map(|p| p.size_hint().1.unwrap_or(0)).sum();
        // A thread is not worth it for a few hundred series.
        let results: Vec<Result<Vec<T>>> = if parts.len() <= 1 || series < 512 {
            parts.into_iter().map(&per_part).collect()
        } else {
            let per_part = &per_part;
            std::thread::scope(|sc| {
                let handles: Vec<_> = parts
                    .into_iter()
                    .map(|p| sc.spawn(move || per_part(p)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join().unwrap_or_else(|_| {
                            Err(Error::Storage("decoder thread panicked".into()))
                        })
                    })
                    .collect()
            })
        };
        let mut out = Vec::with_capacity(series);
        for r in results {
            out.extend(r?);
        }
        Ok(out)
    }
}

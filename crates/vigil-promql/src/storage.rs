//! [`Storage`](crate::Storage) over Vigil's store, scoped to one environment.

use vigil_model::{Labels, Matcher};
use vigil_tsdb::{Db, RollupPoint};

use crate::{Error, Result, StoredSeries};

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
        let q = self.db.querier(self.env, mint, maxt);
        // Resolve and decode on up to 4 threads when there is enough work: each series is
        // independent, and head series are resolved by the reader that decodes them.
        let max_workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(4);
        let parts = q
            .select_parts(matchers, max_workers)
            .map_err(|e| Error::Storage(e.to_string()))?;
        let series: usize = parts.iter().map(|p| p.size_hint().1.unwrap_or(0)).sum();
        let decode = |part: vigil_tsdb::SeriesPart| -> Result<Vec<StoredSeries>> {
            let mut out = Vec::with_capacity(part.size_hint().1.unwrap_or(0));
            let mut total = 0usize;
            for mut s in part {
                let mut samples = Vec::new();
                s.samples
                    .read_all(&mut samples)
                    .map_err(|e| Error::Storage(e.to_string()))?;
                total += samples.len();
                if total > budget {
                    return Err(Error::TooManySamples(total));
                }
                out.push(StoredSeries {
                    labels: s.labels,
                    samples,
                });
            }
            Ok(out)
        };
        // A thread is not worth it for a few hundred series.
        let results: Vec<Result<Vec<StoredSeries>>> = if parts.len() <= 1 || series < 512 {
            parts.into_iter().map(decode).collect()
        } else {
            std::thread::scope(|sc| {
                let handles: Vec<_> = parts
                    .into_iter()
                    .map(|p| sc.spawn(move || decode(p)))
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
        let mut out = Vec::new();
        let mut total = 0usize;
        for r in results {
            let part = r?;
            total += part.iter().map(|s| s.samples.len()).sum::<usize>();
            if total > budget {
                return Err(Error::TooManySamples(total));
            }
            out.extend(part);
        }
        Ok(out)
    }
}

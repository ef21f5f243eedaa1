//! [`Storage`](crate::Storage) over Vigil's store, scoped to one environment.

use vigil_model::Matcher;
use vigil_tsdb::Db;

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
    fn select(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
        budget: usize,
    ) -> Result<Vec<StoredSeries>> {
        let q = self.db.querier(self.env, mint, maxt);
        let set: Vec<vigil_tsdb::Series> = q
            .select(matchers)
            .map_err(|e| Error::Storage(e.to_string()))?
            .collect();
        // Decode in parallel when there is enough work: each series is independent.
        let workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(4)
            .min(set.len() / 256)
            .max(1);
        let per = set.len().div_ceil(workers).max(1);
        let mut parts: Vec<Vec<vigil_tsdb::Series>> = Vec::with_capacity(workers);
        let mut it = set.into_iter();
        loop {
            let part: Vec<vigil_tsdb::Series> = it.by_ref().take(per).collect();
            if part.is_empty() {
                break;
            }
            parts.push(part);
        }
        let decode = |part: Vec<vigil_tsdb::Series>| -> Result<Vec<StoredSeries>> {
            let mut out = Vec::with_capacity(part.len());
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
        let results: Vec<Result<Vec<StoredSeries>>> = if parts.len() <= 1 {
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

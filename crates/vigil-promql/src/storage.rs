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
        let set = q
            .select(matchers)
            .map_err(|e| Error::Storage(e.to_string()))?;
        let mut out = Vec::with_capacity(set.len());
        let mut total = 0usize;
        for mut s in set {
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
    }
}

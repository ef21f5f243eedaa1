//! [`WriteBatch`]: the unit of writing. One environment, many series, each with its samples.
//!
//! A batch keeps its strings in one arena and its samples in one vector, so a decoder can fill
//! it for every request without allocating per series once it has warmed up ([`WriteBatch::clear`]
//! keeps the capacity). The store applies a batch atomically with respect to crashes: after a
//! restart either all its accepted samples are present or none.

use std::ops::Range;

use vigil_model::{EnvId, Label, LabelError, LabelLimits, Labels};

use crate::head::series_hash;

#[derive(Debug, Clone)]
pub(crate) struct SeriesSpan {
    pub(crate) labels: Range<u32>,
    pub(crate) samples: Range<u32>,
}

/// A batch of samples for one environment.
#[derive(Debug, Clone)]
pub struct WriteBatch {
    env: EnvId,
    arena: String,
    /// (name start, name end, value end); the value starts at name end.
    labels: Vec<(u32, u32, u32)>,
    pub(crate) series: Vec<SeriesSpan>,
    pub(crate) samples: Vec<(i64, f64)>,
    open_labels: u32,
    open_samples: u32,
    /// Identity hash of each series (env and sorted labels), computed once at finish.
    pub(crate) hashes: Vec<(u64, u64)>,
    /// Limits whose check is left to [`crate::Db::write`], for the series it does not hold.
    deferred: Option<LabelLimits>,
}

impl WriteBatch {
    /// An empty batch for `env`.
    pub fn new(env: EnvId) -> Self {
        Self {
            env,
            arena: String::new(),
            labels: Vec::new(),
            series: Vec::new(),
            samples: Vec::new(),
            open_labels: 0,
            open_samples: 0,
            hashes: Vec::new(),
            deferred: None,
        }
    }

    /// Leaves the label checks of [`WriteBatch::finish_series`] to [`crate::Db::write`], which
    /// runs them (with `limits`) only for series the store does not hold yet: a series was
    /// checked when it was created. The write then fails with
    /// [`crate::Error::InvalidLabels`] before storing anything if one is bad. Labels are still
    /// sorted and empty values dropped at finish. `None` checks at finish again.
    pub fn defer_label_checks(&mut self, limits: Option<LabelLimits>) {
        self.deferred = limits;
    }

    /// Runs the deferred checks on series `i`.
    pub(crate) fn check_deferred(&self, i: usize) -> Result<(), LabelError> {
        match &self.deferred {
            Some(l) => self.check(&self.series[i], l),
            None => Ok(()),
        }
    }

    /// Empties the batch (keeping its memory) and sets its environment.
    pub fn clear(&mut self, env: EnvId) {
        self.env = env;
        self.arena.clear();
        self.labels.clear();
        self.series.clear();
        self.samples.clear();
        self.open_labels = 0;
        self.open_samples = 0;
        self.hashes.clear();
    }

    /// The environment.
    pub fn env(&self) -> &EnvId {
        &self.env
    }

    /// Number of series.
    pub fn series_len(&self) -> usize {
        self.series.len()
    }

    /// Number of samples.
    pub fn samples_len(&self) -> usize {
        self.samples.len()
    }

    /// Bytes of label text held (labels shared in the input, e.g. Influx tags or OTLP resource
    /// attributes, are copied per series, so decoders bound this too).
    pub fn label_bytes(&self) -> usize {
        self.arena.len()
    }

    /// Whether the batch has no samples.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Adds a label to the series being built.
    pub fn push_label(&mut self, name: &str, value: &str) {
        let a = self.arena.len() as u32;
        self.arena.push_str(name);
        let b = self.arena.len() as u32;
        self.arena.push_str(value);
        self.labels.push((a, b, self.arena.len() as u32));
    }

    /// Adds a sample to the series being built.
    pub fn push_sample(&mut self, ts_ms: i64, value: f64) {
        self.samples.push((ts_ms, value));
    }

    /// Ends the series being built: drops labels with empty values, sorts the labels by name and
    /// checks them against `limits` (a duplicate name is an error). On error the series is
    /// removed from the batch and the batch is as before. With checks deferred
    /// ([`WriteBatch::defer_label_checks`]) only the sorting happens here.
    pub fn finish_series(&mut self, limits: &LabelLimits) -> Result<(), LabelError> {
        let start = self.open_labels as usize;
        // Drop empty values and sort by name in place (senders usually send sorted labels
        // without empties, so this is a check and no allocation).
        let mut w = start;
        for r in start..self.labels.len() {
            let l = self.labels[r];
            if l.2 > l.1 {
                self.labels[w] = l;
                w += 1;
            }
        }
        self.labels.truncate(w);
        let arena = &self.arena;
        let name = |x: &(u32, u32, u32)| &arena[x.0 as usize..x.1 as usize];
        if !self.labels[start..].is_sorted_by(|a, b| name(a) <= name(b)) {
            self.labels[start..].sort_by(|x, y| name(x).cmp(name(y)));
        }
        let span = SeriesSpan {
            labels: self.open_labels..self.labels.len() as u32,
            samples: self.open_samples..self.samples.len() as u32,
        };
        if self.deferred.is_none()
            && let Err(e) = self.check(&span, limits)
        {
            self.labels.truncate(span.labels.start as usize);
            self.samples.truncate(span.samples.start as usize);
            return Err(e);
        }
        self.hashes
            .push(series_hash(self.env.as_str(), self.label_pairs_span(&span)));
        self.series.push(span);
        self.open_labels = self.labels.len() as u32;
        self.open_samples = self.samples.len() as u32;
        Ok(())
    }

    fn check(&self, span: &SeriesSpan, limits: &LabelLimits) -> Result<(), LabelError> {
        let n = (span.labels.end - span.labels.start) as usize;
        if n > limits.max_labels {
            return Err(LabelError::TooManyLabels {
                count: n,
                limit: limits.max_labels,
            });
        }
        limits.validate_pairs(self.label_pairs_span(span))
    }

    /// Adds a whole series.
    pub fn add_series(
        &mut self,
        labels: &Labels,
        samples: &[(i64, f64)],
        limits: &LabelLimits,
    ) -> Result<(), LabelError> {
        for l in labels {
            self.push_label(&l.name, &l.value);
        }
        self.samples.extend_from_slice(samples);
        self.finish_series(limits)
    }

    fn label_pairs_span(&self, s: &SeriesSpan) -> impl Iterator<Item = (&str, &str)> + Clone + '_ {
        self.labels[s.labels.start as usize..s.labels.end as usize]
            .iter()
            .map(|&(a, b, c)| {
                (
                    &self.arena[a as usize..b as usize],
                    &self.arena[b as usize..c as usize],
                )
            })
    }

    /// Labels of series `i` as (name, value) pairs in name order.
    pub fn label_pairs(&self, i: usize) -> impl Iterator<Item = (&str, &str)> + Clone + '_ {
        self.label_pairs_span(&self.series[i])
    }

    /// Samples of series `i`.
    pub fn samples_of(&self, i: usize) -> &[(i64, f64)] {
        let s = &self.series[i].samples;
        &self.samples[s.start as usize..s.end as usize]
    }

    /// Labels of series `i` as an owned [`Labels`].
    pub fn labels_of(&self, i: usize) -> Labels {
        Labels::from_sorted(
            self.label_pairs(i)
                .map(|(n, v)| Label {
                    name: n.into(),
                    value: v.into(),
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_sorted_series_and_rejects_bad_ones_without_residue() {
        let lim = LabelLimits::default();
        let mut b = WriteBatch::new(EnvId::new("prod").unwrap());
        b.push_label("job", "node");
        b.push_label("__name__", "up");
        b.push_label("empty", "");
        b.push_sample(1, 1.0);
        b.finish_series(&lim).unwrap();
        b.push_label("__name__", "up");
        b.push_label("bad-name", "x");
        b.push_sample(2, 2.0);
        assert!(matches!(
            b.finish_series(&lim),
            Err(LabelError::InvalidLabelName { .. })
        ));
        b.push_label("__name__", "up");
        b.push_label("a", "1");
        b.push_label("a", "2");
        assert!(matches!(
            b.finish_series(&lim),
            Err(LabelError::DuplicateLabelName { .. })
        ));
        assert_eq!(b.series_len(), 1);
        assert_eq!(b.samples_len(), 1);
        assert_eq!(b.labels_of(0).to_string(), r#"up{job="node"}"#);
    }
}

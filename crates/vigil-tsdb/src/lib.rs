//! Vigil's embedded time-series store.
//!
//! What it owns: durable storage of float samples per (environment, label set) — a
//! write-ahead log, a compressed in-memory head, immutable on-disk blocks, compaction,
//! retention by age and size, downsampling to 5 m / 1 h rollups, deletion by tombstones,
//! online snapshots — and reads by label matchers over time ranges.
//!
//! What it must not do: know about HTTP, auth, PromQL or any wire protocol. Environments are
//! opaque names here; access control happens above.
//!
//! ```
//! use std::sync::Arc;
//! use vigil_model::{EnvId, Labels, ManualClock, Matcher};
//! use vigil_tsdb::{Db, Options, WriteBatch};
//!
//! let dir = tempfile::tempdir().unwrap();
//! // Time is injectable; retention and maintenance read this clock.
//! let clock = Arc::new(ManualClock::new(5_000));
//! let opts = Options { clock, maintenance_interval: None, ..Options::default() };
//! let db = Db::open(dir.path(), opts).unwrap();
//! let mut batch = WriteBatch::new(EnvId::new("prod").unwrap());
//! let labels = Labels::from_pairs([("__name__", "up"), ("job", "node")]);
//! batch.add_series(&labels, &[(1_000, 1.0), (2_000, 0.0)], &Default::default()).unwrap();
//! let out = db.write(&batch).unwrap();
//! assert_eq!(out.accepted, 2);
//!
//! let q = db.querier("prod", 0, 10_000);
//! let series: Vec<_> = q.select(&[Matcher::eq("__name__", "up")]).unwrap().collect();
//! assert_eq!(series.len(), 1);
//! let samples = vigil_tsdb::collect_samples(series.into_iter().next().unwrap().samples).unwrap();
//! assert_eq!(samples, vec![(1_000, 1.0), (2_000, 0.0)]);
//! // Another environment sees nothing.
//! assert_eq!(db.querier("staging", 0, 10_000).select(&[Matcher::eq("__name__", "up")]).unwrap().len(), 0);
//! ```

mod batch;
mod block;
pub mod chunk;
pub mod codec;
mod db;
pub mod decimal;
pub mod encoding;
mod error;
mod head;
mod options;
mod postings;
mod querier;
mod symbols;
mod tombstones;
pub mod wal;

pub use batch::WriteBatch;
pub use block::{BLOCK_VERSION, Block, BlockMeta};
pub use codec::{RollupFields, RollupPoint};
pub use db::{
    BlockStats, Db, OpenReport, ROLLUP_RESOLUTIONS, Rejected, Stats, WriteOutcome, collect_samples,
};
pub use error::{Error, ErrorKind, Result};
pub use head::RejectReason;
pub use options::Options;
pub use querier::{CounterRun, Groups, Querier, SampleIter, Series, SeriesPart, SeriesSet};
pub use tombstones::Tombstone;
pub use wal::SyncPolicy;

/// The cores this process may use (asked once: the answer takes a few system calls).
pub fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

//! Store options.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use vigil_model::{Clock, LabelLimits, SystemClock};

use crate::wal::SyncPolicy;

/// How the store behaves. `Default` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct Options {
    /// When the WAL forces data to disk (default: every 200 ms).
    pub sync: SyncPolicy,
    /// WAL segment size (default 128 MiB).
    pub wal_segment_bytes: u64,
    /// How far behind a series' newest sample an out-of-order sample is still accepted
    /// (default 10 min; must be less than half the first block range).
    pub ooo_window: Duration,
    /// Block ranges: the first is the range the head is cut at; later ones are compaction
    /// levels, each a multiple of the previous (default 2 h, 24 h).
    pub block_ranges: Vec<Duration>,
    /// Raw data retention (default 15 days).
    pub retention: Duration,
    /// Maximum bytes of blocks plus WAL; the oldest blocks go first (default none).
    pub retention_bytes: Option<u64>,
    /// Per-environment retention overriding `retention` (raw and rollups).
    pub env_retention: HashMap<String, Duration>,
    /// Age after which raw blocks also get 5 m and 1 h rollups (default 1 h: a block is
    /// rolled up as it leaves the head, so long-range queries read rollups for all but the
    /// newest hours; `None` off).
    pub downsample_after: Option<Duration>,
    /// Rollup retention (default 400 days).
    pub rollup_retention: Duration,
    /// Label limits checked on write.
    pub label_limits: LabelLimits,
    /// Active series per environment; new series beyond it are refused (default none).
    pub max_series_per_env: Option<usize>,
    /// Samples per head chunk (default 120).
    pub head_chunk_samples: usize,
    /// Maximum samples per chunk in blocks (default 2,160: six hours at 10 s).
    pub block_chunk_samples: usize,
    /// The clock (injectable for tests).
    pub clock: Arc<dyn Clock>,
    /// Run maintenance (block cutting, compaction, retention, downsampling) on a background
    /// thread at this interval (default 30 s); `None` leaves it to [`crate::Db::maintain`].
    pub maintenance_interval: Option<Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            sync: SyncPolicy::default(),
            wal_segment_bytes: 128 << 20,
            ooo_window: Duration::from_secs(600),
            block_ranges: vec![
                Duration::from_secs(2 * 3600),
                Duration::from_secs(24 * 3600),
            ],
            retention: Duration::from_secs(15 * 86_400),
            retention_bytes: None,
            env_retention: HashMap::new(),
            downsample_after: Some(Duration::from_secs(3600)),
            rollup_retention: Duration::from_secs(400 * 86_400),
            label_limits: LabelLimits::default(),
            max_series_per_env: None,
            head_chunk_samples: 120,
            block_chunk_samples: 2_160,
            clock: Arc::new(SystemClock),
            maintenance_interval: Some(Duration::from_secs(30)),
        }
    }
}

pub(crate) fn ms(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

impl Options {
    pub(crate) fn validate(&self) -> crate::Result<()> {
        let bad = |name, reason: &str| {
            Err(crate::Error::InvalidOption {
                name,
                reason: reason.to_string(),
            })
        };
        if self.block_ranges.is_empty() || self.block_ranges[0].as_millis() < 1000 {
            return bad("block_ranges", "needs at least one range of 1 s or more");
        }
        for w in self.block_ranges.windows(2) {
            if w[1].as_millis() % w[0].as_millis() != 0 || w[1] <= w[0] {
                return bad(
                    "block_ranges",
                    "each range must be a larger multiple of the previous one",
                );
            }
        }
        if ms(self.ooo_window) * 2 > ms(self.block_ranges[0]) {
            return bad("ooo_window", "must be at most half the first block range");
        }
        if self.head_chunk_samples == 0 || self.head_chunk_samples > crate::chunk::MAX_SAMPLES {
            return bad("head_chunk_samples", "must be 1..=65535");
        }
        if self.block_chunk_samples == 0
            || self.block_chunk_samples > crate::codec::MAX_CHUNK_SAMPLES
        {
            return bad(
                "block_chunk_samples",
                &format!("must be 1..={}", crate::codec::MAX_CHUNK_SAMPLES),
            );
        }
        Ok(())
    }
}

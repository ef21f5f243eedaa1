//! Helpers shared by the store's integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use vigil_model::{EnvId, Labels, ManualClock, Matcher};
use vigil_tsdb::{Db, Options, SyncPolicy, WriteBatch, collect_samples};

pub const HOUR: i64 = 3_600_000;
pub const DAY: i64 = 24 * HOUR;
/// 2026-01-01T00:00:00Z
pub const T0: i64 = 1_767_225_600_000;

pub fn opts(clock: &ManualClock) -> Options {
    Options {
        clock: Arc::new(clock.clone()),
        maintenance_interval: None,
        sync: SyncPolicy::Never,
        downsample_after: None,
        ..Options::default()
    }
}

pub fn open(dir: &Path, clock: &ManualClock) -> Db {
    Db::open(dir, opts(clock)).unwrap()
}

pub fn labels(name: &str, extra: &[(&str, &str)]) -> Labels {
    let mut v = vec![("__name__".to_string(), name.to_string())];
    v.extend(extra.iter().map(|(a, b)| (a.to_string(), b.to_string())));
    Labels::from_pairs(v)
}

pub fn write(db: &Db, env: &str, l: &Labels, samples: &[(i64, f64)]) -> vigil_tsdb::WriteOutcome {
    let mut b = WriteBatch::new(EnvId::new(env).unwrap());
    b.add_series(l, samples, &Default::default()).unwrap();
    db.write(&b).unwrap()
}

/// All series of `env` matching `m` with their samples, bit patterns for exact comparison.
pub fn read(
    db: &Db,
    env: &str,
    m: &[Matcher],
    mint: i64,
    maxt: i64,
) -> Vec<(Labels, Vec<(i64, u64)>)> {
    db.querier(env, mint, maxt)
        .select(m)
        .unwrap()
        .map(|s| {
            let l = s.labels.clone();
            let v = collect_samples(s.samples)
                .unwrap()
                .into_iter()
                .map(|(t, v)| (t, v.to_bits()))
                .collect();
            (l, v)
        })
        .collect()
}

/// Like [`read`], through `select_parts` (cut in `n` parts) and `SeriesPart::read_next`.
pub fn read_parts(
    db: &Db,
    env: &str,
    m: &[Matcher],
    mint: i64,
    maxt: i64,
    n: usize,
) -> Vec<(Labels, Vec<(i64, u64)>)> {
    let mut out = Vec::new();
    for mut part in db.querier(env, mint, maxt).select_parts(m, n).unwrap() {
        let mut buf = Vec::new();
        while let Some(labels) = part.read_next(&mut buf) {
            let v = buf.drain(..).map(|(t, v)| (t, v.to_bits())).collect();
            out.push((labels.unwrap(), v));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

pub fn all(db: &Db, env: &str) -> Vec<(Labels, Vec<(i64, u64)>)> {
    read(
        db,
        env,
        &[Matcher::new(vigil_model::MatchOp::Re, "__name__", ".+").unwrap()],
        i64::MIN,
        i64::MAX,
    )
}

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

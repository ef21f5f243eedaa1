//! The engine's fast paths give the answers of the plain ones: instant selectors reading each
//! series' newest sample straight from the head (stale markers, the lookback limit, deleted
//! series, earlier query times), and range functions split over threads.

use std::sync::Arc;

use vigil_model::{EnvId, LabelLimits, Labels, ManualClock, Matcher, stale_marker};
use vigil_promql::storage::TsdbStorage;
use vigil_promql::{Engine, EngineOptions, Value};
use vigil_tsdb::{Db, Options, WriteBatch};

const T0: i64 = 1_750_000_000_000;

fn series(name: &str) -> Labels {
    Labels::from_pairs([("__name__", "m"), ("s", name)])
}

fn names(v: Value) -> Vec<(String, f64)> {
    let Value::Vector(v) = v else {
        panic!("expected a vector, got {v:?}")
    };
    let mut out: Vec<(String, f64)> = v
        .into_iter()
        .map(|s| (s.metric.get("s").unwrap_or("").to_string(), s.v))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// A store with background maintenance off, its clock at `T0`.
fn open(dir: &std::path::Path) -> Db {
    Db::open(
        dir,
        Options {
            clock: Arc::new(ManualClock::new(T0)),
            maintenance_interval: None,
            downsample_after: None,
            ..Options::default()
        },
    )
    .unwrap()
}

/// Writes `n` series `m{s="<i>", g="<i mod 3>"}` with samples `point(i, k)` for k in 0..=60.
fn write_m(db: &Db, n: usize, point: impl Fn(usize, i64) -> Option<(i64, f64)>) {
    let (env, lim) = (EnvId::new("e").unwrap(), LabelLimits::default());
    let mut b = WriteBatch::new(env);
    for i in 0..n {
        let pts: Vec<(i64, f64)> = (0..=60).filter_map(|k| point(i, k)).collect();
        let l = Labels::from_pairs([
            ("__name__", "m"),
            ("s", &format!("{i:05}")),
            ("g", &(i % 3).to_string()),
        ]);
        b.add_series(&l, &pts, &lim).unwrap();
    }
    db.write(&b).unwrap();
}

#[test]
fn newest_sample_path_agrees_with_decoding() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let (env, lim) = (EnvId::new("e").unwrap(), LabelLimits::default());
    let mut b = WriteBatch::new(env.clone());
    // "stale": a value, then a stale marker as its newest sample.
    b.add_series(
        &series("stale"),
        &[(T0, 1.0), (T0 + 600_000, stale_marker())],
        &lim,
    )
    .unwrap();
    // "live": fresh.
    b.add_series(&series("live"), &[(T0, 2.0), (T0 + 590_000, 3.0)], &lim)
        .unwrap();
    // "old": newest sample beyond the 5 m lookback at the query time.
    b.add_series(&series("old"), &[(T0, 4.0)], &lim).unwrap();
    // "gone": deleted below.
    b.add_series(&series("gone"), &[(T0 + 595_000, 5.0)], &lim)
        .unwrap();
    db.write(&b).unwrap();
    db.delete("e", &[Matcher::eq("s", "gone")], i64::MIN, i64::MAX)
        .unwrap();
    let engine = Engine::new(EngineOptions::default());
    let st = TsdbStorage::new(&db, "e");
    let at = T0 + 600_000;
    // At the head's newest time: the newest-sample path.
    assert_eq!(
        names(engine.instant(&st, "m", at).unwrap()),
        vec![("live".into(), 3.0)]
    );
    // Same answer through an expression that decodes the window.
    assert_eq!(
        names(engine.instant(&st, "last_over_time(m[5m])", at).unwrap()),
        vec![("live".into(), 3.0)]
    );
    // Before the stale marker and the newest samples: decoding path, older values.
    assert_eq!(
        names(engine.instant(&st, "m", T0 + 100_000).unwrap()),
        vec![
            ("live".into(), 2.0),
            ("old".into(), 4.0),
            ("stale".into(), 1.0)
        ]
    );
    // `timestamp()` sees the stored sample's own time on the fast path too.
    assert_eq!(
        names(engine.instant(&st, "timestamp(m)", at).unwrap()),
        vec![("live".into(), (T0 + 590_000) as f64 / 1000.0)]
    );
}

/// Range functions over many series split the series over threads; the answer must be the
/// same series and values as one thread gives.
#[test]
fn range_functions_over_many_series_split_over_threads_agree() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let (env, lim) = (EnvId::new("e").unwrap(), LabelLimits::default());
    let n = 45_000usize;
    let mut b = WriteBatch::new(env.clone());
    for i in 0..n {
        let pts: Vec<(i64, f64)> = (0..=30)
            .map(|k| (T0 + k * 10_000, (k * (i as i64 % 7)) as f64))
            .collect();
        b.add_series(&series(&format!("{i:05}")), &pts, &lim)
            .unwrap();
    }
    db.write(&b).unwrap();
    let engine = Engine::new(EngineOptions::default());
    let st = TsdbStorage::new(&db, "e");
    let at = T0 + 300_000;
    let got = names(engine.instant(&st, "last_over_time(m[5m])", at).unwrap());
    assert_eq!(got.len(), n);
    for (i, (name, v)) in got.iter().enumerate() {
        assert_eq!(name, &format!("{i:05}"));
        assert_eq!(*v, (30 * (i as i64 % 7)) as f64, "series {name}");
    }
    let Value::Vector(sum) = engine
        .instant(&st, "sum(count_over_time(m[5m]))", at)
        .unwrap()
    else {
        panic!("expected a vector")
    };
    assert_eq!(sum[0].v, (n * 30) as f64);
    // The selection and the per-series values match a small selection evaluated serially.
    let one = names(
        engine
            .instant(&st, "last_over_time(m{s=\"01234\"}[5m])", at)
            .unwrap(),
    );
    assert_eq!(one, vec![("01234".into(), (30 * (1234 % 7)) as f64)]);
}

/// An instant query streams a range function's selector through it (each series decoded into
/// a reused buffer, on several threads); a range query loads the selector. Both must give the
/// same answer — staleness markers dropped, counter resets seen — and the sample limit holds
/// for streamed reads too.
#[test]
fn streamed_range_functions_agree_with_loaded_ones() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let n = 2_000usize;
    write_m(&db, n, |i, k| {
        let t = T0 + k * 10_000 + (i as i64 % 13);
        match (i % 5, k) {
            (0, 40) => Some((t, stale_marker())),
            (1, _) if k > 45 => Some((t, k as f64)),
            _ => Some((t, (k * (i as i64 % 11 + 1)) as f64)),
        }
    });
    let engine = Engine::new(EngineOptions::default());
    let st = TsdbStorage::new(&db, "e");
    // Before the newest samples (decoded), and after them (counters read as runs).
    for at in [T0 + 550_000, T0 + 610_000] {
        for q in [
            "rate(m[5m])",
            "increase(m[5m])",
            "max_over_time(m[5m])",
            "count_over_time(m[5m])",
            "changes(m[5m])",
            "last_over_time(m[5m])",
            "resets(m[5m])",
            "sum by (g) (rate(m[5m]))",
            "avg by (g, s) (max_over_time(m[5m]))",
            "count by (__name__, g) (last_over_time(m[5m]))",
            "quantile by (g) (0.5, rate(m[5m]))",
            "max by (nope) (rate(m[5m]))",
            "sum without (s) (rate(m[5m]))",
            "topk by (g) (3, rate(m[5m]))",
            "rate(m[5m] offset 1m)",
            // Read grouped by the `by` labels (no per-series labels): every projectable
            // aggregation, a name kept by the function, groups merged when the read keeps
            // `__name__` (regex name) but the aggregation does not.
            "sum by (g) (rate({__name__=~\"m|n\"}[5m]))",
            "stddev by (g) (increase(m[5m]))",
            "stdvar by (g) (changes(m[5m]))",
            "min by (g) (rate(m[5m]))",
            "group by (g) (rate(m[5m]))",
            "sum by (__name__) (last_over_time(m[5m]))",
            "count by (s) (resets(m[5m]))",
        ] {
            let Value::Vector(streamed) = engine.instant(&st, q, at).unwrap() else {
                panic!("{q}: expected a vector")
            };
            let mut streamed: Vec<(String, f64)> = streamed
                .into_iter()
                .map(|s| (s.metric.to_string(), s.v))
                .collect();
            streamed.sort_by(|a, b| a.0.cmp(&b.0));
            let loaded: Vec<(String, f64)> = engine
                .range(&st, q, at, at + 10_000, 10_000)
                .unwrap()
                .into_iter()
                .filter_map(|s| {
                    let p = s.points.iter().find(|p| p.0 == at)?;
                    Some((s.metric.to_string(), p.1))
                })
                .collect();
            assert!(!streamed.is_empty(), "{q}");
            assert_eq!(streamed, loaded, "{q} at {at}");
        }
    }
    let at = T0 + 550_000;
    // Range queries compute a streamed function for every step from one read of each series;
    // `quantile_over_time(1, …)` (two arguments: loaded, evaluated step by step) is the max.
    let points = |q: &str| {
        engine
            .range(&st, q, T0 + 300_000, T0 + 620_000, 15_000)
            .unwrap()
            .into_iter()
            .map(|s| (s.metric.to_string(), s.points))
            .collect::<Vec<_>>()
    };
    let streamed = points("max_over_time(m[5m])");
    assert_eq!(streamed.len(), n);
    assert_eq!(streamed, points("quantile_over_time(1, m[5m])"));
    assert_eq!(
        points("sum by (g) (max_over_time(m[5m]))"),
        points("sum by (g) (quantile_over_time(1, m[5m]))")
    );
    let small = Engine::new(EngineOptions {
        max_samples: 10_000,
        ..EngineOptions::default()
    });
    let err = small.instant(&st, "rate(m[5m])", at).unwrap_err();
    assert!(err.to_string().contains("10000"), "{err}");
    let err = small
        .range(&st, "rate(m[5m])", at, at + 60_000, 10_000)
        .unwrap_err();
    assert!(err.to_string().contains("10000"), "{err}");
    // Few samples per series but many steps: the per-step values count too.
    let err = small
        .range(&st, "rate(m{s=~\"0000.\"}[5m])", T0, T0 + 10_799_000, 1_000)
        .unwrap_err();
    assert!(err.to_string().contains("10000"), "{err}");
}

/// In a range query an instant selector is read once into a series × steps table (each
/// step's newest sample within the lookback, none after a staleness marker) instead of
/// loading every sample; each step must equal the instant query at that time, which reads
/// the selector its own way.
#[test]
fn range_selectors_agree_with_instant_queries() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let n = 1_500usize;
    write_m(&db, n, |i, k| {
        let t = T0 + k * 10_000 + (i as i64 % 7) * 1_000;
        match (i % 4, k) {
            // A staleness marker, then samples again.
            (0, 30) => Some((t, stale_marker())),
            // A gap longer than the lookback.
            (1, 20..=55) => None,
            // Ends early.
            (2, 45..) => None,
            _ => Some((t, (k * (i as i64 % 5 + 1)) as f64 - 50.0)),
        }
    });
    let engine = Engine::new(EngineOptions::default());
    let st = TsdbStorage::new(&db, "e");
    let (start, end, step) = (T0 + 100_000, T0 + 1_000_000, 23_000);
    for q in [
        "m",
        "m offset 1m",
        "quantile by (g) (0.5, m)",
        "sum by (g) (m)",
        "count without (s) (m)",
        "abs(m) > 20",
        "m / on (s, g) (m offset 30s)",
        "timestamp(m)",
        // A range function straight over a selector: the table is the answer.
        "rate(m[1m])",
        "last_over_time(m[2m])",
        "max_over_time(m[90s] offset 30s)",
        // Aggregations reduced straight from those tables.
        "sum by (g) (rate(m[1m]))",
        "count by (g) (last_over_time(m[2m]))",
        "quantile by (g) (0.25, max_over_time(m[90s]))",
        "avg by (__name__, g) (m)",
    ] {
        let range = engine.range(&st, q, start, end, step).unwrap();
        let mut steps_seen = 0;
        let mut t = start;
        while t <= end {
            let Value::Vector(v) = engine.instant(&st, q, t).unwrap() else {
                panic!("{q}: not a vector")
            };
            let mut want: Vec<(String, u64)> = v
                .into_iter()
                .map(|s| (s.metric.to_string(), s.v.to_bits()))
                .collect();
            want.sort();
            let mut got: Vec<(String, u64)> = range
                .iter()
                .filter_map(|s| {
                    let p = s.points.iter().find(|p| p.0 == t)?;
                    Some((s.metric.to_string(), p.1.to_bits()))
                })
                .collect();
            got.sort();
            assert_eq!(got, want, "{q} at step {t}");
            steps_seen += usize::from(!want.is_empty());
            t += step;
        }
        assert!(steps_seen > 10, "{q}: only {steps_seen} steps with data");
    }
}

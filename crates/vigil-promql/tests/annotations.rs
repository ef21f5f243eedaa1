//! Warnings and infos: raised where Prometheus 3 raises them, with its wording and the
//! position of the expression they are about, on every evaluation path (loaded, streamed,
//! streamed with only the `by` labels read, range queries), and not raised otherwise.

use std::sync::Arc;

use vigil_model::{EnvId, LabelLimits, Labels, ManualClock};
use vigil_promql::storage::TsdbStorage;
use vigil_promql::{Annotations, Engine, EngineOptions};
use vigil_tsdb::{Db, Options, WriteBatch};

const T0: i64 = 1_750_000_000_000;

fn store(dir: &std::path::Path) -> Db {
    let db = Db::open(
        dir,
        Options {
            clock: Arc::new(ManualClock::new(T0)),
            maintenance_interval: None,
            downsample_after: None,
            ..Options::default()
        },
    )
    .unwrap();
    let (env, lim) = (EnvId::new("e").unwrap(), LabelLimits::default());
    let mut b = WriteBatch::new(env);
    let points = |f: &dyn Fn(i64) -> f64| -> Vec<(i64, f64)> {
        (0..40).map(|i| (T0 + i * 15_000, f(i))).collect()
    };
    for zone in ["a", "b"] {
        b.add_series(
            &Labels::from_pairs([("__name__", "jobs_done_total"), ("zone", zone)]),
            &points(&|i| i as f64),
            &lim,
        )
        .unwrap();
        b.add_series(
            &Labels::from_pairs([("__name__", "jobs_queued"), ("zone", zone)]),
            &points(&|i| (i % 7) as f64),
            &lim,
        )
        .unwrap();
    }
    // A classic histogram whose cumulative counts dip at le="2" (forced monotonic), and a
    // bucket with a malformed bound.
    for (le, v) in [
        ("1", 10.0),
        ("2", 8.0),
        ("4", 12.0),
        ("+Inf", 12.0),
        ("x", 1.0),
    ] {
        b.add_series(
            &Labels::from_pairs([("__name__", "lat_bucket"), ("le", le)]),
            &points(&|_| v),
            &lim,
        )
        .unwrap();
    }
    db.write(&b).unwrap();
    db
}

const AT: i64 = T0 + 39 * 15_000;

fn instant(engine: &Engine, st: &TsdbStorage<'_>, q: &str) -> Annotations {
    engine
        .instant_annotated(st, q, AT)
        .unwrap_or_else(|e| panic!("{q}: {e}"))
        .1
}

fn range(engine: &Engine, st: &TsdbStorage<'_>, q: &str) -> Annotations {
    engine
        .range_annotated(st, q, AT - 120_000, AT, 30_000)
        .unwrap_or_else(|e| panic!("{q}: {e}"))
        .1
}

const NOT_COUNTER: &str = "PromQL info: metric might not be a counter, name does not end in _total/_sum/_count/_bucket: \"jobs_queued\"";

#[test]
fn rate_of_a_gauge_is_flagged_on_every_path() {
    let dir = tempfile::tempdir().unwrap();
    let db = store(dir.path());
    let st = TsdbStorage::new(&db, "e");
    let engine = Engine::new(EngineOptions::default());
    // Streamed instant, streamed with only `zone` read, loaded (two readers of one
    // selector), a subquery, a range query.
    for (q, pos) in [
        ("rate(jobs_queued[5m])", "1:6"),
        ("sum by (zone) (increase(jobs_queued[5m]))", "1:25"),
        ("rate(jobs_queued[5m]) + rate(jobs_queued[5m])", "1:6"),
        ("max_over_time(rate(jobs_queued[1m])[5m:1m])", "1:20"),
    ] {
        let a = instant(&engine, &st, q);
        assert_eq!(a.infos, vec![format!("{NOT_COUNTER} ({pos})")], "{q}");
        assert!(a.warnings.is_empty(), "{q}");
        let a = range(&engine, &st, q);
        assert_eq!(a.infos, vec![format!("{NOT_COUNTER} ({pos})")], "range {q}");
    }
    // Names known only per series (a regex on the name), streamed with `by` projection.
    let a = instant(
        &engine,
        &st,
        "sum by (zone) (rate({__name__=~\"jobs_.*\"}[5m]))",
    );
    assert_eq!(a.infos, vec![format!("{NOT_COUNTER} (1:21)")]);
    // Counters, other functions and empty results say nothing.
    for q in [
        "rate(jobs_done_total[5m])",
        "sum by (zone) (rate(jobs_done_total[5m]))",
        "irate(jobs_queued[5m])",
        "delta(jobs_queued[5m])",
        "rate(nothing_here[5m])",
        "sort(jobs_queued)",
    ] {
        assert_eq!(instant(&engine, &st, q), Annotations::default(), "{q}");
    }
}

#[test]
fn quantiles_out_of_range_warn_with_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let db = store(dir.path());
    let st = TsdbStorage::new(&db, "e");
    let engine = Engine::new(EngineOptions::default());
    let w = |v: &str, pos: &str| {
        format!("PromQL warning: quantile value should be between 0 and 1, got {v} ({pos})")
    };
    for (q, want) in [
        ("quantile(1.5, jobs_queued)", w("1.5", "1:10")),
        (
            "quantile by (zone) (-0.25, jobs_queued)",
            w("-0.25", "1:21"),
        ),
        (
            "quantile without (zone) (NaN, jobs_queued)",
            w("NaN", "1:26"),
        ),
        ("quantile_over_time(2, jobs_queued[5m])", w("2", "1:20")),
        (
            "histogram_quantile(1e6, lat_bucket{le!=\"x\"})",
            w("1e+06", "1:20"),
        ),
    ] {
        let a = instant(&engine, &st, q);
        assert_eq!(a.warnings, vec![want], "{q}");
    }
    for q in [
        "quantile(0.5, jobs_queued)",
        "quantile_over_time(1, jobs_queued[5m])",
    ] {
        assert_eq!(instant(&engine, &st, q), Annotations::default(), "{q}");
    }
}

#[test]
fn classic_histograms_report_bad_buckets_and_forced_monotonicity() {
    let dir = tempfile::tempdir().unwrap();
    let db = store(dir.path());
    let st = TsdbStorage::new(&db, "e");
    let engine = Engine::new(EngineOptions::default());
    let a = instant(&engine, &st, "histogram_quantile(0.5, lat_bucket)");
    assert_eq!(
        a.warnings,
        vec![
            "PromQL warning: bucket label \"le\" is missing or has a malformed value of \"x\" for metric name \"lat_bucket\" (1:25)"
                .to_string()
        ]
    );
    assert_eq!(
        a.infos,
        vec![
            "PromQL info: input to histogram_quantile needed to be fixed for monotonicity (see https://prometheus.io/docs/prometheus/latest/querying/functions/#histogram_quantile) for metric name \"lat_bucket\", from buckets 2 to 2, with a max diff of 2, over 1 samples from 2025-06-15T15:16:25Z to 2025-06-15T15:16:25Z (1:25)"
                .to_string()
        ]
    );
    // Over a range the fix is merged: every step counted, the span of times given.
    let a = range(
        &engine,
        &st,
        "histogram_quantile(0.5, lat_bucket{le!=\"x\"})",
    );
    assert!(a.warnings.is_empty());
    assert_eq!(a.infos.len(), 1);
    assert!(
        a.infos[0]
            .ends_with("over 5 samples from 2025-06-15T15:14:25Z to 2025-06-15T15:16:25Z (1:25)"),
        "{:?}",
        a.infos
    );
    // histogram_fraction reports bad buckets at its third argument, never monotonicity.
    let a = instant(&engine, &st, "histogram_fraction(0, 2, lat_bucket)");
    assert_eq!(a.warnings.len(), 1);
    assert!(a.warnings[0].ends_with("(1:26)"), "{:?}", a.warnings);
    assert!(a.infos.is_empty());
    // A bucket without `le` at all.
    let a = instant(&engine, &st, "histogram_quantile(0.5, jobs_queued)");
    assert_eq!(
        a.warnings,
        vec![
            "PromQL warning: bucket label \"le\" is missing or has a malformed value of \"\" for metric name \"jobs_queued\" (1:25)"
                .to_string()
        ]
    );
}

#[test]
fn sort_warns_only_in_range_queries() {
    let dir = tempfile::tempdir().unwrap();
    let db = store(dir.path());
    let st = TsdbStorage::new(&db, "e");
    let engine = Engine::new(EngineOptions::default());
    let want = "PromQL warning: sort is ineffective for range queries since results are always ordered by labels (1:5)";
    assert_eq!(
        range(&engine, &st, "sum(sort_desc(jobs_queued))").warnings,
        vec![want.to_string()]
    );
    assert!(instant(&engine, &st, "sum(sort_desc(jobs_queued))").is_empty());
    // A range query of one step is an instant query.
    let (_, a) = engine
        .range_annotated(&st, "sort(jobs_queued)", AT, AT, 1_000)
        .unwrap();
    assert!(a.is_empty());
}

//! `*_over_time` answered partly from the store's 5 m / 1 h rollups gives the answers of the
//! raw samples: two stores get the same data, one with downsampling on and one without, and
//! every query must agree (min, max, count, last, present exactly; sum and avg up to rounding).
//! Range queries on bucket boundaries also read `rate`, `increase`, `delta` and instant
//! selectors from rollups, and must agree the same way.

use std::cell::Cell;
use std::sync::Arc;

use vigil_model::{EnvId, LabelLimits, Labels, ManualClock, Matcher, stale_marker};
use vigil_promql::storage::TsdbStorage;
use vigil_promql::{
    Engine, EngineOptions, Matrix, RollupFields, RollupPoint, Storage, StoredSeries, Value,
};
use vigil_tsdb::{Db, Options, WriteBatch};

const H: i64 = 3_600_000;
const DAY: i64 = 24 * H;
/// A day boundary.
const B: i64 = 20_000 * DAY;

/// Counts how often rollups are read.
struct Counting<'a> {
    inner: TsdbStorage<'a>,
    rollup_reads: Cell<usize>,
}

impl Storage for Counting<'_> {
    fn select(
        &self,
        m: &[Matcher],
        mint: i64,
        maxt: i64,
        budget: usize,
    ) -> vigil_promql::Result<Vec<StoredSeries>> {
        self.inner.select(m, mint, maxt, budget)
    }

    fn rollup_cover(&self, res: i64) -> Option<i64> {
        self.inner.rollup_cover(res)
    }

    fn rollup_edge_cover(&self, res: i64) -> Option<i64> {
        self.inner.rollup_edge_cover(res)
    }

    fn rollup_boundary(&self, res: i64, edges: bool) -> Option<(i64, bool)> {
        self.inner.rollup_boundary(res, edges)
    }

    fn select_rollups(
        &self,
        m: &[Matcher],
        mint: i64,
        maxt: i64,
        res: i64,
        fields: RollupFields,
    ) -> vigil_promql::Result<Vec<(Labels, Vec<RollupPoint>)>> {
        self.rollup_reads.set(self.rollup_reads.get() + 1);
        self.inner.select_rollups(m, mint, maxt, res, fields)
    }
}

/// Sample `i` of series `s`: every 30 s with a per-series phase (series 0 sits exactly on
/// bucket boundaries), millisecond jitter on series 2, NaNs on series 3, a gap begun and ended by a
/// staleness marker on series 4, a resetting counter on series 5.
fn sample(s: usize, i: i64) -> Option<(i64, f64)> {
    let phase = [0, 7_123, 0, 29_999, 15_000, 1][s];
    let jitter = if s == 2 { (i * 7919) % 997 } else { 0 };
    let t = B + i * 30_000 + phase + jitter;
    let v = match s {
        3 if i % 97 == 0 => f64::NAN,
        4 if (3000..3400).contains(&i) => return None,
        4 if i == 2999 || i == 3400 => stale_marker(),
        5 => ((i % 5000) * 3) as f64,
        _ => ((i * 31 + s as i64 * 17) % 1009) as f64 / 7.0 - 50.0,
    };
    Some((t, v))
}

/// A store rolling up raw blocks `downsample_after_h` hours old (`None`: never).
fn open(dir: &std::path::Path, clock: &ManualClock, downsample_after_h: Option<u64>) -> Db {
    Db::open(
        dir,
        Options {
            clock: Arc::new(clock.clone()),
            maintenance_interval: None,
            downsample_after: downsample_after_h.map(|h| std::time::Duration::from_secs(h * 3600)),
            ..Options::default()
        },
    )
    .unwrap()
}

/// Three days of the six series into both stores, maintained as they go.
fn fill(dbs: &[&Db], clock: &ManualClock) {
    let (env, lim) = (EnvId::new("e").unwrap(), LabelLimits::default());
    let per_hour = H / 30_000;
    for hour in 0..72 {
        let mut b = WriteBatch::new(env.clone());
        for s in 0..6 {
            let pts: Vec<(i64, f64)> = (hour * per_hour..(hour + 1) * per_hour)
                .filter_map(|i| sample(s, i))
                .collect();
            let l = Labels::from_pairs([("__name__", "m"), ("s", &s.to_string())]);
            b.add_series(&l, &pts, &lim).unwrap();
        }
        clock.set(B + (hour + 1) * H);
        for db in dbs {
            assert_eq!(db.write(&b).unwrap().rejected_total(), 0);
            if hour % 6 == 5 {
                db.maintain().unwrap();
            }
        }
    }
}

/// Stores (rolling up after the given hours, or never) filled with the three days and
/// maintained past the end.
fn filled(clock: &ManualClock, after_h: &[Option<u64>]) -> (Vec<tempfile::TempDir>, Vec<Db>) {
    let dirs: Vec<_> = after_h
        .iter()
        .map(|_| tempfile::tempdir().unwrap())
        .collect();
    let dbs: Vec<Db> = dirs
        .iter()
        .zip(after_h)
        .map(|(d, h)| open(d.path(), clock, *h))
        .collect();
    fill(&dbs.iter().collect::<Vec<_>>(), clock);
    clock.set(B + 72 * H + 600_000);
    for db in &dbs {
        db.maintain().unwrap();
    }
    (dirs, dbs)
}

type Points = Vec<(String, Vec<(i64, f64)>)>;

/// Asserts a range query's raw and rollup answers agree (as `close` for `func`); returns how
/// many points were compared.
fn agree(q: &str, func: &str, want: &Points, got: &Points) -> usize {
    assert_eq!(want.len(), got.len(), "{q}");
    let mut n = 0;
    for (w, g) in want.iter().zip(got) {
        assert_eq!(w.0, g.0, "{q}");
        assert_eq!(w.1.len(), g.1.len(), "{q} {}", w.0);
        for (a, b) in w.1.iter().zip(&g.1) {
            assert!(
                a.0 == b.0 && close(func, a.1, b.1),
                "{q} {}: raw {a:?}, rollups {b:?}",
                w.0
            );
            n += 1;
        }
    }
    n
}

fn close(func: &str, a: f64, b: f64) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    match func {
        "sum_over_time" | "avg_over_time" => (a - b).abs() <= 1e-9 * a.abs().max(b.abs()),
        _ => a == b,
    }
}

fn vector(v: Value) -> Vec<(String, f64)> {
    let Value::Vector(v) = v else {
        panic!("expected a vector, got {v:?}")
    };
    let mut out: Vec<(String, f64)> = v.into_iter().map(|s| (s.metric.to_string(), s.v)).collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn points(m: Matrix) -> Points {
    m.into_iter()
        .map(|s| (s.metric.to_string(), s.points))
        .collect()
}

#[test]
fn rollups_answer_over_time_functions_like_raw_samples() {
    let clock = ManualClock::new(B);
    // Rolled up from 24 h blocks, and from 2 h blocks whose rollups are merged afterwards
    // (buckets split at the 2 h boundaries put back together).
    let (_dirs, dbs) = filled(&clock, &[None, Some(24), Some(2)]);
    let (raw, day, early) = (&dbs[0], &dbs[1], &dbs[2]);
    let rollup_blocks = |db: &Db| {
        db.stats()
            .blocks
            .iter()
            .filter(|b| b.resolution_ms == 300_000)
            .map(|b| b.range_end - b.range_start)
            .collect::<Vec<_>>()
    };
    assert!(
        rollup_blocks(early).iter().any(|&span| span >= DAY),
        "{:?}",
        rollup_blocks(early)
    );
    for rolled in [day, early] {
        agree_with_raw(raw, rolled);
    }
}

/// Aligned range queries read as tables of rollups and raw samples agree with raw samples.
#[test]
fn rollup_tables_answer_aligned_range_queries_like_raw_samples() {
    let clock = ManualClock::new(B);
    let (_dirs, dbs) = filled(&clock, &[None, Some(2)]);
    let engine = Engine::new(EngineOptions::default());
    let reference = TsdbStorage::new(&dbs[0], "e");
    let st = Counting {
        inner: TsdbStorage::new(&dbs[1], "e"),
        rollup_reads: Cell::new(0),
    };
    assert!(
        st.rollup_edge_cover(300_000).is_some(),
        "rollups lack edges"
    );
    let m5 = 300_000;
    let mut checked = 0;
    for (q, step) in [
        ("rate(m[5m])", m5),
        ("increase(m[1h])", H),
        ("increase(m[15m])", 15 * 60_000),
        ("delta(m[10m])", m5),
        ("rate(m[1h] offset 1h)", H),
        ("sum by (s) (rate(m[5m]))", m5),
        ("sum(increase(m[5m]))", m5),
        ("m", m5),
        ("m offset 10m", m5),
        ("quantile(0.9, m)", m5),
        ("max_over_time(m[1h])", H),
        ("avg_over_time(m[5m])", m5),
        ("last_over_time(m[15m])", m5),
        ("count_over_time(m[2h])", H),
    ] {
        let before = st.rollup_reads.get();
        // From the second day to past the end (the newest hours are raw only).
        let (start, end) = (B + DAY, B + 72 * H + 10 * 60_000);
        let end = end - end % step;
        let want = points(engine.range(&reference, q, start, end, step).unwrap());
        let got = points(engine.range(&st, q, start, end, step).unwrap());
        assert!(st.rollup_reads.get() > before, "{q} did not read rollups");
        checked += agree(q, "sum_over_time", &want, &got);
    }
    assert!(checked > 10_000, "{checked}");
}

fn agree_with_raw(raw: &Db, rolled: &Db) {
    let engine = Engine::new(EngineOptions::default());
    let reference = TsdbStorage::new(raw, "e");
    let st = Counting {
        inner: TsdbStorage::new(rolled, "e"),
        rollup_reads: Cell::new(0),
    };
    assert!(st.rollup_cover(300_000).is_some(), "no rollups were made");
    assert!(reference.rollup_cover(300_000).is_none());

    let funcs = [
        "avg_over_time",
        "count_over_time",
        "last_over_time",
        "max_over_time",
        "min_over_time",
        "present_over_time",
        "sum_over_time",
    ];
    let mut instant_checked = 0;
    for func in funcs {
        for sel in [
            "m[1h]",
            "m[90m]",
            "m[6h]",
            "m[1d]",
            "m[36h]",
            "m[6h] offset 2h",
            "(m[1d] @ 1728002345.678)",
        ] {
            for q in [
                format!("{func}({sel})"),
                format!("sum by (s) ({func}({sel}))"),
            ] {
                for t in [
                    B + DAY + 3 * H,
                    B + DAY + 3 * H + 123_457,
                    B + 2 * DAY,
                    B + 2 * DAY + H + 30_000,
                    B + 2 * DAY + 20 * H,
                    B + 3 * DAY - 1,
                ] {
                    let want = vector(engine.instant(&reference, &q, t).unwrap());
                    let got = vector(engine.instant(&st, &q, t).unwrap());
                    assert_eq!(want.len(), got.len(), "{q} at {t}: {want:?} vs {got:?}");
                    for (w, g) in want.iter().zip(&got) {
                        assert!(
                            w.0 == g.0 && close(func, w.1, g.1),
                            "{q} at {t}: raw {w:?}, rollups {g:?}"
                        );
                    }
                    instant_checked += 1;
                }
            }
        }
        // Aggregated, and as range queries: aligned steps, unaligned steps, 5 m steps.
        for (q, start, end, step) in [
            (
                format!("sum by (s) ({func}(m[6h]))"),
                B + DAY,
                B + 3 * DAY,
                H,
            ),
            (
                format!("{func}(m[2h])"),
                B + DAY + 1,
                B + 2 * DAY + 6 * H,
                7 * 60_000,
            ),
            (format!("{func}(m[1h])"), B + 36 * H, B + 60 * H, 300_000),
        ] {
            let want = points(engine.range(&reference, &q, start, end, step).unwrap());
            let got = points(engine.range(&st, &q, start, end, step).unwrap());
            agree(&q, func, &want, &got);
        }
    }
    assert!(instant_checked > 250);
    // Most of those read rollups (the rest would not have saved anything).
    assert!(
        st.rollup_reads.get() > 150,
        "rollups were read only {} times",
        st.rollup_reads.get()
    );
}

#[test]
fn rollups_are_not_used_where_they_are_not_exact() {
    let clock = ManualClock::new(B);
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), &clock, Some(24));
    fill(&[&db], &clock);
    clock.set(B + 72 * H + 600_000);
    db.maintain().unwrap();
    let engine = Engine::new(EngineOptions::default());
    let st = Counting {
        inner: TsdbStorage::new(&db, "e"),
        rollup_reads: Cell::new(0),
    };
    let t = B + 2 * DAY;
    for q in [
        // Functions rollups cannot answer.
        "stddev_over_time(m[1d])",
        "quantile_over_time(0.5, m[1d])",
        "rate(m[1d])",
        // Too short a range for a whole bucket in every window.
        "max_over_time(m[5m])",
        // Inside a subquery (evaluated at the subquery's own steps).
        "max_over_time(max_over_time(m[1d])[1h:5m])",
        // Plain selectors.
        "m",
    ] {
        engine.instant(&st, q, t).unwrap();
        assert_eq!(st.rollup_reads.get(), 0, "{q} read rollups");
    }
    // Range queries off bucket boundaries, functions rollups cannot answer, selectors whose
    // lookback is not one bucket.
    for (q, start, step) in [
        ("rate(m[5m])", t + 1, 300_000),
        ("rate(m[5m])", t, 420_000),
        ("rate(m[7m])", t, 300_000),
        ("irate(m[5m])", t, 300_000),
        ("m", t, 60_000),
        ("m @ 1728002345", t, 300_000),
    ] {
        engine.range(&st, q, start, t + 6 * H, step).unwrap();
        assert_eq!(
            st.rollup_reads.get(),
            0,
            "{q} from {start} step {step} read rollups"
        );
    }
    // A pending deletion: rollups still hold the deleted samples, so raw answers.
    let before = vector(engine.instant(&st, "count_over_time(m[1d])", t).unwrap());
    assert_eq!(st.rollup_reads.get(), 1);
    db.delete("e", &[Matcher::eq("s", "1")], B + DAY + H, B + DAY + 2 * H)
        .unwrap();
    let after = vector(engine.instant(&st, "count_over_time(m[1d])", t).unwrap());
    assert_eq!(st.rollup_reads.get(), 1);
    let s1 = |v: &[(String, f64)]| v.iter().find(|x| x.0.contains("\"1\"")).unwrap().1;
    assert_eq!(s1(&before) - s1(&after), 120.0);
}

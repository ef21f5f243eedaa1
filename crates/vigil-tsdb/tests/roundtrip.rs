//! Property test: any sequence of appends — NaN, staleness markers, ±Inf, −0.0, out-of-order
//! within the window, duplicates — reads back bit-exact from the head, after WAL replay, after
//! the head is cut into blocks, after compaction and after reopening.

mod common;

use std::collections::BTreeMap;

use common::*;
use proptest::prelude::*;
use vigil_model::ManualClock;
use vigil_tsdb::RejectReason;

#[derive(Debug, Clone)]
struct Op {
    series: usize,
    dt: i64,
    value: f64,
}

fn value() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => (0u32..1000).prop_map(|x| x as f64 * 0.25),
        1 => Just(f64::NAN),
        1 => Just(vigil_model::stale_marker()),
        1 => Just(f64::INFINITY),
        1 => Just(f64::NEG_INFINITY),
        1 => Just(-0.0),
        1 => any::<u64>().prop_map(f64::from_bits),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    (
        0usize..3,
        prop_oneof![6 => 1i64..120_000, 2 => -700_000i64..0, 1 => Just(0i64)],
        value(),
    )
        .prop_map(|(series, dt, value)| Op { series, dt, value })
}

type Model = Vec<BTreeMap<i64, u64>>;

/// One series read through `read_next_run`: the run, or the decoded samples.
type ReadBack = (Option<vigil_tsdb::CounterRun>, Vec<(i64, f64)>);

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn appends_read_back_bit_exact_through_every_stage(ops in proptest::collection::vec(op(), 1..250)) {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let window = 600_000i64;
        let series: Vec<_> = (0..3).map(|i| labels("m", &[("i", &i.to_string())])).collect();
        let mut model: Model = vec![BTreeMap::new(); 3];
        let mut last = [i64::MIN; 3];
        let mut cursor = [T0; 3];
        let db = open(dir.path(), &clock);
        for o in &ops {
            let t = cursor[o.series] + o.dt;
            cursor[o.series] = cursor[o.series].max(t);
            let s = o.series;
            let bits = o.value.to_bits();
            let expect: Result<bool, RejectReason> = if t > last[s] {
                Ok(true)
            } else if t == last[s] {
                if model[s][&t] == bits { Ok(false) } else { Err(RejectReason::DuplicateTimestamp) }
            } else if t < last[s] - window {
                Err(RejectReason::TooOld)
            } else {
                match model[s].get(&t) {
                    Some(&b) if b == bits => Ok(false),
                    Some(_) => Err(RejectReason::DuplicateTimestamp),
                    None => Ok(true),
                }
            };
            let out = write(&db, "prod", &series[s], &[(t, o.value)]);
            match expect {
                Ok(true) => {
                    prop_assert_eq!(out.accepted, 1, "t={} last={}", t, last[s]);
                    model[s].insert(t, bits);
                    last[s] = last[s].max(t);
                }
                Ok(false) => prop_assert_eq!(out.unchanged, 1),
                Err(r) => {
                    prop_assert_eq!(out.rejected.len(), 1);
                    prop_assert_eq!(out.rejected[0].reason, r);
                }
            }
        }
        let expected: Vec<_> = series
            .iter()
            .zip(&model)
            .filter(|(_, m)| !m.is_empty())
            .map(|(l, m)| (l.clone(), m.iter().map(|(t, b)| (*t, *b)).collect::<Vec<_>>()))
            .collect();
        prop_assert_eq!(&all(&db, "prod"), &expected, "head");
        // Reader threads' path (head chunks copied into reused buffers), whole and in a range.
        let any = [vigil_model::Matcher::new(vigil_model::MatchOp::Re, "__name__", ".+").unwrap()];
        prop_assert_eq!(&read_parts(&db, "prod", &any, i64::MIN, i64::MAX, 2), &expected, "head, parts");
        let (lo, hi) = (T0 + 200_000, T0 + 2_000_000);
        prop_assert_eq!(read_parts(&db, "prod", &any, lo, hi, 2), read(&db, "prod", &any, lo, hi), "head range, parts");
        drop(db);
        let db = open(dir.path(), &clock);
        prop_assert_eq!(&all(&db, "prod"), &expected, "after WAL replay");
        // Move time far ahead so the whole head is cut into 2 h blocks, then compacted.
        clock.set(cursor.iter().max().unwrap() + 3 * DAY);
        db.maintain().unwrap();
        prop_assert_eq!(db.stats().head_series, 0);
        prop_assert_eq!(&all(&db, "prod"), &expected, "after cut and compaction");
        prop_assert_eq!(&read_parts(&db, "prod", &any, i64::MIN, i64::MAX, 3), &expected, "blocks, parts");
        drop(db);
        let db = open(dir.path(), &clock);
        prop_assert_eq!(&all(&db, "prod"), &expected, "after reopen from blocks");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// A counter read as a `CounterRun` (first, last, count, no decoding of the range) agrees
    /// with the decoded samples, and comes back as a run only when the range really has no
    /// reset, NaN or staleness marker and ends with the series' newest sample.
    #[test]
    fn counter_runs_agree_with_decoded_samples(
        steps in proptest::collection::vec((1i64..20_000, 0u32..200), 1..400),
        ranges in proptest::collection::vec((0i64..3_000_000, 0i64..3), 1..8),
        chunk in 5usize..130,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let db = vigil_tsdb::Db::open(
            dir.path(),
            vigil_tsdb::Options { head_chunk_samples: chunk, ..opts(&clock) },
        )
        .unwrap();
        let l = labels("c", &[]);
        let (mut t, mut v) = (T0, 0.0f64);
        let mut samples = Vec::new();
        for &(dt, kind) in &steps {
            t += dt;
            v = match kind {
                0 => 0.0,                        // a reset
                1 => f64::NAN,
                2 => vigil_model::stale_marker(),
                k => if v.is_finite() { v + f64::from(k % 7) } else { f64::from(k) },
            };
            samples.push((t, v));
        }
        for part in samples.chunks(37) {
            write(&db, "prod", &l, part);
        }
        let any = [vigil_model::Matcher::eq("__name__", "c")];
        let (newest, _) = *samples.last().unwrap();
        for &(back, end) in &ranges {
            // Ending before, at or after the newest sample.
            let (lo, hi) = (newest - back, newest + (end - 1) * 5_000);
            let want = read(&db, "prod", &any, lo, hi);
            let mut got: Option<ReadBack> = None;
            for mut p in db.querier("prod", lo, hi).select_parts(&any, 1).unwrap() {
                let mut buf = Vec::new();
                while let Some(r) = p.read_next_run(&mut buf, true) {
                    let (_, run) = r.unwrap();
                    got = Some((run, std::mem::take(&mut buf)));
                }
            }
            match (want.first(), got) {
                (None, None) => {}
                (Some((_, w)), Some((Some(run), buf))) => {
                    prop_assert!(buf.is_empty());
                    prop_assert_eq!(run.samples, w.len());
                    prop_assert_eq!((run.first.0, run.first.1.to_bits()), w[0]);
                    prop_assert_eq!((run.last.0, run.last.1.to_bits()), *w.last().unwrap());
                    prop_assert_eq!(w.last().unwrap().0, newest);
                    let vals: Vec<f64> = w.iter().map(|s| f64::from_bits(s.1)).collect();
                    prop_assert!(vals.iter().all(|v| v.is_finite()));
                    prop_assert!(vals.windows(2).all(|p| p[1] >= p[0]), "{:?}", vals);
                }
                (Some((_, w)), Some((None, buf))) => {
                    let bits: Vec<(i64, u64)> = buf.iter().map(|s| (s.0, s.1.to_bits())).collect();
                    prop_assert_eq!(&bits, w);
                }
                (w, g) => prop_assert!(false, "read {:?}, parts {:?}", w, g),
            }
        }
    }
}

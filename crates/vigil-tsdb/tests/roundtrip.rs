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

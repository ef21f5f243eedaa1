//! Batches built with the store attached (`Db::attach`): series the store already holds skip
//! their label checks and lookup, new ones are checked as always, and a series the head drops
//! between building and writing the batch is resolved again instead of losing samples.

mod common;

use common::*;
use vigil_model::{EnvId, LabelLimits, ManualClock};
use vigil_tsdb::WriteBatch;

#[test]
fn known_series_skip_checks_and_new_ones_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let db = open(dir.path(), &clock);
    let a = labels("up", &[("job", "node-exporter")]);
    assert_eq!(write(&db, "prod", &a, &[(T0, 1.0)]).accepted, 1);

    // Limits the known series would now fail: values of at most 4 bytes.
    let tight = LabelLimits {
        max_value_len: 4,
        ..LabelLimits::default()
    };
    let mut b = WriteBatch::new(EnvId::new("prod").unwrap());
    db.attach(&mut b);
    b.add_series(&a, &[(T0 + 10_000, 2.0)], &tight).unwrap();
    let long = labels("up", &[("job", "another-long-job")]);
    assert!(b.add_series(&long, &[(T0 + 10_000, 3.0)], &tight).is_err());
    // The same labels in another environment are another series: checked.
    let mut other = WriteBatch::new(EnvId::new("dev").unwrap());
    db.attach(&mut other);
    assert!(other.add_series(&a, &[(T0, 1.0)], &tight).is_err());

    let out = db.write(&b).unwrap();
    assert_eq!((out.accepted, out.series_created), (1, 0));
    let got = all(&db, "prod");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1.len(), 2);
    b.detach();
    // Written again without the store attached: the samples are duplicates, nothing breaks.
    assert_eq!(db.write(&b).unwrap().unchanged, 1);
}

#[test]
fn a_series_dropped_from_the_head_after_the_batch_was_built_still_gets_its_samples() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let db = open(dir.path(), &clock);
    let a = labels("up", &[("job", "node")]);
    write(&db, "prod", &a, &[(T0, 1.0)]);
    let mut b = WriteBatch::new(EnvId::new("prod").unwrap());
    db.attach(&mut b);
    let t = T0 + 5 * HOUR;
    b.add_series(&a, &[(t, 2.0)], &LabelLimits::default())
        .unwrap();
    // Hours later the head is cut into blocks and idle series leave it.
    clock.set(t);
    db.maintain().unwrap();
    let out = db.write(&b).unwrap();
    assert_eq!(out.accepted, 1);
    let got = all(&db, "prod");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, vec![(T0, 1f64.to_bits()), (t, 2f64.to_bits())]);
}

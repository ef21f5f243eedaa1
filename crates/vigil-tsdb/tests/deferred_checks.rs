//! Deferred label checks (`WriteBatch::defer_label_checks`): series the store already holds
//! are not checked again, new ones are checked at write before anything is stored, and a batch
//! written after the head dropped one of its series still stores every sample.

mod common;

use common::*;
use vigil_model::{EnvId, LabelLimits, ManualClock};
use vigil_tsdb::{Error, WriteBatch};

fn tight() -> LabelLimits {
    // Values of at most 4 bytes.
    LabelLimits {
        max_value_len: 4,
        ..LabelLimits::default()
    }
}

#[test]
fn known_series_skip_checks_and_new_ones_are_checked_before_anything_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let db = open(dir.path(), &clock);
    let a = labels("up", &[("job", "node-exporter")]);
    assert_eq!(write(&db, "prod", &a, &[(T0, 1.0)]).accepted, 1);

    let mut b = WriteBatch::new(EnvId::new("prod").unwrap());
    b.defer_label_checks(Some(tight()));
    b.add_series(&a, &[(T0 + 10_000, 2.0)], &tight()).unwrap();
    let out = db.write(&b).unwrap();
    assert_eq!((out.accepted, out.series_created), (1, 0));

    // A new series that breaks the limits fails the whole batch, the known one included.
    let long = labels("up", &[("job", "another-long-job")]);
    let mut c = WriteBatch::new(EnvId::new("prod").unwrap());
    c.defer_label_checks(Some(tight()));
    c.add_series(&a, &[(T0 + 20_000, 4.0)], &tight()).unwrap();
    c.add_series(&long, &[(T0 + 20_000, 5.0)], &tight())
        .unwrap();
    match db.write(&c) {
        Err(Error::InvalidLabels { series_index, .. }) => assert_eq!(series_index, 1),
        other => panic!("expected InvalidLabels, got {other:?}"),
    }
    // The same labels in another environment are another series: checked.
    let mut d = WriteBatch::new(EnvId::new("dev").unwrap());
    d.defer_label_checks(Some(tight()));
    d.add_series(&a, &[(T0, 1.0)], &tight()).unwrap();
    assert!(matches!(db.write(&d), Err(Error::InvalidLabels { .. })));

    let got = all(&db, "prod");
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].1.len(), 2);
    assert!(all(&db, "dev").is_empty());
}

#[test]
fn a_series_dropped_from_the_head_before_the_write_still_gets_its_samples() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let db = open(dir.path(), &clock);
    let a = labels("up", &[("job", "node")]);
    write(&db, "prod", &a, &[(T0, 1.0)]);
    let mut b = WriteBatch::new(EnvId::new("prod").unwrap());
    b.defer_label_checks(Some(LabelLimits::default()));
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

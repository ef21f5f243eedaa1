//! Blocks, compaction, retention, downsampling, deletion, snapshots, tenancy and limits,
//! driven by an injected clock (no sleeping).

mod common;

use std::collections::HashMap;

use common::*;
use vigil_model::{ManualClock, MatchOp, Matcher};
use vigil_tsdb::{Db, Error, Options, ROLLUP_RESOLUTIONS, RejectReason};

fn name(n: &str) -> Matcher {
    Matcher::eq("__name__", n)
}

/// `hours` hours of one sample per minute for `n` series of metric `metric`.
fn fill(db: &Db, env: &str, metric: &str, n: usize, from: i64, hours: i64) {
    for s in 0..n {
        let l = labels(metric, &[("s", &s.to_string())]);
        let samples: Vec<(i64, f64)> = (0..hours * 60)
            .map(|i| (from + i * 60_000, (i % 17) as f64 + s as f64))
            .collect();
        for part in samples.chunks(500) {
            let out = write(db, env, &l, part);
            assert_eq!(out.accepted, part.len());
        }
    }
}

/// Rollups of metric `metric` in "prod" over `[mint, maxt]`: 5 m, then 1 h.
type Rollups = Vec<(vigil_model::Labels, Vec<vigil_tsdb::RollupPoint>)>;
fn both_rollups(db: &Db, metric: &str, mint: i64, maxt: i64) -> (Rollups, Rollups) {
    let q = db.querier("prod", mint, maxt);
    let read = |res| q.select_rollups(&[name(metric)], res).unwrap();
    (read(ROLLUP_RESOLUTIONS[0]), read(ROLLUP_RESOLUTIONS[1]))
}

/// A fresh store at T0 rolling up blocks `after_secs` old.
fn rolling_up(after_secs: u64) -> (tempfile::TempDir, ManualClock, Db) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let o = Options {
        downsample_after: Some(secs(after_secs)),
        ..opts(&clock)
    };
    let db = Db::open(dir.path(), o).unwrap();
    (dir, clock, db)
}

/// The `meta.json` of every block in the store at `dir`.
fn block_metas(dir: &std::path::Path) -> Vec<vigil_tsdb::BlockMeta> {
    std::fs::read_dir(dir.join("blocks"))
        .unwrap()
        .flatten()
        .map(|e| {
            serde_json::from_slice(&std::fs::read(e.path().join("meta.json")).unwrap()).unwrap()
        })
        .collect()
}

#[test]
fn head_is_cut_into_2h_blocks_then_compacted_to_a_day() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let db = open(dir.path(), &clock);
    fill(&db, "prod", "m", 3, T0, 30);
    clock.set(T0 + 30 * HOUR);
    db.maintain().unwrap();
    let st = db.stats();
    // Day 1 compacted into one 24 h block; the rest of day 2 stays in 2 h blocks until the
    // day is complete, and the last 1.5 h stays in the head.
    let day_blocks: Vec<_> = st
        .blocks
        .iter()
        .filter(|b| b.range_end - b.range_start == DAY)
        .collect();
    assert_eq!(day_blocks.len(), 1, "{:#?}", st.blocks);
    assert_eq!(day_blocks[0].level, 2);
    assert!(
        st.blocks
            .iter()
            .filter(|b| b.range_end - b.range_start == 2 * HOUR)
            .count()
            >= 2
    );
    assert!(st.head_series > 0);
    let got = read(&db, "prod", &[name("m")], T0, T0 + 30 * HOUR);
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|(_, s)| s.len() == 30 * 60));
    assert!(st.bytes_per_sample > 0.0 && st.bytes_per_sample < 16.0);
    // Reads over a sub-range skip what is outside it.
    let got = read(
        &db,
        "prod",
        &[name("m")],
        T0 + HOUR,
        T0 + HOUR + 59 * 60_000,
    );
    assert!(got.iter().all(|(_, s)| s.len() == 60));
}

#[test]
fn retention_by_age_drops_old_blocks_and_hides_old_data_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let o = Options {
        retention: secs(2 * 86_400),
        ..opts(&clock)
    };
    let db = Db::open(dir.path(), o).unwrap();
    fill(&db, "prod", "m", 1, T0, 4 * 24);
    clock.set(T0 + 4 * DAY);
    db.maintain().unwrap();
    let st = db.stats();
    assert!(
        st.blocks.iter().all(|b| b.range_end > T0 + 2 * DAY),
        "{:#?}",
        st.blocks
    );
    let got = read(&db, "prod", &[name("m")], i64::MIN, i64::MAX);
    let first = got[0].1[0].0;
    assert!(
        first >= T0 + 2 * DAY,
        "data older than retention is visible"
    );
}

#[test]
fn per_environment_retention_overrides_the_global_one() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let mut env_retention = HashMap::new();
    env_retention.insert("ci".to_string(), secs(86_400));
    let o = Options {
        env_retention,
        ..opts(&clock)
    };
    let db = Db::open(dir.path(), o).unwrap();
    fill(&db, "prod", "m", 1, T0, 72);
    fill(&db, "ci", "m", 1, T0, 72);
    clock.set(T0 + 3 * DAY + HOUR);
    db.maintain().unwrap();
    let prod = read(&db, "prod", &[name("m")], i64::MIN, i64::MAX);
    let ci = read(&db, "ci", &[name("m")], i64::MIN, i64::MAX);
    assert_eq!(prod[0].1[0].0, T0, "prod keeps 15 days");
    assert!(ci[0].1[0].0 >= T0 + 2 * DAY + HOUR, "ci keeps one day");
    // Once trimmed, a block still holding older data of other environments is not rewritten
    // again at every maintenance (only when more of `ci` ages out).
    let ids = |db: &Db| -> Vec<String> { db.stats().blocks.into_iter().map(|b| b.id).collect() };
    let trimmed = ids(&db);
    db.maintain().unwrap();
    assert_eq!(ids(&db), trimmed);
    // Physically gone too: reopening with the override removed does not bring it back.
    drop(db);
    let db = open(dir.path(), &clock);
    let ci = read(&db, "ci", &[name("m")], i64::MIN, i64::MAX);
    assert!(ci[0].1[0].0 >= T0 + 2 * DAY, "{}", ci[0].1[0].0 - T0);
}

#[test]
fn retention_by_size_drops_oldest_blocks_first() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let db = open(dir.path(), &clock);
    fill(&db, "prod", "m", 20, T0, 48);
    clock.set(T0 + 3 * DAY);
    db.maintain().unwrap();
    let before = db.stats();
    let total: u64 = before.blocks.iter().map(|b| b.bytes).sum();
    drop(db);
    let o = Options {
        retention_bytes: Some(total * 6 / 10),
        ..opts(&clock)
    };
    let db = Db::open(dir.path(), o).unwrap();
    db.maintain().unwrap();
    let after = db.stats();
    assert!(after.blocks.len() < before.blocks.len());
    let oldest_before = before.blocks.iter().map(|b| b.range_start).min().unwrap();
    assert!(after.blocks.iter().all(|b| b.range_start > oldest_before));
}

#[test]
fn downsampling_makes_5m_and_1h_rollups_that_outlive_raw_data() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let o = Options {
        downsample_after: Some(secs(86_400)),
        retention: secs(3 * 86_400),
        ..opts(&clock)
    };
    let db = Db::open(dir.path(), o.clone()).unwrap();
    fill(&db, "prod", "cpu", 2, T0, 24);
    clock.set(T0 + 2 * DAY + 2 * HOUR);
    db.maintain().unwrap();
    let (five, hour) = both_rollups(&db, "cpu", T0, T0 + DAY);
    let q = db.querier("prod", T0, T0 + DAY);
    assert_eq!(five.len(), 2);
    // Buckets are keyed by their end and hold (end − 5m, end]: the first holds only the sample
    // at T0, the last the final four minutes.
    assert_eq!(five[0].1.len(), 24 * 12 + 1);
    assert_eq!(hour[0].1.len(), 25);
    assert_eq!(five[0].1[0].ts_ms, T0);
    assert_eq!(five[0].1[0].count, 1);
    assert_eq!(five[0].1.last().unwrap().count, 4);
    // Every other bucket has its five samples, also those split by the 2 h block boundaries
    // (the sample at a block's start ends the previous block's last bucket).
    assert!(five[0].1[1..24 * 12].iter().all(|p| p.count == 5));
    // Check buckets against the raw data: series s=0, minute i has value i % 17.
    for end in [T0 + 5 * 60_000, T0 + 2 * HOUR, T0 + 10 * HOUR + 35 * 60_000] {
        let raw = read(
            &db,
            "prod",
            &[name("cpu"), Matcher::eq("s", "0")],
            end - 5 * 60_000 + 1,
            end,
        );
        let vals: Vec<f64> = raw[0].1.iter().map(|(_, b)| f64::from_bits(*b)).collect();
        let p = five[0].1[five[0].1.iter().position(|p| p.ts_ms == end).unwrap()];
        assert_eq!(p.count as usize, vals.len());
        assert_eq!(p.sum, vals.iter().sum::<f64>());
        assert_eq!(p.min, vals.iter().cloned().fold(f64::INFINITY, f64::min));
        assert_eq!(
            p.max,
            vals.iter().cloned().fold(f64::NEG_INFINITY, f64::max)
        );
        assert_eq!(p.last, *vals.last().unwrap());
        // The bucket's edges: first and last sample, `rate`'s reset correction.
        let times: Vec<i64> = raw[0].1.iter().map(|(t, _)| *t).collect();
        let resets: f64 = vals.windows(2).filter(|w| w[1] < w[0]).map(|w| w[0]).sum();
        assert_eq!((p.first_ts, p.last_ts), (times[0], *times.last().unwrap()));
        assert_eq!((p.first, p.resets, p.stale_end), (vals[0], resets, false));
    }
    // Everything is rolled up and the head is empty: rollups hold every sample, edges too.
    assert_eq!(q.rollup_cover(ROLLUP_RESOLUTIONS[0]), Some(i64::MAX));
    assert_eq!(q.rollup_edge_cover(ROLLUP_RESOLUTIONS[0]), Some(i64::MAX));
    // New samples in the head stop the cover no later than where they start (the head
    // reports the boundary it was last cut at).
    fill(&db, "prod", "mem", 1, T0 + 2 * DAY, 1);
    let q2 = db.querier("prod", T0, T0 + 3 * DAY);
    let cover = q2.rollup_cover(ROLLUP_RESOLUTIONS[1]).unwrap();
    assert!((T0 + DAY..=T0 + 2 * DAY).contains(&cover), "{cover}");
    // A pending deletion stops it where the deletion starts.
    db.delete(
        "prod",
        &[Matcher::eq("s", "1")],
        T0 + 3 * HOUR,
        T0 + 4 * HOUR,
    )
    .unwrap();
    let q3 = db.querier("prod", T0, T0 + 3 * DAY);
    assert_eq!(q3.rollup_cover(ROLLUP_RESOLUTIONS[1]), Some(T0 + 3 * HOUR));
    // Raw data expires on its own retention; rollups stay.
    clock.set(T0 + 5 * DAY);
    db.maintain().unwrap();
    assert!(read(&db, "prod", &[name("cpu")], i64::MIN, i64::MAX).is_empty());
    let q = db.querier("prod", T0, T0 + DAY);
    assert_eq!(
        q.select_rollups(&[name("cpu")], ROLLUP_RESOLUTIONS[1])
            .unwrap()[0]
            .1
            .len(),
        25
    );
    drop(db);
    let db = Db::open(dir.path(), o).unwrap();
    let q = db.querier("prod", T0, T0 + DAY);
    let five = q
        .select_rollups(&[name("cpu")], ROLLUP_RESOLUTIONS[0])
        .unwrap();
    assert_eq!(five[0].1.len(), 24 * 12 + 1);
    // The deletion, applied, took every bucket ending in [T0 + 3h, T0 + 4h] with it.
    assert_eq!(five[1].1.len(), 24 * 12 + 1 - 13);
}

#[test]
fn rollups_of_a_day_still_filling_merge_into_one_block_without_changing_a_point() {
    let (_dir, clock, db) = rolling_up(2 * 3600);
    fill(&db, "prod", "cpu", 2, T0, 16);
    let rollup_spans = |res: i64| -> Vec<i64> {
        let mut v: Vec<(i64, i64)> = db
            .stats()
            .blocks
            .iter()
            .filter(|b| b.resolution_ms == res)
            .map(|b| (b.range_start, b.range_end - b.range_start))
            .collect();
        v.sort();
        v.into_iter().map(|(_, span)| span / HOUR).collect()
    };
    let points = |res: i64| {
        db.querier("prod", T0, T0 + DAY)
            .select_rollups(&[name("cpu")], res)
            .unwrap()
    };
    // As a server would: maintenance every 2 h. Each round rolls up one more 2 h block; the
    // second pass at the same time merges what the first made, and no point changes.
    for h in (4..=16).step_by(2) {
        clock.set(T0 + h * HOUR);
        db.maintain().unwrap();
        let before: Vec<_> = ROLLUP_RESOLUTIONS.iter().map(|&r| points(r)).collect();
        db.maintain().unwrap();
        let after: Vec<_> = ROLLUP_RESOLUTIONS.iter().map(|&r| points(r)).collect();
        assert_eq!(before, after, "at hour {h}");
    }
    // 14 h rolled up (7 blocks of 2 h, each merged in as it came) are one block, for both
    // resolutions.
    for res in ROLLUP_RESOLUTIONS {
        assert_eq!(rollup_spans(res), vec![14], "resolution {res}");
    }
    // Every 5 m bucket is whole, also those the merged blocks' boundaries split (the last
    // one's fifth sample, at T0 + 14 h, starts the block not yet rolled up).
    let five = points(ROLLUP_RESOLUTIONS[0]);
    assert_eq!(five.len(), 2);
    assert_eq!(five[0].1.len(), 14 * 12 + 1);
    assert!(five[0].1[1..14 * 12].iter().all(|p| p.count == 5));
    assert_eq!(five[0].1[14 * 12].count, 4);
    // The merged rollups keep their edges: queries needing them still read them.
    let q = db.querier("prod", T0, T0 + DAY);
    assert_eq!(
        q.rollup_edge_cover(ROLLUP_RESOLUTIONS[0]),
        Some(T0 + 14 * HOUR)
    );
}

#[test]
fn rollups_merge_into_weeks_and_read_back_whole() {
    let (dir, clock, db) = rolling_up(3600);
    // T0 (2026-01-01) starts an epoch week: nine days are a whole week and two more days.
    fill(&db, "prod", "cpu", 2, T0, 9 * 24);
    for h in (2..=9 * 24 + 4).step_by(2) {
        clock.set(T0 + h * HOUR);
        db.maintain().unwrap();
    }
    let metas = block_metas(dir.path());
    for res in ROLLUP_RESOLUTIONS {
        let mut spans: Vec<(i64, i64)> = metas
            .iter()
            .filter(|m| m.resolution_ms == res)
            .map(|m| (m.range_start, (m.range_end - m.range_start) / HOUR))
            .collect();
        spans.sort();
        assert_eq!(
            spans,
            vec![(T0, 7 * 24), (T0 + 7 * DAY, 48)],
            "resolution {res}"
        );
    }
    // The week's 1 h rollups (168 points a series) are pcodec columns, sharing what is alike.
    let week_1h = metas
        .iter()
        .find(|m| m.resolution_ms == ROLLUP_RESOLUTIONS[1] && m.range_start == T0)
        .unwrap();
    assert_eq!(week_1h.pco_chunks, 2);
    assert!(week_1h.ts_columns > 0);
    // Every bucket reads back whole across the week and the days after it.
    let (five, hour) = both_rollups(&db, "cpu", T0, T0 + 10 * DAY);
    for (pts, per_day, full) in [(&five[0].1, 288, 5), (&hour[0].1, 24, 60)] {
        assert_eq!(pts.len(), 9 * per_day + 1);
        assert!(pts[1..9 * per_day].iter().all(|p| p.count == full));
        assert_eq!(pts[9 * per_day].count, full - 1);
    }
}

#[test]
fn rollup_columns_alike_across_series_are_stored_once_per_block() {
    let (dir, clock, db) = rolling_up(3600);
    // 20 series scraped at the same times: bucket ends, counts, first/last sample offsets
    // and staleness flags are the same for all; values (and, as they go down, resets) not.
    fill(&db, "prod", "cpu", 20, T0, 24);
    clock.set(T0 + 2 * DAY);
    db.maintain().unwrap();
    let metas = block_metas(dir.path());
    let day = metas
        .iter()
        .find(|m| m.resolution_ms == ROLLUP_RESOLUTIONS[0] && m.range_end - m.range_start == DAY)
        .expect("a day of 5 m rollups");
    assert_eq!(day.num_series, 20);
    // One set of shared columns (time, count, two edge offsets, staleness), not one per series.
    assert!(
        (5..=10).contains(&day.ts_columns),
        "{} shared columns",
        day.ts_columns
    );
    // And every point reads back as made from the raw samples.
    let five = db
        .querier("prod", T0, T0 + DAY)
        .select_rollups(&[name("cpu")], ROLLUP_RESOLUTIONS[0])
        .unwrap();
    assert_eq!(five.len(), 20);
    for (labels, pts) in &five {
        let s: i64 = labels.get("s").unwrap().parse().unwrap();
        assert_eq!(pts.len(), 24 * 12 + 1);
        for p in &pts[1..] {
            let end = (p.ts_ms - T0) / 60_000;
            let vals: Vec<f64> = (end - 4..=end)
                .filter(|i| *i < 24 * 60)
                .map(|i| (i % 17) as f64 + s as f64)
                .collect();
            assert_eq!(p.count as usize, vals.len());
            assert_eq!(p.sum, vals.iter().sum::<f64>());
            assert_eq!(p.last, *vals.last().unwrap());
            assert_eq!(p.first, vals[0]);
            assert_eq!(p.first_ts, T0 + (end - 4) * 60_000);
        }
    }
}

#[test]
fn deletion_hides_data_at_once_and_is_applied_to_blocks_and_replay() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let db = open(dir.path(), &clock);
    fill(&db, "prod", "m", 2, T0, 6);
    clock.set(T0 + 6 * HOUR);
    db.maintain().unwrap();
    assert!(!db.stats().blocks.is_empty());
    // Delete series s=1 between hour 1 and hour 5 (part in blocks, part in head).
    let sel = [name("m"), Matcher::eq("s", "1")];
    db.delete("prod", &sel, T0 + HOUR, T0 + 5 * HOUR).unwrap();
    let check = |db: &Db| {
        let got = read(db, "prod", &[name("m")], i64::MIN, i64::MAX);
        let s1 = &got.iter().find(|(l, _)| l.get("s") == Some("1")).unwrap().1;
        assert!(s1.iter().all(|(t, _)| *t < T0 + HOUR || *t > T0 + 5 * HOUR));
        assert_eq!(s1.len(), 6 * 60 - 4 * 60 - 1);
        let s0 = &got.iter().find(|(l, _)| l.get("s") == Some("0")).unwrap().1;
        assert_eq!(s0.len(), 6 * 60);
    };
    check(&db);
    db.maintain().unwrap();
    check(&db);
    assert!(
        !dir.path().join("tombstones.json").exists()
            || std::fs::read_to_string(dir.path().join("tombstones.json"))
                .unwrap()
                .trim()
                == "[]"
    );
    drop(db);
    let db = open(dir.path(), &clock);
    check(&db);
    assert!(
        db.delete("prod", &[], 0, 1).is_err(),
        "delete without matchers must be refused"
    );
}

#[test]
fn snapshot_restores_blocks_and_head() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let db = open(dir.path(), &clock);
    fill(&db, "prod", "m", 3, T0, 5);
    clock.set(T0 + 5 * HOUR);
    db.maintain().unwrap();
    let before = all(&db, "prod");
    let snap = dir.path().join("snap");
    db.snapshot(&snap).unwrap();
    assert!(
        db.snapshot(&snap).is_err(),
        "existing target must be refused"
    );
    // Writes after the snapshot are not in it.
    write(
        &db,
        "prod",
        &labels("m", &[("s", "0")]),
        &[(T0 + 6 * HOUR, 1.0)],
    );
    let restored = open(&snap, &clock);
    assert_eq!(all(&restored, "prod"), before);
    // The restored store accepts new data right after the snapshot's newest sample.
    let out = write(
        &restored,
        "prod",
        &labels("m", &[("s", "0")]),
        &[(T0 + 5 * HOUR, 2.0)],
    );
    assert_eq!(out.accepted, 1);
    clock.set(T0 + 2 * DAY);
    restored.maintain().unwrap();
    let mut expect = before.clone();
    let s0 = expect
        .iter_mut()
        .find(|(l, _)| l.get("s") == Some("0"))
        .unwrap();
    s0.1.push((T0 + 5 * HOUR, 2.0f64.to_bits()));
    assert_eq!(all(&restored, "prod"), expect);
}

#[test]
fn environments_never_see_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let db = open(dir.path(), &clock);
    write(&db, "a", &labels("up", &[("job", "x")]), &[(T0, 1.0)]);
    write(&db, "b", &labels("up", &[("job", "y")]), &[(T0, 2.0)]);
    let a = db.querier("a", 0, i64::MAX);
    assert_eq!(a.label_values("job", &[]), vec!["x"]);
    assert_eq!(a.select(&[name("up")]).unwrap().len(), 1);
    assert!(db.querier("c", 0, i64::MAX).label_names(&[]).is_empty());
    clock.set(T0 + DAY);
    db.maintain().unwrap();
    let b = db.querier("b", 0, i64::MAX);
    assert_eq!(b.label_values("job", &[]), vec!["y"]);
    let got = read(
        &db,
        "a",
        &[Matcher::new(MatchOp::Re, "job", ".*").unwrap()],
        0,
        i64::MAX,
    );
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0.get("job"), Some("x"));
}

#[test]
fn rejections_carry_typed_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let o = Options {
        max_series_per_env: Some(2),
        ..opts(&clock)
    };
    let db = Db::open(dir.path(), o).unwrap();
    let l = labels("m", &[]);
    assert_eq!(write(&db, "p", &l, &[(T0 + HOUR, 1.0)]).accepted, 1);
    // Out of order inside the 10 min window: accepted.
    assert_eq!(
        write(&db, "p", &l, &[(T0 + HOUR - 60_000, 1.0)]).accepted,
        1
    );
    let out = write(
        &db,
        "p",
        &l,
        &[(T0, 1.0), (T0 + HOUR, 2.0), (T0 + HOUR, 1.0)],
    );
    assert_eq!(out.rejected_too_old, 1);
    assert_eq!(out.rejected_duplicate, 1);
    assert_eq!(out.unchanged, 1);
    assert_eq!(out.rejected[0].reason, RejectReason::TooOld);
    assert_eq!(out.rejected[1].reason, RejectReason::DuplicateTimestamp);
    write(&db, "p", &labels("m2", &[]), &[(T0, 1.0)]);
    let out = write(&db, "p", &labels("m3", &[]), &[(T0, 1.0)]);
    assert_eq!(out.rejected_series_limit, 1);
    assert_eq!(out.rejected[0].reason, RejectReason::SeriesLimit);
    // Another environment has its own limit.
    assert_eq!(
        write(&db, "q", &labels("m3", &[]), &[(T0, 1.0)]).accepted,
        1
    );
    assert_eq!(db.cardinality("p").len(), 2);
}

#[test]
fn second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let _db = open(dir.path(), &clock);
    let e = Db::open(dir.path(), opts(&clock)).unwrap_err();
    assert!(matches!(e, Error::Locked { .. }), "{e}");
}

/// A flat gauge's full six-hour chunk in a merged block compresses to a few bytes; it must read
/// back and roll up (a size-based count check once refused it and stopped maintenance).
#[test]
fn flat_series_in_merged_blocks_read_back_and_roll_up() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let db = open(dir.path(), &clock);
    let (flat, wavy) = (labels("flat", &[]), labels("wavy", &[]));
    let steps = 8 * 360;
    for i in 0..steps {
        let t = T0 + i * 10_000;
        let mut b = vigil_tsdb::WriteBatch::new(vigil_model::EnvId::new("prod").unwrap());
        b.add_series(&flat, &[(t, 0.0)], &Default::default())
            .unwrap();
        b.add_series(&wavy, &[(t, (i % 13) as f64)], &Default::default())
            .unwrap();
        db.write(&b).unwrap();
    }
    // A sample the next day closes the first day's window, so its blocks merge.
    write(&db, "prod", &wavy, &[(T0 + DAY + 60_000, 1.0)]);
    clock.set(T0 + DAY + 4 * HOUR);
    db.maintain().unwrap();
    let metas = block_metas(dir.path());
    let day = metas.iter().find(|m| m.range_start == T0).unwrap();
    assert_eq!(
        (day.level, day.num_samples),
        (2, 2 * steps as u64),
        "{metas:#?}"
    );
    assert!(day.ts_columns > 0, "{metas:#?}");
    db.close().unwrap();

    let o = Options {
        downsample_after: Some(secs(3600)),
        ..opts(&clock)
    };
    let db = Db::open(dir.path(), o).unwrap();
    db.maintain().unwrap();
    assert_eq!(db.stats().corrupt_files_seen, 0);
    let got = read(&db, "prod", &[name("flat")], i64::MIN, i64::MAX);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1.len(), steps as usize);
    assert!(got[0].1.iter().all(|&(_, v)| v == 0f64.to_bits()));
    let (five, hour) = both_rollups(&db, "flat", T0, T0 + DAY);
    let count = |r: &Rollups| r[0].1.iter().map(|p| p.count as i64).sum::<i64>();
    assert_eq!((count(&five), count(&hour)), (steps, steps));
    db.blocks_verify_all().unwrap();
}

#[test]
fn bad_options_are_refused_with_the_option_named() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let o = Options {
        ooo_window: secs(5 * 3600),
        ..opts(&clock)
    };
    let e = Db::open(dir.path(), o).unwrap_err();
    assert!(e.to_string().contains("ooo_window"), "{e}");
    let o = Options {
        block_chunk_samples: vigil_tsdb::codec::MAX_CHUNK_SAMPLES + 1,
        ..opts(&clock)
    };
    let e = Db::open(dir.path(), o).unwrap_err();
    assert!(e.to_string().contains("block_chunk_samples"), "{e}");
}

#[test]
fn readers_and_writers_run_concurrently() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let db = std::sync::Arc::new(open(dir.path(), &clock));
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let db = db.clone();
            std::thread::spawn(move || {
                for i in 0..2000i64 {
                    let l = labels("c", &[("w", &w.to_string()), ("s", &(i % 50).to_string())]);
                    assert_eq!(
                        write(&db, "prod", &l, &[(T0 + i * 1000, i as f64)]).accepted,
                        1
                    );
                }
            })
        })
        .collect();
    let reader = {
        let db = db.clone();
        std::thread::spawn(move || {
            let mut seen = 0;
            for _ in 0..200 {
                let got = read(&db, "prod", &[name("c")], i64::MIN, i64::MAX);
                for (_, s) in &got {
                    assert!(s.windows(2).all(|w| w[0].0 < w[1].0), "unsorted read");
                }
                seen = seen.max(got.iter().map(|(_, s)| s.len()).sum::<usize>());
            }
            seen
        })
    };
    for w in writers {
        w.join().unwrap();
    }
    reader.join().unwrap();
    let total: usize = read(&db, "prod", &[name("c")], i64::MIN, i64::MAX)
        .iter()
        .map(|(_, s)| s.len())
        .sum();
    assert_eq!(total, 4000);
}

#[test]
fn fleet_data_shares_timestamp_columns_and_reads_back_exactly() {
    use vigil_fleet::{Fleet, FleetSpec, SERIES_PER_AGENT};
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let db = open(dir.path(), &clock);
    let agents = 4;
    let mut fleet = Fleet::new(FleetSpec {
        agents,
        start_ms: T0,
        ..FleetSpec::default()
    });
    let mut step = Vec::new();
    let mut expect: Vec<Vec<(i64, u64)>> = vec![Vec::new(); fleet.series().len()];
    for _ in 0..(2 * 360) {
        step.clear();
        fleet.next_step(&mut step);
        let mut b = vigil_tsdb::WriteBatch::new(vigil_model::EnvId::new("prod").unwrap());
        for s in &step {
            b.add_series(
                &fleet.series()[s.series as usize],
                &[(s.ts_ms, s.value)],
                &Default::default(),
            )
            .unwrap();
            expect[s.series as usize].push((s.ts_ms, s.value.to_bits()));
        }
        db.write(&b).unwrap();
    }
    clock.set(T0 + DAY);
    db.maintain().unwrap();
    assert_eq!(db.stats().head_series, 0);
    let metas = block_metas(dir.path());
    let pco: u64 = metas.iter().map(|m| m.pco_chunks + m.decimal_chunks).sum();
    let cols: u64 = metas.iter().map(|m| m.ts_columns).sum();
    assert!(pco > 0, "{metas:#?}");
    let decimal: u64 = metas.iter().map(|m| m.decimal_chunks).sum();
    assert!(
        decimal > 0,
        "the fleet's short decimals use decimal columns: {metas:#?}"
    );
    // One timestamp column per agent per block (plus at most a few where series differ).
    assert!(
        cols <= (agents * metas.len()) as u64 * 2,
        "{cols} columns for {agents} agents"
    );
    let got = all(&db, "prod");
    assert_eq!(got.len(), agents * SERIES_PER_AGENT);
    for (labels, samples) in got {
        let i = fleet.series().iter().position(|l| *l == labels).unwrap();
        assert_eq!(samples, expect[i], "{labels}");
    }
    // Parts of chunks (values decoded only up to the range's end): exactly the samples in
    // the range, at starts and ends inside chunks, on sample times, across a 256 batch.
    let any = [Matcher::new(MatchOp::Re, "__name__", ".+").unwrap()];
    for (lo, hi) in [
        (T0, T0 + 10_000),
        (T0 + 7_777, T0 + 2_570_000),
        (T0 + HOUR, T0 + HOUR + 1),
        (T0 + HOUR + 5_000, T0 + 2 * HOUR - 1),
        (T0 + 30 * 60_000, T0 + 90 * 60_000),
    ] {
        for (labels, samples) in read(&db, "prod", &any, lo, hi) {
            let i = fleet.series().iter().position(|l| *l == labels).unwrap();
            let want: Vec<(i64, u64)> = expect[i]
                .iter()
                .copied()
                .filter(|&(t, _)| t >= lo && t <= hi)
                .collect();
            assert_eq!(samples, want, "{labels} in [{lo}, {hi}]");
        }
    }
    db.blocks_verify_all().unwrap();
}

#[test]
fn latest_reads_head_fast_path_and_blocks_for_series_only_they_hold() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let db = open(dir.path(), &clock);
    let (a, b) = (labels("g", &[("s", "a")]), labels("g", &[("s", "b")]));
    write(&db, "p", &b, &[(T0, 1.0), (T0 + 60_000, 2.0)]);
    write(&db, "p", &a, &[(T0, 5.0)]);
    clock.set(T0 + 4 * HOUR);
    db.maintain().unwrap();
    assert_eq!(db.stats().head_series, 0);
    write(
        &db,
        "p",
        &a,
        &[(T0 + 4 * HOUR, 6.0), (T0 + 4 * HOUR + 1000, 7.0)],
    );
    let q = db.querier("p", T0, T0 + 5 * HOUR);
    let got = q.latest(&[name("g")]).unwrap();
    assert_eq!(
        got,
        vec![
            (a.clone(), T0 + 4 * HOUR + 1000, 7.0),
            (b.clone(), T0 + 60_000, 2.0)
        ]
    );
    // A range ending before the head's newest sample takes the slow path and agrees with it.
    let q = db.querier("p", T0, T0 + 4 * HOUR);
    assert_eq!(
        q.latest(&[name("g")]).unwrap(),
        vec![
            (a.clone(), T0 + 4 * HOUR, 6.0),
            (b.clone(), T0 + 60_000, 2.0)
        ]
    );
    // Samples older than the range start do not count.
    let q = db.querier("p", T0 + HOUR, T0 + 5 * HOUR);
    assert_eq!(
        q.latest(&[name("g")]).unwrap(),
        vec![(a, T0 + 4 * HOUR + 1000, 7.0)]
    );
}

//! Damaged files: flipped bytes and truncation in WAL segments and block files, and files from
//! a future format version. The store never panics, repairs what it can, quarantines damaged
//! blocks, reports what it did, and keeps the rest readable.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use vigil_model::{ManualClock, Matcher};
use vigil_tsdb::{Db, Error};

fn blocks(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir.join("blocks"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

/// A store with two 2 h blocks (one per metric window) and data in the WAL.
fn setup(dir: &Path, clock: &ManualClock) {
    let db = open(dir, clock);
    for s in 0..5 {
        let l = labels("m", &[("s", &s.to_string())]);
        let samples: Vec<(i64, f64)> = (0..5 * 60).map(|i| (T0 + i * 60_000, i as f64)).collect();
        write(&db, "prod", &l, &samples);
    }
    clock.set(T0 + 6 * HOUR);
    db.maintain().unwrap();
    assert_eq!(db.stats().blocks.len(), 2);
}

fn count(db: &Db) -> usize {
    read(
        db,
        "prod",
        &[Matcher::eq("__name__", "m")],
        i64::MIN,
        i64::MAX,
    )
    .iter()
    .map(|(_, s)| s.len())
    .sum()
}

#[test]
fn flipped_byte_in_a_block_index_quarantines_that_block_only() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    setup(dir.path(), &clock);
    let victim = blocks(dir.path())[0].clone();
    let idx = victim.join("index");
    let mut b = fs::read(&idx).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x10;
    fs::write(&idx, b).unwrap();
    let db = open(dir.path(), &clock);
    let rep = db.open_report();
    assert_eq!(rep.quarantined.len(), 1, "{rep:?}");
    assert!(rep.quarantined[0].1.contains("checksum"), "{rep:?}");
    assert!(
        dir.path()
            .join("quarantine")
            .join(victim.file_name().unwrap())
            .exists()
    );
    assert_eq!(db.stats().corrupt_files_seen, 1);
    // The other block and the head are still readable: 5 series × (5 h − 2 h) of minutes.
    assert_eq!(count(&db), 5 * 3 * 60);
}

#[test]
fn truncated_chunks_file_quarantines_the_block() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    setup(dir.path(), &clock);
    let victim = blocks(dir.path())[1].clone();
    let c = victim.join("chunks");
    let len = fs::metadata(&c).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&c)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    let db = open(dir.path(), &clock);
    assert_eq!(db.open_report().quarantined.len(), 1);
    assert_eq!(count(&db), 5 * 3 * 60);
}

/// The store of [`setup`] with one byte of its first block's chunk data flipped (the block
/// still opens; reading that chunk fails its checksum). Returns that block's folder too.
fn setup_flipped_chunk() -> (tempfile::TempDir, ManualClock, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    setup(dir.path(), &clock);
    let victim = blocks(dir.path())[0].clone();
    let c = victim.join("chunks");
    let mut b = fs::read(&c).unwrap();
    b[20] ^= 0xff;
    fs::write(&c, b).unwrap();
    (dir, clock, victim)
}

#[test]
fn flipped_byte_in_chunk_data_is_a_read_error_not_a_panic() {
    let (dir, clock, _) = setup_flipped_chunk();
    let db = open(dir.path(), &clock);
    let q = db.querier("prod", i64::MIN, i64::MAX);
    let mut errors = 0;
    for s in q.select(&[Matcher::eq("__name__", "m")]).unwrap() {
        for r in s.samples {
            if let Err(e) = r {
                assert!(matches!(e, Error::Corrupt { .. }), "{e}");
                errors += 1;
            }
        }
    }
    assert!(errors >= 1);
    db.blocks_verify_all().unwrap_err();
}

#[test]
fn a_damaged_chunk_stops_maintenance_of_its_block_only() {
    let (dir, clock, victim) = setup_flipped_chunk();
    let db = Db::open(
        dir.path(),
        vigil_tsdb::Options {
            downsample_after: Some(std::time::Duration::from_secs(3600)),
            ..opts(&clock)
        },
    )
    .unwrap();
    assert_eq!(db.open_report().quarantined.len(), 0);
    // The damage is counted (and logged with the block's id); the healthy block is still
    // rolled up.
    db.maintain().unwrap();
    let rollups = |db: &Db| {
        db.stats()
            .blocks
            .iter()
            .filter(|b| b.resolution_ms != 0)
            .count()
    };
    assert_eq!(rollups(&db), 2, "{:?}", db.stats().blocks);
    assert_eq!(db.stats().corrupt_files_seen, 1);
    // Later passes skip the damaged block instead of failing on it every time, and the rest of
    // the store keeps being maintained: new data is cut into blocks and rolled up.
    db.maintain().unwrap();
    let l = labels("m", &[("s", "0")]);
    let more: Vec<(i64, f64)> = (5 * 60..9 * 60)
        .map(|i| (T0 + i * 60_000, i as f64))
        .collect();
    write(&db, "prod", &l, &more);
    let before = db.stats().blocks.len();
    clock.set(T0 + 12 * HOUR);
    db.maintain().unwrap();
    assert!(db.stats().blocks.len() > before, "{:?}", db.stats().blocks);
    assert!(rollups(&db) > 2, "{:?}", db.stats().blocks);
    assert!(victim.exists(), "the damaged block is kept, not deleted");
}

#[test]
fn future_block_version_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    setup(dir.path(), &clock);
    let meta = blocks(dir.path())[0].join("meta.json");
    let s = fs::read_to_string(&meta)
        .unwrap()
        .replace("\"format_version\": 2", "\"format_version\": 7");
    fs::write(&meta, s).unwrap();
    let e = Db::open(dir.path(), opts(&clock)).unwrap_err();
    assert!(matches!(e, Error::FutureFormat { found: 7, .. }), "{e}");
    assert!(e.to_string().contains("Upgrade"), "{e}");
}

#[test]
fn future_wal_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    setup(dir.path(), &clock);
    let wal = dir.path().join("wal");
    let seg = vigil_tsdb::wal::list_segments(&wal)
        .unwrap()
        .pop()
        .unwrap()
        .1;
    let mut b = fs::read(&seg).unwrap();
    b[4] = 9;
    fs::write(&seg, b).unwrap();
    let e = Db::open(dir.path(), opts(&clock)).unwrap_err();
    assert!(matches!(e, Error::FutureFormat { found: 9, .. }), "{e}");
}

#[test]
fn truncated_wal_keeps_everything_before_the_tear_and_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let db = open(dir.path(), &clock);
    let l = labels("w", &[]);
    for i in 0..100 {
        write(&db, "prod", &l, &[(T0 + i * 1000, i as f64)]);
    }
    drop(db);
    let seg = vigil_tsdb::wal::list_segments(&dir.path().join("wal"))
        .unwrap()
        .into_iter()
        .map(|s| s.1)
        .rfind(|p| fs::metadata(p).unwrap().len() > 8)
        .unwrap();
    let len = fs::metadata(&seg).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    let db = open(dir.path(), &clock);
    let rep = db.open_report();
    assert_eq!(rep.replay.repairs.len(), 1, "{rep:?}");
    assert!(rep.replay.repairs[0].truncated_bytes > 0);
    let got = read(
        &db,
        "prod",
        &[Matcher::eq("__name__", "w")],
        i64::MIN,
        i64::MAX,
    );
    assert_eq!(got[0].1.len(), 99);
    assert_eq!(db.stats().corrupt_files_seen, 1);
}

#[test]
fn garbage_wal_segment_does_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    fs::create_dir_all(dir.path().join("wal")).unwrap();
    let mut junk = b"VGWL\x01\0\0\0".to_vec();
    let mut x = 7u32;
    for _ in 0..5000 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        junk.push((x >> 16) as u8);
    }
    fs::write(dir.path().join("wal").join("00000001"), junk).unwrap();
    let db = open(dir.path(), &clock);
    assert_eq!(db.open_report().replay.repairs.len(), 1);
    assert_eq!(db.stats().head_series, 0);
}

/// A series whose block chunks lie one after another in the chunks file is read with one
/// read per block: whole, over part of the range, around a deletion, and with a damaged
/// chunk in the middle, which is an error after exactly the samples before it.
#[test]
fn consecutive_chunks_read_at_once_read_as_chunk_by_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let o = vigil_tsdb::Options {
        block_chunk_samples: 30,
        ..opts(&clock)
    };
    let db = Db::open(dir.path(), o.clone()).unwrap();
    let l = labels("m", &[("s", "a")]);
    let samples: Vec<(i64, f64)> = (0..5 * 60)
        .map(|i| (T0 + i * 60_000, (i * 7 % 13) as f64 / 4.0))
        .collect();
    write(&db, "prod", &l, &samples);
    clock.set(T0 + 6 * HOUR);
    db.maintain().unwrap();
    assert!(!db.stats().blocks.is_empty());
    let m = [Matcher::eq("__name__", "m")];
    let bits = |v: &[(i64, f64)]| -> Vec<(i64, u64)> {
        v.iter().map(|&(t, v)| (t, v.to_bits())).collect()
    };
    let within = |lo: i64, hi: i64| -> Vec<(i64, f64)> {
        samples
            .iter()
            .copied()
            .filter(|s| s.0 >= lo && s.0 <= hi)
            .collect()
    };
    let got = read_parts(&db, "prod", &m, i64::MIN, i64::MAX, 1);
    assert_eq!(got[0].1, bits(&samples));
    for (lo, hi) in [
        (T0 + 17 * 60_000, T0 + 151 * 60_000),
        (T0 + 31 * 60_000, T0 + 89 * 60_000),
    ] {
        let got = read_parts(&db, "prod", &m, lo, hi, 1);
        assert_eq!(got[0].1, bits(&within(lo, hi)), "[{lo}, {hi}]");
    }
    db.delete("prod", &m, T0 + 40 * 60_000, T0 + 70 * 60_000)
        .unwrap();
    let kept: Vec<(i64, f64)> = samples
        .iter()
        .copied()
        .filter(|s| s.0 < T0 + 40 * 60_000 || s.0 > T0 + 70 * 60_000)
        .collect();
    assert_eq!(
        read_parts(&db, "prod", &m, i64::MIN, i64::MAX, 1)[0].1,
        bits(&kept)
    );
    drop(db);

    // Damage a byte in the middle of the first block's chunks.
    let victim = blocks(dir.path())[0].join("chunks");
    let mut b = fs::read(&victim).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x5a;
    fs::write(&victim, b).unwrap();
    let db = Db::open(dir.path(), o).unwrap();
    let mut part = db
        .querier("prod", i64::MIN, i64::MAX)
        .select_parts(&m, 1)
        .unwrap()
        .pop()
        .unwrap();
    let mut buf = Vec::new();
    let r = part.read_next(&mut buf).unwrap();
    assert!(matches!(r, Err(Error::Corrupt { .. })), "{r:?}");
    assert!(buf.len() < kept.len(), "{} samples", buf.len());
    assert!(
        !buf.is_empty(),
        "the chunks before the damaged one were not kept"
    );
    assert_eq!(bits(&buf), bits(&kept[..buf.len()]));
}

//! Crash test: a child process writes batches with `sync = always` and reports each
//! acknowledged batch; it is SIGKILLed at pseudo-random moments. After each kill the store is
//! reopened: every acknowledged batch must be complete, and every other batch either complete
//! or absent — never half there.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use vigil_model::{EnvId, ManualClock, MatchOp, Matcher};
use vigil_tsdb::{Db, SyncPolicy, WriteBatch};

const SERIES: usize = 40;
const ROUNDS: u64 = 24;
const CHILD_ENV: &str = "VIGIL_CRASH_CHILD_DIR";

fn child_opts(clock: &ManualClock) -> vigil_tsdb::Options {
    vigil_tsdb::Options {
        sync: SyncPolicy::Always,
        wal_segment_bytes: 64 << 10,
        ..opts(clock)
    }
}

/// Batch k holds one sample per series at T0 + k s with value k.
fn batch(k: i64) -> WriteBatch {
    let mut b = WriteBatch::new(EnvId::new("prod").unwrap());
    for s in 0..SERIES {
        let l = labels("crash_metric", &[("series", &s.to_string())]);
        b.add_series(&l, &[(T0 + k * 1000, k as f64)], &Default::default())
            .unwrap();
    }
    b
}

/// Per batch number, how many series hold it.
fn batches_present(db: &Db) -> std::collections::BTreeMap<i64, usize> {
    let mut m = std::collections::BTreeMap::new();
    for (_, samples) in read(
        db,
        "prod",
        &[Matcher::new(MatchOp::Eq, "__name__", "crash_metric").unwrap()],
        i64::MIN,
        i64::MAX,
    ) {
        for (t, bits) in samples {
            let k = (t - T0) / 1000;
            assert_eq!(f64::from_bits(bits), k as f64, "value of batch {k} damaged");
            *m.entry(k).or_insert(0) += 1;
        }
    }
    m
}

/// The child: not a test of its own; runs only when the parent sets the variable.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let clock = ManualClock::new(T0);
    let db = Db::open(&dir, child_opts(&clock)).unwrap();
    let next = batches_present(&db).keys().max().map_or(0, |k| k + 1);
    let mut out = std::io::stdout();
    for k in next.. {
        db.write(&batch(k)).unwrap();
        use std::io::Write;
        writeln!(out, "ACK {k}").unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn kill_9_loses_nothing_acknowledged_and_shows_no_half_batch() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut max_acked: i64 = -1;
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut total_acks = 0;
    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let wait_acks = 5 + (rng % 200) as i64;
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let start = Instant::now();
        let mut acks_this_round = 0;
        while let Some(Ok(line)) = lines.next() {
            if let Some(k) = line.strip_prefix("ACK ") {
                max_acked = max_acked.max(k.trim().parse().unwrap());
                acks_this_round += 1;
                if acks_this_round >= wait_acks || start.elapsed() > Duration::from_secs(20) {
                    break;
                }
            }
        }
        // SIGKILL, mid-write more often than not.
        child.kill().unwrap();
        // Drain what it printed before dying: those batches were acknowledged too.
        for line in lines.map_while(Result::ok) {
            if let Some(k) = line.strip_prefix("ACK ") {
                max_acked = max_acked.max(k.trim().parse().unwrap());
            }
        }
        child.wait().unwrap();
        total_acks += acks_this_round;
        assert!(
            acks_this_round > 0,
            "round {round}: child acknowledged nothing"
        );
        let clock = ManualClock::new(T0);
        let db = Db::open(dir.path(), child_opts(&clock)).unwrap();
        let present = batches_present(&db);
        for k in 0..=max_acked {
            assert_eq!(
                present.get(&k).copied().unwrap_or(0),
                SERIES,
                "round {round}: acknowledged batch {k} incomplete"
            );
        }
        for (k, n) in &present {
            assert!(
                *n == SERIES,
                "round {round}: batch {k} half-visible ({n}/{SERIES} series)"
            );
        }
        db.close().unwrap();
    }
    eprintln!(
        "crash test: {ROUNDS} SIGKILL rounds, {total_acks} acknowledged batches, last acknowledged {max_acked}"
    );
}

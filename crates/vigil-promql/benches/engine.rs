//! In-process engine benchmark: the query benchmark's instant queries evaluated straight on a
//! [`Db`] (no HTTP, no JSON), so the engine and store costs can be profiled and compared
//! between commits quickly.
//!
//! ```text
//! cargo bench -p vigil-promql --bench engine            # 1,000 agents × 36 scrapes
//! VIGIL_BENCH_AGENTS=10000 VIGIL_BENCH_RUNS=20 cargo bench -p vigil-promql --bench engine
//! VIGIL_BENCH_ONLY=rate …                               # only queries whose name contains it
//! VIGIL_BENCH_RANGE=100x24 …                            # also 100 agents × 24 h of history
//! VIGIL_BENCH_BASELINE=0 …                              # baseline once, no raw-only runs (profiling)
//! VIGIL_BENCH_DIR=/tmp/eb …                             # keep the store there; reuse it next run
//! ```
//!
//! With `VIGIL_BENCH_DIR` the loaded store is kept in that folder and a later run with the
//! same folder skips loading (the scale variables are then ignored: the folder's data counts).
//!
//! With `VIGIL_BENCH_RANGE` the store first gets that much history (env `range`), maintained
//! as it goes with rollups made of blocks older than `VIGIL_BENCH_DOWNSAMPLE_H` hours
//! (default 1, as the store's default), and the long-range queries run too: over a day,
//! from rollups where exact.
//!
//! Prints p50/p99 per query and, as a baseline measured in the same run, the time to decode
//! every chunk of the selected series alone (`Querier::select` + reading all samples).

use std::sync::Arc;
use std::time::{Duration, Instant};

use vigil_fleet::{Fleet, FleetSample, FleetSpec};
use vigil_model::{EnvId, LabelLimits, Labels, ManualClock, Matcher};
use vigil_promql::storage::TsdbStorage;
use vigil_promql::{Engine, EngineOptions, Storage, StoredSeries, Value};
use vigil_tsdb::{Db, Options, WriteBatch};

/// The server's allocator, so costs match what `vigil serve` pays.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BUCKETS: [&str; 8] = ["0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "1", "+Inf"];

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1000.0
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let agents = env_num("VIGIL_BENCH_AGENTS", 1_000);
    let runs = env_num("VIGIL_BENCH_RUNS", 20).max(1);
    let steps = 36i64;
    let start = 1_750_000_000_000i64;
    let range: Option<(usize, i64)> = std::env::var("VIGIL_BENCH_RANGE").ok().and_then(|v| {
        v.split_once('x')
            .and_then(|(a, h)| Some((a.parse().ok()?, h.parse().ok()?)))
    });
    let tmp = tempfile::tempdir().unwrap();
    let kept = std::env::var_os("VIGIL_BENCH_DIR").map(std::path::PathBuf::from);
    let dir = kept.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    // A kept store records the newest timestamps of its range and live data once loaded.
    let marker = dir.join("bench-loaded");
    let reused: Option<(Option<i64>, i64)> = std::fs::read_to_string(&marker).ok().and_then(|s| {
        let mut it = s.split_whitespace().map(|x| x.parse::<i64>().ok());
        let r = it.next()??;
        Some(((r >= 0).then_some(r), it.next()??))
    });
    let clock = ManualClock::new(reused.map_or(start, |(_, last)| last));
    let downsample_h = env_num("VIGIL_BENCH_DOWNSAMPLE_H", 1) as u64;
    let db = Db::open(
        &dir,
        Options {
            clock: Arc::new(clock.clone()),
            maintenance_interval: None,
            downsample_after: Some(Duration::from_secs(downsample_h * 3600)),
            ..Options::default()
        },
    )
    .unwrap();
    let range_end = match reused {
        Some((r, _)) => r,
        None => range.map(|(agents, hours)| load_history(&db, &clock, agents, hours, start)),
    };
    let env = EnvId::new("live").unwrap();
    let lim = LabelLimits::default();
    let mut fleet = Fleet::new(FleetSpec {
        agents,
        seed: 7,
        start_ms: start,
        env: "live".into(),
        zones: 8,
        ..FleetSpec::default()
    });
    let hist: Vec<Labels> = (0..agents)
        .flat_map(|a| {
            BUCKETS.iter().map(move |le| {
                Labels::from_pairs([
                    (
                        "__name__",
                        "http_request_duration_seconds_bucket".to_string(),
                    ),
                    ("agent", format!("agent-{a:05}")),
                    ("env", "live".to_string()),
                    ("job", "api".to_string()),
                    ("le", le.to_string()),
                    ("zone", format!("zone-{}", (b'a' + (a % 8) as u8) as char)),
                ])
            })
        })
        .collect();
    let t0 = Instant::now();
    let mut buf = Vec::new();
    let mut last = start;
    let mut loaded = 0usize;
    for s in 0..if reused.is_some() { 0 } else { steps } {
        let (n, newest) = write_round(&db, &mut fleet, &env, &mut buf);
        loaded += n;
        last = last.max(newest);
        let ts = start + s * 10_000 + 7;
        let mut b = WriteBatch::new(env.clone());
        for (i, l) in hist.iter().enumerate() {
            let a = i / BUCKETS.len();
            let share = [0.1, 0.3, 0.55, 0.7, 0.85, 0.95, 0.99, 1.0][i % BUCKETS.len()];
            let v = ((s + 1) as f64 * (20.0 + (a % 13) as f64) * share).floor();
            b.add_series(l, &[(ts, v)], &lim).unwrap();
        }
        loaded += db.write(&b).unwrap().accepted;
        clock.set(last);
    }
    eprintln!(
        "loaded {agents} agents × {steps} scrapes: {loaded} samples in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    match reused {
        // A kept store gets what this build's maintenance would have made of it by now.
        Some((_, l)) => {
            last = l;
            db.maintain().unwrap();
        }
        None if kept.is_some() => {
            std::fs::write(&marker, format!("{} {last}", range_end.unwrap_or(-1))).unwrap();
        }
        None => {}
    }
    let at = last + 1_500;
    let engine = Engine::new(EngineOptions::default());
    let st = TsdbStorage::new(&db, "live");
    let queries = [
        ("latest gauge, all agents", "node_load1{env=\"live\"}"),
        (
            "sum by zone of rate",
            "sum by (zone) (rate(node_cpu_seconds_total{env=\"live\"}[5m]))",
        ),
        (
            "topk of rate",
            "topk(10, rate(node_network_receive_bytes_total{env=\"live\",device=\"eth0\"}[5m]))",
        ),
        (
            "regex matcher",
            "node_filesystem_avail_bytes{env=\"live\",agent=~\"agent-00[0-4].*\",mountpoint=~\"/|/var\"}",
        ),
        (
            "ratio of two gauges",
            "avg by (zone) (node_memory_MemAvailable_bytes{env=\"live\"} / node_memory_MemTotal_bytes{env=\"live\"})",
        ),
        (
            "histogram_quantile",
            "histogram_quantile(0.99, sum by (le, zone) (rate(http_request_duration_seconds_bucket{env=\"live\"}[5m])))",
        ),
    ];
    let only = std::env::var("VIGIL_BENCH_ONLY").ok();
    println!("\nengine benchmark: {agents} agents, {runs} runs each; ms (p50 / p99)");
    println!(
        "{:<28} {:>9} {:>9} {:>8}   {:>22}",
        "query", "p50", "p99", "result", "baseline: select+decode"
    );
    for (name, q) in queries {
        if only.as_deref().is_some_and(|o| !name.contains(o)) {
            continue;
        }
        let n = match engine.instant(&st, q, at).unwrap() {
            Value::Vector(v) => v.len(),
            _ => 1,
        };
        let mut lat: Vec<Duration> = (0..runs)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(engine.instant(&st, q, at).unwrap());
                t.elapsed()
            })
            .collect();
        // Baseline: what reading every selected sample costs, with nothing evaluated.
        let expr = vigil_promql::parse(q).unwrap();
        let mut sels = Vec::new();
        collect_selectors(&expr, &mut sels);
        let base_runs = if std::env::var("VIGIL_BENCH_BASELINE").is_ok_and(|v| v == "0") {
            1
        } else {
            runs
        };
        let mut base: Vec<Duration> = (0..base_runs)
            .map(|_| {
                let t = Instant::now();
                let mut out = Vec::new();
                for m in &sels {
                    let qr = db.querier("live", at - 300_000, at);
                    for mut s in qr.select_unordered(m).unwrap() {
                        out.clear();
                        s.samples.read_all(&mut out).unwrap();
                    }
                }
                t.elapsed()
            })
            .collect();
        println!(
            "{name:<28} {:>9.1} {:>9.1} {n:>8}   {:>10.1} / {:>9.1}",
            pct(&mut lat, 0.5),
            pct(&mut lat, 0.99),
            pct(&mut base, 0.5),
            pct(&mut base, 0.99)
        );
    }
    if let Some(rend) = range_end {
        long_range(&engine, &db, rend, runs, only.as_deref());
    }
}

/// The store without its rollups: the raw-sample baseline for the long-range queries.
struct RawOnly<'a>(TsdbStorage<'a>);

impl Storage for RawOnly<'_> {
    fn select(
        &self,
        m: &[Matcher],
        mint: i64,
        maxt: i64,
        budget: usize,
    ) -> vigil_promql::Result<Vec<StoredSeries>> {
        self.0.select(m, mint, maxt, budget)
    }

    fn select_map(
        &self,
        m: &[Matcher],
        mint: i64,
        maxt: i64,
        budget: usize,
        opts: vigil_promql::MapOptions<'_>,
        f: &vigil_promql::MapFn<'_>,
    ) -> vigil_promql::Result<Vec<(Labels, f64)>> {
        self.0.select_map(m, mint, maxt, budget, opts, f)
    }
}

/// A range query's start, end and step (ms).
type Span = (i64, i64, i64);

/// Long-range queries over the history, each with rollups and on raw samples alone.
fn long_range(engine: &Engine, db: &Db, rend: i64, runs: usize, only: Option<&str>) {
    let st = TsdbStorage::new(db, "range");
    let raw = RawOnly(TsdbStorage::new(db, "range"));
    println!(
        "\nlong range (rollups cover up to {} min before the newest sample); ms p50 / p99",
        st.rollup_cover(300_000)
            .map_or(-1, |c| (rend - c.min(rend)) / 60_000)
    );
    println!(
        "{:<28} {:>19} {:>19} {:>8}",
        "query", "with rollups", "raw only", "result"
    );
    let at = rend + 1_500;
    let aligned = |step: i64| {
        (
            (rend - 23 * 3_600_000).div_euclid(step) * step,
            at.div_euclid(step) * step,
            step,
        )
    };
    let queries: [(&str, &str, Option<Span>); 5] = [
        (
            "avg_over_time over a day",
            "avg_over_time(node_load1{env=\"range\"}[1d])",
            None,
        ),
        (
            "max_over_time 1h, 1h step",
            "max_over_time(node_load1{env=\"range\"}[1h])",
            Some(aligned(3_600_000)),
        ),
        (
            "sum of rate, 5m step",
            "sum by (zone) (rate(node_cpu_seconds_total{env=\"range\",mode=\"user\"}[5m]))",
            Some(aligned(300_000)),
        ),
        (
            "quantile by zone, 5m step",
            "quantile by (zone) (0.9, node_load5{env=\"range\"})",
            Some(aligned(300_000)),
        ),
        (
            "one series, 1m step",
            "node_load1{env=\"range\",agent=\"agent-00007\"}",
            Some(aligned(60_000)),
        ),
    ];
    for (name, q, range) in queries {
        if only.is_some_and(|o| !name.contains(o)) {
            continue;
        }
        let time = |s: &dyn Storage| -> (Vec<Duration>, usize) {
            let run = || match range {
                None => match engine.instant(s, q, at).unwrap() {
                    Value::Vector(v) => v.len(),
                    _ => 1,
                },
                Some((a, b, step)) => engine.range(s, q, a, b, step).unwrap().len(),
            };
            let n = run();
            let lat = (0..runs)
                .map(|_| {
                    let t = Instant::now();
                    std::hint::black_box(run());
                    t.elapsed()
                })
                .collect();
            (lat, n)
        };
        let (mut with, n) = time(&st);
        // VIGIL_BENCH_BASELINE=0 also skips the raw-only runs (profiling the rollup path).
        let (mut without, n2) = if std::env::var("VIGIL_BENCH_BASELINE").is_ok_and(|v| v == "0") {
            (vec![Duration::ZERO], n)
        } else {
            time(&raw)
        };
        assert_eq!(n, n2, "{name}: rollups and raw disagree on the series");
        println!(
            "{name:<28} {:>9.3} / {:>7.3} {:>9.3} / {:>7.3} {n:>8}",
            pct(&mut with, 0.5),
            pct(&mut with, 0.99),
            pct(&mut without, 0.5),
            pct(&mut without, 0.99)
        );
    }
}

/// Writes the fleet's next scrape round in batches of 25,000 samples: samples accepted and
/// the newest timestamp.
fn write_round(
    db: &Db,
    fleet: &mut Fleet,
    env: &EnvId,
    buf: &mut Vec<FleetSample>,
) -> (usize, i64) {
    let lim = LabelLimits::default();
    buf.clear();
    fleet.next_step(buf);
    let (mut n, mut last) = (0, i64::MIN);
    for part in buf.chunks(25_000) {
        let mut b = WriteBatch::new(env.clone());
        for x in part {
            b.add_series(
                &fleet.series()[x.series as usize],
                &[(x.ts_ms, x.value)],
                &lim,
            )
            .unwrap();
            last = last.max(x.ts_ms);
        }
        n += db.write(&b).unwrap().accepted;
    }
    (n, last)
}

/// `hours` of history for `agents` (env `range`) ending 6 minutes before `end`, in time order,
/// maintained every simulated 10 minutes as a server would. Returns the newest timestamp.
fn load_history(db: &Db, clock: &ManualClock, agents: usize, hours: i64, end: i64) -> i64 {
    let steps = hours * 360;
    let first = end - 360_000 - steps * 10_000;
    clock.set(first);
    let env = EnvId::new("range").unwrap();
    let mut fleet = Fleet::new(FleetSpec {
        agents,
        seed: 11,
        start_ms: first,
        env: "range".into(),
        zones: 8,
        ..FleetSpec::default()
    });
    let t0 = Instant::now();
    let (mut buf, mut last) = (Vec::new(), first);
    for s in 0..steps {
        last = last.max(write_round(db, &mut fleet, &env, &mut buf).1);
        clock.set(last);
        if s % 60 == 59 {
            db.maintain().unwrap();
        }
    }
    clock.set(end - 300_000);
    db.maintain().unwrap();
    eprintln!(
        "loaded history: {agents} agents × {hours} h in {:.1} s; blocks {}",
        t0.elapsed().as_secs_f64(),
        db.stats().blocks.len()
    );
    last
}

fn collect_selectors(e: &vigil_promql::Expr, out: &mut Vec<Vec<Matcher>>) {
    use vigil_promql::Expr;
    match e {
        Expr::VectorSelector(vs) => out.push(vigil_promql::selector_matchers(vs).unwrap()),
        Expr::MatrixSelector(m) => out.push(vigil_promql::selector_matchers(&m.vs).unwrap()),
        Expr::Aggregate(a) => {
            if let Some(p) = &a.param {
                collect_selectors(p, out);
            }
            collect_selectors(&a.expr, out);
        }
        Expr::Binary(b) => {
            collect_selectors(&b.lhs, out);
            collect_selectors(&b.rhs, out);
        }
        Expr::Paren(p) => collect_selectors(&p.expr, out),
        Expr::Call(c) => c.args.args.iter().for_each(|a| collect_selectors(a, out)),
        _ => {}
    }
}

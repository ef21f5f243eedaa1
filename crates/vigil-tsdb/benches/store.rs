//! The store benchmark: prints one table of throughput, size, memory, read and replay figures
//! on the reference fleet dataset, with ratios against baselines measured in the same run.
//!
//! ```text
//! cargo bench -p vigil-tsdb --bench store                 # quick: 100 agents for size, 200k series for memory
//! VIGIL_BENCH_FULL=1 cargo bench -p vigil-tsdb --bench store   # issue-sized: 1,000 agents × 24 h, 1M series
//! VIGIL_BENCH_VM=/usr/bin/victoria-metrics …              # also load the same data into VictoriaMetrics
//! VIGIL_BENCH_ONLY=append,memory,read,size …              # run only some sections
//! VIGIL_BENCH_STEPS=120 …                                 # scrape rounds timed in the append section
//! ```
//!
//! Sections run in child processes where memory is measured, so one part's allocations do not
//! blur another's RSS.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vigil_fleet::{Fleet, FleetSample, FleetSpec, SERIES_PER_AGENT};
use vigil_model::{EnvId, LabelLimits, Labels, ManualClock, MatchOp, Matcher};
use vigil_tsdb::{Db, Options, SyncPolicy, WriteBatch, collect_samples};

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

fn full() -> bool {
    std::env::var("VIGIL_BENCH_FULL").is_ok_and(|v| v == "1")
}

/// Midnight UTC two days ago, so that peers with age-based retention accept the data.
fn recent_start() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    (now / DAY - 2) * DAY
}

fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn du(p: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let m = match e.metadata() {
                Ok(m) => m,
                Err(_) => continue,
            };
            total += if m.is_dir() { du(&e.path()) } else { m.len() };
        }
    }
    total
}

fn opts(clock: &ManualClock, sync: SyncPolicy) -> Options {
    Options {
        clock: Arc::new(clock.clone()),
        maintenance_interval: None,
        sync,
        downsample_after: None,
        ..Options::default()
    }
}

struct Row {
    what: String,
    value: String,
    note: String,
}

fn row(
    rows: &mut Vec<Row>,
    what: impl Into<String>,
    value: impl Into<String>,
    note: impl Into<String>,
) {
    let r = Row {
        what: what.into(),
        value: value.into(),
        note: note.into(),
    };
    eprintln!("  {:<58} {:>16}  {}", r.what, r.value, r.note);
    rows.push(r);
}

/// Batches of one sample per series for `series_per_batch` series each (remote_write shape).
fn step_batches(
    fleet: &Fleet,
    step: &[FleetSample],
    series_per_batch: usize,
    env: &EnvId,
    lim: &LabelLimits,
) -> Vec<WriteBatch> {
    step.chunks(series_per_batch)
        .map(|part| {
            let mut b = WriteBatch::new(env.clone());
            for s in part {
                b.add_series(
                    &fleet.series()[s.series as usize],
                    &[(s.ts_ms, s.value)],
                    lim,
                )
                .unwrap();
            }
            b
        })
        .collect()
}

fn bench_append(rows: &mut Vec<Row>) {
    let agents = 1_000;
    let steps: usize = std::env::var("VIGIL_BENCH_STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full() { 20 } else { 10 });
    let env = EnvId::new("prod").unwrap();
    let lim = LabelLimits::default();
    let mut fleet = Fleet::new(FleetSpec {
        agents,
        start_ms: recent_start(),
        ..FleetSpec::default()
    });
    let mut step = Vec::new();
    let mut all_steps: Vec<Vec<WriteBatch>> = Vec::new();
    for _ in 0..=steps {
        step.clear();
        fleet.next_step(&mut step);
        all_steps.push(step_batches(&fleet, &step, 25_000, &env, &lim));
    }
    let samples_per_step: usize = all_steps[0].iter().map(|b| b.samples_len()).sum();
    for threads in [1usize, 2] {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(recent_start());
        let db = Arc::new(Db::open(dir.path(), opts(&clock, SyncPolicy::default())).unwrap());
        // Step 0 creates the series; time the later steps (series already known).
        for b in &all_steps[0] {
            db.write(b).unwrap();
        }
        let t = Instant::now();
        std::thread::scope(|sc| {
            for th in 0..threads {
                let db = db.clone();
                let all_steps = &all_steps;
                sc.spawn(move || {
                    for st in &all_steps[1..] {
                        for (i, b) in st.iter().enumerate() {
                            if i % threads == th {
                                let out = db.write(b).unwrap();
                                assert_eq!(out.accepted, b.samples_len());
                            }
                        }
                    }
                });
            }
        });
        let secs = t.elapsed().as_secs_f64();
        let rate = (samples_per_step * steps) as f64 / secs;
        row(
            rows,
            format!(
                "append head+WAL, sync=interval, {threads} writer(s), {}k series",
                samples_per_step / 1000
            ),
            format!("{:.2} M/s", rate / 1e6),
            "target ≥ 2.0 M/s; 25k-series batches",
        );
        if threads == 1 {
            // Baseline in the same run: the same batches' samples written raw to a file
            // (16 B/sample, no index, no compression) — the cost floor of touching each sample.
            let f = dir.path().join("raw");
            let mut w = std::io::BufWriter::new(std::fs::File::create(&f).unwrap());
            let t = Instant::now();
            for st in &all_steps[1..] {
                for b in st {
                    for i in 0..b.series_len() {
                        for (ts, v) in b.samples_of(i) {
                            w.write_all(&ts.to_le_bytes()).unwrap();
                            w.write_all(&v.to_bits().to_le_bytes()).unwrap();
                        }
                    }
                }
            }
            w.flush().unwrap();
            let base = (samples_per_step * steps) as f64 / t.elapsed().as_secs_f64();
            row(
                rows,
                "  baseline: raw 16-byte samples to a buffered file",
                format!("{:.2} M/s", base / 1e6),
                format!("store/baseline = {:.2}", rate / base),
            );
        }
    }
}

fn http(addr: &str, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()).unwrap();
    s.write_all(body).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let code = std::str::from_utf8(&resp[9..12])
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, resp)
}

/// One series in VictoriaMetrics' JSON-line import format.
fn vm_json_line(out: &mut Vec<u8>, l: &Labels, samples: &[(i64, f64)]) {
    out.extend_from_slice(b"{\"metric\":{");
    for (i, lab) in l.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write!(out, "{:?}:{:?}", lab.name.as_str(), lab.value.as_str()).unwrap();
    }
    out.extend_from_slice(b"},\"values\":[");
    for (i, (_, v)) in samples.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write!(out, "{v}").unwrap();
    }
    out.extend_from_slice(b"],\"timestamps\":[");
    for (i, (t, _)) in samples.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write!(out, "{t}").unwrap();
    }
    out.extend_from_slice(b"]}\n");
}

/// Loads `steps` scrape rounds series-major: `chunk` rounds are generated, then written as
/// batches of 25,000 series carrying `chunk` samples each (as a sender that buffers does);
/// `after` runs after each chunk with the chunk's newest timestamp. With `vm`, the same
/// samples also go to VictoriaMetrics' JSON-line import (`/api/v1/import`), series-major too.
/// Returns samples written.
#[allow(clippy::too_many_arguments)]
fn load_series_major(
    db: &Db,
    fleet: &mut Fleet,
    steps: usize,
    chunk: usize,
    env: &EnvId,
    lim: &LabelLimits,
    vm: Option<&str>,
    mut after: impl FnMut(i64),
) -> u64 {
    let n = fleet.series().len();
    let mut per: Vec<Vec<(i64, f64)>> = (0..n).map(|_| Vec::with_capacity(chunk)).collect();
    let mut step = Vec::new();
    let mut batch = WriteBatch::new(env.clone());
    let mut total = 0u64;
    let mut done = 0;
    while done < steps {
        let k = chunk.min(steps - done);
        per.iter_mut().for_each(Vec::clear);
        let mut newest = i64::MIN;
        for _ in 0..k {
            step.clear();
            fleet.next_step(&mut step);
            for s in &step {
                per[s.series as usize].push((s.ts_ms, s.value));
                newest = newest.max(s.ts_ms);
            }
        }
        for lo in (0..n).step_by(25_000) {
            batch.clear(env.clone());
            for (i, samples) in per.iter().enumerate().take((lo + 25_000).min(n)).skip(lo) {
                batch.add_series(&fleet.series()[i], samples, lim).unwrap();
            }
            let out = db.write(&batch).unwrap();
            assert_eq!(out.accepted, batch.samples_len());
            total += batch.samples_len() as u64;
            if let Some(addr) = vm {
                let hi = (lo + 25_000).min(n);
                for sub in (lo..hi).step_by(2_500) {
                    let mut body = Vec::with_capacity(16 << 20);
                    let end = (sub + 2_500).min(hi);
                    for (l, samples) in fleet.series()[sub..end].iter().zip(&per[sub..end]) {
                        vm_json_line(&mut body, l, samples);
                    }
                    let (code, resp) = http(addr, "POST", "/api/v1/import", &body);
                    assert!(
                        code / 100 == 2,
                        "VM import failed: {}",
                        String::from_utf8_lossy(&resp)
                    );
                }
            }
        }
        done += k;
        after(newest);
    }
    total
}

fn bench_size(rows: &mut Vec<Row>) {
    let agents = if full() { 1_000 } else { 100 };
    let hours = 24;
    let start = recent_start();
    let spec = FleetSpec {
        agents,
        start_ms: start,
        ..FleetSpec::default()
    };
    let steps = hours * 3600 * 1000 / spec.interval_ms;
    let env = EnvId::new("prod").unwrap();
    let lim = LabelLimits::default();
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(start);
    let db = Db::open(dir.path(), opts(&clock, SyncPolicy::Never)).unwrap();
    let mut fleet = Fleet::new(spec.clone());
    let vm = std::env::var("VIGIL_BENCH_VM").ok();
    let mut vm_proc = None;
    let vm_dir = tempfile::tempdir().unwrap();
    let vm_addr = "127.0.0.1:18428";
    if let Some(bin) = &vm {
        let child = Command::new(bin)
            .args([
                &format!("-storageDataPath={}", vm_dir.path().display()),
                &format!("-httpListenAddr={vm_addr}"),
                "-retentionPeriod=100y",
                "-search.disableCache",
                "-loggerLevel=ERROR",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start victoria-metrics");
        vm_proc = Some(child);
        for _ in 0..100 {
            if TcpStream::connect(vm_addr).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let t = Instant::now();
    // Series-major loading: same data and store path, several samples per series per batch
    // (and, with VictoriaMetrics, the same samples to it in the same order).
    let total = load_series_major(
        &db,
        &mut fleet,
        steps as usize,
        360,
        &env,
        &lim,
        vm.as_ref().map(|_| vm_addr),
        |newest| {
            clock.set(newest);
            db.maintain().unwrap();
        },
    );
    let ingest = t.elapsed();
    clock.set(start + 3 * DAY);
    db.maintain().unwrap();
    let st = db.stats();
    let (mut xor_all, mut pco_all, mut chunks_bytes) = (0u64, 0u64, 0u64);
    let mut raw_chunks = [0u64; 3]; // decimal, pcodec, XOR

    let mut level = 0;
    for b in std::fs::read_dir(dir.path().join("blocks"))
        .unwrap()
        .flatten()
    {
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(b.path().join("meta.json")).unwrap()).unwrap();
        xor_all += m["xor_bytes_if_all"].as_u64().unwrap();
        pco_all += m["pco_bytes_if_all"].as_u64().unwrap();
        chunks_bytes += m["chunk_bytes"].as_u64().unwrap();
        if m["resolution_ms"].as_u64() == Some(0) {
            for (n, k) in raw_chunks
                .iter_mut()
                .zip(["decimal_chunks", "pco_chunks", "xor_chunks"])
            {
                *n += m[k].as_u64().unwrap_or(0);
            }
        }
        level = level.max(m["level"].as_u64().unwrap());
    }
    let disk = du(&dir.path().join("blocks"));
    let series = agents * SERIES_PER_AGENT;
    assert_eq!(st.block_samples, total, "every sample must be in blocks");
    let bps = disk as f64 / total as f64;
    row(
        rows,
        format!(
            "ingest {agents} agents × {hours} h ({series} series, {:.1} M samples)",
            total as f64 / 1e6
        ),
        format!("{:.1} s", ingest.as_secs_f64()),
        "incl. dataset generation, cut and compaction every 2 h",
    );
    row(
        rows,
        "on disk after compaction (blocks dir), bytes/sample",
        format!("{bps:.3}"),
        format!(
            "{:.1}% of 16 raw bytes; level {level} blocks",
            bps / 16.0 * 100.0
        ),
    );
    row(
        rows,
        "  chunks only, chosen codec per chunk, bytes/sample",
        format!("{:.3}", chunks_bytes as f64 / total as f64),
        "",
    );
    row(
        rows,
        "  chunks if all XOR (Gorilla-style), bytes/sample",
        format!("{:.3}", xor_all as f64 / total as f64),
        "",
    );
    row(
        rows,
        "  chunks if all pcodec, bytes/sample",
        format!("{:.3}", pco_all as f64 / total as f64),
        format!("pco/xor = {:.2}", pco_all as f64 / xor_all as f64),
    );
    let all_raw = raw_chunks.iter().sum::<u64>().max(1) as f64;
    row(
        rows,
        "  raw chunks decimal / pcodec / XOR, %",
        format!(
            "{:.0} / {:.0} / {:.0}",
            raw_chunks[0] as f64 / all_raw * 100.0,
            raw_chunks[1] as f64 / all_raw * 100.0,
            raw_chunks[2] as f64 / all_raw * 100.0
        ),
        "decimal kept when ≤ 1.25× pcodec's size",
    );
    if let Some(mut p) = vm_proc {
        let _ = http(vm_addr, "GET", "/internal/force_flush", b"");
        let _ = http(
            vm_addr,
            "GET",
            "/internal/force_merge?partition_prefix=",
            b"",
        );
        // Wait for merges to settle: size stable for 5 s.
        let mut last = 0;
        let mut stable = 0;
        for _ in 0..240 {
            std::thread::sleep(Duration::from_secs(1));
            let s = du(vm_dir.path());
            if s == last {
                stable += 1;
                if stable >= 5 {
                    break;
                }
            } else {
                stable = 0;
                last = s;
            }
        }
        let vm_bytes = du(&vm_dir.path().join("data"));
        let (code, body) = http(
            vm_addr,
            "GET",
            "/api/v1/query?query=count(%7B__name__%3D~%22.%2B%22%7D%5B2d%5D)",
            b"",
        );
        let vm_bps = vm_bytes as f64 / total as f64;
        row(
            rows,
            "  VictoriaMetrics data dir (same data, after force_merge)",
            format!("{vm_bps:.3}"),
            format!("vigil/VM = {:.2} (aim ≤ 0.85); query {code}", bps / vm_bps),
        );
        let _ = body;
        let _ = p.kill();
        let _ = p.wait();
    }
}

/// Child: creates `n` series with 2 samples each and reports RSS bytes per series.
fn child_memory(n: usize) {
    let template = Fleet::new(FleetSpec {
        agents: 1,
        ..FleetSpec::default()
    });
    let agents = n.div_ceil(SERIES_PER_AGENT);
    let dir = tempfile::tempdir().unwrap();
    let start = recent_start();
    let clock = ManualClock::new(start);
    let db = Db::open(dir.path(), opts(&clock, SyncPolicy::Never)).unwrap();
    let env = EnvId::new("prod").unwrap();
    let lim = LabelLimits::default();
    let mut batch = WriteBatch::new(env.clone());
    // Warm up the batch buffers so their growth is not counted.
    let rss0 = rss_bytes();
    let mut created = 0;
    for round in 0..2i64 {
        for a0 in (0..agents).step_by(200) {
            batch.clear(env.clone());
            for a in a0..(a0 + 200).min(agents) {
                let agent = format!("agent-{a:06}");
                let inst = format!("{agent}:9100");
                let zone = format!("zone-{}", a % 8);
                for (k, l) in template.series().iter().enumerate() {
                    for lab in l {
                        let v = match lab.name.as_str() {
                            "agent" => agent.as_str(),
                            "instance" => inst.as_str(),
                            "zone" => zone.as_str(),
                            _ => lab.value.as_str(),
                        };
                        batch.push_label(&lab.name, v);
                    }
                    batch.push_sample(
                        start + round * 10_000 + (a % 100) as i64,
                        (k as f64) * 1.5 + round as f64,
                    );
                    batch.finish_series(&lim).unwrap();
                }
            }
            let out = db.write(&batch).unwrap();
            created += out.series_created;
        }
    }
    let rss1 = rss_bytes();
    let st = db.stats();
    let per = (rss1 - rss0) as f64 / created as f64;
    // Latest sample of every series.
    let q = db.querier("prod", start, start + HOUR);
    let all = [Matcher::new(MatchOp::Re, "__name__", ".+").unwrap()];
    let t = Instant::now();
    let latest = q.latest(&all).unwrap();
    let latest_ms = t.elapsed().as_secs_f64() * 1e3;
    assert_eq!(latest.len(), created);
    // 1,000 series × 1 h from the head: one agent's worth ×10.
    println!(
        "MEM {created} {per:.1} {} {latest_ms:.1}",
        st.head_bytes as f64 / created as f64
    );
}

fn bench_memory(rows: &mut Vec<Row>) {
    let n = if full() { 1_000_000 } else { 200_000 };
    let out = Command::new(std::env::current_exe().unwrap())
        .env("VIGIL_BENCH_CHILD", format!("memory:{n}"))
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    let line = s
        .lines()
        .find(|l| l.starts_with("MEM "))
        .unwrap_or_else(|| {
            panic!(
                "memory child failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let f: Vec<f64> = line[4..]
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    row(
        rows,
        format!("head RSS per active series at {} series", f[0] as u64),
        format!("{:.0} B", f[1]),
        format!("target ≤ 600 B; head's own estimate {:.0} B", f[2]),
    );
    row(
        rows,
        format!("latest sample of {} series (head fast path)", f[0] as u64),
        format!("{:.0} ms", f[3]),
        "",
    );
}

fn bench_reads_and_replay(rows: &mut Vec<Row>) {
    let agents = if full() { 9_434 } else { 1_000 };
    let spec = FleetSpec {
        agents,
        start_ms: recent_start(),
        ..FleetSpec::default()
    };
    let steps = 2 * 360; // 2 h at 10 s
    let env = EnvId::new("prod").unwrap();
    let lim = LabelLimits::default();
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(spec.start_ms);
    let mut fleet = Fleet::new(spec.clone());
    let series = fleet.series().len();
    let dir2 = tempfile::tempdir().unwrap();
    {
        let db = Db::open(dir.path(), opts(&clock, SyncPolicy::Never)).unwrap();
        load_series_major(&db, &mut fleet, steps, 60, &env, &lim, None, |_| {});
        // 1,000 series × 1 h from the head.
        let q = db.querier("prod", spec.start_ms + HOUR, spec.start_ms + 2 * HOUR);
        let m = [
            Matcher::eq("__name__", "node_cpu_seconds_total"),
            Matcher::new(MatchOp::Re, "agent", "agent-000[0-5].").unwrap(),
        ];
        let mut times = Vec::new();
        let mut n = 0;
        let mut samples = 0;
        for _ in 0..5 {
            let t = Instant::now();
            n = 0;
            samples = 0;
            for s in q.select(&m).unwrap() {
                n += 1;
                samples += collect_samples(s.samples).unwrap().len();
            }
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        row(
            rows,
            format!("read {n} series × 1 h from the head ({samples} samples)"),
            format!("{:.1} ms", times[2]),
            "median of 5",
        );
        // Copy the WAL now, before the head is cut (the cut checkpoints it), for the replay below.
        std::fs::create_dir_all(dir2.path().join("wal")).unwrap();
        for e in std::fs::read_dir(dir.path().join("wal")).unwrap().flatten() {
            std::fs::copy(e.path(), dir2.path().join("wal").join(e.file_name())).unwrap();
        }
        // Cut the head into a block and read the same from the block.
        clock.set(spec.start_ms + 6 * HOUR);
        db.maintain().unwrap();
        assert!(
            !db.stats().blocks.is_empty(),
            "the head was not cut into a block"
        );
        let q = db.querier("prod", spec.start_ms + HOUR, spec.start_ms + 2 * HOUR);
        let mut times = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            for s in q.select(&m).unwrap() {
                collect_samples(s.samples).unwrap();
            }
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        row(
            rows,
            format!("read {n} series × 1 h from a block"),
            format!("{:.1} ms", times[2]),
            "median of 5",
        );
        std::mem::forget(db); // leave the WAL as a crash would (no final checkpoint)
    }
    let wal_bytes = du(&dir2.path().join("wal"));
    let t = Instant::now();
    let db = Db::open(dir2.path(), opts(&clock, SyncPolicy::Never)).unwrap();
    let secs = t.elapsed().as_secs_f64();
    let st = db.stats();
    row(
        rows,
        format!(
            "WAL replay {series} series × 2 h ({:.0} M samples, {:.0} MiB)",
            (series * steps) as f64 / 1e6,
            wal_bytes as f64 / (1 << 20) as f64
        ),
        format!("{secs:.1} s"),
        format!(
            "{:.1} M samples/s; {} series in head",
            (series * steps) as f64 / secs / 1e6,
            st.head_series
        ),
    );
}

fn main() {
    if let Ok(c) = std::env::var("VIGIL_BENCH_CHILD") {
        if let Some(n) = c.strip_prefix("memory:") {
            child_memory(n.parse().unwrap());
        }
        return;
    }
    // `cargo test --benches` runs bench targets with `--test`; keep that cheap.
    if std::env::args().any(|a| a == "--test") {
        return;
    }
    let mut rows = Vec::new();
    eprintln!(
        "vigil-tsdb store benchmark ({} mode)",
        if full() { "full" } else { "quick" }
    );
    let only = std::env::var("VIGIL_BENCH_ONLY").unwrap_or_default();
    let run = |name: &str| only.is_empty() || only.split(',').any(|o| o == name);
    if run("append") {
        bench_append(&mut rows);
    }
    if run("memory") {
        bench_memory(&mut rows);
    }
    if run("read") {
        bench_reads_and_replay(&mut rows);
    }
    if run("size") {
        bench_size(&mut rows);
    }
    println!("\n| measurement | value | note |\n|---|---|---|");
    for r in rows {
        println!("| {} | {} | {} |", r.what, r.value, r.note);
    }
}

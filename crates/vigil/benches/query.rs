//! Query benchmark: dashboard-style PromQL over the reference fleet, against the real `vigil`
//! binary and, in the same run on the same data, VictoriaMetrics and Prometheus (Debian
//! packages) when installed. Prints p50/p99 per query and the ratios.
//!
//! `cargo bench -p vigil --bench query` runs the quick scale (1,000 agents for instant
//! queries, 100 agents × 6 h for range queries). `VIGIL_BENCH_FULL=1` runs the scale
//! (10,000 agents; 1,000 agents × 24 h). `VIGIL_BENCH_PEERS=0` skips the peers (`vm` or `prometheus`: only that one);
//! `VIGIL_BENCH_RUNS` sets repetitions per query (default 30); `VIGIL_BENCH_AGENTS` and
//! `VIGIL_BENCH_RANGE=AGENTSxHOURS` override the scale; `VIGIL_BENCH_ONLY` picks queries;
//! `VIGIL_BENCH_BASE=<path to another vigil binary>` adds that build as target `vigil-base`;
//! `VIGIL_BENCH_KEEPALIVE=1` sends the queries on kept-alive connections (default: a new
//! connection per query); `VIGIL_BENCH_HOLD=1` loads the targets and keeps them up for
//! profiling by hand instead of measuring.
//!
//! Vigil runs on its defaults: blocks get 5 m / 1 h rollups once they are an hour old
//! (`[tsdb] downsample_after`; `VIGIL_BENCH_DOWNSAMPLE` overrides it, `off` disables
//! rollups). Range queries are aligned to their step, as Grafana sends them. Before each
//! target's turn at a query the others are let go quiet (at most 10 s).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vigil_fleet::{Fleet, FleetSample, FleetSpec};
use vigil_ingest::remote_write::proto::{TimeSeries, WriteRequest};

struct Target {
    name: &'static str,
    addr: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 request; returns status and body. A fresh connection per request, closed
/// after it, unless `VIGIL_BENCH_KEEPALIVE=1`: then GETs (the queries) reuse one kept-alive
/// connection per target and thread, as Grafana does.
fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<u8>) {
    use std::cell::RefCell;
    use std::collections::HashMap;
    thread_local! {
        static CONNS: RefCell<HashMap<String, BufReader<TcpStream>>> = RefCell::new(HashMap::new());
    }
    // Read once, not inside every timed request.
    static KEEPALIVE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let keep = method == "GET"
        && *KEEPALIVE
            .get_or_init(|| std::env::var("VIGIL_BENCH_KEEPALIVE").is_ok_and(|v| v == "1"));
    let connect = || {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_nodelay(true).ok();
        BufReader::new(s)
    };
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{}Content-Length: {}\r\n",
        if keep { "" } else { "Connection: close\r\n" },
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    if !keep {
        return exchange(&mut connect(), &head, body, false).expect("request");
    }
    let mut r = CONNS
        .with(|c| c.borrow_mut().remove(addr))
        .unwrap_or_else(connect);
    let out = match exchange(&mut r, &head, body, true) {
        Ok(out) => out,
        Err(_) => {
            // A kept connection the server has closed meanwhile fails once; retry on a new one.
            r = connect();
            exchange(&mut r, &head, body, true).expect("request")
        }
    };
    CONNS.with(|c| c.borrow_mut().insert(addr.to_string(), r));
    out
}

/// Writes one request on `r`'s connection and reads the response: its status and body
/// (by Content-Length or chunked; until the server closes only when `keep` is false).
fn exchange(
    r: &mut BufReader<TcpStream>,
    head: &str,
    body: &[u8],
    keep: bool,
) -> std::io::Result<(u16, Vec<u8>)> {
    r.get_mut().write_all(head.as_bytes())?;
    r.get_mut().write_all(body)?;
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    let mut len = None;
    let mut chunked = false;
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse::<usize>().ok();
            }
            if k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked") {
                chunked = true;
            }
        }
    }
    let mut out = Vec::new();
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let n = usize::from_str_radix(line.trim(), 16).unwrap_or(0);
            if n == 0 {
                line.clear();
                r.read_line(&mut line)?;
                break;
            }
            let mut c = vec![0u8; n + 2];
            r.read_exact(&mut c)?;
            out.extend_from_slice(&c[..n]);
        }
    } else if let Some(n) = len {
        out.resize(n, 0);
        r.read_exact(&mut out)?;
    } else if keep {
        return Err(std::io::Error::other(
            "response without a length on a kept-alive connection",
        ));
    } else {
        r.read_to_end(&mut out)?;
    }
    Ok((status, out))
}

fn wait_ok(addr: &str, path: &str, what: &str) {
    let t = Instant::now();
    loop {
        if let Ok(mut s) = TcpStream::connect(addr) {
            let _ = s.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            );
            let mut b = String::new();
            let _ = s.read_to_string(&mut b);
            if b.starts_with("HTTP/1.1 200") {
                return;
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "{what} did not become ready"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts `bin` (this build's `vigil`, or another build to compare with) as target `name`.
fn start_vigil(bin: &str, name: &'static str) -> Target {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("vigil.toml");
    let tsdb = match std::env::var("VIGIL_BENCH_DOWNSAMPLE") {
        Ok(d) => format!("[tsdb]\ndownsample_after = \"{d}\"\n"),
        Err(_) => String::new(),
    };
    std::fs::write(&cfg, tsdb).unwrap();
    let mut child = Command::new(bin)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--auth-enabled",
            "false",
            "--data-dir",
        ])
        .arg(dir.path().join("vigil"))
        .arg("--config")
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("vigil.log")).unwrap())
        // The store's maintenance passes are logged, to tell whether one overlapped queries.
        .env("VIGIL_LOG", "warn,vigil_tsdb=info")
        .env("VIGIL_LOG_FORMAT", "text")
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut addr = String::new();
    for l in lines.by_ref() {
        let l = l.unwrap();
        if let Some(rest) = l.strip_prefix("vigil listening on ") {
            addr = rest
                .split_whitespace()
                .next()
                .unwrap()
                .trim_start_matches("http://")
                .to_string();
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    wait_ok(&addr, "/readyz", "vigil");
    Target {
        name,
        addr,
        child,
        _dir: dir,
    }
}

fn start_vm(bin: &str) -> Target {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let child = Command::new(bin)
        .arg(format!("-storageDataPath={}", dir.path().display()))
        .arg(format!("-httpListenAddr={addr}"))
        .args([
            "-retentionPeriod=100y",
            "-search.latencyOffset=0s",
            "-search.disableCache",
            "-search.maxUniqueTimeseries=5000000",
            "-search.maxSamplesPerQuery=2000000000",
            "-loggerLevel=ERROR",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_ok(&addr, "/health", "VictoriaMetrics");
    Target {
        name: "victoriametrics",
        addr,
        child,
        _dir: dir,
    }
}

fn start_prometheus(bin: &str) -> Target {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(&cfg, "global:\n  scrape_interval: 1h\n").unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let child = Command::new(bin)
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .args([
            "--web.enable-remote-write-receiver",
            "--storage.tsdb.retention.time=100y",
            "--query.max-samples=500000000",
            "--log.level=error",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_ok(&addr, "/-/ready", "Prometheus");
    Target {
        name: "prometheus",
        addr,
        child,
        _dir: dir,
    }
}

const BUCKETS: [&str; 8] = ["0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "1", "+Inf"];

/// Loads `agents` × `steps` of the fleet (env label `env`) plus one classic histogram per
/// agent into every target, in time order, 30 steps per batch split into ≤ 200k-sample
/// requests. Returns the last timestamp.
fn load(targets: &[Target], agents: usize, steps: i64, start_ms: i64, env: &str, seed: u64) -> i64 {
    let mut fleet = Fleet::new(FleetSpec {
        agents,
        seed,
        start_ms,
        env: env.into(),
        zones: 8,
        ..FleetSpec::default()
    });
    let labels: Vec<Vec<(String, String)>> = fleet
        .series()
        .iter()
        .map(|l| {
            l.iter()
                .map(|x| (x.name.to_string(), x.value.to_string()))
                .collect()
        })
        .collect();
    let mut hist_labels: Vec<Vec<(String, String)>> = Vec::new();
    for a in 0..agents {
        for le in BUCKETS {
            hist_labels.push(vec![
                (
                    "__name__".into(),
                    "http_request_duration_seconds_bucket".into(),
                ),
                ("agent".into(), format!("agent-{a:05}")),
                ("env".into(), env.into()),
                ("job".into(), "api".into()),
                ("le".into(), le.into()),
                (
                    "zone".into(),
                    format!("zone-{}", (b'a' + (a % 8) as u8) as char),
                ),
            ]);
        }
    }
    let n_series = labels.len() + hist_labels.len();
    let block = 30i64;
    let mut buf: Vec<FleetSample> = Vec::new();
    let mut cols: Vec<Vec<(i64, f64)>> = vec![Vec::new(); n_series];
    let mut last = start_ms;
    let t0 = Instant::now();
    let mut sent = 0usize;
    let mut step = 0i64;
    while step < steps {
        for c in cols.iter_mut() {
            c.clear();
        }
        let end = (step + block).min(steps);
        for s in step..end {
            buf.clear();
            fleet.next_step(&mut buf);
            for x in &buf {
                cols[x.series as usize].push((x.ts_ms, x.value));
                last = last.max(x.ts_ms);
            }
            let ts = start_ms + s * 10_000 + 7;
            for a in 0..agents {
                let base = (s + 1) as f64 * (20.0 + (a % 13) as f64);
                let shares = [0.1, 0.3, 0.55, 0.7, 0.85, 0.95, 0.99, 1.0];
                for (b, sh) in shares.iter().enumerate() {
                    cols[labels.len() + a * BUCKETS.len() + b].push((ts, (base * sh).floor()));
                }
            }
        }
        // Requests of at most ~200k samples, all in this time block.
        let per_req = (200_000 / (end - step) as usize).max(1);
        let mut bodies = Vec::new();
        for chunk in (0..n_series).collect::<Vec<_>>().chunks(per_req) {
            let ts: Vec<TimeSeries> = chunk
                .iter()
                .map(|&i| {
                    let l = if i < labels.len() {
                        &labels[i]
                    } else {
                        &hist_labels[i - labels.len()]
                    };
                    let lr: Vec<(&str, &str)> =
                        l.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
                    TimeSeries::new(&lr, &cols[i])
                })
                .collect();
            sent += ts.iter().map(|t| t.samples.len()).sum::<usize>();
            bodies.push(WriteRequest { timeseries: ts }.encode_snappy());
        }
        std::thread::scope(|sc| {
            for t in targets {
                let bodies = &bodies;
                sc.spawn(move || {
                    for b in bodies {
                        let (st, body) = http(
                            &t.addr,
                            "POST",
                            "/api/v1/write",
                            &[
                                ("Content-Encoding", "snappy"),
                                ("Content-Type", "application/x-protobuf"),
                                ("X-Prometheus-Remote-Write-Version", "0.1.0"),
                            ],
                            b,
                        );
                        assert!(
                            st / 100 == 2,
                            "{} refused a write: {st} {}",
                            t.name,
                            String::from_utf8_lossy(&body)
                        );
                    }
                });
            }
        });
        step = end;
    }
    eprintln!(
        "loaded {env}: {agents} agents × {steps} steps, {n_series} series, {sent} samples into {} targets in {:.1} s",
        targets.len(),
        t0.elapsed().as_secs_f64()
    );
    last
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |r| r.1);
    let f: Vec<&str> = rest.split_whitespace().collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

/// Waits (at most 10 s) until no target used more than 4 % of a core in the last half second,
/// so the target measured next does not share the cores with another one's leftover work (a
/// Go collector after a heavy query, a merge). Each target's own background work during its
/// runs still counts against it.
fn settle(targets: &[Target]) {
    let t0 = Instant::now();
    let ticks = || -> Vec<u64> { targets.iter().map(|t| cpu_ticks(t.child.id())).collect() };
    let mut prev = ticks();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = ticks();
        let busy = now.iter().zip(&prev).any(|(n, p)| n.saturating_sub(*p) > 2);
        prev = now;
        if !busy || t0.elapsed() > Duration::from_secs(10) {
            return;
        }
    }
}

/// Waits until the process used under 5 % of a core for 35 s in a row (longer than Vigil's
/// 30 s maintenance period; at most 10 min).
fn wait_idle(t: &Target) {
    let pid = t.child.id();
    let t0 = Instant::now();
    let mut quiet = 0;
    let mut prev = cpu_ticks(pid);
    while quiet < 35 && t0.elapsed() < Duration::from_secs(600) {
        std::thread::sleep(Duration::from_secs(1));
        let now = cpu_ticks(pid);
        if now - prev <= 5 {
            quiet += 1;
        } else {
            quiet = 0;
        }
        prev = now;
    }
    eprintln!("{} idle after {:.0} s", t.name, t0.elapsed().as_secs_f64());
}

/// `VIGIL_BENCH_HOLD=1`: the loaded targets stay up for profiling by hand. Prints where each
/// one listens and keeps its data; never returns. Killing the bench (SIGKILL) leaves the
/// targets and their folders behind, so another `vigil` build can be started on the same
/// folder (`vigil serve --data-dir <dir>/vigil --auth-enabled false`).
fn hold(targets: &[Target]) -> ! {
    for t in targets {
        println!(
            "holding {} on {} (pid {}, data under {})",
            t.name,
            t.addr,
            t.child.id(),
            t._dir.path().display()
        );
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

struct Q {
    name: &'static str,
    expr: String,
    /// None: instant at `at`; Some((start, end, step)).
    range: Option<(i64, i64, i64)>,
    at: i64,
}

fn run_query(t: &Target, q: &Q) -> (Duration, usize) {
    let path = match q.range {
        None => format!(
            "/api/v1/query?query={}&time={:.3}",
            enc(&q.expr),
            q.at as f64 / 1000.0
        ),
        Some((s, e, st)) => format!(
            "/api/v1/query_range?query={}&start={:.3}&end={:.3}&step={:.3}",
            enc(&q.expr),
            s as f64 / 1000.0,
            e as f64 / 1000.0,
            st as f64 / 1000.0
        ),
    };
    let t0 = Instant::now();
    let (status, body) = http(&t.addr, "GET", &path, &[], b"");
    let el = t0.elapsed();
    assert_eq!(
        status,
        200,
        "{} on {}: {}",
        q.name,
        t.name,
        String::from_utf8_lossy(&body)
    );
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let n = v["data"]["result"].as_array().map_or(1, |a| a.len());
    (el, n)
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
    let full = std::env::var("VIGIL_BENCH_FULL").is_ok_and(|v| v == "1");
    let runs: usize = std::env::var("VIGIL_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    // VIGIL_BENCH_PEERS: unset/1 both peers, 0 none, `vm` or `prometheus` only that one.
    let peers_var = std::env::var("VIGIL_BENCH_PEERS").unwrap_or_default();
    let peers = peers_var != "0";
    let (mut live_agents, mut range_agents, mut range_hours) = if full {
        (10_000, 1_000, 24)
    } else {
        (1_000, 100, 6)
    };
    // Overrides: VIGIL_BENCH_AGENTS (instant), VIGIL_BENCH_RANGE=AGENTSxHOURS.
    if let Some(a) = std::env::var("VIGIL_BENCH_AGENTS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        live_agents = a;
    }
    if let Some((a, h)) = std::env::var("VIGIL_BENCH_RANGE").ok().and_then(|v| {
        v.split_once('x')
            .and_then(|(a, h)| Some((a.parse().ok()?, h.parse().ok()?)))
    }) {
        range_agents = a;
        range_hours = h;
    }

    let mut targets = vec![start_vigil(env!("CARGO_BIN_EXE_vigil"), "vigil")];
    // VIGIL_BENCH_BASE: another `vigil` binary (an older build) run side by side, to
    // compare builds on the same data in the same run.
    if let Ok(base) = std::env::var("VIGIL_BENCH_BASE") {
        targets.push(start_vigil(&base, "vigil-base"));
    }
    if peers {
        for (bin, f) in [
            ("/usr/bin/victoria-metrics", start_vm as fn(&str) -> Target),
            (
                "/usr/bin/prometheus",
                start_prometheus as fn(&str) -> Target,
            ),
        ] {
            let wanted = match peers_var.as_str() {
                "vm" => bin.contains("victoria"),
                "prometheus" => bin.contains("prometheus"),
                _ => true,
            };
            if !wanted {
                continue;
            }
            if std::path::Path::new(bin).exists() {
                targets.push(f(bin));
            } else {
                eprintln!("{bin} not installed: skipped");
            }
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let live_steps = 36; // 6 minutes: enough for [5m] windows
    let range_steps = range_hours * 360;
    let live_start = (now / 10_000 - live_steps) * 10_000;
    let range_start = live_start - range_steps * 10_000 - 60_000;
    let range_end = load(
        &targets,
        range_agents,
        range_steps,
        range_start,
        "range",
        11,
    );
    let live_end = load(&targets, live_agents, live_steps, live_start, "live", 7);
    for t in &targets {
        if t.name == "victoriametrics" {
            http(&t.addr, "GET", "/internal/force_flush", &[], b"");
        }
    }
    // Let every target finish background work (Vigil's block cuts and compaction, VM's merges,
    // Prometheus' head compaction) so queries are measured on idle servers.
    for t in &targets {
        wait_idle(t);
    }
    if std::env::var("VIGIL_BENCH_HOLD").is_ok_and(|v| v == "1") {
        hold(&targets);
    }

    let at = live_end + 1_500;
    let rat = range_end + 1_500;
    let day = (range_end - range_start) / 1000;
    // Aligned to the step, as Grafana aligns them.
    let r = |step: i64| {
        Some((
            (range_start + 3_600_000).div_euclid(step) * step,
            rat.div_euclid(step) * step,
            step,
        ))
    };
    let queries = vec![
        Q { name: "latest gauge, all agents", expr: "node_load1{env=\"live\"}".into(), range: None, at },
        Q { name: "sum by zone of rate", expr: "sum by (zone) (rate(node_cpu_seconds_total{env=\"live\"}[5m]))".into(), range: None, at },
        Q { name: "topk of rate", expr: "topk(10, rate(node_network_receive_bytes_total{env=\"live\",device=\"eth0\"}[5m]))".into(), range: None, at },
        Q { name: "regex matcher", expr: "node_filesystem_avail_bytes{env=\"live\",agent=~\"agent-00[0-4].*\",mountpoint=~\"/|/var\"}".into(), range: None, at },
        Q { name: "ratio of two gauges", expr: "avg by (zone) (node_memory_MemAvailable_bytes{env=\"live\"} / node_memory_MemTotal_bytes{env=\"live\"})".into(), range: None, at },
        Q { name: "histogram_quantile", expr: "histogram_quantile(0.99, sum by (le, zone) (rate(http_request_duration_seconds_bucket{env=\"live\"}[5m])))".into(), range: None, at },
        Q { name: "avg_over_time over the span", expr: format!("avg_over_time(node_load1{{env=\"range\"}}[{day}s])"), range: None, at: rat },
        Q { name: "range: sum by zone of rate", expr: "sum by (zone) (rate(node_cpu_seconds_total{env=\"range\",mode=\"user\"}[5m]))".into(), range: r(300_000), at: 0 },
        Q { name: "range: max_over_time 1h", expr: "max_over_time(node_load1{env=\"range\"}[1h])".into(), range: r(3_600_000), at: 0 },
        Q { name: "range: one series, 1m step", expr: "node_load1{env=\"range\",agent=\"agent-00007\"}".into(), range: r(60_000), at: 0 },
        Q { name: "range: quantile by zone", expr: "quantile by (zone) (0.9, node_load5{env=\"range\"})".into(), range: r(300_000), at: 0 },
    ];
    println!(
        "\nquery benchmark: {live_agents} agents live (instant), {range_agents} agents × {range_hours} h (range); {runs} runs each; latency in ms (p50 / p99)"
    );
    let mut header = format!("{:<30}", "query");
    for t in &targets {
        header.push_str(&format!(" {:>22}", t.name));
    }
    if targets.len() > 1 {
        header.push_str("  vigil p99 / peer p99");
    }
    println!("{header}");
    let mut worst_vigil_p99: f64 = 0.0;
    let vigil_log = targets[0]._dir.path().join("vigil.log");
    let log_at = std::fs::metadata(&vigil_log).map_or(0, |m| m.len());
    let only = std::env::var("VIGIL_BENCH_ONLY").ok();
    for q in &queries {
        if only.as_deref().is_some_and(|o| !q.name.contains(o)) {
            continue;
        }
        let mut row = format!("{:<30}", q.name);
        let mut p99s = Vec::new();
        let mut counts = Vec::new();
        for t in &targets {
            if targets.len() > 1 {
                settle(&targets);
            }
            let (_, n) = run_query(t, q); // warm-up
            counts.push(n);
            let mut lat: Vec<Duration> = (0..runs).map(|_| run_query(t, q).0).collect();
            let p50 = pct(&mut lat, 0.5);
            let p99 = pct(&mut lat, 0.99);
            p99s.push(p99);
            // Sub-10 ms figures get two decimals: a tenth of a millisecond is most of a
            // small query.
            let d = if p99 < 10.0 { 2 } else { 1 };
            row.push_str(&format!(" {:>10.d$} / {:>9.d$}", p50, p99));
        }
        worst_vigil_p99 = worst_vigil_p99.max(p99s[0]);
        for (i, p) in p99s.iter().enumerate().skip(1) {
            let n = targets[i].name;
            let short = n.strip_prefix("vigil-").unwrap_or(&n[..4]);
            row.push_str(&format!("  {short}: {:.2}", p99s[0] / p));
        }
        if counts.iter().any(|&c| c != counts[0]) {
            row.push_str(&format!("  (series counts differ: {counts:?})"));
        } else {
            row.push_str(&format!("  ({} series)", counts[0]));
        }
        println!("{row}");
    }
    println!("worst Vigil p99: {worst_vigil_p99:.1} ms");
    // Store work that ran while queries were measured (blocks cut, compacted or rolled up as
    // the wall clock moved on) makes that run's figures noisier: say so.
    let log = std::fs::read(&vigil_log).unwrap_or_default();
    let during = String::from_utf8_lossy(log.get(log_at as usize..).unwrap_or_default());
    for l in during.lines().filter(|l| l.contains("maintenance")) {
        println!("vigil store maintenance during the queries: {l}");
    }
}

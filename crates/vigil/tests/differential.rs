//! Differential test: the same reference-fleet data is remote-written to Vigil and to a real
//! Prometheus (Debian 2.42, `--web.enable-remote-write-receiver`), then well over 100 queries
//! (instant and range) run on both must agree (floats within 1e-9 relative, or both NaN).
//! Sample times carry the fleet's jitter and evaluation times are odd offsets, so no sample
//! falls on a window boundary (where Prometheus 2 and 3 differ). Also: `promtool query
//! instant` against Vigil.

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use vigil_fleet::{Fleet, FleetSample, FleetSpec};
use vigil_ingest::remote_write::proto::{TimeSeries, WriteRequest};

struct Prometheus {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_prometheus() -> Prometheus {
    require("prometheus");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(&cfg, "global:\n  scrape_interval: 1h\n").unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .arg("--web.enable-remote-write-receiver")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    loop {
        if let Ok(r) = request(&addr, "GET", "/-/ready", &[], b"")
            && r.status == 200
        {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "Prometheus did not become ready"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Prometheus {
        child,
        addr,
        _dir: dir,
    }
}

const AGENTS: usize = 12;
const STEPS: i64 = 360; // one hour at 10 s
const BUCKETS: [&str; 6] = ["0.05", "0.1", "0.25", "0.5", "1", "+Inf"];

/// Classic histogram counters per agent: cumulative bucket counts that grow each step.
fn histogram_step(agent: usize, step: i64) -> Vec<(String, f64)> {
    let base = (step + 1) as f64 * (3.0 + (agent % 5) as f64);
    let shares = [0.2, 0.45, 0.7, 0.85, 0.97, 1.0];
    let mut v: Vec<(String, f64)> = BUCKETS
        .iter()
        .zip(shares)
        .map(|(le, s)| (le.to_string(), (base * s).floor()))
        .collect();
    v.push(("sum".into(), base * 0.21));
    v
}

fn write_all(body: &[u8], vigil: &Server, prom: &Prometheus) {
    let r = vigil.post(
        "/api/v1/write",
        Some(&vigil.admin),
        &[
            ("Content-Encoding", "snappy"),
            ("Content-Type", "application/x-protobuf"),
        ],
        body,
    );
    assert_eq!(r.status, 204, "vigil: {}", r.body_str());
    let r = request(
        &prom.addr,
        "POST",
        "/api/v1/write",
        &[
            ("Content-Encoding", "snappy"),
            ("Content-Type", "application/x-protobuf"),
            ("X-Prometheus-Remote-Write-Version", "0.1.0"),
        ],
        body,
    )
    .unwrap();
    assert!(
        r.status / 100 == 2,
        "prometheus: {} {}",
        r.status,
        r.body_str()
    );
}

/// Loads the fleet into both; returns (start, end) of the data in ms.
fn load(vigil: &Server, prom: &Prometheus) -> (i64, i64) {
    let start = (now_ms() / 10_000 - STEPS - 30) * 10_000;
    let mut fleet = Fleet::new(FleetSpec {
        agents: AGENTS,
        seed: 42,
        start_ms: start,
        env: "prod".into(),
        zones: 3,
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
    let mut buf: Vec<FleetSample> = Vec::new();
    let mut per_series: BTreeMap<u32, Vec<(i64, f64)>> = BTreeMap::new();
    let mut hist: BTreeMap<(usize, String), Vec<(i64, f64)>> = BTreeMap::new();
    for step in 0..STEPS {
        buf.clear();
        fleet.next_step(&mut buf);
        for s in &buf {
            per_series
                .entry(s.series)
                .or_default()
                .push((s.ts_ms, s.value));
        }
        let ts = start + step * 10_000 + 3;
        for a in 0..AGENTS {
            for (k, v) in histogram_step(a, step) {
                hist.entry((a, k)).or_default().push((ts, v));
            }
        }
        // Flush every 10 minutes of data, in time order, to both.
        if (step + 1) % 60 == 0 || step + 1 == STEPS {
            let mut ts_vec = Vec::new();
            for (id, samples) in std::mem::take(&mut per_series) {
                let l: Vec<(&str, &str)> = labels[id as usize]
                    .iter()
                    .map(|(a, b)| (a.as_str(), b.as_str()))
                    .collect();
                ts_vec.push(TimeSeries::new(&l, &samples));
            }
            for ((a, k), samples) in std::mem::take(&mut hist) {
                let agent = format!("agent-{a:05}");
                let zone = format!("zone-{}", (b'a' + (a % 3) as u8) as char);
                let (name, le) = if k == "sum" {
                    ("http_request_duration_seconds_sum", None)
                } else {
                    ("http_request_duration_seconds_bucket", Some(k.as_str()))
                };
                let mut l = vec![
                    ("__name__", name),
                    ("agent", agent.as_str()),
                    ("zone", zone.as_str()),
                    ("job", "api"),
                ];
                if let Some(le) = le {
                    l.push(("le", le));
                }
                ts_vec.push(TimeSeries::new(&l, &samples));
            }
            let body = WriteRequest { timeseries: ts_vec }.encode_snappy();
            write_all(&body, vigil, prom);
        }
    }
    (start, start + (STEPS - 1) * 10_000)
}

/// Dashboard-style and edge-case queries covering selectors, functions, aggregations,
/// operators, subqueries, offsets and `@`.
fn queries(at: i64) -> Vec<String> {
    let at_s = format!("{:.3}", at as f64 / 1000.0);
    let mut q: Vec<String> = [
        "up",
        "node_load1",
        "node_load1{zone=\"zone-a\"}",
        "node_load1{zone!=\"zone-a\"}",
        "node_load1{zone=~\"zone-(a|b)\"}",
        "node_load1{agent!~\"agent-0000[0-3]\"}",
        "node_cpu_seconds_total{mode=\"idle\",cpu=\"0\"}",
        "{__name__=~\"node_load.*\",zone=\"zone-b\"}",
        "node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes",
        "1 - node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes",
        "node_filesystem_avail_bytes / on(agent, device, mountpoint) group_left node_filesystem_size_bytes",
        "rate(node_cpu_seconds_total{mode=\"user\"}[5m])",
        "irate(node_network_receive_bytes_total[2m])",
        "increase(node_network_transmit_bytes_total[10m])",
        "delta(node_hwmon_temp_celsius[10m])",
        "idelta(node_load5[3m])",
        "deriv(node_memory_Cached_bytes[15m])",
        "predict_linear(node_filesystem_avail_bytes[30m], 3600)",
        "resets(node_network_receive_drop_total[1h])",
        "changes(node_procs_running[30m])",
        "avg_over_time(node_load1[10m])",
        "min_over_time(node_load1[10m])",
        "max_over_time(node_load15[30m])",
        "sum_over_time(node_procs_blocked[10m])",
        "count_over_time(node_load1[10m])",
        "quantile_over_time(0.9, node_load1[20m])",
        "stddev_over_time(node_hwmon_temp_celsius[20m])",
        "stdvar_over_time(node_load5[20m])",
        "last_over_time(node_load1[10m])",
        "present_over_time(node_load1[10m])",
        "absent_over_time(nonexistent_metric[5m])",
        "absent(nonexistent_metric{job=\"x\"})",
        "absent(up)",
        "sum(rate(node_cpu_seconds_total[5m]))",
        "sum by (zone) (rate(node_cpu_seconds_total{mode!=\"idle\"}[5m]))",
        "sum without (cpu) (rate(node_cpu_seconds_total[5m]))",
        "avg by (mode) (rate(node_cpu_seconds_total[5m]))",
        "max by (zone) (node_load1)",
        "min by (zone) (node_load1)",
        "count by (zone) (up)",
        "group by (zone) (up)",
        "stddev by (zone) (node_load1)",
        "stdvar(node_load5)",
        // Ties break differently in Prometheus 2's topk heap; use values without ties.
        "topk(3, node_memory_Active_bytes)",
        "bottomk(2, node_memory_MemAvailable_bytes)",
        "topk by (zone) (1, rate(node_network_receive_bytes_total{device=\"eth0\"}[5m]))",
        "quantile(0.5, node_load1)",
        "quantile by (zone) (0.95, node_hwmon_temp_celsius)",
        "count_values(\"running\", node_procs_running)",
        "sum(node_load1) by (zone) / count(node_load1) by (zone)",
        "node_load1 > 0.5",
        "node_load1 > bool 0.5",
        "node_load1 == bool node_load1",
        "node_load1 > node_load5",
        "node_load1 and node_load5 > 0.4",
        "node_load1 or nonexistent_metric",
        "node_load1 unless node_load1 > 0.6",
        "up * on(agent) group_left(zone) node_uname_info",
        "node_load1 + ignoring(job) node_load5",
        "2 ^ node_load1",
        "node_load1 % 0.3",
        "-node_load1",
        // Prometheus 2 keeps the metric name on atan2, Prometheus 3 (and Vigil) drop it.
        "sum by (agent) (node_load1 atan2 node_load5)",
        "abs(deriv(node_load1[10m]))",
        "ceil(node_load1 * 10)",
        "floor(node_load1 * 10)",
        "round(node_hwmon_temp_celsius, 0.5)",
        "sqrt(node_load15)",
        "exp(node_load1)",
        "ln(node_memory_MemTotal_bytes)",
        "log2(node_memory_MemTotal_bytes)",
        "log10(node_memory_MemTotal_bytes)",
        "clamp(node_load1, 0.2, 0.8)",
        "clamp_min(node_load1, 0.5)",
        "clamp_max(node_load1, 0.5)",
        "sgn(deriv(node_load1[10m]))",
        "sin(node_load1) + cos(node_load5) - tan(node_load15)",
        "deg(node_load1) + rad(node_load5)",
        "sinh(node_load1) * cosh(node_load5) / tanh(node_load15 + 1)",
        "asin(clamp_max(node_load1, 1)) + acos(clamp_max(node_load5, 1)) + atan(node_load15)",
        "timestamp(node_load1)",
        "time() - node_boot_time_seconds",
        "vector(1) + vector(2)",
        "scalar(sum(up))",
        "sum(up) * scalar(count(node_load1))",
        "label_replace(node_load1, \"host\", \"$1\", \"instance\", \"(.*):9100\")",
        "label_join(node_load1, \"where\", \"/\", \"zone\", \"agent\")",
        "sort(node_load1)",
        "sort_desc(sum by (zone) (node_load1))",
        "histogram_quantile(0.9, rate(http_request_duration_seconds_bucket[5m]))",
        "histogram_quantile(0.5, sum by (le, zone) (rate(http_request_duration_seconds_bucket[5m])))",
        "histogram_quantile(0.99, sum by (le) (increase(http_request_duration_seconds_bucket[10m])))",
        "rate(http_request_duration_seconds_sum[5m])",
        "node_load1 offset 5m",
        "rate(node_cpu_seconds_total{mode=\"system\"}[5m] offset 10m)",
        "max_over_time(rate(node_network_receive_bytes_total[2m])[20m:1m])",
        "avg_over_time(node_load1[15m:30s])",
        "sum(min_over_time(node_load5[10m:]))",
        "deriv(sum(node_memory_Cached_bytes)[20m:2m])",
        "max_over_time(deriv(rate(node_cpu_seconds_total{mode=\"user\"}[2m])[10m30s:1m])[20m:5m])",
        "day_of_week() + hour() + minute() + month() + year() + day_of_month() + days_in_month() + day_of_year()",
        "hour(node_boot_time_seconds)",
        "year(node_boot_time_seconds)",
        "count(count by (agent) (node_cpu_seconds_total))",
        "sum by (zone) (increase(node_context_switches_total[30m]))",
        "avg(rate(node_disk_read_bytes_total[5m])) by (device)",
        "sum(rate(node_network_receive_bytes_total[5m])) by (zone, device) > 1000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    q.push(format!("node_load1 @ {at_s}"));
    q.push(format!(
        "rate(node_cpu_seconds_total{{mode=\"idle\"}}[5m] @ {at_s})"
    ));
    q.push(format!("sum(node_load1 @ {at_s}) / sum(node_load1)"));
    q
}

fn fetch(addr: &str, path: &str, token: Option<&str>) -> Value {
    let h = token.map(|t| format!("Bearer {t}"));
    let hr: Vec<(&str, &str)> = h.iter().map(|v| ("Authorization", v.as_str())).collect();
    let r = request(addr, "GET", path, &hr, b"").unwrap();
    r.json()
}

type Series = BTreeMap<String, Vec<(i64, f64)>>;

/// Normalises a Prometheus API result to labels → points.
fn normalise(data: &Value) -> (String, Series) {
    let kind = data["resultType"].as_str().unwrap_or("").to_string();
    let mut out = Series::new();
    let point = |p: &Value| -> (i64, f64) {
        let t = (p[0].as_f64().unwrap() * 1000.0).round() as i64;
        let v = match p[1].as_str().unwrap() {
            "NaN" => f64::NAN,
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            s => s.parse().unwrap(),
        };
        (t, v)
    };
    match kind.as_str() {
        "scalar" => {
            out.insert("scalar".into(), vec![point(&data["result"])]);
        }
        "vector" | "matrix" => {
            for s in data["result"].as_array().unwrap() {
                let labels: BTreeMap<String, String> =
                    serde_json::from_value(s["metric"].clone()).unwrap();
                let key = format!("{labels:?}");
                let pts = if kind == "vector" {
                    vec![point(&s["value"])]
                } else {
                    s["values"].as_array().unwrap().iter().map(point).collect()
                };
                assert!(out.insert(key, pts).is_none(), "duplicate series in {data}");
            }
        }
        other => panic!("unexpected result type {other:?}"),
    }
    (kind, out)
}

fn close(a: f64, b: f64) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    if a == b {
        return true;
    }
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
}

fn compare(what: &str, vigil: &Value, prom: &Value) -> Result<(), String> {
    if prom["status"] != "success" {
        return Err(format!("{what}: Prometheus failed: {prom}"));
    }
    if vigil["status"] != "success" {
        return Err(format!("{what}: Vigil failed: {vigil}"));
    }
    let (vk, vs) = normalise(&vigil["data"]);
    let (pk, ps) = normalise(&prom["data"]);
    if vk != pk {
        return Err(format!("{what}: result type {vk} vs Prometheus {pk}"));
    }
    if vs.keys().ne(ps.keys()) {
        let only_v: Vec<_> = vs.keys().filter(|k| !ps.contains_key(*k)).take(3).collect();
        let only_p: Vec<_> = ps.keys().filter(|k| !vs.contains_key(*k)).take(3).collect();
        return Err(format!(
            "{what}: {} series vs Prometheus {}; only in Vigil {only_v:?}; only in Prometheus {only_p:?}",
            vs.len(),
            ps.len()
        ));
    }
    for (k, vp) in &vs {
        let pp = &ps[k];
        if vp.len() != pp.len() {
            return Err(format!(
                "{what}: {k}: {} points vs Prometheus {}",
                vp.len(),
                pp.len()
            ));
        }
        for (a, b) in vp.iter().zip(pp) {
            if a.0 != b.0 || !close(a.1, b.1) {
                return Err(format!("{what}: {k}: {a:?} vs Prometheus {b:?}"));
            }
        }
    }
    Ok(())
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[test]
fn vigil_answers_like_prometheus_on_the_same_data() {
    let prom = start_prometheus();
    let vigil = Server::start(&[]);
    let (start, end) = load(&vigil, &prom);
    // Odd offsets keep evaluation windows off the 10 s sample grid.
    let t1 = end - 3_500;
    let t2 = start + 40 * 60_000 + 7_250;
    let range = (start + 20 * 60_000 + 1_750, end - 1_250, 37_000);
    let mut failures = Vec::new();
    let mut checks = 0;
    let mut nonempty = 0;
    for q in queries(t2) {
        for t in [t1, t2] {
            let path = format!(
                "/api/v1/query?query={}&time={:.3}",
                enc(&q),
                t as f64 / 1000.0
            );
            let v = fetch(&vigil.addr, &path, Some(&vigil.admin));
            let p = fetch(&prom.addr, &path, None);
            checks += 1;
            if p["data"]["result"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
                || p["data"]["resultType"] == "scalar"
            {
                nonempty += 1;
            }
            if let Err(e) = compare(&format!("instant {q} @ {t}"), &v, &p) {
                failures.push(e);
            }
        }
        let path = format!(
            "/api/v1/query_range?query={}&start={:.3}&end={:.3}&step={:.3}",
            enc(&q),
            range.0 as f64 / 1000.0,
            range.1 as f64 / 1000.0,
            range.2 as f64 / 1000.0
        );
        let v = fetch(&vigil.addr, &path, Some(&vigil.admin));
        let p = fetch(&prom.addr, &path, None);
        checks += 1;
        if let Err(e) = compare(&format!("range {q}"), &v, &p) {
            failures.push(e);
        }
    }
    println!(
        "{checks} comparisons, {nonempty} instant results non-empty, {} failures",
        failures.len()
    );
    for f in &failures {
        println!("  {f}");
    }
    assert!(checks >= 300, "too few comparisons");
    assert!(
        nonempty >= 150,
        "too many empty results: the comparison would prove little"
    );
    assert!(
        failures.is_empty(),
        "{} differences from Prometheus",
        failures.len()
    );
}

#[test]
fn promtool_query_instant_works_against_vigil() {
    require("promtool");
    let vigil = Server::start(&[]);
    // promtool 2.42 has no auth flags; Go's client sends URL user info as basic auth, which
    // Vigil accepts with the token as the password.
    let url = format!("http://promtool:{}@{}", vigil.admin, vigil.addr);
    let now = now_ms();
    let body = WriteRequest {
        timeseries: vec![TimeSeries::new(
            &[("__name__", "promtool_probe"), ("site", "lab")],
            &[(now - 1000, 42.5)],
        )],
    }
    .encode_snappy();
    let r = vigil.post(
        "/api/v1/write",
        Some(&vigil.admin),
        &[("Content-Encoding", "snappy")],
        &body,
    );
    assert_eq!(r.status, 204);
    let out = Command::new("promtool")
        .args(["query", "instant"])
        .arg(&url)
        .arg("promtool_probe * 2")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "promtool failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("{site=\"lab\"} => 85"), "{stdout}");
    // A bad query comes back as promtool's error, not a crash.
    let out = Command::new("promtool")
        .args(["query", "instant"])
        .arg(&url)
        .arg("sum(")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad_data") && err.contains("parse error"),
        "{err}"
    );
}

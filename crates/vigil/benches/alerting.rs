//! Alerting benchmark against the real `vigil` binary.
//!
//! 1. Ingest cost of threshold rules: `vigil bench ingest` (remote_write, the reference fleet)
//!    with no rules, then with 10,000 threshold rules loaded for the same environment (100
//!    regex rules over zones, 9,900 per-agent rules over every metric), same server, same run.
//! 2. Alert latency: a sample crossing a threshold is ingested → the webhook receiver (in this
//!    process) has the notification, with `group_wait: 0`, the 10,000 rules loaded and the
//!    fleet being ingested in the background. Prints p50/p99/max over `VIGIL_BENCH_PROBES`
//!    crossings (default 300).
//!
//! `cargo bench -p vigil --bench alerting`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_vigil");

struct Server {
    child: Child,
    addr: String,
    dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http(addr: &str, method: &str, path: &str, token: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).ok();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nX-Scope-OrgID: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.as_bytes().to_vec())
        .unwrap_or_default();
    (status, body)
}

/// Webhook receiver: sends (probe label, arrival) for every firing alert it is told about.
fn receiver() -> (String, mpsc::Receiver<(String, Instant)>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut s = s;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut len = 0;
                    loop {
                        let mut h = String::new();
                        r.read_line(&mut h).unwrap_or(0);
                        let h = h.trim_end();
                        if h.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':')
                            && k.eq_ignore_ascii_case("content-length")
                        {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; len];
                    if r.read_exact(&mut body).is_err() {
                        return;
                    }
                    let now = Instant::now();
                    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
                        for a in v["alerts"].as_array().into_iter().flatten() {
                            if a["status"] == "firing"
                                && let Some(p) = a["labels"]["probe"].as_str()
                            {
                                let _ = tx.send((p.to_string(), now));
                            }
                        }
                    }
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
                }
            });
        }
    });
    (addr, rx)
}

fn start(hook: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify.yml");
    std::fs::write(
        &notify,
        format!(
            "route:\n  receiver: hook\n  group_by: [alertname, probe]\n  group_wait: 0s\n  group_interval: 1m\nreceivers:\n  - name: hook\n    webhook_configs: [{{url: \"http://{hook}/hook\"}}]\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--notify-config")
        .arg(&notify)
        .env("VIGIL_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let mut lines = BufReader::new(out).lines();
    let mut addr = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("vigil listening on http://") {
            addr = rest.split_whitespace().next().unwrap().to_string();
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(30) {
        if TcpStream::connect(&addr).is_ok() {
            let (st, _) = http(&addr, "GET", "/readyz", "", b"");
            if st == 200 {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Server { child, addr, dir }
}

fn ingest(s: &Server, rounds: usize) -> f64 {
    let out = Command::new(BIN)
        .args([
            "bench",
            "ingest",
            "--url",
            &format!("http://{}", s.addr),
            "--env",
            "bench",
            "--agents",
            "1000",
        ])
        .args(["--rounds", &rounds.to_string(), "--token-file"])
        .arg(s.dir.path().join("data/admin.token"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "bench ingest failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .find_map(|l| {
            l.strip_prefix("throughput").map(|r| {
                r.split_whitespace()
                    .next()
                    .unwrap_or("0")
                    .parse()
                    .unwrap_or(0.0)
            })
        })
        .unwrap_or(0.0)
}

fn rules_json() -> String {
    // Metric names and agents of the reference fleet.
    let fleet = vigil_fleet::Fleet::new(vigil_fleet::FleetSpec {
        agents: 1000,
        ..Default::default()
    });
    let mut metrics: Vec<String> = Vec::new();
    let mut agents: Vec<String> = Vec::new();
    for l in fleet.series() {
        if let Some(m) = l.get("__name__")
            && !metrics.iter().any(|x| x == m)
        {
            metrics.push(m.to_string());
        }
        if let Some(a) = l.get("agent")
            && !agents.iter().any(|x| x == a)
        {
            agents.push(a.to_string());
        }
    }
    let mut rules = Vec::new();
    for (i, m) in metrics.iter().take(100).enumerate() {
        rules.push(format!(r#"{{"id":"z{i}","name":"Bench","metric":"{m}","matchers":[{{"name":"zone","op":"=~","value":"zone-[ab]"}}],"op":">","value":1e300}}"#));
    }
    let mut i = 0;
    while rules.len() < 9_999 {
        let m = &metrics[i % metrics.len()];
        let a = &agents[(i / metrics.len()) % agents.len()];
        rules.push(format!(r#"{{"id":"r{i}","name":"Bench","metric":"{m}","matchers":[{{"name":"agent","value":"{a}"}}],"op":">","value":1e300}}"#));
        i += 1;
    }
    // The probe rule: the 10,000th.
    rules.push(r#"{"id":"probe","name":"ProbeCrossed","metric":"probe_value","op":">","value":0.5,"severity":"critical"}"#.to_string());
    format!(r#"{{"thresholds":[{}]}}"#, rules.join(","))
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn main() {
    let probes: usize = std::env::var("VIGIL_BENCH_PROBES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let (hook, rx) = receiver();
    let s = start(&hook);
    let token = std::fs::read_to_string(s.dir.path().join("data/admin.token"))
        .unwrap()
        .trim()
        .to_string();

    // 1. Ingest throughput without and with 10,000 threshold rules (same server, same run).
    let _warm = ingest(&s, 5);
    let without = ingest(&s, 20);
    let t = Instant::now();
    let (st, body) = http(
        &s.addr,
        "PUT",
        "/api/telemetry/admin/thresholds",
        &token,
        rules_json().as_bytes(),
    );
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
    let load_ms = t.elapsed().as_secs_f64() * 1000.0;
    let with = ingest(&s, 20);
    let without2 = {
        // Baseline again, rules parked in another environment, to bracket drift.
        let (st, _) = http(
            &s.addr,
            "PUT",
            "/api/telemetry/admin/thresholds",
            &token,
            br#"{"thresholds":[]}"#,
        );
        assert_eq!(st, 200);
        let r = ingest(&s, 20);
        let (st, _) = http(
            &s.addr,
            "PUT",
            "/api/telemetry/admin/thresholds",
            &token,
            rules_json().as_bytes(),
        );
        assert_eq!(st, 200);
        r
    };
    let base = (without + without2) / 2.0;
    println!(
        "alerting benchmark (vigil {}, 2 cores)",
        env!("CARGO_PKG_VERSION")
    );
    println!("  10,000 threshold rules loaded in one PUT: {load_ms:.0} ms");
    println!("  ingest, no rules:     {without:>10.0} samples/s  (again after: {without2:.0})");
    println!(
        "  ingest, 10,000 rules: {with:>10.0} samples/s  ({:.3} of the baseline)",
        with / base
    );
    println!(
        "  cost per ingested sample: {:.0} ns of ingest time with 10,000 rules vs {:.0} ns without",
        1e9 / with,
        1e9 / base
    );

    // 2. Latency: crossing sample ingested → webhook has it; background ingest running.
    let bg_stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let bg = {
        let addr = s.addr.clone();
        let tf = s.dir.path().join("data/admin.token");
        let stop = bg_stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = Command::new(BIN)
                    .args([
                        "bench",
                        "ingest",
                        "--url",
                        &format!("http://{addr}"),
                        "--env",
                        "bench",
                        "--agents",
                        "1000",
                        "--rounds",
                        "10",
                        "--connections",
                        "1",
                        "--token-file",
                    ])
                    .arg(&tf)
                    .output();
            }
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    let mut lat = Vec::with_capacity(probes);
    let mut missing = 0;
    let mut early: HashMap<String, Instant> = HashMap::new();
    for i in 0..probes {
        let name = format!("p{i}");
        let body = format!("probe_value{{probe=\"{name}\"}} 1\n");
        let t0 = Instant::now();
        let (st, _) = http(
            &s.addr,
            "POST",
            "/api/v1/import/prometheus",
            &token,
            body.as_bytes(),
        );
        assert_eq!(st, 204);
        let deadline = t0 + Duration::from_secs(5);
        let got = loop {
            if let Some(t) = early.remove(&name) {
                break Some(t);
            }
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok((p, t)) if p == name => break Some(t),
                Ok((p, t)) => {
                    early.insert(p, t);
                }
                Err(_) => break None,
            }
        };
        match got {
            Some(t) => lat.push(t.duration_since(t0).as_secs_f64() * 1000.0),
            None => missing += 1,
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bg_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = bg.join();
    let n = lat.len();
    let mean = lat.iter().sum::<f64>() / n.max(1) as f64;
    println!(
        "  alert latency, threshold crossed on ingest → webhook received ({n} crossings, background ingest, 10,000 rules, group_wait 0):"
    );
    println!(
        "    p50 {:.1} ms   p99 {:.1} ms   max {:.1} ms   mean {mean:.1} ms   missing {missing}",
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99),
        pct(&mut lat, 1.0)
    );
    assert_eq!(missing, 0, "notifications missing");
}

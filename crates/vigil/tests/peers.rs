//! Real peers: a Debian Prometheus scraping itself and remote-writing to Vigil, the
//! OpenTelemetry Python SDK exporting to `/v1/metrics`, and curl speaking TLS to `vigil serve`.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn ingested(s: &Server, protocol: &str) -> f64 {
    let m = s.get("/metrics", Some(&s.admin)).body_str();
    let key = format!("vigil_ingest_samples_total{{protocol=\"{protocol}\"}} ");
    m.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn prometheus_remote_writes_into_the_tokens_environment() {
    require("prometheus");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("vigil");
    let mut s = Server::start_in(&data, &[]);
    let token = s.token("agent", &["prom"]);
    let port = free_port();
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: self\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n\
             remote_write:\n  - url: http://{}/api/v1/write\n    authorization:\n      credentials: {token}\n    queue_config:\n      batch_send_deadline: 1s\n      min_backoff: 100ms\n      max_backoff: 1s\n",
            s.addr
        ),
    )
    .unwrap();
    let mut prom = Command::new("prometheus")
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("prom").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while ingested(&s, "remote_write") < 100.0 {
        assert!(
            t.elapsed() < Duration::from_secs(90),
            "Prometheus did not deliver samples within 90 s"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let _ = prom.kill();
    let _ = prom.wait();
    s.signal("TERM");
    assert!(s.wait_exit().success());
    let got = read_store(&data, "prom");
    assert!(
        got.iter().any(|(l, s)| l.starts_with("up{")
            && l.contains("job=\"self\"")
            && s.iter().all(|(_, v)| *v == 1.0)),
        "no up series from Prometheus: {:?}",
        got.iter().take(5).map(|x| &x.0).collect::<Vec<_>>()
    );
    assert!(
        got.iter()
            .any(|(l, _)| l.starts_with("prometheus_build_info{"))
    );
    assert!(
        read_store(&data, "default").is_empty(),
        "samples went to the wrong environment"
    );
}

#[test]
fn opentelemetry_python_sdk_exports_to_v1_metrics() {
    require("python3");
    let probe = Command::new("python3")
        .args([
            "-c",
            "import opentelemetry.exporter.otlp.proto.http.metric_exporter",
        ])
        .output()
        .unwrap();
    assert!(
        probe.status.success(),
        "the OpenTelemetry Python SDK is required (pip install opentelemetry-sdk opentelemetry-exporter-otlp-proto-http): {}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("vigil");
    let mut s = Server::start_in(&data, &[]);
    let token = s.token("agent", &["otel"]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/otel_sdk.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(format!("http://{}/v1/metrics", s.addr))
        .arg(&token)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "SDK export failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(ingested(&s, "otlp") > 0.0);
    s.signal("TERM");
    assert!(s.wait_exit().success());
    let got = read_store(&data, "otel");
    let names: Vec<&str> = got.iter().map(|(l, _)| l.as_str()).collect();
    let has = |p: &str| names.iter().any(|n| n.starts_with(p));
    assert!(has("vigil_test_requests_total{"), "{names:#?}");
    assert!(has("vigil_test_latency_seconds_bucket{"), "{names:#?}");
    assert!(has("vigil_test_latency_seconds_count{"), "{names:#?}");
    assert!(
        names.iter().any(|n| n.contains("job=\"sdk-test\"")),
        "{names:#?}"
    );
}

#[test]
fn tls_13_is_served_and_tls_12_refused_by_default() {
    require("openssl");
    require("curl");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let st = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let s = Server::spawn(
        &dir.path().join("d"),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let url = format!("https://{}/healthz", s.addr);
    let curl = |extra: &[&str]| {
        Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(&cert)
            .args(extra)
            .arg(&url)
            .output()
            .unwrap()
    };
    let t = Instant::now();
    loop {
        let o = curl(&["--tlsv1.3"]);
        if String::from_utf8_lossy(&o.stdout) == "200" {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "no TLS 1.3 answer");
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = curl(&["--tlsv1.2", "--tls-max", "1.2"]);
    assert!(!o.status.success(), "TLS 1.2 was accepted");
    // Plain HTTP to the TLS port is not served.
    assert_ne!(
        request(&s.addr, "GET", "/healthz", &[], b"")
            .map(|r| r.status)
            .unwrap_or(0),
        200
    );
}

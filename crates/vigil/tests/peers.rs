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

fn b64url(b: &[u8]) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut o = String::new();
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..=c.len() {
            o.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    o
}

#[test]
fn tokens_signed_elsewhere_with_rs256_are_accepted_from_configured_public_keys() {
    require("openssl");
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("rsa.pem");
    let public = dir.path().join("rsa.pub.pem");
    assert!(
        Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out"
            ])
            .arg(&key)
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    );
    assert!(
        Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&key)
            .arg("-out")
            .arg(&public)
            .status()
            .unwrap()
            .success()
    );
    let cfg = dir.path().join("vigil.toml");
    std::fs::write(
        &cfg,
        format!("[auth]\npublic_keys = [\"{}\"]\n", public.display()),
    )
    .unwrap();
    let s = Server::start(&["--config", cfg.to_str().unwrap()]);
    let sign = |claims: &serde_json::Value| {
        let input = format!(
            "{}.{}",
            b64url(br#"{"alg":"RS256","typ":"JWT"}"#),
            b64url(claims.to_string().as_bytes())
        );
        let mut child = Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(&key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let sig = child.wait_with_output().unwrap().stdout;
        format!("{input}.{}", b64url(&sig))
    };
    let exp = now_ms() / 1000 + 600;
    let good = sign(
        &serde_json::json!({"sub": "sso", "role": "viewer", "envs": ["prod"], "exp": exp, "jti": "ext-1"}),
    );
    assert_eq!(s.get("/metrics", Some(&good)).status, 200);
    // Same key, but the role cannot write.
    let r = s.post("/write", Some(&good), &[], b"m v=1");
    assert_eq!(r.status, 403);
    // Tampered payload: the signature no longer matches.
    let mut parts: Vec<String> = good.split('.').map(String::from).collect();
    parts[1] = b64url(
        serde_json::json!({"sub": "sso", "role": "admin", "envs": "*", "exp": exp, "jti": "ext-1"})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(s.get("/metrics", Some(&parts.join("."))).status, 401);
    // Expired.
    let old = sign(
        &serde_json::json!({"sub": "sso", "role": "viewer", "envs": ["prod"], "exp": exp - 7200, "jti": "ext-2"}),
    );
    assert_eq!(s.get("/metrics", Some(&old)).status, 401);
}

//! `vigil serve` end to end: auth matrix, tenancy, every ingestion protocol, malformed input,
//! limits, overload, restart after SIGTERM and SIGKILL.

mod common;

use std::io::Write;
use std::net::TcpStream;

use common::*;

use vigil_ingest::remote_write::proto::{TimeSeries, WriteRequest};

fn rw(name: &str, labels: &[(&str, &str)], samples: &[(i64, f64)]) -> Vec<u8> {
    let mut l = vec![("__name__", name)];
    l.extend_from_slice(labels);
    WriteRequest {
        timeseries: vec![TimeSeries::new(&l, samples)],
    }
    .encode_snappy()
}

/// One valid body per write route.
/// (path, headers, body) of one request.
type Case = (&'static str, Vec<(&'static str, &'static str)>, Vec<u8>);

fn bodies(t: i64) -> Vec<Case> {
    vec![
        (
            "/api/v1/write",
            vec![
                ("Content-Encoding", "snappy"),
                ("Content-Type", "application/x-protobuf"),
            ],
            rw("rw_metric", &[("job", "t")], &[(t, 1.0)]),
        ),
        (
            "/write?db=d&precision=ms",
            vec![],
            format!("influx_m,host=a v=2 {t}").into_bytes(),
        ),
        (
            "/api/v2/write?bucket=b&precision=ms",
            vec![],
            format!("influx2_m,host=a v=3 {t}").into_bytes(),
        ),
        (
            "/api/v1/import/prometheus",
            vec![],
            format!("text_metric{{job=\"t\"}} 4 {t}\n").into_bytes(),
        ),
        (
            "/api/telemetry/ingest",
            vec![("Content-Type", "application/json")],
            format!(r#"{{"agent_id":"a1","timestamp_ms":{t},"cpu":{{"load1":0.5}}}}"#).into_bytes(),
        ),
        (
            "/v1/metrics",
            vec![("Content-Type", "application/json")],
            otlp_json(t),
        ),
    ]
}

fn otlp_json(t: i64) -> Vec<u8> {
    serde_json::json!({"resourceMetrics": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "svc"}}]},
        "scopeMetrics": [{"metrics": [{"name": "otel.gauge", "unit": "1", "gauge": {"dataPoints": [{"timeUnixNano": (t as u64 * 1_000_000).to_string(), "asDouble": 0.25}]}}]}]
    }]})
    .to_string()
    .into_bytes()
}

#[test]
fn auth_matrix_routes_roles_and_environments() {
    let s = Server::start(&[]);
    let t = now_ms();
    let admin = s.admin.clone();
    let operator = s.token("operator", &["prod"]);
    let viewer = s.token("viewer", &["prod"]);
    let agent = s.token("agent", &["prod", "staging"]);
    let agent_all = s.token("agent", &["*"]);
    let mut cases = 0;
    for (path, headers, body) in bodies(t) {
        for (who, tok, env, want) in [
            ("no token", None, Some("prod"), 401),
            ("garbage token", Some("abc.def.ghi"), Some("prod"), 401),
            ("admin", Some(admin.as_str()), Some("prod"), 2),
            ("operator", Some(operator.as_str()), Some("prod"), 2),
            (
                "operator other env",
                Some(operator.as_str()),
                Some("staging"),
                403,
            ),
            ("viewer", Some(viewer.as_str()), Some("prod"), 403),
            ("agent", Some(agent.as_str()), Some("staging"), 2),
            ("agent default env", Some(agent.as_str()), None, 2),
            ("agent other env", Some(agent.as_str()), Some("dev"), 403),
            ("agent all envs", Some(agent_all.as_str()), Some("dev"), 2),
            ("bad env name", Some(admin.as_str()), Some("bad env"), 400),
        ] {
            let mut h = headers.clone();
            if let Some(e) = env {
                h.push(("X-Scope-OrgID", e));
            }
            let r = s.post(path, tok, &h, &body);
            let ok = if want == 2 {
                r.status / 100 == 2
            } else {
                r.status == want
            };
            assert!(ok, "{path} as {who}: got {} {}", r.status, r.body_str());
            if r.status >= 400 {
                r.error();
            }
            if r.status == 401 {
                assert!(r.header("www-authenticate").is_some());
            }
            cases += 1;
        }
    }
    // /metrics needs read access; agents may not read.
    for (tok, want) in [
        (Some(admin.as_str()), 200),
        (Some(viewer.as_str()), 200),
        (Some(agent.as_str()), 403),
        (None, 401),
    ] {
        assert_eq!(s.get("/metrics", tok).status, want);
        cases += 1;
    }
    // Health endpoints need no token.
    assert_eq!(s.get("/healthz", None).status, 200);
    assert_eq!(s.get("/readyz", None).status, 200);
    // HTTP basic auth with the token as password works for tools that only speak basic auth.
    let basic = format!("Basic {}", b64(&format!("x:{viewer}")));
    assert_eq!(
        request(
            &s.addr,
            "GET",
            "/metrics",
            &[("Authorization", &basic)],
            b""
        )
        .unwrap()
        .status,
        200
    );
    assert!(cases >= 70);
}

fn b64(s: &str) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut o = String::new();
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                o.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                o.push('=');
            }
        }
    }
    o
}

#[test]
fn revoked_and_expired_tokens_are_refused_while_the_server_runs() {
    let s = Server::start(&[]);
    let tok = s.token("viewer", &["prod"]);
    assert_eq!(s.get("/metrics", Some(&tok)).status, 200);
    let list = std::process::Command::new(BIN)
        .args(["token", "list", "--data-dir"])
        .arg(&s.dir)
        .output()
        .unwrap();
    let listing = String::from_utf8(list.stdout).unwrap();
    let jti = listing
        .lines()
        .find(|l| l.contains("viewer"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let out = std::process::Command::new(BIN)
        .args(["token", "revoke", &jti, "--data-dir"])
        .arg(&s.dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    std::thread::sleep(std::time::Duration::from_millis(300));
    let r = s.get("/metrics", Some(&tok));
    assert_eq!(r.status, 401);
    assert!(r.error().1.contains("revoked"));
    // Bad CLI input: a clear message and a non-zero exit.
    let out = std::process::Command::new(BIN)
        .args([
            "token",
            "create",
            "--role",
            "root",
            "--env",
            "prod",
            "--data-dir",
        ])
        .arg(&s.dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--role"));
}

#[test]
fn every_protocol_stores_in_the_callers_environment() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let t = now_ms();
    {
        let mut s = Server::start_in(&data, &[]);
        for (path, mut headers, body) in bodies(t) {
            headers.push(("X-Scope-OrgID", "prod"));
            let r = s.post(path, Some(&s.admin.clone()), &headers, &body);
            assert!(r.status / 100 == 2, "{path}: {} {}", r.status, r.body_str());
        }
        // Gzip-compressed Influx and OTLP bodies are accepted.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(format!("gz_m v=5 {t}").as_bytes()).unwrap();
        let r = s.post(
            "/write?precision=ms",
            Some(&s.admin.clone()),
            &[("Content-Encoding", "gzip"), ("X-Scope-OrgID", "prod")],
            &gz.finish().unwrap(),
        );
        assert_eq!(r.status, 204, "{}", r.body_str());
        s.signal("TERM");
        assert!(s.wait_exit().success());
    }
    let got = read_store(&data, "prod");
    let names: Vec<&str> = got.iter().map(|(l, _)| l.as_str()).collect();
    for want in [
        r#"rw_metric{job="t"}"#,
        r#"influx_m_v{db="d", host="a"}"#,
        r#"influx2_m_v{bucket="b", host="a"}"#,
        r#"text_metric{job="t"}"#,
        r#"node_load1{agent="a1", instance="a1", job="vigil-agent"}"#,
        r#"otel_gauge_ratio{job="svc"}"#,
        r#"gz_m_v"#,
    ] {
        assert!(
            names.iter().any(|n| n.starts_with(want)),
            "missing {want} in {names:#?}"
        );
    }
    assert!(
        got.iter()
            .all(|(_, s)| s.iter().all(|(ts, _)| (*ts - t).abs() < 1000))
    );
    assert!(
        read_store(&data, "staging").is_empty(),
        "data leaked into another environment"
    );
}

#[test]
fn malformed_payloads_get_4xx_and_store_nothing() {
    let s = Server::start(&[]);
    let a = s.admin.clone();
    let t = now_ms();
    let before = s.head_series();
    let huge_snappy = [0xff, 0xff, 0xff, 0xff, 0x0b, 0x00];
    let mut bomb = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    bomb.write_all(&vec![b'a'; 80 << 20]).unwrap();
    let bomb = bomb.finish().unwrap();
    type Bad = (
        &'static str,
        Vec<(&'static str, &'static str)>,
        Vec<u8>,
        u16,
        &'static str,
    );
    let cases: Vec<Bad> = vec![
        ("/api/v1/write", vec![], b"definitely not snappy".to_vec(), 400, "snappy"),
        ("/api/v1/write", vec![], huge_snappy.to_vec(), 413, "decompressed"),
        ("/api/v1/write", vec![], snap::raw::Encoder::new().compress_vec(&[0x0a, 0xff, 0x01]).unwrap(), 400, "protobuf"),
        ("/api/v1/write", vec![], rw("bad-name", &[], &[(t, 1.0)]), 400, "metric name"),
        ("/api/v1/write", vec![], rw("ok", &[("bad label", "x")], &[(t, 1.0)]), 400, "label name"),
        ("/write", vec![], format!("good v=1 {}\nbad line", t * 1_000_000).into_bytes(), 400, "line 2"),
        ("/write?precision=h", vec![], b"m v=1".to_vec(), 400, "precision"),
        ("/write", vec![("Content-Encoding", "gzip")], bomb, 413, "decompressed"),
        ("/write", vec![("Content-Encoding", "gzip")], b"not gzip".to_vec(), 400, "gzip"),
        ("/api/v1/import/prometheus", vec![], b"ok 1\nbad{x=\"1} 2\n".to_vec(), 400, "line 2"),
        ("/api/telemetry/ingest", vec![], br#"{"agent_id": "a", "cpu": {"load1": "x"}}"#.to_vec(), 400, "invalid type"),
        ("/api/telemetry/ingest", vec![], br#"{"agent_id": "a", "extra": 1}"#.to_vec(), 400, "unknown field"),
        ("/v1/metrics", vec![("Content-Type", "application/x-protobuf")], vec![0x0a, 0x05, 0x01], 400, "protobuf"),
        ("/v1/metrics", vec![("Content-Type", "text/csv")], b"a,b".to_vec(), 415, "Content-Type"),
        ("/v1/metrics", vec![("Content-Type", "application/json")], b"{\"resourceMetrics\": [{\"scopeMetrics\": [{\"metrics\": [{\"name\": \"d\", \"sum\": {\"aggregationTemporality\": 1, \"isMonotonic\": true, \"dataPoints\": [{\"asInt\": \"1\"}]}}]}]}]}".to_vec(), 400, "delta"),
    ];
    for (path, headers, body, want, needle) in cases {
        let r = s.post(path, Some(&a), &headers, &body);
        assert_eq!(r.status, want, "{path} {needle}: {}", r.body_str());
        let (_, msg) = r.error();
        assert!(
            msg.contains(needle),
            "{path}: message {msg:?} lacks {needle:?}"
        );
    }
    assert_eq!(
        s.head_series(),
        before,
        "a refused payload left series behind"
    );
    // A known series (its label checks are skipped) and a new bad one in one request: the
    // request is refused as a whole, naming the bad series, and the known one gets nothing.
    let known = rw("known_gauge", &[("job", "x")], &[(t, 1.0)]);
    assert_eq!(s.post("/api/v1/write", Some(&a), &[], &known).status, 204);
    let mixed = WriteRequest {
        timeseries: vec![
            TimeSeries::new(
                &[("__name__", "known_gauge"), ("job", "x")],
                &[(t + 1000, 2.0)],
            ),
            TimeSeries::new(
                &[("__name__", "known_gauge"), ("bad label", "y")],
                &[(t + 1000, 3.0)],
            ),
        ],
    }
    .encode_snappy();
    let r = s.post("/api/v1/write", Some(&a), &[], &mixed);
    assert_eq!(r.status, 400, "{}", r.body_str());
    let (_, msg) = r.error();
    assert!(
        msg.contains("series 1") && msg.contains("label name"),
        "{msg}"
    );
    let q = s
        .get(
            &format!(
                "/api/v1/query?query=count_over_time(known_gauge[1h])&time={}",
                (t + 2000) / 1000
            ),
            Some(&a),
        )
        .body_str();
    assert!(q.contains(r#""value":["#) && q.contains(r#","1"]"#), "{q}");
    let m = s.get("/metrics", Some(&a)).body_str();
    assert!(
        m.contains(
            "vigil_ingest_rejected_samples_total{protocol=\"remote_write\",reason=\"malformed\"}"
        ),
        "{m}"
    );
}

#[test]
fn per_sample_rejections_are_reported_back() {
    let s = Server::start(&[]);
    let a = s.admin.clone();
    let t = now_ms();
    assert_eq!(
        s.post("/api/v1/write", Some(&a), &[], &rw("m", &[], &[(t, 1.0)]))
            .status,
        204
    );
    // Same timestamp, other value; and one far too old.
    let r = s.post(
        "/api/v1/write",
        Some(&a),
        &[],
        &rw("m", &[], &[(t, 2.0), (t - 3_600_000, 1.0), (t + 1000, 3.0)]),
    );
    assert_eq!(r.status, 400);
    let (code, msg) = r.error();
    assert_eq!(code, "samples_rejected");
    assert!(
        msg.contains("2 of 3 samples rejected")
            && msg.contains("too_old=1")
            && msg.contains("duplicate_timestamp=1"),
        "{msg}"
    );
    assert_eq!(r.json()["error"]["details"]["accepted"], 1);
    let r = s.post(
        "/write?precision=ms",
        Some(&a),
        &[],
        format!("m2 v=1 {t}\nm2 v=2 {t}").as_bytes(),
    );
    assert_eq!(r.status, 400);
    assert!(r.error().1.starts_with("partial write"));
    let r = s.post(
        "/api/telemetry/ingest",
        Some(&a),
        &[],
        format!(r#"{{"agent_id":"x","timestamp_ms":{t},"metrics":[{{"name":"m3","value":1}}]}}"#)
            .as_bytes(),
    );
    assert_eq!(r.status, 200);
    let r = s.post(
        "/api/telemetry/ingest",
        Some(&a),
        &[],
        format!(r#"{{"agent_id":"x","timestamp_ms":{t},"metrics":[{{"name":"m3","value":2}}]}}"#)
            .as_bytes(),
    );
    assert_eq!(r.json()["rejections"]["duplicate_timestamp"], 1);
    let r = s.post(
        "/v1/metrics",
        Some(&a),
        &[("Content-Type", "application/json")],
        &otlp_json(t),
    );
    assert_eq!(r.status, 200);
    let r = s.post(
        "/v1/metrics",
        Some(&a),
        &[("Content-Type", "application/json")],
        &otlp_json(t - 7_200_000),
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["partialSuccess"]["rejectedDataPoints"],
        1,
        "{}",
        r.body_str()
    );
}

#[test]
fn body_and_sample_limits_from_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("vigil.toml");
    std::fs::write(&cfg, "[limits]\nmax_body_bytes = 1000\nmax_samples_per_request = 3\nmax_labels_per_series = 4\nmax_inflight_writes = 1\n").unwrap();
    let s = Server::start(&["--config", cfg.to_str().unwrap()]);
    let a = s.admin.clone();
    let t = now_ms();
    let r = s.post("/write?precision=ms", Some(&a), &[], &vec![b'x'; 2000]);
    assert_eq!(r.status, 413);
    assert!(r.error().1.contains("1000 bytes"));
    let r = s.post(
        "/write?precision=ms",
        Some(&a),
        &[],
        format!("m a=1,b=2,c=3,d=4 {t}").as_bytes(),
    );
    assert_eq!(r.status, 413);
    assert!(r.error().1.contains("samples in request"));
    let r = s.post(
        "/write?precision=ms",
        Some(&a),
        &[],
        format!("m,a=1,b=2,c=3,d=4 v=1 {t}").as_bytes(),
    );
    assert_eq!(r.status, 400);
    assert!(r.error().1.contains("labels"), "{}", r.body_str());
    // Overload: one request holds the only slot while its body trickles in; the next gets 429.
    let mut slow = TcpStream::connect(&s.addr).unwrap();
    write!(slow, "POST /write HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {a}\r\nContent-Length: 500\r\n\r\nm v=1").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let r = s.post(
        "/write?precision=ms",
        Some(&a),
        &[],
        format!("m v=1 {t}").as_bytes(),
    );
    assert_eq!(r.status, 429, "{}", r.body_str());
    assert_eq!(r.header("retry-after"), Some("1"));
    // Once the slow client goes away its slot is free again.
    drop(slow);
    let mut status = 0;
    for _ in 0..100 {
        status = s
            .post(
                "/write?precision=ms",
                Some(&a),
                &[],
                format!("m v=1 {t}").as_bytes(),
            )
            .status;
        if status == 204 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(status, 204);
}

#[test]
fn data_survives_sigterm_and_acknowledged_data_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let t = now_ms();
    {
        let mut s = Server::start_in(&data, &[]);
        let a = s.admin.clone();
        for i in 0..50 {
            assert_eq!(
                s.post(
                    "/api/v1/write",
                    Some(&a),
                    &[],
                    &rw("term_m", &[], &[(t + i, i as f64)])
                )
                .status,
                204
            );
        }
        s.signal("TERM");
        assert!(s.wait_exit().success(), "graceful shutdown failed");
    }
    {
        let mut s = Server::start_in(&data, &[]);
        let a = s.admin.clone();
        for i in 0..50 {
            assert_eq!(
                s.post(
                    "/api/v1/write",
                    Some(&a),
                    &[],
                    &rw("kill_m", &[], &[(t + i, i as f64)])
                )
                .status,
                204
            );
        }
        s.signal("KILL");
        s.wait_exit();
    }
    let got = read_store(&data, "default");
    let n = |name: &str| {
        got.iter()
            .find(|(l, _)| l.starts_with(name))
            .map_or(0, |(_, s)| s.len())
    };
    assert_eq!(n("term_m"), 50);
    assert_eq!(n("kill_m"), 50);
}

#[test]
fn unknown_routes_and_config_errors_are_clear() {
    let s = Server::start(&[]);
    let r = s.get("/nope", Some(&s.admin));
    assert_eq!(r.status, 404);
    r.error();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[tsdb]\nretention = \"forever\"\n").unwrap();
    let out = std::process::Command::new(BIN)
        .args(["serve", "--config", cfg.to_str().unwrap(), "--data-dir"])
        .arg(dir.path().join("d"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("[tsdb].retention"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

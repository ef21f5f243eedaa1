//! The Prometheus HTTP API and `vigil query`, driven over HTTP against the real binary.

mod common;

use std::process::Command;

use common::*;
use serde_json::Value;

/// Writes three hosts' counters and gauges, one sample a minute for 10 minutes ending at
/// `base + 9 min`, into `env`. Returns `base` (ms, a whole minute).
fn load(s: &Server, token: &str, env: &str) -> i64 {
    let base = (now_ms() / 60_000 - 12) * 60_000;
    let mut body = String::new();
    for (h, zone, rate) in [("h1", "z1", 1.0), ("h2", "z1", 2.0), ("h3", "z2", 4.0)] {
        for i in 0..10i64 {
            let t = base + i * 60_000;
            body.push_str(&format!(
                "node,host={h},zone={zone} cpu_seconds_total={},mem_bytes={} {t}\n",
                rate * 60.0 * i as f64,
                1000 + i * 10
            ));
        }
    }
    let r = s.post(
        "/write?db=fleet&precision=ms",
        Some(token),
        &[("X-Scope-OrgID", env)],
        body.as_bytes(),
    );
    assert_eq!(r.status, 204, "{}", r.body_str());
    base
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn get_json(s: &Server, path: &str, token: &str) -> (u16, Value) {
    let r = s.get(path, Some(token));
    (r.status, r.json())
}

fn query(s: &Server, token: &str, q: &str, t: i64) -> Value {
    let (st, j) = get_json(
        s,
        &format!("/api/v1/query?query={}&time={}", enc(q), t as f64 / 1000.0),
        token,
    );
    assert_eq!(st, 200, "{q}: {j}");
    assert_eq!(j["status"], "success");
    j["data"].clone()
}

fn prom_error(r: &Resp) -> (String, String) {
    let j = r.json();
    assert_eq!(j["status"], "error", "{j}");
    (
        j["errorType"].as_str().unwrap().to_string(),
        j["error"].as_str().unwrap().to_string(),
    )
}

#[test]
fn prometheus_api_answers_in_prometheus_shapes() {
    let s = Server::start(&[]);
    let base = load(&s, &s.admin, "default");
    let t = base + 9 * 60_000;

    // Instant vector, sorted here for a stable comparison.
    let d = query(
        &s,
        &s.admin,
        "sum by (zone) (rate(node_cpu_seconds_total[5m]))",
        t,
    );
    assert_eq!(d["resultType"], "vector");
    let mut rows: Vec<(String, String)> = d["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["value"][0].as_f64().unwrap(), t as f64 / 1000.0);
            (
                r["metric"]["zone"].as_str().unwrap().to_string(),
                r["value"][1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    rows.sort();
    assert_eq!(
        rows,
        vec![("z1".into(), "3".into()), ("z2".into(), "4".into())]
    );

    // Scalar, string, and a range vector from an instant query.
    let d = query(&s, &s.admin, "1 + 1", t);
    assert_eq!(d["resultType"], "scalar");
    assert_eq!(d["result"][1], "2");
    let d = query(&s, &s.admin, "\"hello\"", t);
    assert_eq!(d["resultType"], "string");
    assert_eq!(d["result"][1], "hello");
    let d = query(&s, &s.admin, "node_mem_bytes{host=\"h1\"}[3m]", t);
    assert_eq!(d["resultType"], "matrix");
    let vals = d["result"][0]["values"].as_array().unwrap();
    assert_eq!(vals.len(), 3, "{d}");
    assert_eq!(vals[2][1], "1090");
    assert_eq!(d["result"][0]["metric"]["__name__"], "node_mem_bytes");

    // Special values are strings as in Prometheus.
    let d = query(&s, &s.admin, "vector(1/0) or vector(-1/0)", t);
    assert_eq!(d["result"][0]["value"][1], "+Inf");
    let d = query(&s, &s.admin, "vector(0/0)", t);
    assert_eq!(d["result"][0]["value"][1], "NaN");

    // Annotations: Prometheus 3's `warnings` and `infos`, left out when there are none.
    let (_, j) = get_json(
        &s,
        &format!(
            "/api/v1/query?query={}&time={}",
            enc("quantile(2, rate(node_mem_bytes[5m]))"),
            t / 1000
        ),
        &s.admin,
    );
    assert_eq!(j["status"], "success", "{j}");
    assert_eq!(
        j["warnings"],
        serde_json::json!([
            "PromQL warning: quantile value should be between 0 and 1, got 2 (1:10)"
        ])
    );
    assert_eq!(
        j["infos"],
        serde_json::json!([
            "PromQL info: metric might not be a counter, name does not end in _total/_sum/_count/_bucket: \"node_mem_bytes\" (1:18)"
        ])
    );
    let path = format!(
        "/api/v1/query_range?query={}&start={}&end={}&step=60",
        enc("sort(node_mem_bytes)"),
        base / 1000,
        t / 1000
    );
    let (_, j) = get_json(&s, &path, &s.admin);
    assert_eq!(
        j["warnings"][0],
        "PromQL warning: sort is ineffective for range queries since results are always ordered by labels (1:1)"
    );
    let (_, j) = get_json(
        &s,
        &format!(
            "/api/v1/query?query={}&time={}",
            enc("sort(node_mem_bytes)"),
            t / 1000
        ),
        &s.admin,
    );
    assert!(
        j.get("warnings").is_none() && j.get("infos").is_none(),
        "{j}"
    );

    // Range query; the same as a form POST.
    let path = format!(
        "/api/v1/query_range?query={}&start={}&end={}&step=60",
        enc("node_mem_bytes{host=\"h2\"}"),
        base / 1000,
        t / 1000
    );
    let (st, j) = get_json(&s, &path, &s.admin);
    assert_eq!(st, 200, "{j}");
    assert_eq!(j["data"]["resultType"], "matrix");
    let values = j["data"]["result"][0]["values"].as_array().unwrap();
    assert_eq!(values.len(), 10);
    assert_eq!(values[0][0].as_f64().unwrap(), base as f64 / 1000.0);
    assert_eq!(values[0][1], "1000");
    let form = format!(
        "query={}&start={}&end={}&step=1m",
        enc("node_mem_bytes{host=\"h2\"}"),
        base / 1000,
        t / 1000
    );
    let r = s.post(
        "/api/v1/query_range",
        Some(&s.admin),
        &[("Content-Type", "application/x-www-form-urlencoded")],
        form.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(r.json(), j);

    // Series, labels, label values, with and without match[].
    let (st, j) = get_json(
        &s,
        &format!(
            "/api/v1/series?match[]={}",
            enc("node_mem_bytes{zone=\"z1\"}")
        ),
        &s.admin,
    );
    assert_eq!(st, 200);
    let hosts: Vec<&str> = j["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["host"].as_str().unwrap())
        .collect();
    assert_eq!(hosts, vec!["h1", "h2"]);
    let (_, j) = get_json(&s, "/api/v1/labels", &s.admin);
    assert_eq!(
        j["data"],
        serde_json::json!(["__name__", "db", "host", "zone"])
    );
    let (_, j) = get_json(&s, "/api/v1/label/__name__/values", &s.admin);
    assert_eq!(
        j["data"],
        serde_json::json!(["node_cpu_seconds_total", "node_mem_bytes"])
    );
    let (_, j) = get_json(
        &s,
        &format!("/api/v1/label/host/values?match[]={}", enc("{zone=\"z2\"}")),
        &s.admin,
    );
    assert_eq!(j["data"], serde_json::json!(["h3"]));
    let (_, j) = get_json(&s, "/api/v1/label/host/values?limit=2", &s.admin);
    assert_eq!(j["data"], serde_json::json!(["h1", "h2"]));
    assert!(j["warnings"][0].as_str().unwrap().contains("truncated"));

    // What Grafana calls besides queries.
    let (st, j) = get_json(&s, "/api/v1/status/buildinfo", &s.admin);
    assert_eq!(st, 200);
    assert!(j["data"]["version"].as_str().unwrap().starts_with('3'));
    assert!(j["data"].get("features").is_none());
    for (path, want) in [
        ("/api/v1/metadata", serde_json::json!({})),
        ("/api/v1/query_exemplars?query=up", serde_json::json!([])),
        // No rule files: no recording rules (the built-in health rules are alerting rules).
        (
            "/api/v1/rules?type=record",
            serde_json::json!({"groups": []}),
        ),
        ("/api/v1/alerts", serde_json::json!({"alerts": []})),
    ] {
        let (st, j) = get_json(&s, path, &s.admin);
        assert_eq!(st, 200, "{path}");
        assert_eq!(j["data"], want, "{path}");
    }
}

#[test]
fn query_errors_use_prometheus_error_shape_and_status() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("vigil.toml");
    std::fs::write(&cfg, "[query]\nmax_samples = 40\n").unwrap();
    let s = Server::start(&["--config", cfg.to_str().unwrap()]);
    let base = load(&s, &s.admin, "default");
    let t = (base + 9 * 60_000) / 1000;
    let get = |p: &str| s.get(p, Some(&s.admin));

    let r = get(&format!("/api/v1/query?query={}", enc("sum(rate(x[5m])")));
    assert_eq!(r.status, 400);
    let (kind, msg) = prom_error(&r);
    assert_eq!(kind, "bad_data");
    assert!(msg.starts_with("1:4: parse error"), "{msg}");

    let r = get(&format!("/api/v1/query?query={}", enc("foo bar")));
    assert_eq!(r.status, 400);
    assert!(prom_error(&r).1.starts_with("1:5: parse error"));

    let r = get("/api/v1/query");
    assert_eq!((r.status, prom_error(&r).0.as_str()), (400, "bad_data"));
    let r = get("/api/v1/query?query=up&time=yesterday");
    assert_eq!(r.status, 400);
    assert!(prom_error(&r).1.contains("\"time\""));
    let r = get("/api/v1/query_range?query=up&start=10&end=5&step=1");
    assert_eq!(r.status, 400);
    let r = get("/api/v1/query_range?query=up&start=1&end=5&step=0");
    assert_eq!(r.status, 400);
    let r = get("/api/v1/query_range?query=up&start=1&end=5");
    assert!(prom_error(&r).1.contains("step"));
    let r = get(&format!(
        "/api/v1/query_range?query={}&start=1&end=5&step=1",
        enc("up[5m]")
    ));
    assert_eq!(r.status, 400);
    assert!(prom_error(&r).1.contains("range vector"));
    let r = get("/api/v1/series");
    assert_eq!(r.status, 400);
    let r = get(&format!("/api/v1/series?match[]={}", enc("{host=~\".*\"}")));
    assert_eq!(r.status, 400, "an all-empty matcher set must be refused");

    // Evaluation errors are 422 execution.
    let r = get(&format!(
        "/api/v1/query?time={t}&query={}",
        enc("node_mem_bytes + on(zone) node_mem_bytes")
    ));
    assert_eq!(r.status, 422, "{}", r.body_str());
    let (kind, msg) = prom_error(&r);
    assert_eq!(kind, "execution");
    assert!(msg.contains("many-to-many matching not allowed"), "{msg}");

    // The sample limit from [query] max_samples.
    let r = get(&format!(
        "/api/v1/query?time={t}&query={}",
        enc("sum(rate({__name__=~\"node_.*\"}[10m]))")
    ));
    assert_eq!(r.status, 422, "{}", r.body_str());
    let (kind, msg) = prom_error(&r);
    assert_eq!(kind, "execution");
    assert!(
        msg.contains("too many samples") && msg.contains("limit 40"),
        "{msg}"
    );

    // Auth errors in the Prometheus shape too.
    let r = s.get("/api/v1/query?query=1", None);
    assert_eq!(r.status, 401);
    assert_eq!(prom_error(&r).0, "unauthorized");
    let agent = s.token("agent", &["default"]);
    let r = s.get("/api/v1/query?query=1", Some(&agent));
    assert_eq!(r.status, 403);
    assert_eq!(prom_error(&r).0, "forbidden");
}

#[test]
fn an_environment_never_sees_another() {
    let s = Server::start(&[]);
    let base = load(&s, &s.admin, "blue");
    let t = base + 9 * 60_000;
    let viewer_green = s.token("viewer", &["green"]);
    let viewer_blue = s.token("viewer", &["blue"]);
    let d = query(&s, &viewer_green, "count(node_mem_bytes)", t);
    assert_eq!(d["result"], serde_json::json!([]));
    let d = query(&s, &viewer_blue, "count(node_mem_bytes)", t);
    assert_eq!(d["result"][0]["value"][1], "3");
    let (_, j) = get_json(&s, "/api/v1/label/__name__/values", &viewer_green);
    assert_eq!(j["data"], serde_json::json!([]));
    // Naming the other environment is refused, not answered empty.
    let r = s.post(
        "/api/v1/query",
        Some(&viewer_green),
        &[
            ("X-Scope-OrgID", "blue"),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        b"query=node_mem_bytes",
    );
    assert_eq!(r.status, 403);
}

#[test]
fn vigil_query_prints_tables_json_and_errors() {
    let s = Server::start(&[]);
    let base = load(&s, &s.admin, "default");
    let t = base + 9 * 60_000;
    let url = format!("http://{}", s.addr);
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .arg("query")
            .args(["--url", &url, "--data-dir"])
            .arg(&s.dir)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let ts = format!("{}", t / 1000);
    let (ok, out, err) = run(&["--time", &ts, "sort_desc(node_mem_bytes * 2)"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("SERIES"), "{out}");
    assert!(
        out.contains("{db=\"fleet\", host=\"h1\", zone=\"z1\"}  2180"),
        "{out}"
    );
    assert!(out.contains("(3 series)"), "{out}");

    let (ok, out, _) = run(&["--json", "--time", &ts, "count(node_mem_bytes)"]);
    assert!(ok);
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["data"]["result"][0]["value"][1], "3");

    let start = format!("{}", base / 1000);
    let (ok, out, err) = run(&[
        "--start",
        &start,
        "--end",
        &ts,
        "--step",
        "3m",
        "node_mem_bytes{host=\"h3\"}",
    ]);
    assert!(ok, "{err}");
    assert_eq!(out.matches("  20").count(), 4, "{out}");

    // Annotations: on stderr, the table unchanged.
    let (ok, out, err) = run(&["--time", &ts, "sum(rate(node_mem_bytes[5m]))"]);
    assert!(ok, "{err}");
    assert!(out.contains("(1 series)"), "{out}");
    assert_eq!(
        err.trim(),
        "PromQL info: metric might not be a counter, name does not end in _total/_sum/_count/_bucket: \"node_mem_bytes\" (1:10)"
    );

    let (ok, _, err) = run(&["sum(rate(x[5m])"]);
    assert!(!ok);
    assert!(err.contains("bad_data") && err.contains("1:4"), "{err}");

    let (ok, _, err) = run(&["--token", "nonsense", "1"]);
    assert!(!ok);
    assert!(err.contains("401"), "{err}");
}

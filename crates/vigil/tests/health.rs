//! Heartbeats and the health API over HTTP against the real binary.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

fn hb(agent: &str, seq: u64, interval: u32, zone: &str) -> Value {
    json!({"agent_id": agent, "seq": seq, "sent_at": now_ms(), "interval_ms": interval, "zone": zone})
}

fn send(s: &Server, token: &str, env: &str, body: &Value) -> Resp {
    s.post(
        "/api/telemetry/heartbeat",
        Some(token),
        &[("X-Scope-OrgID", env), ("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
}

fn get(s: &Server, token: &str, env: &str, path: &str) -> (u16, Value) {
    let h = format!("Bearer {token}");
    let r = request(
        &s.addr,
        "GET",
        path,
        &[("Authorization", &h), ("X-Scope-OrgID", env)],
        b"",
    )
    .unwrap();
    (r.status, r.json())
}

#[test]
fn bad_heartbeats_are_refused_with_the_field_and_nothing_is_registered() {
    let s = Server::start(&[]);
    let cases = [
        (
            json!({"agent_id": "a b", "seq": 1, "sent_at": 1, "interval_ms": 1000}),
            "agent_id",
        ),
        (
            json!({"agent_id": "a", "seq": 1, "sent_at": 1, "interval_ms": 999}),
            "interval_ms",
        ),
        (
            json!({"agent_id": "a", "seq": 1, "sent_at": 1, "interval_ms": 60001}),
            "interval_ms",
        ),
        (
            json!({"agent_id": "a", "seq": 1, "sent_at": 0, "interval_ms": 1000}),
            "sent_at",
        ),
        (
            json!({"agent_id": "a", "seq": 1, "sent_at": 1, "interval_ms": 1000, "status": "meh"}),
            "status",
        ),
        (
            json!({"agent_id": "a", "seq": 1, "sent_at": 1, "interval_ms": 1000, "checks": [{"name": "disk", "status": "bad"}]}),
            "checks[0].status",
        ),
        (
            json!({"agent_id": "a", "seq": 1, "sent_at": 1, "interval_ms": 1000, "labels": {"bad-name": "x"}}),
            "labels.bad-name",
        ),
    ];
    for (body, field) in cases {
        let r = send(&s, &s.admin, "default", &body);
        assert_eq!(r.status, 400, "{body}");
        let (code, _) = r.error();
        assert_eq!(code, "invalid_heartbeat");
        assert_eq!(r.json()["error"]["details"]["field"], field, "{body}");
    }
    for raw in [
        &b"not json"[..],
        b"{\"agent_id\": \"a\"}",
        b"{\"agent_id\":\"a\",\"seq\":-1,\"sent_at\":1,\"interval_ms\":1000}",
        b"{\"agent_id\":\"a\",\"seq\":1,\"sent_at\":1,\"interval_ms\":1000,\"extra\":1}",
    ] {
        let r = s.post("/api/telemetry/heartbeat", Some(&s.admin), &[], raw);
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(raw));
        assert_eq!(r.error().0, "invalid_heartbeat");
    }
    // One bad element refuses the whole batch.
    let batch = json!([hb("ok-1", 1, 1000, "z"), {"agent_id": "ok-2", "seq": 1, "sent_at": 1, "interval_ms": 5}]);
    let r = s.post(
        "/api/telemetry/heartbeat/batch",
        Some(&s.admin),
        &[],
        batch.to_string().as_bytes(),
    );
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["error"]["details"]["field"],
        "heartbeats[1].interval_ms"
    );
    let (st, j) = get(&s, &s.admin, "default", "/api/telemetry/health");
    assert_eq!(st, 200);
    assert_eq!(j["agents"], 0, "nothing half-applied: {j}");
}

#[test]
fn heartbeats_need_a_writer_in_the_environment_and_health_needs_a_reader() {
    let s = Server::start(&[]);
    let agent = s.token("agent", &["prod"]);
    let viewer = s.token("viewer", &["prod"]);
    assert_eq!(
        send(&s, &agent, "prod", &hb("a1", 1, 1000, "z")).status,
        200
    );
    assert_eq!(
        send(&s, &agent, "staging", &hb("a1", 1, 1000, "z")).status,
        403
    );
    assert_eq!(
        send(&s, &viewer, "prod", &hb("a1", 2, 1000, "z")).status,
        403
    );
    let r = s.post(
        "/api/telemetry/heartbeat",
        None,
        &[],
        hb("a1", 3, 1000, "z").to_string().as_bytes(),
    );
    assert_eq!(r.status, 401);
    let (st, _) = get(&s, &agent, "prod", "/api/telemetry/health");
    assert_eq!(st, 403, "agents may only write and heartbeat");
    let (st, j) = get(&s, &viewer, "prod", "/api/telemetry/health/agents");
    assert_eq!(st, 200);
    assert_eq!(j["total"], 1);
    // Another environment sees nothing of prod's agents.
    let (st, j) = get(&s, &s.admin, "staging", "/api/telemetry/health/agents/a1");
    assert_eq!(st, 404, "{j}");
}

#[test]
fn a_silent_agent_is_failed_within_three_intervals_and_its_history_says_so() {
    let s = Server::start(&[]);
    for seq in 1..=3 {
        assert_eq!(
            send(&s, &s.admin, "default", &hb("edge-7", seq, 1000, "eu-1")).status,
            200
        );
        std::thread::sleep(Duration::from_millis(1000));
    }
    let last = now_ms();
    let t = Instant::now();
    let failed_at = loop {
        let (_, j) = get(
            &s,
            &s.admin,
            "default",
            "/api/telemetry/health/agents/edge-7",
        );
        if j["state"] == "failed" {
            break j["since_ms"].as_i64().unwrap();
        }
        assert!(t.elapsed() < Duration::from_secs(15), "never failed: {j}");
        std::thread::sleep(Duration::from_millis(100));
    };
    // The hard bound: 3 intervals after the last heartbeat (plus a 100 ms tick).
    assert!(
        failed_at - last <= 3_100,
        "failed {} ms after the last heartbeat",
        failed_at - last
    );
    let (_, j) = get(
        &s,
        &s.admin,
        "default",
        "/api/telemetry/health/agents/edge-7",
    );
    let kinds: Vec<(String, String)> = j["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["from"].as_str().unwrap_or("").into(),
                e["to"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("suspect".into(), "failed".into()),
            ("healthy".into(), "suspect".into()),
            ("unknown".into(), "healthy".into())
        ]
    );
    assert_eq!(j["received"], 3);
    assert_eq!(j["zone"], "eu-1");
    // It comes back: recovered, then healthy.
    assert_eq!(
        send(&s, &s.admin, "default", &hb("edge-7", 4, 1000, "eu-1")).json()["state"],
        "recovered"
    );
    assert_eq!(
        send(&s, &s.admin, "default", &hb("edge-7", 5, 1000, "eu-1")).json()["state"],
        "healthy"
    );
    // One incident: detected within the bound, recovered.
    let (_, inc) = get(&s, &s.admin, "default", "/api/telemetry/health/incidents");
    assert_eq!(inc["incidents"].as_array().unwrap().len(), 1, "{inc}");
    assert_eq!(inc["open"], 0);
    let i0 = &inc["incidents"][0];
    assert!(i0["ttd_ms"].as_i64().unwrap() <= 3_100, "{inc}");
    assert!(i0["ttr_ms"].as_i64().unwrap() > 0, "{inc}");
    assert!(inc["mean_time_to_detect_ms"].as_f64().is_some());
    let (_, j) = get(
        &s,
        &s.admin,
        "default",
        "/api/telemetry/health/agents/edge-7",
    );
    assert!(
        j["history"].as_array().unwrap().iter().any(|e| e["detail"]
            .as_str()
            .unwrap_or("")
            .starts_with("time to detect")),
        "{j}"
    );
    let (_, j) = get(
        &s,
        &s.admin,
        "default",
        "/api/telemetry/health/agents?state=healthy&zone=eu-1",
    );
    assert_eq!(j["total"], 1);
    let (st, _) = get(
        &s,
        &s.admin,
        "default",
        "/api/telemetry/health/agents?state=sleepy",
    );
    assert_eq!(st, 400);
}

#[test]
fn the_registry_survives_a_restart_without_declaring_the_fleet_dead() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut s = Server::start_in(&data, &[]);
    let batch: Vec<Value> = (0..500)
        .map(|i| {
            hb(
                &format!("n-{i:03}"),
                1,
                10_000,
                if i % 2 == 0 { "a" } else { "b" },
            )
        })
        .collect();
    let r = s.post(
        "/api/telemetry/heartbeat/batch",
        Some(&s.admin),
        &[("X-Scope-OrgID", "prod")],
        json!({"heartbeats": batch}).to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(r.json()["accepted"], 500);
    let (_, j) = get(&s, &s.admin, "prod", "/api/telemetry/health");
    assert_eq!(j["states"]["healthy"], 500);
    assert_eq!(j["zones"].as_array().unwrap().len(), 2);
    s.signal("TERM");
    assert!(s.wait_exit().success());

    let s = Server::start_in(&data, &[]);
    let (_, j) = get(&s, &s.admin, "prod", "/api/telemetry/health");
    assert_eq!(j["agents"], 500, "{j}");
    assert_eq!(
        j["states"]["unknown"], 500,
        "judged only after their next heartbeats: {j}"
    );
    let (_, j) = get(
        &s,
        &s.admin,
        "prod",
        "/api/telemetry/health/agents?zone=a&limit=5",
    );
    assert_eq!(j["total"], 250);
    assert_eq!(j["agents"].as_array().unwrap().len(), 5);
    assert_eq!(j["agents"][0]["agent_id"], "n-000");
    // Heard from again: healthy.
    assert_eq!(
        send(&s, &s.admin, "prod", &hb("n-000", 2, 10_000, "a")).json()["state"],
        "healthy"
    );
}

#[test]
fn maintenance_windows_hold_judgement_and_need_an_operator() {
    let s = Server::start(&[]);
    let operator = s.token("operator", &["default"]);
    let viewer = s.token("viewer", &["default"]);
    for seq in 1..=2 {
        assert_eq!(
            send(&s, &s.admin, "default", &hb("db-1", seq, 1000, "rack-9")).status,
            200
        );
        std::thread::sleep(Duration::from_millis(1000));
    }
    let post = |token: &str, body: Value| {
        s.post(
            "/api/telemetry/health/maintenance",
            Some(token),
            &[],
            body.to_string().as_bytes(),
        )
    };
    assert_eq!(
        post(&viewer, json!({"zone": "rack-9", "duration": "1h"})).status,
        403
    );
    let r = post(&operator, json!({"duration": "1h"}));
    assert_eq!(
        (r.status, r.error().0.as_str()),
        (400, "invalid_maintenance")
    );
    let r = post(&operator, json!({"zone": "rack-9", "duration": "soon"}));
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["details"]["field"], "duration");
    assert_eq!(
        post(&operator, json!({"zone": "nowhere", "duration": "1h"})).status,
        404
    );
    let r = post(&operator, json!({"zone": "rack-9", "duration": "1h"}));
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(r.json()["agents"], 1);
    // Silent for more than three intervals, but in maintenance.
    std::thread::sleep(Duration::from_millis(4000));
    let (_, j) = get(&s, &s.admin, "default", "/api/telemetry/health/agents/db-1");
    assert_eq!(j["state"], "maintenance", "{j}");
    // The window ends now: judged again, and failed within the hard bound.
    assert_eq!(
        post(&operator, json!({"agent_id": "db-1", "until_ms": now_ms()})).status,
        200
    );
    let t = Instant::now();
    loop {
        let (_, j) = get(&s, &s.admin, "default", "/api/telemetry/health/agents/db-1");
        if j["state"] == "failed" {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "not failed after maintenance: {j}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_live_stream_publishes_state_changes_of_the_callers_environment() {
    use std::io::{BufRead, BufReader, Write};
    let s = Server::start(&[]);
    let viewer = s.token("viewer", &["prod"]);
    let mut c = std::net::TcpStream::connect(&s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    write!(
        c,
        "GET /api/telemetry/stream?type=state&zone=eu HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {viewer}\r\nX-Scope-OrgID: prod\r\n\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(c);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.contains("200"), "{line}");
    // Wait for the headers, so the subscription exists before the events happen.
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
    }
    // Another environment and another zone: filtered out.
    assert_eq!(
        send(&s, &s.admin, "staging", &hb("s-1", 1, 1000, "eu")).status,
        200
    );
    assert_eq!(
        send(&s, &s.admin, "prod", &hb("p-us", 1, 1000, "us")).status,
        200
    );
    assert_eq!(
        send(&s, &s.admin, "prod", &hb("p-eu", 1, 1000, "eu")).status,
        200
    );
    let mut got = Vec::new();
    while got.len() < 2 {
        line.clear();
        r.read_line(&mut line).unwrap();
        let l = line.trim();
        if let Some(d) = l.strip_prefix("data:") {
            got.push(serde_json::from_str::<Value>(d.trim()).unwrap());
        } else if let Some(e) = l.strip_prefix("event:") {
            assert_eq!(e.trim(), "state");
        }
        if got.len() == 1 {
            // p-eu goes silent: suspect, then failed, both on the stream.
            assert_eq!(got[0]["agent_id"], "p-eu");
            assert_eq!(got[0]["to"], "healthy");
        }
    }
    assert_eq!(got[1]["agent_id"], "p-eu", "{got:?}");
    assert_eq!(got[1]["to"], "suspect");
    let r2 = s.get("/api/telemetry/stream?type=gossip", Some(&viewer));
    assert_eq!(r2.status, 400);
}

#[test]
fn vigil_sim_reports_detection_partitions_and_no_false_failures() {
    let out = std::process::Command::new(BIN)
        .args([
            "sim",
            "--agents",
            "2000",
            "--duration",
            "20m",
            "--zones",
            "4",
            "--crash-rate",
            "0.02",
            "--partition",
            "1@5m+3m",
            "--seed",
            "9",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("false failures: 0"), "{text}");
    assert!(text.contains("crashes not detected: 0"), "{text}");
    assert!(
        text.contains("partitions classified right: 1, wrong: 0, missed: 0"),
        "{text}"
    );
    assert!(text.contains("M/s in process"), "{text}");
    for bad in [
        vec!["sim", "--intervals", "0.5s:100"],
        vec!["sim", "--partition", "12@1m+1m"],
        vec!["sim", "--jitter", "1.5"],
        vec!["sim", "--duration", "forever"],
    ] {
        let out = std::process::Command::new(BIN).args(&bad).output().unwrap();
        assert!(!out.status.success(), "{bad:?} was accepted");
        assert!(!out.stderr.is_empty());
    }
}

#[test]
fn deregistered_agents_are_forgotten_and_come_back_with_a_heartbeat() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut s = Server::start_in(&data, &[]);
    let operator = s.token("operator", &["default"]);
    let viewer = s.token("viewer", &["default"]);
    for a in ["keep", "drop"] {
        assert_eq!(
            send(&s, &s.admin, "default", &hb(a, 1, 10_000, "z")).status,
            200
        );
    }
    let del = |token: &str, id: &str| {
        let h = format!("Bearer {token}");
        request(
            &s.addr,
            "DELETE",
            &format!("/api/telemetry/health/agents/{id}"),
            &[("Authorization", &h)],
            b"",
        )
        .unwrap()
    };
    assert_eq!(del(&viewer, "drop").status, 403);
    assert_eq!(del(&operator, "nobody").status, 404);
    assert_eq!(del(&operator, "drop").status, 204);
    let (_, j) = get(&s, &s.admin, "default", "/api/telemetry/health");
    assert_eq!(j["agents"], 1, "{j}");
    let (st, _) = get(&s, &s.admin, "default", "/api/telemetry/health/agents/drop");
    assert_eq!(st, 404);
    s.signal("TERM");
    assert!(s.wait_exit().success());
    let s = Server::start_in(&data, &[]);
    let (_, j) = get(&s, &s.admin, "default", "/api/telemetry/health/agents");
    assert_eq!(j["total"], 1, "deregistration survives a restart: {j}");
    assert_eq!(
        send(&s, &s.admin, "default", &hb("drop", 1, 10_000, "z")).json()["state"],
        "healthy"
    );
    let (_, j) = get(&s, &s.admin, "default", "/api/telemetry/health");
    assert_eq!(j["agents"], 2);
}

#[test]
fn availability_counts_up_and_down_time_from_the_history() {
    let s = Server::start(&[]);
    for seq in 1..=3 {
        assert_eq!(
            send(&s, &s.admin, "default", &hb("av-1", seq, 1000, "z")).status,
            200
        );
        assert_eq!(
            send(&s, &s.admin, "default", &hb("av-2", seq, 1000, "z")).status,
            200
        );
        std::thread::sleep(Duration::from_millis(1000));
    }
    // av-2 keeps going; av-1 goes silent and fails.
    let t = Instant::now();
    let mut seq = 4;
    loop {
        assert_eq!(
            send(&s, &s.admin, "default", &hb("av-2", seq, 1000, "z")).status,
            200
        );
        seq += 1;
        let (_, j) = get(&s, &s.admin, "default", "/api/telemetry/health/agents/av-1");
        if j["state"] == "failed" && t.elapsed() > Duration::from_secs(5) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(15));
        std::thread::sleep(Duration::from_millis(500));
    }
    let (st, j) = get(
        &s,
        &s.admin,
        "default",
        "/api/telemetry/health/availability?window=1h&agent=av-1",
    );
    assert_eq!(st, 200, "{j}");
    let a1 = j["windows"]["1h"]["agent"].as_f64().unwrap();
    assert!(a1 > 0.2 && a1 < 0.95, "av-1 was up, then down: {a1}");
    let (_, j) = get(
        &s,
        &s.admin,
        "default",
        "/api/telemetry/health/availability?agent=av-2",
    );
    assert_eq!(j["windows"]["24h"]["agent"], 1.0, "{j}");
    let (_, j) = get(
        &s,
        &s.admin,
        "default",
        "/api/telemetry/health/availability",
    );
    let env = j["windows"]["30d"]["environment"].as_f64().unwrap();
    assert!(env > a1 && env < 1.0, "{j}");
    assert_eq!(j["windows"]["7d"]["agents_below_99"], 1);
    let (st, _) = get(
        &s,
        &s.admin,
        "default",
        "/api/telemetry/health/availability?window=1y",
    );
    assert_eq!(st, 400);
}

#[test]
fn a_metrics_push_counts_as_a_heartbeat_where_configured() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("vigil.toml");
    std::fs::write(
        &cfg,
        "[health]\nmetrics_heartbeat_envs = [\"prod\"]\nmetrics_heartbeat_interval = \"5s\"\n",
    )
    .unwrap();
    let s = Server::start(&["--config", cfg.to_str().unwrap()]);
    let push = |env: &str, agent: &str| {
        let body = json!({"agent_id": agent, "cpu": {"load1": 0.5}});
        s.post(
            "/api/telemetry/ingest",
            Some(&s.admin),
            &[("X-Scope-OrgID", env)],
            body.to_string().as_bytes(),
        )
    };
    assert_eq!(push("prod", "m-1").status, 200);
    assert_eq!(push("prod", "m-1").status, 200);
    assert_eq!(push("dev", "m-2").status, 200);
    let (st, j) = get(&s, &s.admin, "prod", "/api/telemetry/health/agents/m-1");
    assert_eq!(st, 200, "{j}");
    assert_eq!(j["state"], "healthy");
    assert_eq!(j["interval_ms"], 5000);
    assert_eq!(j["received"], 2);
    let (st, _) = get(&s, &s.admin, "dev", "/api/telemetry/health/agents/m-2");
    assert_eq!(st, 404, "dev is not configured for it");
    // A bad setting is refused at start, naming the key.
    std::fs::write(&cfg, "[health]\nmetrics_heartbeat_interval = \"2h\"\n").unwrap();
    let out = std::process::Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--config",
            cfg.to_str().unwrap(),
            "--data-dir",
        ])
        .arg(dir.path().join("d2"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("[health].metrics_heartbeat_interval"));
}

#[test]
fn a_failed_agent_triggers_its_recovery_action_with_retries() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::sync::{Arc, Mutex};
    // A runbook endpoint: fails the first call, accepts the second.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for (n, conn) in listener.incoming().enumerate() {
            let Ok(mut c) = conn else { continue };
            let mut r = BufReader::new(c.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let mut len = 0;
            loop {
                let mut h = String::new();
                r.read_line(&mut h).unwrap();
                if h.trim().is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            seen2.lock().unwrap().push((
                line.trim().to_string(),
                String::from_utf8_lossy(&body).into(),
            ));
            let status = if n == 0 {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            let _ = write!(
                c,
                "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("vigil.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[health.recovery]]\nenv = \"default\"\nzone = \"lab\"\nurl = \"http://127.0.0.1:{port}/restart/{{agent_id}}\"\nretries = 2\nbackoff = \"100ms\"\nbody = '{{\"agent\": \"{{agent_id}}\", \"state\": \"{{state}}\"}}'\n"
        ),
    )
    .unwrap();
    let s = Server::start(&["--config", cfg.to_str().unwrap()]);
    for seq in 1..=2 {
        assert_eq!(
            send(&s, &s.admin, "default", &hb("r-1", seq, 1000, "lab")).status,
            200
        );
        assert_eq!(
            send(
                &s,
                &s.admin,
                "default",
                &hb("other", seq, 1000, "elsewhere")
            )
            .status,
            200
        );
        std::thread::sleep(Duration::from_millis(1000));
    }
    let t = Instant::now();
    let detail = loop {
        let (_, j) = get(&s, &s.admin, "default", "/api/telemetry/health/agents/r-1");
        if let Some(e) = j["history"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["kind"] == "recovery")
        {
            break e["detail"].as_str().unwrap().to_string();
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no recovery recorded: {j}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(detail.contains("200 after 2 attempt(s)"), "{detail}");
    let calls = seen.lock().unwrap().clone();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(calls[0].0.starts_with("POST /restart/r-1 "), "{calls:?}");
    assert_eq!(calls[1].1, "{\"agent\": \"r-1\", \"state\": \"failed\"}");
    // The agent in another zone failed too, but no rule matches it.
    let (_, j) = get(
        &s,
        &s.admin,
        "default",
        "/api/telemetry/health/agents/other",
    );
    assert!(
        !j["history"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "recovery")
    );
    // A bad rule is refused at start, naming it.
    std::fs::write(&cfg, "[[health.recovery]]\nurl = \"ftp://x\"\n").unwrap();
    let out = std::process::Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--config",
            cfg.to_str().unwrap(),
            "--data-dir",
        ])
        .arg(dir.path().join("d2"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("[[health.recovery]][0].url"));
}

#[test]
fn vigil_sim_over_http_against_a_running_server() {
    let s = Server::start(&[]);
    let out = std::process::Command::new(BIN)
        .args([
            "sim",
            "--url",
            &format!("http://{}", s.addr),
            "--agents",
            "60",
            "--zones",
            "2",
            "--duration",
            "12s",
            "--intervals",
            "1s:100",
            "--crash-rate",
            "0.1",
            "--partition",
            "1@4s+4s",
            "--seed",
            "5",
            "--token-file",
        ])
        .arg(s.dir.join("admin.token"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("false failures: 0"), "{text}");
    assert!(text.contains("crashes not detected: 0"), "{text}");
    assert!(
        text.contains("partitions suspected: 1 (scheduled 1)"),
        "{text}"
    );
    // The server saw the fleet in the sim environment.
    let (_, j) = get(&s, &s.admin, "sim", "/api/telemetry/health");
    assert_eq!(j["agents"], 60, "{j}");
}

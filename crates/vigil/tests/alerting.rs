//! Alerting end to end against the real binary: threshold rules on ingest, Prometheus rule
//! files, the Prometheus API shapes, routing with escalation and acknowledgement, silences,
//! tenancy and failure paths, delivery retries and dead letters, e-mail to a local SMTP sink,
//! forwarding to a real Alertmanager, a restart in the middle of an escalation, and `vigil rules
//! check` agreeing with `promtool check rules` on a set of real-world-shaped rule files.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{BIN, Server, request};
use serde_json::Value;

/// A webhook receiver: records every POST (path, JSON body, arrival time) and answers the
/// first `fail_first` requests of each path with `fail_status`.
#[derive(Clone)]
struct Hook {
    addr: String,
    got: Arc<Mutex<Vec<(String, Value, Instant)>>>,
    attempts: Arc<Mutex<Vec<(String, u16)>>>,
}

impl Hook {
    fn start(fail_first: usize, fail_status: u16) -> Hook {
        Self::start_on(0, fail_first, fail_status)
    }

    fn start_on(port: u16, fail_first: usize, fail_status: u16) -> Hook {
        let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let got = Arc::new(Mutex::new(Vec::new()));
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let (g, a) = (got.clone(), attempts.clone());
        std::thread::spawn(move || {
            let mut seen: std::collections::HashMap<String, usize> = Default::default();
            for s in l.incoming() {
                let Ok(s) = s else { continue };
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                if r.read_line(&mut line).is_err() {
                    continue;
                }
                let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
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
                let _ = r.read_exact(&mut body);
                let n = seen.entry(path.clone()).or_default();
                *n += 1;
                let status = if *n <= fail_first { fail_status } else { 200 };
                a.lock().unwrap().push((path.clone(), status));
                if status == 200 {
                    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    g.lock().unwrap().push((path, v, Instant::now()));
                }
                let mut s = s;
                let _ = write!(
                    s,
                    "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        Hook {
            addr,
            got,
            attempts,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn on(&self, path: &str) -> Vec<Value> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _, _)| p == path)
            .map(|(_, v, _)| v.clone())
            .collect()
    }

    fn wait(&self, path: &str, n: usize, secs: u64) -> Vec<Value> {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(secs) {
            let v = self.on(path);
            if v.len() >= n {
                return v;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "{path}: expected {n} notifications within {secs}s, got {:?}",
            self.on(path)
        );
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

fn config(dir: &Path, notify: &str, extra: &str) -> String {
    let n = write(dir, "notify.yml", notify);
    // `extra` lines go into [alerting] (overriding the defaults below) unless they open a table.
    let mut keys = vec![
        format!("notify_config = {n:?}"),
        "evaluation_interval = \"1s\"".to_string(),
        "delivery_backoff = \"100ms\"".to_string(),
        "delivery_backoff_max = \"500ms\"".to_string(),
        "delivery_max_attempts = 4".to_string(),
    ];
    let (own, tables) = match extra.find('[') {
        Some(i) => (&extra[..i], &extra[i..]),
        None => (extra, ""),
    };
    for line in own.lines().filter(|l| !l.trim().is_empty()) {
        let key = line.split('=').next().unwrap_or("").trim().to_string();
        keys.retain(|k| !k.starts_with(&format!("{key} ")));
        keys.push(line.to_string());
    }
    write(
        dir,
        "vigil.toml",
        &format!("[alerting]\n{}\n{tables}\n", keys.join("\n")),
    )
}

fn send(s: &Server, token: &str, env: Option<&str>, text: &str) {
    let mut h = vec![];
    if let Some(e) = env {
        h.push(("X-Scope-OrgID", e));
    }
    let r = s.post(
        "/api/v1/import/prometheus",
        Some(token),
        &h,
        text.as_bytes(),
    );
    assert_eq!(r.status, 204, "{}", r.body_str());
}

fn call(
    s: &Server,
    method: &str,
    path: &str,
    token: &str,
    env: Option<&str>,
    body: &str,
) -> common::Resp {
    let auth = format!("Bearer {token}");
    let mut h = vec![
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    if let Some(e) = env {
        h.push(("X-Scope-OrgID", e));
    }
    request(&s.addr, method, path, &h, body.as_bytes()).unwrap()
}

/// `GET path` as the admin, JSON answer.
fn admin_get(s: &Server, path: &str) -> Value {
    call(s, "GET", path, &s.admin, None, "").json()
}

fn threshold(s: &Server, body: &str) -> Value {
    let r = call(
        s,
        "POST",
        "/api/telemetry/admin/thresholds",
        &s.admin,
        None,
        body,
    );
    assert_eq!(r.status, 201, "{}", r.body_str());
    r.json()
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(secs) {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn threshold_on_ingest_notifies_with_retries_and_resolves() {
    let hook = Hook::start(2, 503);
    let tmp = tempfile::tempdir().unwrap();
    let notify = format!(
        r#"
route:
  receiver: ops
  group_by: [alertname]
  group_wait: 0s
  group_interval: 1s
receivers:
  - name: ops
    webhook_configs: [{{url: "{}"}}]
  - name: rejecting
    webhook_configs: [{{url: "{}"}}]
"#,
        hook.url("/ops"),
        hook.url("/unused")
    );
    let cfg = config(tmp.path(), &notify, "");
    let s = Server::start(&["--config", &cfg]);
    threshold(
        &s,
        r#"{"id":"disk","name":"DiskFull","metric":"disk_used_ratio","matchers":[{"name":"mount","op":"=","value":"/"}],"op":">","value":0.9,"severity":"critical","annotations":{"summary":"{{ $labels.agent }} disk at {{ $value | humanizePercentage }}"}}"#,
    );
    send(
        &s,
        &s.admin,
        None,
        "disk_used_ratio{agent=\"a1\",mount=\"/\"} 0.5\ndisk_used_ratio{agent=\"a2\",mount=\"/data\"} 0.99\n",
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        hook.on("/ops").is_empty(),
        "below threshold / unmatched mount must not notify"
    );
    let t0 = Instant::now();
    send(
        &s,
        &s.admin,
        None,
        "disk_used_ratio{agent=\"a1\",mount=\"/\"} 0.95\n",
    );
    // Two 503s, then delivered on the third attempt (100 ms, 200 ms backoff).
    let got = hook.wait("/ops", 1, 15);
    let took = t0.elapsed();
    let n = &got[0];
    assert_eq!(n["version"], "4");
    assert_eq!(n["status"], "firing");
    assert_eq!(n["receiver"], "ops");
    assert!(
        !n["externalURL"].as_str().unwrap().ends_with(":0"),
        "the bound address, not :0"
    );
    let a = &n["alerts"][0];
    assert_eq!(a["labels"]["alertname"], "DiskFull");
    assert_eq!(a["labels"]["agent"], "a1");
    assert_eq!(a["labels"]["severity"], "critical");
    assert_eq!(a["labels"]["vigil_env"], "default");
    assert_eq!(a["annotations"]["summary"], "a1 disk at 95%");
    assert_eq!(a["endsAt"], "0001-01-01T00:00:00Z");
    let attempts: Vec<u16> = hook
        .attempts
        .lock()
        .unwrap()
        .iter()
        .filter(|(p, _)| p == "/ops")
        .map(|(_, s)| *s)
        .collect();
    assert_eq!(attempts, vec![503, 503, 200]);
    eprintln!("threshold crossing → webhook delivered after 2 retries in {took:?}");
    // The delivery log shows the attempts.
    let log = admin_get(&s, "/api/telemetry/admin/notifications");
    let row = &log["notifications"][0];
    assert_eq!(row["state"], "delivered");
    assert_eq!(row["attempts"], 3);
    assert!(row["lastError"].as_str().unwrap().contains("503"), "{row}");
    // Prometheus API lists it.
    let alerts = s.get("/api/v1/alerts", Some(&s.admin)).json();
    assert_eq!(alerts["data"]["alerts"][0]["state"], "firing");
    assert_eq!(alerts["data"]["alerts"][0]["value"], "9.5e-01");
    // Resolution is notified (send_resolved defaults to true for webhooks).
    send(
        &s,
        &s.admin,
        None,
        "disk_used_ratio{agent=\"a1\",mount=\"/\"} 0.2\n",
    );
    let got = hook.wait("/ops", 2, 10);
    assert_eq!(got[1]["status"], "resolved");
    assert_ne!(got[1]["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");
    // /metrics counts it.
    let m = s.get("/metrics", Some(&s.admin)).body_str();
    assert!(
        m.contains("vigil_alerts_fired_total{alertname=\"DiskFull\"} 1"),
        "{m}"
    );
    assert!(
        m.contains(
            "vigil_notifications_total{receiver=\"ops\",channel=\"webhook\",outcome=\"retry\"} 2"
        ),
        "{m}"
    );
    assert!(
        m.contains("vigil_alert_resolutions_total{alertname=\"DiskFull\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("vigil_alert_state_changes_total{alertname=\"DiskFull\"} 2"),
        "{m}"
    );
    // Analytics: fired once, time to resolve known, receiver success rate 1.
    let an = admin_get(&s, "/api/telemetry/admin/analytics?window=1h");
    let rule = an["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["alertname"] == "DiskFull")
        .unwrap()
        .clone();
    assert_eq!(rule["fired"], 1);
    assert!(rule["meanTimeToResolveSeconds"].as_f64().unwrap() > 0.0);
    let rec = an["receivers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["receiver"] == "ops")
        .unwrap()
        .clone();
    assert_eq!(rec["successRate"], 1.0);
}

#[test]
fn permanent_errors_and_exhausted_retries_are_dead_lettered() {
    let hook = Hook::start(usize::MAX, 400);
    let tmp = tempfile::tempdir().unwrap();
    let dead_port = common::free_port();
    let notify = format!(
        r#"
route:
  receiver: both
  group_wait: 0s
receivers:
  - name: both
    webhook_configs:
      - {{url: "{}"}}
      - {{url: "http://127.0.0.1:{dead_port}/nobody"}}
"#,
        hook.url("/bad")
    );
    let cfg = config(tmp.path(), &notify, "");
    let s = Server::start(&["--config", &cfg]);
    threshold(&s, r#"{"name":"Up","metric":"x","op":">=","value":1}"#);
    send(&s, &s.admin, None, "x 1\n");
    wait_for("two dead letters", 20, || {
        let l = admin_get(&s, "/api/telemetry/admin/notifications?state=dead");
        l["notifications"].as_array().is_some_and(|a| a.len() == 2)
    });
    let l = admin_get(&s, "/api/telemetry/admin/notifications?state=dead");
    let rows = l["notifications"].as_array().unwrap();
    let bad = rows
        .iter()
        .find(|r| r["target"].as_str().unwrap().ends_with("/bad"))
        .unwrap();
    assert_eq!(bad["attempts"], 1, "a 400 is not retried: {bad}");
    assert!(bad["lastError"].as_str().unwrap().contains("400"));
    let nobody = rows
        .iter()
        .find(|r| r["target"].as_str().unwrap().ends_with("/nobody"))
        .unwrap();
    assert_eq!(
        nobody["attempts"], 4,
        "connection refused is retried up to delivery_max_attempts: {nobody}"
    );
    let r = call(
        &s,
        "GET",
        "/api/telemetry/admin/notifications?state=lost",
        &s.admin,
        None,
        "",
    );
    assert_eq!(r.status, 400);
}

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().unwrap()
}

#[test]
fn escalation_survives_restart_and_stops_on_acknowledgement() {
    let hook = Hook::start(0, 200);
    let tmp = tempfile::tempdir().unwrap();
    let notify = format!(
        r#"
route:
  receiver: team
  group_by: [alertname]
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
  escalation_policy: oncall
receivers:
  - name: team
    webhook_configs: [{{url: "{h}/team"}}]
  - name: lead
    webhook_configs: [{{url: "{h}/lead", format: vigil}}]
  - name: cto
    webhook_configs: [{{url: "{h}/cto"}}]
escalation_policies:
  - name: oncall
    levels:
      - {{receivers: [team]}}
      - {{delay: 3s, receivers: [lead]}}
      - {{delay: 3s, receivers: [cto]}}
"#,
        h = format!("http://{}", hook.addr)
    );
    let cfg = config(tmp.path(), &notify, "");
    let dir = tmp.path().join("data");
    let mut s = Server::start_in(&dir, &["--config", &cfg]);
    threshold(
        &s,
        r#"{"name":"ApiDown","metric":"api_up","op":"==","value":0,"severity":"critical"}"#,
    );
    send(&s, &s.admin, None, "api_up{service=\"checkout\"} 0\n");
    let first = hook.wait("/team", 1, 10);
    assert_eq!(first[0]["alerts"][0]["labels"]["service"], "checkout");
    // Restart before level 1 is due.
    s.signal("TERM");
    assert!(s.wait_exit().success());
    let s = Server::start_in(&dir, &["--config", &cfg]);
    let lead = hook.wait("/lead", 1, 15);
    assert_eq!(lead[0]["vigil"]["escalationLevel"], 1);
    assert_eq!(lead[0]["vigil"]["escalationPolicy"], "oncall");
    assert!(lead[0]["alerts"][0]["vigil"]["acknowledgedBy"].is_null());
    assert_eq!(
        hook.on("/team").len(),
        1,
        "no duplicate page after the restart"
    );
    // Acknowledge with the CLI (operator token): cto is never paged.
    let op = s.token("operator", &["default"]);
    let list = cli(&[
        "alerts",
        "list",
        "--url",
        &format!("http://{}", s.addr),
        "--token",
        &op,
    ]);
    let out = String::from_utf8_lossy(&list.stdout).to_string();
    let fp = out
        .lines()
        .find(|l| l.contains("ApiDown"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    let ack = cli(&[
        "alerts",
        "ack",
        &fp,
        "--url",
        &format!("http://{}", s.addr),
        "--token",
        &op,
    ]);
    assert!(
        ack.status.success(),
        "{}",
        String::from_utf8_lossy(&ack.stderr)
    );
    assert!(String::from_utf8_lossy(&ack.stdout).contains("by test"));
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        hook.on("/cto").is_empty(),
        "escalated past an acknowledgement"
    );
    let a = admin_get(&s, &format!("/api/telemetry/admin/alerts/{fp}"));
    assert_eq!(a["acknowledgedBy"], "test");
    // A viewer may not acknowledge; an unknown alert is 404, a malformed id 400.
    let viewer = s.token("viewer", &["default"]);
    assert_eq!(
        call(
            &s,
            "POST",
            &format!("/api/telemetry/admin/alerts/{fp}/ack"),
            &viewer,
            None,
            ""
        )
        .status,
        403
    );
    assert_eq!(
        call(
            &s,
            "POST",
            "/api/telemetry/admin/alerts/00000000000000aa/ack",
            &op,
            None,
            ""
        )
        .status,
        404
    );
    assert_eq!(
        call(
            &s,
            "POST",
            "/api/telemetry/admin/alerts/zz/ack",
            &op,
            None,
            ""
        )
        .status,
        400
    );
    // The history has the acknowledgement: analytics computes the time to acknowledge.
    let an = admin_get(&s, "/api/telemetry/admin/analytics");
    assert!(
        an["rules"][0]["meanTimeToAcknowledgeSeconds"]
            .as_f64()
            .unwrap()
            > 0.0,
        "{an}"
    );
}

#[test]
fn rule_files_recording_rules_and_the_prometheus_api() {
    let hook = Hook::start(0, 200);
    let tmp = tempfile::tempdir().unwrap();
    let rules = write(
        tmp.path(),
        "rules.yml",
        r#"
groups:
  - name: node
    interval: 1s
    rules:
      - record: job:temp_celsius:max
        expr: max by (job) (temp_celsius)
        labels:
          recorded: "yes"
      - alert: TooHot
        expr: job:temp_celsius:max > 80
        for: 2s
        labels:
          severity: "{{ if gt $value 90.0 }}critical{{ else }}warning{{ end }}"
        annotations:
          summary: "{{ $labels.job }} is at {{ printf \"%.1f\" $value }}°C"
"#,
    );
    let notify = format!(
        "route:\n  receiver: ops\n  group_wait: 0s\nreceivers:\n  - name: ops\n    webhook_configs: [{{url: \"{}\"}}]\n",
        hook.url("/ops")
    );
    let cfg = config(tmp.path(), &notify, "");
    let s = Server::start(&["--config", &cfg, "--rules", &rules]);
    let check = cli(&["rules", "check", &rules]);
    assert!(check.status.success());
    assert!(String::from_utf8_lossy(&check.stdout).contains("SUCCESS: 2 rules found"));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let feeder = {
        let (addr, token, stop) = (s.addr.clone(), s.admin.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let auth = format!("Bearer {token}");
                let _ = request(&addr, "POST", "/api/v1/import/prometheus", &[("Authorization", &auth)], b"temp_celsius{job=\"db\",host=\"h1\"} 93.25\ntemp_celsius{job=\"web\",host=\"h2\"} 40\n");
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };
    // Pending first (for: 2s), then firing.
    wait_for("TooHot pending", 10, || {
        let r = s.get("/api/v1/alerts", Some(&s.admin)).json();
        r["data"]["alerts"][0]["state"] == "pending"
    });
    let n = hook.wait("/ops", 1, 15);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    feeder.join().unwrap();
    let a = &n[0]["alerts"][0];
    assert_eq!(a["labels"]["alertname"], "TooHot");
    assert_eq!(a["labels"]["severity"], "critical");
    assert_eq!(a["labels"]["recorded"], "yes");
    assert_eq!(a["annotations"]["summary"], "db is at 93.2°C");
    // /api/v1/rules in Prometheus' shape.
    let r = s.get("/api/v1/rules", Some(&s.admin)).json();
    assert_eq!(r["status"], "success");
    let g = &r["data"]["groups"][0];
    assert_eq!(g["name"], "node");
    assert_eq!(g["interval"], 1.0);
    assert_eq!(g["rules"][0]["type"], "recording");
    assert_eq!(g["rules"][0]["health"], "ok");
    assert_eq!(g["rules"][1]["type"], "alerting");
    assert_eq!(g["rules"][1]["state"], "firing");
    assert_eq!(g["rules"][1]["duration"], 2);
    assert_eq!(g["rules"][1]["alerts"][0]["labels"]["job"], "db");
    let rec_only = s.get("/api/v1/rules?type=record", Some(&s.admin)).json();
    assert_eq!(
        rec_only["data"]["groups"][0]["rules"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        s.get("/api/v1/rules?type=bogus", Some(&s.admin)).status,
        400
    );
    // Recorded series and ALERTS are in the store, queryable with PromQL.
    wait_for("ALERTS series", 10, || {
        let q = s.get("/api/v1/query?query=ALERTS%7Balertname%3D%22TooHot%22%2Calertstate%3D%22firing%22%7D", Some(&s.admin)).json();
        q["data"]["result"].as_array().is_some_and(|a| a.len() == 1)
    });
    let q = s
        .get(
            "/api/v1/query?query=job%3Atemp_celsius%3Amax",
            Some(&s.admin),
        )
        .json();
    assert_eq!(q["data"]["result"].as_array().unwrap().len(), 2, "{q}");
}

#[test]
fn rule_namespaces_through_the_api_are_validated() {
    let s = Server::start(&[]);
    let put = |token: &str, body: &str| {
        let auth = format!("Bearer {token}");
        request(
            &s.addr,
            "PUT",
            "/api/telemetry/admin/rules/team-a",
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/yaml"),
            ],
            body.as_bytes(),
        )
        .unwrap()
    };
    let bad = put(
        &s.admin,
        "groups:\n- name: g\n  rules:\n  - alert: X\n    expr: sum(\n    for: 1x\n",
    );
    assert_eq!(bad.status, 400, "{}", bad.body_str());
    assert_eq!(bad.error().0, "invalid_rules");
    let bad = put(
        &s.admin,
        "groups:\n- name: g\n  rules:\n  - alert: X\n    expr: up ==\n  - record: 'not valid'\n    expr: up\n",
    );
    assert_eq!(bad.status, 400);
    let errs = bad.json()["error"]["details"]["errors"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(errs, 2, "every problem is reported: {}", bad.body_str());
    let op = s.token("operator", &["default"]);
    assert_eq!(
        put(&op, "groups: []\n").status,
        403,
        "rule files are admin business"
    );
    let ok = put(
        &s.admin,
        "groups:\n- name: g\n  rules:\n  - alert: Dead\n    expr: up == 0\n    for: 1m\n",
    );
    assert_eq!(ok.status, 200, "{}", ok.body_str());
    assert_eq!(ok.json()["alerting_rules"], 1);
    let r = s.get("/api/v1/rules", Some(&s.admin)).json();
    assert_eq!(r["data"]["groups"][0]["file"], "team-a");
    // Another environment does not see it.
    let other = s.token("admin", &["other"]);
    let r = s.get("/api/v1/rules", Some(&other)).json();
    assert!(
        r["data"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .all(|g| g["file"] != "team-a")
    );
    let delete = || {
        call(
            &s,
            "DELETE",
            "/api/telemetry/admin/rules/team-a",
            &s.admin,
            None,
            "",
        )
        .status
    };
    assert_eq!(delete(), 204);
    assert_eq!(delete(), 404);
}

#[test]
fn silences_tenancy_and_bad_input() {
    let hook = Hook::start(0, 200);
    let tmp = tempfile::tempdir().unwrap();
    let notify = format!(
        "route:\n  receiver: ops\n  group_by: [alertname, agent]\n  group_wait: 0s\n  group_interval: 1s\nreceivers:\n  - name: ops\n    webhook_configs: [{{url: \"{}\"}}]\n",
        hook.url("/ops")
    );
    let cfg = config(tmp.path(), &notify, "");
    let s = Server::start(&["--config", &cfg]);
    let url = format!("http://{}", s.addr);
    // Silence agent a1 with the CLI.
    let out = cli(&[
        "silence",
        "add",
        "agent=\"a1\"",
        "--comment",
        "disk swap",
        "--duration",
        "1h",
        "--url",
        &url,
        "--token",
        &s.admin,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sid = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let list = cli(&["silence", "list", "--url", &url, "--token", &s.admin]);
    assert!(String::from_utf8_lossy(&list.stdout).contains(&sid));
    threshold(&s, r#"{"name":"Hot","metric":"t","op":">","value":50}"#);
    send(
        &s,
        &s.admin,
        None,
        "t{agent=\"a1\"} 99\nt{agent=\"a2\"} 99\n",
    );
    let n = hook.wait("/ops", 1, 10);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(hook.on("/ops").len(), 1);
    assert_eq!(
        n[0]["alerts"][0]["labels"]["agent"], "a2",
        "the silenced agent is not notified"
    );
    let alerts = admin_get(&s, "/api/telemetry/admin/alerts?state=firing");
    let a1 = alerts["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["labels"]["agent"] == "a1")
        .unwrap()
        .clone();
    assert_eq!(a1["silencedBy"][0], sid.as_str());
    // Expiring the silence lets the group's next flush notify a1.
    let exp = cli(&[
        "silence", "expire", &sid, "--url", &url, "--token", &s.admin,
    ]);
    assert!(exp.status.success());
    hook.wait("/ops", 2, 10);
    // Bad input: a silence matching everything, a bad regex, a threshold without metric.
    let r = call(
        &s,
        "POST",
        "/api/telemetry/admin/silences",
        &s.admin,
        None,
        r#"{"matchers":[{"name":"agent","value":".*","isRegex":true}],"endsAt":"2099-01-01T00:00:00Z","comment":"x"}"#,
    );
    assert_eq!(r.status, 400);
    assert!(r.error().1.contains("empty string"), "{}", r.body_str());
    let r = call(
        &s,
        "POST",
        "/api/telemetry/admin/silences",
        &s.admin,
        None,
        r#"{"matchers":[{"name":"a","value":"(","isRegex":true}],"endsAt":"2099-01-01T00:00:00Z","comment":"x"}"#,
    );
    assert_eq!(r.status, 400);
    let r = call(
        &s,
        "POST",
        "/api/telemetry/admin/silences",
        &s.admin,
        None,
        r#"{"matchers":[{"name":"a","value":"b"}],"endsAt":"tomorrow","comment":"x"}"#,
    );
    assert_eq!(r.status, 400);
    assert!(r.error().1.contains("endsAt"));
    let r = call(
        &s,
        "POST",
        "/api/telemetry/admin/thresholds",
        &s.admin,
        None,
        r#"{"name":"X","metric":"bad metric","op":">","value":1}"#,
    );
    assert_eq!(r.status, 400);
    assert!(r.error().1.contains("metric"), "{}", r.body_str());
    let r = call(
        &s,
        "POST",
        "/api/telemetry/admin/thresholds",
        &s.admin,
        None,
        r#"{"name":"X","metric":"m","op":"~","value":1}"#,
    );
    assert_eq!(r.status, 400);
    let r = call(
        &s,
        "POST",
        "/api/telemetry/admin/thresholds",
        &s.admin,
        None,
        r#"{"id":"dup","name":"X","metric":"m","op":">","value":1}"#,
    );
    assert_eq!(r.status, 201);
    let r = call(
        &s,
        "POST",
        "/api/telemetry/admin/thresholds",
        &s.admin,
        None,
        r#"{"id":"dup","name":"X","metric":"m","op":">","value":1}"#,
    );
    assert_eq!(r.status, 409);
    // Roles: a viewer reads but cannot write; an agent token cannot read.
    let viewer = s.token("viewer", &["default"]);
    assert_eq!(
        call(
            &s,
            "GET",
            "/api/telemetry/admin/thresholds",
            &viewer,
            None,
            ""
        )
        .status,
        200
    );
    assert_eq!(
        call(
            &s,
            "POST",
            "/api/telemetry/admin/thresholds",
            &viewer,
            None,
            r#"{"name":"X","metric":"m","op":">","value":1}"#
        )
        .status,
        403
    );
    let agent = s.token("agent", &["default"]);
    assert_eq!(
        call(&s, "GET", "/api/telemetry/admin/alerts", &agent, None, "").status,
        403
    );
    // Tenancy: another environment's token sees none of this, and its samples never trigger
    // the default environment's rules.
    let other = s.token("admin", &["other"]);
    assert!(
        call(&s, "GET", "/api/telemetry/admin/alerts", &other, None, "").json()["alerts"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(
        call(&s, "GET", "/api/telemetry/admin/silences", &other, None, "")
            .json()
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        call(
            &s,
            "GET",
            "/api/telemetry/admin/thresholds/dup",
            &other,
            None,
            ""
        )
        .status,
        404
    );
    assert_eq!(
        call(
            &s,
            "GET",
            "/api/telemetry/admin/alerts",
            &other,
            Some("default"),
            ""
        )
        .status,
        403
    );
    let before = hook.on("/ops").len();
    send(&s, &other, None, "t{agent=\"z9\"} 99\n");
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(hook.on("/ops").len(), before);
    // Deleting the rule resolves its alerts.
    let r = admin_get(&s, "/api/telemetry/admin/thresholds");
    let id = r["thresholds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "Hot")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        call(
            &s,
            "DELETE",
            &format!("/api/telemetry/admin/thresholds/{id}"),
            &s.admin,
            None,
            ""
        )
        .status,
        204
    );
    wait_for("resolution after delete", 10, || {
        hook.on("/ops").iter().any(|n| n["status"] == "resolved")
    });
}

#[test]
fn agent_failure_becomes_an_alert() {
    let hook = Hook::start(0, 200);
    let tmp = tempfile::tempdir().unwrap();
    let notify = format!(
        "route:\n  receiver: ops\n  group_by: [alertname, agent]\n  group_wait: 0s\n  group_interval: 1s\nreceivers:\n  - name: ops\n    webhook_configs: [{{url: \"{}\"}}]\n",
        hook.url("/ops")
    );
    let cfg = config(
        tmp.path(),
        &notify,
        "[alerting.health]\navailability_slo = 0.999\navailability_window = \"1h\"",
    );
    let s = Server::start(&["--config", &cfg]);
    let beat = |seq: u64| {
        let body = format!(
            r#"{{"agent_id":"web-7","seq":{seq},"sent_at":{},"interval_ms":1000,"zone":"eu-1","labels":{{"team":"shop"}}}}"#,
            common::now_ms()
        );
        let r = s.post(
            "/api/telemetry/heartbeat",
            Some(&s.admin),
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        );
        assert!(r.status == 200 || r.status == 202, "{}", r.body_str());
    };
    for seq in 1..=6 {
        beat(seq);
        std::thread::sleep(Duration::from_millis(1000));
    }
    let t0 = Instant::now();
    let n = hook.wait("/ops", 1, 15);
    eprintln!(
        "agent silent → AgentFailed notification in {:?}",
        t0.elapsed()
    );
    let a = &n[0]["alerts"][0];
    assert_eq!(a["labels"]["alertname"], "AgentFailed");
    assert_eq!(a["labels"]["agent"], "web-7");
    assert_eq!(a["labels"]["zone"], "eu-1");
    assert_eq!(
        a["labels"]["team"], "shop",
        "agent labels are alert labels (for routing)"
    );
    let r = s.get("/api/v1/rules", Some(&s.admin)).json();
    // Its downtime takes the environment below the 99.9 % availability SLO.
    wait_for("AvailabilityBelowSLO", 15, || {
        let a = s.get("/api/v1/alerts", Some(&s.admin)).json();
        a["data"]["alerts"].as_array().is_some_and(|v| {
            v.iter()
                .any(|x| x["labels"]["alertname"] == "AvailabilityBelowSLO")
        })
    });
    let health = r["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "vigil-health")
        .unwrap()
        .clone();
    assert_eq!(health["rules"][0]["state"], "firing");
    // It comes back: resolved.
    beat(100);
    beat(101);
    wait_for("AgentFailed resolved", 15, || {
        hook.on("/ops")
            .iter()
            .any(|n| n["status"] == "resolved" && n["commonLabels"]["alertname"] == "AgentFailed")
    });
}

/// A minimal SMTP server: accepts one session at a time and keeps each message's data.
fn smtp_sink() -> (u16, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let _ = s.write_all(b"220 sink ESMTP\r\n");
            let mut data = String::new();
            let mut in_data = false;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                if in_data {
                    if line == ".\r\n" {
                        in_data = false;
                        g.lock().unwrap().push(std::mem::take(&mut data));
                        let _ = s.write_all(b"250 queued\r\n");
                    } else {
                        data.push_str(&line);
                    }
                    continue;
                }
                let cmd = line.to_ascii_uppercase();
                let reply: &[u8] = if cmd.starts_with("EHLO") {
                    b"250-sink\r\n250 8BITMIME\r\n"
                } else if cmd.starts_with("DATA") {
                    in_data = true;
                    b"354 go ahead\r\n"
                } else if cmd.starts_with("QUIT") {
                    let _ = s.write_all(b"221 bye\r\n");
                    break;
                } else {
                    b"250 ok\r\n"
                };
                let _ = s.write_all(reply);
            }
        }
    });
    (port, got)
}

#[test]
fn email_reaches_a_local_smtp_server() {
    let (port, mails) = smtp_sink();
    let tmp = tempfile::tempdir().unwrap();
    let notify = format!(
        r#"
global:
  smtp_smarthost: 127.0.0.1:{port}
  smtp_from: vigil@example.org
  smtp_require_tls: false
route:
  receiver: mail
  group_wait: 0s
receivers:
  - name: mail
    email_configs:
      - to: oncall@example.org, lead@example.org
        headers: {{Subject: "[{{{{ .Status | toUpper }}}}] {{{{ .CommonLabels.alertname }}}} on {{{{ .CommonLabels.host }}}}"}}
"#
    );
    let cfg = config(tmp.path(), &notify, "");
    let s = Server::start(&["--config", &cfg]);
    threshold(
        &s,
        r#"{"name":"LoadHigh","metric":"load1","op":">","value":8,"annotations":{"summary":"load {{ $value }}"}}"#,
    );
    send(&s, &s.admin, None, "load1{host=\"db-1\"} 12\n");
    wait_for("an e-mail", 15, || !mails.lock().unwrap().is_empty());
    let m = mails.lock().unwrap()[0].clone();
    assert!(m.contains("Subject: [FIRING] LoadHigh on db-1"), "{m}");
    assert!(
        m.contains("To: oncall@example.org, lead@example.org"),
        "{m}"
    );
    assert!(m.contains("load 12"), "{m}");
    let log = admin_get(&s, "/api/telemetry/admin/notifications");
    assert_eq!(log["notifications"][0]["channel"], "email");
    assert_eq!(log["notifications"][0]["state"], "delivered");
}

#[test]
fn forwards_to_a_real_alertmanager() {
    common::require("prometheus-alertmanager");
    let tmp = tempfile::tempdir().unwrap();
    let am_port = common::free_port();
    let am_cfg = write(
        tmp.path(),
        "am.yml",
        "route:\n  receiver: 'null'\nreceivers:\n  - name: 'null'\n",
    );
    let mut am = Command::new("prometheus-alertmanager")
        .args([
            &format!("--config.file={am_cfg}"),
            &format!("--web.listen-address=127.0.0.1:{am_port}"),
            &format!("--storage.path={}", tmp.path().join("am-data").display()),
            "--cluster.listen-address=",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let am_addr = format!("127.0.0.1:{am_port}");
    wait_for("alertmanager ready", 30, || {
        request(&am_addr, "GET", "/-/ready", &[], b"").is_ok_and(|r| r.status == 200)
    });
    let notify = format!(
        "route:\n  receiver: am\n  group_wait: 0s\nreceivers:\n  - name: am\n    alertmanager_configs: [{{url: \"http://{am_addr}\"}}]\n"
    );
    let cfg = config(tmp.path(), &notify, "");
    let s = Server::start(&["--config", &cfg]);
    threshold(
        &s,
        r#"{"name":"QueueBacklog","metric":"queue_depth","op":">","value":1000,"severity":"page"}"#,
    );
    send(&s, &s.admin, None, "queue_depth{queue=\"orders\"} 5000\n");
    let mut found = Value::Null;
    wait_for("the alert in Alertmanager", 20, || {
        let r = request(&am_addr, "GET", "/api/v2/alerts", &[], b"").unwrap();
        let v = r.json();
        if let Some(a) = v.as_array().and_then(|a| {
            a.iter()
                .find(|a| a["labels"]["alertname"] == "QueueBacklog")
        }) {
            found = a.clone();
            true
        } else {
            false
        }
    });
    let _ = am.kill();
    let _ = am.wait();
    assert_eq!(found["labels"]["queue"], "orders");
    assert_eq!(found["labels"]["severity"], "page");
    assert_eq!(found["status"]["state"], "active");
    assert!(
        found["generatorURL"]
            .as_str()
            .unwrap()
            .contains("/api/telemetry/admin/alerts/")
    );
}

/// `vigil rules check` agrees with `promtool check rules` on every file under
/// tests/data/rules (real-world-shaped files that must pass, broken ones that must fail).
#[test]
fn rules_check_agrees_with_promtool() {
    common::require("promtool");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/rules");
    let mut checked = 0;
    for kind in ["good", "bad"] {
        let mut files: Vec<_> = std::fs::read_dir(root.join(kind))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in files {
            let ours = cli(&["rules", "check", f.to_str().unwrap()]);
            let theirs = Command::new("promtool")
                .args(["check", "rules"])
                .arg(&f)
                .output()
                .unwrap();
            let want = kind == "good";
            assert_eq!(
                theirs.status.success(),
                want,
                "{}: promtool disagrees with the fixture's folder: {}",
                f.display(),
                String::from_utf8_lossy(&theirs.stdout)
            );
            assert_eq!(
                ours.status.success(),
                want,
                "{}: vigil says {}",
                f.display(),
                String::from_utf8_lossy(&ours.stdout)
            );
            checked += 1;
        }
    }
    assert!(checked >= 12, "only {checked} fixtures");
    eprintln!("{checked} rule files: vigil rules check == promtool check rules");
}

#[test]
fn thresholds_can_be_replaced_in_bulk_all_or_nothing() {
    let s = Server::start(&[]);
    let put = |body: &str| {
        call(
            &s,
            "PUT",
            "/api/telemetry/admin/thresholds",
            &s.admin,
            None,
            body,
        )
    };
    let many: Vec<String> = (0..500)
        .map(|i| format!(r#"{{"id":"r{i}","name":"Hot","metric":"temp","matchers":[{{"name":"agent","value":"a{i}"}}],"op":">","value":80}}"#))
        .collect();
    let r = put(&format!(r#"{{"thresholds":[{}]}}"#, many.join(",")));
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(r.json()["thresholds"], 500);
    // One bad rule: nothing changes, and the error names it.
    let r = put(
        r#"{"thresholds":[{"id":"ok","name":"A","metric":"m","op":">","value":1},{"name":"B","metric":"m","op":">","value":"high"}]}"#,
    );
    assert_eq!(r.status, 400);
    let r = put(
        r#"{"thresholds":[{"id":"x","name":"A","metric":"m","op":">","value":1},{"id":"x","name":"B","metric":"m","op":">","value":2}]}"#,
    );
    assert_eq!(r.status, 400);
    assert!(r.error().1.contains("twice"), "{}", r.body_str());
    let l = admin_get(&s, "/api/telemetry/admin/thresholds");
    assert_eq!(l["thresholds"].as_array().unwrap().len(), 500);
    // Only the matching agent's rule fires.
    send(
        &s,
        &s.admin,
        None,
        "temp{agent=\"a42\"} 90\ntemp{agent=\"zz\"} 99\n",
    );
    wait_for("one firing alert", 10, || {
        let a = s.get("/api/v1/alerts", Some(&s.admin)).json();
        a["data"]["alerts"]
            .as_array()
            .is_some_and(|v| v.len() == 1 && v[0]["labels"]["agent"] == "a42")
    });
    // Replacing with an empty list removes them all; the alert resolves.
    assert_eq!(put(r#"{"thresholds":[]}"#).status, 200);
    wait_for("no firing alert", 10, || {
        let a = s.get("/api/v1/alerts", Some(&s.admin)).json();
        a["data"]["alerts"].as_array().is_some_and(|v| v.is_empty())
    });
}

#[test]
fn a_crash_loses_no_notification() {
    // The receiver is down when the alert fires; the server is killed (SIGKILL) while the
    // notification waits for its next retry; after a restart it is delivered.
    let port = common::free_port();
    let tmp = tempfile::tempdir().unwrap();
    let notify = format!(
        "route:\n  receiver: ops\n  group_wait: 0s\nreceivers:\n  - name: ops\n    webhook_configs: [{{url: \"http://127.0.0.1:{port}/ops\"}}]\n"
    );
    let cfg = config(tmp.path(), &notify, "delivery_max_attempts = 100");
    let dir = tmp.path().join("data");
    let mut s = Server::start_in(&dir, &["--config", &cfg]);
    threshold(&s, r#"{"name":"Lost","metric":"m","op":">","value":1}"#);
    send(&s, &s.admin, None, "m{agent=\"a\"} 5\n");
    wait_for("a failed attempt", 10, || {
        let l = admin_get(&s, "/api/telemetry/admin/notifications?state=pending");
        l["notifications"][0]["attempts"]
            .as_i64()
            .is_some_and(|a| a >= 1)
    });
    s.signal("KILL");
    let _ = s.wait_exit();
    let hook = Hook::start_on(port, 0, 200);
    let s = Server::start_in(&dir, &["--config", &cfg]);
    let got = hook.wait("/ops", 1, 15);
    assert_eq!(got[0]["alerts"][0]["labels"]["alertname"], "Lost");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        hook.on("/ops").len(),
        1,
        "delivered once, not re-notified after the restart"
    );
    let l = admin_get(&s, "/api/telemetry/admin/notifications");
    assert_eq!(l["notifications"][0]["state"], "delivered");
}

#[test]
fn slack_messages_use_the_incoming_webhook_format() {
    let hook = Hook::start(0, 200);
    let tmp = tempfile::tempdir().unwrap();
    let notify = format!(
        r##"
global:
  slack_api_url: "{}"
route:
  receiver: chat
  group_wait: 0s
receivers:
  - name: chat
    slack_configs:
      - channel: "#alerts"
        username: vigil
        send_resolved: true
        title: '{{{{ .Status | toUpper }}}}: {{{{ .CommonLabels.alertname }}}}'
        text: '{{{{ range .Alerts }}}}{{{{ .Annotations.summary }}}} {{{{ end }}}}'
"##,
        hook.url("/slack")
    );
    let cfg = config(tmp.path(), &notify, "");
    let s = Server::start(&["--config", &cfg]);
    threshold(
        &s,
        r#"{"name":"Errors","metric":"errors_total","op":">","value":10,"annotations":{"summary":"{{ $labels.svc }} has {{ $value }} errors"}}"#,
    );
    send(&s, &s.admin, None, "errors_total{svc=\"cart\"} 12\n");
    let m = hook.wait("/slack", 1, 10);
    assert_eq!(m[0]["channel"], "#alerts");
    assert_eq!(m[0]["username"], "vigil");
    assert_eq!(m[0]["attachments"][0]["title"], "FIRING: Errors");
    assert_eq!(m[0]["attachments"][0]["text"], "cart has 12 errors ");
    assert_eq!(m[0]["attachments"][0]["color"], "danger");
}

/// E-mail over STARTTLS and over implicit TLS (rustls), to a Python SMTP sink that refuses
/// MAIL before STARTTLS; the sink's self-signed certificate is trusted through `tls_config`.
#[test]
fn email_over_starttls_and_implicit_tls() {
    common::require("openssl");
    common::require("python3");
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = (tmp.path().join("cert.pem"), tmp.path().join("key.pem"));
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
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let sink = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/smtp_tls_sink.py");
    let mut sinks = Vec::new();
    let mut ports = Vec::new();
    for mode in ["starttls", "tls"] {
        let port_file = tmp.path().join(format!("{mode}.port"));
        let child = Command::new("python3")
            .arg(&sink)
            .args([
                mode,
                port_file.to_str().unwrap(),
                cert.to_str().unwrap(),
                key.to_str().unwrap(),
            ])
            .arg(tmp.path().join(format!("{mode}.mail")))
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        sinks.push(child);
        wait_for("the SMTP sink", 10, || port_file.exists());
        ports.push(
            std::fs::read_to_string(&port_file)
                .unwrap()
                .trim()
                .to_string(),
        );
    }
    let notify = format!(
        r#"
global:
  smtp_from: vigil@example.org
route:
  receiver: mail
  group_wait: 0s
receivers:
  - name: mail
    email_configs:
      - to: starttls@example.org
        smarthost: localhost:{}
        tls_config: {{ca_file: "{ca}"}}
      - to: tls@example.org
        smarthost: localhost:{}
        implicit_tls: true
        tls_config: {{ca_file: "{ca}"}}
      - to: untrusted@example.org
        smarthost: localhost:{}
"#,
        ports[0],
        ports[1],
        ports[0],
        ca = cert.display()
    );
    let cfg = config(tmp.path(), &notify, "delivery_max_attempts = 1");
    let s = Server::start(&["--config", &cfg]);
    threshold(&s, r#"{"name":"Secure","metric":"m","op":">","value":1}"#);
    send(&s, &s.admin, None, "m 5\n");
    let read = |mode: &str| {
        std::fs::read_to_string(tmp.path().join(format!("{mode}.mail"))).unwrap_or_default()
    };
    wait_for("both e-mails", 15, || {
        !read("starttls").is_empty() && !read("tls").is_empty()
    });
    for mode in ["starttls", "tls"] {
        let m = read(mode);
        assert!(m.starts_with("TLS: TLSv1.3"), "{mode}: {m}");
        assert!(
            m.contains(&format!("To: {mode}@example.org")),
            "{mode}: {m}"
        );
        assert!(m.contains("Subject: [FIRING:1] Secure"), "{mode}: {m}");
    }
    // Without the CA the certificate is not trusted: nothing is sent in clear, the
    // notification is dead-lettered with the reason.
    assert!(!read("starttls").contains("untrusted@"));
    wait_for("the untrusted delivery to fail", 15, || {
        let l = admin_get(&s, "/api/telemetry/admin/notifications?state=dead");
        l["notifications"].as_array().is_some_and(|v| v.len() == 1)
    });
    let l = admin_get(&s, "/api/telemetry/admin/notifications?state=dead");
    assert_eq!(l["notifications"][0]["target"], "untrusted@example.org");
    let err = l["notifications"][0]["lastError"]
        .as_str()
        .unwrap()
        .to_lowercase();
    assert!(err.contains("certificate") || err.contains("tls"), "{err}");
    for mut c in sinks {
        let _ = c.kill();
        let _ = c.wait();
    }
}

#[test]
fn rule_files_reload_on_change_and_sighup_and_a_broken_file_keeps_the_old_rules() {
    let tmp = tempfile::tempdir().unwrap();
    let one = "groups:\n- name: g\n  rules:\n  - alert: First\n    expr: vector(1)\n";
    let rules = write(tmp.path(), "rules.yml", one);
    let mut s = Server::start(&["--rules", &rules]);
    let names = |s: &Server| -> Vec<String> {
        let r = s.get("/api/v1/rules?type=alert", Some(&s.admin)).json();
        r["data"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|g| g["file"] == rules.as_str())
            .flat_map(|g| {
                g["rules"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r["name"].as_str().unwrap().to_string())
            })
            .collect()
    };
    assert_eq!(names(&s), vec!["First"]);
    // Changed on disk: picked up within the 5 s file check.
    std::thread::sleep(Duration::from_millis(1100)); // a new mtime second
    std::fs::write(
        &rules,
        format!("{one}  - alert: Second\n    expr: vector(2)\n"),
    )
    .unwrap();
    wait_for("the changed file", 15, || {
        names(&s) == vec!["First", "Second"]
    });
    // A broken file is refused; the rules stay.
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(
        &rules,
        "groups:\n- name: g\n  rules:\n  - alert: Broken\n    expr: sum(\n",
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(names(&s), vec!["First", "Second"]);
    let auth = format!("Bearer {}", s.admin);
    let r = request(
        &s.addr,
        "POST",
        "/api/telemetry/admin/reload",
        &[("Authorization", &auth)],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 400, "{}", r.body_str());
    assert!(r.error().1.contains("parse"), "{}", r.body_str());
    // Fixed, then SIGHUP: reloaded at once.
    std::fs::write(
        &rules,
        "groups:\n- name: g\n  rules:\n  - alert: Third\n    expr: vector(3)\n",
    )
    .unwrap();
    s.signal("HUP");
    wait_for("SIGHUP reload", 5, || names(&s) == vec!["Third"]);
}

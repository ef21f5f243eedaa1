//! `vigil bench ingest`: pushes the reference fleet dataset to a running server and reports
//! acknowledged samples per second, errors, and (with `--pid`) the server's CPU and peak RSS.
//!
//! Requests are encoded before the clock starts; K connections (HTTP/1.1 keep-alive) each send
//! their share. The same command pointed at VictoriaMetrics (`--url http://…:8428`) pushes the
//! same bytes there, which is how the README's ratio is measured.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use prost::Message;
use vigil_fleet::{Fleet, FleetSpec};
use vigil_ingest::remote_write::proto::{
    Label as PLabel, Sample as PSample, TimeSeries, WriteRequest,
};

/// Benchmarks.
#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// Push the reference fleet to a server and measure acknowledged samples/s.
    Ingest(IngestArgs),
    /// Send heartbeats (one per request, or batches) and measure accepted heartbeats/s.
    Heartbeat(HeartbeatArgs),
}

/// `vigil bench heartbeat` options.
#[derive(Args, Debug)]
pub struct HeartbeatArgs {
    /// Server base URL (http only).
    #[arg(long, default_value = "http://127.0.0.1:9700")]
    url: String,
    /// File holding a token with write access.
    #[arg(long)]
    token_file: Option<std::path::PathBuf>,
    /// Environment (X-Scope-OrgID).
    #[arg(long, default_value = "bench")]
    env: String,
    /// Agents.
    #[arg(long, default_value_t = 10_000)]
    agents: usize,
    /// Heartbeats per agent to send (the first round registers the agents untimed).
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Heartbeats per request: 1 uses /heartbeat, more uses /heartbeat/batch.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Server PID, to report its CPU time and peak RSS.
    #[arg(long)]
    pid: Option<u32>,
}

/// `vigil bench ingest` options.
#[derive(Args, Debug)]
pub struct IngestArgs {
    /// Server base URL (http only).
    #[arg(long, default_value = "http://127.0.0.1:9700")]
    url: String,
    /// File holding a token (e.g. `<data-dir>/admin.token`); none for servers without auth.
    #[arg(long)]
    token_file: Option<std::path::PathBuf>,
    /// Environment (X-Scope-OrgID).
    #[arg(long, default_value = "bench")]
    env: String,
    /// remote_write, influx, prometheus_text, otlp (protobuf) or json (native snapshots, one
    /// agent per request).
    #[arg(long, default_value = "remote_write")]
    protocol: String,
    /// Agents (× ~106 series each).
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Series per request (one sample each).
    #[arg(long, default_value_t = 25_000)]
    series_per_request: usize,
    /// Concurrent connections.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Scrape rounds to pre-encode and send (the first, which creates the series, is sent
    /// before timing starts).
    #[arg(long, default_value_t = 30)]
    rounds: usize,
    /// Server PID, to report its CPU time and peak RSS.
    #[arg(long)]
    pid: Option<u32>,
}

struct Req {
    path: &'static str,
    content_type: &'static str,
    encoding: Option<&'static str>,
    body: Vec<u8>,
    samples: usize,
}

fn otlp(fleet: &Fleet, part: &[vigil_fleet::FleetSample]) -> Req {
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::metrics::v1 as om;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    let kv = |k: &str, v: &str| KeyValue {
        key: k.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.to_string())),
        }),
        ..Default::default()
    };
    let mut by_agent: Vec<(String, Vec<om::Metric>)> = Vec::new();
    for s in part {
        let l = &fleet.series()[s.series as usize];
        let agent = l.get("agent").unwrap_or("").to_string();
        if by_agent.last().is_none_or(|(a, _)| *a != agent) {
            by_agent.push((agent, Vec::new()));
        }
        let attrs = l
            .iter()
            .filter(|x| !matches!(x.name.as_str(), "__name__" | "job" | "instance"))
            .map(|x| kv(&x.name, &x.value))
            .collect();
        let point = om::NumberDataPoint {
            attributes: attrs,
            time_unix_nano: s.ts_ms as u64 * 1_000_000,
            value: Some(om::number_data_point::Value::AsDouble(s.value)),
            ..Default::default()
        };
        let metric = om::Metric {
            name: l.metric_name().unwrap_or("m").to_string(),
            data: Some(om::metric::Data::Gauge(om::Gauge {
                data_points: vec![point],
            })),
            ..Default::default()
        };
        if let Some(last) = by_agent.last_mut() {
            last.1.push(metric);
        }
    }
    let req = ExportMetricsServiceRequest {
        resource_metrics: by_agent
            .into_iter()
            .map(|(agent, metrics)| om::ResourceMetrics {
                resource: Some(Resource {
                    attributes: vec![
                        kv("service.name", "node"),
                        kv("service.instance.id", &agent),
                    ],
                    ..Default::default()
                }),
                scope_metrics: vec![om::ScopeMetrics {
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    };
    Req {
        path: "/v1/metrics",
        content_type: "application/x-protobuf",
        encoding: None,
        body: req.encode_to_vec(),
        samples: part.len(),
    }
}

fn native_json(fleet: &Fleet, part: &[vigil_fleet::FleetSample]) -> Vec<Req> {
    let mut out: Vec<Req> = Vec::new();
    let mut i = 0;
    while i < part.len() {
        let agent = fleet.series()[part[i].series as usize]
            .get("agent")
            .unwrap_or("")
            .to_string();
        let mut metrics = Vec::new();
        let ts = part[i].ts_ms;
        while i < part.len()
            && fleet.series()[part[i].series as usize].get("agent") == Some(agent.as_str())
        {
            let s = &part[i];
            let l = &fleet.series()[s.series as usize];
            let labels: serde_json::Map<String, serde_json::Value> = l
                .iter()
                .filter(|x| !matches!(x.name.as_str(), "__name__" | "agent" | "instance" | "job"))
                .map(|x| {
                    (
                        x.name.to_string(),
                        serde_json::Value::String(x.value.to_string()),
                    )
                })
                .collect();
            metrics.push(serde_json::json!({"name": l.metric_name().unwrap_or("m"), "labels": labels, "value": s.value}));
            i += 1;
        }
        let body = serde_json::json!({"agent_id": agent, "timestamp_ms": ts, "metrics": metrics})
            .to_string()
            .into_bytes();
        let samples = metrics_len(&body);
        out.push(Req {
            path: "/api/telemetry/ingest",
            content_type: "application/json",
            encoding: None,
            body,
            samples,
        });
    }
    out
}

fn metrics_len(body: &[u8]) -> usize {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["metrics"].as_array().map(|a| a.len()))
        .unwrap_or(0)
}

fn encode(fleet: &Fleet, part: &[vigil_fleet::FleetSample], protocol: &str) -> Result<Vec<Req>> {
    Ok(vec![match protocol {
        "otlp" => otlp(fleet, part),
        "json" => return Ok(native_json(fleet, part)),
        "remote_write" => {
            let wr = WriteRequest {
                timeseries: part
                    .iter()
                    .map(|s| TimeSeries {
                        labels: fleet.series()[s.series as usize]
                            .iter()
                            .map(|l| PLabel {
                                name: l.name.to_string(),
                                value: l.value.to_string(),
                            })
                            .collect(),
                        samples: vec![PSample {
                            value: s.value,
                            timestamp: s.ts_ms,
                        }],
                    })
                    .collect(),
            };
            let body = wr.encode_snappy();
            Req {
                path: "/api/v1/write",
                content_type: "application/x-protobuf",
                encoding: Some("snappy"),
                body,
                samples: part.len(),
            }
        }
        "influx" => {
            let mut b = Vec::new();
            for s in part {
                let l = &fleet.series()[s.series as usize];
                b.extend_from_slice(l.metric_name().unwrap_or("m").as_bytes());
                for lab in l.iter().filter(|x| x.name != "__name__") {
                    write!(
                        b,
                        ",{}={}",
                        lab.name,
                        lab.value
                            .replace(' ', "\\ ")
                            .replace(',', "\\,")
                            .replace('=', "\\=")
                    )?;
                }
                writeln!(b, " value={} {}", s.value, s.ts_ms)?;
            }
            Req {
                path: "/write?precision=ms",
                content_type: "text/plain",
                encoding: None,
                body: b,
                samples: part.len(),
            }
        }
        "prometheus_text" => {
            let mut b = Vec::new();
            for s in part {
                let l = &fleet.series()[s.series as usize];
                b.extend_from_slice(l.metric_name().unwrap_or("m").as_bytes());
                b.push(b'{');
                let mut first = true;
                for lab in l.iter().filter(|x| x.name != "__name__") {
                    if !first {
                        b.push(b',');
                    }
                    first = false;
                    write!(b, "{}={:?}", lab.name, lab.value)?;
                }
                writeln!(b, "}} {} {}", s.value, s.ts_ms)?;
            }
            Req {
                path: "/api/v1/import/prometheus",
                content_type: "text/plain",
                encoding: None,
                body: b,
                samples: part.len(),
            }
        }
        other => {
            bail!("--protocol {other:?}: use remote_write, influx, prometheus_text, otlp or json")
        }
    }])
}

struct Conn {
    host: String,
    stream: BufReader<TcpStream>,
}

impl Conn {
    fn open(host: &str) -> Result<Self> {
        let s = TcpStream::connect(host).with_context(|| format!("connect {host}"))?;
        s.set_nodelay(true)?;
        Ok(Self {
            host: host.to_string(),
            stream: BufReader::new(s),
        })
    }

    fn send(&mut self, r: &Req, token: Option<&str>, env: &str) -> Result<(u16, String)> {
        // Head and body leave in one write: with TCP_NODELAY two writes are two segments, and
        // the server would wake twice per request (a client artefact, not server cost).
        let mut msg = Vec::with_capacity(256 + r.body.len());
        write!(
            msg,
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nX-Scope-OrgID: {env}\r\n",
            r.path,
            self.host,
            r.content_type,
            r.body.len()
        )?;
        if let Some(e) = r.encoding {
            write!(
                msg,
                "Content-Encoding: {e}\r\nX-Prometheus-Remote-Write-Version: 0.1.0\r\n"
            )?;
        }
        if let Some(t) = token {
            write!(msg, "Authorization: Bearer {t}\r\n")?;
        }
        msg.extend_from_slice(b"\r\n");
        msg.extend_from_slice(&r.body);
        self.stream.get_mut().write_all(&msg)?;
        let mut line = String::new();
        self.stream.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {line:?}"))?;
        let mut len = 0usize;
        loop {
            line.clear();
            self.stream.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some(v) = l
                .split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .map(|(_, v)| v.trim())
            {
                len = v.parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body)?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

fn proc_figures(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let cpu = (f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()?
        * 1024;
    Some((cpu, hwm))
}

/// Runs a benchmark command.
pub fn run(cmd: BenchCmd) -> Result<()> {
    match cmd {
        BenchCmd::Ingest(a) => ingest(a),
        BenchCmd::Heartbeat(a) => heartbeat(a),
    }
}

/// What a timed send produced.
struct Sent {
    acked: u64,
    errors: u64,
    last_error: Option<String>,
    secs: f64,
}

/// Sends `work` over `connections` keep-alive connections; counts acknowledged units.
fn send_all(
    host: &str,
    work: &[&Req],
    connections: usize,
    token: Option<&str>,
    env: &str,
) -> Result<Sent> {
    let next = AtomicUsize::new(0);
    let acked = AtomicU64::new(0);
    let errors = AtomicU64::new(0);
    let last_err = parking_lot_free::Slot::default();
    let t = Instant::now();
    std::thread::scope(|sc| -> Result<()> {
        let mut hs = Vec::new();
        for _ in 0..connections.max(1) {
            let (next, acked, errors, last_err) = (&next, &acked, &errors, &last_err);
            hs.push(sc.spawn(move || -> Result<()> {
                let mut c = Conn::open(host)?;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(r) = work.get(i) else { return Ok(()) };
                    match c.send(r, token, env) {
                        Ok((st, _)) if st / 100 == 2 => {
                            acked.fetch_add(r.samples as u64, Ordering::Relaxed);
                        }
                        Ok((st, body)) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            last_err.set(format!("{st} {body}"));
                        }
                        Err(e) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            last_err.set(e.to_string());
                            c = Conn::open(host)?;
                        }
                    }
                }
            }));
        }
        for h in hs {
            h.join()
                .map_err(|_| anyhow::anyhow!("sender thread panicked"))??;
        }
        Ok(())
    })?;
    Ok(Sent {
        acked: acked.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        last_error: last_err.get(),
        secs: t.elapsed().as_secs_f64(),
    })
}

fn heartbeat(a: HeartbeatArgs) -> Result<()> {
    let host = crate::client::http_host(&a.url)?;
    let token = crate::client::read_token(a.token_file.as_deref())?;
    if a.agents == 0 || a.rounds < 2 || a.batch == 0 {
        bail!("--agents must be ≥ 1, --rounds ≥ 2, --batch ≥ 1");
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let one = |agent: usize, seq: usize| {
        format!(
            "{{\"agent_id\":\"bench-{agent:07}\",\"seq\":{seq},\"sent_at\":{now},\"interval_ms\":10000,\"zone\":\"zone-{}\"}}",
            agent % 16
        )
    };
    let mut rounds: Vec<Vec<Req>> = Vec::new();
    for r in 0..a.rounds {
        let mut reqs = Vec::new();
        let agents: Vec<usize> = (0..a.agents).collect();
        for chunk in agents.chunks(a.batch) {
            let (path, body) = if a.batch == 1 {
                ("/api/telemetry/heartbeat", one(chunk[0], r + 1))
            } else {
                let items: Vec<String> = chunk.iter().map(|&g| one(g, r + 1)).collect();
                (
                    "/api/telemetry/heartbeat/batch",
                    format!("[{}]", items.join(",")),
                )
            };
            reqs.push(Req {
                path,
                content_type: "application/json",
                encoding: None,
                body: body.into_bytes(),
                samples: chunk.len(),
            });
        }
        rounds.push(reqs);
    }
    let mut c = Conn::open(&host)?;
    for r in &rounds[0] {
        let (st, body) = c.send(r, token.as_deref(), &a.env)?;
        if st / 100 != 2 {
            bail!("registration request failed: {st} {body}");
        }
    }
    let before = a.pid.and_then(proc_figures);
    let work: Vec<&Req> = rounds[1..].iter().flatten().collect();
    let sent = send_all(&host, &work, a.connections, token.as_deref(), &a.env)?;
    let secs = sent.secs;
    let after = a.pid.and_then(proc_figures);
    let n = sent.acked;
    println!("agents              {}", a.agents);
    println!(
        "requests            {} × {} heartbeat(s), {} connections",
        work.len(),
        a.batch,
        a.connections
    );
    println!("accepted            {n} heartbeats in {secs:.2} s");
    println!(
        "throughput          {:.0} heartbeats/s, {:.0} requests/s",
        n as f64 / secs,
        work.len() as f64 / secs
    );
    println!(
        "errors              {}{}",
        sent.errors,
        sent.last_error
            .map(|e| format!(" (last: {e})"))
            .unwrap_or_default()
    );
    if let (Some((c0, _)), Some((c1, rss))) = (before, after) {
        println!(
            "server              {:.0} % CPU, peak RSS {:.0} MiB",
            (c1 - c0) / secs * 100.0,
            rss as f64 / 1048576.0
        );
    }
    Ok(())
}

fn ingest(a: IngestArgs) -> Result<()> {
    let host = crate::client::http_host(&a.url)?;
    let token = crate::client::read_token(a.token_file.as_deref())?;
    let start_ms = {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as i64;
        now - (a.rounds as i64 + 1) * 10_000
    };
    let mut fleet = Fleet::new(FleetSpec {
        agents: a.agents,
        start_ms,
        ..FleetSpec::default()
    });
    eprintln!(
        "encoding {} rounds × {} series ({}) …",
        a.rounds,
        fleet.series().len(),
        a.protocol
    );
    let mut rounds: Vec<Vec<Req>> = Vec::new();
    let mut step = Vec::new();
    for _ in 0..a.rounds {
        step.clear();
        fleet.next_step(&mut step);
        let mut reqs = Vec::new();
        for p in step.chunks(a.series_per_request.max(1)) {
            reqs.extend(encode(&fleet, p, &a.protocol)?);
        }
        rounds.push(reqs);
    }
    let bytes: usize = rounds.iter().flatten().map(|r| r.body.len()).sum();
    // Round 0 creates the series.
    let mut c = Conn::open(&host)?;
    for r in &rounds[0] {
        let (st, body) = c.send(r, token.as_deref(), &a.env)?;
        if st / 100 != 2 {
            bail!("warm-up request failed: {st} {body}");
        }
    }
    let before = a.pid.and_then(proc_figures);
    let work: Vec<&Req> = rounds[1..].iter().flatten().collect();
    let sent = send_all(&host, &work, a.connections, token.as_deref(), &a.env)?;
    let secs = sent.secs;
    let after = a.pid.and_then(proc_figures);
    let n = sent.acked;
    println!("protocol            {}", a.protocol);
    println!("series              {}", fleet.series().len());
    println!(
        "requests            {} × {} series, {} connections, {:.1} MB encoded",
        work.len(),
        a.series_per_request,
        a.connections,
        bytes as f64 / 1e6
    );
    println!("acknowledged        {n} samples in {secs:.2} s");
    println!("throughput          {:.0} samples/s", n as f64 / secs);
    println!(
        "errors              {}{}",
        sent.errors,
        sent.last_error
            .as_deref()
            .map(|e| format!(" (last: {e})"))
            .unwrap_or_default()
    );
    if let (Some((c0, _)), Some((c1, hwm))) = (before, after) {
        println!(
            "server CPU          {:.2} s ({:.0}% of one core)",
            c1 - c0,
            (c1 - c0) / secs * 100.0
        );
        println!(
            "server peak RSS     {:.1} MiB",
            hwm as f64 / (1 << 20) as f64
        );
    }
    Ok(())
}

mod parking_lot_free {
    /// A last-value slot shared between threads.
    #[derive(Default)]
    pub struct Slot(std::sync::Mutex<Option<String>>);
    impl Slot {
        pub fn set(&self, s: String) {
            if let Ok(mut g) = self.0.lock() {
                *g = Some(s);
            }
        }
        pub fn get(&self) -> Option<String> {
            self.0.lock().ok().and_then(|g| g.clone())
        }
    }
}

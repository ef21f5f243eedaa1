//! `vigil sim`: a simulated fleet against the failure detector, in process, on simulated
//! time. Reports detection times per interval class, false failures, partitions classified
//! right and wrong, heartbeats/s and memory per agent.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use vigil_health::{Beat, Detector, DetectorConfig, EventKind, State};

/// Arguments of `vigil sim`.
#[derive(Args, Debug)]
pub struct SimArgs {
    /// Simulated agents.
    #[arg(long, default_value_t = 10_000)]
    pub agents: u32,
    /// Simulated time, e.g. 1h.
    #[arg(long, default_value = "1h")]
    pub duration: String,
    /// Interval mix as INTERVAL:PERCENT pairs.
    #[arg(long, default_value = "1s:10,10s:60,30s:30")]
    pub intervals: String,
    /// Uniform jitter of each interval, as a fraction (0.2 = ±20 %).
    #[arg(long, default_value_t = 0.2)]
    pub jitter: f64,
    /// Network delay upper bound (ms), uniform.
    #[arg(long, default_value_t = 50)]
    pub delay_ms: i64,
    /// Share of agents that crash at a random moment during the run.
    #[arg(long, default_value_t = 0.01)]
    pub crash_rate: f64,
    /// Zones.
    #[arg(long, default_value_t = 10)]
    pub zones: u32,
    /// Scheduled partitions ZONE@START+LENGTH, e.g. 3@20m+5m (repeatable).
    #[arg(long = "partition")]
    pub partitions: Vec<String>,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Run against a server over HTTP in real time instead of in process (e.g.
    /// http://127.0.0.1:9700); heartbeats go through the batch endpoint, events are read from
    /// the live stream.
    #[arg(long)]
    pub url: Option<String>,
    /// Token file for --url.
    #[arg(long)]
    pub token_file: Option<std::path::PathBuf>,
    /// Environment for --url.
    #[arg(long, default_value = "sim")]
    pub env: String,
}

struct Rng(u64);
impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn dur(s: &str, what: &str) -> Result<i64> {
    vigil_promql::parse_duration(s)
        .with_context(|| format!("{what} {s:?}: expected a duration like 10s or 5m"))
}

fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

/// An interval drawn from the mix (ms, share) whose shares add up to `total`.
fn pick_interval(rng: &mut Rng, mix: &[(u32, f64)], total: f64) -> u32 {
    let mut r = rng.unit() * total;
    for &(iv, p) in mix {
        if r < p {
            return iv;
        }
        r -= p;
    }
    mix[mix.len() - 1].0
}

/// Detection time (ms from crash to failed) per interval class: count, p50, p99, max.
fn print_classes(by_class: &mut std::collections::BTreeMap<u32, Vec<i64>>) {
    println!(
        "{:<12} {:>8} {:>12} {:>12} {:>12}",
        "interval", "crashes", "p50 ms", "p99 ms", "max ms"
    );
    for (iv, v) in by_class.iter_mut() {
        let n = v.len();
        let (p50, p99, max) = (pct(v, 0.5), pct(v, 0.99), *v.iter().max().unwrap_or(&0));
        println!(
            "{:<12} {n:>8} {p50:>12} {p99:>12} {max:>12}",
            format!("{} s", iv / 1000)
        );
    }
}

fn pct(v: &mut [i64], p: f64) -> i64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// The checked scenario: run length, interval mix (ms, share) and its total, partitions
/// (zone, start, length in ms).
struct Plan {
    span: i64,
    mix: Vec<(u32, f64)>,
    total: f64,
    parts: Vec<(u32, i64, i64)>,
}

fn plan(a: &SimArgs) -> Result<Plan> {
    if a.agents == 0 || a.zones == 0 {
        bail!("--agents and --zones must be at least 1");
    }
    if !(0.0..1.0).contains(&a.jitter) {
        bail!("--jitter must be in [0, 1)");
    }
    if !(0.0..=1.0).contains(&a.crash_rate) {
        bail!("--crash-rate must be in [0, 1]");
    }
    let span = dur(&a.duration, "--duration")?;
    let mut mix: Vec<(u32, f64)> = Vec::new();
    for part in a.intervals.split(',') {
        let (i, p) = part
            .split_once(':')
            .with_context(|| format!("--intervals: {part:?} is not INTERVAL:PERCENT"))?;
        let ms = dur(i, "--intervals")?;
        if !(1_000..=60_000).contains(&ms) {
            bail!("--intervals: {i} is outside 1s..60s");
        }
        let p: f64 = p
            .parse()
            .with_context(|| format!("--intervals: {p:?} is not a percentage"))?;
        mix.push((ms as u32, p));
    }
    let total: f64 = mix.iter().map(|m| m.1).sum();
    if total <= 0.0 {
        bail!("--intervals: the percentages add up to nothing");
    }
    let mut parts = Vec::new();
    for p in &a.partitions {
        let (z, rest) = p
            .split_once('@')
            .with_context(|| format!("--partition {p:?}: expected ZONE@START+LENGTH"))?;
        let (st, len) = rest
            .split_once('+')
            .with_context(|| format!("--partition {p:?}: expected ZONE@START+LENGTH"))?;
        let z: u32 = z
            .parse()
            .with_context(|| format!("--partition {p:?}: zone must be a number"))?;
        if z >= a.zones {
            bail!(
                "--partition {p:?}: zone {z} does not exist (--zones {})",
                a.zones
            );
        }
        parts.push((
            z,
            dur(st, "--partition start")?,
            dur(len, "--partition length")?,
        ));
    }
    Ok(Plan {
        span,
        mix,
        total,
        parts,
    })
}

/// Runs the simulation and prints the report.
pub fn run(a: SimArgs) -> Result<()> {
    if a.url.is_some() {
        return run_http(a);
    }
    let Plan {
        span,
        mix,
        total,
        parts,
    } = plan(&a)?;

    let t0 = 1_800_000_000_000i64;
    let mut rng = Rng(a.seed.max(1));
    let before = rss();
    let mut d = Detector::new(DetectorConfig::default(), t0);
    let zones: Vec<u32> = (0..a.zones).map(|z| d.zone(&format!("zone-{z}"))).collect();
    struct Sim {
        id: u32,
        interval: u32,
        zone: u32,
        crash_at: i64,
        seq: u64,
    }
    let mut agents = Vec::with_capacity(a.agents as usize);
    for i in 0..a.agents {
        let interval = pick_interval(&mut rng, &mix, total);
        let zone = i % a.zones;
        let crash_at = if rng.unit() < a.crash_rate {
            t0 + 60_000 + (rng.unit() * (span - 120_000).max(1) as f64) as i64
        } else {
            i64::MAX
        };
        let id = d.add_agent(zones[zone as usize], interval, t0);
        agents.push(Sim {
            id,
            interval,
            zone,
            crash_at,
            seq: 0,
        });
    }
    let mem = rss().saturating_sub(before) as f64 / a.agents as f64;

    let in_partition = |zone: u32, t: i64| {
        parts
            .iter()
            .any(|&(z, s, l)| z == zone && t >= t0 + s && t < t0 + s + l)
    };
    let mut heap: BinaryHeap<Reverse<(i64, u32)>> = BinaryHeap::new();
    for (i, s) in agents.iter().enumerate() {
        heap.push(Reverse((
            t0 + (rng.unit() * s.interval as f64) as i64,
            i as u32,
        )));
    }
    let end = t0 + span;
    let started = Instant::now();
    let mut beats = 0u64;
    let mut events = Vec::new();
    while let Some(Reverse((t, i))) = heap.pop() {
        if t > end {
            break;
        }
        let s = &mut agents[i as usize];
        if t < s.crash_at && !in_partition(s.zone, t) {
            s.seq += 1;
            let delay = (rng.unit() * a.delay_ms as f64) as i64;
            d.heartbeat(
                s.id,
                Beat {
                    seq: s.seq,
                    sent_at: t,
                    interval_ms: s.interval,
                    degraded: false,
                },
                t + delay,
            );
            beats += 1;
        }
        let j = (rng.unit() * 2.0 - 1.0) * a.jitter * s.interval as f64;
        heap.push(Reverse((t + s.interval as i64 + j as i64, i)));
        if beats.is_multiple_of(4096) {
            events.extend(d.drain_events());
        }
    }
    d.advance(end);
    events.extend(d.drain_events());
    let wall = started.elapsed().as_secs_f64();

    // Detection time per interval class, false failures, partitions.
    let mut by_class: std::collections::BTreeMap<u32, Vec<i64>> = Default::default();
    let mut false_failures = 0usize;
    let mut missed = 0usize;
    let mut failed_seen = vec![false; agents.len()];
    for e in &events {
        if let EventKind::State {
            to: State::Failed, ..
        } = e.kind
        {
            let s = &agents[e.agent as usize];
            if e.at >= s.crash_at {
                if !failed_seen[e.agent as usize] {
                    failed_seen[e.agent as usize] = true;
                    by_class
                        .entry(s.interval)
                        .or_default()
                        .push(e.at - s.crash_at);
                }
            } else {
                false_failures += 1;
                if std::env::var_os("VIGIL_SIM_DEBUG").is_some() {
                    eprintln!(
                        "false failure: agent {} zone {} interval {} at +{} s",
                        e.agent,
                        s.zone,
                        s.interval,
                        (e.at - t0) / 1000
                    );
                }
            }
        }
    }
    for (i, s) in agents.iter().enumerate() {
        if s.crash_at != i64::MAX
            && s.crash_at + 3 * s.interval as i64 + 1_000 < end
            && !failed_seen[i]
        {
            missed += 1;
        }
    }
    let (mut right, mut wrong) = (0usize, 0usize);
    for e in &events {
        if let EventKind::PartitionSuspected { zone, .. } = e.kind {
            let z = zones.iter().position(|&x| x == zone).unwrap_or(usize::MAX) as u32;
            // Suspected while (or shortly after) the zone was cut off.
            if parts
                .iter()
                .any(|&(pz, st, l)| pz == z && e.at >= t0 + st && e.at <= t0 + st + l + 60_000)
            {
                right += 1;
            } else {
                wrong += 1;
            }
        }
    }
    let unclassified = parts
        .iter()
        .filter(|&&(pz, st, l)| {
            !events.iter().any(|e| matches!(e.kind, EventKind::PartitionSuspected { zone, .. } if zone == zones[pz as usize]) && e.at >= t0 + st && e.at <= t0 + st + l + 60_000)
        })
        .count();

    println!(
        "simulated {} agents for {} ({} zones, jitter ±{:.0} %, crash rate {:.1} %, {} partition(s))",
        a.agents,
        a.duration,
        a.zones,
        a.jitter * 100.0,
        a.crash_rate * 100.0,
        parts.len()
    );
    print_classes(&mut by_class);
    println!("crashes not detected: {missed}");
    println!("false failures: {false_failures}");
    println!("partitions classified right: {right}, wrong: {wrong}, missed: {unclassified}");
    println!(
        "heartbeats: {beats} in {wall:.2} s = {:.2} M/s in process; detector memory {mem:.0} bytes/agent",
        beats as f64 / wall / 1e6
    );
    Ok(())
}

/// A live-stream event: (kind, agent_id, to, detail, at_ms).
type StreamItem = (String, String, String, String, i64);
/// Events shared between the stream reader and the report.
type Shared = std::sync::Arc<std::sync::Mutex<Vec<StreamItem>>>;

/// Reads the server's live stream into `out`.
fn follow_stream(host: String, token: Option<String>, env: String, out: Shared) -> Result<()> {
    use std::io::{BufRead, BufReader, Write};
    let mut c = std::net::TcpStream::connect(&host).with_context(|| format!("connect {host}"))?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        c,
        "GET /api/telemetry/stream HTTP/1.1\r\nHost: {host}\r\n{auth}X-Scope-OrgID: {env}\r\n\r\n"
    )?;
    let mut r = BufReader::new(c);
    let mut line = String::new();
    r.read_line(&mut line)?;
    if !line.contains(" 200") {
        bail!("live stream refused: {}", line.trim());
    }
    let mut kind = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let l = line.trim();
        if let Some(k) = l.strip_prefix("event:") {
            kind = k.trim().to_string();
        } else if let Some(d) = l.strip_prefix("data:")
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(d.trim())
        {
            let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
            out.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.push((
                kind.clone(),
                s("agent_id"),
                s("to"),
                s("detail"),
                v["at_ms"].as_i64().unwrap_or(0),
            ));
        }
    }
}

fn run_http(a: SimArgs) -> Result<()> {
    let url = a.url.clone().unwrap_or_default();
    let host = crate::client::http_host(&url)?;
    let token = crate::client::read_token(a.token_file.as_deref())?;
    let Plan {
        span,
        mix,
        total,
        parts,
    } = plan(&a)?;
    let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    {
        let (h, t, e, ev) = (host.clone(), token.clone(), a.env.clone(), events.clone());
        std::thread::spawn(move || {
            if let Err(err) = follow_stream(h, t, e, ev) {
                eprintln!("vigil sim: live stream: {err:#}");
            }
        });
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    };
    let mut rng = Rng(a.seed.max(1));
    let t0 = now_ms();
    struct Ag {
        id: String,
        interval: u32,
        zone: u32,
        crash_at: i64,
        next: i64,
        seq: u64,
    }
    let mut agents: Vec<Ag> = (0..a.agents)
        .map(|i| {
            let interval = pick_interval(&mut rng, &mix, total);
            let crash_at = if rng.unit() < a.crash_rate {
                t0 + 5_000 + (rng.unit() * (span - 5_000).max(1) as f64) as i64
            } else {
                i64::MAX
            };
            Ag {
                id: format!("sim-{i:06}"),
                interval,
                zone: i % a.zones,
                crash_at,
                next: t0 + (rng.unit() * interval as f64) as i64,
                seq: 0,
            }
        })
        .collect();
    let in_partition = |zone: u32, t: i64| {
        parts
            .iter()
            .any(|&(z, s, l)| z == zone && t >= t0 + s && t < t0 + s + l)
    };
    let mut sent = 0u64;
    let started = std::time::Instant::now();
    let mut conn_err = 0u64;
    // Keep the living agents talking a little past the end, so the last crashes are judged
    // against a fleet that is still there.
    let max_iv = agents.iter().map(|g| g.interval).max().unwrap_or(1_000) as i64;
    while now_ms() < t0 + span + 3 * max_iv + 500 {
        let t = now_ms();
        let mut batch = Vec::new();
        for ag in agents.iter_mut() {
            if ag.next > t {
                continue;
            }
            if t < ag.crash_at && !in_partition(ag.zone, t) {
                ag.seq += 1;
                batch.push(serde_json::json!({
                    "agent_id": ag.id, "seq": ag.seq, "sent_at": t, "interval_ms": ag.interval,
                    "zone": format!("zone-{}", ag.zone),
                }));
            }
            let j = (rng.unit() * 2.0 - 1.0) * a.jitter * ag.interval as f64;
            ag.next += ag.interval as i64 + j as i64;
        }
        for chunk in batch.chunks(10_000) {
            let body = serde_json::to_string(chunk)?;
            let mut headers: Vec<(&str, String)> = vec![("X-Scope-OrgID", a.env.clone())];
            if let Some(t) = &token {
                headers.push(("Authorization", format!("Bearer {t}")));
            }
            match crate::client::post_json(&url, "/api/telemetry/heartbeat/batch", &body, &headers)
            {
                Ok(r) if r.status / 100 == 2 => sent += chunk.len() as u64,
                Ok(r) => bail!(
                    "heartbeat batch refused: HTTP {} {}",
                    r.status,
                    String::from_utf8_lossy(&r.body)
                ),
                Err(_) => conn_err += 1,
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let wall = started.elapsed().as_secs_f64();
    let ev = events
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    let by_id: std::collections::HashMap<&str, &Ag> =
        agents.iter().map(|g| (g.id.as_str(), g)).collect();
    let mut by_class: std::collections::BTreeMap<u32, Vec<i64>> = Default::default();
    let mut false_failures = 0;
    let mut detected = std::collections::HashSet::new();
    for (kind, agent, to, _, at) in &ev {
        if kind == "state" && to == "failed"
            && let Some(g) = by_id.get(agent.as_str())
            // After the run everyone falls silent: only judge failures while it lasted.
            && (*at < t0 + span || *at >= g.crash_at)
        {
            if *at >= g.crash_at {
                if detected.insert(agent.clone()) {
                    by_class
                        .entry(g.interval)
                        .or_default()
                        .push(at - g.crash_at);
                }
            } else {
                false_failures += 1;
                if std::env::var_os("VIGIL_SIM_DEBUG").is_some() {
                    eprintln!(
                        "false failure: {agent} zone {} interval {} at +{} ms",
                        g.zone,
                        g.interval,
                        at - t0
                    );
                }
            }
        }
    }
    if std::env::var_os("VIGIL_SIM_DEBUG").is_some() {
        for e in ev.iter().filter(|e| e.0.starts_with("partition")) {
            eprintln!("{} {} at +{} ms", e.0, e.3, e.4 - t0);
        }
    }
    let crashed = agents.iter().filter(|g| g.crash_at != i64::MAX).count();
    let partitions = ev
        .iter()
        .filter(|e| e.0 == "partition_suspected" && e.4 < t0 + span)
        .count();
    println!(
        "simulated {} agents over HTTP for {} ({} zones, jitter ±{:.0} %, {} crashes, {} partition(s))",
        a.agents,
        a.duration,
        a.zones,
        a.jitter * 100.0,
        crashed,
        parts.len()
    );
    print_classes(&mut by_class);
    println!("crashes not detected: {}", crashed - detected.len());
    println!("false failures: {false_failures}");
    println!(
        "partitions suspected: {partitions} (scheduled {})",
        parts.len()
    );
    println!("heartbeats: {sent} accepted in {wall:.1} s; connection errors {conn_err}");
    Ok(())
}

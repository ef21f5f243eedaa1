//! In-process detector throughput and memory: `cargo bench -p vigil-health --bench detector`.
//! Registers N agents (default 1,000,000; `VIGIL_BENCH_AGENTS`), then feeds heartbeats in
//! arrival order across several simulated minutes and reports heartbeats/s and bytes per agent.

use std::time::Instant;

use vigil_health::{Beat, Detector, DetectorConfig};

fn rss_bytes() -> u64 {
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

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n: u32 = std::env::var("VIGIL_BENCH_AGENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let t0 = 1_800_000_000_000i64;
    let before = rss_bytes();
    let mut d = Detector::new(DetectorConfig::default(), t0);
    let zones: Vec<u32> = (0..100).map(|z| d.zone(&format!("zone-{z}"))).collect();
    let ids: Vec<u32> = (0..n)
        .map(|i| d.add_agent(zones[(i % 100) as usize], 10_000, t0))
        .collect();
    let after = rss_bytes();
    println!(
        "{n} agents registered: {:.0} bytes/agent (detector state incl. timer wheel; RSS delta)",
        (after - before) as f64 / n as f64
    );
    // Rounds of heartbeats: every agent once per 10 s round, spread over the round.
    let rounds = 6u64;
    let start = Instant::now();
    for r in 1..=rounds {
        let base = t0 + r as i64 * 10_000;
        for (i, &id) in ids.iter().enumerate() {
            let t = base + (i as i64 * 10_000) / n as i64;
            d.heartbeat(
                id,
                Beat {
                    seq: r,
                    sent_at: t - 3,
                    interval_ms: 10_000,
                    degraded: false,
                },
                t,
            );
        }
        d.drain_events();
    }
    let el = start.elapsed();
    let beats = rounds * n as u64;
    println!(
        "{beats} heartbeats in {:.2} s: {:.2} M heartbeats/s in-process (target 2 M/s)",
        el.as_secs_f64(),
        beats as f64 / el.as_secs_f64() / 1e6
    );
    let end = rss_bytes();
    println!(
        "RSS after the rounds: {:.0} bytes/agent",
        (end - before) as f64 / n as f64
    );
}

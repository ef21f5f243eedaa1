//! Cost per ingested sample of threshold rules evaluated on ingest.
//!
//! The reference fleet (1,000 agents × 106 series) is pushed step by step through
//! [`ThresholdEngine::observe`] exactly as the ingest path calls it, with: no rules for the
//! environment (the baseline: one index miss per series), then 10,000 rules (
//! 100 regex rules over zones plus 9,900 per-agent rules with an `agent="…"` matcher spread over
//! every metric), none of which
//! fire, then the same 10,000 rules with 1% of the watched series crossing and clearing.
//! Run: `cargo bench -p vigil-alert --bench threshold`.

use std::collections::BTreeMap;
use std::time::Instant;

use vigil_alert::threshold::{CmpOp, MatcherSpec, ThresholdEngine, ThresholdRule};
use vigil_alert::{PromDuration, Transition};
use vigil_fleet::{Fleet, FleetSample, FleetSpec};

fn rule(id: String, metric: &str, matchers: Vec<MatcherSpec>, value: f64) -> ThresholdRule {
    ThresholdRule {
        id,
        name: "Bench".into(),
        metric: metric.into(),
        matchers,
        op: CmpOp::Gt,
        value,
        resolve_value: None,
        for_: PromDuration(0),
        keep_firing_for: PromDuration(0),
        stale_after: None,
        severity: "warning".into(),
        labels: BTreeMap::new(),
        annotations: BTreeMap::new(),
    }
}

fn main() {
    let agents = 1_000;
    let steps = 30;
    let mut fleet = Fleet::new(FleetSpec {
        agents,
        ..FleetSpec::default()
    });
    let series: Vec<Vec<(String, String)>> = fleet
        .series()
        .iter()
        .map(|l| {
            l.iter()
                .map(|x| (x.name.as_str().to_string(), x.value.as_str().to_string()))
                .collect()
        })
        .collect();
    let mut data: Vec<Vec<FleetSample>> = Vec::new();
    for _ in 0..steps {
        let mut v = Vec::new();
        fleet.next_step(&mut v);
        data.push(v);
    }
    let total: usize = data.iter().map(Vec::len).sum();
    // Distinct metric names, agents, zones.
    let mut metrics: Vec<String> = series
        .iter()
        .filter_map(|s| {
            s.iter()
                .find(|(n, _)| n == "__name__")
                .map(|(_, v)| v.clone())
        })
        .collect();
    metrics.sort();
    metrics.dedup();
    let agent_ids: Vec<String> = {
        let mut a: Vec<String> = series
            .iter()
            .filter_map(|s| s.iter().find(|(n, _)| n == "agent").map(|(_, v)| v.clone()))
            .collect();
        a.sort();
        a.dedup();
        a
    };
    // 10,000 rules: 100 generic regex rules over zones, the rest per-agent rules spread over
    // every metric (`agent="…"`, found through the index).
    let mut rules = Vec::new();
    for (mi, m) in metrics.iter().take(100).enumerate() {
        rules.push(rule(
            format!("z{mi}"),
            m,
            vec![MatcherSpec {
                name: "zone".into(),
                op: "=~".into(),
                value: "zone-[ab]".into(),
            }],
            f64::MAX,
        ));
    }
    let mut i = 0;
    while rules.len() < 10_000 {
        let m = &metrics[i % metrics.len()];
        let a = &agent_ids[(i / metrics.len()) % agent_ids.len()];
        rules.push(rule(
            format!("r{i}"),
            m,
            vec![MatcherSpec {
                name: "agent".into(),
                op: "=".into(),
                value: a.clone(),
            }],
            f64::MAX,
        ));
        i += 1;
    }
    let n_rules = rules.len();

    let run = |engine: &ThresholdEngine, env: &str, flip: bool| -> (f64, usize) {
        let mut out: Vec<(vigil_alert::Alert, Transition)> = Vec::new();
        let mut changes = 0;
        let mut pairs: Vec<(&str, &str)> = Vec::with_capacity(16);
        let t = Instant::now();
        for (step, samples) in data.iter().enumerate() {
            // One read lock per scrape round, as the ingest path takes one per batch.
            engine.with_env(env, |rules| {
                for s in samples {
                    pairs.clear();
                    pairs.extend(
                        series[s.series as usize]
                            .iter()
                            .map(|(a, b)| (a.as_str(), b.as_str())),
                    );
                    // With `flip`, 1% of series alternate above/below an absurd value every step.
                    let v = if flip && s.series % 100 == 0 && step % 2 == 1 {
                        f64::INFINITY
                    } else {
                        s.value
                    };
                    rules.observe(&pairs, &[(s.ts_ms, v)], &mut out);
                }
            });
            changes += out.len();
            out.clear();
        }
        (t.elapsed().as_nanos() as f64 / total as f64, changes)
    };

    let engine = ThresholdEngine::new();
    engine
        .load(
            rules
                .iter()
                .cloned()
                .map(|r| ("other".to_string(), r))
                .collect(),
        )
        .unwrap();
    let (base, _) = run(&engine, "prod", false);
    let engine = ThresholdEngine::new();
    let t = Instant::now();
    engine
        .load(
            rules
                .iter()
                .cloned()
                .map(|r| ("prod".to_string(), r))
                .collect(),
        )
        .unwrap();
    let load_ms = t.elapsed().as_secs_f64() * 1000.0;
    let (quiet, c0) = run(&engine, "prod", false);
    // Rules whose threshold is crossed by 1% of the watched series.
    let flipping: Vec<(String, ThresholdRule)> = rules
        .iter()
        .cloned()
        .map(|mut r| {
            r.value = 1e300;
            ("prod".to_string(), r)
        })
        .collect();
    let engine2 = ThresholdEngine::new();
    engine2.load(flipping).unwrap();
    let (busy, c1) = run(&engine2, "prod", true);
    println!(
        "threshold rules on ingest: {agents} agents × {} series × {steps} steps = {total} samples",
        series.len() / agents
    );
    println!("  rules loaded: {n_rules} ({load_ms:.1} ms to compile and index)");
    println!("  baseline (no rules in this environment): {base:>7.1} ns/sample");
    println!(
        "  {n_rules} rules, none firing:              {quiet:>7.1} ns/sample  (+{:.1} ns, {:.2}x)",
        quiet - base,
        quiet / base
    );
    println!(
        "  {n_rules} rules, 1% of series flapping:     {busy:>7.1} ns/sample  ({c1} transitions)"
    );
    assert_eq!(c0, 0);
}

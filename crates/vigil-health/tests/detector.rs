//! Deterministic detector tests: simulated time, no sleeping.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use vigil_health::{Beat, Detector, DetectorConfig, Event, EventKind, State};

/// xorshift64*: deterministic noise.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

const T0: i64 = 1_800_000_000_000;

fn beat(seq: u64, sent: i64, interval: u32) -> Beat {
    Beat {
        seq,
        sent_at: sent,
        interval_ms: interval,
        degraded: false,
    }
}

fn state_changes(ev: &[Event], to: State) -> Vec<(u32, i64)> {
    ev.iter()
        .filter_map(|e| match e.kind {
            EventKind::State { to: t, .. } if t == to => Some((e.agent, e.at)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_silent_agent_is_failed_within_the_hard_bound_for_every_interval_class() {
    for interval in [1_000u32, 5_000, 10_000, 30_000, 60_000] {
        let mut d = Detector::new(DetectorConfig::default(), T0);
        let z = d.zone("z");
        let a = d.add_agent(z, interval, T0);
        let mut rng = Rng(interval as u64 + 1);
        let mut t = T0;
        for seq in 1..=60u64 {
            let jitter = ((rng.unit() - 0.5) * 0.2 * interval as f64) as i64; // ±10 %
            t += interval as i64 + jitter;
            d.heartbeat(a, beat(seq, t, interval), t);
        }
        let last = t;
        d.advance(last + 10 * interval as i64);
        let ev = d.drain_events();
        let failed = state_changes(&ev, State::Failed);
        assert_eq!(failed.len(), 1, "interval {interval}: {ev:?}");
        let took = failed[0].1 - last;
        let suspect = state_changes(&ev, State::Suspect)[0].1 - last;
        assert!(
            took <= 3 * interval as i64 + d.config().tick_ms,
            "interval {interval}: failed after {took} ms"
        );
        assert!(
            suspect > interval as i64,
            "interval {interval}: suspect after {suspect} ms"
        );
        assert!(suspect <= took);
        println!(
            "interval {interval:>6} ms: suspect after {suspect:>6} ms, failed after {took:>6} ms"
        );
    }
}

/// Event-driven fleet: each agent sends every `interval` ± `jitter` (uniform) with a small
/// network delay; returns the detector's events.
#[allow(clippy::too_many_arguments)]
fn run_fleet(
    d: &mut Detector,
    ids: &[(u32, u32)],
    start: i64,
    end: i64,
    jitter: f64,
    seed: u64,
    silent_after: &dyn Fn(u32) -> Option<(i64, Option<i64>)>,
) -> Vec<Event> {
    let mut rng = Rng(seed);
    let mut heap: BinaryHeap<Reverse<(i64, usize)>> = BinaryHeap::new();
    let mut seqs = vec![0u64; ids.len()];
    for (i, &(_, interval)) in ids.iter().enumerate() {
        let first = start + (rng.unit() * interval as f64) as i64;
        heap.push(Reverse((first, i)));
    }
    let mut events = Vec::new();
    while let Some(Reverse((t, i))) = heap.pop() {
        if t > end {
            break;
        }
        let (id, interval) = ids[i];
        let quiet =
            silent_after(id).is_some_and(|(from, until)| t >= from && until.is_none_or(|u| t < u));
        if !quiet {
            seqs[i] += 1;
            let delay = (rng.unit() * 50.0) as i64;
            d.heartbeat(id, beat(seqs[i], t, interval), t + delay);
        }
        let j = (rng.unit() * 2.0 - 1.0) * jitter * interval as f64;
        heap.push(Reverse((t + interval as i64 + j as i64, i)));
        if heap.len().is_multiple_of(64) {
            events.extend(d.drain_events());
        }
    }
    d.advance(end);
    events.extend(d.drain_events());
    events
}

#[test]
fn no_false_failures_over_10000_agents_for_an_hour_at_20_percent_jitter() {
    let mut d = Detector::new(DetectorConfig::default(), T0);
    let zones: Vec<u32> = (0..10).map(|z| d.zone(&format!("zone-{z}"))).collect();
    let mut ids = Vec::new();
    for i in 0..10_000u32 {
        let interval = match i % 10 {
            0 | 1 => 5_000,
            2..=6 => 10_000,
            _ => 30_000,
        };
        ids.push((
            d.add_agent(zones[(i % 10) as usize], interval, T0),
            interval,
        ));
    }
    let ev = run_fleet(&mut d, &ids, T0, T0 + 3_600_000, 0.2, 42, &|_| None);
    let failed = state_changes(&ev, State::Failed);
    let unreachable = state_changes(&ev, State::Unreachable);
    let suspect = state_changes(&ev, State::Suspect);
    println!(
        "{} state events: {} suspect, {} failed",
        ev.len(),
        suspect.len(),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "false failures: {:?}",
        &failed[..failed.len().min(5)]
    );
    assert!(unreachable.is_empty());
    assert!(
        !ev.iter()
            .any(|e| matches!(e.kind, EventKind::PartitionSuspected { .. }))
    );
    assert_eq!(d.counts().get(&State::Healthy).copied(), Some(10_000));
}

#[test]
fn a_silent_zone_is_a_partition_and_a_crash_inside_it_is_reported_after_it_heals() {
    let mut d = Detector::new(DetectorConfig::default(), T0);
    let za = d.zone("a");
    let zb = d.zone("b");
    let mut ids = Vec::new();
    for i in 0..40u32 {
        let z = if i < 20 { za } else { zb };
        ids.push((d.add_agent(z, 10_000, T0), 10_000));
    }
    let cut = T0 + 600_000;
    let heal = cut + 120_000;
    let crashed = ids[7].0; // in zone a, never comes back
    let lonely = ids[30].0; // in zone b, dies alone
    let silent = move |id: u32| {
        if id == crashed || id == lonely {
            Some((cut, None))
        } else if id < 20 {
            Some((cut, Some(heal)))
        } else {
            None
        }
    };
    let ev = run_fleet(&mut d, &ids, T0, heal + 120_000, 0.1, 7, &silent);
    let partitions: Vec<&Event> = ev
        .iter()
        .filter(|e| matches!(e.kind, EventKind::PartitionSuspected { .. }))
        .collect();
    assert_eq!(partitions.len(), 1, "{partitions:?}");
    assert!(matches!(partitions[0].kind, EventKind::PartitionSuspected { zone, .. } if zone == za));
    assert!(
        ev.iter()
            .any(|e| e.kind == EventKind::PartitionEnded { zone: za })
    );
    let failed = state_changes(&ev, State::Failed);
    let failed_ids: Vec<u32> = failed.iter().map(|f| f.0).collect();
    assert!(
        failed_ids.contains(&lonely),
        "a lone death in zone b is a failure"
    );
    assert!(
        failed_ids.contains(&crashed),
        "the crash inside the partition is reported"
    );
    assert_eq!(failed_ids.len(), 2, "only those two fail: {failed:?}");
    let crashed_at = failed.iter().find(|f| f.0 == crashed).unwrap().1;
    assert!(
        crashed_at > heal,
        "reported after the zone is heard from again"
    );
    assert!(
        crashed_at <= heal + 2 * 10_000 + 10_000,
        "and promptly: {}",
        crashed_at - heal
    );
    let unreachable = state_changes(&ev, State::Unreachable);
    assert!(
        unreachable.len() >= 10,
        "zone a's agents were unreachable: {}",
        unreachable.len()
    );
    assert!(!d.partitioned(za));
    for &(id, _) in &ids {
        let want = if id == crashed || id == lonely {
            State::Failed
        } else {
            State::Healthy
        };
        assert_eq!(d.agent(id).state, want, "agent {id}");
    }
}

#[test]
fn maintenance_suppresses_judgement_until_it_ends() {
    let mut d = Detector::new(DetectorConfig::default(), T0);
    let z = d.zone("z");
    let a = d.add_agent(z, 10_000, T0);
    let mut t = T0;
    for seq in 1..=10 {
        t += 10_000;
        d.heartbeat(a, beat(seq, t, 10_000), t);
    }
    d.maintenance(a, t + 600_000, t + 1);
    d.advance(t + 599_000);
    assert_eq!(d.agent(a).state, State::Maintenance);
    assert!(state_changes(&d.drain_events(), State::Failed).is_empty());
    d.advance(t + 600_000 + 40_000);
    let ev = d.drain_events();
    let failed = state_changes(&ev, State::Failed);
    assert_eq!(failed.len(), 1, "{ev:?}");
    assert!(failed[0].1 <= t + 600_000 + 30_000 + 100);
}

#[test]
fn a_restarted_detector_waits_for_the_next_heartbeats_before_judging() {
    // Vigil restarts: the registry knows 1,000 agents, none has been heard since.
    let now = T0;
    let mut d = Detector::new(DetectorConfig::default(), now);
    let z = d.zone("z");
    let ids: Vec<u32> = (0..1000).map(|_| d.add_agent(z, 10_000, now)).collect();
    d.advance(now + 15_000);
    let ev = d.drain_events();
    assert!(state_changes(&ev, State::Suspect).is_empty());
    assert!(state_changes(&ev, State::Failed).is_empty());
    // All but agent 0 report within their interval, and keep reporting.
    for round in 0..4i64 {
        for (i, &id) in ids.iter().enumerate().skip(1) {
            let t = now + 1_000 + (i as i64 * 9) % 9_000 + round * 10_000;
            d.heartbeat(id, beat(round as u64 + 1, t, 10_000), t);
        }
    }
    d.advance(now + 40_000);
    let ev = d.drain_events();
    let failed = state_changes(&ev, State::Failed);
    assert_eq!(failed.iter().map(|f| f.0).collect::<Vec<_>>(), vec![ids[0]]);
    assert_eq!(d.counts().get(&State::Healthy).copied(), Some(999));
}

#[test]
fn sequence_gaps_are_loss_and_going_back_is_a_restart() {
    let mut d = Detector::new(DetectorConfig::default(), T0);
    let z = d.zone("z");
    let a = d.add_agent(z, 1_000, T0);
    let mut t = T0;
    for seq in [1u64, 2, 3, 5, 6, 10] {
        t += 1_000;
        d.heartbeat(a, beat(seq, t - 40, 1_000), t);
    }
    let ag = d.agent(a);
    assert_eq!(ag.received, 6);
    assert_eq!(ag.lost, 4);
    assert!((ag.offset_ms - 40.0).abs() < 1.0, "{}", ag.offset_ms);
    t += 1_000;
    d.heartbeat(a, beat(1, t, 1_000), t);
    let ev = d.drain_events();
    assert!(ev.iter().any(|e| e.kind == EventKind::Restarted));
    assert_eq!(d.agent(a).lost, 4, "a restart is not loss");
    assert_eq!(d.agent(a).restarts, 1);
    // A duplicate is not an interval sample and not loss.
    d.heartbeat(a, beat(1, t, 1_000), t + 5);
    assert_eq!(d.agent(a).received, 7);
}

#[test]
fn a_changed_interval_is_adopted_at_once() {
    let mut d = Detector::new(DetectorConfig::default(), T0);
    let z = d.zone("z");
    let a = d.add_agent(z, 30_000, T0);
    let mut t = T0;
    for seq in 1..=20 {
        t += 30_000;
        d.heartbeat(a, beat(seq, t, 30_000), t);
    }
    for seq in 21..=25 {
        t += 1_000;
        d.heartbeat(a, beat(seq, t, 1_000), t);
    }
    d.advance(t + 10_000);
    let failed = state_changes(&d.drain_events(), State::Failed);
    assert_eq!(failed.len(), 1);
    assert!(failed[0].1 - t <= 3_000 + 100, "{}", failed[0].1 - t);
}

#[test]
fn a_degraded_agent_and_its_recovery() {
    let mut d = Detector::new(DetectorConfig::default(), T0);
    let z = d.zone("z");
    let a = d.add_agent(z, 1_000, T0);
    let mut b = beat(1, T0, 1_000);
    b.degraded = true;
    d.heartbeat(a, b, T0 + 1_000);
    assert_eq!(d.agent(a).state, State::Degraded);
    d.heartbeat(a, beat(2, T0, 1_000), T0 + 2_000);
    assert_eq!(d.agent(a).state, State::Healthy);
    d.advance(T0 + 20_000);
    assert_eq!(d.agent(a).state, State::Failed);
    d.heartbeat(a, beat(3, T0, 1_000), T0 + 21_000);
    assert_eq!(d.agent(a).state, State::Recovered);
    d.heartbeat(a, beat(4, T0, 1_000), T0 + 22_000);
    assert_eq!(d.agent(a).state, State::Healthy);
}

#[test]
fn agents_sharing_a_network_segment_across_zones_are_a_partition_too() {
    let mut d = Detector::new(DetectorConfig::default(), T0);
    let zones: Vec<u32> = (0..4).map(|z| d.zone(&format!("zone-{z}"))).collect();
    let seg = d.zone("segment/rack-7");
    let mut ids = Vec::new();
    let mut in_segment = Vec::new();
    for i in 0..40u32 {
        let on_rack = i % 10 < 3; // 3 per zone, 12 in all
        let id = d.add_agent_in(zones[(i / 10) as usize], on_rack.then_some(seg), 10_000, T0);
        if on_rack {
            in_segment.push(id);
        }
        ids.push((id, 10_000));
    }
    let cut = T0 + 300_000;
    let rack = in_segment.clone();
    let silent = move |id: u32| rack.contains(&id).then_some((cut, None));
    let ev = run_fleet(&mut d, &ids, T0, cut + 120_000, 0.1, 3, &silent);
    let parts: Vec<u32> = ev
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::PartitionSuspected { zone, .. } => Some(zone),
            _ => None,
        })
        .collect();
    assert_eq!(parts, vec![seg], "{ev:?}");
    assert!(
        state_changes(&ev, State::Failed).is_empty(),
        "cut-off agents are unreachable, not failed"
    );
    for id in &in_segment {
        assert_eq!(d.agent(*id).state, State::Unreachable);
    }
    assert_eq!(d.partitioned_groups(), vec![seg]);
}
